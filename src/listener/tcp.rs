//! Real TCP on async-io's reactor (which the smol and async-std adapters use). The socket is
//! built by [`socket::bind_std`](super::socket::bind_std). Streams are [`TcpStream`]s
//! ([`AsyncStream`](super::AsyncStream)s of std TCP streams).

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use async_io::Async;

use super::{Accepted, Listener};
use crate::addr::Addr;
use crate::config::Config;
use crate::error::Error;

/// A TCP listener built from a [`Config`] (address, backlog, reuse_port, nodelay).
///
/// Accepted streams are [`TcpStream`]s with `TCP_NODELAY` set when the config asks for it
/// (the default).
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
        let (std, addr) = super::socket::bind_std(config)?;
        let inner = Async::new(std).map_err(|source| Error::Bind {
            addr: addr.into(),
            source,
        })?;
        Ok(TcpListener {
            inner,
            nodelay: config.nodelay,
        })
    }

    /// The listening socket systemd passed this process (socket activation: `LISTEN_FDS`
    /// and `LISTEN_PID` name it, as fd 3), or `Ok(None)` when there is none. `config` gives
    /// `nodelay`; its address is not used (the socket is already bound). Also the way to
    /// restart without refusing anyone: the new process takes over the same socket.
    pub fn from_systemd(config: &Config) -> Result<Option<Self>, Error> {
        let Some(std) = super::socket::inherited()? else {
            return Ok(None);
        };
        let addr = std.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)).into(),
            source,
        })?;
        Self::from_std(std, config.nodelay)
            .map(Some)
            .map_err(|source| Error::Bind {
                addr: addr.into(),
                source,
            })
    }

    /// Wraps an already-bound std listener (for example one inherited from a parent
    /// process, or bound by code of your own). `nodelay` is applied to every accepted
    /// stream.
    pub fn from_std(listener: std::net::TcpListener, nodelay: bool) -> io::Result<Self> {
        Ok(TcpListener {
            inner: Async::new(listener)?,
            nodelay,
        })
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<Accepted<Self::Stream>> {
        let (stream, peer_addr) = self.inner.accept().await?;
        // A failure here means the socket is already dead (reset between accept and now):
        // the accept loop treats it like ECONNABORTED and moves on.
        if self.nodelay {
            stream.get_ref().set_nodelay(true)?;
        }
        let local_addr = stream.get_ref().local_addr()?;
        Ok(Accepted {
            stream: super::AsyncStream(stream),
            peer_addr: peer_addr.into(),
            local_addr: local_addr.into(),
        })
    }

    fn local_addr(&self) -> io::Result<Addr> {
        self.inner.get_ref().local_addr().map(Addr::from)
    }
}

/// An accepted TCP connection (see [`AsyncStream`](super::AsyncStream)).
pub type TcpStream = super::AsyncStream<std::net::TcpStream>;

impl super::Stream for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_readable(cx)
    }
}
