//! Connection read buffers (client connections and upstream connections): the one place they
//! grow and are read into.
//!
//! Budget: a warm connection does not allocate: `BytesMut::reserve` reclaims the same allocation
//! in place once the `Bytes` split off for the previous request or response are gone.

use std::io;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

/// The most a buffer grows for one read (a large body is read in steps of this size).
const MAX_GROWTH: usize = 8 << 20;

/// Makes room to read at least `want.clamp(1024, chunk)` more bytes, growing by up to `want`.
pub fn make_room(buf: &mut BytesMut, want: usize, chunk: usize) {
    if buf.capacity() - buf.len() < want.clamp(1024, chunk) {
        buf.reserve(want.clamp(chunk, MAX_GROWTH));
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
