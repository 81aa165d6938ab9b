//! CloudEvents strictness: structured attribute names are what the spec allows (lower-case a-z
//! and 0-9), attributes of the other spec version are forwarded as extensions the same way in
//! both modes, the binary-mode head an event converts to is bounded like any request head, and
//! the number of attributes is bounded (`--max-attributes`, 413 past it, the connection still
//! usable since the body was read).

use std::fmt::Write as _;
use std::time::Duration;

use imc_e2e::*;

fn c1_to_sink(driver: Driver, args: &[&str]) -> (Dut, Sink) {
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .args(args)
        .start();
    (dut, s1)
}

/// A structured 1.0 event with this id, `extra` JSON members (each starting with a comma) after
/// the required attributes, and JSON data `{"k":1}`.
fn structured_event(id: &str, extra: &str) -> Request {
    structured_with_version("1.0", id, extra)
}

fn structured_with_version(version: &str, id: &str, extra: &str) -> Request {
    structured(&format!(
        r#"{{"specversion":"{version}","id":"{id}","source":"/src","type":"t.s","datacontenttype":"application/json"{extra},"data":{{"k":1}}}}"#
    ))
}

/// `n` extension members `"e1":"v","e2":"v",...`, each with a leading comma.
fn extension_members(n: usize) -> String {
    let mut out = String::new();
    for i in 1..=n {
        write!(out, r#","e{i}":"v""#).expect("write to a String");
    }
    out
}

/// The delivered request with this `ce-id`, waiting for it; panics naming `what` if it does not
/// come.
#[track_caller]
fn delivered(sink: &Sink, id: &str, what: &str) -> Recorded {
    sink.wait_until(DELIVERY, what, |r| r.iter().any(|r| r.id() == id));
    sink.requests()
        .into_iter()
        .find(|r| r.id() == id)
        .expect("checked")
}

/// An extension name in a structured event is a JSON key and must be lower-case letters and
/// digits: `MyExt` and `myExt` are 400; `myext` is delivered as `Ce-Myext: v`.
fn structured_attribute_names_must_be_lower_case(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);

    let upper = dut.send(&structured_event("upper", r#","MyExt":"v""#));
    let camel = dut.send(&structured_event("camel", r#","myExt":"v""#));
    let lower = dut.send(&structured_event("lower", r#","myext":"v""#));

    assert_eq!(
        (upper.status, camel.status, lower.status),
        (400, 400, 202),
        "`MyExt`: {upper:?}\n`myExt`: {camel:?}\n`myext`: {lower:?}\ndelivered: {:#?}",
        s1.requests()
    );
    let got = delivered(&s1, "lower", "the event with `myext`");
    got.assert_header("ce-myext", "v");
    assert!(
        got.headers.iter().any(|(n, v)| n == "Ce-Myext" && v == "v"),
        "delivered as `Ce-Myext: v`: {got:?}"
    );
    assert_eq!(
        s1.count(),
        1,
        "only `myext` is delivered: {:#?}",
        s1.requests()
    );
}

/// The spec's 20-character guidance on names is not a limit: a 34-character lower-case name is
/// accepted and delivered.
fn long_lower_case_attribute_names_are_accepted(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let name = "averyveryverylongextensionname2024";

    dut.send(&structured_event("long", &format!(r#","{name}":"v""#)))
        .assert_status(202);

    delivered(&s1, "long", "the event with a long name").assert_header(&format!("ce-{name}"), "v");
}

/// In structured mode, attributes of the other spec version (1.0's `schemaurl` and
/// `datacontentencoding`, 0.3's `dataschema`) are extensions like any other: forwarded, not
/// dropped; a 1.0 event's data is not decoded for a `datacontentencoding`.
fn structured_attributes_of_another_version_are_forwarded_as_extensions(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let cases = [
        (
            "1.0 with schemaurl",
            structured_with_version("1.0", "v1-schemaurl", r#","schemaurl":"http://s/x""#),
            "v1-schemaurl",
            ("ce-schemaurl", "http://s/x"),
        ),
        (
            "1.0 with datacontentencoding",
            structured(
                r#"{"specversion":"1.0","id":"v1-dce","source":"/src","type":"t.s","datacontenttype":"text/plain","datacontentencoding":"base64","data":"aGVsbG8="}"#,
            ),
            "v1-dce",
            ("ce-datacontentencoding", "base64"),
        ),
        (
            "0.3 with dataschema",
            structured_with_version("0.3", "v03-dataschema", r#","dataschema":"http://s/x""#),
            "v03-dataschema",
            ("ce-dataschema", "http://s/x"),
        ),
    ];
    assert_forwarded(&dut, &s1, &cases);
}

/// In binary mode the same attributes are forwarded the same way (this already holds: it pins
/// that both modes agree).
fn binary_attributes_of_another_version_are_forwarded_as_extensions(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let cases = [
        (
            "1.0 with ce-schemaurl",
            e1().id("b-v1-schemaurl")
                .header("ce-schemaurl", "http://s/x"),
            "b-v1-schemaurl",
            ("ce-schemaurl", "http://s/x"),
        ),
        (
            "0.3 with ce-dataschema",
            e1().id("b-v03-dataschema")
                .set_header("ce-specversion", "0.3")
                .header("ce-dataschema", "http://s/x"),
            "b-v03-dataschema",
            ("ce-dataschema", "http://s/x"),
        ),
    ];
    assert_forwarded(&dut, &s1, &cases);
}

/// Sends every case and checks that it is accepted and delivered with the header `(name, value)`
/// and its data unchanged (`{"k":1}`, or the undecoded `aGVsbG8=` of the `datacontentencoding`
/// case). Lists every case that went wrong.
#[track_caller]
fn assert_forwarded(dut: &Dut, sink: &Sink, cases: &[(&str, Request, &str, (&str, &str))]) {
    let mut wrong = Vec::new();
    for (what, req, id, (name, value)) in cases {
        let resp = dut.send(req);
        if resp.status != 202 {
            wrong.push(format!("{what}: answered {}", resp.status));
            continue;
        }
        // The channel is sync: the delivery is done before the 202.
        let Some(got) = sink.requests().into_iter().find(|r| r.id() == *id) else {
            wrong.push(format!("{what}: accepted but not delivered"));
            continue;
        };
        if got.header_all(name) != [*value] {
            wrong.push(format!(
                "{what}: delivered without `{name}: {value}`: {:?}",
                got.headers
            ));
        }
        let data: &[u8] = if *id == "v1-dce" {
            b"aGVsbG8="
        } else {
            br#"{"k":1}"#
        };
        if got.body != data {
            wrong.push(format!(
                "{what}: data {:?}, expected {:?}",
                String::from_utf8_lossy(&got.body),
                String::from_utf8_lossy(data)
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The binary-mode head a structured event converts to is bounded by `--max-header-bytes` like
/// a request head: an `id` of 70,000 characters (default limit 64 KiB) is 413.
fn converted_head_is_bounded_by_max_header_bytes(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let id = "i".repeat(70_000);

    let resp = dut.send(&structured_event(&id, ""));

    assert_eq!(
        resp.status, 413,
        "a 70,000-character id converts to a head over the 64 KiB limit: {resp:?}"
    );
    s1.assert_untouched();
}

/// With `--max-header-bytes 200000` the same event is accepted and delivered whole.
fn converted_head_within_a_raised_limit_is_accepted(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--max-header-bytes", "200000"]);
    let id = "i".repeat(70_000);

    dut.send(&structured_event(&id, "")).assert_status(202);

    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got[0].id().len(), 70_000, "the whole id is delivered");
}

/// Most attributes in one structured event: 128 by default. 200 extension members are 413 (the
/// body was read, so the connection stays usable: E1 on it is accepted); 100 are accepted.
fn structured_attribute_count_is_bounded(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &[]);
    let mut conn = dut.connect();
    conn.set_read_timeout(Duration::from_secs(5));

    let many = conn.send(&structured_event("many", &extension_members(200)));
    let after = conn.request(&e1().id("after-many"));
    let fewer = dut.send(&structured_event("fewer", &extension_members(100)));

    assert_eq!(
        (
            many.status,
            after.as_ref().map(|r| r.status).map_err(|e| e.to_string()),
            fewer.status
        ),
        (413, Ok(202), 202),
        "200 extensions: {many:?}\nE1 after it on the same connection: {after:?}\n100 extensions: \
         {fewer:?}"
    );
    let got = delivered(&s1, "fewer", "the event with 100 extensions");
    got.assert_header("ce-e100", "v");
    assert!(
        !s1.requests().iter().any(|r| r.id() == "many"),
        "the refused event was delivered"
    );
}

/// E1 with `n` extension headers `ce-x1: v` ... `ce-x<n>: v`.
fn binary_with_extensions(id: &str, n: usize) -> Request {
    (1..=n).fold(e1().id(id), |req, i| req.header(&format!("ce-x{i}"), "v"))
}

/// The same bound in binary mode: 150 `ce-` extension headers (allowed in by `--max-headers
/// 300`) are 413, and the connection stays usable.
fn binary_attribute_count_is_bounded(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--max-headers", "300"]);
    let mut conn = dut.connect();
    conn.set_read_timeout(Duration::from_secs(5));

    let many = conn.send(&binary_with_extensions("many", 150));
    let after = conn.request(&e1().id("after-many"));

    assert_eq!(
        (
            many.status,
            after.as_ref().map(|r| r.status).map_err(|e| e.to_string())
        ),
        (413, Ok(202)),
        "150 extensions: {many:?}\nE1 after it on the same connection: {after:?}"
    );
    assert!(
        !s1.requests().iter().any(|r| r.id() == "many"),
        "the refused event was delivered"
    );
}

/// `--max-attributes 200` (with `--max-headers 300`) lets the 150-extension binary event in.
fn binary_attribute_bound_is_configurable(driver: Driver) {
    let (dut, s1) = c1_to_sink(driver, &["--max-headers", "300", "--max-attributes", "200"]);

    dut.send(&binary_with_extensions("many", 150))
        .assert_status(202);

    delivered(&s1, "many", "the event with 150 extensions").assert_header("ce-x150", "v");
}

both_drivers!(
    structured_attribute_names_must_be_lower_case,
    long_lower_case_attribute_names_are_accepted,
    structured_attributes_of_another_version_are_forwarded_as_extensions,
    binary_attributes_of_another_version_are_forwarded_as_extensions,
    converted_head_is_bounded_by_max_header_bytes,
    converted_head_within_a_raised_limit_is_accepted,
    structured_attribute_count_is_bounded,
    binary_attribute_count_is_bounded,
    binary_attribute_bound_is_configurable,
);
