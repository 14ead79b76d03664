//! The async-std adapter.

use std::time::{Duration, Instant};

use super::{BoxFuture, Reactor, Runtime};

/// Runs berth on async-std's global executor and timers.
///
/// async-std is discontinued upstream (its authors point to smol); the adapter is kept for
/// code bases that still use it. New code should prefer [`Smol`](super::Smol), which runs
/// on the same reactor.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStd;

impl Runtime for AsyncStd {
    fn spawn(&self, future: BoxFuture) {
        // Dropping async-std's JoinHandle detaches the task.
        drop(async_std::task::spawn(future));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        Box::pin(async_std::task::sleep(duration))
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn reactor(&self) -> Reactor {
        // async-std drives its sockets with async-io.
        Reactor::AsyncIo
    }
}
