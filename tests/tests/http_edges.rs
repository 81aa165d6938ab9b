//! The ingress as an HTTP/1.1 server: connection reuse, framing, limits, timeouts and probes
//! (contract §1.4, §7 H 76-77, D3, D4, D5).

use std::time::{Duration, Instant};

use imc_e2e::*;

const UNKNOWN_HOST: &str = "nope-kn-channel.default.svc.cluster.local";

/// Time a test gives the server to close a connection it should close.
const CLOSE: Duration = Duration::from_secs(3);

fn c1_to_sink(driver: Driver, args: &[&str]) -> (Dut, Sink) {
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .args(args)
        .start();
    (dut, s1)
}

fn ids(requests: &[Recorded]) -> Vec<String> {
    let mut ids: Vec<String> = requests
        .iter()
        .map(|r| r.header("ce-id").unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

fn keep_alive_serves_two_requests_on_one_connection(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let mut conn = dut.connect();

    conn.send(&e1().id("ka1")).assert_status(202);
    conn.send(&e1().id("ka2")).assert_status(202);

    assert_eq!(ids(&s1.wait_for(2, DELIVERY)), ["ka1", "ka2"]);
}

/// Three requests in one write; the first is slow to deliver, so a server that answered as soon as
/// each request was done would answer the 404 first.
fn pipelined_requests_are_answered_in_order(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(200).delay(Duration::from_millis(300))]);
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);
    let mut conn = dut.connect();
    let mut pipeline = e1().id("p1").to_bytes();
    pipeline.extend(e1().id("p2").host(UNKNOWN_HOST).to_bytes());
    pipeline.extend(e1().id("p3").to_bytes());

    conn.write_raw(&pipeline).expect("write the pipeline");
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            conn.read_response()
                .unwrap_or_else(|e| panic!("response {i}: {e}"))
                .status
        })
        .collect();

    assert_eq!(statuses, [202, 404, 202]);
    assert_eq!(ids(&s1.wait_for(2, DELIVERY)), ["p1", "p3"]);
}

fn http10_without_keep_alive_is_closed_after_answer(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let mut conn = dut.connect();

    conn.send(&e1().http10()).assert_status(202);

    assert!(
        conn.wait_closed(CLOSE).is_some(),
        "HTTP/1.0 connection left open"
    );
    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
}

fn connection_close_is_honoured(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let mut conn = dut.connect();

    conn.send(&e1().header("Connection", "close"))
        .assert_status(202);

    assert!(
        conn.wait_closed(CLOSE).is_some(),
        "`Connection: close` left open"
    );
    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
}

/// A chunked request body reaches the subscriber de-chunked, framed by `Content-Length`.
fn chunked_request_body_is_dechunked(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let mut conn = dut.connect();
    let head = e1().header("Transfer-Encoding", "chunked").body("");

    conn.write_raw(&head.to_bytes()).expect("write head");
    for chunk in [
        "3\r\n{\"k\r\n",
        "2\r\n\":\r\n",
        "2;ext=1\r\n1}\r\n",
        "0\r\n\r\n",
    ] {
        conn.write_raw(chunk.as_bytes()).expect("write chunk");
    }
    conn.read_response().expect("response").assert_status(202);

    let got = &s1.wait_for(1, DELIVERY)[0];
    assert_binary_e1(got);
    got.assert_header("content-length", "7");
    got.assert_no_header("transfer-encoding");
}

fn expect_100_continue_gets_interim_response(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let mut conn = dut.connect();
    conn.set_read_timeout(Duration::from_secs(3));
    let (interim, last) = conn.send_expecting_continue(&e1(), br#"{"k":1}"#);
    interim.assert_status(100);
    last.assert_status(202);

    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
}

/// D3: "over the limit" means over: a body of exactly `--max-body-bytes` is accepted.
fn body_at_limit_is_accepted(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--max-body-bytes", "1000"]);
    let event = e1()
        .set_header("content-type", "application/octet-stream")
        .body(vec![b'x'; 1000]);

    dut.send(&event).assert_status(202);

    assert_eq!(s1.wait_for(1, DELIVERY)[0].body.len(), 1000);
}

/// D3: a Content-Length over the limit is 413, then the connection is closed.
fn oversized_body_is_413_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--max-body-bytes", "1000"]);
    let mut conn = dut.connect();
    let event = e1()
        .set_header("content-type", "application/octet-stream")
        .body(vec![b'x'; 2000]);

    // The server may answer and close before reading the body; a failed write is not the point.
    let _ = conn.write_raw(&event.to_bytes());
    conn.read_response()
        .expect("a 413 before the close")
        .assert_status(413);

    assert!(conn.wait_closed(CLOSE).is_some(), "left open after 413");
    s1.assert_untouched();
}

