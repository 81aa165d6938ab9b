//! `imc-loadgen sink`: a fast receiver that counts deliveries per event id.
//!
//! One `SO_REUSEPORT` listener and one monoio runtime per thread, as in the dispatcher. A request
//! costs no allocation in the steady state: the head is parsed in place, the id is read from the
//! `ce-id` header (binary mode) or the document's `"id"` (structured mode) and counted, and the
//! answer is a prebuilt byte string.
//!
//! Accounting is on *accepted* deliveries (answered 2xx): a delivery the sink refused (a fault) is
//! the dispatcher's to retry, so with faults injected every expected id must still be accepted
//! exactly once. Ids in the `--expect START..END` range are counted in one array of atomic
//! counters; others (ids from another sender, UUIDs) in maps sharded by id, up to a bound.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use imc_dispatcher::buffer::read_into;
use imc_dispatcher::http::{self, parse_request, ChunkedDecoder, Method, RequestHead};
use imc_dispatcher::worker::Driver;
use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};
use serde::Serialize;

use crate::report::IdRange;

const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 128;
const MAX_BODY: u64 = 64 << 20;
/// Ids listed in a report (the counts are always complete).
const LISTED: usize = 20;
/// Distinct ids outside the expected range tracked in all; beyond it they are only counted.
const OTHER_IDS_CAP: usize = 1 << 20;
/// Shards of the ids outside the expected range. An id always lands in the same shard, whichever
/// thread received it: a redelivery comes on any connection, so on any thread, and must still
/// meet the first delivery's count.
const SHARDS: usize = 16;

#[derive(Debug, Clone)]
pub struct SinkOpts {
    pub listen: SocketAddr,
    pub threads: usize,
    pub driver: Driver,
    /// The answer to an accepted event.
    pub status: u16,
    /// The share of events answered `fail_status` instead.
    pub fail_rate: f64,
    pub fail_status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
    /// The share of events answered by resetting the connection (RST, no answer).
    pub reset_rate: f64,
    /// The share of events never answered: the connection is held until the peer closes it.
    pub stall_rate: f64,
    /// Seed of the fault draws (each thread draws from `seed + thread`).
    pub seed: u64,
    /// The id range a sender reported; ids in it are checked exactly-once.
    pub expect: Option<IdRange>,
    /// Print each event the way Knative's event_display does.
    pub display: bool,
}

/// One thread's counters; only that thread writes them.
#[derive(Default)]
#[repr(align(64))] // one cache line each: the threads do not share lines they write
struct Counters {
    received: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    reset: AtomicU64,
    stalled: AtomicU64,
    without_id: AtomicU64,
    bad_requests: AtomicU64,
    /// Accepted ids outside the expected range.
    unexpected: AtomicU64,
    /// Nanoseconds after start of the first and last accepted delivery (0: none yet).
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// Ids seen outside the expected range, one shard of them.
#[derive(Default)]
struct OtherIds {
    numeric: HashMap<u64, u32>,
    text: HashMap<Box<str>, u32>,
    untracked: u64,
}

pub struct Sink {
    opts: SinkOpts,
    start: Instant,
    counters: Vec<Counters>,
    /// Accepted deliveries per id of the expected range.
    expected: Vec<AtomicU32>,
    /// Ids outside the expected range, in [`SHARDS`] shards by id (see [`Sink::shard`]): two
    /// threads contend only when they accept ids of the same shard at the same moment.
    others: Vec<Mutex<OtherIds>>,
    /// Picks the shard of a text id.
    shard_hasher: std::collections::hash_map::RandomState,
    /// Ids of the expected range accepted at least once (for the completion check).
    distinct: AtomicU64,
    /// Where the listeners are bound.
    pub addr: SocketAddr,
}

/// What `GET /report` returns and what the sink prints when it stops.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    pub received: u64,
    pub accepted: u64,
    pub failed: u64,
    pub reset: u64,
    pub stalled: u64,
    pub without_id: u64,
    pub bad_requests: u64,
    /// Seconds from the first accepted delivery to the last, and the rate over that interval.
    pub active_s: f64,
    pub accepted_per_s: f64,
    pub expect: Option<IdRange>,
    /// Ids of the expected range never accepted: how many, and the first few.
    pub missing: u64,
    pub missing_ids: Vec<u64>,
    /// Ids accepted more than once (expected range or not): how many, and the first few.
    pub duplicates: u64,
    pub duplicate_ids: Vec<String>,
    /// Accepted ids outside the expected range.
    pub unexpected: u64,
    /// Accepted deliveries whose id could not be tracked (past the bound of distinct ids outside
    /// the expected range): not checked for duplicates.
    pub untracked: u64,
    /// Every expected id was accepted exactly once.
    pub complete: bool,
}

