//! A raw HTTP/1.1 client: it sends exactly the headers it is given, can keep one connection for
//! several requests, can write arbitrary bytes (pipelining, garbage), and can tell when the server
//! closed the connection.

use std::fmt;
use std::io::{self, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::wire::{self, Framing, Wire};

/// Read and write timeout of a connection: long enough for the slowest sync fan-out a test builds,
/// short enough that a hung dispatcher fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A request as it goes on the wire.
#[derive(Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: &'static str,
    /// In the order they are sent, names spelled as given.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            version: "HTTP/1.1",
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn post(target: &str) -> Request {
        Request::new("POST", target)
    }

    pub fn method(mut self, method: &str) -> Request {
        self.method = method.to_string();
        self
    }

    pub fn target(mut self, target: &str) -> Request {
        self.target = target.to_string();
        self
    }

    /// Appends a header; repeated names are sent as repeated lines.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces every header called `name` (any case) with one line `name: value`.
    pub fn set_header(self, name: &str, value: &str) -> Request {
        self.without_header(name).header(name, value)
    }

    pub fn without_header(mut self, name: &str) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn host(self, host: &str) -> Request {
        self.set_header("Host", host)
    }

    /// Sets the CloudEvent id (`ce-id`), so events sent by one test can be told apart.
    pub fn id(self, id: &str) -> Request {
        self.set_header("ce-id", id)
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    pub fn http10(mut self) -> Request {
        self.version = "HTTP/1.0";
        self
    }

    /// The request's bytes. A `Host` header is added to HTTP/1.1 requests that have none, and a
    /// `Content-Length` when the request has neither it nor `Transfer-Encoding` and carries a body
    /// (or is a POST or PUT); everything else is sent as given.
    pub fn to_bytes(&self) -> Vec<u8> {
        let has = |name: &str| wire::header(&self.headers, name).is_some();
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        if self.version == "HTTP/1.1" && !has("host") {
            out.push_str("Host: 127.0.0.1\r\n");
        }
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let wants_length = !self.body.is_empty() || self.method == "POST" || self.method == "PUT";
        if wants_length && !has("content-length") && !has("transfer-encoding") {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        let shown = &bytes[..bytes.len().min(2048)];
        write!(f, "{}", String::from_utf8_lossy(shown).trim_end())?;
        if shown.len() < bytes.len() {
            write!(f, "... ({} bytes in all)", bytes.len())?;
        }
        Ok(())
    }
}

/// A response as read off the wire.
#[derive(Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::header_all(&self.headers, name)
    }

    /// Panics, showing the whole response, unless the status is `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) {
        assert_eq!(self.status, status, "unexpected status in {self:?}");
    }

    /// Panics, showing the whole response, unless the status is `status` and the body is empty.
    #[track_caller]
    pub fn assert_status_empty(&self, status: u16) {
        self.assert_status(status);
        assert!(self.body.is_empty(), "expected an empty body in {self:?}");
    }

    #[track_caller]
    pub fn assert_header(&self, name: &str, value: &str) {
        assert_eq!(self.header(name), Some(value), "header {name} in {self:?}");
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.version, self.status)?;
        for (n, v) in &self.headers {
            write!(f, "\n  {n}: {v}")?;
        }
        write!(f, "\n  body: {:?}", String::from_utf8_lossy(&self.body))
    }
}

/// How a connection ended, as seen by [`Conn::wait_closed`].
#[derive(Debug)]
pub struct Closed {
    /// Time from the call to the close.
    pub after: Duration,
    /// Bytes the server sent before closing that no earlier read consumed (e.g. a 408).
    pub trailing: Vec<u8>,
    /// The close was a reset (or an abort), not an orderly end of stream.
    pub reset: bool,
}

/// One client connection.
pub struct Conn {
    wire: Wire,
}

