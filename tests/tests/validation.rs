//! Which CloudEvents the ingress accepts, and how accepted ones reach a subscriber
//! (contract §2.2, §2.3, §3.2, §7 B, D3, D6).

use imc_e2e::*;

/// One DUT serving C1 -> S1.
fn c1_to_sink(driver: Driver) -> (Dut, Sink) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);
    (dut, s1)
}

/// Sends `req`, expects 202, and returns the one request S1 got.
#[track_caller]
fn deliver(dut: &Dut, s1: &Sink, req: &Request) -> Recorded {
    dut.send(req).assert_status(202);
    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "exactly one delivery: {got:#?}");
    got[0].clone()
}

/// Sends `req`, expects an empty 400, and checks nothing reached S1.
#[track_caller]
fn reject(dut: &Dut, s1: &Sink, req: &Request) {
    let resp = dut.send(req);
    assert_eq!(resp.status, 400, "for {req:?}: {resp:?}");
    assert!(resp.body.is_empty(), "400 has an empty body: {resp:?}");
    s1.assert_untouched();
}

fn structured_in_binary_out(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let body = r#"{"specversion":"1.0","id":"s1","source":"/src","type":"t","datacontenttype":"application/json","data":{"m":"hi"},"ext1":"v"}"#;

    let got = deliver(&dut, &s1, &structured(body));

    got.assert_header("ce-specversion", "1.0");
    got.assert_header("ce-id", "s1");
    got.assert_header("ce-source", "/src");
    got.assert_header("ce-type", "t");
    got.assert_header("ce-ext1", "v");
    got.assert_header("content-type", "application/json");
    assert_eq!(got.body, br#"{"m":"hi"}"#, "data byte for byte: {got:?}");
}

fn data_base64_is_decoded(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let body = r#"{"specversion":"1.0","id":"b64","source":"/src","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#;

    let got = deliver(&dut, &s1, &structured(body));

    got.assert_header("content-type", "application/octet-stream");
    assert_eq!(got.body, [0u8, 1, 2], "decoded data: {got:?}");
}

fn ce_0_3_stays_0_3(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    let got = deliver(&dut, &s1, &e1().set_header("ce-specversion", "0.3"));

    got.assert_header("ce-specversion", "0.3");
    got.assert_header("ce-id", "e1");
    assert_eq!(got.body, br#"{"k":1}"#);
}

fn unknown_specversion_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    reject(&dut, &s1, &e1().set_header("ce-specversion", "10.0"));
}

fn no_ce_markers_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let plain = Request::post("/")
        .host(C1_HOST)
        .header("content-type", "application/json")
        .body(r#"{"k":1}"#);

    reject(&dut, &s1, &plain);
}

fn missing_required_attribute_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    for attribute in ["ce-id", "ce-source", "ce-type"] {
        reject(&dut, &s1, &e1().without_header(attribute));
    }
}

fn blank_id_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    reject(&dut, &s1, &e1().id("   "));
}

fn bad_time_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    reject(&dut, &s1, &e1().header("ce-time", "yesterday"));
}

/// D6: a valid `time` is forwarded byte for byte, not re-written in UTC.
fn valid_time_is_forwarded_byte_for_byte(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let time = "2020-07-06T11:23:12.500+02:00";

    let got = deliver(&dut, &s1, &e1().header("ce-time", time));

    got.assert_header("ce-time", time);
}

fn malformed_content_type_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    for content_type in ["text/", "text/plain; charset"] {
        reject(&dut, &s1, &e1().set_header("content-type", content_type));
    }
}

/// A lone media-type token is accepted, as Go's `mime.ParseMediaType` accepts it.
fn lone_token_content_type_is_accepted(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    let got = deliver(&dut, &s1, &e1().set_header("content-type", "text"));

    got.assert_header("content-type", "text");
}

fn batch_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let batch = Request::post("/")
        .host(C1_HOST)
        .header("content-type", "application/cloudevents-batch+json")
        .body(r#"[{"specversion":"1.0","id":"b1","source":"/src","type":"t"}]"#);

    reject(&dut, &s1, &batch);
}

fn invalid_structured_json_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    reject(&dut, &s1, &structured("{"));
}

fn invalid_extension_name_is_400(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    reject(&dut, &s1, &e1().header("ce-my-ext", "x"));
}

fn extension_values_pass_through_unchanged(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    let got = deliver(&dut, &s1, &e1().header("ce-abc", "\"quoted value\""));

    got.assert_header("ce-abc", "\"quoted value\"");
}

fn empty_body_has_no_content_type(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);

    let got = deliver(&dut, &s1, &e1().without_header("content-type").body(""));

    assert!(got.body.is_empty(), "no body: {got:?}");
    got.assert_header("content-length", "0");
    got.assert_no_header("content-type");
    got.assert_header("ce-id", "e1");
}

fn non_json_content_type_passes_through(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let thrift = "application/vnd.apache.thrift.binary";

    let got = deliver(
        &dut,
        &s1,
        &e1().set_header("content-type", thrift).body("{}"),
    );

    got.assert_header("content-type", thrift);
    assert_eq!(got.body, b"{}");
}

/// D3: the default body limit is 32 MiB, so 5 MiB passes, intact.
fn five_mib_body_is_delivered_intact(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver);
    let body = pseudo_random_bytes(5 << 20);
    let event = e1()
        .set_header("content-type", "application/octet-stream")
        .body(body.clone());

    let got = deliver(&dut, &s1, &event);

    assert_eq!(got.body.len(), body.len(), "delivered length");
    assert!(got.body == body, "delivered body differs from the sent one");
}

/// Bytes that expose a shifted, repeated or zeroed region (xorshift64).
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

both_drivers!(
    structured_in_binary_out,
    data_base64_is_decoded,
    ce_0_3_stays_0_3,
    unknown_specversion_is_400,
    no_ce_markers_is_400,
    missing_required_attribute_is_400,
    blank_id_is_400,
    bad_time_is_400,
    valid_time_is_forwarded_byte_for_byte,
    malformed_content_type_is_400,
    lone_token_content_type_is_accepted,
    batch_is_400,
    invalid_structured_json_is_400,
    invalid_extension_name_is_400,
    extension_values_pass_through_unchanged,
    empty_body_has_no_content_type,
    non_json_content_type_passes_through,
    five_mib_body_is_delivered_intact,
);
