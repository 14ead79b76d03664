//! Real TCP: an async-net listener whose socket is built with socket2, so the backlog,
//! `SO_REUSEADDR` and `SO_REUSEPORT` are ours to choose (async-net's own `bind` fixes the
//! backlog at 128 and never sets `SO_REUSEPORT`).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::{Accepted, Listener};
use crate::config::Config;
use crate::error::Error;

/// A TCP listener built from a [`Config`] (address, backlog, reuse_port, nodelay).
///
/// Accepted streams are [`async_net::TcpStream`]s with `TCP_NODELAY` set when the config
/// asks for it (the default).
#[derive(Debug)]
pub struct TcpListener {
    inner: async_net::TcpListener,
    nodelay: bool,
}

impl TcpListener {
    /// Validates `config` and binds its address.
    ///
    /// Errors: [`Error::Config`] for an invalid config, [`Error::Bind`] when the operating
    /// system refuses (address in use, no permission, address not local).
    pub fn bind(config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let addr = config.resolve_address()?;
        let bind_err = |source| Error::Bind { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(bind_err)?;
        // SO_REUSEADDR lets a restarted server bind while old connections sit in TIME-WAIT;
        // on Unix it never allows two live listeners on one port (that is SO_REUSEPORT).
        #[cfg(unix)]
        socket.set_reuse_address(true).map_err(bind_err)?;
        #[cfg(all(
            unix,
            not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
        ))]
        if config.reuse_port {
            socket.set_reuse_port(true).map_err(bind_err)?;
        }
        socket.bind(&addr.into()).map_err(bind_err)?;
        // validate() checked that the backlog fits in an i32.
        let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
        socket.listen(backlog).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let inner = async_net::TcpListener::try_from(std::net::TcpListener::from(socket))
            .map_err(bind_err)?;
        Ok(TcpListener {
            inner,
            nodelay: config.nodelay,
        })
    }

    /// Wraps an already-bound std listener (for example one inherited from a parent
    /// process). `nodelay` is applied to every accepted stream.
    pub fn from_std(listener: std::net::TcpListener, nodelay: bool) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            inner: async_net::TcpListener::try_from(listener)?,
            nodelay,
        })
    }
}

impl Listener for TcpListener {
    type Stream = async_net::TcpStream;

    async fn accept(&self) -> io::Result<Accepted<Self::Stream>> {
        let (stream, peer_addr) = self.inner.accept().await?;
        // A failure here means the socket is already dead (reset between accept and now):
        // the accept loop treats it like ECONNABORTED and moves on.
        if self.nodelay {
            stream.set_nodelay(true)?;
        }
        let local_addr = stream.local_addr()?;
        Ok(Accepted {
            stream,
            peer_addr,
            local_addr,
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