impl SinkReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "sink: {} received, {} accepted ({:.0}/s over {:.2} s), {} failed, {} reset, {} stalled, {} without id, {} bad requests\n",
            self.received,
            self.accepted,
            self.accepted_per_s,
            self.active_s,
            self.failed,
            self.reset,
            self.stalled,
            self.without_id,
            self.bad_requests
        );
        if let Some(r) = &self.expect {
            s += &format!(
                "  expected {}..{}: {} missing{}, {} duplicated{}, {} unexpected: {}\n",
                r.start,
                r.end,
                self.missing,
                list(&self.missing_ids, self.missing),
                self.duplicates,
                list(&self.duplicate_ids, self.duplicates),
                self.unexpected,
                if self.complete {
                    "every event exactly once"
                } else {
                    "INCOMPLETE"
                }
            );
        } else if self.duplicates > 0 {
            s += &format!(
                "  {} ids accepted more than once{}\n",
                self.duplicates,
                list(&self.duplicate_ids, self.duplicates)
            );
        }
        if self.untracked > 0 {
            s += &format!(
                "  {} deliveries past the {OTHER_IDS_CAP} distinct ids tracked were not checked for duplicates (use --expect)\n",
                self.untracked
            );
        }
        s
    }
}

fn list<T: std::fmt::Display>(ids: &[T], total: u64) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let more = if total as usize > ids.len() {
        ", ..."
    } else {
        ""
    };
    format!(" ({}{more})", shown.join(", "))
}

/// A count, and the first [`LISTED`] of what was counted (made only for those).
struct Listed<T> {
    count: u64,
    first: Vec<T>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed {
            count: 0,
            first: Vec::new(),
        }
    }
}

impl<T> Listed<T> {
    fn add(&mut self, v: impl FnOnce() -> T) {
        self.count += 1;
        if self.first.len() < LISTED {
            self.first.push(v());
        }
    }
}

impl Sink {
    /// The counters of a sink of `opts.threads` threads on `addr` (see [`check_expect`]).
    pub fn new(opts: SinkOpts, addr: SocketAddr) -> Sink {
        let threads = opts.threads.max(1);
        let expected_len = opts.expect.map_or(0, |r| r.end.saturating_sub(r.start));
        Sink {
            start: Instant::now(),
            counters: (0..threads).map(|_| Counters::default()).collect(),
            expected: (0..expected_len).map(|_| AtomicU32::new(0)).collect(),
            others: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_hasher: Default::default(),
            distinct: AtomicU64::new(0),
            addr,
            opts,
        }
    }

    /// Counts one event accepted by a server other than [`start`]'s (`ring-sink`), from its head
    /// alone: the `ce-id` header (a structured event's id is in the body: counted without id).
    pub fn accept_head(&self, thread: usize, head: &RequestHead, head_bytes: &[u8]) {
        let c = &self.counters[thread];
        c.received.fetch_add(1, Ordering::Relaxed);
        let id = event_id(head, head_bytes, b"");
        let id = id.as_deref().map_or(Id::None, id_of);
        if id == Id::None {
            c.without_id.fetch_add(1, Ordering::Relaxed);
        }
        self.accept(thread, id);
    }

