//! Sinks: real HTTP/1.1 servers standing in for subscribers, reply targets and dead-letter sinks.
//! Each records every request it gets and answers from a script: a list of replies, or a function
//! of the request.
//!
//! A sink serves keep-alive connections (the dispatcher pools them), one thread per connection,
//! and accepts bodies framed by `Content-Length` or chunked. While an answer is delayed or held the
//! sink watches the connection, so a test can see the dispatcher give up on a request
//! ([`Recorded::peer_closed_at`]).

use std::collections::HashMap;
use std::fmt;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::{self, Framing, Wire};

/// How often a waiting answer checks whether the peer closed or the sink was released.
const POLL: Duration = Duration::from_millis(20);

/// Longest a held answer waits for [`Sink::release`]: no test holds a request longer, and a
/// forgotten release must not leave threads behind forever.
const HOLD_LIMIT: Duration = Duration::from_secs(120);

/// What the sink does once a request has been read and recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Answer after the delay.
    Answer,
    /// Answer once the sink is released (after the delay, if any).
    Hold,
    /// Close the connection without answering, after the delay.
    HangUp,
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Duration,
    action: Action,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            action: Action::Answer,
        }
    }

    /// A binary-mode CloudEvent answer (`Ce-Specversion: 1.0` and the three required attributes);
    /// add `Content-Type` and a body with [`Reply::header`] and [`Reply::body`].
    pub fn binary_event(status: u16, id: &str, source: &str, type_: &str) -> Reply {
        Reply::status(status)
            .header("Ce-Specversion", "1.0")
            .header("Ce-Id", id)
            .header("Ce-Source", source)
            .header("Ce-Type", type_)
    }

    /// A structured-mode CloudEvent answer: `Content-Type: application/cloudevents+json` and this
    /// JSON body.
    pub fn structured_event(status: u16, json: &str) -> Reply {
        Reply::status(status)
            .header("Content-Type", "application/cloudevents+json")
            .body(json)
    }

    /// Closes the connection without a response (the dispatcher sees the connection end before
    /// any byte of an answer: a transport error).
    pub fn hang_up() -> Reply {
        Reply {
            action: Action::HangUp,
            ..Reply::status(0)
        }
    }

    /// Never answers until [`Sink::release`]; then answers an empty 200.
    pub fn stall() -> Reply {
        Reply::status(200).held()
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    /// Time to wait after the request has been read (and recorded) before answering. The wait
    /// ends early, without an answer, if the peer closes the connection.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Answers only once [`Sink::release`] has been called (at most [`HOLD_LIMIT`] later).
    pub fn held(mut self) -> Reply {
        self.action = Action::Hold;
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let bodiless =
            (100..200).contains(&self.status) || self.status == 204 || self.status == 304;
        if !bodiless && wire::header(&self.headers, "content-length").is_none() {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A request as the sink received it.
#[derive(Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub version: String,
    /// In arrival order, names spelled as sent, repeated headers kept.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it came chunked.
    pub body: Vec<u8>,
    /// When the whole request had been read.
    pub at: Instant,
    /// When the answer had been written, if it was.
    pub answered_at: Option<Instant>,
    /// When the peer closed the connection while the answer was delayed or held.
    pub peer_closed_at: Option<Instant>,
}

impl Recorded {
    /// First value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::header_all(&self.headers, name)
    }

    /// The `ce-id` header, or "" without one.
    pub fn id(&self) -> &str {
        self.header("ce-id").unwrap_or_default()
    }

    /// Panics, showing the whole request, unless header `name` is present exactly once with `value`.
    #[track_caller]
    pub fn assert_header(&self, name: &str, value: &str) {
        assert_eq!(
            self.header_all(name),
            vec![value],
            "header {name} in {self:?}"
        );
    }

    #[track_caller]
    pub fn assert_no_header(&self, name: &str) {
        assert!(
            self.header(name).is_none(),
            "header {name} must not be sent, in {self:?}"
        );
    }
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.method, self.target, self.version)?;
        for (n, v) in &self.headers {
            write!(f, "\n  {n}: {v}")?;
        }
        let shown = &self.body[..self.body.len().min(512)];
        write!(
            f,
            "\n  body ({} bytes): {:?}",
            self.body.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

/// A script function: the request and its index at this sink (0 for the first request).
type ScriptFn = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

enum Script {
    /// Request i gets entry i; the last entry repeats.
    List(Vec<Reply>),
    Function(Box<ScriptFn>),
}

struct State {
    script: Script,
    /// `None`: keep whole requests. `Some(names)`: keep only these headers and no body.
    keep: Option<Vec<String>>,
    requests: Mutex<Vec<Recorded>>,
    /// Signalled when a request is recorded or a record is updated.
    arrived: Condvar,
    stopping: AtomicBool,
    released: AtomicBool,
    /// Open connections, so that dropping the sink can end their threads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

impl State {
    /// Records the request and picks its answer, under one lock, so indexes follow arrival.
    fn record(&self, mut rec: Recorded) -> (Reply, usize) {
        let mut requests = self.requests.lock().unwrap();
        let index = requests.len();
        let reply = match &self.script {
            Script::List(list) => list[index.min(list.len() - 1)].clone(),
            Script::Function(f) => f(&rec, index),
        };
        if let Some(names) = &self.keep {
            rec.headers
                .retain(|(n, _)| names.iter().any(|k| k.eq_ignore_ascii_case(n)));
            rec.body = Vec::new();
        }
        requests.push(rec);
        self.arrived.notify_all();
        (reply, index)
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut Recorded)) {
        let mut requests = self.requests.lock().unwrap();
        f(&mut requests[index]);
        self.arrived.notify_all();
    }
}

/// A scripted HTTP server on `127.0.0.1`, stopped when dropped.
pub struct Sink {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Sink {
    /// Starts a sink answering request i with `script[i]`; the last reply repeats.
    pub fn start(script: Vec<Reply>) -> Sink {
        assert!(!script.is_empty(), "a sink needs at least one reply");
        Sink::launch(Script::List(script), None)
    }

    /// A sink that answers every request with an empty 200.
    pub fn ok() -> Sink {
        Sink::start(vec![Reply::status(200)])
    }

    /// Starts a sink that answers each request with `script(request, index)`. The function runs
    /// under the sink's lock: it must not call back into this sink.
    pub fn respond(script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Sink {
        Sink::launch(Script::Function(Box::new(script)), None)
    }

    /// [`Sink::respond`] for tests with many thousands of requests: the script still sees whole
    /// requests, but only the headers named in `keep` are recorded, and no body.
    pub fn respond_keeping(
        keep: &[&str],
        script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Sink {
        let keep = keep.iter().map(|k| k.to_string()).collect();
        Sink::launch(Script::Function(Box::new(script)), Some(keep))
    }

    fn launch(script: Script, keep: Option<Vec<String>>) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = listener.local_addr().expect("sink address");
        let state = Arc::new(State {
            script,
            keep,
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            stopping: AtomicBool::new(false),
            released: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let accept_state = Arc::clone(&state);
        thread::spawn(move || accept_loop(listener, accept_state));
        Sink { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Lets every held answer ([`Reply::held`], [`Reply::stall`]) go, now and from now on.
    pub fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The number of requests received so far.
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Runs `f` on the requests received so far without copying them.
    pub fn inspect<T>(&self, f: impl FnOnce(&[Recorded]) -> T) -> T {
        f(&self.state.requests.lock().unwrap())
    }

    /// Waits until at least `n` requests have arrived and returns all of them. Panics after
    /// `timeout`, listing what did arrive.
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(timeout, &format!("{n} requests"), |r| r.len() >= n);
        self.requests()
    }

    /// Waits until `done` holds for the requests received so far. Panics after `timeout`, naming
    /// `what` and listing the last 20 requests.
    #[track_caller]
    pub fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Recorded]) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut requests = self.state.requests.lock().unwrap();
        while !done(&requests) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let tail = &requests[requests.len().saturating_sub(20)..];
                panic!(
                    "sink {}: not within {timeout:?}: {what}; {} requests, the last {}: {tail:#?}",
                    self.addr,
                    requests.len(),
                    tail.len()
                );
            }
            requests = self.state.arrived.wait_timeout(requests, left).unwrap().0;
        }
    }

    /// Waits until the peer closed the connection of request `index` while its answer was
    /// delayed or held, and returns when that was seen.
    #[track_caller]
    pub fn wait_peer_closed(&self, index: usize, timeout: Duration) -> Instant {
        self.wait_until(
            timeout,
            &format!("the dispatcher closes the connection of request {index}"),
            |r| r.get(index).is_some_and(|r| r.peer_closed_at.is_some()),
        );
        self.requests()[index].peer_closed_at.expect("checked")
    }

    /// Panics unless no request at all has arrived.
    #[track_caller]
    pub fn assert_untouched(&self) {
        let requests = self.requests();
        assert!(
            requests.is_empty(),
            "sink {} must get no traffic, got {requests:#?}",
            self.addr
        );
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, conn) in self.state.conns.lock().unwrap().drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            state.conns.lock().unwrap().insert(id, clone);
        }
        let conn_state = Arc::clone(&state);
        thread::spawn(move || {
            serve(stream, &conn_state);
            conn_state.conns.lock().unwrap().remove(&id);
        });
    }
}

