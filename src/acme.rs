//! The ACME driver: one task per certificate (per distinct
//! [`AcmeConfig`](crate::tls::acme::AcmeConfig)) of a running server. It orders when there
//! is no certificate, sleeps until the renewal is due, renews, and retries failures with
//! back-off, serving the certificate it has meanwhile. One order's protocol steps are in
//! `order`; the settings, the cache and the challenge answers in `tls::acme`; this module
//! decides when, and reports.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::FutureExt as _;

use crate::core::Core;
use crate::error::ServeError;
use crate::events::ServerEvent;
use crate::tls::acme::{Acme, CertificateOrigin, Served};

mod order;

/// The first retry's delay; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// The longest single sleep before the wall clock is read again.
const NAP: Duration = Duration::from_secs(3600);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A random number in `0..1`, from the standard library's randomly keyed hasher (jitter
/// needs no more).
fn random() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// When to renew `served` (Unix seconds): `renew_before` ahead of expiry, at most a third
/// of its lifetime, earlier by up to an eighth of that margin (`jitter` in `0..1`).
pub(crate) fn renewal_due(served: &Served, renew_before: Duration, jitter: f64) -> i64 {
    let lifetime = (served.not_after - served.not_before).max(0);
    let margin = (renew_before.as_secs() as i64).min(lifetime / 3);
    served.not_after - margin - (margin as f64 / 8.0 * jitter) as i64
}

/// The delay before retry number `failures` (from 1): doubling, capped, with up to a
/// quarter of random spread.
fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = RETRY_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(20))
        .min(RETRY_MAX);
    // Whole milliseconds: the delay is printed in messages.
    Duration::from_millis(base.mul_f64(1.0 - 0.25 * jitter).as_millis() as u64)
}

/// Sleeps `duration` on the runtime's clock; false if the server started draining first.
async fn sleep(core: &Core, duration: Duration) -> bool {
    let slept = async {
        core.runtime().sleep(duration).await;
        true
    };
    let draining = async {
        core.stop().draining().wait().await;
        false
    };
    slept.or(draining).await
}

/// Keeps `acme`'s certificate served and fresh until the server drains.
pub(crate) async fn drive(core: Arc<Core>, acme: Arc<Acme>) {
    // One task per certificate in the process; another server configured alike drives it.
    let Some(_claim) = acme.claim() else {
        return;
    };
    let domains = acme.names().to_vec();
    let report = |served: &Served, origin| {
        core.hooks().server(ServerEvent::AcmeCertificate {
            domains: domains.clone(),
            origin,
            not_after: UNIX_EPOCH + Duration::from_secs(served.not_after.max(0) as u64),
        });
    };
    if acme.take_from_cache() {
        if let Some(served) = acme.served() {
            report(&served, CertificateOrigin::Cache);
        }
    }
    let mut failures = 0;
    loop {
        let current = acme.served();
        if let Some(served) = &current {
            let due = renewal_due(served, acme.config().renew_before, random());
            loop {
                let left = due - unix_now();
                if left <= 0 {
                    break;
                }
                if !sleep(&core, Duration::from_secs(left as u64).min(NAP)).await {
                    return;
                }
            }
        }
        if core.stop().is_draining() {
            return;
        }
        #[cfg(feature = "tracing")]
        tracing::info!(target: "berth", ?domains, directory = %acme.config().directory, "ACME order started");
        let ordered = async { Some(order::order(&acme, &**core.runtime()).await) };
        let drained = async {
            core.stop().draining().wait().await;
            None
        };
        let result = ordered.or(drained).await;
        acme.clear_challenges();
        match result {
            None => return,
            Some(Ok(served)) => {
                failures = 0;
                acme.serve(served.clone());
                let origin = match current {
                    Some(_) => CertificateOrigin::Renewed,
                    None => CertificateOrigin::Issued,
                };
                report(&served, origin);
            }
            Some(Err(source)) => {
                failures += 1;
                let retry_in = backoff(failures, random());
                core.hooks().server(ServerEvent::AcmeFailed {
                    domains: domains.clone(),
                    reason: source.to_string(),
                    retry_in,
                });
                core.hooks().error(&ServeError::Acme {
                    domains: domains.join(","),
                    source,
                    retry_in,
                });
                if !sleep(&core, retry_in).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(not_before: i64, not_after: i64) -> Served {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        let mut served = Served::parse(pem.as_bytes()).unwrap();
        served.not_before = not_before;
        served.not_after = not_after;
        served
    }

    #[test]
    fn renewal_is_due_ahead_of_expiry_within_a_third_of_the_lifetime() {
        let day = 24 * 3600;
        let le = served(0, 90 * day);
        let thirty = Duration::from_secs(30 * day as u64);
        assert_eq!(renewal_due(&le, thirty, 0.0), 60 * day);
        // Jitter moves it earlier by at most an eighth of the margin.
        let jittered = renewal_due(&le, thirty, 0.999);
        assert!(jittered < 60 * day && jittered > 60 * day - 30 * day / 8);
        // A short certificate renews at two thirds of its life, whatever the setting.
        let short = served(1000, 1090);
        assert_eq!(renewal_due(&short, thirty, 0.0), 1060);
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(backoff(1, 0.0), RETRY_MIN);
        assert_eq!(backoff(2, 0.0), RETRY_MIN * 2);
        assert_eq!(backoff(30, 0.0), RETRY_MAX);
        assert!(backoff(1, 0.999) > RETRY_MIN * 3 / 4);
    }
}
