//! Delivery to one subscriber: retries, backoff timing, the retryable set, per-attempt timeouts,
//! `Retry-After` and redirects (contract §3.3-3.4, §7 E 42-52, D10, D16).
//!
//! Timings are the gaps between the arrivals of successive attempts at the sink, checked to
//! ±100 ms.

use std::time::{Duration, Instant, SystemTime};

use imc_e2e::text::http_date;
use imc_e2e::*;

const TOLERANCE: Duration = Duration::from_millis(100);

/// Panics unless the gaps between successive requests are `expected_ms`, each ± [`TOLERANCE`].
#[track_caller]
fn assert_gaps(requests: &[Recorded], expected_ms: &[u64]) {
    let gaps: Vec<Duration> = requests.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert_eq!(
        gaps.len(),
        expected_ms.len(),
        "{} attempts, expected {}: {requests:#?}",
        requests.len(),
        expected_ms.len() + 1
    );
    for (i, (gap, ms)) in gaps.iter().zip(expected_ms).enumerate() {
        assert_near(
            &format!("gap before retry {} (all gaps {gaps:?})", i + 1),
            *gap,
            Duration::from_millis(*ms),
            TOLERANCE,
        );
    }
}

/// A sink that answers every request for event `s<code>` with status `code`, and every request
/// after the first with 200 when `then_ok`.
fn status_by_id(then_ok: bool) -> Sink {
    Sink::respond(per_id(move |req, nth| {
        let code = req.id()[1..].parse().expect("ids are s<code>");
        if then_ok && nth > 0 {
            Reply::status(200)
        } else {
            Reply::status(code)
        }
    }))
}

/// Case 42.
fn no_delivery_means_one_attempt(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(503), Reply::status(200)]);
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    dut.send(&e1()).assert_status(500);

    assert_eq!(s1.requests().len(), 1, "{:#?}", s1.requests());
}

/// Case 43.
fn retries_without_backoff_fire_at_once(driver: Driver) {
    let s1 = Sink::start(vec![
        Reply::status(503),
        Reply::status(503),
        Reply::status(200),
    ]);
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()).retry(2))]);

    dut.send(&e1()).assert_status(202);

    let got = s1.requests();
    assert_gaps(&got, &[0, 0]);
    for r in &got {
        assert_binary_e1(r);
    }
}

/// A backoff needs both a policy and a delay; either alone means retries at once.
fn backoff_needs_both_policy_and_delay(driver: Driver) {
    let script = || {
        Sink::start(vec![
            Reply::status(500),
            Reply::status(500),
            Reply::status(200),
        ])
    };
    let (delay_only, policy_only) = (script(), script());
    let dut = Dut::start(
        driver,
        &[c1()
            .subscriber(Sub::to(&delay_only.url()).retry(2).backoff_delay("PT1S"))
            .subscriber(
                Sub::to(&policy_only.url())
                    .retry(2)
                    .backoff_policy("exponential"),
            )],
    );

    dut.send(&e1()).assert_status(202);

    assert_gaps(&delay_only.requests(), &[0, 0]);
    assert_gaps(&policy_only.requests(), &[0, 0]);
}

/// Case 44: delay before retry k is d·2^(k-1).
fn exponential_backoff_doubles_from_the_delay(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500)]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).retry(3).exponential("PT0.2S"))],
    );

    let start = Instant::now();
    dut.send(&e1()).assert_status(500);
    let took = start.elapsed();

    assert_gaps(&s1.requests(), &[200, 400, 800]);
    assert_near(
        "ingress answer",
        took,
        Duration::from_millis(1400),
        TOLERANCE * 3,
    );
}

/// Case 45: delay before retry k is d·(k-1): the first linear retry is immediate.
fn linear_backoff_is_zero_based(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500)]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).retry(3).linear("PT0.2S"))],
    );

    dut.send(&e1()).assert_status(500);

    assert_gaps(&s1.requests(), &[0, 200, 400]);
}

/// Case 46.
fn retryable_statuses_get_a_second_attempt(driver: Driver) {
    let s1 = status_by_id(true);
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()).retry(1))]);
    let codes = [404, 408, 409, 429, 500, 502, 503, 504];

    for code in codes {
        let resp = dut.send(&e1().id(&format!("s{code}")));
        assert_eq!(resp.status, 202, "first answer {code}: {resp:?}");
    }

    for code in codes {
        let id = format!("s{code}");
        let attempts = s1.requests().iter().filter(|r| r.id() == id).count();
        assert_eq!(attempts, 2, "attempts after a {code}");
    }
}

/// Case 47.
fn other_4xx_are_not_retried(driver: Driver) {
    let s1 = status_by_id(false);
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()).retry(3))]);
    let codes = [400, 401, 403, 405, 410, 413, 415, 422];

    for code in codes {
        let resp = dut.send(&e1().id(&format!("s{code}")));
        assert_eq!(resp.status, 500, "answer {code}: {resp:?}");
    }

    for code in codes {
        let id = format!("s{code}");
        let attempts = s1.requests().iter().filter(|r| r.id() == id).count();
        assert_eq!(attempts, 1, "attempts after a {code}");
    }
}

/// Case 48: a refused connection is retried. Nothing can count connection attempts on a closed
/// port, so the backoff does: 3 attempts with exponential 0.2 s take 0.2 + 0.4 s; 2 would take
/// 0.2 s and 4 would take 1.4 s.
fn refused_connection_is_retried(driver: Driver) {
    let url = format!("http://{}/", closed_port());
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&url).retry(2).exponential("PT0.2S"))],
    );

    let start = Instant::now();
    dut.send(&e1()).assert_status(500);
    let took = start.elapsed();

    assert_near(
        "time for 3 refused attempts",
        took,
        Duration::from_millis(600),
        Duration::from_millis(250),
    );
}

