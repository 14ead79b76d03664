//! The cache directory: the account key (one per directory URL) and the certificate with
//! its key (one per directory URL and set of names), as PEM files written whole (a
//! temporary file renamed over the old one), keys readable by the owner only.

use std::path::{Path, PathBuf};

use super::{AcmeConfig, AcmeError};

/// A short, stable name for `parts` (hex of the first 8 bytes of their SHA-256).
fn digest(parts: &[&str]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The account key's file.
pub(crate) fn account_path(config: &AcmeConfig) -> PathBuf {
    config
        .cache
        .join(format!("account-{}.pem", digest(&[&config.directory])))
}

/// The certificate's file: named after its first name, for people.
pub(crate) fn cert_path(config: &AcmeConfig) -> PathBuf {
    let names = config.names();
    let mut parts = vec![config.directory.as_str()];
    parts.extend(names.iter().map(String::as_str));
    let first = names.first().map_or("none", String::as_str);
    config
        .cache
        .join(format!("cert-{first}-{}.pem", digest(&parts)))
}

fn cache_error(path: &Path, e: std::io::Error) -> AcmeError {
    AcmeError::Cache {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Creates the cache directory if missing.
pub(crate) fn create(config: &AcmeConfig) -> Result<(), AcmeError> {
    std::fs::create_dir_all(&config.cache).map_err(|e| cache_error(&config.cache, e))
}

/// A file's contents, `None` when it does not exist.
pub(crate) fn read(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(cache_error(path, e)),
    }
}

/// Writes `bytes` to `path` whole: a reader sees the old file or the new one.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            cache_error(path, e)
        })
}
