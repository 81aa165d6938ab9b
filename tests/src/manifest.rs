//! InMemoryChannel manifests, rendered in the shape `kubectl get imc -o yaml` prints, for the
//! dispatcher's `--channels` file.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The annotation that makes a channel acknowledge before delivering (contract §2.6).
pub const ASYNC_HANDLER: &str = "messaging.knative.dev/async-handler";

/// One subscriber (`spec.subscribers[]`). Each gets a unique `uid` and `name`.
///
/// The `delivery` object is rendered only when one of its fields was set (or raw YAML was given
/// with [`Sub::delivery_yaml`]): no `delivery` means one attempt and no timeout.
#[derive(Clone, Debug)]
pub struct Sub {
    uid: String,
    name: String,
    generation: u64,
    subscriber_uri: Option<String>,
    reply_uri: Option<String>,
    subscriber_ca_certs: Option<String>,
    reply_ca_certs: Option<String>,
    delivery: Delivery,
    delivery_yaml: Option<String>,
}

/// The typed fields of `spec.subscribers[].delivery`; `None` fields are left out.
#[derive(Clone, Debug, Default)]
struct Delivery {
    retry: Option<u32>,
    backoff_policy: Option<String>,
    backoff_delay: Option<String>,
    timeout: Option<String>,
    retry_after_max: Option<String>,
    dead_letter_sink: Option<String>,
    dead_letter_ca_certs: Option<String>,
}

impl Delivery {
    /// YAML flow text, e.g. `{retry: 2, backoffDelay: "PT0.2S"}`; `None` when no field is set.
    fn flow(&self) -> Option<String> {
        let mut fields = Vec::new();
        if let Some(r) = self.retry {
            fields.push(format!("retry: {r}"));
        }
        let strings = [
            ("backoffPolicy", &self.backoff_policy),
            ("backoffDelay", &self.backoff_delay),
            ("timeout", &self.timeout),
            ("retryAfterMax", &self.retry_after_max),
        ];
        for (key, value) in strings {
            if let Some(v) = value {
                fields.push(format!("{key}: {}", quote(v)));
            }
        }
        if let Some(uri) = &self.dead_letter_sink {
            match &self.dead_letter_ca_certs {
                Some(pem) => fields.push(format!(
                    "deadLetterSink: {{uri: {}, CACerts: {}}}",
                    quote(uri),
                    quote_multiline(pem)
                )),
                None => fields.push(format!("deadLetterSink: {{uri: {}}}", quote(uri))),
            }
        }
        (!fields.is_empty()).then(|| format!("{{{}}}", fields.join(", ")))
    }
}

impl Sub {
    /// A subscriber with `subscriberUri`.
    pub fn to(subscriber_uri: &str) -> Sub {
        let mut sub = Sub::unnamed();
        sub.subscriber_uri = Some(subscriber_uri.to_string());
        sub
    }

    /// A subscriber with only a `replyUri` (D15: the reply target is the subscriber).
    pub fn reply_only(reply_uri: &str) -> Sub {
        let mut sub = Sub::unnamed();
        sub.reply_uri = Some(reply_uri.to_string());
        sub
    }

    fn unnamed() -> Sub {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Sub {
            uid: format!("00000000-0000-0000-0000-{n:012}"),
            name: format!("sub-{n}"),
            generation: 1,
            subscriber_uri: None,
            reply_uri: None,
            subscriber_ca_certs: None,
            reply_ca_certs: None,
            delivery: Delivery::default(),
            delivery_yaml: None,
        }
    }

    /// `replyUri`: where a reply event from the subscriber goes.
    pub fn reply(mut self, reply_uri: &str) -> Sub {
        self.reply_uri = Some(reply_uri.to_string());
        self
    }

    /// `delivery.retry`: retries after the first attempt.
    pub fn retry(mut self, retry: u32) -> Sub {
        self.delivery.retry = Some(retry);
        self
    }

    /// `delivery.backoffPolicy` (`linear` or `exponential`) alone.
    pub fn backoff_policy(mut self, policy: &str) -> Sub {
        self.delivery.backoff_policy = Some(policy.to_string());
        self
    }

    /// `delivery.backoffDelay` (ISO 8601) alone.
    pub fn backoff_delay(mut self, delay: &str) -> Sub {
        self.delivery.backoff_delay = Some(delay.to_string());
        self
    }

    /// `backoffPolicy: exponential` with `backoffDelay: delay`.
    pub fn exponential(self, delay: &str) -> Sub {
        self.backoff_policy("exponential").backoff_delay(delay)
    }

    /// `backoffPolicy: linear` with `backoffDelay: delay`.
    pub fn linear(self, delay: &str) -> Sub {
        self.backoff_policy("linear").backoff_delay(delay)
    }

    /// `delivery.timeout`: per attempt (ISO 8601).
    pub fn timeout(mut self, timeout: &str) -> Sub {
        self.delivery.timeout = Some(timeout.to_string());
        self
    }

    /// `delivery.retryAfterMax` (ISO 8601): honour `Retry-After` on 429 and 503, capped.
    pub fn retry_after_max(mut self, max: &str) -> Sub {
        self.delivery.retry_after_max = Some(max.to_string());
        self
    }

    /// `delivery.deadLetterSink.uri`.
    pub fn dead_letter(mut self, uri: &str) -> Sub {
        self.delivery.dead_letter_sink = Some(uri.to_string());
        self
    }

    /// `subscriberCACerts`: PEM CA certificates an https subscriber is trusted with.
    pub fn subscriber_ca_certs(mut self, pem: &str) -> Sub {
        self.subscriber_ca_certs = Some(pem.to_string());
        self
    }

