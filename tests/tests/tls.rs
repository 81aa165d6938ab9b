//! TLS both ways (contract §1.2, §1.4, §6.1, §6.5; §7 cases 80-84 and 90): https subscribers
//! and dead-letter sinks trusted through their own `…CACerts` or `--custom-certs-dir`, handshake
//! failures retried and dead-lettered, the https ingress with its certificate rotated on disk,
//! the `transport-encryption` modes on both ports, and `TLS_MIN_VERSION`. Every certificate is
//! made in the test by a test CA.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imc_e2e::tls::{client_config, tls_read_to_close, tls_send, Leaf, TestCa, TlsSink};
use imc_e2e::*;
use rustls::HandshakeKind;

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "imc-tls-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create scratch directory");
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write scratch file");
        path
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A DUT with an https ingress certificate for `localhost` from `ca`, in this encryption mode.
fn tls_dut(driver: Driver, channels: &[Channel], ca: &TestCa, mode: &str) -> (Dut, Scratch) {
    tls_dut_with(driver, channels, ca, mode, &[])
}

fn tls_dut_with(
    driver: Driver,
    channels: &[Channel],
    ca: &TestCa,
    mode: &str,
    env: &[(&str, &str)],
) -> (Dut, Scratch) {
    let dir = Scratch::new("ingress");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], 30, 1);
    dir.write("tls.crt", &leaf.cert_pem);
    dir.write("tls.key", &leaf.key_pem);
    let mut b = Dut::builder(driver).channels(channels).args(&[
        "--tls-cert",
        &dir.path("tls.crt"),
        "--tls-key",
        &dir.path("tls.key"),
        "--transport-encryption",
        mode,
    ]);
    for (k, v) in env {
        b = b.env(k, v);
    }
    (b.start(), dir)
}

/// E1 by path, as senders address a channel over https (contract §6.1).
fn e1_by_path() -> Request {
    e1().target("/default/ch1")
}

/// The Prometheus text the DUT serves now.
fn scrape(dut: &Dut) -> String {
    let addr: std::net::SocketAddr = dut
        .logs()
        .iter()
        .find(|l| l.contains("metrics listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the metrics address in the logs");
    let r = Conn::open(addr).send(&Request::new("GET", "/metrics"));
    String::from_utf8(r.body).expect("UTF-8 exposition")
}

/// Whether a line of `text` starts with `name{` and holds every label.
fn has_series(text: &str, name: &str, labels: &[&str]) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|w| l.contains(w)))
}

/// The wait for a log line naming the failure.
const LOG_WAIT: Duration = Duration::from_secs(5);

/// Case 90, first half: the CA in `subscriberCACerts`; the pooled connection carries the next
/// event without a second handshake.
fn https_subscriber_trusted_through_subscriber_ca_certs_is_delivered(driver: Driver) {
    let ca = TestCa::new("subscriber CA");
    let sink = TlsSink::start(&ca.leaf(&["localhost"], 30, 7));
    let dut = Dut::builder(driver)
        .workers(1)
        .channels(&[c1().subscriber(Sub::to(&sink.url()).subscriber_ca_certs(&ca.pem()))])
        .start();

    dut.send(&e1()).assert_status(202);
    dut.send(&e1().id("e2")).assert_status(202);

    let got = sink.requests();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].header("ce-id"), Some("e1"));
    assert_eq!(got[1].header("ce-id"), Some("e2"));
    assert_eq!(got[0].header("prefer"), Some("reply"));
    assert_eq!(got[0].body, br#"{"k":1}"#);
    assert_eq!(sink.handshakes().len(), 1, "keep-alive: one handshake");
    let text = scrape(&dut);
    assert!(
        has_series(
            &text,
            "http_client_request_duration_seconds_count",
            &[
                r#"url_scheme="https""#,
                r#"http_response_status_code="200""#
            ]
        ),
        "{text}"
    );
}

