//! The per-subscriber delivery policy (contract §3.3-3.4, D16), the classification of a failed
//! attempt, and the requests that follow a delivery: the reply forwarded to `replyUri` (§3.5) and
//! the original event sent to the dead-letter sink with its `knativeerror*` extensions (§3.7, D7).
//!
//! A failure is classified once, where it happens; retry, reply and dead-letter logic read the
//! classification and never look at error text. Building reply and dead-letter heads allocates;
//! both run only after a subscriber answered with an event or failed, never for a plain 2xx.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::cloudevent::{is_passthrough, put_header};
use crate::http::trim;
pub use imc_model::policy::{parse_iso_duration, Backoff, DeliveryPolicy, MAX_DELAY};

/// `Retry-After` as seconds or an HTTP date (RFC 1123, RFC 850, asctime). Unparseable or past
/// values are `None`, which counts as zero.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let v = std::str::from_utf8(trim(value)).ok()?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(v).ok()?.duration_since(now).ok()
}

/// How a subscriber's 2xx response is an event, decided from its headers alone (contract §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyKind {
    Binary,
    Structured,
    Batch,
}

fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    block
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

fn name_of(line: &[u8]) -> &[u8] {
    let colon = memchr::memchr(b':', line).unwrap_or(line.len());
    &line[..colon]
}

fn is_trace_context(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"traceparent")
        || name.eq_ignore_ascii_case(b"tracestate")
        || name.eq_ignore_ascii_case(b"baggage")
}

/// The trace-context lines of a header block (with tracing off, every outbound call carries the
/// inbound trace context unchanged).
pub fn trace_lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    lines(block).filter(|l| is_trace_context(name_of(l)))
}

/// The request that forwards a subscriber's reply, when its response is a CloudEvent: the head
/// to send before the (unchanged) body, and the passthrough headers of the response (plus the
/// inbound trace context) that a dead-letter request after a reply failure carries.
pub fn reply_request(resp_head: &[u8], body_len: usize, inbound: &[u8]) -> Option<(Bytes, Bytes)> {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut slots);
    resp.parse(resp_head).ok()?;
    let header = |n: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(n));
    let media = header("content-type").map(|h| {
        let v = h.value;
        trim(&v[..memchr::memchr(b';', v).unwrap_or(v.len())])
    });
    let kind = match media {
        Some(m) if m.eq_ignore_ascii_case(b"application/cloudevents+json") => ReplyKind::Structured,
        Some(m) if m.eq_ignore_ascii_case(b"application/cloudevents-batch+json") => {
            ReplyKind::Batch
        }
        _ => match header("ce-specversion").map(|h| h.value) {
            Some(b"1.0") | Some(b"0.3") => ReplyKind::Binary,
            _ => return None,
        },
    };
    let mut pass = BytesMut::new();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // The reply carries PassThroughHeaders of the response; trace context comes from the
        // inbound request, not from the subscriber.
        if is_passthrough(name) && !is_trace_context(name) {
            put_header(&mut pass, name, h.value);
        }
    }
    for line in trace_lines(inbound) {
        pass.put_slice(line);
        pass.put_slice(b"\r\n");
    }
    let pass = pass.freeze();
    let mut head = BytesMut::with_capacity(256 + pass.len());
    match kind {
        ReplyKind::Binary => {
            for h in resp.headers.iter() {
                let name = h.name.as_bytes();
                let ce = name.len() > 3 && name[..3].eq_ignore_ascii_case(b"ce-");
                if ce || name.eq_ignore_ascii_case(b"content-type") {
                    put_header(&mut head, name, h.value);
                }
            }
        }
        ReplyKind::Structured => head.put_slice(b"Content-Type: application/cloudevents+json\r\n"),
        ReplyKind::Batch => head.put_slice(b"Content-Type: application/cloudevents-batch+json\r\n"),
    }
    head.put_slice(&pass);
    put_content_length(&mut head, body_len);
    Some((head.freeze(), pass))
}

/// `Content-Length` and the blank line that ends a head.
pub fn put_content_length(out: &mut BytesMut, len: usize) {
    out.put_slice(b"Content-Length: ");
    out.put_slice(itoa::Buffer::new().format(len).as_bytes());
    out.put_slice(b"\r\n\r\n");
}

