//! The `Runtime` seam: how berth spawns tasks, tells time, and which reactor its sockets use.
//!
//! The core never names an async runtime. It spawns, sleeps and reads the clock only through
//! this trait, which is what lets the same server run on smol, async-std, tokio, or inside
//! turmoil's simulated network, where time is virtual and `std::time::Instant::now()` would
//! be wrong.
//!
//! The trait is object-safe and used as `Arc<dyn Runtime>`: it is touched rarely (one spawn
//! per connection, a few timers per server), so dynamic dispatch costs nothing measurable and
//! keeps runtime generics out of every public type.
//!
//! A runtime also names its [`Reactor`]: the I/O driver that berth's own TCP and Unix
//! listeners register real sockets with, and whose streams they accept. That is how
//! `Builder::bind` serves tokio's sockets on the tokio adapter and async-io's on smol, so no
//! second reactor thread runs beside the one the runtime already has; and each adapter owns
//! its sockets: adding a runtime is one module here.
//!
//! Adapters, each behind a cargo feature:
//! - [`Smol`] (feature `smol`, default): async-executor tasks, async-io timers and sockets
//!   (the async-io part, [`AsyncIo`], shared with `AsyncStd`);
//! - `AsyncStd` (feature `async-std`, discontinued upstream; kept for existing code bases);
//! - `Tokio` (feature `tokio`): tokio tasks, timers and sockets;
//! - `berth_sim::Sim` (the `berth-sim` crate): turmoil's simulated hosts and clock.
//!
//! [`default_runtime`] picks one when none is given: tokio when called inside a tokio
//! runtime (with the `tokio` feature), else smol, else async-std.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stream::Reactor;

#[cfg(feature = "async-io")]
mod async_io;
#[cfg(feature = "async-std")]
mod async_std;
#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "async-io")]
pub use self::async_io::AsyncIo;
#[cfg(feature = "async-std")]
pub use self::async_std::AsyncStd;
#[cfg(feature = "smol")]
pub use self::smol::Smol;
#[cfg(feature = "tokio")]
pub use self::tokio::Tokio;

/// A boxed, sendable future, as [`Runtime::spawn`] takes them.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A timer on a runtime's clock: a future that completes at its deadline.
///
/// [`reset`](Timer::reset) moves the deadline without allocating, so a connection re-arms
/// one timer instead of making a new one for every request (hyper's `Timer::reset` and
/// quinn's connection timers work the same way).
pub trait Timer: Future<Output = ()> + Send + Sync {
    /// Moves the deadline, earlier or later: the timer completes at the new one, also
    /// after it had completed.
    fn reset(self: Pin<&mut Self>, deadline: Instant);
}

/// A boxed [`Timer`], as [`Runtime::timer`] returns them.
pub type BoxTimer = Pin<Box<dyn Timer>>;

/// An async runtime as berth needs it: spawn, sleep, now, and its reactor.
///
/// Implementations must guarantee:
/// - [`spawn`](Runtime::spawn) runs the future to completion (or until the runtime shuts
///   down) without the caller awaiting anything; the future may be polled from any thread
///   the runtime uses. Panics never reach the runtime: berth catches them inside the task.
///   `spawn` must not panic: if the runtime is gone (shutting down, a crashed simulated
///   host), drop the future instead; berth keeps its bookkeeping in `Drop` for that case.
/// - [`timer`](Runtime::timer) completes no earlier than its deadline, as measured by
///   [`now`](Runtime::now), and as soon after it as the runtime's timers allow; after a
///   [`reset`](Timer::reset), no earlier than the new deadline. Making a timer needs no
///   poll to start counting: a deadline is a point in time.
/// - [`now`](Runtime::now) is monotonic and is the same clock `timer` uses. A simulator
///   returns its virtual time here.
/// - [`reactor`](Runtime::reactor) names the I/O driver whose sockets this runtime's tasks
///   can poll. The default, `None`, is right for simulators and for runtimes whose sockets
///   berth does not register: serve them with `Builder::listener`.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// Runs `future` in the background.
    fn spawn(&self, future: BoxFuture);
    /// A timer that completes at `deadline` on this runtime's clock.
    fn timer(&self, deadline: Instant) -> BoxTimer;
    /// The current time on this runtime's clock.
    fn now(&self) -> Instant;
    /// A timer that completes `duration` from now (from this call, not from the first
    /// poll). A duration too long to represent waits practically forever.
    fn sleep(&self, duration: Duration) -> BoxTimer {
        self.timer(deadline_after(self.now(), duration))
    }
    /// The reactor berth's own listeners register sockets with on this runtime; `None`
    /// (the default) when it has none, and `Builder::bind` then fails with
    /// [`ConfigError::NoReactor`](crate::ConfigError::NoReactor).
    fn reactor(&self) -> Option<&dyn Reactor> {
        None
    }

    /// Whether this runtime can run a server: for example, a tokio runtime built without
    /// its time driver cannot (its timers would panic). Checked when a server is built; the
    /// default says yes.
    fn check(&self) -> Result<(), crate::error::ConfigError> {
        Ok(())
    }
}

/// The runtime berth uses when none is given: `Tokio` when called inside a tokio runtime
/// (feature `tokio`), else [`Smol`]'s global executor (feature `smol`), else `AsyncStd`
/// (feature `async-std`). `None` when none of these applies.
pub fn default_runtime() -> Option<Arc<dyn Runtime>> {
    #[cfg(feature = "tokio")]
    if let Some(tokio) = Tokio::current() {
        return Some(Arc::new(tokio));
    }
    #[cfg(feature = "smol")]
    return Some(Arc::new(Smol::global()));
    #[cfg(all(feature = "async-std", not(feature = "smol")))]
    return Some(Arc::new(AsyncStd));
    #[allow(unreachable_code)]
    None
}

/// `now + duration`, or a deadline about a century away when that does not fit in an
/// `Instant` (`Duration::MAX` as "no timeout" must not panic).
pub fn deadline_after(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration)
        .or_else(|| now.checked_add(FOREVER))
        .unwrap_or(now)
}

/// What "practically forever" is for a timer.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Races `future` against the runtime's clock: `None` if `duration` passed first.
pub(crate) async fn timeout<T>(
    rt: &dyn Runtime,
    duration: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    use futures_lite::FutureExt as _;
    let sleep = rt.sleep(duration);
    async { Some(future.await) }
        .or(async {
            sleep.await;
            None
        })
        .await
}

#[cfg(all(test, feature = "tokio", feature = "smol"))]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_tokio_inside_tokio_and_smol_outside() {
        let outside = default_runtime().unwrap();
        assert!(format!("{outside:?}").starts_with("Smol"), "{outside:?}");
        assert!(outside.reactor().is_some());
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inside = rt.block_on(async { default_runtime().unwrap() });
        assert!(format!("{inside:?}").starts_with("Tokio"), "{inside:?}");
        assert!(inside.reactor().is_some());
    }
}
