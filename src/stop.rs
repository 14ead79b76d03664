//! Where a server is in its life, and how it stops: the state, the latches a shutdown sets
//! in order, the accept loops it waits for, the one call that drives it and its result, and
//! the readiness it reports on the way (the lame duck, a hand-over; see `readiness`).
//!
//! Latches, not flags: every step of a shutdown is something others wait for (a connection
//! for the drain, the driver for the accept loops, handles for the end), and a latch set
//! before a waiter arrives still lets it through. The ordering of the steps across parts
//! (the handed-over sockets, the slots) is the core's; this only holds them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::events::ShutdownReport;
use crate::readiness::Readiness;
use crate::sync::{Event, Latch, lock};

/// Where a server is in its life. It only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Bound, not serving yet.
    Created = 0,
    /// Accepting and serving connections.
    Running = 1,
    /// Shutting down: the listeners are closed, open connections are finishing.
    Draining = 2,
    /// Stopped: nothing is accepted, no connection is open.
    Stopped = 3,
}

/// The life and stop of one server. See the module docs.
#[derive(Debug)]
pub(crate) struct Stop {
    state: AtomicU8,
    /// Accept loops started and not yet ended.
    accept_loops: AtomicUsize,
    /// The latches, in the order a shutdown sets them.
    latches: Latches,
    /// A drain tick (see `Core::drain_tick`).
    drain_ticked: Event,
    /// Claimed by the one call that drives a shutdown; the others wait for its result.
    claimed: AtomicBool,
    result: Mutex<Option<(ShutdownReport, Duration)>>,
    /// Lame duck, hand-over and the user's conditions (see `ServerHandle::is_ready`).
    readiness: Readiness,
    /// Connections that ended on their own (their slot still open, not cut by the final
    /// sweep) after the force latch was set: shutdown's report does not count them forced.
    ended_unforced: AtomicUsize,
}

/// The shutdown latches, in the order a shutdown sets them.
#[derive(Debug, Default)]
struct Latches {
    /// Asks the accept loops to stop.
    stop_accepting: Latch,
    /// Every accept loop has dropped its listener.
    accept_stopped: Latch,
    /// Connections were told to drain.
    draining: Latch,

    /// `close()` was called: stop waiting for handlers.
    close_requested: Latch,
    /// The final sweep is under way: connections registering from now on close themselves,
    /// handshakes and lingering closes stop.
    force: Latch,
    /// Everything is done.
    stopped: Latch,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            state: AtomicU8::new(State::Created as u8),
            accept_loops: AtomicUsize::new(0),
            latches: Latches::default(),
            drain_ticked: Event::new(),
            claimed: AtomicBool::new(false),
            result: Mutex::new(None),
            readiness: Readiness::default(),
            ended_unforced: AtomicUsize::new(0),
        }
    }
}

impl Stop {
    /// Lame duck, hand-over and the user's readiness conditions.
    pub(crate) fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    // --- life cycle -----------------------------------------------------------------------

    pub(crate) fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Created,
            1 => State::Running,
            2 => State::Draining,
            _ => State::Stopped,
        }
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Release);
    }

    // --- accept loops ---------------------------------------------------------------------

    /// An accept loop starts (before it is spawned, so a shutdown waits for it).
    pub(crate) fn accept_loop_started(&self) {
        self.accept_loops.fetch_add(1, Ordering::AcqRel);
    }

    /// An accept loop has dropped its listener.
    pub(crate) fn accept_loop_ended(&self) {
        if self.accept_loops.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.latches.accept_stopped.set();
        }
    }

    /// Whether accept loops should stop.
    pub(crate) fn stop_accepting_requested(&self) -> bool {
        self.latches.stop_accepting.is_set()
    }

    /// Completes when accept loops should stop.
    pub(crate) async fn accepting_stopped(&self) {
        self.latches.stop_accepting.wait().await;
    }

    /// Asks the accept loops to stop.
    pub(crate) fn request_stop_accepting(&self) {
        self.latches.stop_accepting.set();
    }

    /// Waits until every accept loop has dropped its listener.
    pub(crate) async fn accept_loops_ended(&self) {
        if self.accept_loops.load(Ordering::Acquire) == 0 {
            return;
        }
        self.latches.accept_stopped.wait().await;
    }

    // --- the drain ------------------------------------------------------------------------

    /// Whether the server has started a graceful shutdown.
    pub(crate) fn is_draining(&self) -> bool {
        self.latches.draining.is_set()
    }

    /// The drain latch, for futures that wait on it without borrowing the core.
    pub(crate) fn draining(&self) -> &Latch {
        &self.latches.draining
    }

    /// Marks the server draining (waking the handlers is the core's: it holds the slots).
    pub(crate) fn start_draining(&self) {
        self.set_state(State::Draining);
        self.latches.draining.set();
    }

    /// Notified at each drain tick.
    pub(crate) fn drain_ticked(&self) -> &Event {
        &self.drain_ticked
    }

    // --- the end --------------------------------------------------------------------------

    /// Whether shutdown's final sweep has begun: everything still open is force-closed.
    pub(crate) fn is_forced(&self) -> bool {
        self.latches.force.is_set()
    }

    pub(crate) async fn forced(&self) {
        self.latches.force.wait().await;
    }

    /// Starts the final sweep.
    pub(crate) fn force(&self) {
        self.latches.force.set();
        // Pairs with the fence in `Core::register`: either the final sweep sees a slot
        // registering now open, or the registration sees this latch.
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Notes a connection that ended on its own (its slot open when released) after
    /// [`force`](Self::force): between shutdown's snapshot of the open count and the final
    /// sweep reaching it.
    pub(crate) fn note_ended_unforced(&self) {
        self.ended_unforced.fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections [`note_ended_unforced`](Self::note_ended_unforced) noted.
    pub(crate) fn ended_unforced(&self) -> usize {
        self.ended_unforced.load(Ordering::Relaxed)
    }

    pub(crate) fn request_close(&self) {
        self.latches.close_requested.set();
    }

    pub(crate) async fn close_requested(&self) {
        self.latches.close_requested.wait().await;
    }

    pub(crate) async fn stopped(&self) {
        self.latches.stopped.wait().await;
    }

    pub(crate) fn stopped_latch(&self) -> &Latch {
        &self.latches.stopped
    }

    /// Claims the shutdown; false if another call already drives it.
    pub(crate) fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Records the shutdown's outcome and marks the server stopped.
    pub(crate) fn finish(&self, report: ShutdownReport, grace: Duration) {
        *lock(&self.result) = Some((report, grace));
        self.set_state(State::Stopped);
        self.latches.stopped.set();
    }

    /// The shutdown's outcome, as every caller of `shutdown` sees it.
    pub(crate) fn result(&self) -> Result<ShutdownReport, Error> {
        let (report, grace) = lock(&self.result).unwrap_or_default();
        if report.forced > 0 {
            Err(Error::ShutdownTimeout {
                forced: report.forced,
                drained: report.drained,
                grace,
            })
        } else {
            Ok(report)
        }
    }

    /// The shutdown's report (default before one finished).
    pub(crate) fn report(&self) -> ShutdownReport {
        lock(&self.result)
            .map(|(report, _)| report)
            .unwrap_or_default()
    }
}
