//! Admission: allow/deny lists, a global accept rate, and per-client-IP limits on concurrent
//! connections and connection rate.
//!
//! A refused connection is closed at once (no handler, no TLS work) and reported as
//! [`ConnEvent::Rejected`](crate::ConnEvent::Rejected). Checks run in this order: deny list,
//! allow list, global accept rate, per-IP concurrency, per-IP rate. Direct clients are
//! checked right after accept; clients behind a trusted PROXY-protocol proxy are checked on
//! their original address once the header is read. Unix-socket peers have no IP address:
//! the lists and per-IP limits do not apply to them (file permissions do), the global accept
//! rate does.
//!
//! Per-IP state lives in an ordered map (deterministic under simulation) bounded by
//! `max_tracked_ips`: an entry goes away when its last connection closes and its rate bucket
//! is full again; when the map is full, idle entries are dropped first (losing their rate
//! history), and if every entry has open connections, new addresses are refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

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

    fn per_ip(&self) -> bool {
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

/// A client's key in the per-IP map: the address, IPv6 masked to the configured prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IpKey(IpAddr);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Nanoseconds on the server clock of the last refill.
    at: u64,
}

impl Bucket {
    fn full(rate: Rate, now: u64) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: u64) {
        let elapsed = now.saturating_sub(self.at) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.at = now;
    }

    fn take(&mut self, rate: Rate, now: u64) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Entry {
    active: usize,
    bucket: Option<Bucket>,
}

