//! The HTTP/1.1 codec, hand-written on httparse.
//!
//! Budget: parsing never allocates per request. A parsed head is a set of byte ranges into the
//! connection's read buffer, so that the caller can later freeze that buffer into `Bytes` and hand
//! header values and the body on without copying them. The fixed answers of the ingress are
//! `&'static [u8]`.
//!
//! Every parser here is linear in what it reads, however the input is split across reads: a head
//! is searched for its end only in the bytes that arrived since the last search ([`HeadScan`]),
//! and the chunked decoder is a byte-wise state machine that resumes where it stopped. Framing is
//! strict (RFC 9112): anything a lenient front end could frame differently (bare LF, a chunk-size
//! line with stray bytes, a transfer coding we do not decode, a repeated or invalid `Host`) is
//! refused instead of guessed at, since guessing is how requests get smuggled.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::BytesMut;

/// Hard upper bound on headers per message; `--max-headers` is clamped to it. The parse scratch
/// lives on the stack of a synchronous function, never in a future's state.
pub const HEADER_SLOTS: usize = 512;

/// Longest chunk-size line (size and extensions) accepted; longer ones are refused (400).
pub const MAX_CHUNK_LINE: usize = 4096;

/// Largest trailer section of a chunked body accepted (it is read and dropped).
pub const MAX_TRAILERS: usize = 16 << 10;

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

/// How far the search for the end of a head got, so that the next search (after more bytes
/// arrived) starts there instead of at the first byte: a head that trickles in one byte per read
/// costs linear work, not quadratic. Lives in the per-connection state between reads; a caller
/// that starts on a new message calls [`HeadScan::reset`] (the parsers do it themselves when they
/// return a complete head or an error).
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadScan {
    /// Empty lines (CRLF) before the start line, skipped (RFC 9112 §2.2).
    skip: usize,
    /// Bytes already searched for the blank line that ends the head.
    searched: usize,
    /// Buffer length at the last httparse run on an incomplete head. Such runs only detect
    /// garbage early; they are spaced geometrically (each at twice the length of the last), so
    /// that their total cost stays linear.
    parsed_at: usize,
    /// Bytes searched and parsed in all, for the tests that pin linearity.
    #[cfg(test)]
    work: usize,
}

/// What the search for the end of a head found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadEnd {
    /// The head (from `skip`) ends at this offset, its blank line included.
    At(usize),
    Incomplete,
    /// A line feed not preceded by a carriage return, at this offset (strict mode only).
    BareLf(usize),
}

impl HeadScan {
    pub fn reset(&mut self) {
        *self = HeadScan::default();
    }

    /// Searches the bytes of `buf` not searched before for the end of a head: CRLF CRLF, or in
    /// lenient mode also LF LF / LF CRLF (what httparse accepts in responses).
    fn find_end(&mut self, buf: &[u8], strict: bool) -> HeadEnd {
        if self.searched == 0 {
            // Empty lines before a start line are ignored (RFC 9112 §2.2): skip them once, CRLF
            // or (lenient) LF in any order.
            loop {
                let rest = &buf[self.skip..];
                if rest.starts_with(b"\r\n") {
                    self.skip += 2;
                } else if !strict && rest.starts_with(b"\n") {
                    self.skip += 1;
                } else {
                    break;
                }
            }
            if buf.len() - self.skip < 2 {
                return HeadEnd::Incomplete;
            }
            self.searched = self.skip;
        }
        let mut at = self.searched;
        #[cfg(test)]
        {
            self.work += buf.len() - at;
        }
        // Sixteen bytes at a time, the line feeds of each block as a mask taken bit by bit in
        // order: a `memchr` call per line cost more than the search itself (heads are short lines).
        while at < buf.len() {
            let (base, mut lfs) = match buf.get(at..at + BLOCK) {
                Some(block) => (at, lf_mask(block.try_into().unwrap())),
                None if buf.len() >= BLOCK => {
                    // The last block ends with the buffer: its bytes before `at` were searched
                    // already, their bits are dropped.
                    let base = buf.len() - BLOCK;
                    let lfs = lf_mask(buf[base..].try_into().unwrap());
                    (base, lfs >> (at - base) << (at - base))
                }
                None => {
                    // A buffer shorter than a block, padded (with bytes that are not line feeds).
                    let mut block = [0; BLOCK];
                    block[..buf.len() - at].copy_from_slice(&buf[at..]);
                    (at, lf_mask(&block))
                }
            };
            while lfs != 0 {
                let i = base + lfs.trailing_zeros() as usize;
                lfs &= lfs - 1;
                let cr = i > 0 && buf[i - 1] == b'\r';
                if strict && !cr {
                    return HeadEnd::BareLf(i);
                }
                // The blank line: this LF is preceded by another LF, directly or through a CR.
                let line_start = if cr { i - 1 } else { i };
                if line_start > self.skip && buf[line_start - 1] == b'\n' {
                    return HeadEnd::At(i + 1);
                }
            }
            at = base + BLOCK;
        }
        // The last byte may be the CR of a CRLF still to come: search it again next time.
        self.searched = buf.len().saturating_sub(1).max(self.skip);
        HeadEnd::Incomplete
    }

    /// Whether an incomplete head has grown enough since the last httparse run to deserve another
    /// one (to refuse garbage before the head limit or the header timeout).
    fn worth_parsing(&mut self, len: usize) -> bool {
        if len >= self.parsed_at.saturating_mul(2).max(1) {
            self.parsed_at = len;
            #[cfg(test)]
            {
                self.work += len;
            }
            true
        } else {
            false
        }
    }
}

/// Bytes [`lf_mask`] looks at in one go.
const BLOCK: usize = 16;

/// The line feeds of `block`: bit `j` is set when `block[j]` is one. One SSE2 compare and
/// movemask (the baseline of x86_64); elsewhere a loop the compiler may vectorize.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn lf_mask(block: &[u8; BLOCK]) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    // SAFETY: the load reads the 16 bytes of `block` (unaligned loads are allowed), and SSE2,
    // which these intrinsics need, is enabled (the `cfg` above).
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast());
        _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\n' as i8))) as u32
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
fn lf_mask(block: &[u8; BLOCK]) -> u32 {
    lf_mask_portable(block)
}

