//! `imc-loadgen ring-sink`: the floor of one HTTP/1.1 exchange on an io_uring driven by hand, with
//! what monoio does not use (issue 14): connections as registered (fixed) files, accepted by one
//! multishot accept straight into the fixed table; one multishot receive per connection into a
//! provided-buffer ring (no buffer per connection, no re-arm per read); one `io_uring_enter` per
//! loop that submits every queued operation and waits; DEFER_TASKRUN and SINGLE_ISSUER.
//!
//! It exists to be measured against `imc-loadgen sink` on the same kernel (`bench/exchange.sh`
//! runs both): the difference is what moving the hot sockets off monoio's `TcpStream` could give,
//! before anyone rewrites the dispatcher's I/O layer for it. So it does the same per-request work
//! the sink does on its fast path: the head parsed by the dispatcher's parser, the event counted
//! per id in the sink's own counters ([`Sink::accept_head`]: the `ce-id` header; a structured
//! event's id is in its body, which is dropped unread, so it counts as without id), the body
//! dropped, a prebuilt answer. It has none of the sink's faults and no `/report`: every complete
//! request is answered with the one status given (probes and every method included); a body must be framed by `Content-Length` (a chunked one is answered 411
//! and the connection closed), and a bad head gets the dispatcher's answer for it, then close.
//! Pipelined requests are answered in order. One thread, one ring; Linux 6.1 or later.
//!
//! Each of the three features can be turned off ([`Mode`]), so that `bench/exchange.sh` can
//! measure them one step at a time from what monoio does (plain descriptors, one receive per read
//! into the connection's own buffer, COOP_TASKRUN + SINGLE_ISSUER): `+defer`, `+fixed`, then
//! `+multishot`. The loop, the parsing and the accounting are the same in every mode.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use imc_dispatcher::http::{parse_request, RequestHead};

use crate::sink::Sink;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 128;
/// Slots of the fixed-file table: the most connections at once (more are refused by the accept,
/// which is re-armed).
const SLOTS: u32 = 4096;
/// Provided buffers: 1024 × 4 KiB = 4 MiB, shared by all connections. A buffer is given back to
/// the ring as soon as its bytes are parsed, so in flight there is at most one per connection
/// with data waiting.
const BUFS: u16 = 1024;
const BUF_LEN: usize = 4096;
const BGID: u16 = 0;

const ACCEPT: u64 = 1 << 32;
const RECV: u64 = 2 << 32;
const SEND: u64 = 3 << 32;
const CLOSE: u64 = 4 << 32;
const CANCEL: u64 = 5 << 32;
const KIND: u64 = 0xff << 32;

/// `$e` with `$fd` the connection's fixed slot or its descriptor, as `$mode` says (the opcodes
/// take either, as different types).
macro_rules! on_fd {
    ($mode:expr, $slot:expr, |$fd:ident| $e:expr) => {
        if $mode.fixed_files {
            let $fd = types::Fixed($slot);
            $e
        } else {
            let $fd = types::Fd($slot as i32);
            $e
        }
    };
}

const LENGTH_REQUIRED: &[u8] =
    b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Which of io_uring's features the ring uses (all of them by default).
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// Connections live in the registered-file table (else as plain descriptors, which every
    /// operation looks up in the process's file table).
    pub fixed_files: bool,
    /// One multishot receive per connection into the shared provided-buffer ring; else one
    /// receive per read into the connection's own 4 KiB buffer, re-armed on each completion, as
    /// monoio's `TcpStream::read` does.
    pub multishot: bool,
    /// DEFER_TASKRUN: completions are run only when the loop enters the kernel to wait.
    pub defer_taskrun: bool,
}

impl Default for Mode {
    fn default() -> Mode {
        Mode {
            fixed_files: true,
            multishot: true,
            defer_taskrun: true,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
        write!(
            f,
            "{}, {}, {}",
            on(self.fixed_files, "fixed files", "plain descriptors"),
            on(
                self.multishot,
                "multishot receive into provided buffers",
                "one receive per read into a buffer per connection"
            ),
            on(
                self.defer_taskrun,
                "DEFER_TASKRUN",
                "COOP_TASKRUN without DEFER_TASKRUN"
            ),
        )
    }
}

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
}

