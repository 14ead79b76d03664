//! The `Listener` seam: where connections come from.
//!
//! The core's accept loop is generic over [`Listener`], so a stream type is known statically
//! on the hot path, and the same server runs over real TCP (`TcpListener` on async-io,
//! `TokioTcpListener` on tokio), over turmoil's simulated TCP (the `berth-sim` crate), or over
//! anything else that yields futures-io streams.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

use crate::addr::{Addr, PeerCred};

#[cfg(feature = "tcp")]
mod async_stream;
#[cfg(feature = "socket")]
mod socket;
#[cfg(feature = "tcp")]
mod tcp;
#[cfg(feature = "tokio")]
mod tokio;
#[cfg(all(unix, feature = "tcp"))]
mod unix;
#[cfg(feature = "tcp")]
pub use async_stream::{AsyncStream, HalfClose};
#[cfg(feature = "tcp")]
pub use tcp::{TcpListener, TcpStream};
#[cfg(feature = "tokio")]
pub use tokio::TokioTcpListener;
#[cfg(all(unix, feature = "tcp"))]
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
    type Stream: Stream;

    /// Waits for the next connection.
    ///
    /// Errors are reported to the accept loop, which retries at once on per-connection
    /// errors (`ConnectionAborted`, `ConnectionReset`, `Interrupted`, `WouldBlock`) and backs
    /// off on everything else (for example EMFILE).
    fn accept(&self) -> impl Future<Output = io::Result<Accepted<Self::Stream>>> + Send;

    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<Addr>;
}

/// A connection's byte stream: futures-io, plus an optional readiness signal.
///
/// Implementing it for your own stream type takes one line (`impl Stream for MyStream {}`);
/// override [`poll_readable`](Stream::poll_readable) when the stream can tell when data is
/// there without reading it, which lets idle handlers wait without holding a read buffer
/// (see [`Conn::readable`](crate::Conn::readable)).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Ready when a read would make progress (data, end of file or an error), without
    /// consuming anything. May be ready spuriously. The default is always ready, which is
    /// correct for every stream, just without the memory saving.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// The peer's credentials, for streams that know them (Unix domain sockets). The
    /// default is `None`.
    fn peer_cred(&self) -> Option<PeerCred> {
        None
    }
}

/// Readable when rustls already holds decrypted bytes, else when the socket is.
#[cfg(feature = "tls")]
impl<S: Stream> Stream for futures_rustls::server::TlsStream<S> {
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
