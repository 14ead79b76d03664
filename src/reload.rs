//! Watched certificate files: a task per TLS listener with `TlsConfig::watch` reads the
//! certificate, key and CA files every interval and, when their contents changed, loads and
//! checks them, then swaps the listener's TLS configuration (new connections get it;
//! established ones keep their session). A broken set is reported once and the old
//! configuration stays.
//!
//! Contents are compared, not modification times: an atomic rename over a file and a
//! symlink swap (Kubernetes secrets flip a `..data` link) both change what a read returns,
//! and the time is the runtime's (so the watch runs under simulation too).

use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::error::Error;
use crate::events::ServerEvent;
use crate::state::{Core, Endpoint};
use crate::tls::{PemSource, TlsConfig};

/// What the watched files hold now (`None` for a file that cannot be read).
fn snapshot(tls: &TlsConfig) -> Vec<Option<Vec<u8>>> {
    let files = tls
        .certificates
        .iter()
        .flat_map(|pair| [&pair.cert, &pair.key])
        .chain(tls.client_ca.as_ref());
    files
        .filter_map(|source| match source {
            PemSource::Path(path) => Some(std::fs::read(path).ok()),
            PemSource::Pem(_) => None,
        })
        .collect()
}

/// Watches `tls` for `endpoint` every `interval` until the server stops.
pub(crate) async fn watch(
    core: Arc<Core>,
    endpoint: Arc<Endpoint>,
    tls: TlsConfig,
    interval: Duration,
) {
    let mut seen = snapshot(&tls);
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
        let now = snapshot(&tls);
        if now == seen {
            continue;
        }
        seen = now;
        let listener = endpoint.name().clone();
        match tls.load() {
            Ok((config, warnings)) => {
                endpoint.set_tls(config);
                for warning in warnings {
                    core.hooks().error(&Error::CertificateNotValid(warning));
                }
                core.hooks().server(ServerEvent::TlsReloaded { listener });
            }
            Err(e) => {
                let reason = e.to_string();
                core.hooks().error(&Error::Tls(e));
                core.hooks()
                    .server(ServerEvent::TlsReloadFailed { listener, reason });
            }
        }
    }
}
