//! The InMemoryChannel object (`messaging.knative.dev/v1`) as Kubernetes serves it, and its
//! conversion into a validated [`ChannelConfig`]. Only the fields the dispatcher reads (contract
//! §4.1) are modelled; everything else in a manifest is ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::policy::DeliveryPolicy;

pub const ASYNC_ANNOTATION: &str = "messaging.knative.dev/async-handler";
pub const SCOPE_ANNOTATION: &str = "eventing.knative.dev/scope";

/// Where channel objects come from, for the parts of the gate that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--channels PATH`: hand-written manifests, often without status.
    File,
    /// The Kubernetes API, through imc-control.
    Cluster,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Imc {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ImcSpec,
    #[serde(default)]
    pub status: Option<ImcStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImcSpec {
    #[serde(default)]
    pub subscribers: Vec<SubscriberSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberSpec {
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub subscriber_uri: Option<String>,
    #[serde(default)]
    pub reply_uri: Option<String>,
    /// PEM CA certificates an https `subscriberUri` is also trusted with (contract §6.5).
    #[serde(default, rename = "subscriberCACerts")]
    pub subscriber_ca_certs: Option<String>,
    /// PEM CA certificates an https `replyUri` is also trusted with.
    #[serde(default, rename = "replyCACerts")]
    pub reply_ca_certs: Option<String>,
    #[serde(default)]
    pub delivery: Option<DeliverySpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    #[serde(default)]
    pub dead_letter_sink: Option<Destination>,
    #[serde(default)]
    pub retry: Option<i32>,
    #[serde(default)]
    pub backoff_policy: Option<String>,
    #[serde(default)]
    pub backoff_delay: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retry_after_max: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Destination {
    #[serde(default)]
    pub uri: Option<String>,
    /// PEM CA certificates an https `uri` is also trusted with (duckv1.Destination's `CACerts`).
    #[serde(default, rename = "CACerts")]
    pub ca_certs: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImcStatus {
    #[serde(default)]
    pub address: Option<Address>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub observed_generation: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Address {
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
}

impl Imc {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// `<namespace>/<name>`: the channel's path key, and its identity in a channel set.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.metadata.name)
    }

    /// The routing gate (contract §4.1): Ready=True and observedGeneration == generation.
    /// `source` says how to read what is missing: in a manifest file a channel with no status (or
    /// no Ready condition, or no generations) is Ready; from the API server it is not, since no
    /// controller has reconciled it yet (upstream's `IsReady`).
    pub fn is_ready(&self, source: Source) -> bool {
        let lenient = source == Source::File;
        let Some(status) = &self.status else {
            return lenient;
        };
        let ready = match status.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) => c.status == "True",
            None => lenient,
        };
        let generation_ok = match (self.metadata.generation, status.observed_generation) {
            (Some(g), Some(o)) => g == o,
            _ => lenient,
        };
        ready && generation_ok
    }

    /// Which dispatcher serves the channel (contract §4.6).
    pub fn in_scope(&self, namespace_mode: Option<&str>) -> bool {
        let scope = self
            .metadata
            .annotations
            .get(SCOPE_ANNOTATION)
            .map(String::as_str);
        scope_matches(self.namespace(), scope, namespace_mode)
    }
}

/// Contract §4.6: a cluster dispatcher (`namespace_mode` unset) serves channels whose scope
/// annotation is absent or `cluster`; a namespace dispatcher serves only its namespace's channels
/// annotated `namespace`.
pub fn scope_matches(namespace: &str, scope: Option<&str>, namespace_mode: Option<&str>) -> bool {
    match namespace_mode {
        None => scope != Some("namespace"),
        Some(ns) => scope == Some("namespace") && namespace == ns,
    }
}

/// Go's `strconv.ParseBool` true set.
fn parse_bool(s: &str) -> bool {
    matches!(s, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// An HTTP target parsed once at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as delivered to (after upstream's sanitising), for logs and `knativeerrordest`.
    pub url: String,
    /// Host name or IP literal (brackets removed).
    pub host: String,
    pub port: u16,
    /// The `Host` header: the URL's authority.
    pub authority: String,
    /// Path and query, `/` when empty.
    pub path: String,
    pub tls: bool,
    /// The target's own PEM CA certificates (`subscriberCACerts`, `replyCACerts`,
    /// `deadLetterSink.CACerts`), trusted besides the system's and the custom ones; only read
    /// for https targets.
    pub ca_certs: Option<String>,
}

impl Target {
    pub fn parse(raw: &str) -> Result<Target, String> {
        let uri: http::Uri = raw
            .trim()
            .parse()
            .map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{raw}` has no host"))?
            .clone();
        let scheme = uri.scheme_str().unwrap_or("http");
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(format!("`{raw}` has no host"));
        }
        let (tls, path) = match scheme {
            "http" => (false, uri.path_and_query().map_or("/", |p| p.as_str())),
            "https" => (true, uri.path_and_query().map_or("/", |p| p.as_str())),
            // Upstream's sanitizeURL: any other scheme becomes http://<host>/, path dropped.
            _ => (false, "/"),
        };
        let path = if path.is_empty() { "/" } else { path }.to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let url = format!(
            "{}://{}{}",
            if tls { "https" } else { "http" },
            authority.as_str(),
            if path == "/" && !raw.trim_end().ends_with('/') {
                ""
            } else {
                &path
            }
        );
        Ok(Target {
            url,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path,
            tls,
            ca_certs: None,
        })
    }

    /// The target with its own CA certificates (empty PEM: none).
    pub fn with_ca_certs(mut self, pem: Option<&str>) -> Target {
        self.ca_certs = pem.filter(|p| !p.trim().is_empty()).map(str::to_owned);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberConfig {
    pub uid: String,
    pub name: Option<String>,
    pub generation: Option<i64>,
    /// `None`: neither subscriberUri nor replyUri; every event fails for this subscriber.
    pub target: Option<Target>,
    pub reply: Option<Target>,
    pub dead_letter: Option<Target>,
    /// `None`: no `delivery` block, one attempt and no timeout.
    pub policy: Option<DeliveryPolicy>,
}

/// One served channel, validated: what every worker's routing table is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    pub namespace: String,
    pub name: String,
    /// Host routing key, without port (D2).
    pub host: String,
    /// D9: read on every update, not only when the channel is first seen.
    pub async_handler: bool,
    pub subscribers: Vec<SubscriberConfig>,
}

impl ChannelConfig {
    /// Validates a Ready channel. An invalid subscriber invalidates the whole channel update, as
    /// upstream does (contract §3.4).
    pub fn from_imc(imc: &Imc, cluster_domain: &str) -> Result<ChannelConfig, String> {
        let ns = imc.namespace();
        let name = &imc.metadata.name;
        if name.is_empty() {
            return Err("metadata.name is empty".into());
        }
        let host = match imc
            .status
            .as_ref()
            .and_then(|s| s.address.as_ref())
            .and_then(|a| a.url.as_deref())
        {
            Some(url) => {
                Target::parse(url)
                    .map_err(|e| format!("status.address.url: {e}"))?
                    .host
            }
            None => format!("{name}-kn-channel.{ns}.svc.{cluster_domain}"),
        };
        let mut subscribers = Vec::with_capacity(imc.spec.subscribers.len());
        for (i, s) in imc.spec.subscribers.iter().enumerate() {
            let at = |field: &str| format!("spec.subscribers[{i}].{field}");
            let parse = |field: &str, v: &Option<String>| {
                v.as_deref()
                    .filter(|u| !u.trim().is_empty())
                    .map(Target::parse)
                    .transpose()
                    .map_err(|e| format!("{}: {e}", at(field)))
            };
            let mut target = parse("subscriberUri", &s.subscriber_uri)?
                .map(|t| t.with_ca_certs(s.subscriber_ca_certs.as_deref()));
            let mut reply = parse("replyUri", &s.reply_uri)?
                .map(|t| t.with_ca_certs(s.reply_ca_certs.as_deref()));
            // D15: a reply-only subscriber delivers to its reply target, as the spec says.
            if target.is_none() {
                target = reply.take();
            }
            let dls = s
                .delivery
                .as_ref()
                .and_then(|d| d.dead_letter_sink.as_ref());
            let dead_letter = parse(
                "delivery.deadLetterSink.uri",
                &dls.and_then(|d| d.uri.clone()),
            )?
            .map(|t| t.with_ca_certs(dls.and_then(|d| d.ca_certs.as_deref())));
            let policy = DeliveryPolicy::from_spec(s.delivery.as_ref())
                .map_err(|e| format!("{}: {e}", at("delivery")))?;
            subscribers.push(SubscriberConfig {
                uid: s.uid.clone().unwrap_or_default(),
                name: s.name.clone(),
                generation: s.generation,
                target,
                reply,
                dead_letter,
                policy,
            });
        }
        Ok(ChannelConfig {
            namespace: ns.to_owned(),
            name: name.clone(),
            host,
            async_handler: imc
                .metadata
                .annotations
                .get(ASYNC_ANNOTATION)
                .is_some_and(|v| parse_bool(v)),
            subscribers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imc(yaml: &str) -> Imc {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn channel_without_status_gets_the_service_host() {
        let c = ChannelConfig::from_imc(
            &imc("metadata: {name: demo}\nspec: {subscribers: [{uid: a, subscriberUri: 'http://e.default.svc.cluster.local'}]}"),
            "cluster.local",
        )
        .unwrap();
        assert_eq!(c.host, "demo-kn-channel.default.svc.cluster.local");
        assert_eq!(c.namespace, "default");
        let t = c.subscribers[0].target.as_ref().unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.authority.as_str()),
            (80, "/", "e.default.svc.cluster.local")
        );
        assert_eq!(t.url, "http://e.default.svc.cluster.local");
    }

    #[test]
    fn status_address_sets_the_host_and_readiness_gates() {
        let ready = imc("metadata: {name: c, namespace: n, generation: 2}\nstatus: {observedGeneration: 2, address: {url: 'http://c-kn-channel.n.svc.example.org'}, conditions: [{type: Ready, status: 'True'}]}");
        assert!(ready.is_ready(Source::File));
        assert_eq!(
            ChannelConfig::from_imc(&ready, "cluster.local")
                .unwrap()
                .host,
            "c-kn-channel.n.svc.example.org"
        );
        assert!(!imc(
            "metadata: {name: c}\nstatus: {conditions: [{type: Ready, status: 'False'}]}"
        )
        .is_ready(Source::File));
        assert!(
            !imc("metadata: {name: c, generation: 3}\nstatus: {observedGeneration: 2}")
                .is_ready(Source::File)
        );
    }

    #[test]
    fn reply_only_subscriber_delivers_to_its_reply_target() {
        let c = ChannelConfig::from_imc(
            &imc("metadata: {name: c}\nspec: {subscribers: [{uid: a, replyUri: 'http://r:8080/x?y=1'}]}"),
            "cluster.local",
        )
        .unwrap();
        let s = &c.subscribers[0];
        assert_eq!(s.target.as_ref().unwrap().path, "/x?y=1");
        assert!(s.reply.is_none());
    }

    #[test]
    fn invalid_delivery_names_the_subscriber_and_field() {
        let e = ChannelConfig::from_imc(
            &imc("metadata: {name: c}\nspec: {subscribers: [{uid: a, subscriberUri: 'http://s', delivery: {backoffPolicy: linear, backoffDelay: garbage}}]}"),
            "cluster.local",
        )
        .unwrap_err();
        assert!(
            e.contains("spec.subscribers[0].delivery") && e.contains("backoffDelay"),
            "{e}"
        );
    }

    #[test]
    fn odd_schemes_are_sanitised_like_upstream() {
        let t = Target::parse("ftp://h:21/p").unwrap();
        assert_eq!(
            (t.tls, t.path.as_str(), t.url.as_str()),
            (false, "/", "http://h:21")
        );
        assert!(Target::parse("/relative").is_err());
    }

    /// From the API server, what a manifest may leave out means "not reconciled yet".
    #[test]
    fn the_cluster_gate_needs_status_ready_and_generations() {
        let cluster = |y: &str| imc(y).is_ready(Source::Cluster);
        assert!(!cluster("metadata: {name: c, generation: 1}"));
        assert!(!cluster(
            "metadata: {name: c, generation: 1}\nstatus: {observedGeneration: 1}"
        ));
        assert!(!cluster(
            "metadata: {name: c, generation: 2}\nstatus: {observedGeneration: 1, conditions: [{type: Ready, status: 'True'}]}"
        ));
        assert!(!cluster(
            "metadata: {name: c}\nstatus: {conditions: [{type: Ready, status: 'True'}]}"
        ));
        assert!(cluster(
            "metadata: {name: c, generation: 2}\nstatus: {observedGeneration: 2, conditions: [{type: Ready, status: 'True'}]}"
        ));
        assert!(imc("metadata: {name: c}").is_ready(Source::File));
    }

    #[test]
    fn async_annotation_and_scope() {
        let c = imc("metadata: {name: c, annotations: {messaging.knative.dev/async-handler: 'True', eventing.knative.dev/scope: namespace}}");
        assert!(ChannelConfig::from_imc(&c, "x").unwrap().async_handler);
        assert!(!c.in_scope(None));
        assert!(c.in_scope(Some("default")));
        let yes =
            imc("metadata: {name: c, annotations: {messaging.knative.dev/async-handler: 'yes'}}");
        assert!(!ChannelConfig::from_imc(&yes, "x").unwrap().async_handler);
    }
}
