//! Interoperability with the official CloudEvents SDKs (contract §2.2-2.5, §3.2, D6). Events are
//! built and serialised by the Rust SDK (`cloudevents-sdk`) and by the Python SDK (PyPI
//! `cloudevents`, run as a `python3` process: `tests/python/ce_interop.py`), in binary and in
//! structured mode, sent to the real dispatcher, and what the subscriber got is parsed back by
//! both SDKs.
//!
//! Every delivery is checked three ways:
//!
//! 1. **On the wire**, against the contract, independently of any SDK ([`assert_wire`]): binary
//!    in, the `ce-*` headers, `Content-Type` and body exactly as sent; structured in, one header
//!    per attribute, string extensions as they are, booleans `true`/`false`, numbers as 32-bit
//!    integers, `null` dropped, `time` byte for byte, JSON `data` as its JSON text byte for byte,
//!    a string `data` of a non-JSON type unescaped, `data_base64` (and 0.3's `datacontentencoding:
//!    base64`) decoded. Always binary out, with `Prefer: reply` and `Kn-Namespace`.
//! 2. **By the sending SDK**: the event it parses from the delivery is the event it built,
//!    attribute by attribute ([`assert_rust_round_trip`], [`assert_python_round_trip`]).
//! 3. **By both SDKs as receivers**: each SDK's view of the delivery equals its view of the
//!    request the sender made ([`assert_receivers_agree`]), so an application cannot tell whether
//!    it was called through the channel or directly.
//!
//! Binary mode carries every attribute as a string: an extension built as a boolean or an integer
//! comes back as its string form (`true`, `42`). The comparisons below therefore compare
//! extensions by their string form, and `time` as an instant, with its text checked byte for byte
//! on the wire.
//!
//! What the SDKs themselves do, which the expectations account for (none of it is the
//! dispatcher's doing; each case checks the dispatcher forwards it unchanged):
//!
//! - The Rust SDK (0.9) holds `time` as a UTC instant: it writes [`TIME`]'s `+02:00` as UTC,
//!   `+00:00` in binary mode and `Z` in structured mode. The Python SDK's 1.x API keeps the text
//!   it was given, so the Python cases carry the offset through.
//! - The Python SDK's 1.x API, in binary mode, hands attribute values to the HTTP library as
//!   they are: a boolean extension goes out as Python's `True`, not CloudEvents' `true`; and its
//!   default data marshaller JSON-encodes text data, so `text/plain` data goes out quoted.
//! - It fills a missing `time` with the current time when it parses, and does not read 0.3's
//!   `datacontentencoding: base64` in structured mode.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};
use cloudevents::binding::http::to_event;
use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV03, EventBuilderV10};
use imc_e2e::*;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// `time` with nanoseconds and a non-UTC offset (the Rust SDK sends it as UTC, see above).
const TIME: &str = "2024-05-06T07:08:09.123456789+02:00";
const SCHEMA: &str = "https://schemas.example.com/order.json";
/// The HTTP-level W3C trace context a sender puts beside the event.
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
/// The CloudEvents distributed tracing extension (`traceparent` attribute, `ce-traceparent` in
/// binary mode): another value than the HTTP header, so that a mix-up shows.
const CE_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The install command the tests print when the Python side is missing.
const PYTHON_INSTALL: &str = "apt-get install -y python3 python3-pip && python3 -m pip install \
                              'cloudevents==2.2.0' (scripts/test.sh installs both)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Binary,
    Structured,
}

const MODES: [Mode; 2] = [Mode::Binary, Mode::Structured];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Binary => "binary",
            Mode::Structured => "structured",
        }
    }
}

/// A nested JSON object with every JSON type, non-ASCII text and a float.
fn json_data() -> Value {
    json!({
        "order": {
            "id": 42,
            "lines": [{"sku": "a-1", "qty": 2}, {"sku": "b-2", "qty": 1, "note": null}],
            "paid": true,
            "total": 12.5
        },
        "tags": ["x", "y"],
        "greeting": "grüße ☁"
    })
}

/// Text with a quote, a backslash, a newline and non-ASCII: a structured event escapes all of
/// them in its JSON string, and the dispatcher must deliver the unescaped text.
const TEXT_DATA: &str = "Grüße, \"world\" \\ second line:\nthe end";

