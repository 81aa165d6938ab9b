//! Which channel a request reaches, and what methods a channel answers (contract §2.1, §7 A, D1, D2).

use imc_e2e::*;

fn host_routing_delivers_binary_e1(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let resp = dut.send(&e1());

    resp.assert_status_empty(202);
    resp.assert_header("allow", "POST, OPTIONS");
    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "exactly one delivery: {got:#?}");
    assert_binary_e1(&got[0]);
}

fn path_routing_works_on_plain_port(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let resp = dut.send(&e1().host("anything.example").target("/default/ch1"));

    resp.assert_status(202);
    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "exactly one delivery: {got:#?}");
    assert_binary_e1(&got[0]);
}

fn path_with_trailing_slash_routes(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let resp = dut.send(&e1().host("anything.example").target("/default/ch1/"));

    resp.assert_status(202);
    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
}

fn query_string_is_ignored(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let resp = dut.send(&e1().host("anything.example").target("/default/ch1?x=1"));

    resp.assert_status(202);
    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
}

/// D1: an unknown channel is 404 (upstream: 500), with an empty body and no `Allow`.
fn unknown_host_is_404(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let resp = dut.send(&e1().host("nope-kn-channel.default.svc.cluster.local"));

    resp.assert_status_empty(404);
    assert_eq!(resp.header("allow"), None, "no Allow on 404: {resp:?}");
    s1.assert_untouched();
}

fn unknown_path_channel_is_404(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let resp = dut.send(&e1().host("anything.example").target("/default/nope"));

    resp.assert_status_empty(404);
    s1.assert_untouched();
}

/// A path that is neither `/` nor `/<ns>/<name>` is 400, before any channel lookup.
fn malformed_path_is_400(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    for target in ["/foo", "/a/b/c"] {
        let resp = dut.send(&e1().target(target));
        assert_eq!(resp.status, 400, "POST {target}: {resp:?}");
        assert!(resp.body.is_empty(), "POST {target}: {resp:?}");
    }
    let healthz = Request::new("GET", "/healthz")
        .host(C1_HOST)
        .header("User-Agent", "curl/8.5.0");
    dut.send(&healthz).assert_status_empty(400);
    s1.assert_untouched();
}

/// D2: the port in `Host` is ignored when matching.
fn host_with_port_matches_channel(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let resp = dut.send(&e1().host(&format!("{C1_HOST}:80")));

    resp.assert_status(202);
    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "exactly one delivery: {got:#?}");
    assert_binary_e1(&got[0]);
}

fn short_host_is_404(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    for host in ["ch1-kn-channel.default", "ch1-kn-channel.default.svc"] {
        let resp = dut.send(&e1().host(host));
        assert_eq!(resp.status, 404, "Host {host}: {resp:?}");
    }
    s1.assert_untouched();
}

fn options_answers_200_with_webhook_headers(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let resp = dut.send(&Request::new("OPTIONS", "/").host(C1_HOST));

    resp.assert_status(200);
    resp.assert_header("allow", "POST, OPTIONS");
    resp.assert_header("webhook-allowed-origin", "*");
    resp.assert_header("webhook-allowed-rate", "*");
    s1.assert_untouched();
}

fn wrong_method_on_known_channel_is_405(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    for method in ["GET", "PUT", "DELETE", "HEAD"] {
        let resp = dut.send(&Request::new(method, "/").host(C1_HOST));
        assert_eq!(resp.status, 405, "{method} /: {resp:?}");
        assert_eq!(
            resp.header("allow"),
            Some("POST, OPTIONS"),
            "{method} /: {resp:?}"
        );
    }
    s1.assert_untouched();
}

/// D1: routing happens before the method check, so an unknown channel is 404 for any method.
fn wrong_method_on_unknown_channel_is_404(driver: Driver) {
    let dut = Dut::start(driver, &[c1()]);

    let resp =
        dut.send(&Request::new("GET", "/").host("nope-kn-channel.default.svc.cluster.local"));

    resp.assert_status_empty(404);
}

fn zero_subscribers_is_202(driver: Driver) {
    let dut = Dut::start(driver, &[c1()]);

    dut.send(&e1()).assert_status_empty(202);
}

both_drivers!(
    host_routing_delivers_binary_e1,
    path_routing_works_on_plain_port,
    path_with_trailing_slash_routes,
    query_string_is_ignored,
    unknown_host_is_404,
    unknown_path_channel_is_404,
    malformed_path_is_400,
    host_with_port_matches_channel,
    short_host_is_404,
    options_answers_200_with_webhook_headers,
    wrong_method_on_known_channel_is_405,
    wrong_method_on_unknown_channel_is_404,
    zero_subscribers_is_202,
);
