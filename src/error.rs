//! The crate's error types.
//!
//! Configuration problems are [`ConfigError`]s (each names the bad input and how to fix it);
//! what a call (binding, reloading, upgrading, stopping) returns is an [`Error`]; what goes
//! wrong while serving, with no caller to return it to, reaches the error hook as a
//! [`ServeError`]. A failure that can happen both ways (TLS settings that cannot be loaded,
//! an upgrade that fails) has a variant in each, around the same inner error. Connection
//! I/O itself uses `std::io::Error`, as every `AsyncRead`/`AsyncWrite` does.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::Addr;

/// A configuration value that berth cannot run with.
///
/// Returned by [`Config::validate`](crate::Config::validate) and by everything that binds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `address` is empty.
    #[error("address is empty: set it to HOST:PORT, e.g. \"127.0.0.1:7000\"")]
    EmptyAddress,
    /// `address` has no `:PORT` part.
    #[error("address {0:?} has no port: write it as HOST:PORT, e.g. \"{0}:7000\"")]
    MissingPort(String),
    /// The port is not a number from 0 to 65535.
    #[error("address {address:?} has an invalid port {port:?}: use a number from 0 to 65535")]
    InvalidPort {
        /// The whole address as given.
        address: String,
        /// The part after the last `:`.
        port: String,
    },
    /// The host part is neither an IP address nor a resolvable host name.
    #[error(
        "address {address:?} cannot be resolved: {reason}; use an IP address or a resolvable host name"
    )]
    InvalidAddress {
        /// The whole address as given.
        address: String,
        /// Why it could not be used.
        reason: String,
    },
    /// `idle_timeout` is zero.
    #[error(
        "idle_timeout is zero: leave it unset to disable idle reaping, or give a positive duration"
    )]
    ZeroIdleTimeout,
    /// A connection limit is out of range.
    #[error("invalid limit: {0}")]
    InvalidLimit(String),
    /// A duration setting is out of range (too short to be useful, or zero where that
    /// means nothing).
    #[error("invalid {name}: {reason}")]
    InvalidDuration {
        /// The setting, as written in a config file (`tls.watch`, `overload.max_lag`).
        name: &'static str,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// PROXY protocol is on but no proxy is trusted, so no connection could be served.
    #[error(
        "proxy_protocol is enabled but trusts no proxy: add the load balancer's addresses to trusted_proxies (e.g. \"10.0.0.0/8\"), or set trust_unix_peers for a proxy on a Unix socket"
    )]
    NoTrustedProxies,
    /// `handshake_timeout` is zero: no TLS client could ever connect.
    #[error("handshake_timeout is zero: give TLS clients time to shake hands (default 10s)")]
    ZeroHandshakeTimeout,
    /// `max_connections` is zero, so no connection could ever be served.
    #[error("max_connections is 0: leave it unset for no limit, or give at least 1")]
    ZeroMaxConnections,
    /// `backlog` is zero or larger than the kernel can take.
    #[error("backlog {0} is out of range: use 1 to {max}", max = i32::MAX)]
    InvalidBacklog(u32),
    /// No runtime was given and none could be chosen: no adapter feature applies (with only
    /// the `tokio` feature, berth was called outside a tokio runtime).
    #[error(
        "no async runtime: call berth inside a tokio runtime (feature `tokio`, berth::runtime::Tokio), enable the `smol` (default) or `async-std` feature, or pass a runtime with Builder::runtime"
    )]
    NoRuntime,
    /// The runtime has no reactor for real sockets (a simulator, or a runtime berth has no
    /// listener for), so berth cannot bind one for it.
    #[error(
        "the runtime has no reactor for real sockets (see Runtime::reactor): serve a Listener of your own with Builder::listener"
    )]
    NoReactor,
    /// Two listeners have the same name (names identify listeners in events and across
    /// upgrades).
    #[error(
        "two listeners are named {0:?}: give one of them another `name` (unnamed listeners are named by their address or path, numbered when repeated)"
    )]
    DuplicateListenerName(String),
    /// A listener's `name` is empty.
    #[error("a listener's name is empty: leave `name` unset to name it by its address")]
    EmptyListenerName,
    /// The runtime lacks a driver berth needs (tokio built without `enable_time` or
    /// `enable_io`).
    #[error(
        "the tokio runtime has no {0} driver: build it with enable_all() (or enable_io() and enable_time())"
    )]
    RuntimeDriverMissing(&'static str),
    /// The configuration asks for something this build of berth does not include.
    #[error(
        "`{field}` is set but berth was built without its `{feature}` feature: enable it in Cargo.toml (berth = {{ features = [\"{feature}\"] }}) or remove `{field}`"
    )]
    FeatureDisabled {
        /// The config field.
        field: &'static str,
        /// The cargo feature it needs.
        feature: &'static str,
    },
    /// A timeout is too large to be meaningful (it would overflow the clock).
    #[error("{name} of {value:?} is too large: use at most {max:?}")]
    TimeoutTooLarge {
        /// The config field.
        name: &'static str,
        /// The value given.
        value: Duration,
        /// The largest accepted value.
        max: Duration,
    },
    /// `unix.path` is empty.
    #[error("unix.path is empty: give the socket file's path, e.g. \"/run/app/app.sock\"")]
    EmptyUnixPath,
    /// `unix.path` is longer than a Unix socket address can hold.
    #[error(
        "unix.path {path:?} is {len} bytes, more than the {max} a Unix socket address holds: use a shorter path (or a relative one)"
    )]
    UnixPathTooLong {
        /// The path given.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `unix.mode` has bits beyond the permission bits.
    #[error("unix.mode {0:#o} is not a file mode: use permission bits such as 0o660")]
    InvalidUnixMode(u32),
    /// A Unix socket was asked for without `unix` settings, or a TCP bind was asked for
    /// with them.
    #[error(
        "{0}: set `unix` and call bind_unix for a Unix socket, leave it unset and call bind for TCP"
    )]
    ListenerMismatch(&'static str),
}

