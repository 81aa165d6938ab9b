//! imc-loadgen: a load generator and a fast sink for CloudEvents channels.
//!
//! - [`send`]: posts CloudEvents (binary or structured) from one monoio runtime per thread, in a
//!   closed loop (each connection sends when the previous event is answered) or an open loop (events
//!   are due at a fixed rate, latency measured from the due time: coordinated-omission corrected),
//!   into HDR histograms, with a progress line, a summary table, `--json` and `--html`.
//! - [`sink`]: receives events on one `SO_REUSEPORT` listener per thread, answers a configurable
//!   status with optional faults (errors, delays, resets, stalls), counts deliveries per event id
//!   and reports ids missing or delivered twice against the sender's id range.
//! - [`ring`]: `ring-sink`, a minimal sink on an io_uring driven by hand (fixed files, multishot
//!   accept and receive, a provided-buffer ring): the I/O floor `bench/exchange.sh` compares with.
//! - [`display`]: prints an event the way Knative's `event_display` does.
//! - [`report`] and [`html`]: the run report (JSON, table) and its self-contained HTML page.
//!
//! The runtimes, the io_uring/epoll choice, the listeners and the HTTP/1.1 parsing are the
//! dispatcher's own ([`imc_dispatcher::worker`], [`imc_dispatcher::http`]).

pub mod display;
pub mod event;
pub mod html;
pub mod report;
pub mod ring;
pub mod rt;
pub mod send;
pub mod sink;