impl Conn {
    pub fn try_open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            wire: Wire::new(stream),
        })
    }

    #[track_caller]
    pub fn open(addr: SocketAddr) -> Conn {
        Conn::try_open(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Writes the request and reads its final response, skipping 1xx responses.
    pub fn request(&mut self, req: &Request) -> io::Result<Response> {
        self.write_raw(&req.to_bytes())?;
        self.read_response_to(&req.method)
    }

    /// [`Conn::request`], panicking with the request on any I/O error.
    #[track_caller]
    pub fn send(&mut self, req: &Request) -> Response {
        self.request(req)
            .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.target))
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.stream.write_all(bytes)?;
        self.wire.stream.flush()
    }

    /// A second handle on this connection's socket, to write from another thread while this
    /// one reads (a client that keeps sending a body the server already refused).
    pub fn writer(&self) -> io::Result<TcpStream> {
        self.wire.stream.try_clone()
    }

    /// Closes the sending half: the server reads end of stream.
    pub fn shutdown_write(&mut self) {
        let _ = self.wire.stream.shutdown(std::net::Shutdown::Write);
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.wire
            .stream
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
    }

    /// Reads the final response to a request that was not HEAD, skipping 1xx responses.
    pub fn read_response(&mut self) -> io::Result<Response> {
        self.read_response_to("POST")
    }

    /// Sends E1-style `req` behind `Expect: 100-continue`: the head alone, then (after the
    /// interim response) `body`. Returns the interim and the final response.
    pub fn send_expecting_continue(&mut self, req: &Request, body: &[u8]) -> (Response, Response) {
        let head = req
            .clone()
            .header("Expect", "100-continue")
            .header("Content-Length", &body.len().to_string())
            .body("");
        self.write_raw(&head.to_bytes()).expect("write head");
        let interim = self
            .read_message()
            .expect("an interim response before the body");
        self.write_raw(body).expect("write body");
        let last = self.read_response().expect("final response");
        (interim, last)
    }

    /// Reads exactly one response message, which may be an interim 1xx.
    pub fn read_message(&mut self) -> io::Result<Response> {
        self.read_message_to("POST")
    }

    fn read_response_to(&mut self, method: &str) -> io::Result<Response> {
        loop {
            let resp = self.read_message_to(method)?;
            // 101 would switch protocols; no test asks for it, so it counts as final.
            if !(100..200).contains(&resp.status) || resp.status == 101 {
                return Ok(resp);
            }
        }
    }

    fn read_message_to(&mut self, method: &str) -> io::Result<Response> {
        let head = self.wire.read_head()?.ok_or_else(|| {
            io::Error::new(
                ErrorKind::UnexpectedEof,
                "server closed the connection without a response",
            )
        })?;
        let mut parts = head.start_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| version.starts_with("HTTP/"))
            .ok_or_else(|| {
                io::Error::new(
                    ErrorKind::InvalidData,
                    format!("bad status line {:?}", head.start_line),
                )
            })?;
        let bodiless =
            method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
        let framing = if bodiless {
            Framing::Empty
        } else {
            wire::framing_from_headers(&head.headers, Framing::UntilClose)
        };
        let body = self.wire.read_body(framing)?;
        Ok(Response {
            version,
            status,
            headers: head.headers,
            body,
        })
    }

    /// Waits up to `timeout` for the server to close the connection (end of stream or reset).
    /// `None` if it is still open then. Whatever the server sent before closing is kept.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<Closed> {
        let start = Instant::now();
        let deadline = start + timeout;
        // `None`: still open; `Some(reset)`: closed.
        let closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            self.set_read_timeout(left);
            match self.wire.fill() {
                Ok(0) => break Some(false),
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break None
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Reset, aborted, broken pipe: the server is gone.
                Err(_) => break Some(true),
            }
        };
        self.set_read_timeout(IO_TIMEOUT);
        closed.map(|reset| Closed {
            after: start.elapsed(),
            trailing: self.wire.take_buffered(),
            reset,
        })
    }
}

/// A client for load from many threads: it keeps one connection across requests and opens a new
/// one after the server closed the last (an answer with `Connection: close`, or any error).
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<Conn>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, conn: None }
    }

    /// Whether a connection from an earlier request is open (the next request reuses it).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Sends `req` on the current connection, opening one first if there is none. On an error
    /// the connection is dropped, and the next call opens a fresh one.
    pub fn request(&mut self, req: &Request) -> io::Result<Response> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(Conn::try_open(self.addr)?),
        };
        match conn.request(req) {
            Ok(resp) => {
                let close = resp
                    .header_all("connection")
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case("close"));
                if close {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}
