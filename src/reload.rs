//! Watched certificate files: a task per TLS listener with `TlsConfig::watch` reads the
//! certificate, key and CA files every interval and, when their contents changed, loads and
//! checks them, then swaps the listener's TLS configuration (new connections get it;
//! established ones keep their session). A broken set is reported once (when it is still
//! there an interval later) and the old configuration stays.
//!
//! The files are read, and the configuration built, on a thread of its own each time (the
//! runtime only times the checks), so a slow or network file system stalls no connection.
//!
//! Contents are compared, not modification times: an atomic rename over a file and a
//! symlink swap (Kubernetes secrets flip a `..data` link) both change what a read returns,
//! and the time is the runtime's (so the watch runs under simulation too).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::error::Error;
use crate::events::ServerEvent;
use crate::state::{Core, Endpoint};
use crate::tls::{PemSource, TlsConfig};

/// What the watched files hold now, by path (`None` for a file that cannot be read).
type Snapshot = BTreeMap<PathBuf, Option<Vec<u8>>>;

fn snapshot(tls: &TlsConfig) -> Snapshot {
    let files = tls
        .certificates
        .iter()
        .flat_map(|pair| [&pair.cert, &pair.key])
        .chain(tls.client_ca.as_ref());
    files
        .filter_map(|source| match source {
            PemSource::Path(path) => Some((path.clone(), std::fs::read(path).ok())),
            PemSource::Pem(_) => None,
        })
        .collect()
}

/// Loads `tls` from the bytes in `snapshot`, so every file is read as it was compared.
fn load(
    tls: &TlsConfig,
    snapshot: &Snapshot,
) -> Result<(Arc<rustls::ServerConfig>, Vec<crate::tls::ValidityWarning>), crate::tls::TlsError> {
    let read = |source: &PemSource| match source {
        PemSource::Path(path) => match snapshot.get(path) {
            Some(Some(bytes)) => Ok(bytes.clone()),
            _ => crate::tls::read_pem(source),
        },
        PemSource::Pem(_) => crate::tls::read_pem(source),
    };
    tls.load_with(&read)
}

/// Watches `tls` for `endpoint` every `interval` until the server stops. A set of files that
/// cannot be used is reported once it has stayed so for an interval (a certificate and its
/// key replaced one after the other look mismatched for a moment).
pub(crate) async fn watch(
    core: Arc<Core>,
    endpoint: Arc<Endpoint>,
    tls: TlsConfig,
    interval: Duration,
) {
    let tls = Arc::new(tls);
    let mut seen = Arc::new(snapshot(&tls));
    let mut broken = None;
    loop {
        let stopped = async {
            core.stopped().await;
            true
        };
        let slept = async {
            core.runtime().sleep(interval).await;
            false
        };
        if stopped.or(slept).await {
            return;
        }
        // Reading files and building a configuration block: a thread of its own does it,
        // so a slow (network) file system never stalls the runtime's other tasks.
        let (tls_, seen_) = (tls.clone(), seen.clone());
        let checked = crate::sync::on_thread("berth-tls-watch", move || {
            let now = snapshot(&tls_);
            let loaded = (now != *seen_).then(|| load(&tls_, &now));
            (now, loaded)
        })
        .await;
        let Ok((now, loaded)) = checked else {
            continue; // no thread to be had now: look again at the next interval
        };
        let listener = endpoint.name().clone();
        match loaded {
            None => {
                if let Some(e) = broken.take() {
                    let reason = crate::tls::TlsError::to_string(&e);
                    core.hooks().error(&Error::Tls(e));
                    core.hooks()
                        .server(ServerEvent::TlsReloadFailed { listener, reason });
                }
                continue;
            }
            Some(Ok((config, warnings))) => {
                broken = None;
                endpoint.set_tls(config);
                for warning in warnings {
                    core.hooks().error(&Error::CertificateNotValid(warning));
                }
                core.hooks().server(ServerEvent::TlsReloaded { listener });
            }
            Some(Err(e)) => broken = Some(e),
        }
        seen = Arc::new(now);
    }
}

/// Keeps the `berth_tls_certificate_expiry_seconds` gauges current (seconds left shrink
/// with time) until the server stops: every minute, on the runtime's clock.
#[cfg(feature = "metrics")]
pub(crate) async fn expiry_gauges(core: Arc<Core>) {
    loop {
        crate::tls::expiry::publish();
        let stopped = async {
            core.stopped().await;
            true
        };
        let slept = async {
            core.runtime().sleep(Duration::from_secs(60)).await;
            false
        };
        if stopped.or(slept).await {
            return;
        }
    }
}