/// [`lf_mask`] in plain Rust: what other targets run, and what the tests check the SSE2 one
/// against.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn lf_mask_portable(block: &[u8; BLOCK]) -> u32 {
    let mut lfs = 0;
    for (j, &b) in block.iter().enumerate() {
        lfs |= u32::from(b == b'\n') << j;
    }
    lfs
}

/// A parsed request head: ranges into the read buffer, plus the facts the server needs.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// Length of the head in the buffer, terminating blank line included (and any empty lines
    /// before the request line, which are skipped).
    pub len: usize,
    pub target: Range<usize>,
    pub http10: bool,
    pub headers: Vec<HeaderRange>,
    /// The authority to route by: an absolute-form target's, else the `Host` header's.
    pub host: Option<Range<usize>>,
    pub content_type: Option<Range<usize>>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub probe: Probe,
    /// Where the search for the end of the next head stands (see [`HeadScan`]).
    pub scan: HeadScan,
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
            scan: HeadScan::default(),
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

/// The transfer codings of a request, over all its `Transfer-Encoding` headers (RFC 9112 §6.1).
#[derive(Default)]
struct Codings {
    present: bool,
    chunked: u32,
    other: bool,
    last_chunked: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) -> Result<(), HeadError> {
        self.present = true;
        for element in value.split(|b| *b == b',') {
            // A coding may carry parameters (`gzip;q=1`); only its name matters here.
            let name = trim(element.split(|b| *b == b';').next().unwrap_or(b""));
            if name.is_empty() {
                continue; // empty list elements are allowed (RFC 9110 §5.6.1)
            }
            if !name.iter().all(|&b| is_tchar(b)) {
                return Err(HeadError::Malformed("invalid Transfer-Encoding"));
            }
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            if chunked {
                self.chunked += 1;
            } else {
                self.other = true;
            }
            self.last_chunked = chunked;
        }
        Ok(())
    }

    /// Whether the body is chunked; every other combination is refused.
    fn check(&self) -> Result<bool, HeadError> {
        if !self.present {
            return Ok(false);
        }
        if self.chunked == 0 && !self.other {
            return Err(HeadError::Malformed("empty Transfer-Encoding"));
        }
        if self.chunked > 0 && !self.last_chunked {
            // The length of the body cannot be determined (RFC 9112 §6.3): 400, not 501.
            return Err(HeadError::Malformed(
                "chunked is not the final transfer coding",
            ));
        }
        if self.chunked > 1 {
            return Err(HeadError::Malformed("chunked applied more than once"));
        }
        if self.other {
            // We decode no other coding: forwarding a still-compressed body would be wrong.
            return Err(HeadError::UnsupportedTransferEncoding);
        }
        Ok(true)
    }
}

/// Parses a request head at the start of `buf` into `out`. `Ok(false)`: incomplete; read more and
/// call again with the same buffer grown (the search resumes where it stopped, `out.scan`).
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    max_headers: usize,
    out: &mut RequestHead,
) -> Result<bool, HeadError> {
    let r = parse_request_scanned(buf, max_head, max_headers, out);
    if !matches!(r, Ok(false)) {
        out.scan.reset();
    }
    r
}

fn parse_request_scanned(
    buf: &[u8],
    max_head: usize,
    max_headers: usize,
    out: &mut RequestHead,
) -> Result<bool, HeadError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; HEADER_SLOTS] =
        [const { MaybeUninit::uninit() }; HEADER_SLOTS];
    let slots = &mut slots[..max_headers.clamp(1, HEADER_SLOTS)];
    let mut req = httparse::Request::new(&mut []);
    let skip = out.scan.skip;
    let over_limit = || request_over_limit(buf, skip, max_head, max_headers);
    let end = match out.scan.find_end(buf, true) {
        HeadEnd::At(end) if end > max_head => return Err(over_limit()),
        HeadEnd::At(end) => end,
        HeadEnd::BareLf(at) if at >= max_head => return Err(over_limit()),
        HeadEnd::BareLf(at) => {
            // The first problem by position decides (as if the head had been parsed in order):
            // too many headers before the bare LF is a 431 whatever the reads.
            return Err(match req.parse_with_uninit_headers(&buf[skip..at], slots) {
                Err(httparse::Error::TooManyHeaders) => HeadError::TooLarge,
                Err(httparse::Error::Version) => HeadError::Malformed("not HTTP/1.x"),
                Err(_) => HeadError::Malformed("malformed request head"),
                Ok(_) => HeadError::Malformed("bare LF in the request head"),
            });
        }
        HeadEnd::Incomplete if buf.len() > max_head => return Err(over_limit()),
        HeadEnd::Incomplete => {
            if out.scan.worth_parsing(buf.len()) {
                // Refuse garbage now rather than at the head limit or the header timeout.
                match req.parse_with_uninit_headers(&buf[skip..], slots) {
                    Ok(_) => {}
                    Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
                    Err(httparse::Error::Version) => {
                        return Err(HeadError::Malformed("not HTTP/1.x"))
                    }
                    Err(_) => return Err(HeadError::Malformed("malformed request head")),
                }
            }
            return Ok(false);
        }
    };
    let status = match req.parse_with_uninit_headers(&buf[skip..end], slots) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("not HTTP/1.x")),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    if !matches!(status, httparse::Status::Complete(n) if skip + n == end) {
        return Err(HeadError::Malformed("malformed request head"));
    }
    out.reset();
    out.len = end;
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
    let mut codings = Codings::default();
    let mut host: Option<Range<usize>> = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let hr = HeaderRange {
            name: range_of(buf, name),
            value: range_of(buf, value),
        };
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                // RFC 9112 §3.2: more than one Host, or an invalid one, is a 400.
                if host.is_some() {
                    return Err(HeadError::Malformed("repeated Host header"));
                }
                if !is_authority(trim(value)) {
                    return Err(HeadError::Malformed("invalid Host header"));
                }
                host = Some(range_of(buf, trim(value)));
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
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => codings.add(value)?,
            _ => {}
        }
        out.headers.push(hr);
    }
    // A K-Network-Hash alone is not a probe.
    if matches!(out.probe, Probe::Network(Some(_))) && !has_header(buf, out, b"k-network-probe") {
        out.probe = Probe::None;
    }
    if codings.present && out.http10 {
        // RFC 9112 §6.1: faulty framing; answer, then close.
        return Err(HeadError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    out.chunked = codings.check()?;
    if codings.present && out.content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if host.is_none() && !out.http10 {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }
    // An absolute-form target's authority overrides Host (RFC 9112 §3.2.2).
    out.host = match absolute_authority(path.as_bytes()) {
        Some(Ok(a)) => Some(range_of(buf, a)),
        Some(Err(())) => return Err(HeadError::Malformed("invalid authority in the target")),
        None => host,
    };
    out.keep_alive = if out.http10 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    Ok(true)
}

/// A request head past the limit: what its first `max_head` bytes say decides, a syntax error
/// there being a 400 and otherwise the head too large (431). The answer is then the same however
/// the bytes were split across reads (an earlier look may have refused the same error sooner).
/// Runs once, as the connection is refused.
fn request_over_limit(buf: &[u8], skip: usize, max_head: usize, max_headers: usize) -> HeadError {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; HEADER_SLOTS] =
        [const { MaybeUninit::uninit() }; HEADER_SLOTS];
    let slots = &mut slots[..max_headers.clamp(1, HEADER_SLOTS)];
    let mut req = httparse::Request::new(&mut []);
    let prefix = &buf[skip.min(max_head)..buf.len().min(max_head)];
    match req.parse_with_uninit_headers(prefix, slots) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => HeadError::TooLarge,
        Err(httparse::Error::Version) => HeadError::Malformed("not HTTP/1.x"),
        Err(_) => HeadError::Malformed("malformed request head"),
    }
}

