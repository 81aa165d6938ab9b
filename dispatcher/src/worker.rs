//! One monoio runtime per core: its own `SO_REUSEPORT` listener, its own routing table, its own
//! connection pool, its own scratch buffers. Nothing here is shared with another core except the
//! [`Hub`], read between requests.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::blocking::DefaultThreadPool;
use monoio::net::TcpListener;
use rustls::ServerConfig;

use crate::channels::Hub;
use crate::config::{Encryption, IoDriver, Limits};
use crate::metrics::{IngressSeries, Recorder, WorkerRegistry};
use crate::pool::Pool;
use crate::routing::{Channel, Table};

/// How often an idle worker looks for a new channel set (so that readiness and reloads do not
/// wait for traffic). Busy workers look between requests.
const TICK: Duration = Duration::from_millis(20);

/// A ticker this late means other tasks are not getting the core (see [`Worker::starving`]).
const STARVED: Duration = Duration::from_millis(50);

/// The driver a worker actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    /// Resolves `--io-driver`. `auto` probes io_uring and falls back to epoll when it is refused;
    /// the second value is why (for the log line the caller writes and the metric), `None` when
    /// nothing fell back. `io-uring` forced and refused is an error that says why.
    pub fn choose(wanted: IoDriver) -> Result<(Driver, Option<UringRefusal>), String> {
        match wanted {
            IoDriver::Epoll => Ok((Driver::Epoll, None)),
            IoDriver::IoUring => match probe_uring() {
                Ok(()) => Ok((Driver::IoUring, None)),
                Err(why) => Err(format!(
                    "--io-driver io-uring: {}; use --io-driver auto or epoll",
                    why.detail
                )),
            },
            IoDriver::Auto => match probe_uring() {
                Ok(()) => Ok((Driver::IoUring, None)),
                Err(why) => Ok((Driver::Epoll, Some(why))),
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// The setup flags of every ring a worker (or the load generator) runs on, and of the probe's.
///
/// - `COOP_TASKRUN`: the kernel does not interrupt the thread to post a completion; it runs
///   completions when the thread next enters the kernel, which it does anyway to submit.
/// - `SINGLE_ISSUER`: only the thread that made the ring submits to it (a worker owns its ring).
/// - `DEFER_TASKRUN` (Linux 6.1+, issue 14): completion work is not run at whatever point the
///   kernel finds convenient (on the way back from any syscall) but batched until the thread
///   asks for completions (`io_uring_enter` with `GETEVENTS`). monoio's loop asks exactly when it
///   runs out of tasks (`park` is `submit_and_wait(1)`, or `submit_with_args` with a timeout), so
///   a burst of completions is run in one pass at the point the loop reaps them. Its "cold path"
///   (`submit` with tasks still queued) does not ask, and does not reap either, so nothing is
///   left behind that was not before. A kernel that refuses the flag gets a ring without it:
///   checked once per process, on a two-entry ring.
pub fn uring_builder() -> io_uring::Builder {
    static DEFER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let defer = *DEFER.get_or_init(|| {
        let mut b =
            io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder();
        b.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        match b.build(2) {
            Ok(_) => true,
            // EINVAL: a kernel without the flag. Any other refusal (EPERM under seccomp, ENOSYS)
            // refuses every ring, and the probe says so; it is not about this flag.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(
                    "io_uring refuses DEFER_TASKRUN (Linux 6.1 or later); rings run without it"
                );
                false
            }
            Err(_) => false,
        }
    });
    let mut b = io_uring::IoUring::builder();
    b.setup_coop_taskrun().setup_single_issuer();
    if defer {
        b.setup_defer_taskrun();
    }
    b
}

/// Why io_uring cannot serve here.
#[derive(Debug, Clone)]
pub struct UringRefusal {
    /// A short, bounded code for the metric label: `EPERM`, `ENOSYS`, `EINVAL`, `EACCES`,
    /// `ENOMEM`, `errno-other`, `first-op-failed` or `timeout`.
    pub code: &'static str,
    /// What a person reads in the log.
    pub detail: String,
}

/// How long the probe's first operations may take before io_uring counts as refused (a
/// sandbox that accepts the ring but never completes on it must not hang start-up).
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// Sets up a ring exactly as a worker will (same flags, same size), then runs a first operation
/// on it: a NOP and a read from a pipe, waited for with `io_uring_enter`. A seccomp profile that
/// refuses `io_uring_setup` (Docker since 25, containerd's default) shows as EPERM, a kernel
/// without io_uring (or `kernel.io_uring_disabled`) as ENOSYS/EPERM; a sandbox that lets the
/// ring be created but refuses `io_uring_enter` or fails the operations shows here too, instead
/// of in every worker's first accept. Runs on its own thread so a ring that never completes
/// costs start-up [`PROBE_WAIT`], not a hang.
pub fn probe_uring() -> Result<(), UringRefusal> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("imc-uring-probe".into())
        .spawn(move || {
            let _ = tx.send(probe_uring_here());
        });
    if let Err(e) = spawned {
        return Err(UringRefusal {
            code: "first-op-failed",
            detail: format!("cannot start the io_uring probe thread: {e}"),
        });
    }
    match rx.recv_timeout(PROBE_WAIT) {
        Ok(r) => r,
        // The thread stays blocked in the kernel; it holds a ring and a pipe, nothing else.
        Err(_) => Err(UringRefusal {
            code: "timeout",
            detail: format!(
                "io_uring set up but its first operation did not complete within {PROBE_WAIT:?}"
            ),
        }),
    }
}

