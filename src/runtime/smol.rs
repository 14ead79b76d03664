//! The smol adapter: async-executor for tasks, async-io for timers.

use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_executor::Executor;

use super::async_io::{AsyncIo, IoTimer};
use super::{BoxFuture, BoxTimer, Runtime};
use crate::stream::Reactor;

/// Runs berth on an [`async_executor::Executor`], with async-io timers.
///
/// [`Smol::global`] (also [`Default`]) uses a process-wide executor run by one thread per
/// core, started on first use. [`Smol::with_executor`] uses an executor you drive yourself,
/// e.g. to choose the thread count:
///
/// ```no_run
/// use std::sync::Arc;
/// let ex = Arc::new(async_executor::Executor::new());
/// for _ in 0..4 {
///     let ex = ex.clone();
///     std::thread::spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())));
/// }
/// let runtime = berth::runtime::Smol::with_executor(ex);
/// # let _ = runtime;
/// ```
#[derive(Clone)]
pub struct Smol {
    executor: Arc<Executor<'static>>,
}

impl std::fmt::Debug for Smol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smol").finish_non_exhaustive()
    }
}

impl Smol {
    /// The process-wide executor, run by one thread per available core (the
    /// `BERTH_THREADS` environment variable overrides the count).
    pub fn global() -> Self {
        static GLOBAL: OnceLock<Arc<Executor<'static>>> = OnceLock::new();
        let executor = GLOBAL.get_or_init(|| {
            let executor = Arc::new(Executor::new());
            let threads = std::env::var("BERTH_THREADS")
                .ok()
                .and_then(|v| v.parse::<NonZeroUsize>().ok())
                .or_else(|| std::thread::available_parallelism().ok())
                .map_or(1, NonZeroUsize::get);
            for n in 0..threads {
                let ex = executor.clone();
                std::thread::Builder::new()
                    .name(format!("berth-smol-{n}"))
                    .spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())))
                    .expect("cannot start the global executor's threads");
            }
            executor
        });
        Smol {
            executor: executor.clone(),
        }
    }

    /// Spawns on `executor`, which the caller drives (e.g. with `executor.run(..)` on
    /// threads of its own).
    pub fn with_executor(executor: Arc<Executor<'static>>) -> Self {
        Smol { executor }
    }
}

impl Default for Smol {
    fn default() -> Self {
        Smol::global()
    }
}

impl Runtime for Smol {
    fn spawn(&self, future: BoxFuture) {
        self.executor.spawn(future).detach();
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        Box::pin(IoTimer(async_io::Timer::at(deadline)))
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn reactor(&self) -> Option<&dyn Reactor> {
        Some(&AsyncIo)
    }
}
