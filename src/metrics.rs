//! Metrics (feature `metrics`) through the [`metrics`](https://docs.rs/metrics) facade:
//! install any recorder (e.g. `metrics-exporter-prometheus`) and berth's numbers appear.
//! Without the feature none of this is compiled.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `berth_connections_accepted_total` | counter | |
//! | `berth_connections_active` | gauge | |
//! | `berth_connections_closed_total` | counter | `reason` (`peer_closed`, `idle_timeout`, ...) |
//! | `berth_connections_rejected_total` | counter | `reason` (`denied`, `per_ip_rate`, ...) |
//! | `berth_connection_duration_seconds` | histogram | |
//! | `berth_tls_handshakes_total` | counter | `result` (`ok`, `failed`) |
//! | `berth_tls_resumed_total` | counter | (handshakes that resumed a session; the other `ok` ones were full) |
//! | `berth_tls_handshake_duration_seconds` | histogram | `result` |
//! | `berth_bytes_read_total`, `berth_bytes_written_total` | counter | (added when a connection closes) |
//! | `berth_accept_errors_total` | counter | |
//! | `berth_pressure` | gauge | (with `Config::overload`: 1.0 is at a limit) |
//! | `berth_pressure_level` | gauge | 0 normal, 1 high, 2 critical |
//! | `berth_overload_actions_total` | counter | `action` (`evicted`, `idle_timeout_shrunk`, ...) |
//! | `berth_tls_reloads_total` | counter | `result` (`ok`, `failed`) |
//! | `berth_tls_certificate_expiry_seconds` | gauge | `certificate` (its file, or `acme:` and its names): seconds until it expires, refreshed every minute |
//! | `berth_acme_certificates_total` | counter | `origin` (`cache`, `issued`, `renewed`) |
//! | `berth_acme_failures_total` | counter | |
//!
//! Bytes are tallied per connection in plain fields and reported once, at close, so the
//! read/write path never touches the recorder.

#[cfg(feature = "tls")]
use std::time::Duration;

use crate::events::{ConnEvent, PressureLevel, ServerEvent};

pub(crate) fn conn(event: &ConnEvent) {
    match event {
        ConnEvent::Accepted { .. } => {
            metrics::counter!("berth_connections_accepted_total").increment(1);
            metrics::gauge!("berth_connections_active").increment(1.0);
        }
        ConnEvent::TlsEstablished { info, .. } => {
            metrics::counter!("berth_tls_handshakes_total", "result" => "ok").increment(1);
            if info.resumed {
                metrics::counter!("berth_tls_resumed_total").increment(1);
            }
        }
        ConnEvent::TlsFailed { .. } => {
            metrics::counter!("berth_tls_handshakes_total", "result" => "failed").increment(1);
        }
        ConnEvent::Rejected { reason, .. } => {
            metrics::counter!("berth_connections_rejected_total", "reason" => reason.label())
                .increment(1);
        }
        ConnEvent::Closed {
            reason, duration, ..
        } => {
            metrics::counter!("berth_connections_closed_total", "reason" => reason.label())
                .increment(1);
            metrics::gauge!("berth_connections_active").decrement(1.0);
            metrics::histogram!("berth_connection_duration_seconds").record(duration.as_secs_f64());
        }
    }
}

#[cfg(feature = "tls")]
pub(crate) fn handshake(took: Duration, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    metrics::histogram!("berth_tls_handshake_duration_seconds", "result" => result)
        .record(took.as_secs_f64());
}

pub(crate) fn bytes(read: u64, written: u64) {
    metrics::counter!("berth_bytes_read_total").increment(read);
    metrics::counter!("berth_bytes_written_total").increment(written);
}

pub(crate) fn accept_error() {
    metrics::counter!("berth_accept_errors_total").increment(1);
}

pub(crate) fn server(event: &ServerEvent) {
    match event {
        ServerEvent::Pressure { level, pressure } => {
            metrics::gauge!("berth_pressure").set(*pressure);
            let level = match level {
                PressureLevel::Normal => 0.0,
                PressureLevel::High => 1.0,
                _ => 2.0,
            };
            metrics::gauge!("berth_pressure_level").set(level);
        }
        ServerEvent::Overload { action } => {
            metrics::counter!("berth_overload_actions_total", "action" => action.label())
                .increment(1);
        }
        ServerEvent::TlsReloaded { .. } => {
            metrics::counter!("berth_tls_reloads_total", "result" => "ok").increment(1);
        }
        ServerEvent::TlsReloadFailed { .. } => {
            metrics::counter!("berth_tls_reloads_total", "result" => "failed").increment(1);
        }
        ServerEvent::AcmeCertificate { origin, .. } => {
            metrics::counter!("berth_acme_certificates_total", "origin" => origin.label())
                .increment(1);
        }
        ServerEvent::AcmeFailed { .. } => {
            metrics::counter!("berth_acme_failures_total").increment(1);
        }
        _ => {}
    }
}
