//! What a handler can wait for on its connection: data to read ([`Readable`]) and the
//! drain ([`Draining`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{Conn, drain_due};
use crate::core::Core;
use crate::pool::Slot;
use crate::sync::EventListener;

/// Completes when a connection has something to read. See [`Conn::readable`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Readable<'a> {
    pub(super) conn: &'a mut Conn,
}

impl Future for Readable<'_> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let conn = &mut *self.get_mut().conn;
        if let Some(e) = conn.closed_error() {
            return Poll::Ready(Err(e));
        }
        if conn.is_draining() {
            return Poll::Ready(Ok(()));
        }
        let poll = conn.poll_io(cx, false, |open, cx| open.io.poll_readable(cx), |_| false);
        // Drain began between the check above and the registration: the sweep may have
        // missed this waker.
        if poll.is_pending() && conn.is_draining() {
            return Poll::Ready(Ok(()));
        }
        poll
    }
}

/// Completes when the server starts draining. See [`Conn::draining`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Draining {
    pub(super) core: Arc<Core>,
    pub(super) slot: Arc<Slot>,
    pub(super) generation: u64,
    pub(super) opened_at: Option<std::time::Instant>,
    pub(super) listener: Option<EventListener>,
    /// The waker the listener holds, while waiting for the drain to begin.
    pub(super) waker: Option<std::task::Waker>,
}

impl Future for Draining {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Polled on every wake of its task (an HTTP connection's, per request): while no
        // drain has begun and the listener holds this task's waker, the latch's flag is all
        // there is to look at, not the listener (whose poll takes its event's lock).
        if this.listener.is_some()
            && !this.core.stop().is_draining()
            && this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        this.waker = None;
        loop {
            let draining = this.core.stop().is_draining();
            if draining && drain_due(&this.core, &this.slot, this.generation, this.opened_at) {
                this.listener = None;
                return Poll::Ready(());
            }
            match &mut this.listener {
                Some(listener) => {
                    if Pin::new(listener).poll(cx).is_pending() {
                        if !draining {
                            this.waker = Some(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                    this.listener = None;
                }
                // Listen, then loop to check again: a notify before `listen` is lost. While
                // draining, what is left to wait for is the end of the first request's grace,
                // looked at on each drain tick.
                None if draining => this.listener = Some(this.core.stop().drain_ticked().listen()),
                None => this.listener = Some(this.core.stop().draining().listen()),
            }
        }
    }
}
