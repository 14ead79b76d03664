//! The user's callbacks, and the telemetry that rides along with events (tracing, metrics).
//!
//! Hooks are plain synchronous callbacks, called on the task where the event happens; keep
//! them short (forward to a channel if you need to do I/O). They can be set or replaced at
//! any time, also while serving, through [`ServerHandle`](crate::ServerHandle) or the
//! [`Builder`](crate::Builder). A hook that panics is contained: the panic is reported to the
//! error hook as [`ServeError::HookPanicked`] and the server carries on.
//!
//! What the accept loop has to report (a refused connection, an accept error, an eviction)
//! is not reported on the loop: it is queued and a reporter task runs the hooks, so a slow hook
//! never slows accepting. The queue is bounded; reports beyond it are counted
//! ([`Stats::reports_dropped`](crate::Stats::reports_dropped)) instead of queued.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures_lite::FutureExt as _;

use crate::error::ServeError;
use crate::events::{ConnEvent, ServerEvent};
use crate::sync::{Event, Latch, lock, read, until, write};

/// Reports queued for the reporter task at most; beyond this they are dropped and counted.
const DEFERRED_CAPACITY: usize = 4096;

type Hook<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// The user's callbacks. Each sits behind its own lock so it can be replaced while serving;
/// the lock is held only to clone the `Arc`, never while the hook runs.
#[derive(Default)]
pub(crate) struct Hooks {
    conn: RwLock<Option<Hook<ConnEvent>>>,
    server: RwLock<Option<Hook<ServerEvent>>>,
    error: RwLock<Option<Hook<ServeError>>>,
    deferred: Deferred,
}

/// A report from the accept loop, for the reporter task.
pub(crate) enum Report {
    Conn(ConnEvent),
    Server(ServerEvent),
    Error(ServeError),
}

#[derive(Default)]
struct Deferred {
    queue: Mutex<VecDeque<Report>>,
    /// Reports queued or being reported.
    pending: AtomicUsize,
    dropped: AtomicU64,
    /// Something was queued.
    queued: Event,
    /// `pending` fell to zero.
    idle: Event,
}

fn load<T: ?Sized>(slot: &RwLock<Option<Arc<T>>>) -> Option<Arc<T>> {
    // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is fine.
    read(slot).clone()
}

fn store<T: ?Sized>(slot: &RwLock<Option<Arc<T>>>, value: Option<Arc<T>>) {
    *write(slot) = value;
}

impl Hooks {
    pub(crate) fn set_conn(&self, hook: Option<Hook<ConnEvent>>) {
        store(&self.conn, hook);
    }
    pub(crate) fn set_server(&self, hook: Option<Hook<ServerEvent>>) {
        store(&self.server, hook);
    }
    pub(crate) fn set_error(&self, hook: Option<Hook<ServeError>>) {
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
        #[cfg(feature = "metrics")]
        crate::metrics::server(&event);
        if let Some(hook) = load(&self.server) {
            self.call("server event", || hook(&event));
        }
    }

    pub(crate) fn error(&self, error: &ServeError) {
        #[cfg(feature = "tracing")]
        tracing::warn!(target: "berth", error = %error, "server error");
        if let Some(hook) = load(&self.error) {
            // Nobody to report a panicking error hook to: contain it and move on.
            let _ = catch_unwind(AssertUnwindSafe(|| hook(error)));
        }
    }

    /// Queues `report` for the reporter task (see the module docs); never blocks.
    pub(crate) fn defer(&self, report: Report) {
        let d = &self.deferred;
        let mut queue = lock(&d.queue);
        if queue.len() >= DEFERRED_CAPACITY {
            d.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push_back(report);
        d.pending.fetch_add(1, Ordering::AcqRel);
        drop(queue);
        d.queued.notify(1);
    }

    /// Reports dropped because the reporter was too far behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.deferred.dropped.load(Ordering::Relaxed)
    }

