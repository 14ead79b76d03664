//! A connection seen from outside its handler: [`ConnHandle`], and the [`Busy`] mark.

use std::sync::Arc;

use crate::core::Core;
use crate::pool::{PANICKED, Slot, SlotState};

/// Observes or closes one connection from outside its handler.
///
/// Cheap to clone. A handle outlives its connection harmlessly: once the connection has
/// ended, `is_connected` is false and `close` does nothing, even when the server has reused
/// the connection's bookkeeping slot for a newer connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub(super) slot: Arc<Slot>,
    pub(super) generation: u64,
    pub(super) id: u64,
    pub(super) core: Arc<Core>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.id)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl ConnHandle {
    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True while the connection is open and not closed by the server.
    pub fn is_connected(&self) -> bool {
        self.slot.state(self.generation) == SlotState::Open
    }

    /// Whether its server is draining (or stopped): for a protocol that answers a request
    /// in hand with "close after this" (HTTP's `Connection: close`), without waiting for the
    /// connection's task to notice the drain.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn server_is_draining(&self) -> bool {
        self.core.stop().is_draining()
    }

    /// Closes the connection: its pending and later I/O fails with `ConnectionAborted` and
    /// its handler is cancelled. Returns false if it was already closed or has ended.
    pub fn close(&self) -> bool {
        self.slot.close(self.generation, SlotState::Aborted)
    }

    /// Marks the connection busy until the guard is dropped: see [`Conn::busy`](crate::Conn::busy). Once the
    /// connection has ended the guard does nothing.
    pub fn busy(&self) -> Busy {
        Busy {
            held: self.mark_busy(),
            handle: self.clone(),
        }
    }
}

/// A connection marked busy: see [`Conn::busy`](crate::Conn::busy). Dropping it ends the mark and counts as
/// activity.
#[must_use = "the connection is busy only while the guard is held"]
pub struct Busy {
    handle: ConnHandle,
    held: bool,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.held {
            self.handle.unmark_busy();
        }
    }
}

impl std::fmt::Debug for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Busy").field("held", &self.held).finish()
    }
}

impl ConnHandle {
    /// [`busy`](Self::busy) without a guard of its own, for a caller that holds the handle
    /// anyway (HTTP's per-request bookkeeping): true if marked (false once the connection
    /// has ended); then `unmark_busy` once.
    pub(crate) fn mark_busy(&self) -> bool {
        self.slot.enter_busy(self.generation)
    }

    /// Ends a mark `mark_busy` took.
    pub(crate) fn unmark_busy(&self) {
        self.slot.leave_busy(self.generation, self.core.stamp());
    }

    /// Whether the server (not the handler) closed the connection: idle timeout, forced
    /// shutdown, [`close`](Self::close).
    pub(crate) fn closed_by_server(&self) -> bool {
        self.slot.state(self.generation).close_reason().is_some()
    }

    /// Marks the connection as panicked, so its `Closed` event says so.
    pub(crate) fn mark_panicked(&self) {
        self.slot.mark(PANICKED);
    }

    /// Registers the waker of the task that runs the handler: a server-side close wakes it
    /// so it can cancel the handler.
    pub(crate) fn register_task(&self, waker: &std::task::Waker) {
        self.slot.task_waker.register(waker);
    }
}
