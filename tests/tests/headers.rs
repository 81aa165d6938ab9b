//! Which inbound headers reach a subscriber, and which the dispatcher sets itself
//! (contract §2.5, §3.2, §5.3, §7 C).

use imc_e2e::*;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Sends `req` to C1 -> S1 on a fresh DUT and returns what S1 got.
#[track_caller]
fn delivered(driver: Driver, req: &Request) -> Recorded {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);
    dut.send(req).assert_status(202);
    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "exactly one delivery: {got:#?}");
    got[0].clone()
}

/// Only `x-request-id`, `retry-after`, `knative-*` and `x-b3-*` pass; `Prefer` and `Kn-Namespace`
/// are the dispatcher's own; `Authorization` never passes.
fn passthrough_set_is_forwarded_and_rest_dropped(driver: Driver) {
    let req = e1()
        .header("X-Request-Id", "abc")
        .header("Knative-Hello", "world")
        .header("KNATIVE-Multi", "a")
        .header("KNATIVE-Multi", "b")
        .header("X-B3-Traceid", "1")
        .header("Retry-After", "5")
        .header("Foo", "bar")
        .header("Authorization", "Bearer x")
        .header("Prefer", "return=minimal")
        .header("Kn-Namespace", "evil");

    let got = delivered(driver, &req);

    got.assert_header("x-request-id", "abc");
    got.assert_header("knative-hello", "world");
    // Two header lines or one comma-joined line carry the same two values (RFC 9110 §5.3).
    let multi: Vec<&str> = got
        .header_all("knative-multi")
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    assert_eq!(
        multi,
        ["a", "b"],
        "both Knative-Multi values in order: {got:?}"
    );
    got.assert_header("x-b3-traceid", "1");
    got.assert_header("retry-after", "5");
    got.assert_header("prefer", "reply");
    got.assert_header("kn-namespace", "default");
    got.assert_no_header("foo");
    got.assert_no_header("authorization");
    assert_binary_e1(&got);
}

fn prefer_reply_is_sent_without_reply_uri(driver: Driver) {
    let got = delivered(driver, &e1());

    got.assert_header("prefer", "reply");
}

/// With tracing off the inbound trace context passes through unchanged.
fn traceparent_passes_through_with_tracing_off(driver: Driver) {
    let req = e1()
        .header("traceparent", TRACEPARENT)
        .header("baggage", "k=v");

    let got = delivered(driver, &req);

    got.assert_header("traceparent", TRACEPARENT);
    got.assert_header("baggage", "k=v");
}

fn no_traceparent_is_invented(driver: Driver) {
    let got = delivered(driver, &e1());

    got.assert_no_header("traceparent");
    got.assert_no_header("baggage");
}

both_drivers!(
    passthrough_set_is_forwarded_and_rest_dropped,
    prefer_reply_is_sent_without_reply_uri,
    traceparent_passes_through_with_tracing_off,
    no_traceparent_is_invented,
);
