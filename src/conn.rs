//! `Conn`: the per-connection context handed to the handler.
//!
//! A `Conn` owns the connection's stream and is itself `AsyncRead + AsyncWrite`. Each read or
//! write that makes progress stamps the connection's activity for the idle scanner. When the
//! server closes the connection (idle timeout, forced shutdown, a [`ConnHandle`]), pending
//! and later I/O fails with a clear error and the task is woken.
//!
//! Dropping the `Conn` closes the socket and ends the connection's bookkeeping (count, stats,
//! `Closed` event). That happens in `Drop`, not after an `.await`, so it also happens when a
//! handler is cancelled or panics.

use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use event_listener::EventListener;
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::io::{ReadHalf, WriteHalf};

use crate::addr::{Addr, PeerCred};
use crate::events::CloseReason;
use crate::extensions::Extensions;
use crate::listener::Stream;
use crate::pool::{LINGERING, PANICKED, SAW_EOF, SAW_ERROR, Slot, SlotState};
use crate::server::{Permit, Shared};
use crate::tls::TlsInfo;

/// The stream behind a `Conn` is a `Box<dyn Stream>`, type-erased so `Conn` (and every
/// handler) is the same type whatever the listener or TLS layer.
type Io = dyn Stream;

/// What `Conn::io` holds after the socket is closed. A zero-sized box does not allocate.
struct Gone;

impl AsyncRead for Gone {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
}

impl Stream for Gone {}

