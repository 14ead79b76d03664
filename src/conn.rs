//! `Conn`: the per-connection context handed to the handler.
//!
//! A `Conn` owns the connection's stream and is itself `AsyncRead + AsyncWrite`. Each read or
//! write that makes progress stamps the connection's activity for the idle scanner. When the
//! server closes the connection (idle timeout, forced shutdown, a [`ConnHandle`]), pending
//! and later I/O fails with a clear error and the task is woken.
//!
//! Dropping the `Conn` ends the connection: at once, or after a lingering close when the
//! handler returned while its peer was still sending. Either way the stream and the
//! connection's [`Lifecycle`] travel together (as `Open`), and the lifecycle's `Drop` does
//! the bookkeeping, so it also happens when a handler is cancelled or panics.

use std::io::{self, IoSlice, IoSliceMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::io::{ReadHalf, WriteHalf};

use crate::addr::{Addr, PeerCred};
use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::extensions::Extensions;
use crate::lifecycle::Lifecycle;
use crate::listener::ByteStream;
use crate::pool::{SAW_DATA, SAW_EOF, SAW_ERROR, Slot, SlotState};
use crate::tls::TlsInfo;

mod close;
mod handle;
mod wait;

pub use handle::{Busy, ConnHandle};
pub use wait::{Draining, Readable};

/// One client connection, as the handler sees it.
///
/// Read and write it with the futures-io traits (e.g. `futures_lite::AsyncReadExt`). End of
/// file is `Ok(0)`. After the server closes the connection, I/O fails with
/// [`io::ErrorKind::TimedOut`] (idle timeout) or [`io::ErrorKind::ConnectionAborted`]
/// (forced shutdown, [`ConnHandle::close`]).
///
/// Reading lines with `futures_lite::AsyncBufReadExt::read_line` is a trap here: it panics
/// in debug builds when a read fails half-way through a line (futures-lite issue 67), which
/// berth's idle timeout makes easy to hit. Use a codec with a length limit instead
/// (`asynchronous-codec`'s `LinesCodec`, as in `examples/lines.rs`).
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
    slot: Arc<Slot>,
    generation: u64,
    core: Arc<Core>,
    /// The stream and the bookkeeping, taken by `Drop` (to end now or after a lingering
    /// close); `None` only inside `Drop`.
    open: Option<Open>,
    id: u64,
    peer_addr: Addr,
    local_addr: Addr,
    proxy_addr: Option<Addr>,
    endpoint: Arc<Endpoint>,
    extensions: Extensions,
    tls: Option<Box<TlsInfo>>,
}

/// What outlives the `Conn` in a lingering close: the stream (type-erased, so `Conn` and
/// every handler are one type whatever the listener or TLS layer) and the lifecycle. Fields
/// drop in order: the socket closes before the lifecycle finishes.
struct Open {
    io: Box<dyn ByteStream>,
    life: Lifecycle,
    /// A TLS session, which should end with `close_notify`.
    tls: bool,
    /// The stream's write side was closed (by the lingering close).
    closed: bool,
}

/// What the connection task knows of a connection besides its lifecycle.
pub(crate) struct Meta {
    pub(crate) local_addr: Addr,
    /// The proxy's address, when a PROXY header gave the client's original address.
    pub(crate) proxy_addr: Option<Addr>,
    /// The listener that accepted it.
    pub(crate) endpoint: Arc<Endpoint>,
}

impl Conn {
    /// Registers `life`'s connection (for the idle scanner and server-side closes) and wraps
    /// its stream, boxed once: a plain connection's socket is boxed at accept and that box
    /// is the one every read and write goes through.
    pub(crate) fn new(
        mut life: Lifecycle,
        io: Box<dyn ByteStream>,
        meta: Meta,
        tls: Option<TlsInfo>,
    ) -> Conn {
        let (slot, generation) = life.register();
        Conn {
            slot,
            generation,
            core: life.core().clone(),
            id: life.id(),
            peer_addr: life.peer_addr().clone(),
            local_addr: meta.local_addr,
            proxy_addr: meta.proxy_addr,
            endpoint: meta.endpoint,
            extensions: Extensions::default(),
            open: Some(Open {
                io,
                life,
                tls: tls.is_some(),
                closed: false,
            }),
            tls: tls.map(Box::new),
        }
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

    /// The name of the listener that accepted this connection (see
    /// [`ListenerConfig::name`](crate::ListenerConfig::name)).
    pub fn listener(&self) -> &str {
        self.endpoint.name()
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
        self.open.as_ref().and_then(|open| open.io.peer_cred())
    }

    /// What TLS negotiated, for a TLS connection.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_deref()
    }