/// The authority of an absolute-form target (`http://host:port/path`): `None` for any other form,
/// `Some(Err)` for an invalid one.
fn absolute_authority(target: &[u8]) -> Option<Result<&[u8], ()>> {
    if target.first() == Some(&b'/') {
        return None;
    }
    let sep = memchr::memmem::find(target, b"://")?;
    let scheme = &target[..sep];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Some(Err(()));
    }
    let rest = &target[sep + 3..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    Some(if !authority.is_empty() && is_authority(authority) {
        Ok(authority)
    } else {
        Err(())
    })
}

/// `uri-host [ ":" port ]` as RFC 3986 defines it (no userinfo): a reg-name of unreserved,
/// percent-encoded and sub-delim characters, an IPv4 address (a reg-name too), or an IP literal in
/// brackets. An empty host is valid (RFC 9112 §3.2: a target without authority).
pub fn is_authority(v: &[u8]) -> bool {
    let (host, mut port) = if let Some(inner) = v.strip_prefix(b"[") {
        let Some(close) = memchr::memchr(b']', inner) else {
            return false;
        };
        let literal = &inner[..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        {
            return false;
        }
        match &inner[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        (v, None)
    };
    // The host up to the port's colon, then the port. A colon cannot be part of a reg-name, so
    // the first one is the last one of a valid authority (was: the last colon found first, then
    // a match of comparisons per byte; now one table lookup per byte).
    let mut i = 0;
    while let Some(off) = host[i..].iter().position(|&b| !REG_NAME[b as usize]) {
        let at = i + off;
        match host[at] {
            b'%' if host.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
                && host.get(at + 2).is_some_and(u8::is_ascii_hexdigit) =>
            {
                i = at + 3;
            }
            b':' if port.is_none() => {
                port = Some(&host[at + 1..]);
                break;
            }
            _ => return false,
        }
    }
    let port = port.unwrap_or_default();
    port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// RFC 3986 `reg-name` characters other than `%`: unreserved (ALPHA / DIGIT / `-` / `.` / `_` /
/// `~`) and sub-delims (`!` `$` `&` `'` `(` `)` `*` `+` `,` `;` `=`).
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < others.len() {
        t[others[i] as usize] = true;
        i += 1;
    }
    t
};

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

/// RFC 9110 `tchar`: the characters of a token.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Incremental decoder of a chunked body (RFC 9112 §7.1), strict: a chunk-size line is
/// `1*HEXDIG *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF`, chunk data
/// is followed by CRLF, and the trailer section is header field lines, each ended by CRLF, then
/// CRLF. A bare LF, a control byte, or anything else out of place is [`ChunkError::Malformed`].
///
/// It is a byte-wise state machine over framing bytes (chunk data is copied in bulk), so it
/// resumes exactly where the last read stopped: linear in its input however it is split. Chunk
/// data is copied into one contiguous buffer, growing with the data that arrives, never with the
/// size a chunk announces: that copy is the price of chunked framing (subscribers get a
/// Content-Length body, as upstream sends).
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of the current size line, or of the trailer section, seen so far.
    line: usize,
    /// The size being read, while in a size line.
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// The first hex digit of a chunk size.
    #[default]
    Size,
    /// More hex digits, or what follows them.
    SizeDigits,
    /// Whitespace after the size or an extension value: only more of it or `;` may follow.
    Bws,
    /// After `;`: optional whitespace, then an extension name.
    ExtName,
    ExtNameChars,
    /// Whitespace after an extension name: `=` or `;` must follow.
    BwsAfterName,
    /// After `=`: optional whitespace, then a token or a quoted string.
    ExtValue,
    ExtValueToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After the closing quote of a value: whitespace, `;` or CR.
    ExtAfterQuoted,
    /// The CR of a size line was seen; LF must follow.
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// The CR of the final CRLF was seen.
    EndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    TooLarge,
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A field value byte: visible, space, tab or obs-text; never CR, LF, NUL or another control.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

impl ChunkedDecoder {
    /// Consumes what it can from the front of `input`, appending data to `out` (at most `max`
    /// bytes in all). Returns whether the body is complete; what follows it stays in `input`.
    pub fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<bool, ChunkError> {
        use ChunkState as S;
        let mut i = 0;
        let r = loop {
            if let S::Data(left) = self.state {
                let n = (left as usize).min(input.len() - i);
                if n == 0 {
                    break Ok(false);
                }
                out.extend_from_slice(&input[i..i + n]);
                i += n;
                self.state = if left as usize == n {
                    S::DataCr
                } else {
                    S::Data(left - n as u64)
                };
                continue;
            }
            if self.state == S::Done {
                break Ok(true);
            }
            let Some(&b) = input.get(i) else {
                break Ok(false);
            };
            i += 1;
            match self.step(b, out.len(), max) {
                Ok(()) => {}
                Err(e) => break Err(e),
            }
        };
        let _ = input.split_to(i);
        r
    }

    /// One framing byte.
    fn step(&mut self, b: u8, have: usize, max: usize) -> Result<(), ChunkError> {
        use ChunkState as S;
        let m = Err(ChunkError::Malformed);
        let in_size_line = matches!(
            self.state,
            S::Size
                | S::SizeDigits
                | S::Bws
                | S::ExtName
                | S::ExtNameChars
                | S::BwsAfterName
                | S::ExtAfterQuoted
                | S::ExtValue
                | S::ExtValueToken
                | S::ExtQuoted
                | S::ExtQuotedEscape
                | S::SizeLf
        );
        self.line += 1;
        if in_size_line && self.line > MAX_CHUNK_LINE {
            return m;
        }
        if !in_size_line && self.line > MAX_TRAILERS {
            return m;
        }
        self.state = match (self.state, b) {
            (S::Size, b) if b.is_ascii_hexdigit() => {
                self.size = u64::from(hex(b));
                S::SizeDigits
            }
            (S::Size, _) => return m,
            (S::SizeDigits, b) if b.is_ascii_hexdigit() => {
                if self.size >> 60 != 0 {
                    return m; // more than 16 significant hex digits: no such size
                }
                self.size = self.size << 4 | u64::from(hex(b));
                S::SizeDigits
            }
            (S::SizeDigits | S::ExtValueToken | S::ExtAfterQuoted, b) if is_ws(b) => S::Bws,
            (S::ExtNameChars, b) if is_ws(b) => S::BwsAfterName,
            (
                S::SizeDigits
                | S::Bws
                | S::ExtNameChars
                | S::BwsAfterName
                | S::ExtValueToken
                | S::ExtAfterQuoted,
                b';',
            ) => S::ExtName,
            (S::SizeDigits | S::ExtNameChars | S::ExtValueToken | S::ExtAfterQuoted, b'\r') => {
                S::SizeLf
            }
            (S::Bws, b) | (S::BwsAfterName, b) | (S::ExtName, b) | (S::ExtValue, b) if is_ws(b) => {
                self.state
            }
            (S::ExtNameChars | S::BwsAfterName, b'=') => S::ExtValue,
            (S::ExtName | S::ExtNameChars, b) if is_tchar(b) => S::ExtNameChars,
            (S::ExtValue, b'"') => S::ExtQuoted,
            (S::ExtValue | S::ExtValueToken, b) if is_tchar(b) => S::ExtValueToken,
            (S::ExtQuoted, b'"') => S::ExtAfterQuoted,
            (S::ExtQuoted, b'\\') => S::ExtQuotedEscape,
            (S::ExtQuoted | S::ExtQuotedEscape, b) if is_field_byte(b) => S::ExtQuoted,
            (S::SizeLf, b'\n') => {
                let size = self.size;
                self.line = 0;
                if size == 0 {
                    S::TrailerStart
                } else {
                    if size > max as u64 || have as u64 + size > max as u64 {
                        return Err(ChunkError::TooLarge);
                    }
                    S::Data(size)
                }
            }
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataLf, b'\n') => {
                self.line = 0;
                S::Size
            }
            (S::TrailerStart, b'\r') => S::EndLf,
            (S::TrailerStart, b) if is_tchar(b) => S::TrailerName,
            (S::TrailerName, b) if is_tchar(b) => S::TrailerName,
            (S::TrailerName, b':') => S::TrailerValue,
            (S::TrailerValue, b'\r') => S::TrailerLf,
            (S::TrailerValue, b) if is_field_byte(b) => S::TrailerValue,
            (S::TrailerLf, b'\n') => S::TrailerStart,
            (S::EndLf, b'\n') => S::Done,
            _ => return m,
        };
        Ok(())
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
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

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete; read more and call
/// again with the same buffer grown and the same `scan` (reset by this function once it returns a
/// head or an error). Lenient where RFC 9112 lets a client be (a bare LF ends a line), strict
/// where framing is at stake: two different `Content-Length`s are an error (§6.3), and a response
/// with both `Transfer-Encoding` and `Content-Length`, or a coding other than a final chunked, is
/// read to the end of the connection or as chunked and the connection is not reused.
pub fn parse_response(
    buf: &[u8],
    max_head: usize,
    scan: &mut HeadScan,
) -> Result<Option<ResponseHead>, &'static str> {
    let r = parse_response_scanned(buf, max_head, scan);
    if !matches!(r, Ok(None)) {
        scan.reset();
    }
    r
}

fn parse_response_scanned(
    buf: &[u8],
    max_head: usize,
    scan: &mut HeadScan,
) -> Result<Option<ResponseHead>, &'static str> {
    // Uninitialised slots, as for requests: clearing 100 headers (3 KiB) per response would cost
    // more than parsing a typical one. The default config is what `Response::parse` uses.
    let mut slots: [MaybeUninit<httparse::Header<'_>>; 100] =
        [const { MaybeUninit::uninit() }; 100];
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let skip = scan.skip;
    let over_limit = || response_over_limit(buf, skip, max_head);
    let end = match scan.find_end(buf, false) {
        HeadEnd::At(end) if end > max_head => return Err(over_limit()),
        HeadEnd::At(end) => end,
        HeadEnd::BareLf(_) => unreachable!("lenient scan"),
        HeadEnd::Incomplete if buf.len() > max_head => return Err(over_limit()),
        HeadEnd::Incomplete => {
            if scan.worth_parsing(buf.len()) {
                if let Err(e) =
                    config.parse_response_with_uninit_headers(&mut resp, &buf[skip..], &mut slots)
                {
                    return Err(response_error(e));
                }
            }
            return Ok(None);
        }
    };
    let len =
        match config.parse_response_with_uninit_headers(&mut resp, &buf[skip..end], &mut slots) {
            Ok(httparse::Status::Complete(n)) if skip + n == end => end,
            Ok(_) => return Err("malformed response head"),
            Err(e) => return Err(response_error(e)),
        };
    let http10 = resp.version == Some(0);
    let mut head = ResponseHead {
        status: resp.code.unwrap_or(0),
        len,
        content_length: None,
        chunked: false,
        keep_alive: !http10,
    };
    let mut transfer_encoding = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(trim(h.value)).ok_or("invalid Content-Length in response")?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length in response");
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            head.chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .map(trim)
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
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
    if transfer_encoding {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); a coding other than a
        // final chunked is delimited by the end of the connection. Either way the peer framed
        // the message oddly: the connection is not reused.
        head.content_length = None;
        if !head.chunked
            || resp
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-length"))
        {
            head.keep_alive = false;
        }
    }
    if !head.bodiless() && !head.chunked && head.content_length.is_none() {
        head.keep_alive = false; // body runs to the end of the connection
    }
    Ok(Some(head))
}

/// As for requests ([`request_over_limit`]): past the limit, the first `max_head` bytes decide
/// between malformed and too large, so that the reads' boundaries do not.
fn response_over_limit(buf: &[u8], skip: usize, max_head: usize) -> &'static str {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; 100] =
        [const { MaybeUninit::uninit() }; 100];
    let mut resp = httparse::Response::new(&mut []);
    let prefix = &buf[skip.min(max_head)..buf.len().min(max_head)];
    match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, prefix, &mut slots)
    {
        Ok(_) => "response head too large",
        Err(e) => response_error(e),
    }
}

