//! The certificates of one [`AcmeConfig`]: the one served now, the challenge certificates
//! of an order under way, and how a ClientHello finds either.
//!
//! One [`Acme`] exists per distinct `AcmeConfig` in the process (a registry of weak
//! references): every listener, every reload and every server configured alike share it,
//! so they serve one certificate and run one order, never two racing on one cache.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{ACME_TLS_ALPN, AcmeConfig, AcmeError, cache};
use crate::sync::{lock, read, write};
use crate::tls::{ClientHelloInfo, PemSource, Select};

/// A certificate being served.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) key: Arc<CertifiedKey>,
    /// Validity, in seconds since the Unix epoch.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl Served {
    /// Parses the cache's format: the private key, then the chain (end-entity first).
    pub(crate) fn parse(pem: &[u8]) -> Result<Served, String> {
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("private key: {e}"))?;
        let chain = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificates: {e}"))?;
        let (_, leaf) =
            x509_parser::parse_x509_certificate(chain.first().ok_or("no certificate")?.as_ref())
                .map_err(|e| format!("certificate: {e}"))?;
        let (not_before, not_after) = (
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
        );
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())?;
        Ok(Served {
            key: Arc::new(key),
            not_before,
            not_after,
        })
    }
}

/// The ACME state of one `AcmeConfig`.
pub(crate) struct Acme {
    config: AcmeConfig,
    names: Vec<String>,
    client: Arc<rustls::ClientConfig>,
    served: RwLock<Option<Arc<Served>>>,
    /// Whether `served` came from the cache and no event said so yet.
    from_cache: AtomicBool,
    /// Challenge certificates by name, while an order is under way.
    challenges: Mutex<BTreeMap<String, Arc<CertifiedKey>>>,
    /// Whether a task orders for it (one at a time).
    driven: AtomicBool,
}

impl fmt::Debug for Acme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acme")
            .field("names", &self.names)
            .field("directory", &self.config.directory)
            .finish_non_exhaustive()
    }
}

fn registry() -> &'static Mutex<Vec<Weak<Acme>>> {
    static ALL: OnceLock<Mutex<Vec<Weak<Acme>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

impl Acme {
    /// The state for `config`: the existing one, or a new one with the cached certificate
    /// (if any) ready to serve. Reads the cache; talks to nobody.
    pub(crate) fn get(config: &AcmeConfig) -> Result<Arc<Acme>, AcmeError> {
        config.validate()?;
        let mut all = lock(registry());
        all.retain(|weak| weak.strong_count() > 0);
        if let Some(found) = all
            .iter()
            .filter_map(Weak::upgrade)
            .find(|acme| acme.config == *config)
        {
            return Ok(found);
        }
        cache::create(config)?;
        let served = match cache::read(&cache::cert_path(config))? {
            // A broken or foreign file is replaced by the next order.
            Some(pem) => Served::parse(&pem).ok().map(Arc::new),
            None => None,
        };
        if let Some(served) = &served {
            crate::tls::expiry::record(label(&config.names()), served.not_after);
        }
        let acme = Arc::new(Acme {
            names: config.names(),
            client: client_config(config)?,
            from_cache: AtomicBool::new(served.is_some()),
            served: RwLock::new(served),
            config: config.clone(),
            challenges: Mutex::new(BTreeMap::new()),
            driven: AtomicBool::new(false),
        });
        all.push(Arc::downgrade(&acme));
        Ok(acme)
    }

    pub(crate) fn config(&self) -> &AcmeConfig {
        &self.config
    }

