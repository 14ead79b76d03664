//! Graceful shutdown and immediate close.
//!
//! The sequence (one driver; concurrent and repeated calls wait for it and share its result):
//! 1. tell the accept loop to stop, and wait until it has dropped the listener, so a client
//!    connecting from now on is refused by the operating system;
//! 2. state `Draining`: every connection's [`Conn::draining`](crate::Conn::draining)
//!    resolves, and the `Draining` event fires;
//! 3. wait until no connection is open (returning at once when that happens), until the
//!    deadline passes, or until `close()` is called;
//! 4. force-close whatever is left: each such connection's pending I/O fails with
//!    `ConnectionAborted` and its handler is cancelled, which closes its socket;
//! 5. state `Stopped`, the `Stopped` event, and the idle scanner ends.
//!
//! The drain broadcast is an `event_listener::Event` plus a flag. A notification does not
//! stick to listeners created after it, so every wait here checks the flag, registers a
//! listener, and checks the flag again before sleeping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_listener::Event;
use futures_lite::FutureExt as _;

use crate::error::Error;
use crate::events::ServerEvent;
use crate::pool::{LINGERING, SlotState};
use crate::server::{Shared, State};

/// A flag that is set once and can be awaited.
#[derive(Debug, Default)]
pub(crate) struct Latch {
    set: AtomicBool,
    event: Event,
}

impl Latch {
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// A listener for the notification; check `is_set` again after creating it.
    pub(crate) fn listen(&self) -> event_listener::EventListener {
        self.event.listen()
    }

    pub(crate) async fn wait(&self) {
        while !self.is_set() {
            let listener = self.event.listen();
            if self.is_set() {
                return;
            }
            listener.await;
        }
    }
}

/// The shutdown side of a server's shared state.
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    /// Asks the accept loop to stop.
    pub(crate) stop_accepting: Latch,
    /// The accept loop has dropped the listener.
    pub(crate) accept_stopped: Latch,
    /// Connections were told to drain.
    pub(crate) draining: Latch,
    /// The final sweep is under way: connections registering from now on close themselves,
    /// handshakes and lingering closes stop.
    pub(crate) force: Latch,
    /// `close()` was called: stop waiting for handlers.
    close_requested: Latch,
    /// Everything is done.
    pub(crate) stopped: Latch,
    /// A connection closed (the open count went down).
    pub(crate) conn_closed: Event,
    driver_claimed: AtomicBool,
    report: Mutex<Option<(ShutdownReport, Duration)>>,
}

/// What a shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Connections that finished by themselves while draining.
    pub drained: usize,
    /// Connections force-closed at the deadline or by `close()`.
    pub forced: usize,
    /// Connections still counted as open when shutdown returned. Always 0 unless a handler
    /// moved its [`Conn`](crate::Conn) into a task of its own and that task kept it alive
    /// after the server closed it (its I/O fails; its socket closes when it is dropped).
    pub still_open: usize,
}

/// How long `stop` waits for force-closed connections to actually drop their sockets.
/// Cancelled handlers drop theirs as soon as their task runs; this bounds the wait for a
/// `Conn` the user moved elsewhere, so shutdown never hangs.
const FORCED_DROP_WAIT: Duration = Duration::from_secs(1);

impl Shutdown {
    fn result(&self) -> Result<ShutdownReport, Error> {
        let stored = *self.report.lock().unwrap_or_else(|e| e.into_inner());
        let (report, deadline) = stored.unwrap_or_default();
        if report.forced > 0 {
            Err(Error::ShutdownTimeout {
                forced: report.forced,
                drained: report.drained,
                deadline,
            })
        } else {
            Ok(report)
        }
    }

    pub(crate) fn report(&self) -> ShutdownReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(r, _)| r)
            .unwrap_or_default()
    }
}

/// Waits until no connection is open and every `Closed` event has fired.
async fn all_closed(shared: &Shared) {
    while !shared.all_closed() {
        let listener = shared.shutdown.conn_closed.listen();
        if shared.all_closed() {
            return;
        }
        listener.await;
    }
}

/// Stops the server: drain for at most `grace`, then force. `force_now` is `close()`.
pub(crate) async fn stop(
    shared: &Arc<Shared>,
    grace: Duration,
    force_now: bool,
) -> Result<ShutdownReport, Error> {
    let sd = &shared.shutdown;
    if shared.state() == State::Created {
        // Not serving yet: nothing to stop, and serving later still works.
        return Ok(ShutdownReport::default());
    }
    if force_now {
        sd.close_requested.set();
    }
    if sd.driver_claimed.swap(true, Ordering::AcqRel) {
        sd.stopped.wait().await;
        return sd.result();
    }

    sd.stop_accepting.set();
    sd.accept_stopped.wait().await;

    let open_at_drain = shared.pool.count();
    shared.set_state(State::Draining);
    sd.draining.set();
    // Wake handlers waiting in `Conn::readable`, which returns once draining has begun.
    shared.pool.for_each_open(|slot, _| slot.read_waker.wake());
    shared.hooks.server(ServerEvent::Draining {
        open_connections: open_at_drain,
    });

    let rt = shared.runtime.clone();
    let deadline = async {
        rt.sleep(grace).await;
    };
    all_closed(shared)
        .or(sd.close_requested.wait())
        .or(deadline)
        .await;

    // Everything still open now is forced, whether registered (its handler is running),
    // still shaking hands, or between accept and registration (those see `force` and close
    // themselves); except lingering connections, whose handler already finished. Snapshot
    // before setting `force`: the accept loop has stopped, so nothing joins after this, and
    // a connection that closes itself on seeing `force` is still counted.
    let open_at_deadline = shared.pool.count();
    sd.force.set();
    let mut lingering = 0;
    shared.pool.for_each_open(|slot, generation| {
        if slot.close(generation, SlotState::ShutdownForced) && slot.flags() & LINGERING != 0 {
            lingering += 1;
        }
    });
    let forced = open_at_deadline.saturating_sub(lingering);
    // Wait (bounded) for everything the sweep cut, lingering ones included, to be closed.
    crate::runtime::timeout(&*rt, FORCED_DROP_WAIT, all_closed(shared)).await;
    let report = ShutdownReport {
        drained: open_at_drain.saturating_sub(forced),
        forced,
        still_open: shared.pool.count(),
    };
    *sd.report.lock().unwrap_or_else(|e| e.into_inner()) = Some((report, grace));
    shared.set_state(State::Stopped);
    sd.stopped.set();
    shared.hooks.server(ServerEvent::Stopped {
        drained: report.drained,
        forced: report.forced,
    });
    sd.result()
}