struct Conn {
    head: RequestHead,
    /// The start of a request that one buffer did not hold whole (a copy: rare, the buffer
    /// is 4 KiB and a sender writes a request at once).
    carry: Vec<u8>,
    /// Body bytes of the current request still to come, dropped as they arrive.
    body_left: u64,
    /// Bytes being sent (not touched while the send is in flight) and answers queued behind.
    tx: Vec<u8>,
    queued: Vec<u8>,
    sending: bool,
    /// A receive is in the kernel (its last completion has no MORE flag).
    recv_armed: bool,
    /// The armed receive was asked to stop.
    cancelled: bool,
    /// Close once nothing is in flight; `queued` is still sent first.
    closing: bool,
    /// Without multishot: the connection's receive buffer (the kernel writes it while
    /// `recv_armed`; a Vec's heap block does not move when the `Conn` does).
    rbuf: Vec<u8>,
}

impl Conn {
    fn new(mode: Mode) -> Conn {
        Conn {
            rbuf: if mode.multishot {
                Vec::new()
            } else {
                vec![0; BUF_LEN]
            },
            head: RequestHead::new(),
            carry: Vec::new(),
            body_left: 0,
            tx: Vec::with_capacity(256),
            queued: Vec::with_capacity(256),
            sending: false,
            recv_armed: true,
            cancelled: false,
            closing: false,
        }
    }

    /// Parses what `data` completes; answers go to `queued`. Returns the requests answered.
    fn absorb(&mut self, data: &[u8], ok: &[u8], sink: &Sink) -> u64 {
        if self.carry.is_empty() {
            // The usual case: requests parsed where they lie, in the provided buffer.
            let (answered, used) = self.consume(data, ok, sink);
            if used < data.len() && !self.closing {
                self.carry.extend_from_slice(&data[used..]);
            }
            answered
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(data);
            let (answered, used) = self.consume(&carry, ok, sink);
            carry.drain(..used);
            if self.closing {
                carry.clear();
            }
            self.carry = carry;
            answered
        }
    }

    /// Answers the requests `buf` holds whole, dropping their bodies; returns them and the bytes
    /// used (what is left is the start of a head). The head scan's state is relative to the
    /// start of the unused part, which is where the carry starts.
    fn consume(&mut self, buf: &[u8], ok: &[u8], sink: &Sink) -> (u64, usize) {
        let mut answered = 0;
        let mut pos = 0;
        loop {
            let k = self.body_left.min((buf.len() - pos) as u64);
            self.body_left -= k;
            pos += k as usize;
            if pos == buf.len() || self.closing {
                return (answered, buf.len());
            }
            match parse_request(&buf[pos..], MAX_HEAD, MAX_HEADERS, &mut self.head) {
                Ok(true) => {
                    let head = &buf[pos..pos + self.head.len];
                    pos += self.head.len;
                    if self.head.chunked {
                        sink.bad_request(0);
                        self.queued.extend_from_slice(LENGTH_REQUIRED);
                        self.closing = true;
                        continue;
                    }
                    self.body_left = self.head.content_length.unwrap_or(0);
                    sink.accept_head(0, &self.head, head);
                    // A copy of the answer's few dozen bytes per request, so that pipelined
                    // answers go out in one send; no allocation once `queued` has grown.
                    self.queued.extend_from_slice(ok);
                    answered += 1;
                    if !self.head.keep_alive {
                        self.closing = true;
                    }
                }
                Ok(false) => return (answered, pos),
                Err(e) => {
                    sink.bad_request(0);
                    self.queued.extend_from_slice(e.answer().0);
                    self.closing = true;
                }
            }
        }
    }
}

