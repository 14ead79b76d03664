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

use crate::addr::Addr;

#[cfg(any(feature = "async-io", feature = "tokio"))]
mod boxed;
mod prefixed;
#[cfg(any(feature = "async-io", feature = "tokio"))]
mod socket;
#[cfg(any(feature = "async-io", feature = "tokio"))]
mod tcp;
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
mod unix;

pub use crate::stream::{ByteStream, ListeningSocket, Reactor, Socket};
pub(crate) use prefixed::Prefixed;
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
