//! Loading a [`TlsConfig`] into a rustls `ServerConfig` (ring provider): PEM files, SNI,
//! versions, suites, client authentication, validity warnings.

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

use super::{CertKey, ClientAuth, PemSource, TlsConfig, TlsError, TlsVersion, ValidityWarning};

impl TlsConfig {
    /// Loads every file and builds the rustls configuration. Also returns the certificates
    /// that are outside their validity period now (a warning, not an error: clocks differ).
    ///
    /// The configuration gets session ticket keys and a session cache of its own (random
    /// keys, or `ticket_key_file`'s); a server keeps its listeners' across certificate
    /// reloads and upgrades.
    pub fn load(&self) -> Result<(Arc<ServerConfig>, Vec<ValidityWarning>), TlsError> {
        self.load_with(&read, None)
    }

    /// [`load`](Self::load), reading each PEM source with `read` (a watcher passes the very
    /// bytes it compared, so a file replaced between two reads cannot mix versions), with
    /// the resumption state `resumption` (a new one when `None`).
    pub(crate) fn load_with(
        &self,
        read: Reader<'_>,
        resumption: Option<&super::Resumption>,
    ) -> Result<(Arc<ServerConfig>, Vec<ValidityWarning>), TlsError> {
        if self.min_version > self.max_version {
            return Err(TlsError::VersionRange {
                min: self.min_version,
                max: self.max_version,
            });
        }
        // With ACME, certificate files are optional: its certificate serves everybody.
        if self.certificates.is_empty() && self.acme.is_none() {
            return Err(TlsError::NoCertificates);
        }
        let provider = Arc::new(self.provider()?);
        let mut warnings = Vec::new();
        let mut by_name = ResolvesServerCertUsingSni::new();
        let mut default_key = None;
        let mut expiries = Vec::new();
        for entry in &self.certificates {
            let (chain, key) = load_pair(entry, read)?;
            warnings.extend(validity_warning(&entry.cert, &chain));
            if let Some(not_after) = chain.first().and_then(|c| super::expiry::not_after(c)) {
                expiries.push((entry.cert.to_string(), not_after));
            }
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
        let files = default_key.map(|default| {
            Arc::new(SniResolver { by_name, default }) as Arc<dyn ResolvesServerCert>
        });
        let resolver = match (&self.acme, files) {
            #[cfg(feature = "acme")]
            (Some(acme), files) => {
                let acme = super::acme::Acme::get(acme).map_err(TlsError::Acme)?;
                Arc::new(super::acme::Resolver::new(acme, files))
            }
            #[cfg(not(feature = "acme"))]
            (Some(_), _) => return Err(TlsError::Acme(super::acme::AcmeError::NotCompiled)),
            (None, files) => files.ok_or(TlsError::NoCertificates)?,
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
                let roots = self.client_roots(mode, read)?;
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
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        match resumption {
            Some(resumption) => resumption.apply(&mut config),
            None => {
                super::Resumption::new(self, Arc::new(std::time::Instant::now))?.apply(&mut config)
            }
        }
        for (label, not_after) in expiries {
            super::expiry::record(label, not_after);
        }
        Ok((Arc::new(config), warnings))
    }

    fn ca_name(&self) -> String {
        self.client_ca
            .as_ref()
            .map_or_else(|| "none".to_owned(), |s| s.to_string())
    }

    fn client_roots(&self, mode: ClientAuth, read: Reader<'_>) -> Result<RootCertStore, TlsError> {
        let empty = || TlsError::EmptyCaBundle {
            mode,
            source_name: self.ca_name(),
        };
        let source = self.client_ca.as_ref().ok_or_else(empty)?;
        let certs = match read_certs(source, read) {
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
            let name = super::suite_name;
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
                let v = TlsVersion::of(s.version().version);
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

/// Reads a PEM source's bytes.
pub(crate) type Reader<'a> = &'a dyn Fn(&PemSource) -> Result<Vec<u8>, TlsError>;

/// Reads a PEM source: the file, or the text.
pub(crate) fn read(source: &PemSource) -> Result<Vec<u8>, TlsError> {
    match source {
        PemSource::Path(path) => std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.clone(),
            reason: e.to_string(),
        }),
        PemSource::Pem(text) => Ok(text.as_bytes().to_vec()),
    }
}

fn read_certs(
    source: &PemSource,
    read: Reader<'_>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(source)?;
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
    read: Reader<'_>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = read_certs(&entry.cert, read)?;
    let bytes = read(&entry.key)?;
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
