//! What the server tells the outside: connection and server events, close reasons, and the
//! counters behind [`Stats`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::addr::Addr;

/// Something that happened to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnEvent {
    /// A connection was accepted (and admitted); its TLS handshake, if any, and then its
    /// handler come next. From here it ends with exactly one `Closed`.
    Accepted {
        /// The connection's id (unique per server, increasing).
        id: u64,
        /// The client's address.
        peer_addr: Addr,
        /// The server-side address.
        local_addr: Addr,
        /// The name of the listener that accepted it.
        listener: Arc<str>,
    },
    /// A connection was refused by the limits or allow/deny lists, or for a bad PROXY
    /// header, and closed at once. It gets no `Accepted` or `Closed` event and is not
    /// served (one refused after its PROXY header counted as open while the header was
    /// read).
    Rejected {
        /// The client's address (the original one when a PROXY header gave it).
        peer_addr: Addr,
        /// Why.
        reason: crate::limits::RejectReason,
    },
    /// A TLS handshake completed; the handler starts next. `info.resumed` tells a resumed
    /// session from a full handshake.
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
    /// Idle the longest when a new client needed its place, at the descriptor limit or at
    /// `max_connections` (see [`Overload`](crate::Overload)).
    Evicted,
}

impl CloseReason {
    /// Every reason, in a fixed order (the order of [`Stats::closed_by`]'s index).
    pub const ALL: [CloseReason; 9] = [
        CloseReason::HandlerDone,
        CloseReason::PeerClosed,
        CloseReason::IdleTimeout,
        CloseReason::ShutdownForced,
        CloseReason::Aborted,
        CloseReason::Panicked,
        CloseReason::Error,
        CloseReason::TlsFailed,
        CloseReason::Evicted,
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
            CloseReason::Evicted => "evicted",
        }
    }
}

/// Something that happened to the server as a whole.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// The server started serving on a listener (one event per listener).
    Listening {
        /// The listener's name.
        listener: Arc<str>,
        /// The bound address.
        addr: Addr,
        /// Whether its connections are TLS.
        tls: bool,
    },
    /// The server's pressure changed level (see [`Overload`](crate::Overload)).
    Pressure {
        /// The new level.
        level: PressureLevel,
        /// The pressure: the highest of descriptors in use against the limit, open
        /// connections against `max_connections`, and event-loop lag against its limit
        /// (1.0: at a limit).
        pressure: f64,
    },
    /// The server acted against pressure (see [`Overload`](crate::Overload)).
    Overload {
        /// What it did.
        action: OverloadAction,
    },
    /// A listener's watched certificate files changed and were loaded
    /// ([`TlsConfig::watch`](crate::tls::TlsConfig::watch)): new connections use them.
    TlsReloaded {
        /// The listener.
        listener: Arc<str>,
    },
    /// A listener's watched certificate files changed but cannot be used (a key that does
    /// not match, a broken file): the old configuration stays.
    TlsReloadFailed {
        /// The listener.
        listener: Arc<str>,
        /// Why.
        reason: String,
    },
    /// A certificate from an ACME directory is served to new connections
    /// ([`AcmeConfig`](crate::tls::acme::AcmeConfig)): read from the cache at start, or
    /// newly issued or renewed (then also written to the cache).
    AcmeCertificate {
        /// Its names.
        domains: Vec<String>,
        /// Where it came from.
        origin: crate::tls::acme::CertificateOrigin,
        /// When it expires.
        not_after: std::time::SystemTime,
    },
    /// A certificate could not be obtained or renewed from the ACME directory; berth tries
    /// again after `retry_in`, serving the current certificate (if any) meanwhile. The
    /// error hook gets the same failure as [`ServeError::Acme`](crate::ServeError::Acme).
    AcmeFailed {
        /// The names of the certificate.
        domains: Vec<String>,
        /// Why.
        reason: String,
        /// When berth tries again.
        retry_in: Duration,
    },
    /// A new process took over the listeners ([`ServerHandle::upgrade`](crate::ServerHandle::upgrade));
    /// this server now drains.
    Upgraded {
        /// The new process.
        pid: u32,
    },
    /// An upgrade failed; this server keeps serving.
    UpgradeFailed {
        /// Why.
        reason: String,
    },
    /// A graceful shutdown began with a lame duck (`Config::lame_duck`): the server serves
    /// on for `duration` (or until a second signal), reporting not ready, then drains.
    LameDuck {
        /// How long it lasts at most.
        duration: std::time::Duration,
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

/// How hard a server is pressed, from its [pressure](ServerEvent::Pressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PressureLevel {
    /// Below `Overload::high_pressure`.
    Normal,
    /// At or above `Overload::high_pressure`: the idle timeout shrinks, if configured.
    High,
    /// At a limit: out of descriptors, or `max_connections` open.
    Critical,
}

