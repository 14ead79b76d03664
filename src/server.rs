//! The public front: [`Builder`] (configure and bind), [`Server`] (bound, ready to serve a
//! handler) and [`ServerHandle`] (control and observe a running server).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::accept::Bound as BoundListener;
use crate::addr::Addr;
use crate::config::Config;
use crate::connection::{Serving, Spawn, TuneHook};
use crate::endpoint::{Endpoint, TlsSetting};
use crate::error::{ConfigError, Error};
use crate::events::{ConnEvent, ServerEvent, ShutdownReport, Stats};
use crate::handler::Handler;
use crate::hooks::Hooks;
use crate::listener::{Listener, Socket};
use crate::runtime::Runtime;
use crate::state::Core;
use crate::stop::State;

/// Builds a [`Server`]: a config, optionally a runtime, hooks and a tune hook, then
/// [`bind`](Self::bind) (what the config says) or [`listener`](Self::listener) (a listener
/// of your own).
///
/// ```no_run
/// # fn main() -> Result<(), berth::Error> {
/// let server = berth::Builder::new(berth::Config::new("127.0.0.1:0"))
///     .on_conn_event(|e| println!("{e:?}"))
///     .bind()?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until you bind it"]
pub struct Builder {
    config: Config,
    runtime: Option<Arc<dyn Runtime>>,
    hooks: Hooks,
    tune: Option<TuneHook>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    #[cfg(feature = "tls")]
    tls_select: Option<crate::tls::Select>,
    #[cfg(feature = "fault")]
    faults: Option<crate::fault::Injector>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder for a server configured by `config`.
    pub fn new(config: Config) -> Self {
        #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
        crate::upgrade::remember_program();
        Builder {
            config,
            runtime: None,
            hooks: Hooks::default(),
            tune: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_select: None,
            #[cfg(feature = "fault")]
            faults: None,
        }
    }

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
    #[cfg(feature = "tls")]
    pub fn tls_select<F, Fut>(mut self, select: F) -> Self
    where
        F: Fn(crate::tls::ClientHelloInfo) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<Arc<rustls::ServerConfig>>> + Send + 'static,
    {
        self.tls_select = Some(Arc::new(move |hello| Box::pin(select(hello))));
        self
    }

    /// Injects faults at berth's fault points, as `faults` decides (feature `fault`, for
    /// simulation; see [`fault`](crate::fault)).
    #[cfg(feature = "fault")]
    pub fn faults(mut self, faults: impl crate::fault::Faults) -> Self {
        self.faults = Some(Arc::new(faults));
        self
    }

