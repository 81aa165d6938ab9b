//! The byte stream of a connection, ingress or upstream: plain TCP, or TLS over it. TLS is
//! rustls's [`rustls::Connection`] driven by hand (`read_tls`, `process_new_packets`,
//! `write_tls`) over monoio's owned-buffer reads and writes, on the worker.
//!
//! Budget: plain TCP passes through untouched. TLS costs what rustls's buffered API costs and no
//! more: on the way out the plaintext is copied once into rustls (it encrypts into its own
//! records) and the ciphertext once into this stream's write buffer; on the way in the
//! ciphertext is copied once into rustls and the plaintext once out of it into the connection's
//! read buffer. Both buffers are kept with the connection, so a warm connection allocates
//! nothing per request. Never blocks the core: a handshake is the CPU of a few signatures, and
//! its I/O waits like any other.

use std::io::{self, BufRead, IoSlice, Write};

use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::buffer::make_room;

/// Ciphertext is read from the socket in pieces of this size (a full TLS record and its
/// overhead fit in one).
const CIPHER_CHUNK: usize = 17 << 10;

pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's connection state is a few KiB, and most streams are plain.
    Tls(Box<TlsStream>),
}

/// TLS over a TCP stream.
pub struct TlsStream {
    tcp: TcpStream,
    conn: rustls::Connection,
    /// Ciphertext read from the socket and not yet taken by rustls.
    rx: BytesMut,
    /// Ciphertext rustls produced, on its way to the socket.
    tx: Vec<u8>,
    /// The socket returned end of file.
    eof: bool,
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.tcp,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Whether bytes the peer sent are waiting above the socket (in TLS's buffers). A pooled
    /// connection with such bytes is out of step, as one with bytes in the socket is.
    pub fn has_buffered_input(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => {
                !t.rx.is_empty() || t.conn.reader().fill_buf().is_ok_and(|b| !b.is_empty())
            }
        }
    }

    /// Reads once into the spare capacity of `buf` (after `make_room`): for TLS, until at least
    /// one byte of plaintext arrives or the peer closes. `Ok(0)`: the peer closed. If the read is
    /// cancelled (its future dropped, e.g. by a timeout), `buf` is left empty (plain) or keeps
    /// what it had (TLS: the socket read owns only the ciphertext buffer).
    pub async fn read_into(
        &mut self,
        buf: &mut BytesMut,
        want: usize,
        chunk: usize,
    ) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => crate::buffer::read_into(s, buf, want, chunk).await,
            Stream::Tls(t) => t.read_plain(buf).await,
        }
    }

    /// Writes all of `data`.
    pub async fn write_all<T: IoBuf + AsRef<[u8]> + 'static>(
        &mut self,
        data: T,
    ) -> BufResult<(), T> {
        match self {
            Stream::Plain(s) => {
                let (res, data) = s.write_all(data).await;
                (res.map(|_| ()), data)
            }
            Stream::Tls(t) => {
                let res = t.write_parts(&[data.as_ref()]).await;
                (res, data)
            }
        }
    }

    /// Closes our side: a TLS `close_notify`, then the TCP half-close.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(t) => {
                t.conn.send_close_notify();
                let _ = t.flush().await;
                t.tcp.shutdown().await
            }
        }
    }

    /// A read that `handle` can cancel (the ingress watching a client while its event is
    /// delivered). Returns the bytes of plaintext appended to `buf` (TLS: or ciphertext taken, so
    /// that a record still incomplete counts as activity, not as a close); `Ok(0)`: the peer
    /// closed.
    pub async fn watch_read(
        &mut self,
        mut buf: BytesMut,
        handle: CancelHandle,
    ) -> (io::Result<usize>, BytesMut) {
        match self {
            Stream::Plain(s) => {
                let len = buf.len();
                let (res, slice) = s.cancelable_read(buf.slice_mut(len..), handle).await;
                (res, slice.into_inner())
            }
            Stream::Tls(t) => {
                let before = buf.len();
                match t.drain_plain(&mut buf) {
                    Ok(true) => return (Ok(buf.len() - before), buf),
                    Ok(false) => {}
                    Err(e) => return (Err(e), buf),
                }
                make_room(&mut t.rx, CIPHER_CHUNK, CIPHER_CHUNK);
                let owned = std::mem::take(&mut t.rx);
                let len = owned.len();
                let (res, slice) = t.tcp.cancelable_read(owned.slice_mut(len..), handle).await;
                t.rx = slice.into_inner();
                let n = match res {
                    Ok(0) => {
                        t.eof = true;
                        return (Ok(0), buf);
                    }
                    Ok(n) => n,
                    Err(e) => return (Err(e), buf),
                };
                if let Err(e) = t.process() {
                    return (Err(e), buf);
                }
                if let Err(e) = t.drain_plain(&mut buf) {
                    return (Err(e), buf);
                }
                (Ok((buf.len() - before).max(n)), buf)
            }
        }
    }
}

