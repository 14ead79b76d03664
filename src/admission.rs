//! Admission state: the token buckets and the per-client-IP table behind
//! [`Limits`](crate::limits::Limits), checked right after accept (direct clients) or once a
//! PROXY header gave the client's address.
//!
//! The per-IP table is an ordered map (deterministic under simulation) plus an ordered index
//! of the addresses that have no open connection, by when they went idle. At the
//! `max_tracked_ips` cap, a new address evicts the one idle the longest: O(log n), never a
//! scan, so a flood of new addresses at the cap costs the accept loop no more than any other
//! admission.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

use crate::limits::{Limits, Rate, RejectReason};
use crate::sync::lock;

/// A client's key in the per-IP table: the address, IPv6 masked to the configured prefix.
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
        let has = self.has_token(rate, now);
        if has {
            self.tokens -= 1.0;
        }
        has
    }

    /// Refills, then whether a token is there (without taking it).
    fn has_token(&mut self, rate: Rate, now: u64) -> bool {
        self.refill(rate, now);
        self.tokens >= 1.0
    }
}

#[derive(Debug)]
struct Entry {
    active: usize,
    bucket: Option<Bucket>,
    /// When the last connection closed, while none is open: the entry's key in `idle`.
    idle_since: Option<u64>,
}

#[derive(Debug, Default)]
struct Table {
    entries: BTreeMap<IpKey, Entry>,
    /// `(idle_since, key)` of every entry with no open connection, oldest first.
    idle: BTreeSet<(u64, IpKey)>,
}

