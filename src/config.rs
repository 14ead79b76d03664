//! Server configuration: one plain struct, serde-friendly, with every default in one place
//! (the table is on [`Config`]).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

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

/// What a server does when it is pressed: by descriptors in use against `RLIMIT_NOFILE`,
/// open connections against `max_connections`, or event-loop lag (how late the idle
/// scanner's tick runs). The pressure is the highest of these ratios (1.0: at a limit); its
/// level changes are reported as [`ServerEvent::Pressure`](crate::ServerEvent::Pressure),
/// each action as [`ServerEvent::Overload`](crate::ServerEvent::Overload) (and as metrics).
///
/// Without any of it, at a limit berth stops accepting (new clients wait in the kernel's
/// backlog, or, out of descriptors, accepting backs off) until a connection closes: a flood
/// of idle connections can then lock new clients out. `evict_idle_after` makes room instead.
///
/// ```
/// let mut config = berth::Config::new("0.0.0.0:7000");
/// config.max_connections = Some(10_000);
/// // At the limit, close the connection idle the longest (if idle at least 1 s) for a newcomer.
/// config.overload.evict_idle_after = Some(std::time::Duration::from_secs(1));
/// // At 80 % of a limit, reap connections idle for 5 s.
/// config.overload.shrink_idle_timeout = Some(std::time::Duration::from_secs(5));
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Overload {
    /// The pressure from which it counts as high (default 0.8).
    pub high_pressure: f64,
    /// While the pressure is high, close connections idle longer than this (when shorter
    /// than `idle_timeout`, or when there is none). `None`: off.
    #[serde(with = "humantime_serde")]
    pub shrink_idle_timeout: Option<Duration>,
    /// At the descriptor limit or at `max_connections`, when a new client needs a place,
    /// close the connection idle the longest, if it has been idle at least this long
    /// (`CloseReason::Evicted`). `None`: never evict.
    #[serde(with = "humantime_serde")]
    pub evict_idle_after: Option<Duration>,
    /// The event-loop lag that counts as full pressure. `None`: lag is not a source.
    #[serde(with = "humantime_serde")]
    pub max_lag: Option<Duration>,
}

impl Default for Overload {
    fn default() -> Self {
        Overload {
            high_pressure: 0.8,
            shrink_idle_timeout: None,
            evict_idle_after: None,
            max_lag: None,
        }
    }
}

