//! One connection's bookkeeping, as one owned value: [`Lifecycle`]. It is created when the
//! accept loop counts a connection as open, travels with the connection (through the PROXY
//! header, the TLS handshake, the `Conn` and a lingering close), and its `Drop` is the only
//! place a connection finishes: the per-IP admission given back, the slot released, the
//! open count lowered, the counters, the `Closed` (or `Rejected`) event and metrics.
//!
//! Because the finish is in `Drop`, it happens however the connection ends: a handler that
//! returns or panics, a task cancelled by the server, a runtime that drops the task, a
//! simulated host that crashes. Whoever holds the socket drops it before the lifecycle, so
//! once the count drops or `Closed` fires, the socket is closed.

use std::sync::Arc;
use std::time::Instant;

use crate::addr::Addr;
use crate::admission::IpKey;
use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::events::{CloseReason, ConnEvent, Count};
use crate::limits::RejectReason;
use crate::pool::{PANICKED, SAW_EOF, SAW_ERROR, Slot};

/// One connection's bookkeeping. See the module docs.
pub(crate) struct Lifecycle {
    core: Arc<Core>,
    id: u64,
    /// The client: the socket's peer, or the original client a PROXY header named.
    peer_addr: Addr,
    /// When it was accepted (so `Closed`'s duration includes a handshake).
    opened_at: Instant,
    /// When it got its `Conn` (after the handshake): when its first request may come.
    registered_at: Option<Instant>,
    /// The per-IP admission to give back.
    admission: Option<IpKey>,
    phase: Phase,
    /// Bytes read and written, reported to metrics at the end.
    #[cfg(feature = "metrics")]
    bytes: (u64, u64),
}

enum Phase {
    /// Counted as open, not announced yet (its PROXY header is being read).
    Admitted,
    /// Refused before it was served: it ends with `Rejected`, not `Closed`.
    Rejected(RejectReason),
    /// `Accepted` was reported.
    Accepted,
    /// It ended before it had a `Conn` (tune hook, TLS handshake).
    Failed(CloseReason),
    /// It has a `Conn`: its slot says how it ended.
    Registered { slot: Arc<Slot>, generation: u64 },
}

impl Lifecycle {
    /// Counts a new connection from `peer_addr` as open, holding `admission`.
    pub(crate) fn new(core: Arc<Core>, peer_addr: Addr, admission: Option<IpKey>) -> Self {
        core.count_open();
        Lifecycle {
            id: core.next_id(),
            opened_at: core.runtime().now(),
            registered_at: None,
            core,
            peer_addr,
            admission,
            phase: Phase::Admitted,
            #[cfg(feature = "metrics")]
            bytes: (0, 0),
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn peer_addr(&self) -> &Addr {
        &self.peer_addr
    }

    /// When it got its `Conn`, on the runtime's clock (`None` before).
    pub(crate) fn registered_at(&self) -> Option<Instant> {
        self.registered_at
    }

    /// The client's original address from a PROXY header; returns the proxy's.
    pub(crate) fn replace_peer(&mut self, client: Addr) -> Addr {
        std::mem::replace(&mut self.peer_addr, client)
    }

    /// Admission on the client's original address (the proxy itself was not admitted).
    pub(crate) fn admitted(&mut self, admission: Option<IpKey>) {
        self.admission = admission;
    }

    /// Reports `Accepted` (and counts it): from here it ends with `Closed`.
    pub(crate) fn accept(&mut self, local_addr: &Addr, endpoint: &Endpoint) {
        self.core.count(Count::Accepted);
        self.core.hooks().conn(ConnEvent::Accepted {
            id: self.id,
            peer_addr: self.peer_addr.clone(),
            local_addr: local_addr.clone(),
            listener: endpoint.name().clone(),
        });
        self.phase = Phase::Accepted;
    }

    /// Registers the connection for the idle scanner and server-side closes (its `Conn`
    /// is about to exist); its slot decides the close reason from now on.
    pub(crate) fn register(&mut self) -> (Arc<Slot>, u64) {
        let (slot, generation) = self.core.register(self.id);
        self.registered_at = Some(self.core.runtime().now());
        self.phase = Phase::Registered {
            slot: slot.clone(),
            generation,
        };
        (slot, generation)
    }

    /// Ends a connection refused before it was served.
    pub(crate) fn reject(mut self, reason: RejectReason) {
        self.phase = Phase::Rejected(reason);
    }

    /// Ends a connection that failed before it had a `Conn`.
    pub(crate) fn fail(mut self, reason: CloseReason) {
        self.phase = Phase::Failed(reason);
    }

    /// Counts `n` bytes read, for the metrics reported at the end.
    #[cfg(feature = "metrics")]
    pub(crate) fn count_read(&mut self, n: usize) {
        self.bytes.0 += n as u64;
    }

    /// Counts `n` bytes written, for the metrics reported at the end.
    #[cfg(feature = "metrics")]
    pub(crate) fn count_written(&mut self, n: usize) {
        self.bytes.1 += n as u64;
    }

    /// Why a registered connection closed. The first matching cause wins: the server closed
    /// it, the handler panicked, I/O failed, the peer closed, the handler returned.
    fn registered_reason(&self, slot: &Arc<Slot>, generation: u64) -> CloseReason {
        let flags = slot.flags();
        let state = self.core.unregister(slot, generation);
        state.close_reason().unwrap_or(if flags & PANICKED != 0 {
            CloseReason::Panicked
        } else if flags & SAW_ERROR != 0 {
            CloseReason::Error
        } else if flags & SAW_EOF != 0 {
            CloseReason::PeerClosed
        } else {
            CloseReason::HandlerDone
        })
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if let Some(key) = self.admission.take() {
            self.core.release_admission(key);
        }
        #[cfg(feature = "metrics")]
        crate::metrics::bytes(self.bytes.0, self.bytes.1);
        let peer_addr = self.peer_addr.clone();
        let reason = match &self.phase {
            Phase::Rejected(reason) => {
                return self.core.report_rejected(peer_addr, reason.clone());
            }
            // Dropped before it was announced (its task was dropped while reading a PROXY
            // header: a runtime shutting down): it only leaves the count.
            Phase::Admitted => return self.core.report_abandoned(),
            Phase::Failed(reason) => *reason,
            Phase::Registered { slot, generation } => self.registered_reason(slot, *generation),
            // Dropped after `Accepted` without a `Conn`: its task was dropped mid-handshake.
            Phase::Accepted if self.core.stop().is_forced() => CloseReason::ShutdownForced,
            Phase::Accepted => CloseReason::Error,
        };
        self.core
            .report_closed(self.id, peer_addr, reason, self.opened_at);
    }
}