/// The provided-buffer ring: `BUFS` entries the kernel takes buffers from, in page-aligned
/// memory the kernel reads, and the buffers themselves.
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let layout = std::alloc::Layout::from_size_align(
            usize::from(BUFS) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size; zeroed memory is a valid ring (tail 0).
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring = BufRing {
            entries,
            layout,
            bufs: vec![0; usize::from(BUFS) * BUF_LEN],
            tail: 0,
        };
        for bid in 0..BUFS {
            ring.give(bid);
        }
        Ok(ring)
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn give(&mut self, bid: u16) {
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * BUF_LEN as u64;
        // SAFETY: `tail & (BUFS - 1)` is below BUFS (a power of two), inside the allocation; the
        // kernel does not read an entry past the published tail, so writing it is not a race.
        let e = unsafe { &mut *self.entries.add(usize::from(self.tail & (BUFS - 1))) };
        e.set_addr(addr);
        e.set_len(BUF_LEN as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the `resv` field of entry 0, a u16 in the allocation, aligned; the
        // kernel reads it concurrently, so it is published with a release store after the entry.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        let at = usize::from(bid) * BUF_LEN;
        &self.bufs[at..at + len.min(BUF_LEN)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that read it is gone (dropped
        // first: it is declared after the BufRing in `serve`).
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) }
    }
}

/// Binds `listen` and serves until `stop` (checked at least every 100 ms), with the features
/// `mode` names. Events are counted per id in `sink` (as thread 0) as `imc-loadgen sink` counts
/// them; connections in `stats`.
pub fn serve(
    listen: SocketAddr,
    mode: Mode,
    sink: &Sink,
    status_line: &'static [u8],
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    ready: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    // As the sink's and the dispatcher's: SO_REUSEADDR and SO_REUSEPORT, a backlog of 4096.
    let (mut listeners, _) = imc_dispatcher::worker::bind_listeners(listen, 1)?;
    let listener: TcpListener = listeners.remove(0);
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: there is no plain fd of
    // an accepted connection to set it on (they live in the fixed table only).
    set_nodelay(&listener)?;
    let mut bufs = BufRing::new()?;
    let mut builder = IoUring::builder();
    builder.setup_coop_taskrun().setup_single_issuer();
    if mode.defer_taskrun {
        builder.setup_defer_taskrun();
    }
    let mut ring: IoUring = builder.build(4096)?;
    if mode.fixed_files {
        ring.submitter().register_files_sparse(SLOTS)?;
    }
    if mode.multishot {
        // SAFETY: the entries stay allocated until `bufs` drops, after `ring` (declared later,
        // so dropped first).
        unsafe {
            ring.submitter()
                .register_buf_ring(bufs.entries as u64, BUFS, BGID)?;
        }
    }
    ready(listener.local_addr()?);
    let lfd = types::Fd(listener.as_raw_fd());
    // Indexed by fixed-file slot, or by descriptor (which the kernel reuses, lowest first, so
    // the table stays as large as the most connections at once).
    let mut conns: Vec<Option<Conn>> = (0..SLOTS).map(|_| None).collect();
    let mut sq: Vec<squeue::Entry> = Vec::with_capacity(256);
    let accept = || {
        opcode::AcceptMulti::new(lfd)
            .allocate_file_index(mode.fixed_files)
            .build()
            .user_data(ACCEPT)
    };
    sq.push(accept());
    let timeout = types::Timespec::new().nsec(100_000_000);
    let args = types::SubmitArgs::new().timespec(&timeout);
    let mut starved: Vec<u32> = Vec::new();
    let mut accept_errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        push_all(&mut ring, &mut sq)?;
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut answered = 0;
        for cqe in ring.completion() {
            let (kind, slot) = (cqe.user_data() & KIND, cqe.user_data() as u32);
            let res = cqe.result();
            let more = cqueue::more(cqe.flags());
            match kind {
                ACCEPT => {
                    if res >= 0 {
                        let slot = res as u32;
                        if conns.len() <= slot as usize {
                            conns.resize_with(slot as usize + 1, || None);
                        }
                        let c = conns[slot as usize].insert(Conn::new(mode));
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                        sq.push(recv(mode, slot, c));
                    } else {
                        // Out of slots or descriptors: logged at the first and every 1000th,
                        // and the accept goes on (a peer that waits is served once slots free).
                        accept_errors += 1;
                        if accept_errors % 1000 == 1 {
                            eprintln!(
                                "imc-loadgen ring-sink: accept ({accept_errors} failed): {}",
                                io::Error::from_raw_os_error(-res)
                            );
                        }
                    }
                    if !more {
                        sq.push(accept());
                    }
                }
                RECV => {
                    let Some(c) = conns[slot as usize].as_mut() else {
                        continue;
                    };
                    if res > 0 && !mode.multishot {
                        // The buffer is out of the kernel's hands until the receive is re-armed.
                        let rbuf = std::mem::take(&mut c.rbuf);
                        answered += c.absorb(&rbuf[..res as usize], status_line, sink);
                        c.rbuf = rbuf;
                    } else if res > 0 {
                        let bid = cqueue::buffer_select(cqe.flags()).expect("a buffer");
                        answered += c.absorb(bufs.buf(bid, res as usize), status_line, sink);
                        bufs.give(bid);
                    } else if res == -libc::ENOBUFS {
                        // Out of buffers: re-armed after this pass has given buffers back.
                        if !more {
                            c.recv_armed = false;
                            if !c.closing {
                                starved.push(slot);
                            }
                        }
                    } else {
                        // EOF, a reset, or cancelled: what is queued is still sent.
                        c.closing = true;
                    }
                    if !more && res != -libc::ENOBUFS {
                        c.recv_armed = !c.closing;
                        if c.recv_armed {
                            sq.push(recv(mode, slot, c));
                        }
                    }
                    flush(mode, &mut conns, slot, &mut sq);
                }
                SEND => {
                    let Some(c) = conns[slot as usize].as_mut() else {
                        continue;
                    };
                    c.sending = false;
                    if res < 0 {
                        c.closing = true;
                        c.tx.clear();
                        c.queued.clear();
                    } else {
                        c.tx.drain(..res as usize);
                    }
                    flush(mode, &mut conns, slot, &mut sq);
                }
                _ => {}
            }
        }
        stats.requests.fetch_add(answered, Ordering::Relaxed);
        for slot in starved.drain(..) {
            if let Some(c) = conns[slot as usize].as_mut() {
                c.recv_armed = true;
                sq.push(recv(mode, slot, c));
            }
        }
    }
    Ok(())
}