fn errno_code(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ENOMEM) => "ENOMEM",
        _ => "errno-other",
    }
}

fn probe_uring_here() -> Result<(), UringRefusal> {
    use io_uring::{opcode, types};
    let mut ring = uring_builder()
        .build(1024).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => "refused with EPERM (a seccomp profile such as the container runtime's default, or kernel.io_uring_disabled)",
            Some(libc::ENOSYS) => "refused with ENOSYS (the kernel has no io_uring, or a seccomp profile hides it)",
            Some(libc::EINVAL) => "refused with EINVAL (the kernel lacks COOP_TASKRUN or SINGLE_ISSUER: Linux 6.0 or later is needed)",
            _ => "refused",
        };
        UringRefusal {
            code: errno_code(&e),
            detail: format!("io_uring_setup {why}: {e}"),
        }
    })?;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let e = io::Error::last_os_error();
        return Err(UringRefusal {
            code: "first-op-failed",
            detail: format!("pipe2 for the io_uring probe: {e}"),
        });
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nothing else.
    let (rd, wr) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let mut file = std::fs::File::from(wr);
    let _ = io::Write::write_all(&mut file, b"x");
    // Leaked on purpose (one byte, once per process): on an early return the kernel may still
    // hold the read, and a buffer that lives for ever cannot be written after it is freed.
    let byte: &'static mut [u8; 1] = Box::leak(Box::new([0u8; 1]));
    use std::os::fd::AsRawFd;
    let nop = opcode::Nop::new().build().user_data(1);
    let read = opcode::Read::new(types::Fd(rd.as_raw_fd()), byte.as_mut_ptr(), 1)
        .build()
        .user_data(2);
    // SAFETY: the read's buffer is 'static (above) and the kernel takes its own reference to
    // the pipe's file at submission, so neither can go away under the operation.
    unsafe {
        let mut sq = ring.submission();
        if sq.push(&nop).is_err() || sq.push(&read).is_err() {
            return Err(UringRefusal {
                code: "first-op-failed",
                detail: "io_uring submission queue refused two entries".into(),
            });
        }
    }
    let mut done = 0;
    while done < 2 {
        if let Err(e) = ring.submit_and_wait(2 - done) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(UringRefusal {
                code: errno_code(&e),
                detail: format!("io_uring_enter refused on the first operation: {e}"),
            });
        }
        for cqe in ring.completion() {
            done += 1;
            if cqe.result() < 0 {
                let e = io::Error::from_raw_os_error(-cqe.result());
                let op = if cqe.user_data() == 1 { "NOP" } else { "READ" };
                return Err(UringRefusal {
                    code: "first-op-failed",
                    detail: format!("io_uring's first operation ({op}) failed: {e}"),
                });
            }
        }
    }
    if byte[0] != b'x' {
        return Err(UringRefusal {
            code: "first-op-failed",
            detail: "io_uring's first READ completed without the data".into(),
        });
    }
    Ok(())
}

