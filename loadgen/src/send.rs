//! `imc-loadgen send`: posts CloudEvents and measures the answers.
//!
//! One monoio runtime per thread; each thread drives its share of the connections. A connection
//! has one request in flight at a time (as wrk does): in the closed loop it sends the next event
//! when the previous one is answered; in the open loop events are due at fixed instants (the rate
//! split across threads) and a connection takes the next due slot when it is free, so a slow
//! answer delays the events behind it and their latency counts from when they were due, not from
//! when they could be written (coordinated omission corrected, as wrk2 does).
//!
//! Budget per request: no allocation and no formatting: the connection's copy of the template
//! gets its id patched in place, and the response is read into a reused buffer. Three clock reads
//! (the stop check, the write, the answer), one shared atomic (the id counter), and two histogram
//! records (the run's and the second's).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use imc_dispatcher::buffer::read_into;
use imc_dispatcher::http::{parse_response, ChunkedDecoder, HeadScan};
use imc_dispatcher::worker::Driver;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::event::{EventSpec, Template, ID_LIMIT};
use crate::report::{percentile_curve, Errors, IdRange, Latency, RunReport, Second};

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;
/// A response head larger than this is a protocol error.
const MAX_RESPONSE_HEAD: usize = 64 << 10;
/// Back-off after a failed connect, so a refused port is not hammered in a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct SendOpts {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The URL as given, for the report.
    pub target: String,
    pub event: EventSpec,
    pub connections: usize,
    pub threads: usize,
    /// Open loop: events per second over all threads.
    pub rate: Option<f64>,
    /// Measured time (after the warm-up). With `count`, whichever ends first.
    pub duration: Option<Duration>,
    /// Events to send in all, warm-up included.
    pub count: Option<u64>,
    pub warmup: Duration,
    pub id_start: u64,
    pub timeout: Duration,
    pub driver: Driver,
    /// Print a progress line every second (on a TTY).
    pub progress: bool,
    pub command: String,
}

/// State shared by every thread.
struct Shared {
    next_id: AtomicU64,
    id_end: u64,
    /// Set when the run ends early (Ctrl-C) or once every connection must stop.
    stop: AtomicBool,
    /// When the load starts; the measured interval starts `warmup` later.
    start: Instant,
    t0: Instant,
    /// No new request is sent after this instant.
    t_end: Option<Instant>,
    /// Some connection has been made: from then on, failed connects are counted as errors and
    /// retried; before, the run gives up after `--timeout` (nothing listens there).
    connected: AtomicBool,
    gave_up: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// The next event id, or `None` once `--count` events have been taken.
    #[inline]
    fn take_id(&self) -> Option<u64> {
        // Relaxed: ids only need to be unique; nothing else is published through this counter.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id < self.id_end {
            Some(id)
        } else {
            // Leave the counter at the end so the id range reported is exact.
            self.next_id.fetch_min(self.id_end, Ordering::Relaxed);
            None
        }
    }

    fn over(&self, now: Instant) -> bool {
        self.stop.load(Ordering::Relaxed) || self.t_end.is_some_and(|t| now >= t)
    }
}

/// What one thread accumulated over one second, sent to the main thread.
struct Tick {
    /// 1-based second of the measured interval (the thread's final tick: a partial second).
    second: u64,
    requests: u64,
    errors: u64,
    hist: Histogram<u64>,
}

/// One thread's figures.
struct Stats {
    hist: Histogram<u64>,
    /// This second's latencies (2 significant digits: enough for the per-second p99).
    interval: Histogram<u64>,
    interval_requests: u64,
    interval_errors: u64,
    requests: u64,
    ok: u64,
    bytes: u64,
    errors: Errors,
    last_answer: Option<Instant>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("histogram bounds"),
            interval: Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("histogram bounds"),
            interval_requests: 0,
            interval_errors: 0,
            requests: 0,
            ok: 0,
            bytes: 0,
            errors: Errors::default(),
            last_answer: None,
        }
    }
}

struct Thread {
    shared: Arc<Shared>,
    opts: Arc<SendOpts>,
    template: Rc<Template>,
    stats: RefCell<Stats>,
    /// Open loop: the next due slot of this thread and the interval between slots.
    next_slot: Cell<u64>,
    slot_ns: Option<f64>,
    live: Cell<usize>,
}

/// How one request ended.
enum Outcome {
    Answered { status: u16, keep_alive: bool },
    Io,
    Protocol,
    Timeout,
}

