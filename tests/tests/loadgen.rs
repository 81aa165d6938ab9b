//! imc-loadgen through the dispatcher: `send` into a channel whose subscribers are `imc-loadgen
//! sink`s, each checking that every event arrived exactly once; one sink refuses a share of the
//! deliveries and the subscription's retries make up for it.

use std::process::{Command, Stdio};
use std::time::Duration;

use imc_e2e::*;

const EVENTS: u64 = 3000;

fn send(url: &str, host: &str, args: &[&str]) {
    let out = Command::new(loadgen_binary())
        .args([
            "send",
            url,
            "--host",
            host,
            "-n",
            &EVENTS.to_string(),
            "-c",
            "16",
            "-q",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run imc-loadgen send");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "send failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("ids         0..{EVENTS} ")),
        "{text}"
    );
}

fn every_event_reaches_every_sink_once(driver: Driver) {
    let bin = loadgen_binary();
    let expect = format!("0..{EVENTS}");
    let common = [
        "--expect",
        &expect,
        "--exit-when-complete",
        "--settle",
        "300ms",
    ];
    let plain = LoadgenSink::start(&bin, &common);
    let mut faulty_args = common.to_vec();
    faulty_args.extend(["--fail-rate", "0.1", "--fail-status", "503"]);
    let faulty = LoadgenSink::start(&bin, &faulty_args);
    let channel = c1()
        .subscriber(Sub::to(&plain.url()))
        .subscriber(Sub::to(&faulty.url()).retry(10).backoff_delay("PT0.005S"));
    let dut = Dut::start(driver, std::slice::from_ref(&channel));

    send(
        &format!("http://{}/", dut.addr()),
        &channel.host(),
        &["-t", "2"],
    );

    for (name, sink) in [("plain", plain), ("faulty", faulty)] {
        let out = sink.wait(Duration::from_secs(20));
        assert!(
            out.status.success(),
            "{name} sink: not every event exactly once ({:?})",
            out.status
        );
    }
}

/// Structured events in, binary deliveries out: the sinks find the same ids in `ce-id`.
fn structured_events_arrive_with_their_ids(driver: Driver) {
    let bin = loadgen_binary();
    let expect = format!("0..{EVENTS}");
    let sink = LoadgenSink::start(
        &bin,
        &[
            "--expect",
            &expect,
            "--exit-when-complete",
            "--settle",
            "200ms",
        ],
    );
    let channel = c1().subscriber(Sub::to(&sink.url()));
    let dut = Dut::start(driver, std::slice::from_ref(&channel));
    send(
        &format!("http://{}{}", dut.addr(), channel.path()),
        &channel.host(),
        &["--encoding", "structured"],
    );
    let out = sink.wait(Duration::from_secs(20));
    assert!(out.status.success(), "not every event exactly once");
}

both_drivers!(
    every_event_reaches_every_sink_once,
    structured_events_arrive_with_their_ids
);