/// D3: a chunked body that grows over the limit is 413, then the connection is closed.
fn oversized_chunked_body_is_413_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--max-body-bytes", "1000"]);
    let mut conn = dut.connect();
    let mut bytes = e1()
        .set_header("content-type", "application/octet-stream")
        .header("Transfer-Encoding", "chunked")
        .body("")
        .to_bytes();
    for _ in 0..4 {
        bytes.extend(b"1f4\r\n");
        bytes.extend([b'x'; 500]);
        bytes.extend(b"\r\n");
    }
    bytes.extend(b"0\r\n\r\n");

    let _ = conn.write_raw(&bytes);
    conn.read_response()
        .expect("a 413 before the close")
        .assert_status(413);

    assert!(conn.wait_closed(CLOSE).is_some(), "left open after 413");
    s1.assert_untouched();
}

/// D3: with `Expect: 100-continue` an oversized Content-Length gets 413 instead of 100.
fn expect_100_with_oversized_body_is_413_without_100(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--max-body-bytes", "1000"]);
    let mut conn = dut.connect();
    conn.set_read_timeout(Duration::from_secs(3));
    let head = e1()
        .header("Expect", "100-continue")
        .header("Content-Length", "2000")
        .body("");

    conn.write_raw(&head.to_bytes()).expect("write head");
    let first = conn.read_message().expect("an answer to the head alone");

    first.assert_status(413);
    assert!(conn.wait_closed(CLOSE).is_some(), "left open after 413");
    s1.assert_untouched();
}

/// D4: a header block over `--max-header-bytes` is 431; one under it passes.
fn oversized_header_block_is_431(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--max-header-bytes", "4096"]);

    dut.send(&e1().id("fits").header("X-Pad", &"a".repeat(3000)))
        .assert_status(202);
    let mut conn = dut.connect();
    let _ = conn.write_raw(
        &e1()
            .id("over")
            .header("X-Pad", &"a".repeat(5000))
            .to_bytes(),
    );
    conn.read_response()
        .expect("a 431 answer")
        .assert_status(431);

    assert_eq!(ids(&s1.requests()), ["fits"]);
}

/// D4: more than 128 header fields is 431; 100 extra fields pass.
fn too_many_headers_is_431(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let with_extra =
        |id: &str, n: usize| (0..n).fold(e1().id(id), |req, i| req.header(&format!("X-H{i}"), "v"));

    dut.send(&with_extra("fits", 100)).assert_status(202);
    dut.send(&with_extra("over", 130)).assert_status(431);

    assert_eq!(ids(&s1.requests()), ["fits"]);
}

/// D5: a client that sends part of a head and stops is cut off after the header read timeout
/// (a 408 before the close is allowed).
fn partial_head_is_closed_after_header_read_timeout(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--header-read-timeout", "1s"]);
    let mut conn = dut.connect();

    conn.write_raw(format!("POST / HTTP/1.1\r\nHost: {C1_HOST}\r\nce-id: slow\r\n").as_bytes())
        .expect("write a partial head");
    let closed = conn
        .wait_closed(Duration::from_secs(5))
        .expect("connection still open 5 s after a partial head");

    assert_timeout_close(&closed, Duration::from_millis(700), Duration::from_secs(3));
    s1.assert_untouched();
}

/// D5: trickling a head byte by byte does not reset the header read timeout.
fn trickled_head_is_closed_after_header_read_timeout(driver: Driver) {
    let (dut, _s1) = c1_to_sink(driver, &["--header-read-timeout", "1s"]);
    let mut conn = dut.connect();
    let start = Instant::now();
    let mut head = format!("POST / HTTP/1.1\r\nHost: {C1_HOST}\r\nX-Slow: ").into_bytes();
    head.extend([b'a'; 200]);

    let mut bytes = head.into_iter();
    let cut_off = loop {
        let Some(byte) = bytes.next() else { break None };
        if conn.write_raw(&[byte]).is_err() {
            break Some((start.elapsed(), Vec::new()));
        }
        if let Some(closed) = conn.wait_closed(Duration::from_millis(100)) {
            break Some((start.elapsed(), closed.trailing));
        }
        if start.elapsed() > Duration::from_secs(4) {
            break None;
        }
    };
    let (after, trailing) = cut_off.expect("a head trickled for 4 s was never cut off");

    assert!(
        after >= Duration::from_millis(700) && after <= Duration::from_secs(3),
        "a trickled head was cut off after {after:?}, expected about 1 s"
    );
    assert_only_408(&trailing);
}

