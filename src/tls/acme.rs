//! ACME: certificates obtained and renewed from an ACME directory (RFC 8555, e.g. Let's
//! Encrypt), with the TLS-ALPN-01 challenge (RFC 8737) answered by the server's own TLS
//! listeners. The settings ([`AcmeConfig`], a field of
//! [`TlsConfig`](crate::tls::TlsConfig)) are plain data and exist without the `acme`
//! feature; serving them needs it (otherwise binding fails with
//! [`ConfigError::FeatureDisabled`](crate::ConfigError::FeatureDisabled)).
//!
//! How it runs (feature `acme`):
//! - **At start** the certificate and the account key are read from
//!   [`AcmeConfig::cache`]: a certificate found there is served at once, before anything
//!   talks to the directory. A process started by an upgrade reads the same cache, so it
//!   serves the same certificate from its first connection.
//! - **Ordering** runs on one task per configured set of names (on the server's runtime,
//!   its clock for every wait): the account (its key kept in the cache), the order, one
//!   TLS-ALPN-01 challenge per name, the CSR, the download. The directory's HTTPS is spoken
//!   by rustls-acme's client, which polls its sockets on async-io's reactor, so it works
//!   beside smol, async-std and tokio alike.
//! - **The challenge** is answered on the listeners: a ClientHello that offers exactly the
//!   ALPN protocol `acme-tls/1` gets the challenge certificate for its server name (and
//!   that protocol) and nothing else; every other ClientHello is served as before
//!   (`tls_select` included). The directory connects to each name on port 443, so a
//!   listener there must reach this server.
//! - **Renewal** starts [`AcmeConfig::renew_before`] ahead of expiry (at most a third of
//!   the certificate's lifetime, minus up to an eighth of that margin at random, so a fleet
//!   started together does not renew together). A failure is retried with back-off (5 s
//!   doubling to 1 h, with jitter) while the old certificate is served.
//! - **Reports**: [`ServerEvent::AcmeCertificate`](crate::ServerEvent::AcmeCertificate)
//!   for a certificate served (from the cache, issued, renewed),
//!   [`ServerEvent::AcmeFailed`](crate::ServerEvent::AcmeFailed) plus
//!   [`ServeError::Acme`](crate::ServeError::Acme) on the error hook for a failure, and metrics
//!   (`berth_acme_certificates_total`, `berth_acme_failures_total`,
//!   `berth_tls_certificate_expiry_seconds`).
//!
//! ```
//! use berth::tls::{TlsConfig, acme::AcmeConfig};
//! let mut tls = TlsConfig::default();
//! let mut acme = AcmeConfig::new(["example.com", "www.example.com"], "/var/lib/myapp/acme");
//! acme.contact = vec!["mailto:ops@example.com".into()];
//! tls.acme = Some(acme);
//! let mut config = berth::Config::new("0.0.0.0:443");
//! config.tls = Some(tls);
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PemSource;

#[cfg(feature = "acme")]
pub(crate) mod cache;
#[cfg(feature = "acme")]
mod state;

#[cfg(feature = "acme")]
pub(crate) use state::{Acme, Resolver, Served, select};

/// Let's Encrypt's production directory, the default [`AcmeConfig::directory`].
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: untrusted certificates, generous rate limits; use it
/// to try a setup out.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates from an ACME directory for some names (see the [module docs](self)).
///
/// Set it as [`TlsConfig::acme`](crate::tls::TlsConfig::acme). Its certificate serves the
/// clients that ask for one of [`domains`](Self::domains) (SNI) and, when the
/// `TlsConfig` has no certificate files, every other client too. Certificate files
/// configured beside it serve the other names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AcmeConfig {
    /// The names on the certificate (one certificate for all of them). Each must resolve to
    /// this server, with port 443 reaching a TLS listener of it. No wildcards: TLS-ALPN-01
    /// cannot validate them.
    pub domains: Vec<String>,
    /// The directory URL. Default: [`LETS_ENCRYPT`] (production).
    pub directory: String,
    /// Contact URLs for the account, e.g. `mailto:ops@example.com` (the CA writes about
    /// expiring certificates and incidents).
    pub contact: Vec<String>,
    /// Directory where the account key and the certificates are kept (created if missing;
    /// the keys are written readable by the owner only). Keep it across restarts and share
    /// it with the process an upgrade starts: without it, every start orders anew and
    /// soon meets the directory's rate limits.
    pub cache: PathBuf,
    /// Extra root certificates (PEM) to trust for the directory's HTTPS, beside the
    /// Mozilla roots: for a private or test ACME server such as pebble.
    pub ca: Option<PemSource>,
    /// Renew this long before the certificate expires (at most a third of its lifetime).
    /// Default: 30 days (Let's Encrypt's 90-day certificates renew at 60 days).
    #[serde(with = "humantime_serde")]
    pub renew_before: Duration,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            domains: Vec::new(),
            directory: LETS_ENCRYPT.to_owned(),
            contact: Vec::new(),
            cache: PathBuf::from("acme-cache"),
            ca: None,
            renew_before: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl AcmeConfig {
    /// Certificates for `domains` from Let's Encrypt, kept in `cache`.
    pub fn new(
        domains: impl IntoIterator<Item = impl Into<String>>,
        cache: impl Into<PathBuf>,
    ) -> Self {
        AcmeConfig {
            domains: domains.into_iter().map(Into::into).collect(),
            cache: cache.into(),
            ..AcmeConfig::default()
        }
    }

    /// The names, lower-cased, sorted, without repeats (the identity of the certificate).
    #[cfg_attr(not(feature = "acme"), allow(dead_code))]
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .domains
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Checks what can be checked without the network.
    #[cfg_attr(not(feature = "acme"), allow(dead_code))]
    pub(crate) fn validate(&self) -> Result<(), AcmeError> {
        let names = self.names();
        if names.is_empty() {
            return Err(AcmeError::NoDomains);
        }
        for name in &names {
            let bad = |reason: &str| AcmeError::BadDomain {
                name: name.clone(),
                reason: reason.to_owned(),
            };
            if name.contains('*') {
                return Err(bad(
                    "TLS-ALPN-01 cannot validate wildcards: list each name, or use a DNS-01 client",
                ));
            }
            if name.parse::<std::net::IpAddr>().is_ok() {
                return Err(bad("an IP address is not a domain name"));
            }
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                return Err(bad("not a DNS name (letters, digits, '-' and dots)"));
            }
        }
        if !self.directory.starts_with("https://") {
            return Err(AcmeError::BadDirectory(self.directory.clone()));
        }
        Ok(())
    }
}