/// D7: `knativeerrordata` holds at most 1024 base64 characters: the first 768 bytes of the body.
pub const ERROR_DATA_MAX_BYTES: usize = 768;

fn has_attribute(attrs: &[u8], name: &[u8]) -> bool {
    lines(attrs).any(|l| {
        let n = name_of(l);
        n.len() == 3 + name.len()
            && n[..3].eq_ignore_ascii_case(b"ce-")
            && n[3..].eq_ignore_ascii_case(name)
            && !trim(&l[n.len() + 1..]).is_empty()
    })
}

/// The headers a dead-letter request adds after the event's attributes: the three error
/// extensions, each only where the event does not carry it already (an earlier failure's values
/// win), then `passthrough`, then `Content-Length`.
pub fn dead_letter_extra(
    attrs: &[u8],
    failed_url: &str,
    failure: &Failure,
    passthrough: &[u8],
    body_len: usize,
) -> Bytes {
    let mut out = BytesMut::with_capacity(1200 + passthrough.len());
    if !has_attribute(attrs, b"knativeerrordest") {
        put_header(&mut out, b"Ce-Knativeerrordest", failed_url.as_bytes());
    }
    if !has_attribute(attrs, b"knativeerrorcode") {
        put_header(
            &mut out,
            b"Ce-Knativeerrorcode",
            itoa::Buffer::new().format(failure.code()).as_bytes(),
        );
    }
    if !has_attribute(attrs, b"knativeerrordata") {
        let data = failure.data();
        // D7: truncate instead of panicking (upstream's fixed 1024-byte buffer overflows).
        let data = &data[..data.len().min(ERROR_DATA_MAX_BYTES)];
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        put_header(&mut out, b"Ce-Knativeerrordata", encoded.as_bytes());
    }
    out.put_slice(passthrough);
    put_content_length(&mut out, body_len);
    out.freeze()
}

/// What went wrong with one attempt, decided once where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No usable connection or the exchange broke: refused, reset, DNS, closed early.
    Transport(String),
    /// The per-attempt timeout elapsed.
    Timeout,
    /// The peer answered something that is not HTTP/1.1 we can read.
    Protocol(&'static str),
    /// A complete response with a non-2xx status, its body (the dead-letter sink gets it) and, on
    /// 429/503, the delay its `Retry-After` asked for.
    Status {
        code: u16,
        body: Bytes,
        retry_after: Option<Duration>,
    },
    /// The subscriber has no URI at all (neither subscriberUri nor replyUri).
    NoDestination,
}

