//! What TLS adds to the front (feature `tls`, and `acme` within it): the builder's own
//! rustls configuration and ClientHello selection, loading each listener's settings with
//! ticket keys and a session cache of its own, the tasks that keep certificates current
//! (file watch, ACME, expiry gauges), and reloads at run time.
//!
//! Without the feature, `plain.rs` stands in with the same items, plain.

use std::sync::Arc;

use super::{Builder, Listeners, ServerHandle};
use crate::bind::{Binding, Bindings, Inheritance, Tls};
use crate::core::Core;
use crate::endpoint::{Endpoint, TlsSetting};
use crate::error::{Error, ServeError};
use crate::runtime::Runtime;

impl Builder {
    /// Chooses each TLS connection's configuration from its ClientHello (server name,
    /// ALPN), asynchronously: for per-tenant certificates loaded on demand. `select`
    /// returns the configuration to use, or `None` for the listener's own. It runs on the
    /// connection's task, within `handshake_timeout`, for every TLS listener.
    ///
    /// ```no_run
    /// # fn f(builder: berth::Builder, tenants: std::sync::Arc<std::collections::HashMap<String, std::sync::Arc<berth::tls::ServerConfig>>>) -> berth::Builder {
    /// builder.tls_select(move |hello: berth::tls::ClientHelloInfo| {
    ///     let tenants = tenants.clone();
    ///     async move { tenants.get(hello.server_name.as_deref()?).cloned() }
    /// })
    /// # }
    /// ```
    pub fn tls_select<F, Fut>(mut self, select: F) -> Self
    where
        F: Fn(crate::tls::ClientHelloInfo) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<Arc<rustls::ServerConfig>>> + Send + 'static,
    {
        self.tls.select = Some(Arc::new(move |hello| Box::pin(select(hello))));
        self
    }

    /// Serves TLS with a rustls configuration you built yourself (full control over
    /// verifiers, resolvers, key logging...). Takes precedence over `Config::tls`.
    pub fn tls_server_config(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls.config = Some(config);
        self
    }

    /// Each bound listener's endpoint, its TLS settings loaded, and what the server then
    /// runs for them.
    pub(super) fn endpoints(
        &self,
        runtime: &Arc<dyn Runtime>,
        bindings: &mut Bindings,
    ) -> Result<(Listeners, Tasks), Error> {
        // `tls_server_config` replaces the first listener's TLS settings.
        if let (Some(config), Some(first)) = (&self.tls.config, bindings.listeners.first_mut()) {
            first.tls = Tls::Ready(config.clone());
        }
        let mut tasks = Tasks::default();
        let mut listeners = Vec::with_capacity(bindings.listeners.len());
        for Binding {
            name,
            listener,
            tls,
        } in std::mem::take(&mut bindings.listeners)
        {
            let addr = crate::bind::local_addr(&*listener)?;
            let watched = match &tls {
                Tls::Load(source) => Some((**source).clone()),
                _ => None,
            };
            let (tls, resumption) =
                self.load_tls(tls, runtime, &name, &mut bindings.inheritance)?;
            tasks.note(watched.as_ref())?;
            let endpoint = Endpoint::new(name.into(), addr, tls)
                .watching(watched)
                .with_resumption(resumption);
            listeners.push((Arc::new(endpoint), listener));
        }
        Ok((listeners, tasks))
    }

    /// Loads listener `name`'s TLS settings, with ticket keys and a session cache of its
    /// own on the runtime's clock (the keys the process before this one handed over for
    /// it, if any).
    fn load_tls(
        &self,
        tls: Tls,
        runtime: &Arc<dyn Runtime>,
        name: &str,
        inheritance: &mut Inheritance,
    ) -> Result<(TlsSetting, Option<crate::tls::Resumption>), Error> {
        match tls {
            Tls::Plain => Ok((None, None)),
            Tls::Ready(config) => Ok((Some(config), None)),
            Tls::Load(tls) => {
                let clock = runtime.clone();
                let resumption = crate::tls::Resumption::new(&tls, Arc::new(move || clock.now()))?;
                if let (Some(keys), Some(handed)) =
                    (resumption.rotating_keys(), inheritance.ticket_keys(name))
                {
                    keys.adopt(&handed);
                }
                let (config, warnings) = tls.load_with(&crate::tls::read_pem, Some(&resumption))?;
                for warning in warnings {
                    self.hooks.error(&ServeError::CertificateNotValid(warning));
                }
                Ok((Some(config), Some(resumption)))
            }
        }
    }
}

