//! Reading HTTP/1.1 messages off a socket, shared by the client and the sinks.
//!
//! It reads exactly what the peer sent: header names keep their case, order and repetitions, and a
//! message that is framed wrongly is an error, never guessed at. It must never read past the end of
//! the message it was asked for, because pipelined requests and responses share the socket.

use std::io::{self, ErrorKind, Read};
use std::net::TcpStream;

/// Largest message head either side accepts. More than this means a broken peer, not a test case.
const MAX_HEAD: usize = 1 << 20;

/// The start line and the header fields of one message.
pub(crate) struct Head {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
}

/// How the body of a message is delimited (RFC 9112 §6.3).
pub(crate) enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// A socket plus the bytes read from it but not consumed yet.
pub(crate) struct Wire {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Bytes received but not consumed by any message read so far.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Reads once from the socket into the buffer. `Ok(0)` is end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one message head. `Ok(None)` when the peer closed before sending any byte of it.
    pub fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                return parse_head(&raw[..end]).map(Some);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("message head over 1 MiB"));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    let got = String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)]);
                    Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("peer closed in the middle of a message head: {got:?}"),
                    ))
                };
            }
        }
    }

    pub fn read_body(&mut self, framing: Framing) -> io::Result<Vec<u8>> {
        match framing {
            Framing::Empty => Ok(Vec::new()),
            Framing::Length(n) => self.take(n),
            Framing::Chunked => self.read_chunked(),
            Framing::UntilClose => {
                while self.fill()? > 0 {}
                Ok(self.take_buffered())
            }
        }
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("peer closed after {} of {n} body bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("line over 1 MiB"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "peer closed in the middle of a line",
                ));
            }
        }
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(&format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailer fields, then the empty line that ends the message.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(size)?);
            if !self.read_line()?.is_empty() {
                return Err(invalid("chunk data not followed by CRLF"));
            }
        }
    }
}

/// The framing of a message whose body is present unless the headers say otherwise.
pub(crate) fn framing_from_headers(headers: &[(String, String)], default: Framing) -> Framing {
    let chunked = header_all(headers, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return Framing::Chunked;
    }
    match header(headers, "content-length").map(|v| v.trim().parse::<usize>()) {
        Some(Ok(n)) => Framing::Length(n),
        Some(Err(_)) => Framing::UntilClose,
        None => default,
    }
}

/// The first value of header `name`, compared case-insensitively.
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of header `name` in arrival order, compared case-insensitively.
pub(crate) fn header_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(&format!("header line without a colon: {line:?}")))?;
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    Ok(Head {
        start_line,
        headers,
    })
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.to_string())
}
