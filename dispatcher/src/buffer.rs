//! Connection read buffers (client connections and upstream connections): the one place they
//! grow and are read into.
//!
//! Budget: a warm connection does not allocate: `BytesMut::reserve` reclaims the same allocation
//! in place once the `Bytes` split off for the previous request or response are gone.
//!
//! A buffer grows with the bytes that arrive, never with what a peer announces: a peer that
//! says `Content-Length: 32000000` (or a 32 MB chunk) and sends 500 bytes gets a buffer of a few
//! KiB, not 32 MB of reserved address space. Growth at most doubles what the buffer holds, so a
//! large body costs a few reallocations (amortised: under one extra copy of the body) instead of
//! one up-front reservation a client could make for free.

use std::io;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

/// The most a buffer grows for one read.
const MAX_GROWTH: usize = 8 << 20;

/// Makes room to read at least `want.clamp(1024, chunk)` more bytes. The buffer grows by up to
/// `want`, but by no more than it already holds (or `chunk`, for a small one): what is reserved
/// never runs ahead of what arrived by more than that.
pub fn make_room(buf: &mut BytesMut, want: usize, chunk: usize) {
    if buf.capacity() - buf.len() < want.clamp(1024, chunk) {
        let earned = buf.len().max(chunk);
        buf.reserve(want.clamp(chunk, MAX_GROWTH).min(earned));
    }
}

/// Reads once from `stream` into the spare capacity of `buf` (after `make_room`). If the read is
/// cancelled (its future dropped, e.g. by a timeout), the buffer goes with the operation and
/// `buf` is left empty.
pub async fn read_into(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    want: usize,
    chunk: usize,
) -> io::Result<usize> {
    make_room(buf, want, chunk);
    let owned = std::mem::take(buf);
    let len = owned.len();
    let (res, slice) = stream.read(owned.slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer announcing 32 MB and sending 500 bytes gets a buffer sized by the 500 bytes.
    #[test]
    fn growth_follows_the_data_not_the_announcement() {
        let mut buf = BytesMut::new();
        make_room(&mut buf, 32 << 20, 8 << 10);
        assert!(buf.capacity() < 64 << 10, "{}", buf.capacity());
        buf.extend_from_slice(&[0u8; 500]);
        make_room(&mut buf, 32 << 20, 8 << 10);
        assert!(buf.capacity() < 64 << 10, "{}", buf.capacity());
        // Data that keeps arriving keeps the buffer growing, geometrically.
        let mut reallocs = 0;
        while buf.len() < 32 << 20 {
            let before = buf.capacity();
            let want = (32 << 20) - buf.len();
            make_room(&mut buf, want, 8 << 10);
            if buf.capacity() != before {
                reallocs += 1;
            }
            let room = buf.capacity() - buf.len();
            let n = room.min((32 << 20) - buf.len());
            buf.extend_from_slice(&vec![0u8; n]);
            assert!(buf.capacity() <= 2 * buf.len() + (16 << 10));
        }
        assert!(reallocs < 20, "{reallocs} reallocations");
    }
}
