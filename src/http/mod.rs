//! HTTP/1.1 and HTTP/2 through hyper (feature `http`): serve a hyper
//! [`Service`](hyper::service::Service) on every connection of a berth server, on any runtime.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http_body_util::Full;
//! use hyper::{Request, Response, body::{Bytes, Incoming}};
//!
//! async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
//! }
//!
//! fn main() -> Result<(), berth::Error> {
//!     let signals = berth::signal::Signals::with_hangup()?;
//!     let mut config = berth::Config::new("127.0.0.1:8080");
//!     config.idle_timeout = Some(std::time::Duration::from_secs(60)); // between requests
//!     let http = berth::http::Http::new(hyper::service::service_fn(hello));
//!     let handle = berth::Server::bind(config)?.serve(http);
//!     // SIGTERM/SIGINT drain, SIGHUP upgrades: nothing in flight is lost.
//!     let report = futures_lite::future::block_on(handle.run(&signals))?;
//!     println!("shutdown complete: {report}");
//!     Ok(())
//! }
//! ```
//!
//! What berth adds around hyper:
//! - **Protocols**: HTTP/1.1, and HTTP/2 by prior knowledge on plain connections (told apart
//!   by the first bytes); over TLS the ALPN choice decides (offer `h2` and `http/1.1` in
//!   [`TlsConfig::alpn`](crate::tls::TlsConfig::alpn)).
//! - **A drain or an upgrade loses no request.** A request in flight completes. Once the
//!   server drains, every HTTP/1 response carries `Connection: close` (the client reconnects,
//!   to the new process after an upgrade), and a keep-alive connection with no request in
//!   progress is closed only after it stayed quiet for [`Http::drain_grace`]: a client
//!   whose next request is already on the wire gets it answered, with `Connection: close`.
//!   HTTP/2 connections get a graceful GOAWAY: streams in flight finish, new ones are refused
//!   with a retryable error. One race no server can close remains: a client that stayed
//!   idle through the whole grace and sends at the very instant its connection closes sees
//!   the close (its request was never read, so it may safely retry it; HTTP clients retry
//!   idempotent requests on a reused connection for this reason). A longer grace makes it
//!   rarer.
//! - **Timeouts that know about requests.** Each request marks its connection
//!   [busy](crate::Conn::busy) until its response is written, so
//!   [`Config::idle_timeout`](crate::Config::idle_timeout) counts only between requests and
//!   never cuts a slow request. [`Http::header_timeout`] closes a connection whose request
//!   head is not complete in time (a slowloris client), counted from the connection's start
//!   for the first request and from the first byte for the next ones. An optional
//!   [`Http::request_timeout`] answers `503` when the service takes longer.
//! - **The connection**: [`ConnInfo`] (addresses, TLS, the runtime, the connection's
//!   handle), in each request's extensions with [`Http::new`], or given once to the
//!   service maker of [`Http::per_connection`] (no per-request cost).
//! - **Per request**: metrics (feature `metrics`: `berth_http_requests_total{class}`,
//!   `berth_http_requests_in_flight`, `berth_http_request_duration_seconds{class}`, a
//!   request lasting from the first byte of its HTTP/1 head (a connection's first
//!   request, and an HTTP/2 stream: from its call to the service) to the end of its
//!   response) and a `tracing` event per request (feature
//!   `tracing`, target `berth::http`, level debug).
//! - **The runtime**: hyper's executor and timer come from the connection's runtime
//!   ([`HyperRuntime`]); nothing is written per runtime, and the same service runs under
//!   berth-sim's simulated network and clock.

mod info;
mod io;
mod make;
mod rt;
mod service;
mod state;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::server::conn::auto;

pub use self::info::ConnInfo;
pub use self::make::{MakeService, PerConnection};
pub use self::rt::HyperRuntime;
use self::service::Svc;
use self::state::Shared;
use crate::conn::Conn;
use crate::handler::Handler;
use crate::runtime::BoxTimer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves a hyper service on each connection: a berth [`Handler`]. See the [module
/// docs](self).
///
/// [`Http::new`] shares one service among all connections (`Arc`); it is called once per
/// request with `&self`, so per-request state lives in its future, and each request
/// carries the connection's [`ConnInfo`] in its extensions. [`Http::per_connection`] makes
/// a service per connection from its `ConnInfo` instead (hyper's own idiom: the service
/// captures what it needs of the connection), and spares each request the extension's
/// allocations.
pub struct Http<S> {
    service: Arc<S>,
    header_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    drain_grace: Duration,
    max_concurrent_streams: Option<u32>,
}

impl<S> Clone for Http<S> {
    fn clone(&self) -> Self {
        Http {
            service: self.service.clone(),
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
            drain_grace: self.drain_grace,
            max_concurrent_streams: self.max_concurrent_streams,
        }
    }
}

impl<S> std::fmt::Debug for Http<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("header_timeout", &self.header_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("drain_grace", &self.drain_grace)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .finish_non_exhaustive()
    }
}