/// The builder's TLS settings beside the config's.
#[derive(Default)]
pub(super) struct Choice {
    config: Option<Arc<rustls::ServerConfig>>,
    select: Option<crate::tls::Select>,
}

impl Choice {
    /// `core`, choosing configurations from ClientHellos as the builder asked (and, with
    /// ACME, picking out TLS-ALPN-01 validations first).
    pub(super) fn apply(self, core: Core, tasks: &Tasks) -> Core {
        #[cfg(feature = "acme")]
        let select = match tasks.acme.is_empty() {
            true => self.select,
            false => Some(crate::tls::acme::select(self.select)),
        };
        #[cfg(not(feature = "acme"))]
        let (select, Tasks {}) = (self.select, tasks);
        core.with_tls_select(select)
    }
}

/// What a server runs for its TLS listeners beside the accept loops.
#[derive(Default)]
pub(super) struct Tasks {
    /// The ACME certificates its listeners serve, each driven by a task once serving.
    #[cfg(feature = "acme")]
    acme: Vec<Arc<crate::tls::acme::Acme>>,
}

impl Tasks {
    /// Notes what a listener loaded from `tls` needs.
    fn note(&mut self, tls: Option<&crate::tls::TlsConfig>) -> Result<(), Error> {
        // Loading made (or found) the listener's ACME state; keep it to drive it.
        #[cfg(feature = "acme")]
        if let Some(config) = tls.and_then(|tls| tls.acme.as_ref()) {
            let state = crate::tls::acme::Acme::get(config).map_err(crate::tls::TlsError::Acme)?;
            if !self.acme.iter().any(|a| Arc::ptr_eq(a, &state)) {
                self.acme.push(state);
            }
        }
        #[cfg(not(feature = "acme"))]
        let _ = tls;
        Ok(())
    }

    /// Starts them: a watch per listener whose files are watched, a driver per ACME
    /// certificate, the expiry gauges.
    pub(super) fn start(self, core: &Arc<Core>) {
        let rt = core.runtime();
        for endpoint in core.endpoints() {
            if let Some(tls) = endpoint.watched() {
                let interval = tls.watch.unwrap_or_default();
                let task =
                    crate::reload::watch(core.clone(), endpoint.clone(), tls.clone(), interval);
                rt.spawn(Box::pin(task));
            }
        }
        #[cfg(feature = "acme")]
        for acme in self.acme {
            rt.spawn(Box::pin(crate::acme::drive(core.clone(), acme)));
        }
        #[cfg(feature = "metrics")]
        if core.endpoints().iter().any(|endpoint| endpoint.is_tls()) {
            rt.spawn(Box::pin(crate::reload::expiry_gauges(core.clone())));
        }
    }
}

impl ServerHandle {
    /// Loads `tls` and makes it the configuration of every new connection on every TLS
    /// listener; established connections keep their session. On error (a missing file, a key that does not match)
    /// the old configuration stays in force and the error is returned.
    ///
    /// Each listener keeps its session ticket keys and session cache (sessions resume
    /// across the reload); the `ticket_*` and `session_*` settings of `tls` take effect at
    /// the next start or upgrade.
    pub fn reload_tls(&self, tls: &crate::tls::TlsConfig) -> Result<(), Error> {
        // Everything is loaded before anything is swapped: an error changes nothing.
        let mut loaded = Vec::new();
        let mut warned = Vec::new();
        for endpoint in self.core.endpoints().iter().filter(|e| e.is_tls()) {
            let (config, warnings) = tls.load_with(&crate::tls::read_pem, endpoint.resumption())?;
            warned = warnings;
            loaded.push((endpoint.clone(), config));
        }
        if loaded.is_empty() {
            return Err(crate::tls::TlsError::NotEnabled.into());
        }
        for (endpoint, config) in loaded {
            endpoint.set_tls(config);
        }
        for warning in warned {
            self.core
                .hooks()
                .error(&ServeError::CertificateNotValid(warning));
        }
        Ok(())
    }

    /// Replaces the rustls configuration used for new connections.
    pub fn set_tls_server_config(&self, config: Arc<rustls::ServerConfig>) -> Result<(), Error> {
        if self.core.set_tls(config) {
            Ok(())
        } else {
            Err(crate::tls::TlsError::NotEnabled.into())
        }
    }
}