/// Every byte value, starting with NUL: not UTF-8, not JSON.
fn binary_data() -> Vec<u8> {
    (0..=255u8).collect()
}

/// One channel (C1) with one recording subscriber.
fn c1_to_sink(driver: Driver) -> (Dut, Sink) {
    let s1 = Sink::ok();
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);
    (dut, s1)
}

/// The one delivery of event `id`.
#[track_caller]
fn delivery(sink: &Sink, id: &str) -> Recorded {
    sink.wait_until(DELIVERY, &format!("a delivery of event {id}"), |r| {
        r.iter().any(|r| r.id() == id)
    });
    let got: Vec<Recorded> = sink
        .requests()
        .into_iter()
        .filter(|r| r.id() == id)
        .collect();
    assert_eq!(got.len(), 1, "exactly one delivery of {id}: {got:#?}");
    got.into_iter().next().expect("checked")
}

// ---------------------------------------------------------------------------------------------
// 1. The wire, against the contract.

/// The CloudEvent part of an HTTP request: `ce-*` headers and `Content-Type` (names lower-cased,
/// each exactly once), and the body.
struct WireEvent {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn is_event_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("ce-") || name == "content-type"
}

#[track_caller]
fn event_headers(headers: &[(String, String)], what: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in headers.iter().filter(|(n, _)| is_event_header(n)) {
        let previous = out.insert(name.to_ascii_lowercase(), value.clone());
        assert!(
            previous.is_none(),
            "{what}: header {name} twice: {headers:?}"
        );
    }
    out
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_structured(req: &Request) -> bool {
    header(&req.headers, "content-type").is_some_and(|ct| {
        ct.trim()
            .to_ascii_lowercase()
            .starts_with("application/cloudevents+json")
    })
}

/// The JSON media types of contract §2.3: their `data` is delivered as JSON text.
fn is_json_media_type(content_type: &str) -> bool {
    let mt = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(
        mt.as_str(),
        "" | "application/json"
            | "text/json"
            | "application/cloudevents+json"
            | "application/cloudevents-batch+json"
    )
}

/// What the subscriber must receive for `sent` (contract §3.2).
#[track_caller]
fn expected_delivery(sent: &Request) -> WireEvent {
    if !is_structured(sent) {
        return WireEvent {
            headers: event_headers(&sent.headers, "sent request"),
            body: sent.body.clone(),
        };
    }
    let members: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(&sent.body).expect("a structured event is a JSON object");
    let value = |raw: &RawValue| -> Value { serde_json::from_str(raw.get()).expect("JSON") };
    let string = |name: &str| {
        members
            .get(name)
            .map(|raw| value(raw))
            .and_then(|v| v.as_str().map(String::from))
    };
    let v03 = string("specversion").as_deref() == Some("0.3");
    let mut headers = BTreeMap::new();
    for (name, raw) in &members {
        let text = match (name.as_str(), value(raw)) {
            ("data" | "data_base64", _) => continue,
            ("datacontentencoding", _) if v03 => continue,
            (_, Value::Null) => continue,
            ("datacontenttype", Value::String(ct)) => {
                headers.insert("content-type".to_string(), ct);
                continue;
            }
            (_, Value::String(s)) => s,
            (_, Value::Bool(b)) => b.to_string(),
            (_, Value::Number(n)) => {
                // 32-bit integers; a fraction is truncated.
                let i = n
                    .as_i64()
                    .unwrap_or_else(|| n.as_f64().expect("a number") as i64);
                i32::try_from(i)
                    .expect("the tests send only 32-bit numbers")
                    .to_string()
            }
            (_, other) => panic!("attribute {name} is {other}: not sent by these tests"),
        };
        headers.insert(format!("ce-{name}"), text);
    }
    let content_type = string("datacontenttype").unwrap_or_default();
    let base64_03 =
        v03 && string("datacontentencoding").is_some_and(|e| e.eq_ignore_ascii_case("base64"));
    let body = match (members.get("data"), members.get("data_base64")) {
        (None, None) => Vec::new(),
        (None, Some(b64)) => {
            let b64 = value(b64);
            base64_decode(b64.as_str().expect("a string")).expect("valid base64")
        }
        (Some(raw), None) => match value(raw) {
            Value::Null => Vec::new(),
            Value::String(s) if base64_03 => base64_decode(&s).expect("valid base64"),
            Value::String(s) if !is_json_media_type(&content_type) => s.into_bytes(),
            // JSON data: its JSON text exactly as the sender wrote it.
            _ => raw.get().as_bytes().to_vec(),
        },
        (Some(_), Some(_)) => panic!("the tests never send both data and data_base64"),
    };
    WireEvent { headers, body }
}

/// Panics unless `got` is `sent` delivered in binary mode as the contract says.
#[track_caller]
fn assert_wire(sent: &Request, got: &Recorded) {
    let want = expected_delivery(sent);
    let have = WireEvent {
        headers: event_headers(&got.headers, "delivery"),
        body: got.body.clone(),
    };
    assert_eq!(
        have.headers, want.headers,
        "CloudEvent headers of the delivery\nsent: {sent:?}\ngot: {got:?}"
    );
    assert!(
        have.body == want.body,
        "body of the delivery: expected {:?}\nsent: {sent:?}\ngot: {got:?}",
        String::from_utf8_lossy(&want.body)
    );
    assert_eq!(got.method, "POST", "{got:?}");
    got.assert_header("prefer", "reply");
    got.assert_header("kn-namespace", "default");
}

/// The `time` text of the sent event: its `ce-time` header or its JSON `time` member.
fn sent_time_text(sent: &Request) -> Option<String> {
    if is_structured(sent) {
        let v: Value = serde_json::from_slice(&sent.body).expect("JSON");
        v.get("time").and_then(Value::as_str).map(String::from)
    } else {
        header(&sent.headers, "ce-time").map(String::from)
    }
}

// ---------------------------------------------------------------------------------------------
// The SDKs as receivers, and what they make of an event.

/// An event as an SDK hands it to an application, reduced to what CloudEvents semantics compare:
/// attributes and extensions as their string forms (`time` apart, as an instant), and the data.
#[derive(Debug, PartialEq)]
struct View {
    attributes: BTreeMap<String, String>,
    time: Option<DateTime<Utc>>,
    data: DataView,
}

/// Event data: JSON when the bytes (or the SDK's value) are JSON, else the bytes. Text is its
/// UTF-8 bytes: SDKs differ in whether they hand out text as a string or as bytes.
#[derive(Debug, PartialEq)]
enum DataView {
    None,
    Json(Value),
    Bytes(Vec<u8>),
}

impl DataView {
    fn of_bytes(bytes: &[u8]) -> DataView {
        if bytes.is_empty() {
            return DataView::None;
        }
        match serde_json::from_slice(bytes) {
            Ok(v) => DataView::Json(v),
            Err(_) => DataView::Bytes(bytes.to_vec()),
        }
    }

    /// From the Python helper's `{"json": …}`, `{"text": …}` or `{"base64": …}` (or null).
    #[track_caller]
    fn of_helper(data: &Value) -> DataView {
        if data.is_null() {
            DataView::None
        } else if let Some(v) = data.get("json") {
            DataView::Json(v.clone())
        } else if let Some(text) = data.get("text").and_then(Value::as_str) {
            DataView::of_bytes(text.as_bytes())
        } else {
            let b64 = data["base64"].as_str().expect("json, text or base64");
            DataView::of_bytes(&base64_decode(b64).expect("valid base64"))
        }
    }
}

#[track_caller]
fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("time {text:?}: {e}"))
        .with_timezone(&Utc)
}

