//! A misbehaving subscriber: a raw TCP server that reads each request the dispatcher sends it and
//! answers with a script of raw bytes, exactly as written, however wrong they are (unsolicited
//! responses, conflicting framing, protocol switches, endless interim responses, closes).
//!
//! It also counts the connections it accepted and sees when the dispatcher closes one, so a test
//! can tell whether a connection was reused, dropped, or kept after a bad answer.
//!
//! One thread per connection. While the script writes or sleeps the connection is not read; the
//! next request (or the end of the stream) is read once the script of the last one is done.

use std::collections::HashMap;
use std::fmt;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::{self, Framing, Wire};

/// What the server does after it read a request, in order.
#[derive(Clone, Debug)]
pub enum Act {
    /// Writes these bytes as they are, in one write.
    Write(Vec<u8>),
    /// Waits, without reading, before the next act.
    Sleep(Duration),
    /// Writes these bytes over and over, as fast as the socket takes them, for this long (or until
    /// a write fails: the dispatcher closed the connection).
    Flood(Vec<u8>, Duration),
    /// Closes the connection (a FIN: the request was read whole, nothing is left unread).
    Close,
}

impl Act {
    /// [`Act::Write`] of these bytes.
    pub fn write(bytes: impl AsRef<[u8]>) -> Act {
        Act::Write(bytes.as_ref().to_vec())
    }
}

/// An empty `202 Accepted` with `Content-Length: 0`: a well-formed, reusable answer.
pub const ACCEPTED: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";

/// A request as the rogue server read it.
#[derive(Clone)]
pub struct Seen {
    /// Its index at this server: 0 for the first request on any connection.
    pub index: usize,
    /// The connection it came on: 0 for the first connection accepted.
    pub conn: usize,
    /// Its index on that connection: 0 for the first.
    pub nth: usize,
    pub method: String,
    pub target: String,
    /// In arrival order, names spelled as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Seen {
    /// First value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    /// The `ce-id` header, or "" without one.
    pub fn id(&self) -> &str {
        self.header("ce-id").unwrap_or_default()
    }
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} (connection {}, request {} on it): {} {} ce-id={:?}, {} body bytes",
            self.index,
            self.conn,
            self.nth,
            self.method,
            self.target,
            self.id(),
            self.body.len()
        )
    }
}

/// How a connection of the rogue server ended, as far as it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Still open.
    Open,
    /// The dispatcher closed it: end of stream (or a reset) seen while reading.
    ByPeer(Instant),
    /// The script closed it ([`Act::Close`]), or the server was dropped.
    ByScript,
}

/// The script: what to do after each request.
type Script = dyn Fn(&Seen) -> Vec<Act> + Send + Sync;

struct State {
    script: Box<Script>,
    requests: Mutex<Vec<Seen>>,
    /// How each accepted connection ended, by connection index.
    conns: Mutex<Vec<Ended>>,
    /// Signalled on every new request and every change of a connection.
    changed: Condvar,
    stopping: AtomicBool,
    /// Bytes written by [`Act::Flood`] so far, on every connection.
    flooded: AtomicU64,
    /// Clones of the open streams, so that dropping the server ends their threads.
    streams: Mutex<HashMap<usize, TcpStream>>,
}

impl State {
    fn set_ended(&self, conn: usize, ended: Ended) {
        let mut conns = self.conns.lock().unwrap();
        if conns[conn] == Ended::Open {
            conns[conn] = ended;
        }
        drop(conns);
        self.changed.notify_all();
    }
}

/// The rogue server, on `127.0.0.1`, stopped when dropped.
pub struct Rogue {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Rogue {
    /// Starts a server that answers every request with the acts `script(request)` returns.
    pub fn start(script: impl Fn(&Seen) -> Vec<Act> + Send + Sync + 'static) -> Rogue {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind rogue server");
        let addr = listener.local_addr().expect("rogue server address");
        let state = Arc::new(State {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            flooded: AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
        });
        let accept_state = Arc::clone(&state);
        thread::spawn(move || accept_loop(listener, accept_state));
        Rogue { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests read so far that carry this `ce-id`.
    pub fn with_id(&self, id: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.id() == id)
            .collect()
    }

    /// The number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.conns.lock().unwrap().len()
    }

    /// Bytes written by [`Act::Flood`] so far (what the peer read, or has in its buffers).
    pub fn flooded(&self) -> u64 {
        self.state.flooded.load(Ordering::SeqCst)
    }

    /// How connection `conn` ended so far.
    pub fn ended(&self, conn: usize) -> Ended {
        self.state.conns.lock().unwrap()[conn]
    }