impl AsyncWrite for Gone {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One client connection, as the handler sees it.
///
/// Read and write it with the futures-io traits (e.g. `futures_lite::AsyncReadExt`). End of
/// file is `Ok(0)`. After the server closes the connection, I/O fails with
/// [`io::ErrorKind::TimedOut`] (idle timeout) or [`io::ErrorKind::ConnectionAborted`]
/// (forced shutdown, [`ConnHandle::close`]).
///
/// ```no_run
/// use futures_lite::{AsyncReadExt, AsyncWriteExt};
///
/// async fn handler(mut conn: berth::Conn) {
///     let mut buf = [0u8; 4096];
///     loop {
///         match conn.read(&mut buf).await {
///             Ok(0) | Err(_) => return, // peer closed, or the server closed us
///             Ok(n) => {
///                 if conn.write_all(&buf[..n]).await.is_err() {
///                     return;
///                 }
///             }
///         }
///         if conn.is_draining() {
///             return; // finish the current unit of work, then let shutdown proceed
///         }
///     }
/// }
/// ```
pub struct Conn {
    io: Box<Io>,
    slot: Arc<Slot>,
    generation: u64,
    /// The open-count this connection holds; also its way to the server's shared state.
    permit: Permit,
    id: u64,
    peer_addr: Addr,
    local_addr: Addr,
    proxy_addr: Option<Addr>,
    opened_at: Instant,
    extensions: Extensions,
    tls: Option<Box<TlsInfo>>,
    /// Bytes read and written, reported to metrics once, at close.
    #[cfg(feature = "metrics")]
    bytes: (u64, u64),
}

/// What the connection task knows about a connection before its `Conn` exists.
pub(crate) struct Meta {
    pub(crate) id: u64,
    pub(crate) peer_addr: Addr,
    pub(crate) local_addr: Addr,
    /// The proxy's address, when a PROXY header gave the client's original address.
    pub(crate) proxy_addr: Option<Addr>,
    /// When it was accepted (so `Closed`'s duration includes a TLS handshake).
    pub(crate) opened_at: Instant,
}

impl Conn {
    /// Registers a new connection. Takes over `permit` (the open-count increment the accept
    /// loop made), so the count stays right whatever happens from here on.
    pub(crate) fn new(permit: Permit, io: impl Stream, meta: Meta, tls: Option<TlsInfo>) -> Conn {
        let shared = permit.shared();
        let (slot, generation) = shared.pool.open(shared.clock.stamp(), || {
            shared
                .counters
                .slots_allocated
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let conn = Conn {
            io: Box::new(io),
            slot,
            generation,
            opened_at: meta.opened_at,
            permit,
            id: meta.id,
            peer_addr: meta.peer_addr,
            local_addr: meta.local_addr,
            proxy_addr: meta.proxy_addr,
            extensions: Extensions::default(),
            tls: tls.map(Box::new),
            #[cfg(feature = "metrics")]
            bytes: (0, 0),
        };
        // A connection that registers after shutdown's final sweep must not escape it.
        if conn.shared().shutdown.force.is_set() {
            conn.slot.close(generation, SlotState::ShutdownForced);
        }
        conn
    }

    /// The server's state, shared (the `Arc`, to outlive this `Conn`).
    pub(crate) fn server(&self) -> Arc<Shared> {
        self.permit.shared().clone()
    }

    fn shared(&self) -> &Shared {
        self.permit.shared()
    }

    /// The client's address: behind a trusted proxy speaking the PROXY protocol, the
    /// original client's.
    pub fn peer_addr(&self) -> &Addr {
        &self.peer_addr
    }

    /// The proxy's address, when the client's came from a PROXY-protocol header.
    pub fn proxy_addr(&self) -> Option<&Addr> {
        self.proxy_addr.as_ref()
    }

    /// The server-side address of this connection.
    pub fn local_addr(&self) -> &Addr {
        &self.local_addr
    }

    /// Who is on the other end, for a Unix domain socket connection: the peer process's
    /// user, group and process ids as the kernel recorded them at connect (`SO_PEERCRED`;
    /// Linux and Android). `None` for TCP, and where the platform does not report them.
    ///
    /// ```no_run
    /// # fn f(conn: berth::Conn) {
    /// match conn.peer_cred() {
    ///     Some(cred) if cred.uid == 0 => { /* root: allow admin commands */ }
    ///     _ => { /* everyone else */ }
    /// }
    /// # }
    /// ```
    pub fn peer_cred(&self) -> Option<PeerCred> {
        self.io.peer_cred()
    }

    /// What TLS negotiated, for a TLS connection.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_deref()
    }

    /// The connection's id: unique within its server, increasing in accept order.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True until the connection is closed by the server (idle timeout, forced shutdown, a
    /// [`ConnHandle`]). A peer that closed its side is detected by a read returning `Ok(0)`.
    pub fn is_connected(&self) -> bool {
        self.slot.state(self.generation) == SlotState::Open
    }

    /// Whether the server has started a graceful shutdown.
    pub fn is_draining(&self) -> bool {
        self.shared().shutdown.draining.is_set()
    }

    /// A future that completes when the server starts a graceful shutdown (at once if it
    /// already has). Race it against reads to stop while waiting for the next request, and
    /// check [`is_draining`](Self::is_draining) after each request too: when requests are
    /// pipelined the next read is always ready, so the race alone would never stop.
    ///
    /// ```no_run
    /// # async fn f(mut conn: berth::Conn) {
    /// use futures_lite::{AsyncReadExt, FutureExt};
    /// let mut draining = conn.draining();
    /// let mut buf = [0u8; 1024];
    /// loop {
    ///     let read = async { Some(conn.read(&mut buf).await) };
    ///     let drained = async { (&mut draining).await; None };
    ///     match read.or(drained).await {
    ///         Some(Ok(n)) if n > 0 => { /* handle &buf[..n] */ }
    ///         _ => return, // EOF, error, or shutdown
    ///     }
    ///     if conn.is_draining() {
    ///         return; // the request in hand is done: stop before the next one
    ///     }
    /// }
    /// # }
    /// ```
    pub fn draining(&self) -> Draining {
        Draining {
            shared: self.permit.shared().clone(),
            listener: None,
        }
    }

    /// Waits until the connection has something to read (data, end of file or an error)
    /// without reading it, so an idle handler need not hold a read buffer: wait, then borrow
    /// a buffer only for the read that follows. It also returns when the server starts
    /// draining, so this one wait serves both purposes: check
    /// [`is_draining`](Self::is_draining) after it. Fails like a read once the server has
    /// closed the connection (idle timeout, shutdown). Works for TLS too (ready when rustls
    /// holds decrypted bytes or the socket has more); on streams that cannot tell readiness
    /// (see [`Stream::poll_readable`]) it returns at once, which is still correct.
    ///
    /// ```no_run
    /// # async fn f(mut conn: berth::Conn) -> std::io::Result<()> {
    /// use futures_lite::{AsyncReadExt, AsyncWriteExt};
    /// loop {
    ///     conn.readable().await?; // idle here costs no buffer
    ///     if conn.is_draining() {
    ///         return Ok(()); // between requests: stop for the shutdown
    ///     }
    ///     let mut buf = vec![0u8; 16 * 1024]; // or take one from a pool
    ///     let n = conn.read(&mut buf).await?;
    ///     if n == 0 {
    ///         return Ok(());
    ///     }
    ///     conn.write_all(&buf[..n]).await?;
    /// }
    /// # }
    /// ```
    pub fn readable(&mut self) -> Readable<'_> {
        Readable { conn: self }
    }