fn response_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::TooManyHeaders => "too many response headers",
        _ => "malformed response head",
    }
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
    /// A kubelet probe on the https port: 200, empty (upstream configures no checker there).
    pub const TLS_PROBE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    /// The port `transport-encryption` closes (8443 while disabled, 8080 while strict): Go's
    /// `http.NotFound`, as upstream answers.
    pub const ENCRYPTION_GATE: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 19\r\n\r\n404 page not found\n";
    pub const NOT_READY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot ready";
    pub const NETWORK_PROBE_NO_HASH: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    /// D11: more deliveries in flight on this worker than `--max-inflight-deliveries`.
    pub const OVERLOADED: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";
    /// An event over `--max-attributes` or whose head would be over `--max-header-bytes`: its
    /// body was read, so the connection goes on.
    pub const EVENT_TOO_LARGE: &[u8] =
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n";
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
    /// The worker's budget of buffered body bytes is used up; the body was not read.
    pub const OVERLOADED_CLOSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
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

    fn malformed(raw: &[u8]) -> bool {
        matches!(parse(raw), Err(HeadError::Malformed(_)))
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

    /// A head that arrives one byte per read is searched and parsed in linear work in all (it was
    /// re-parsed from its first byte on every read: quadratic).
    #[test]
    fn a_trickled_head_costs_linear_work() {
        let mut raw = b"POST / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
        raw.extend(std::iter::repeat_n(b'p', 60_000));
        raw.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let mut h = RequestHead::new();
        let mut work = 0;
        for n in 1..raw.len() {
            assert_eq!(parse_request(&raw[..n], 64 << 10, 128, &mut h), Ok(false));
            work = h.scan.work;
        }
        assert!(parse_request(&raw, 64 << 10, 128, &mut h).unwrap());
        // Quadratic would be ~1.8e9; linear is a few times the length.
        assert!(
            work <= 5 * raw.len(),
            "{work} bytes of work for a {}-byte head",
            raw.len()
        );
        // And the same for a response head.
        let mut resp = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        resp.extend(std::iter::repeat_n(b'p', 60_000));
        resp.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let mut scan = HeadScan::default();
        for n in 1..resp.len() {
            assert!(parse_response(&resp[..n], 64 << 10, &mut scan)
                .unwrap()
                .is_none());
            work = scan.work;
        }
        assert!(work <= 5 * resp.len(), "{work} for {}", resp.len());
        assert!(parse_response(&resp, 64 << 10, &mut scan)
            .unwrap()
            .is_some());
    }

    #[test]
    fn garbage_is_refused_before_the_head_ends() {
        let mut h = RequestHead::new();
        assert!(matches!(
            parse_request(b"\x01\x02\x03 not http at all", 64 << 10, 128, &mut h),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        let raw = b"\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\n\r\nrest";
        let (done, h) = parse(raw).unwrap();
        assert!(done);
        assert_eq!(&raw[h.len..], b"rest");
        assert_eq!(&raw[h.host.unwrap()], b"h");
    }

    #[test]
    fn bare_lf_in_the_head_is_refused() {
        assert!(malformed(b"POST / HTTP/1.1\nHost: h\n\n"));
        assert!(malformed(b"POST / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n"));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let h = "POST / HTTP/1.1\r\nHost: h\r\n";
        let te = |v: &str| parse(format!("{h}{v}\r\n").as_bytes());
        assert!(malformed(
            format!("{h}Content-Length: 1\r\nContent-Length: 2\r\n\r\n").as_bytes()
        ));
        assert!(malformed(
            format!("{h}Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes()
        ));
        for unknown in [
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: identity\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert_eq!(
                te(unknown).unwrap_err(),
                HeadError::UnsupportedTransferEncoding,
                "{unknown}"
            );
        }
        for bad in [
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: \r\n",
            "Transfer-Encoding: chu nked\r\n",
        ] {
            assert!(matches!(te(bad), Err(HeadError::Malformed(_))), "{bad}");
        }
        let (_, ok) = te("Transfer-Encoding: Chunked\r\n").unwrap();
        assert!(ok.chunked);
        assert!(malformed(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn host_is_required_single_and_valid() {
        assert!(malformed(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
        assert!(malformed(b"POST / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"));
        for bad in ["a b", "x:80x", "[::1", "a@b", "a/b", "h:123456"] {
            assert!(
                malformed(format!("POST / HTTP/1.1\r\nHost: {bad}\r\n\r\n").as_bytes()),
                "{bad}"
            );
        }
        for ok in [
            "a.b",
            "a.b:80",
            "[::1]:8080",
            "10.0.0.1:8080",
            "",
            "x_y.svc",
        ] {
            assert!(
                parse(format!("POST / HTTP/1.1\r\nHost: {ok}\r\n\r\n").as_bytes()).is_ok(),
                "{ok}"
            );
        }
        // HTTP/1.0 may leave Host out.
        assert!(parse(b"POST /ns/ch HTTP/1.0\r\n\r\n").unwrap().0);
    }

    #[test]
    fn absolute_form_authority_overrides_host() {
        let raw =
            b"POST http://ch-kn-channel.ns.svc.cluster.local:80/ HTTP/1.1\r\nHost: other\r\n\r\n";
        let (_, h) = parse(raw).unwrap();
        assert_eq!(
            &raw[h.host.unwrap()],
            b"ch-kn-channel.ns.svc.cluster.local:80"
        );
        assert!(malformed(b"POST http:///x HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(malformed(b"POST http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(malformed(b"POST ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n"));
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
            !parse(b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .unwrap()
                .1
                .keep_alive
        );
    }

    #[test]
    fn probes_are_recognised() {
        assert_eq!(
            parse(b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: kube-probe/1.30\r\n\r\n")
                .unwrap()
                .1
                .probe,
            Probe::Kubelet
        );
        let raw =
            b"GET / HTTP/1.1\r\nHost: h\r\nK-Network-Hash: h1\r\nK-Network-Probe: probe\r\n\r\n";
        let (_, h) = parse(raw).unwrap();
        match h.probe {
            Probe::Network(Some(r)) => assert_eq!(&raw[r], b"h1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: h\r\nK-Network-Hash: h1\r\n\r\n")
                .unwrap()
                .1
                .probe,
            Probe::None
        );
    }

    /// Decodes `input` fed in pieces of `step` bytes; the body and what is left after it.
    fn dechunk(input: &[u8], step: usize, max: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut dec = ChunkedDecoder::default();
        let mut out = BytesMut::new();
        let mut buf = BytesMut::new();
        for (i, piece) in input.chunks(step.max(1)).enumerate() {
            buf.extend_from_slice(piece);
            if dec.decode(&mut buf, &mut out, max)? {
                let fed = ((i + 1) * step.max(1)).min(input.len());
                buf.extend_from_slice(&input[fed..]);
                return Ok((out.to_vec(), buf.to_vec()));
            }
        }
        Err(ChunkError::Malformed) // incomplete: not what these tests feed
    }

    #[test]
    fn chunked_body_decodes_across_reads() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let (out, rest) = dechunk(body, step, 100).unwrap();
            assert_eq!(out, b"Wikipedia", "step {step}");
            assert_eq!(rest, b"NEXT", "step {step}");
        }
    }

    #[test]
    fn chunk_size_lines_follow_the_grammar() {
        for ok in [
            "5;name=value\r\n",
            "5;name=\"quoted; value\"\r\n",
            "5 ; name\r\n",
            "5;a;b=c ;d = \"e\\\"f\"\r\n",
            "0005\r\n",
        ] {
            let body = format!("{ok}hello\r\n0\r\n\r\n");
            assert_eq!(
                dechunk(body.as_bytes(), 1, 100).unwrap().0,
                b"hello",
                "{ok:?}"
            );
        }
        let upper = dechunk(b"A\r\n0123456789\r\n0\r\n\r\n", 1, 100).unwrap();
        assert_eq!(upper.0, b"0123456789");
        for bad in [
            "5;\nQQQ",
            "\r\n",
            "g\r\n",
            "5\n",
            "5\x00\r\n",
            "5;a=\x01\r\n",
            " 5\r\n",
            "5 \r\n",
            "-5\r\n",
            "0x5\r\n",
            "fffffffffffffffff\r\n",
            "5;\r\n",
            "5;a=\r\n",
            "5;a=\"x\"y\r\n",
            "5 =x\r\n",
            "5;a b\r\n",
            "5\r\r\n",
        ] {
            let body = format!("{bad}hello\r\n0\r\n\r\n");
            assert_eq!(
                dechunk(body.as_bytes(), 1, 1 << 20).unwrap_err(),
                ChunkError::Malformed,
                "{bad:?}"
            );
        }
        assert_eq!(
            dechunk(b"5\r\nhelloXX0\r\n\r\n", 1, 100).unwrap_err(),
            ChunkError::Malformed,
            "data not followed by CRLF"
        );
    }

    #[test]
    fn trailers_are_field_lines_ended_by_crlf() {
        let (out, rest) = dechunk(b"1\r\nx\r\n0\r\nA: 1\r\nB:2 \r\n\r\nPOST", 1, 10).unwrap();
        assert_eq!((&out[..], &rest[..]), (&b"x"[..], &b"POST"[..]));
        for bad in [
            "0\r\nX-T: v\n\r\n",
            "0\r\nno-colon\r\n\r\n",
            "0\r\n X-T: v\r\n\r\n",
            "0\r\n: v\r\n\r\n",
            "0\r\nX-T: v\nPOST / HTTP/1.1\r\nHost: h\r\n\r\n",
            "0\r\nX-T: a\x00b\r\n\r\n",
            "0\r\n\n",
        ] {
            assert_eq!(
                dechunk(bad.as_bytes(), 1, 10).unwrap_err(),
                ChunkError::Malformed,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn chunked_body_over_the_limit_is_refused() {
        assert_eq!(
            dechunk(b"10\r\n0123456789abcdef\r\n0\r\n\r\n", 1, 8).unwrap_err(),
            ChunkError::TooLarge
        );
        assert_eq!(dechunk(b"zz\r\n", 1, 8).unwrap_err(), ChunkError::Malformed);
    }

    /// An announced chunk size is never reserved: 32 MB announced, 5 bytes sent.
    #[test]
    fn announced_chunk_size_is_not_reserved() {
        let mut dec = ChunkedDecoder::default();
        let mut out = BytesMut::new();
        let mut buf = BytesMut::from(&b"1e84800\r\nhello"[..]);
        assert_eq!(dec.decode(&mut buf, &mut out, 64 << 20), Ok(false));
        assert_eq!(&out[..], b"hello");
        assert!(out.capacity() < 1 << 20, "{}", out.capacity());
    }

    fn response(raw: &[u8]) -> Result<Option<ResponseHead>, &'static str> {
        parse_response(raw, 1024, &mut HeadScan::default())
    }

    #[test]
    fn response_framing() {
        let h = response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.keep_alive),
            (200, Some(3), true)
        );
        let h = response(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive, "close-delimited body");
        let h = response(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.bodiless() && h.keep_alive);
        assert!(response(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        // A bare LF is a line end in a response (RFC 9112 §2.2 lets a client accept it).
        let h = response(b"HTTP/1.1 202 Accepted\nContent-Length: 0\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 202);
    }

    #[test]
    fn conflicting_response_lengths_are_a_protocol_error() {
        assert!(
            response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n").is_err()
        );
        let same = response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab")
            .unwrap()
            .unwrap();
        assert_eq!(same.content_length, Some(2));
        let both =
            response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(both.chunked && both.content_length.is_none() && !both.keep_alive);
    }

    /// `is_authority` as it was, for the equivalence test.
    /// `uri-host [ ":" port ]` as RFC 3986 defines it (no userinfo): a reg-name of unreserved,
    /// percent-encoded and sub-delim characters, an IPv4 address (a reg-name too), or an IP literal in
    /// brackets. An empty host is valid (RFC 9112 §3.2: a target without authority).
    fn reference_is_authority(v: &[u8]) -> bool {
        let (host, port) = if let Some(inner) = v.strip_prefix(b"[") {
            let Some(close) = memchr::memchr(b']', inner) else {
                return false;
            };
            let literal = &inner[..close];
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
            {
                return false;
            }
            match &inner[close + 1..] {
                [] => return true,
                [b':', port @ ..] => (&[][..], port),
                _ => return false,
            }
        } else {
            match memchr::memrchr(b':', v) {
                Some(c) => (&v[..c], &v[c + 1..]),
                None => (v, &[][..]),
            }
        };
        let mut i = 0;
        while i < host.len() {
            match host[i] {
                b'%' => {
                    if !(host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                        && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                    {
                        return false;
                    }
                    i += 3;
                    continue;
                }
                b if b.is_ascii_alphanumeric() => {}
                b'-' | b'.' | b'_' | b'~' => {}
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
                _ => return false,
            }
            i += 1;
        }
        port.iter().all(u8::is_ascii_digit) && port.len() <= 5
    }

    /// `HeadScan::find_end` as it was (a `memchr` call per line), for the equivalence tests.
    fn reference_find_end(scan: &mut HeadScan, buf: &[u8], strict: bool) -> HeadEnd {
        if scan.searched == 0 {
            // Empty lines before a start line are ignored (RFC 9112 §2.2): skip them once, CRLF
            // or (lenient) LF in any order.
            loop {
                let rest = &buf[scan.skip..];
                if rest.starts_with(b"\r\n") {
                    scan.skip += 2;
                } else if !strict && rest.starts_with(b"\n") {
                    scan.skip += 1;
                } else {
                    break;
                }
            }
            if buf.len() - scan.skip < 2 {
                return HeadEnd::Incomplete;
            }
            scan.searched = scan.skip;
        }
        let mut from = scan.searched;
        #[cfg(test)]
        {
            scan.work += buf.len() - from;
        }
        while let Some(i) = memchr::memchr(b'\n', &buf[from..]).map(|i| from + i) {
            let cr = i > 0 && buf[i - 1] == b'\r';
            if strict && !cr {
                return HeadEnd::BareLf(i);
            }
            // The blank line: this LF is preceded by another LF, directly or through a CR.
            let line_start = if cr { i - 1 } else { i };
            if line_start > scan.skip && buf[line_start - 1] == b'\n' {
                return HeadEnd::At(i + 1);
            }
            from = i + 1;
        }
        // The last byte may be the CR of a CRLF still to come: search it again next time.
        scan.searched = buf.len().saturating_sub(1).max(scan.skip);
        HeadEnd::Incomplete
    }

    fn scan_state(scan: &HeadScan) -> (usize, usize, usize, usize) {
        (scan.skip, scan.searched, scan.parsed_at, scan.work)
    }

    /// Searches `s` with both versions of `find_end`, in both modes, as a buffer grown read by
    /// read to each of `reads` and then to all of `s`, asserting the same answer and the same
    /// state after each search; and that the answer is the one a single search of `s` gives.
    fn assert_find_end_same(s: &[u8], reads: impl IntoIterator<Item = usize> + Clone) {
        for strict in [true, false] {
            let whole = reference_find_end(&mut HeadScan::default(), s, strict);
            let (mut new, mut old) = (HeadScan::default(), HeadScan::default());
            let mut end = HeadEnd::Incomplete;
            for n in reads.clone().into_iter().chain([s.len()]) {
                let got = new.find_end(&s[..n], strict);
                let want = reference_find_end(&mut old, &s[..n], strict);
                assert_eq!(
                    (got, scan_state(&new)),
                    (want, scan_state(&old)),
                    "{:?} ({:x?}) read to {n}, strict {strict}",
                    String::from_utf8_lossy(s),
                    s
                );
                end = got;
                if got != HeadEnd::Incomplete {
                    break;
                }
            }
            assert_eq!(
                end,
                whole,
                "{:?} strict {strict}",
                String::from_utf8_lossy(s)
            );
        }
    }

    /// Every way `s` can arrive in two reads, and one byte per read.
    fn assert_find_end_same_split(s: &[u8]) {
        assert_find_end_same(s, []);
        for cut in 1..s.len() {
            assert_find_end_same(s, [cut]);
        }
        assert_find_end_same(s, 1..s.len());
    }

    #[test]
    fn lf_mask_matches_the_portable_one() {
        for b in 0..=255u8 {
            for j in 0..BLOCK {
                let mut block = [b'\n'; BLOCK];
                block[j] = b;
                assert_eq!(lf_mask(&block), lf_mask_portable(&block), "{b:#x} at {j}");
                let mut block = [0; BLOCK];
                block[j] = b;
                assert_eq!(lf_mask(&block), lf_mask_portable(&block), "{b:#x} at {j}");
            }
        }
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut block = [0; BLOCK];
            for (j, b) in block.iter_mut().enumerate() {
                *b = [b'\n', b'\r', b'a', 0x8a][((state >> (2 * j)) & 3) as usize];
            }
            assert_eq!(lf_mask(&block), lf_mask_portable(&block), "{block:x?}");
        }
    }

    /// The block-wise search against the line-wise one it replaced, over short byte strings: every
    /// one of one and two bytes and 200,000 random ones, each searched whole and cut in two near
    /// its start, middle and end, one in four also one byte per read (the test below cuts heads at
    /// every byte).
    #[test]
    fn find_end_matches_the_reference() {
        let tricky: &[&[u8]] = &[
            b"\r\n\r\n",
            b"\n\n",
            b"\n\r\n",
            b"\r\n\n",
            b"\r\r\n\r\n",
            b"\r\n\r\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"\n\nHTTP/1.1 200 OK\n\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\rHost: h\r\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"0123456789abcde\r\n\r\n",
            b"0123456789abcdef\r\n\r\n",
            b"0123456789abcdefghijklmnopqrstu\n\n",
        ];
        let searched = std::cell::Cell::new(0u64);
        crate::equiv::assert_same(
            |s| {
                assert_find_end_same(s, []);
                // One byte per read costs the most: one string in four (by the count of strings).
                searched.set(searched.get() + 1);
                if searched.get().is_multiple_of(4) {
                    assert_find_end_same(s, 1..s.len());
                }
                for cut in [1, s.len() / 2, s.len().saturating_sub(1)] {
                    assert_find_end_same(s, [cut.min(s.len())]);
                }
                true
            },
            |_| true,
            tricky,
            b"\r\n\r\n\r\nab: \t",
        );
    }

    /// The same over heads as they come: empty lines before the start line, CRLF, bare LF, a CR
    /// without LF, obs-fold, lines longer than a block or much longer, a body after the blank
    /// line or no blank line at all. Each head searched whole, cut in two at every byte, one byte
    /// per read and in reads of random sizes.
    #[test]
    fn find_end_matches_the_reference_on_heads() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for round in 0..6_000 {
            let mut head = Vec::new();
            for _ in 0..next() % 3 {
                head.extend_from_slice([&b"\r\n"[..], b"\n", b"\r"][(next() % 3) as usize]);
            }
            head.extend_from_slice(if next() % 2 == 0 {
                b"POST /ns/name HTTP/1.1"
            } else {
                b"HTTP/1.1 202 Accepted"
            });
            let lines = next() % 12;
            for _ in 0..=lines {
                // Mostly CRLF; now and then a bare LF, a lone CR, CR CR LF, or an LF CR.
                let eol: &[u8] = match next() % 24 {
                    0 => b"\n",
                    1 => b"\r",
                    2 => b"\r\r\n",
                    3 => b"\n\r",
                    _ => b"\r\n",
                };
                head.extend_from_slice(eol);
                if next() % 16 == 0 {
                    head.push(if next() % 2 == 0 { b' ' } else { b'\t' });
                }
                head.extend_from_slice(b"X-Header: ");
                let len = match next() % 32 {
                    0 => 1000 + next() % 3000,
                    1..=8 => next() % 4,
                    _ => next() % 60,
                };
                for _ in 0..len {
                    head.push(b"abcdefghij0123456789 -:/."[(next() % 25) as usize]);
                }
            }
            head.extend_from_slice(
                [
                    &b"\r\n\r\n"[..],
                    b"\r\n\r\n",
                    b"\r\n\n",
                    b"\n\n",
                    b"\n\r\n",
                    b"\r\n",
                    b"",
                ][(next() % 7) as usize],
            );
            for _ in 0..next() % 40 {
                head.push(b"ab\r\n"[(next() % 4) as usize]);
            }
            if head.len() <= 600 && round % 3 == 0 {
                assert_find_end_same_split(&head);
            }
            let mut reads = Vec::new();
            let mut n = 0;
            loop {
                n += 1 + (next() % if next() % 2 == 0 { 8 } else { 80 }) as usize;
                if n >= head.len() {
                    break;
                }
                reads.push(n);
            }
            assert_find_end_same(&head, reads);
        }
    }

    #[test]
    fn is_authority_matches_the_reference() {
        let tricky: &[&[u8]] = &[
            b"demo-kn-channel.default.svc.cluster.local",
            b"demo-kn-channel.default.svc.cluster.local:8080",
            b"h",
            b"h:",
            b"h:1",
            b"h:12345",
            b"h:123456",
            b":80",
            b"h:1:2",
            b"h::",
            b"[::1]",
            b"[::1]:80",
            b"[::1]:",
            b"[::1]:x",
            b"[v1.fe]",
            b"[]",
            b"[::1",
            b"[::1]]",
            b"a-b.c_d~e!$&'()*+,;=",
            b"%41",
            b"%4",
            b"%4:1",
            b"%:1",
            b"a%41:1",
            b"1.2.3.4",
            b"a b",
            b"a@b",
            b"h:x",
        ];
        crate::equiv::assert_same(
            is_authority,
            reference_is_authority,
            tricky,
            b"aZ09-._~!$;=%fF:[]vV@ /\x00\x7f\x80",
        );
    }

    #[test]
    fn authorities() {
        for ok in [
            "h",
            "h:1",
            "[::1]",
            "[::1]:80",
            "a-b.c_d~e",
            "%41",
            "1.2.3.4",
        ] {
            assert!(is_authority(ok.as_bytes()), "{ok}");
        }
        for bad in ["a b", "h:x", "[::1]x", "%4", "a@b", "[]"] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
    }
}
