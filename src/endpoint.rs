//! One listener of a server as its connections see it: its name, its address, and the TLS
//! configuration new connections on it take.
//!
//! The configuration sits behind a lock of its own per listener, so that a reload swaps it
//! whole while connections keep the one they started with (an `Arc`), and listeners reload
//! independently.

use std::sync::Arc;

use crate::addr::Addr;

/// The TLS configuration new connections use, swapped whole by a reload.
#[cfg(feature = "tls")]
pub(crate) type TlsSetting = Option<Arc<rustls::ServerConfig>>;
#[cfg(not(feature = "tls"))]
pub(crate) type TlsSetting = Option<std::convert::Infallible>;

/// One listener of a server, as its connections see it: its name, its address, and the TLS
/// configuration new connections on it use (swapped whole by a reload).
#[derive(Debug)]
pub(crate) struct Endpoint {
    name: Arc<str>,
    addr: Addr,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls: std::sync::RwLock<TlsSetting>,
    /// The settings its TLS configuration was loaded from, when they are to be watched.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    watched: Option<crate::tls::TlsConfig>,
    /// Its ticket keys and session cache, kept across reloads (and handed to the next
    /// process at an upgrade); `None` for plain listeners and ready-made rustls configs.
    #[cfg(feature = "tls")]
    resumption: Option<crate::tls::Resumption>,
}

impl Endpoint {
    pub(crate) fn new(name: Arc<str>, addr: Addr, tls: TlsSetting) -> Self {
        Endpoint {
            name,
            addr,
            tls: std::sync::RwLock::new(tls),
            watched: None,
            #[cfg(feature = "tls")]
            resumption: None,
        }
    }

    /// With `resumption` as its ticket keys and session cache.
    #[cfg(feature = "tls")]
    pub(crate) fn with_resumption(mut self, resumption: Option<crate::tls::Resumption>) -> Self {
        self.resumption = resumption;
        self
    }

    /// Its ticket keys and session cache, if berth made them.
    #[cfg(feature = "tls")]
    pub(crate) fn resumption(&self) -> Option<&crate::tls::Resumption> {
        self.resumption.as_ref()
    }

    /// Watch `tls`'s files for this endpoint (see `reload`).
    pub(crate) fn watching(mut self, tls: Option<crate::tls::TlsConfig>) -> Self {
        self.watched = tls.filter(|tls| tls.watch.is_some());
        self
    }

    /// The settings to watch, if any.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn watched(&self) -> Option<&crate::tls::TlsConfig> {
        self.watched.as_ref()
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The TLS configuration new connections use, if this listener serves TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        crate::sync::read(&self.tls).clone()
    }

    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls().is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Replaces the TLS configuration of a TLS listener; false for a plain one.
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&self, config: Arc<rustls::ServerConfig>) -> bool {
        let mut current = crate::sync::write(&self.tls);
        if current.is_none() {
            return false;
        }
        *current = Some(config);
        true
    }
}
