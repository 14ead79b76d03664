//! What a handler can wait for on its connection: data to read ([`Readable`]) and the
//! drain ([`Draining`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

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
}

impl Future for Draining {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let draining = this.core.stop().is_draining();
            if draining && drain_due(&this.core, &this.slot, this.generation, this.opened_at) {
                this.listener = None;
                return Poll::Ready(());
            }
            match &mut this.listener {
                Some(listener) => {
                    ready!(Pin::new(listener).poll(cx));
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