    /// `replyCACerts`.
    pub fn reply_ca_certs(mut self, pem: &str) -> Sub {
        self.reply_ca_certs = Some(pem.to_string());
        self
    }

    /// `delivery.deadLetterSink.CACerts` (with [`Sub::dead_letter`]).
    pub fn dead_letter_ca_certs(mut self, pem: &str) -> Sub {
        self.delivery.dead_letter_ca_certs = Some(pem.to_string());
        self
    }

    /// The `delivery` object as raw YAML flow text, e.g. `{backoffDelay: garbage}`; replaces the
    /// typed fields.
    pub fn delivery_yaml(mut self, flow: &str) -> Sub {
        self.delivery_yaml = Some(flow.to_string());
        self
    }

    fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!("- generation: {}", self.generation),
            format!("  name: {}", quote(&self.name)),
        ];
        if let Some(uri) = &self.subscriber_uri {
            out.push(format!("  subscriberUri: {}", quote(uri)));
        }
        if let Some(uri) = &self.reply_uri {
            out.push(format!("  replyUri: {}", quote(uri)));
        }
        if let Some(pem) = &self.subscriber_ca_certs {
            out.push(format!("  subscriberCACerts: {}", quote_multiline(pem)));
        }
        if let Some(pem) = &self.reply_ca_certs {
            out.push(format!("  replyCACerts: {}", quote_multiline(pem)));
        }
        out.push(format!("  uid: {}", quote(&self.uid)));
        if let Some(delivery) = self.delivery_yaml.clone().or_else(|| self.delivery.flow()) {
            out.push(format!("  delivery: {delivery}"));
        }
        out
    }
}

#[derive(Clone, Copy, Debug)]
enum Status {
    /// No `status` at all: the file source treats the channel as Ready.
    Absent,
    Ready,
    NotReady,
}

/// One InMemoryChannel.
#[derive(Clone, Debug)]
pub struct Channel {
    namespace: String,
    name: String,
    subscribers: Vec<Sub>,
    annotations: Vec<(String, String)>,
    status: Status,
}

impl Channel {
    /// A channel with no subscribers and no `status` (Ready, in the file source).
    pub fn new(namespace: &str, name: &str) -> Channel {
        Channel {
            namespace: namespace.to_string(),
            name: name.to_string(),
            subscribers: Vec::new(),
            annotations: Vec::new(),
            status: Status::Absent,
        }
    }

    pub fn subscriber(mut self, sub: Sub) -> Channel {
        self.subscribers.push(sub);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Channel {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    /// Annotation `messaging.knative.dev/async-handler: value`.
    pub fn async_handler(self, value: &str) -> Channel {
        self.annotation(ASYNC_HANDLER, value)
    }

    /// A full `status` as the imc-controller writes it, with condition Ready "False".
    pub fn not_ready(mut self) -> Channel {
        self.status = Status::NotReady;
        self
    }

    /// A full `status` as the imc-controller writes it, with condition Ready "True".
    pub fn ready_status(mut self) -> Channel {
        self.status = Status::Ready;
        self
    }

    /// The host routing key, `<name>-kn-channel.<namespace>.svc.cluster.local`.
    pub fn host(&self) -> String {
        format!(
            "{}-kn-channel.{}.svc.cluster.local",
            self.name, self.namespace
        )
    }

    /// The path routing key as a request target, `/<namespace>/<name>`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.namespace, self.name)
    }

    /// The manifest as one YAML document.
    pub fn to_yaml(&self) -> String {
        self.lines().iter().map(|l| format!("{l}\n")).collect()
    }

    fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "apiVersion: messaging.knative.dev/v1".to_string(),
            "kind: InMemoryChannel".to_string(),
            "metadata:".to_string(),
        ];
        if !self.annotations.is_empty() {
            out.push("  annotations:".to_string());
            for (k, v) in &self.annotations {
                out.push(format!("    {}: {}", quote(k), quote(v)));
            }
        }
        out.push("  generation: 1".to_string());
        out.push(format!("  name: {}", quote(&self.name)));
        out.push(format!("  namespace: {}", quote(&self.namespace)));
        out.push("spec:".to_string());
        if self.subscribers.is_empty() {
            out.push("  subscribers: []".to_string());
        } else {
            out.push("  subscribers:".to_string());
            for sub in &self.subscribers {
                out.extend(sub.lines().into_iter().map(|l| format!("  {l}")));
            }
        }
        let ready = match self.status {
            Status::Absent => return out,
            Status::Ready => "True",
            Status::NotReady => "False",
        };
        out.extend([
            "status:".to_string(),
            "  address:".to_string(),
            format!("    url: http://{}", self.host()),
            "  conditions:".to_string(),
            "  - lastTransitionTime: \"2024-01-01T00:00:00Z\"".to_string(),
            format!("    status: \"{ready}\""),
            "    type: Ready".to_string(),
            "  observedGeneration: 1".to_string(),
        ]);
        out
    }
}

/// Several channels as a multi-document YAML stream.
pub fn channels_yaml(channels: &[Channel]) -> String {
    channels
        .iter()
        .map(Channel::to_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Several channels as one `kind: List`, the way `kubectl get imc -A -o yaml` prints them.
pub fn channels_list_yaml(channels: &[Channel]) -> String {
    let mut out = String::from("apiVersion: v1\nitems:\n");
    for channel in channels {
        for (i, line) in channel.lines().iter().enumerate() {
            let prefix = if i == 0 { "- " } else { "  " };
            out.push_str(&format!("{prefix}{line}\n"));
        }
    }
    out.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    out
}

/// A YAML double-quoted scalar.
/// A YAML double-quoted scalar keeping line breaks (a JSON string is one).
fn quote_multiline(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
