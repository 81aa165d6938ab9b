//! Overload (D11): past `--max-inflight-deliveries` the ingress answers 503 with `Retry-After: 1`
//! at once and memory stays flat, and it takes events again once deliveries drain; past
//! `--max-connections` new connections are turned away while open ones keep working.
//!
//! Both bounds are per worker; the harness runs every DUT with 2 workers.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use imc_e2e::*;

/// Each test here loads both cores on its own; they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `--max-inflight-deliveries`, and the most deliveries the DUT may hold with its 2 workers.
const BOUND: usize = 64;
const HELD_AT_MOST: usize = 2 * BOUND;

/// The dispatcher's resident memory must stay under this however many events are thrown at it.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// A 503 must come at once, not after some queueing.
const PROMPT: Duration = Duration::from_secs(1);

/// Releases the sink when dropped, so stalled requests end even when the test panics.
struct ReleaseOnDrop<'a>(&'a Sink);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One ingress answer as a sender saw it.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    took: Duration,
}

fn send(client: &mut KeepAlive, req: &Request) -> Result<Answer, String> {
    let start = Instant::now();
    let resp = client.request(req).map_err(|e| e.to_string())?;
    Ok(Answer {
        status: resp.status,
        retry_after: resp.header("retry-after").map(str::to_string),
        took: start.elapsed(),
    })
}

/// Runs `f` while sampling the DUT's resident memory every 20 ms; returns `f`'s result and the
/// largest sample in KiB.
fn with_peak_rss<T>(dut: &Dut, f: impl FnOnce() -> T) -> (T, u64) {
    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = dut.rss_kib();
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(dut.rss_kib());
                thread::sleep(Duration::from_millis(20));
            }
            peak.max(dut.rss_kib())
        });
        let out = f();
        done.store(true, Ordering::SeqCst);
        (out, sampler.join().expect("sampler thread"))
    })
}

/// Panics unless every answer is a 202 or a prompt 503 with `Retry-After: 1`; returns how many
/// were 202 and how many 503.
#[track_caller]
fn tally(answers: &[Result<Answer, String>]) -> (usize, usize) {
    let errors: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} requests failed: {errors:?}",
        errors.len()
    );
    let answers: Vec<&Answer> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let other: Vec<u16> = answers
        .iter()
        .map(|a| a.status)
        .filter(|s| *s != 202 && *s != 503)
        .collect();
    assert!(
        other.is_empty(),
        "answers other than 202 and 503: {other:?}"
    );
    let rejected: Vec<&&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    let bad_header: Vec<&Option<String>> = rejected
        .iter()
        .map(|a| &a.retry_after)
        .filter(|r| r.as_deref() != Some("1"))
        .collect();
    assert!(
        bad_header.is_empty(),
        "503s without `Retry-After: 1`: {bad_header:?}"
    );
    let slowest = rejected.iter().map(|a| a.took).max().unwrap_or_default();
    assert!(slowest < PROMPT, "a 503 took {slowest:?}");
    (answers.len() - rejected.len(), rejected.len())
}

/// An async channel whose subscriber never answers, flooded with 8000 events of 16 KiB (far more
/// memory than the limit if they were kept): at most the bound is accepted, the rest get a prompt
/// 503, memory stays under the limit, and once the subscriber answers again events are accepted.
fn async_flood_past_the_bound_gets_503_and_memory_stays_flat(driver: Driver) {
    let _serial = serial();
    let s1 = Sink::respond_keeping(&["ce-id"], |_, _| Reply::stall());
    let _release = ReleaseOnDrop(&s1);
    let dut = Dut::builder(driver)
        .channels(&[c1().async_handler("true").subscriber(Sub::to(&s1.url()))])
        .args(&["--max-inflight-deliveries", &BOUND.to_string()])
        .start();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024));
    let addr = dut.addr();

    let (answers, peak) = with_peak_rss(&dut, || {
        in_threads(8, |t| {
            let mut client = KeepAlive::new(addr);
            (0..1000)
                .map(|n| {
                    send(
                        &mut client,
                        &e1().id(&format!("f{t}-{n}")).body(body.as_str()),
                    )
                })
                .collect()
        })
    });

    let (accepted, rejected) = tally(&answers);
    eprintln!(
        "async flood ({driver:?}): {accepted} accepted, {rejected} rejected, peak RSS {peak} KiB"
    );
    assert!(
        (1..=HELD_AT_MOST).contains(&accepted),
        "{accepted} events accepted with {HELD_AT_MOST} deliveries allowed in flight ({rejected} rejected)"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB, limit {RSS_LIMIT_KIB} KiB"
    );
    s1.wait_until(
        DELIVERY,
        "every accepted event reaches the subscriber",
        |r| r.len() >= accepted,
    );
    assert_eq!(
        s1.count(),
        accepted,
        "the subscriber got more than was accepted"
    );

    s1.release();
    let mut n = 0;
    eventually(
        DELIVERY,
        "events are accepted again once deliveries drain",
        || {
            n += 1;
            (dut.send(&e1().id(&format!("again-{n}"))).status == 202).then_some(())
        },
    );
    let again = format!("again-{n}");
    s1.wait_until(DELIVERY, "the event accepted after the drain", |r| {
        r.iter().any(|r| r.id() == again)
    });
}

