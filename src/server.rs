//! `Server` (bind, then serve a handler) and `ServerHandle` (control and observe it).

use std::io;
use std::net::SocketAddr;

use crate::addr::Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::error::{ConfigError, Error};
use crate::events::{ConnEvent, Counters, Hooks, ServerEvent, Stats};
use crate::handler::Handler;
use crate::idle::Clock;
use crate::listener::Listener;
use crate::pool::Pool;
use crate::runtime::Runtime;
use crate::shutdown::{Shutdown, ShutdownReport};

/// Where a server is in its life. It only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Bound, not serving yet.
    Created = 0,
    /// Accepting and serving connections.
    Running = 1,
    /// Shutting down: the listener is closed, open connections are finishing.
    Draining = 2,
    /// Stopped: nothing is accepted, no connection is open.
    Stopped = 3,
}

/// The state every part of one server shares.
pub(crate) struct Shared {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) config: Config,
    state: AtomicU8,
    pub(crate) pool: Pool,
    pub(crate) clock: Clock,
    pub(crate) shutdown: Shutdown,
    pub(crate) hooks: Hooks,
    pub(crate) counters: Counters,
    pub(crate) next_id: AtomicU64,
    pub(crate) limiter: crate::limits::Limiter,
    reports_in_flight: std::sync::atomic::AtomicUsize,
    local_addr: Addr,
    /// Swapped whole by a reload; each connection clones the `Arc` once, at accept.
    #[cfg(feature = "tls")]
    tls: std::sync::RwLock<Option<Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("state", &self.state())
            .field("open_connections", &self.pool.count())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Created,
            1 => State::Running,
            2 => State::Draining,
            _ => State::Stopped,
        }
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// The end of every connection, once its socket is closed: stats, the count, the `Closed`
    /// event. The count drops before the event (a hook that sees `Closed` sees the new
    /// count); the report stays "in flight" until the event is out, and shutdown waits for
    /// in-flight reports too (after it returns, every `Closed` event has fired).
    pub(crate) fn finish(
        &self,
        mut permit: Permit,
        id: u64,
        peer_addr: Addr,
        reason: crate::events::CloseReason,
        opened_at: std::time::Instant,
    ) {
        self.counters.closed(reason);
        self.reports_in_flight.fetch_add(1, Ordering::AcqRel);
        permit.release();
        self.hooks.conn(ConnEvent::Closed {
            id,
            peer_addr,
            reason,
            duration: self.runtime.now().saturating_duration_since(opened_at),
        });
        self.reports_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.shutdown.conn_closed.notify(usize::MAX);
    }

    /// Nanoseconds since the server started, on the runtime's clock.
    pub(crate) fn clock_now(&self) -> u64 {
        self.clock.since_origin(self.runtime.now())
    }

    /// Refuses a connection: counted and reported, never served. The caller drops the
    /// stream, which closes it.
    pub(crate) fn reject(&self, peer_addr: Addr, reason: crate::limits::RejectReason) {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        self.hooks.conn(ConnEvent::Rejected { peer_addr, reason });
    }

    /// Whether no connection is open and every `Closed` event has fired.
    pub(crate) fn all_closed(&self) -> bool {
        self.pool.count() == 0 && self.reports_in_flight.load(Ordering::Acquire) == 0
    }

    /// The TLS configuration new connections use, if this is a TLS server.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls().is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Bookkeeping for a connection whose socket was just closed.
    pub(crate) fn connection_closed(&self) {
        self.pool.count_down();
        self.shutdown.conn_closed.notify(usize::MAX);
    }
}

/// One open-connection count, taken by the accept loop and given back exactly once: when
/// the connection's `Conn` is dropped, or when the connection dies before it has one.
pub(crate) struct Permit {
    shared: Arc<Shared>,
    released: bool,
    /// The per-IP admission to give back with the count.
    pub(crate) ip: Option<crate::limits::IpKey>,
}

