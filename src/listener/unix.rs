//! Unix domain sockets, on the reactor of the runtime that serves them. The socket file is
//! created with its mode and group set before `listen`, replaces only a stale file, and is
//! removed when the listener is dropped. Streams report the peer's credentials.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, SockAddr, Socket as RawSocket, Type};

use super::{Accepted, Listener, ListeningSocket, Reactor};
use crate::addr::Addr;
use crate::config::{Config, UnixConfig};
use crate::error::{ConfigError, Error};

/// A Unix domain socket listener built from a [`Config`]'s [`unix`](Config::unix)
/// settings (path, mode, group) and its backlog, on the reactor of the runtime that will
/// serve it.
///
/// Connections carry [`Addr::Unix`] addresses and the peer's credentials
/// ([`Conn::peer_cred`](crate::Conn::peer_cred)). IP allow/deny lists and per-IP limits do
/// not apply to them: the file's permissions decide who may connect.
#[derive(Debug)]
pub struct UnixListener {
    inner: Box<dyn ListeningSocket>,
    path: Option<Arc<Path>>,
    /// Device and inode of the socket file this listener created, so that dropping it
    /// removes that file and never one a newer server put at the same path.
    created: Option<(u64, u64)>,
    /// Set when the socket was handed to a new process, which serves the file from then on.
    keep_file: Arc<AtomicBool>,
}

super::boxed::boxed_stream!(
    /// An accepted Unix domain socket connection, polled on the reactor of the runtime that
    /// serves it, which also knows the peer's credentials. Closing it shuts down the write side.
    UnixStream
);

impl UnixListener {
    /// Validates `config` and listens on `config.unix`, for `reactor` (a runtime's
    /// `Runtime::reactor`).
    ///
    /// Errors: [`Error::Config`] for an invalid config, when `config.unix` is `None`, or for
    /// a runtime without a reactor; [`Error::Bind`] when a server is already listening on
    /// the path (`AddrInUse`), the path is a file that is not a socket (`AlreadyExists`), or
    /// the operating system refuses (permissions, the mode or group cannot be set).
    pub fn bind(config: &Config, reactor: Option<&dyn Reactor>) -> Result<Self, Error> {
        config.validate_settings()?;
        let reactor = super::socket::check_reactor(reactor)?;
        let Some(unix) = &config.unix else {
            return Err(ConfigError::ListenerMismatch("no `unix` settings to bind").into());
        };
        Self::bind_path(unix, config.backlog, Some(reactor))
    }

    /// Listens on `unix` (already validated) with `backlog`, for `reactor`.
    pub(crate) fn bind_path(
        unix: &UnixConfig,
        backlog: u32,
        reactor: Option<&dyn Reactor>,
    ) -> Result<Self, Error> {
        let reactor = super::socket::check_reactor(reactor)?;
        let path: Arc<Path> = Arc::from(unix.path.as_path());
        let err = |source| Error::Bind {
            addr: Addr::Unix(Some(path.clone())),
            source,
        };
        remove_stale(&path).map_err(err)?;
        let socket = RawSocket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
        socket
            .bind(&SockAddr::unix(&path).map_err(err)?)
            .map_err(err)?;
        let listening = (|| {
            let created = std::fs::symlink_metadata(&path)?;
            set_owner_and_mode(&path, unix)?;
            // Only now can clients connect: before listen() they are refused.
            let socket = super::socket::listen(socket, backlog)?;
            let inner = register(socket.into(), reactor)?;
            Ok((inner, (created.dev(), created.ino())))
        })();
        match listening {
            Ok((inner, created)) => Ok(UnixListener {
                inner,
                path: Some(path),
                created: Some(created),
                keep_file: Arc::default(),
            }),
            Err(source) => {
                let _ = std::fs::remove_file(&path);
                Err(err(source))
            }
        }
    }

    /// Serves an already-listening std Unix listener (for example one inherited from a
    /// parent process) on `reactor`. Its socket file is left alone when the listener is
    /// dropped.
    pub fn from_std(
        listener: std::os::unix::net::UnixListener,
        reactor: Option<&dyn Reactor>,
    ) -> Result<Self, Error> {
        let reactor = super::socket::check_reactor(reactor)?;
        let path: Option<Arc<Path>> = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Arc::from));
        let inner = register(listener, reactor).map_err(|source| Error::Bind {
            addr: Addr::Unix(path.clone()),
            source,
        })?;
        Ok(UnixListener {
            inner,
            path,
            created: None,
            keep_file: Arc::default(),
        })
    }

    /// Serves a listening socket an upgrade handed over: like `from_std`, but the file at
    /// its path (if it is this very socket's) is this listener's to remove, as if it had
    /// created it; not before the server says it is ready, though (it starts out kept): a
    /// new process that fails before must not remove the file the old one still serves.
    pub(crate) fn adopt(
        listener: std::os::unix::net::UnixListener,
        reactor: Option<&dyn Reactor>,
    ) -> Result<Self, Error> {
        let mut adopted = Self::from_std(listener, reactor)?;
        adopted.keep_file.store(true, Ordering::Release);
        adopted.created = adopted.path.as_deref().and_then(|path| {
            let meta = std::fs::symlink_metadata(path).ok()?;
            meta.file_type()
                .is_socket()
                .then(|| (meta.dev(), meta.ino()))
        });
        Ok(adopted)
    }
}

/// Makes a listening socket non-blocking and registers it with `reactor`.
fn register(
    listener: std::os::unix::net::UnixListener,
    reactor: &dyn Reactor,
) -> io::Result<Box<dyn ListeningSocket>> {
    listener.set_nonblocking(true)?;
    reactor.register_unix(listener)
}

/// Makes way for a new socket at `path`: nothing there is fine; a socket nobody accepts on
/// (left by a server that crashed) is removed; anything else is an error, so berth never
/// takes over a live server's path or deletes a file that is not a socket.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; berth will not remove it",
        ));
    }
    // Non-blocking: a live server with a full backlog answers EAGAIN instead of blocking
    // us; only "connection refused" proves that nobody listens.
    let probe = RawSocket::new(Domain::UNIX, Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(()) | Err(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a server is listening on this socket",
        )),
    }
}

fn set_owner_and_mode(path: &Path, unix: &UnixConfig) -> io::Result<()> {
    if let Some(gid) = unix.group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    if let Some(mode) = unix.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        // Like Go's UnixListener.Close: the socket file goes with the listener, so clients
        // that come after shutdown get "no such file" and the next bind finds a clean path.
        // Unless the socket lives on in a new process (an upgrade).
        if self.keep_file.load(Ordering::Acquire) {
            return;
        }
        if let (Some(path), Some(created)) = (&self.path, self.created) {
            let ours = std::fs::symlink_metadata(path)
                .is_ok_and(|meta| (meta.dev(), meta.ino()) == created);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;

    async fn accept(&self) -> io::Result<Accepted<Self::Stream>> {
        let (stream, peer_addr) = std::future::poll_fn(|cx| self.inner.poll_accept(cx)).await?;
        Ok(Accepted {
            stream: UnixStream(stream),
            peer_addr,
            local_addr: Addr::Unix(self.path.clone()),
        })
    }

    #[cfg(unix)]
    fn has_pending(&self) -> bool {
        super::socket::has_pending(self.inner.as_fd())
    }

    fn local_addr(&self) -> io::Result<Addr> {
        Ok(Addr::Unix(self.path.clone()))
    }

    fn handover(&self) -> Option<super::Handover> {
        Some(super::Handover {
            fd: super::socket::dup(self.inner.as_fd())?,
            keep_file: Some(self.keep_file.clone()),
        })
    }
}
