//! `TlsConfig`: certificates, versions, suites, ALPN and client authentication, loaded from
//! PEM into a rustls `ServerConfig` (ring provider).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
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

impl PemSource {
    fn read(&self) -> Result<Vec<u8>, TlsError> {
        match self {
            PemSource::Path(path) => std::fs::read(path).map_err(|e| TlsError::Read {
                path: path.clone(),
                reason: e.to_string(),
            }),
            PemSource::Pem(text) => Ok(text.as_bytes().to_vec()),
        }
    }
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
/// ALPN, no client authentication, session resumption on.
///
/// ```
/// let tls = berth::tls::TlsConfig::from_pem_files("cert.pem", "key.pem");
/// let config = berth::Config { tls: Some(tls), ..berth::Config::new("0.0.0.0:7443") };
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// TLS session resumption (tickets and session IDs).
    pub session_resumption: bool,
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
    /// A reload was asked of a server that was started without TLS.
    #[error("this server was started without TLS: TLS cannot be enabled by a reload")]
    NotEnabled,
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

    /// Loads every file and builds the rustls configuration. Also returns the certificates
    /// that are outside their validity period now (a warning, not an error: clocks differ).
    pub fn load(&self) -> Result<(Arc<ServerConfig>, Vec<ValidityWarning>), TlsError> {
        if self.min_version > self.max_version {
            return Err(TlsError::VersionRange {
                min: self.min_version,
                max: self.max_version,
            });
        }
        if self.certificates.is_empty() {
            return Err(TlsError::NoCertificates);
        }
        let provider = Arc::new(self.provider()?);
        let mut warnings = Vec::new();
        let mut by_name = ResolvesServerCertUsingSni::new();
        let mut default_key = None;
        for entry in &self.certificates {
            let (chain, key) = load_pair(entry)?;
            warnings.extend(validity_warning(&entry.cert, &chain));
            let cert_name = entry.cert.to_string();
            let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
                TlsError::KeyMismatch {
                    cert: cert_name.clone(),
                    key: entry.key.to_string(),
                    reason: e.to_string(),
                }
            })?;
            for name in &entry.server_names {
                by_name
                    .add(name, certified.clone())
                    .map_err(|e| TlsError::ServerName {
                        cert: cert_name.clone(),
                        name: name.clone(),
                        reason: e.to_string(),
                    })?;
            }
            default_key.get_or_insert_with(|| Arc::new(certified));
        }
        let resolver = SniResolver {
            by_name,
            default: default_key.ok_or(TlsError::NoCertificates)?,
        };
        let versions: Vec<&'static SupportedProtocolVersion> = [
            (TlsVersion::Tls12, &rustls::version::TLS12),
            (TlsVersion::Tls13, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter(|(v, _)| (self.min_version..=self.max_version).contains(v))
        .map(|(_, v)| v)
        .collect();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| match e {
                rustls::Error::General(_) if !self.cipher_suites.is_empty() => {
                    TlsError::NoUsableCipherSuite
                }
                e => TlsError::Rustls(e.to_string()),
            })?;
        let builder = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            mode => {
                let roots = self.client_roots(mode)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if mode == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|e| TlsError::EmptyCaBundle {
                    mode,
                    source_name: format!("{} ({e})", self.ca_name()),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        if self.session_resumption {
            config.ticketer = rustls::crypto::ring::Ticketer::new()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
        } else {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok((Arc::new(config), warnings))
    }

    fn ca_name(&self) -> String {
        self.client_ca
            .as_ref()
            .map_or_else(|| "none".to_owned(), |s| s.to_string())
    }

    fn client_roots(&self, mode: ClientAuth) -> Result<RootCertStore, TlsError> {
        let empty = || TlsError::EmptyCaBundle {
            mode,
            source_name: self.ca_name(),
        };
        let source = self.client_ca.as_ref().ok_or_else(empty)?;
        let certs = match read_certs(source) {
            Err(TlsError::NoCertificateInPem(_)) => return Err(empty()),
            other => other?,
        };
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(empty());
        }
        Ok(roots)
    }

    /// The ring provider, with the cipher suites narrowed to the configured names.
    fn provider(&self) -> Result<CryptoProvider, TlsError> {
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            let name = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
            let mut chosen = Vec::new();
            for wanted in &self.cipher_suites {
                let found = provider
                    .cipher_suites
                    .iter()
                    .find(|s| name(s).eq_ignore_ascii_case(wanted))
                    .ok_or_else(|| TlsError::UnknownCipherSuite {
                        name: wanted.clone(),
                        known: provider
                            .cipher_suites
                            .iter()
                            .map(name)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                chosen.push(*found);
            }
            let usable = chosen.iter().any(|s| {
                let v = match s.version().version {
                    rustls::ProtocolVersion::TLSv1_2 => TlsVersion::Tls12,
                    _ => TlsVersion::Tls13,
                };
                (self.min_version..=self.max_version).contains(&v)
            });
            if !usable {
                return Err(TlsError::NoUsableCipherSuite);
            }
            provider.cipher_suites = chosen;
        }
        Ok(provider)
    }
}

fn read_certs(source: &PemSource) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = source.read()?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            source_name: source.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificateInPem(source.to_string()));
    }
    Ok(certs)
}

fn load_pair(
    entry: &CertKey,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = read_certs(&entry.cert)?;
    let bytes = entry.key.read()?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKeyInPem(entry.key.to_string()),
        e => TlsError::BadPem {
            source_name: entry.key.to_string(),
            reason: e.to_string(),
        },
    })?;
    Ok((chain, key))
}

/// Checks the end-entity certificate's validity window against the system clock.
fn validity_warning(
    source: &PemSource,
    chain: &[CertificateDer<'static>],
) -> Option<ValidityWarning> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    (now < not_before || now > not_after).then(|| ValidityWarning {
        source: source.to_string(),
        not_before,
        not_after,
    })
}

/// Picks the certificate by SNI; falls back to the first certificate for clients that send
/// no name or a name no certificate is configured for.
#[derive(Debug)]
struct SniResolver {
    by_name: ResolvesServerCertUsingSni,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.by_name
            .resolve(client_hello)
            .or_else(|| Some(self.default.clone()))
    }
}
