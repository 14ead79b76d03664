//! `--self-signed DIR` for the examples: a throwaway CA and a localhost certificate.

use std::path::{Path, PathBuf};

/// Creates (or reuses) DIR/ca.pem, DIR/cert.pem and DIR/key.pem; returns cert and key paths.
pub fn create(dir: &Path, program: &str) -> Result<(PathBuf, PathBuf), String> {
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    if ca.exists() && cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let generate = || -> Result<(String, String, String), rcgen::Error> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("berth {program} throwaway CA"),
        );
        let issuer = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
            .signed_by(&key, &issuer)?;
        Ok((issuer.pem(), leaf.pem(), key.serialize_pem()))
    };
    let (ca_pem, cert_pem, key_pem) =
        generate().map_err(|e| format!("cannot generate a certificate: {e}"))?;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&ca, ca_pem))
        .and_then(|()| std::fs::write(&cert, cert_pem))
        .and_then(|()| std::fs::write(&key, key_pem))
        .map_err(|e| format!("cannot write certificates to {}: {e}", dir.display()))?;
    eprintln!(
        "{program}: wrote a throwaway CA to {} (trust it in clients)",
        ca.display()
    );
    Ok((cert, key))
}
