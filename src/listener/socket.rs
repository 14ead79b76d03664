//! Listening sockets built with socket2, so that backlog, `SO_REUSEADDR` and `SO_REUSEPORT`
//! are ours to choose (async-net's own `bind` fixes the backlog at 128 and never sets
//! `SO_REUSEPORT`; tokio's uses 1024), and sockets passed by systemd. Shared by the TCP and
//! Unix listeners on every reactor.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::error::Error;

/// The first socket passed by systemd socket activation (`LISTEN_FDS`/`LISTEN_PID`), if
/// this process was given one (registering it makes it non-blocking).
pub(crate) fn inherited_tcp() -> Result<Option<std::net::TcpListener>, Error> {
    listenfd::ListenFd::from_env()
        .take_tcp_listener(0)
        .map_err(|source| Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)).into(),
            source,
        })
}

/// The socket options every listener of a server shares, from its config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketOptions {
    /// The kernel's queue of connections not yet accepted.
    pub(crate) backlog: u32,
    /// `SO_REUSEPORT` on TCP listening sockets (Unix only).
    pub(crate) reuse_port: bool,
    /// `TCP_NODELAY` on accepted TCP streams.
    pub(crate) nodelay: bool,
}

impl SocketOptions {
    pub(crate) fn of(config: &Config) -> Self {
        SocketOptions {
            backlog: config.backlog,
            reuse_port: config.reuse_port,
            nodelay: config.nodelay,
        }
    }
}

/// A bound, listening std listener on `addr` (already resolved).
pub(crate) fn bind_tcp(
    addr: SocketAddr,
    options: &SocketOptions,
) -> Result<std::net::TcpListener, Error> {
    let bind_err = |source| Error::Bind {
        addr: addr.into(),
        source,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_err)?;
    // SO_REUSEADDR lets a restarted server bind while old connections sit in TIME-WAIT; on
    // Unix it never allows two live listeners on one port (that is SO_REUSEPORT).
    #[cfg(unix)]
    socket.set_reuse_address(true).map_err(bind_err)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    if options.reuse_port {
        socket.set_reuse_port(true).map_err(bind_err)?;
    }
    socket.bind(&addr.into()).map_err(bind_err)?;
    listen(socket, options.backlog)
        .map(Into::into)
        .map_err(bind_err)
}

/// Listens with `backlog` (checked by `validate_settings` to fit an i32); registering the
/// socket with a reactor makes it non-blocking.
pub(crate) fn listen(socket: Socket, backlog: u32) -> io::Result<Socket> {
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// The reactor, or [`ConfigError::NoReactor`](crate::error::ConfigError::NoReactor) when
/// the runtime has none (a simulator).
pub(crate) fn check_reactor(
    reactor: Option<&dyn super::Reactor>,
) -> Result<&dyn super::Reactor, Error> {
    reactor.ok_or_else(|| crate::error::ConfigError::NoReactor.into())
}

/// A descriptor of a listening socket of its own, to hand over.
#[cfg(unix)]
pub(crate) fn dup(socket: std::os::fd::BorrowedFd<'_>) -> Option<std::os::fd::OwnedFd> {
    socket.try_clone_to_owned().ok()
}

/// Whether a listening socket has a connection waiting (a zero-timeout `poll`); `true`
/// when that cannot be told.
#[cfg(unix)]
pub(crate) fn has_pending(socket: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &socket,
        rustix::event::PollFlags::IN,
    )];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&now)).map_or(true, |ready| ready > 0)
}