/// The live admission state of one server.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: Limits,
    global: Mutex<Option<Bucket>>,
    per_ip: Mutex<BTreeMap<IpKey, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Limiter {
        Limiter {
            limits,
            global: Mutex::new(None),
            per_ip: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether admission does anything at all (so the accept loop can skip it).
    pub(crate) fn is_active(&self) -> bool {
        let l = &self.limits;
        l.per_ip() || l.accept_rate.is_some() || !l.allow.is_empty() || !l.deny.is_empty()
    }

    fn key(&self, ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6);
                    let prefix = u32::from(self.limits.ipv6_prefix);
                    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                    IpKey(IpAddr::V6(Ipv6Addr::from(bits & mask)))
                }
            },
            v4 => IpKey(v4),
        }
    }

    /// Admits a connection from `ip` at `now` (nanoseconds on the server clock). On success
    /// returns the key to [`release`](Self::release) when the connection ends (`None` when
    /// no per-IP limit is configured). A peer without an IP (a Unix socket, `None`) only
    /// counts against the global accept rate: the lists and per-IP limits are about IPs.
    pub(crate) fn admit(
        &self,
        ip: impl Into<Option<IpAddr>>,
        now: u64,
    ) -> Result<Option<IpKey>, RejectReason> {
        let l = &self.limits;
        let ip = ip.into().map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        });
        if let Some(ip) = ip {
            if l.deny.iter().any(|net| net.contains(&ip)) {
                return Err(RejectReason::Denied);
            }
            if !l.allow.is_empty() && !l.allow.iter().any(|net| net.contains(&ip)) {
                return Err(RejectReason::NotAllowed);
            }
        }
        if let Some(rate) = l.accept_rate {
            let mut global = lock(&self.global);
            if !global
                .get_or_insert_with(|| Bucket::full(rate, now))
                .take(rate, now)
            {
                return Err(RejectReason::AcceptRate);
            }
        }
        let Some(ip) = ip.filter(|_| l.per_ip()) else {
            return Ok(None);
        };
        let key = self.key(ip);
        let mut map = lock(&self.per_ip);
        if !map.contains_key(&key) && map.len() >= l.max_tracked_ips {
            self.evict(&mut map, now);
            if map.len() >= l.max_tracked_ips {
                return Err(RejectReason::TooManyAddresses);
            }
        }
        let entry = map.entry(key).or_insert_with(|| Entry {
            active: 0,
            bucket: l.rate_per_ip.map(|r| Bucket::full(r, now)),
        });
        if l.max_per_ip.is_some_and(|max| entry.active >= max) {
            return Err(RejectReason::PerIpConnections);
        }
        if let (Some(rate), Some(bucket)) = (l.rate_per_ip, entry.bucket.as_mut()) {
            // A refused entry keeps its drained bucket: forgetting it would reset the rate.
            if !bucket.take(rate, now) {
                return Err(RejectReason::PerIpRate);
            }
        }
        entry.active += 1;
        Ok(Some(key))
    }

    /// A connection admitted under `key` has ended.
    pub(crate) fn release(&self, key: IpKey, now: u64) {
        let mut map = lock(&self.per_ip);
        let Some(entry) = map.get_mut(&key) else {
            return;
        };
        entry.active = entry.active.saturating_sub(1);
        if entry.active == 0 && self.forgettable(entry, now) {
            map.remove(&key);
        }
    }

    /// An idle entry whose rate bucket is full again carries no information.
    fn forgettable(&self, entry: &mut Entry, now: u64) -> bool {
        match (self.limits.rate_per_ip, entry.bucket.as_mut()) {
            (Some(rate), Some(bucket)) => {
                bucket.refill(rate, now);
                bucket.tokens >= f64::from(rate.burst)
            }
            _ => true,
        }
    }

    /// Makes room: first entries that carry no information, then any idle entry.
    fn evict(&self, map: &mut BTreeMap<IpKey, Entry>, now: u64) {
        map.retain(|_, e| e.active > 0 || !self.forgettable(e, now));
        if map.len() >= self.limits.max_tracked_ips {
            map.retain(|_, e| e.active > 0);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.per_ip).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_cap_counts_and_frees() {
        let l = Limiter::new(Limits {
            max_per_ip: Some(2),
            ..Limits::default()
        });
        let a = l.admit(ip("10.0.0.1"), 0).unwrap().unwrap();
        l.admit(ip("10.0.0.1"), 0).unwrap();
        assert_eq!(
            l.admit(ip("10.0.0.1"), 0),
            Err(RejectReason::PerIpConnections)
        );
        assert!(
            l.admit(ip("10.0.0.2"), 0).is_ok(),
            "other addresses are unaffected"
        );
        l.release(a, 0);
        assert!(
            l.admit(ip("10.0.0.1"), 0).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn rate_allows_a_burst_then_the_steady_rate() {
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let l = Limiter::new(Limits {
            rate_per_ip: Some(rate),
            ..Limits::default()
        });
        let from = ip("10.0.0.1");
        let mut keys = Vec::new();
        for _ in 0..3 {
            keys.push(l.admit(from, 0).unwrap().unwrap());
        }
        assert_eq!(l.admit(from, 0), Err(RejectReason::PerIpRate));
        // Half a second refills one token at 2/s.
        assert!(l.admit(from, S / 2).is_ok());
        assert_eq!(l.admit(from, S / 2), Err(RejectReason::PerIpRate));
        // A long pause refills to the burst, not beyond.
        let later = 100 * S;
        for _ in 0..3 {
            l.admit(from, later).unwrap();
        }
        assert_eq!(l.admit(from, later), Err(RejectReason::PerIpRate));
    }

    #[test]
    fn global_accept_rate() {
        let l = Limiter::new(Limits {
            accept_rate: Some(Rate {
                per_second: 1.0,
                burst: 2,
            }),
            ..Limits::default()
        });
        assert!(l.admit(ip("10.0.0.1"), 0).is_ok());
        assert!(l.admit(ip("10.0.0.2"), 0).is_ok());
        assert_eq!(l.admit(ip("10.0.0.3"), 0), Err(RejectReason::AcceptRate));
        assert!(l.admit(ip("10.0.0.3"), S).is_ok());
    }

    #[test]
    fn deny_wins_over_allow() {
        let l = Limiter::new(Limits {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.1.0.0/16".parse().unwrap()],
            ..Limits::default()
        });
        assert!(l.admit(ip("10.2.3.4"), 0).is_ok());
        assert_eq!(l.admit(ip("10.1.2.3"), 0), Err(RejectReason::Denied));
        assert_eq!(l.admit(ip("192.168.1.1"), 0), Err(RejectReason::NotAllowed));
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(l.admit(ip("::ffff:10.1.2.3"), 0), Err(RejectReason::Denied));
    }

    #[test]
    fn peers_without_an_ip_only_count_against_the_accept_rate() {
        let l = Limiter::new(Limits {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            max_per_ip: Some(1),
            accept_rate: Some(Rate {
                per_second: 1.0,
                burst: 2,
            }),
            ..Limits::default()
        });
        // Not on the allow list, yet admitted, twice: no IP, no per-IP key.
        assert_eq!(l.admit(None, 0), Ok(None));
        assert_eq!(l.admit(None, 0), Ok(None));
        assert_eq!(l.admit(None, 0), Err(RejectReason::AcceptRate));
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let l = Limiter::new(Limits {
            max_per_ip: Some(1),
            ..Limits::default()
        });
        l.admit(ip("2001:db8:1:2::1"), 0).unwrap();
        assert_eq!(
            l.admit(ip("2001:db8:1:2:ffff::9"), 0),
            Err(RejectReason::PerIpConnections),
            "same /64"
        );
        assert!(l.admit(ip("2001:db8:1:3::1"), 0).is_ok(), "another /64");
        let l48 = Limiter::new(Limits {
            max_per_ip: Some(1),
            ipv6_prefix: 48,
            ..Limits::default()
        });
        l48.admit(ip("2001:db8:1:2::1"), 0).unwrap();
        assert!(l48.admit(ip("2001:db8:1:3::1"), 0).is_err(), "same /48");
    }

    #[test]
    fn state_stays_bounded_under_100k_sources() {
        let l = Limiter::new(Limits {
            max_per_ip: Some(5),
            rate_per_ip: Some(Rate {
                per_second: 0.001,
                burst: 1,
            }),
            max_tracked_ips: 1000,
            ..Limits::default()
        });
        // 100,000 distinct sources, each connecting once and leaving: entries with a drained
        // bucket must be kept, yet the map never exceeds its cap.
        for i in 0..100_000u32 {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
            let key = l.admit(src, u64::from(i)).unwrap().unwrap();
            l.release(key, u64::from(i));
            assert!(l.tracked() <= 1000);
        }
        // Without rate limiting, entries vanish when their last connection closes.
        let plain = Limiter::new(Limits {
            max_per_ip: Some(5),
            ..Limits::default()
        });
        for i in 0..100_000u32 {
            let key = plain
                .admit(IpAddr::from(std::net::Ipv4Addr::from(i)), 0)
                .unwrap()
                .unwrap();
            plain.release(key, 0);
        }
        assert_eq!(plain.tracked(), 0);
        // Full of addresses that all hold connections: new addresses are refused.
        let held = Limiter::new(Limits {
            max_per_ip: Some(5),
            max_tracked_ips: 10,
            ..Limits::default()
        });
        for i in 0..10u32 {
            held.admit(IpAddr::from(std::net::Ipv4Addr::from(i)), 0)
                .unwrap();
        }
        assert_eq!(
            held.admit(IpAddr::from(std::net::Ipv4Addr::from(99u32)), 0),
            Err(RejectReason::TooManyAddresses)
        );
    }
}
