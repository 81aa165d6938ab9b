//! The ingress: one task per client connection, requests answered in order (pipelined requests
//! are served one after the other from the same buffer).
//!
//! Budget: never copies a Content-Length body (it is frozen out of the connection buffer and
//! shared with every subscriber), never allocates per request once the connection is warm, never
//! blocks the core. Everything a client sends is bounded: head size and count (D4, 431), body size
//! (D3, 413), time to send a head and idle time (D5), time to send a body (408), the body bytes a
//! worker holds (503), the attributes of an event (413); anything malformed gets 400 and a close.
//! A refusal that leaves input unread closes gracefully: half-close, drain briefly, then close, so
//! that the client reads the answer instead of a reset.

use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::io::Canceller;
use monoio::net::TcpStream;
use rustls::ServerConfig;

use crate::buffer::make_room;
use crate::cloudevent::{write_binary_head, CeLimits};
use crate::delivery::put_content_length;
use crate::fanout::{fan_out, OutEvent, WATCHDOG};
use crate::http::{answer, parse_request, ChunkError, ChunkedDecoder, Method, Probe, RequestHead};
use crate::routing::{key_of, Channel};
use crate::stream::{Stream, TlsStream};
use crate::worker::{BodyCharge, Worker};

/// Initial and minimum read size of a client connection; grows to fit larger requests.
const READ_CHUNK: usize = 8 << 10;
/// A sync fan-out that takes longer than this starts watching the client for a disconnect.
/// Faster ones (nearly all) never pay for the extra read.
const WATCH_AFTER: Duration = Duration::from_millis(100);
/// A connection buffer that grew past this for a large request is replaced by a small one before
/// the connection waits for its next request: an idle keep-alive connection must not pin the
/// memory of the largest body it ever carried.
const SHRINK_ABOVE: usize = 256 << 10;
/// Graceful close after a refusal: how long, and how many bytes, the rest of the client's input is
/// read and dropped after our answer and FIN (nginx's lingering close, Go's close-write-and-wait).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

/// Why reading stopped before a request was complete.
enum ReadStop {
    /// The client closed, reset, or went quiet past its deadline; nothing more to answer.
    Gone,
    /// A deadline passed with a partial request in the buffer: answer 408, then close.
    TimedOut,
}

/// What the metrics of one ingress request need until it is answered.
struct Pending {
    start: Instant,
    method: u8,
    channel: Option<Rc<Channel>>,
    body: u64,
}

struct Connection {
    worker: Rc<Worker>,
    /// The request being served, when it is recorded (not for probes or with `--no-metrics`).
    pending: Option<Pending>,
    stream: Stream,
    buf: BytesMut,
    head: RequestHead,
    /// The client closed its side while its event was being delivered: answer, then close.
    peer_closed: bool,
    /// The connection closes after a refusal that may have left input unread: close gracefully.
    linger: bool,
    /// Scratch for the rare answers built at run time; reused.
    out: Vec<u8>,
}

