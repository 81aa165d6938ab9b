//! The per-worker routing table: channel host and `<ns>/<name>` to a channel (contract §2.1, §4.3).
//!
//! Budget: a lookup never allocates (the path key is a slice of the request target) and touches
//! no atomic. Each worker has its own table, with `Rc` handles and its own metric series and pool
//! handles. Everything that costs to build (names, pool keys, the request prefix of every target)
//! is [`Prepared`] once per channel change, off the cores, when the [`ChannelSet`] is built; a
//! worker installing a new generation only wraps the shared parts (two allocations per channel,
//! no string copied or formatted).

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::channels::{ChannelSet, Entry};
use crate::delivery::DeliveryPolicy;
use crate::imc::{ChannelConfig, Target};
use crate::metrics::{IngressSeries, SubscriberNames, SubscriberSeries, TargetSeries};
use crate::pool::IdleList;
use crate::tls::{ClientTls, ClientTrust};

/// A delivery target as every worker shares it: its pool key and the fixed start of every
/// request to it. Built off the cores; read-only after that.
#[derive(Debug)]
pub struct DestSpec {
    pub url: Box<str>,
    /// The connection pool key: `host:port`, or for https `https://host:port#<trust set>` (a
    /// connection verified against one trust set never carries a request for another).
    pub key: Box<str>,
    pub host: Box<str>,
    pub port: u16,
    /// https: the client configuration of the target's trust set and its server name, or why
    /// there is none (its `…CACerts` do not parse, its host is no TLS name): every delivery to it
    /// then fails as a transport failure with that reason.
    pub tls: Option<Result<ClientTls, Box<str>>>,
    /// `POST <path> HTTP/1.1`, `Host`, and the per-channel headers, written once per change.
    pub prefix: Bytes,
}

impl DestSpec {
    fn new(t: &Target, namespace: &str, prefer_reply: bool) -> DestSpec {
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
        let tls = t.tls.then(|| {
            ClientTrust::get()
                .client_for(&t.host, t.ca_certs.as_deref())
                .map_err(|e| {
                    tracing::warn!(url = %t.url, error = %e, "https target unusable; its deliveries fail");
                    e.into_boxed_str()
                })
        });
        let key = match &tls {
            Some(Ok(c)) => format!("https://{}:{}#{}", t.host, t.port, c.trust_id),
            Some(Err(_)) => format!("https://{}:{}#invalid", t.host, t.port),
            None => format!("{}:{}", t.host, t.port),
        };
        DestSpec {
            url: t.url.as_str().into(),
            key: key.into(),
            host: t.host.as_str().into(),
            port: t.port,
            tls,
            prefix: p.freeze(),
        }
    }
}

impl DestSpec {
    /// `url_scheme` of its client metrics.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// A delivery target on this worker: the shared [`DestSpec`] (its fields read through `Deref`)
/// and this worker's state for it.
pub struct Dest {
    spec: Arc<DestSpec>,
    pub series: TargetSeries,
    /// This worker's idle connections to `key`, resolved by the pool on first use.
    pub idle: OnceCell<Rc<IdleList>>,
}

impl Dest {
    fn new(spec: &Arc<DestSpec>) -> Dest {
        Dest {
            spec: spec.clone(),
            series: TargetSeries::default(),
            idle: OnceCell::new(),
        }
    }
}

impl Deref for Dest {
    type Target = DestSpec;

