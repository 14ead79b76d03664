//! The seam between berth's own TCP and Unix listeners and a runtime's I/O driver: the
//! runtime registers a std listening socket with its reactor and hands it back type-erased,
//! accepting streams as boxed [`ByteStream`]s (quinn's `Runtime::wrap_udp_socket`, for
//! listeners). The socket options, the Unix socket file, hand-over and `has_pending` stay
//! on this side, the same for every runtime.

use std::fmt;
use std::io;
use std::task::{Context, Poll};

use super::ByteStream;
use crate::addr::Addr;

/// A runtime's I/O driver, as berth's [`TcpListener`](super::TcpListener) and
/// [`UnixListener`](super::UnixListener) use it; a runtime names its own with
/// [`Runtime::reactor`](crate::runtime::Runtime::reactor).
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
