//! The fuzz targets of imc-dispatcher's parsers, one plain function per target: `fuzz/` wraps each
//! in a one-line `fuzz_target!`, and `tests/corpus.rs` replays the committed corpus through them
//! with a stable `cargo test`. A panic is a finding: every target checks invariants with
//! assertions, not only the absence of crashes.
//!
//! All calls into the dispatcher go through [`api`], so that its signatures are adapted in one
//! place.
//!
//! Inputs that model reads from a socket start with a *split spec*: when the first byte is below
//! 0x11 it is a count `n`, and the `n` bytes after it are read sizes (`b + 1` bytes each, cycled);
//! the rest is the message. Any other first byte means no spec: the whole input is the message,
//! read at once (so that hand-written seeds are plain HTTP text). A message that itself starts
//! with a byte below 0x11 (a chunked body starting with CRLF) is written after a 0x00: no splits.

pub mod api;
pub mod rfc9112;

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use api::{ChunkRefusal, Event, Head, HeadRefusal};

/// A fuzz target: any bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// The targets, by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_framing", request_framing),
    ("response", response),
    ("cloudevent_binary", cloudevent_binary),
    ("cloudevent_structured", cloudevent_structured),
    ("manifest", manifest),
    ("durations", durations),
    ("chunked_differential", chunked_differential),
];

/// Splits an input into its read sizes and its message (see the crate docs).
pub fn split_spec(data: &[u8]) -> (Vec<usize>, &[u8]) {
    match data.split_first() {
        Some((&n, rest)) if n <= 0x10 => {
            let n = usize::from(n).min(rest.len());
            let (spec, msg) = rest.split_at(n);
            (spec.iter().map(|&b| usize::from(b) + 1).collect(), msg)
        }
        _ => (Vec::new(), data),
    }
}

/// The message cut into reads of the given sizes (cycled); one read when there are none. No read
/// is empty (a read of 0 bytes is the end of the stream).
pub fn reads<'a>(msg: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() || msg.is_empty() {
        return if msg.is_empty() { vec![] } else { vec![msg] };
    }
    let mut out = Vec::new();
    let mut rest = msg;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// A socket as a sequence of reads, with the buffer the connection reads into.
struct Conn<'a> {
    msg: &'a [u8],
    reads: std::vec::IntoIter<&'a [u8]>,
    buf: BytesMut,
    fed: usize,
}

impl<'a> Conn<'a> {
    fn new(msg: &'a [u8], sizes: &[usize]) -> Self {
        Conn {
            msg,
            reads: reads(msg, sizes).into_iter(),
            buf: BytesMut::new(),
            fed: 0,
        }
    }

    /// One more read into the buffer; `false` at the end of the input.
    fn read(&mut self) -> bool {
        match self.reads.next() {
            Some(r) => {
                self.buf.extend_from_slice(r);
                self.fed += r.len();
                true
            }
            None => false,
        }
    }

