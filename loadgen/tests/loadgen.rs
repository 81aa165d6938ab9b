//! imc-loadgen against itself, as processes over real sockets: `send` into `sink`, exact counts,
//! missing and duplicate ids, fault injection, coordinated-omission-corrected latency, the display
//! format and the JSON and HTML outputs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use imc_e2e::LoadgenSink;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imc-loadgen");

/// A running `imc-loadgen sink` (the e2e crate's process wrapper), with its report parsed.
struct Sink(LoadgenSink);

impl Sink {
    fn start(args: &[&str]) -> Sink {
        Sink(LoadgenSink::start(Path::new(BIN), args))
    }

    fn url(&self) -> String {
        self.0.url()
    }

    fn report(&self) -> Value {
        serde_json::from_str(&self.0.report()).expect("a JSON report")
    }

    fn stop(self) -> Output {
        self.0.stop()
    }

    fn wait(self, timeout: Duration) -> Output {
        self.0.wait(timeout)
    }
}

/// Runs `imc-loadgen send ARGS --json` and returns its report and exit code.
fn send(args: &[&str]) -> (Value, i32) {
    let out = Command::new(BIN)
        .arg("send")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run imc-loadgen send");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "send printed no JSON report ({e}); stdout: {}; stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.code().unwrap_or(-1))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn latency_ms(report: &Value, name: &str) -> f64 {
    report["latency"]["quoted"]
        .as_array()
        .expect("quoted percentiles")
        .iter()
        .find(|q| q[0] == name)
        .and_then(|q| q[1].as_f64())
        .unwrap_or_else(|| panic!("no {name} in {}", report["latency"]))
        / 1000.0
}

#[test]
fn every_event_sent_arrives_exactly_once() {
    for encoding in ["binary", "structured"] {
        let sink = Sink::start(&[
            "--threads",
            "2",
            "--expect",
            "1000..6000",
            "--exit-when-complete",
            "--settle",
            "200ms",
            "--json",
        ]);
        let (r, code) = send(&[
            &sink.url(),
            "--count",
            "5000",
            "--id-start",
            "1000",
            "-c",
            "16",
            "-t",
            "2",
            "--encoding",
            encoding,
        ]);
        assert_eq!(code, 0, "{r}");
        assert_eq!(u(&r["requests"]), 5000);
        assert_eq!(u(&r["ok"]), 5000);
        assert_eq!(r["ids"]["start"], 1000);
        assert_eq!(r["ids"]["end"], 6000);
        let out = sink.wait(Duration::from_secs(20));
        assert!(out.status.success(), "sink exit: {:?}", out.status);
        let s: Value = serde_json::from_slice(&out.stdout).expect("sink JSON report");
        assert_eq!(u(&s["accepted"]), 5000, "{s}");
        assert_eq!(u(&s["missing"]), 0, "{s}");
        assert_eq!(u(&s["duplicates"]), 0, "{s}");
        assert_eq!(u(&s["unexpected"]), 0, "{s}");
        assert_eq!(s["complete"], true, "{s}");
    }
}

/// A sender that skips ids 7 and 42, delivers 13 twice and one id outside the range.
#[test]
fn missing_and_duplicate_ids_are_reported() {
    let sink = Sink::start(&["--expect", "0..100"]);
    let mut c = TcpStream::connect(sink.0.addr).expect("connect");
    let mut ids: Vec<u64> = (0..100).filter(|i| *i != 7 && *i != 42).collect();
    ids.push(13);
    ids.push(500);
    let mut reader = BufReader::new(c.try_clone().expect("clone"));
    for id in ids {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: sink\r\nCe-Specversion: 1.0\r\nCe-Type: t\r\nCe-Source: s\r\nCe-Id: {id}\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        c.write_all(req.as_bytes()).expect("write");
        let mut status = String::new();
        reader.read_line(&mut status).expect("answer");
        assert_eq!(status, "HTTP/1.1 202 Accepted\r\n");
        let mut line = String::new();
        while line != "\r\n" {
            line.clear();
            reader.read_line(&mut line).expect("answer head");
        }
    }
    let r = sink.report();
    assert_eq!(u(&r["received"]), 100);
    assert_eq!(u(&r["missing"]), 2, "{r}");
    assert_eq!(r["missing_ids"], serde_json::json!([7, 42]));
    assert_eq!(u(&r["duplicates"]), 1, "{r}");
    assert_eq!(r["duplicate_ids"], serde_json::json!(["13"]));
    assert_eq!(u(&r["unexpected"]), 1, "{r}");
    assert_eq!(r["complete"], false);
    let out = sink.stop();
    assert_eq!(out.status.code(), Some(1), "an incomplete run fails");
}

