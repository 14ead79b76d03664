//! The settings of one more listener (`Config::listeners`) and of a Unix socket.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::parse_address;
use crate::error::ConfigError;

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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
