//! Graceful shutdown and immediate close.
//!
//! The sequence (one driver; concurrent and repeated calls wait for it and share its result):
//! 1. tell the accept loops to stop, and wait until each has dropped its listener, so a
//!    client connecting from now on is refused by the operating system; and report what the
//!    loops queued for the hooks;
//! 2. state `Draining`: every connection's [`Conn::draining`](crate::Conn::draining)
//!    resolves (for a connection that has sent nothing yet: once it does, or once it has
//!    been served for `first_request_grace`, as Go's net/http spares new connections;
//!    ticks of a quarter of that make them look again), and the `Draining` event fires;
//! 3. wait until no connection is open (returning at once when that happens), until the
//!    grace period passes, or until `close()` is called;
//! 4. force-close whatever is left: each such connection's pending I/O fails with
//!    `ConnectionAborted` and its handler is cancelled, which closes its socket;
//! 5. state `Stopped`, the `Stopped` event, and the idle scanner ends.

use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::core::Core;
use crate::error::Error;
use crate::events::{ServerEvent, ShutdownReport};
use crate::pool::{LINGERING, SlotState};
use crate::stop::State;

/// How long `stop` waits for force-closed connections to actually drop their sockets, and
/// for queued reports to reach the hooks. Cancelled handlers drop theirs as soon as their
/// task runs; this bounds the wait for a `Conn` the user moved elsewhere (or a hook that
/// hangs), so shutdown never hangs.
const FORCED_DROP_WAIT: Duration = Duration::from_secs(1);

/// The lame duck (`Config::lame_duck`): serving on, reported not ready, for `duration` or
/// until skipped, before a graceful shutdown drains.
pub(crate) async fn lame_duck(core: &Core, duration: Duration) {
    if core.state() != State::Running || core.stop().stop_accepting_requested() {
        return;
    }
    let readiness = core.readiness();
    if !readiness.begin_lame_duck() {
        readiness.skip_lame_duck(); // a second shutdown: no more waiting
        return;
    }
    core.hooks().server(ServerEvent::LameDuck { duration });
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    crate::watchdog::stopping(core);
    core.runtime()
        .sleep(duration)
        .or(readiness.lame_duck_skipped())
        .or(core.stop().stopped())
        .await;
}

/// Stops the server: drain for at most `grace`, then force. `force_now` is `close()`.
pub(crate) async fn stop(
    core: &Core,
    grace: Duration,
    force_now: bool,
) -> Result<ShutdownReport, Error> {
    let stop = core.stop();
    if stop.state() == State::Created {
        // Not serving yet: nothing to stop, and serving later still works.
        return Ok(ShutdownReport::default());
    }
    if force_now {
        stop.request_close();
    }
    if !stop.claim() {
        stop.stopped().await;
        return stop.result();
    }
    let rt = core.runtime().clone();

    core.stop_accepting().await;
    crate::runtime::timeout(&*rt, FORCED_DROP_WAIT, core.hooks().flushed()).await;

    let open_at_drain = core.open_connections();
    core.readiness().skip_lame_duck();
    core.start_draining();
    // (A lame duck told systemd already.)
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    if !core.readiness().in_lame_duck() {
        crate::watchdog::stopping(core);
    }
    core.hooks().server(ServerEvent::Draining {
        open_connections: open_at_drain,
    });

    let deadline = async {
        rt.sleep(grace).await;
    };
    // Connections that have sent nothing yet are told to drain when they do, or once they
    // are `first_request_grace` old (see `Conn::is_draining`): ticks make them look again.
    let first_requests = async {
        let grace = core.config().first_request_grace;
        if !grace.is_zero() {
            let tick = (grace / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
            loop {
                rt.sleep(tick).await;
                core.drain_tick();
            }
        }
        std::future::pending::<()>().await;
    };
    core.wait_all_closed()
        .or(stop.close_requested())
        .or(deadline)
        .or(first_requests)
        .await;

    // Everything still open now is forced, whether registered (its handler is running),
    // still shaking hands, or between accept and registration (those see the force latch
    // and close themselves); except lingering connections, whose handler already finished.
    // Snapshot before forcing: the accept loops have stopped, so nothing joins after this,
    // and a connection that closes itself on seeing the latch is still counted.
    // Not forced either: connections the server had already closed (idle timeout, eviction,
    // a handle) whose task has not ended yet.
    let open_at_deadline = core.open_connections();
    stop.force();
    let mut not_forced = 0;
    core.for_each_registered(|slot, generation, state| {
        if state != SlotState::Open {
            if state.close_reason().is_some() {
                not_forced += 1;
            }
        } else if slot.close(generation, SlotState::ShutdownForced) && slot.flags() & LINGERING != 0
        {
            not_forced += 1;
        }
    });
    // And connections that ended on their own after the snapshot, before the sweep (which
    // lets go of the registry between chunks) reached them.
    let not_forced = not_forced + stop.ended_unforced();
    let forced = open_at_deadline.saturating_sub(not_forced);
    // Wait (bounded) for everything the sweep cut, lingering ones included, to be closed.
    crate::runtime::timeout(&*rt, FORCED_DROP_WAIT, core.wait_all_closed()).await;
    let report = ShutdownReport {
        drained: open_at_drain.saturating_sub(forced),
        forced,
        still_open: core.open_connections(),
    };
    stop.finish(report, grace);
    core.hooks().server(ServerEvent::Stopped {
        drained: report.drained,
        forced: report.forced,
    });
    stop.result()
}