/// What a server did against pressure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverloadAction {
    /// The idle timeout shrank to this (pressure is high).
    IdleTimeoutShrunk(Duration),
    /// The idle timeout is back to the configured one (pressure is normal again).
    IdleTimeoutRestored,
    /// A connection idle this long was closed (`CloseReason::Evicted`) to make room for a
    /// new client.
    Evicted {
        /// The evicted connection.
        id: u64,
        /// How long it had been idle.
        idle: Duration,
    },
    /// At a limit with nothing to evict: accepting waits (new clients wait in the kernel's
    /// backlog, or back off at the descriptor limit).
    AcceptingPaused,
}

impl OverloadAction {
    /// A short snake_case name, e.g. for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            OverloadAction::IdleTimeoutShrunk(_) => "idle_timeout_shrunk",
            OverloadAction::IdleTimeoutRestored => "idle_timeout_restored",
            OverloadAction::Evicted { .. } => "evicted",
            OverloadAction::AcceptingPaused => "accepting_paused",
        }
    }
}

/// A snapshot of a server's counters, from [`ServerHandle::stats`](crate::ServerHandle::stats).
///
/// Its `Debug` output names the close reasons (`closed: {peer_closed: 2, idle_timeout: 1}`,
/// zeros left out).
#[derive(Clone, PartialEq, Eq, Default)]
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
    /// Of those, the ones that resumed a session (a ticket or the session cache) instead
    /// of a full handshake; `tls_handshakes - tls_resumed` were full.
    pub tls_resumed: u64,
    /// TLS handshakes failed or timed out.
    pub tls_failures: u64,
    /// Per-connection slots ever allocated. At steady state this stays at the peak number of
    /// concurrent connections: slots are reused.
    pub slots_allocated: u64,
    /// Refusals and accept errors not passed to the hooks because the hooks had fallen more
    /// than 4,096 reports behind (they are still counted in `rejected` and `accept_errors`).
    pub reports_dropped: u64,
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

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct ByReason<'a>(&'a Stats);
        impl std::fmt::Debug for ByReason<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map()
                    .entries(
                        CloseReason::ALL
                            .iter()
                            .map(|r| (r.label(), self.0.closed_by(*r)))
                            .filter(|(_, n)| *n > 0),
                    )
                    .finish()
            }
        }
        f.debug_struct("Stats")
            .field("accepted", &self.accepted)
            .field("active", &self.active)
            .field("closed", &ByReason(self))
            .field("rejected", &self.rejected)
            .field("accept_errors", &self.accept_errors)
            .field("tls_handshakes", &self.tls_handshakes)
            .field("tls_resumed", &self.tls_resumed)
            .field("tls_failures", &self.tls_failures)
            .field("slots_allocated", &self.slots_allocated)
            .field("reports_dropped", &self.reports_dropped)
            .finish()
    }
}

/// What [`Counters::add`] counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Accepted,
    AcceptError,
    SlotAllocated,
    TlsHandshake,
    TlsFailure,
    Rejected,
    TlsResumed,
}

/// The live counters behind [`Stats`], and the connection ids handed out. Relaxed atomics:
/// they are statistics and unique numbers, not synchronization.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    counts: [AtomicU64; 7],
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Connection ids handed out so far (ids start at 1).
    ids: AtomicU64,
}

impl Counters {
    /// A new connection id, unique within the server: 1, 2, 3...
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn add(&self, what: Count) {
        self.counts[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, active: usize, reports_dropped: u64) -> Stats {
        let count = |what: Count| self.counts[what as usize].load(Ordering::Relaxed);
        Stats {
            accepted: count(Count::Accepted),
            active,
            accept_errors: count(Count::AcceptError),
            slots_allocated: count(Count::SlotAllocated),
            rejected: count(Count::Rejected),
            tls_handshakes: count(Count::TlsHandshake),
            tls_resumed: count(Count::TlsResumed),
            tls_failures: count(Count::TlsFailure),
            reports_dropped,
            closed: std::array::from_fn(|i| self.closed[i].load(Ordering::Relaxed)),
        }
    }
}

/// What a shutdown did.
///
/// Displays as one line for logs: `3 connection(s) drained, 1 forced`.
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

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connection(s) drained, {} forced",
            self.drained, self.forced
        )?;
        if self.still_open > 0 {
            write!(f, ", {} still open", self.still_open)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_debug_names_the_close_reasons() {
        let counters = Counters::default();
        counters.add(Count::Accepted);
        counters.add(Count::Accepted);
        counters.closed(CloseReason::PeerClosed);
        counters.closed(CloseReason::IdleTimeout);
        counters.closed(CloseReason::PeerClosed);
        let stats = counters.snapshot(0, 0);
        let debug = format!("{stats:?}");
        assert!(
            debug.contains(r#"closed: {"peer_closed": 2, "idle_timeout": 1}"#),
            "{debug}"
        );
        assert!(debug.contains("accepted: 2"), "{debug}");
        assert_eq!(stats.closed(), 3);
    }

    #[test]
    fn a_shutdown_report_reads_as_a_sentence() {
        let report = ShutdownReport {
            drained: 3,
            forced: 1,
            still_open: 0,
        };
        assert_eq!(report.to_string(), "3 connection(s) drained, 1 forced");
    }
}
