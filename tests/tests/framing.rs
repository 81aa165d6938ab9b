//! Strict HTTP/1.1 request framing (RFC 9112): a request whose framing two parsers could read two
//! ways (chunk-size lines, trailers, `Transfer-Encoding`, `Host`) is refused with the status
//! shown and the connection closed, and nothing of it reaches a subscriber. Framing the RFC allows
//! (chunk extensions, quoted values, BWS, upper-case hex, leading zeros, trailer fields) is still
//! accepted and delivered with the right body.

use std::time::Duration;

use imc_e2e::*;

/// Time for an answer, and then for the close after a refusal.
const ANSWER: Duration = Duration::from_secs(3);
const CLOSE: Duration = Duration::from_secs(3);

/// The head of E1 (with this id) sent chunked, as text, so the body below is ours to write.
fn chunked_head(id: &str) -> Vec<u8> {
    e1().id(id)
        .set_header("content-type", "text/plain")
        .header("Transfer-Encoding", "chunked")
        .body("")
        .to_bytes()
}

/// E1 (with this id) with `Transfer-Encoding` header lines `codings` and a well-formed chunked
/// body `{"k":1}`.
fn with_transfer_encodings(id: &str, codings: &[&str]) -> Vec<u8> {
    let req = codings.iter().fold(e1().id(id).body(""), |req, coding| {
        req.header("Transfer-Encoding", coding)
    });
    [req.to_bytes(), b"7\r\n{\"k\":1}\r\n0\r\n\r\n".to_vec()].concat()
}

/// `bytes` without its `Host: 127.0.0.1` line (which [`Request::to_bytes`] adds to HTTP/1.1).
fn without_default_host(bytes: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(bytes).expect("a text request");
    text.replacen("Host: 127.0.0.1\r\n", "", 1).into_bytes()
}

/// What a connection saw: the first response (or why there was none), then whether the server
/// closed within [`CLOSE`] and what else it sent before.
struct Seen {
    response: Result<Response, String>,
    closed: Option<Closed>,
}

impl Seen {
    fn describe(&self) -> String {
        let answer = match &self.response {
            Ok(r) => format!("answered {}", r.status),
            Err(e) => format!("no answer within {ANSWER:?} ({e})"),
        };
        let close = match &self.closed {
            None => format!("left open {CLOSE:?} after"),
            Some(c) if c.trailing.is_empty() => format!("closed {:?} after", c.after),
            Some(c) => format!(
                "then sent {:?} and closed",
                String::from_utf8_lossy(&c.trailing)
            ),
        };
        format!("{answer}, {close}")
    }
}

/// Writes `bytes` on a new connection in one write and sees what happens.
fn exchange(dut: &Dut, bytes: &[u8]) -> Seen {
    let mut conn = dut.connect();
    conn.set_read_timeout(ANSWER);
    // The server may refuse and close before reading everything; the answer is the point.
    let _ = conn.write_raw(bytes);
    let response = conn.read_response().map_err(|e| e.to_string());
    let closed = conn.wait_closed(CLOSE);
    Seen { response, closed }
}

/// Runs [`exchange`] for every case at once, each on its own connection (a case that hangs costs
/// its timeouts once, not once per case); results in case order.
fn exchange_all<'a>(dut: &Dut, cases: impl Iterator<Item = &'a [u8]>) -> Vec<Seen> {
    std::thread::scope(|scope| {
        let running: Vec<_> = cases
            .map(|bytes| scope.spawn(move || exchange(dut, bytes)))
            .collect();
        running
            .into_iter()
            .map(|h| h.join().expect("exchange thread"))
            .collect()
    })
}

