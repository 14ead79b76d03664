//! The public front: [`Builder`] (configure and bind), [`Server`] (bound, ready to serve a
//! handler) and [`ServerHandle`] (control and observe a running server).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::accept::Bound;
use crate::addr::Addr;
use crate::bind::{Binding, Bindings, Tls};
use crate::config::Config;
use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::error::{ConfigError, Error, ServeError};
use crate::events::{ConnEvent, ServerEvent, ShutdownReport, Stats};
use crate::handler::Handler;
use crate::hooks::Hooks;
use crate::listener::{Listener, Socket};
use crate::runtime::Runtime;
use crate::stop::State;
use crate::task::{Serving, Spawn, TuneHook};

/// Each listener's endpoint, and the listener its accept loop takes.
type Listeners = Vec<(Arc<Endpoint>, Box<dyn Bound>)>;

// What TLS adds to the front; without the feature, a plain stand-in with the same items.
#[cfg(feature = "tls")]
mod tls;
#[cfg(not(feature = "tls"))]
#[path = "server/plain.rs"]
mod tls;
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
mod upgrade;

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
    tls: tls::Choice,
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
            tls: tls::Choice::default(),
            #[cfg(feature = "fault")]
            faults: None,
        }
    }

    /// Injects faults at berth's fault points, as `faults` decides (feature `fault`, for
    /// simulation; see [`fault`](crate::fault)).
    #[cfg(feature = "fault")]
    pub fn faults(mut self, faults: impl crate::fault::Faults) -> Self {
        self.faults = Some(Arc::new(faults));
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

    /// Calls `hook` for every error while serving (a [`ServeError`]), and for a failed bind
    /// ([`ServeError::Start`], which is also returned: a hook that prints and a `main` that
    /// prints the returned error print it twice, so attach printing hooks after binding,
    /// with [`ServerHandle::on_error`]).
    pub fn on_error(self, hook: impl Fn(&ServeError) + Send + Sync + 'static) -> Self {
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
        let bound = self.checked().and_then(|runtime| {
            let bindings = crate::bind::bind_all(&self.config, runtime.reactor(), &self.hooks)?;
            Ok((runtime, bindings))
        });
        self.finish(bound)
    }

    /// Serves connections from `listener` (any [`Listener`]: a simulated one, a socket bound
    /// elsewhere), with `config.tls`. The config's `address`, `unix` and `listeners` are not
    /// used; the listener is named by its address.
    pub fn listener<L: Listener>(self, listener: L) -> Result<Server, Error> {
        let listener: Box<dyn Bound> = Box::new(listener);
        let bound = crate::bind::local_addr(&*listener).and_then(|addr| {
            let runtime = self.checked()?;
            let binding = Binding {
                name: addr.to_string(),
                listener,
                tls: Tls::from_settings(self.config.tls.as_ref()),
            };
            Ok((runtime, Bindings::one(binding)))
        });
        self.finish(bound)
    }

    /// The runtime to serve on, once the config's settings are checked.
    fn checked(&self) -> Result<Arc<dyn Runtime>, Error> {
        self.config.validate_settings()?;
        Ok(self.chosen_runtime()?)
    }

    /// Builds the server from the bound listeners (loading their TLS settings), or reports
    /// the error.
    fn finish(self, bound: Result<(Arc<dyn Runtime>, Bindings), Error>) -> Result<Server, Error> {
        let built = bound.and_then(|(runtime, mut bindings)| {
            let (listeners, tasks) = self.endpoints(&runtime, &mut bindings)?;
            Ok((runtime, listeners, tasks, bindings.inheritance))
        });
        let (runtime, listeners, tasks, inheritance) = match built {
            Ok(built) => built,
            Err(e) => {
                let e = ServeError::Start(e);
                self.hooks.error(&e);
                let ServeError::Start(e) = e else {
                    unreachable!("built as Start just above")
                };
                return Err(e);
            }
        };
        let endpoints = listeners.iter().map(|(e, _)| e.clone()).collect();
        let core = Core::new(runtime, self.config, self.hooks, endpoints);
        let core = self.tls.apply(core, &tasks);
        #[cfg(feature = "fault")]
        let core = core.with_faults(self.faults);
        Ok(Server {
            core: Arc::new(core),
            listeners,
            tune: self.tune,
            tasks,
            inheritance,
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
    listeners: Listeners,
    tune: Option<TuneHook>,
    /// What its TLS listeners need beside the accept loops, started once serving.
    tasks: tls::Tasks,
    /// The process this one replaces (if any), told "ready" once serving starts.
    inheritance: crate::bind::Inheritance,
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
        self.tasks.start(&core);
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
        self.inheritance.serving(&core);
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
            crate::shutdown::lame_duck(&self.core, duration).await;
        }
        self.shutdown_within(self.core.config().drain_timeout).await
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
        if let Some(by) = &stopped_by {
            self.upgrade_on_hangup(by).await;
        }
        drop(stopped_by);
        self.shutdown().await
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

    /// Sets (or replaces) the error hook, which is told every [`ServeError`].
    pub fn on_error(&self, hook: impl Fn(&ServeError) + Send + Sync + 'static) {
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
}

/// What `run` (the process's lifecycle, in `run.rs`) needs of a handle.
#[cfg(all(unix, feature = "signal", any(feature = "async-io", feature = "tokio")))]
impl ServerHandle {
    /// The report of the shutdown that stopped the server (default before one finished).
    pub(crate) fn stop_report(&self) -> ShutdownReport {
        self.core.stop().report()
    }

    /// Sends `error` to the error hook.
    pub(crate) fn report_error(&self, error: &ServeError) {
        self.core.hooks().error(error);
    }

    /// The runtime the server runs on.
    pub(crate) fn server_runtime(&self) -> &dyn Runtime {
        self.core.runtime().as_ref()
    }
}
