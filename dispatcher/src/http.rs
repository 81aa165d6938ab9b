//! The HTTP/1.1 codec, hand-written on httparse.
//!
//! Budget: parsing never allocates per request. A parsed head is a set of byte ranges into the
//! connection's read buffer, so that the caller can later freeze that buffer into `Bytes` and hand
//! header values and the body on without copying them. The fixed answers of the ingress are
//! `&'static [u8]`.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::BytesMut;

/// Hard upper bound on headers per message; `--max-headers` is clamped to it. The parse scratch
/// lives on the stack of a synchronous function, never in a future's state.
pub const HEADER_SLOTS: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Options,
    Other,
}

/// What a request asks of the probe handlers (contract §1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    None,
    /// `User-Agent: kube-probe/…` or a `K-Kubelet-Probe` header: readiness, on any path.
    Kubelet,
    /// `K-Network-Probe`, with the `K-Network-Hash` value to echo if there was one.
    Network(Option<Range<usize>>),
}

/// A header as two ranges into the buffer the head was parsed from.
#[derive(Debug, Clone)]
pub struct HeaderRange {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A parsed request head: ranges into the read buffer, plus the facts the server needs.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// Length of the head in the buffer, terminating blank line included.
    pub len: usize,
    pub target: Range<usize>,
    pub http10: bool,
    pub headers: Vec<HeaderRange>,
    pub host: Option<Range<usize>>,
    pub content_type: Option<Range<usize>>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub probe: Probe,
}

impl RequestHead {
    pub fn new() -> Self {
        RequestHead {
            method: Method::Other,
            len: 0,
            target: 0..0,
            http10: false,
            headers: Vec::with_capacity(32),
            host: None,
            content_type: None,
            content_length: None,
            chunked: false,
            keep_alive: true,
            expect_continue: false,
            probe: Probe::None,
        }
    }

    fn reset(&mut self) {
        self.method = Method::Other;
        self.len = 0;
        self.target = 0..0;
        self.http10 = false;
        self.headers.clear();
        self.host = None;
        self.content_type = None;
        self.content_length = None;
        self.chunked = false;
        self.keep_alive = true;
        self.expect_continue = false;
        self.probe = Probe::None;
    }

    /// Whether the request carries a body to read.
    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
}

impl Default for RequestHead {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a request head was refused. Each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or framing that cannot be trusted: 400, then close.
    Malformed(&'static str),
    /// Head larger than the limit or more headers than allowed: 431, then close (D4).
    TooLarge,
    /// A transfer coding other than chunked: 501, then close.
    UnsupportedTransferEncoding,
}

impl HeadError {
    /// The answer (then close) and what to log.
    pub fn answer(self) -> (&'static [u8], &'static str) {
        match self {
            HeadError::TooLarge => (answer::HEAD_TOO_LARGE, "request head over the limit"),
            HeadError::UnsupportedTransferEncoding => {
                (answer::NOT_IMPLEMENTED, "unsupported Transfer-Encoding")
            }
            HeadError::Malformed(why) => (answer::MALFORMED, why),
        }
    }
}

fn range_of(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Parses a request head at the start of `buf` into `out`. `Ok(false)`: incomplete, read more.
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    max_headers: usize,
    out: &mut RequestHead,
) -> Result<bool, HeadError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; HEADER_SLOTS] =
        [const { MaybeUninit::uninit() }; HEADER_SLOTS];
    let slots = &mut slots[..max_headers.clamp(1, HEADER_SLOTS)];
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, slots) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("not HTTP/1.x")),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    let len = match status {
        httparse::Status::Partial => {
            return if buf.len() > max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(false)
            };
        }
        httparse::Status::Complete(n) => n,
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    out.reset();
    out.len = len;
    out.method = match req.method {
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let path = req.path.unwrap_or("/");
    out.target = range_of(buf, path.as_bytes());
    out.http10 = req.version == Some(0);
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let hr = HeaderRange {
            name: range_of(buf, name),
            value: range_of(buf, value),
        };
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                out.host.get_or_insert(hr.value.clone());
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                out.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|b| *b == b',') {
                    let token = trim(token);
                    conn_close |= token.eq_ignore_ascii_case(b"close");
                    conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            10 if name.eq_ignore_ascii_case(b"user-agent") && value.starts_with(b"kube-probe/") => {
                out.probe = Probe::Kubelet;
            }
            12 if name.eq_ignore_ascii_case(b"content-type") => {
                out.content_type.get_or_insert(hr.value.clone());
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_decimal(trim(value))
                    .ok_or(HeadError::Malformed("invalid Content-Length"))?;
                // Two different lengths is how requests get smuggled: refuse it.
                if out.content_length.is_some_and(|m| m != n) {
                    return Err(HeadError::Malformed("conflicting Content-Length headers"));
                }
                out.content_length = Some(n);
            }
            15 if name.eq_ignore_ascii_case(b"k-kubelet-probe") => {
                out.probe = Probe::Kubelet;
            }
            15 if name.eq_ignore_ascii_case(b"k-network-probe") && out.probe == Probe::None => {
                out.probe = Probe::Network(None);
            }
            14 if name.eq_ignore_ascii_case(b"k-network-hash") => {
                if let Probe::Network(hash) = &mut out.probe {
                    hash.get_or_insert(hr.value.clone());
                } else if out.probe == Probe::None {
                    // The hash may come before the probe header; remember it either way.
                    out.probe = Probe::Network(Some(hr.value.clone()));
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_encoding = true;
                let last = value.rsplit(|b| *b == b',').next().map(trim).unwrap_or(b"");
                if last.eq_ignore_ascii_case(b"chunked") {
                    out.chunked = true;
                } else {
                    return Err(HeadError::UnsupportedTransferEncoding);
                }
            }
            _ => {}
        }
        out.headers.push(hr);
    }
    // A K-Network-Hash alone is not a probe.
    if matches!(out.probe, Probe::Network(Some(_))) && !has_header(buf, out, b"k-network-probe") {
        out.probe = Probe::None;
    }
    if transfer_encoding && out.content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    out.keep_alive = if out.http10 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    Ok(true)
}