/// The default [`Http::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`Http::drain_grace`].
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(1);

impl<S> Http<S> {
    /// Serves `service`, shared by every connection, with the defaults: a 30 s header
    /// timeout, no request timeout, a 1 s drain grace. Each request carries
    /// `Arc<`[`ConnInfo`]`>` in its extensions.
    pub fn new(service: S) -> Self {
        Http {
            service: Arc::new(service),
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            request_timeout: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
            max_concurrent_streams: None,
        }
    }

    /// How long an HTTP/1 request head may take to arrive, from the connection's start for
    /// the first request and from its first byte for the next ones; then the connection is
    /// closed (against slowloris clients, which hold a connection open by sending a header
    /// a byte at a time). `None`: no limit. The wait between requests is the idle timeout's
    /// business ([`Config::idle_timeout`](crate::Config::idle_timeout)).
    pub fn header_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long the service may take to produce a response head; then the client gets
    /// `503 Service Unavailable` (with `Connection: close` on HTTP/1) and the service's
    /// future is dropped. `None` (the default): no limit. A response body already being
    /// sent is not limited (the idle timeout applies to a stalled transfer only through the
    /// busy mark, which such a body holds; bound long bodies yourself).
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// During a drain, how long an HTTP/1 keep-alive connection with no request in
    /// progress is left open for a request already on its way (answered with
    /// `Connection: close`) before it is closed. Longer narrows the race described in the
    /// module docs; the drain waits at most this long for idle connections.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// The most concurrent streams an HTTP/2 client may open on one connection (hyper's
    /// default: 200).
    pub fn max_concurrent_streams(mut self, max: u32) -> Self {
        self.max_concurrent_streams = Some(max);
        self
    }
}

impl<F> Http<PerConnection<F>> {
    /// Serves, on each connection, the service `make` returns for it, with the defaults of
    /// [`Http::new`]. `make` runs once per connection, before its first request; the
    /// service it returns lives as long as the connection and is called once per request.
    /// Requests do not carry [`ConnInfo`] in their extensions: capture what the service
    /// needs of it.
    ///
    /// ```no_run
    /// use std::convert::Infallible;
    /// use std::sync::Arc;
    /// use http_body_util::Full;
    /// use hyper::{Request, Response, body::{Bytes, Incoming}, service::service_fn};
    /// use berth::http::{ConnInfo, Http};
    ///
    /// let http = Http::per_connection(|info: &Arc<ConnInfo>| {
    ///     let peer = info.peer_addr().to_string();
    ///     service_fn(move |_: Request<Incoming>| {
    ///         let reply = format!("hello, {peer}\n");
    ///         async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(reply)))) }
    ///     })
    /// });
    /// # let _ = http;
    /// ```
    pub fn per_connection<S>(make: F) -> Self
    where
        F: Fn(&Arc<ConnInfo>) -> S + Send + Sync + 'static,
    {
        Http::new(PerConnection::new(make))
    }
}

impl<S, B> Handler for Http<S>
where
    S: MakeService,
    S::Service: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    <S::Service as hyper::service::Service<Request<Incoming>>>::Future: Send + 'static,
    <S::Service as hyper::service::Service<Request<Incoming>>>::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn call(&self, conn: Conn) -> impl Future<Output = ()> + Send {
        self.serve(conn)
    }
}

impl<S> Http<S> {
    /// Serves one connection until it ends (the client closes, an error, a drain, a
    /// timeout). What the [`Handler`] implementation runs; call it from a handler of your
    /// own to do something with the connection first.
    pub async fn serve<B>(&self, conn: Conn)
    where
        S: MakeService,
        S::Service:
            hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        <S::Service as hyper::service::Service<Request<Incoming>>>::Future: Send + 'static,
        <S::Service as hyper::service::Service<Request<Incoming>>>::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let rt = conn.runtime().clone();
        let hyper_rt = HyperRuntime::new(rt.clone());
        let alpn = conn.tls().and_then(|tls| tls.alpn_str().map(str::to_owned));
        let info = Arc::new(ConnInfo::new(&conn));
        let shared = Arc::new(Shared::new(
            info.clone(),
            rt.now(),
            alpn.as_deref() == Some("h2"),
        ));
        let draining = conn.draining();

