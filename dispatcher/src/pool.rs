//! Per-worker keep-alive HTTP/1.1 connection pools to subscribers, reply targets and dead-letter
//! sinks, and the client exchange over them.
//!
//! Budget: never copies the body (a request is one vectored write of three shared `Bytes`: the
//! target's prefix, the event head, the body), never blocks the core (DNS runs on a small blocking
//! pool and is cached), and allocates nothing per request once connections are warm: each
//! connection keeps its read buffer and its iovec array. A request is the target's prefix, the
//! event head (for a dead-letter request: the attributes and then the error extensions), and the
//! body, written with one `writev`. Finding a target's idle connections does not hash: each
//! [`Dest`] keeps a handle to its authority's idle list, looked up once per routing table.
//!
//! https targets go over the same pools: the pool key holds the target's trust set, the idle list
//! holds this worker's client configuration for it (with the worker's TLS session cache, so that
//! new connections resume), and a connection is a [`Stream::Tls`] whose handshake ran in
//! `connect`. A handshake or certificate failure is a transport failure, retried by policy.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use monoio::buf::IoVecBuf;
use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;
use rustls::client::ClientSessionMemoryCache;
use rustls::ClientConfig;

use crate::delivery::Failure;
use crate::http::{parse_response, ChunkedDecoder, HeadScan};
use crate::metrics::WorkerRegistry;
use crate::routing::Dest;
use crate::stream::{Stream, TlsStream};
use crate::worker::Throttle;

/// Go's default transport: idle pooled connections are closed after 90 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Go's default dialer timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Go's default transport `TLSHandshakeTimeout`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DNS_TTL: Duration = Duration::from_secs(30);
const MAX_RESPONSE_HEAD: usize = 64 << 10;
/// Responses are usually a few hundred bytes; the buffer grows for larger ones.
const READ_CHUNK: usize = 4 << 10;
/// `100 Continue` answers accepted before the final response (Go's client allows 5 interim
/// responses). An endless stream of them is a protocol failure, not a loop.
const MAX_CONTINUES: usize = 8;

/// A complete response from a target. `head` and `body` are slices of the connection's buffer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: Bytes,
    pub body: Bytes,
}

