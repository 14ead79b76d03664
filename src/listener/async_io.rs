//! Accepted sockets on async-io's reactor (the smol and async-std adapters).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_io::Async;

/// An accepted socket on async-io's reactor (`Async<T>`: no `Arc`, no cached readiness
/// futures), with `close` shutting down the write side, which async-io's own `poll_close`
/// does not do (it only flushes): the peer reads end of file, and berth's lingering close
/// works.
///
/// Its readiness is confirmed after a read. async-io keeps the event that woke a read
/// waiting for data (the read then takes the data without asking the reactor again), and
/// its next readiness wait returns at once for that event: for bytes already consumed.
/// Trusted, `Conn::readable` would return for an idle connection, whose handler then waits
/// in a read, deaf to the server draining. So readiness that comes without a wait since
/// the last read is checked with a one-byte peek (`MSG_PEEK`); readiness that came after a
/// wait (the usual `readable` then `read` loop) is taken as it is, without a syscall.
#[derive(Debug)]
pub(crate) struct AsyncIoStream<T> {
    io: Async<T>,
    /// A readiness wait has registered with the reactor since the last read: its event is
    /// for data that arrived after that read.
    waited: bool,
}

/// Sockets whose write side can be shut down: std's TCP and Unix streams.
pub(crate) trait HalfClose {
    /// `shutdown(Write)`.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HalfClose for std::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

#[cfg(unix)]
impl HalfClose for std::os::unix::net::UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl<T> AsyncIoStream<T> {
    pub(crate) fn new(io: Async<T>) -> Self {
        AsyncIoStream { io, waited: false }
    }

    pub(crate) fn get_ref(&self) -> &T {
        self.io.get_ref()
    }
}

#[cfg(unix)]
impl<T: std::os::fd::AsFd> AsyncIoStream<T> {
    /// Readable without reading: async-io waits on the socket's readiness, confirmed by a
    /// peek when no wait happened since the last read.
    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.io.poll_readable(cx)?.is_pending() {
                self.waited = true;
                return Poll::Pending;
            }
            if std::mem::take(&mut self.waited) {
                return Poll::Ready(Ok(()));
            }
            match super::stream::peek_one(self.io.get_ref()) {
                // Data, or end of file (0): a read would make progress.
                Ok(_) => return Poll::Ready(Ok(())),
                // The event was for data a read took: wait (async-io re-registers).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(not(unix))]
impl<T> AsyncIoStream<T> {
    /// Readable without reading: async-io waits on the socket's readiness.
    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_readable(cx)
    }
}

impl<T> futures_io::AsyncRead for AsyncIoStream<T>
where
    Async<T>: futures_io::AsyncRead,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.waited = false;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        self.waited = false;
        Pin::new(&mut self.io).poll_read_vectored(cx, bufs)
    }
}

impl<T: HalfClose> futures_io::AsyncWrite for AsyncIoStream<T>
where
    Async<T>: futures_io::AsyncWrite,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown_write())
    }
}