    /// The connection's id: unique within its server, increasing in accept order.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True until the connection is closed by anyone: the server (idle timeout, forced
    /// shutdown, a [`ConnHandle`]), or the peer (a read returned end of file, or I/O
    /// failed, e.g. a reset).
    pub fn is_connected(&self) -> bool {
        self.slot.state(self.generation) == SlotState::Open
            && self.slot.flags() & (SAW_EOF | SAW_ERROR) == 0
    }

    /// Whether the server has started a graceful shutdown and wants this connection to
    /// finish: at once if it has sent something, else once it has been served for
    /// [`first_request_grace`](crate::Config::first_request_grace) (a connection accepted
    /// just before the drain, or whose TLS handshake ended late, gets the time to send its
    /// first request).
    pub fn is_draining(&self) -> bool {
        self.core.stop().is_draining() && self.drain_due()
    }

    /// Whether a drain applies to this connection yet (see `is_draining`).
    fn drain_due(&self) -> bool {
        drain_due(&self.core, &self.slot, self.generation, self.opened_at())
    }

    fn opened_at(&self) -> Option<std::time::Instant> {
        self.open
            .as_ref()
            .and_then(|open| open.life.registered_at())
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
            core: self.core.clone(),
            slot: self.slot.clone(),
            generation: self.generation,
            opened_at: self.opened_at(),
            listener: None,
            waker: None,
        }
    }

    /// Waits until the connection has something to read (data, end of file or an error)
    /// without reading it, so an idle handler need not hold a read buffer: wait, then borrow
    /// a buffer only for the read that follows. It also returns when the server starts
    /// draining, so this one wait serves both purposes: check
    /// [`is_draining`](Self::is_draining) after it. Fails like a read once the server has
    /// closed the connection (idle timeout, shutdown). Works for TLS too (ready when rustls
    /// holds decrypted bytes or the socket has more); on streams that cannot tell readiness
    /// (see [`ByteStream::poll_readable`]) it returns at once, which is still correct.
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
            core: self.core.clone(),
        }
    }

    /// Marks the connection busy until the returned guard is dropped: the idle scanner
    /// skips it, however long the socket stays quiet, and the guard's drop counts as
    /// activity. For request/response protocols: hold a guard from the moment a request is
    /// read until its response is written, and the idle timeout counts only between
    /// requests (a slow request is never cut by it). Guards nest; any number may be held.
    /// [`ConnHandle::busy`] makes one from another task.
    ///
    /// ```no_run
    /// # async fn f(mut conn: berth::Conn) {
    /// # async fn compute(_: &mut berth::Conn) {}
    /// let busy = conn.busy(); // a request arrived
    /// compute(&mut conn).await; // may take longer than the idle timeout
    /// drop(busy); // idle from here on
    /// # }
    /// ```
    pub fn busy(&self) -> Busy {
        self.handle().busy()
    }

    /// The runtime this connection's task runs on: spawn and sleep through it (as
    /// `berth::http` does for hyper's executor and timer) and the same code runs on
    /// smol, tokio, async-std or a simulator.
    pub fn runtime(&self) -> &Arc<dyn crate::runtime::Runtime> {
        self.core.runtime()
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
        closed_error(self.slot.state(self.generation))
    }

    /// Runs one poll of the stream: fails at once if the server closed the connection, then
    /// stamps progress, notes EOF and errors, and on `Pending` registers the waker the server
    /// uses to interrupt us and re-checks the close state (the server may have closed between
    /// the first check and the registration).
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: bool,
        io: impl FnOnce(&mut Open, &mut Context<'_>) -> Poll<io::Result<T>>,
        progress: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        if let Some(e) = self.closed_error() {
            return Poll::Ready(Err(e));
        }
        let Some(open) = self.open.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let poll = io(open, cx);
        match &poll {
            Poll::Ready(Ok(v)) if progress(v) => self
                .slot
                .last_active
                .store(self.core.stamp(), std::sync::atomic::Ordering::Relaxed),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(_)) => self.slot.mark(SAW_ERROR),
            Poll::Pending => {
                let waker = if write {
                    &self.slot.write_waker
                } else {
                    &self.slot.read_waker
                };
                waker.register(cx.waker());
                if let Some(e) = self.closed_error() {
                    return Poll::Ready(Err(e));
                }
            }
        }
        poll
    }
}