/// A new connection to the same target resumes the worker's TLS session.
fn new_connections_resume_the_session(driver: Driver) {
    let ca = TestCa::new("resumption CA");
    let sink = TlsSink::start_closing(&ca.leaf(&["localhost"], 30, 8));
    let dut = Dut::builder(driver)
        .workers(1)
        .channels(&[c1().subscriber(Sub::to(&sink.url()).subscriber_ca_certs(&ca.pem()))])
        .start();

    for i in 0..3 {
        dut.send(&e1().id(&format!("r{i}"))).assert_status(202);
    }
    let kinds = sink.handshakes();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(kinds[0], HandshakeKind::Full);
    assert!(
        kinds[1..].iter().all(|k| *k == HandshakeKind::Resumed),
        "{kinds:?}"
    );
}

/// §6.5 item 2: a CA file under `--custom-certs-dir` is trusted for every https target.
fn ca_in_custom_certs_dir_is_trusted(driver: Driver) {
    let ca = TestCa::new("custom CA");
    let sink = TlsSink::start(&ca.leaf(&["localhost"], 30, 9));
    let dir = Scratch::new("custom");
    dir.write("ca.pem", &ca.pem());
    dir.write("not-a-cert.txt", "hello");
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&sink.url()))])
        .args(&["--custom-certs-dir", &dir.0.display().to_string()])
        .start();

    dut.send(&e1()).assert_status(202);
    assert_eq!(sink.requests().len(), 1);
}

/// Case 90, second half: without the CA the handshake fails (unknown issuer), the attempt is
/// retried per policy, and the dead-letter sink gets the event with `knativeerrorcode: 500`.
fn unknown_issuer_is_retried_then_dead_lettered_with_500(driver: Driver) {
    let ca = TestCa::new("unknown CA");
    let sink = TlsSink::start(&ca.leaf(&["localhost"], 30, 10));
    let dls = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(
            Sub::to(&sink.url())
                .retry(2)
                .backoff_delay("PT0.05S")
                .dead_letter(&dls.url()),
        )])
        .start();
    let mark = dut.log_mark();

    dut.send(&e1()).assert_status(202);

    let got = dls.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "{got:#?}");
    got[0].assert_header("ce-knativeerrorcode", "500");
    got[0].assert_header("ce-knativeerrordest", &sink.url());
    assert_e1_event(&got[0], "e1");
    assert!(sink.requests().is_empty());
    // The sink records a refused handshake on its own thread, after the dispatcher has seen it
    // fail and moved on: the third one may land just after the dead-letter delivery.
    eventually(LOG_WAIT, "three refused handshakes", || {
        (sink.failed_handshakes().len() >= 3).then_some(())
    });
    assert_eq!(sink.failed_handshakes().len(), 3, "1 attempt + 2 retries");
    let line = dut
        .wait_log(mark, LOG_WAIT, |l| {
            l.contains("TLS handshake with an https target failed")
        })
        .expect("the failed handshake is logged");
    assert!(line.contains(&sink.url()), "{line}");
    assert!(line.contains("unknown issuer"), "{line}");
}

/// A certificate for another host fails the handshake as a name mismatch.
fn wrong_host_name_fails_as_name_mismatch(driver: Driver) {
    let ca = TestCa::new("name CA");
    let sink = TlsSink::start(&ca.leaf(&["other.example"], 30, 11));
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&sink.url()).subscriber_ca_certs(&ca.pem()))],
    );
    let mark = dut.log_mark();

    dut.send(&e1()).assert_status(500);

    let line = dut
        .wait_log(mark, LOG_WAIT, |l| l.contains("delivery failed"))
        .expect("a delivery failure is logged");
    assert!(line.contains("name mismatch"), "{line}");
    assert!(sink.requests().is_empty());
}

/// An expired certificate fails the handshake as expired.
fn expired_certificate_fails_as_expired(driver: Driver) {
    let ca = TestCa::new("expiry CA");
    let sink = TlsSink::start(&ca.leaf(&["localhost"], -1, 12));
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&sink.url()).subscriber_ca_certs(&ca.pem()))],
    );
    let mark = dut.log_mark();

    dut.send(&e1()).assert_status(500);

    let line = dut
        .wait_log(mark, LOG_WAIT, |l| l.contains("delivery failed"))
        .expect("a delivery failure is logged");
    assert!(line.contains("expired"), "{line}");
}

