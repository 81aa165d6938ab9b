//! Metrics and health on `--metrics-listen` (issue: observability; contract §5.2, D12): exact
//! values after a scripted sequence of events, the exposition format as promtool checks it, a
//! real Prometheus server scraping the dispatcher, labels free of event content, and the health
//! endpoints.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imc_e2e::*;

/// The metrics address the dispatcher logged (`metrics listening addr=…`).
fn metrics_addr(dut: &Dut) -> SocketAddr {
    let line = eventually(
        Duration::from_secs(5),
        "the metrics listener is logged",
        || {
            dut.logs()
                .into_iter()
                .find(|l| l.contains("metrics listening"))
        },
    );
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr= in the metrics line");
    addr.trim_matches('"').parse().expect("a socket address")
}

fn get(addr: SocketAddr, path: &str) -> Response {
    Conn::open(addr).send(&Request::new("GET", path).header("Host", "metrics"))
}

fn scrape(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics");
    r.assert_status(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "exposition content type"
    );
    String::from_utf8(r.body).expect("UTF-8 exposition")
}

/// The value of the series whose line starts with `name{` and contains every `label`.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[track_caller]
fn assert_value(text: &str, name: &str, labels: &[&str], want: f64) {
    let got = value(text, name, labels);
    assert_eq!(got, Some(want), "{name} {labels:?}\n--- scrape:\n{text}");
}

