//! Sinks: real HTTP/1.1 servers standing in for subscribers. Each records every request it gets
//! and answers from a script.
//!
//! A sink serves keep-alive connections (the dispatcher pools them), one thread per connection,
//! and accepts bodies framed by `Content-Length` or chunked.

use std::fmt;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::{self, Framing, Wire};

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    /// Time to wait after the request has been read (and recorded) before answering.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
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
}

impl Recorded {
    /// First value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::header_all(&self.headers, name)
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

struct State {
    script: Vec<Reply>,
    requests: Mutex<Vec<Recorded>>,
    arrived: Condvar,
    stopping: AtomicBool,
    /// Accepted connections, so that dropping the sink can end their threads.
    conns: Mutex<Vec<TcpStream>>,
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = listener.local_addr().expect("sink address");
        let state = Arc::new(State {
            script,
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let accept_state = Arc::clone(&state);
        thread::spawn(move || accept_loop(listener, accept_state));
        Sink { addr, state }
    }

    /// A sink that answers every request with an empty 200.
    pub fn ok() -> Sink {
        Sink::start(vec![Reply::status(200)])
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived and returns all of them. Panics after
    /// `timeout`, listing what did arrive.
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        let mut requests = self.state.requests.lock().unwrap();
        while requests.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "sink {} got {} of {n} requests within {timeout:?}: {:#?}",
                    self.addr,
                    requests.len(),
                    *requests
                );
            }
            requests = self.state.arrived.wait_timeout(requests, left).unwrap().0;
        }
        requests.clone()
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
        for conn in self.state.conns.lock().unwrap().drain(..) {
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
        if let Ok(clone) = stream.try_clone() {
            state.conns.lock().unwrap().push(clone);
        }
        let conn_state = Arc::clone(&state);
        thread::spawn(move || serve(stream, conn_state));
    }
}

fn serve(stream: TcpStream, state: Arc<State>) {
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
        let reply = {
            let mut requests = state.requests.lock().unwrap();
            let reply = state.script[requests.len().min(state.script.len() - 1)].clone();
            requests.push(Recorded {
                method,
                target,
                version,
                headers: head.headers,
                body,
                at: Instant::now(),
            });
            state.arrived.notify_all();
            reply
        };
        thread::sleep(reply.delay);
        if wire.stream.write_all(&reply.to_bytes()).is_err() || close {
            return;
        }
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