    /// Whatever a parser did to the buffer, it may only have consumed from its front: what is
    /// left is exactly the tail of what was read.
    fn check_only_consumed(&self, who: &str) {
        assert!(
            self.buf.len() <= self.fed,
            "{who}: buffer grew past the input"
        );
        assert_eq!(
            &self.buf[..],
            &self.msg[self.fed - self.buf.len()..self.fed],
            "{who} changed bytes it did not consume"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// request_framing

/// Scaled-down limits (the defaults are 64 KiB, 128 headers and 32 MiB) so that every limit is
/// reachable with inputs of a few KiB.
const REQ_MAX_HEAD: usize = 1024;
const REQ_MAX_HEADERS: usize = 16;
const REQ_MAX_BODY: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
enum Framed {
    Request {
        head: Box<Head>,
        route: Option<String>,
        body: Vec<u8>,
    },
    HeadRefused(HeadRefusal),
    BodyTooLarge,
    ChunkRefused(ChunkRefusal),
    /// The input ended inside a request.
    Truncated,
}

/// What the ingress makes of a connection's bytes: request after request (pipelined), each a
/// head parsed from the growing buffer and its body (Content-Length or chunked), until a refusal,
/// a request that closes the connection, or the end of the input.
fn frame_requests(msg: &[u8], sizes: &[usize]) -> Vec<Framed> {
    let mut c = Conn::new(msg, sizes);
    let mut parser = api::HeadParser::default();
    let mut out = Vec::new();
    loop {
        if c.buf.is_empty() && !c.read() {
            return out; // a clean end between requests
        }
        let head = loop {
            let r = parser.parse(&c.buf, REQ_MAX_HEAD, REQ_MAX_HEADERS);
            c.check_only_consumed("parse_request");
            match r {
                Ok(Some(h)) => break h,
                Ok(None) if c.read() => {}
                Ok(None) => {
                    out.push(Framed::Truncated);
                    return out;
                }
                Err(e) => {
                    out.push(Framed::HeadRefused(e));
                    return out;
                }
            }
        };
        check_head(&head, &c.buf);
        let _ = c.buf.split_to(head.len);
        let body = if let Some(n) = head.content_length {
            if n > REQ_MAX_BODY as u64 {
                out.push(Framed::BodyTooLarge);
                return out;
            }
            let n = n as usize;
            while c.buf.len() < n {
                if !c.read() {
                    out.push(Framed::Truncated);
                    return out;
                }
            }
            c.buf.split_to(n).to_vec()
        } else if head.chunked {
            let mut dec = api::Chunked::default();
            let mut body = BytesMut::new();
            loop {
                let r = dec.decode(&mut c.buf, &mut body, REQ_MAX_BODY);
                c.check_only_consumed("ChunkedDecoder");
                assert!(body.len() <= REQ_MAX_BODY, "chunked body past its limit");
                match r {
                    Ok(true) => break body.to_vec(),
                    Ok(false) if c.read() => {}
                    Ok(false) => {
                        out.push(Framed::Truncated);
                        return out;
                    }
                    Err(e) => {
                        out.push(Framed::ChunkRefused(e));
                        return out;
                    }
                }
            }
        } else {
            Vec::new()
        };
        let route = std::str::from_utf8(&head.target)
            .ok()
            .and_then(api::route_key);
        let keep_alive = head.keep_alive;
        out.push(Framed::Request {
            head: Box::new(head),
            route,
            body,
        });
        if !keep_alive {
            return out; // the ingress answers, then closes: later bytes are never read
        }
    }
}

/// What any accepted head must satisfy, whatever the bytes.
fn check_head(h: &Head, buf: &[u8]) {
    assert!(h.len > 0 && h.len <= buf.len() && h.len <= REQ_MAX_HEAD);
    assert!(
        buf[..h.len].ends_with(b"\n"),
        "a head ends with its blank line"
    );
    assert!(h.headers.len() <= REQ_MAX_HEADERS);
    assert!(
        !(h.chunked && h.content_length.is_some()),
        "both Content-Length and chunked accepted"
    );
    for (name, value) in &h.headers {
        assert!(!name.is_empty());
        assert!(
            !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
            "CR, LF or NUL in an accepted header value"
        );
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(value).unwrap_or("").trim();
            assert_eq!(v.parse::<u64>().ok(), h.content_length, "Content-Length");
        }
    }
    if h.http10 {
        let asked = h.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case(b"connection")
                && v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
        });
        assert!(!h.keep_alive || asked, "HTTP/1.0 kept alive without asking");
    }
}

/// The request head and body framing, as the ingress reads them. Invariants: the same requests
/// (head facts, bodies) or the same refusal whatever the reads; parsers only consume from the
/// front of the buffer, never past it; bodies stay within the limit.
pub fn request_framing(data: &[u8]) {
    let (sizes, msg) = split_spec(data);
    let mut split = frame_requests(msg, &sizes);
    if !sizes.is_empty() {
        let mut whole = frame_requests(msg, &[]);
        // A head that never ends (the input stops inside it) may be refused when the bytes that
        // break it arrive, or only found incomplete when the input ends: the parser looks at an
        // incomplete head again at geometrically spaced lengths (linear in all, however the
        // bytes are split), so whether the last look came after the bad byte depends on the
        // reads. Either way the request never completes and the connection ends; the ingress
        // only may or may not have written a 400 (or a 431, for too many headers) to a client
        // that had stopped sending.
        if let (Some(a), Some(b)) = (whole.last(), split.last()) {
            let refused_or_cut = |f: &Framed| {
                matches!(
                    f,
                    Framed::Truncated
                        | Framed::HeadRefused(HeadRefusal::Malformed | HeadRefusal::TooLarge)
                )
            };
            if a != b && refused_or_cut(a) && refused_or_cut(b) {
                whole.pop();
                split.pop();
            }
        }
        assert_eq!(whole, split, "the reads changed the outcome");
    }
}