/// At most one log line a second; counts what it held back.
#[derive(Default)]
pub struct Throttle {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl Throttle {
    /// `Some(n)`: log now, mentioning the `n` lines suppressed since the last one.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        match self.last.get() {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

/// Everything one worker owns.
pub struct Worker {
    pub id: usize,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub pool: Pool,
    /// D13: set by the ticker once the process drains; connections then close after answering.
    pub draining: Cell<bool>,
    /// D11: the bound on subscriber deliveries in flight on this worker (sync and async); the
    /// count itself is the `inflight` cell of the metrics registry.
    max_inflight: usize,
    /// D18: deliveries in flight per channel (by `<ns>/<name>`), kept across routing tables so
    /// that a reload does not hand a stuck channel a fresh share. Entries at zero are dropped when
    /// a table is installed; a channel's [`Channel::load`] caches its entry.
    loads: RefCell<HashMap<Arc<str>, Rc<Cell<usize>>>>,
    /// D18: channels with deliveries in flight on this worker.
    busy_channels: Cell<usize>,
    /// The budget of request-body bytes this worker holds: bodies being read and bodies of events
    /// still being delivered (`--max-buffered-body-bytes`), and what is held now.
    body_budget: usize,
    body_bytes: Cell<usize>,
    /// Requests between a parsed head and a written answer: a draining worker waits for them.
    active: Cell<usize>,
    /// The bound on open client connections (`--max-connections`); the count is a metrics cell.
    max_conns: usize,
    /// This worker's metric series; `metrics.enabled` is false with `--no-metrics`.
    pub metrics: Recorder,
    /// Ingress series of requests that found no channel.
    pub no_channel: IngressSeries,
    overload_log: Throttle,
    table: RefCell<Rc<Table>>,
    generation: Cell<u64>,
    /// Event heads are written here and split off; the allocation is reused once they are gone.
    pub event_head: RefCell<BytesMut>,
    /// When the ticker last ran. A ticker that has not run for [`STARVED`] means one task keeps
    /// the core: see [`Worker::starving`].
    last_tick: Cell<Instant>,
    pub bad_input_log: Throttle,
    pub delivery_log: Throttle,
    /// Failed handshakes on the https port.
    pub tls_log: Throttle,
    /// `transport-encryption` as this worker last copied it from the hub (on its tick).
    encryption: Cell<Encryption>,
}

/// Deliveries held in flight; released when dropped (also when a cancelled fan-out is dropped).
pub struct Slot {
    worker: Rc<Worker>,
    n: usize,
    /// The channel's own count (D18).
    load: Rc<Cell<usize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = &self.worker.metrics.registry().inflight;
        c.set(c.get() - self.n as u64);
        let left = self.load.get() - self.n;
        self.load.set(left);
        if left == 0 && self.n > 0 {
            let busy = &self.worker.busy_channels;
            busy.set(busy.get() - 1);
        }
    }
}

/// Request-body bytes held against the worker's budget, released when dropped: while the body
/// is read, then for as long as its event is being delivered.
pub struct BodyCharge {
    worker: Rc<Worker>,
    n: usize,
}

impl BodyCharge {
    /// Grows the charge to `total` bytes; false (and nothing charged) if that passes the budget.
    pub fn grow_to(&mut self, total: usize) -> bool {
        let more = total.saturating_sub(self.n);
        let held = &self.worker.body_bytes;
        if held.get() + more > self.worker.body_budget {
            return false;
        }
        held.set(held.get() + more);
        self.n += more;
        true
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        let held = &self.worker.body_bytes;
        held.set(held.get() - self.n);
    }
}

/// A request being served, counted while it lives.
pub struct Active<'a>(&'a Cell<usize>);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Worker {
    /// D11 and D18: whether `n` more deliveries for `channel` would pass the worker's bound, or
    /// the channel's share of it. The share: a channel may hold at most `max / (k + 2)` of the
    /// worker's deliveries in flight, `k` the number of other channels with deliveries in flight,
    /// so that a newcomer always finds room; a channel with nothing in flight may always start one
    /// event (within the worker's bound).
    pub fn overloaded(&self, channel: &Channel, n: usize) -> bool {
        if n == 0 {
            return false;
        }
        if self.inflight() + n > self.max_inflight {
            return true;
        }
        let mine = self.load_of(channel).get();
        if mine == 0 {
            return false;
        }
        let others = self.busy_channels.get() - 1;
        mine + n > self.max_inflight / (others + 2)
    }

