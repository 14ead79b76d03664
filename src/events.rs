//! What the server tells the outside: connection and server events, the error hook, and
//! counters.
//!
//! Hooks are plain synchronous callbacks, called on the task where the event happens; keep
//! them short (forward to a channel if you need to do I/O). They can be set or replaced
//! at any time, also while serving, through [`ServerHandle`](crate::ServerHandle) or the
//! [`Builder`](crate::Builder). A hook that panics is contained: the panic is reported to the
//! error hook as [`Error::HookPanicked`] and the server carries on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::addr::Addr;
use crate::error::{Error, panic_message};

/// Something that happened to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnEvent {
    /// A connection was accepted and its handler is about to start.
    Accepted {
        /// The connection's id (unique per server, increasing).
        id: u64,
        /// The client's address.
        peer_addr: Addr,
        /// The server-side address.
        local_addr: Addr,
    },
    /// A connection was refused by the limits or allow/deny lists, or for a bad PROXY
    /// header, and closed at once. It gets no `Accepted` or `Closed` event and does not
    /// count as open.
    Rejected {
        /// The client's address (the original one when a PROXY header gave it).
        peer_addr: Addr,
        /// Why.
        reason: crate::limits::RejectReason,
    },
    /// A TLS handshake completed; the handler starts next.
    TlsEstablished {
        /// The connection's id.
        id: u64,
        /// What was negotiated.
        info: Box<crate::tls::TlsInfo>,
    },
    /// A TLS handshake failed; the connection is closed next (`Closed` with
    /// [`CloseReason::TlsFailed`]).
    TlsFailed {
        /// The connection's id.
        id: u64,
        /// The client's address.
        peer_addr: Addr,
        /// Why.
        reason: crate::tls::TlsFailure,
    },
    /// A connection was closed; its socket is closed and it no longer counts as open.
    Closed {
        /// The connection's id.
        id: u64,
        /// The client's address.
        peer_addr: Addr,
        /// Why it closed.
        reason: CloseReason,
        /// How long it was open, on the runtime's clock.
        duration: Duration,
    },
}

/// Why a connection was closed. The first matching cause wins, in this order: the server
/// closed it (idle, shutdown, handle), the handler panicked, I/O failed, the peer closed,
/// the handler returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The handler returned normally while the peer was still connected.
    HandlerDone,
    /// The peer closed its side (a read returned end of file) and the handler then returned.
    PeerClosed,
    /// No read or write progress for longer than the idle timeout.
    IdleTimeout,
    /// Still open when a shutdown's deadline passed, or when [`close`] was called.
    ///
    /// [`close`]: crate::ServerHandle::close
    ShutdownForced,
    /// Closed through a [`ConnHandle`](crate::ConnHandle).
    Aborted,
    /// The handler panicked.
    Panicked,
    /// A read or write failed (for example the peer reset the connection).
    Error,
    /// The TLS handshake failed or timed out; the handler never ran.
    TlsFailed,
}

impl CloseReason {
    /// Every reason, in a fixed order (the order of [`Stats::closed_by`]'s index).
    pub const ALL: [CloseReason; 8] = [
        CloseReason::HandlerDone,
        CloseReason::PeerClosed,
        CloseReason::IdleTimeout,
        CloseReason::ShutdownForced,
        CloseReason::Aborted,
        CloseReason::Panicked,
        CloseReason::Error,
        CloseReason::TlsFailed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// A short snake_case name, e.g. for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HandlerDone => "handler_done",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ShutdownForced => "shutdown_forced",
            CloseReason::Aborted => "aborted",
            CloseReason::Panicked => "panicked",
            CloseReason::Error => "error",
            CloseReason::TlsFailed => "tls_failed",
        }
    }
}

/// Something that happened to the server as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// The server started serving.
    Listening {
        /// The bound address.
        addr: Addr,
        /// Whether connections are TLS.
        tls: bool,
    },
    /// Shutdown began: the listener is closed and every connection was told to drain.
    Draining {
        /// Connections open when draining began.
        open_connections: usize,
    },
    /// The server stopped: no connection is open and no task of the server is left.
    Stopped {
        /// Connections that finished by themselves while draining.
        drained: usize,
        /// Connections force-closed at the deadline or by `close()`.
        forced: usize,
    },
}

/// A snapshot of a server's counters, from [`ServerHandle::stats`](crate::ServerHandle::stats).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Connections accepted since the server started.
    pub accepted: u64,
    /// Connections open now (same as `open_connections()`).
    pub active: usize,
    /// `accept` errors that made the server back off (EMFILE and the like).
    pub accept_errors: u64,
    /// Connections refused by limits, allow/deny lists or a bad PROXY header.
    pub rejected: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes failed or timed out.
    pub tls_failures: u64,
    /// Per-connection slots ever allocated. At steady state this stays at the peak number of
    /// concurrent connections: slots are reused.
    pub slots_allocated: u64,
    closed: [u64; CloseReason::ALL.len()],
}

