//! async-io's reactor and timers, shared by the smol and async-std adapters: listening
//! sockets registered with it, the streams they accept, and the timer that resets in place.

use std::future::Future;
use std::io;
#[cfg(unix)]
use std::os::fd::AsFd as OsSocket;
#[cfg(windows)]
use std::os::windows::io::AsSocket as OsSocket;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::Async;

use crate::addr::{Addr, PeerCred};
use crate::stream::{ByteStream, ListeningSocket, Reactor, Socket};

/// async-io's reactor, as berth's TCP and Unix listeners use it: what
/// [`Smol`](super::Smol) and `AsyncStd` return from
/// [`Runtime::reactor`](super::Runtime::reactor). A runtime adapter of your own over
/// async-io (for example an `async_executor::Executor` you drive) returns it too.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncIo;

impl Reactor for AsyncIo {
    fn register_tcp(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Box<dyn ListeningSocket>> {
        Ok(Box::new(Async::new(listener)?))
    }

    #[cfg(unix)]
    fn register_unix(
        &self,
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<Box<dyn ListeningSocket>> {
        Ok(Box::new(Async::new(listener)?))
    }

    #[cfg(unix)]
    fn register_unix_stream(
        &self,
        stream: std::os::unix::net::UnixStream,
    ) -> io::Result<Box<dyn ByteStream>> {
        Ok(Box::new(AsyncIoStream::new(Async::new(stream)?)))
    }
}

impl ListeningSocket for Async<std::net::TcpListener> {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, Addr)>> {
        poll_accept(self, cx, |listener| {
            let (stream, peer) = listener.accept()?;
            Ok((stream, peer.into()))
        })
    }

    #[cfg(unix)]
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self.get_ref())
    }
}

#[cfg(unix)]
impl ListeningSocket for Async<std::os::unix::net::UnixListener> {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, Addr)>> {
        poll_accept(self, cx, |listener| {
            let (stream, peer) = listener.accept()?;
            Ok((
                stream,
                Addr::Unix(peer.as_pathname().map(std::sync::Arc::from)),
            ))
        })
    }

    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self.get_ref())
    }
}

/// Accepts on `listener` (what async-io's own `accept` does: try, and wait for readiness
/// when nothing is there) and registers the stream.
fn poll_accept<L, S: StdSocket>(
    listener: &Async<L>,
    cx: &mut Context<'_>,
    accept: impl Fn(&L) -> io::Result<(S, Addr)>,
) -> Poll<io::Result<(Box<dyn ByteStream>, Addr)>>
where
    AsyncIoStream<S>: ByteStream,
{
    loop {
        match accept(listener.get_ref()) {
            Ok((stream, peer)) => {
                let stream = AsyncIoStream::new(Async::new(stream)?);
                return Poll::Ready(Ok((Box::new(stream), peer)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::task::ready!(listener.poll_readable(cx))?;
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// async-io's timer as a [`Timer`](super::Timer): it resets in place.
pub(super) struct IoTimer(pub(super) async_io::Timer);

impl Future for IoTimer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().0).poll(cx).map(drop)
    }
}

impl super::Timer for IoTimer {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        self.get_mut().0.set_at(deadline);
    }
}

/// An accepted socket on async-io's reactor (`Async<T>`: no `Arc`, no cached readiness
/// futures), with `close` shutting down the write side, which async-io's own `poll_close`
/// does not do (it only flushes): the peer reads end of file, and berth's lingering close
/// works.
///
/// Reads follow tokio's rule: a short read (fewer bytes than asked for) emptied the
/// socket, so the next read waits for readiness instead of trying a `recv` that would only
/// say `EAGAIN`. Protocol libraries such as hyper read until a read would block; without
/// the rule each request cost two or three `recvfrom` calls instead of one.
///
/// async-io keeps the event that woke a read waiting for data (the read then takes the
/// data without asking the reactor again), and its next readiness wait returns at once for
/// that event: for bytes already consumed. So readiness that comes without a wait since the
/// last read is stale when that read was short (the socket was empty after it, and
/// async-io's one-shot registration delivered nothing since), and is confirmed with a
/// one-byte peek (`MSG_PEEK`) otherwise. Readiness that came after a wait (the usual
/// `readable` then `read` loop) is taken as it is. Trusted blindly, `Conn::readable` would
/// return for an idle connection, whose handler then waits in a read, deaf to the server
/// draining.
#[derive(Debug)]
struct AsyncIoStream<T> {
    io: Async<T>,
    /// A readiness wait has registered with the reactor since the last read: its event is
    /// for data that arrived after that read.
    waited: bool,
    /// The last read was short: the socket was empty after it.
    drained: bool,
}

/// std's TCP and Unix streams, as an accepted stream needs them.
trait StdSocket: OsSocket + Send + Sync + 'static {
    /// `shutdown(Write)`.
    fn shutdown_write(&self) -> io::Result<()>;
    /// The OS socket, for the tune hook.
    fn socket(&self) -> Socket<'_>;
    /// The peer's credentials (Unix domain sockets).
    fn peer_cred(&self) -> Option<PeerCred> {
        None
    }
}

impl StdSocket for std::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    fn socket(&self) -> Socket<'_> {
        Socket::new(self)
    }
}