    /// Serves TLS with a rustls configuration you built yourself (full control over
    /// verifiers, resolvers, key logging...). Takes precedence over `Config::tls`.
    #[cfg(feature = "tls")]
    pub fn tls_server_config(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Runs the server on `runtime` instead of the default
    /// ([`default_runtime`](crate::runtime::default_runtime): tokio inside a tokio runtime,
    /// else smol's global executor, else async-std).
    pub fn runtime(mut self, runtime: impl Runtime) -> Self {
        self.runtime = Some(Arc::new(runtime));
        self
    }

    /// Calls `hook` for every connection event. See [`ServerHandle::on_conn_event`].
    pub fn on_conn_event(self, hook: impl Fn(&ConnEvent) + Send + Sync + 'static) -> Self {
        self.hooks.set_conn(Some(Arc::new(hook)));
        self
    }

    /// Calls `hook` for every server event. See [`ServerHandle::on_server_event`].
    pub fn on_server_event(self, hook: impl Fn(&ServerEvent) + Send + Sync + 'static) -> Self {
        self.hooks.set_server(Some(Arc::new(hook)));
        self
    }

    /// Calls `hook` for every error, including a failed bind (which is also returned: a
    /// hook that prints and a `main` that prints the returned error print it twice, so
    /// attach printing hooks after binding, with [`ServerHandle::on_error`]).
    pub fn on_error(self, hook: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.hooks.set_error(Some(Arc::new(hook)));
        self
    }

    /// Runs `hook` on every accepted socket, after berth's own socket options (so the hook
    /// wins), on the connection's task before its handler starts (never on the accept loop).
    /// An error or panic closes that connection and is reported to the error hook. Streams
    /// without an OS socket (under simulation) skip it.
    ///
    /// ```no_run
    /// # fn f(builder: berth::Builder) -> berth::Builder {
    /// builder.tune(|socket| socket2::SockRef::from(socket).set_send_buffer_size(1 << 20))
    /// # }
    /// ```
    pub fn tune(
        mut self,
        hook: impl Fn(&Socket<'_>) -> io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.tune = Some(Arc::new(hook));
        self
    }

    /// Binds what the config says: the listener of `config.address` (TCP) or `config.unix`
    /// (a Unix domain socket), with `config.tls`, then each of `config.listeners`, with its
    /// own TLS setting. Listeners use the reactor of the server's runtime (tokio's sockets
    /// on the tokio adapter, async-io's on smol and async-std). Under systemd socket
    /// activation (`LISTEN_FDS`/`LISTEN_PID` naming this process), the passed TCP socket
    /// is served instead of binding `config.address`.
    ///
    /// A failure is returned and also reported to the error hook; nothing stays bound.
    ///
    /// In a process started by an [upgrade](ServerHandle::upgrade), the listening sockets the
    /// old process handed over are adopted by name instead of bound (the others are bound),
    /// and the old process is told the new one is ready once it serves.
    #[cfg(any(feature = "async-io", feature = "tokio"))]
    pub fn bind(self) -> Result<Server, Error> {
        let bound = self.bind_all();
        self.finish(bound)
    }

    #[cfg(any(feature = "async-io", feature = "tokio"))]
    fn bind_all(&self) -> Result<Bound, Error> {
        self.config.validate_settings()?;
        let reactor = self.chosen_runtime()?.reactor();
        #[cfg(unix)]
        let (upgrade, mut handed) = match crate::upgrade::inherit(&self.config.listener_names()) {
            Ok(Some((channel, sockets))) => (Some(channel), sockets),
            Ok(None) => (None, Default::default()),
            Err(e) => return Err(Error::Upgrade(crate::upgrade::UpgradeError::Channel(e))),
        };
        // The ticket keys of the process this one replaces, by listener (see `upgrade`).
        #[cfg(all(unix, feature = "tls"))]
        let ticket_keys = match crate::upgrade::read_message(crate::upgrade::TICKET_KEYS) {
            Ok(None) => Default::default(),
            Ok(Some(bytes)) => crate::tls::decode_handover(&bytes).unwrap_or_else(|| {
                let e = std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the ticket keys handed over are malformed: new keys are used",
                );
                self.hooks
                    .error(&Error::Upgrade(crate::upgrade::UpgradeError::Channel(e)));
                Default::default()
            }),
            Err(e) => {
                // Not fatal: sessions then do a full handshake once.
                self.hooks
                    .error(&Error::Upgrade(crate::upgrade::UpgradeError::Channel(e)));
                Default::default()
            }
        };
        let mut inherited = crate::listener::inherited_tcp()?;
        let mut bound = Vec::new();
        let names = self.config.listener_names();
        for (index, (spec, name)) in self
            .config
            .all_listeners()
            .into_iter()
            .zip(names)
            .enumerate()
        {
            #[cfg(unix)]
            let socket = handed.remove(&name);
            #[cfg(not(unix))]
            let socket = None;
            let listener = match socket {
                Some(fd) => adopt(&self.config, fd, &reactor)?,
                None => bind_one(&self.config, &spec, &reactor, &mut inherited)?,
            };
            // `tls_server_config` replaces the first listener's TLS settings.
            let tls = match (index, &spec.tls) {
                #[cfg(feature = "tls")]
                (0, _) if self.tls.is_some() => self.configured_tls(),
                (_, Some(tls)) => Tls::Load(Box::new(tls.clone())),
                (_, None) => Tls::Plain,
            };
            bound.push(Listening {
                name,
                listener,
                tls,
            });
        }
        Ok(Bound {
            listeners: bound,
            #[cfg(unix)]
            upgrade,
            #[cfg(all(unix, feature = "tls"))]
            ticket_keys,
        })
    }

    /// Serves connections from `listener` (any [`Listener`]: a simulated one, a socket bound
    /// elsewhere), with `config.tls`. The config's `address`, `unix` and `listeners` are not
    /// used; the listener is named by its address.
    pub fn listener<L: Listener>(self, listener: L) -> Result<Server, Error> {
        let listener: Box<dyn BoundListener> = Box::new(listener);
        let named = listener.local_addr().map(|addr| Listening {
            name: addr.to_string(),
            listener,
            tls: self.configured_tls(),
        });
        let named = named.map_err(|source| Error::Bind {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)).into(),
            source,
        });
        self.finish(named.map(|listening| Bound {
            listeners: vec![listening],
            #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
            upgrade: None,
            #[cfg(all(unix, feature = "tls"))]
            ticket_keys: Default::default(),
        }))
    }

    /// The TLS settings of the first listener: `tls_server_config`, else `config.tls`.
    fn configured_tls(&self) -> Tls {
        #[cfg(feature = "tls")]
        if let Some(config) = &self.tls {
            return Tls::Ready(config.clone());
        }
        match &self.config.tls {
            Some(tls) => Tls::Load(Box::new(tls.clone())),
            None => Tls::Plain,
        }
    }

    /// Checks the bound listeners and builds the server, or reports the error.
    fn finish(self, bound: Result<Bound, Error>) -> Result<Server, Error> {
        let built = bound.and_then(|mut bound| {
            self.config.validate_settings()?;
            let runtime = self.chosen_runtime()?;
            let mut listeners = Vec::with_capacity(bound.listeners.len());
            #[cfg(feature = "acme")]
            let mut acme: Vec<Arc<crate::tls::acme::Acme>> = Vec::new();
            for Listening {
                name,
                listener,
                tls,
            } in std::mem::take(&mut bound.listeners)
            {
                let addr = listener.local_addr().map_err(|source| Error::Bind {
                    addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)).into(),
                    source,
                })?;
                let watched = match &tls {
                    Tls::Load(source) => Some((**source).clone()),
                    _ => None,
                };
                #[cfg(feature = "tls")]
                let (tls, resumption) = self.load_tls(tls, &runtime, &name, &mut bound)?;
                #[cfg(not(feature = "tls"))]
                let tls = self.load_tls(tls)?;
                // Loading made (or found) the listener's ACME state; keep it to drive it.
                #[cfg(feature = "acme")]
                if let Some(config) = watched.as_ref().and_then(|tls| tls.acme.as_ref()) {
                    let state =
                        crate::tls::acme::Acme::get(config).map_err(crate::tls::TlsError::Acme)?;
                    if !acme.iter().any(|a| Arc::ptr_eq(a, &state)) {
                        acme.push(state);
                    }
                }
                let endpoint = Endpoint::new(name.into(), addr, tls).watching(watched);
                #[cfg(feature = "tls")]
                let endpoint = endpoint.with_resumption(resumption);
                listeners.push((Arc::new(endpoint), listener));
            }
            #[cfg(not(feature = "acme"))]
            let acme = ();
            Ok((runtime, listeners, bound, acme))
        });
        let (runtime, listeners, bound, acme) = match built {
            Ok(built) => built,
            Err(e) => {
                self.hooks.error(&e);
                return Err(e);
            }
        };
        // Without upgrades, nothing else was bound.
        #[cfg(not(all(unix, any(feature = "async-io", feature = "tokio"))))]
        drop(bound);
        let endpoints = listeners.iter().map(|(e, _)| e.clone()).collect();
        let core = Core::new(runtime, self.config, self.hooks, endpoints);
        // With ACME, TLS-ALPN-01 validations are picked out of the ClientHellos first.
        #[cfg(feature = "acme")]
        let select = match acme.is_empty() {
            true => self.tls_select,
            false => Some(crate::tls::acme::select(self.tls_select)),
        };
        #[cfg(all(feature = "tls", not(feature = "acme")))]
        let (select, ()) = (self.tls_select, acme);
        #[cfg(not(feature = "tls"))]
        let () = acme;
        #[cfg(feature = "tls")]
        let core = core.with_tls_select(select);
        #[cfg(feature = "fault")]
        let core = core.with_faults(self.faults);
        Ok(Server {
            core: Arc::new(core),
            listeners,
            tune: self.tune,
            #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
            upgrade: bound.upgrade,
            #[cfg(feature = "acme")]
            acme,
        })
    }

    fn chosen_runtime(&self) -> Result<Arc<dyn Runtime>, ConfigError> {
        let runtime = self
            .runtime
            .clone()
            .or_else(crate::runtime::default_runtime)
            .ok_or(ConfigError::NoRuntime)?;
        runtime.check()?;
        Ok(runtime)
    }

    /// Loads listener `name`'s TLS settings, with ticket keys and a session cache of its
    /// own on the runtime's clock (the keys the process before this one handed over for
    /// it, if any).
    #[cfg(feature = "tls")]
    fn load_tls(
        &self,
        tls: Tls,
        runtime: &Arc<dyn Runtime>,
        name: &str,
        #[cfg_attr(not(unix), allow(unused_variables))] bound: &mut Bound,
    ) -> Result<(TlsSetting, Option<crate::tls::Resumption>), Error> {
        match tls {
            Tls::Plain => Ok((None, None)),
            Tls::Ready(config) => Ok((Some(config), None)),
            Tls::Load(tls) => {
                let clock = runtime.clone();
                let resumption = crate::tls::Resumption::new(&tls, Arc::new(move || clock.now()))?;
                #[cfg(unix)]
                if let (Some(keys), Some(handed)) =
                    (resumption.rotating_keys(), bound.ticket_keys.remove(name))
                {
                    keys.adopt(&handed);
                }
                let (config, warnings) = tls.load_with(&crate::tls::read_pem, Some(&resumption))?;
                for warning in warnings {
                    self.hooks.error(&Error::CertificateNotValid(warning));
                }
                Ok((Some(config), Some(resumption)))
            }
        }
    }

    #[cfg(not(feature = "tls"))]
    fn load_tls(&self, _: Tls) -> Result<TlsSetting, Error> {
        // validate_settings() refused TLS settings in a build without TLS.
        Ok(None)
    }
}