/// Case 49: the per-attempt timeout cuts a slow attempt off, and the retry gets through.
fn slow_attempt_is_cut_off_by_timeout(driver: Driver) {
    let s1 = Sink::start(vec![
        Reply::status(200).delay(Duration::from_secs(2)),
        Reply::status(200),
    ]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).retry(1).timeout("PT0.5S"))],
    );

    let start = Instant::now();
    dut.send(&e1()).assert_status(202);
    let took = start.elapsed();

    let got = s1.requests();
    assert_eq!(got.len(), 2, "{got:#?}");
    let closed = s1.wait_peer_closed(0, Duration::from_secs(1));
    assert_near(
        "first attempt cut off after",
        closed - got[0].at,
        Duration::from_millis(500),
        Duration::from_millis(150),
    );
    assert_near(
        "retry after",
        got[1].at - got[0].at,
        Duration::from_millis(500),
        Duration::from_millis(150),
    );
    assert!(took < Duration::from_millis(1500), "acked after {took:?}");
}

/// Case 50.
fn retry_after_is_ignored_without_retry_after_max(driver: Driver) {
    let s1 = Sink::start(vec![
        Reply::status(429).header("Retry-After", "2"),
        Reply::status(200),
    ]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).retry(1).linear("PT0.1S"))],
    );

    dut.send(&e1()).assert_status(202);

    assert_gaps(&s1.requests(), &[0]);
}

/// Case 51: delay = max(backoff, min(Retry-After, retryAfterMax)).
fn retry_after_is_capped_by_retry_after_max(driver: Driver) {
    let s1 = Sink::start(vec![
        Reply::status(429).header("Retry-After", "2"),
        Reply::status(200),
    ]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(
            Sub::to(&s1.url())
                .retry(1)
                .linear("PT0.1S")
                .retry_after_max("PT1S"),
        )],
    );

    dut.send(&e1()).assert_status(202);

    assert_gaps(&s1.requests(), &[1000]);
}

/// Case 51: a shorter Retry-After loses to the backoff.
fn backoff_wins_over_a_shorter_retry_after(driver: Driver) {
    let s1 = Sink::start(vec![
        Reply::status(503).header("Retry-After", "0"),
        Reply::status(200),
    ]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(
            Sub::to(&s1.url())
                .retry(1)
                .exponential("PT0.3S")
                .retry_after_max("PT1S"),
        )],
    );

    dut.send(&e1()).assert_status(202);

    assert_gaps(&s1.requests(), &[300]);
}

/// Case 51: only 429 and 503 carry a Retry-After that counts.
fn retry_after_counts_only_on_429_and_503(driver: Driver) {
    let s1 = Sink::start(vec![
        Reply::status(500).header("Retry-After", "2"),
        Reply::status(200),
    ]);
    let dut = Dut::start(
        driver,
        &[c1().subscriber(
            Sub::to(&s1.url())
                .retry(1)
                .linear("PT0.1S")
                .retry_after_max("PT5S"),
        )],
    );

    dut.send(&e1()).assert_status(202);

    assert_gaps(&s1.requests(), &[0]);
}

/// Retry-After as an HTTP date: the retry waits until that time (between 2 and 3 s from the
/// answer, as HTTP dates have whole seconds).
fn retry_after_http_date_is_honoured(driver: Driver) {
    let s1 = Sink::respond(|_, n| {
        if n == 0 {
            let at = SystemTime::now() + Duration::from_secs(3);
            Reply::status(503).header("Retry-After", &http_date(at))
        } else {
            Reply::status(200)
        }
    });
    let dut = Dut::start(
        driver,
        &[c1().subscriber(
            Sub::to(&s1.url())
                .retry(1)
                .linear("PT0.1S")
                .retry_after_max("PT10S"),
        )],
    );

    dut.send(&e1()).assert_status(202);

    let got = s1.requests();
    assert_eq!(got.len(), 2, "{got:#?}");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1800) && gap <= Duration::from_millis(3200),
        "retry {gap:?} after a Retry-After date 2-3 s ahead"
    );
}

/// Case 52 and D10: a 3xx is a final failure; its Location is not followed.
fn redirects_are_neither_followed_nor_retried(driver: Driver) {
    let s2 = Sink::ok();
    let location = s2.url();
    let s1 = Sink::respond(move |req, _| {
        let code: u16 = req.id()[1..].parse().expect("ids are s<code>");
        let reply = Reply::status(code);
        if req.id() == "s302" {
            reply
        } else {
            reply.header("Location", &location)
        }
    });
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()).retry(2))]);
    let codes = [301, 302, 303, 307, 308];

    for code in codes {
        let resp = dut.send(&e1().id(&format!("s{code}")));
        assert_eq!(resp.status, 500, "answer to a {code}: {resp:?}");
    }

    for code in codes {
        let id = format!("s{code}");
        let attempts = s1.requests().iter().filter(|r| r.id() == id).count();
        assert_eq!(attempts, 1, "attempts after a {code}");
    }
    s2.assert_untouched();
}

both_drivers!(
    no_delivery_means_one_attempt,
    retries_without_backoff_fire_at_once,
    backoff_needs_both_policy_and_delay,
    exponential_backoff_doubles_from_the_delay,
    linear_backoff_is_zero_based,
    retryable_statuses_get_a_second_attempt,
    other_4xx_are_not_retried,
    refused_connection_is_retried,
    slow_attempt_is_cut_off_by_timeout,
    retry_after_is_ignored_without_retry_after_max,
    retry_after_is_capped_by_retry_after_max,
    backoff_wins_over_a_shorter_retry_after,
    retry_after_counts_only_on_429_and_503,
    retry_after_http_date_is_honoured,
    redirects_are_neither_followed_nor_retried,
);
