//! The socket to the dispatcher: the end of the socket pair it inherited, split into a writer of
//! snapshot frames and a reader of the dispatcher's answers.

use std::os::fd::FromRawFd;

use imc_model::wire::{Decoder, ToControl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

pub struct LinkTx(OwnedWriteHalf);
pub struct LinkRx {
    read: OwnedReadHalf,
    decoder: Decoder,
    buf: Vec<u8>,
}

/// Wraps the inherited descriptor `fd`.
pub fn connect(fd: i32) -> std::io::Result<(LinkTx, LinkRx)> {
    if fd < 3 {
        return Err(std::io::Error::other(
            "not an inherited socket (descriptor below 3)",
        ));
    }
    // The descriptor must be open before this process takes ownership of it (closing one that
    // is not is an I/O-safety violation).
    // SAFETY: F_GETFD only reads the descriptor's flags; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the dispatcher passed this descriptor (IMC_CONTROL_FD) as our end of a socket pair
    // and nothing else in this process uses or closes it; ownership moves into the stream.
    let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    std.set_nonblocking(true)?;
    let (read, write) = UnixStream::from_std(std)?.into_split();
    Ok((
        LinkTx(write),
        LinkRx {
            read,
            decoder: Decoder::default(),
            buf: vec![0; 64 << 10],
        },
    ))
}

impl LinkTx {
    pub async fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.write_all(frame).await
    }
}

impl LinkRx {
    /// The next answer; `Err` once the dispatcher is gone or sent something unreadable.
    pub async fn next(&mut self) -> Result<ToControl, String> {
        loop {
            if let Some(m) = self
                .decoder
                .message::<ToControl>()
                .map_err(|e| e.to_string())?
            {
                return Ok(m);
            }
            match self.read.read(&mut self.buf).await {
                Ok(0) => return Err("end of stream".into()),
                Ok(n) => self.decoder.feed(&self.buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
