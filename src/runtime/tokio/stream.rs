//! Listening and accepted sockets on tokio's reactor: the streams as futures-io streams that
//! report readiness accurately.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::addr::{Addr, PeerCred};
use crate::stream::{ByteStream, ListeningSocket, Socket};

impl ListeningSocket for tokio::net::TcpListener {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, Addr)>> {
        let (stream, peer) = ready!(tokio::net::TcpListener::poll_accept(self, cx))?;
        Poll::Ready(Ok((Box::new(TokioStream::new(stream)), peer.into())))
    }

    #[cfg(unix)]
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

#[cfg(unix)]
impl ListeningSocket for tokio::net::UnixListener {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, Addr)>> {
        let (stream, peer) = ready!(tokio::net::UnixListener::poll_accept(self, cx))?;
        let peer = Addr::Unix(peer.as_pathname().map(std::sync::Arc::from));
        Poll::Ready(Ok((Box::new(TokioStream::new(stream)), peer)))
    }

    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

/// A connected tokio stream as berth's boxed stream.
#[cfg(unix)]
pub(super) fn boxed(stream: tokio::net::UnixStream) -> Box<dyn ByteStream> {
    Box::new(TokioStream::new(stream))
}

/// tokio's TCP and Unix streams, as far as readiness goes (the inherent methods both have).
pub(super) trait TokioSocket:
    AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static
{
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    /// One read without waiting (`try_read`).
    fn recv_now(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// The OS socket, for the tune hook.
    fn socket(&self) -> Socket<'_>;
    /// The peer's credentials (Unix domain sockets).
    fn peer_cred(&self) -> Option<PeerCred> {
        None
    }
}

macro_rules! tokio_socket {
    ($ty:ty $(, $($peer_cred:tt)*)?) => {
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
            fn recv_now(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$ty>::try_read(self, buf)
            }
            fn socket(&self) -> Socket<'_> {
                Socket::new(self)
            }
            $($($peer_cred)*)?
        }
    };
}

tokio_socket!(tokio::net::TcpStream);
#[cfg(unix)]
tokio_socket!(
    tokio::net::UnixStream,
    fn peer_cred(&self) -> Option<PeerCred> {
        self.socket().peer_cred()
    }
);

/// Bytes read ahead per readiness confirmation at most; also each thread's scratch size.
const READ_AHEAD: usize = 16 * 1024;

thread_local! {
    /// Where a confirming read lands before it is copied, at its length, into the stream's
    /// read-ahead: zeroed once per thread, not per read.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_AHEAD].into_boxed_slice());
}

/// A tokio socket as a futures-io stream (what tokio-util's `Compat` does, plus `close` as
/// a write shutdown), with readiness berth can trust.
///
/// tokio caches read readiness: it reports a freshly accepted socket as readable before
/// anything arrived, and readiness set by an event that came in while a read was emptying
/// the socket survives that read (on a multi-threaded runtime the reactor may also deliver,
/// late, the event of data a read already took). Trusted as is, `Conn::readable` would
/// return for an idle connection, whose handler then waits in a read, holding its buffer
/// and deaf to the server draining.
///
/// So readiness is confirmed by reading: `poll_readable` reads what is there into a
/// read-ahead buffer, sized to the data, which the next read returns without a system call.
/// The confirmation costs no system call of its own (the handler's read would have made
/// that one), where a one-byte peek cost one per request. A read that finds nothing clears
/// the stale readiness (tokio's `try_io`), and so does one that comes back short (the socket
/// is drained: the next wait is for new data, as tokio's own `poll_read` does). An idle
/// connection holds no buffer: the read-ahead is freed once read.
/// (async-io needs no such care after a wait, see `AsyncIoStream`.)
#[derive(Debug)]
struct TokioStream<T> {
    inner: T,
    /// Bytes read by `poll_readable` and not yet returned, from `ahead_pos`.
    ahead: Vec<u8>,
    ahead_pos: usize,
}

impl<T: TokioSocket> TokioStream<T> {
    fn new(inner: T) -> Self {
        TokioStream {
            inner,
            ahead: Vec::new(),
            ahead_pos: 0,
        }
    }

    fn poll_confirmed_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ahead_pos < self.ahead.len() {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.inner.poll_read_ready(cx))?;
            let inner = &self.inner;
            let mut got = None;
            let read = inner.try_io(Interest::READABLE, || {
                SCRATCH.with_borrow_mut(|scratch| {
                    let n = inner.recv_now(scratch)?;
                    if n > 0 {
                        got = Some(scratch[..n].to_vec());
                    }
                    if n > 0 && n < scratch.len() {
                        // Drained: have tokio clear the readiness this read used up.
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(n)
                })
            });
            if let Some(data) = got {
                self.ahead = data;
                self.ahead_pos = 0;
                return Poll::Ready(Ok(()));
            }
            match read {
                // End of file: a read returns it too.
                Ok(_) => return Poll::Ready(Ok(())),
                // try_io cleared the stale readiness: wait for the real thing.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T: TokioSocket> ByteStream for TokioStream<T> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_confirmed_readable(cx)
    }

    fn peer_cred(&self) -> Option<PeerCred> {
        self.inner.peer_cred()
    }

    fn socket(&self) -> Option<Socket<'_>> {
        Some(self.inner.socket())
    }
}

impl<T: TokioSocket> futures_io::AsyncRead for TokioStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.ahead_pos < this.ahead.len() {
            let ahead = &this.ahead[this.ahead_pos..];
            let n = ahead.len().min(buf.len());
            buf[..n].copy_from_slice(&ahead[..n]);
            this.ahead_pos += n;
            if this.ahead_pos == this.ahead.len() {
                this.ahead = Vec::new();
                this.ahead_pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        let mut read_buf = ReadBuf::new(buf);
        let poll = Pin::new(&mut this.inner).poll_read(cx, &mut read_buf);
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
