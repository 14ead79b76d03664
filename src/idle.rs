//! The idle scanner: one task per server closes connections idle longer than the timeout.
//!
//! One timer per connection would cost a timer-wheel entry and a reset on every read and
//! write. Instead the scanner keeps a coarse clock (`state::Clock`), and a connection's
//! read/write path only copies that clock into its slot (one relaxed load and store, no
//! syscall, no lock). Every tick the scanner sweeps the open slots once, O(open connections)
//! with no allocation.
//!
//! The coarse clock holds the time of the *next* sweep, so a stamp is never earlier than the
//! activity it records and nothing is reaped early; the tick divides the timeout evenly, so
//! a connection is reaped within `[timeout, timeout + tick]` (plus the runtime's timer
//! jitter, which is zero under simulation).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::pool::SlotState;
use crate::state::Core;

/// The sweep interval for `timeout`: about an eighth of it, kept within 10 ms..1 s, and
/// adjusted so a whole number of ticks makes exactly one timeout.
pub(crate) fn tick_for(timeout: Duration) -> Duration {
    let target = (timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let ticks = timeout.as_nanos().div_ceil(target.as_nanos()).max(1);
    let ticks = u32::try_from(ticks).unwrap_or(u32::MAX);
    timeout / ticks
}

/// Runs until the server stops.
pub(crate) async fn scan(core: Arc<Core>, timeout: Duration) {
    let tick = tick_for(timeout);
    let tick_ns = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
    let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let rt = core.runtime().clone();
    loop {
        let now = core.now_ns();
        core.set_next_sweep(now.saturating_add(tick_ns));
        core.for_each_open(|slot, generation| {
            let last = slot.last_active.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= timeout_ns {
                slot.close(generation, SlotState::IdleTimeout);
            }
        });
        let stopped = async {
            core.stopped().await;
            true
        };
        let slept = async {
            rt.sleep(tick).await;
            #[cfg(feature = "fault")]
            if let Some(late) = core.fault_delay(crate::fault::Point::LateIdleTick) {
                rt.sleep(late).await;
            }
            false
        };
        if stopped.or(slept).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_divides_the_timeout() {
        for ms in [1u64, 5, 25, 50, 99, 100, 1000, 30_000, 300_000] {
            let timeout = Duration::from_millis(ms);
            let tick = tick_for(timeout);
            assert!(tick <= Duration::from_secs(1), "{ms}: {tick:?}");
            // Rounding to whole ticks at most halves the 10 ms floor.
            assert!(
                tick >= Duration::from_millis(5).min(timeout),
                "{ms}: {tick:?}"
            );
            let n = timeout.as_nanos() / tick.as_nanos();
            assert!(
                timeout.as_nanos() - n * tick.as_nanos() < n,
                "{ms}: {tick:?}"
            );
        }
    }
}