    /// The reporter task: runs the hooks for queued reports until `stopped` is set and the
    /// queue is empty.
    pub(crate) async fn report_deferred(&self, stopped: &Latch) {
        let d = &self.deferred;
        loop {
            let next = lock(&d.queue).pop_front();
            match next {
                Some(report) => {
                    match report {
                        Report::Conn(event) => self.conn(event),
                        Report::Server(event) => self.server(event),
                        Report::Error(error) => self.error(&error),
                    }
                    if d.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                        d.idle.notify(usize::MAX);
                    }
                }
                None if stopped.is_set() => return,
                None => {
                    let listener = d.queued.listen();
                    if d.pending.load(Ordering::Acquire) > 0 {
                        continue;
                    }
                    listener.or(stopped.wait()).await;
                }
            }
        }
    }

    /// Waits until every queued report has been reported.
    pub(crate) async fn flushed(&self) {
        let d = &self.deferred;
        until(&d.idle, || {
            (d.pending.load(Ordering::Acquire) == 0).then_some(())
        })
        .await
    }

    fn call(&self, hook: &'static str, f: impl FnOnce()) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
            self.error(&ServeError::HookPanicked {
                hook,
                message: crate::unwind::message(&*payload),
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
            ConnEvent::Accepted {
                id,
                peer_addr,
                listener,
                ..
            } => {
                tracing::debug!(target: "berth", id, peer = %peer_addr, listener = %listener, "accepted")
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
            ServerEvent::Listening {
                listener,
                addr,
                tls,
            } => {
                tracing::info!(target: "berth", listener = %listener, %addr, tls, "listening")
            }
            ServerEvent::Pressure { level, pressure } => {
                tracing::warn!(target: "berth", ?level, pressure, "pressure level changed")
            }
            ServerEvent::Overload { action } => {
                tracing::warn!(target: "berth", ?action, "overload action")
            }
            ServerEvent::TlsReloaded { listener } => {
                tracing::info!(target: "berth", listener = %listener, "TLS certificates reloaded")
            }
            ServerEvent::TlsReloadFailed { listener, reason } => {
                tracing::warn!(target: "berth", listener = %listener, %reason, "TLS reload failed")
            }
            ServerEvent::AcmeCertificate {
                domains, origin, ..
            } => {
                tracing::info!(target: "berth", ?domains, %origin, "ACME certificate served")
            }
            ServerEvent::AcmeFailed {
                domains,
                reason,
                retry_in,
            } => {
                tracing::warn!(target: "berth", ?domains, %reason, ?retry_in, "ACME order failed")
            }
            ServerEvent::Upgraded { pid } => {
                tracing::info!(target: "berth", pid, "upgraded: the new process serves")
            }
            ServerEvent::UpgradeFailed { reason } => {
                tracing::warn!(target: "berth", %reason, "upgrade failed")
            }
            ServerEvent::LameDuck { duration } => {
                tracing::info!(target: "berth", ?duration, "lame duck: serving on, not ready")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn rejected() -> Report {
        Report::Conn(ConnEvent::Rejected {
            peer_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)).into(),
            reason: crate::limits::RejectReason::Denied,
        })
    }

    #[test]
    fn deferred_reports_reach_the_hook_in_order_and_overflow_is_counted() {
        let hooks = Hooks::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        hooks.set_conn(Some(Arc::new(move |_: &ConnEvent| {
            count.fetch_add(1, Ordering::Relaxed);
        })));
        // Nothing runs the hook until the reporter does: deferring never blocks.
        for _ in 0..DEFERRED_CAPACITY + 10 {
            hooks.defer(rejected());
        }
        assert_eq!(seen.load(Ordering::Relaxed), 0);
        assert_eq!(hooks.dropped(), 10);
        let stopped = Latch::default();
        stopped.set();
        // With the server stopped, the reporter drains the queue and returns.
        futures_lite::future::block_on(hooks.report_deferred(&stopped));
        assert_eq!(seen.load(Ordering::Relaxed), DEFERRED_CAPACITY);
        futures_lite::future::block_on(hooks.flushed());
    }
}
