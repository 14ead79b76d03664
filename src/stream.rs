//! What listeners and runtimes share: a connection's [`ByteStream`], the OS [`Socket`] under
//! it, and the [`Reactor`] seam through which a runtime adapter registers berth's listening
//! sockets with its I/O driver and wraps the streams they accept (quinn's
//! `Runtime::wrap_udp_socket`, for listeners). Public as `listener::*`; a module of its own
//! so that `runtime` can name these without importing `listener` (which imports the
//! settings and errors).

use std::fmt;
use std::io;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

use crate::addr::{Addr, PeerCred};

/// A connection's byte stream: futures-io, plus what berth can use when the stream offers it
/// (readiness without reading, peer credentials, the OS socket).
///
/// Implementing it for your own stream type takes one line (`impl ByteStream for MyStream
/// {}`); override [`poll_readable`](ByteStream::poll_readable) when the stream can tell when
/// data is there without reading it, which lets idle handlers wait without holding a read
/// buffer (see [`Conn::readable`](crate::Conn::readable)).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Ready when a read would make progress (data, end of file or an error), without
    /// consuming anything. The default is always ready, which is correct for every stream,
    /// just without the memory saving. An implementation should not be ready spuriously
    /// when it can help it: a handler that trusts it starts a read that waits, holding a
    /// buffer, and no longer sees the server start draining.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// The peer's credentials, for streams that know them (Unix domain sockets). The
    /// default is `None`.
    fn peer_cred(&self) -> Option<PeerCred> {
        None
    }

    /// The operating system's socket under this stream, for the tune hook
    /// ([`Builder::tune`](crate::Builder::tune)). The default is `None` (no OS socket, as
    /// under simulation): the tune hook is then not called.
    fn socket(&self) -> Option<Socket<'_>> {
        None
    }

    /// This stream, boxed, as a connection holds it. A stream that already wraps a boxed
    /// one (berth's `TcpStream` and `UnixStream`) hands that box over instead of boxing
    /// itself again: one allocation per connection, not two.
    fn boxed(self) -> Box<dyn ByteStream>
    where
        Self: Sized,
    {
        Box::new(self)
    }
}

/// Readable when rustls already holds decrypted bytes, else when the socket is.
#[cfg(feature = "tls")]
impl<S: ByteStream> ByteStream for futures_rustls::server::TlsStream<S> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, session) = self.get_mut();
        if !session.wants_read() {
            return Poll::Ready(Ok(()));
        }
        io.poll_readable(cx)
    }

    fn peer_cred(&self) -> Option<PeerCred> {
        self.get_ref().0.peer_cred()
    }

    fn socket(&self) -> Option<Socket<'_>> {
        self.get_ref().0.socket()
    }
}

/// Boxed streams, as a [`Conn`](crate::Conn) holds them, forward everything.
impl ByteStream for Box<dyn ByteStream> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_readable(cx)
    }

    fn peer_cred(&self) -> Option<PeerCred> {
        (**self).peer_cred()
    }

    fn socket(&self) -> Option<Socket<'_>> {
        (**self).socket()
    }

    fn boxed(self) -> Box<dyn ByteStream> {
        self
    }
}

/// A runtime's I/O driver, as berth's `TcpListener` and `UnixListener` use it; a runtime
/// names its own with `Runtime::reactor`.
///
/// Adding a runtime with real sockets is implementing this trait in its adapter: register
/// the listening socket (already listening and non-blocking), and wrap each accepted stream
/// in a [`ByteStream`] that polls it on the same driver.
pub trait Reactor: Send + Sync {
    /// Registers a listening TCP socket.
    fn register_tcp(&self, listener: std::net::TcpListener)
    -> io::Result<Box<dyn ListeningSocket>>;

    /// Registers a listening Unix domain socket.
    #[cfg(unix)]
    fn register_unix(
        &self,
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<Box<dyn ListeningSocket>>;

    /// Registers a connected Unix domain stream (berth reads its signal self-pipe this
    /// way, without a thread of its own). The default: `Unsupported`, and berth falls back
    /// to what it did without.
    #[cfg(unix)]
    fn register_unix_stream(
        &self,
        stream: std::os::unix::net::UnixStream,
    ) -> io::Result<Box<dyn ByteStream>> {
        drop(stream);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A listening socket registered with a [`Reactor`]: it accepts connections as boxed
/// [`ByteStream`]s, so that the stream costs one allocation per connection, the one the
/// accept loop needs anyway (see [`ByteStream::boxed`]).
pub trait ListeningSocket: Send + Sync + fmt::Debug {
    /// Polls for the next connection: its stream and the peer's address. Like every poll,
    /// cancel-safe: a connection is only taken when it is returned.
    ///
    /// Per-connection errors (`ConnectionAborted`, `ConnectionReset`, `Interrupted`) are
    /// returned as they are; the accept loop retries on them.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, Addr)>>;

    /// The listening socket's descriptor: duplicated to hand it over in an upgrade, and
    /// polled to tell whether a connection waits.
    #[cfg(unix)]
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_>;
}

/// An accepted connection's OS socket, borrowed, as the tune hook sees it. It implements
/// `AsFd` (Unix) and `AsSocket` (Windows), so `socket2::SockRef::from(socket)` sets any
/// option on it.
///
/// ```no_run
/// # fn f(builder: berth::Builder) -> berth::Builder {
/// builder.tune(|socket| {
///     let sock = socket2::SockRef::from(socket);
///     sock.set_keepalive(true)?;
///     sock.set_send_buffer_size(1 << 20)
/// })
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Socket<'a> {
    #[cfg(unix)]
    fd: std::os::fd::BorrowedFd<'a>,
    #[cfg(windows)]
    socket: std::os::windows::io::BorrowedSocket<'a>,
    #[cfg(not(any(unix, windows)))]
    _socket: std::marker::PhantomData<&'a ()>,
}

impl<'a> Socket<'a> {
    /// Borrows the socket behind `fd`.
    #[cfg(unix)]
    pub fn new(fd: &'a impl std::os::fd::AsFd) -> Self {
        Socket { fd: fd.as_fd() }
    }

    /// Borrows `socket`.
    #[cfg(windows)]
    pub fn new(socket: &'a impl std::os::windows::io::AsSocket) -> Self {
        Socket {
            socket: socket.as_socket(),
        }
    }
}

impl Socket<'_> {
    /// The credentials of the process at the other end of a Unix domain socket
    /// (`SO_PEERCRED`); `None` where the platform has no such option or the call fails.
    /// For [`ByteStream::peer_cred`] of Unix streams.
    pub fn peer_cred(&self) -> Option<PeerCred> {
        #[cfg(all(
            any(target_os = "linux", target_os = "android"),
            any(feature = "async-io", feature = "tokio")
        ))]
        {
            let cred = rustix::net::sockopt::socket_peercred(self.fd).ok()?;
            Some(PeerCred {
                uid: cred.uid.as_raw(),
                gid: cred.gid.as_raw(),
                pid: Some(cred.pid.as_raw_pid()),
            })
        }
        #[cfg(not(all(
            any(target_os = "linux", target_os = "android"),
            any(feature = "async-io", feature = "tokio")
        )))]
        None
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for Socket<'_> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for Socket<'_> {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        self.socket
    }
}
