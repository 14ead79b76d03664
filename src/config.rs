//! Server configuration: one plain struct, serde-friendly, with every default in one place
//! (the table is on [`Config`]); the settings of one more listener, of a Unix socket and of
//! the overload actions are in modules of their own.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

mod address;
mod listener;
mod overload;
#[cfg(test)]
mod tests;

pub(crate) use address::parse_address;
pub use listener::{ListenerConfig, UnixConfig};
pub use overload::Overload;

/// How a server listens and treats its connections.
///
/// | field             | default            | meaning                                                        |
/// |-------------------|--------------------|----------------------------------------------------------------|
/// | `address`         | `"127.0.0.1:7000"` | `HOST:PORT` to listen on; port 0 picks a free port             |
/// | `idle_timeout`    | unset (off)        | close connections with no read/write progress for this long    |
/// | `drain_timeout`   | `10s`              | grace period of [`ServerHandle::shutdown`](crate::ServerHandle::shutdown) |
/// | `nodelay`         | `true`             | set `TCP_NODELAY` on every accepted socket                     |
/// | `backlog`         | `1024`             | kernel accept queue length                                     |
/// | `reuse_port`      | `false`            | set `SO_REUSEPORT` so several processes can share the port     |
/// | `max_connections` | unset (no limit)   | stop accepting while this many connections are open            |
/// | `linger_timeout`  | `2s`               | lingering close after a handler returns first (0: off)         |
/// | `handshake_timeout` | `10s`            | TLS clients must finish the handshake within this              |
/// | `max_handshakes`  | unset (no limit)   | at most this many TLS handshakes at once; the others wait      |
/// | `limits`          | all off            | per-IP and global limits, allow/deny, see [`Limits`](crate::limits::Limits) |
/// | `proxy_protocol`  | unset (off)        | PROXY header from trusted proxies, see [`ProxyProtocol`](crate::ProxyProtocol) |
/// | `tls`             | unset (plain TCP)  | TLS settings (served with feature `tls`), see [`TlsConfig`](crate::tls::TlsConfig) |
/// | `unix`            | unset (TCP)        | listen on a Unix socket instead, see [`UnixConfig`]             |
/// | `listeners`       | none               | more listeners, see [`ListenerConfig`]                          |
/// | `upgrade_timeout` | `30s`              | how long an upgrade waits for the new process to be ready       |
/// | `overload`        | all off            | staged actions under pressure, see [`Overload`]                 |
/// | `first_request_grace` | `1s`           | in a drain, time for a connection that sent nothing yet to send |
/// | `lame_duck`       | unset (off)        | before a graceful shutdown, keep serving this long while not ready |
///
/// Durations are written the human way in TOML/JSON/YAML: `"30s"`, `"5m"`, `"250ms"`.
/// New fields may be added in minor releases, so build one with [`Config::new`] (or
/// `Default`, or a configuration file) and set fields on it:
///
/// ```
/// let mut config = berth::Config::new("127.0.0.1:0");
/// config.idle_timeout = Some(std::time::Duration::from_secs(30));
///
/// let from_file: berth::Config = toml::from_str(r#"
///     address = "127.0.0.1:0"
///     idle_timeout = "30s"
///     max_connections = 10000
/// "#).unwrap();
/// from_file.validate().unwrap();
/// assert_eq!(from_file.idle_timeout, config.idle_timeout);
/// ```
///
/// A bad value is an error, never a panic. `toml` names the offending key in its message;
/// `serde_json` gives only a line and column (`invalid type: string "x", expected u32 at
/// line 1 column 13`). For JSON errors that name the field, deserialize through
/// [`serde_path_to_error`](https://docs.rs/serde_path_to_error), which every field of
/// `Config` supports (tested over every field in `tests/fuzz.rs`):
///
/// ```
/// let mut de = serde_json::Deserializer::from_str(r#"{"limits": {"max_per_ip": "x"}}"#);
/// let err = serde_path_to_error::deserialize::<_, berth::Config>(&mut de).unwrap_err();
/// assert_eq!(err.path().to_string(), "limits.max_per_ip");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `HOST:PORT` to listen on. `HOST` may be an IPv4 address, a bracketed IPv6 address
    /// (`"[::1]:7000"`), a host name that resolves, or empty (`":7000"`: all IPv4 interfaces).
    pub address: String,
    /// Close a connection that made no read or write progress for longer than this.
    /// `None` disables idle reaping. Sub-second values work (at least 1 ms).
    ///
    /// One scanner sweeps every connection each tick (about an eighth of the timeout, 10 ms
    /// to 1 s): a connection is closed within `[timeout, timeout + tick]` of its last
    /// progress, never earlier; an event loop so busy that a sweep runs late adds that
    /// lateness and at most one more tick.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Grace period of [`ServerHandle::shutdown`](crate::ServerHandle::shutdown): how long
    /// handlers may take to finish before they are force-closed.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Set `TCP_NODELAY` on accepted sockets (on by default: request/response protocols
    /// want their small writes sent at once).
    pub nodelay: bool,
    /// Length of the kernel's queue of connections not yet accepted.
    pub backlog: u32,
    /// Set `SO_REUSEPORT` on the listening socket (Unix only; ignored elsewhere).
    pub reuse_port: bool,
    /// At most this many connections open at once. At the limit berth stops calling
    /// `accept`, so new clients wait in the kernel backlog instead of being accepted and
    /// dropped. `None`: no limit.
    pub max_connections: Option<usize>,
    /// When a handler returns while the peer has not closed its side, berth half-closes
    /// (sends FIN after everything written) and discards incoming data until the peer closes
    /// or this passes. Closing with unread data would make the kernel reset the connection
    /// and could destroy responses still in flight. `0s` closes at once. The connection
    /// counts as open until its socket is closed.
    #[serde(with = "humantime_serde")]
    pub linger_timeout: Duration,
    /// A TLS client that has not completed its handshake within this is dropped.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// At most this many TLS handshakes run at once; the others wait (within
    /// `handshake_timeout`), so a flood of full handshakes cannot take all the CPU from
    /// established connections. `None`: no limit.
    pub max_handshakes: Option<usize>,
    /// Per-address and global connection limits, allow/deny lists (all off by default).
    pub limits: crate::limits::Limits,
    /// Read a PROXY-protocol header (v1 or v2) from these trusted proxies and use the
    /// original client address; `None`: off.
    pub proxy_protocol: Option<crate::proxy::ProxyProtocol>,
    /// Serve TLS with these settings; `None` serves plain TCP. Needs the `tls` feature:
    /// without it, binding fails with [`ConfigError::FeatureDisabled`].
    pub tls: Option<crate::tls::TlsConfig>,
    /// Listen on this Unix domain socket instead of `address`. `None`: TCP.
    pub unix: Option<UnixConfig>,
    /// In a drain (shutdown or upgrade), a connection that has sent nothing yet is told to
    /// drain only once it sends its first bytes or is this old: a client whose connect the
    /// kernel completed just before accepting stopped still gets its first request served
    /// (Go's net/http spares new connections the same way, for 5 s). `0s`: no grace.
    #[serde(with = "humantime_serde")]
    pub first_request_grace: Duration,
    /// Lame duck: on a graceful shutdown ([`ServerHandle::shutdown`](crate::ServerHandle::shutdown),
    /// [`ServerHandle::run`](crate::ServerHandle::run) on SIGTERM), first keep accepting and
    /// serving this long while reporting not ready
    /// ([`ServerHandle::is_ready`](crate::ServerHandle::is_ready), `/readyz`), so load
    /// balancers stop sending new clients before the listener closes; then drain. A second
    /// shutdown call or signal, or `shutdown_within`, ends it early. Unset: off.
    #[serde(with = "humantime_serde")]
    pub lame_duck: Option<Duration>,
    /// Staged actions under pressure (descriptors, connections, event-loop lag): shrink the
    /// idle timeout, evict the connections idle the longest; all off by default. See
    /// [`Overload`].
    pub overload: Overload,
    /// How long an upgrade waits for the new process to be ready before it gives up (and
    /// kills it); see [`ServerHandle::upgrade`](crate::ServerHandle::upgrade).
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    /// More listeners, beside the one `address` (or `unix`) and `tls` describe: each with
    /// its own name and TLS setting, served by the same server (one pool, one set of limits,
    /// one drain).
    pub listeners: Vec<ListenerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: "127.0.0.1:7000".to_owned(),
            idle_timeout: None,
            drain_timeout: Duration::from_secs(10),
            nodelay: true,
            backlog: 1024,
            reuse_port: false,
            max_connections: None,
            linger_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: None,
            limits: crate::limits::Limits::default(),
            proxy_protocol: None,
            tls: None,
            unix: None,
            first_request_grace: Duration::from_secs(1),
            lame_duck: None,
            overload: Overload::default(),
            upgrade_timeout: Duration::from_secs(30),
            listeners: Vec::new(),
        }
    }
}

