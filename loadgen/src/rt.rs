//! One monoio runtime on the calling thread, on the dispatcher's driver choice.

use std::future::Future;
use std::io;

use imc_dispatcher::worker::Driver;

/// Runs `f()` to completion on a new runtime of `driver` on this thread.
pub fn block_on<F, Fut>(driver: Driver, f: F) -> io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    match driver {
        Driver::IoUring => {
            // As in the dispatcher: completions are reaped when the thread enters the kernel
            // anyway, so no interrupt per completion, and only this thread submits.
            Ok(monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(imc_dispatcher::worker::uring_builder())
                .with_entries(4096)
                .enable_timer()
                .build()?
                .block_on(f()))
        }
        Driver::Epoll => Ok(monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(f())),
    }
}
