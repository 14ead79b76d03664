//! Real TCP on async-io's reactor (which the smol and async-std adapters use). The socket is
//! built by [`socket::bind_std`](super::socket::bind_std). Streams are plain
//! `Async<std::net::TcpStream>`: no `Arc`, no cached readiness futures, and readiness is
//! exposed for [`Conn::readable`](crate::Conn::readable).

use std::io;
use std::net::SocketAddr;

use async_io::Async;

use super::{Accepted, Listener};
use crate::config::Config;
use crate::error::Error;

/// A TCP listener built from a [`Config`] (address, backlog, reuse_port, nodelay).
///
/// Accepted streams are `async_io::Async<std::net::TcpStream>` (`stream.get_ref()` is the std
/// socket, e.g. for `socket2::SockRef::from`) with `TCP_NODELAY` set when the config asks
/// for it (the default).
#[derive(Debug)]
pub struct TcpListener {
    inner: Async<std::net::TcpListener>,
    nodelay: bool,
}

impl TcpListener {
    /// Validates `config` and binds its address.
    ///
    /// Errors: [`Error::Config`] for an invalid config, [`Error::Bind`] when the operating
    /// system refuses (address in use, no permission, address not local).
    pub fn bind(config: &Config) -> Result<Self, Error> {
        let std = super::socket::bind_std(config)?;
        let addr = std.local_addr().map_err(|source| Error::Bind {
            addr: config
                .resolve_address()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
            source,
        })?;
        let inner = Async::new(std).map_err(|source| Error::Bind { addr, source })?;
        Ok(TcpListener {
            inner,
            nodelay: config.nodelay,
        })
    }

    /// Wraps an already-bound std listener (for example one inherited from a parent
    /// process). `nodelay` is applied to every accepted stream.
    pub fn from_std(listener: std::net::TcpListener, nodelay: bool) -> io::Result<Self> {
        Ok(TcpListener {
            inner: Async::new(listener)?,
            nodelay,
        })
    }
}

impl Listener for TcpListener {
    type Stream = Async<std::net::TcpStream>;

    async fn accept(&self) -> io::Result<Accepted<Self::Stream>> {
        let (stream, peer_addr) = self.inner.accept().await?;
        // A failure here means the socket is already dead (reset between accept and now):
        // the accept loop treats it like ECONNABORTED and moves on.
        if self.nodelay {
            stream.get_ref().set_nodelay(true)?;
        }
        let local_addr = stream.get_ref().local_addr()?;
        Ok(Accepted {
            stream,
            peer_addr,
            local_addr,
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }
}
