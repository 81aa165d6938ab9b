//! SIGTERM: the dispatcher stops taking new work, tells probes it is going, finishes every event
//! it accepted (retries, replies and dead letters included) and exits 0; if the grace period runs
//! out first it says how much it abandoned and exits non-zero (D13, `--shutdown-grace`).

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use imc_e2e::*;

/// Each test here loads both cores on its own; they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const SENDERS: usize = 32;
const GRACE: Duration = Duration::from_secs(20);

/// Sets the flag when dropped, so sender threads stop even when the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Ids are `t<thread>-<n>`; even `n` succeed through a reply, odd `n` end at the dead-letter sink.
fn is_even(id: &str) -> bool {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n % 2 == 0)
}

/// A delivery chain slow enough that SIGTERM finds events at every stage of it:
/// - even events: S answers 503 after 0.1 s; after a 0.5 s backoff, 200 with a reply event after
///   0.2 s; R accepts the reply after 0.1 s;
/// - odd events: S answers 500 after 0.1 s, twice; D accepts the dead letter after 0.2 s.
struct Chain {
    s: Sink,
    r: Sink,
    d: Sink,
}

impl Chain {
    fn new() -> Chain {
        let ms = Duration::from_millis;
        let s = Sink::respond_keeping(
            &["ce-id"],
            per_id(move |req, nth| {
                if !is_even(req.id()) {
                    Reply::status(500).delay(ms(100))
                } else if nth == 0 {
                    Reply::status(503).delay(ms(100))
                } else {
                    Reply::binary_event(200, &format!("reply-{}", req.id()), "/s", "t.reply")
                        .header("Content-Type", "text/plain")
                        .body("r")
                        .delay(ms(200))
                }
            }),
        );
        let r = Sink::respond_keeping(&["ce-id"], move |_, _| Reply::status(200).delay(ms(100)));
        let d = Sink::respond_keeping(&["ce-id"], move |_, _| Reply::status(200).delay(ms(200)));
        Chain { s, r, d }
    }

    fn channel(&self) -> Channel {
        c1().subscriber(
            Sub::to(&self.s.url())
                .reply(&self.r.url())
                .retry(1)
                .exponential("PT0.5S")
                .dead_letter(&self.d.url()),
        )
    }

    /// Ids whose chain has finished: the reply (even) or dead letter (odd) was answered.
    fn finished(&self) -> HashSet<String> {
        let answered = |sink: &Sink| {
            sink.inspect(|reqs| {
                reqs.iter()
                    .filter(|r| r.answered_at.is_some())
                    .map(|r| r.id().trim_start_matches("reply-").to_string())
                    .collect::<Vec<_>>()
            })
        };
        answered(&self.r)
            .into_iter()
            .chain(answered(&self.d))
            .collect()
    }

    /// How many chains had finished by `t`.
    fn finished_by(&self, t: Instant) -> usize {
        let count = |sink: &Sink| {
            sink.inspect(|reqs| {
                reqs.iter()
                    .filter(|r| r.answered_at.is_some_and(|a| a < t))
                    .count()
            })
        };
        count(&self.r) + count(&self.d)
    }
}

/// What a sender saw for one event.
struct Sent {
    id: String,
    started: Instant,
    ended: Instant,
    /// Sent on a connection that had already carried a request (so certainly accepted by then).
    reused: bool,
    outcome: Result<u16, String>,
}

/// Sends E1 with ids `t<thread>-0, 1, ...` on one keep-alive connection until anything but a 202
/// comes back, or `stop` is set.
fn send_until_turned_away(addr: SocketAddr, thread: usize, stop: &AtomicBool) -> Vec<Sent> {
    let mut client = KeepAlive::new(addr);
    let mut sent = Vec::new();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let id = format!("t{thread}-{n}");
        let reused = client.is_connected();
        let started = Instant::now();
        let outcome = client
            .request(&e1().id(&id))
            .map(|r| r.status)
            .map_err(|e| e.to_string());
        let turned_away = outcome != Ok(202);
        sent.push(Sent {
            id,
            started,
            ended: Instant::now(),
            reused,
            outcome,
        });
        if turned_away {
            break;
        }
    }
    sent
}

/// What a new connection gets after SIGTERM.
#[derive(Debug)]
enum Seen {
    Refused,
    Closed,
    Hung,
    Answer(u16, String),
}

