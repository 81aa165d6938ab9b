//! Replies: a subscriber's 2xx answer that is a CloudEvent goes to the subscriber's `replyUri`, in
//! its own encoding (contract §3.5, §7 F 53-61, D15).

use imc_e2e::*;

/// The reply S1 gives in cases 53 and 59: a binary event with passthrough and other headers.
fn binary_reply(status: u16) -> Reply {
    Reply::binary_event(status, "r1", "/s1", "t.reply")
        .header("Ce-Ext1", "v1")
        .header("Content-Type", "text/plain")
        .header("Knative-Foo", "bar")
        .header("X-Request-Id", "resp-7")
        .header("X-B3-Traceid", "b3")
        .header("X-Other", "no")
        .body("pong")
}

/// Panics unless `r` is the reply event of [`binary_reply`], forwarded as case 53 requires.
#[track_caller]
fn assert_forwarded_binary_reply(r: &Recorded) {
    assert_eq!(r.method, "POST", "method of {r:?}");
    r.assert_header("ce-specversion", "1.0");
    r.assert_header("ce-id", "r1");
    r.assert_header("ce-source", "/s1");
    r.assert_header("ce-type", "t.reply");
    r.assert_header("ce-ext1", "v1");
    r.assert_header("content-type", "text/plain");
    assert_eq!(r.body, b"pong", "body of {r:?}");
    // Passthrough headers of S1's response, and the channel's namespace.
    r.assert_header("knative-foo", "bar");
    r.assert_header("x-request-id", "resp-7");
    r.assert_header("x-b3-traceid", "b3");
    r.assert_header("kn-namespace", "default");
    r.assert_no_header("prefer");
    r.assert_no_header("x-other");
    // The inbound request's passthrough headers belong to the subscriber call, not the reply.
    r.assert_no_header("knative-in");
}

/// Case 53.
fn binary_reply_is_forwarded_with_response_headers(driver: Driver) {
    let s1 = Sink::start(vec![binary_reply(200)]);
    let r1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()))],
    );

    dut.send(&e1().header("Knative-In", "yes"))
        .assert_status_empty(202);

    let got = r1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_forwarded_binary_reply(&got[0]);
    assert_binary_e1(&s1.requests()[0]);
}

/// Case 54: the body is forwarded byte for byte, the charset parameter is dropped.
fn structured_reply_is_forwarded_as_structured(driver: Driver) {
    let json = r#"{ "specversion" : "1.0", "id":"r2", "source":"/s1", "type":"t.reply",
  "datacontenttype":"application/json", "data": {"b": [1, 2]} }"#;
    let s1 = Sink::start(vec![Reply::status(200)
        .header(
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(json)]);
    let r1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    let got = r1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    let r = &got[0];
    r.assert_header("content-type", "application/cloudevents+json");
    assert_eq!(r.body, json.as_bytes(), "body of {r:?}");
    r.assert_no_header("ce-id");
    r.assert_no_header("ce-specversion");
    r.assert_header("kn-namespace", "default");
    r.assert_no_header("prefer");
}

/// Case 55: 201, 202 and 204 carrying an event are replies as much as 200 is.
fn every_2xx_carrying_an_event_is_a_reply(driver: Driver) {
    let s1 = Sink::respond(|req, _| {
        let status = req.id()[1..].parse().expect("ids are s<code>");
        let reply = Reply::binary_event(status, &format!("r-{status}"), "/s1", "t.reply");
        if status == 204 {
            reply
        } else {
            reply.header("Content-Type", "text/plain").body("pong")
        }
    });
    let r1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()))],
    );

    for status in [201, 202, 204] {
        let resp = dut.send(&e1().id(&format!("s{status}")));
        assert_eq!(resp.status, 202, "S1 answered {status}: {resp:?}");
    }

    let got = r1.wait_for(3, DELIVERY);
    let ids: Vec<&str> = got.iter().map(Recorded::id).collect();
    assert_eq!(ids, ["r-201", "r-202", "r-204"], "{got:#?}");
    assert!(
        got[2].body.is_empty(),
        "204 reply has no body: {:?}",
        got[2]
    );
}

