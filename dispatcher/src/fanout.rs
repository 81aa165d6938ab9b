//! One event to every subscriber of a channel, concurrently (contract §3.1, §3.6).
//!
//! Budget: never copies the body or the event head: every subscriber's request is the shared
//! head and body behind its own prefix. With one subscriber nothing is allocated; with more, one
//! vector of futures per event. Timers (retry backoff, per-attempt timeout) live on the worker's
//! runtime: a waiting retry costs no thread and no copy.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;

use crate::delivery::Failure;
use crate::pool::Pool;
use crate::routing::{Channel, Subscriber};
use crate::worker::Throttle;

/// Upstream's fan-out watchdog: a sync ingress request never waits longer than this.
pub const WATCHDOG: Duration = Duration::from_secs(15 * 60);

/// Delivers to every subscriber; true when every subscriber's chain succeeded (zero subscribers
/// succeed). Subscribers that succeeded are not undone when another fails (upstream: the sender
/// retries, and they get duplicates).
pub async fn fan_out(
    pool: &Pool,
    chan: &Channel,
    head: &Bytes,
    body: &Bytes,
    log: &Throttle,
) -> bool {
    let run = async {
        match &*chan.subscribers {
            [] => true,
            [one] => deliver(pool, chan, one, head, body, log).await,
            many => join_all(many.iter().map(|s| deliver(pool, chan, s, head, body, log)))
                .await
                .into_iter()
                .all(|ok| ok),
        }
    };
    monoio::time::timeout(WATCHDOG, run).await.unwrap_or(false)
}

async fn deliver(
    pool: &Pool,
    chan: &Channel,
    sub: &Subscriber,
    head: &Bytes,
    body: &Bytes,
    log: &Throttle,
) -> bool {
    match attempt_all(pool, sub, head, body).await {
        Ok(()) => true,
        Err(failure) => {
            if let Some(suppressed) = log.allow() {
                tracing::warn!(
                    channel = %format_args!("{}/{}", chan.namespace, chan.name),
                    subscriber = %sub.uid,
                    url = sub.target.as_ref().map_or("", |d| &*d.url),
                    error = %failure,
                    suppressed,
                    "delivery failed"
                );
            }
            false
        }
    }
}

/// The subscriber call with its retry policy: `retry + 1` attempts at most, the zero-based
/// backoff between them, each attempt bounded by the policy's timeout. No policy: one attempt.
async fn attempt_all(
    pool: &Pool,
    sub: &Subscriber,
    head: &Bytes,
    body: &Bytes,
) -> Result<(), Failure> {
    let dest = sub.target.as_ref().ok_or(Failure::NoDestination)?;
    let policy = sub.policy;
    let attempts = policy.map_or(1, |p| p.retry.saturating_add(1));
    let mut k = 0;
    loop {
        let result = match policy.and_then(|p| p.timeout) {
            Some(t) => monoio::time::timeout(t, pool.send(dest, head, body))
                .await
                .unwrap_or(Err(Failure::Timeout)),
            None => pool.send(dest, head, body).await,
        };
        let failure = match result {
            Ok(resp) if (200..300).contains(&resp.status) => return Ok(()),
            Ok(resp) => Failure::Status(resp.status),
            Err(f) => f,
        };
        k += 1;
        if k >= attempts || !failure.retryable() {
            return Err(failure);
        }
        tracing::debug!(url = &*dest.url, attempt = k, error = %failure, "attempt failed; retrying");
        if let Some(p) = policy {
            let delay = p.delay(k);
            if !delay.is_zero() {
                monoio::time::sleep(delay).await;
            }
        }
    }
}
