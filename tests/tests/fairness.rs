//! D18: the in-flight bound of D11 is shared fairly between channels. A channel may hold at most
//! `max / (k + 2)` of a worker's in-flight deliveries, `k` being the number of other channels
//! with deliveries in flight (and always at least one event when it has none in flight), so one
//! stuck subscriber cannot make every other channel answer 503.

use std::time::Duration;

use imc_e2e::*;

/// Releases the sink when dropped, so held deliveries end even when the test panics.
struct ReleaseOnDrop<'a>(&'a Sink);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// `--workers 1 --max-inflight-deliveries 4`. Channel A (async) has a subscriber that holds every
/// answer: of 4 events, the first 2 are accepted (4 / (0 + 2)) and the others get 503 with
/// `Retry-After: 1`. Channel B (sync, another namespace) is then still served: 202, delivered.
fn stuck_channel_cannot_take_the_whole_inflight_budget(driver: Driver) {
    let stuck = Sink::start(vec![Reply::stall()]);
    let _release = ReleaseOnDrop(&stuck);
    let calm = Sink::ok();
    let a = Channel::new("team-a", "stuck")
        .async_handler("true")
        .subscriber(Sub::to(&stuck.url()));
    let b = Channel::new("team-b", "calm").subscriber(Sub::to(&calm.url()));
    let dut = Dut::builder(driver)
        .workers(1)
        .channels(&[a.clone(), b.clone()])
        .args(&["--max-inflight-deliveries", "4"])
        .start();
    let mut conn = dut.connect();
    conn.set_read_timeout(Duration::from_secs(5));

    let to_a: Vec<Response> = (0..4)
        .map(|i| conn.send(&e1().id(&format!("a{i}")).target(&a.path())))
        .collect();
    let statuses: Vec<u16> = to_a.iter().map(|r| r.status).collect();
    // The accepted events hold their in-flight slots from acceptance on (their subscriber never
    // answers), so they are in flight when B comes.
    let to_b = conn.send(&e1().id("b").target(&b.path()));

    assert_eq!(
        (statuses.as_slice(), to_b.status),
        (&[202, 202, 503, 503][..], 202),
        "with 4 in-flight deliveries per worker, channel A (its subscriber holds every answer) \
         may take 4 / (0 + 2) = 2, and channel B must still be served: A's 4 events got \
         {statuses:?}, B's got {to_b:?}"
    );
    for r in &to_a[2..] {
        r.assert_header("retry-after", "1");
    }
    let got = calm.wait_for(1, DELIVERY);
    assert_e1_event(&got[0], "b");
    got[0].assert_header("kn-namespace", "team-b");
    stuck.wait_for(2, DELIVERY);
    assert_eq!(
        stuck.count(),
        2,
        "only the 2 accepted events reach A's subscriber"
    );
}

both_drivers!(stuck_channel_cannot_take_the_whole_inflight_budget);
