//! The one module that calls into `imc_dispatcher`. Every target goes through these thin wrappers,
//! so that a change of the dispatcher's signatures (http.rs and cloudevent.rs are being rewritten)
//! is adapted here and nowhere else. The wrappers translate the dispatcher's borrowed, range-based
//! results into owned values that targets can compare across runs; they decide nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use imc_dispatcher::{channels, cloudevent, config, delivery, http, imc, routing, source};

pub use imc_dispatcher::delivery::{Backoff, DeliveryPolicy, MAX_DELAY};
pub use imc_dispatcher::http::HEADER_SLOTS;
pub use imc_dispatcher::imc::{ChannelConfig, Imc, Target};

/// The chunked decoder's own limits, which the RFC reference decoder (rfc9112.rs) applies too:
/// today's `ChunkedDecoder` refuses a partial chunk-size line once more than 1024 bytes are
/// buffered and a partial trailer line past 8192. The reference reads them as "a chunk line holds
/// at most 1024 bytes before its CRLF" and "the trailer section holds at most 8192 bytes".
/// Update both when the rewritten decoder lands with its new limits.
pub const CHUNK_LINE_MAX: usize = http::MAX_CHUNK_LINE;
pub const TRAILER_SECTION_MAX: usize = http::MAX_TRAILERS;

// ---------------------------------------------------------------------------------------------
// Request heads: `http::parse_request(buf, max_head, max_headers, &mut RequestHead)
//   -> Result<bool, HeadError>`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    Malformed,
    TooLarge,
    UnsupportedTransferEncoding,
}

/// A parsed request head with every range resolved to the bytes it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub method: &'static str,
    pub target: Vec<u8>,
    pub http10: bool,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub host: Option<Vec<u8>>,
    pub content_type: Option<Vec<u8>>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `None`, `Kubelet`, or `Network(hash)`.
    pub probe: String,
}

/// One connection's head parser: like the ingress, it reuses one `RequestHead` for every
/// request of the connection (so stale state from a previous request would show).
pub struct HeadParser {
    head: http::RequestHead,
}

impl Default for HeadParser {
    fn default() -> Self {
        HeadParser {
            head: http::RequestHead::new(),
        }
    }
}

impl HeadParser {
    /// `Ok(None)`: incomplete, read more. Panics if a range of the result lies outside the head
    /// (an invariant of the parser: it describes the bytes it consumed).
    pub fn parse(
        &mut self,
        buf: &[u8],
        max_head: usize,
        max_headers: usize,
    ) -> Result<Option<Head>, HeadRefusal> {
        match http::parse_request(buf, max_head, max_headers, &mut self.head) {
            Ok(false) => Ok(None),
            Ok(true) => Ok(Some(self.resolve(buf))),
            Err(http::HeadError::Malformed(_)) => Err(HeadRefusal::Malformed),
            Err(http::HeadError::TooLarge) => Err(HeadRefusal::TooLarge),
            Err(http::HeadError::UnsupportedTransferEncoding) => {
                Err(HeadRefusal::UnsupportedTransferEncoding)
            }
        }
    }

    fn resolve(&self, buf: &[u8]) -> Head {
        let h = &self.head;
        assert!(h.len <= buf.len(), "head length {} past the buffer", h.len);
        let head = &buf[..h.len];
        let at = |r: &std::ops::Range<usize>| {
            assert!(
                r.start <= r.end && r.end <= h.len,
                "range {r:?} outside the head"
            );
            head[r.clone()].to_vec()
        };
        Head {
            len: h.len,
            method: match h.method {
                http::Method::Post => "POST",
                http::Method::Options => "OPTIONS",
                http::Method::Other => "other",
            },
            target: at(&h.target),
            http10: h.http10,
            headers: h
                .headers
                .iter()
                .map(|hr| (at(&hr.name), at(&hr.value)))
                .collect(),
            host: h.host.as_ref().map(at),
            content_type: h.content_type.as_ref().map(at),
            content_length: h.content_length,
            chunked: h.chunked,
            keep_alive: h.keep_alive,
            expect_continue: h.expect_continue,
            probe: match &h.probe {
                http::Probe::None => "None".into(),
                http::Probe::Kubelet => "Kubelet".into(),
                http::Probe::Network(hash) => format!(
                    "Network({:?})",
                    hash.as_ref()
                        .map(|r| String::from_utf8_lossy(&at(r)).into_owned())
                ),
            },
        }
    }
}

