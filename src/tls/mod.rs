//! TLS: configuration, the handshake, and what a connection knows about its session.
//!
//! The handshake runs on the connection's own task under `Config::handshake_timeout`, never
//! on the accept loop: a client that connects and says nothing, or half a ClientHello, costs
//! one task until the timeout and never delays anybody else.
//!
//! Connections count in `open_connections()` from accept, handshake included: they hold a
//! socket and count against `max_connections`. A failed handshake produces
//! [`ConnEvent::TlsFailed`](crate::ConnEvent::TlsFailed) and then `Closed` with
//! [`CloseReason::TlsFailed`](crate::CloseReason::TlsFailed).

use std::fmt;

use serde::{Deserialize, Serialize};

#[cfg(feature = "tls")]
mod config;
#[cfg(feature = "tls")]
pub use config::{CertKey, ClientAuth, PemSource, TlsConfig, TlsError, ValidityWarning};
#[cfg(feature = "tls")]
pub use rustls::ServerConfig;

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLS 1.2",
            TlsVersion::Tls13 => "TLS 1.3",
        })
    }
}

/// What a TLS connection negotiated, from [`Conn::tls`](crate::Conn::tls).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The protocol version.
    pub version: TlsVersion,
    /// The cipher suite's IANA name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client asked for (SNI), if any.
    pub server_name: Option<String>,
    /// The client's certificate chain (DER, end-entity first); empty without client auth.
    pub peer_certificates: Vec<Vec<u8>>,
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The handshake did not finish within the handshake timeout.
    Timeout,
    /// The server was shutting down.
    Shutdown,
    /// The peer spoke something that is not (acceptable) TLS, or failed verification; the
    /// text is rustls's.
    Handshake(String),
    /// The connection failed during the handshake (e.g. the peer closed it).
    Io(String),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::Timeout => f.write_str("handshake timed out"),
            TlsFailure::Shutdown => f.write_str("server shutting down"),
            TlsFailure::Handshake(e) => write!(f, "handshake failed: {e}"),
            TlsFailure::Io(e) => write!(f, "connection failed during handshake: {e}"),
        }
    }
}

#[cfg(feature = "tls")]
pub(crate) use handshake::handshake;

#[cfg(feature = "tls")]
mod handshake {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_io::{AsyncRead, AsyncWrite};
    use futures_lite::FutureExt as _;
    use futures_rustls::server::TlsStream;

    use super::{TlsFailure, TlsInfo, TlsVersion};
    use crate::server::Shared;

    /// Runs the server side of a handshake, bounded by `timeout` and cut short by a forced
    /// shutdown.
    pub(crate) async fn handshake<S>(
        shared: &Shared,
        config: Arc<rustls::ServerConfig>,
        stream: S,
        timeout: Duration,
    ) -> Result<(TlsStream<S>, TlsInfo), TlsFailure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let accept = async {
            futures_rustls::TlsAcceptor::from(config)
                .accept(stream)
                .await
                .map_err(|e| {
                    match e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    {
                        Some(tls) => TlsFailure::Handshake(tls.to_string()),
                        None => TlsFailure::Io(e.to_string()),
                    }
                })
        };
        let expire = async {
            shared.runtime.sleep(timeout).await;
            Err(TlsFailure::Timeout)
        };
        let forced = async {
            shared.shutdown.force.wait().await;
            Err(TlsFailure::Shutdown)
        };
        let stream = accept.or(expire).or(forced).await?;
        let info = info(stream.get_ref().1);
        Ok((stream, info))
    }

    fn info(conn: &rustls::ServerConnection) -> TlsInfo {
        TlsInfo {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
                _ => TlsVersion::Tls13,
            },
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: conn.server_name().map(str::to_owned),
            peer_certificates: conn
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
        }
    }
}
