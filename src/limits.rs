//! Connection limits: allow/deny lists, a global accept rate, and per-client-IP limits on
//! concurrent connections and connection rate (the settings, and why a connection was
//! refused; the live state is berth's admission module).
//!
//! A refused connection is closed at once (no handler, no TLS work) and reported as
//! [`ConnEvent::Rejected`](crate::ConnEvent::Rejected). Checks run in this order: deny list,
//! allow list, global accept rate, per-IP concurrency, per-IP rate. Direct clients are
//! checked right after accept; clients behind a trusted PROXY-protocol proxy are checked on
//! their original address once the header is read. Unix-socket peers have no IP address:
//! the lists and per-IP limits do not apply to them (file permissions do), the global accept
//! rate does.
//!
//! Per-IP state is bounded by `max_tracked_ips`: an address is forgotten when its last
//! connection closes and its rate bucket is full again; when the table is full, the address
//! idle the longest is forgotten to make room (losing its rate history), and if every
//! tracked address has open connections, new addresses are refused. Each admission costs
//! O(log n) in the number of tracked addresses, at the cap too.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// A token-bucket rate: `per_second` on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Average connections per second (may be fractional: 0.5 is one every two seconds).
    pub per_second: f64,
    /// How many may come at once after a quiet period.
    pub burst: u32,
}

/// Connection limits, all off by default.
///
/// ```
/// let limits: berth::limits::Limits = toml::from_str(r#"
///     max_per_ip = 10
///     rate_per_ip = { per_second = 5.0, burst = 20 }
///     deny = ["10.0.0.0/8"]
/// "#).unwrap();
/// assert_eq!(limits.max_per_ip, Some(10));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// At most this many concurrent connections per client address (IPv6: per prefix).
    pub max_per_ip: Option<usize>,
    /// New connections per client address (IPv6: per prefix).
    pub rate_per_ip: Option<Rate>,
    /// New connections for the whole server.
    pub accept_rate: Option<Rate>,
    /// If not empty, only these networks may connect.
    pub allow: Vec<IpNet>,
    /// These networks may not connect (checked before `allow`: deny wins).
    pub deny: Vec<IpNet>,
    /// IPv6 clients are grouped by this prefix length (one /64 is usually one client).
    pub ipv6_prefix: u8,
    /// Hard cap on the number of client addresses tracked for the per-IP limits.
    pub max_tracked_ips: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_per_ip: None,
            rate_per_ip: None,
            accept_rate: None,
            allow: Vec::new(),
            deny: Vec::new(),
            ipv6_prefix: 64,
            max_tracked_ips: 100_000,
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_per_ip == Some(0) {
            return Err(ConfigError::InvalidLimit(
                "max_per_ip must be at least 1".into(),
            ));
        }
        for (name, rate) in [
            ("rate_per_ip", self.rate_per_ip),
            ("accept_rate", self.accept_rate),
        ] {
            if let Some(r) = rate {
                if !(r.per_second.is_finite() && r.per_second > 0.0) || r.burst == 0 {
                    return Err(ConfigError::InvalidLimit(format!(
                        "{name} needs per_second > 0 and burst >= 1, got {} and {}",
                        r.per_second, r.burst
                    )));
                }
            }
        }
        if self.ipv6_prefix > 128 {
            return Err(ConfigError::InvalidLimit(format!(
                "ipv6_prefix {} is longer than 128 bits",
                self.ipv6_prefix
            )));
        }
        if self.max_tracked_ips == 0 {
            return Err(ConfigError::InvalidLimit(
                "max_tracked_ips must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn per_ip(&self) -> bool {
        self.max_per_ip.is_some() || self.rate_per_ip.is_some()
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The client address is in the deny list.
    Denied,
    /// The allow list is set and the client address is not in it.
    NotAllowed,
    /// The server-wide accept rate was exceeded.
    AcceptRate,
    /// The client address has `max_per_ip` connections open.
    PerIpConnections,
    /// The client address exceeded `rate_per_ip`.
    PerIpRate,
    /// `max_tracked_ips` addresses all have open connections.
    TooManyAddresses,
    /// A PROXY-protocol header was missing, malformed, oversized or late.
    ProxyHeader(String),
}

impl RejectReason {
    /// A short snake_case name, e.g. for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::Denied => "denied",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::AcceptRate => "accept_rate",
            RejectReason::PerIpConnections => "per_ip_connections",
            RejectReason::PerIpRate => "per_ip_rate",
            RejectReason::TooManyAddresses => "too_many_addresses",
            RejectReason::ProxyHeader(_) => "proxy_header",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::Denied => f.write_str("address denied"),
            RejectReason::NotAllowed => f.write_str("address not allowed"),
            RejectReason::AcceptRate => f.write_str("server accept rate exceeded"),
            RejectReason::PerIpConnections => f.write_str("too many connections from this address"),
            RejectReason::PerIpRate => f.write_str("connection rate from this address exceeded"),
            RejectReason::TooManyAddresses => f.write_str("too many client addresses tracked"),
            RejectReason::ProxyHeader(e) => write!(f, "PROXY protocol: {e}"),
        }
    }
}
