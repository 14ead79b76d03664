//! `HOST:PORT` parsed strictly, and resolved when the host is a name.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::error::ConfigError;

/// Parses `HOST:PORT` strictly, so that mistakes get a precise error instead of a DNS
/// lookup of garbage.
pub(crate) fn parse_address(address: &str) -> Result<SocketAddr, ConfigError> {
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::EmptyAddress);
    }
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A bare IPv6 address ("::1") contains colons but no port.
    if trimmed.parse::<IpAddr>().is_ok() {
        return Err(ConfigError::MissingPort(trimmed.to_owned()));
    }
    let Some((host, port)) = trimmed.rsplit_once(':') else {
        return Err(ConfigError::MissingPort(trimmed.to_owned()));
    };
    let invalid_port = || ConfigError::InvalidPort {
        address: trimmed.to_owned(),
        port: port.to_owned(),
    };
    // Digits only: `u16::from_str` would also take a sign ("+80").
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_port());
    }
    let port: u16 = port.parse().map_err(|_| invalid_port())?;
    let invalid = |reason: String| ConfigError::InvalidAddress {
        address: trimmed.to_owned(),
        reason,
    };
    // Brackets enclose an IPv6 address, whole: "[::1]:80", never "[::1:80" or "[1.2.3.4]:80".
    if let Some(inner) = host.strip_prefix('[') {
        return match inner
            .strip_suffix(']')
            .map(str::parse::<std::net::Ipv6Addr>)
        {
            Some(Ok(ip)) => Ok(SocketAddr::new(IpAddr::V6(ip), port)),
            _ => Err(invalid(format!(
                "{host:?} is not an IPv6 address in brackets"
            ))),
        };
    }
    if host.contains(['[', ']']) {
        return Err(invalid(format!("{host:?} has an unbalanced bracket")));
    }
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    // Digits and dots that are not a valid IPv4 address ("010.0.0.1", "127.1"): the system
    // resolver would read them its own way (octal, short forms), never as written.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(invalid(format!(
            "{host:?} is not an IPv4 address: write four decimal numbers from 0 to 255, without leading zeros"
        )));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(ConfigError::InvalidAddress {
            address: trimmed.to_owned(),
            reason: format!("{host:?} is not an IP address or host name"),
        });
    }
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|e| ConfigError::InvalidAddress {
            address: trimmed.to_owned(),
            reason: e.to_string(),
        })?;
    // Prefer IPv4 for names like "localhost" that resolve to both: it is what clients try
    // first on most systems.
    let all: Vec<SocketAddr> = resolved.collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| ConfigError::InvalidAddress {
            address: trimmed.to_owned(),
            reason: "the name resolves to no address".to_owned(),
        })
}
