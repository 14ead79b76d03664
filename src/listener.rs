//! The `Listener` seam: where connections come from.
//!
//! Each accept loop is generic over its [`Listener`]; the stream it accepts is boxed once, as
//! a [`ByteStream`], so that one connection task serves every listener of a server. The same
//! server runs over real TCP and Unix sockets ([`TcpListener`], [`UnixListener`], on the
//! [`Reactor`] of the runtime that serves them: each runtime adapter registers the sockets
//! with its own I/O driver), over turmoil's simulated TCP (the `berth-sim` crate), or over
//! anything else that yields futures-io streams.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

use crate::addr::{Addr, PeerCred};

mod prefixed;
mod reactor;
#[cfg(any(feature = "async-io", feature = "tokio"))]
mod socket;
#[cfg(any(feature = "async-io", feature = "tokio"))]
mod tcp;
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
mod unix;

pub(crate) use prefixed::Prefixed;
pub use reactor::{ListeningSocket, Reactor};
#[cfg(any(feature = "async-io", feature = "tokio"))]
pub(crate) use socket::{SocketOptions, inherited_tcp};
#[cfg(any(feature = "async-io", feature = "tokio"))]
pub use tcp::{TcpListener, TcpStream};
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
pub use unix::{UnixListener, UnixStream};

/// A source of connections.
///
/// Implementations must guarantee:
/// - `accept` is cancel-safe: dropping its future loses no connection that the caller would
///   otherwise have seen (the accept loop races it against shutdown);
/// - dropping the listener stops the operating system (or simulator) from completing new
///   connections, so that clients that connect after shutdown began are refused.
pub trait Listener: Send + Sync + 'static {
    /// The byte stream of one accepted connection.
    type Stream: ByteStream;

    /// Waits for the next connection.
    ///
    /// Errors are reported to the accept loop, which retries at once on per-connection
    /// errors (`ConnectionAborted`, `ConnectionReset`, `Interrupted`, `WouldBlock`) and backs
    /// off on everything else (for example EMFILE).
    fn accept(&self) -> impl Future<Output = io::Result<Accepted<Self::Stream>>> + Send;

    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<Addr>;

    /// Whether a connection waits to be accepted; `true` when unknown (the default). At
    /// the descriptor limit `accept` fails whether or not anyone waits (Linux reserves a
    /// descriptor before it looks at the backlog): eviction asks this first, so that it
    /// makes room only for a client that is there.
    fn has_pending(&self) -> bool {
        true
    }

    /// The listening socket itself, for an upgrade to hand to a new process (see
    /// [`ServerHandle::upgrade`](crate::ServerHandle::upgrade)). berth's TCP and Unix
    /// listeners give it; the default is `None`: such a listener is not handed over, and
    /// the new process binds its own.
    #[cfg(unix)]
    fn handover(&self) -> Option<Handover> {
        None
    }
}

/// A listening socket as an upgrade hands it to the new process: a duplicate of its
/// descriptor (the socket stays open, and keeps its backlog, while either process holds it).
#[cfg(unix)]
#[derive(Debug)]
#[cfg_attr(not(any(feature = "async-io", feature = "tokio")), allow(dead_code))]
pub struct Handover {
    pub(crate) fd: std::os::fd::OwnedFd,
    /// Set once the socket was handed over: the old listener then leaves a Unix socket's
    /// file in place (the new process serves it).
    pub(crate) keep_file: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

#[cfg(unix)]
impl Handover {
    /// Hands over the socket behind `fd`, a duplicate of the listener's descriptor.
    pub fn new(fd: std::os::fd::OwnedFd) -> Self {
        Handover {
            fd,
            keep_file: None,
        }
    }
}

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
    /// one (berth's [`TcpStream`] and [`UnixStream`]) hands that box over instead of boxing
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

/// One accepted connection, as a [`Listener`] hands it over.
#[derive(Debug)]
pub struct Accepted<S> {
    /// The connection's byte stream.
    pub stream: S,
    /// The client's address.
    pub peer_addr: Addr,
    /// The server-side address of this connection (may differ from the listener's address
    /// when it listens on a wildcard).
    pub local_addr: Addr,
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