/// What binding produced, before the server is built.
struct Bound {
    listeners: Vec<Listening>,
    /// The channel to the process this one replaces, when an upgrade started it.
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    upgrade: Option<crate::upgrade::Inherited>,
    /// The ticket keys that process handed over, by listener name.
    #[cfg(all(unix, feature = "tls"))]
    ticket_keys: std::collections::BTreeMap<String, Vec<u8>>,
}

/// A bound listener, before the server is built.
struct Listening {
    name: String,
    listener: Box<dyn BoundListener>,
    tls: Tls,
}

/// A listener's TLS settings, before they are loaded.
enum Tls {
    Plain,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Load(Box<crate::tls::TlsConfig>),
    #[cfg(feature = "tls")]
    Ready(Arc<rustls::ServerConfig>),
}

/// Serves a listening socket an upgrade handed over: TCP or Unix, as the socket says.
#[cfg(any(feature = "async-io", feature = "tokio"))]
fn adopt(
    config: &Config,
    fd: std::os::fd::OwnedFd,
    reactor: &crate::runtime::Reactor,
) -> Result<Box<dyn BoundListener>, Error> {
    let unix = socket2::SockRef::from(&fd)
        .local_addr()
        .is_ok_and(|addr| addr.is_unix());
    if unix {
        #[cfg(unix)]
        return Ok(Box::new(crate::listener::UnixListener::adopt(
            fd.into(),
            reactor,
        )?));
    }
    Ok(Box::new(crate::listener::TcpListener::from_std(
        fd.into(),
        config.nodelay,
        reactor,
    )?))
}