/// Panics unless every case is answered `status` and then closed, with nothing else sent, and
/// the subscriber got nothing. Lists every case that went wrong, not just the first.
#[track_caller]
fn assert_refused(dut: &Dut, sink: &Sink, status: u16, cases: &[(&str, Vec<u8>)]) {
    let mut wrong = Vec::new();
    let seen = exchange_all(dut, cases.iter().map(|(_, bytes)| bytes.as_slice()));
    for ((name, _), seen) in cases.iter().zip(seen) {
        let ok = matches!(&seen.response, Ok(r) if r.status == status)
            && seen.closed.as_ref().is_some_and(|c| c.trailing.is_empty());
        if !ok {
            wrong.push(format!("{name}: {}", seen.describe()));
        }
    }
    let delivered: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| {
            format!(
                "ce-id {} with body {:?}",
                r.id(),
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect();
    assert!(
        wrong.is_empty() && delivered.is_empty(),
        "each case must be answered {status} and closed, and none delivered;\nwrong answers: \
         {wrong:#?}\ndelivered to the subscriber: {delivered:#?}"
    );
}

/// Panics unless every case `(id, bytes, body)` is answered 202 and delivered with `body`.
#[track_caller]
fn assert_accepted(dut: &Dut, sink: &Sink, cases: &[(&str, Vec<u8>, &[u8])]) {
    let mut wrong = Vec::new();
    let seen = exchange_all(dut, cases.iter().map(|(_, bytes, _)| bytes.as_slice()));
    for ((id, _, _), seen) in cases.iter().zip(seen) {
        if !matches!(&seen.response, Ok(r) if r.status == 202) {
            wrong.push(format!("{id}: {}", seen.describe()));
        }
    }
    for (id, _, body) in cases {
        let got: Vec<Recorded> = sink
            .requests()
            .into_iter()
            .filter(|r| r.id() == *id)
            .collect();
        match got.as_slice() {
            [one] if one.body == *body => {}
            _ => wrong.push(format!(
                "{id}: delivered {:?}, expected once with body {:?}",
                got.iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(body)
            )),
        }
    }
    assert!(wrong.is_empty(), "cases not accepted as sent: {wrong:#?}");
}

fn c1_to_sink(driver: Driver) -> (Dut, Sink) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);
    (dut, s1)
}

