//! End-to-end tests for imc-rs: the real `imc-dispatcher` process against real HTTP sinks, over
//! real sockets. Expected values follow `shared/imc-contract.md` with its decisions D1-D16 applied.
//!
//! Run with `cargo build -p imc-dispatcher && cargo test -p imc-e2e` (or point
//! `IMC_DISPATCHER_BIN` at a binary).
//!
//! # Layout
//!
//! - [`dut`]: starts the dispatcher under test on a channels file, finds its address, keeps its logs.
//! - [`manifest`]: InMemoryChannel manifests as `kubectl get imc -o yaml` prints them.
//! - [`sink`]: scripted HTTP/1.1 subscribers that record every request.
//! - [`client`]: a raw HTTP/1.1 client that can also write arbitrary bytes and see a close.
//! - [`fixtures`]: channel C1 and event E1 from contract §7, and the "delivered as binary E1" check.
//! - `wire`: reading HTTP/1.1 messages, shared by the client and the sinks.
//!
//! Every test runs once per I/O driver: write `fn property_name(driver: Driver)` and list it in
//! [`both_drivers!`], which makes `io_uring::property_name` and `epoll::property_name`.

pub mod client;
pub mod dut;
pub mod fixtures;
pub mod manifest;
pub mod sink;
mod wire;

use std::thread;
use std::time::{Duration, Instant};

pub use client::{Closed, Conn, Request, Response};
pub use dut::{kube_probe, Driver, Dut, DutBuilder};
pub use fixtures::{assert_binary_e1, assert_binary_e1_with_id, c1, e1, structured, C1_HOST};
pub use manifest::{channels_list_yaml, channels_yaml, Channel, Sub};
pub use sink::{Recorded, Reply, Sink};

/// How long a rewrite of the channels file may take to show in behaviour.
pub const RELOAD: Duration = Duration::from_secs(5);

/// How long a sink may wait for a delivery the test expects.
pub const DELIVERY: Duration = Duration::from_secs(5);

/// Calls `attempt` every 50 ms until it returns `Some`, for at most `timeout`; panics naming `what`.
#[track_caller]
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
