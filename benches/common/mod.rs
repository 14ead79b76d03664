//! Shared by the peer servers in `benches/`.

use std::path::Path;
use std::sync::Arc;

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3) from PEM files.
pub fn tls_server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .expect("read the certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("read the key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("certificate and key");
    Arc::new(config)
}