/// Sends what a connection has queued, or closes it once it is done with.
fn flush(mode: Mode, conns: &mut [Option<Conn>], slot: u32, sq: &mut Vec<squeue::Entry>) {
    let Some(c) = conns[slot as usize].as_mut() else {
        return;
    };
    if c.closing && c.recv_armed && !c.cancelled {
        // The slot is closed only after the receive's last completion, so that no completion
        // of this connection can arrive for the slot's next one.
        c.cancelled = true;
        sq.push(
            opcode::AsyncCancel::new(RECV | u64::from(slot))
                .build()
                .user_data(CANCEL),
        );
    }
    if c.sending {
        return;
    }
    if c.tx.is_empty() {
        std::mem::swap(&mut c.tx, &mut c.queued);
    }
    if !c.tx.is_empty() {
        c.sending = true;
        // The buffer is not touched until this send completes (answers queue behind it).
        let (ptr, len) = (c.tx.as_ptr(), c.tx.len() as u32);
        sq.push(
            on_fd!(mode, slot, |fd| opcode::Send::new(fd, ptr, len).build())
                .user_data(SEND | u64::from(slot)),
        );
        return;
    }
    if c.closing && !c.recv_armed {
        conns[slot as usize] = None;
        sq.push(
            on_fd!(mode, slot, |fd| opcode::Close::new(fd).build())
                .user_data(CLOSE | u64::from(slot)),
        );
    }
}

/// The connection's receive: multishot into the provided buffers, or one read into its buffer.
fn recv(mode: Mode, slot: u32, c: &mut Conn) -> squeue::Entry {
    let e = if mode.multishot {
        on_fd!(mode, slot, |fd| opcode::RecvMulti::new(fd, BGID).build())
    } else {
        let (ptr, len) = (c.rbuf.as_mut_ptr(), c.rbuf.len() as u32);
        on_fd!(mode, slot, |fd| opcode::Recv::new(fd, ptr, len).build())
    };
    e.user_data(RECV | u64::from(slot))
}

/// Moves queued entries into the submission queue, submitting when it is full.
fn push_all(ring: &mut IoUring, sq: &mut Vec<squeue::Entry>) -> io::Result<()> {
    let mut i = 0;
    while i < sq.len() {
        {
            let mut q = ring.submission();
            while i < sq.len() {
                // SAFETY: every buffer an entry points to outlives the operation: the send's
                // `tx` is not touched until its completion, nor a connection's `rbuf` while its
                // receive is armed (and the `Conn` is dropped only after), the provided buffers
                // live as long as the ring, and the other operations carry no buffer.
                if unsafe { q.push(&sq[i]) }.is_err() {
                    break;
                }
                i += 1;
            }
        }
        if i < sq.len() {
            ring.submit()?;
        }
    }
    sq.clear();
    Ok(())
}

fn set_nodelay(l: &TcpListener) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `one`, which outlives the call,
    // on the listener's open socket.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