impl Table {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets the address idle the longest. False when every address has connections.
    fn evict_oldest_idle(&mut self) -> bool {
        match self.idle.pop_first() {
            Some((_, key)) => {
                self.entries.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// The live admission state of one server.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: Limits,
    global: Mutex<Option<Bucket>>,
    per_ip: Mutex<Table>,
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Limiter {
        Limiter {
            limits,
            global: Mutex::new(None),
            per_ip: Mutex::new(Table::default()),
        }
    }

    /// Whether admission does anything at all (so the accept loop can skip it).
    pub(crate) fn is_active(&self) -> bool {
        let l = &self.limits;
        l.per_ip() || l.accept_rate.is_some() || !l.allow.is_empty() || !l.deny.is_empty()
    }

    /// The key of `ip` (IPv4-mapped addresses already turned into IPv4 by `admit`): IPv6
    /// addresses are grouped by their `ipv6_prefix`.
    fn key(&self, ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let prefix = u32::from(self.limits.ipv6_prefix);
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                IpKey(IpAddr::V6(Ipv6Addr::from(bits & mask)))
            }
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
        let Some(ip) = ip.filter(|_| l.per_ip()) else {
            self.take_global(now)?;
            return Ok(None);
        };
        let key = self.key(ip);
        let mut table = lock(&self.per_ip);
        if !table.entries.contains_key(&key)
            && table.len() >= l.max_tracked_ips
            && !table.evict_oldest_idle()
        {
            return Err(RejectReason::TooManyAddresses);
        }
        let Table { entries, idle } = &mut *table;
        let new = !entries.contains_key(&key);
        let entry = entries.entry(key).or_insert_with(|| Entry {
            active: 0,
            bucket: l.rate_per_ip.map(|r| Bucket::full(r, now)),
            idle_since: None,
        });
        if l.max_per_ip.is_some_and(|max| entry.active >= max) {
            return Err(RejectReason::PerIpConnections);
        }
        // A refused entry keeps its drained bucket: forgetting it would reset the rate.
        if let (Some(rate), Some(bucket)) = (l.rate_per_ip, entry.bucket.as_mut()) {
            if !bucket.has_token(rate, now) {
                return Err(RejectReason::PerIpRate);
            }
        }
        // The server-wide rate last: a client refused by its own limits must not use up
        // everyone's tokens.
        if let Err(reason) = self.take_global(now) {
            if new {
                entries.remove(&key);
            }
            return Err(reason);
        }
        if let Some(bucket) = entry.bucket.as_mut() {
            bucket.tokens -= 1.0;
        }
        if let Some(since) = entry.idle_since.take() {
            idle.remove(&(since, key));
        }
        entry.active += 1;
        Ok(Some(key))
    }

    /// Takes a token of the server-wide accept rate, if one is set.
    fn take_global(&self, now: u64) -> Result<(), RejectReason> {
        if let Some(rate) = self.limits.accept_rate {
            let mut global = lock(&self.global);
            if !global
                .get_or_insert_with(|| Bucket::full(rate, now))
                .take(rate, now)
            {
                return Err(RejectReason::AcceptRate);
            }
        }
        Ok(())
    }

    /// A connection admitted under `key` has ended.
    pub(crate) fn release(&self, key: IpKey, now: u64) {
        let mut table = lock(&self.per_ip);
        let Table { entries, idle } = &mut *table;
        let Some(entry) = entries.get_mut(&key) else {
            return;
        };
        entry.active = entry.active.saturating_sub(1);
        if entry.active > 0 {
            return;
        }
        if self.forgettable(entry, now) {
            entries.remove(&key);
        } else if entry.idle_since.is_none() {
            entry.idle_since = Some(now);
            idle.insert((now, key));
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

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        lock(&self.per_ip).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Rate;

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
    fn a_client_refused_by_its_own_limits_takes_no_server_wide_token() {
        let l = Limiter::new(Limits {
            max_per_ip: Some(1),
            rate_per_ip: Some(Rate {
                per_second: 0.001,
                burst: 1,
            }),
            accept_rate: Some(Rate {
                per_second: 0.001,
                burst: 2,
            }),
            ..Limits::default()
        });
        let a = l.admit(ip("10.0.0.1"), 0).unwrap().unwrap();
        // Refused by its own connection cap, then (once that frees) by its own rate.
        for _ in 0..10 {
            assert_eq!(
                l.admit(ip("10.0.0.1"), 0),
                Err(RejectReason::PerIpConnections)
            );
        }
        l.release(a, 0);
        for _ in 0..10 {
            assert_eq!(l.admit(ip("10.0.0.1"), 0), Err(RejectReason::PerIpRate));
        }
        // The server-wide rate has one token left, for someone else.
        assert!(l.admit(ip("10.0.0.2"), 0).is_ok());
        assert_eq!(l.admit(ip("10.0.0.3"), 0), Err(RejectReason::AcceptRate));
        assert_eq!(
            l.tracked(),
            2,
            "the refused newcomer leaves no entry behind"
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

    #[test]
    fn at_the_cap_the_address_idle_longest_makes_room() {
        let l = Limiter::new(Limits {
            max_per_ip: Some(5),
            rate_per_ip: Some(Rate {
                per_second: 0.001,
                burst: 1,
            }),
            max_tracked_ips: 3,
            ..Limits::default()
        });
        let a = ip("10.0.0.1");
        let b = ip("10.0.0.2");
        let c = ip("10.0.0.3");
        // a and b go idle (drained buckets keep them tracked), a first; c stays connected.
        let ka = l.admit(a, 0).unwrap().unwrap();
        let kb = l.admit(b, 0).unwrap().unwrap();
        l.admit(c, 0).unwrap();
        l.release(ka, S);
        l.release(kb, 2 * S);
        assert_eq!(l.tracked(), 3);
        // A new address evicts a (idle since 1 s), not b (2 s) or c (connected).
        l.admit(ip("10.0.0.4"), 3 * S).unwrap();
        assert_eq!(l.tracked(), 3);
        assert_eq!(
            l.admit(b, 3 * S),
            Err(RejectReason::PerIpRate),
            "b kept its drained bucket"
        );
        // a was forgotten: it comes back with a full bucket (evicting b, now idle longest).
        assert!(l.admit(a, 3 * S).is_ok());
        // a, c and 10.0.0.4 all hold connections: no room for anyone new.
        assert_eq!(
            l.admit(ip("10.0.0.5"), 3 * S),
            Err(RejectReason::TooManyAddresses)
        );
    }
}