/// What a call returns when it fails: binding ([`Builder::bind`](crate::Builder::bind),
/// [`Server::bind`](crate::Server::bind)), reloading TLS settings, upgrading, installing
/// signal handlers, stopping. What goes wrong while serving reaches the error hook as a
/// [`ServeError`] instead.
///
/// Its `Debug` output is its message (with the cause), so `fn main() -> Result<(),
/// berth::Error>` prints a sentence, not a struct dump; `{:#?}` shows the structure.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The TLS settings cannot be used.
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The listening socket could not be created or bound.
    #[error(
        "cannot listen on {addr}: {source}; {}", bind_hint(.addr, .source)
    )]
    Bind {
        /// The address berth tried to bind.
        addr: Addr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// An upgrade failed; the server keeps serving.
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    #[error("upgrade failed: {0}")]
    Upgrade(#[from] UpgradeError),
    /// Signal handlers could not be installed (see [`Signals`](crate::signal::Signals)).
    #[error("cannot install handlers for SIGTERM and SIGINT: {0}")]
    Signal(#[source] io::Error),
    /// Graceful shutdown hit its deadline and force-closed the connections still open.
    ///
    /// Its message starts with golib's "timeout on stopping socket".
    #[error(
        "timeout on stopping socket: {forced} connection(s) force-closed after the {grace:?} grace period ({drained} drained)"
    )]
    ShutdownTimeout {
        /// Connections that were still open at the deadline and were force-closed.
        forced: usize,
        /// Connections that finished by themselves while draining.
        drained: usize,
        /// The grace period that ran out.
        grace: Duration,
    },
}