/// How a delayed or held answer's wait ended.
enum Waited {
    Done,
    PeerClosed,
    Stopping,
}

fn serve(stream: TcpStream, state: &State) {
    let _ = stream.set_nodelay(true);
    let mut wire = Wire::new(stream);
    // Any read or write error ends the connection: the sink only records what arrived whole.
    while let Ok(Some(head)) = wire.read_head() {
        let mut parts = head.start_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let version = parts.next().unwrap_or_default().to_string();
        let expects_continue = wire::header(&head.headers, "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue
            && wire
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .is_err()
        {
            return;
        }
        let framing = wire::framing_from_headers(&head.headers, Framing::Empty);
        let Ok(body) = wire.read_body(framing) else {
            return;
        };
        let connection = wire::header(&head.headers, "connection").map(str::to_ascii_lowercase);
        let close = match connection.as_deref() {
            Some(c) if c.contains("close") => true,
            Some(c) if c.contains("keep-alive") => false,
            _ => version == "HTTP/1.0",
        };
        let (reply, index) = state.record(Recorded {
            method,
            target,
            version,
            headers: head.headers,
            body,
            at: Instant::now(),
            answered_at: None,
            peer_closed_at: None,
        });
        match wait(&wire.stream, state, &reply) {
            Waited::Done => {}
            Waited::PeerClosed => {
                state.update(index, |r| r.peer_closed_at = Some(Instant::now()));
                return;
            }
            Waited::Stopping => return,
        }
        if reply.action == Action::HangUp {
            let _ = wire.stream.shutdown(Shutdown::Both);
            return;
        }
        if wire.stream.write_all(&reply.to_bytes()).is_err() {
            return;
        }
        state.update(index, |r| r.answered_at = Some(Instant::now()));
        if close {
            let _ = wire.stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Waits out the reply's delay, and for a held reply the release, watching the connection.
fn wait(stream: &TcpStream, state: &State, reply: &Reply) -> Waited {
    let start = Instant::now();
    let delay_end = start + reply.delay;
    let hold_end = start + HOLD_LIMIT;
    loop {
        if state.stopping.load(Ordering::SeqCst) {
            return Waited::Stopping;
        }
        let now = Instant::now();
        let delayed = now < delay_end;
        let held = reply.action == Action::Hold
            && !state.released.load(Ordering::SeqCst)
            && now < hold_end;
        if !delayed && !held {
            return Waited::Done;
        }
        let slice = if delayed {
            (delay_end - now).min(POLL)
        } else {
            POLL
        };
        if peer_closed(stream, slice) {
            return Waited::PeerClosed;
        }
    }
}

/// Whether the peer closed the connection, waiting up to `timeout` for a sign of it.
fn peer_closed(stream: &TcpStream, timeout: Duration) -> bool {
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => {
            // Bytes of a next request: the peer is still there; do not spin on them.
            thread::sleep(timeout);
            false
        }
        Err(e) => !matches!(
            e.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
        ),
    };
    let _ = stream.set_read_timeout(None);
    closed
}

/// Adapts a script to see, instead of the sink-wide index, how many earlier requests carried the
/// same `ce-id`: 0 for an event's first attempt, 1 for its first retry, and so on.
pub fn per_id(
    script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
) -> impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static {
    let seen: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    move |req, _| {
        let nth = {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(req.id().to_string()).or_insert(0);
            *n += 1;
            *n - 1
        };
        script(req, nth)
    }
}

/// A reason phrase by status class; clients must not depend on its text (RFC 9112 §4).
fn reason(status: u16) -> &'static str {
    match status / 100 {
        1 => "Continue",
        2 => "OK",
        3 => "Redirect",
        4 => "Client Error",
        _ => "Server Error",
    }
}