fn has_header(buf: &[u8], head: &RequestHead, name: &[u8]) -> bool {
    head.headers
        .iter()
        .any(|h| buf[h.name.clone()].eq_ignore_ascii_case(name))
}

pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// Incremental decoder of a chunked body. Chunk data is copied into one contiguous buffer: that
/// copy is the price of chunked framing (subscribers get a Content-Length body, as upstream sends).
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    TooLarge,
}

impl ChunkedDecoder {
    /// Consumes what it can from the front of `input`, appending data to `out`. Returns whether
    /// the body is complete.
    pub fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<bool, ChunkError> {
        loop {
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(input) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = input.split_to(used);
                        if size > max as u64 || out.len() as u64 + size > max as u64 {
                            return Err(ChunkError::TooLarge);
                        }
                        self.state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            out.reserve(size as usize);
                            ChunkState::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if input.len() > 1024 {
                            return Err(ChunkError::Malformed);
                        }
                        return Ok(false);
                    }
                    Err(_) => return Err(ChunkError::Malformed),
                },
                ChunkState::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let n = (left as usize).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    let _ = input.split_to(n);
                    self.state = if left as usize == n {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n as u64)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(ChunkError::Malformed);
                    }
                    let _ = input.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // Trailer fields are read and dropped, up to the blank line.
                    match memchr::memmem::find(input, b"\r\n") {
                        Some(0) => {
                            let _ = input.split_to(2);
                            self.state = ChunkState::Done;
                        }
                        Some(i) => {
                            let _ = input.split_to(i + 2);
                        }
                        None => {
                            if input.len() > 8192 {
                                return Err(ChunkError::Malformed);
                            }
                            return Ok(false);
                        }
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }
}

/// A parsed response head (client side).
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub len: usize,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
}

impl ResponseHead {
    /// Responses that never carry a body whatever their headers say.
    pub fn bodiless(&self) -> bool {
        self.status == 204 || self.status == 304 || (100..200).contains(&self.status)
    }
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete.
pub fn parse_response(buf: &[u8], max_head: usize) -> Result<Option<ResponseHead>, &'static str> {
    // Uninitialised slots, as for requests: clearing 100 headers (3 KiB) per response would cost
    // more than parsing a typical one. The default config is what `Response::parse` uses.
    let mut slots: [MaybeUninit<httparse::Header<'_>>; 100] =
        [const { MaybeUninit::uninit() }; 100];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("malformed response head"),
    };
    let http10 = resp.version == Some(0);
    let mut head = ResponseHead {
        status: resp.code.unwrap_or(0),
        len,
        content_length: None,
        chunked: false,
        keep_alive: !http10,
    };
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            head.content_length =
                Some(parse_decimal(trim(h.value)).ok_or("invalid Content-Length in response")?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            head.chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .map(trim)
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
            if !head.chunked {
                // Any other coding is delimited by the end of the connection.
                head.keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        }
    }
    if !head.bodiless() && !head.chunked && head.content_length.is_none() {
        head.keep_alive = false; // body runs to the end of the connection
    }
    Ok(Some(head))
}

/// Looks up a header of a response head again, for the rare paths (Retry-After, replies).
pub fn response_header<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut slots);
    resp.parse(head).ok()?;
    resp.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The fixed answers of the ingress. Bodies are empty, as upstream's are (contract §2.4).
