//! TLS session ticket keys across an upgrade (feature `tls`): the old process writes each
//! listener's random keys into a socket pair and hands the read end over under a reserved
//! name, so sessions issued there resume in the new process; the keys never touch disk,
//! the environment or argv.

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{TICKET_KEYS, UpgradeError};
use crate::core::Core;
use crate::error::ServeError;
use crate::hooks::Hooks;

/// The largest message [`message`] carries (a socket pair's buffer holds it without a reader).
const MAX_MESSAGE: usize = 64 * 1024;

/// The listeners' random ticket keys, as a socket for the new process, so sessions issued
/// here resume there. `None` when there are none; a failure is reported and the upgrade
/// goes on without them (sessions then do one full handshake).
pub(crate) fn export(core: &Core) -> Option<OwnedFd> {
    let listeners: Vec<(String, Vec<u8>)> = core
        .endpoints()
        .iter()
        .filter_map(|e| {
            let keys = e.resumption()?.rotating_keys()?;
            Some((e.name().to_string(), keys.export()))
        })
        .collect();
    if listeners.is_empty() {
        return None;
    }
    let bytes = crate::tls::encode_handover(&listeners);
    message(&bytes)
        .map_err(|e| {
            core.hooks()
                .error(&ServeError::Upgrade(UpgradeError::Channel(e)))
        })
        .ok()
}

/// The ticket keys of the process this one replaces, by listener name; empty when there
/// are none. Not fatal when they cannot be read (reported to `hooks`): sessions then do a
/// full handshake once.
pub(crate) fn import(hooks: &Hooks) -> BTreeMap<String, Vec<u8>> {
    match read_message(TICKET_KEYS) {
        Ok(None) => Default::default(),
        Ok(Some(bytes)) => crate::tls::decode_handover(&bytes).unwrap_or_else(|| {
            let e = io::Error::new(
                io::ErrorKind::InvalidData,
                "the ticket keys handed over are malformed: new keys are used",
            );
            hooks.error(&ServeError::Upgrade(UpgradeError::Channel(e)));
            Default::default()
        }),
        Err(e) => {
            hooks.error(&ServeError::Upgrade(UpgradeError::Channel(e)));
            Default::default()
        }
    }
}

/// A socket holding `bytes` for the new process to read ([`read_message`]): the read end
/// of a socket pair whose write end wrote them and closed. Errors when they do not fit.
fn message(bytes: &[u8]) -> io::Result<OwnedFd> {
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::other("the message is too long for the handover"));
    }
    let (mut writer, reader) = UnixStream::pair()?;
    // Nobody reads until the new process runs: never block on a full buffer.
    writer.set_nonblocking(true)?;
    writer.write_all(bytes)?;
    drop(writer);
    Ok(reader.into())
}

/// Reads what [`message`] holds, from the socket handed over under `name`, if there is one.
fn read_message(name: &str) -> io::Result<Option<Vec<u8>>> {
    let Some(fd) = super::take_socket(name)? else {
        return Ok(None);
    };
    let stream = UnixStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut bytes = Vec::new();
    stream
        .take(MAX_MESSAGE as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}