    /// A handle that can observe or close this connection from elsewhere. It stays valid
    /// (and harmless) after the connection ends.
    pub fn handle(&self) -> ConnHandle {
        ConnHandle {
            slot: self.slot.clone(),
            generation: self.generation,
            id: self.id,
        }
    }

    /// Values scoped to this connection.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Values scoped to this connection, mutably.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Splits into a read half and a write half that can be used concurrently (from two
    /// futures or two tasks). The connection closes when both halves are dropped.
    pub fn split(self) -> (ReadHalf<Conn>, WriteHalf<Conn>) {
        futures_lite::io::split(self)
    }

    /// The error for I/O on a connection the server closed, or `None` while open.
    fn closed_error(&self) -> Option<io::Error> {
        match self.slot.state(self.generation) {
            SlotState::Open => None,
            SlotState::IdleTimeout => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed by berth: idle timeout",
            )),
            SlotState::ShutdownForced => Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed by berth: server shutdown",
            )),
            SlotState::Aborted | SlotState::Finished => Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed by berth: closed through its ConnHandle",
            )),
        }
    }

    fn stamp(&self) {
        self.slot.last_active.store(
            self.shared().clock.stamp(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Common tail of every poll: stamp progress, note EOF/errors, and on `Pending` register
    /// the waker the server uses to interrupt us, then re-check the close state (the server
    /// may have closed between the first check and the registration).
    fn finish<T>(
        &self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
        progress: impl Fn(&T) -> bool,
        waker: &atomic_waker::AtomicWaker,
    ) -> Poll<io::Result<T>> {
        match &poll {
            Poll::Ready(Ok(v)) if progress(v) => self.stamp(),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(_)) => self.slot.mark(SAW_ERROR),
            Poll::Pending => {
                waker.register(cx.waker());
                if let Some(e) = self.closed_error() {
                    return Poll::Ready(Err(e));
                }
            }
        }
        poll
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.closed_error() {
            return Poll::Ready(Err(e));
        }
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        #[cfg(feature = "metrics")]
        if let Poll::Ready(Ok(n)) = poll {
            this.bytes.0 += n as u64;
        }
        if matches!(poll, Poll::Ready(Ok(0))) && !buf.is_empty() {
            this.slot.mark(SAW_EOF);
        }
        this.finish(cx, poll, |n| *n > 0, &this.slot.read_waker)
    }

    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.closed_error() {
            return Poll::Ready(Err(e));
        }
        let poll = Pin::new(&mut this.io).poll_read_vectored(cx, bufs);
        #[cfg(feature = "metrics")]
        if let Poll::Ready(Ok(n)) = poll {
            this.bytes.0 += n as u64;
        }
        if matches!(poll, Poll::Ready(Ok(0))) && bufs.iter().any(|b| !b.is_empty()) {
            this.slot.mark(SAW_EOF);
        }
        this.finish(cx, poll, |n| *n > 0, &this.slot.read_waker)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.closed_error() {
            return Poll::Ready(Err(e));
        }
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        #[cfg(feature = "metrics")]
        if let Poll::Ready(Ok(n)) = poll {
            this.bytes.1 += n as u64;
        }
        this.finish(cx, poll, |n| *n > 0, &this.slot.write_waker)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.closed_error() {
            return Poll::Ready(Err(e));
        }
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        #[cfg(feature = "metrics")]
        if let Poll::Ready(Ok(n)) = poll {
            this.bytes.1 += n as u64;
        }
        this.finish(cx, poll, |n| *n > 0, &this.slot.write_waker)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.closed_error() {
            return Poll::Ready(Err(e));
        }
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.finish(cx, poll, |_| false, &this.slot.write_waker)
    }

    /// Shuts down the write side (the peer reads end of file). The socket itself is closed
    /// when the `Conn` is dropped.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed_error().is_some() {
            return Poll::Ready(Ok(()));
        }
        let poll = Pin::new(&mut this.io).poll_close(cx);
        this.finish(cx, poll, |_| false, &this.slot.write_waker)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A handler future that panics drops its locals while unwinding, before the
        // supervisor sees the panic: that is a panic close too.
        if std::thread::panicking() {
            self.slot.mark(PANICKED);
        }
        let closing = Closing {
            io: std::mem::replace(&mut self.io, Box::new(Gone)),
            permit: self.permit.take(),
            slot: self.slot.clone(),
            generation: self.generation,
            id: self.id,
            peer_addr: std::mem::replace(&mut self.peer_addr, Addr::Unix(None)),
            opened_at: self.opened_at,
            #[cfg(feature = "metrics")]
            bytes: self.bytes,
        };
        // The handler returned on its own while the peer may still be sending: linger.
        // Everything else (peer closed, error, panic, closed by the server) closes now.
        let shared = self.shared();
        let linger = shared.config.linger_timeout;
        if !linger.is_zero()
            && self.slot.flags() == 0
            && self.slot.state(self.generation) == SlotState::Open
            && !shared.shutdown.force.is_set()
        {
            self.slot.mark(LINGERING);
            shared.runtime.spawn(Box::pin(closing.linger(linger)));
        }
    }
}

