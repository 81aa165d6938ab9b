//! When the ingress answers: after delivery (sync, the default) or right after validation (channels
//! annotated `messaging.knative.dev/async-handler`), and what a sender hanging up in sync mode does
//! (contract §2.6, §7 D 38-40, D9).

use std::thread;
use std::time::{Duration, Instant};

use imc_e2e::*;

/// Sends `req` and returns its status and how long the answer took.
fn timed(dut: &Dut, req: &Request) -> (u16, Duration) {
    let start = Instant::now();
    let status = dut.send(req).status;
    (status, start.elapsed())
}

/// Case 39: 202 at once, and the event is still delivered (its failure is only logged).
fn async_channel_acks_before_delivery(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500).delay(Duration::from_secs(3))]);
    let dut = Dut::start(
        driver,
        &[c1().async_handler("true").subscriber(Sub::to(&s1.url()))],
    );

    let (status, took) = timed(&dut, &e1());

    assert_eq!(status, 202);
    assert!(took < Duration::from_secs(1), "acked after {took:?}");
    let got = s1.wait_for(1, DELIVERY);
    assert_binary_e1(&got[0]);
}

/// The annotation is read like Go's `strconv.ParseBool`: these six spellings mean true.
fn async_annotation_accepts_parse_bool_true_spellings(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(200).delay(Duration::from_secs(1))]);
    let values = ["1", "t", "T", "TRUE", "true", "True"];
    let channels: Vec<Channel> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Channel::new("default", &format!("async-{i}"))
                .async_handler(v)
                .subscriber(Sub::to(&s1.url()))
        })
        .collect();
    let dut = Dut::start(driver, &channels);

    for (channel, value) in channels.iter().zip(values) {
        let (status, took) = timed(&dut, &e1().host(&channel.host()).id(value));
        assert_eq!(status, 202, "annotation {value:?}");
        assert!(
            took < Duration::from_millis(800),
            "annotation {value:?}: acked after {took:?}, so not async"
        );
    }
    s1.wait_for(values.len(), DELIVERY);
}

/// Case 40: "yes" is not a Go boolean, so the channel stays sync.
fn async_annotation_yes_means_sync(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(500).delay(Duration::from_secs(3))]);
    let dut = Dut::start(
        driver,
        &[c1().async_handler("yes").subscriber(Sub::to(&s1.url()))],
    );

    let (status, took) = timed(&dut, &e1());

    assert_eq!(status, 500);
    assert!(took >= Duration::from_secs(3), "answered after {took:?}");
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
}

/// D9: the annotation is re-read on every reload, both ways, without a restart.
fn async_annotation_change_applies_on_reload(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(200).delay(Duration::from_secs(1))]);
    let sync = c1().subscriber(Sub::to(&s1.url()));
    let dut = Dut::start(driver, std::slice::from_ref(&sync));
    let (status, took) = timed(&dut, &e1().id("sync-1"));
    assert_eq!(status, 202);
    assert!(took >= Duration::from_secs(1), "sync ack after {took:?}");

    dut.set_channels(&[c1().async_handler("true").subscriber(Sub::to(&s1.url()))]);
    let mut n = 0;
    eventually(
        RELOAD + Duration::from_secs(2),
        "the channel turns async",
        || {
            n += 1;
            let (status, took) = timed(&dut, &e1().id(&format!("to-async-{n}")));
            (status == 202 && took < Duration::from_millis(500)).then_some(())
        },
    );
    let (status, took) = timed(&dut, &e1().id("async-1"));
    assert_eq!(status, 202);
    assert!(
        took < Duration::from_millis(500),
        "async ack after {took:?}"
    );

    dut.set_channels(&[sync]);
    eventually(
        RELOAD + Duration::from_secs(2),
        "the channel turns sync",
        || {
            n += 1;
            let (status, took) = timed(&dut, &e1().id(&format!("to-sync-{n}")));
            (status == 202 && took >= Duration::from_secs(1)).then_some(())
        },
    );
    let (status, took) = timed(&dut, &e1().id("sync-2"));
    assert_eq!(status, 202);
    assert!(took >= Duration::from_secs(1), "sync ack after {took:?}");
}

/// Case 38: in sync mode a sender that hangs up cancels the delivery: the subscriber sees its
/// connection closed, and nothing goes to the dead-letter sink.
fn sender_hang_up_cancels_sync_delivery(driver: Driver) {
    let s1 = Sink::start(vec![
        Reply::status(200).delay(Duration::from_secs(5)),
        Reply::status(200),
    ]);
    let d1 = Sink::ok();
    let dut = Dut::start(
        driver,
        &[c1().subscriber(Sub::to(&s1.url()).dead_letter(&d1.url()))],
    );

    let mut conn = dut.connect();
    conn.write_raw(&e1().to_bytes()).expect("send E1");
    let got = s1.wait_for(1, DELIVERY);
    // The sender gives up one second into the delivery.
    thread::sleep(Duration::from_secs(1));
    // Read the clock before hanging up: the dispatcher may react before this thread runs again.
    let hung_up = Instant::now();
    drop(conn);

    let closed = s1.wait_peer_closed(0, Duration::from_secs(3));
    assert!(
        closed >= hung_up,
        "S1's connection closed before the sender hung up"
    );
    assert!(
        closed.duration_since(hung_up) < Duration::from_secs(2),
        "S1's connection closed {:?} after the sender hung up",
        closed.duration_since(hung_up)
    );
    assert!(
        closed.duration_since(got[0].at) < Duration::from_millis(4500),
        "S1's connection was not closed before its answer was due"
    );
    // Give a wrongly started dead-letter call the time it would need to arrive.
    thread::sleep(Duration::from_millis(500));
    d1.assert_untouched();
    dut.send(&e1().id("after")).assert_status(202);
}

both_drivers!(
    async_channel_acks_before_delivery,
    async_annotation_accepts_parse_bool_true_spellings,
    async_annotation_yes_means_sync,
    async_annotation_change_applies_on_reload,
    sender_hang_up_cancels_sync_delivery,
);