    fn load_of<'c>(&self, channel: &'c Channel) -> &'c Rc<Cell<usize>> {
        channel.load.get_or_init(|| {
            self.loads
                .borrow_mut()
                .entry(channel.key.clone())
                .or_default()
                .clone()
        })
    }

    /// Whether the worker's other tasks are starving: the ticker, due every 20 ms, has not run
    /// for [`STARVED`]. With epoll, an operation whose descriptor is ready completes without
    /// yielding, so a client that pipelines requests faster than they are answered would keep
    /// its connection's task running, and every other connection of the worker waiting.
    pub fn starving(&self) -> bool {
        self.last_tick.get().elapsed() > STARVED
    }

    /// Whether the body budget is used up: a new body gets 503 before it is read.
    pub fn body_budget_full(&self) -> bool {
        self.body_bytes.get() >= self.body_budget
    }

    /// An empty charge against the body budget, grown as a body arrives.
    pub fn body_charge(self: &Rc<Self>) -> BodyCharge {
        BodyCharge {
            worker: self.clone(),
            n: 0,
        }
    }

    #[inline]
    fn inflight(&self) -> usize {
        self.metrics.registry().inflight.get() as usize
    }

    /// Counts a new client connection; false (and nothing counted) past `--max-connections`.
    fn conn_open(&self) -> bool {
        let c = &self.metrics.registry().connections;
        if c.get() as usize >= self.max_conns {
            return false;
        }
        c.add(1);
        true
    }

    pub fn conn_closed(&self) {
        let c = &self.metrics.registry().connections;
        c.set(c.get() - 1);
    }

    /// Takes `n` in-flight slots for `channel`, or `None` past the bound or its share.
    pub fn reserve(self: &Rc<Self>, channel: &Channel, n: usize) -> Option<Slot> {
        if self.overloaded(channel, n) {
            return None;
        }
        self.metrics.registry().inflight.add(n as u64);
        let load = self.load_of(channel).clone();
        if load.get() == 0 && n > 0 {
            self.busy_channels.set(self.busy_channels.get() + 1);
        }
        load.set(load.get() + n);
        Some(Slot {
            worker: self.clone(),
            n,
            load,
        })
    }

    /// Logs a refusal for overload, at most once a second.
    pub fn overload(&self) {
        if let Some(suppressed) = self.overload_log.allow() {
            tracing::warn!(
                worker = self.id,
                inflight = self.inflight(),
                bound = self.max_inflight,
                suppressed,
                "deliveries in flight at the bound; answering 503 (D11)"
            );
        }
    }

    /// Contract §6.1: whether the port a request came in on serves events now (`tls`: 8443).
    #[inline]
    pub fn serves(&self, tls: bool) -> bool {
        let mode = self.encryption.get();
        if tls {
            mode.tls_serves()
        } else {
            mode.plain_serves()
        }
    }

    pub fn active_request(&self) -> Active<'_> {
        self.active.set(self.active.get() + 1);
        Active(&self.active)
    }

    /// The current table, switching to a newly published set first. In-flight requests keep the
    /// table they started with (they hold their channel's `Rc`).
    #[inline]
    pub fn table(&self) -> Rc<Table> {
        self.refresh();
        self.table.borrow().clone()
    }

    fn refresh(&self) {
        let g = self.hub.generation();
        let had = self.generation.get();
        if g == had {
            return;
        }
        let set = self.hub.current();
        let mut slot = self.table.borrow_mut();
        // Key by key when the publications since ours are known and nobody else holds the table
        // (requests hold their channel, not the table); a rebuild otherwise.
        let patched = match (self.hub.changes(had, g), Rc::get_mut(&mut slot)) {
            (Some(changes), Some(table)) => {
                for keys in &changes {
                    table.apply(&set, keys);
                }
                true
            }
            _ => false,
        };
        if !patched {
            *slot = Rc::new(Table::build(&set));
        }
        tracing::debug!(
            worker = self.id,
            generation = g,
            channels = slot.len(),
            incremental = patched,
            "routing table installed"
        );
        drop(slot);
        // Channels with nothing in flight need no entry; theirs is made again on their next event.
        self.loads.borrow_mut().retain(|_, load| load.get() > 0);
        self.generation.set(g);
        self.hub.mark_installed(self.id, g);
    }
}