/// A connection whose handler is done, on its way to closed. Its `Drop` closes the socket and
/// does the final bookkeeping (slot, count, stats, `Closed` event), so that happens even if a
/// lingering task is dropped half-way (a runtime shutting down, a simulated host crashing).
struct Closing {
    io: Box<Io>,
    permit: Permit,
    slot: Arc<Slot>,
    generation: u64,
    id: u64,
    peer_addr: Addr,
    opened_at: Instant,
    #[cfg(feature = "metrics")]
    bytes: (u64, u64),
}

impl Closing {
    /// Lingering close. Closing a TCP socket that still has unread incoming data makes the
    /// kernel send a reset and discard what it has not sent yet: the peer could lose
    /// responses the handler wrote just before returning. So: half-close (our FIN goes after
    /// all our data), then discard what the peer still sends until it closes, the linger
    /// timeout passes, or shutdown forces.
    async fn linger(mut self, timeout: std::time::Duration) {
        use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
        let shared = self.permit.shared().clone();
        let io = &mut self.io;
        let discard = async {
            if io.close().await.is_ok() {
                let mut sink = [0u8; 512];
                while let Ok(1..) = io.read(&mut sink).await {}
            }
        };
        discard
            .or(shared.runtime.sleep(timeout))
            .or(shared.shutdown.force.wait())
            .await;
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        // Close the socket first: once the count drops or `Closed` fires, it is closed.
        drop(std::mem::replace(&mut self.io, Box::new(Gone)));
        let shared = self.permit.shared().clone();
        let flags = self.slot.flags();
        let state = shared.pool.release(&self.slot, self.generation);
        let reason = state.close_reason().unwrap_or(if flags & PANICKED != 0 {
            CloseReason::Panicked
        } else if flags & SAW_ERROR != 0 {
            CloseReason::Error
        } else if flags & SAW_EOF != 0 {
            CloseReason::PeerClosed
        } else {
            CloseReason::HandlerDone
        });
        let permit = self.permit.take();
        #[cfg(feature = "metrics")]
        crate::metrics::bytes(self.bytes.0, self.bytes.1);
        let peer_addr = std::mem::replace(&mut self.peer_addr, Addr::Unix(None));
        shared.finish(permit, self.id, peer_addr, reason, self.opened_at);
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("peer_addr", &self.peer_addr)
            .field("local_addr", &self.local_addr)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// Observes or closes one connection from outside its handler.
///
/// Cheap to clone. A handle outlives its connection harmlessly: once the connection has
/// ended, `is_connected` is false and `close` does nothing, even when the server has reused
/// the connection's bookkeeping slot for a newer connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    slot: Arc<Slot>,
    generation: u64,
    id: u64,
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

    /// Closes the connection: its pending and later I/O fails with `ConnectionAborted` and
    /// its handler is cancelled. Returns false if it was already closed or has ended.
    pub fn close(&self) -> bool {
        self.slot.close(self.generation, SlotState::Aborted)
    }
}

/// Completes when a connection has something to read. See [`Conn::readable`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Readable<'a> {
    conn: &'a mut Conn,
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
        let poll = conn.io.poll_readable(cx);
        let poll = conn.finish(cx, poll, |_| false, &conn.slot.read_waker);
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
    shared: Arc<Shared>,
    listener: Option<EventListener>,
}

