//! Unix domain sockets on async-io's reactor. The socket file is created with its mode and
//! group set before `listen`, replaces only a stale file, and is removed when the listener
//! is dropped. Streams report the peer's credentials.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_io::Async;
use socket2::{Domain, SockAddr, Socket, Type};

use super::{Accepted, Listener};
use crate::addr::Addr;
#[cfg(any(target_os = "linux", target_os = "android"))]
use crate::addr::PeerCred;
use crate::config::{Config, UnixConfig};
use crate::error::{ConfigError, Error};

/// A Unix domain socket listener built from a [`Config`]'s [`unix`](Config::unix)
/// settings (path, mode, group) and its backlog.
///
/// Connections carry [`Addr::Unix`] addresses and the peer's credentials
/// ([`Conn::peer_cred`](crate::Conn::peer_cred)). IP allow/deny lists, per-IP limits and the
/// PROXY protocol do not apply to them: the file's permissions decide who may connect.
#[derive(Debug)]
pub struct UnixListener {
    inner: Async<std::os::unix::net::UnixListener>,
    path: Option<Arc<Path>>,
    /// Device and inode of the socket file this listener created, so that dropping it
    /// removes that file and never one a newer server put at the same path.
    created: Option<(u64, u64)>,
}

impl UnixListener {
    /// Validates `config` and listens on `config.unix`.
    ///
    /// Errors: [`Error::Config`] for an invalid config or when `config.unix` is `None`;
    /// [`Error::Bind`] when a server is already listening on the path
    /// (`AddrInUse`), the path is a file that is not a socket (`AlreadyExists`), or the
    /// operating system refuses (permissions, the mode or group cannot be set).
    pub fn bind(config: &Config) -> Result<Self, Error> {
        config.validate_settings()?;
        let Some(unix) = &config.unix else {
            return Err(ConfigError::ListenerMismatch("no `unix` settings to bind").into());
        };
        let path: Arc<Path> = Arc::from(unix.path.as_path());
        let err = |source| Error::Bind {
            addr: Addr::Unix(Some(path.clone())),
            source,
        };
        remove_stale(&path).map_err(err)?;
        // validate_settings() checked that the backlog fits in an i32.
        let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
        socket
            .bind(&SockAddr::unix(&path).map_err(err)?)
            .map_err(err)?;
        let listening = (|| {
            let created = std::fs::symlink_metadata(&path)?;
            set_owner_and_mode(&path, unix)?;
            // Only now can clients connect: before listen() they are refused.
            socket.listen(backlog)?;
            socket.set_nonblocking(true)?;
            let std: std::os::unix::net::UnixListener = socket.into();
            Ok((Async::new(std)?, (created.dev(), created.ino())))
        })();
        match listening {
            Ok((inner, created)) => Ok(UnixListener {
                inner,
                path: Some(path),
                created: Some(created),
            }),
            Err(source) => {
                let _ = std::fs::remove_file(&path);
                Err(err(source))
            }
        }
    }

    /// Wraps an already-listening std Unix listener (for example one inherited from a
    /// parent process). Its socket file is left alone when the listener is dropped.
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<Self> {
        let path = listener.local_addr()?.as_pathname().map(Arc::from);
        Ok(UnixListener {
            inner: Async::new(listener)?,
            path,
            created: None,
        })
    }
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
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
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
        let (stream, peer) = self.inner.accept().await?;
        Ok(Accepted {
            stream: super::AsyncStream(stream),
            peer_addr: Addr::Unix(peer.as_pathname().map(Arc::from)),
            local_addr: Addr::Unix(self.path.clone()),
        })
    }

    fn local_addr(&self) -> io::Result<Addr> {
        Ok(Addr::Unix(self.path.clone()))
    }
}

/// An accepted Unix domain socket connection (see [`AsyncStream`](super::AsyncStream)),
/// which also knows the peer's credentials.
pub type UnixStream = super::AsyncStream<std::os::unix::net::UnixStream>;

impl super::Stream for UnixStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_readable(cx)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn peer_cred(&self) -> Option<PeerCred> {
        let cred = rustix::net::sockopt::socket_peercred(self.0.get_ref()).ok()?;
        Some(PeerCred {
            uid: cred.uid.as_raw(),
            gid: cred.gid.as_raw(),
            pid: Some(cred.pid.as_raw_pid()),
        })
    }
}
