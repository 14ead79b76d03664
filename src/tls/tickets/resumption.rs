//! One listener's resumption state: its ticket keys and session-ID cache, put into each
//! rustls configuration a reload builds.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Clock, TicketKeys, key_file_error};
use crate::tls::{TlsConfig, TlsError};

/// One listener's resumption state: its ticket keys and session-ID cache, kept across
/// certificate reloads (a reload builds a new rustls configuration around the same state).
#[derive(Clone)]
pub(crate) struct Resumption {
    /// `None` without tickets.
    keys: Option<Arc<TicketKeys>>,
    /// `None` with resumption off.
    cache: Option<Arc<rustls::server::ServerSessionMemoryCache>>,
    /// The key file, when the keys come from one.
    key_file: Option<PathBuf>,
}

impl fmt::Debug for Resumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resumption")
            .field("keys", &self.keys)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Resumption {
    /// The state `tls` asks for: random rotating keys or the key file's, and the cache.
    pub(crate) fn new(tls: &TlsConfig, clock: Clock) -> Result<Resumption, TlsError> {
        if !tls.session_resumption {
            return Ok(Resumption {
                keys: None,
                cache: None,
                key_file: None,
            });
        }
        let keys = match (&tls.session_tickets, &tls.ticket_key_file) {
            (false, _) => None,
            (true, Some(path)) => {
                let bytes = std::fs::read(path).map_err(|e| key_file_error(path, e.to_string()))?;
                Some(TicketKeys::from_bytes(
                    path,
                    &bytes,
                    tls.ticket_lifetime,
                    clock,
                )?)
            }
            (true, None) => Some(TicketKeys::rotating_with(
                tls.ticket_lifetime,
                tls.ticket_rotation,
                clock,
            )?),
        };
        Ok(Resumption {
            key_file: tls
                .ticket_key_file
                .clone()
                .filter(|_| keys.as_ref().is_some_and(|k| k.is_from_file())),
            keys,
            cache: (tls.session_cache_size > 0)
                .then(|| rustls::server::ServerSessionMemoryCache::new(tls.session_cache_size)),
        })
    }

    /// Puts this state into a rustls configuration.
    pub(crate) fn apply(&self, config: &mut rustls::ServerConfig) {
        config.session_storage = match &self.cache {
            Some(cache) => cache.clone(),
            None => Arc::new(rustls::server::NoServerSessionStorage {}),
        };
        match &self.keys {
            Some(keys) => config.ticketer = keys.clone(),
            // Without a cache either, nothing can resume: send no TLS 1.3 ticket at all.
            None if self.cache.is_none() => config.send_tls13_tickets = 0,
            None => {}
        }
    }

    /// The random, rotating keys (the ones an upgrade hands over), if any.
    pub(crate) fn rotating_keys(&self) -> Option<&Arc<TicketKeys>> {
        self.keys.as_ref().filter(|k| !k.is_from_file())
    }

    /// The key file and the keys read from it, if the keys come from one.
    pub(crate) fn key_file(&self) -> Option<(&PathBuf, &Arc<TicketKeys>)> {
        Some((self.key_file.as_ref()?, self.keys.as_ref()?))
    }
}
