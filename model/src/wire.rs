//! The hand-off between imc-control and imc-dispatcher: length-prefixed JSON frames over a local
//! stream (an inherited socket pair, so it needs no writable path).
//!
//! A frame is a 4-byte big-endian length, then that many bytes of JSON. control → dispatcher:
//! [`Snapshot`]s, each the complete state under a version, sent whole (`base: None`) or as the
//! channels that changed since a version the dispatcher acknowledged (`base: Some(v)`); the
//! dispatcher answers each with an [`Ack`] once every worker has installed it, or with `Resync`
//! when a delta does not apply to what it has (then the control process sends the whole state).
//! Either side restarting starts the conversation over with a whole snapshot.
//!
//! Budget: the decoder never reserves what a length prefix announces; its buffer grows with the
//! bytes that arrive, and a frame over [`MAX_FRAME`] is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The largest frame either side accepts: a whole snapshot of 10,000 channels is ~20 MB.
pub const MAX_FRAME: usize = 512 << 20;

/// control → dispatcher. Externally tagged (`{"snapshot": {...}}`): an internally tagged enum
/// would buffer the frame, which the objects' raw JSON cannot be read back from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToDispatcher {
    Snapshot(Snapshot),
}

/// The channels (InMemoryChannel objects exactly as the API server serves them) and the feature
/// flags the dispatcher is to serve with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    /// `None`: `upserts` is the whole set. `Some(v)`: changes since version `v`.
    pub base: Option<u64>,
    /// `config-features` as it is now (always whole: it is small).
    pub features: BTreeMap<String, String>,
    /// Each object's JSON, as imc-control keeps it (copied into the frame, never re-encoded).
    pub upserts: Vec<Box<RawValue>>,
    /// `<namespace>/<name>` of channels gone since `base`.
    #[serde(default)]
    pub deletes: Vec<String>,
    /// The TLS inputs of the system namespace (always whole: a certificate and a few bundles).
    #[serde(default)]
    pub tls: TlsInputs,
}

/// What the cluster says about TLS (contract §6.1, §6.5), for the 8443 listener and for https
/// targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInputs {
    /// The Secret `imc-dispatcher-server-tls` (`tls.crt`, `tls.key`, PEM); `None` while it does
    /// not exist or lacks either key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerCert>,
    /// Every ConfigMap of the system namespace labelled `networking.knative.dev/trust-bundle:
    /// "true"`: `<configmap>/<key>` → the value (PEM certificates), all keys, as upstream reads
    /// them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trust_bundles: BTreeMap<String, String>,
}

/// A server certificate chain and its private key, PEM.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerCert {
    /// `<namespace>/<name>` of the Secret, for log lines.
    pub source: String,
    /// `metadata.resourceVersion` of the Secret, so a log line can say which one is served.
    #[serde(default)]
    pub resource_version: String,
    pub cert_pem: String,
    pub key_pem: String,
}

// A private key never reaches a log line through `{:?}`.
impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("source", &self.source)
            .field("resource_version", &self.resource_version)
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// dispatcher → control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ToControl {
    /// `version` is installed on every worker; what became of each channel in it.
    Ack(Ack),
    /// A delta's base is not what the dispatcher has: send the whole state.
    Resync { have: Option<u64> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub version: u64,
    /// One entry per upsert of the acknowledged snapshot.
    pub channels: Vec<ChannelResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelResult {
    /// `<namespace>/<name>`.
    pub key: String,
    /// `metadata.generation` of the object this result is about.
    pub generation: Option<i64>,
    pub state: ChannelState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelState {
    /// This object's configuration is routed on every worker.
    Served,
    /// Not Ready (or its generation not observed): its previous configuration, if any, stays.
    NotReady,
    /// Invalid (the reason names the field): its previous configuration, if any, stays.
    Rejected,
    /// Not this dispatcher's (scope annotation or namespace).
    OutOfScope,
}

/// One frame: the length prefix and the JSON of `msg`.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0; 4];
    serde_json::to_writer(&mut out, msg).expect("wire messages serialize");
    let len = u32::try_from(out.len() - 4).expect("frame under 4 GiB");
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Reassembles frames from bytes as they arrive.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(usize),
    Json(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes over the {MAX_FRAME} limit"),
            FrameError::Json(e) => write!(f, "frame is not a valid message: {e}"),
        }
    }
}