/// D5: an idle keep-alive connection is closed after the idle timeout, counted from the last
/// response, and not before.
fn idle_keep_alive_connection_is_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--idle-timeout", "2s"]);
    let mut conn = dut.connect();

    conn.send(&e1().id("i1")).assert_status(202);
    std::thread::sleep(Duration::from_secs(1));
    conn.send(&e1().id("i2")).assert_status(202);
    let closed = conn
        .wait_closed(Duration::from_secs(5))
        .expect("idle connection still open after 5 s");

    assert!(
        closed.after >= Duration::from_millis(1500) && closed.after <= Duration::from_secs(4),
        "idle connection closed after {:?}, expected about 2 s",
        closed.after
    );
    assert_eq!(ids(&s1.requests()), ["i1", "i2"]);
}

fn malformed_request_line_is_400_and_closed(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let mut conn = dut.connect();

    conn.write_raw(b"GARBAGE\r\n\r\n").expect("write garbage");
    conn.read_response()
        .expect("a 400 answer")
        .assert_status(400);

    assert!(
        conn.wait_closed(CLOSE).is_some(),
        "left open after a bad request line"
    );
    s1.assert_untouched();
}

/// A `kube-probe/` User-Agent is a probe on any path and method, even with an event attached.
fn kube_probe_is_204_on_any_path_and_method(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);

    for (method, target) in [
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/whatever"),
        ("HEAD", "/"),
        ("POST", "/default/ch1"),
    ] {
        let resp = dut.send(&kube_probe().method(method).target(target));
        assert_eq!(resp.status, 204, "{method} {target}: {resp:?}");
    }
    let resp = dut.send(&e1().header("User-Agent", "kube-probe/1.30"));
    resp.assert_status(204);
    s1.assert_untouched();
}

fn network_probe_echoes_hash(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);

    let resp = dut.send(
        &e1()
            .header("K-Network-Probe", "probe")
            .header("K-Network-Hash", "h1"),
    );

    resp.assert_status(200);
    resp.assert_header("k-network-hash", "h1");
    s1.assert_untouched();
}

fn network_probe_without_hash_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);

    let resp = dut.send(&Request::new("GET", "/").header("K-Network-Probe", "probe"));

    resp.assert_status(400);
    s1.assert_untouched();
}

#[track_caller]
fn assert_timeout_close(closed: &Closed, min: Duration, max: Duration) {
    assert!(
        closed.after >= min && closed.after <= max,
        "closed after {:?}, expected between {min:?} and {max:?}",
        closed.after
    );
    assert_only_408(&closed.trailing);
}

/// Before a timeout close the server may send a 408, and nothing else.
#[track_caller]
fn assert_only_408(trailing: &[u8]) {
    let text = String::from_utf8_lossy(trailing);
    assert!(
        trailing.is_empty()
            || (text.starts_with("HTTP/1.")
                && text.get(8..).is_some_and(|t| t.starts_with(" 408"))),
        "unexpected bytes before the close: {text:?}"
    );
}

both_drivers!(
    keep_alive_serves_two_requests_on_one_connection,
    pipelined_requests_are_answered_in_order,
    http10_without_keep_alive_is_closed_after_answer,
    connection_close_is_honoured,
    chunked_request_body_is_dechunked,
    expect_100_continue_gets_interim_response,
    body_at_limit_is_accepted,
    oversized_body_is_413_and_closed,
    oversized_chunked_body_is_413_and_closed,
    expect_100_with_oversized_body_is_413_without_100,
    oversized_header_block_is_431,
    too_many_headers_is_431,
    partial_head_is_closed_after_header_read_timeout,
    trickled_head_is_closed_after_header_read_timeout,
    idle_keep_alive_connection_is_closed,
    malformed_request_line_is_400_and_closed,
    kube_probe_is_204_on_any_path_and_method,
    network_probe_echoes_hash,
    network_probe_without_hash_is_400,
);
