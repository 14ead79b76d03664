//! Real TCP on async-io's reactor (which the smol and async-std adapters use). The socket is
//! built by [`socket::bind_std`](super::socket::bind_std). Streams are [`TcpStream`]: a thin
//! wrapper of `Async<std::net::TcpStream>` (no `Arc`, no cached readiness futures) that
//! sends FIN on close and exposes readiness for [`Conn::readable`](crate::Conn::readable).

use std::io;
use std::net::SocketAddr;

use std::pin::Pin;
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
            stream: TcpStream(stream),
            peer_addr: peer_addr.into(),
            local_addr: local_addr.into(),
        })
    }

    fn local_addr(&self) -> io::Result<Addr> {
        self.inner.get_ref().local_addr().map(Addr::from)
    }
}

/// An accepted TCP connection: async-io's `Async<std::net::TcpStream>`, with `close`
/// shutting down the write side (the peer reads end of file), which async-io's own
/// `poll_close` does not do, and readiness for [`Conn::readable`](crate::Conn::readable).
#[derive(Debug)]
pub struct TcpStream(Async<std::net::TcpStream>);

impl TcpStream {
    /// The std socket, e.g. for `socket2::SockRef::from(stream.get_ref())` in a tune hook.
    pub fn get_ref(&self) -> &std::net::TcpStream {
        self.0.get_ref()
    }
}

impl futures_io::AsyncRead for TcpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
    }
}

impl futures_io::AsyncWrite for TcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

impl super::Stream for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_readable(cx)
    }
}