/// The Rust SDK's `to_event` on these headers and body (its HTTP binding, as a server using it
/// would call it).
#[track_caller]
fn rust_parse(headers: &[(String, String)], body: &[u8]) -> Event {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    to_event(&map, body.to_vec())
        .unwrap_or_else(|e| panic!("the Rust SDK cannot parse {headers:?} {body:?}: {e}"))
}

fn rust_view(event: &Event) -> View {
    let mut attributes: BTreeMap<String, String> = event
        .iter_attributes()
        .filter(|(name, _)| *name != "time")
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    for (name, value) in event.iter_extensions() {
        attributes.insert(name.to_string(), value.to_string());
    }
    let data = match event.data() {
        None => DataView::None,
        Some(Data::Json(v)) => DataView::Json(v.clone()),
        Some(Data::String(s)) => DataView::of_bytes(s.as_bytes()),
        Some(Data::Binary(b)) => DataView::of_bytes(b),
    };
    View {
        attributes,
        time: event.time().copied(),
        data,
    }
}

/// Runs `python3 tests/python/ce_interop.py ARGS` with `input` on stdin and returns the JSON it
/// prints. Panics with the install command if python3 or the SDK is missing.
#[track_caller]
fn python(args: &[&str], input: &Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/ce_interop.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): the Python SDK tests need it; {PYTHON_INSTALL}")
        });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write to the Python helper");
    let out = child
        .wait_with_output()
        .expect("wait for the Python helper");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ce_interop.py {args:?} printed no JSON ({e}): {:?}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        }),
        Some(3) => panic!("{stderr}"),
        _ => panic!(
            "ce_interop.py {args:?} failed ({})\nstdin: {input}\nstderr: {stderr}",
            out.status
        ),
    }
}

