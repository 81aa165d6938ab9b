//! InMemoryChannel manifests, rendered in the shape `kubectl get imc -o yaml` prints, for the
//! dispatcher's `--channels` file.

use std::sync::atomic::{AtomicUsize, Ordering};

/// One subscriber (`spec.subscribers[]`). Each gets a unique `uid` and `name`.
#[derive(Clone, Debug)]
pub struct Sub {
    uid: String,
    name: String,
    generation: u64,
    subscriber_uri: String,
    delivery: Option<String>,
}

impl Sub {
    pub fn to(subscriber_uri: &str) -> Sub {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Sub {
            uid: format!("00000000-0000-0000-0000-{n:012}"),
            name: format!("sub-{n}"),
            generation: 1,
            subscriber_uri: subscriber_uri.to_string(),
            delivery: None,
        }
    }

    /// The `delivery` object as YAML flow text, e.g. `{retry: 2, backoffDelay: PT0.2S}`.
    pub fn delivery_yaml(mut self, flow: &str) -> Sub {
        self.delivery = Some(flow.to_string());
        self
    }

    fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!("- generation: {}", self.generation),
            format!("  name: {}", quote(&self.name)),
            format!("  subscriberUri: {}", quote(&self.subscriber_uri)),
            format!("  uid: {}", quote(&self.uid)),
        ];
        if let Some(delivery) = &self.delivery {
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
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