    fn deref(&self) -> &DestSpec {
        &self.spec
    }
}

/// What a worker's table needs of one channel, prepared once per change of the channel, off the
/// cores (by [`ChannelSet::build`]), and shared by every worker.
#[derive(Debug)]
pub struct Prepared {
    namespace: Arc<str>,
    name: Arc<str>,
    host: Arc<str>,
    /// The `<ns>/<name>` key.
    path: Arc<str>,
    async_handler: bool,
    subscribers: Box<[PreparedSubscriber]>,
}

#[derive(Debug)]
struct PreparedSubscriber {
    uid: Arc<str>,
    name: Arc<str>,
    target: Option<Arc<DestSpec>>,
    reply: Option<Arc<DestSpec>>,
    dead_letter: Option<Arc<DestSpec>>,
    policy: Option<DeliveryPolicy>,
}

impl Prepared {
    /// `key` is the channel's `<ns>/<name>`.
    pub fn new(key: &str, c: &ChannelConfig) -> Prepared {
        let ns = c.namespace.as_str();
        let spec = |t: &Option<Target>, prefer_reply| {
            t.as_ref()
                .map(|t| Arc::new(DestSpec::new(t, ns, prefer_reply)))
        };
        Prepared {
            namespace: ns.into(),
            name: c.name.as_str().into(),
            host: c.host.as_str().into(),
            path: key.into(),
            async_handler: c.async_handler,
            subscribers: c
                .subscribers
                .iter()
                .map(|s| PreparedSubscriber {
                    uid: s.uid.as_str().into(),
                    name: s.name.as_deref().unwrap_or(&s.uid).into(),
                    target: spec(&s.target, true),
                    reply: spec(&s.reply, false),
                    dead_letter: spec(&s.dead_letter, false),
                    policy: s.policy,
                })
                .collect(),
        }
    }
}

pub struct Subscriber {
    pub uid: Arc<str>,
    /// The Subscription's name for metric labels (its uid when the manifest has none).
    pub name: Arc<str>,
    pub series: SubscriberSeries,
    pub target: Option<Dest>,
    pub reply: Option<Dest>,
    pub dead_letter: Option<Dest>,
    pub policy: Option<DeliveryPolicy>,
}

pub struct Channel {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `<ns>/<name>`.
    pub key: Arc<str>,
    /// The host key (whether or not this channel owns it).
    pub host: Arc<str>,
    pub async_handler: bool,
    pub subscribers: Box<[Subscriber]>,
    pub ingress: IngressSeries,
    /// D18: this worker's count of the channel's deliveries in flight, found on first use.
    pub load: OnceCell<Rc<Cell<usize>>>,
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
    hosts: HashMap<Arc<str>, Rc<Channel>, KeyHash>,
    paths: HashMap<Arc<str>, Rc<Channel>, KeyHash>,
}

/// The hasher of the routing maps: foldhash (a folded multiply per 8 bytes, seeded per map)
/// instead of SipHash, which costs several times more on a 40-byte host.
///
/// Why a hasher without SipHash's flooding resistance is safe here: only the operator's channel
/// set ever inserts into these maps. Request data (`Host`, path) is only looked up, and a lookup
/// can hit or miss but never lengthen a probe sequence: its cost is bounded by the chains the
/// channel set itself formed, whatever key a client sends. The random seed still keeps the
/// layout of those chains unpredictable from outside.
type KeyHash = foldhash::fast::RandomState;

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
    // Absolute-form targets (`http://host/path`) route by their path. An origin-form target (the
    // usual `/…`) cannot be one: a `://` in it would follow a `/`, so it is not searched for.
    let target = if target.starts_with('/') {
        target
    } else {
        match target.split_once("://") {
            Some((scheme, rest)) if !scheme.contains('/') => {
                rest.find('/').map_or("/", |i| &rest[i..])
            }
            _ => target,
        }
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
    /// Wraps the prepared channels of `set` for this worker. Runs on the worker core, between
    /// requests: per channel, two allocations (the channel and its subscribers), reference-count
    /// increments and two map inserts into maps sized up front.
    pub fn build(set: &ChannelSet) -> Table {
        let n = set.channels.len();
        let mut t = Table {
            hosts: HashMap::with_capacity_and_hasher(n, KeyHash::default()),
            paths: HashMap::with_capacity_and_hasher(n, KeyHash::default()),
        };
        for entry in set.channels.values() {
            t.insert(entry);
        }
        t
    }

    /// Brings the table from the set before to `set`, touching only `keys` (what changed between
    /// them): a one-channel change costs the core microseconds, whatever the size of the set.
    pub fn apply(&mut self, set: &ChannelSet, keys: &[String]) {
        for key in keys {
            if let Some(old) = self.paths.remove(key.as_str()) {
                if self
                    .hosts
                    .get(&*old.host)
                    .is_some_and(|c| Rc::ptr_eq(c, &old))
                {
                    self.hosts.remove(&*old.host);
                }
            }
            if let Some(entry) = set.channels.get(key) {
                self.insert(entry);
            }
        }
    }

    /// Wraps one prepared channel for this worker: two allocations (the channel and its
    /// subscribers), reference-count increments, two map inserts.
    fn insert(&mut self, entry: &Entry) {
        let dest = |d: &Option<Arc<DestSpec>>| d.as_ref().map(Dest::new);
        let p = &*entry.prepared;
        let chan = Rc::new(Channel {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            key: p.path.clone(),
            host: p.host.clone(),
            async_handler: p.async_handler,
            subscribers: p
                .subscribers
                .iter()
                .map(|s| Subscriber {
                    uid: s.uid.clone(),
                    name: s.name.clone(),
                    series: SubscriberSeries::default(),
                    target: dest(&s.target),
                    reply: dest(&s.reply),
                    dead_letter: dest(&s.dead_letter),
                    policy: s.policy,
                })
                .collect(),
            ingress: IngressSeries::default(),
            load: OnceCell::new(),
        });
        if entry.owns_host {
            self.hosts.insert(p.host.clone(), chan.clone());
        }
        self.paths.insert(p.path.clone(), chan);
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
        let d = DestSpec::new(&t, "ns", true);
        assert_eq!(
            &d.prefix[..],
            b"POST /p?q=1 HTTP/1.1\r\nHost: sink.ns.svc:8080\r\nPrefer: reply\r\nKn-Namespace: ns\r\n"
        );
        assert_eq!(&*d.key, "sink.ns.svc:8080");
    }
}