/// Binds one listener of `config`; the first TCP one takes the systemd-passed socket.
#[cfg(any(feature = "async-io", feature = "tokio"))]
fn bind_one(
    config: &Config,
    spec: &crate::ListenerConfig,
    reactor: &crate::runtime::Reactor,
    inherited: &mut Option<std::net::TcpListener>,
) -> Result<Box<dyn BoundListener>, Error> {
    use crate::listener::TcpListener;
    // The listeners bind from a config of their own: this listener's socket settings, and
    // the server-wide ones (backlog, reuse_port, nodelay).
    let mut own = config.clone();
    own.listeners = Vec::new();
    own.tls = None;
    if let Some(unix) = &spec.unix {
        #[cfg(unix)]
        {
            own.unix = Some(unix.clone());
            return Ok(Box::new(crate::listener::UnixListener::bind(
                &own, reactor,
            )?));
        }
        #[cfg(not(unix))]
        {
            let _ = unix;
            return Err(ConfigError::ListenerMismatch(
                "a Unix socket is configured but Unix domain sockets are not available on this platform",
            )
            .into());
        }
    }
    if let Some(std) = inherited.take() {
        return Ok(Box::new(TcpListener::from_std(
            std,
            config.nodelay,
            reactor,
        )?));
    }
    own.address = spec.address.clone().unwrap_or_default();
    own.unix = None;
    Ok(Box::new(TcpListener::bind(&own, reactor)?))
}

/// A bound server, ready to [`serve`](Server::serve) a handler.
///
/// ```no_run
/// use futures_lite::{AsyncReadExt, AsyncWriteExt};
///
/// # async fn run() -> Result<(), berth::Error> {
/// let server = berth::Server::bind(berth::Config::new("127.0.0.1:7000"))?;
/// let handle = server.serve(|mut conn: berth::Conn| async move {
///     let mut buf = vec![0; 4096];
///     while let Ok(n @ 1..) = conn.read(&mut buf).await {
///         if conn.write_all(&buf[..n]).await.is_err() {
///             break;
///         }
///     }
/// });
/// // ... later: stop accepting, let connections finish (config.drain_timeout), then stop.
/// handle.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use = "a bound server accepts nothing until you call serve"]
pub struct Server {
    core: Arc<Core>,
    listeners: Vec<(Arc<Endpoint>, Box<dyn BoundListener>)>,
    tune: Option<TuneHook>,
    /// The process this one replaces, told "ready" once serving starts.
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    upgrade: Option<crate::upgrade::Inherited>,
    /// The ACME certificates its listeners serve, each driven by a task once serving.
    #[cfg(feature = "acme")]
    acme: Vec<Arc<crate::tls::acme::Acme>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &listener_list(&self.core))
            .field("state", &self.core.state())
            .finish_non_exhaustive()
    }
}

/// Each listener's name and address.
fn listener_list(core: &Core) -> Vec<(String, Addr)> {
    core.endpoints()
        .iter()
        .map(|e| (e.name().to_string(), e.addr().clone()))
        .collect()
}

impl Server {
    /// Binds a server as `config` says (TCP, or a Unix socket when `config.unix` is set) with
    /// the default runtime. Same as `Builder::new(config).bind()`: see
    /// [`Builder::bind`].
    #[cfg(any(feature = "async-io", feature = "tokio"))]
    pub fn bind(config: Config) -> Result<Self, Error> {
        Builder::new(config).bind()
    }

    /// The first listener's address (with the real port when the config asked for port 0;
    /// a path for a Unix socket). See [`listeners`](Self::listeners) for all of them.
    pub fn local_addr(&self) -> Addr {
        self.core.endpoints()[0].addr().clone()
    }

    /// Every listener's name and bound address, in the configured order.
    pub fn listeners(&self) -> Vec<(String, Addr)> {
        listener_list(&self.core)
    }