#[cfg(unix)]
impl StdSocket for std::os::unix::net::UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    fn socket(&self) -> Socket<'_> {
        Socket::new(self)
    }

    fn peer_cred(&self) -> Option<PeerCred> {
        self.socket().peer_cred()
    }
}

impl<T: StdSocket> ByteStream for AsyncIoStream<T>
where
    Async<T>: futures_io::AsyncRead + futures_io::AsyncWrite,
{
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_confirmed_readable(cx)
    }

    fn peer_cred(&self) -> Option<PeerCred> {
        self.io.get_ref().peer_cred()
    }

    fn socket(&self) -> Option<Socket<'_>> {
        Some(self.io.get_ref().socket())
    }
}

impl<T> AsyncIoStream<T> {
    fn new(io: Async<T>) -> Self {
        AsyncIoStream {
            io,
            waited: false,
            drained: false,
        }
    }
}

#[cfg(unix)]
impl<T: std::os::fd::AsFd> AsyncIoStream<T> {
    /// Readable without reading: async-io waits on the socket's readiness, confirmed by a
    /// peek when no wait happened since the last read.
    fn poll_confirmed_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drained {
            // Any readiness without a wait is the event of data the last (short) read took.
            return self.poll_fresh_readable(cx);
        }
        loop {
            if self.io.poll_readable(cx)?.is_pending() {
                self.waited = true;
                return Poll::Pending;
            }
            if std::mem::take(&mut self.waited) {
                return Poll::Ready(Ok(()));
            }
            match peek_one(self.io.get_ref()) {
                // Data, or end of file (0): a read would make progress.
                Ok(_) => return Poll::Ready(Ok(())),
                // The event was for data a read took: wait (async-io re-registers).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// `recv(MSG_PEEK)` of one byte: whether the socket has something to read (data, or 0 for
/// end of file), consuming nothing; `WouldBlock` when it has not.
#[cfg(unix)]
fn peek_one(socket: &impl std::os::fd::AsFd) -> io::Result<usize> {
    let mut byte = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    let (_, n) = rustix::net::recv(socket, &mut byte[..], flags)?;
    Ok(n)
}

#[cfg(not(unix))]
impl<T> AsyncIoStream<T> {
    /// Readable without reading: async-io waits on the socket's readiness.
    fn poll_confirmed_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_fresh_readable(cx)
    }
}

impl<T> AsyncIoStream<T> {
    /// Before a read: after a short read, waits for readiness that came after it.
    fn poll_before_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drained {
            self.poll_fresh_readable(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// Readiness from an event after the last read: one without a wait since is skipped
    /// (async-io registers anew on the next poll, and its one-shot registration reports at
    /// once if data came meanwhile).
    fn poll_fresh_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.io.poll_readable(cx)?.is_pending() {
                self.waited = true;
                return Poll::Pending;
            }
            if std::mem::take(&mut self.waited) {
                self.drained = false;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Notes a read's outcome: short (or end of file) means drained.
    fn after_read(&mut self, poll: &Poll<io::Result<usize>>, asked: usize) {
        match poll {
            Poll::Ready(Ok(n)) => {
                self.waited = false;
                self.drained = *n < asked;
            }
            Poll::Ready(Err(_)) => self.waited = false,
            // async-io registered the waker: the wake-up is for fresh data.
            Poll::Pending => self.waited = true,
        }
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
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        std::task::ready!(self.poll_before_read(cx))?;
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        self.after_read(&poll, buf.len());
        poll
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let asked = bufs.iter().map(|b| b.len()).sum();
        if asked == 0 {
            return Poll::Ready(Ok(0));
        }
        std::task::ready!(self.poll_before_read(cx))?;
        let poll = Pin::new(&mut self.io).poll_read_vectored(cx, bufs);
        self.after_read(&poll, asked);
        poll
    }
}

impl<T: StdSocket> futures_io::AsyncWrite for AsyncIoStream<T>
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