/// 200 senders, each with one event, against a sync channel whose subscriber never answers: the
/// senders past the bound get a prompt 503 while the others wait; when the subscriber answers
/// they get their 202.
fn sync_senders_past_the_bound_get_503(driver: Driver) {
    const SENDERS: usize = 200;
    let _serial = serial();
    let s1 = Sink::respond_keeping(&["ce-id"], |_, _| Reply::stall());
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .args(&["--max-inflight-deliveries", &BOUND.to_string()])
        .start();
    let addr = dut.addr();
    let answered = AtomicUsize::new(0);

    let (answers, peak) = thread::scope(|scope| {
        let release = ReleaseOnDrop(&s1);
        let answered = &answered;
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| {
                scope.spawn(move || {
                    let answer = send(&mut KeepAlive::new(addr), &e1().id(&format!("s{i}")));
                    answered.fetch_add(1, Ordering::SeqCst);
                    answer
                })
            })
            .collect();
        eventually(
            Duration::from_secs(10),
            "the senders past the bound are answered",
            || (answered.load(Ordering::SeqCst) >= SENDERS - HELD_AT_MOST).then_some(()),
        );
        let peak = dut.rss_kib();
        assert!(
            s1.count() <= HELD_AT_MOST,
            "{} deliveries in flight with {HELD_AT_MOST} allowed",
            s1.count()
        );
        drop(release);
        let answers: Vec<_> = senders
            .into_iter()
            .map(|s| s.join().expect("sender thread"))
            .collect();
        (answers, peak)
    });

    let (accepted, rejected) = tally(&answers);
    eprintln!(
        "sync senders ({driver:?}): {accepted} accepted, {rejected} rejected, RSS {peak} KiB"
    );
    assert!(
        accepted <= HELD_AT_MOST,
        "{accepted} accepted with {HELD_AT_MOST} deliveries allowed"
    );
    assert!(
        rejected >= SENDERS - HELD_AT_MOST,
        "only {rejected} of {SENDERS} rejected"
    );
    assert_eq!(
        s1.count(),
        accepted,
        "every accepted event was delivered once"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "RSS {peak} KiB, limit {RSS_LIMIT_KIB} KiB"
    );
    dut.send(&e1().id("after")).assert_status(202);
}

/// `--max-connections 4`: of 20 connections opened and kept, at most 4 per worker are served;
/// the others are closed or answered 503 at once; the served ones keep working, and once they
/// close new connections are served again.
fn connections_past_the_bound_are_turned_away(driver: Driver) {
    let _serial = serial();
    let dut = Dut::builder(driver)
        .channels(&[c1()])
        .args(&["--max-connections", "4"])
        .start();

    let mut served = Vec::new();
    let mut turned_away = Vec::new();
    for i in 0..20 {
        let Ok(mut conn) = Conn::try_open(dut.addr()) else {
            turned_away.push(format!("{i}: refused"));
            continue;
        };
        conn.set_read_timeout(PROMPT * 2);
        match conn.request(&kube_probe()) {
            Ok(resp) if resp.status == 204 => served.push(conn),
            Ok(resp) if resp.status == 503 => turned_away.push(format!("{i}: 503")),
            Ok(resp) => panic!("connection {i}: unexpected {resp:?}"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "connection {i} was neither served nor turned away within {:?}",
                    PROMPT * 2
                )
            }
            Err(_) => turned_away.push(format!("{i}: closed")),
        }
    }

    eprintln!(
        "max connections ({driver:?}): {} served, turned away: {turned_away:?}",
        served.len()
    );
    assert!(
        (1..=8).contains(&served.len()),
        "{} of 20 connections served with 4 per worker allowed; turned away: {turned_away:?}",
        served.len()
    );
    for conn in &mut served {
        conn.send(&e1()).assert_status(202);
    }
    drop(served);
    eventually(
        DELIVERY,
        "new connections are served once the others closed",
        || {
            let mut conn = Conn::try_open(dut.addr()).ok()?;
            conn.set_read_timeout(PROMPT * 2);
            (conn.request(&kube_probe()).ok()?.status == 204).then_some(())
        },
    );
}

both_drivers!(
    async_flood_past_the_bound_gets_503_and_memory_stays_flat,
    sync_senders_past_the_bound_get_503,
    connections_past_the_bound_are_turned_away,
);