fn on_new_connection(addr: SocketAddr, req: &Request) -> Seen {
    let Ok(mut conn) = Conn::try_open(addr) else {
        return Seen::Refused;
    };
    conn.set_read_timeout(Duration::from_secs(2));
    match conn.request(req) {
        Ok(resp) => Seen::Answer(resp.status, String::from_utf8_lossy(&resp.body).into()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Seen::Hung,
        Err(_) => Seen::Closed,
    }
}

/// After SIGTERM: probes stop answering 204 within 2 s of the signal, and are then refused, closed,
/// or answered 503 `shutting down`; within 1 s more every listener is closed (connecting is
/// refused), and an event on a new connection is not accepted. Returns what went wrong.
///
/// Workers notice the signal independently, so a connection made in the first moments may still
/// be served; the check only looks at events once the port refuses connections.
fn check_draining(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let probe = loop {
        match on_new_connection(addr, &kube_probe()) {
            Seen::Answer(204, _) if Instant::now() < deadline => {}
            seen => break seen,
        }
    };
    match &probe {
        Seen::Refused | Seen::Closed => {}
        Seen::Answer(503, body) if body.trim() == "shutting down" => {}
        other => return Err(format!("a probe after SIGTERM got {other:?}")),
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        if Instant::now() > deadline {
            return Err("connections are still accepted 1 s after draining began".into());
        }
        thread::sleep(Duration::from_millis(10));
    }
    match on_new_connection(addr, &e1().id("after-sigterm")) {
        Seen::Refused | Seen::Closed | Seen::Answer(503, _) => Ok(()),
        other => Err(format!(
            "an event on a new connection after SIGTERM got {other:?}"
        )),
    }
}

/// Many senders against a slow chain with retries, replies and dead letters; SIGTERM in the
/// middle. Every event that got 202 finished its chain, every event already being handled got
/// 202, no new work was taken, and the process exits 0.
fn sigterm_finishes_every_accepted_event(driver: Driver) {
    let _serial = serial();
    let chain = Chain::new();
    let mut dut = Dut::builder(driver)
        .channels(&[chain.channel()])
        .args(&["--shutdown-grace", "20s"])
        .start();
    let addr = dut.addr();
    let stop = AtomicBool::new(false);

    let (sent, exit, term_at, draining) = thread::scope(|scope| {
        let stop = &stop;
        let _stop = StopOnDrop(stop);
        let senders: Vec<_> = (0..SENDERS)
            .map(|t| scope.spawn(move || send_until_turned_away(addr, t, stop)))
            .collect();
        chain
            .s
            .wait_until(Duration::from_secs(10), "load builds up", |r| {
                r.len() >= 2 * SENDERS
            });
        dut.signal("TERM");
        let term_at = Instant::now();
        let draining = check_draining(addr);
        let exit = dut.wait_exit(GRACE + Duration::from_secs(10));
        stop.store(true, Ordering::SeqCst);
        let sent: Vec<Sent> = senders
            .into_iter()
            .flat_map(|s| s.join().expect("sender thread"))
            .collect();
        (sent, exit, term_at, draining)
    });

    let exit = exit.expect("the dispatcher did not exit within the grace period");
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    draining.unwrap();
    let finished = chain.finished();
    let accepted: Vec<&Sent> = sent.iter().filter(|s| s.outcome == Ok(202)).collect();
    let lost: Vec<&str> = accepted
        .iter()
        .filter(|s| !finished.contains(&s.id))
        .map(|s| s.id.as_str())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} accepted events never finished: {lost:?}",
        lost.len(),
        accepted.len()
    );
    let margin = Duration::from_millis(100);
    let dropped: Vec<(&str, &Result<u16, String>)> = sent
        .iter()
        .filter(|s| s.reused && s.started + margin < term_at && s.outcome != Ok(202))
        .map(|s| (s.id.as_str(), &s.outcome))
        .collect();
    assert!(
        dropped.is_empty(),
        "events being handled at SIGTERM were not acknowledged: {dropped:?}"
    );
    let in_flight = sent
        .iter()
        .filter(|s| s.started < term_at && s.ended > term_at && s.outcome == Ok(202))
        .count();
    assert!(
        in_flight >= SENDERS / 4,
        "only {in_flight} events were being handled at SIGTERM; the test did not test the drain"
    );
}