/// An https dead-letter sink trusted through `deadLetterSink.CACerts`.
fn https_dead_letter_sink_with_its_own_ca(driver: Driver) {
    let ca = TestCa::new("dls CA");
    let dls = TlsSink::start(&ca.leaf(&["localhost"], 30, 13));
    let s1 = Sink::start(vec![Reply::status(422).body("no")]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(
            Sub::to(&s1.url())
                .dead_letter(&dls.url())
                .dead_letter_ca_certs(&ca.pem()),
        )],
    );

    dut.send(&e1()).assert_status(202);

    let got = dls.requests();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].header("ce-knativeerrorcode"), Some("422"));
    assert_eq!(got[0].header("ce-id"), Some("e1"));
}

/// An https reply target trusted through `replyCACerts`.
fn https_reply_target_with_its_own_ca(driver: Driver) {
    let ca = TestCa::new("reply CA");
    let reply = TlsSink::start(&ca.leaf(&["localhost"], 30, 14));
    let s1 = Sink::start(vec![Reply::binary_event(200, "r1", "/replier", "t.reply")]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(
            Sub::to(&s1.url())
                .reply(&reply.url())
                .reply_ca_certs(&ca.pem()),
        )],
    );

    dut.send(&e1()).assert_status(202);

    let got = reply.requests();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].header("ce-id"), Some("r1"));
}

/// Case 80 and §1.4: while disabled, 8443 answers 404 after the handshake (no delivery) and
/// probes there get 200; 8080 serves.
fn disabled_mode_answers_404_on_8443(driver: Driver) {
    let ca = TestCa::new("ingress CA");
    let s1 = Sink::ok();
    let (dut, _dir) = tls_dut(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()))],
        &ca,
        "disabled",
    );
    let tls = client_config(&ca.pem(), false);

    let a = tls_send(dut.tls_addr(), tls.clone(), "localhost", &e1_by_path()).unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(a.body, b"404 page not found\n");
    let p = tls_send(dut.tls_addr(), tls, "localhost", &kube_probe()).unwrap();
    assert_eq!(p.status, 200);
    s1.assert_untouched();
    dut.send(&e1()).assert_status(202);
    assert_eq!(s1.requests().len(), 1);
}

/// A connection the server closes (HTTP/1.0 here) ends with `close_notify`, not a bare FIN that
/// a TLS client must take for a truncation.
fn closed_connections_end_with_close_notify(driver: Driver) {
    let ca = TestCa::new("close CA");
    let s1 = Sink::ok();
    let (dut, _dir) = tls_dut(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()))],
        &ca,
        "permissive",
    );

    let out = tls_read_to_close(
        dut.tls_addr(),
        client_config(&ca.pem(), false),
        "localhost",
        &e1_by_path().http10().to_bytes(),
    )
    .expect("a clean TLS close");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 202 "), "{text}");
}

/// Case 81: both ports serve.
fn permissive_mode_serves_both_ports(driver: Driver) {
    let ca = TestCa::new("ingress CA");
    let s1 = Sink::ok();
    let (dut, _dir) = tls_dut(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()))],
        &ca,
        "permissive",
    );
    let tls = client_config(&ca.pem(), false);

    dut.send(&e1()).assert_status(202);
    let a = tls_send(dut.tls_addr(), tls, "localhost", &e1_by_path().id("e2")).unwrap();
    assert_eq!(a.status, 202);
    let ids: Vec<_> = s1.requests().iter().map(|r| r.id().to_owned()).collect();
    assert_eq!(ids, ["e1", "e2"]);
    let text = scrape(&dut);
    for scheme in ["http", "https"] {
        let label = format!("url_scheme=\"{scheme}\"");
        assert!(
            has_series(
                &text,
                "http_server_request_duration_seconds_count",
                &[&label, r#"http_response_status_code="202""#]
            ),
            "{scheme}: {text}"
        );
    }
}

