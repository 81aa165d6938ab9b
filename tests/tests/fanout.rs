//! Fan-out to several subscribers and the sync acknowledgement (contract §3.1, §3.6, §7 D).

use std::time::{Duration, Instant};

use imc_e2e::*;

fn two_subscribers_each_get_one_copy(driver: Driver) {
    let s1 = Sink::ok();
    let s2 = Sink::start(vec![Reply::status(202)]);
    let dut = Dut::start(
        driver,
        &[c1()
            .subscriber(Sub::to(&s1.url()))
            .subscriber(Sub::to(&s2.url()))],
    );

    dut.send(&e1()).assert_status_empty(202);

    for sink in [&s1, &s2] {
        let got = sink.wait_for(1, DELIVERY);
        assert_eq!(got.len(), 1, "exactly one copy each: {got:#?}");
        assert_binary_e1(&got[0]);
    }
}

/// Without `delivery` there is no retry; one failed subscriber fails the whole request, and the
/// others were still delivered to.
fn one_failing_subscriber_makes_500_without_retry(driver: Driver) {
    let s1 = Sink::ok();
    let s2 = Sink::start(vec![Reply::status(500), Reply::status(200)]);
    let dut = Dut::start(
        driver,
        &[c1()
            .subscriber(Sub::to(&s1.url()))
            .subscriber(Sub::to(&s2.url()))],
    );

    dut.send(&e1()).assert_status(500);

    assert_eq!(s1.requests().len(), 1, "S1 delivered once");
    assert_eq!(s2.requests().len(), 1, "S2 tried once, no retry");
    assert_binary_e1(&s1.requests()[0]);
}

/// Sync mode: the 202 comes only after the slowest subscriber answered.
fn ack_waits_for_slowest_subscriber(driver: Driver) {
    let s1 = Sink::ok();
    let s2 = Sink::start(vec![Reply::status(200).delay(Duration::from_secs(2))]);
    let dut = Dut::start(
        driver,
        &[c1()
            .subscriber(Sub::to(&s1.url()))
            .subscriber(Sub::to(&s2.url()))],
    );

    let start = Instant::now();
    dut.send(&e1()).assert_status(202);
    let took = start.elapsed();

    assert!(
        took >= Duration::from_secs(2),
        "acked after {took:?}, before S2 answered"
    );
    assert!(took < Duration::from_secs(5), "acked after {took:?}");
    assert_eq!(s1.requests().len(), 1);
    assert_eq!(s2.requests().len(), 1);
}

/// Subscribers are called in parallel: two 1 s subscribers take about 1 s, not 2 s.
fn subscribers_are_delivered_in_parallel(driver: Driver) {
    let slow = || Sink::start(vec![Reply::status(200).delay(Duration::from_secs(1))]);
    let (s1, s2) = (slow(), slow());
    let dut = Dut::start(
        driver,
        &[c1()
            .subscriber(Sub::to(&s1.url()))
            .subscriber(Sub::to(&s2.url()))],
    );

    let start = Instant::now();
    dut.send(&e1()).assert_status(202);
    let took = start.elapsed();

    assert!(took >= Duration::from_secs(1), "acked after {took:?}");
    assert!(
        took < Duration::from_millis(1800),
        "acked after {took:?}: subscribers were called one after the other"
    );
    let (a, b) = (s1.requests()[0].at, s2.requests()[0].at);
    let gap = a.max(b) - a.min(b);
    assert!(
        gap < Duration::from_millis(500),
        "S1 and S2 called {gap:?} apart"
    );
}

both_drivers!(
    two_subscribers_each_get_one_copy,
    one_failing_subscriber_makes_500_without_retry,
    ack_waits_for_slowest_subscriber,
    subscribers_are_delivered_in_parallel,
);
