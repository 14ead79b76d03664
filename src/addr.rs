//! [`Addr`]: where a connection comes from or arrives at, an IP socket address or a Unix
//! socket path; and [`PeerCred`], who is on the other end of a Unix socket.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// A connection's address: an IP socket address (TCP, also under simulation) or a Unix
/// domain socket path.
///
/// Compares equal to a [`SocketAddr`] when it holds that address, so tests and handlers that
/// only deal with TCP can write `conn.peer_addr() == &expected` or use
/// [`as_socket_addr`](Self::as_socket_addr).
///
/// ```
/// use std::net::SocketAddr;
/// let ip: SocketAddr = "127.0.0.1:7000".parse().unwrap();
/// let addr = berth::Addr::from(ip);
/// assert_eq!(addr, ip);
/// assert_eq!(addr.as_socket_addr(), Some(ip));
/// assert_eq!(addr.to_string(), "127.0.0.1:7000");
/// assert_eq!(berth::Addr::Unix(None).to_string(), "unix:(unnamed)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addr {
    /// An IP socket address.
    Ip(SocketAddr),
    /// A Unix domain socket: its path, or `None` for an unnamed socket (what a client's
    /// end usually is, since clients rarely bind a path).
    Unix(Option<Arc<Path>>),
}

impl Addr {
    /// The IP socket address, if this is one.
    pub fn as_socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Addr::Ip(addr) => Some(*addr),
            Addr::Unix(_) => None,
        }
    }

    /// The IP address, if this is an IP socket address (e.g. to key per-client state).
    ///
    /// ```
    /// let addr = berth::Addr::from("[::1]:80".parse::<std::net::SocketAddr>().unwrap());
    /// assert_eq!(addr.ip(), Some(std::net::Ipv6Addr::LOCALHOST.into()));
    /// assert_eq!(berth::Addr::Unix(None).ip(), None);
    /// ```
    pub fn ip(&self) -> Option<IpAddr> {
        self.as_socket_addr().map(|addr| addr.ip())
    }

    /// The Unix socket's path, if this is a named Unix socket.
    pub fn as_unix_path(&self) -> Option<&Path> {
        match self {
            Addr::Unix(path) => path.as_deref(),
            Addr::Ip(_) => None,
        }
    }

    /// Whether this is a Unix domain socket address (named or not).
    pub fn is_unix(&self) -> bool {
        matches!(self, Addr::Unix(_))
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Self {
        Addr::Ip(addr)
    }
}

impl PartialEq<SocketAddr> for Addr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.as_socket_addr() == Some(*other)
    }
}

impl PartialEq<SocketAddr> for &Addr {
    fn eq(&self, other: &SocketAddr) -> bool {
        (*self).eq(other)
    }
}

impl PartialEq<Addr> for &Addr {
    fn eq(&self, other: &Addr) -> bool {
        **self == *other
    }
}

/// IP addresses print as `ip:port`; Unix sockets as `unix:PATH` or `unix:(unnamed)`.
impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(addr) => addr.fmt(f),
            Addr::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            Addr::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

/// The credentials of the process on the other end of a Unix domain socket, as the kernel
/// recorded them when it connected (`SO_PEERCRED`). See
/// [`Conn::peer_cred`](crate::Conn::peer_cred).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id, where the platform reports it.
    pub pid: Option<i32>,
}
