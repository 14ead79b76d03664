//! A server's listeners as the core holds them: each one's [`Endpoint`] in the order they
//! were configured, their sockets kept for an upgrade, and the choice of a TLS
//! configuration from a ClientHello that spans them all.
//!
//! Together because they are one set seen three ways: a reload walks the endpoints, an
//! upgrade the kept sockets, a handshake asks the choice; none needs the rest of the core.

use std::sync::Arc;

use crate::endpoint::Endpoint;

/// The listeners, their kept sockets and the TLS choice. See the module docs.
pub(crate) struct Listeners {
    /// The listeners, in the order they were configured.
    endpoints: Vec<Arc<Endpoint>>,
    /// Each listener's socket, to hand to a new process at an upgrade.
    #[cfg(unix)]
    handovers: crate::handovers::Handovers,
    /// Chooses a connection's TLS configuration from its ClientHello.
    #[cfg(feature = "tls")]
    select: Option<crate::tls::Select>,
}

impl Listeners {
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        Listeners {
            endpoints,
            #[cfg(unix)]
            handovers: Default::default(),
            #[cfg(feature = "tls")]
            select: None,
        }
    }

    /// Chooses each TLS connection's configuration from its ClientHello with `select`.
    #[cfg(feature = "tls")]
    pub(crate) fn with_select(mut self, select: Option<crate::tls::Select>) -> Self {
        self.select = select;
        self
    }

    /// The choice of a TLS configuration from a ClientHello, if any.
    #[cfg(feature = "tls")]
    pub(crate) fn select(&self) -> Option<&crate::tls::Select> {
        self.select.as_ref()
    }

    /// The listeners, in the order they were configured.
    pub(crate) fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The sockets kept for an upgrade.
    #[cfg(unix)]
    pub(crate) fn handovers(&self) -> &crate::handovers::Handovers {
        &self.handovers
    }

    /// Whether any listener serves TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_tls())
    }

    /// Replaces the TLS configuration of every TLS listener; false when none serves TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&self, config: Arc<rustls::ServerConfig>) -> bool {
        let mut any = false;
        for endpoint in &self.endpoints {
            any |= endpoint.set_tls(config.clone());
        }
        any
    }
}