    /// A handle to control and observe the server; usable before and after `serve`.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            core: self.core.clone(),
        }
    }

    /// Starts serving: spawns the accept loop (and the idle scanner, when an idle timeout is
    /// set) on the runtime and returns at once. Every connection runs `handler` on a task
    /// of its own. The server runs until [`ServerHandle::shutdown`] or
    /// [`ServerHandle::close`]; dropping handles does not stop it.
    pub fn serve<H: Handler>(self, handler: H) -> ServerHandle {
        let core = self.core;
        let rt = core.runtime().clone();
        core.stop().set_state(State::Running);
        let serving: Arc<dyn Spawn> = Arc::new(Serving {
            core: core.clone(),
            handler,
            tune: self.tune,
        });
        let reporter = core.clone();
        rt.spawn(Box::pin(async move {
            reporter
                .hooks()
                .report_deferred(reporter.stop().stopped_latch())
                .await;
        }));
        let idle_timeout = core.config().idle_timeout;
        if idle_timeout.is_some() || core.config().overload.is_active() {
            if core.config().overload.is_active() {
                core.pressure().measure_descriptors();
            }
            rt.spawn(Box::pin(crate::idle::scan(core.clone(), idle_timeout)));
        }
        #[cfg(feature = "tls")]
        for (endpoint, _) in &self.listeners {
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
        #[cfg(all(feature = "tls", feature = "metrics"))]
        if self.listeners.iter().any(|(endpoint, _)| endpoint.is_tls()) {
            rt.spawn(Box::pin(crate::reload::expiry_gauges(core.clone())));
        }
        #[cfg(unix)]
        core.handovers().keep(
            self.listeners
                .iter()
                .filter_map(|(endpoint, listener)| {
                    Some((endpoint.name().clone(), listener.handover()?))
                })
                .collect(),
        );
        for (endpoint, listener) in self.listeners {
            core.hooks().server(ServerEvent::Listening {
                listener: endpoint.name().clone(),
                addr: endpoint.addr().clone(),
                tls: endpoint.is_tls(),
            });
            core.stop().accept_loop_started();
            rt.spawn(listener.serve(core.clone(), endpoint, serving.clone()));
        }
        // Every listener accepts (the loops are spawned; connects queue until they run):
        // the process this one replaces may stop now.
        #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
        crate::watchdog::serving(&core, self.upgrade.is_none());
        #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
        if let Some(upgrade) = self.upgrade {
            if let Err(e) = upgrade.ready() {
                core.hooks()
                    .error(&Error::Upgrade(crate::upgrade::UpgradeError::Channel(e)));
            }
            // The adopted Unix sockets' files are this server's from now on.
            core.handovers().own_socket_files();
        }
        ServerHandle { core }
    }
}

/// Controls and observes a server. Cheap to clone; every method is safe to call from any
/// task or thread, at any time, any number of times.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    core: Arc<Core>,
}

impl ServerHandle {
    /// Graceful shutdown with the config's `drain_timeout` as grace period: see
    /// [`shutdown_within`](Self::shutdown_within).
    ///
    /// With [`Config::lame_duck`](crate::Config::lame_duck) set, the server first serves on
    /// for that long, reporting not ready ([`is_ready`](Self::is_ready)); a second call
    /// ends the lame duck at once.
    pub async fn shutdown(&self) -> Result<ShutdownReport, Error> {
        if let Some(duration) = self.core.config().lame_duck {
            self.lame_duck(duration).await;
        }
        self.shutdown_within(self.core.config().drain_timeout).await
    }

    /// The lame duck: serving on, reported not ready, for `duration` or until skipped.
    async fn lame_duck(&self, duration: Duration) {
        use futures_lite::FutureExt as _;
        let core = &self.core;
        if core.state() != State::Running || core.stop().stop_accepting_requested() {
            return;
        }
        let readiness = core.readiness();
        if !readiness.begin_lame_duck() {
            readiness.skip_lame_duck(); // a second shutdown: no more waiting
            return;
        }
        core.hooks().server(ServerEvent::LameDuck { duration });
        #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
        crate::watchdog::stopping(core);
        core.runtime()
            .sleep(duration)
            .or(readiness.lame_duck_skipped())
            .or(core.stop().stopped())
            .await;
    }

    /// Ends a lame duck in progress at once (the drain follows).
    pub fn end_lame_duck(&self) {
        self.core.readiness().skip_lame_duck();
    }