impl Permit {
    pub(crate) fn new(shared: Arc<Shared>) -> Permit {
        shared.pool.count_up();
        Permit {
            shared,
            released: false,
            ip: None,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Moves the count into a new permit; this one no longer holds it.
    pub(crate) fn take(&mut self) -> Permit {
        Permit {
            shared: self.shared.clone(),
            released: std::mem::replace(&mut self.released, true),
            ip: self.ip.take(),
        }
    }

    /// Gives the count back now (idempotent).
    pub(crate) fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            if let Some(ip) = self.ip.take() {
                self.shared.limiter.release(ip, self.shared.clock_now());
            }
            self.shared.connection_closed();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(feature = "tls")]
type TlsSetup = Option<Arc<rustls::ServerConfig>>;
#[cfg(not(feature = "tls"))]
type TlsSetup = ();

/// A hook run on every accepted stream before its handler starts.
pub(crate) type TuneHook<S> = Arc<dyn Fn(&S) -> io::Result<()> + Send + Sync>;

/// The runtime used when none is given: smol if enabled, else async-std.
fn default_runtime() -> Option<Arc<dyn Runtime>> {
    #[cfg(feature = "smol")]
    return Some(Arc::new(crate::runtime::Smol::global()));
    #[cfg(all(feature = "async-std", not(feature = "smol")))]
    return Some(Arc::new(crate::runtime::AsyncStd));
    #[allow(unreachable_code)]
    None
}

/// Builds a [`Server`]: a config, optionally a runtime and hooks, then a listener.
///
/// ```no_run
/// # fn main() -> Result<(), berth::Error> {
/// let server = berth::Builder::new(berth::Config::new("127.0.0.1:0"))
///     .on_error(|e| eprintln!("berth: {e}"))
///     .on_conn_event(|e| println!("{e:?}"))
///     .bind()?;
/// # Ok(()) }
/// ```
pub struct Builder {
    config: Config,
    runtime: Option<Arc<dyn Runtime>>,
    hooks: Hooks,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
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
        Builder {
            config,
            runtime: None,
            hooks: Hooks::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Serves TLS with a rustls configuration you built yourself (full control over
    /// verifiers, resolvers, key logging...). Takes precedence over `Config::tls`.
    #[cfg(feature = "tls")]
    pub fn tls_server_config(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Runs the server on `runtime` instead of the default (smol's global executor when the
    /// `smol` feature is on, else async-std's).
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

    /// Calls `hook` for every error, including a failed bind. See [`ServerHandle::on_error`].
    pub fn on_error(self, hook: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.hooks.set_error(Some(Arc::new(hook)));
        self
    }

    /// Binds a TCP listener as the config says (address, backlog, reuse_port, nodelay).
    /// A failure is returned and also reported to the error hook.
    #[cfg(feature = "tcp")]
    pub fn bind(self) -> Result<Server<crate::listener::TcpListener>, Error> {
        let bound = if self.config.unix.is_some() {
            Err(ConfigError::ListenerMismatch("`unix` is set but bind listens on TCP").into())
        } else {
            crate::listener::TcpListener::bind(&self.config)
        };
        match bound {
            Ok(listener) => self.listener(listener),
            Err(e) => {
                self.hooks.error(&e);
                Err(e)
            }
        }
    }

    /// Listens on the Unix domain socket `config.unix` describes (path, mode, group); see
    /// [`UnixConfig`](crate::UnixConfig).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), berth::Error> {
    /// let mut config = berth::Config::default();
    /// config.unix = Some(berth::UnixConfig {
    ///     mode: Some(0o660),
    ///     ..berth::UnixConfig::new("/run/app/app.sock")
    /// });
    /// let server = berth::Builder::new(config).bind_unix()?;
    /// # Ok(()) }
    /// ```
    #[cfg(all(unix, feature = "tcp"))]
    pub fn bind_unix(self) -> Result<Server<crate::listener::UnixListener>, Error> {
        match crate::listener::UnixListener::bind(&self.config) {
            Ok(listener) => self.listener(listener),
            Err(e) => {
                self.hooks.error(&e);
                Err(e)
            }
        }
    }

    /// Serves on the socket systemd passed this process (socket activation) if there is
    /// one, else binds the config's address like [`bind`](Self::bind).
    #[cfg(feature = "tcp")]
    pub fn bind_or_inherit(self) -> Result<Server<crate::listener::TcpListener>, Error> {
        match crate::listener::TcpListener::from_systemd(&self.config) {
            Ok(Some(listener)) => self.listener(listener),
            Ok(None) => self.bind(),
            Err(e) => {
                self.hooks.error(&e);
                Err(e)
            }
        }
    }

    /// Serves connections from `listener` (any [`Listener`]: a simulated one, an inherited
    /// socket). The config's `address` is not used.
    pub fn listener<L: Listener>(self, listener: L) -> Result<Server<L>, Error> {
        let (runtime, local_addr, tls) = match self.check(&listener) {
            Ok(checked) => checked,
            Err(e) => {
                self.hooks.error(&e);
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            clock: Clock::new(runtime.now()),
            runtime,
            config: self.config.clone(),
            state: AtomicU8::new(State::Created as u8),
            pool: Pool::default(),
            shutdown: Shutdown::default(),
            hooks: self.hooks,
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            limiter: crate::limits::Limiter::new(self.config.limits.clone()),
            reports_in_flight: Default::default(),
            local_addr,
            #[cfg(feature = "tls")]
            tls: std::sync::RwLock::new(tls),
        });
        #[cfg(not(feature = "tls"))]
        let () = tls;
        Ok(Server {
            shared,
            listener,
            tune: None,
        })
    }

    #[allow(clippy::type_complexity)]
    fn check<L: Listener>(
        &self,
        listener: &L,
    ) -> Result<(Arc<dyn Runtime>, Addr, TlsSetup), Error> {
        self.config.validate_settings()?;
        let runtime = self
            .runtime
            .clone()
            .or_else(default_runtime)
            .ok_or(ConfigError::NoRuntime)?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)).into(),
            source,
        })?;
        Ok((runtime, local_addr, self.load_tls()?))
    }

    #[cfg(feature = "tls")]
    fn load_tls(&self) -> Result<TlsSetup, Error> {
        if let Some(config) = &self.tls {
            return Ok(Some(config.clone()));
        }
        let Some(tls) = &self.config.tls else {
            return Ok(None);
        };
        let (config, warnings) = tls.load()?;
        for warning in warnings {
            self.hooks.error(&Error::CertificateNotValid(warning));
        }
        Ok(Some(config))
    }

    #[cfg(not(feature = "tls"))]
    fn load_tls(&self) -> Result<TlsSetup, Error> {
        Ok(())
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
/// // ... later:
/// handle.shutdown(std::time::Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
pub struct Server<L: Listener> {
    pub(crate) shared: Arc<Shared>,
    listener: L,
    tune: Option<TuneHook<L::Stream>>,
}

impl<L: Listener> std::fmt::Debug for Server<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

#[cfg(feature = "tcp")]
impl Server<crate::listener::TcpListener> {
    /// Binds a TCP server with the default runtime. Same as
    /// `Builder::new(config).bind()`.
    pub fn bind(config: Config) -> Result<Self, Error> {
        Builder::new(config).bind()
    }

    /// A [`Builder`], to set a runtime or hooks before binding.
    pub fn builder(config: Config) -> Builder {
        Builder::new(config)
    }
}

#[cfg(all(unix, feature = "tcp"))]
impl Server<crate::listener::UnixListener> {
    /// Binds a Unix domain socket server (`config.unix`) with the default runtime. Same as
    /// `Builder::new(config).bind_unix()`.
    pub fn bind_unix(config: Config) -> Result<Self, Error> {
        Builder::new(config).bind_unix()
    }
}

impl<L: Listener> Server<L> {
    /// The bound address (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> Addr {
        self.shared.local_addr.clone()
    }

    /// A handle to control and observe the server; usable before and after `serve`.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs `hook` on every accepted stream, after berth's own socket options (so the hook
    /// wins), on the connection's task before its handler starts. An error or panic closes
    /// that connection and is reported to the error hook.
    ///
    /// ```no_run
    /// # fn f(server: berth::Server<berth::listener::TcpListener>) {
    /// let server = server.tune(|stream| {
    ///     socket2::SockRef::from(stream.get_ref()).set_send_buffer_size(1 << 20)
    /// });
    /// # }
    /// ```
    pub fn tune(
        mut self,
        hook: impl Fn(&L::Stream) -> io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.tune = Some(Arc::new(hook));
        self
    }

    /// Starts serving: spawns the accept loop (and the idle scanner, when an idle timeout is
    /// set) on the runtime and returns at once. Every connection runs `handler` on a task
    /// of its own. The server runs until [`ServerHandle::shutdown`] or
    /// [`ServerHandle::close`]; dropping handles does not stop it.
    pub fn serve<H: Handler>(self, handler: H) -> ServerHandle {
        let shared = self.shared;
        shared.set_state(State::Running);
        shared.hooks.server(ServerEvent::Listening {
            addr: shared.local_addr.clone(),
            tls: shared.is_tls(),
        });
        if let Some(timeout) = shared.config.idle_timeout {
            let task = crate::idle::scan(shared.clone(), timeout);
            shared.runtime.spawn(Box::pin(task));
        }
        let task =
            crate::accept::accept_loop(shared.clone(), self.listener, Arc::new(handler), self.tune);
        shared.runtime.spawn(Box::pin(task));
        ServerHandle { shared }
    }
}

/// Controls and observes a server. Cheap to clone; every method is safe to call from any
/// task or thread, at any time, any number of times.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Graceful shutdown: stop accepting at once (new clients are refused), tell every
    /// connection to drain ([`Conn::draining`](crate::Conn::draining) resolves), and wait
    /// for handlers to finish. Returns as soon as no connection is open. When `deadline`
    /// passes first, the remaining connections are force-closed and
    /// [`Error::ShutdownTimeout`] says how many ("timeout on stopping socket").
    ///
    /// Before `serve`, this does nothing and returns `Ok`. Concurrent and repeated calls wait
    /// for the first one and return its result.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, Error> {
        crate::shutdown::stop(&self.shared, deadline, false).await
    }

    /// [`shutdown`](Self::shutdown) with the config's `drain_timeout`.
    pub async fn shutdown_graceful(&self) -> Result<ShutdownReport, Error> {
        self.shutdown(self.shared.config.drain_timeout).await
    }

    /// Immediate stop: stop accepting, force-close every connection (cancelling handlers),
    /// and return once their sockets are closed. Also cuts short a graceful shutdown in
    /// progress.
    pub async fn close(&self) -> ShutdownReport {
        let _ = crate::shutdown::stop(&self.shared, Duration::ZERO, true).await;
        self.shared.shutdown.report()
    }

    /// Waits until the server has stopped (after `shutdown` or `close`, called anywhere).
    pub async fn stopped(&self) {
        self.shared.shutdown.stopped.wait().await;
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.state()
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
        self.shared.pool.count()
    }

    /// The bound address (with the real port when the config asked for port 0; a path
    /// for a Unix socket server).
    pub fn local_addr(&self) -> Addr {
        self.shared.local_addr.clone()
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot(self.shared.pool.count())
    }

    /// Sets (or replaces) the connection event hook; takes effect for the next event.
    pub fn on_conn_event(&self, hook: impl Fn(&ConnEvent) + Send + Sync + 'static) {
        self.shared.hooks.set_conn(Some(Arc::new(hook)));
    }

    /// Sets (or replaces) the server event hook.
    pub fn on_server_event(&self, hook: impl Fn(&ServerEvent) + Send + Sync + 'static) {
        self.shared.hooks.set_server(Some(Arc::new(hook)));
    }

    /// Sets (or replaces) the error hook.
    pub fn on_error(&self, hook: impl Fn(&Error) + Send + Sync + 'static) {
        self.shared.hooks.set_error(Some(Arc::new(hook)));
    }

    /// Whether this server serves TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.is_tls()
    }

    /// Loads `tls` and makes it the configuration of every new connection; established
    /// connections keep their session. On error (a missing file, a key that does not match)
    /// the old configuration stays in force and the error is returned.
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self, tls: &crate::tls::TlsConfig) -> Result<(), Error> {
        let (config, warnings) = tls.load()?;
        self.set_tls_server_config(config)?;
        for warning in warnings {
            self.shared
                .hooks
                .error(&Error::CertificateNotValid(warning));
        }
        Ok(())
    }

    /// Replaces the rustls configuration used for new connections.
    #[cfg(feature = "tls")]
    pub fn set_tls_server_config(&self, config: Arc<rustls::ServerConfig>) -> Result<(), Error> {
        let mut current = self.shared.tls.write().unwrap_or_else(|e| e.into_inner());
        if current.is_none() {
            return Err(crate::tls::TlsError::NotEnabled.into());
        }
        *current = Some(config);
        Ok(())
    }

    /// Removes every hook.
    pub fn clear_hooks(&self) {
        self.shared.hooks.set_conn(None);
        self.shared.hooks.set_server(None);
        self.shared.hooks.set_error(None);
    }
}
