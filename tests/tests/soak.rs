//! Fault injection at volume: 50,000 events (`IMC_SOAK_EVENTS` to change) from 32 keep-alive
//! senders, against a subscriber whose every attempt may answer 5xx, hang up or stall past the
//! timeout, with `delivery: {retry: 2, timeout: PT0.5S, deadLetterSink}` and a dead-letter sink
//! that always succeeds. Afterwards every event is accounted for exactly once: acknowledged 202,
//! and either delivered with a 2xx on its last attempt or at the dead-letter sink, with
//! `knativeerrordest`, `knativeerrorcode` and `knativeerrordata` describing that last attempt.
//!
//! Each attempt's fault is a hash of the event id and the attempt number, so the check recomputes
//! what the subscriber did instead of recording it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use imc_e2e::*;

/// The two drivers' runs each load both cores; they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const SENDERS: usize = 32;

/// An answer written this long after the request arrived may have missed the 0.5 s timeout
/// through the sink's own fault (starved of CPU); a mismatch on such an attempt is excused.
const LATE: Duration = Duration::from_millis(300);

fn event_count() -> usize {
    std::env::var("IMC_SOAK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

/// What the subscriber does with one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Status(u16),
    HangUp,
    /// Answers only after 2 s, far past the timeout.
    Stall,
}

/// FNV-1a of the id and the attempt number, then a splitmix64 finish.
fn mix(id: &str, nth: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(nth.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// One event in 50 fails on every attempt, so the dead-letter path carries real volume.
fn doomed(id: &str) -> bool {
    mix(id, usize::MAX).is_multiple_of(50)
}

fn fault(id: &str, nth: usize) -> Fault {
    let x = mix(id, nth);
    let status = [500, 502, 503, 504][(x / 1000 % 4) as usize];
    match (doomed(id), x % 1000) {
        (true, 0..=599) => Fault::Status(status),
        (true, 600..=949) => Fault::HangUp,
        (true, _) => Fault::Stall,
        (false, 0..=799) => Fault::None,
        (false, 800..=919) => Fault::Status(status),
        (false, 920..=994) => Fault::HangUp,
        (false, _) => Fault::Stall,
    }
}

fn error_body(id: &str, nth: usize) -> String {
    format!("failed {id} attempt {nth}")
}

fn reply(id: &str, nth: usize) -> Reply {
    match fault(id, nth) {
        Fault::None => Reply::status(200),
        Fault::Status(code) => Reply::status(code).body(error_body(id, nth)),
        Fault::HangUp => Reply::hang_up(),
        Fault::Stall => Reply::status(200).delay(Duration::from_secs(2)),
    }
}

/// One request as the subscriber saw it.
struct Attempt {
    nth: usize,
    fault: Fault,
    answered: bool,
    late: bool,
}

/// One request as the dead-letter sink saw it.
struct DeadLetter {
    dest: Option<String>,
    code: Option<String>,
    data: Option<String>,
    late: bool,
}

fn is_late(r: &Recorded) -> bool {
    r.answered_at.is_some_and(|a| a.duration_since(r.at) > LATE)
}

/// What the event's dead letter must say, given its last attempt; `None` when it must have none.
fn expected_dead_letter(id: &str, last: &Attempt) -> Option<(String, Option<String>)> {
    match (last.fault, last.answered) {
        (Fault::None, true) => None,
        (Fault::Status(code), true) => Some((
            code.to_string(),
            Some(base64(error_body(id, last.nth).as_bytes())),
        )),
        // No HTTP response: 500 and a `dispatch error:` text, checked by prefix.
        _ => Some(("500".to_string(), None)),
    }
}

/// Why `id`'s record does not add up, if it does not.
fn account(
    id: &str,
    attempts: &[Attempt],
    letters: &[DeadLetter],
    subscriber: &str,
) -> Result<(), String> {
    let last = attempts
        .last()
        .ok_or_else(|| format!("{id}: never reached the subscriber"))?;
    let hang_ups = attempts.iter().filter(|a| a.fault == Fault::HangUp).count();
    if attempts.len() > 3 + hang_ups {
        return Err(format!(
            "{id}: {} requests for 3 attempts ({hang_ups} hang-ups)",
            attempts.len()
        ));
    }
    let Some((code, data)) = expected_dead_letter(id, last) else {
        return if letters.is_empty() {
            Ok(())
        } else {
            Err(format!("{id}: delivered and dead-lettered"))
        };
    };
    if attempts.len() < 3 {
        return Err(format!(
            "{id}: dead-letter expected after {} attempts, fewer than 3",
            attempts.len()
        ));
    }
    let letter = match letters {
        [] => {
            return Err(format!(
                "{id}: failed ({:?}) but never dead-lettered",
                last.fault
            ))
        }
        [one] => one,
        [first, ..] if first.late => first,
        many => return Err(format!("{id}: dead-lettered {} times", many.len())),
    };
    if letter.dest.as_deref() != Some(subscriber) {
        return Err(format!("{id}: knativeerrordest {:?}", letter.dest));
    }
    if letter.code.as_deref() != Some(code.as_str()) {
        return Err(format!(
            "{id}: knativeerrorcode {:?} after {:?}, expected {code}",
            letter.code, last.fault
        ));
    }
    let got = letter.data.as_deref().unwrap_or_default();
    match data {
        Some(data) if got == data => Ok(()),
        Some(data) => Err(format!("{id}: knativeerrordata {got:?}, expected {data:?}")),
        None => {
            let text = base64_decode(got).unwrap_or_default();
            if text.starts_with(b"dispatch error:") {
                Ok(())
            } else {
                Err(format!(
                    "{id}: knativeerrordata {got:?} after {:?}, expected base64 of `dispatch error: ...`",
                    last.fault
                ))
            }
        }
    }
}

fn every_accepted_event_is_delivered_or_dead_lettered_once(driver: Driver) {
    let _serial = serial();
    let s1 = Sink::respond_keeping(&["ce-id"], per_id(|req, nth| reply(req.id(), nth)));
    let d1 = Sink::respond_keeping(
        &[
            "ce-id",
            "ce-knativeerrordest",
            "ce-knativeerrorcode",
            "ce-knativeerrordata",
        ],
        |_, _| Reply::status(200),
    );
    let mut dut = Dut::start(
        driver,
        &[c1().subscriber(
            Sub::to(&s1.url())
                .retry(2)
                .timeout("PT0.5S")
                .dead_letter(&d1.url()),
        )],
    );
    let total = event_count();
    let addr = dut.addr();

    let start = Instant::now();
    let answers: Vec<(String, Result<u16, String>)> = in_threads(SENDERS, |t| {
        let mut client = KeepAlive::new(addr);
        (t..total)
            .step_by(SENDERS)
            .map(|i| {
                let id = format!("soak-{i}");
                let status = client
                    .request(&e1().id(&id))
                    .map(|r| r.status)
                    .map_err(|e| e.to_string());
                (id, status)
            })
            .collect()
    });
    let took = start.elapsed();
    dut.assert_alive();

    let mut attempts: HashMap<String, Vec<Attempt>> = HashMap::new();
    s1.inspect(|reqs| {
        for r in reqs {
            let list = attempts.entry(r.id().to_string()).or_default();
            let nth = list.len();
            let fault = fault(r.id(), nth);
            list.push(Attempt {
                nth,
                fault,
                answered: r.answered_at.is_some(),
                // A stall answers late on purpose; only a prompt answer can be late by accident.
                late: fault != Fault::Stall && is_late(r),
            });
        }
    });
    let mut letters: HashMap<String, Vec<DeadLetter>> = HashMap::new();
    d1.inspect(|reqs| {
        for r in reqs {
            letters
                .entry(r.id().to_string())
                .or_default()
                .push(DeadLetter {
                    dest: r.header("ce-knativeerrordest").map(str::to_string),
                    code: r.header("ce-knativeerrorcode").map(str::to_string),
                    data: r.header("ce-knativeerrordata").map(str::to_string),
                    late: is_late(r),
                });
        }
    });

    let sent: HashSet<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
    let mut problems: Vec<String> = attempts
        .keys()
        .chain(letters.keys())
        .filter(|id| !sent.contains(id.as_str()))
        .map(|id| format!("{id}: never sent"))
        .collect();
    let (mut delivered, mut dead_lettered, mut excused) = (0, 0, 0);
    for (id, answer) in &answers {
        if *answer != Ok(202) {
            problems.push(format!("{id}: ingress answered {answer:?}"));
            continue;
        }
        let tried = attempts.get(id).map_or(&[][..], Vec::as_slice);
        let lettered = letters.get(id).map_or(&[][..], Vec::as_slice);
        match account(id, tried, lettered, &s1.url()) {
            Ok(()) if lettered.is_empty() => delivered += 1,
            Ok(()) => dead_lettered += 1,
            // The sink itself answered too late for the timeout: the dispatcher was right.
            Err(_) if tried.last().is_some_and(|a| a.late) => excused += 1,
            Err(why) => problems.push(why),
        }
    }

    eprintln!(
        "soak ({driver:?}): {total} events in {took:?}: {delivered} delivered, {dead_lettered} \
         dead-lettered, {excused} excused (late sink), {} problems; {} subscriber requests, {} \
         dead letters",
        problems.len(),
        s1.count(),
        d1.count()
    );
    assert!(
        problems.is_empty(),
        "{} events do not add up; the first 20: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    assert!(
        excused <= total / 200,
        "{excused} events excused for a late sink: the machine was too loaded to judge"
    );
    assert!(
        delivered > 0 && dead_lettered > 0,
        "the fault mix did not exercise both outcomes"
    );
}

both_drivers!(every_accepted_event_is_delivered_or_dead_lettered_once);