    /// Whether this server wants new clients, as a load balancer's readiness check should
    /// say: it is running, not in a lame duck, has not handed its listeners to a new process,
    /// and every condition set with [`set_ready_condition`](Self::set_ready_condition) holds.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    /// Why the server is not ready (empty when it is): `"not serving yet"`, `"lame duck"`,
    /// `"draining"`, `"stopped"`, `"handed over to a new process"`, or the name of a
    /// condition of yours that does not hold.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let core = &self.core;
        let readiness = core.readiness();
        let mut reasons = Vec::new();
        match core.state() {
            State::Created => reasons.push("not serving yet".to_owned()),
            State::Running if readiness.in_lame_duck() => reasons.push("lame duck".to_owned()),
            State::Running => {}
            State::Draining => reasons.push("draining".to_owned()),
            State::Stopped => reasons.push("stopped".to_owned()),
        }
        if readiness.is_handed_over() {
            reasons.push("handed over to a new process".to_owned());
        }
        reasons.extend(readiness.failing());
        reasons
    }

    /// Sets a readiness condition of yours (e.g. `"database"`): while any is `false`, the
    /// server is not ready ([`is_ready`](Self::is_ready)) though it serves on. Setting it
    /// again replaces it.
    ///
    /// ```no_run
    /// # fn f(handle: berth::ServerHandle, db_up: bool) {
    /// handle.set_ready_condition("database", db_up);
    /// # }
    /// ```
    pub fn set_ready_condition(&self, name: impl Into<String>, ready: bool) {
        self.core.readiness().set_condition(name.into(), ready);
    }

    /// Removes a readiness condition set with [`set_ready_condition`](Self::set_ready_condition).
    pub fn clear_ready_condition(&self, name: &str) {
        self.core.readiness().clear_condition(name);
    }

    /// Graceful shutdown: stop accepting at once (new clients are refused), tell every
    /// connection to drain ([`Conn::draining`](crate::Conn::draining) resolves), and wait
    /// for handlers to finish. Returns as soon as no connection is open. When `grace` passes
    /// first, the remaining connections are force-closed and [`Error::ShutdownTimeout`]
    /// says how many ("timeout on stopping socket"): the caller bounded the drain and learns
    /// that the bound was hit. A program that stops on a signal and should exit 0 all the
    /// same uses [`run`](Self::run), which returns the forced count in its report instead.
    ///
    /// Before `serve`, this does nothing and returns `Ok`. Concurrent and repeated calls wait
    /// for the first one and return its result.
    pub async fn shutdown_within(&self, grace: Duration) -> Result<ShutdownReport, Error> {
        crate::shutdown::stop(&self.core, grace, false).await
    }

    /// Serves until `stop` completes (or the server stops by itself), then shuts down
    /// gracefully ([`shutdown`](Self::shutdown)). With [`Signals`](crate::signal::Signals),
    /// this is the whole of a `main` that drains on Ctrl-C or SIGTERM:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), berth::Error> {
    /// let signals = berth::signal::Signals::new()?;
    /// let handle = berth::Server::bind(berth::Config::new("127.0.0.1:7000"))?
    ///     .serve(|conn: berth::Conn| async move { drop(conn) });
    /// let report = futures_lite::future::block_on(handle.shutdown_on(signals.recv()))?;
    /// println!("{report}");
    /// # Ok(()) }
    /// ```
    ///
    /// A SIGHUP is not a request to stop: when `stop` completes with
    /// [`Signal::Hangup`](crate::signal::Signal::Hangup) (a receiver made with
    /// [`Signals::with_hangup`](crate::signal::Signals::with_hangup)), the listeners are
    /// first handed to a new process ([`upgrade`](Self::upgrade)), so no client is refused;
    /// should that fail, the error goes to the error hook and the drain proceeds as asked.
    /// To upgrade on every SIGHUP and stop only on SIGTERM or SIGINT, use
    /// [`run`](Self::run).
    pub async fn shutdown_on<T: 'static>(
        &self,
        stop: impl Future<Output = T>,
    ) -> Result<ShutdownReport, Error> {
        use futures_lite::FutureExt as _;
        let stopped_by = async { Some(stop.await) }
            .or(async {
                self.core.stop().stopped().await;
                None
            })
            .await;
        #[cfg(all(unix, feature = "signal", any(feature = "async-io", feature = "tokio")))]
        if stopped_by.as_ref().is_some_and(|by| {
            (by as &dyn std::any::Any).downcast_ref() == Some(&crate::signal::Signal::Hangup)
        }) {
            if let Err(e) = self.upgrade().await {
                self.report_error(&e);
            }
        }
        drop(stopped_by);
        self.shutdown().await
    }

    /// Zero-downtime upgrade: starts this program again (from the path it was started from,
    /// with the same arguments) and hands it every listening socket by name; see
    /// [`upgrade_with`](Self::upgrade_with).
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub async fn upgrade(&self) -> Result<crate::upgrade::Upgraded, Error> {
        let command = crate::upgrade::default_command().map_err(Error::Upgrade)?;
        self.upgrade_with(command).await
    }

    /// Zero-downtime upgrade to the program `command` starts: hands it every listening
    /// socket by name, waits (at most `config.upgrade_timeout`) until it has adopted them,
    /// bound any new ones and serves, and only then stops accepting here, without closing
    /// the shared sockets (no connect is refused or reset meanwhile), and drains with
    /// `drain_timeout`. Under systemd (`NOTIFY_SOCKET`) it announces the new process
    /// (`MAINPID=`, `READY=1`). Returns once the new process is ready; [`stopped`](Self::stopped)
    /// or [`shutdown`](Self::shutdown) then wait for the drain and give its report.
    ///
    /// The new process must build its server with `Builder::bind` (which adopts the
    /// sockets) and serve it. On failure (it cannot start, exits, or is not ready in time:
    /// it is then killed) this server keeps serving, the error is returned and reported
    /// (`ServerEvent::UpgradeFailed`), and a later upgrade may be tried. One upgrade runs
    /// at a time.
    ///
    /// The new process is not waited for here: it is meant to outlive this one, and is then
    /// adopted by init or by a supervisor that must see its exit status. Should it exit first,
    /// it stays a zombie until this process exits.
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub async fn upgrade_with(
        &self,
        command: std::process::Command,
    ) -> Result<crate::upgrade::Upgraded, Error> {
        use crate::upgrade::UpgradeError;
        let core = &self.core;
        if core.state() != State::Running {
            return Err(Error::Upgrade(UpgradeError::NotRunning));
        }
        if !core.handovers().start_upgrade() {
            return Err(Error::Upgrade(UpgradeError::InProgress));
        }
        // The upgrade runs as a task of its own: a caller that stops waiting (a timeout, a
        // select) does not cut it half-way, and the next upgrade is possible once it ends.
        let done = crate::sync::Oneshot::new();
        let result = done.clone();
        core.runtime()
            .spawn(Box::pin(run_upgrade(core.clone(), command, done)));
        result.recv().await.map_err(Error::Upgrade)
    }

    /// Hands `socket` (a duplicate of a listening socket of your own: a metrics or admin
    /// port) to the new process at an upgrade too, under `name`, where
    /// [`upgrade::take_socket`](crate::upgrade::take_socket) gives it back. The socket stays
    /// open while either process holds it, so that port never refuses a connect either.
    ///
    /// Errors: [`UpgradeError::BadName`](crate::upgrade::UpgradeError::BadName) for an empty
    /// or multi-line name, or one a listener of this server already has.
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub fn hand_over_too(
        &self,
        name: impl Into<String>,
        socket: std::os::fd::OwnedFd,
    ) -> Result<(), Error> {
        let name = name.into();
        let taken = self.core.endpoints().iter().any(|e| **e.name() == *name);
        if taken || !crate::upgrade::valid_name(&name) {
            return Err(Error::Upgrade(crate::upgrade::UpgradeError::BadName(name)));
        }
        self.core
            .handovers()
            .add(name.into(), crate::listener::Handover::new(socket));
        Ok(())
    }

    /// Immediate stop: stop accepting, force-close every connection (cancelling handlers),
    /// and return once their sockets are closed. Also cuts short a graceful shutdown in
    /// progress. It waits at most a second for the sockets: a `Conn` a handler moved into a
    /// task of its own closes when that task drops it, and counts in
    /// [`ShutdownReport::still_open`] meanwhile.
    pub async fn close(&self) -> ShutdownReport {
        let _ = crate::shutdown::stop(&self.core, Duration::ZERO, true).await;
        self.core.stop().report()
    }

    /// The report of the shutdown that stopped the server (default before one finished).
    #[cfg(all(unix, feature = "signal", any(feature = "async-io", feature = "tokio")))]
    pub(crate) fn stop_report(&self) -> ShutdownReport {
        self.core.stop().report()
    }

    /// Sends `error` to the error hook.
    #[cfg(all(unix, feature = "signal", any(feature = "async-io", feature = "tokio")))]
    pub(crate) fn report_error(&self, error: &Error) {
        self.core.hooks().error(error);
    }

    /// Waits until the server has stopped (after a shutdown or `close`, called anywhere).
    pub async fn stopped(&self) {
        self.core.stop().stopped().await;
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.core.state()
    }

    /// Whether the server is accepting and serving (`State::Running`).
    pub fn is_running(&self) -> bool {
        self.state() == State::Running
    }

    /// Whether a shutdown is in progress (`State::Draining`).
    pub fn is_draining(&self) -> bool {
        self.state() == State::Draining
    }

    /// Connections open now: counted from accept until their socket is closed.
    pub fn open_connections(&self) -> usize {
        self.core.open_connections()
    }

    /// The first listener's address (with the real port when the config asked for port 0;
    /// a path for a Unix socket server). See [`listeners`](Self::listeners) for all.
    pub fn local_addr(&self) -> Addr {
        self.core.endpoints()[0].addr().clone()
    }

    /// Every listener's name and bound address, in the configured order.
    pub fn listeners(&self) -> Vec<(String, Addr)> {
        listener_list(&self.core)
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Sets (or replaces) the connection event hook; takes effect for the next event.
    pub fn on_conn_event(&self, hook: impl Fn(&ConnEvent) + Send + Sync + 'static) {
        self.core.hooks().set_conn(Some(Arc::new(hook)));
    }

    /// Sets (or replaces) the server event hook.
    pub fn on_server_event(&self, hook: impl Fn(&ServerEvent) + Send + Sync + 'static) {
        self.core.hooks().set_server(Some(Arc::new(hook)));
    }

    /// Sets (or replaces) the error hook.
    pub fn on_error(&self, hook: impl Fn(&Error) + Send + Sync + 'static) {
        self.core.hooks().set_error(Some(Arc::new(hook)));
    }

    /// Removes every hook.
    pub fn clear_hooks(&self) {
        let hooks = self.core.hooks();
        hooks.set_conn(None);
        hooks.set_server(None);
        hooks.set_error(None);
    }

    /// Whether any of this server's listeners serves TLS.
    pub fn is_tls(&self) -> bool {
        self.core.is_tls()
    }

    /// Loads `tls` and makes it the configuration of every new connection on every TLS
    /// listener; established connections keep their session. On error (a missing file, a key that does not match)
    /// the old configuration stays in force and the error is returned.
    #[cfg(feature = "tls")]
    ///
    /// Each listener keeps its session ticket keys and session cache (sessions resume
    /// across the reload); the `ticket_*` and `session_*` settings of `tls` take effect at
    /// the next start or upgrade.
    #[cfg(feature = "tls")]
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
                .error(&Error::CertificateNotValid(warning));
        }
        Ok(())
    }

    /// Replaces the rustls configuration used for new connections.
    #[cfg(feature = "tls")]
    pub fn set_tls_server_config(&self, config: Arc<rustls::ServerConfig>) -> Result<(), Error> {
        if self.core.set_tls(config) {
            Ok(())
        } else {
            Err(crate::tls::TlsError::NotEnabled.into())
        }
    }
}

