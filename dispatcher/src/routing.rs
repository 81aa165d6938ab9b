//! The per-worker routing table: channel host and `<ns>/<name>` to a channel (contract §2.1, §4.3).
//!
//! Budget: a lookup never allocates (the path key is a slice of the request target) and touches
//! no atomic: each worker builds its own table, with `Rc` handles and its own request prefixes, from
//! the shared immutable [`ChannelSet`] when a new generation is published.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::channels::ChannelSet;
use crate::delivery::DeliveryPolicy;
use crate::imc::Target;
use crate::metrics::{IngressSeries, SubscriberNames, SubscriberSeries, TargetSeries};

/// A delivery target on this worker: its pool key and the fixed start of every request to it.
pub struct Dest {
    pub url: Rc<str>,
    /// `host:port`: the connection pool key.
    pub key: Rc<str>,
    pub host: Rc<str>,
    pub port: u16,
    pub tls: bool,
    /// `POST <path> HTTP/1.1`, `Host`, and the per-channel headers, written once per table.
    pub prefix: Bytes,
    pub series: TargetSeries,
}

impl Dest {
    fn new(t: &Target, namespace: &str, prefer_reply: bool) -> Dest {
        let mut p =
            BytesMut::with_capacity(64 + t.path.len() + t.authority.len() + namespace.len());
        p.put_slice(b"POST ");
        p.put_slice(t.path.as_bytes());
        p.put_slice(b" HTTP/1.1\r\nHost: ");
        p.put_slice(t.authority.as_bytes());
        p.put_slice(b"\r\n");
        if prefer_reply {
            // Always sent to subscribers, even without a reply target (contract §3.2).
            p.put_slice(b"Prefer: reply\r\n");
        }
        p.put_slice(b"Kn-Namespace: ");
        p.put_slice(namespace.as_bytes());
        p.put_slice(b"\r\n");
        Dest {
            url: t.url.as_str().into(),
            key: format!("{}:{}", t.host, t.port).into(),
            host: t.host.as_str().into(),
            port: t.port,
            tls: t.tls,
            prefix: p.freeze(),
            series: TargetSeries::default(),
        }
    }
}

pub struct Subscriber {
    pub uid: Rc<str>,
    /// The Subscription's name for metric labels (its uid when the manifest has none).
    pub name: Rc<str>,
    pub series: SubscriberSeries,
    pub target: Option<Dest>,
    pub reply: Option<Dest>,
    pub dead_letter: Option<Dest>,
    pub policy: Option<DeliveryPolicy>,
}

pub struct Channel {
    pub namespace: Rc<str>,
    pub name: Rc<str>,
    pub async_handler: bool,
    pub subscribers: Box<[Subscriber]>,
    pub ingress: IngressSeries,
}

impl Channel {
    pub fn names<'a>(&'a self, sub: &'a Subscriber) -> SubscriberNames<'a> {
        SubscriberNames {
            namespace: &self.namespace,
            channel: &self.name,
            subscription: &sub.name,
        }
    }
}

/// One worker's view of the channel set.
#[derive(Default)]
pub struct Table {
    hosts: HashMap<Box<str>, Rc<Channel>>,
    paths: HashMap<Box<str>, Rc<Channel>>,
}

/// How a request target names its channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// Target `/`: the `Host` header decides.
    Host,
    /// `/<ns>/<name>`: the `<ns>/<name>` slice of the target.
    Path(&'a str),
}

/// Classifies a request target (contract §2.1): `/` routes by host; `/<ns>/<name>` (one trailing
/// slash allowed, query ignored) routes by path; anything else is a 400.
pub fn key_of(target: &str) -> Option<Key<'_>> {
    // Absolute-form targets (`http://host/path`) route by their path.
    let target = match target.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path == "/" {
        return Some(Key::Host);
    }
    let inner = path.strip_prefix('/')?;
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    let mut parts = inner.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), None) => Some(Key::Path(inner)),
        _ => None,
    }
}

/// D2: the port of a `Host` header is ignored when matching.
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl Table {
    pub fn build(set: &ChannelSet) -> Table {
        let mut t = Table::default();
        for (key, entry) in &set.channels {
            let c = &entry.config;
            let ns = c.namespace.as_str();
            let chan = Rc::new(Channel {
                namespace: ns.into(),
                name: c.name.as_str().into(),
                async_handler: c.async_handler,
                subscribers: c
                    .subscribers
                    .iter()
                    .map(|s| Subscriber {
                        uid: s.uid.as_str().into(),
                        name: s.name.as_deref().unwrap_or(&s.uid).into(),
                        series: SubscriberSeries::default(),
                        target: s.target.as_ref().map(|t| Dest::new(t, ns, true)),
                        reply: s.reply.as_ref().map(|t| Dest::new(t, ns, false)),
                        dead_letter: s.dead_letter.as_ref().map(|t| Dest::new(t, ns, false)),
                        policy: s.policy,
                    })
                    .collect(),
                ingress: IngressSeries::default(),
            });
            // The first channel to claim a host keeps it (the set builder logged the conflict).
            t.hosts
                .entry(c.host.as_str().into())
                .or_insert_with(|| chan.clone());
            t.paths.insert(key.as_str().into(), chan);
        }
        t
    }

    /// The channel a request is for, by its target and `Host` header.
    #[inline]
    pub fn route(&self, key: &Key<'_>, host: Option<&str>) -> Option<&Rc<Channel>> {
        match key {
            Key::Host => self.hosts.get(host_without_port(host?)),
            Key::Path(k) => self.paths.get(*k),
        }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_route_like_upstream() {
        assert_eq!(key_of("/"), Some(Key::Host));
        assert_eq!(key_of("/?x=1"), Some(Key::Host));
        assert_eq!(key_of("/default/ch1"), Some(Key::Path("default/ch1")));
        assert_eq!(key_of("/default/ch1/"), Some(Key::Path("default/ch1")));
        assert_eq!(key_of("/default/ch1?x=1"), Some(Key::Path("default/ch1")));
        assert_eq!(
            key_of("http://h/default/ch1"),
            Some(Key::Path("default/ch1"))
        );
        assert_eq!(key_of("/foo"), None);
        assert_eq!(key_of("/a/b/c"), None);
        assert_eq!(key_of("/healthz"), None);
        assert_eq!(key_of("*"), None);
    }

    #[test]
    fn host_port_is_ignored() {
        assert_eq!(host_without_port("a.b:80"), "a.b");
        assert_eq!(host_without_port("a.b"), "a.b");
        assert_eq!(host_without_port("[::1]:8080"), "::1");
    }

    #[test]
    fn subscriber_prefix_is_complete() {
        let t = Target::parse("http://sink.ns.svc:8080/p?q=1").unwrap();
        let d = Dest::new(&t, "ns", true);
        assert_eq!(
            &d.prefix[..],
            b"POST /p?q=1 HTTP/1.1\r\nHost: sink.ns.svc:8080\r\nPrefer: reply\r\nKn-Namespace: ns\r\n"
        );
        assert_eq!(&*d.key, "sink.ns.svc:8080");
    }
}