/// Where a served ACME certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertificateOrigin {
    /// Read from the cache directory at start (or by the process an upgrade started).
    Cache,
    /// Issued by the directory: there was no usable certificate.
    Issued,
    /// Issued by the directory to replace one nearing expiry.
    Renewed,
}

impl CertificateOrigin {
    /// A short snake_case name, e.g. for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            CertificateOrigin::Cache => "cache",
            CertificateOrigin::Issued => "issued",
            CertificateOrigin::Renewed => "renewed",
        }
    }
}

impl fmt::Display for CertificateOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertificateOrigin::Cache => "loaded from the cache",
            CertificateOrigin::Issued => "issued",
            CertificateOrigin::Renewed => "renewed",
        })
    }
}

/// Why a certificate could not be obtained from an ACME directory, or why the ACME
/// settings cannot be used. The message says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// ACME settings were given to a berth built without its `acme` feature.
    #[error(
        "tls.acme is set but berth was built without its `acme` feature: enable it in Cargo.toml (berth = {{ features = [\"acme\"] }}) or remove tls.acme"
    )]
    NotCompiled,
    /// `domains` is empty.
    #[error("acme.domains is empty: name at least one domain to get a certificate for")]
    NoDomains,
    /// A name cannot be on an ACME certificate validated by TLS-ALPN-01.
    #[error("cannot get a certificate for {name:?}: {reason}")]
    BadDomain {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The directory is not an `https://` URL.
    #[error(
        "the ACME directory {0:?} is not an https:// URL: use e.g. https://acme-v02.api.letsencrypt.org/directory"
    )]
    BadDirectory(String),
    /// The extra CA bundle holds no usable certificate.
    #[error(
        "the ACME CA bundle {source_name} holds no usable certificate ({reason}): give the PEM root certificate of the directory's HTTPS"
    )]
    BadCa {
        /// The file or "in-memory PEM".
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The cache directory cannot be created, read or written.
    #[error(
        "cannot use the ACME cache {path}: {reason}; create the directory and let this process write to it", path = path.display()
    )]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's message.
        reason: String,
    },
    /// The directory did not answer (down, wrong URL, untrusted certificate).
    #[error(
        "the ACME directory {url} cannot be reached: {reason}; check the URL and the network (for a private ACME server, trust its CA with acme.ca)"
    )]
    Unreachable {
        /// The directory URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The directory refused a step (account, order, finalization) or answered nonsense.
    #[error("the ACME server refused {step}: {reason}")]
    Refused {
        /// The step.
        step: &'static str,
        /// Its answer.
        reason: String,
    },
    /// The directory could not validate a name with TLS-ALPN-01.
    #[error(
        "the ACME server could not validate {domain} with TLS-ALPN-01: {reason}; {domain} must resolve to this server and its port 443 must reach a TLS listener of this server"
    )]
    Challenge {
        /// The name.
        domain: String,
        /// The directory's explanation.
        reason: String,
    },
    /// A step took too long.
    #[error(
        "the ACME step `{step}` took longer than {after:?}: the ACME server is slow or unreachable"
    )]
    Timeout {
        /// The step.
        step: &'static str,
        /// Its time limit.
        after: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_checked() {
        let acme = AcmeConfig::new(["B.example.", "a.example", "b.example"], "/tmp/x");
        assert_eq!(acme.names(), ["a.example", "b.example"]);
        assert_eq!(acme.validate(), Ok(()));
        let wild = AcmeConfig::new(["*.example"], "/tmp/x");
        assert!(
            wild.validate()
                .unwrap_err()
                .to_string()
                .contains("wildcards")
        );
        let empty = AcmeConfig::new(Vec::<String>::new(), "/tmp/x");
        assert_eq!(empty.validate(), Err(AcmeError::NoDomains));
        let mut http = AcmeConfig::new(["a.example"], "/tmp/x");
        http.directory = "http://localhost/dir".into();
        assert!(matches!(http.validate(), Err(AcmeError::BadDirectory(_))));
    }

    #[test]
    fn it_parses_from_toml_with_defaults() {
        let acme: AcmeConfig = toml::from_str(
            "domains = [\"a.example\"]\ncache = \"/var/lib/acme\"\nrenew_before = \"10d\"",
        )
        .unwrap();
        assert_eq!(acme.directory, LETS_ENCRYPT);
        assert_eq!(acme.renew_before, Duration::from_secs(10 * 24 * 3600));
    }
}