/// A request sent to the channel and its delivery, each also as the Python SDK's `from_http`
/// parsed it: the attributes it gives (values as JSON) and its data, as the helper prints them.
struct Exchange {
    sent: Request,
    got: Recorded,
    python_sent: Value,
    python_got: Value,
}

/// Parses every sent request and every delivery with the Python SDK, in one `python3` process
/// (starting one costs more than the rest of a case).
#[track_caller]
fn python_parse(pairs: Vec<(Request, Recorded)>) -> Vec<Exchange> {
    let wire = |headers: &[(String, String)], body: &[u8]| json!({"headers": headers, "body_base64": base64(body)});
    let requests: Vec<Value> = pairs
        .iter()
        .flat_map(|(sent, got)| {
            [
                wire(&sent.headers, &sent.body),
                wire(&got.headers, &got.body),
            ]
        })
        .collect();
    let parsed = python(&["parse"], &Value::Array(requests));
    let parsed = parsed.as_array().expect("one event per request");
    assert_eq!(parsed.len(), 2 * pairs.len(), "{parsed:?}");
    pairs
        .into_iter()
        .zip(parsed.chunks(2))
        .map(|((sent, got), p)| Exchange {
            sent,
            got,
            python_sent: p[0].clone(),
            python_got: p[1].clone(),
        })
        .collect()
}

/// The string form of an attribute value as the Python SDK gives it: strings as they are,
/// booleans and numbers in JSON's spelling (`true`, `42`).
fn python_attribute_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[track_caller]
fn python_view(parsed: &Value) -> View {
    let attrs = parsed["attributes"].as_object().expect("attributes");
    View {
        attributes: attrs
            .iter()
            .filter(|(name, _)| *name != "time")
            .map(|(name, value)| (name.clone(), python_attribute_text(value)))
            .collect(),
        time: attrs
            .get("time")
            .map(|t| instant(t.as_str().expect("time text"))),
        data: DataView::of_helper(&parsed["data"]),
    }
}