struct Conn {
    stream: Stream,
    buf: BytesMut,
    iov: Vec<libc::iovec>,
    idle_since: Instant,
    /// Where the search for the end of the response head stands (linear in a trickled head).
    scan: HeadScan,
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            iov: Vec::with_capacity(4),
            idle_since: Instant::now(),
            scan: HeadScan::default(),
        }
    }

    /// Whether an idle connection can carry a request: the peer has sent nothing since its last
    /// response (bytes would be an unsolicited response that the next request would be blamed
    /// for, and EOF a connection it closed). One non-blocking `recv` with `MSG_PEEK`, per reuse.
    fn is_clean(&mut self) -> bool {
        if self.stream.has_buffered_input() {
            return false;
        }
        let mut byte = 0u8;
        // SAFETY: `recv` writes at most one byte into `byte`, which outlives the call; the fd is
        // this connection's open socket, and an idle connection has no operation in flight that
        // could race with the peek (MSG_PEEK leaves the socket's data where it is).
        let n = unsafe {
            libc::recv(
                self.stream.tcp().as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    async fn read_more(&mut self, want: usize) -> io::Result<usize> {
        self.stream.read_into(&mut self.buf, want, READ_CHUNK).await
    }
}

/// The parts of an outgoing request, written with one `writev`; empty parts are skipped.
struct Frame {
    parts: [Bytes; 4],
    iov: Vec<libc::iovec>,
}

impl Frame {
    fn new(iov: Vec<libc::iovec>, parts: [Bytes; 4]) -> Frame {
        let mut f = Frame { parts, iov };
        f.refresh();
        f
    }

    fn refresh(&mut self) {
        self.iov.clear();
        for p in &self.parts {
            if !p.is_empty() {
                self.iov.push(libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                });
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        for p in &mut self.parts {
            let k = n.min(p.len());
            p.advance(k);
            n -= k;
        }
        self.refresh();
    }

    fn is_empty(&self) -> bool {
        self.iov.is_empty()
    }

    fn into_iov(self) -> Vec<libc::iovec> {
        let Frame { mut iov, .. } = self;
        iov.clear();
        iov
    }
}

// SAFETY: every iovec points into one of the `Bytes` in `parts`, which the frame owns and never
// mutates while the runtime holds it (`advance` and `refresh` run only between writes, when the
// frame is back in our hands). The iovec array lives on the heap (a `Vec`), so moving the frame
// into the runtime's operation does not move the array the kernel reads.
unsafe impl IoVecBuf for Frame {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len()
    }
}

/// How an exchange ended when it did not produce a response.
enum ExchangeError {
    /// The peer closed or reset before sending a byte of response: on a reused connection this is
    /// the server having dropped an idle connection, and the request is resent on a fresh one.
    Closed(String),
    Failed(Failure),
}

struct DnsEntry {
    addrs: Rc<[SocketAddr]>,
    expires: Instant,
}

/// The idle connections to one authority (`host:port`, for https with its trust set), most
/// recently used last. Every [`Dest`] of a worker that points at that authority holds the same
/// list (see [`Dest::idle`]).
pub struct IdleList {
    conns: RefCell<Vec<Conn>>,
    /// https: this worker's client configuration of the target's trust set (made once, here).
    tls: Option<Arc<ClientConfig>>,
}

/// One worker's connections to every upstream authority.
pub struct Pool {
    idle: RefCell<HashMap<Rc<str>, Rc<IdleList>>>,
    dns: RefCell<HashMap<Rc<str>, DnsEntry>>,
    max_idle_per_host: usize,
    max_response_body: usize,
    /// Hits, misses and the idle count are exported from here.
    stats: Arc<WorkerRegistry>,
    /// This worker's TLS sessions with https targets, for resumption.
    sessions: Arc<ClientSessionMemoryCache>,
    /// Failed handshakes are logged at most once a second per worker.
    tls_log: Throttle,
    /// The worker's coarse clock (its ticker sets it every 20 ms, see [`Pool::tick`]): what
    /// idle connections are stamped with and expired by. The 90 s idle bound does not need a
    /// clock read per take and per put (issue 14: two of the reads a subscriber paid per event).
    now: Cell<Instant>,
}

impl Pool {
    pub fn new(
        max_idle_per_host: usize,
        max_response_body: usize,
        stats: Arc<WorkerRegistry>,
    ) -> Pool {
        Pool {
            idle: RefCell::default(),
            dns: RefCell::default(),
            max_idle_per_host,
            max_response_body,
            stats,
            sessions: crate::tls::worker_sessions(),
            tls_log: Throttle::default(),
            now: Cell::new(Instant::now()),
        }
    }

    /// Advances the coarse clock of idle connections; the worker's ticker calls it.
    pub fn tick(&self, now: Instant) {
        self.now.set(now);
    }

    /// Sends `POST` to `dest` (its prefix, then `head`, `extra` and `body`) and reads the whole
    /// response.
    pub async fn send(
        &self,
        dest: &Dest,
        head: &Bytes,
        extra: &Bytes,
        body: &Bytes,
    ) -> Result<Response, Failure> {
        if let Some(Err(e)) = &dest.tls {
            return Err(Failure::Transport(format!("{}: {e}", dest.url)));
        }
        let idle = self.idle_list(dest);
        let pooled = self.take(idle);
        let stats = if pooled.is_some() {
            &self.stats.pool_hits
        } else {
            &self.stats.pool_misses
        };
        stats.add(1);
        if let Some(mut conn) = pooled {
            match self.exchange(&mut conn, dest, [head, extra, body]).await {
                Ok((resp, keep)) => {
                    if keep {
                        self.put(idle, conn);
                    }
                    return Ok(resp);
                }
                Err(ExchangeError::Closed(_)) => {} // stale: fall through to a fresh connection
                Err(ExchangeError::Failed(f)) => return Err(f),
            }
        }
        // Boxed: a new connection (DNS, connect, maybe a TLS handshake) is the pool's miss path,
        // and its state is four times an exchange's; inline it would be laid out, and copied,
        // in every send of every event (issue 14). One allocation per new connection.
        let mut conn = Box::pin(self.connect(dest, idle)).await?;
        match self.exchange(&mut conn, dest, [head, extra, body]).await {
            Ok((resp, keep)) => {
                if keep {
                    self.put(idle, conn);
                }
                Ok(resp)
            }
            Err(ExchangeError::Closed(e)) => Err(Failure::Transport(e)),
            Err(ExchangeError::Failed(f)) => Err(f),
        }
    }

    /// The idle list of `dest`'s authority: a map lookup the first time this `Dest` (of this
    /// routing table) is used, then the handle it keeps. A worker has one pool, so the handle a
    /// `Dest` caches is always into this pool's map.
    fn idle_list<'d>(&self, dest: &'d Dest) -> &'d IdleList {
        dest.idle.get_or_init(|| {
            self.idle
                .borrow_mut()
                .entry(dest.key.as_ref().into())
                .or_insert_with(|| {
                    Rc::new(IdleList {
                        conns: RefCell::default(),
                        tls: match &dest.tls {
                            Some(Ok(t)) => Some(t.for_worker(&self.sessions)),
                            _ => None,
                        },
                    })
                })
                .clone()
        })
    }

    /// The most recently used idle connection that is still clean (see [`Conn::is_clean`]);
    /// expired and dirty ones are closed on the way.
    fn take(&self, idle: &IdleList) -> Option<Conn> {
        let mut list = idle.conns.borrow_mut();
        let gauge = &self.stats.pool_idle;
        while let Some(mut conn) = list.pop() {
            if self.now.get().saturating_duration_since(conn.idle_since) >= IDLE_TIMEOUT {
                // Most recently used first: anything older than an expired one is older still.
                gauge.set(gauge.get() - 1 - list.len() as u64);
                list.clear();
                return None;
            }
            gauge.set(gauge.get() - 1);
            if conn.is_clean() {
                return Some(conn);
            }
            // Unsolicited bytes or EOF: never used, closed here.
        }
        None
    }

    fn put(&self, idle: &IdleList, mut conn: Conn) {
        let mut list = idle.conns.borrow_mut();
        if list.len() < self.max_idle_per_host {
            conn.idle_since = self.now.get();
            list.push(conn);
            self.stats.pool_idle.add(1);
        }
    }

    async fn resolve(&self, dest: &Dest) -> Result<Rc<[SocketAddr]>, Failure> {
        let now = Instant::now();
        if let Some(e) = self.dns.borrow().get(&*dest.key) {
            if e.expires > now {
                return Ok(e.addrs.clone());
            }
        }
        let (addrs, ttl) = if let Ok(ip) = dest.host.parse::<IpAddr>() {
            (
                vec![SocketAddr::new(ip, dest.port)],
                Duration::from_secs(86400 * 365),
            )
        } else {
            // getaddrinfo blocks: it runs on the blocking pool, never on the core.
            let host = dest.host.to_string();
            let port = dest.port;
            let found = monoio::spawn_blocking(move || {
                (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<_>>())
            })
            .await;
            match found {
                Ok(Ok(v)) if !v.is_empty() => (v, DNS_TTL),
                Ok(Ok(_)) => {
                    return Err(Failure::Transport(format!(
                        "lookup {}: no addresses",
                        dest.host
                    )))
                }
                Ok(Err(e)) => return Err(Failure::Transport(format!("lookup {}: {e}", dest.host))),
                Err(_) => return Err(Failure::Transport("resolver unavailable".into())),
            }
        };
        let addrs: Rc<[SocketAddr]> = addrs.into();
        self.dns.borrow_mut().insert(
            dest.key.as_ref().into(),
            DnsEntry {
                addrs: addrs.clone(),
                expires: now + ttl,
            },
        );
        Ok(addrs)
    }

    async fn connect(&self, dest: &Dest, idle: &IdleList) -> Result<Conn, Failure> {
        let addrs = self.resolve(dest).await?;
        let mut last = String::new();
        for addr in addrs.iter() {
            match monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect_addr(*addr)).await {
                Ok(Ok(stream)) => {
                    // Whole requests go out in one write; Nagle would only add latency.
                    let _ = stream.set_nodelay(true);
                    return match (&dest.tls, &idle.tls) {
                        (Some(Ok(t)), Some(config)) => {
                            self.handshake(dest, stream, config, t).await
                        }
                        _ => Ok(Conn::new(Stream::Plain(stream))),
                    };
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "i/o timeout".into(),
            }
        }
        Err(Failure::Transport(format!("dial tcp {}: {last}", dest.key)))
    }

    /// The TLS handshake with an https target: SNI and verification against the target's host,
    /// resuming a session of this worker's cache when the target gave one.
    async fn handshake(
        &self,
        dest: &Dest,
        tcp: TcpStream,
        config: &Arc<ClientConfig>,
        tls: &crate::tls::ClientTls,
    ) -> Result<Conn, Failure> {
        let conn = rustls::ClientConnection::new(config.clone(), tls.name.clone())
            .map_err(|e| Failure::Transport(format!("tls with {}: {e}", dest.url)))?;
        let mut stream = TlsStream::new(tcp, rustls::Connection::Client(conn));
        let reason = match monoio::time::timeout(HANDSHAKE_TIMEOUT, stream.handshake()).await {
            Ok(Ok(())) => return Ok(Conn::new(Stream::Tls(Box::new(stream)))),
            Ok(Err(e)) => crate::tls::describe(&e),
            Err(_) => "timeout".to_owned(),
        };
        // Logged here, whatever the delivery's outcome (a dead-letter sink may still take the
        // event): a certificate problem is the operator's to fix.
        if let Some(suppressed) = self.tls_log.allow() {
            tracing::warn!(url = %dest.url, reason = %reason, suppressed, "TLS handshake with an https target failed");
        }
        Err(Failure::Transport(format!(
            "tls handshake with {}: {reason}",
            dest.url
        )))
    }

    async fn exchange(
        &self,
        conn: &mut Conn,
        dest: &Dest,
        [head, extra, body]: [&Bytes; 3],
    ) -> Result<(Response, bool), ExchangeError> {
        // Reference-count increments, no copy: the same body goes to every subscriber.
        let mut frame = Frame::new(
            std::mem::take(&mut conn.iov),
            [
                dest.prefix.clone(),
                head.clone(),
                extra.clone(),
                body.clone(),
            ],
        );
        match &mut conn.stream {
            Stream::Plain(tcp) => {
                while !frame.is_empty() {
                    let (res, f) = tcp.writev(frame).await;
                    frame = f;
                    match res {
                        Ok(0) => {
                            return Err(ExchangeError::Closed(
                                "connection closed while writing".into(),
                            ))
                        }
                        Ok(n) => frame.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(ExchangeError::Closed(format!("write: {e}"))),
                    }
                }
            }
            Stream::Tls(tls) => {
                let [a, b, c, d] = &frame.parts;
                if let Err(e) = tls.write_parts(&[a, b, c, d]).await {
                    return Err(ExchangeError::Closed(format!("write: {e}")));
                }
            }
        }
        conn.iov = frame.into_iov();
        let fail = |f: Failure| ExchangeError::Failed(f);

        let mut got_any = !conn.buf.is_empty();
        let mut continues = 0;
        conn.scan.reset();
        let rh = loop {
            // An empty buffer (the usual case right after the request went out) cannot hold a
            // head: read first instead of parsing nothing.
            if !conn.buf.is_empty() {
                match parse_response(&conn.buf, MAX_RESPONSE_HEAD, &mut conn.scan) {
                    // `100 Continue` is skipped, a bounded number of times.
                    Ok(Some(h)) if h.status == 100 && continues < MAX_CONTINUES => {
                        continues += 1;
                        conn.buf.advance(h.len);
                        continue;
                    }
                    Ok(Some(h)) if h.status == 100 => {
                        return Err(fail(Failure::Protocol("too many 100 Continue responses")))
                    }
                    // We never ask to switch protocols nor for hints: any other 1xx means the
                    // peer is not answering this request. The connection is dropped.
                    Ok(Some(h)) if (100..200).contains(&h.status) => {
                        return Err(fail(Failure::Protocol("unexpected 1xx response")))
                    }
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(e) => return Err(fail(Failure::Protocol(e))),
                }
            }
            match conn.read_more(READ_CHUNK).await {
                Ok(0) if got_any => {
                    return Err(fail(Failure::Transport(
                        "connection closed mid-response".into(),
                    )))
                }
                Ok(0) => return Err(ExchangeError::Closed("EOF before any response".into())),
                Ok(_) => got_any = true,
                Err(e) if !got_any => return Err(ExchangeError::Closed(format!("read: {e}"))),
                Err(e) => return Err(fail(Failure::Transport(format!("read: {e}")))),
            }
        };
        let status = rh.status;
        let head_bytes = conn.buf.split_to(rh.len).freeze();
        let max = self.max_response_body;
        let truncated = || fail(Failure::Transport("connection closed mid-body".into()));
        let body = if rh.bodiless() {
            Bytes::new()
        } else if rh.chunked {
            // A chunked response is reassembled: one copy, off the common path.
            let mut dec = ChunkedDecoder::default();
            let mut out = BytesMut::new();
            loop {
                match dec.decode(&mut conn.buf, &mut out, max) {
                    Ok(true) => break out.freeze(),
                    Ok(false) => {}
                    Err(_) => return Err(fail(Failure::Protocol("bad chunked response body"))),
                }
                match conn.read_more(READ_CHUNK).await {
                    Ok(0) => return Err(truncated()),
                    Ok(_) => {}
                    Err(e) => return Err(fail(Failure::Transport(format!("read: {e}")))),
                }
            }
        } else if let Some(n) = rh.content_length {
            if n > max as u64 {
                return Err(fail(Failure::Protocol("response body over the size limit")));
            }
            let n = n as usize;
            while conn.buf.len() < n {
                let want = n - conn.buf.len();
                match conn.read_more(want).await {
                    Ok(0) => return Err(truncated()),
                    Ok(_) => {}
                    Err(e) => return Err(fail(Failure::Transport(format!("read: {e}")))),
                }
            }
            conn.buf.split_to(n).freeze()
        } else {
            loop {
                match conn.read_more(READ_CHUNK).await {
                    Ok(0) => break conn.buf.split().freeze(),
                    Ok(_) if conn.buf.len() > max => {
                        return Err(fail(Failure::Protocol("response body over the size limit")))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(fail(Failure::Transport(format!("read: {e}")))),
                }
            }
        };
        // Bytes after the response mean the peer is out of step: never reuse that connection.
        let keep = rh.keep_alive && conn.buf.is_empty();
        Ok((
            Response {
                status,
                head: head_bytes,
                body,
            },
            keep,
        ))
    }
}