/// Three subscribers: one that succeeds, one that needs one retry, one that always fails and is
/// dead-lettered. Three valid events, two invalid ones, one for an unknown channel.
fn metric_values_match_a_scripted_sequence(driver: Driver) {
    let ok = Sink::ok();
    let flaky = Sink::start(vec![Reply::status(503), Reply::status(200)]);
    let broken = Sink::start(vec![Reply::status(500).body("nope")]);
    let dls = Sink::ok();
    let manifest = format!(
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {{name: ch1, namespace: default}}\nspec:\n  subscribers:\n  - {{uid: u-a, name: sub-a, subscriberUri: '{}'}}\n  - {{uid: u-b, name: sub-b, subscriberUri: '{}', delivery: {{retry: 1}}}}\n  - {{uid: u-c, name: sub-c, subscriberUri: '{}', delivery: {{deadLetterSink: {{uri: '{}'}}}}}}\n",
        ok.url(),
        flaky.url(),
        broken.url(),
        dls.url()
    );
    let dut = Dut::builder(driver)
        .channels_file("channels.yaml", &manifest)
        .start();
    let maddr = metrics_addr(&dut);

    for i in 0..3 {
        dut.send(&e1().id(&format!("m{i}"))).assert_status(202);
    }
    dut.send(&e1().without_header("ce-id")).assert_status(400);
    dut.send(&e1().set_header("ce-specversion", "9.9"))
        .assert_status(400);
    dut.send(&e1().host("nope-kn-channel.default.svc.cluster.local"))
        .assert_status(404);
    dut.probe(); // kubelet probes are never recorded

    let text = scrape(maddr);
    let ch = [
        "kn_channel_name=\"ch1\"",
        "kn_channel_namespace=\"default\"",
    ];
    assert_value(
        &text,
        "imc_events_received_total",
        &["code=\"202\"", "channel=\"ch1\""],
        3.0,
    );
    assert_value(
        &text,
        "imc_events_received_total",
        &["code=\"400\"", "channel=\"ch1\""],
        2.0,
    );
    assert_value(&text, "imc_events_received_total", &["code=\"404\""], 1.0);
    assert_value(
        &text,
        "http_server_request_duration_seconds_count",
        &[
            "http_response_status_code=\"202\"",
            "http_request_method=\"POST\"",
            ch[0],
            ch[1],
        ],
        3.0,
    );
    assert_value(
        &text,
        "http_server_request_duration_seconds_count",
        &["http_response_status_code=\"400\"", ch[0]],
        2.0,
    );
    assert_value(
        &text,
        "http_server_request_body_size_bytes_count",
        &["http_response_status_code=\"202\"", ch[0]],
        3.0,
    );
    // One dispatch per subscriber per event; the status is the chain's last call.
    let dispatch = "kn_eventing_dispatch_duration_seconds_count";
    let common = [
        "messaging_operation_name=\"send\"",
        "messaging_system=\"knative\"",
    ];
    assert_value(
        &text,
        dispatch,
        &[
            "subscription:sub-a.default",
            "http_response_status_code=\"200\"",
            common[0],
            common[1],
        ],
        3.0,
    );
    assert_value(
        &text,
        dispatch,
        &[
            "subscription:sub-b.default",
            "http_response_status_code=\"200\"",
        ],
        3.0,
    );
    assert_value(
        &text,
        dispatch,
        &[
            "subscription:sub-c.default",
            "http_response_status_code=\"200\"",
        ],
        3.0,
    );
    assert_eq!(
        value(&text, dispatch, &["subscription:sub-c.default", "\"500\""]),
        None
    );
    // Outcomes.
    let deliveries = "imc_deliveries_total";
    assert_value(
        &text,
        deliveries,
        &["subscription=\"sub-a\"", "outcome=\"delivered\""],
        3.0,
    );
    assert_value(
        &text,
        deliveries,
        &["subscription=\"sub-b\"", "outcome=\"delivered\""],
        3.0,
    );
    assert_value(
        &text,
        deliveries,
        &["subscription=\"sub-b\"", "outcome=\"retried\""],
        1.0,
    );
    assert_value(
        &text,
        deliveries,
        &["subscription=\"sub-c\"", "outcome=\"dead_lettered\""],
        3.0,
    );
    assert_eq!(value(&text, deliveries, &["outcome=\"failed\""]), None);
    // One client observation per attempt, retries included (contract §7 case 92).
    let client = "http_client_request_duration_seconds_count";
    let port = |s: &Sink| {
        let url = s.url();
        let port = url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        format!("server_port=\"{port}\"")
    };
    assert_value(
        &text,
        client,
        &[&port(&flaky), "http_response_status_code=\"503\""],
        1.0,
    );
    assert_value(
        &text,
        client,
        &[&port(&flaky), "http_response_status_code=\"200\""],
        3.0,
    );
    assert_value(
        &text,
        client,
        &[&port(&broken), "http_response_status_code=\"500\""],
        3.0,
    );
    assert_value(
        &text,
        client,
        &[&port(&dls), "http_response_status_code=\"200\""],
        3.0,
    );
    // Gauges and info.
    assert_value(&text, "imc_inflight_deliveries", &[], 0.0);
    assert_value(&text, "imc_config_generation", &[], 1.0);
    assert_value(&text, "imc_config_last_reload_success", &[], 1.0);
    assert_value(&text, "imc_ready", &[], 1.0);
    assert_value(
        &text,
        "imc_io_driver_info",
        &[&format!("driver=\"{}\"", driver_name(driver))],
        1.0,
    );
    assert!(value(&text, "imc_build_info", &["version="]).is_some());
    let hits = value(&text, "imc_pool_hits_total", &[]).unwrap();
    let misses = value(&text, "imc_pool_misses_total", &[]).unwrap();
    assert_eq!(
        hits + misses,
        3.0 + 4.0 + 3.0 + 3.0,
        "one pool lookup per attempt"
    );
}

fn driver_name(driver: Driver) -> &'static str {
    match driver.as_arg() {
        "io-uring" => "io_uring",
        other => other,
    }
}

/// Event content never becomes a label: types, sources and ids stay out of the exposition.
fn labels_never_carry_event_content(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .start();
    let maddr = metrics_addr(&dut);
    for i in 0..5 {
        let req = e1()
            .id(&format!("unique-id-{i}"))
            .set_header("ce-type", &format!("type.secret.{i}"))
            .set_header("ce-source", &format!("/source/secret/{i}"));
        dut.send(&req).assert_status(202);
    }
    let text = scrape(maddr);
    for needle in ["unique-id", "type.secret", "/source/secret"] {
        assert!(
            !text.contains(needle),
            "{needle} leaked into labels:\n{text}"
        );
    }
    assert_value(&text, "imc_events_received_total", &["code=\"202\""], 5.0);
}