/// Case 82: 8080 answers 404 to events but not to probes; 8443 serves.
fn strict_mode_closes_the_plain_port_but_for_probes(driver: Driver) {
    let ca = TestCa::new("ingress CA");
    let s1 = Sink::ok();
    let (dut, _dir) = tls_dut(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()))],
        &ca,
        "strict",
    );
    let tls = client_config(&ca.pem(), false);

    let r = dut.send(&e1());
    r.assert_status(404);
    assert_eq!(dut.probe(), 204);
    let a = tls_send(dut.tls_addr(), tls.clone(), "localhost", &e1_by_path()).unwrap();
    assert_eq!(a.status, 202);
    let p = tls_send(dut.tls_addr(), tls, "localhost", &kube_probe()).unwrap();
    assert_eq!(p.status, 200);
    assert_eq!(s1.requests().len(), 1);
}

/// Case 83: a TLS 1.2-only client is refused by default (minimum 1.3) and served with
/// `TLS_MIN_VERSION=1.2`.
fn tls12_client_is_refused_unless_min_version_is_12(driver: Driver) {
    let ca = TestCa::new("ingress CA");
    let s1 = Sink::ok();
    let chans = [c1().subscriber(Sub::to(&s1.url()))];
    let tls12 = client_config(&ca.pem(), true);
    {
        let (dut, _dir) = tls_dut(driver, &chans, &ca, "permissive");
        let mark = dut.log_mark();
        let e = tls_send(dut.tls_addr(), tls12.clone(), "localhost", &e1_by_path());
        assert!(e.is_err(), "{e:?}");
        dut.wait_log(mark, LOG_WAIT, |l| {
            l.contains("TLS handshake on the https ingress failed")
        })
        .expect("the refused handshake is logged");
    }
    let (dut, _dir) = tls_dut_with(
        driver,
        &chans,
        &ca,
        "permissive",
        &[("TLS_MIN_VERSION", "1.2")],
    );
    let a = tls_send(dut.tls_addr(), tls12, "localhost", &e1_by_path()).unwrap();
    assert_eq!(a.status, 202);
}

/// Case 84: the certificate files replaced the way a mounted Secret is (the `..data` symlink
/// swapped to a new directory): new connections present the new certificate, without a
/// restart; the previous serial stops being served.
fn certificate_rotation_is_seen_by_new_connections(driver: Driver) {
    let ca = TestCa::new("rotation CA");
    let dir = Scratch::new("rotation");
    let install = |leaf: &Leaf, version: &str| {
        let ts = dir.0.join(version);
        fs::create_dir_all(&ts).unwrap();
        fs::write(ts.join("tls.crt"), &leaf.cert_pem).unwrap();
        fs::write(ts.join("tls.key"), &leaf.key_pem).unwrap();
        let tmp = dir.0.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        fs::rename(&tmp, dir.0.join("..data")).unwrap();
    };
    let first = ca.leaf(&["localhost"], 30, 0x1111);
    let second = ca.leaf(&["localhost"], 30, 0x2222);
    install(&first, "ts1");
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(Path::new("..data").join(f), dir.0.join(f)).unwrap();
    }
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .args(&[
            "--tls-cert",
            &dir.path("tls.crt"),
            "--tls-key",
            &dir.path("tls.key"),
            "--transport-encryption",
            "permissive",
        ])
        .start();
    let tls = client_config(&ca.pem(), false);
    let a = tls_send(dut.tls_addr(), tls.clone(), "localhost", &e1_by_path()).unwrap();
    assert_eq!(a.status, 202);
    assert_eq!(a.serial, first.serial());

    install(&second, "ts2");

    eventually(
        RELOAD,
        "new connections present the new certificate",
        || {
            let a = tls_send(dut.tls_addr(), tls.clone(), "localhost", &kube_probe()).ok()?;
            (a.serial == second.serial()).then_some(())
        },
    );
    let a = tls_send(dut.tls_addr(), tls, "localhost", &e1_by_path().id("e2")).unwrap();
    assert_eq!(a.status, 202);
    assert_eq!(a.serial, second.serial());
}

/// §6.1: with no certificate the https listener still starts; handshakes fail with a log line
/// saying why; 8080 serves.
fn no_certificate_fails_handshakes_with_a_reason(driver: Driver) {
    let ca = TestCa::new("absent CA");
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .args(&["--transport-encryption", "permissive"])
        .start();
    let mark = dut.log_mark();

    let e = tls_send(
        dut.tls_addr(),
        client_config(&ca.pem(), false),
        "localhost",
        &e1_by_path(),
    );
    assert!(e.is_err(), "{e:?}");
    dut.wait_log(mark, LOG_WAIT, |l| l.contains("no server certificate"))
        .expect("the missing certificate is logged");
    dut.send(&e1()).assert_status(202);
}

