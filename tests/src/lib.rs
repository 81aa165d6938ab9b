//! End-to-end tests for imc-rs: the real `imc-dispatcher` process against real HTTP sinks, over
//! real sockets. Expected values follow `shared/imc-contract.md` with its decisions D1-D18 applied.
//!
//! Run with `cargo test --workspace`, or `cargo build -p imc-dispatcher -p imc-loadgen && cargo
//! test -p imc-e2e` (or point `IMC_DISPATCHER_BIN` and `IMC_LOADGEN_BIN` at binaries).
//!
//! # Layout
//!
//! - [`apiserver`]: a test Kubernetes API server (`tests/apiserver/apiserver.py`) over HTTPS on
//!   loopback, for the control plane: seeded objects, the request log, restarts, faults.
//! - [`dut`]: starts the dispatcher under test on a channels file, finds its address, keeps its logs.
//! - [`manifest`]: InMemoryChannel manifests as `kubectl get imc -o yaml` prints them.
//! - [`sink`]: scripted HTTP/1.1 subscribers that record every request; they can answer late, hang
//!   up, hold an answer until released, and see the dispatcher give up on a request.
//! - [`apps`]: the sample services of Knative's Sequence and Parallel flows (appender, filter,
//!   transformer) as sink scripts.
//! - [`client`]: a raw HTTP/1.1 client that can also write arbitrary bytes and see a close, and a
//!   reconnecting keep-alive client for load.
//! - [`loadgen`]: `imc-loadgen sink` as a process, for load through the dispatcher.
//! - [`rogue`]: a misbehaving subscriber that answers with scripted raw bytes (unsolicited or
//!   ill-framed responses, protocol switches, floods, closes), counts its connections and sees
//!   the dispatcher close one.
//! - [`container`]: the image built from the Dockerfile's final stage over host-built binaries,
//!   and Docker containers, networks and seccomp profiles for the tests that run it.
//! - [`fixtures`]: channel C1 and event E1 from contract §7, and the "delivered as binary E1" check.
//! - [`text`]: base64, JSON strings and HTTP dates, for expected values.
//! - [`tls`]: a test CA (rcgen), an https sink and a TLS client, for the TLS suite.
//! - `wire`: reading HTTP/1.1 messages, shared by the client and the sinks.
//!
//! Every test runs once per I/O driver: write `fn property_name(driver: Driver)` and list it in
//! [`both_drivers!`], which makes `io_uring::property_name` and `epoll::property_name`.

pub mod apiserver;
pub mod apps;
pub mod client;
pub mod container;
pub mod dut;
pub mod fixtures;
pub mod loadgen;
pub mod manifest;
pub mod rogue;
pub mod sink;
pub mod text;
pub mod tls;
mod wire;

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

pub use client::{Closed, Conn, KeepAlive, Request, Response};
pub use dut::{kube_probe, Driver, Dut, DutBuilder};
pub use fixtures::{
    assert_binary_e1, assert_binary_e1_with_id, assert_e1_event, c1, e1, structured, C1_HOST,
};
pub use loadgen::{loadgen_binary, LoadgenSink};
pub use manifest::{channels_list_yaml, channels_yaml, Channel, Sub, ASYNC_HANDLER};
pub use rogue::{Act, Ended, Rogue, Seen};
pub use sink::{per_id, Recorded, Reply, Sink};
pub use text::{base64, base64_decode};

/// How long a rewrite of the channels file may take to show in behaviour.
pub const RELOAD: Duration = Duration::from_secs(5);

/// How long a sink may wait for a delivery the test expects.
pub const DELIVERY: Duration = Duration::from_secs(5);

/// Calls `attempt` every 50 ms until it returns `Some`, for at most `timeout`; panics naming `what`.
#[track_caller]
/// Runs `f(t)` for `t` in `0..threads` on scoped threads and concatenates what they return, in
/// thread order (the senders of the load tests).
pub fn in_threads<T: Send>(threads: usize, f: impl Fn(usize) -> Vec<T> + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = (0..threads).map(|t| scope.spawn(move || f(t))).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sender thread"))
            .collect()
    })
}

/// The repository's root (the `tests/` crate sits in it): for the Dockerfile, the scripts and
/// the manifests under `config/`.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

pub fn eventually<T>(timeout: Duration, what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("not within {timeout:?}: {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Panics unless `actual` is within `tolerance` of `expected`, naming `what`.
#[track_caller]
pub fn assert_near(what: &str, actual: Duration, expected: Duration, tolerance: Duration) {
    let off = actual.abs_diff(expected);
    assert!(
        off <= tolerance,
        "{what}: {actual:?}, expected {expected:?} ± {tolerance:?}"
    );
}

/// An address on `127.0.0.1` where nothing listens (bound, then released): connecting is refused.
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port to release");
    listener.local_addr().expect("local address")
}

/// Generates one `#[test]` per I/O driver for each listed `fn name(driver: Driver)`:
/// `io_uring::name` and `epoll::name`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),+ $(,)?) => {
        mod io_uring {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Driver::IoUring)
                }
            )+
        }
        mod epoll {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Driver::Epoll)
                }
            )+
        }
    };
}