impl TlsStream {
    /// A TLS stream over `tcp` whose handshake has yet to run ([`TlsStream::handshake`]).
    pub fn new(tcp: TcpStream, conn: rustls::Connection) -> TlsStream {
        TlsStream {
            tcp,
            conn,
            rx: BytesMut::with_capacity(CIPHER_CHUNK),
            tx: Vec::with_capacity(CIPHER_CHUNK),
            eof: false,
        }
    }

    pub fn connection(&self) -> &rustls::Connection {
        &self.conn
    }

    /// Runs the handshake to its end. A TLS failure (a certificate refused, no common version,
    /// no server certificate) is an `InvalidData` error wrapping the [`rustls::Error`]; the
    /// alert rustls queued for the peer is sent first.
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush().await?;
                continue;
            }
            if !self.rx.is_empty() {
                if let Err(e) = self.process() {
                    let _ = self.flush().await;
                    return Err(e);
                }
                continue;
            }
            if self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ));
            }
            self.read_cipher().await?;
        }
        self.flush().await
    }

    /// Reads ciphertext from the socket into `rx`; `Ok(0)` at end of file.
    async fn read_cipher(&mut self) -> io::Result<usize> {
        make_room(&mut self.rx, CIPHER_CHUNK, CIPHER_CHUNK);
        let owned = std::mem::take(&mut self.rx);
        let len = owned.len();
        let (res, slice) = self.tcp.read(owned.slice_mut(len..)).await;
        self.rx = slice.into_inner();
        let n = res?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Hands rustls the ciphertext in `rx` (as much as it takes; it holds back while its
    /// plaintext buffer is full) and processes it. At end of file with nothing left, tells rustls
    /// so (an empty `read_tls`), so that its reader reports the close.
    fn process(&mut self) -> io::Result<()> {
        loop {
            let mut ciphertext: &[u8] = &self.rx;
            let n = if ciphertext.is_empty() && !self.eof {
                return Ok(());
            } else {
                match self.conn.read_tls(&mut ciphertext) {
                    Ok(n) => n,
                    // rustls's plaintext buffer is full: the reader must drain it first.
                    Err(e) if e.kind() == io::ErrorKind::Other && !self.rx.is_empty() => {
                        return Ok(())
                    }
                    Err(e) => return Err(e),
                }
            };
            self.rx.advance(n);
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if n == 0 || self.rx.is_empty() {
                return Ok(());
            }
        }
    }

    /// Copies the plaintext rustls holds into `buf`. `Ok(true)`: something was copied, or the
    /// peer closed; `Ok(false)`: nothing there yet.
    fn drain_plain(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        let mut any = false;
        loop {
            let mut reader = self.conn.reader();
            match reader.fill_buf() {
                Ok([]) => return Ok(true),
                Ok(chunk) => {
                    // The one copy out of rustls (its records are decrypted in its own buffer).
                    buf.extend_from_slice(chunk);
                    let n = chunk.len();
                    reader.consume(n);
                    any = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                // The peer closed without close_notify: a close like any other for HTTP/1.1,
                // whose messages carry their own framing.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_plain(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let before = buf.len();
        loop {
            if self.drain_plain(buf)? {
                if self.conn.wants_write() {
                    // Post-handshake messages (a session ticket, a key update) to answer.
                    self.flush().await?;
                }
                return Ok(buf.len() - before);
            }
            if !self.rx.is_empty() || self.eof {
                let had = self.rx.len();
                self.process()?;
                if self.rx.len() < had || self.eof {
                    continue;
                }
            }
            self.read_cipher().await?;
            self.process()?;
        }
    }

    /// Encrypts `parts` (as few records as rustls makes of them: it coalesces a vectored write)
    /// and writes them.
    pub async fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut at = 0; // index of the first part not fully written
        let mut off = 0; // bytes of that part already written
        while at < parts.len() {
            let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
            let mut k = 0;
            for (i, p) in parts[at..].iter().enumerate().take(4) {
                slices[k] = IoSlice::new(if i == 0 { &p[off..] } else { p });
                k += 1;
            }
            // rustls accepts up to its buffer limit (64 KiB of ciphertext waiting); the rest
            // goes after a flush.
            let mut n = self.conn.writer().write_vectored(&slices[..k])?;
            while at < parts.len() && n >= parts[at].len() - off {
                n -= parts[at].len() - off;
                at += 1;
                off = 0;
            }
            off += n;
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.tx.clear();
            // The ciphertext is copied into `tx` (rustls writes into any `io::Write`): one copy,
            // so that the socket write owns its buffer as io_uring needs.
            self.conn.write_tls(&mut self.tx)?;
            let tx = std::mem::take(&mut self.tx);
            let (res, tx) = self.tcp.write_all(tx).await;
            self.tx = tx;
            res?;
        }
        Ok(())
    }
}
