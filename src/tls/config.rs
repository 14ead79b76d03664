//! `TlsConfig`: certificates, versions, suites, ALPN and client authentication, as plain data
//! (it exists without the `tls` feature, so a configuration file with a `[tls]` table parses
//! everywhere and fails with a clear error where TLS is not compiled in).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TlsVersion;

/// Where a PEM document comes from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PemSource {
    /// A file path (`{ path = "cert.pem" }` in TOML).
    Path(PathBuf),
    /// PEM text in memory (`{ pem = "-----BEGIN ..." }`).
    Pem(String),
}

impl fmt::Display for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::Path(p) => write!(f, "{}", p.display()),
            PemSource::Pem(_) => f.write_str("in-memory PEM"),
        }
    }
}

impl fmt::Debug for PemSource {
    // Never print in-memory PEM: it may be a private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::Path(p) => f.debug_tuple("Path").field(p).finish(),
            PemSource::Pem(_) => f.write_str("Pem(..)"),
        }
    }
}

impl From<&Path> for PemSource {
    fn from(p: &Path) -> Self {
        PemSource::Path(p.to_owned())
    }
}

/// One certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKey {
    /// The chain, end-entity certificate first.
    pub cert: PemSource,
    /// Its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PemSource,
    /// SNI names this certificate serves (each must be covered by the certificate). The
    /// first certificate of a [`TlsConfig`] also serves clients that send no SNI or an
    /// unknown name.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    #[default]
    None,
    /// A certificate is verified against `client_ca` if the client presents one.
    Optional,
    /// Clients without a certificate valid under `client_ca` are rejected.
    Required,
}

/// TLS settings of a server. Defaults: TLS 1.2 to 1.3, the provider's cipher suites, no
/// ALPN, no client authentication, session resumption on (tickets with keys rotated every
/// hour and a 6-hour lifetime, and a 4,096-session cache for TLS 1.2 clients without
/// tickets).
///
/// ```
/// use berth::tls::{ClientAuth, PemSource, TlsConfig};
/// let mut tls = TlsConfig::from_pem_files("cert.pem", "key.pem");
/// tls.alpn = vec!["h2".into(), "http/1.1".into()];
/// tls.client_auth = ClientAuth::Required;
/// tls.client_ca = Some(PemSource::Path("clients-ca.pem".into()));
/// let mut config = berth::Config::new("0.0.0.0:7443");
/// config.tls = Some(tls);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Certificate chains with their keys; the first is the default (see [`CertKey`]).
    pub certificates: Vec<CertKey>,
    /// Lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// Highest protocol version accepted.
    pub max_version: TlsVersion,
    /// Cipher suites by name (e.g. `"TLS13_AES_256_GCM_SHA384"`); empty: the provider's
    /// defaults.
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered, in order of preference (e.g. `["h2", "http/1.1"]`).
    pub alpn: Vec<String>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// CA bundle (PEM) that client certificates must chain to; required unless
    /// `client_auth` is `none`.
    pub client_ca: Option<PemSource>,
    /// TLS session resumption (tickets and session IDs). Off: every handshake is full.
    pub session_resumption: bool,
    /// Issue session tickets (stateless resumption: the session travels, sealed, with the
    /// client). Off: sessions resume only from the session cache.
    pub session_tickets: bool,
    /// How long a ticket resumes after its key stops issuing tickets, announced to clients
    /// as the ticket lifetime (`"6h"`; 1 s to 7 days). A ticket resumes for at least this
    /// long and at most this plus `ticket_rotation`: lifetime is enforced by erasing keys.
    #[serde(with = "humantime_serde")]
    pub ticket_lifetime: std::time::Duration,
    /// How long one random key issues tickets before a new one takes over (`"1h"`); the
    /// old one still opens its tickets for `ticket_lifetime`. Shorter means less is exposed
    /// if a key leaks. Unused with `ticket_key_file`.
    #[serde(with = "humantime_serde")]
    pub ticket_rotation: std::time::Duration,
    /// Ticket keys from a file instead of random ones, so that several processes or
    /// machines resume each other's sessions. One key per line, 96 hex digits (48 bytes:
    /// a 16-byte name, then a 32-byte AES-256 key), e.g. from `openssl rand -hex 48`;
    /// blank lines and `#` comments are skipped. The first key issues tickets; the others
    /// only open them. berth never rotates these: rotate by replacing the file (new key
    /// first, the previous ones after it for a ticket lifetime), re-read with `watch`
    /// (and at every start and upgrade). Keep it readable by the server only.
    pub ticket_key_file: Option<PathBuf>,
    /// Sessions kept in memory for resumption by session ID (TLS 1.2 clients that take no
    /// tickets; with `session_tickets` off, every client). The oldest are dropped beyond
    /// it; 0: none kept.
    pub session_cache_size: usize,
    /// Reload the certificate, key and CA files when their contents change, looking every
    /// this long (`"1s"`): renames over the old files and symlink swaps (Kubernetes'
    /// `..data`) are seen, as the files are read, not their metadata. The new files are
    /// loaded and checked before use; if they are broken, the old configuration stays and
    /// the error is reported. `None`: load once.
    #[serde(default, with = "humantime_serde")]
    pub watch: Option<std::time::Duration>,
    /// Certificates obtained and renewed from an ACME directory (feature `acme`): see
    /// [`AcmeConfig`](super::acme::AcmeConfig). With it, `certificates` may be empty.
    pub acme: Option<super::acme::AcmeConfig>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificates: Vec::new(),
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            alpn: Vec::new(),
            client_auth: ClientAuth::None,
            client_ca: None,
            session_resumption: true,
            session_tickets: true,
            ticket_lifetime: std::time::Duration::from_secs(6 * 3600),
            ticket_rotation: std::time::Duration::from_secs(3600),
            ticket_key_file: None,
            session_cache_size: 4096,
            watch: None,
            acme: None,
        }
    }
}