/// What goes wrong while a server serves, with no call to return it to: the error hook
/// ([`Builder::on_error`](crate::Builder::on_error),
/// [`ServerHandle::on_error`](crate::ServerHandle::on_error)) receives it. The server
/// carries on after each (only [`Start`](Self::Start) means there is no server).
///
/// Like [`Error`], its `Debug` output is its message; `{:#?}` shows the structure.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Binding or building the server failed ([`Builder::bind`](crate::Builder::bind),
    /// [`Builder::listener`](crate::Builder::listener)). The call returns the same error;
    /// the hook is told too, so that one hook sees every failure (a hook that prints and a
    /// `main` that prints the returned error print it twice).
    #[error(transparent)]
    Start(Error),
    /// Certificates re-read by the TLS watch (`tls.watch`) cannot be used; the previous
    /// ones stay in force (also reported as
    /// [`ServerEvent::TlsReloadFailed`](crate::ServerEvent::TlsReloadFailed)).
    /// [`ServerHandle::reload_tls`](crate::ServerHandle::reload_tls) returns the same
    /// failure as [`Error::Tls`].
    #[error("invalid TLS configuration: {0}")]
    TlsReload(crate::tls::TlsError),
    /// A configured certificate is expired or not yet valid (reported at load time: at
    /// bind, at a reload; serving goes on, but clients will reject the certificate).
    #[error("certificate {} is outside its validity period (valid from {} to {}, Unix seconds): renew it", .0.source, .0.not_before, .0.not_after)]
    CertificateNotValid(crate::tls::ValidityWarning),
    /// A certificate could not be obtained or renewed from the ACME directory
    /// ([`AcmeConfig`](crate::tls::acme::AcmeConfig)); berth tries again after `retry_in`
    /// and serves the current certificate, if any, meanwhile.
    #[error(
        "no ACME certificate for {domains}: {source}; retrying in {retry_in:?} (the current certificate, if any, is served meanwhile)"
    )]
    Acme {
        /// The names of the certificate, comma-separated.
        domains: String,
        /// What failed.
        #[source]
        source: crate::tls::acme::AcmeError,
        /// When berth tries again.
        retry_in: Duration,
    },
    /// `accept` failed in a way that makes berth back off (for example EMFILE: too many open
    /// files). Reported once per episode; accepting resumes by itself when the cause clears.
    #[error(
        "accept failed, backing off for {backoff:?}: {source}; raise the file-descriptor limit (ulimit -n) or lower max_connections"
    )]
    Accept {
        /// The operating system's error.
        #[source]
        source: io::Error,
        /// How long berth waits before the next attempt.
        backoff: Duration,
    },
    /// A connection handler panicked. The connection was closed; the server keeps serving.
    #[error("handler of connection {conn_id} panicked: {message}")]
    HandlerPanicked {
        /// The connection's id.
        conn_id: u64,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// A user hook (event or tune hook) panicked. The panic was contained.
    #[error("the {hook} hook panicked: {message}")]
    HookPanicked {
        /// Which hook.
        hook: &'static str,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The per-socket tune hook returned an error; that connection was closed.
    #[error("tune hook failed for connection from {peer}: {source}")]
    Tune {
        /// The client's address.
        peer: Addr,
        /// The hook's error.
        #[source]
        source: io::Error,
    },
    /// An upgrade failed where no caller waits for it (one SIGHUP started, in
    /// [`ServerHandle::run`](crate::ServerHandle::run) or `shutdown_on`), or the handover
    /// channel failed in a way that is not fatal (ticket keys that cannot be passed or
    /// read, the new process's ready message); the server keeps serving.
    /// [`ServerHandle::upgrade`](crate::ServerHandle::upgrade) returns its failure as
    /// [`Error::Upgrade`].
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    #[error("upgrade failed: {0}")]
    Upgrade(UpgradeError),
    /// A message to systemd (`NOTIFY_SOCKET`: `READY=1`, `WATCHDOG=1`, `STOPPING=1`...)
    /// could not be sent; the server serves on. Check the socket systemd passed.
    #[error("cannot notify systemd through NOTIFY_SOCKET: {0}")]
    Notify(#[source] io::Error),
}

/// What to do when binding `addr` failed with `source`.
fn bind_hint(addr: &Addr, source: &io::Error) -> &'static str {
    use io::ErrorKind::*;
    match (addr, source.kind()) {
        (Addr::Unix(_), NotFound) => "create the socket's directory first",
        (Addr::Unix(_), AddrInUse) => "stop the server on that path or choose another path",
        (Addr::Unix(_), AlreadyExists) => "move that file away or choose another path",
        (Addr::Unix(_), PermissionDenied) => {
            "let this process write to the socket's directory (and set the group it was given)"
        }
        (Addr::Unix(_), _) => "check the path and the process's permissions on its directory",
        (_, AddrInUse) => {
            "another process (or another server in this one) listens on that port: stop it, pick another port, or use port 0"
        }
        (_, AddrNotAvailable) => {
            "that IP address is not one of this machine's: use one it has, 127.0.0.1, or 0.0.0.0 for all"
        }
        (_, PermissionDenied) => {
            "ports below 1024 need privileges (CAP_NET_BIND_SERVICE or root): use a higher port"
        }
        (_, Unsupported) => "this address family is not available here (IPv6 disabled?)",
        _ => "check the address and that the process may listen on it",
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            return self.fmt_structure(f);
        }
        fmt_sentence(self, f)
    }
}