/// Without `--expect`, a redelivery on another connection (so maybe another sink thread) is
/// still seen as a duplicate: 16 ids, each posted on two fresh connections to a 2-thread sink.
#[test]
fn duplicates_are_seen_across_sink_threads() {
    let sink = Sink::start(&["--threads", "2"]);
    for id in 0..16 {
        for _ in 0..2 {
            let mut c = TcpStream::connect(sink.0.addr).expect("connect");
            let req = format!(
                "POST / HTTP/1.1\r\nHost: sink\r\nCe-Specversion: 1.0\r\nCe-Type: t\r\nCe-Source: s\r\nCe-Id: id-{id}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            c.write_all(req.as_bytes()).expect("write");
            let mut resp = String::new();
            c.read_to_string(&mut resp).expect("answer");
            assert!(resp.starts_with("HTTP/1.1 202 Accepted\r\n"), "{resp}");
        }
    }
    let r = sink.report();
    assert_eq!(u(&r["accepted"]), 32, "{r}");
    assert_eq!(u(&r["duplicates"]), 16, "{r}");
}

/// Open loop on one connection to a sink that takes 20 ms an event, at 100 events/s: the
/// connection can carry 50/s, so events queue behind each other and the latency counted from each event's due
/// time grows over the run. A closed loop on the same sink only ever sees the 20 ms.
#[test]
fn open_loop_latency_counts_from_the_due_time() {
    let sink = Sink::start(&["--delay", "20ms"]);
    let (closed, code) = send(&[&sink.url(), "-c", "1", "-d", "2s"]);
    assert_eq!(code, 0, "{closed}");
    let p50 = latency_ms(&closed, "p50");
    assert!((19.0..60.0).contains(&p50), "closed loop p50 {p50} ms");

    let (open, code) = send(&[&sink.url(), "-c", "1", "-d", "2s", "--rate", "100"]);
    assert_eq!(code, 0, "{open}");
    assert_eq!(open["mode"], "open");
    // 200 events were due in 2 s and at most 100 answered; the last answered waited for about a
    // second behind the others.
    let (p50, p99) = (latency_ms(&open, "p50"), latency_ms(&open, "p99"));
    assert!(
        p99 > 500.0,
        "open loop p99 {p99} ms: coordinated omission not corrected"
    );
    assert!(p50 > 200.0, "open loop p50 {p50} ms");
    assert!(u(&open["requests"]) <= 105, "{}", open["requests"]);

    // Below the sink's capacity the open loop sees the sink's own latency.
    let (easy, code) = send(&[&sink.url(), "-c", "1", "-d", "2s", "--rate", "20"]);
    assert_eq!(code, 0, "{easy}");
    let p99 = latency_ms(&easy, "p99");
    assert!(
        (19.0..80.0).contains(&p99),
        "open loop below capacity p99 {p99} ms"
    );
}

#[test]
fn injected_faults_are_seen_by_the_sender() {
    let sink = Sink::start(&[
        "--status",
        "200",
        "--fail-rate",
        "0.2",
        "--fail-status",
        "503",
        "--reset-rate",
        "0.05",
        "--stall-rate",
        "0.02",
    ]);
    let (r, code) = send(&[&sink.url(), "-n", "1000", "-c", "8", "--timeout", "300ms"]);
    assert_eq!(code, 1, "a run with errors fails");
    let s = sink.report();
    let failed = u(&r["errors"]["status"]["503"]);
    assert_eq!(failed, u(&s["failed"]), "sender {r}\nsink {s}");
    assert!((120..280).contains(&failed), "{failed} of 1000 at 20%");
    assert_eq!(u(&r["errors"]["io"]), u(&s["reset"]), "resets: {r}\n{s}");
    assert!(u(&s["reset"]) > 20, "{s}");
    assert_eq!(
        u(&r["errors"]["timeout"]),
        u(&s["stalled"]),
        "stalls: {r}\n{s}"
    );
    assert!(u(&s["stalled"]) > 5, "{s}");
    assert_eq!(u(&r["ok"]), u(&s["accepted"]));
    // Every id was used once: answered, reset or timed out.
    let unanswered = u(&r["errors"]["io"]) + u(&r["errors"]["timeout"]);
    assert_eq!(u(&r["requests"]) + unanswered, 1000, "{r}");
}

#[test]
fn display_prints_events_like_event_display() {
    let sink = Sink::start(&["--display"]);
    let (r, code) = send(&[
        &sink.url(),
        "-n",
        "1",
        "-c",
        "1",
        "--size",
        "30",
        "--type",
        "dev.knative.eventing.samples.heartbeat",
        "-H",
        "Ce-Beats: true",
    ]);
    assert_eq!(code, 0, "{r}");
    let (r, code) = send(&[
        &sink.url(),
        "-n",
        "1",
        "-c",
        "1",
        "--size",
        "0",
        "--encoding",
        "structured",
        "--id-start",
        "9",
    ]);
    assert_eq!(code, 0, "{r}");
    let out = sink.stop();
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let expected_binary = "☁️  cloudevents.Event\nValidation: valid\nContext Attributes,\n  \
        specversion: 1.0\n  type: dev.knative.eventing.samples.heartbeat\n  source: \
        https://imc-rs.dev/loadgen\n  id: 000000000000\n  datacontenttype: application/json\n\
        Extensions,\n  beats: true\nData,\n  {\n    \"payload\": \"xxxxxxxxxxxxxxxx\"\n  }\n";
    assert!(text.starts_with(expected_binary), "{text}");
    assert!(
        text.contains("  id: 000000000009\n  datacontenttype: application/json\n"),
        "{text}"
    );
}

#[test]
fn json_and_html_reports() {
    let sink = Sink::start(&[]);
    let dir = std::env::temp_dir().join(format!("imc-loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let html = dir.join("run.html");
    let html_arg = html.to_str().expect("UTF-8 path");
    let (r, code) = send(&[
        &sink.url(),
        "-d",
        "1500ms",
        "--warmup",
        "200ms",
        "-c",
        "4",
        "--html",
        html_arg,
        "-H",
        "X-Note: <b>&",
    ]);
    assert_eq!(code, 0, "{r}");
    for key in [
        "requests",
        "rps",
        "latency",
        "percentiles",
        "timeline",
        "ids",
    ] {
        assert!(r.get(key).is_some(), "no {key} in {r}");
    }
    assert!(u(&r["requests"]) > 100, "{r}");
    assert!(r["duration_s"].as_f64().unwrap() >= 1.4, "{r}");
    assert!(!r["timeline"].as_array().unwrap().is_empty());
    let page = std::fs::read_to_string(&html).expect("the HTML report");
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        page.matches("<svg").count(),
        2,
        "percentile plot and rate chart"
    );
    assert!(
        page.contains("X-Note: &lt;b&gt;&amp;"),
        "the command, escaped"
    );
    assert!(!page.contains("<script"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_an_answer_and_the_sink_stays_up() {
    let sink = Sink::start(&[]);
    let mut c = TcpStream::connect(sink.0.addr).expect("connect");
    c.write_all(b"NOT HTTP AT ALL\r\n\r\n").expect("write");
    let mut resp = String::new();
    c.read_to_string(&mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    let (r, code) = send(&[&sink.url(), "-n", "10", "-c", "1"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&sink.report()["bad_requests"]), 1);
}

#[test]
fn send_gives_up_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = Command::new(BIN)
        .args([
            "send",
            &format!("http://127.0.0.1:{port}/"),
            "-n",
            "5",
            "--timeout",
            "300ms",
        ])
        .output()
        .expect("run send");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to 127.0.0.1"), "{err}");
}
