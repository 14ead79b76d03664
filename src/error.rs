//! The crate's error types.
//!
//! Configuration problems are [`ConfigError`]s (each names the bad input and how to fix it);
//! everything the server reports at run time is an [`Error`]. Connection I/O itself uses
//! `std::io::Error`, as every `AsyncRead`/`AsyncWrite` does.

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
    /// No runtime was given and no runtime adapter feature is enabled.
    #[error(
        "no async runtime: enable berth's `smol` (default) or `async-std` feature, or pass one with Builder::runtime"
    )]
    NoRuntime,
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

/// Everything that can go wrong while binding, serving or stopping a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The TLS settings cannot be used.
    #[cfg(feature = "tls")]
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A configured certificate is expired or not yet valid (reported to the error hook at
    /// load time; serving goes on, but clients will reject the certificate).
    #[cfg(feature = "tls")]
    #[error("certificate {} is outside its validity period (valid from {} to {}, Unix seconds): renew it", .0.source, .0.not_before, .0.not_after)]
    CertificateNotValid(crate::tls::ValidityWarning),
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
    /// Graceful shutdown hit its deadline and force-closed the connections still open.
    ///
    /// Its message starts with golib's "timeout on stopping socket".
    #[error(
        "timeout on stopping socket: {forced} connection(s) force-closed after {deadline:?} ({drained} drained)"
    )]
    ShutdownTimeout {
        /// Connections that were still open at the deadline and were force-closed.
        forced: usize,
        /// Connections that finished by themselves while draining.
        drained: usize,
        /// The grace period that ran out.
        deadline: Duration,
    },
}

/// What to check when binding `addr` failed with `source`.
fn bind_hint(addr: &Addr, source: &io::Error) -> &'static str {
    use io::ErrorKind::*;
    match (addr, source.kind()) {
        (Addr::Unix(_), NotFound) => "create the socket's directory first",
        (Addr::Unix(_), AddrInUse) => "stop the server on that path or choose another path",
        (Addr::Unix(_), AlreadyExists) => "move that file away or choose another path",
        (Addr::Unix(_), _) => {
            "can this process write to the socket's directory (and set the group it was given)?"
        }
        _ => "is another process using the port, or does it need privileges?",
    }
}

/// Turns a panic payload into a printable message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