/// A TLS setting berth cannot use. Each names the file (or "in-memory PEM") at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// TLS is enabled but no certificate is configured.
    #[error("TLS is enabled but no certificate is configured: add a certificate chain and key")]
    NoCertificates,
    /// A PEM file could not be read.
    #[error("cannot read {path}: {reason}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's message.
        reason: String,
    },
    /// No certificate in a PEM document that should hold one.
    #[error("no certificate found in {0}: expected a PEM \"CERTIFICATE\" block")]
    NoCertificateInPem(String),
    /// No private key in a PEM document that should hold one.
    #[error(
        "no private key found in {0}: expected a PEM PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY block"
    )]
    NoKeyInPem(String),
    /// The PEM is malformed.
    #[error("malformed PEM in {source_name}: {reason}")]
    BadPem {
        /// The file or "in-memory PEM".
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The private key does not belong to the certificate, or cannot be used.
    #[error(
        "the key in {key} does not match the certificate in {cert} (or cannot be used): {reason}"
    )]
    KeyMismatch {
        /// Certificate source.
        cert: String,
        /// Key source.
        key: String,
        /// rustls's explanation.
        reason: String,
    },
    /// A server name is invalid or not covered by its certificate.
    #[error("certificate {cert} cannot serve the name {name:?}: {reason}")]
    ServerName {
        /// Certificate source.
        cert: String,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// `min_version` is above `max_version`.
    #[error("min_version {min} is above max_version {max}")]
    VersionRange {
        /// Configured minimum.
        min: TlsVersion,
        /// Configured maximum.
        max: TlsVersion,
    },
    /// A cipher suite name is unknown to the ring provider.
    #[error("unknown cipher suite {name:?}: known suites are {known}")]
    UnknownCipherSuite {
        /// The unknown name.
        name: String,
        /// The suites the provider offers.
        known: String,
    },
    /// No configured cipher suite works with the configured versions.
    #[error("none of the configured cipher suites supports the configured TLS versions")]
    NoUsableCipherSuite,
    /// Client authentication is on but no CA bundle is given, or it holds no certificate.
    #[error(
        "client_auth is {mode:?} but the client CA bundle {source_name} holds no usable certificate"
    )]
    EmptyCaBundle {
        /// The client auth mode.
        mode: ClientAuth,
        /// The bundle ("none" when unset).
        source_name: String,
    },
    /// rustls rejected the configuration.
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
    /// `ticket_lifetime` is out of range.
    #[error(
        "ticket_lifetime {0:?} is out of range: use 1 s to 7 days (TLS 1.3's longest), e.g. \"6h\""
    )]
    TicketLifetime(std::time::Duration),
    /// `ticket_rotation` is zero, or so short against `ticket_lifetime` that more than 1,000
    /// keys would be kept.
    #[error(
        "ticket_rotation {rotation:?} does not fit ticket_lifetime {lifetime:?}: use a rotation above zero and at least 1/1000 of the lifetime, e.g. \"1h\""
    )]
    TicketRotation {
        /// The configured rotation.
        rotation: std::time::Duration,
        /// The configured lifetime.
        lifetime: std::time::Duration,
    },
    /// The ticket key file cannot be read or used.
    #[error(
        "cannot use the ticket key file {path}: {reason}; it must hold one key per line, 96 hex digits each (make one with `openssl rand -hex 48`), the first issuing tickets",
        path = path.display()
    )]
    TicketKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A reload was asked of a server that was started without TLS.
    #[error("this server was started without TLS: TLS cannot be enabled by a reload")]
    NotEnabled,
    /// The ACME settings cannot be used.
    #[error("{0}")]
    Acme(super::acme::AcmeError),
}

/// The validity window of a certificate that is expired or not yet valid at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidityWarning {
    /// The certificate's source.
    pub source: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

impl TlsConfig {
    /// One certificate chain and key from PEM files.
    pub fn from_pem_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsConfig {
            certificates: vec![CertKey {
                cert: PemSource::Path(cert.into()),
                key: PemSource::Path(key.into()),
                server_names: Vec::new(),
            }],
            ..TlsConfig::default()
        }
    }

    /// One certificate chain and key from PEM text.
    pub fn from_pem(cert: impl Into<String>, key: impl Into<String>) -> Self {
        TlsConfig {
            certificates: vec![CertKey {
                cert: PemSource::Pem(cert.into()),
                key: PemSource::Pem(key.into()),
                server_names: Vec::new(),
            }],
            ..TlsConfig::default()
        }
    }
}