/// A chunk-size line is hex digits, then optionally `;` extensions (BWS allowed before `;`),
/// then CRLF. Anything else, whatever follows it, is 400.
fn malformed_chunk_size_lines_are_400_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let case = |id: &str, body: &[u8]| [chunked_head(id), body.to_vec()].concat();
    let cases = [
        (
            "bare LF after an extension `5;\\nQQQ`",
            case("lf-ext", b"5;\nQQQ\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "empty size line",
            case("empty", b"\r\n5\r\nhello\r\n0\r\n\r\n"),
        ),
        ("`g`", case("g", b"g\r\nhello\r\n0\r\n\r\n")),
        ("bare LF `5\\n`", case("lf", b"5\nhello\r\n0\r\n\r\n")),
        ("NUL `5\\x00`", case("nul", b"5\x00\r\nhello\r\n0\r\n\r\n")),
        (
            "control byte in an extension `5;a=\\x01`",
            case("ctl-ext", b"5;a=\x01\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "leading space ` 5`",
            case("lead-sp", b" 5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "trailing space without `;` `5 `",
            case("trail-sp", b"5 \r\nhello\r\n0\r\n\r\n"),
        ),
        ("negative `-5`", case("neg", b"-5\r\nhello\r\n0\r\n\r\n")),
        ("`0x5`", case("0x", b"0x5\r\nhello\r\n0\r\n\r\n")),
        (
            "17 hex digits",
            case("17", b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ),
    ];
    assert_refused(&dut, &s1, 400, &cases);
}

fn valid_chunk_size_lines_are_accepted(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let case = |id: &str, body: &[u8]| [chunked_head(id), body.to_vec()].concat();
    let cases: [(&str, Vec<u8>, &[u8]); 5] = [
        (
            "ext",
            case("ext", b"5;name=value\r\nhello\r\n0\r\n\r\n"),
            b"hello",
        ),
        (
            "quoted",
            case("quoted", b"5;name=\"quoted value\"\r\nhello\r\n0\r\n\r\n"),
            b"hello",
        ),
        (
            "bws",
            case("bws", b"5 ; name\r\nhello\r\n0\r\n\r\n"),
            b"hello",
        ),
        (
            "upper",
            case("upper", b"A\r\nhelloworld\r\n0\r\n\r\n"),
            b"helloworld",
        ),
        (
            "zeros",
            case("zeros", b"0005\r\nhello\r\n0\r\n\r\n"),
            b"hello",
        ),
    ];
    assert_accepted(&dut, &s1, &cases);
}

/// Trailer fields are read (and dropped) up to the blank line; a request pipelined after them is
/// served.
fn trailer_fields_are_read_and_the_next_request_served(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let mut conn = dut.connect();
    conn.set_read_timeout(ANSWER);
    let mut bytes = chunked_head("t1");
    bytes.extend(b"7\r\n{\"k\":1}\r\n0\r\nX-T: v\r\n\r\n");
    bytes.extend(e1().id("t2").to_bytes());

    conn.write_raw(&bytes).expect("write two requests");
    let first = conn
        .read_response()
        .expect("an answer to the first request");
    let second = conn
        .read_response()
        .expect("an answer to the second request");

    assert_eq!(
        (first.status, second.status),
        (202, 202),
        "{first:?}\n{second:?}"
    );
    let got = s1.wait_for(2, DELIVERY);
    assert_eq!(got[0].id(), "t1");
    assert_eq!(got[0].body, br#"{"k":1}"#);
    assert_binary_e1_with_id(&got[1], "t2");
}

/// A trailer line is `name: value` CRLF, like a header line: a bare LF, no colon, or leading
/// whitespace (obsolete line folding) is 400.
fn malformed_trailer_lines_are_400_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let case = |id: &str, trailer: &[u8]| {
        [
            chunked_head(id),
            b"7\r\n{\"k\":1}\r\n0\r\n".to_vec(),
            trailer.to_vec(),
        ]
        .concat()
    };
    let cases = [
        ("bare LF `X-T: v\\n`", case("lf", b"X-T: v\n\r\n")),
        ("no colon", case("colon", b"no-colon\r\n\r\n")),
        ("leading whitespace", case("fold", b" X-T: v\r\n\r\n")),
    ];
    assert_refused(&dut, &s1, 400, &cases);
}

/// `0\r\nX-T: v\n\r\n` then a whole request: a parser that ends lines at LF sees the message end
/// and a second request; one that wants CRLF sees more trailers. Neither reading may win: 400,
/// and the pipelined request is not served.
fn bare_lf_trailer_line_never_smuggles_a_pipelined_request(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let mut bytes = chunked_head("carrier");
    bytes.extend(b"7\r\n{\"k\":1}\r\n0\r\nX-T: v\n\r\n");
    bytes.extend(e1().id("pipelined").to_bytes());

    assert_refused(&dut, &s1, 400, &[("bare-LF trailer + pipelined E1", bytes)]);
}

/// RFC 9112 §6.1: chunked must be the last coding, and a coding other than chunked is not
/// implemented: 501.
fn unsupported_transfer_codings_are_501_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let cases = [
        (
            "`gzip, chunked`",
            with_transfer_encodings("gz-ch", &["gzip, chunked"]),
        ),
        (
            "`gzip` + `chunked` headers",
            with_transfer_encodings("gz+ch", &["gzip", "chunked"]),
        ),
        ("`identity`", with_transfer_encodings("id", &["identity"])),
    ];
    assert_refused(&dut, &s1, 501, &cases);
}

/// A coding after chunked, chunked twice, or an empty value leaves the framing undecidable: 400.
fn malformed_transfer_encoding_is_400_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let cases = [
        (
            "`chunked, gzip`",
            with_transfer_encodings("ch-gz", &["chunked, gzip"]),
        ),
        (
            "`chunked, chunked`",
            with_transfer_encodings("ch-ch", &["chunked, chunked"]),
        ),
        (
            "two `chunked` headers",
            with_transfer_encodings("ch+ch", &["chunked", "chunked"]),
        ),
        ("empty value", with_transfer_encodings("empty", &[""])),
    ];
    assert_refused(&dut, &s1, 400, &cases);
}

/// HTTP/1.0 has no chunked coding (RFC 9112 §6.1): 400.
fn http10_chunked_request_is_400_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let head = e1()
        .id("h10")
        .http10()
        .header("Transfer-Encoding", "chunked")
        .body("")
        .to_bytes();
    let bytes = [head, b"7\r\n{\"k\":1}\r\n0\r\n\r\n".to_vec()].concat();

    assert_refused(&dut, &s1, 400, &[("HTTP/1.0 + chunked", bytes)]);
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one valid `Host`: none, two (equal or not), or
/// one that is not `host[:port]` is 400, even when the path alone would route the event.
fn missing_or_invalid_host_is_400_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let by_path = |id: &str| e1().id(id).target("/default/ch1");
    let cases = [
        (
            "no Host",
            without_default_host(by_path("none").without_header("host").to_bytes()),
        ),
        (
            "two equal Host headers",
            e1().id("two-same").header("Host", C1_HOST).to_bytes(),
        ),
        (
            "two different Host headers",
            by_path("two-diff")
                .host(C1_HOST)
                .header("Host", "other.example")
                .to_bytes(),
        ),
        ("`a b`", by_path("space").host("a b").to_bytes()),
        ("`x:80x`", by_path("port").host("x:80x").to_bytes()),
        ("`[::1`", by_path("bracket").host("[::1").to_bytes()),
        ("`a@b`", by_path("userinfo").host("a@b").to_bytes()),
    ];
    assert_refused(&dut, &s1, 400, &cases);
}

