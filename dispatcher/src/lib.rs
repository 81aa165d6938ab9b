//! imc-dispatcher: the data plane of imc-rs, a drop-in replacement for Knative Eventing's
//! InMemoryChannel dispatcher. The behaviour it keeps is `imc-contract.md`; the places where it
//! departs from upstream carry the decision number (`D1`..`D18`) in a comment.
//!
//! # Layout
//! - [`config`]: the command line and environment (clap), durations, the I/O driver choice.
//! - [`http`]: the hand-written HTTP/1.1 codec on top of httparse: request heads, response heads,
//!   chunked bodies, the fixed answers the ingress writes. Never allocates per request.
//! - [`cloudevent`]: the zero-copy CloudEvents view: validates binary and structured events and
//!   writes the binary-mode head sent to every subscriber. Never copies the body of a binary event.
//! - [`imc`]: the InMemoryChannel object model (`messaging.knative.dev/v1`) and its conversion into a
//!   validated [`imc::ChannelConfig`]; it lives in the `imc-model` crate, shared with imc-control.
//! - [`channels`]: the channel set: a full, immutable snapshot of every served channel, built off the
//!   cores from manifests, and the hand-off of snapshots to the workers.
//! - [`source`]: the file/directory channel source with its watcher.
//! - [`control`]: the cluster channel source: imc-control as a supervised child, its snapshots
//!   and their acknowledgement.
//! - [`routing`]: the per-worker routing table (host key and `<ns>/<name>` key to a channel).
//! - [`delivery`]: the per-subscriber delivery policy (retry, backoff, timeout) and the
//!   classification of a failed attempt.
//! - [`buffer`]: connection read buffers: where they grow and how they are read into.
//! - [`stream`]: a connection's byte stream: plain TCP, or TLS (rustls) over it.
//! - [`tls`]: TLS settings (`TLS_*`), the trust of https targets, the 8443 certificate and its
//!   reload.
//! - [`pool`]: per-worker keep-alive HTTP/1.1 connection pools to subscribers, and the client call.
//! - [`fanout`]: one event to every subscriber of a channel, concurrently, sharing one body.
//! - [`metrics`]: Prometheus series in per-worker single-writer cells, merged when scraped; the
//!   metrics and health listener. Never locks or shares a written cache line on the request path.
//! - [`ingress`]: the per-connection server loop: limits, probes, routing, validation, answers.
//! - [`worker`]: one monoio runtime per core, its listener, its table and its pool.

pub mod buffer;
pub mod channels;
pub mod cloudevent;
pub mod config;
pub mod control;
pub mod delivery;
/// Test support: new predicates checked against the reference implementations they replaced.
#[cfg(test)]
mod equiv;
pub mod fanout;
pub mod http;
/// The InMemoryChannel model, shared with imc-control (the `imc-model` crate).
pub use imc_model::imc;
/// The frames exchanged with imc-control (the `imc-model` crate).
pub use imc_model::wire;
pub mod ingress;
pub mod metrics;
pub mod pool;
pub mod routing;
pub mod source;
pub mod stream;
pub mod tls;
pub mod worker;