impl Decoder {
    /// Appends bytes that arrived.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one has arrived.
    pub fn message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&self.buf[4..4 + len])
            .map_err(|e| FrameError::Json(e.to_string()));
        self.buf.drain(..4 + len);
        msg.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_any_split() {
        let snap = ToDispatcher::Snapshot(Snapshot {
            version: 3,
            base: Some(2),
            features: BTreeMap::from([("transport-encryption".into(), "disabled".into())]),
            upserts: vec![RawValue::from_string(r#"{"metadata":{"name":"c"}}"#.into()).unwrap()],
            deletes: vec!["ns/gone".into()],
            tls: TlsInputs {
                server: Some(ServerCert {
                    source: "knative-eventing/imc-dispatcher-server-tls".into(),
                    resource_version: "7".into(),
                    cert_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
                    key_pem: "-----BEGIN PRIVATE KEY-----\nsecret".into(),
                }),
                trust_bundles: BTreeMap::from([("bundle/ca.crt".into(), "pem".into())]),
            },
        });
        // A snapshot of an imc-control without TLS inputs still decodes (no `tls` member).
        let mut d = Decoder::default();
        let old = br#"{"snapshot":{"version":1,"base":null,"features":{},"upserts":[]}}"#;
        d.feed(&(old.len() as u32).to_be_bytes());
        d.feed(old);
        match d.message::<ToDispatcher>().unwrap() {
            Some(ToDispatcher::Snapshot(s)) => assert_eq!(s.tls, TlsInputs::default()),
            other => panic!("{other:?}"),
        }
        let ToDispatcher::Snapshot(shown) = &snap;
        let shown = format!("{shown:?}");
        assert!(!shown.contains("secret"), "the key is never shown: {shown}");
        let ack = ToControl::Ack(Ack {
            version: 3,
            channels: vec![ChannelResult {
                key: "ns/c".into(),
                generation: Some(1),
                state: ChannelState::Served,
                reason: None,
            }],
        });
        let mut bytes = encode(&snap);
        bytes.extend(encode(&snap));
        for step in [1, 3, 7, bytes.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(step) {
                d.feed(piece);
                while let Some(m) = d.message::<ToDispatcher>().unwrap() {
                    got.push(m);
                }
            }
            let frames: Vec<Vec<u8>> = got.iter().map(encode).collect();
            assert_eq!(frames, vec![encode(&snap), encode(&snap)], "step {step}");
        }
        let mut d = Decoder::default();
        d.feed(&encode(&ack));
        assert_eq!(d.message::<ToControl>().unwrap(), Some(ack));
        let text =
            String::from_utf8(encode(&ToControl::Resync { have: None })[4..].to_vec()).unwrap();
        assert_eq!(text, r#"{"kind":"resync","have":null}"#);
    }

    /// A length prefix is not an allocation: 4 GiB announced, 4 bytes held.
    #[test]
    fn an_announced_length_is_not_reserved() {
        let mut d = Decoder::default();
        d.feed(&u32::MAX.to_be_bytes());
        assert!(matches!(
            d.message::<ToControl>(),
            Err(FrameError::TooLarge(_))
        ));
        let mut d = Decoder::default();
        d.feed(&(100u32 << 20).to_be_bytes());
        d.feed(b"{");
        assert_eq!(d.message::<ToControl>().unwrap(), None);
        assert!(d.buf.capacity() < 1 << 20);
    }
}