/// RFC 9112 §3.2.2: with an absolute-form target the target's authority is the host, whatever
/// `Host` says: it routes to C1 over an unrelated `Host`, and an unknown channel in the target
/// is 404 even with C1's `Host`.
fn absolute_form_authority_routes_over_host(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let to_c1 = e1()
        .id("abs")
        .target(&format!("http://{C1_HOST}/"))
        .host("unrelated.example");
    let to_unknown = e1()
        .id("abs-unknown")
        .target("http://unknown-kn-channel.default.svc.cluster.local/")
        .host(C1_HOST);

    let c1_answer = dut.send(&to_c1);
    let unknown_answer = dut.send(&to_unknown);

    assert_eq!(
        (c1_answer.status, unknown_answer.status),
        (202, 404),
        "absolute-form to C1 with an unrelated Host: {c1_answer:?}\nabsolute-form to an unknown \
         channel with C1's Host: {unknown_answer:?}\ndelivered: {:#?}",
        s1.requests()
    );
    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_binary_e1_with_id(&got[0], "abs");
}

/// HTTP/1.0 needs no `Host`: routed by path, it is accepted.
fn http10_without_host_routes_by_path(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    dut.send(
        &e1()
            .id("h10")
            .http10()
            .without_header("host")
            .target("/default/ch1"),
    )
    .assert_status(202);

    assert_binary_e1_with_id(&s1.wait_for(1, DELIVERY)[0], "h10");
}

both_drivers!(
    malformed_chunk_size_lines_are_400_and_closed,
    valid_chunk_size_lines_are_accepted,
    trailer_fields_are_read_and_the_next_request_served,
    malformed_trailer_lines_are_400_and_closed,
    bare_lf_trailer_line_never_smuggles_a_pipelined_request,
    unsupported_transfer_codings_are_501_and_closed,
    malformed_transfer_encoding_is_400_and_closed,
    http10_chunked_request_is_400_and_closed,
    missing_or_invalid_host_is_400_and_closed,
    absolute_form_authority_routes_over_host,
    http10_without_host_routes_by_path,
);