impl Thread {
    /// Records an answered or failed request that ended at `now` and counts from `from`.
    fn record(&self, from: Instant, now: Instant, outcome: &Outcome) {
        if now < self.shared.t0 {
            return; // warm-up
        }
        let mut s = self.stats.borrow_mut();
        s.last_answer = Some(now);
        match *outcome {
            Outcome::Answered { status, .. } => {
                let us = (now.saturating_duration_since(from).as_micros() as u64).max(1);
                s.hist.saturating_record(us);
                s.interval.saturating_record(us);
                s.requests += 1;
                s.interval_requests += 1;
                s.bytes += self.template.bytes.len() as u64;
                if (200..300).contains(&status) {
                    s.ok += 1;
                } else {
                    *s.errors.status.entry(status).or_default() += 1;
                    s.interval_errors += 1;
                }
            }
            Outcome::Io | Outcome::Protocol | Outcome::Timeout => {
                let e = &mut s.errors;
                *match outcome {
                    Outcome::Io => &mut e.io,
                    Outcome::Protocol => &mut e.protocol,
                    _ => &mut e.timeout,
                } += 1;
                s.interval_errors += 1;
            }
        }
    }

    fn connect_failed(&self, e: &io::Error) {
        let sh = &self.shared;
        if !sh.connected.load(Ordering::Relaxed) && sh.start.elapsed() >= self.opts.timeout {
            let mut g = sh.gave_up.lock().unwrap_or_else(|p| p.into_inner());
            g.get_or_insert_with(|| {
                format!(
                    "cannot connect to {} for {:?}: {e}",
                    self.opts.addr, self.opts.timeout
                )
            });
            sh.stop.store(true, Ordering::Relaxed);
        }
        if Instant::now() >= sh.t0 {
            let mut s = self.stats.borrow_mut();
            s.errors.connect += 1;
            s.interval_errors += 1;
        }
    }

    /// Open loop: the instant the next event of this thread is due.
    fn next_due(&self, slot_ns: f64) -> Instant {
        let k = self.next_slot.get();
        self.next_slot.set(k + 1);
        self.shared.start + Duration::from_nanos((k as f64 * slot_ns) as u64)
    }

    fn tick(&self, tx: &mpsc::Sender<Tick>, second: u64) {
        let mut s = self.stats.borrow_mut();
        let hist = s.interval.clone();
        s.interval.reset();
        let t = Tick {
            second,
            requests: std::mem::take(&mut s.interval_requests),
            errors: std::mem::take(&mut s.interval_errors),
            hist,
        };
        let _ = tx.send(t);
    }
}

/// Reads one response from `stream`; `scratch` takes a chunked body, which is dropped.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    scratch: &mut BytesMut,
) -> Outcome {
    let mut scan = HeadScan::default();
    loop {
        match parse_response(buf, MAX_RESPONSE_HEAD, &mut scan) {
            Ok(Some(head)) => {
                let _ = buf.split_to(head.len);
                if (100..200).contains(&head.status) {
                    continue; // interim answer: the final one follows
                }
                let keep_alive = head.keep_alive;
                let status = head.status;
                if head.bodiless() {
                    return Outcome::Answered { status, keep_alive };
                }
                if head.chunked {
                    let mut dec = ChunkedDecoder::default();
                    loop {
                        scratch.clear();
                        match dec.decode(buf, scratch, usize::MAX >> 1) {
                            Ok(true) => return Outcome::Answered { status, keep_alive },
                            Ok(false) => {}
                            Err(_) => return Outcome::Protocol,
                        }
                        match read_into(stream, buf, 4096, 16 << 10).await {
                            Ok(0) | Err(_) => return Outcome::Io,
                            Ok(_) => {}
                        }
                    }
                }
                match head.content_length {
                    Some(n) => {
                        let mut left = n as usize;
                        loop {
                            let k = left.min(buf.len());
                            let _ = buf.split_to(k);
                            left -= k;
                            if left == 0 {
                                return Outcome::Answered { status, keep_alive };
                            }
                            match read_into(stream, buf, left, 64 << 10).await {
                                Ok(0) | Err(_) => return Outcome::Io,
                                Ok(_) => {}
                            }
                        }
                    }
                    None => {
                        // The body runs to the end of the connection.
                        loop {
                            buf.clear();
                            match read_into(stream, buf, 4096, 16 << 10).await {
                                Ok(0) => {
                                    return Outcome::Answered {
                                        status,
                                        keep_alive: false,
                                    }
                                }
                                Err(_) => return Outcome::Io,
                                Ok(_) => {}
                            }
                        }
                    }
                }
            }
            Ok(None) => match read_into(stream, buf, 4096, 16 << 10).await {
                Ok(0) | Err(_) => return Outcome::Io,
                Ok(_) => {}
            },
            Err(_) => return Outcome::Protocol,
        }
    }
}

