//! TLS: configuration, the handshake, and what a connection knows about its session.
//!
//! The settings ([`TlsConfig`] and its parts) are plain data and exist without the `tls`
//! feature, so a configuration with a `[tls]` table always parses; serving it needs the
//! feature (otherwise binding fails with
//! [`ConfigError::FeatureDisabled`](crate::ConfigError::FeatureDisabled)).
//!
//! The handshake runs on the connection's own task under `Config::handshake_timeout`, never
//! on the accept loop: a client that connects and says nothing, or half a ClientHello, costs
//! one task until the timeout and never delays anybody else.
//!
//! Certificates come from files or memory ([`CertKey`]), or from an ACME directory such as
//! Let's Encrypt, obtained and renewed by berth itself ([`acme`], feature `acme`).
//!
//! Connections count in `open_connections()` from accept, handshake included: they hold a
//! socket and count against `max_connections`. A failed handshake produces
//! [`ConnEvent::TlsFailed`](crate::ConnEvent::TlsFailed) and then `Closed` with
//! [`CloseReason::TlsFailed`](crate::CloseReason::TlsFailed).

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod acme;
mod config;
#[cfg(feature = "tls")]
pub(crate) mod expiry;
#[cfg(feature = "tls")]
mod handshake;
#[cfg(feature = "tls")]
mod load;
#[cfg(feature = "tls")]
mod tickets;

pub use config::{CertKey, ClientAuth, PemSource, TlsConfig, TlsError, ValidityWarning};
#[cfg(feature = "tls")]
pub use handshake::ClientHelloInfo;
#[cfg(feature = "tls")]
pub(crate) use handshake::{Select, handshake};
#[cfg(feature = "tls")]
pub(crate) use load::read as read_pem;
/// rustls's server configuration, for [`Builder::tls_server_config`](crate::Builder::tls_server_config).
#[cfg(feature = "tls")]
pub use rustls::ServerConfig;
#[cfg(feature = "tls")]
pub(crate) use tickets::{Material as TicketKey, Resumption, parse_key_file};
#[cfg(feature = "tls")]
pub use tickets::{TICKET_KEY_LEN, TicketKeys};
#[cfg(all(feature = "tls", any(feature = "async-io", feature = "tokio")))]
pub(crate) use tickets::{decode_handover, encode_handover};

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

#[cfg(feature = "tls")]
impl TlsVersion {
    /// A rustls version: 1.2, or 1.3 (the only other one berth enables).
    pub(crate) fn of(version: rustls::ProtocolVersion) -> TlsVersion {
        match version {
            rustls::ProtocolVersion::TLSv1_2 => TlsVersion::Tls12,
            _ => TlsVersion::Tls13,
        }
    }
}

/// A cipher suite's name, as configured (`cipher_suites`) and reported (`TlsInfo`).
#[cfg(feature = "tls")]
pub(crate) fn suite_name(suite: &rustls::SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite())
}

/// What a TLS connection negotiated, from [`Conn::tls`](crate::Conn::tls).
///
/// Its `Debug` output is for people: ALPN as text and client certificates by subject, not as
/// bytes.
#[derive(Clone, PartialEq, Eq)]
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
    /// Whether the session was resumed (from a ticket or the session cache) rather than
    /// set up by a full handshake.
    pub resumed: bool,
}

impl TlsInfo {
    /// The agreed ALPN protocol as text (`"h2"`), if any and if it is UTF-8.
    pub fn alpn_str(&self) -> Option<&str> {
        self.alpn
            .as_deref()
            .and_then(|p| std::str::from_utf8(p).ok())
    }
}

impl fmt::Debug for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpn = self
            .alpn
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let certificates: Vec<String> = self
            .peer_certificates
            .iter()
            .map(|der| subject(der))
            .collect();
        f.debug_struct("TlsInfo")
            .field("version", &self.version)
            .field("cipher_suite", &self.cipher_suite)
            .field("alpn", &alpn)
            .field("server_name", &self.server_name)
            .field("peer_certificates", &certificates)
            .field("resumed", &self.resumed)
            .finish()
    }
}

/// A certificate's subject for people (`CN=client`), or its size when it cannot be parsed.
fn subject(der: &[u8]) -> String {
    #[cfg(feature = "tls")]
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
        return cert.subject().to_string();
    }
    format!("<{} bytes of DER>", der.len())
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

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    #[test]
    fn tls_info_debug_shows_alpn_as_text_and_certificates_by_subject() {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client one");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let info = TlsInfo {
            version: TlsVersion::Tls13,
            cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
            alpn: Some(b"h2".to_vec()),
            server_name: Some("example.test".into()),
            peer_certificates: vec![der.clone(), vec![1, 2, 3]],
            resumed: false,
        };
        let debug = format!("{info:?}");
        assert!(debug.contains(r#"alpn: Some("h2")"#), "{debug}");
        assert!(debug.contains("CN=client one"), "{debug}");
        assert!(debug.contains("<3 bytes of DER>"), "{debug}");
        assert!(
            !debug.contains(&format!("{:?}", &der[..8])),
            "no raw DER: {debug}"
        );
        assert_eq!(info.alpn_str(), Some("h2"));
    }
}