        let mut builder = auto::Builder::new(hyper_rt.clone());
        // The header timeout is berth's (it knows where a head starts); hyper's own would
        // also count the wait between requests.
        builder
            .http1()
            .timer(hyper_rt.clone())
            .header_read_timeout(None);
        let mut h2 = builder.http2();
        h2.timer(hyper_rt);
        if let Some(max) = self.max_concurrent_streams {
            h2.max_concurrent_streams(max);
        }
        let builder = match alpn.as_deref() {
            Some("h2") => builder.http2_only(),
            Some("http/1.1") => builder.http1_only(),
            _ => builder,
        };
        let svc = Svc {
            inner: S::make(&self.service, &info),
            shared: shared.clone(),
            info_in_requests: S::INFO_IN_REQUESTS,
            request_timeout: self.request_timeout,
        };
        let io = io::HyperIo::new(conn, shared.clone());
        let connection = builder.serve_connection_with_upgrades(io, svc);
        let driver = Driver {
            shared,
            header_timeout: self.header_timeout,
            drain_grace: self.drain_grace,
            draining: Some(draining),
            shut: false,
            grace: None,
            header: None,
        };
        driver.run(connection).await;
    }
}

/// Runs one connection's hyper future, and around it the drain and the header timeout.
struct Driver {
    /// The connection's shared state, with its handle and runtime (`info`).
    shared: Arc<Shared>,
    header_timeout: Option<Duration>,
    drain_grace: Duration,
    /// Until the drain reaches this connection.
    draining: Option<crate::conn::Draining>,
    /// hyper was asked to shut the connection down gracefully.
    shut: bool,
    /// The quiet period being timed during a drain: its key (responses finished when it
    /// began) and its timer.
    grace: Option<((u64, u64), BoxTimer)>,
    /// The header timeout's timer, made at the first head and set for the deadline of a
    /// head awaited at some point. It is re-armed only when it fires before the current
    /// head's deadline, so a request costs no timer operation (one re-arm per timeout's
    /// length at most).
    header: Option<BoxTimer>,
}

/// What the driver found that ends or changes the connection.
enum Step {
    /// Shut down gracefully now.
    Shutdown,
    /// Close now (header timeout).
    Close,
    Wait,
}

impl Driver {
    async fn run<F>(mut self, connection: F)
    where
        F: Future + GracefulShutdown,
    {
        let mut connection = std::pin::pin!(connection);
        std::future::poll_fn(|cx| {
            loop {
                if connection.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                match self.step(cx) {
                    Step::Shutdown => {
                        // hyper acts on it at its next poll: closes an idle HTTP/1
                        // connection, sends GOAWAY on HTTP/2.
                        connection.as_mut().shutdown_gracefully();
                        self.shut = true;
                    }
                    // Closed at once, not lingering: the client is too slow to wait for.
                    Step::Close => {
                        self.shared.info().handle().close();
                        return Poll::Ready(());
                    }
                    Step::Wait => return Poll::Pending,
                }
            }
        })
        .await;
    }

    fn step(&mut self, cx: &mut std::task::Context<'_>) -> Step {
        if let Some(draining) = &mut self.draining {
            if Pin::new(draining).poll(cx).is_ready() {
                self.draining = None;
                self.shared.set_draining();
            }
        }
        if self.draining.is_none() && !self.shut {
            if self.shared.is_h2() {
                return Step::Shutdown;
            }
            match self.shared.quiet() {
                Some(key) => {
                    if self.grace.as_ref().is_none_or(|(k, _)| *k != key) {
                        let sleep = self.shared.info().runtime().sleep(self.drain_grace);
                        self.grace = Some((key, sleep));
                    }
                    if let Some((_, sleep)) = &mut self.grace {
                        if sleep.as_mut().poll(cx).is_ready() {
                            self.grace = None;
                            return Step::Shutdown;
                        }
                    }
                }
                // A request in progress: its response says `Connection: close`.
                None => self.grace = None,
            }
        }
        if let Some(timeout) = self.header_timeout {
            // Between requests the timer is not polled: it wakes nobody, and the next head
            // finds it due at once if its deadline passed meanwhile, and re-arms it.
            if let Some(started) = self.shared.head_started() {
                let deadline = crate::runtime::deadline_after(started, timeout);
                let rt = self.shared.info().runtime();
                let timer = self.header.get_or_insert_with(|| rt.timer(deadline));
                while timer.as_mut().poll(cx).is_ready() {
                    if rt.now() >= deadline {
                        return Step::Close;
                    }
                    // Set for an earlier head: wait for this one's deadline instead.
                    timer.as_mut().reset(deadline);
                }
            }
        }
        Step::Wait
    }
}

/// hyper-util's connection futures, whose `graceful_shutdown` takes `Pin<&mut Self>`.
trait GracefulShutdown {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulShutdown for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
