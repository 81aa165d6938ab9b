//! One event to every subscriber of a channel, concurrently (contract §3.1, §3.6), each through
//! its whole chain: the subscriber with its retry policy, then the reply to `replyUri`, then on
//! failure the dead-letter sink (§3.5, §3.7).
//!
//! Budget: never copies the body or the event head: every subscriber's request is the shared
//! head and body behind its own prefix. With one subscriber nothing is allocated; with more, one
//! array of futures per event (their results are folded into one flag, not collected). Timers
//! (retry backoff, per-attempt timeout) live on the worker's runtime: a waiting retry costs no
//! thread and no copy.
//!
//! Clock (issue 14): the event's start is read once, by the ingress, and passed down; every
//! subscriber reads the clock once more, when its attempt ends, and that reading closes both the
//! attempt's and the chain's latency (and opens the next step's, a reply or a dead letter). With
//! `--no-metrics` nothing here reads the clock. The pool's idle stamps use the worker's coarse
//! clock. Before: seven reads per subscriber (chain start and end, attempt start and end, pool
//! take and put, the ingress's own).

use std::cell::Cell;
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;

use crate::delivery::{
    dead_letter_extra, parse_retry_after, reply_request, DeliveryPolicy, Failure,
};
use crate::http::response_header;
use crate::metrics::{AttemptEnd, Outcome};
use crate::pool::Response;
use crate::routing::{Channel, Dest, Subscriber};
use crate::worker::Worker;

/// Upstream's fan-out watchdog: a sync ingress request never waits longer than this.
pub const WATCHDOG: Duration = Duration::from_secs(15 * 60);

/// An accepted event in binary mode: one head shared by every subscriber, in three segments
/// (attributes, inbound passthrough headers, Content-Length), and the body.
#[derive(Clone, Debug)]
pub struct OutEvent {
    pub head: Bytes,
    pub attrs_end: usize,
    pub pass_end: usize,
    pub body: Bytes,
}

impl OutEvent {
    /// The `Ce-*` and `Content-Type` lines: what a dead-letter request repeats.
    fn attrs(&self) -> Bytes {
        self.head.slice(..self.attrs_end)
    }

    /// The inbound passthrough headers (trace context included).
    fn passthrough(&self) -> &[u8] {
        &self.head[self.attrs_end..self.pass_end]
    }
}

/// Delivers to every subscriber; true when every subscriber's chain succeeded (zero subscribers
/// succeed). Subscribers that succeeded are not undone when another fails (upstream: the sender
/// retries, and they get duplicates). `start`: when the ingress took the event, where latencies
/// are recorded (None with `--no-metrics`); every subscriber's dispatch latency counts from it.
pub async fn fan_out(w: &Worker, chan: &Channel, ev: &OutEvent, start: Option<Instant>) -> bool {
    match &*chan.subscribers {
        [] => true,
        [one] => chain(w, chan, one, ev, start).await,
        many => {
            // Each chain folds its result into one flag, so that `join_all` collects `()`s (a
            // vector of a zero-sized type does not allocate): the array of the futures
            // themselves is the only allocation of a multi-subscriber event.
            let all_ok = Cell::new(true);
            join_all(many.iter().map(|s| async {
                if !chain(w, chan, s, ev, start).await {
                    all_ok.set(false);
                }
            }))
            .await;
            all_ok.get()
        }
    }
}

/// Subscriber, then reply, then dead-letter sink. True when the chain ended in success.
async fn chain(
    w: &Worker,
    chan: &Channel,
    sub: &Subscriber,
    ev: &OutEvent,
    start: Option<Instant>,
) -> bool {
    let mut clock = Clock { at: start };
    let (ok, status, outcome) = chain_steps(w, chan, sub, ev, &mut clock).await;
    if let (Some(t0), Some(t1)) = (start, clock.at) {
        let names = chan.names(sub);
        sub.series
            .dispatched(&w.metrics, &names, status, t1.saturating_duration_since(t0));
        sub.series.outcome(&w.metrics, &names, outcome);
    }
    ok
}

/// A subscriber chain's last clock reading: its start, then the end of its latest attempt
/// (which is where the next attempt starts). None when latencies are not recorded.
struct Clock {
    at: Option<Instant>,
}

impl Clock {
    /// Reads the clock (only where latencies are recorded) and returns the time since the last
    /// reading.
    fn lap(&mut self) -> Option<Duration> {
        let last = self.at?;
        let now = Instant::now();
        self.at = Some(now);
        Some(now.saturating_duration_since(last))
    }
}

/// The chain itself: whether it succeeded, the status of its last call (upstream's dispatch
/// metric label; 0 without a destination), and its outcome.
async fn chain_steps(
    w: &Worker,
    chan: &Channel,
    sub: &Subscriber,
    ev: &OutEvent,
    clock: &mut Clock,
) -> (bool, u16, Outcome) {
    let Some(dest) = &sub.target else {
        // Neither subscriberUri nor replyUri: upstream fails at once, without the DLS.
        w.log_failure(chan, sub, "", &Failure::NoDestination, None);
        return (false, 0, Outcome::Failed);
    };
    let failure = match attempts(w, chan, sub, dest, &ev.head, &Bytes::new(), &ev.body, clock).await
    {
        Ok(resp) => {
            let done = (true, resp.status, Outcome::Delivered);
            let Some(reply) = &sub.reply else {
                return done; // a reply without replyUri is dropped
            };
            let Some((head, pass)) = reply_request(&resp.head, resp.body.len(), ev.passthrough())
            else {
                return done; // not an event
            };
            // The reply's own response is ignored, even if it is an event: one level only.
            // Boxed: a reply, and a dead letter below, are the uncommon steps of a chain; inline,
            // each would add a whole send's state to every subscriber's future, copied on every
            // event. One allocation when there is a reply to send.
            return match Box::pin(attempts(
                w,
                chan,
                sub,
                reply,
                &head,
                &Bytes::new(),
                &resp.body,
                clock,
            ))
            .await
            {
                Ok(r) => (true, r.status, Outcome::Delivered),
                Err(f) => Box::pin(dead_letter(w, chan, sub, ev, reply, f, &pass, clock)).await,
            };
        }
        Err(f) => f,
    };
    Box::pin(dead_letter(
        w,
        chan,
        sub,
        ev,
        dest,
        failure,
        ev.passthrough(),
        clock,
    ))
    .await
}

