//! Accepted sockets on async-io's reactor (the smol and async-std adapters).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_io::Async;

/// An accepted socket on async-io's reactor (`Async<T>`: no `Arc`, no cached readiness
/// futures), with `close` shutting down the write side, which async-io's own `poll_close`
/// does not do (it only flushes): the peer reads end of file, and berth's lingering close
/// works.
#[derive(Debug)]
pub(crate) struct AsyncIoStream<T>(pub(crate) Async<T>);

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
    pub(crate) fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    /// Readable without reading: async-io waits on the socket's readiness.
    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_readable(cx)
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
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
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
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.get_ref().shutdown_write())
    }
}