/// Panics unless each SDK sees the same event in `got` as in `sent` (check 3).
///
/// One exception, a limit of the Python SDK's 1.x API: it does not read 0.3's
/// `datacontentencoding: base64` in structured mode (it hands out the base64 text as the data), so
/// it is not asked to parse such a request; it still parses the delivery (raw bytes), which check
/// 2 compares with what the sender built.
#[track_caller]
fn assert_receivers_agree(x: &Exchange) {
    let (sent, got) = (&x.sent, &x.got);
    let direct = rust_view(&rust_parse(&sent.headers, &sent.body));
    let through = rust_view(&rust_parse(&got.headers, &got.body));
    assert_eq!(
        through, direct,
        "the Rust SDK reads the delivery (left) unlike the request sent (right)\nsent: {sent:?}\ngot: {got:?}"
    );
    // The Python SDK's CloudEvent fills a missing `time` with the current time at every parse:
    // for an event without one, `time` is left out of its views.
    let invented_time = sent_time_text(sent).is_none();
    let python_view_of = |parsed: &Value| {
        let mut view = python_view(parsed);
        if invented_time {
            view.time = None;
        }
        view
    };
    let through = python_view_of(&x.python_got);
    let sent_json: Option<Value> =
        is_structured(sent).then(|| serde_json::from_slice(&sent.body).expect("JSON"));
    let python_reads_sent = !sent_json
        .as_ref()
        .is_some_and(|v| v["specversion"] == "0.3" && v.get("datacontentencoding").is_some());
    if python_reads_sent {
        let direct = python_view_of(&x.python_sent);
        assert_eq!(
            through, direct,
            "the Python SDK reads the delivery (left) unlike the request sent (right)\nsent: {sent:?}\ngot: {got:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The Rust SDK as the sender.

/// The event in binary mode, through the SDK's HTTP binding (its `http::Request` writer).
fn rust_binary(event: &Event) -> Request {
    let built: http::Request<Option<Vec<u8>>> =
        http::Request::try_from(event.clone()).expect("the SDK writes the event in binary mode");
    let mut req = Request::post("/").host(C1_HOST);
    for (name, value) in built.headers() {
        req = req.header(name.as_str(), value.to_str().expect("ASCII header"));
    }
    req.body(built.into_body().unwrap_or_default())
}

/// The event in structured mode: the SDK's serde serialisation of the event.
fn rust_structured(event: &Event) -> Request {
    structured_request(serde_json::to_vec(event).expect("the SDK serialises the event"))
}

fn structured_request(body: Vec<u8>) -> Request {
    Request::post("/")
        .host(C1_HOST)
        .header("content-type", "application/cloudevents+json")
        .body(body)
}

/// Panics unless `got`, the event the Rust SDK parsed from the delivery, is `sent`, attribute by
/// attribute.
#[track_caller]
fn assert_rust_round_trip(sent: &Event, sent_req: &Request, got: &Event, delivered: &Recorded) {
    let ctx = || format!("\nsent: {sent}\ngot: {got}\ndelivery: {delivered:?}");
    assert_eq!(
        got.specversion(),
        sent.specversion(),
        "specversion{}",
        ctx()
    );
    assert_eq!(got.id(), sent.id(), "id{}", ctx());
    assert_eq!(got.source(), sent.source(), "source{}", ctx());
    assert_eq!(got.ty(), sent.ty(), "type{}", ctx());
    assert_eq!(got.subject(), sent.subject(), "subject{}", ctx());
    assert_eq!(got.dataschema(), sent.dataschema(), "dataschema{}", ctx());
    assert_eq!(
        got.datacontenttype(),
        sent.datacontenttype(),
        "datacontenttype{}",
        ctx()
    );
    // The same instant, and (D6) the very text the SDK wrote.
    assert_eq!(got.time(), sent.time(), "time as an instant{}", ctx());
    assert_eq!(
        delivered.header("ce-time").map(String::from),
        sent_time_text(sent_req),
        "ce-time text byte for byte{}",
        ctx()
    );
    // Binary mode carries extensions as strings: a boolean or integer extension comes back as
    // the string of its value, whichever mode it was sent in.
    let mut want: Vec<(String, ExtensionValue)> = sent
        .iter_extensions()
        .map(|(n, v)| (n.to_string(), ExtensionValue::String(v.to_string())))
        .collect();
    let mut have: Vec<(String, ExtensionValue)> = got
        .iter_extensions()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    have.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(have, want, "extensions{}", ctx());
    // Binary mode data is bytes: the bytes the SDK serialises the sent data to.
    let want: Option<Vec<u8>> = sent
        .data()
        .cloned()
        .map(|d| Vec::try_from(d).expect("data bytes"));
    let have: Option<Vec<u8>> = got.data().cloned().map(|d| match d {
        Data::Binary(b) => b,
        other => panic!("binary-mode data must be bytes, got {other:?}{}", ctx()),
    });
    assert_eq!(have, want, "data{}", ctx());
    if let Some(Data::Json(v)) = sent.data() {
        let have: Value = serde_json::from_slice(
            &got.data()
                .cloned()
                .map(|d| Vec::try_from(d).unwrap())
                .unwrap(),
        )
        .expect("JSON data delivered as JSON");
        assert_eq!(&have, v, "JSON data{}", ctx());
    }
}

/// Sends `event` built by `build(id)` in both modes (ids `<name>-binary` and
/// `<name>-structured`, plus `extra` headers) and runs checks 1-3 on each delivery.
#[track_caller]
fn rust_sdk_case(
    driver: Driver,
    name: &str,
    extra: &[(&str, &str)],
    build: impl Fn(&str) -> Event,
) -> Vec<Recorded> {
    let (dut, sink) = c1_to_sink(driver);
    let mut exchanges = Vec::new();
    for mode in MODES {
        let id = format!("{name}-{}", mode.name());
        let event = build(&id);
        let mut req = match mode {
            Mode::Binary => rust_binary(&event),
            Mode::Structured => rust_structured(&event),
        };
        for (n, v) in extra {
            req = req.header(n, v);
        }
        dut.send(&req).assert_status(202);
        let got = delivery(&sink, &id);
        assert_wire(&req, &got);
        assert_rust_round_trip(&event, &req, &rust_parse(&got.headers, &got.body), &got);
        exchanges.push((req, got));
    }
    let exchanges = python_parse(exchanges);
    exchanges.iter().for_each(assert_receivers_agree);
    exchanges.into_iter().map(|x| x.got).collect()
}

/// A 1.0 event with every context attribute and an extension of each type.
fn rust_v10(id: &str) -> EventBuilderV10 {
    EventBuilderV10::new()
        .id(id)
        .source("/sdk/rust/interop?case=full#attributes")
        .ty("dev.imc-rs.sdk.rust")
        .subject("orders/42")
        .time(TIME)
        .extension("strext", "a string value")
        .extension("boolext", true)
        .extension("falseext", false)
        .extension("intext", 42i64)
        .extension("negext", -7i64)
}

/// A 0.3 event with every context attribute (0.3 has `schemaurl`) and an extension of each type.
fn rust_v03(id: &str) -> EventBuilderV03 {
    EventBuilderV03::new()
        .id(id)
        .source("urn:imc-rs:sdk:rust")
        .ty("dev.imc-rs.sdk.rust.v03")
        .subject("orders/42")
        .time(TIME)
        .extension("strext", "a string value")
        .extension("boolext", true)
        .extension("intext", 42i64)
}

fn rust_v10_json_data(driver: Driver) {
    rust_sdk_case(driver, "rust-v10-json", &[], |id| {
        rust_v10(id)
            .data_with_schema("application/json", SCHEMA, json_data())
            .build()
            .expect("a valid event")
    });
}

fn rust_v10_text_data(driver: Driver) {
    rust_sdk_case(driver, "rust-v10-text", &[], |id| {
        rust_v10(id)
            .data_with_schema("text/plain; charset=utf-8", SCHEMA, TEXT_DATA)
            .build()
            .expect("a valid event")
    });
}

/// Binary data: raw bytes in binary mode, `data_base64` in structured mode.
fn rust_v10_binary_data(driver: Driver) {
    rust_sdk_case(driver, "rust-v10-bytes", &[], |id| {
        rust_v10(id)
            .data_with_schema("application/octet-stream", SCHEMA, binary_data())
            .build()
            .expect("a valid event")
    });
}

/// No data, no `datacontenttype`, no optional attribute: no `Content-Type` is invented, the body
/// stays empty.
fn rust_v10_minimal(driver: Driver) {
    let got = rust_sdk_case(driver, "rust-v10-minimal", &[], |id| {
        EventBuilderV10::new()
            .id(id)
            .source("/min")
            .ty("t")
            .build()
            .expect("a valid event")
    });
    for got in got {
        got.assert_no_header("content-type");
        assert!(got.body.is_empty(), "no body: {got:?}");
    }
}

fn rust_v03_json_data(driver: Driver) {
    let got = rust_sdk_case(driver, "rust-v03-json", &[], |id| {
        rust_v03(id)
            .data_with_schema("application/json", SCHEMA, json_data())
            .build()
            .expect("a valid event")
    });
    for got in got {
        got.assert_header("ce-specversion", "0.3");
        got.assert_header("ce-schemaurl", SCHEMA);
        got.assert_no_header("ce-dataschema");
    }
}

/// 0.3 binary data: structured mode writes it as base64 `data` with `datacontentencoding:
/// base64`; the subscriber gets the raw bytes and no `ce-datacontentencoding`.
fn rust_v03_binary_data(driver: Driver) {
    let got = rust_sdk_case(driver, "rust-v03-bytes", &[], |id| {
        rust_v03(id)
            .data("application/octet-stream", binary_data())
            .build()
            .expect("a valid event")
    });
    for got in got {
        got.assert_no_header("ce-datacontentencoding");
        assert_eq!(got.body, binary_data(), "raw bytes: {got:?}");
    }
}

/// The W3C trace context beside the event passes unchanged (contract §2.5, D-tracing off), and
/// the event's own distributed-tracing extension is an extension like any other.
fn rust_traceparent_passes_through(driver: Driver) {
    let extra = [("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)];
    let got = rust_sdk_case(driver, "rust-trace", &extra, |id| {
        rust_v10(id)
            .extension("traceparent", CE_TRACEPARENT)
            .data("application/json", json_data())
            .build()
            .expect("a valid event")
    });
    for got in got {
        got.assert_header("traceparent", TRACEPARENT);
        got.assert_header("tracestate", TRACESTATE);
        got.assert_header("ce-traceparent", CE_TRACEPARENT);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The Python SDK as the sender.

/// Every context attribute of `version` (1.0 `dataschema`, 0.3 `schemaurl`) and an extension
/// of each type, for `CloudEvent(attributes, data)`.
fn python_attributes(version: &str, id: &str, datacontenttype: &str) -> Value {
    let schema = if version == "0.3" {
        "schemaurl"
    } else {
        "dataschema"
    };
    json!({
        "specversion": version,
        "id": id,
        "source": "/sdk/python/interop?case=full",
        "type": "dev.imc-rs.sdk.python",
        "subject": "orders/42",
        "time": TIME,
        schema: SCHEMA,
        "datacontenttype": datacontenttype,
        "strext": "a string value",
        "boolext": true,
        "falseext": false,
        "intext": 42,
        "negext": -7,
    })
}

/// The request the Python helper reported it sent.
#[track_caller]
fn reported_request(report: &Value) -> Request {
    let mut req = Request::post("/");
    req.headers = serde_json::from_value(report["headers"].clone()).expect("header pairs");
    req.body = base64_decode(report["body_base64"].as_str().expect("body")).expect("base64");
    req
}

/// Panics unless the Python SDK's view of the delivery (`parsed`) is the event it was asked to
/// build (`spec`), attribute by attribute.
#[track_caller]
fn assert_python_round_trip(spec: &Value, sent: &Request, mode: Mode, parsed: &Value) {
    let attrs = spec["attributes"].as_object().expect("attributes");
    let have = parsed["attributes"].as_object().expect("attributes");
    let ctx = || format!("\nspec: {spec}\nparsed: {parsed}\nsent: {sent:?}");
    assert_eq!(
        have.len(),
        attrs.len(),
        "the same attributes, no more{}",
        ctx()
    );
    for (name, value) in attrs {
        let got = have
            .get(name)
            .unwrap_or_else(|| panic!("attribute {name} lost{}", ctx()));
        let want = match (value, mode) {
            (Value::String(s), _) => s.clone(),
            // Structured in, binary out: the JSON value's string form.
            (other, Mode::Structured) => other.to_string(),
            // Binary in: the header text the SDK wrote. The 1.x API hands the Python value to
            // the HTTP library, which writes a boolean with Python's str(): `True`, where
            // CloudEvents spells it `true`. The dispatcher passes the header as it came.
            (_, Mode::Binary) => header(&sent.headers, &format!("ce-{name}"))
                .unwrap_or_else(|| panic!("the SDK sent no ce-{name}{}", ctx()))
                .to_string(),
        };
        assert_eq!(got, &Value::String(want), "attribute {name}{}", ctx());
    }
    // D6: the time text (with its +02:00 offset and nanoseconds) byte for byte.
    assert_eq!(have["time"], Value::String(TIME.into()), "time{}", ctx());
    assert_eq!(
        DataView::of_helper(&parsed["data"]),
        DataView::of_helper(&spec["data"]),
        "data{}",
        ctx()
    );
}

/// Has the Python SDK build an event from `spec` (attributes, data, extra headers), serialise and
/// send it in both modes (ids `<name>-binary` and `<name>-structured`), and runs checks 1-3 on
/// each delivery.
#[track_caller]
fn python_sdk_case(driver: Driver, name: &str, spec: impl Fn(&str) -> Value) -> Vec<Recorded> {
    let (dut, sink) = c1_to_sink(driver);
    let url = format!("http://{}/", dut.addr());
    let mut specs = Vec::new();
    let mut exchanges = Vec::new();
    for mode in MODES {
        let id = format!("{name}-{}", mode.name());
        let spec = spec(&id);
        let report = python(&["send", &url, C1_HOST, mode.name()], &spec);
        assert_eq!(
            report["status"], 202,
            "answer to the Python SDK's {id}: {report}"
        );
        let sent = reported_request(&report);
        assert_eq!(is_structured(&sent), mode == Mode::Structured, "{sent:?}");
        let got = delivery(&sink, &id);
        assert_wire(&sent, &got);
        assert_eq!(
            rust_parse(&got.headers, &got.body).time(),
            Some(&instant(TIME)),
            "the Rust SDK reads the same instant from the delivery: {got:?}"
        );
        specs.push((spec, mode));
        exchanges.push((sent, got));
    }
    let exchanges = python_parse(exchanges);
    for (x, (spec, mode)) in exchanges.iter().zip(&specs) {
        assert_python_round_trip(spec, &x.sent, *mode, &x.python_got);
        assert_receivers_agree(x);
    }
    exchanges.into_iter().map(|x| x.got).collect()
}

fn python_v10_json_data(driver: Driver) {
    let got = python_sdk_case(driver, "py-v10-json", |id| {
        json!({
            "attributes": python_attributes("1.0", id, "application/json"),
            "data": {"json": json_data()},
        })
    });
    // The Python SDK writes JSON with spaces after `:` and `,` (and \u escapes): the structured
    // event's nested `data` object is delivered as that very text, not re-serialised.
    let structured = &got[1];
    let python_text = r#"{"greeting": "gr\u00fc\u00dfe \u2601", "order": {"id": 42, "lines": [{"qty": 2, "sku": "a-1"}, {"note": null, "qty": 1, "sku": "b-2"}], "paid": true, "total": 12.5}, "tags": ["x", "y"]}"#;
    assert_eq!(
        String::from_utf8_lossy(&structured.body),
        python_text,
        "the data's JSON text as Python wrote it: {structured:?}"
    );
}

fn python_v10_text_data(driver: Driver) {
    python_sdk_case(driver, "py-v10-text", |id| {
        json!({
            "attributes": python_attributes("1.0", id, "text/plain; charset=utf-8"),
            "data": {"text": TEXT_DATA},
        })
    });
}

/// Bytes: raw in binary mode, `data_base64` in structured mode.
fn python_v10_binary_data(driver: Driver) {
    let got = python_sdk_case(driver, "py-v10-bytes", |id| {
        json!({
            "attributes": python_attributes("1.0", id, "application/octet-stream"),
            "data": {"base64": base64(&binary_data())},
        })
    });
    for got in got {
        assert_eq!(got.body, binary_data(), "raw bytes: {got:?}");
    }
}

fn python_v03_json_data(driver: Driver) {
    let got = python_sdk_case(driver, "py-v03-json", |id| {
        json!({
            "attributes": python_attributes("0.3", id, "application/json"),
            "data": {"json": json_data()},
        })
    });
    for got in got {
        got.assert_header("ce-specversion", "0.3");
        got.assert_header("ce-schemaurl", SCHEMA);
        got.assert_no_header("ce-dataschema");
    }
}

fn python_traceparent_passes_through(driver: Driver) {
    let got = python_sdk_case(driver, "py-trace", |id| {
        let mut attributes = python_attributes("1.0", id, "application/json");
        attributes["traceparent"] = CE_TRACEPARENT.into();
        json!({
            "attributes": attributes,
            "data": {"json": json_data()},
            "headers": {"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
        })
    });
    for got in got {
        got.assert_header("traceparent", TRACEPARENT);
        got.assert_header("tracestate", TRACESTATE);
        got.assert_header("ce-traceparent", CE_TRACEPARENT);
    }
}

both_drivers!(
    rust_v10_json_data,
    rust_v10_text_data,
    rust_v10_binary_data,
    rust_v10_minimal,
    rust_v03_json_data,
    rust_v03_binary_data,
    rust_traceparent_passes_through,
    python_v10_json_data,
    python_v10_text_data,
    python_v10_binary_data,
    python_v03_json_data,
    python_traceparent_passes_through,
);