    /// Waits until at least `n` requests have been read and returns all of them; panics after
    /// `timeout`, listing what did arrive.
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        let mut requests = self.state.requests.lock().unwrap();
        while requests.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "rogue server {}: {} requests within {timeout:?}, expected {n}: {:#?}",
                    self.addr,
                    requests.len(),
                    *requests
                );
            }
            requests = self.state.changed.wait_timeout(requests, left).unwrap().0;
        }
        requests.clone()
    }

    /// Waits up to `timeout` for the dispatcher to close connection `conn` (end of stream or
    /// reset, seen by a read) and returns how it ended then: [`Ended::Open`] if it is still open.
    pub fn wait_closed_by_peer(&self, conn: usize, timeout: Duration) -> Ended {
        let deadline = Instant::now() + timeout;
        let mut conns = self.state.conns.lock().unwrap();
        loop {
            let ended = conns.get(conn).copied().unwrap_or(Ended::Open);
            let left = deadline.saturating_duration_since(Instant::now());
            if ended != Ended::Open || left.is_zero() {
                return ended;
            }
            conns = self.state.changed.wait_timeout(conns, left).unwrap().0;
        }
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, stream) in self.state.streams.lock().unwrap().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let conn = {
            let mut conns = state.conns.lock().unwrap();
            conns.push(Ended::Open);
            conns.len() - 1
        };
        state.changed.notify_all();
        if let Ok(clone) = stream.try_clone() {
            state.streams.lock().unwrap().insert(conn, clone);
        }
        let conn_state = Arc::clone(&state);
        thread::spawn(move || {
            serve(stream, conn, &conn_state);
            conn_state.streams.lock().unwrap().remove(&conn);
        });
    }
}

fn serve(stream: TcpStream, conn: usize, state: &State) {
    let _ = stream.set_nodelay(true);
    let mut wire = Wire::new(stream);
    let mut nth = 0;
    // End of stream, a reset, or bytes that are not a request end the loop: the dispatcher is
    // done with this connection.
    while let Ok(Some(head)) = wire.read_head() {
        let mut parts = head.start_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let framing = wire::framing_from_headers(&head.headers, Framing::Empty);
        let Ok(body) = wire.read_body(framing) else {
            break;
        };
        let seen = {
            let mut requests = state.requests.lock().unwrap();
            let seen = Seen {
                index: requests.len(),
                conn,
                nth,
                method,
                target,
                headers: head.headers,
                body,
                at: Instant::now(),
            };
            requests.push(seen.clone());
            seen
        };
        state.changed.notify_all();
        nth += 1;
        for act in (state.script)(&seen) {
            if state.stopping.load(Ordering::SeqCst) {
                state.set_ended(conn, Ended::ByScript);
                return;
            }
            let ok = match act {
                Act::Write(bytes) => wire.stream.write_all(&bytes).is_ok(),
                Act::Sleep(d) => {
                    thread::sleep(d);
                    true
                }
                Act::Flood(bytes, duration) => flood(&mut wire.stream, &bytes, duration, state),
                Act::Close => {
                    let _ = wire.stream.shutdown(Shutdown::Both);
                    state.set_ended(conn, Ended::ByScript);
                    return;
                }
            };
            if !ok {
                // A write failed: the dispatcher closed (or reset) the connection.
                state.set_ended(conn, Ended::ByPeer(Instant::now()));
                return;
            }
        }
    }
    let ended = if state.stopping.load(Ordering::SeqCst) {
        Ended::ByScript
    } else {
        Ended::ByPeer(Instant::now())
    };
    state.set_ended(conn, ended);
}

/// Writes `unit` over and over for `duration`, in blocks of at least 16 KiB, never leaving a
/// `unit` half-written when it checks the clock. False when a write failed (the peer is gone).
fn flood(stream: &mut TcpStream, unit: &[u8], duration: Duration, state: &State) -> bool {
    let mut block = Vec::with_capacity(16 << 10);
    while block.len() < 16 << 10 && !unit.is_empty() {
        block.extend_from_slice(unit);
    }
    // A peer that stops reading must not hold the flood past its end: short write timeouts,
    // and the rest of a block is written before the next one.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let end = Instant::now() + duration;
    let mut sent = 0;
    let ok = loop {
        if sent == block.len() {
            if Instant::now() >= end || state.stopping.load(Ordering::SeqCst) {
                break true;
            }
            sent = 0;
        }
        match stream.write(&block[sent..]) {
            Ok(0) => break false,
            Ok(n) => {
                sent += n;
                state.flooded.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= end + Duration::from_secs(1) {
                    // The peer neither reads nor closes: give up on the rest of the block.
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = stream.set_write_timeout(None);
    ok
}
