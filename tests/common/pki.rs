//! Test certificates (rcgen), TLS clients that check which certificate a server chose, and
//! certificate files replaced the ways deployments replace them.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};

/// A CA and the certificates it signs.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate chain and key, as PEM and DER.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// The server configuration that serves this certificate.
    pub fn tls_config(&self) -> berth::tls::TlsConfig {
        berth::tls::TlsConfig::from_pem(self.cert_pem.clone(), self.key_pem.clone())
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params
}

impl Pki {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> Pki {
        let ca = CertifiedIssuer::self_signed(ca_params(name), KeyPair::generate().unwrap());
        Pki { ca: ca.unwrap() }
    }

    /// A leaf certificate for `names`.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    /// A leaf certificate for `names`, its parameters edited first.
    pub fn leaf_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names = names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).unwrap();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let ca = CertifiedIssuer::signed_by(ca_params(name), key, &self.ca).unwrap();
        Pki { ca }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }
}

/// Checks the chain as usual, but for `name` whatever name the client asked for: a client
/// sending any SNI (or none) then shows which certificate the server chose.
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _asked_for: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client (TLS 1.2 and 1.3) trusting `ca` that verifies the server's certificate as valid
/// for `name`, whatever name it connects to.
pub fn client_verifying_as(ca: CertificateDer<'static>, name: &str) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let verifier = VerifyAs {
        inner,
        name: ServerName::try_from(name.to_owned()).unwrap(),
    };
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth()
}

/// Replaces `path` atomically: the new contents are written beside it, then renamed over it.
pub fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Points the symbolic link `link` at `target`, atomically (a new link renamed over it).
#[cfg(unix)]
pub fn relink(link: &Path, target: &str) {
    let name = link.file_name().unwrap().to_str().unwrap();
    let tmp = link.with_file_name(format!("{name}.tmp-link"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// A Kubernetes-style secret volume revision: `dir/<revision>/{cert,key}.pem`.
pub fn revision(dir: &Path, revision: &str, leaf: &Leaf) {
    let rev = dir.join(revision);
    std::fs::create_dir_all(&rev).unwrap();
    std::fs::write(rev.join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(rev.join("key.pem"), &leaf.key_pem).unwrap();
}