/// Serves one client connection until it closes, misbehaves or times out. With `tls` (the https
/// port) the handshake runs first, within the header read timeout; a failed one is logged (at
/// most once a second) and closes the connection.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream, tls: Option<Arc<ServerConfig>>) {
    let _ = stream.set_nodelay(true);
    let stream = match tls {
        None => Stream::Plain(stream),
        Some(config) => match handshake(&worker, stream, config).await {
            Some(s) => s,
            None => {
                worker.conn_closed();
                return;
            }
        },
    };
    let mut conn = Connection {
        worker: worker.clone(),
        pending: None,
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
        head: RequestHead::new(),
        peer_closed: false,
        linger: false,
        out: Vec::new(),
    };
    let mut served: u32 = 0;
    while conn.serve_one().await {
        served = served.wrapping_add(1);
        // One clock read per 64 requests: a connection that never waits (its requests always
        // already there) gives the core back once the worker's other tasks are starving.
        if served.is_multiple_of(64) && worker.starving() {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    if conn.linger && !conn.peer_closed {
        conn.linger_close().await;
    } else if conn.stream.is_tls() && !conn.peer_closed {
        // A TLS connection ends with close_notify (as Go's server closes), so that a client can
        // tell the end from a truncation.
        let _ = monoio::time::timeout(LINGER, conn.stream.shutdown()).await;
    }
    worker.conn_closed();
}

impl Connection {
    async fn read_more(&mut self, want: usize, timeout: Duration) -> Result<usize, ReadStop> {
        let read = self.stream.read_into(&mut self.buf, want, READ_CHUNK);
        match monoio::time::timeout(timeout, read).await {
            Ok(Ok(0)) | Ok(Err(_)) => Err(ReadStop::Gone),
            Ok(Ok(n)) => Ok(n),
            // The cancelled read took the buffer with it; the connection is closing anyway.
            Err(_) => Err(ReadStop::TimedOut),
        }
    }

    /// Closes after a refusal: our FIN first, then the client's input is read and dropped until
    /// it closes too, or for at most [`LINGER`] / [`LINGER_BYTES`]. Closing with unread input
    /// would make the kernel send a reset, which can destroy the answer before the client reads it.
    async fn linger_close(&mut self) {
        let _ = self.stream.shutdown().await;
        let until = Instant::now() + LINGER;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.buf.clear();
            match self.read_more(READ_CHUNK, left).await {
                Ok(n) => drained += n,
                Err(_) => return,
            }
        }
    }

    /// Writes a refusal after which the connection closes gracefully.
    async fn refuse(&mut self, bytes: &'static [u8]) {
        self.linger = true;
        self.answer(bytes, false).await;
    }

    /// Writes bytes as they are: the interim `100 Continue`, and `answer`'s fast path. Final
    /// answers go through `answer`, which records them.
    async fn write(&mut self, bytes: &'static [u8]) -> bool {
        self.stream.write_all(bytes).await.0.is_ok()
    }

    /// Records the request being answered with `answer` (its status is in the status line).
    fn record(&mut self, answer: &[u8]) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let status = match answer.get(9..12) {
            Some(&[a, b, c]) if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => 0,
        };
        let w = &self.worker;
        let elapsed = p.start.elapsed();
        let key = (p.method, status, self.stream.is_tls());
        match &p.channel {
            Some(c) => c.ingress.record(
                &w.metrics,
                Some((&c.namespace, &c.name)),
                key,
                p.body,
                elapsed,
            ),
            None => w.no_channel.record(&w.metrics, None, key, p.body, elapsed),
        }
    }

    /// The `Connection` header an answer must carry: none for HTTP/1.1 keep-alive, a confirmation
    /// for HTTP/1.0 keep-alive, and the announcement of a close.
    fn connection_line(&self, keep_alive: bool) -> &'static [u8] {
        match (keep_alive, self.head.http10) {
            (true, false) => b"",
            (true, true) => b"Connection: keep-alive\r\n",
            (false, _) => b"Connection: close\r\n",
        }
    }

    /// Writes a fixed answer, adding the `Connection` header the client needs to see.
    async fn answer(&mut self, bytes: &'static [u8], keep_alive: bool) -> bool {
        self.record(bytes);
        let keep_alive = keep_alive && !self.peer_closed;
        let mut line = self.connection_line(keep_alive);
        if !keep_alive && bytes.windows(17).any(|w| w == b"Connection: close") {
            line = b"";
        }
        if line.is_empty() {
            return self.write(bytes).await && keep_alive;
        }
        let split = memchr::memmem::find(bytes, b"\r\n\r\n").map_or(bytes.len(), |i| i + 2);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.extend_from_slice(&bytes[..split]);
        out.extend_from_slice(line);
        out.extend_from_slice(&bytes[split..]);
        let (res, out) = self.stream.write_all(out).await;
        self.out = out;
        res.is_ok() && keep_alive
    }

    /// Reads, answers and (for events) delivers one request. Returns whether to go on.
    async fn serve_one(&mut self) -> bool {
        let w = &self.worker.clone();
        let limits = w.limits;
        if self.buf.capacity() > SHRINK_ABOVE && self.buf.len() <= READ_CHUNK {
            // After a large request: keep a small buffer (and what was pipelined into the old one).
            let mut small = BytesMut::with_capacity(READ_CHUNK);
            small.extend_from_slice(&self.buf);
            self.buf = small;
        }
        // 1. The head, within the idle timeout before its first byte and the header read
        //    timeout after it (D5).
        //    The deadline is set on the first pass that finds bytes but no whole head, so a
        //    head that arrives in one read costs no clock read (issue 14).
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                match parse_request(
                    &self.buf,
                    limits.max_head,
                    limits.max_headers,
                    &mut self.head,
                ) {
                    Ok(true) => break,
                    Ok(false) => {
                        let now = Instant::now();
                        let at = *deadline.get_or_insert(now + limits.header_timeout);
                        let left = at.saturating_duration_since(now);
                        match self.read_more(READ_CHUNK, left).await {
                            Ok(_) => continue,
                            Err(ReadStop::TimedOut) => {
                                self.refuse(answer::TIMEOUT).await;
                                return false;
                            }
                            Err(ReadStop::Gone) => return false,
                        }
                    }
                    Err(e) => {
                        let (bytes, why) = e.answer();
                        w.bad_request(why, None);
                        self.refuse(bytes).await;
                        return false;
                    }
                }
            }
            if self
                .read_more(READ_CHUNK, limits.idle_timeout)
                .await
                .is_err()
            {
                return false;
            }
        }
        let head = self.buf.split_to(self.head.len).freeze();
        // D13: a request that has started is finished before a draining worker exits; while
        // draining, connections close after their answer.
        let _active = w.active_request();
        let keep_alive = self.head.keep_alive && !w.draining.get();

        // 2. What the request is: a probe, a bad path, an unknown channel, or an event.
        let channel = match self.head.probe.clone() {
            // Contract §1.4: on the https port a kubelet probe gets 200 (no checker there).
            Probe::Kubelet if self.stream.is_tls() => {
                let bytes = if w.draining.get() {
                    answer::SHUTTING_DOWN
                } else {
                    answer::TLS_PROBE
                };
                return self.finish_without_body(bytes, keep_alive).await;
            }
            Probe::Kubelet => {
                let ready = w.hub.is_ready();
                return self
                    .finish_without_body(
                        if ready {
                            answer::READY
                        } else {
                            answer::NOT_READY
                        },
                        keep_alive,
                    )
                    .await;
            }
            Probe::Network(hash) => {
                let Some(hash) = hash else {
                    return self
                        .finish_without_body(answer::NETWORK_PROBE_NO_HASH, keep_alive)
                        .await;
                };
                return self.network_probe(&head[hash], keep_alive).await;
            }
            // Contract §6.1: the port `transport-encryption` closes answers 404 to all but
            // probes (8443 after the handshake while disabled, 8080 while strict).
            Probe::None if !w.serves(self.stream.is_tls()) => {
                return self
                    .finish_without_body(answer::ENCRYPTION_GATE, keep_alive)
                    .await;
            }
            Probe::None => {
                if w.metrics.enabled {
                    self.pending = Some(Pending {
                        start: Instant::now(),
                        method: match self.head.method {
                            Method::Post => 0,
                            Method::Options => 1,
                            Method::Other => 2,
                        },
                        channel: None,
                        body: 0,
                    });
                }
                let table = w.table();
                let target = std::str::from_utf8(&head[self.head.target.clone()]).unwrap_or("");
                let Some(key) = key_of(target) else {
                    return self.finish_without_body(answer::BAD_PATH, keep_alive).await;
                };
                let host = self
                    .head
                    .host
                    .clone()
                    .and_then(|r| std::str::from_utf8(&head[r]).ok());
                match table.route(&key, host) {
                    // D1: an unknown channel is 404 (upstream: 500).
                    None => {
                        return self
                            .finish_without_body(answer::UNKNOWN_CHANNEL, keep_alive)
                            .await
                    }
                    Some(c) => c.clone(),
                }
            }
        };
        if let Some(p) = &mut self.pending {
            p.channel = Some(channel.clone());
        }
        match self.head.method {
            Method::Post => {}
            Method::Options => return self.finish_without_body(answer::OPTIONS, keep_alive).await,
            Method::Other => {
                return self
                    .finish_without_body(answer::METHOD_NOT_ALLOWED, keep_alive)
                    .await
            }
        }

        // D11, D18: past the bound on deliveries in flight (the worker's, or this channel's
        // share of it), refuse at once, before reading the body.
        let fan = channel.subscribers.len();
        if w.overloaded(&channel, fan) {
            w.overload();
            w.dropped_for_overload(&channel);
            return self
                .finish_without_body(answer::OVERLOADED, keep_alive)
                .await;
        }

        // 3. The body, zero-copy for Content-Length, reassembled for chunked (D3 bounds both).
        if self
            .head
            .content_length
            .is_some_and(|n| n > limits.max_body as u64)
        {
            w.bad_request("body over the size limit", Some(&channel));
            self.refuse(answer::TOO_LARGE).await;
            return false;
        }
        // The worker holds as many body bytes as it may: refuse before reading this one.
        if self.head.has_body() && w.body_budget_full() {
            w.overload();
            w.bad_request("buffered request bodies at the bound", Some(&channel));
            self.refuse(answer::OVERLOADED_CLOSE).await;
            return false;
        }
        if self.head.expect_continue
            && self.head.has_body()
            && self.buf.is_empty()
            && !self.write(answer::CONTINUE).await
        {
            return false;
        }
        let (body, charge) = match self.body(true).await {
            Ok(b) => b,
            Err(Some(bytes)) => {
                self.refuse(bytes).await;
                return false;
            }
            Err(None) => return false,
        };
        if let Some(p) = &mut self.pending {
            p.body = body.len() as u64;
        }

        // 4. Validate and write the binary-mode head every subscriber gets (one copy of the
        //    attributes per event; the body is not touched).
        let content_type = self.head.content_type.clone().map(|r| &head[r]);
        let event_head = {
            let mut eh = w.event_head.borrow_mut();
            if eh.capacity() - eh.len() < 4096 {
                eh.reserve(64 << 10);
            }
            let ce_limits = CeLimits {
                max_attributes: limits.max_attributes,
                max_head: limits.max_head,
            };
            match write_binary_head(
                &head,
                &self.head.headers,
                content_type,
                body,
                &mut eh,
                ce_limits,
            ) {
                Ok((data, attrs_end)) => {
                    let pass_end = eh.len();
                    put_content_length(&mut eh, data.len());
                    Ok(OutEvent {
                        head: eh.split().freeze(),
                        attrs_end,
                        pass_end,
                        body: data,
                    })
                }
                Err(e) => {
                    eh.clear();
                    Err(e)
                }
            }
        };
        let event = match event_head {
            Ok(v) => v,
            Err(e) => {
                w.bad_request(&e.to_string(), Some(&channel));
                let bytes = if e.is_too_large() {
                    answer::EVENT_TOO_LARGE
                } else {
                    answer::INVALID_EVENT
                };
                return self.answer(bytes, keep_alive).await;
            }
        };
        drop(head);
        let Some(slot) = w.reserve(&channel, fan) else {
            w.overload();
            w.dropped_for_overload(&channel);
            return self.answer(answer::OVERLOADED, keep_alive).await;
        };

        // The ingress's one clock reading of this event, where latencies are recorded: every
        // subscriber's dispatch latency counts from it.
        let start = self.pending.as_ref().map(|p| p.start);

        // 5a. Async channels (D9: the annotation is re-read on every update): 202 now, delivery
        //     in the background, bounded by the same in-flight slots (D11).
        if channel.async_handler {
            let (bw, chan) = (w.clone(), channel.clone());
            monoio::spawn(async move {
                let _held = (slot, charge);
                let _ = monoio::time::timeout(WATCHDOG, fan_out(&bw, &chan, &event, start)).await;
            });
            return self.answer(answer::ACCEPTED, keep_alive).await;
        }

        // 5b. Sync: deliver, then answer 202 once every subscriber chain succeeded, 500 otherwise.
        // Pinned here, once: the fan-out is the largest future of a request, and handing it to
        // `deliver_watching` by value would store it twice in this connection's state and copy
        // it on every event (issue 14).
        let ok = {
            let fan = pin!(fan_out(w, &channel, &event, start));
            self.deliver_watching(fan).await
        };
        drop((slot, event, charge));
        match ok {
            Some(ok) => {
                let bytes = if ok { answer::ACCEPTED } else { answer::FAILED };
                self.answer(bytes, keep_alive).await
            }
            // The client is gone: its deliveries were cancelled with the fan-out (upstream
            // cancels with the request context); nobody is left to answer.
            None => false,
        }
    }

    /// Awaits a sync fan-out. If it outlasts `WATCH_AFTER`, the client's socket is watched too:
    /// a client that disconnects cancels the fan-out and every delivery in it (contract §2.6);
    /// bytes it pipelines meanwhile are kept for the next request. `None`: the client is gone.
    async fn deliver_watching(
        &mut self,
        mut fan: Pin<&mut impl Future<Output = bool>>,
    ) -> Option<bool> {
        if let Ok(ok) = monoio::time::timeout(WATCH_AFTER, fan.as_mut()).await {
            return Some(ok);
        }
        make_room(&mut self.buf, 1024, READ_CHUNK);
        let buf = std::mem::take(&mut self.buf);
        let canceller = Canceller::new();
        let mut read = pin!(self.stream.watch_read(buf, canceller.handle()));
        let mut watchdog = pin!(monoio::time::sleep(WATCHDOG.saturating_sub(WATCH_AFTER)));
        enum First<R> {
            Delivered(bool),
            Client(R),
            Watchdog,
        }
        let first = std::future::poll_fn(|cx| {
            if let Poll::Ready(ok) = fan.as_mut().poll(cx) {
                return Poll::Ready(First::Delivered(ok));
            }
            if let Poll::Ready(r) = read.as_mut().poll(cx) {
                return Poll::Ready(First::Client(r));
            }
            if watchdog.as_mut().poll(cx).is_ready() {
                return Poll::Ready(First::Watchdog);
            }
            Poll::Pending
        })
        .await;
        let outcome = match first {
            First::Client((res, buf)) => {
                self.buf = buf;
                return match res {
                    // Pipelined bytes, not a disconnect: keep them, wait for the fan-out alone.
                    Ok(n) if n > 0 => {
                        Some(monoio::time::timeout(WATCHDOG, fan).await.unwrap_or(false))
                    }
                    _ => None,
                };
            }
            First::Delivered(ok) => ok,
            First::Watchdog => false,
        };
        // The watch read is still pending: cancel it and take the buffer back (with any bytes
        // that arrived in the meantime).
        let _ = canceller.cancel();
        let (res, buf) = read.await;
        self.buf = buf;
        if matches!(res, Ok(0)) {
            self.peer_closed = true;
        }
        Some(outcome)
    }

    /// Answers a request whose body is not needed. A body already on its way is read and
    /// dropped (bounded by the body limit); one the client holds back behind `Expect:
    /// 100-continue` is never asked for, and the connection closes after the answer.
    async fn finish_without_body(&mut self, bytes: &'static [u8], keep_alive: bool) -> bool {
        let mut keep = keep_alive;
        if self.head.has_body() {
            if self.head.expect_continue && self.buf.is_empty() {
                // The client may send the body anyway: close gracefully.
                keep = false;
                self.linger = true;
            } else {
                match self.body(false).await {
                    Ok(_) => {}
                    Err(Some(bytes)) => {
                        self.refuse(bytes).await;
                        return false;
                    }
                    Err(None) => return false,
                }
            }
        }
        self.answer(bytes, keep).await
    }

    /// Reads the request body, keeping it (`keep`) or dropping it as it arrives. Content-Length
    /// bodies are kept zero-copy, chunked ones reassembled; both are bounded by the body limit
    /// (D3), must arrive within `--body-read-timeout` of its first read, must make progress within the
    /// header timeout between reads (D5), and a kept body is charged to the worker's body budget
    /// as it arrives (the charge is returned: it lives as long as the event is delivered).
    /// `Err(Some(answer))`: answer that and close; `Err(None)`: just close.
    async fn body(
        &mut self,
        keep: bool,
    ) -> Result<(Bytes, Option<BodyCharge>), Option<&'static [u8]>> {
        let limits = self.worker.limits;
        // The body's deadline, taken at its first read: a body that came with its head (nearly
        // all) costs no clock read.
        let mut until: Option<Instant> = None;
        // A client that stalls while its body is dropped gets no 408, only a close.
        let stop = |s: ReadStop| match s {
            ReadStop::TimedOut if keep => Some(answer::TIMEOUT),
            _ => None,
        };
        let mut charge = keep.then(|| self.worker.body_charge());
        // Grows the charge to `n` bytes; past the budget, 503 and close.
        let charged = |charge: &mut Option<BodyCharge>, w: &Worker, n: usize| {
            if charge.as_mut().is_some_and(|c| !c.grow_to(n)) {
                w.overload();
                w.bad_request("buffered request bodies at the bound", None);
                return Err(Some(answer::OVERLOADED_CLOSE));
            }
            Ok(())
        };
        if let Some(n) = self.head.content_length {
            if n > limits.max_body as u64 {
                return Err(Some(answer::TOO_LARGE));
            }
            let n = n as usize;
            if keep {
                loop {
                    charged(&mut charge, &self.worker, self.buf.len().min(n))?;
                    if self.buf.len() >= n {
                        return Ok((self.buf.split_to(n).freeze(), charge));
                    }
                    let want = n - self.buf.len();
                    let wait = body_wait(&mut until, limits.body_timeout, limits.header_timeout);
                    self.read_more(want, wait).await.map_err(stop)?;
                }
            }
            let mut left = n;
            loop {
                let k = left.min(self.buf.len());
                let _ = self.buf.split_to(k);
                left -= k;
                if left == 0 {
                    return Ok((Bytes::new(), None));
                }
                let wait = body_wait(&mut until, limits.body_timeout, limits.header_timeout);
                self.read_more(READ_CHUNK, wait).await.map_err(stop)?;
            }
        }
        if !self.head.chunked {
            return Ok((Bytes::new(), None));
        }
        let mut dec = ChunkedDecoder::default();
        let mut body = BytesMut::new();
        loop {
            match dec.decode(&mut self.buf, &mut body, limits.max_body) {
                Ok(true) if keep => {
                    charged(&mut charge, &self.worker, body.len())?;
                    return Ok((body.freeze(), charge));
                }
                Ok(true) => return Ok((Bytes::new(), None)),
                Ok(false) if !keep => body.clear(),
                Ok(false) => charged(&mut charge, &self.worker, body.len())?,
                Err(ChunkError::TooLarge) => {
                    self.worker
                        .bad_request("chunked body over the size limit", None);
                    return Err(Some(answer::TOO_LARGE));
                }
                Err(ChunkError::Malformed) => {
                    self.worker.bad_request("malformed chunked body", None);
                    return Err(Some(answer::MALFORMED));
                }
            }
            let wait = body_wait(&mut until, limits.body_timeout, limits.header_timeout);
            self.read_more(READ_CHUNK, wait).await.map_err(stop)?;
        }
    }

    /// `K-Network-Probe`: 200 echoing `K-Network-Hash` (contract §1.4).
    async fn network_probe(&mut self, hash: &[u8], keep_alive: bool) -> bool {
        if self.head.has_body() && self.body(false).await.is_err() {
            self.linger = true;
            return false;
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nK-Network-Hash: ");
        out.extend_from_slice(hash);
        out.extend_from_slice(b"\r\nContent-Length: 0\r\n");
        out.extend_from_slice(self.connection_line(keep_alive));
        out.extend_from_slice(b"\r\n");
        let (res, out) = self.stream.write_all(out).await;
        self.out = out;
        res.is_ok() && keep_alive
    }
}