    /// Counts a request answered with a bad request status.
    pub fn bad_request(&self, thread: usize) {
        self.counters[thread]
            .bad_requests
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) -> SinkReport {
        let sum = |f: fn(&Counters) -> &AtomicU64| -> u64 {
            self.counters
                .iter()
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum()
        };
        let first = self
            .counters
            .iter()
            .map(|c| c.first_ns.load(Ordering::Relaxed))
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(0);
        let last = self
            .counters
            .iter()
            .map(|c| c.last_ns.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let accepted = sum(|c| &c.accepted);
        let active_s = last.saturating_sub(first) as f64 / 1e9;
        let mut missing = Listed::default();
        let mut duplicates = Listed::default();
        let start = self.opts.expect.map_or(0, |r| r.start);
        for (i, n) in self.expected.iter().enumerate() {
            match n.load(Ordering::Relaxed) {
                0 => missing.add(|| start + i as u64),
                1 => {}
                _ => duplicates.add(|| (start + i as u64).to_string()),
            }
        }
        let mut untracked = 0;
        for o in &self.others {
            let o = o.lock().unwrap_or_else(|e| e.into_inner());
            untracked += o.untracked;
            for (id, _) in o.numeric.iter().filter(|(_, n)| **n > 1) {
                duplicates.add(|| id.to_string());
            }
            for (id, _) in o.text.iter().filter(|(_, n)| **n > 1) {
                duplicates.add(|| id.to_string());
            }
        }
        SinkReport {
            received: sum(|c| &c.received),
            accepted,
            failed: sum(|c| &c.failed),
            reset: sum(|c| &c.reset),
            stalled: sum(|c| &c.stalled),
            without_id: sum(|c| &c.without_id),
            bad_requests: sum(|c| &c.bad_requests),
            active_s,
            accepted_per_s: if active_s > 0.0 {
                accepted as f64 / active_s
            } else {
                0.0
            },
            expect: self.opts.expect,
            missing: missing.count,
            missing_ids: missing.first,
            duplicates: duplicates.count,
            duplicate_ids: duplicates.first,
            unexpected: sum(|c| &c.unexpected),
            untracked,
            complete: self.opts.expect.is_some() && missing.count == 0 && duplicates.count == 0,
        }
    }

    /// Every expected id has been accepted at least once.
    pub fn all_arrived(&self) -> bool {
        self.distinct.load(Ordering::Relaxed) as usize == self.expected.len()
    }

    pub fn opts(&self) -> &SinkOpts {
        &self.opts
    }

    /// Counts one accepted delivery of `id`.
    fn accept(&self, thread: usize, id: Id<'_>) {
        let c = &self.counters[thread];
        c.accepted.fetch_add(1, Ordering::Relaxed);
        let now = (self.start.elapsed().as_nanos() as u64).max(1);
        if c.first_ns.load(Ordering::Relaxed) == 0 {
            c.first_ns.store(now, Ordering::Relaxed);
        }
        c.last_ns.store(now, Ordering::Relaxed);
        if let Id::Numeric(n) = id {
            if let Some(r) = self.opts.expect {
                if n >= r.start && n < r.end {
                    // Relaxed: a counter; the report reads it after the fact.
                    if self.expected[(n - r.start) as usize].fetch_add(1, Ordering::Relaxed) == 0 {
                        self.distinct.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
        if self.opts.expect.is_some() {
            c.unexpected.fetch_add(1, Ordering::Relaxed);
        }
        let shard = match id {
            Id::Numeric(n) => (n % SHARDS as u64) as usize,
            Id::Text(t) => (self.shard_hasher.hash_one(t) % SHARDS as u64) as usize,
            Id::None => return,
        };
        let mut o = self.others[shard].lock().unwrap_or_else(|e| e.into_inner());
        let tracked = o.numeric.len() + o.text.len();
        match id {
            Id::Numeric(n) => match o.numeric.get_mut(&n) {
                Some(k) => *k += 1,
                None if tracked < OTHER_IDS_CAP / SHARDS => {
                    o.numeric.insert(n, 1);
                }
                None => o.untracked += 1,
            },
            Id::Text(t) => match o.text.get_mut(t) {
                Some(k) => *k += 1,
                // An id that is not ours: its key is copied once, the first time it is seen.
                None if tracked < OTHER_IDS_CAP / SHARDS => {
                    o.text.insert(t.into(), 1);
                }
                None => o.untracked += 1,
            },
            Id::None => unreachable!("returned above"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id<'a> {
    Numeric(u64),
    Text(&'a str),
    None,
}

fn id_of(s: &[u8]) -> Id<'_> {
    match http::parse_decimal(s) {
        Some(n) => Id::Numeric(n),
        None => match std::str::from_utf8(s) {
            Ok(t) if !t.is_empty() => Id::Text(t),
            _ => Id::None,
        },
    }
}

/// The `"id"` of a structured event: only that member is deserialized.
fn structured_id(body: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<Doc<'_>>(body).ok()?.id
}

/// A prebuilt answer with an empty body. Built once per status at start-up.
pub fn answer(status: u16) -> &'static [u8] {
    let reason = ::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status");
    // Leaked once per status: the answers live as long as the process.
    Box::leak(format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n").into_boxed_str())
        .as_bytes()
}

/// A small per-thread generator for the fault draws (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Fail,
    Reset,
    Stall,
}

struct Thread {
    id: usize,
    sink: Arc<Sink>,
    ok: &'static [u8],
    fail: &'static [u8],
    rng: std::cell::RefCell<Rng>,
}

impl Thread {
    fn draw(&self) -> Fault {
        let o = &self.sink.opts;
        if o.fail_rate <= 0.0 && o.reset_rate <= 0.0 && o.stall_rate <= 0.0 {
            return Fault::None;
        }
        let x = self.rng.borrow_mut().next();
        if x < o.reset_rate {
            Fault::Reset
        } else if x < o.reset_rate + o.stall_rate {
            Fault::Stall
        } else if x < o.reset_rate + o.stall_rate + o.fail_rate {
            Fault::Fail
        } else {
            Fault::None
        }
    }
}

/// The size of `--expect`'s range is bounded: its counters are allocated up front.
pub fn check_expect(opts: &SinkOpts) -> io::Result<()> {
    let expected_len = opts.expect.map_or(0, |r| r.end.saturating_sub(r.start));
    if expected_len > 1 << 30 {
        return Err(io::Error::other(format!(
            "--expect covers {expected_len} ids; at most {} can be checked",
            1u64 << 30
        )));
    }
    Ok(())
}

/// Binds the listeners and starts the sink's threads; they run until the process exits.
pub fn start(opts: SinkOpts) -> io::Result<Arc<Sink>> {
    let threads = opts.threads.max(1);
    check_expect(&opts)?;
    let (listeners, addr) = imc_dispatcher::worker::bind_listeners(opts.listen, threads)?;
    let sink = Arc::new(Sink::new(opts, addr));
    let ok = answer(sink.opts.status);
    let fail = answer(sink.opts.fail_status);
    for (i, l) in listeners.into_iter().enumerate() {
        let sink = sink.clone();
        std::thread::Builder::new()
            .name(format!("sink-{i}"))
            .spawn(move || {
                let driver = sink.opts.driver;
                let t = Rc::new(Thread {
                    id: i,
                    rng: std::cell::RefCell::new(Rng::new(sink.opts.seed.wrapping_add(i as u64))),
                    sink,
                    ok,
                    fail,
                });
                let res = crate::rt::block_on(driver, move || accept_loop(t, l));
                if let Err(e) | Ok(Err(e)) = res {
                    eprintln!("imc-loadgen sink: thread {i} stopped: {e}");
                    std::process::exit(2);
                }
            })?;
    }
    Ok(sink)
}

async fn accept_loop(t: Rc<Thread>, l: std::net::TcpListener) -> io::Result<()> {
    let l = TcpListener::from_std(l)?;
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                monoio::spawn(connection(t.clone(), s));
            }
            // Out of descriptors or a connection reset before accept: keep serving.
            Err(e) => {
                eprintln!("imc-loadgen sink: accept: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn write(s: &mut TcpStream, bytes: &'static [u8]) -> bool {
    s.write_all(bytes).await.0.is_ok()
}

/// Reads once more into `buf` ([`read_into`]'s `want` and `chunk`); false when the peer closed or
/// the read failed.
async fn read_more(s: &mut TcpStream, buf: &mut BytesMut, want: usize, chunk: usize) -> bool {
    matches!(read_into(s, buf, want, chunk).await, Ok(n) if n > 0)
}

async fn connection(t: Rc<Thread>, mut s: TcpStream) {
    let c = &t.sink.counters[t.id];
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut head = RequestHead::new();
    // A chunked body is decoded into here (a copy: chunked framing is rare from senders).
    let mut dechunked = BytesMut::new();
    loop {
        // The head.
        loop {
            match parse_request(&buf, MAX_HEAD, MAX_HEADERS, &mut head) {
                Ok(true) => break,
                Ok(false) if !read_more(&mut s, &mut buf, 4096, 16 << 10).await => return,
                Ok(false) => {}
                Err(e) => {
                    c.bad_requests.fetch_add(1, Ordering::Relaxed);
                    let _ = write(&mut s, e.answer().0).await;
                    return;
                }
            }
        }
        if head.expect_continue && head.has_body() && !write(&mut s, http::answer::CONTINUE).await {
            return;
        }
        // The head is split off (no copy: both halves share the read buffer), the body read
        // behind it.
        let head_buf = buf.split_to(head.len);
        let body_len = if head.chunked {
            dechunked.clear();
            let mut dec = ChunkedDecoder::default();
            loop {
                match dec.decode(&mut buf, &mut dechunked, MAX_BODY as usize) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(_) => {
                        c.bad_requests.fetch_add(1, Ordering::Relaxed);
                        let _ = write(&mut s, http::answer::MALFORMED).await;
                        return;
                    }
                }
                if !read_more(&mut s, &mut buf, 4096, 16 << 10).await {
                    return;
                }
            }
            0
        } else {
            let n = head.content_length.unwrap_or(0);
            if n > MAX_BODY {
                c.bad_requests.fetch_add(1, Ordering::Relaxed);
                let _ = write(&mut s, http::answer::TOO_LARGE).await;
                return;
            }
            let n = n as usize;
            while buf.len() < n {
                let want = n - buf.len();
                if !read_more(&mut s, &mut buf, want, 64 << 10).await {
                    return;
                }
            }
            n
        };
        let head_bytes = &head_buf[..];
        let body: &[u8] = if head.chunked {
            &dechunked
        } else {
            &buf[..body_len]
        };
        let keep_alive = head.keep_alive;
        let target = &head_bytes[head.target.clone()];
        let get = head_bytes.starts_with(b"GET ");
        let next = match (head.method, target) {
            (_, b"/report") if get => {
                let json = serde_json::to_string(&t.sink.report()).unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                    json.len()
                );
                s.write_all(resp.into_bytes()).await.0.is_ok()
            }
            (_, b"/healthz") if get => {
                write(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
                )
                .await
            }
            (Method::Post, _) => {
                c.received.fetch_add(1, Ordering::Relaxed);
                let id = event_id(&head, head_bytes, body);
                let id = id.as_deref().map_or(Id::None, id_of);
                if t.sink.opts.display {
                    show(&head, head_bytes, body);
                }
                if id == Id::None {
                    c.without_id.fetch_add(1, Ordering::Relaxed);
                }
                let fault = t.draw();
                if !t.sink.opts.delay.is_zero() && fault != Fault::Stall {
                    monoio::time::sleep(t.sink.opts.delay).await;
                }
                match fault {
                    Fault::None => {
                        t.sink.accept(t.id, id);
                        write(&mut s, t.ok).await
                    }
                    Fault::Fail => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        write(&mut s, t.fail).await
                    }
                    Fault::Reset => {
                        c.reset.fetch_add(1, Ordering::Relaxed);
                        reset(s);
                        return;
                    }
                    Fault::Stall => {
                        c.stalled.fetch_add(1, Ordering::Relaxed);
                        // Hold the connection, unanswered, until the peer gives up on it.
                        let mut sink_buf = BytesMut::with_capacity(4096);
                        loop {
                            sink_buf.clear();
                            if !read_more(&mut s, &mut sink_buf, 4096, 4096).await {
                                return;
                            }
                        }
                    }
                }
            }
            (Method::Options, _) => write(&mut s, http::answer::OPTIONS).await,
            _ => write(&mut s, http::answer::METHOD_NOT_ALLOWED).await,
        };
        if !next || !keep_alive {
            return;
        }
        let _ = buf.split_to(body_len);
    }
}

/// A request's event id: the `ce-id` header (binary mode) or the document's `"id"` (structured
/// mode; borrowed from the body unless it had escapes).
fn event_id<'a>(head: &RequestHead, head_bytes: &'a [u8], body: &'a [u8]) -> Option<Cow<'a, [u8]>> {
    for h in &head.headers {
        if head_bytes[h.name.clone()].eq_ignore_ascii_case(b"ce-id") {
            return Some(Cow::Borrowed(&head_bytes[h.value.clone()]));
        }
    }
    let structured = head.content_type.as_ref().is_some_and(|r| {
        let ct = &head_bytes[r.clone()];
        ct.len() >= 28 && ct[..28].eq_ignore_ascii_case(b"application/cloudevents+json")
    });
    if !structured {
        return None;
    }
    Some(match structured_id(body)? {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    })
}

fn show(head: &RequestHead, head_bytes: &[u8], body: &[u8]) {
    use std::io::Write as _;
    let headers: Vec<(&str, &[u8])> = head
        .headers
        .iter()
        .filter_map(|h| {
            Some((
                std::str::from_utf8(&head_bytes[h.name.clone()]).ok()?,
                &head_bytes[h.value.clone()],
            ))
        })
        .collect();
    let text = crate::display::render(&headers, body);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Closes `s` with a reset (RST) instead of a FIN: `SO_LINGER` with a zero timeout.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `s` owns a valid socket descriptor for the duration of the call, and `linger` is
    // a properly initialized `struct linger` whose size is passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Parses `START..END` (end exclusive), as `send` prints it.
pub fn parse_range(s: &str) -> Result<IdRange, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?}: expected START..END"))?;
    let start: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not an id"))?;
    let end: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not an id"))?;
    if end < start {
        return Err(format!("{s:?}: END is below START"));
    }
    Ok(IdRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_as_the_sender_writes_them() {
        assert_eq!(id_of(b"000000000042"), Id::Numeric(42));
        assert_eq!(id_of(b"a6a36488-028f"), Id::Text("a6a36488-028f"));
        assert_eq!(id_of(b""), Id::None);
        assert_eq!(
            structured_id(br#"{"specversion":"1.0","id":"000000000007","data":{"id":1}}"#)
                .as_deref(),
            Some("000000000007")
        );
        assert_eq!(structured_id(br#"{"data":1}"#), None);
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("5..10"), Ok(IdRange { start: 5, end: 10 }));
        assert!(parse_range("10..5").is_err());
        assert!(parse_range("x").is_err());
    }

    #[test]
    fn fault_draws_follow_the_rates() {
        let mut r = Rng::new(7);
        let n = 100_000;
        let below = (0..n).filter(|_| r.next() < 0.25).count() as f64 / n as f64;
        assert!((below - 0.25).abs() < 0.01, "{below}");
    }

    #[test]
    fn answers_carry_the_reason() {
        assert_eq!(
            answer(202),
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            answer(599),
            b"HTTP/1.1 599 Status\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