impl Failure {
    /// The retryable set of contract §3.4: transport errors, timeouts, 5xx, 404, 408, 409, 429.
    /// D10: a 3xx is not followed and not retried.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Transport(_) | Failure::Timeout | Failure::Protocol(_) => true,
            Failure::Status { code, .. } => *code >= 500 || matches!(code, 404 | 408 | 409 | 429),
            Failure::NoDestination => false,
        }
    }

    /// The delay a 429 or 503 asked for with `Retry-After` (what [`DeliveryPolicy::delay_after`]
    /// may honour); `None` for every other failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status {
                code: 429 | 503,
                retry_after,
                ..
            } => *retry_after,
            _ => None,
        }
    }

    /// The status the dead-letter extension `knativeerrorcode` reports: 500 without a response.
    pub fn code(&self) -> u16 {
        match self {
            Failure::Status { code, .. } => *code,
            _ => 500,
        }
    }

    /// What `knativeerrordata` encodes: the response body, or upstream's `dispatch error:` text
    /// when there was no response.
    pub fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Failure::Status { body, .. } => Cow::Borrowed(body),
            other => Cow::Owned(format!("dispatch error: {other}").into_bytes()),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transport(e) => write!(f, "transport error: {e}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Protocol(e) => write!(f, "protocol error: {e}"),
            Failure::Status { code, .. } => write!(f, "status {code}"),
            Failure::NoDestination => f.write_str("subscriber has no URI"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_set() {
        let status = |code| Failure::Status {
            code,
            body: Bytes::new(),
            retry_after: None,
        };
        for c in [404, 408, 409, 429, 500, 502, 503, 504] {
            assert!(status(c).retryable(), "{c}");
        }
        for c in [300, 302, 400, 401, 403, 410, 413, 422] {
            assert!(!status(c).retryable(), "{c}");
        }
        assert!(Failure::Timeout.retryable());
    }

    #[test]
    fn retry_after_counts_only_when_opted_in_and_only_on_429_503() {
        // Parsing a `delivery` block is the model's (and tested there); this is the policy it gives.
        let mut p = DeliveryPolicy {
            retry: 1,
            backoff: Backoff::Linear(Duration::from_millis(100)),
            timeout: None,
            retry_after_max: None,
        };
        let busy = |code| Failure::Status {
            code,
            body: Bytes::new(),
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            p.delay_after(1, busy(429).retry_after()),
            Duration::ZERO,
            "no retryAfterMax"
        );
        p.retry_after_max = Some(Duration::from_secs(1));
        assert_eq!(
            p.delay_after(1, busy(429).retry_after()),
            Duration::from_secs(1),
            "capped"
        );
        assert_eq!(
            p.delay_after(1, busy(500).retry_after()),
            Duration::ZERO,
            "500 ignores it"
        );
        let now = SystemTime::now();
        assert_eq!(parse_retry_after(b" 5 ", now), Some(Duration::from_secs(5)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let d = parse_retry_after(later.as_bytes(), now).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(parse_retry_after(b"soon", now), None);
    }

    #[test]
    fn replies_keep_their_encoding_and_carry_response_passthrough() {
        let head = b"HTTP/1.1 200 OK\r\nCe-Specversion: 1.0\r\nCe-Id: r1\r\nContent-Type: text/plain\r\nKnative-Foo: bar\r\nX-Other: no\r\ntraceparent: sub\r\n\r\n";
        let (h, pass) = reply_request(head, 4, b"traceparent: in\r\n").unwrap();
        let h = String::from_utf8(h.to_vec()).unwrap();
        assert_eq!(h, "Ce-Specversion: 1.0\r\nCe-Id: r1\r\nContent-Type: text/plain\r\nKnative-Foo: bar\r\ntraceparent: in\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(&pass[..], b"Knative-Foo: bar\r\ntraceparent: in\r\n");
        let structured = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/cloudevents+json; charset=utf-8\r\n\r\n";
        let (h, _) = reply_request(structured, 2, b"").unwrap();
        assert!(h.starts_with(b"Content-Type: application/cloudevents+json\r\n"));
        assert!(reply_request(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n",
            7,
            b""
        )
        .is_none());
    }

    #[test]
    fn dead_letter_extensions_are_added_only_when_absent_and_truncated() {
        let body = Bytes::from(vec![b'x'; 2000]);
        let failure = Failure::Status {
            code: 500,
            body: body.clone(),
            retry_after: None,
        };
        let extra = dead_letter_extra(
            b"Ce-Id: e1\r\nCe-Knativeerrorcode: 418\r\n",
            "http://s1/",
            &failure,
            b"",
            7,
        );
        let text = String::from_utf8(extra.to_vec()).unwrap();
        assert!(text.contains("Ce-Knativeerrordest: http://s1/\r\n"));
        assert!(
            !text.contains("Ce-Knativeerrorcode"),
            "kept the event's own"
        );
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("Ce-Knativeerrordata: "))
            .unwrap();
        assert_eq!(data.len(), 1024);
        let full = base64::engine::general_purpose::STANDARD.encode(&body);
        assert_eq!(data, &full[..1024]);
        let empty = Failure::Status {
            code: 500,
            body: Bytes::new(),
            retry_after: None,
        };
        let text = String::from_utf8(dead_letter_extra(b"", "u", &empty, b"", 0).to_vec()).unwrap();
        assert!(text.contains("Ce-Knativeerrordata: \r\n"));
        let t = Failure::Transport("connection refused".into());
        assert!(t.data().starts_with(b"dispatch error:"));
    }
}