/// Whether a drain applies to a connection yet: it has sent something, or it has been
/// served for its first request's grace.
fn drain_due(
    core: &Core,
    slot: &Slot,
    generation: u64,
    opened_at: Option<std::time::Instant>,
) -> bool {
    let saw_data = slot.flags() & SAW_DATA != 0;
    // The flags are the connection's only while the slot is still its own: once it has
    // ended (the slot may serve a newer one), the drain is due.
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    if saw_data || slot.state(generation) == SlotState::Finished {
        return true;
    }
    let grace = core.config().first_request_grace;
    opened_at.is_none_or(|at| core.runtime().now().saturating_duration_since(at) >= grace)
}

impl Conn {
    /// A read: counted, and noted (end of file when a read that wanted bytes got none; data
    /// when it got some, see `first_request_grace`).
    fn poll_read_with(
        &mut self,
        cx: &mut Context<'_>,
        wanted: bool,
        read: impl FnOnce(Pin<&mut Box<dyn ByteStream>>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let poll = self.poll_io(
            cx,
            false,
            |open, cx| {
                let poll = read(Pin::new(&mut open.io), cx);
                #[cfg(feature = "metrics")]
                if let Poll::Ready(Ok(n)) = poll {
                    open.life.count_read(n);
                }
                poll
            },
            |n| *n > 0,
        );
        match poll {
            Poll::Ready(Ok(0)) if wanted => self.slot.mark(SAW_EOF),
            Poll::Ready(Ok(1..)) => self.slot.mark(SAW_DATA),
            _ => {}
        }
        poll
    }

    /// A write: counted.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut Box<dyn ByteStream>>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        self.poll_io(
            cx,
            true,
            |open, cx| {
                let poll = write(Pin::new(&mut open.io), cx);
                #[cfg(feature = "metrics")]
                if let Poll::Ready(Ok(n)) = poll {
                    open.life.count_written(n);
                }
                poll
            },
            |n| *n > 0,
        )
    }
}

fn closed_error(state: SlotState) -> Option<io::Error> {
    match state {
        SlotState::Open => None,
        SlotState::IdleTimeout => Some(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection closed by berth: idle timeout",
        )),
        SlotState::ShutdownForced => Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by berth: server shutdown",
        )),
        SlotState::Evicted => Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by berth: evicted (idle the longest) to make room for a new client",
        )),
        SlotState::Aborted | SlotState::Finished => Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by berth: closed through its ConnHandle",
        )),
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let wanted = !buf.is_empty();
        self.get_mut()
            .poll_read_with(cx, wanted, |io, cx| io.poll_read(cx, buf))
    }

    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let wanted = bufs.iter().any(|b| !b.is_empty());
        self.get_mut()
            .poll_read_with(cx, wanted, |io, cx| io.poll_read_vectored(cx, bufs))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_io(
            cx,
            true,
            |open, cx| Pin::new(&mut open.io).poll_flush(cx),
            |_| false,
        )
    }

    /// Shuts down the write side (the peer reads end of file; a TLS session sends
    /// `close_notify` first). The socket itself is closed when the `Conn` is dropped.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed_error().is_some() {
            return Poll::Ready(Ok(()));
        }
        this.poll_io(
            cx,
            true,
            |open, cx| Pin::new(&mut open.io).poll_close(cx),
            |_| false,
        )
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
