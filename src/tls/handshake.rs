//! The server side of a TLS handshake over any stream. The caller bounds it (timeout,
//! forced shutdown): this module knows nothing of the server around it.

use std::sync::Arc;

use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;

use super::{TlsFailure, TlsInfo, TlsVersion};

/// Accepts a TLS session on `stream` with `config`.
pub(crate) async fn handshake<S>(
    config: Arc<rustls::ServerConfig>,
    stream: S,
) -> Result<(TlsStream<S>, TlsInfo), TlsFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = futures_rustls::TlsAcceptor::from(config)
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
        })?;
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