/// Sends the original event with the error extensions of `failure` at `failed` to the
/// subscriber's dead-letter sink; a sink that takes it makes the chain a success.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    w: &Worker,
    chan: &Channel,
    sub: &Subscriber,
    ev: &OutEvent,
    failed: &Dest,
    failure: Failure,
    passthrough: &[u8],
    clock: &mut Clock,
) -> (bool, u16, Outcome) {
    let Some(dls) = &sub.dead_letter else {
        w.log_failure(chan, sub, &failed.url, &failure, None);
        return (false, failure.code(), Outcome::Failed);
    };
    let extra = dead_letter_extra(
        &ev.head[..ev.attrs_end],
        &failed.url,
        &failure,
        passthrough,
        ev.body.len(),
    );
    match attempts(w, chan, sub, dls, &ev.attrs(), &extra, &ev.body, clock).await {
        Ok(r) => {
            tracing::debug!(url = &*failed.url, error = %failure, dead_letter = &*dls.url, "dead-lettered");
            (true, r.status, Outcome::DeadLettered)
        }
        Err(dls_failure) => {
            w.log_failure(
                chan,
                sub,
                &failed.url,
                &failure,
                Some((&dls.url, &dls_failure)),
            );
            (false, dls_failure.code(), Outcome::Failed)
        }
    }
}

/// One call with its retry policy: `retry + 1` attempts at most, the zero-based backoff (or a
/// longer Retry-After where allowed) between them, each attempt bounded by the policy's timeout.
/// No policy: one attempt, no timeout. Each attempt's latency runs from `clock`'s last reading
/// (the chain's start, the previous step's end, or the end of the backoff) to its own end.
#[allow(clippy::too_many_arguments)]
async fn attempts(
    w: &Worker,
    chan: &Channel,
    sub: &Subscriber,
    dest: &Dest,
    head: &Bytes,
    extra: &Bytes,
    body: &Bytes,
    clock: &mut Clock,
) -> Result<Response, Failure> {
    let policy = sub.policy;
    let tries = policy.map_or(1, |p| p.retry.saturating_add(1));
    let mut k = 0;
    loop {
        // One send future in this state, with or without the timeout around it (two call
        // sites would lay out two).
        let mut send = pin!(w.pool.send(dest, head, extra, body));
        let result = match policy.and_then(|p| p.timeout) {
            Some(t) => monoio::time::timeout(t, send.as_mut())
                .await
                .unwrap_or(Err(Failure::Timeout)),
            None => send.await,
        };
        if let Some(took) = clock.lap() {
            let end = match &result {
                Ok(r) => AttemptEnd::Status(r.status),
                Err(Failure::Timeout) => AttemptEnd::Error("timeout"),
                Err(Failure::Protocol(_)) => AttemptEnd::Error("protocol"),
                Err(_) => AttemptEnd::Error("transport"),
            };
            let at = (&*chan.namespace, &*chan.name);
            let target = (&*dest.host, dest.port, dest.scheme());
            dest.series.attempt(&w.metrics, target, at, end, took);
        }
        let failure = match result {
            Ok(resp) if (200..300).contains(&resp.status) => return Ok(resp),
            Ok(resp) => classify(resp, policy),
            Err(f) => f,
        };
        k += 1;
        if k >= tries || !failure.retryable() {
            return Err(failure);
        }
        tracing::debug!(url = &*dest.url, attempt = k, error = %failure, "attempt failed; retrying");
        if w.metrics.enabled {
            sub.series
                .outcome(&w.metrics, &chan.names(sub), Outcome::Retried);
        }
        if let Some(p) = policy {
            let delay = p.delay_after(k, failure.retry_after());
            if !delay.is_zero() {
                monoio::time::sleep(delay).await;
                // The backoff is not the next attempt's latency.
                clock.lap();
            }
        }
    }
}

/// A non-2xx response as a failure; Retry-After is read only where it can matter.
fn classify(resp: Response, policy: Option<DeliveryPolicy>) -> Failure {
    let retry_after = match (resp.status, policy.and_then(|p| p.retry_after_max)) {
        (429 | 503, Some(_)) => response_header(&resp.head, "retry-after")
            .and_then(|v| parse_retry_after(v, SystemTime::now())),
        _ => None,
    };
    Failure::Status {
        code: resp.status,
        body: resp.body,
        retry_after,
    }
}

impl Worker {
    /// Logs a subscriber chain that failed, at most once a second per worker.
    fn log_failure(
        &self,
        chan: &Channel,
        sub: &Subscriber,
        url: &str,
        failure: &Failure,
        dead_letter: Option<(&str, &Failure)>,
    ) {
        if let Some(suppressed) = self.delivery_log.allow() {
            tracing::warn!(
                channel = %format_args!("{}/{}", chan.namespace, chan.name),
                subscriber = %sub.uid,
                url,
                error = %failure,
                dead_letter = dead_letter.map(|(u, _)| u),
                dead_letter_error = dead_letter.map(|(_, f)| f.to_string()),
                suppressed,
                "delivery failed"
            );
        }
    }
}
