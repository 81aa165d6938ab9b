//! The control plane at scale, end to end: the release `imc-dispatcher` and `imc-control`
//! against the test API server (`tests/apiserver/`) holding 10,000 Ready InMemoryChannels of 2
//! subscribers each. Reports, in one run:
//!
//! - the first snapshot: from imc-control's "InMemoryChannels listed" (the end of its initial
//!   list) to the dispatcher's "snapshot from imc-control installed" (every worker has it), from
//!   the two processes' log timestamps;
//! - one channel changed in the 10,000: from the update sent to the API server to the first
//!   event delivered to the new subscriber (events sent back to back meanwhile), median and worst
//!   of `ROUNDS`, and the part of it until the dispatcher logged the snapshot installed on every
//!   worker;
//! - imc-control's and the dispatcher's resident memory (VmRSS, VmHWM) after all that.
//!
//! The on-core part of a change (a worker's table update) is `routing`'s
//! `channel_change/table_apply_one`. Run: `cargo build --release -p imc-dispatcher -p imc-control
//! && cargo bench -p imc-bench --bench control_scale`. Loopback only; bounded in time.

use std::time::{Duration, Instant};

use imc_e2e::apiserver::{ApiServer, DISPATCHER_TOKEN, SYSTEM_NAMESPACE};
use imc_e2e::{e1, Driver, Dut, Sink};
use serde_json::{json, Value};

const CHANNELS: usize = 10_000;
const ROUNDS: usize = 10;

fn channel(i: usize, sinks: [&str; 2]) -> Value {
    let name = format!("ch{i}");
    json!({
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "InMemoryChannel",
        "metadata": {"namespace": "scale", "name": name, "generation": 1},
        "spec": {"subscribers": [
            {"uid": format!("u{i}-0"), "generation": 1, "subscriberUri": sinks[0]},
            {"uid": format!("u{i}-1"), "generation": 1, "subscriberUri": sinks[1]},
        ]},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True"}],
            "address": {"url": format!("http://{name}-kn-channel.scale.svc.cluster.local")},
        },
    })
}

/// The timestamp at the start of a text log line (`2026-12-02T03:04:05.123456Z ...`).
fn stamp(line: &str) -> Option<jiff::Timestamp> {
    line.split_whitespace().next()?.parse().ok()
}

fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

fn main() {
    // `cargo bench` passes `--bench`; this runner takes no options.
    let (s1, s2, moved) = (Sink::ok(), Sink::ok(), Sink::ok());
    let objects: Vec<Value> = (0..CHANNELS)
        .map(|i| channel(i, [&s1.url(), &s2.url()]))
        .collect();
    let api = ApiServer::builder().state(json!(objects)).start();
    let started = Instant::now();
    let dut = Dut::builder(Driver::IoUring)
        .cluster(&api.kubeconfig_path(DISPATCHER_TOKEN))
        .env("SYSTEM_NAMESPACE", SYSTEM_NAMESPACE)
        .env("POD_NAME", "scale")
        .workers(2)
        .start();
    let ready_after = started.elapsed();
    let listed = dut
        .wait_log(0, Duration::from_secs(60), |l| {
            l.contains("InMemoryChannels listed")
        })
        .expect("imc-control listed the channels");
    let installed = dut
        .wait_log(0, Duration::from_secs(60), |l| {
            l.contains("snapshot from imc-control installed")
        })
        .expect("the first snapshot installed");
    let first = stamp(&installed).unwrap() - stamp(&listed).unwrap();

    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut installs = Vec::with_capacity(ROUNDS);
    for r in 0..ROUNDS {
        let i = 1 + r * (CHANNELS / ROUNDS);
        let target = format!("/scale/ch{i}");
        let before = moved.count();
        let mut changed = channel(i, [&moved.url(), &s2.url()]);
        changed["metadata"]["generation"] = json!(2);
        changed["status"]["observedGeneration"] = json!(2);
        let mark = dut.log_mark();
        let wall0 = jiff::Timestamp::now();
        let t0 = Instant::now();
        api.admin().put(&changed);
        let mut conn = dut.connect();
        let mut n = 0;
        // Back to back (not `eventually`, which polls every 50 ms): the first event after the
        // install reaches the new subscriber.
        while moved.count() <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the change is not served"
            );
            n += 1;
            let _ = conn.request(&e1().id(&format!("r{r}-{n}")).target(&target));
        }
        rounds.push(t0.elapsed());
        if let Some(line) = dut.wait_log(mark, Duration::from_secs(1), |l| {
            l.contains("snapshot from imc-control installed")
        }) {
            let d = stamp(&line).unwrap() - wall0;
            installs.push(Duration::try_from(d).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    rounds.sort();
    installs.sort();
    let control = dut.children("imc-control");
    let (c_rss, c_hwm) = control.first().map_or((0, 0), |p| rss(*p));
    let (d_rss, d_hwm) = rss(dut.pid());
    println!(
        "control_scale: {CHANNELS} channels x 2 subscribers, release build, io_uring, 2 workers"
    );
    println!("  dispatcher ready after start             {ready_after:>10.2?}");
    println!(
        "  first snapshot: end of list -> installed {:>10.2?}",
        Duration::try_from(first).unwrap_or_default()
    );
    println!(
        "  one channel changed -> served (n={ROUNDS})  median {:.2?}, worst {:.2?}",
        rounds[ROUNDS / 2],
        rounds[ROUNDS - 1]
    );
    if !installs.is_empty() {
        println!(
            "    of which: update sent -> installed on every worker  median {:.2?}, worst {:.2?}",
            installs[installs.len() / 2],
            installs[installs.len() - 1]
        );
    }
    println!(
        "  imc-control RSS {} MiB (peak {} MiB)",
        c_rss / 1024,
        c_hwm / 1024
    );
    println!(
        "  imc-dispatcher RSS {} MiB (peak {} MiB)",
        d_rss / 1024,
        d_hwm / 1024
    );
}