/// What a worker thread needs from main.
pub struct WorkerSpec {
    pub id: usize,
    pub driver: Driver,
    pub listener: std::net::TcpListener,
    /// The https port's listener and its server configuration.
    pub tls_listener: std::net::TcpListener,
    pub tls_config: Arc<ServerConfig>,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub max_idle_per_host: usize,
    pub max_inflight: usize,
    pub max_conns: usize,
    pub max_buffered_body: usize,
    pub shutdown_grace: Duration,
    pub blocking: DefaultThreadPool,
    pub registry: Arc<WorkerRegistry>,
    pub metrics_enabled: bool,
}

/// Runs one worker on the calling thread until the process drains. Returns how many requests
/// and deliveries were still in progress when the grace period ended (0 after a clean drain).
pub fn run(spec: WorkerSpec) -> io::Result<usize> {
    let blocking = Box::new(spec.blocking.clone());
    match spec.driver {
        Driver::IoUring => {
            // One thread submits to each ring, and completions are handled when the worker next
            // enters the kernel anyway: no inter-processor interrupt per completion.
            let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(uring_builder())
                .with_entries(1024)
                .enable_timer()
                .attach_thread_pool(blocking)
                .build();
            match rt {
                Ok(mut rt) => rt.block_on(main_loop(spec)),
                Err(e) => {
                    tracing::warn!(worker = spec.id, error = %e, "io_uring runtime refused; this worker uses epoll");
                    run(WorkerSpec {
                        driver: Driver::Epoll,
                        ..spec
                    })
                }
            }
        }
        Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(blocking)
            .build()?
            .block_on(main_loop(spec)),
    }
}