/// The listeners' random ticket keys, as a socket for the new process (see `upgrade`), so
/// sessions issued here resume there. `None` when there are none; a failure is reported
/// and the upgrade goes on without them (sessions then do one full handshake).
#[cfg(all(unix, feature = "tls", any(feature = "async-io", feature = "tokio")))]
fn ticket_keys(core: &Core) -> Option<std::os::fd::OwnedFd> {
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
    crate::upgrade::message(&bytes)
        .map_err(|e| {
            let e = crate::upgrade::UpgradeError::Channel(e);
            core.hooks().error(&Error::Upgrade(e));
        })
        .ok()
}

/// An upgrade, start to end (see [`ServerHandle::upgrade_with`]); its result goes to
/// `done`.
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
async fn run_upgrade(
    core: Arc<Core>,
    command: std::process::Command,
    done: crate::sync::Oneshot<Result<crate::upgrade::Upgraded, crate::upgrade::UpgradeError>>,
) {
    use crate::upgrade::{UpgradeError, Upgraded};
    if let Err(e) = crate::systemd::reloading() {
        core.hooks().error(&Error::Notify(e));
    }
    let handed = async {
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut sockets = core
            .handovers()
            .duplicates()
            .map_err(UpgradeError::Channel)?;
        let names: Vec<String> = sockets.iter().map(|(name, _)| name.clone()).collect();
        #[cfg(feature = "tls")]
        if let Some(keys) = ticket_keys(&core) {
            sockets.push((crate::upgrade::TICKET_KEYS.to_owned(), keys));
        }
        let timeout = core.config().upgrade_timeout;
        let (pid, child) = crate::sync::on_thread("berth-upgrade", move || {
            crate::upgrade::hand_over(command, &sockets, timeout)
        })
        .await
        .map_err(UpgradeError::Channel)??;
        // The new process accepts on every socket: stop here, keeping Unix socket files;
        // unless a shutdown began meanwhile, which wins: the new process must not serve on.
        if !core
            .handovers()
            .handed_over_unless(|| core.stop().stop_accepting_requested())
        {
            crate::upgrade::stop_child(child);
            return Err(UpgradeError::ShuttingDown);
        }
        // Not reaped here: the new process outlives this one, and whoever adopts it (init or a
        // supervisor acting as subreaper) must see its exit status, so waiting on it from a
        // thread would steal that status when generations overlap.
        drop(child);
        Ok(Upgraded {
            pid,
            listeners: names,
        })
    };
    let result = handed.await;
    match &result {
        Ok(upgraded) => {
            core.readiness().set_handed_over();
            let announced = format!("MAINPID={}\nREADY=1\n", upgraded.pid);
            if let Err(e) = crate::systemd::notify(&announced) {
                core.hooks().error(&Error::Notify(e));
            }
            core.hooks()
                .server(ServerEvent::Upgraded { pid: upgraded.pid });
            let grace = core.config().drain_timeout;
            let draining = core.clone();
            core.runtime().spawn(Box::pin(async move {
                let _ = crate::shutdown::stop(&draining, grace, false).await;
            }));
        }
        Err(e) => {
            core.handovers().end_upgrade();
            // The reload is over: this process serves on.
            if let Err(e) = crate::systemd::notify("READY=1\n") {
                core.hooks().error(&Error::Notify(e));
            }
            core.hooks().server(ServerEvent::UpgradeFailed {
                reason: e.to_string(),
            });
        }
    }
    done.send(result);
}