/// Case 56.
fn non_event_answer_is_not_forwarded(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(200)
        .header("Content-Type", "application/json")
        .body(r#"{"a":1}"#)]);
    let r1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    assert_eq!(s1.requests().len(), 1);
    r1.assert_untouched();
}

/// Case 57: without `replyUri` the reply is dropped, not sent anywhere else.
fn reply_without_reply_uri_is_dropped(driver: Driver) {
    let s1 = Sink::start(vec![binary_reply(200)]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    assert_eq!(s1.requests().len(), 1, "{:#?}", s1.requests());
    d1.assert_untouched();
}

/// Case 58.
fn failed_reply_without_dead_letter_fails_the_event(driver: Driver) {
    let s1 = Sink::start(vec![binary_reply(200)]);
    let r1 = Sink::start(vec![Reply::status(400)]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()))],
    );

    dut.send(&e1()).assert_status(500);

    assert_eq!(r1.requests().len(), 1, "{:#?}", r1.requests());
}

/// Case 59: the original event goes to the dead-letter sink, described by the reply's failure and
/// carrying the passthrough headers of S1's response.
fn failed_reply_goes_to_dead_letter_with_original_event(driver: Driver) {
    let s1 = Sink::start(vec![binary_reply(200)]);
    let r1 = Sink::start(vec![Reply::status(400).body("nope")]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()).dead_letter(&d1.url()))],
    );

    dut.send(&e1().header("Knative-In", "yes"))
        .assert_status(202);

    let got = d1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    let d = &got[0];
    assert_e1_event(d, "e1");
    d.assert_header("ce-knativeerrordest", &r1.url());
    d.assert_header("ce-knativeerrorcode", "400");
    d.assert_header("ce-knativeerrordata", "bm9wZQ==");
    d.assert_header("knative-foo", "bar");
    d.assert_header("x-request-id", "resp-7");
    d.assert_header("kn-namespace", "default");
    d.assert_no_header("x-other");
    d.assert_no_header("knative-in");
    d.assert_no_header("prefer");
}

/// Case 60.
fn reply_gets_the_subscribers_retry_policy(driver: Driver) {
    let s1 = Sink::start(vec![binary_reply(200)]);
    let r1 = Sink::start(vec![Reply::status(503), Reply::status(200)]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()).retry(1))],
    );

    dut.send(&e1()).assert_status(202);

    assert_eq!(s1.requests().len(), 1, "{:#?}", s1.requests());
    let got = r1.requests();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_forwarded_binary_reply(&got[1]);
}

/// Case 61: the reply target's answer is ignored even when it is an event.
fn reply_of_a_reply_is_not_followed(driver: Driver) {
    let s1 = Sink::start(vec![binary_reply(200)]);
    let r1 = Sink::start(vec![Reply::binary_event(200, "rr", "/r1", "t.again")
        .header("Content-Type", "text/plain")
        .body("again")]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).reply(&r1.url()).dead_letter(&d1.url()))],
    );

    dut.send(&e1()).assert_status(202);

    assert_eq!(s1.requests().len(), 1, "{:#?}", s1.requests());
    assert_eq!(r1.requests().len(), 1, "{:#?}", r1.requests());
    d1.assert_untouched();
}

/// D15: a subscriber with only a `replyUri` delivers to it as to a subscriber; an event it
/// answers with goes nowhere (there is no reply target left).
fn reply_only_subscriber_is_delivered_to(driver: Driver) {
    let s1 = Sink::start(vec![binary_reply(200)]);
    let dut = Dut::start(driver, &[c1().subscriber(Sub::reply_only(&s1.url()))]);

    dut.send(&e1()).assert_status_empty(202);

    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_e1_event(&got[0], "e1");
    got[0].assert_header("kn-namespace", "default");
}

both_drivers!(
    binary_reply_is_forwarded_with_response_headers,
    structured_reply_is_forwarded_as_structured,
    every_2xx_carrying_an_event_is_a_reply,
    non_event_answer_is_not_forwarded,
    reply_without_reply_uri_is_dropped,
    failed_reply_without_dead_letter_fails_the_event,
    failed_reply_goes_to_dead_letter_with_original_event,
    reply_gets_the_subscribers_retry_policy,
    reply_of_a_reply_is_not_followed,
    reply_only_subscriber_is_delivered_to,
);