// The hook's errors print like the calls': a hook that logs `{e:?}` gets a sentence too.
impl std::fmt::Debug for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            return self.fmt_structure(f);
        }
        fmt_sentence(self, f)
    }
}

/// What `?` in main prints: the message, then each cause not already in it.
fn fmt_sentence(
    error: &dyn std::error::Error,
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    let message = error.to_string();
    f.write_str(&message)?;
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            write!(f, "\n  caused by: {text}")?;
        }
        source = cause.source();
    }
    Ok(())
}

impl Error {
    fn fmt_structure(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => f.debug_tuple("Config").field(e).finish(),
            Error::Tls(e) => f.debug_tuple("Tls").field(e).finish(),
            Error::Bind { addr, source } => f
                .debug_struct("Bind")
                .field("addr", addr)
                .field("source", source)
                .finish(),
            Error::ShutdownTimeout {
                forced,
                drained,
                grace,
            } => f
                .debug_struct("ShutdownTimeout")
                .field("forced", forced)
                .field("drained", drained)
                .field("grace", grace)
                .finish(),
            Error::Signal(e) => f.debug_tuple("Signal").field(e).finish(),
            #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
            Error::Upgrade(e) => f.debug_tuple("Upgrade").field(e).finish(),
        }
    }
}

impl ServeError {
    fn fmt_structure(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Start(e) => f.debug_tuple("Start").field(e).finish(),
            ServeError::TlsReload(e) => f.debug_tuple("TlsReload").field(e).finish(),
            ServeError::CertificateNotValid(w) => {
                f.debug_tuple("CertificateNotValid").field(w).finish()
            }
            ServeError::Acme {
                domains,
                source,
                retry_in,
            } => f
                .debug_struct("Acme")
                .field("domains", domains)
                .field("source", source)
                .field("retry_in", retry_in)
                .finish(),
            ServeError::Accept { source, backoff } => f
                .debug_struct("Accept")
                .field("source", source)
                .field("backoff", backoff)
                .finish(),
            ServeError::HandlerPanicked { conn_id, message } => f
                .debug_struct("HandlerPanicked")
                .field("conn_id", conn_id)
                .field("message", message)
                .finish(),
            ServeError::HookPanicked { hook, message } => f
                .debug_struct("HookPanicked")
                .field("hook", hook)
                .field("message", message)
                .finish(),
            ServeError::Tune { peer, source } => f
                .debug_struct("Tune")
                .field("peer", peer)
                .field("source", source)
                .finish(),
            ServeError::Notify(e) => f.debug_tuple("Notify").field(e).finish(),
            #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
            ServeError::Upgrade(e) => f.debug_tuple("Upgrade").field(e).finish(),
        }
    }
}