/// Async channel: events acknowledged before SIGTERM are still delivered in full afterwards.
fn sigterm_finishes_async_events_in_the_background(driver: Driver) {
    let _serial = serial();
    let chain = Chain::new();
    let mut dut = Dut::builder(driver)
        .channels(&[chain.channel().async_handler("true")])
        .args(&["--shutdown-grace", "20s"])
        .start();
    let addr = dut.addr();

    let sent: Vec<(String, u16)> = in_threads(8, |t| {
        let mut client = KeepAlive::new(addr);
        (0..20)
            .map(|n| {
                let id = format!("t{t}-{n}");
                let resp = client.request(&e1().id(&id)).expect("send");
                (id, resp.status)
            })
            .collect()
    });
    dut.signal("TERM");
    let term_at = Instant::now();
    let draining = check_draining(addr);
    let exit = dut.wait_exit(GRACE + Duration::from_secs(10));

    let exit = exit.expect("the dispatcher did not exit within the grace period");
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    draining.unwrap();
    let accepted: Vec<&str> = sent
        .iter()
        .filter(|(_, status)| *status == 202)
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        accepted.len() >= 64,
        "only {} of {} events accepted: {sent:?}",
        accepted.len(),
        sent.len()
    );
    let unfinished_at_term = accepted.len() - chain.finished_by(term_at).min(accepted.len());
    assert!(
        unfinished_at_term > 0,
        "every chain had finished before SIGTERM; the test did not test the drain"
    );
    let finished = chain.finished();
    let lost: Vec<&str> = accepted
        .iter()
        .filter(|id| !finished.contains(**id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} accepted events never finished ({unfinished_at_term} were unfinished at SIGTERM): {lost:?}",
        lost.len(),
        accepted.len()
    );
}

/// A grace period shorter than a delivery: the process gives up when it ends, says how many
/// deliveries it abandoned, and exits non-zero (not killed by the signal).
fn grace_period_ends_with_abandoned_deliveries(driver: Driver) {
    let _serial = serial();
    let s1 = Sink::start(vec![Reply::status(200).delay(Duration::from_secs(10))]);
    let mut dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .args(&["--shutdown-grace", "1s"])
        .start();
    let mut conn = dut.connect();
    conn.write_raw(&e1().to_bytes()).expect("send E1");
    s1.wait_for(1, DELIVERY);

    dut.signal("TERM");
    let term_at = Instant::now();
    let exit = dut.wait_exit(Duration::from_secs(8));
    let took = term_at.elapsed();

    let exit = exit.expect("the dispatcher did not exit within 8 s of SIGTERM with a 1 s grace");
    assert!(
        took >= Duration::from_millis(800),
        "exited {took:?} after SIGTERM, before the grace period ended"
    );
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM"
    );
    match exit.code() {
        Some(0) => panic!("exit status 0 with a delivery abandoned"),
        Some(_) => {}
        None => panic!("killed by a signal ({exit}): SIGTERM is not handled"),
    }
    let line = dut
        .wait_log(0, Duration::from_secs(2), |l| l.contains("abandoned"))
        .expect("no log line says what was abandoned");
    let counts_one = line.split(|c: char| !c.is_ascii_digit()).any(|n| n == "1");
    assert!(counts_one, "the line does not give the count 1: {line}");
}

/// Nothing in flight: SIGTERM closes idle keep-alive connections and the process exits 0 at once,
/// without waiting out the grace period.
fn idle_dispatcher_exits_at_once(driver: Driver) {
    let _serial = serial();
    let s1 = Sink::ok();
    let mut dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .args(&["--shutdown-grace", "20s"])
        .start();
    let mut idle = dut.connect();
    idle.send(&e1()).assert_status(202);

    dut.signal("TERM");
    let closed = idle.wait_closed(Duration::from_secs(3));
    let exit = dut.wait_exit(Duration::from_secs(3));

    assert!(closed.is_some(), "the idle connection was left open");
    let exit = exit.expect("an idle dispatcher did not exit within 3 s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
}

both_drivers!(
    sigterm_finishes_every_accepted_event,
    sigterm_finishes_async_events_in_the_background,
    grace_period_ends_with_abandoned_deliveries,
    idle_dispatcher_exits_at_once,
);
