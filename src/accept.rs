//! The accept loop: one per listener. It only waits for capacity, accepts, admits, counts
//! and spawns. Nothing slow runs on it (the tune hook, the PROXY header, the TLS handshake
//! and the handler run on the connection's task; user hooks for refusals and accept errors
//! run on the reporter task), so one stalled client or one slow hook can never stop others
//! from being accepted.
//!
//! Accept errors fall in two groups. Errors that concern one connection (ECONNABORTED,
//! ECONNRESET, EINTR) are retried at once. Everything else, notably running out of file
//! descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM), would come back immediately and
//! forever (the pending connection stays in the backlog) and spin a core: the loop backs off
//! on a timer, 5 ms doubling to 1 s, reports the first error of each such episode, and
//! resumes at full speed after the next successful accept. The shutdown flag is checked on
//! every turn, so shutdown works even at the fd limit.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::addr::Addr;
use crate::core::{Core, Reservation};
use crate::endpoint::Endpoint;
use crate::error::ServeError;
use crate::events::{OverloadAction, ServerEvent};
use crate::hooks::Report;
use crate::lifecycle::Lifecycle;
use crate::listener::{Accepted, ByteStream as _, Listener};
use crate::runtime::BoxFuture;
use crate::task::{self, Spawn};

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The longest back-off at the descriptor limit when idle connections may be evicted.
const BACKOFF_EVICTING: Duration = Duration::from_millis(50);

/// A bound listener whose type is erased until it is served, so a server holds listeners of
/// any types; its accept loop is still compiled for its own stream type.
pub(crate) trait Bound: Send {
    /// The address it listens on.
    fn local_addr(&self) -> io::Result<Addr>;
    /// Its socket, to hand to a new process at an upgrade.
    #[cfg(unix)]
    fn handover(&self) -> Option<crate::listener::Handover>;
    /// The accept loop, to spawn: it feeds `spawn` until `core` stops accepting.
    fn serve(
        self: Box<Self>,
        core: Arc<Core>,
        endpoint: Arc<Endpoint>,
        spawn: Arc<dyn Spawn>,
    ) -> BoxFuture;
}

impl<L: Listener> Bound for L {
    fn local_addr(&self) -> io::Result<Addr> {
        Listener::local_addr(self)
    }

    #[cfg(unix)]
    fn handover(&self) -> Option<crate::listener::Handover> {
        Listener::handover(self)
    }

    fn serve(
        self: Box<Self>,
        core: Arc<Core>,
        endpoint: Arc<Endpoint>,
        spawn: Arc<dyn Spawn>,
    ) -> BoxFuture {
        Box::pin(accept_loop(core, endpoint, spawn, *self))
    }
}

/// A place under `max` for a connection just accepted: at once if there is room; else,
/// with eviction on, after evicting the connection idle the longest; else when one closes.
async fn make_room(core: &Core, max: usize, evict: Option<Duration>) -> Option<Reservation<'_>> {
    if let Some(place) = core.try_reserve(max) {
        return Some(place);
    }
    if let Some(min) = evict {
        if !evicted(core, min) {
            paused(core);
        }
    }
    core.reserve(max).await
}

/// Reports that accepting waits at a limit, with nothing to evict.
fn paused(core: &Core) {
    core.hooks().defer(Report::Server(ServerEvent::Overload {
        action: OverloadAction::AcceptingPaused,
    }));
}

/// Evicts the connection idle the longest (if idle at least `min`) and reports it.
fn evicted(core: &Core, min: Duration) -> bool {
    let Some((id, idle)) = core.evict_idlest(min) else {
        return false;
    };
    core.hooks().defer(Report::Server(ServerEvent::Overload {
        action: OverloadAction::Evicted { id, idle },
    }));
    true
}

/// An accept error from a fault point (simulation).
#[cfg(feature = "fault")]
fn injected_accept_error(core: &Core) -> Option<io::Error> {
    use crate::fault::Point;
    if core.fault(Point::AcceptEmfile) {
        return Some(io::Error::other("too many open files (fault point)"));
    }
    if core.fault(Point::AcceptAborted) {
        return Some(io::ErrorKind::ConnectionAborted.into());
    }
    None
}

/// Errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Accepts until the server stops accepting; then drops the listener (so new connects are
/// refused) and says so. The caller counted this loop in (`Core::accept_loop_started`).
async fn accept_loop<L: Listener>(
    core: Arc<Core>,
    endpoint: Arc<Endpoint>,
    spawn: Arc<dyn Spawn>,
    listener: L,
) {
    // Owns the listener, and says the loop ended once it has dropped it, also when the task
    // is dropped unfinished (a runtime shutting down, a simulated host crashing).
    let owner = ListenerOwner {
        core: &core,
        listener: Some(listener),
    };
    let Some(listener) = owner.listener.as_ref() else {
        return;
    };
    let max = core.config().max_connections;
    let proxy = core.config().proxy_protocol.clone();
    let evict = core.config().overload.evict_idle_after;
    let mut backoff: Option<Duration> = None;
    // One wait for the stop, polled on every turn: it registers its listener once, not once
    // per accept. Once it completes the latch is set, and the loop ends before polling it
    // again.
    let stopped = core.stop().accepting_stopped();
    futures_lite::pin!(stopped);
    while !core.stop().stop_accepting_requested() {
        // At the limit, stop calling accept: clients wait in the kernel's backlog. Unless
        // idle connections may be evicted: then accept, and make room for the newcomer.
        if let (Some(max), None) = (max, evict) {
            if !core.below(max).await {
                break;
            }
        }
        // Shutdown first: `or` polls its left side first, so a ready shutdown always wins
        // over a ready accept.
        let stop = async {
            stopped.as_mut().await;
            None
        };
        let accept = async {
            #[cfg(feature = "fault")]
            if let Some(e) = injected_accept_error(&core) {
                return Some(Err(e));
            }
            Some(listener.accept().await)
        };
        let accepted = stop.or(accept).await;
        match accepted {
            None => break,
            Some(Ok(Accepted {
                stream,
                peer_addr,
                local_addr,
            })) => {
                backoff = None;
                core.pressure().set_out_of_descriptors(false);
                // Direct clients are admitted here, before any task or TLS work; clients of
                // a trusted proxy are admitted on their original address once it is known.
                let proxied = proxy.as_ref().is_some_and(|p| p.trusts(&peer_addr));
                let admission = if core.admission_active() && !proxied {
                    match core.admit(peer_addr.ip()) {
                        Ok(admission) => admission,
                        Err(reason) => {
                            drop(stream);
                            core.reject_on_loop(peer_addr, reason);
                            continue;
                        }
                    }
                } else {
                    None
                };
                // Another listener's loop may have taken the last place meanwhile: then this
                // connection waits here, unserved, for one (at most one per listener does).
                // When accepting stops meanwhile, it is served all the same (one over the
                // limit, for the drain): it was accepted, and may have sent its request.
                let (place, stopping) = match max {
                    Some(max) => match make_room(&core, max, evict).await {
                        Some(place) => (Some(place), false),
                        None => (None, true),
                    },
                    None => (None, false),
                };
                let life = Lifecycle::new(core.clone(), peer_addr, admission);
                // Counted as open now: the place it held goes back.
                drop(place);
                spawn.clone().spawn(Box::new(task::Admitted {
                    life,
                    stream: stream.boxed(),
                    endpoint: endpoint.clone(),
                    local_addr,
                    proxied,
                }));
                if stopping {
                    break;
                }
            }
            Some(Err(e)) if is_per_connection(&e) => {}
            Some(Err(source)) => {
                core.pressure().set_out_of_descriptors(true);
                // Out of descriptors with eviction on and a client waiting: close the
                // connection idle the longest and try again once its descriptor is free.
                if let Some(min) = evict.filter(|_| listener.has_pending()) {
                    let closed = core.closed_listener();
                    if evicted(&core, min) {
                        // Until its descriptor is free, or the server stops accepting.
                        let freed_or_stopped = closed.or(stopped.as_mut());
                        crate::runtime::timeout(&**core.runtime(), BACKOFF_MAX, freed_or_stopped)
                            .await;
                        continue;
                    }
                    if backoff.is_none() {
                        paused(&core);
                    }
                }
                // With eviction on, look again soon: a client may come and need room.
                let max_delay = if evict.is_some() {
                    BACKOFF_EVICTING
                } else {
                    BACKOFF_MAX
                };
                let delay = backoff.map_or(BACKOFF_MIN, |d| (d * 2).min(max_delay));
                let first = backoff.is_none().then_some(ServeError::Accept {
                    source,
                    backoff: delay,
                });
                core.accept_error(first);
                backoff = Some(delay);
                stopped.as_mut().or(core.runtime().sleep(delay)).await;
            }
        }
    }
    drop(owner);
}

/// An accept loop's listener: dropping it closes the socket, then says the loop has ended.
struct ListenerOwner<'a, L> {
    core: &'a Core,
    listener: Option<L>,
}

impl<L> Drop for ListenerOwner<'_, L> {
    fn drop(&mut self) {
        drop(self.listener.take());
        self.core.stop().accept_loop_ended();
    }
}
