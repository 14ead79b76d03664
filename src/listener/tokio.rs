//! Accepted sockets on tokio's reactor, as futures-io streams that report readiness
//! accurately.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// tokio's TCP and Unix streams, as far as readiness goes (the inherent methods both have).
pub(crate) trait TokioSocket: AsyncRead + AsyncWrite + Unpin {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    fn peek_one(&self) -> io::Result<usize>;
}

macro_rules! tokio_socket {
    ($ty:ty) => {
        impl TokioSocket for $ty {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$ty>::poll_read_ready(self, cx)
            }
            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$ty>::try_io(self, interest, f)
            }
            fn peek_one(&self) -> io::Result<usize> {
                super::stream::peek_one(self)
            }
        }
    };
}

tokio_socket!(tokio::net::TcpStream);
#[cfg(unix)]
tokio_socket!(tokio::net::UnixStream);

/// A tokio socket as a futures-io stream (what tokio-util's `Compat` does, plus `close` as
/// a write shutdown), with readiness berth can trust.
///
/// tokio caches read readiness: it reports a freshly accepted socket as readable before
/// anything arrived, and readiness set by an event that came in while a read was emptying
/// the socket survives that read. Trusted as is, `Conn::readable` would return for an idle
/// connection, whose handler then waits in a read, holding its buffer and deaf to the
/// server draining. So readiness is confirmed with a one-byte peek (`MSG_PEEK`), which also
/// clears it when it was stale. Even readiness that arrives after tokio said "not yet" is
/// peeked at: on a multi-threaded runtime the reactor may deliver, late, the event of data a
/// read already took. (async-io needs a peek only after a read, see `AsyncIoStream`.)
#[derive(Debug)]
pub(crate) struct TokioStream<T> {
    inner: T,
}

impl<T: TokioSocket> TokioStream<T> {
    pub(crate) fn new(inner: T) -> Self {
        TokioStream { inner }
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.inner.poll_read_ready(cx))?;
            let inner = &self.inner;
            match inner.try_io(Interest::READABLE, || inner.peek_one()) {
                // Data, or end of file (0): a read would make progress.
                Ok(_) => return Poll::Ready(Ok(())),
                // try_io cleared the stale readiness: wait for the real thing.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T: TokioSocket> futures_io::AsyncRead for TokioStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut read_buf = ReadBuf::new(buf);
        let poll = Pin::new(&mut self.inner).poll_read(cx, &mut read_buf);
        let n = read_buf.filled().len();
        poll.map_ok(|()| n)
    }
}

impl<T: TokioSocket> futures_io::AsyncWrite for TokioStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Shuts the write side down (FIN), like berth's async-io streams.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Registers a socket with `handle`'s I/O driver; a runtime without one is an error, where
/// tokio would panic.
pub(crate) fn register<T>(
    handle: &tokio::runtime::Handle,
    make: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    let _context = handle.enter();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)).unwrap_or_else(|_| {
        Err(io::Error::other(
            crate::error::ConfigError::RuntimeDriverMissing("I/O").to_string(),
        ))
    })
}