// ---------------------------------------------------------------------------------------------
// response

/// Scaled down from the pool's 64 KiB so that the limit is reachable.
const RESP_MAX_HEAD: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
enum ReadResponse {
    /// A 1xx head the pool skips (all but 101).
    Interim(api::Response),
    Final(api::Response),
    Refused(&'static str),
    Truncated,
}

/// What the pool's client reads of a response: interim heads skipped, up to the final head.
fn read_responses(msg: &[u8], sizes: &[usize]) -> Vec<ReadResponse> {
    let mut c = Conn::new(msg, sizes);
    let mut parser = api::ResponseParser::default();
    let mut out = Vec::new();
    loop {
        if c.buf.is_empty() && !c.read() {
            out.push(ReadResponse::Truncated);
            return out;
        }
        let r = parser.parse(&c.buf, RESP_MAX_HEAD);
        c.check_only_consumed("parse_response");
        match r {
            Ok(Some(h)) => {
                assert!(h.len > 0 && h.len <= c.buf.len(), "head length {}", h.len);
                assert!(h.status < 1000, "status {}", h.status);
                let _ = c.buf.split_to(h.len);
                if (100..200).contains(&h.status) && h.status != 101 {
                    out.push(ReadResponse::Interim(h));
                } else {
                    out.push(ReadResponse::Final(h));
                    return out;
                }
            }
            Ok(None) if c.read() => {}
            Ok(None) => {
                out.push(ReadResponse::Truncated);
                return out;
            }
            Err(e) => {
                out.push(ReadResponse::Refused(e));
                return out;
            }
        }
    }
}

/// Response heads. Invariants: a complete head parses the same from exactly its own bytes, and
/// a strict prefix of it is incomplete; the result does not depend on how the bytes were read.
pub fn response(data: &[u8]) {
    let (sizes, msg) = split_spec(data);
    if let Ok(Some(h)) = api::parse_response(msg, RESP_MAX_HEAD) {
        assert!(
            h.len <= RESP_MAX_HEAD,
            "a complete head of {} bytes accepted past the {RESP_MAX_HEAD}-byte limit",
            h.len
        );
        assert_eq!(
            api::parse_response(&msg[..h.len], RESP_MAX_HEAD),
            Ok(Some(h.clone())),
            "the head is not self-delimiting"
        );
        for cut in [h.len - 1, h.len / 2] {
            assert_eq!(
                api::parse_response(&msg[..cut], RESP_MAX_HEAD),
                Ok(None),
                "a prefix of a complete head ({cut} of {} bytes) is not incomplete",
                h.len
            );
        }
        if h.bodiless {
            assert!(h.status == 204 || h.status == 304 || (100..200).contains(&h.status));
        }
        if !h.bodiless && !h.chunked && h.content_length.is_none() {
            assert!(!h.keep_alive, "a close-delimited body kept alive");
        }
    }
    let mut split = read_responses(msg, &sizes);
    if !sizes.is_empty() {
        let mut whole = read_responses(msg, &[]);
        // As for requests: a head that never ends may be refused when its bad bytes arrive or
        // found cut off when the input ends, depending on where the last look fell.
        if let (Some(a), Some(b)) = (whole.last(), split.last()) {
            let refused_or_cut =
                |r: &ReadResponse| matches!(r, ReadResponse::Truncated | ReadResponse::Refused(_));
            if a != b && refused_or_cut(a) && refused_or_cut(b) {
                whole.pop();
                split.pop();
            }
        }
        assert_eq!(whole, split, "the reads changed the outcome");
    }
}

// ---------------------------------------------------------------------------------------------
// cloudevent_binary, cloudevent_structured

/// Checks the head written for subscribers: `Name: value\r\n` lines, names tokens, values free
/// of CR, LF, NUL and other control bytes but HTAB; the attribute lines (`Ce-*` and
/// `Content-Type`) first, then only passthrough headers. Returns the lines as (name, value).
fn check_event_head(head: &[u8], attrs_len: usize) -> Vec<(&[u8], &[u8])> {
    assert!(attrs_len <= head.len(), "attribute length past the head");
    assert!(
        head.is_empty() || head.ends_with(b"\r\n"),
        "unterminated line"
    );
    let mut lines = Vec::new();
    let mut at = 0;
    let mut attrs_boundary_seen = attrs_len == 0;
    while at < head.len() {
        let end = at
            + head[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("line without CRLF");
        let line = &head[at..end];
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .expect("line without a colon");
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        assert!(!name.is_empty(), "empty header name");
        assert!(
            name.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
            "header name {:?} is not a token",
            String::from_utf8_lossy(name)
        );
        let value = value.strip_prefix(b" ").expect("no space after the colon");
        assert!(
            !value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f),
            "control byte in header value {:?}",
            String::from_utf8_lossy(value)
        );
        let attr = at < attrs_len;
        if attr {
            assert!(
                (name.len() > 3 && name[..3].eq_ignore_ascii_case(b"ce-"))
                    || name.eq_ignore_ascii_case(b"content-type"),
                "{:?} among the attribute lines",
                String::from_utf8_lossy(name)
            );
        } else {
            assert!(
                api::is_passthrough(name),
                "{:?} passed through",
                String::from_utf8_lossy(name)
            );
        }
        at = end + 2;
        attrs_boundary_seen |= at == attrs_len;
        lines.push((name, value));
    }
    assert!(attrs_boundary_seen, "attribute length inside a line");
    lines
}

fn is_cloudevents_media_type(ct: &[u8]) -> bool {
    let mt = ct.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
    mt.eq_ignore_ascii_case(b"application/cloudevents+json")
        || mt.eq_ignore_ascii_case(b"application/cloudevents-batch+json")
}

/// The request a subscriber (or a chained channel) receives: the written head after a request
/// line. A `Content-Type` that names a CloudEvents format is left out: a receiver would read the
/// delivered body as a structured event, not as this event's data, so that line cannot be
/// re-read in binary mode (reported separately: datacontenttype `application/cloudevents+json`).
fn as_request(lines: &[(&[u8], &[u8])]) -> Vec<u8> {
    // Host: an HTTP/1.1 request without one is refused (RFC 9112 §3.2); a written head never
    // carries one (it is not a passthrough header).
    let mut req = b"POST / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for (name, value) in lines {
        if name.eq_ignore_ascii_case(b"content-type") && is_cloudevents_media_type(value) {
            continue;
        }
        req.extend_from_slice(name);
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// Re-reads a written head as the binary-mode request a receiver gets. `None`: the head has more
/// header lines than any request the dispatcher itself accepts, so it cannot be re-read here.
fn reread(lines: &[(&[u8], &[u8])], data: Bytes, pass: &str) -> Option<(Vec<u8>, usize, Bytes)> {
    let req = as_request(lines);
    match api::binary_event(&req, data) {
        Event::Valid {
            head,
            attrs_len,
            data,
        } => Some((head, attrs_len, data)),
        Event::HeadRefused if lines.len() + 1 >= api::HEADER_SLOTS => None,
        other => panic!(
            "{pass}: the delivered event does not validate again: {other:?}\nit was:\n{}",
            String::from_utf8_lossy(&req)
        ),
    }
}

/// Runs an event through validation, then re-reads what subscribers get as a binary-mode event:
/// it must validate again, and the second re-reading must reproduce the first exactly (a
/// fixpoint: the first may only lose what HTTP itself drops, the whitespace around values).
/// Returns the first written head, its attribute length and data, when the event was valid.
fn check_event(request_head: &[u8], body: Bytes) -> Option<(Vec<u8>, usize, Bytes)> {
    let (head1, attrs1, data1) = match api::binary_event(request_head, body) {
        Event::Valid {
            head,
            attrs_len,
            data,
        } => (head, attrs_len, data),
        Event::Invalid(why) => {
            assert!(!why.is_empty(), "an error without a reason");
            return None;
        }
        Event::HeadRefused => return None,
    };
    let first = Some((head1.clone(), attrs1, data1.clone()));
    let lines1 = check_event_head(&head1, attrs1);
    let Some((head2, attrs2, data2)) = reread(&lines1, data1, "second pass") else {
        return first;
    };
    let lines2 = check_event_head(&head2, attrs2);
    let Some((head3, _, data3)) = reread(&lines2, data2.clone(), "third pass") else {
        return first;
    };
    assert_eq!(
        String::from_utf8_lossy(&head3),
        String::from_utf8_lossy(&head2),
        "binary mode is not a fixpoint"
    );
    assert_eq!(data3, data2, "the data changed when re-read");
    first
}

/// A binary-mode event: the input is header lines (`Name: value`, one a line), then a blank
/// line and the body. Beyond `check_event`: a binary event is re-read unchanged, head and body.
pub fn cloudevent_binary(data: &[u8]) {
    let (headers, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    // With a Host, as every HTTP/1.1 request needs; an input that brings its own has two, and is
    // refused as the ingress refuses it.
    let mut req = b"POST / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            req.extend_from_slice(line);
            req.extend_from_slice(b"\r\n");
        }
    }
    req.extend_from_slice(b"\r\n");
    // A CloudEvents content type makes it a structured event (with these headers as its body).
    let structured = headers.split(|&b| b == b'\n').any(|l| {
        l.len() > 13
            && l[..13].eq_ignore_ascii_case(b"content-type:")
            && is_cloudevents_media_type(&l[13..])
    });
    let body = Bytes::copy_from_slice(body);
    if let Some((head1, attrs1, data1)) = check_event(&req, body.clone()) {
        if !structured {
            assert_eq!(data1, body, "a binary event's body was changed");
            let lines = check_event_head(&head1, attrs1);
            if let Some((head2, _, _)) = reread(&lines, body, "re-read") {
                assert_eq!(
                    String::from_utf8_lossy(&head2),
                    String::from_utf8_lossy(&head1),
                    "a binary event's head changed when re-read"
                );
            }
        }
    }
}

/// A structured-mode event: the input is the JSON body of a request with `Content-Type:
/// application/cloudevents+json`. Beyond `check_event`: what validated is a JSON object whose
/// `id` is the delivered `Ce-Id`.
pub fn cloudevent_structured(data: &[u8]) {
    let req = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n";
    let Some((head1, _, _)) = check_event(req, Bytes::copy_from_slice(data)) else {
        return;
    };
    // A tree of the body (the dispatcher builds none): past serde_json's nesting limit for a
    // tree, which `data` may exceed, there is nothing to compare.
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .expect("validated without a string id");
    // As a header carries it: HTTP drops the whitespace around a value.
    let want = format!("Ce-Id: {}\r\n", id.trim_matches([' ', '\t']));
    assert!(
        String::from_utf8_lossy(&head1).contains(&want),
        "the delivered head lacks {want:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// manifest

/// A channel file as the file source reads it: parsed (as YAML, and also as JSON when it looks
/// like JSON), every channel's readiness, scope and config, the channel set built from it, and
/// its routing table. Invariants: no panic; errors carry a reason; a URL the dispatcher wrote
/// parses back to the same target; building the set again from the same file, or after the file
/// stops parsing, keeps the same channels; every channel of the set is routable by its path and
/// its host claims a route; retry delays stay within MAX_DELAY and never shrink as retries go.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // the file source reads files as UTF-8 and reports others as unreadable
    };
    let json = matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
    check_manifest(text, std::path::Path::new("channels.yaml"));
    if json {
        check_manifest(text, std::path::Path::new("channels.json"));
    }
}

fn check_manifest(text: &str, path: &std::path::Path) {
    let parsed = api::parse_manifests(text, path);
    if let Err(e) = &parsed {
        assert!(!e.is_empty(), "an error without a reason");
    }
    for imc in parsed.iter().flatten() {
        let facts = api::imc_facts(imc);
        assert!(facts.key.contains('/'));
        assert!(
            !(facts.cluster_scoped && facts.in_namespace_default),
            "served by both the cluster-scoped and a namespace-scoped dispatcher"
        );
        match api::channel_config(imc) {
            Ok(c) => check_config(&c, &facts.key),
            Err(e) => assert!(!e.is_empty(), "an error without a reason"),
        }
    }
    let empty = api::ChannelSet::default();
    let (set, failed, _) = api::build_set(&empty, path, parsed.clone());
    assert_eq!(failed, usize::from(parsed.is_err()));
    let n_imcs = parsed.as_ref().map_or(0, Vec::len);
    let entries = api::set_entries(&set);
    assert!(entries.len() <= n_imcs, "more channels than manifests");
    for (key, origin, config) in &entries {
        assert_eq!(origin, path);
        assert_eq!(*key, format!("{}/{}", config.namespace, config.name));
    }
    // The same file again: the same channels, the same configs.
    let (again, _, _) = api::build_set(&set, path, parsed);
    assert_eq!(
        api::set_entries(&again),
        entries,
        "a rebuild changed the set"
    );
    // The file stops parsing: its previous channels stay in force.
    let (kept, failed, _) = api::build_set(&set, path, Err("unreadable".into()));
    assert_eq!(failed, 1);
    assert_eq!(
        api::set_entries(&kept),
        entries,
        "a bad file dropped channels"
    );
    let table = api::route_table(&set);
    for (key, _, config) in &entries {
        assert_eq!(
            table.by_path(key),
            Some((config.namespace.clone(), config.name.clone())),
            "{key} is not routable by its path key"
        );
        // As a client writes it in `Host`: an IPv6 literal in brackets. Hosts made of names that
        // Kubernetes would refuse (`[`, `]`, `:` in a channel name) are left out.
        let host = &config.host;
        let header = if host.contains(':') && !host.contains(['[', ']']) {
            format!("[{host}]")
        } else {
            host.clone()
        };
        if host.contains(':')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            assert!(
                table.by_host(&header).is_some(),
                "host {host} routes nowhere"
            );
        }
    }
}

