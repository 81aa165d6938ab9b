//! imc-model: the InMemoryChannel object (`messaging.knative.dev/v1`) as Kubernetes serves it,
//! and its one translation into a served channel, shared by the dispatcher (its file source and
//! the snapshots imc-control hands it) and by imc-control (the scope filter and the status it
//! writes back). A manifest file and the cluster therefore serve a channel the same way.
//!
//! Never depends on a Kubernetes client or an async runtime: the dispatcher builds without them.
//!
//! # Layout
//! - [`imc`]: the object model, the Ready/generation gate, the scope filter, delivery targets, and
//!   [`imc::ChannelConfig::from_imc`], the validation of a channel with its errors.
//! - [`policy`]: a subscriber's parsed delivery policy (retries, backoff, timeout, Retry-After).
//! - [`status`]: the `status.subscribers` a channel should report once it is served, and the
//!   JSON Patch that gets it there (contract §4.4, D17).
//! - [`wire`]: the frames imc-control and imc-dispatcher exchange: versioned snapshots and acks.

pub mod imc;
pub mod policy;
pub mod status;
pub mod wire;