async fn connection(t: Rc<Thread>) {
    // The connection's own copy of the request: its id is patched before every write, and the
    // buffer goes to the kernel and comes back without being reallocated.
    let mut req = t.template.bytes.clone();
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut scratch = BytesMut::new();
    let mut stream: Option<TcpStream> = None;
    let opts = &t.opts;
    loop {
        let due = match t.slot_ns {
            Some(ns) => {
                let due = t.next_due(ns);
                // The timer has a 1 ms resolution and rounds up: wake up to 1 ms early rather
                // than late, and count latency from the write when it is earlier than the due
                // time (see `from` below).
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    if wait > Duration::from_millis(1) {
                        monoio::time::sleep(wait - Duration::from_millis(1)).await;
                    }
                }
                Some(due)
            }
            None => None,
        };
        if t.shared.over(Instant::now()) {
            break;
        }
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(opts.addr).await {
                Ok(s) => {
                    t.shared.connected.store(true, Ordering::Relaxed);
                    let _ = s.set_nodelay(true);
                    buf.clear();
                    stream.insert(s)
                }
                Err(e) => {
                    t.connect_failed(&e);
                    monoio::time::sleep(CONNECT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(id) = t.shared.take_id() else { break };
        t.template.set_id(&mut req, id);
        let sent = Instant::now();
        let (res, back) = s.write_all(req).await;
        req = back;
        let outcome = if res.is_err() {
            Outcome::Io
        } else {
            match monoio::time::timeout(opts.timeout, read_response(s, &mut buf, &mut scratch))
                .await
            {
                Ok(o) => o,
                Err(_) => Outcome::Timeout,
            }
        };
        let now = Instant::now();
        let from = due.map_or(sent, |d| d.min(sent));
        t.record(from, now, &outcome);
        match outcome {
            Outcome::Answered {
                keep_alive: true, ..
            } => {}
            _ => {
                stream = None;
                buf = BytesMut::with_capacity(16 << 10);
            }
        }
    }
    t.live.set(t.live.get() - 1);
}

async fn thread_main(t: Rc<Thread>, conns: usize, tx: mpsc::Sender<Tick>) {
    t.live.set(conns);
    for _ in 0..conns {
        monoio::spawn(connection(t.clone()));
    }
    let mut second = 0u64;
    loop {
        // Per-second ticks aligned on the start of the measured interval.
        let next = t.shared.t0 + Duration::from_secs(second + 1);
        while t.live.get() > 0 && Instant::now() < next {
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            monoio::time::sleep(wait).await;
        }
        if t.live.get() == 0 {
            t.tick(&tx, second + 1);
            return;
        }
        if Instant::now() >= t.shared.t0 {
            second += 1;
            t.tick(&tx, second);
        }
    }
}

/// Per-second totals over all threads.
#[derive(Default)]
struct SecondAcc {
    requests: u64,
    errors: u64,
    hist: Option<Histogram<u64>>,
    reported: usize,
}

/// Runs the load and returns the report. `stop` ends it early (Ctrl-C); what was sent until then
/// is reported.
pub fn run(opts: SendOpts, stop: Arc<AtomicBool>) -> io::Result<RunReport> {
    let threads = opts.threads.clamp(1, opts.connections.max(1));
    let id_end = match opts.count {
        Some(n) => opts.id_start.saturating_add(n),
        None => ID_LIMIT,
    };
    if id_end > ID_LIMIT {
        return Err(io::Error::other(format!(
            "ids must stay below {ID_LIMIT}: --id-start + --count is too large"
        )));
    }
    let template = Template::new(&opts.event);
    let start = Instant::now();
    let t0 = start + opts.warmup;
    let shared = Arc::new(Shared {
        next_id: AtomicU64::new(opts.id_start),
        id_end,
        stop: AtomicBool::new(false),
        start,
        t0,
        t_end: opts.duration.map(|d| t0 + d),
        connected: AtomicBool::new(false),
        gave_up: std::sync::Mutex::new(None),
    });
    let started_at = SystemTime::now() + opts.warmup;
    let opts = Arc::new(opts);
    let (tx, rx) = mpsc::channel::<Tick>();
    let mut handles = Vec::new();
    for i in 0..threads {
        let conns = opts.connections / threads + usize::from(i < opts.connections % threads);
        let (shared, opts, tx, template) =
            (shared.clone(), opts.clone(), tx.clone(), template.clone());
        let h = std::thread::Builder::new()
            .name(format!("send-{i}"))
            .spawn(move || -> io::Result<Stats> {
                let driver = opts.driver;
                let slot_ns = opts.rate.map(|r| 1e9 * threads as f64 / r);
                crate::rt::block_on(driver, move || async move {
                    let t = Rc::new(Thread {
                        shared,
                        opts,
                        template: Rc::new(template),
                        stats: RefCell::new(Stats::new()),
                        next_slot: Cell::new(0),
                        slot_ns,
                        live: Cell::new(0),
                    });
                    thread_main(t.clone(), conns, tx).await;
                    Rc::try_unwrap(t)
                        .ok()
                        .expect("every connection task has ended")
                        .stats
                        .into_inner()
                })
            })?;
        handles.push(h);
    }
    drop(tx);

    // Merge the ticks into seconds; print the progress line once a second is complete.
    let mut acc: Vec<SecondAcc> = Vec::new();
    let mut so_far = Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 2).expect("bounds");
    let mut errors_so_far = 0u64;
    let mut shown = 0usize;
    let progress = opts.progress;
    loop {
        if stop.load(Ordering::Relaxed) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(tick) => {
                let i = (tick.second.max(1) - 1) as usize;
                if acc.len() <= i {
                    acc.resize_with(i + 1, SecondAcc::default);
                }
                let a = &mut acc[i];
                a.requests += tick.requests;
                a.errors += tick.errors;
                errors_so_far += tick.errors;
                so_far.add(&tick.hist).expect("same bounds");
                match &mut a.hist {
                    Some(h) => h.add(&tick.hist).expect("same bounds"),
                    None => a.hist = Some(tick.hist),
                }
                a.reported += 1;
                while progress && shown < acc.len() && acc[shown].reported >= threads {
                    let a = &acc[shown];
                    shown += 1;
                    eprint!(
                        "\r[{shown:>4}s] {:>9} req/s  {:>6} errors  p99 so far {:>8.2} ms   ",
                        a.requests,
                        errors_so_far,
                        so_far.value_at_quantile(0.99) as f64 / 1000.0
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if progress && shown > 0 {
        eprintln!();
    }
    let mut stats = Vec::new();
    for h in handles {
        stats.push(
            h.join()
                .map_err(|_| io::Error::other("a sender thread panicked"))??,
        );
    }
    if let Some(e) = shared
        .gave_up
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(io::Error::other(e));
    }

    let mut hist = Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 3).expect("bounds");
    let mut errors = Errors::default();
    let (mut requests, mut ok, mut bytes) = (0, 0, 0);
    let mut last = t0;
    for s in &stats {
        hist.add(&s.hist).expect("same bounds");
        errors.merge(&s.errors);
        requests += s.requests;
        ok += s.ok;
        bytes += s.bytes;
        if let Some(l) = s.last_answer {
            last = last.max(l);
        }
    }
    let duration_s = last.saturating_duration_since(t0).as_secs_f64();
    let timeline = acc
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let q = |p: f64| {
                a.hist
                    .as_ref()
                    .map_or(0.0, |h| h.value_at_quantile(p) as f64)
            };
            Second {
                t: ((i + 1) as f64).min(duration_s.max(i as f64)),
                requests: a.requests,
                errors: a.errors,
                p50_us: q(0.5),
                p99_us: q(0.99),
                max_us: a.hist.as_ref().map_or(0.0, |h| h.max() as f64),
            }
        })
        .collect();
    let ids_end = shared.next_id.load(Ordering::Relaxed).min(id_end);
    Ok(RunReport {
        target: opts.target.clone(),
        host: opts.event.host.clone(),
        mode: if opts.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        encoding: opts.event.encoding.to_string(),
        event_size: opts.event.size,
        connections: opts.connections,
        threads,
        rate: opts.rate,
        warmup_s: opts.warmup.as_secs_f64(),
        duration_s,
        driver: opts.driver.name().into(),
        started_at: rfc3339(started_at),
        command: opts.command.clone(),
        requests,
        ok,
        rps: if duration_s > 0.0 {
            requests as f64 / duration_s
        } else {
            0.0
        },
        bytes_sent: bytes,
        errors,
        ids: IdRange {
            start: opts.id_start,
            end: ids_end,
        },
        latency: Latency::from_hist(&hist),
        percentiles: percentile_curve(&hist),
        timeline,
    })
}

/// `t` as RFC 3339 UTC.
pub fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map_or_else(|_| String::new(), |ts| ts.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    }
}