/// `routing::key_of`: how the ingress reads a request target (`None`: 400).
pub fn route_key(target: &str) -> Option<String> {
    routing::key_of(target).map(|k| match k {
        routing::Key::Host => "<host>".to_owned(),
        routing::Key::Path(p) => p.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies: `http::ChunkedDecoder::default()`, then
//   `decode(&mut self, input: &mut BytesMut, out: &mut BytesMut, max: usize)
//     -> Result<bool, ChunkError>`, consuming from the front of `input`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRefusal {
    Malformed,
    TooLarge,
}

#[derive(Default)]
pub struct Chunked(http::ChunkedDecoder);

impl Chunked {
    /// `Ok(true)`: the body is complete (trailers and final CRLF consumed).
    pub fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<bool, ChunkRefusal> {
        self.0.decode(input, out, max).map_err(|e| match e {
            http::ChunkError::Malformed => ChunkRefusal::Malformed,
            http::ChunkError::TooLarge => ChunkRefusal::TooLarge,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Response heads: `http::parse_response(buf, max_head)
//   -> Result<Option<ResponseHead>, &'static str>`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub len: usize,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    pub bodiless: bool,
}

/// A connection's response-head parser: the scan state persists between reads of one head, as
/// in the pool.
#[derive(Default)]
pub struct ResponseParser(http::HeadScan);

impl ResponseParser {
    pub fn parse(&mut self, buf: &[u8], max_head: usize) -> Result<Option<Response>, &'static str> {
        Ok(
            http::parse_response(buf, max_head, &mut self.0)?.map(|h| Response {
                status: h.status,
                len: h.len,
                content_length: h.content_length,
                chunked: h.chunked,
                keep_alive: h.keep_alive,
                bodiless: h.bodiless(),
            }),
        )
    }
}

/// One-shot: `buf` parsed with a fresh scan.
pub fn parse_response(buf: &[u8], max_head: usize) -> Result<Option<Response>, &'static str> {
    ResponseParser::default().parse(buf, max_head)
}

// ---------------------------------------------------------------------------------------------
// CloudEvents: the request head is parsed with `parse_request` as the ingress does, frozen, and
// handed to `cloudevent::write_binary_head(head: &[u8], headers: &[HeaderRange],
//   content_type: Option<&[u8]>, body: Bytes, out: &mut BytesMut)
//   -> Result<(Bytes, usize), CeError>`.

/// The limits the CloudEvent targets parse with: the largest the dispatcher allows, so that what
/// is tested is the event validation, not the head limits.
pub const CE_MAX_HEAD: usize = 1 << 20;

#[derive(Debug)]
pub enum Event {
    /// The request head itself was refused or incomplete: the event never reaches validation.
    HeadRefused,
    /// `write_binary_head` refused the event (a 400 at the ingress); the error's text.
    Invalid(String),
    /// The binary-mode head written for subscribers (attribute lines, then passthrough lines),
    /// where the attribute lines end, and the body to deliver.
    Valid {
        head: Vec<u8>,
        attrs_len: usize,
        data: Bytes,
    },
}

pub fn binary_event(request_head: &[u8], body: Bytes) -> Event {
    let mut parsed = http::RequestHead::new();
    match http::parse_request(request_head, CE_MAX_HEAD, HEADER_SLOTS, &mut parsed) {
        Ok(true) => {}
        Ok(false) | Err(_) => return Event::HeadRefused,
    }
    let frozen = Bytes::copy_from_slice(&request_head[..parsed.len]);
    let ct = parsed.content_type.clone().map(|r| &frozen[r]);
    // Not empty, as at the ingress (the worker's event-head buffer holds earlier heads): the
    // returned attribute length must be relative to where writing started.
    let mut out = BytesMut::from(&b"<earlier event heads>"[..]);
    let start = out.len();
    let limits = cloudevent::CeLimits {
        max_attributes: HEADER_SLOTS,
        max_head: CE_MAX_HEAD,
    };
    match cloudevent::write_binary_head(&frozen, &parsed.headers, ct, body, &mut out, limits) {
        Ok((data, attrs_len)) => Event::Valid {
            head: out[start..].to_vec(),
            attrs_len,
            data,
        },
        Err(e) => Event::Invalid(e.to_string()),
    }
}

/// `cloudevent::is_passthrough(name)`: the inbound headers every subscriber receives unchanged.
pub fn is_passthrough(name: &[u8]) -> bool {
    cloudevent::is_passthrough(name)
}

// ---------------------------------------------------------------------------------------------
// Channel manifests: `source::parse_manifests(text: &str, path: &Path)
//   -> Result<Vec<Imc>, String>`, then what the file source does with the result:
// `Imc::{namespace, is_ready, in_scope}`, `ChannelConfig::from_imc(&Imc, cluster_domain)`,
// `ChannelSet::build(prev, &[FileLoad], &BuildOptions)`, `routing::Table::build(&ChannelSet)`
// and `Table::route(&Key, host)`.

pub const CLUSTER_DOMAIN: &str = "cluster.local";

pub fn parse_manifests(text: &str, path: &Path) -> Result<Vec<Imc>, String> {
    source::parse_manifests(text, path)
}

/// What the file source reads of one channel before building its config.
#[derive(Debug)]
pub struct ImcFacts {
    pub key: String,
    pub ready: bool,
    pub cluster_scoped: bool,
    pub in_namespace_default: bool,
}

pub fn imc_facts(i: &Imc) -> ImcFacts {
    ImcFacts {
        key: i.key(),
        ready: i.is_ready(imc::Source::File),
        cluster_scoped: i.in_scope(None),
        in_namespace_default: i.in_scope(Some("default")),
    }
}

pub fn channel_config(i: &Imc) -> Result<ChannelConfig, String> {
    imc::ChannelConfig::from_imc(i, CLUSTER_DOMAIN)
}

pub fn parse_target(raw: &str) -> Result<Target, String> {
    imc::Target::parse(raw)
}

pub type ChannelSet = channels::ChannelSet;

/// One build of the channel set from one file; returns the set, the files that failed and the
/// channels rejected.
pub fn build_set(
    prev: &ChannelSet,
    path: &Path,
    result: Result<Vec<Imc>, String>,
) -> (ChannelSet, usize, usize) {
    let files = [channels::FileLoad {
        path: path.to_path_buf(),
        result,
    }];
    let opts = channels::BuildOptions {
        cluster_domain: CLUSTER_DOMAIN,
        namespace_mode: None,
        source: imc::Source::File,
    };
    let (set, report) = ChannelSet::build(prev, &files, &opts);
    (set, report.files_failed, report.channels_rejected)
}

/// Every channel of a set: its key, the file it came from, and its config.
pub fn set_entries(set: &ChannelSet) -> Vec<(String, PathBuf, ChannelConfig)> {
    set.channels
        .iter()
        .map(|(k, e)| (k.clone(), e.origin.to_path_buf(), (*e.config).clone()))
        .collect()
}

pub struct Table(routing::Table);

pub fn route_table(set: &ChannelSet) -> Table {
    Table(routing::Table::build(set))
}

impl Table {
    /// The `(namespace, name)` that `/<ns>/<name>`-style key `path` routes to.
    pub fn by_path(&self, path: &str) -> Option<(String, String)> {
        self.0
            .route(&routing::Key::Path(path), None)
            .map(|c| (c.namespace.to_string(), c.name.to_string()))
    }

    /// The `(namespace, name)` a request for `/` with this `Host` routes to.
    pub fn by_host(&self, host: &str) -> Option<(String, String)> {
        self.0
            .route(&routing::Key::Host, Some(host))
            .map(|c| (c.namespace.to_string(), c.name.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// Durations: `delivery::parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration>`,
// `delivery::parse_iso_duration(&str) -> Result<Duration, String>`,
// `config::parse_duration(&str) -> Result<Duration, String>`, and the delivery policy built from
// them: `DeliveryPolicy::from_spec(Option<&DeliverySpec>)`, `delay(k)`, `delay_after(k, &Failure)`.

pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    delivery::parse_retry_after(value, now)
}

pub fn iso_duration(s: &str) -> Result<Duration, String> {
    delivery::parse_iso_duration(s)
}

pub fn cli_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

/// A subscriber's `delivery` block with these fields.
pub fn delivery_policy(
    retry: Option<i32>,
    backoff_policy: Option<&str>,
    backoff_delay: Option<&str>,
    timeout: Option<&str>,
    retry_after_max: Option<&str>,
) -> Result<Option<DeliveryPolicy>, String> {
    let spec = imc::DeliverySpec {
        retry,
        backoff_policy: backoff_policy.map(str::to_owned),
        backoff_delay: backoff_delay.map(str::to_owned),
        timeout: timeout.map(str::to_owned),
        retry_after_max: retry_after_max.map(str::to_owned),
        ..Default::default()
    };
    DeliveryPolicy::from_spec(Some(&spec))
}

pub fn delay(p: &DeliveryPolicy, k: u32) -> Duration {
    p.delay(k)
}

/// The wait before retry `k` after the subscriber answered `code` with this `Retry-After`.
pub fn delay_after_status(
    p: &DeliveryPolicy,
    k: u32,
    code: u16,
    retry_after: Option<Duration>,
) -> Duration {
    p.delay_after(
        k,
        delivery::Failure::Status {
            code,
            body: Bytes::new(),
            retry_after,
        }
        .retry_after(),
    )
}
