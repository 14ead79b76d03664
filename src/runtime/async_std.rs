//! The async-std adapter.

use std::time::Instant;

use super::async_io::{AsyncIo, IoTimer};
use super::{BoxFuture, BoxTimer, Runtime};
use crate::stream::Reactor;

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

    fn timer(&self, deadline: Instant) -> BoxTimer {
        // async-std's own timers are async-io's.
        Box::pin(IoTimer(async_io::Timer::at(deadline)))
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn reactor(&self) -> Option<&dyn Reactor> {
        // async-std drives its sockets with async-io.
        Some(&AsyncIo)
    }
}