async fn main_loop(spec: WorkerSpec) -> io::Result<usize> {
    let listener = TcpListener::from_std(spec.listener)?;
    let tls_listener = TcpListener::from_std(spec.tls_listener)?;
    let worker = Rc::new(Worker {
        id: spec.id,
        hub: spec.hub.clone(),
        limits: spec.limits,
        draining: Cell::new(false),
        max_inflight: spec.max_inflight.max(1),
        loads: RefCell::default(),
        busy_channels: Cell::new(0),
        body_budget: spec.max_buffered_body,
        body_bytes: Cell::new(0),
        active: Cell::new(0),
        max_conns: spec.max_conns.max(1),
        metrics: Recorder::new(spec.registry.clone(), spec.metrics_enabled),
        no_channel: IngressSeries::default(),
        overload_log: Throttle::default(),
        // Replies can be as large as events: the same limit bounds what is kept of a response.
        pool: Pool::new(
            spec.max_idle_per_host,
            spec.limits.max_body,
            spec.registry.clone(),
        ),
        table: RefCell::new(Rc::new(Table::default())),
        generation: Cell::new(0),
        event_head: RefCell::new(BytesMut::with_capacity(64 << 10)),
        last_tick: Cell::new(Instant::now()),
        bad_input_log: Throttle::default(),
        delivery_log: Throttle::default(),
        tls_log: Throttle::default(),
        encryption: Cell::new(spec.hub.encryption()),
    });
    let ticker = worker.clone();
    monoio::spawn(async move {
        loop {
            ticker.refresh();
            let now = Instant::now();
            ticker.last_tick.set(now);
            ticker.pool.tick(now);
            ticker.encryption.set(ticker.hub.encryption());
            // The drain flag is looked at here only, not on every request.
            if !ticker.draining.get() && ticker.hub.is_draining() {
                ticker.draining.set(true);
            }
            monoio::time::sleep(TICK).await;
        }
    });
    {
        let plain = accept_loop(&worker, &listener, None);
        let tls = accept_loop(&worker, &tls_listener, Some(spec.tls_config.clone()));
        let accepting = async {
            let (mut plain, mut tls) = (std::pin::pin!(plain), std::pin::pin!(tls));
            std::future::poll_fn(|cx| {
                if plain.as_mut().poll(cx).is_ready() || tls.as_mut().poll(cx).is_ready() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await
        };
        let drain = async {
            while !worker.draining.get() {
                monoio::time::sleep(TICK).await;
            }
        };
        let (mut accepting, mut drain) = (std::pin::pin!(accepting), std::pin::pin!(drain));
        std::future::poll_fn(|cx| {
            if drain.as_mut().poll(cx).is_ready() || accepting.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
    // D13: stop accepting (once every worker has closed its listener the port refuses
    // connections), finish what was accepted, then let idle connections go with the runtime.
    drop(listener);
    drop(tls_listener);
    let deadline = Instant::now() + spec.shutdown_grace;
    tracing::info!(
        worker = spec.id,
        requests = worker.active.get(),
        deliveries = worker.inflight(),
        "draining"
    );
    loop {
        let (active, inflight) = (worker.active.get(), worker.inflight());
        if active == 0 && inflight == 0 {
            return Ok(0);
        }
        if Instant::now() >= deadline {
            return Ok(active.max(inflight));
        }
        monoio::time::sleep(TICK).await;
    }
}

async fn accept_loop(worker: &Rc<Worker>, listener: &TcpListener, tls: Option<Arc<ServerConfig>>) {
    let accept_log = Throttle::default();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                if !worker.conn_open() {
                    // Past the bound the connection is closed at once; existing ones go on.
                    if let Some(suppressed) = accept_log.allow() {
                        tracing::warn!(
                            worker = worker.id,
                            bound = worker.max_conns,
                            suppressed,
                            "connections at the bound; closing a new one"
                        );
                    }
                    drop(stream);
                    continue;
                }
                monoio::spawn(crate::ingress::serve(worker.clone(), stream, tls.clone()));
            }
            Err(e) => {
                if let Some(suppressed) = accept_log.allow() {
                    tracing::warn!(worker = worker.id, error = %e, suppressed, "accept failed");
                }
                // Out of descriptors or memory: back off instead of spinning.
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Binds one `SO_REUSEPORT` listener per worker on the same address, so the kernel spreads
/// connections across cores. Port 0 is resolved by the first bind and reused by the others.
pub fn bind_listeners(
    addr: SocketAddr,
    n: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut actual = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Socket::new(
            Domain::for_address(actual),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&actual.into())?;
        s.listen(4096)?;
        if actual.port() == 0 {
            actual = s
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no socket address"))?;
        }
        out.push(s.into());
    }
    Ok((out, actual))
}
