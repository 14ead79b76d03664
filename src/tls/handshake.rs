//! The server side of a TLS handshake over any stream. The caller bounds it (timeout,
//! forced shutdown): this module knows nothing of the server around it.

use std::sync::Arc;

use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;

use super::{TlsFailure, TlsInfo, TlsVersion};

/// Accepts a TLS session on `stream` with `config`, or with the configuration `select`
/// chooses from the ClientHello (`config` when it chooses none).
pub(crate) async fn handshake<S>(
    config: Arc<rustls::ServerConfig>,
    select: Option<&Select>,
    stream: S,
) -> Result<(TlsStream<S>, TlsInfo), TlsFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = match select {
        None => futures_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map_err(failure)?,
        Some(select) => {
            let acceptor = rustls::server::Acceptor::default();
            let start = futures_rustls::LazyConfigAcceptor::new(acceptor, stream)
                .await
                .map_err(failure)?;
            let hello = start.client_hello();
            let info = ClientHelloInfo {
                server_name: hello.server_name().map(str::to_owned),
                alpn: hello
                    .alpn()
                    .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            };
            // The hook is the user's code: a panic fails this handshake only.
            let chosen = {
                use futures_lite::FutureExt as _;
                let choose = std::panic::AssertUnwindSafe(async { select(info).await });
                choose.catch_unwind().await.map_err(|payload| {
                    TlsFailure::Handshake(format!(
                        "the tls_select hook panicked: {}",
                        crate::unwind::message(&*payload)
                    ))
                })?
            };
            let config = chosen.unwrap_or(config);
            start.into_stream(config).await.map_err(failure)?
        }
    };
    let info = info(stream.get_ref().1);
    Ok((stream, info))
}

fn failure(e: std::io::Error) -> TlsFailure {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => TlsFailure::Handshake(tls.to_string()),
        None => TlsFailure::Io(e.to_string()),
    }
}

/// A hook that chooses a connection's TLS configuration from its ClientHello.
pub(crate) type Select = Arc<
    dyn Fn(
            ClientHelloInfo,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<Arc<rustls::ServerConfig>>> + Send>,
        > + Send
        + Sync,
>;

/// What a client asked for in its ClientHello, for choosing its certificate
/// ([`Builder::tls_select`](crate::Builder::tls_select)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientHelloInfo {
    /// The server name it asked for (SNI), if any.
    pub server_name: Option<String>,
    /// The ALPN protocols it offered, in its order of preference.
    pub alpn: Vec<Vec<u8>>,
}

fn info(conn: &rustls::ServerConnection) -> TlsInfo {
    TlsInfo {
        version: conn
            .protocol_version()
            .map_or(TlsVersion::Tls13, TlsVersion::of),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .as_ref()
            .map(super::suite_name)
            .unwrap_or_default(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        server_name: conn.server_name().map(str::to_owned),
        peer_certificates: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    }
}