fn check_config(c: &api::ChannelConfig, key: &str) {
    assert_eq!(format!("{}/{}", c.namespace, c.name), key);
    assert!(!c.name.is_empty() && !c.host.is_empty());
    for s in &c.subscribers {
        for t in [&s.target, &s.reply, &s.dead_letter].into_iter().flatten() {
            assert!(!t.host.is_empty());
            let back = api::parse_target(&t.url)
                .unwrap_or_else(|e| panic!("the written URL of {t:?} does not parse: {e}"));
            assert_eq!(
                (&back.host, back.port, back.tls, &back.authority),
                (&t.host, t.port, t.tls, &t.authority),
                "the written URL {} is another target",
                t.url
            );
        }
        if let Some(p) = &s.policy {
            check_policy(p);
        }
    }
}

fn check_policy(p: &api::DeliveryPolicy) {
    let mut last = Duration::ZERO;
    for k in (0..=40).chain([1000, u32::MAX - 1, u32::MAX]) {
        let d = api::delay(p, k);
        assert!(d <= api::MAX_DELAY, "delay {d:?} past the cap");
        assert!(
            d >= last,
            "retry {k} waits less ({d:?}) than the one before ({last:?})"
        );
        last = d;
        for ra in [
            None,
            Some(Duration::ZERO),
            Some(Duration::from_secs(u64::MAX)),
        ] {
            let after = api::delay_after_status(p, k, 503, ra);
            assert!(after >= d && after <= api::MAX_DELAY.max(d));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// durations

/// Optional whitespace as HTTP has it (SP and HTAB only), which `Retry-After` may carry.
fn trim_sp_ht(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A fixed "now" (2023-11-14T22:13:20Z) so that date results are reproducible.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// jiff's bound on a span's seconds (about 20,000 years): past it a valid-looking duration is
/// legitimately out of range.
const JIFF_MAX_SECONDS: u64 = 631_107_417_600;

/// `Retry-After`, ISO 8601 and CLI durations on arbitrary text, and the delivery policy built
/// from them. Invariants: no panic; surrounding whitespace never changes a result; the two
/// parsers agree where both accept; seconds, milliseconds and HTTP dates derived from the input
/// parse to exactly the value they were written from; a policy holds exactly what its fields
/// parse to and its delays stay capped and monotonic.
pub fn durations(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    let ra = api::retry_after(data, now());
    let padded = [b" \t", data, b"\t "].concat();
    assert_eq!(
        api::retry_after(&padded, now()),
        ra,
        "whitespace changed Retry-After"
    );
    let trimmed = trim_sp_ht(data);
    if !trimmed.is_empty() && trimmed.iter().all(u8::is_ascii_digit) {
        if let Ok(n) = std::str::from_utf8(trimmed).unwrap_or("").parse::<u64>() {
            assert_eq!(ra, Some(Duration::from_secs(n)), "Retry-After: {n}");
        }
    }

    let iso = api::iso_duration(s);
    let cli = api::cli_duration(s);
    let padded = format!(" \t{s}\n ");
    assert_eq!(api::iso_duration(&padded).ok(), iso.clone().ok());
    assert_eq!(api::cli_duration(&padded).ok(), cli.clone().ok());
    for e in [iso.as_ref().err(), cli.as_ref().err()]
        .into_iter()
        .flatten()
    {
        assert!(!e.is_empty());
    }
    if let (Ok(a), Ok(b)) = (&iso, &cli) {
        assert_eq!(a, b, "ISO and CLI parsers disagree on {s:?}");
    }

    // Values written from the input's first bytes must read back exactly.
    let mut n8 = [0u8; 8];
    let k = data.len().min(8);
    n8[..k].copy_from_slice(&data[..k]);
    let n = u64::from_le_bytes(n8);
    let secs = Duration::from_secs;
    assert_eq!(
        api::retry_after(n.to_string().as_bytes(), now()),
        Some(secs(n))
    );
    assert_eq!(api::cli_duration(&n.to_string()), Ok(secs(n)));
    let small = n % JIFF_MAX_SECONDS;
    assert_eq!(api::cli_duration(&format!("{small}s")), Ok(secs(small)));
    assert_eq!(api::cli_duration(&format!("PT{small}S")), Ok(secs(small)));
    assert_eq!(api::iso_duration(&format!("PT{small}S")), Ok(secs(small)));
    let ms = n % (JIFF_MAX_SECONDS * 1000);
    assert_eq!(
        api::cli_duration(&format!("{ms}ms")),
        Ok(Duration::from_millis(ms))
    );
    assert_eq!(
        api::iso_duration(&format!("PT{}.{:03}S", ms / 1000, ms % 1000)),
        Ok(Duration::from_millis(ms))
    );
    let later = n % (1 << 32); // about 136 years: within the years HTTP dates can write
    let date = httpdate::fmt_http_date(now() + secs(later));
    assert_eq!(
        api::retry_after(date.as_bytes(), now()),
        Some(secs(later)),
        "Retry-After: {date}"
    );
    let past = httpdate::fmt_http_date(now() - secs(later % 1_000_000_000 + 1));
    assert_eq!(api::retry_after(past.as_bytes(), now()), None, "{past}");

    // The delivery policy with every duration field set to the input.
    let retry = data.first().map(|&b| i32::from(b) - 128);
    let policy = match data.get(1).map(|b| b % 4) {
        Some(0) => None,
        Some(1) => Some("linear"),
        Some(2) => Some("exponential"),
        _ => Some("garbage"),
    };
    let p = api::delivery_policy(retry, policy, Some(s), Some(s), Some(s));
    let valid_retry = retry.is_none_or(|r| r >= 0);
    match (&p, &iso) {
        (Ok(Some(p)), Ok(d)) => {
            assert!(valid_retry && policy != Some("garbage"));
            assert_eq!(p.retry, retry.unwrap_or(0) as u32);
            assert_eq!(p.timeout, Some(*d).filter(|d| !d.is_zero()));
            assert_eq!(p.retry_after_max, Some(*d));
            let want = match policy {
                Some("linear") => api::Backoff::Linear(*d),
                Some("exponential") => api::Backoff::Exponential(*d),
                _ => api::Backoff::None,
            };
            assert_eq!(p.backoff, want);
            check_policy(p);
        }
        (Ok(None), _) => panic!("a delivery block read as none"),
        (Ok(Some(_)), Err(e)) => panic!("a policy from an invalid duration ({e})"),
        (Err(e), _) => {
            assert!(!e.is_empty());
            assert!(
                !valid_retry || policy == Some("garbage") || iso.is_err(),
                "{e}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// chunked_differential

/// The body limit of the differential target: small, so that the limit is reachable.
pub const DIFF_MAX_BODY: usize = 1024;

#[derive(Debug)]
enum Decoded {
    Complete { consumed: usize, body: Vec<u8> },
    Incomplete { body: Vec<u8> },
    Refused { why: ChunkRefusal },
}

/// The dispatcher's decoder fed the message in the given reads.
fn dispatcher_decode(msg: &[u8], sizes: &[usize]) -> Decoded {
    let mut c = Conn::new(msg, sizes);
    let mut dec = api::Chunked::default();
    let mut out = BytesMut::new();
    while c.read() {
        let r = dec.decode(&mut c.buf, &mut out, DIFF_MAX_BODY);
        c.check_only_consumed("ChunkedDecoder");
        assert!(out.len() <= DIFF_MAX_BODY, "body past its limit");
        match r {
            Ok(true) => {
                return Decoded::Complete {
                    consumed: c.fed - c.buf.len(),
                    body: out.to_vec(),
                }
            }
            Ok(false) => {
                // Called again with nothing new, it must neither progress nor change its mind.
                let (left, got) = (c.buf.len(), out.len());
                let again = dec.decode(&mut c.buf, &mut out, DIFF_MAX_BODY);
                assert_eq!(again, Ok(false), "a starved decoder changed its verdict");
                assert_eq!(
                    (c.buf.len(), out.len()),
                    (left, got),
                    "progress without input"
                );
            }
            Err(why) => return Decoded::Refused { why },
        }
    }
    Decoded::Incomplete { body: out.to_vec() }
}

/// Whether the dispatcher's verdict agrees with the reference's. A refusal may be reported as
/// "incomplete" only while the line holding the offending byte has not ended (no CRLF after it):
/// a decoder that validates whole lines cannot know yet. Data decoded by the end of an incomplete
/// input must be a prefix of the reference's (the data of a refused body is discarded).
fn agrees(reference: &rfc9112::Verdict, got: &Decoded, msg: &[u8]) -> bool {
    use rfc9112::Verdict as V;
    let prefix = |have: &[u8], of: &[u8]| of.starts_with(have);
    match (reference, got) {
        (
            V::Complete { consumed, body },
            Decoded::Complete {
                consumed: c,
                body: b,
            },
        ) => consumed == c && body == b,
        (V::Incomplete { body }, Decoded::Incomplete { body: b }) => prefix(b, body),
        // What a refused body decoded is discarded with it.
        (V::Refused { .. }, Decoded::Refused { .. }) => true,
        (V::Refused { at, body }, Decoded::Incomplete { body: b }) => {
            !msg[*at..].windows(2).any(|w| w == b"\r\n") && prefix(b, body)
        }
        _ => false,
    }
}

/// Differential: the dispatcher's incremental `ChunkedDecoder`, fed in arbitrary reads (and at
/// once), against the RFC 9112 reference decoder: the same accept/refuse verdict, the same
/// decoded bytes and the same bytes consumed.
pub fn chunked_differential(data: &[u8]) {
    let (sizes, msg) = split_spec(data);
    let limits = rfc9112::Limits {
        max_body: DIFF_MAX_BODY,
        max_line: api::CHUNK_LINE_MAX,
        max_trailers: api::TRAILER_SECTION_MAX,
    };
    let reference = rfc9112::decode(msg, limits);
    let mut runs = vec![sizes.clone()];
    if !sizes.is_empty() {
        runs.push(Vec::new());
    }
    for sizes in runs {
        let got = dispatcher_decode(msg, &sizes);
        assert!(
            agrees(&reference, &got, msg),
            "ChunkedDecoder disagrees with RFC 9112 on {:?} (reads {sizes:?}):\n  RFC 9112:   {}\n  dispatcher: {}",
            String::from_utf8_lossy(msg),
            show_verdict(&reference),
            show_decoded(&got),
        );
    }
}

fn show_verdict(v: &rfc9112::Verdict) -> String {
    match v {
        rfc9112::Verdict::Complete { consumed, body } => {
            format!(
                "complete after {consumed} bytes, {} bytes of data",
                body.len()
            )
        }
        rfc9112::Verdict::Incomplete { body } => format!("incomplete, {} bytes so far", body.len()),
        rfc9112::Verdict::Refused { at, .. } => format!("refused at byte {at}"),
    }
}

fn show_decoded(d: &Decoded) -> String {
    match d {
        Decoded::Complete { consumed, body } => {
            format!(
                "complete after {consumed} bytes, {} bytes of data",
                body.len()
            )
        }
        Decoded::Incomplete { body } => format!("incomplete, {} bytes so far", body.len()),
        Decoded::Refused { why } => format!("refused ({why:?})"),
    }
}