impl Future for Draining {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.shared.shutdown.draining.is_set() {
                this.listener = None;
                return Poll::Ready(());
            }
            match &mut this.listener {
                Some(listener) => {
                    ready!(Pin::new(listener).poll(cx));
                    this.listener = None;
                }
                // Listen, then loop to check the flag again: a notify before `listen` is lost.
                None => this.listener = Some(this.shared.shutdown.draining.listen()),
            }
        }
    }
}

pub(crate) use self::supervise::{Outcome, Supervised};

/// Runs a handler future so that a panic is caught and a server-side close cancels it.
mod supervise {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    /// How a handler ended.
    pub(crate) enum Outcome {
        Done,
        Panicked(String),
        /// The server closed the connection and the handler did not return on its own.
        Cancelled,
    }

    pin_project_lite::pin_project! {
        /// Polls the handler; if the server closes the connection, the handler gets one more
        /// poll to see the error from its pending I/O and return, then it is dropped (which
        /// closes the socket even if the handler was not doing I/O).
        pub(crate) struct Supervised<F> {
            #[pin]
            handler: F,
            conn: ConnHandle,
            // The waker last registered in the slot: registering costs an atomic
            // read-modify-write per poll, and a task's waker rarely changes.
            registered: Option<std::task::Waker>,
        }
    }

    impl<F> Supervised<F> {
        pub(crate) fn new(handler: F, conn: ConnHandle) -> Self {
            Supervised {
                handler,
                conn,
                registered: None,
            }
        }
    }

    impl<F: Future<Output = ()>> Future for Supervised<F> {
        type Output = Outcome;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
            let mut this = self.project();
            match catch_unwind(AssertUnwindSafe(|| this.handler.as_mut().poll(cx))) {
                Ok(Poll::Ready(())) => return Poll::Ready(Outcome::Done),
                Ok(Poll::Pending) => {}
                Err(payload) => {
                    // Marked before the handler (and its Conn) is dropped, so the Closed
                    // event says Panicked.
                    this.conn.slot.mark(PANICKED);
                    return Poll::Ready(Outcome::Panicked(crate::error::panic_message(&*payload)));
                }
            }
            // Only a server-side close cancels: a handler that dropped its Conn early and
            // carries on is left alone (its connection has already ended).
            let conn = &*this.conn;
            let killed = || conn.slot.state(conn.generation).close_reason().is_some();
            if killed() {
                return Poll::Ready(Outcome::Cancelled);
            }
            // The slot's task waker is consumed only by the close that kills this handler,
            // so skipping an unchanged registration cannot lose a wake-up.
            if !this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                conn.slot.task_waker.register(cx.waker());
                *this.registered = Some(cx.waker().clone());
            }
            if killed() {
                return Poll::Ready(Outcome::Cancelled);
            }
            Poll::Pending
        }
    }
}