pub mod answer {
    pub const ACCEPTED: &[u8] =
        b"HTTP/1.1 202 Accepted\r\nAllow: POST, OPTIONS\r\nContent-Length: 0\r\n\r\n";
    pub const FAILED: &[u8] =
        b"HTTP/1.1 500 Internal Server Error\r\nAllow: POST, OPTIONS\r\nContent-Length: 0\r\n\r\n";
    pub const OPTIONS: &[u8] = b"HTTP/1.1 200 OK\r\nAllow: POST, OPTIONS\r\nWebHook-Allowed-Origin: *\r\nWebHook-Allowed-Rate: *\r\nContent-Length: 0\r\n\r\n";
    pub const METHOD_NOT_ALLOWED: &[u8] =
        b"HTTP/1.1 405 Method Not Allowed\r\nAllow: POST, OPTIONS\r\nContent-Length: 0\r\n\r\n";
    /// A CloudEvent that does not parse or validate: 400 with `Allow` (it came from the receiver).
    pub const INVALID_EVENT: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nAllow: POST, OPTIONS\r\nContent-Length: 0\r\n\r\n";
    /// A path that is neither `/` nor `/<ns>/<name>`: 400 without `Allow` (it came from the router).
    pub const BAD_PATH: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    /// D1: an unknown channel is 404 (upstream: 500).
    pub const UNKNOWN_CHANNEL: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    pub const READY: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    pub const NOT_READY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot ready";
    pub const NETWORK_PROBE_NO_HASH: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    /// D11: more deliveries in flight on this worker than `--max-inflight-deliveries`.
    pub const OVERLOADED: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";
    /// Probes while draining (D13), as upstream's drainer answers them.
    pub const SHUTTING_DOWN: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nshutting down";
    // Answers after which the connection is closed.
    pub const MALFORMED: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    pub const TOO_LARGE: &[u8] =
        b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    pub const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    pub const NOT_IMPLEMENTED: &[u8] =
        b"HTTP/1.1 501 Not Implemented\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    pub const TIMEOUT: &[u8] =
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<(bool, RequestHead), HeadError> {
        let mut h = RequestHead::new();
        parse_request(raw, 64 << 10, 128, &mut h).map(|done| (done, h))
    }

    #[test]
    fn request_head_facts() {
        let raw = b"POST /default/ch1 HTTP/1.1\r\nHost: a.b\r\nContent-Length: 7\r\nContent-Type: x/y\r\n\r\nbody...";
        let (done, h) = parse(raw).unwrap();
        assert!(done);
        assert_eq!(h.method, Method::Post);
        assert_eq!(&raw[h.target.clone()], b"/default/ch1");
        assert_eq!(&raw[h.host.clone().unwrap()], b"a.b");
        assert_eq!(h.content_length, Some(7));
        assert!(h.keep_alive);
        assert_eq!(&raw[h.len..], b"body...");
    }

    #[test]
    fn partial_head_asks_for_more_until_the_limit() {
        assert!(!parse(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap().0);
        let mut h = RequestHead::new();
        let big = [b'a'; 100];
        let mut raw = b"POST / HTTP/1.1\r\nX: ".to_vec();
        raw.extend_from_slice(&big);
        assert_eq!(
            parse_request(&raw, 64, 128, &mut h),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err(),
            HeadError::UnsupportedTransferEncoding
        );
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        assert!(!parse(b"POST / HTTP/1.0\r\n\r\n").unwrap().1.keep_alive);
        assert!(
            parse(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .1
                .keep_alive
        );
        assert!(
            !parse(b"POST / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .1
                .keep_alive
        );
    }

    #[test]
    fn probes_are_recognised() {
        assert_eq!(
            parse(b"GET /x HTTP/1.1\r\nUser-Agent: kube-probe/1.30\r\n\r\n")
                .unwrap()
                .1
                .probe,
            Probe::Kubelet
        );
        let raw = b"GET / HTTP/1.1\r\nK-Network-Hash: h1\r\nK-Network-Probe: probe\r\n\r\n";
        let (_, h) = parse(raw).unwrap();
        match h.probe {
            Probe::Network(Some(r)) => assert_eq!(&raw[r], b"h1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nK-Network-Hash: h1\r\n\r\n")
                .unwrap()
                .1
                .probe,
            Probe::None
        );
    }

    #[test]
    fn chunked_body_decodes_across_reads() {
        let mut dec = ChunkedDecoder::default();
        let mut out = BytesMut::new();
        let mut input = BytesMut::from(&b"4\r\nWiki\r\n5;ext=1\r\npe"[..]);
        assert!(!dec.decode(&mut input, &mut out, 100).unwrap());
        input.extend_from_slice(b"dia\r\n0\r\nTrailer: x\r\n\r\nNEXT");
        assert!(dec.decode(&mut input, &mut out, 100).unwrap());
        assert_eq!(&out[..], b"Wikipedia");
        assert_eq!(&input[..], b"NEXT");
    }

    #[test]
    fn chunked_body_over_the_limit_is_refused() {
        let mut dec = ChunkedDecoder::default();
        let mut out = BytesMut::new();
        let mut input = BytesMut::from(&b"10\r\n0123456789abcdef\r\n0\r\n\r\n"[..]);
        assert_eq!(
            dec.decode(&mut input, &mut out, 8),
            Err(ChunkError::TooLarge)
        );
        let mut input = BytesMut::from(&b"zz\r\n"[..]);
        assert_eq!(
            ChunkedDecoder::default().decode(&mut input, &mut out, 8),
            Err(ChunkError::Malformed)
        );
    }

    #[test]
    fn response_framing() {
        let h = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 1024)
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.keep_alive),
            (200, Some(3), true)
        );
        let h = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", 1024)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "close-delimited body");
        let h = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", 1024)
            .unwrap()
            .unwrap();
        assert!(h.bodiless() && h.keep_alive);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", 1024)
            .unwrap()
            .is_none());
    }
}