    /// The names, normalized.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn client(&self) -> &Arc<rustls::ClientConfig> {
        &self.client
    }

    /// The certificate served now.
    pub(crate) fn served(&self) -> Option<Arc<Served>> {
        read(&self.served).clone()
    }

    /// Whether the certificate served came from the cache, not yet reported (once).
    pub(crate) fn take_from_cache(&self) -> bool {
        self.from_cache.swap(false, Ordering::Relaxed)
    }

    /// Serves `served` to new connections from now on.
    pub(crate) fn serve(&self, served: Arc<Served>) {
        crate::tls::expiry::record(label(&self.names), served.not_after);
        *write(&self.served) = Some(served);
    }

    pub(crate) fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        lock(&self.challenges).insert(name.to_owned(), key);
    }

    pub(crate) fn clear_challenges(&self) {
        lock(&self.challenges).clear();
    }

    /// Claims the ordering for one task; `None` if another one has it.
    pub(crate) fn claim(self: &Arc<Self>) -> Option<Claim> {
        (!self.driven.swap(true, Ordering::AcqRel)).then(|| Claim(self.clone()))
    }

    fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The right to order for an [`Acme`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Claim(Arc<Acme>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.clear_challenges();
        self.0.driven.store(false, Ordering::Release);
    }
}

/// The label of a certificate in metrics: `acme:` and its names.
pub(crate) fn label(names: &[String]) -> String {
    format!("acme:{}", names.join(","))
}

/// The HTTPS client settings for the directory: the Mozilla roots and the extra CA.
fn client_config(config: &AcmeConfig) -> Result<Arc<rustls::ClientConfig>, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &config.ca {
        let bad = |reason: String| AcmeError::BadCa {
            source_name: ca.to_string(),
            reason,
        };
        let bytes = match ca {
            PemSource::Path(path) => std::fs::read(path).map_err(|e| bad(e.to_string()))?,
            PemSource::Pem(text) => text.as_bytes().to_vec(),
        };
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad("no certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Refused {
            step: "the TLS settings",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(client))
}

/// Whether a ClientHello is a TLS-ALPN-01 validation: it offers `acme-tls/1` only.
fn is_challenge<'a>(mut alpn: impl Iterator<Item = &'a [u8]>) -> bool {
    alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none()
}

/// Resolves a listener's certificate: the ACME one for its names (and for everybody when
/// there are no certificate files), else the files' resolver.
#[derive(Debug)]
pub(crate) struct Resolver {
    acme: Arc<Acme>,
    files: Option<Arc<dyn ResolvesServerCert>>,
}

impl Resolver {
    pub(crate) fn new(acme: Arc<Acme>, files: Option<Arc<dyn ResolvesServerCert>>) -> Self {
        Resolver { acme, files }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_challenge(hello.alpn().into_iter().flatten()) {
            return challenge(hello.server_name()?);
        }
        let served = self.acme.served();
        match &self.files {
            None => served.map(|s| s.key.clone()),
            Some(files) => match (served, hello.server_name()) {
                (Some(served), Some(name)) if self.acme.covers(name) => Some(served.key.clone()),
                _ => files.resolve(hello),
            },
        }
    }
}

/// The challenge certificate for `name`, of whichever order is under way in the process.
fn challenge(name: &str) -> Option<Arc<CertifiedKey>> {
    let all = lock(registry());
    all.iter().filter_map(Weak::upgrade).find_map(|acme| {
        lock(&acme.challenges)
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, key)| key.clone())
    })
}

/// Serves TLS-ALPN-01 validations: the challenge certificates, with ALPN `acme-tls/1`.
#[derive(Debug)]
struct ChallengeResolver;

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        challenge(hello.server_name()?)
    }
}

fn challenge_config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(ChallengeResolver));
            config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// The `tls_select` of a server with ACME: a TLS-ALPN-01 validation gets the challenge
/// configuration (the only one that agrees on `acme-tls/1`: adding it to a listener's own
/// ALPN list would make rustls refuse clients offering only other protocols); every other
/// ClientHello goes to the user's hook, if any.
pub(crate) fn select(user: Option<Select>) -> Select {
    Arc::new(move |hello: ClientHelloInfo| {
        if is_challenge(hello.alpn.iter().map(Vec::as_slice)) {
            let config = challenge_config();
            return Box::pin(async move { Some(config) });
        }
        match &user {
            Some(user) => user(hello),
            None => Box::pin(async { None }),
        }
    })
}
