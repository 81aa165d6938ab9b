//! The dead-letter sink: after a subscriber's final failure the original event goes there, in
//! binary mode, with `knativeerrordest`, `knativeerrorcode` and `knativeerrordata` describing the
//! failure (contract §3.7, §7 G 62-70, D7).

use std::time::{Duration, Instant};

use imc_e2e::*;

/// Panics unless `r` carries `knativeerrordata` whose base64 decodes to text starting with
/// `dispatch error:` (a failure without an HTTP response).
#[track_caller]
fn assert_dispatch_error_data(r: &Recorded) {
    let data = r
        .header("ce-knativeerrordata")
        .unwrap_or_else(|| panic!("no knativeerrordata in {r:?}"));
    let text = base64_decode(data).unwrap_or_else(|| panic!("not padded base64: {data:?}"));
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.starts_with("dispatch error:"),
        "knativeerrordata decodes to {text:?}"
    );
}

/// Case 62.
fn rejected_event_goes_to_dead_letter_with_error_extensions(driver: Driver) {
    let body = "<!doctype html><html><body><h1>404! not here</h1></body></html>";
    let s1 = Sink::start(vec![Reply::status(422)
        .header("Content-Type", "text/html")
        .body(body)]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).dead_letter(&d1.url()))],
    );

    let sent = e1()
        .header("Knative-Hello", "world")
        .header("X-Request-Id", "abc")
        .header("Foo", "bar");
    dut.send(&sent).assert_status_empty(202);

    let got = d1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    let d = &got[0];
    assert_e1_event(d, "e1");
    d.assert_header("ce-knativeerrordest", &s1.url());
    d.assert_header("ce-knativeerrorcode", "422");
    d.assert_header("ce-knativeerrordata", &base64(body.as_bytes()));
    assert_eq!(
        base64_decode(d.header("ce-knativeerrordata").unwrap()).unwrap(),
        body.as_bytes()
    );
    d.assert_header("kn-namespace", "default");
    d.assert_header("knative-hello", "world");
    d.assert_header("x-request-id", "abc");
    d.assert_no_header("foo");
    d.assert_no_header("prefer");
    assert_eq!(s1.requests().len(), 1, "422 is not retried");
}

/// Case 63.
fn unresolvable_subscriber_goes_to_dead_letter(driver: Driver) {
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to("http://fake.invalid").dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    let got = d1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    let d = &got[0];
    assert_e1_event(d, "e1");
    d.assert_header("ce-knativeerrordest", "http://fake.invalid");
    d.assert_header("ce-knativeerrorcode", "500");
    assert_dispatch_error_data(d);
}

/// Case 64.
fn exhausted_retries_go_to_dead_letter(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(503).body("busy")]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).retry(2).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    assert_eq!(s1.requests().len(), 3, "{:#?}", s1.requests());
    let got = d1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    got[0].assert_header("ce-knativeerrorcode", "503");
    got[0].assert_header("ce-knativeerrordata", "YnVzeQ==");
}

/// Case 65.
fn empty_error_body_gives_empty_error_data(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500)]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    let got = d1.wait_for(1, DELIVERY);
    got[0].assert_header("ce-knativeerrorcode", "500");
    got[0].assert_header("ce-knativeerrordata", "");
}

/// Case 66 and D7: the data is the first 1024 base64 characters (the first 768 body bytes), and
/// the dispatcher stays up (upstream panics here).
fn large_error_body_is_truncated(driver: Driver) {
    let body: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 251) as u8).collect();
    let s1 = Sink::start(vec![Reply::status(500).body(body.clone())]);
    let d1 = Sink::ok();
    let mut dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    let got = d1.wait_for(1, DELIVERY);
    let data = got[0]
        .header("ce-knativeerrordata")
        .unwrap_or_else(|| panic!("no knativeerrordata in {:?}", got[0]));
    assert_eq!(data.len(), 1024, "knativeerrordata length");
    assert_eq!(data, &base64(&body)[..1024]);
    assert_eq!(base64_decode(data).unwrap(), &body[..768]);
    dut.assert_alive();
    dut.send(&e1().id("after")).assert_status(202);
}

/// Case 67: extensions the event already carries are kept; only the missing one is added.
fn existing_error_extensions_are_kept(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500).body("x")]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).dead_letter(&d1.url()))],
    );

    let sent = e1()
        .header("ce-knativeerrorcode", "418")
        .header("ce-knativeerrordest", "http://old");
    dut.send(&sent).assert_status(202);

    let got = d1.wait_for(1, DELIVERY);
    let d = &got[0];
    d.assert_header("ce-knativeerrorcode", "418");
    d.assert_header("ce-knativeerrordest", "http://old");
    d.assert_header("ce-knativeerrordata", "eA==");
}

/// Case 68.
fn failing_dead_letter_fails_the_event(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500)]);
    let d1 = Sink::start(vec![Reply::status(500)]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(500);

    assert_eq!(d1.requests().len(), 1, "{:#?}", d1.requests());
}

/// Case 69.
fn dead_letter_gets_the_retry_policy(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500)]);
    let d1 = Sink::start(vec![Reply::status(503), Reply::status(200)]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).retry(1).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    assert_eq!(s1.requests().len(), 2, "{:#?}", s1.requests());
    let got = d1.requests();
    assert_eq!(got.len(), 2, "{got:#?}");
    for d in &got {
        assert_e1_event(d, "e1");
        d.assert_header("ce-knativeerrorcode", "500");
    }
}

/// Case 70: the dead-letter sink's answer is ignored even when it is an event.
fn dead_letter_answer_is_ignored(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500)]);
    let r1 = Sink::ok();
    let d1 = Sink::start(vec![Reply::binary_event(200, "dl", "/d1", "t.dl")
        .header("Content-Type", "text/plain")
        .body("dead")]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    assert_eq!(s1.requests().len(), 1, "{:#?}", s1.requests());
    assert_eq!(d1.requests().len(), 1, "{:#?}", d1.requests());
    r1.assert_untouched();
}

/// A timed-out attempt has no HTTP response: code 500 and a `dispatch error:` text.
fn timed_out_subscriber_goes_to_dead_letter(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(200).delay(Duration::from_secs(3))]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).timeout("PT0.3S").dead_letter(&d1.url()))],
    );

    let start = Instant::now();
    dut.send(&e1()).assert_status(202);
    let took = start.elapsed();

    assert!(took < Duration::from_millis(1500), "acked after {took:?}");
    let got = d1.wait_for(1, DELIVERY);
    got[0].assert_header("ce-knativeerrordest", &s1.url());
    got[0].assert_header("ce-knativeerrorcode", "500");
    assert_dispatch_error_data(&got[0]);
}

/// A connection closed without an answer has no HTTP response either.
fn hung_up_subscriber_goes_to_dead_letter(driver: Driver) {
    let s1 = Sink::start(vec![Reply::hang_up()]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    let got = d1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    got[0].assert_header("ce-knativeerrorcode", "500");
    assert_dispatch_error_data(&got[0]);
}

both_drivers!(
    rejected_event_goes_to_dead_letter_with_error_extensions,
    unresolvable_subscriber_goes_to_dead_letter,
    exhausted_retries_go_to_dead_letter,
    empty_error_body_gives_empty_error_data,
    large_error_body_is_truncated,
    existing_error_extensions_are_kept,
    failing_dead_letter_fails_the_event,
    dead_letter_gets_the_retry_policy,
    dead_letter_answer_is_ignored,
    timed_out_subscriber_goes_to_dead_letter,
    hung_up_subscriber_goes_to_dead_letter,
);