// Public as `berth::upgrade::UpgradeError`; defined here so that `Error` and `ServeError`
// can carry it without the vocabulary importing the upgrade mechanism.
/// Why an upgrade failed. The old process keeps serving; a later upgrade may be tried.
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Another upgrade of this server is under way.
    #[error("another upgrade is under way: wait for it to finish")]
    InProgress,
    /// The server is not serving (not started, draining, or already upgraded).
    #[error("the server is not serving (not started, shutting down, or already upgraded)")]
    NotRunning,
    /// The new program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The new process exited before it was ready.
    #[error("the new process exited before it was ready ({0})")]
    Exited(String),
    /// The new process was not ready in time; it was killed.
    #[error("the new process was not ready within {0:?} (upgrade_timeout); it was killed")]
    Timeout(Duration),
    /// The handover channel failed.
    #[error("handing the listeners over failed: {0}")]
    Channel(#[source] io::Error),
    /// A shutdown began while the new process was starting: it was stopped, and this
    /// server stops as asked.
    #[error("a shutdown began during the upgrade: the new process was stopped")]
    ShuttingDown,
    /// A socket to hand over has a name that is empty, not one line, or already used.
    #[error("cannot hand over a socket named {0:?}: give it a unique, non-empty one-line name")]
    BadName(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(addr: &str, kind: io::ErrorKind) -> Error {
        Error::Bind {
            addr: addr.parse::<std::net::SocketAddr>().unwrap().into(),
            source: io::Error::from(kind),
        }
    }

    #[test]
    fn bind_hints_fit_the_error() {
        let in_use = bind("127.0.0.1:7000", io::ErrorKind::AddrInUse).to_string();
        assert!(in_use.contains("listens on that port"), "{in_use}");
        let not_here = bind("10.9.9.9:7000", io::ErrorKind::AddrNotAvailable).to_string();
        assert!(not_here.contains("not one of this machine's"), "{not_here}");
        assert!(!not_here.contains("another process"), "{not_here}");
        let denied = bind("0.0.0.0:80", io::ErrorKind::PermissionDenied).to_string();
        assert!(denied.contains("below 1024"), "{denied}");
        let unix = Error::Bind {
            addr: Addr::Unix(Some(std::path::Path::new("/nope/a.sock").into())),
            source: io::Error::from(io::ErrorKind::NotFound),
        }
        .to_string();
        assert!(unix.contains("create the socket's directory"), "{unix}");
    }

    #[test]
    fn debug_is_the_message_so_main_prints_a_sentence() {
        let err = Error::from(ConfigError::EmptyAddress);
        assert_eq!(format!("{err:?}"), err.to_string());
        let tls = Error::from(crate::tls::TlsError::Read {
            path: "cert.pem".into(),
            reason: "No such file or directory (os error 2)".into(),
        });
        assert_eq!(
            format!("{tls:?}"),
            "invalid TLS configuration: cannot read cert.pem: No such file or directory (os error 2)"
        );
        // The structure is one `#` away.
        assert!(format!("{tls:#?}").starts_with("Tls("), "{tls:#?}");
        // A cause not already in the message is added.
        let accept = ServeError::Accept {
            source: io::Error::other("too many open files"),
            backoff: Duration::from_millis(5),
        };
        assert!(!format!("{accept:?}").contains("caused by"), "{accept:?}");
    }

    #[test]
    fn a_failure_told_to_the_hook_reads_as_the_call_returns_it() {
        let tls = || crate::tls::TlsError::Read {
            path: "cert.pem".into(),
            reason: "No such file or directory (os error 2)".into(),
        };
        let reload = ServeError::TlsReload(tls());
        assert_eq!(reload.to_string(), Error::Tls(tls()).to_string());
        let returned = bind("127.0.0.1:7000", io::ErrorKind::AddrInUse);
        let (text, debug) = (returned.to_string(), format!("{returned:?}"));
        let start = ServeError::Start(returned);
        assert_eq!(start.to_string(), text);
        assert_eq!(format!("{start:?}"), debug);
        assert!(
            format!("{start:#?}").starts_with("Start(\n    Bind {"),
            "{start:#?}"
        );
    }
}