/// A PKCS#1 RSA key (`BEGIN RSA PRIVATE KEY`, as cert-manager can write it) is served.
fn pkcs1_rsa_key_is_served(driver: Driver) {
    let ca = TestCa::new("rsa CA");
    let dir = Scratch::new("rsa");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir.0)
            .output()
            .expect("openssl runs (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "pkcs8.pem",
    ]);
    openssl(&["rsa", "-in", "pkcs8.pem", "-traditional", "-out", "tls.key"]);
    let pkcs1 = fs::read_to_string(dir.0.join("tls.key")).unwrap();
    assert!(
        pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{pkcs1}"
    );
    let pkcs8 = fs::read_to_string(dir.0.join("pkcs8.pem")).unwrap();
    dir.write(
        "tls.crt",
        &ca.leaf_for_pkcs8_key(&["localhost"], 0x5a, &pkcs8),
    );
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .args(&[
            "--tls-cert",
            &dir.path("tls.crt"),
            "--tls-key",
            &dir.path("tls.key"),
        ])
        .args(&["--transport-encryption", "permissive"])
        .start();

    let a = tls_send(
        dut.tls_addr(),
        client_config(&ca.pem(), false),
        "localhost",
        &e1_by_path(),
    )
    .unwrap();
    assert_eq!(a.status, 202);
    assert_eq!(a.serial, vec![0x5a]);
}

/// curl as an https sender (`--cacert`), keep-alive over two requests.
fn curl_sends_over_https(driver: Driver) {
    let ca = TestCa::new("curl CA");
    let s1 = Sink::ok();
    let (dut, dir) = tls_dut(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()))],
        &ca,
        "permissive",
    );
    let ca_file = dir.write("ca.pem", &ca.pem());
    let port = dut.tls_addr().port();
    let url = format!("https://localhost:{port}/default/ch1");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}\\n",
        ])
        .arg("--cacert")
        .arg(&ca_file)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args([
            "-H",
            "Ce-Specversion: 1.0",
            "-H",
            "Ce-Id: c1",
            "-H",
            "Ce-Source: /curl",
        ])
        .args([
            "-H",
            "Ce-Type: t.curl",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", r#"{"k":1}"#, &url])
        .args(["--next", "-sS", "-o", "/dev/null", "-w", "%{http_code}\\n"])
        .arg("--cacert")
        .arg(&ca_file)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args([
            "-H",
            "Ce-Specversion: 1.0",
            "-H",
            "Ce-Id: c2",
            "-H",
            "Ce-Source: /curl",
        ])
        .args([
            "-H",
            "Ce-Type: t.curl",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", r#"{"k":2}"#, &url])
        .output()
        .expect("curl runs (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["202 1.1", "202"],
        "{stdout}"
    );
    let ids: Vec<_> = s1.requests().iter().map(|r| r.id().to_owned()).collect();
    assert_eq!(ids, ["c1", "c2"]);
}

both_drivers!(
    https_subscriber_trusted_through_subscriber_ca_certs_is_delivered,
    new_connections_resume_the_session,
    ca_in_custom_certs_dir_is_trusted,
    unknown_issuer_is_retried_then_dead_lettered_with_500,
    wrong_host_name_fails_as_name_mismatch,
    expired_certificate_fails_as_expired,
    https_dead_letter_sink_with_its_own_ca,
    https_reply_target_with_its_own_ca,
    disabled_mode_answers_404_on_8443,
    permissive_mode_serves_both_ports,
    closed_connections_end_with_close_notify,
    strict_mode_closes_the_plain_port_but_for_probes,
    tls12_client_is_refused_unless_min_version_is_12,
    certificate_rotation_is_seen_by_new_connections,
    no_certificate_fails_handshakes_with_a_reason,
    pkcs1_rsa_key_is_served,
    curl_sends_over_https,
);