/// The server side of the https port's handshake.
async fn handshake(worker: &Worker, tcp: TcpStream, config: Arc<ServerConfig>) -> Option<Stream> {
    let conn = match rustls::ServerConnection::new(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "TLS connection refused");
            return None;
        }
    };
    let mut tls = TlsStream::new(tcp, rustls::Connection::Server(conn));
    let why = match monoio::time::timeout(worker.limits.header_timeout, tls.handshake()).await {
        Ok(Ok(())) => return Some(Stream::Tls(Box::new(tls))),
        Ok(Err(e)) => crate::tls::describe(&e),
        Err(_) => "timeout".to_owned(),
    };
    if let Some(suppressed) = worker.tls_log.allow() {
        tracing::info!(reason = %why, suppressed, "TLS handshake on the https ingress failed");
    }
    None
}

/// How long the next read of a body may wait: until the body's deadline (`total` from its first
/// read), and no longer than `progress` without a byte.
fn body_wait(until: &mut Option<Instant>, total: Duration, progress: Duration) -> Duration {
    let now = Instant::now();
    let end = *until.get_or_insert(now + total);
    end.saturating_duration_since(now).min(progress)
}

impl Worker {
    /// Counts the deliveries an overloaded event would have made.
    fn dropped_for_overload(&self, channel: &Channel) {
        if self.metrics.enabled {
            for sub in channel.subscribers.iter() {
                sub.series.outcome(
                    &self.metrics,
                    &channel.names(sub),
                    crate::metrics::Outcome::DroppedOverload,
                );
            }
        }
    }

    /// Logs a refused request, at most once a second per worker (a flood of bad input must not
    /// become a flood of log lines), with what was wrong and which channel it was for.
    pub fn bad_request(&self, why: &str, channel: Option<&Channel>) {
        if let Some(suppressed) = self.bad_input_log.allow() {
            match channel {
                Some(c) => tracing::info!(
                    channel = %format_args!("{}/{}", c.namespace, c.name),
                    reason = why,
                    suppressed,
                    "request refused"
                ),
                None => tracing::info!(reason = why, suppressed, "request refused"),
            }
        }
    }
}
