//! Real TCP, on the [`Reactor`] of the runtime that serves it (async-io's for smol and
//! async-std, tokio's for tokio). The listening socket is built by
//! [`socket::bind_tcp`](super::socket::bind_tcp); the reactor registers it and wraps the
//! streams it accepts.

use std::io;

use super::{Accepted, Listener, ListeningSocket, Reactor};
use crate::addr::Addr;
use crate::config::Config;
use crate::error::Error;

/// A TCP listener built from a [`Config`] (address, backlog, reuse_port, nodelay), on the
/// reactor of the runtime that will serve it.
///
/// `Builder::bind` makes one for you; build one yourself for a socket bound elsewhere
/// ([`from_std`](Self::from_std)) and serve it with `Builder::listener`. Accepted streams are
/// [`TcpStream`]s with `TCP_NODELAY` set when asked (the config's default).
#[derive(Debug)]
pub struct TcpListener {
    inner: Box<dyn ListeningSocket>,
    /// Read once: a listening socket's address does not change.
    local_addr: Option<std::net::SocketAddr>,
    nodelay: bool,
}

super::boxed::boxed_stream!(
    /// An accepted TCP connection, polled on the reactor of the runtime that serves it.
    /// Closing it shuts down the write side (the peer reads end of file).
    TcpStream
);

impl TcpListener {
    /// Validates `config` and binds its address, for `reactor` (a runtime's
    /// `Runtime::reactor`; `None` when it has none).
    ///
    /// Errors: [`Error::Config`] for an invalid config or a runtime without a reactor,
    /// [`Error::Bind`] when the operating system refuses (address in use, no permission,
    /// address not local).
    pub fn bind(config: &Config, reactor: Option<&dyn Reactor>) -> Result<Self, Error> {
        let reactor = super::socket::check_reactor(reactor)?;
        // Resolved once, then bound as it was resolved.
        let addr = config.resolve_address()?;
        config.validate_settings()?;
        let options = super::socket::SocketOptions::of(config);
        Self::bind_addr(addr, &options, Some(reactor))
    }

    /// Binds `addr` (already resolved) with `options`, for `reactor`.
    pub(crate) fn bind_addr(
        addr: std::net::SocketAddr,
        options: &super::socket::SocketOptions,
        reactor: Option<&dyn Reactor>,
    ) -> Result<Self, Error> {
        let reactor = super::socket::check_reactor(reactor)?;
        let std = super::socket::bind_tcp(addr, options)?;
        Self::from_std(std, options.nodelay, Some(reactor))
    }

    /// Serves an already-bound std listener (one inherited from a parent process, or bound
    /// by code of your own) on `reactor`. `nodelay` is applied to every accepted stream.
    ///
    /// Errors: [`Error::Config`] for a runtime without a reactor, [`Error::Bind`] when the
    /// socket cannot be registered.
    pub fn from_std(
        listener: std::net::TcpListener,
        nodelay: bool,
        reactor: Option<&dyn Reactor>,
    ) -> Result<Self, Error> {
        let reactor = super::socket::check_reactor(reactor)?;
        let local_addr = listener.local_addr().ok();
        let addr = local_addr.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let inner = listener
            .set_nonblocking(true)
            .and_then(|()| reactor.register_tcp(listener))
            .map_err(|source| Error::Bind {
                addr: addr.into(),
                source,
            })?;
        Ok(TcpListener {
            inner,
            local_addr,
            nodelay,
        })
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<Accepted<Self::Stream>> {
        let (stream, peer_addr) = std::future::poll_fn(|cx| self.inner.poll_accept(cx)).await?;
        // A failure after accept means the socket is already dead (reset between accept and
        // now): the accept loop treats it like ECONNABORTED and moves on.
        let local_addr = match stream.socket() {
            #[cfg(any(unix, windows))]
            Some(socket) => {
                let socket = socket2::SockRef::from(&socket);
                if self.nodelay {
                    socket.set_tcp_nodelay(true)?;
                }
                socket.local_addr()?.as_socket().map(Addr::from)
            }
            _ => None,
        };
        let local_addr = match local_addr {
            Some(addr) => addr,
            None => self.local_addr()?,
        };
        Ok(Accepted {
            stream: TcpStream(stream),
            peer_addr,
            local_addr,
        })
    }

    #[cfg(unix)]
    fn handover(&self) -> Option<super::Handover> {
        super::socket::dup(self.inner.as_fd()).map(super::Handover::new)
    }

    #[cfg(unix)]
    fn has_pending(&self) -> bool {
        super::socket::has_pending(self.inner.as_fd())
    }

    fn local_addr(&self) -> io::Result<Addr> {
        self.local_addr
            .map(Addr::from)
            .ok_or_else(|| io::Error::other("the listening socket has no address"))
    }
}
