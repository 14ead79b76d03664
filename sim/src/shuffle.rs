//! [`Shuffle`]: the [`Sim`] runtime with the order of ready tasks shaken by a seed.
//!
//! A host's tokio runtime polls ready tasks in a fixed (FIFO) order, so a simulation only
//! ever sees one interleaving of tasks that become ready together: the idle scanner before
//! or after a connection's read, a shutdown before or after a handler's last write. Code
//! that silently relies on that order passes every seed. `Shuffle` wraps each task berth
//! spawns: before a poll, with a seeded probability, it wakes the task and yields instead,
//! which sends it to the back of the run queue behind every other ready task. Simulated
//! time does not move while tasks are ready (turmoil's clock advances only when the host is
//! idle), so only the order changes, never the timing; and the decisions come from the
//! seed, so a run still replays exactly.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use berth::runtime::{BoxFuture, BoxTimer, Runtime};

use crate::Sim;
use crate::rng::Rng;

/// At most this many yields in a row before the task is polled for real, so every task
/// makes progress whatever the draw.
const MAX_STREAK: u8 = 3;

/// berth's `Runtime` on turmoil (like [`Sim`]) that polls ready tasks in a seeded, shuffled
/// order.
///
/// A host's runtime polls ready tasks in a fixed order, so a simulation only ever sees one
/// interleaving of tasks that become ready together (the idle scanner before or after a
/// read, a shutdown before or after a handler's last write), and code that silently relies
/// on that order passes every seed. `Shuffle` wraps each task berth spawns: before a poll,
/// with the given probability (at most three times in a row), it wakes the task and yields
/// instead, which sends it behind every other ready task. Simulated time does not move while
/// tasks are ready, so only the order changes, never the timing; the decisions come from the
/// seed, so a run still replays exactly.
///
/// ```
/// # async fn f() -> Result<(), berth::Error> {
/// let handle = berth_sim::serve_on(
///     berth_sim::Shuffle::new(7, 0.3),
///     7000,
///     berth::Builder::new(berth::Config::default()),
///     |conn: berth::Conn| async move { drop(conn) },
/// )
/// .await?;
/// # drop(handle); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Shuffle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    probability: f64,
    rng: Mutex<Rng>,
    yields: AtomicU64,
}

impl Shuffle {
    /// Yields before a poll with `probability` (0 to 1; at most a few times in a row),
    /// decided by `seed`.
    pub fn new(seed: u64, probability: f64) -> Self {
        Shuffle {
            shared: Arc::new(Shared {
                probability: probability.clamp(0.0, 1.0),
                rng: Mutex::new(Rng::new(seed ^ 0x05_4FF1E)),
                yields: AtomicU64::new(0),
            }),
        }
    }

    /// How many polls were turned into yields so far.
    pub fn yields(&self) -> u64 {
        self.shared.yields.load(Ordering::Relaxed)
    }
}

impl Runtime for Shuffle {
    fn spawn(&self, future: BoxFuture) {
        Sim.spawn(Box::pin(Shuffled {
            inner: future,
            shared: self.shared.clone(),
            streak: 0,
        }));
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        Sim.timer(deadline)
    }

    fn now(&self) -> Instant {
        Sim.now()
    }
}

/// A task that sometimes yields before it is polled.
struct Shuffled {
    inner: BoxFuture,
    shared: Arc<Shared>,
    streak: u8,
}

impl Future for Shuffled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.streak < MAX_STREAK {
            let shared = &self.shared;
            let yields = shared
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .chance(shared.probability);
            if yields {
                shared.yields.fetch_add(1, Ordering::Relaxed);
                self.streak += 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        self.streak = 0;
        self.inner.as_mut().poll(cx)
    }
}
