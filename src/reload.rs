//! Watched certificate files: a task per TLS listener with `TlsConfig::watch` reads the
//! certificate, key and CA files every interval and, when their contents changed, loads and
//! checks them, then swaps the listener's TLS configuration (new connections get it;
//! established ones keep their session). A broken set is reported once (when it is still
//! there an interval later) and the old configuration stays.
//!
//! The files are read, and the configuration built, on a thread of its own each time (the
//! runtime only times the checks), so a slow or network file system stalls no connection.
//!
//! The session ticket key file (`TlsConfig::ticket_key_file`) is watched with them: a new
//! file's keys replace the listener's keys (that is how a fleet rotates); a file that
//! cannot be used is reported the same way, and the old keys stay.
//!
//! Contents are compared, not modification times: an atomic rename over a file and a
//! symlink swap (Kubernetes secrets flip a `..data` link) both change what a read returns,
//! and the time is the runtime's (so the watch runs under simulation too).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::error::ServeError;
use crate::events::ServerEvent;
use crate::tls::{PemSource, Resumption, TlsConfig};

/// What the watched files hold now, by path (`None` for a file that cannot be read).
type Snapshot = BTreeMap<PathBuf, Option<Vec<u8>>>;

fn snapshot(tls: &TlsConfig) -> Snapshot {
    let files = tls
        .certificates
        .iter()
        .flat_map(|pair| [&pair.cert, &pair.key])
        .chain(tls.client_ca.as_ref());
    let key_file = tls.ticket_key_file.iter().cloned();
    files
        .filter_map(|source| match source {
            PemSource::Path(path) => Some(path.clone()),
            PemSource::Pem(_) => None,
        })
        .chain(key_file)
        .map(|path| {
            let bytes = std::fs::read(&path).ok();
            (path, bytes)
        })
        .collect()
}

/// What a changed set of files gives: the new configuration, its warnings, and the new
/// ticket keys when they come from a key file.
type Loaded = (
    Arc<rustls::ServerConfig>,
    Vec<crate::tls::ValidityWarning>,
    Option<Vec<crate::tls::TicketKey>>,
);

/// Loads `tls` from the bytes in `snapshot`, so every file is read as it was compared,
/// around the listener's own resumption state (its keys and cache stay).
fn load(
    tls: &TlsConfig,
    snapshot: &Snapshot,
    resumption: Option<&Resumption>,
) -> Result<Loaded, crate::tls::TlsError> {
    let read = |source: &PemSource| match source {
        PemSource::Path(path) => match snapshot.get(path) {
            Some(Some(bytes)) => Ok(bytes.clone()),
            _ => crate::tls::read_pem(source),
        },
        PemSource::Pem(_) => crate::tls::read_pem(source),
    };
    let keys = match resumption.and_then(Resumption::key_file) {
        Some((path, _)) => {
            let bytes = match snapshot.get(path) {
                Some(Some(bytes)) => bytes.clone(),
                _ => std::fs::read(path).map_err(|e| crate::tls::TlsError::TicketKeyFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            };
            Some(crate::tls::parse_key_file(path, &bytes)?)
        }
        None => None,
    };
    let (config, warnings) = tls.load_with(&read, resumption)?;
    Ok((config, warnings, keys))
}

/// Waits `interval` on the server's runtime; `true` when the server stopped first.
async fn stopped_during(core: &Core, interval: Duration) -> bool {
    let stopped = async {
        core.stop().stopped().await;
        true
    };
    let slept = async {
        core.runtime().sleep(interval).await;
        false
    };
    stopped.or(slept).await
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
    // The first look too reads files: on a thread of its own, like every later one (a file
    // that blocks on read, a FIFO or a hung network mount, must not stall the runtime).
    let mut seen = loop {
        let first = tls.clone();
        match crate::sync::on_thread("berth-tls-watch", move || snapshot(&first)).await {
            Ok(seen) => break Arc::new(seen),
            Err(_) => {
                // No thread to be had now: try again after an interval, unless stopping.
                if stopped_during(&core, interval).await {
                    return;
                }
            }
        }
    };
    let mut broken = None;
    loop {
        if stopped_during(&core, interval).await {
            return;
        }
        // Reading files and building a configuration block: a thread of its own does it,
        // so a slow (network) file system never stalls the runtime's other tasks.
        let (tls_, seen_) = (tls.clone(), seen.clone());
        let resumption = endpoint.resumption().cloned();
        let checked = crate::sync::on_thread("berth-tls-watch", move || {
            let now = snapshot(&tls_);
            let loaded = (now != *seen_).then(|| load(&tls_, &now, resumption.as_ref()));
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
                    core.hooks().error(&ServeError::TlsReload(e));
                    core.hooks()
                        .server(ServerEvent::TlsReloadFailed { listener, reason });
                }
                continue;
            }
            Some(Ok((config, warnings, keys))) => {
                broken = None;
                // The keys first: a ticket the new configuration issues is sealed with them.
                if let (Some(keys), Some((_, ring))) =
                    (keys, endpoint.resumption().and_then(Resumption::key_file))
                {
                    ring.replace(keys);
                }
                endpoint.set_tls(config);
                for warning in warnings {
                    core.hooks()
                        .error(&ServeError::CertificateNotValid(warning));
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
            core.stop().stopped().await;
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