/// The exposition is valid as `promtool check metrics` (Debian's prometheus package) sees it.
fn promtool_accepts_the_exposition(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(200), Reply::status(500)]);
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()).delivery_yaml("{retry: 1}"))])
        .start();
    let maddr = metrics_addr(&dut);
    dut.send(&e1()).assert_status(202);
    dut.send(&e1()).assert_status(500);
    dut.send(&e1().without_header("ce-type")).assert_status(400);
    let text = scrape(maddr);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus) runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n--- scrape:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/healthz` is liveness; `/readyz` is 503 until the first channel set is installed (D14).
fn health_and_readiness_endpoints(driver: Driver) {
    let dut = Dut::builder(driver)
        .channels_file(
            "channels.yaml",
            "kind: InMemoryChannel\nmetadata: [not, a, map\n",
        )
        .spawn();
    let maddr = metrics_addr(&dut);
    get(maddr, "/healthz").assert_status(200);
    get(maddr, "/readyz").assert_status(503);
    assert_value(&scrape(maddr), "imc_ready", &[], 0.0);
    assert_value(&scrape(maddr), "imc_config_last_reload_success", &[], 0.0);
    dut.write_channels_raw(&c1().to_yaml());
    eventually(RELOAD, "readyz turns 200 after a valid file", || {
        (get(maddr, "/readyz").status == 200).then_some(())
    });
    get(maddr, "/nope").assert_status(404);
}

/// An event sent behind `Expect: 100-continue` is recorded once, with its final status: the
/// interim 100 is not an answer.
fn interim_100_is_not_recorded(driver: Driver) {
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .start();
    let maddr = metrics_addr(&dut);
    let mut conn = dut.connect();
    conn.set_read_timeout(Duration::from_secs(3));
    let (interim, last) = conn.send_expecting_continue(&e1(), br#"{"k":1}"#);
    interim.assert_status(100);
    last.assert_status(202);

    let text = scrape(maddr);
    assert_value(&text, "imc_events_received_total", &["code=\"202\""], 1.0);
    assert_eq!(
        value(&text, "imc_events_received_total", &["code=\"100\""]),
        None,
        "{text}"
    );
    assert_value(
        &text,
        "http_server_request_body_size_bytes_sum",
        &["http_response_status_code=\"202\""],
        7.0,
    );
}

both_drivers!(
    interim_100_is_not_recorded,
    metric_values_match_a_scripted_sequence,
    labels_never_carry_event_content,
    promtool_accepts_the_exposition,
    health_and_readiness_endpoints,
);

/// A free loopback port for a helper server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir =
            std::env::temp_dir().join(format!("imc-prom-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: imc\n  static_configs:\n  - targets: ['{target}']\n"),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt-get install prometheus) runs");
        let p = Prometheus { child, dir, addr };
        eventually(Duration::from_secs(30), "prometheus is ready", || {
            Conn::try_open(p.addr).ok().and_then(|mut c| {
                c.request(&Request::new("GET", "/-/ready").header("Host", "prom"))
                    .ok()
                    .filter(|r| r.status == 200)
            })
        });
        p
    }

    /// The value of an instant query's first sample, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut c = Conn::try_open(self.addr).ok()?;
        let r = c
            .request(
                &Request::new("GET", &format!("/api/v1/query?query={encoded}"))
                    .header("Host", "prom"),
            )
            .ok()?;
        let body = String::from_utf8(r.body).ok()?;
        // {"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[t,"N"]}]}}
        let at = body.find("\"value\":[")?;
        let rest = &body[at..];
        let q1 = rest.find(",\"")? + 2;
        let q2 = rest[q1..].find('"')? + q1;
        rest[q1..q2].parse().ok()
    }
}

/// A real Prometheus server (Debian's) scrapes the dispatcher; its HTTP API reports the number of
/// events sent.
#[test]
fn prometheus_server_scrapes_the_event_count() {
    let s1 = Sink::ok();
    let dut = Dut::builder(Driver::IoUring)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .start();
    let maddr = metrics_addr(&dut);
    let prom = Prometheus::start(maddr);
    let sent = 17;
    for i in 0..sent {
        dut.send(&e1().id(&format!("p{i}"))).assert_status(202);
    }
    let started = Instant::now();
    let got = eventually(
        Duration::from_secs(30),
        "prometheus reports every event",
        || {
            prom.query("sum(imc_events_received_total{code=\"202\",channel=\"ch1\"})")
                .filter(|v| *v == f64::from(sent))
        },
    );
    assert_eq!(got, f64::from(sent), "after {:?}", started.elapsed());
    let dispatched = prom
        .query("sum(kn_eventing_dispatch_duration_seconds_count{kn_channel_name=\"ch1\"})")
        .unwrap();
    assert_eq!(dispatched, f64::from(sent));
}
