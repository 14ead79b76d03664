//! Binding: the listeners a config describes, each bound from its own settings (one address,
//! resolved once when it is bound, or one Unix socket) and the few socket options the
//! server's listeners share; or adopted, when the process this one replaces handed the
//! socket over ([`upgrade`](crate::upgrade)), or taken from systemd socket activation.
//!
//! Nothing here loads TLS: a listener's TLS settings travel with it ([`Tls`]) and are loaded
//! when the server is built, the same way for a listener of your own.

use std::sync::Arc;

use crate::accept::Bound;
#[cfg(any(feature = "async-io", feature = "tokio"))]
use crate::config::{Config, ListenerConfig};
use crate::core::Core;
use crate::error::Error;
#[cfg(any(feature = "async-io", feature = "tokio"))]
use crate::listener::Reactor;
#[cfg(any(feature = "async-io", feature = "tokio"))]
use crate::listener::SocketOptions;

/// What binding produced, before the server is built.
pub(crate) struct Bindings {
    pub(crate) listeners: Vec<Binding>,
    pub(crate) inheritance: Inheritance,
}

impl Bindings {
    /// One listener of your own, nothing inherited.
    pub(crate) fn one(binding: Binding) -> Self {
        Bindings {
            listeners: vec![binding],
            inheritance: Inheritance::default(),
        }
    }
}

/// One bound listener with its name and TLS settings, before the server is built (then it
/// is an `Endpoint` and its accept loop).
pub(crate) struct Binding {
    pub(crate) name: String,
    pub(crate) listener: Box<dyn Bound>,
    pub(crate) tls: Tls,
}

/// A listener's TLS settings, before they are loaded.
pub(crate) enum Tls {
    Plain,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Load(Box<crate::tls::TlsConfig>),
    #[cfg(feature = "tls")]
    Ready(Arc<rustls::ServerConfig>),
}

impl Tls {
    /// Loads `tls` when there is one; plain otherwise.
    pub(crate) fn from_settings(tls: Option<&crate::tls::TlsConfig>) -> Self {
        match tls {
            Some(tls) => Tls::Load(Box::new(tls.clone())),
            None => Tls::Plain,
        }
    }
}

/// `listener`'s address; a listener without one fails as a bind would.
pub(crate) fn local_addr(listener: &dyn Bound) -> Result<crate::addr::Addr, Error> {
    listener.local_addr().map_err(|source| Error::Bind {
        addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)).into(),
        source,
    })
}

/// What the process this one replaces handed over besides the sockets: the channel to tell
/// it "ready" on, and the TLS ticket keys by listener name. Empty at a first start.
#[derive(Default)]
pub(crate) struct Inheritance {
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    predecessor: Option<crate::upgrade::Inherited>,
    #[cfg(all(unix, feature = "tls", any(feature = "async-io", feature = "tokio")))]
    ticket_keys: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Inheritance {
    /// The ticket keys handed over for listener `name`, if any.
    #[cfg(feature = "tls")]
    pub(crate) fn ticket_keys(&mut self, name: &str) -> Option<Vec<u8>> {
        #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
        return self.ticket_keys.remove(name);
        #[cfg(not(all(unix, any(feature = "async-io", feature = "tokio"))))]
        {
            let _ = name;
            None
        }
    }

    /// Every listener accepts: tells the process this one replaces (or, at a first start,
    /// systemd) that it may stop.
    pub(crate) fn serving(self, core: &Arc<Core>) {
        #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
        crate::upgrade::serving(core, self.predecessor);
        #[cfg(not(all(unix, any(feature = "async-io", feature = "tokio"))))]
        let _ = core;
    }
}

/// Binds every listener of `config` (whose settings are validated) for `reactor`: adopts
/// the sockets an upgrade handed over by name, serves the systemd-passed socket as the
/// first TCP listener, binds the others. Errors with the handed-over channel's are reported
/// to `hooks` when they are not fatal.
#[cfg(any(feature = "async-io", feature = "tokio"))]
pub(crate) fn bind_all(
    config: &Config,
    reactor: Option<&dyn Reactor>,
    #[cfg_attr(not(all(unix, feature = "tls")), allow(unused_variables))]
    hooks: &crate::hooks::Hooks,
) -> Result<Bindings, Error> {
    let names = config.listener_names();
    #[cfg(unix)]
    let (predecessor, mut handed) = match crate::upgrade::inherit(&names) {
        Ok(Some((channel, sockets))) => (Some(channel), sockets),
        Ok(None) => (None, Default::default()),
        Err(e) => return Err(Error::Upgrade(crate::upgrade::UpgradeError::Channel(e))),
    };
    let inheritance = Inheritance {
        #[cfg(unix)]
        predecessor,
        #[cfg(all(unix, feature = "tls"))]
        ticket_keys: crate::upgrade::inherited_ticket_keys(hooks),
    };
    let options = SocketOptions::of(config);
    let mut inherited = crate::listener::inherited_tcp()?;
    let mut listeners = Vec::new();
    for (spec, name) in config.all_listeners().into_iter().zip(names) {
        #[cfg(unix)]
        let listener = match handed.remove(&name) {
            Some(fd) => adopt(fd, &options, reactor)?,
            None => bind_one(&spec, &options, reactor, &mut inherited)?,
        };
        #[cfg(not(unix))]
        let listener = bind_one(&spec, &options, reactor, &mut inherited)?;
        listeners.push(Binding {
            name,
            listener,
            tls: Tls::from_settings(spec.tls.as_ref()),
        });
    }
    Ok(Bindings {
        listeners,
        inheritance,
    })
}

/// Serves a listening socket an upgrade handed over: TCP or Unix, as the socket says.
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
fn adopt(
    fd: std::os::fd::OwnedFd,
    options: &SocketOptions,
    reactor: Option<&dyn Reactor>,
) -> Result<Box<dyn Bound>, Error> {
    let unix = socket2::SockRef::from(&fd)
        .local_addr()
        .is_ok_and(|addr| addr.is_unix());
    if unix {
        return Ok(Box::new(crate::listener::UnixListener::adopt(
            fd.into(),
            reactor,
        )?));
    }
    Ok(Box::new(crate::listener::TcpListener::from_std(
        fd.into(),
        options.nodelay,
        reactor,
    )?))
}

/// Binds the listener `spec` describes with `options`; the first TCP one takes the
/// systemd-passed socket instead. Its address is resolved here, once, and only when it is
/// bound.
#[cfg(any(feature = "async-io", feature = "tokio"))]
fn bind_one(
    spec: &ListenerConfig,
    options: &SocketOptions,
    reactor: Option<&dyn Reactor>,
    inherited: &mut Option<std::net::TcpListener>,
) -> Result<Box<dyn Bound>, Error> {
    use crate::listener::TcpListener;
    if let Some(unix) = &spec.unix {
        #[cfg(unix)]
        return Ok(Box::new(crate::listener::UnixListener::bind_path(
            unix,
            options.backlog,
            reactor,
        )?));
        #[cfg(not(unix))]
        {
            let _ = unix;
            return Err(crate::error::ConfigError::ListenerMismatch(
                "a Unix socket is configured but Unix domain sockets are not available on this platform",
            )
            .into());
        }
    }
    if let Some(std) = inherited.take() {
        return Ok(Box::new(TcpListener::from_std(
            std,
            options.nodelay,
            reactor,
        )?));
    }
    let addr = crate::config::parse_address(spec.address.as_deref().unwrap_or_default())?;
    Ok(Box::new(TcpListener::bind_addr(addr, options, reactor)?))
}
