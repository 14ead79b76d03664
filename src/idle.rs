//! The idle scanner: one task per server closes connections idle longer than the timeout.
//!
//! One timer per connection would cost a timer-wheel entry and a reset on every read and
//! write. Instead the scanner keeps a coarse clock (`clock::Clock`), and a connection's
//! read/write path only copies that clock into its slot (one relaxed load and store, no
//! syscall, no lock). Every tick the scanner sweeps the open slots once, O(open connections)
//! with no allocation.
//!
//! A stamp is the number of the sweep period the activity happened in, and each sweep notes
//! when it retired the previous period: a connection counts as idle from the end of the
//! period of its last activity, which is never earlier than that activity, so nothing is
//! reaped early, even by a sweep that runs late. The tick divides the timeout evenly, so on
//! schedule a connection is reaped within `[timeout, timeout + tick]`. A sweep that runs late
//! (a busy event loop; the runtime's timer jitter, zero under simulation) moves the end of
//! the period it retires and the sweeps after it: a connection last active in such a period
//! may then be reaped up to that lateness and one more tick later. Never earlier.
//!
//! A connection marked busy (`Conn::busy`: a request in progress) is skipped, whatever its
//! stamp: the idle timeout counts between units of work, and the end of one is activity.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::core::Core;
use crate::events::{OverloadAction, PressureLevel, ServerEvent};
use crate::pool::SlotState;
use crate::pressure::Reading;

/// The sweep interval for `timeout`: about an eighth of it, kept within 10 ms..1 s, and
/// adjusted so a whole number of ticks makes exactly one timeout.
pub(crate) fn tick_for(timeout: Duration) -> Duration {
    let target = (timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let ticks = timeout.as_nanos().div_ceil(target.as_nanos()).max(1);
    let ticks = u32::try_from(ticks).unwrap_or(u32::MAX);
    timeout / ticks
}

/// The tick when only pressure is watched (no idle timeout applies).
const PRESSURE_TICK: Duration = Duration::from_millis(250);

/// Runs until the server stops: sweeps for `idle_timeout` (if any) and, with
/// `Config::overload` set, watches the pressure (and sweeps for the shrunk idle timeout
/// while it is high).
pub(crate) async fn scan(core: Arc<Core>, idle_timeout: Option<Duration>) {
    let overload = core.config().overload.clone();
    let shrunk = overload
        .shrink_idle_timeout
        .map(|shrink| idle_timeout.map_or(shrink, |idle| idle.min(shrink)));
    let tick = [idle_timeout, shrunk]
        .into_iter()
        .flatten()
        .min()
        .map_or(PRESSURE_TICK, tick_for);
    // Enough retired periods to judge every timeout (and eviction age) in use.
    let longest = [idle_timeout, shrunk, overload.evict_idle_after]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(tick);
    let keep = usize::try_from(longest.as_nanos() / tick.as_nanos().max(1))
        .unwrap_or(usize::MAX)
        .saturating_add(2);
    let rt = core.runtime().clone();
    let mut lag = Duration::ZERO;
    loop {
        let now = core.now_ns();
        let periods = core.advance_clock(now, keep);
        let high = overload.is_active() && watch_pressure(&core, shrunk, lag);
        if let Some(timeout) = if high {
            shrunk.or(idle_timeout)
        } else {
            idle_timeout
        } {
            let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            core.for_each_open(|slot, generation| {
                // Busy first: a unit of work that just ended stamped before it left.
                let idle = !slot.is_busy() && {
                    let stamp = slot.last_active.load(Ordering::Relaxed);
                    periods
                        .latest(stamp)
                        .is_some_and(|last| now.saturating_sub(last) >= timeout_ns)
                };
                if idle {
                    slot.close(generation, SlotState::IdleTimeout);
                }
            });
        }
        let started = rt.now();
        let stopped = async {
            core.stop().stopped().await;
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
        // How late the tick ran: the event loop's lag.
        lag = rt
            .now()
            .saturating_duration_since(started)
            .saturating_sub(tick);
    }
}

/// Measures the pressure, reports a change of level (and the idle timeout shrinking or
/// coming back); whether the pressure is high.
fn watch_pressure(core: &Core, shrunk: Option<Duration>, lag: Duration) -> bool {
    let Reading {
        pressure,
        level,
        before,
    } = core.pressure().update(core.in_use(), lag);
    if level != before {
        core.hooks()
            .server(ServerEvent::Pressure { level, pressure });
        if let Some(shrunk) = shrunk {
            let action = match (before, level) {
                (PressureLevel::Normal, _) => Some(OverloadAction::IdleTimeoutShrunk(shrunk)),
                (_, PressureLevel::Normal) => Some(OverloadAction::IdleTimeoutRestored),
                _ => None,
            };
            if let Some(action) = action {
                core.hooks().server(ServerEvent::Overload { action });
            }
        }
    }
    level != PressureLevel::Normal
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
