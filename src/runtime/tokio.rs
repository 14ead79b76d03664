//! The tokio adapter: tasks, timers, and sockets on tokio's reactor (`stream.rs`).

use std::io;
use std::time::{Duration, Instant};

use super::{BoxFuture, BoxTimer, Runtime, Timer};
use crate::stream::{ByteStream, ListeningSocket, Reactor};

mod stream;

/// Runs berth on a tokio runtime: tokio tasks, tokio's timers (so `tokio::time::pause` and
/// simulators built on tokio's clock apply to berth's timeouts too) and tokio's sockets.
///
/// Inside a tokio runtime it is the default, so `Server::bind` needs nothing more:
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> Result<(), berth::Error> {
///     // Bound on tokio's reactor; handlers run as tokio tasks and may call tokio APIs.
///     let handle = berth::Server::bind(berth::Config::new("127.0.0.1:7000"))?
///         .serve(|conn: berth::Conn| async move {
///             tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///             drop(conn);
///         });
///     handle.shutdown().await?;
///     Ok(())
/// }
/// ```
///
/// Outside one, pass a runtime's handle: `Builder::runtime(Tokio::from_handle(handle))`.
#[derive(Debug, Clone)]
pub struct Tokio {
    handle: tokio::runtime::Handle,
}

impl Tokio {
    /// The runtime the caller runs in; `None` outside a tokio runtime.
    pub fn current() -> Option<Self> {
        tokio::runtime::Handle::try_current()
            .ok()
            .map(|handle| Tokio { handle })
    }

    /// A specific runtime, by handle.
    pub fn from_handle(handle: tokio::runtime::Handle) -> Self {
        Tokio { handle }
    }
}

impl Runtime for Tokio {
    fn spawn(&self, future: BoxFuture) {
        // On a runtime that has shut down, tokio drops the task without polling it.
        drop(self.handle.spawn(future));
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        if in_task() {
            return Box::pin(tokio::time::sleep_until(deadline.into()));
        }
        let _guard = self.handle.enter();
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn now(&self) -> Instant {
        if in_task() {
            return tokio::time::Instant::now().into_std();
        }
        let _guard = self.handle.enter();
        tokio::time::Instant::now().into_std()
    }

    fn reactor(&self) -> Option<&dyn Reactor> {
        Some(self)
    }

    fn check(&self) -> Result<(), crate::error::ConfigError> {
        // tokio panics when a timer is made on a runtime without its time driver: find out
        // now, not in the middle of a shutdown.
        let _guard = self.handle.enter();
        std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO)))
            .map_err(|_| crate::error::ConfigError::RuntimeDriverMissing("time"))
    }
}

/// Whether the caller is a tokio task, so a runtime's context is entered already: berth's
/// own calls come from the tasks it spawned on this runtime, and entering the context again
/// costs a handle clone per call (the HTTP path reads the clock a few times per request).
/// From anywhere else (a user's thread) the adapter enters its runtime first, so that
/// tokio's clock, paused under `test-util`, is the one read.
fn in_task() -> bool {
    tokio::task::try_id().is_some()
}

/// tokio's `Sleep` resets in place (its timer entry moves in the wheel).
impl Timer for tokio::time::Sleep {
    fn reset(self: std::pin::Pin<&mut Self>, deadline: Instant) {
        tokio::time::Sleep::reset(self, deadline.into());
    }
}

/// tokio's I/O driver: the runtime's own sockets, which its tasks poll without a second
/// reactor.
impl Reactor for Tokio {
    fn register_tcp(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Box<dyn ListeningSocket>> {
        let listener = register(&self.handle, || tokio::net::TcpListener::from_std(listener))?;
        Ok(Box::new(listener))
    }

    #[cfg(unix)]
    fn register_unix(
        &self,
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<Box<dyn ListeningSocket>> {
        let listener = register(&self.handle, || {
            tokio::net::UnixListener::from_std(listener)
        })?;
        Ok(Box::new(listener))
    }

    #[cfg(unix)]
    fn register_unix_stream(
        &self,
        stream: std::os::unix::net::UnixStream,
    ) -> io::Result<Box<dyn ByteStream>> {
        stream.set_nonblocking(true)?;
        let stream = register(&self.handle, || tokio::net::UnixStream::from_std(stream))?;
        Ok(stream::boxed(stream))
    }
}

/// Registers a socket with `handle`'s I/O driver; a runtime without one is an error, where
/// tokio would panic.
fn register<T>(
    handle: &tokio::runtime::Handle,
    make: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    let _context = handle.enter();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)).unwrap_or_else(|_| {
        Err(io::Error::other(
            crate::error::ConfigError::RuntimeDriverMissing("I/O").to_string(),
        ))
    })
}