impl Stats {
    /// Connections closed for `reason`.
    pub fn closed_by(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// Connections closed, whatever the reason.
    pub fn closed(&self) -> u64 {
        self.closed.iter().sum()
    }
}

/// The live counters behind [`Stats`]. Relaxed atomics: they are statistics, not
/// synchronization.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) slots_allocated: AtomicU64,
    pub(crate) tls_handshakes: AtomicU64,
    pub(crate) tls_failures: AtomicU64,
    pub(crate) rejected: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
}

impl Counters {
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, active: usize) -> Stats {
        Stats {
            accepted: self.accepted.load(Ordering::Relaxed),
            active,
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            slots_allocated: self.slots_allocated.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            tls_handshakes: self.tls_handshakes.load(Ordering::Relaxed),
            tls_failures: self.tls_failures.load(Ordering::Relaxed),
            closed: std::array::from_fn(|i| self.closed[i].load(Ordering::Relaxed)),
        }
    }
}

type Hook<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// The user's callbacks. Each sits behind its own lock so it can be replaced while serving;
/// the lock is held only to clone the `Arc`, never while the hook runs.
#[derive(Default)]
pub(crate) struct Hooks {
    conn: RwLock<Option<Hook<ConnEvent>>>,
    server: RwLock<Option<Hook<ServerEvent>>>,
    error: RwLock<Option<Hook<Error>>>,
}

fn load<T: ?Sized>(slot: &RwLock<Option<Arc<T>>>) -> Option<Arc<T>> {
    // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is fine.
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn store<T: ?Sized>(slot: &RwLock<Option<Arc<T>>>, value: Option<Arc<T>>) {
    *slot.write().unwrap_or_else(|e| e.into_inner()) = value;
}

impl Hooks {
    pub(crate) fn set_conn(&self, hook: Option<Hook<ConnEvent>>) {
        store(&self.conn, hook);
    }
    pub(crate) fn set_server(&self, hook: Option<Hook<ServerEvent>>) {
        store(&self.server, hook);
    }
    pub(crate) fn set_error(&self, hook: Option<Hook<Error>>) {
        store(&self.error, hook);
    }

    pub(crate) fn conn(&self, event: ConnEvent) {
        #[cfg(feature = "tracing")]
        trace::conn(&event);
        #[cfg(feature = "metrics")]
        crate::metrics::conn(&event);
        if let Some(hook) = load(&self.conn) {
            self.call("connection event", || hook(&event));
        }
    }

    pub(crate) fn server(&self, event: ServerEvent) {
        #[cfg(feature = "tracing")]
        trace::server(&event);
        if let Some(hook) = load(&self.server) {
            self.call("server event", || hook(&event));
        }
    }

    pub(crate) fn error(&self, error: &Error) {
        #[cfg(feature = "tracing")]
        tracing::warn!(target: "berth", error = %error, "server error");
        if let Some(hook) = load(&self.error) {
            // Nobody to report a panicking error hook to: contain it and move on.
            let _ = catch_unwind(AssertUnwindSafe(|| hook(error)));
        }
    }

    fn call(&self, hook: &'static str, f: impl FnOnce()) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
            self.error(&Error::HookPanicked {
                hook,
                message: panic_message(&*payload),
            });
        }
    }
}

/// Events as `tracing` events (feature `tracing`), in the connection's span where there is
/// one: lifecycle at debug level, refusals, TLS failures and errors at warn.
#[cfg(feature = "tracing")]
mod trace {
    use super::{ConnEvent, ServerEvent};

    pub(super) fn conn(event: &ConnEvent) {
        match event {
            ConnEvent::Accepted { id, peer_addr, .. } => {
                tracing::debug!(target: "berth", id, peer = %peer_addr, "accepted")
            }
            ConnEvent::TlsEstablished { id, info } => tracing::debug!(
                target: "berth", id, version = %info.version, cipher = %info.cipher_suite,
                alpn = ?info.alpn.as_deref().map(String::from_utf8_lossy), "TLS established"
            ),
            ConnEvent::TlsFailed {
                id,
                peer_addr,
                reason,
            } => {
                tracing::warn!(target: "berth", id, peer = %peer_addr, %reason, "TLS failed")
            }
            ConnEvent::Rejected { peer_addr, reason } => {
                tracing::warn!(target: "berth", peer = %peer_addr, %reason, "rejected")
            }
            ConnEvent::Closed {
                id,
                reason,
                duration,
                ..
            } => {
                tracing::debug!(target: "berth", id, ?reason, ?duration, "closed")
            }
        }
    }

    pub(super) fn server(event: &ServerEvent) {
        match event {
            ServerEvent::Listening { addr, tls } => {
                tracing::info!(target: "berth", %addr, tls, "listening")
            }
            ServerEvent::Draining { open_connections } => {
                tracing::info!(target: "berth", open_connections, "draining")
            }
            ServerEvent::Stopped { drained, forced } => {
                tracing::info!(target: "berth", drained, forced, "stopped")
            }
        }
    }
}
