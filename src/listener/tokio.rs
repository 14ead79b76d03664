//! Real TCP on tokio's reactor, bridged to futures-io with tokio-util's compat layer.

use std::io;

use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use super::{Accepted, Listener, Stream};
use crate::addr::Addr;
use crate::config::Config;
use crate::error::Error;

/// A TCP listener on tokio's reactor, built from a [`Config`] like
/// [`TcpListener`](super::TcpListener). Must be created inside a tokio runtime.
#[derive(Debug)]
pub struct TokioTcpListener {
    inner: tokio::net::TcpListener,
    nodelay: bool,
}

impl TokioTcpListener {
    /// Validates `config` and binds its address. Call it inside a tokio runtime.
    pub fn bind(config: &Config) -> Result<Self, Error> {
        let (std, addr) = super::socket::bind_std(config)?;
        let inner = tokio::net::TcpListener::from_std(std).map_err(|source| Error::Bind {
            addr: addr.into(),
            source,
        })?;
        Ok(TokioTcpListener {
            inner,
            nodelay: config.nodelay,
        })
    }
}

impl Stream for Compat<tokio::net::TcpStream> {
    fn poll_readable(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

impl Listener for TokioTcpListener {
    type Stream = Compat<tokio::net::TcpStream>;

    async fn accept(&self) -> io::Result<Accepted<Self::Stream>> {
        let (stream, peer_addr) = self.inner.accept().await?;
        if self.nodelay {
            stream.set_nodelay(true)?;
        }
        let local_addr = stream.local_addr()?;
        Ok(Accepted {
            stream: stream.compat(),
            peer_addr: peer_addr.into(),
            local_addr: local_addr.into(),
        })
    }

    fn local_addr(&self) -> io::Result<Addr> {
        self.inner.local_addr().map(Addr::from)
    }
}