impl Overload {
    /// Whether any action or source is configured.
    pub fn is_active(&self) -> bool {
        self.shrink_idle_timeout.is_some()
            || self.evict_idle_after.is_some()
            || self.max_lag.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.high_pressure > 0.0 && self.high_pressure <= 1.0) {
            return Err(ConfigError::InvalidLimit(format!(
                "overload.high_pressure must be in (0, 1], got {}",
                self.high_pressure
            )));
        }
        if self.shrink_idle_timeout == Some(Duration::ZERO) || self.max_lag == Some(Duration::ZERO)
        {
            return Err(ConfigError::InvalidLimit(
                "overload.shrink_idle_timeout and overload.max_lag must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// One more listening socket of a server: a TCP address or a Unix socket, a name, and
/// its own TLS setting (a plain port and a TLS port can share a server).
///
/// ```
/// let mut config = berth::Config::new("127.0.0.1:8080");
/// config.listeners.push(berth::ListenerConfig::tcp("[::1]:8080"));
/// let mut admin = berth::ListenerConfig::unix(berth::UnixConfig::new("/run/app/admin.sock"));
/// admin.name = Some("admin".into());
/// config.listeners.push(admin);
/// config.validate().unwrap();
///
/// let names: Vec<String> = config.listener_names();
/// assert_eq!(names, ["127.0.0.1:8080", "[::1]:8080", "admin"]);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// A name that identifies the listener in events, on `Conn`, and across an upgrade
    /// (the new process adopts listening sockets by name). Default: its address or path,
    /// as written.
    #[serde(default)]
    pub name: Option<String>,
    /// `HOST:PORT` to listen on (TCP); exactly one of `address` and `unix` is set.
    #[serde(default)]
    pub address: Option<String>,
    /// A Unix domain socket to listen on.
    #[serde(default)]
    pub unix: Option<UnixConfig>,
    /// TLS on this listener (feature `tls`); `None`: plain.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
}

impl ListenerConfig {
    /// A plain TCP listener on `address`.
    pub fn tcp(address: impl Into<String>) -> Self {
        ListenerConfig {
            name: None,
            address: Some(address.into()),
            unix: None,
            tls: None,
        }
    }

    /// A plain listener on a Unix domain socket.
    pub fn unix(unix: UnixConfig) -> Self {
        ListenerConfig {
            name: None,
            address: None,
            unix: Some(unix),
            tls: None,
        }
    }

    /// Its name: the one given, else its address or path as written.
    pub fn name(&self) -> String {
        match (&self.name, &self.address, &self.unix) {
            (Some(name), _, _) => name.clone(),
            (None, Some(address), _) => address.clone(),
            (None, None, Some(unix)) => unix.path.display().to_string(),
            (None, None, None) => String::new(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.address, &self.unix) {
            (Some(address), None) => {
                parse_address(address)?;
            }
            (None, Some(unix)) => unix.validate()?,
            _ => {
                return Err(ConfigError::ListenerMismatch(
                    "a listener needs exactly one of `address` and `unix`",
                ));
            }
        }
        if self.name.as_deref() == Some("") {
            return Err(ConfigError::EmptyListenerName);
        }
        Ok(())
    }
}

/// A Unix domain socket to listen on, and who may connect to it.
///
/// Binding creates the socket file with `mode` and `group` set before the socket starts
/// listening, so no client can connect while the file still has the default permissions.
/// A file left at `path` by a server that is gone (nothing accepts on it) is replaced;
/// a socket some server still listens on, or a file that is not a socket, is an error.
/// The file is removed when the server stops listening (unless another file replaced it
/// meanwhile).
///
/// ```
/// let config: berth::Config = toml::from_str(r#"
///     [unix]
///     path = "/run/app/app.sock"
///     mode = 0o660
///     group = 33
/// "#).unwrap();
/// let unix = config.unix.unwrap();
/// assert_eq!(unix.mode, Some(0o660));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UnixConfig {
    /// The socket file's path (at most 107 bytes, the kernel's limit).
    pub path: PathBuf,
    /// Permission bits of the socket file, e.g. `0o660` (TOML takes octal literals). To
    /// connect, a client needs write permission on it. `None`: what the process's umask
    /// gives.
    #[serde(default)]
    pub mode: Option<u32>,
    /// Group id to give the socket file (the process must be allowed to: be root or a
    /// member of that group). `None`: the process's group.
    #[serde(default)]
    pub group: Option<u32>,
}

impl UnixConfig {
    /// A socket at `path` with default permissions.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        UnixConfig {
            path: path.into(),
            mode: None,
            group: None,
        }
    }

    /// Checks the path's length and the mode's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // sockaddr_un holds 108 bytes including the terminating NUL.
        const MAX_PATH: usize = 107;
        let len = self.path.as_os_str().len();
        if len == 0 {
            return Err(ConfigError::EmptyUnixPath);
        }
        if len > MAX_PATH {
            return Err(ConfigError::UnixPathTooLong {
                path: self.path.clone(),
                len,
                max: MAX_PATH,
            });
        }
        if let Some(mode) = self.mode.filter(|m| *m > 0o7777) {
            return Err(ConfigError::InvalidUnixMode(mode));
        }
        Ok(())
    }
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
            return Err(ConfigError::InvalidLimit(
                "idle_timeout is below 1ms: the idle scanner would spin; give at least 1ms".into(),
            ));
        }
        let watches = std::iter::once(&self.tls)
            .chain(self.listeners.iter().map(|l| &l.tls))
            .filter_map(|tls| tls.as_ref()?.watch);
        for watch in watches {
            if watch < Duration::from_millis(10) {
                return Err(ConfigError::InvalidLimit(format!(
                    "tls.watch of {watch:?} would read the certificate files in a busy loop: look at most every 10ms (e.g. \"1s\")"
                )));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(address: &str) -> ConfigError {
        Config::new(address).validate().unwrap_err()
    }

    #[test]
    fn addresses_parse_or_fail_precisely() {
        assert_eq!(
            parse_address("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_address("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            parse_address(":7000").unwrap(),
            "0.0.0.0:7000".parse().unwrap()
        );
        assert!(parse_address("localhost:7000").unwrap().ip().is_loopback());
        assert_eq!(err(""), ConfigError::EmptyAddress);
        assert_eq!(err("   "), ConfigError::EmptyAddress);
        assert!(matches!(err("abc"), ConfigError::MissingPort(_)));
        assert!(matches!(err("localhost"), ConfigError::MissingPort(_)));
        assert!(matches!(err("::1"), ConfigError::MissingPort(_)));
        assert!(matches!(
            err("127.0.0.1:65536"),
            ConfigError::InvalidPort { .. }
        ));
        assert!(matches!(
            err("127.0.0.1:-1"),
            ConfigError::InvalidPort { .. }
        ));
        assert!(matches!(
            err("127.0.0.1:http"),
            ConfigError::InvalidPort { .. }
        ));
        assert!(matches!(err("a b:80"), ConfigError::InvalidAddress { .. }));
        assert!(matches!(
            err("no-such-host.invalid:80"),
            ConfigError::InvalidAddress { .. }
        ));
    }

    #[test]
    fn limits_are_checked() {
        let base = Config::new("127.0.0.1:0");
        assert_eq!(base.validate(), Ok(()));
        let bad = |f: fn(&mut Config)| {
            let mut c = base.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            bad(|c| c.max_connections = Some(0)),
            ConfigError::ZeroMaxConnections
        );
        assert_eq!(
            bad(|c| c.idle_timeout = Some(Duration::ZERO)),
            ConfigError::ZeroIdleTimeout
        );
        assert_eq!(bad(|c| c.backlog = 0), ConfigError::InvalidBacklog(0));
        assert_eq!(
            bad(|c| c.backlog = u32::MAX),
            ConfigError::InvalidBacklog(u32::MAX)
        );
        assert!(matches!(
            bad(|c| c.drain_timeout = Duration::from_secs(u64::MAX)),
            ConfigError::TimeoutTooLarge {
                name: "drain_timeout",
                ..
            }
        ));
    }

    #[test]
    fn proxy_protocol_must_trust_someone() {
        let with = |proxy: crate::ProxyProtocol| Config {
            proxy_protocol: Some(proxy),
            ..Config::new("127.0.0.1:0")
        };
        assert_eq!(
            with(crate::ProxyProtocol::new(Vec::new())).validate(),
            Err(ConfigError::NoTrustedProxies)
        );
        let unix_only = crate::ProxyProtocol {
            trust_unix_peers: true,
            ..crate::ProxyProtocol::new(Vec::new())
        };
        assert_eq!(with(unix_only).validate(), Ok(()));
        let proxies = crate::ProxyProtocol::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(with(proxies).validate(), Ok(()));
    }

    #[test]
    fn unix_settings_are_checked() {
        let with = |unix: UnixConfig| Config {
            unix: Some(unix),
            ..Config::default()
        };
        assert_eq!(with(UnixConfig::new("/tmp/a.sock")).validate(), Ok(()));
        assert_eq!(
            with(UnixConfig::new("")).validate(),
            Err(ConfigError::EmptyUnixPath)
        );
        let long = format!("/tmp/{}", "x".repeat(103));
        assert!(matches!(
            with(UnixConfig::new(long)).validate(),
            Err(ConfigError::UnixPathTooLong {
                len: 108,
                max: 107,
                ..
            })
        ));
        let mut bad_mode = UnixConfig::new("/tmp/a.sock");
        bad_mode.mode = Some(0o10000);
        assert_eq!(
            with(bad_mode).validate(),
            Err(ConfigError::InvalidUnixMode(0o10000))
        );
    }

    #[test]
    fn a_tls_table_parses_everywhere_and_names_the_feature_where_tls_is_missing() {
        let config: Config = toml::from_str(
            r#"
            address = "127.0.0.1:0"
            [tls]
            certificates = [{ cert = { path = "cert.pem" }, key = { path = "key.pem" } }]
            "#,
        )
        .unwrap();
        assert!(config.tls.is_some());
        assert_eq!(config.check_compiled_in(true), Ok(()));
        let err = config.check_compiled_in(false).unwrap_err();
        assert_eq!(
            err,
            ConfigError::FeatureDisabled {
                field: "tls",
                feature: "tls"
            }
        );
        let message = err.to_string();
        assert!(message.contains("`tls` feature"), "{message}");
        assert!(message.contains(r#"features = ["tls"]"#), "{message}");
    }

    #[test]
    fn serde_uses_human_durations_and_defaults() {
        let c: Config = serde_json::from_str(
            r#"{"address":"127.0.0.1:0","idle_timeout":"250ms","drain_timeout":"5m"}"#,
        )
        .unwrap();
        assert_eq!(c.idle_timeout, Some(Duration::from_millis(250)));
        assert_eq!(c.drain_timeout, Duration::from_secs(300));
        assert!(c.nodelay);
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let unknown = serde_json::from_str::<Config>(r#"{"adress":"x"}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
        let bad = serde_json::from_str::<Config>(r#"{"idle_timeout":"xyz"}"#).unwrap_err();
        assert!(bad.to_string().contains("idle_timeout") || bad.to_string().contains("xyz"));
    }
}
