//! When the certificates served expire: every certificate loaded (files at load and
//! reload, ACME ones when served) is noted here by label (its file, or `acme:` and its
//! names), for the `berth_tls_certificate_expiry_seconds` gauge. The process-wide table
//! matches the process-wide metrics recorder: one line per certificate, whichever server
//! serves it.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

fn table() -> &'static Mutex<BTreeMap<String, i64>> {
    static SERVED: OnceLock<Mutex<BTreeMap<String, i64>>> = OnceLock::new();
    SERVED.get_or_init(Default::default)
}

/// Notes that the certificate `label` expires at `not_after` (Unix seconds).
pub(crate) fn record(label: String, not_after: i64) {
    crate::sync::lock(table()).insert(label, not_after);
    #[cfg(feature = "metrics")]
    publish();
}

/// The end of the validity of a DER certificate, in Unix seconds.
pub(crate) fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Sets the gauge of every certificate noted: seconds until it expires (negative once it
/// has).
#[cfg(feature = "metrics")]
pub(crate) fn publish() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (label, not_after) in crate::sync::lock(table()).iter() {
        metrics::gauge!("berth_tls_certificate_expiry_seconds", "certificate" => label.clone())
            .set((not_after - now) as f64);
    }
}
