//! The `Runtime` seam: how berth spawns tasks and tells time.
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
//! Adapters, each behind a cargo feature:
//! - [`Smol`] (feature `smol`, default): async-executor tasks and async-io timers;
//! - `AsyncStd` (feature `async-std`);
//! - `Tokio` (feature `tokio`);
//! - `berth_sim::Sim` (the `berth-sim` crate): turmoil's simulated hosts and clock.
//!
//! Implementing it for another runtime takes three short methods; see the trait docs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

#[cfg(feature = "async-std")]
mod async_std;
#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "async-std")]
pub use self::async_std::AsyncStd;
#[cfg(feature = "smol")]
pub use self::smol::Smol;
#[cfg(feature = "tokio")]
pub use self::tokio::Tokio;

/// A boxed, sendable future, as [`Runtime`] takes and returns them.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An async runtime as berth needs it: spawn, sleep, now.
///
/// Implementations must guarantee:
/// - [`spawn`](Runtime::spawn) runs the future to completion (or until the runtime shuts
///   down) without the caller awaiting anything; the future may be polled from any thread
///   the runtime uses. Panics never reach the runtime: berth catches them inside the task.
///   `spawn` must not panic: if the runtime is gone (shutting down, a crashed simulated
///   host), drop the future instead; berth keeps its bookkeeping in `Drop` for that case.
/// - [`sleep`](Runtime::sleep) completes no earlier than `duration` after it is first polled,
///   as measured by [`now`](Runtime::now).
/// - [`now`](Runtime::now) is monotonic and is the same clock `sleep` uses. A simulator
///   returns its virtual time here.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// Runs `future` in the background.
    fn spawn(&self, future: BoxFuture);
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture;
    /// The current time on this runtime's clock.
    fn now(&self) -> Instant;
}

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