impl Config {
    /// The largest timeout berth accepts: a year. Larger values are almost certainly a unit
    /// mistake, and would overflow `Instant` arithmetic on some platforms.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

    /// A default configuration listening on `address`.
    pub fn new(address: impl Into<String>) -> Self {
        Config {
            address: address.into(),
            ..Config::default()
        }
    }

    /// Checks every field, resolving the addresses. Binding calls this too, so calling it
    /// yourself is only needed to fail early (e.g. when loading a configuration file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.unix.is_none() {
            self.resolve_address()?;
        }
        self.validate_settings()
    }

    /// The listener the top-level `address` (or `unix`) and `tls` describe, then
    /// `listeners`: every listener a [`bind`](crate::Builder::bind) binds.
    pub fn all_listeners(&self) -> Vec<ListenerConfig> {
        let mut first = match &self.unix {
            Some(unix) => ListenerConfig::unix(unix.clone()),
            None => ListenerConfig::tcp(self.address.clone()),
        };
        first.tls = self.tls.clone();
        std::iter::once(first)
            .chain(self.listeners.iter().cloned())
            .collect()
    }

    /// The names of [`all_listeners`](Self::all_listeners), in order. A listener without
    /// a [`name`](ListenerConfig::name) is named after its address or path, and when that
    /// repeats an earlier listener's (two `127.0.0.1:0` listeners), it gets `#2`, `#3`...:
    /// the same configuration gives the same names, which an upgrade matches sockets by.
    /// Names given explicitly must be unique.
    pub fn listener_names(&self) -> Vec<String> {
        let first = match &self.unix {
            Some(unix) => unix.path.display().to_string(),
            None => self.address.clone(),
        };
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        std::iter::once((first, false))
            .chain(self.listeners.iter().map(|l| (l.name(), l.name.is_some())))
            .map(|(name, explicit)| {
                let count = seen.entry(name.clone()).or_default();
                *count += 1;
                if explicit || *count == 1 {
                    name
                } else {
                    format!("{name}#{count}")
                }
            })
            .collect()
    }

    /// Everything `validate` checks except the address (which a server given its own
    /// listener does not use).
    pub(crate) fn validate_settings(&self) -> Result<(), ConfigError> {
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroIdleTimeout);
        }
        if self
            .idle_timeout
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            return Err(ConfigError::InvalidDuration {
                name: "idle_timeout",
                reason: "below 1ms the idle scanner would spin; give at least 1ms".into(),
            });
        }
        let watches = std::iter::once(&self.tls)
            .chain(self.listeners.iter().map(|l| &l.tls))
            .filter_map(|tls| tls.as_ref()?.watch);
        for watch in watches {
            if watch < Duration::from_millis(10) {
                return Err(ConfigError::InvalidDuration {
                    name: "tls.watch",
                    reason: format!(
                        "{watch:?} would read the certificate files in a busy loop: look at most every 10ms (e.g. \"1s\")"
                    ),
                });
            }
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::ZeroHandshakeTimeout);
        }
        for (name, value) in [
            ("idle_timeout", self.idle_timeout),
            ("drain_timeout", Some(self.drain_timeout)),
            ("linger_timeout", Some(self.linger_timeout)),
            ("handshake_timeout", Some(self.handshake_timeout)),
            ("upgrade_timeout", Some(self.upgrade_timeout)),
            ("first_request_grace", Some(self.first_request_grace)),
            ("lame_duck", self.lame_duck),
        ] {
            if let Some(value) = value.filter(|v| *v > Self::MAX_TIMEOUT) {
                return Err(ConfigError::TimeoutTooLarge {
                    name,
                    value,
                    max: Self::MAX_TIMEOUT,
                });
            }
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::ZeroMaxConnections);
        }
        if self.max_handshakes == Some(0) {
            return Err(ConfigError::InvalidLimit(
                "max_handshakes must be at least 1 (leave it unset for no limit)".into(),
            ));
        }
        if self.backlog == 0 || i32::try_from(self.backlog).is_err() {
            return Err(ConfigError::InvalidBacklog(self.backlog));
        }
        self.limits.validate()?;
        self.overload.validate()?;
        if self
            .proxy_protocol
            .as_ref()
            .is_some_and(|p| p.trusted_proxies.is_empty() && !p.trust_unix_peers)
        {
            return Err(ConfigError::NoTrustedProxies);
        }
        if let Some(unix) = &self.unix {
            unix.validate()?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, name) in self.listener_names().into_iter().enumerate() {
            // The first is `address`/`unix`, checked above (the address only when binding:
            // a server given its own listener does not use it).
            if let Some(listener) = index.checked_sub(1).map(|i| &self.listeners[i]) {
                listener.validate()?;
            }
            if !names.insert(name.clone()) {
                return Err(ConfigError::DuplicateListenerName(name));
            }
        }
        self.check_compiled_in(cfg!(feature = "tls"))
    }

    /// Fails when the config asks for TLS and this build has no TLS.
    fn check_compiled_in(&self, tls: bool) -> Result<(), ConfigError> {
        let wants_tls = self.tls.is_some() || self.listeners.iter().any(|l| l.tls.is_some());
        if wants_tls && !tls {
            return Err(ConfigError::FeatureDisabled {
                field: "tls",
                feature: "tls",
            });
        }
        let wants_acme = std::iter::once(&self.tls)
            .chain(self.listeners.iter().map(|l| &l.tls))
            .any(|tls| tls.as_ref().is_some_and(|tls| tls.acme.is_some()));
        if wants_acme && !cfg!(feature = "acme") {
            return Err(ConfigError::FeatureDisabled {
                field: "tls.acme",
                feature: "acme",
            });
        }
        Ok(())
    }

    /// Parses (and, for host names, resolves) `address` into the socket address to bind.
    pub fn resolve_address(&self) -> Result<SocketAddr, ConfigError> {
        parse_address(&self.address)
    }
}
