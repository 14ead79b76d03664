//! Real TCP, on the reactor of the runtime that serves it: async-io's (smol, async-std) or
//! tokio's. The listening socket is built by [`socket::bind_tcp`](super::socket::bind_tcp).

use std::io;
use std::task::{Context, Poll};

use super::stream::{listener_backend, socket_stream};
use super::{Accepted, ByteStream, Listener, Socket};
use crate::addr::Addr;
use crate::config::Config;
use crate::error::Error;
use crate::runtime::Reactor;

/// A TCP listener built from a [`Config`] (address, backlog, reuse_port, nodelay), on the
/// reactor of the runtime that will serve it.
///
/// `Builder::bind` makes one for you; build one yourself for a socket bound elsewhere
/// ([`from_std`](Self::from_std)) and serve it with `Builder::listener`. Accepted streams are
/// [`TcpStream`]s with `TCP_NODELAY` set when asked (the config's default).
#[derive(Debug)]
pub struct TcpListener {
    inner: Backend,
    nodelay: bool,
}

listener_backend!(std::net::TcpListener, tokio::net::TcpListener);

socket_stream!(
    /// An accepted TCP connection on async-io's or tokio's reactor. Closing it shuts down
    /// the write side (the peer reads end of file).
    TcpStream,
    std::net::TcpStream,
    tokio::net::TcpStream
);

impl TcpListener {
    /// Validates `config` and binds its address, for `reactor` (a runtime's
    /// [`reactor`](crate::runtime::Runtime::reactor)).
    ///
    /// Errors: [`Error::Config`] for an invalid config or a runtime without a reactor,
    /// [`Error::Bind`] when the operating system refuses (address in use, no permission,
    /// address not local).
    pub fn bind(config: &Config, reactor: &Reactor) -> Result<Self, Error> {
        super::socket::check_reactor(reactor)?;
        // Resolved once, then bound as it was resolved.
        let addr = config.resolve_address()?;
        config.validate_settings()?;
        let options = super::socket::SocketOptions::of(config);
        Self::bind_addr(addr, &options, reactor)
    }

    /// Binds `addr` (already resolved) with `options`, for `reactor`.
    pub(crate) fn bind_addr(
        addr: std::net::SocketAddr,
        options: &super::socket::SocketOptions,
        reactor: &Reactor,
    ) -> Result<Self, Error> {
        super::socket::check_reactor(reactor)?;
        let std = super::socket::bind_tcp(addr, options)?;
        Self::from_std(std, options.nodelay, reactor)
    }

    /// Serves an already-bound std listener (one inherited from a parent process, or bound
    /// by code of your own) on `reactor`. `nodelay` is applied to every accepted stream.
    ///
    /// Errors: [`Error::Config`] for a runtime without a reactor, [`Error::Bind`] when the
    /// socket cannot be registered.
    pub fn from_std(
        listener: std::net::TcpListener,
        nodelay: bool,
        reactor: &Reactor,
    ) -> Result<Self, Error> {
        super::socket::check_reactor(reactor)?;
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let inner = Backend::register(listener, reactor).map_err(|source| Error::Bind {
            addr: addr.into(),
            source,
        })?;
        Ok(TcpListener { inner, nodelay })
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<Accepted<Self::Stream>> {
        // A failure after accept means the socket is already dead (reset between accept and
        // now): the accept loop treats it like ECONNABORTED and moves on.
        let (stream, peer_addr, local_addr) = match &self.inner {
            #[cfg(feature = "async-io")]
            Backend::AsyncIo(listener) => {
                let (stream, peer_addr) = listener.accept().await?;
                if self.nodelay {
                    stream.get_ref().set_nodelay(true)?;
                }
                let local_addr = stream.get_ref().local_addr()?;
                let stream = Inner::AsyncIo(super::async_io::AsyncIoStream::new(stream));
                (stream, peer_addr, local_addr)
            }
            #[cfg(feature = "tokio")]
            Backend::Tokio(listener) => {
                let (stream, peer_addr) = listener.accept().await?;
                if self.nodelay {
                    stream.set_nodelay(true)?;
                }
                let local_addr = stream.local_addr()?;
                let stream = Inner::Tokio(super::tokio::TokioStream::new(stream));
                (stream, peer_addr, local_addr)
            }
        };
        Ok(Accepted {
            stream: TcpStream(stream),
            peer_addr: peer_addr.into(),
            local_addr: local_addr.into(),
        })
    }

    #[cfg(unix)]
    fn handover(&self) -> Option<super::Handover> {
        self.inner.dup().map(super::Handover::new)
    }

    #[cfg(unix)]
    fn has_pending(&self) -> bool {
        self.inner.has_pending()
    }

    fn local_addr(&self) -> io::Result<Addr> {
        match &self.inner {
            #[cfg(feature = "async-io")]
            Backend::AsyncIo(listener) => listener.get_ref().local_addr().map(Addr::from),
            #[cfg(feature = "tokio")]
            Backend::Tokio(listener) => listener.local_addr().map(Addr::from),
        }
    }
}

impl ByteStream for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_readable_inner(cx)
    }

    fn socket(&self) -> Option<Socket<'_>> {
        self.socket_inner()
    }
}
