//! One connection's task, from accept to close: the tune hook, a PROXY header from a trusted
//! proxy (and admission on the client's original address), the TLS handshake, then the
//! handler, supervised so that a panic is contained and a server-side close cancels it.
//!
//! The task owns the connection's [`Lifecycle`] until the `Conn` takes it; whatever ends
//! the connection, dropping the lifecycle finishes it. Slow steps (the header, the
//! handshake) are bounded by `handshake_timeout` and cut short by a forced shutdown.
//!
//! The task is compiled per handler type, so the handler's future sits inside it, not in an
//! allocation of its own; the stream arrives boxed (`Conn` holds it boxed anyway), which is
//! what lets one server serve listeners of different types. The setup steps are boxed or
//! synchronous, so an idle connection's task is about the size of its handler's future.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::FutureExt as _;

use crate::addr::Addr;
use crate::conn::{Conn, ConnHandle, Meta};
use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::error::ServeError;
use crate::events::CloseReason;
use crate::handler::Handler;
use crate::lifecycle::Lifecycle;
use crate::limits::RejectReason;
use crate::listener::{ByteStream, Prefixed, Socket};

/// A hook run on every accepted socket before its handler starts.
pub(crate) type TuneHook = Arc<dyn Fn(&Socket<'_>) -> io::Result<()> + Send + Sync>;

/// An accepted and admitted connection, as the accept loop hands it to its task.
pub(crate) struct Admitted {
    pub(crate) life: Lifecycle,
    pub(crate) stream: Box<dyn ByteStream>,
    /// The listener that accepted it.
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) local_addr: Addr,
    /// The peer is a trusted proxy that must send a PROXY header first.
    pub(crate) proxied: bool,
}

/// Starts connection tasks; what an accept loop knows of the server it feeds.
pub(crate) trait Spawn: Send + Sync {
    fn spawn(self: Arc<Self>, accepted: Box<Admitted>);
}

/// What every connection of one server needs, shared by its tasks.
pub(crate) struct Serving<H> {
    pub(crate) core: Arc<Core>,
    pub(crate) handler: H,
    pub(crate) tune: Option<TuneHook>,
}

impl<H: Handler> Spawn for Serving<H> {
    fn spawn(self: Arc<Self>, accepted: Box<Admitted>) {
        let runtime = self.core.runtime().clone();
        #[cfg(feature = "fault")]
        if let Some(delay) = self.core.fault_delay(crate::fault::Point::DelayedSpawn) {
            let late = runtime.clone();
            return runtime.spawn(Box::pin(async move {
                late.sleep(delay).await;
                run(self, accepted).await;
            }));
        }
        runtime.spawn(Box::pin(run(self, accepted)));
    }
}

/// Runs one connection.
async fn run<H: Handler>(serving: Arc<Serving<H>>, accepted: Box<Admitted>) {
    // In a block of its own, so the `Conn` the setup returns does not keep a slot in the
    // task's state beside the handler's future, which holds it from then on (an async fn
    // keeps every local that lives across an `.await`, even once it is moved out).
    use futures_lite::FutureExt as _;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let core = serving.core.clone();
    let (id, handler) = {
        let (conn, span) = match establish(&serving, *accepted) {
            Established::Ready(conn, span) => (conn, span),
            Established::Pending(setup) => match AssertUnwindSafe(setup).catch_unwind().await {
                Ok(Some(established)) => established,
                Ok(None) => return,
                // A hook in the setup panicked; the connection was dropped with it.
                Err(payload) => {
                    return core.hooks().error(&ServeError::HookPanicked {
                        hook: "connection setup",
                        message: crate::unwind::message(&*payload),
                    });
                }
            },
            Established::Ended => return,
        };
        let id = conn.id();
        let handle = conn.handle();
        // The handler's synchronous part runs here: guarded like its polls.
        match catch_unwind(AssertUnwindSafe(|| serving.handler.call(conn))) {
            Ok(future) => (id, in_span(Supervised::new(future, handle), span)),
            Err(payload) => {
                return core.hooks().error(&ServeError::HandlerPanicked {
                    conn_id: id,
                    message: crate::unwind::message(&*payload),
                });
            }
        }
    };
    if let Outcome::Panicked(message) = handler.await {
        core.hooks().error(&ServeError::HandlerPanicked {
            conn_id: id,
            message,
        });
    }
}

/// A PROXY header or a TLS handshake to wait for: boxed, because its state is large and
/// short-lived, and inline it would size every connection's task.
type Setup = Pin<Box<dyn Future<Output = Option<(Conn, ConnSpan)>> + Send>>;

/// A connection's setup, done or under way.
// Returned once and matched at once, never stored: boxing `Ready` would cost an allocation
// per connection for nothing.
#[allow(clippy::large_enum_variant)]
enum Established {
    /// The `Conn` and the connection's span.
    Ready(Conn, ConnSpan),
    Pending(Setup),
    /// It ended (and was reported).
    Ended,
}

/// Everything before the handler: the tune hook, the PROXY header, `Accepted`, the TLS
/// handshake. Synchronous for a plain connection.
fn establish<H>(serving: &Serving<H>, accepted: Admitted) -> Established {
    let Admitted {
        mut life,
        stream,
        endpoint,
        local_addr,
        proxied,
    } = accepted;
    #[cfg(feature = "fault")]
    let stream: Box<dyn ByteStream> = match serving.core.faults() {
        Some(faults) => Box::new(crate::fault::Faulty::new(stream, faults.clone())),
        None => stream,
    };
    if let Some(tune) = &serving.tune {
        if let Err(error) = tune_socket(tune, &*stream, life.peer_addr()) {
            life.accept(&local_addr, &endpoint);
            drop(stream);
            life.core().hooks().error(&error);
            life.fail(CloseReason::Error);
            return Established::Ended;
        }
    }
    let meta = Meta {
        local_addr,
        proxy_addr: None,
        endpoint,
    };
    if proxied {
        return Established::Pending(Box::pin(via_proxy(life, stream, meta)));
    }
    open(life, stream, meta)
}

/// Runs the tune hook on the stream's socket (if it has one), containing a panic.
fn tune_socket(tune: &TuneHook, stream: &dyn ByteStream, peer: &Addr) -> Result<(), ServeError> {
    let Some(socket) = stream.socket() else {
        return Ok(());
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tune(&socket))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ServeError::Tune {
            peer: peer.clone(),
            source,
        }),
        Err(payload) => Err(ServeError::HookPanicked {
            hook: "tune",
            message: crate::unwind::message(&*payload),
        }),
    }
}

/// A connection from a trusted proxy: the PROXY header first (bounded like a handshake),
/// admission on the original address, then [`open`].
async fn via_proxy(
    mut life: Lifecycle,
    mut stream: Box<dyn ByteStream>,
    mut meta: Meta,
) -> Option<(Conn, ConnSpan)> {
    let core = life.core().clone();
    let read = async {
        #[cfg(feature = "fault")]
        if core.fault(crate::fault::Point::SplitProxyHeader) {
            let mut one_byte = crate::fault::OneByte(&mut stream);
            return crate::proxy::read_header(&mut one_byte).await;
        }
        crate::proxy::read_header(&mut stream).await
    };
    let read = bounded(
        &core,
        read,
        || "no complete header within the handshake timeout".to_owned(),
        || "server shutting down".to_owned(),
    );
    let header = match read.await {
        Ok(header) => header,
        Err(reason) => {
            drop(stream);
            life.reject(RejectReason::ProxyHeader(reason));
            return None;
        }
    };
    if let Some(source) = header.source {
        meta.proxy_addr = Some(life.replace_peer(source.into()));
    }
    if core.admission_active() {
        match core.admit(life.peer_addr().ip()) {
            Ok(admission) => life.admitted(admission),
            Err(reason) => {
                drop(stream);
                life.reject(reason);
                return None;
            }
        }
    }
    match open(life, Box::new(Prefixed::new(header.rest, stream)), meta) {
        Established::Ready(conn, span) => Some((conn, span)),
        Established::Pending(handshake) => handshake.await,
        Established::Ended => None,
    }
}

/// Bounds a step of connection setup by `handshake_timeout` and a forced shutdown (the
/// errors are made only when needed).
async fn bounded<T, E>(
    core: &Core,
    step: impl Future<Output = Result<T, E>>,
    timed_out: impl FnOnce() -> E,
    forced: impl FnOnce() -> E,
) -> Result<T, E> {
    let timeout = core.config().handshake_timeout;
    let forced = async {
        core.stop().forced().await;
        Err(forced())
    };
    match crate::runtime::timeout(&**core.runtime(), timeout, step.or(forced)).await {
        Some(result) => result,
        None => Err(timed_out()),
    }
}

/// `Accepted`, then the TLS handshake when configured.
fn open(mut life: Lifecycle, stream: Box<dyn ByteStream>, meta: Meta) -> Established {
    let span = conn_span(&life, &meta);
    in_span_sync(&span, || life.accept(&meta.local_addr, &meta.endpoint));
    #[cfg(feature = "tls")]
    if let Some(config) = meta.endpoint.tls() {
        let handshake = handshake(life, config, stream, meta);
        let handshake = in_span(handshake, span.clone());
        return Established::Pending(Box::pin(
            async move { handshake.await.map(|conn| (conn, span)) },
        ));
    }
    Established::Ready(Conn::new(life, stream, meta, None), span)
}

#[cfg(feature = "tls")]
async fn handshake<S: ByteStream>(
    life: Lifecycle,
    config: Arc<rustls::ServerConfig>,
    stream: S,
    meta: Meta,
) -> Option<Conn> {
    use crate::events::{ConnEvent, Count};
    use crate::tls::TlsFailure;

    let core = life.core().clone();
    #[cfg(feature = "metrics")]
    let started = core.runtime().now();
    let handshake = async {
        // Waiting for a place (max_handshakes) counts against the handshake timeout.
        let _place = core.handshake_place().await;
        #[cfg(feature = "fault")]
        if let Some(delay) = core.fault_delay(crate::fault::Point::StalledHandshake) {
            core.runtime().sleep(delay).await;
        }
        crate::tls::handshake(config, core.tls_select(), stream).await
    };
    let result = bounded(
        &core,
        handshake,
        || TlsFailure::Timeout,
        || TlsFailure::Shutdown,
    )
    .await;
    #[cfg(feature = "metrics")]
    crate::metrics::handshake(
        core.runtime().now().saturating_duration_since(started),
        result.is_ok(),
    );
    match result {
        Ok((stream, info)) => {
            #[cfg(feature = "tracing")]
            {
                let span = tracing::Span::current();
                span.record("tls", tracing::field::display(info.version));
                if let Some(alpn) = &info.alpn {
                    let alpn = String::from_utf8_lossy(alpn);
                    span.record("alpn", tracing::field::display(alpn));
                }
            }
            core.count(Count::TlsHandshake);
            if info.resumed {
                core.count(Count::TlsResumed);
            }
            core.hooks().conn(ConnEvent::TlsEstablished {
                id: life.id(),
                info: Box::new(info.clone()),
            });
            Some(Conn::new(life, Box::new(stream), meta, Some(info)))
        }
        Err(reason) => {
            // The stream was dropped with the handshake: the socket is closed.
            core.count(Count::TlsFailure);
            core.hooks().conn(ConnEvent::TlsFailed {
                id: life.id(),
                peer_addr: life.peer_addr().clone(),
                reason,
            });
            life.fail(CloseReason::TlsFailed);
            None
        }
    }
}

/// The connection's span (feature `tracing`): id, peer, proxy, and the TLS version and ALPN
/// once known. The whole connection, handshake, handler and `Closed` event included, runs
/// inside it. Without the feature it is `()` and costs nothing.
#[cfg(feature = "tracing")]
type ConnSpan = tracing::Span;
#[cfg(not(feature = "tracing"))]
#[derive(Clone)]
struct ConnSpan;

fn conn_span(life: &Lifecycle, meta: &Meta) -> ConnSpan {
    #[cfg(feature = "tracing")]
    {
        let span = tracing::info_span!(
            target: "berth",
            "conn",
            id = life.id(),
            peer = %life.peer_addr(),
            proxy = tracing::field::Empty,
            tls = tracing::field::Empty,
            alpn = tracing::field::Empty,
        );
        if let Some(proxy) = &meta.proxy_addr {
            span.record("proxy", tracing::field::display(proxy));
        }
        span
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = (life, meta);
        ConnSpan
    }
}

fn in_span<F: Future>(future: F, span: ConnSpan) -> impl Future<Output = F::Output> {
    #[cfg(feature = "tracing")]
    return tracing::Instrument::instrument(future, span);
    #[cfg(not(feature = "tracing"))]
    {
        let ConnSpan = span;
        future
    }
}

/// Runs `f` inside `span`.
fn in_span_sync<T>(span: &ConnSpan, f: impl FnOnce() -> T) -> T {
    #[cfg(feature = "tracing")]
    return span.in_scope(f);
    #[cfg(not(feature = "tracing"))]
    {
        let ConnSpan = span;
        f()
    }
}

/// How a handler ended.
enum Outcome {
    Done,
    Panicked(String),
    /// The server closed the connection and the handler did not return on its own.
    Cancelled,
}

pin_project_lite::pin_project! {
    /// Polls the handler; if the server closes the connection, the handler gets one more
    /// poll to see the error from its pending I/O and return, then it is dropped (which
    /// closes the socket even if the handler was not doing I/O). Its polls and its drop
    /// (which runs the user's `Drop` code) are guarded: a panic is caught and reported.
    struct Supervised<F> {
        #[pin]
        handler: Option<F>,
        conn: ConnHandle,
        // The waker last registered in the slot: registering costs an atomic
        // read-modify-write per poll, and a task's waker rarely changes.
        registered: Option<std::task::Waker>,
    }
}

impl<F> Supervised<F> {
    fn new(handler: F, conn: ConnHandle) -> Self {
        Supervised {
            handler: Some(handler),
            conn,
            registered: None,
        }
    }
}

/// Drops the handler's future now, catching a panic from its `Drop` code.
fn drop_guarded<F>(mut handler: Pin<&mut Option<F>>) -> Option<String> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    catch_unwind(AssertUnwindSafe(|| handler.set(None)))
        .err()
        .map(|payload| crate::unwind::message(&*payload))
}

impl<F: Future<Output = ()>> Future for Supervised<F> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let mut this = self.project();
        // A server-side close cancels the handler only once it has been polled with the close
        // visible: its pending I/O then fails (TimedOut, ConnectionAborted) and it may react.
        // A close that lands during a poll earns one more poll (at most: the next sees it).
        loop {
            let Some(handler) = this.handler.as_mut().as_pin_mut() else {
                return Poll::Ready(Outcome::Done);
            };
            let closed_before = this.conn.closed_by_server();
            match catch_unwind(AssertUnwindSafe(|| handler.poll(cx))) {
                Ok(Poll::Ready(())) => {
                    return Poll::Ready(match drop_guarded(this.handler.as_mut()) {
                        None => Outcome::Done,
                        Some(message) => Outcome::Panicked(message),
                    });
                }
                Ok(Poll::Pending) => {}
                Err(payload) => {
                    // Marked before the handler (and its Conn) is dropped, so the Closed
                    // event says Panicked.
                    this.conn.mark_panicked();
                    let _ = drop_guarded(this.handler.as_mut());
                    return Poll::Ready(Outcome::Panicked(crate::unwind::message(&*payload)));
                }
            }
            // Only a server-side close cancels: a handler that dropped its Conn early and
            // carries on is left alone (its connection has already ended).
            if closed_before {
                return Poll::Ready(cancel(this.handler.as_mut()));
            }
            if this.conn.closed_by_server() {
                continue;
            }
            // The slot's task waker is consumed only by the close that kills this handler,
            // so skipping an unchanged registration cannot lose a wake-up.
            if !this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                this.conn.register_task(cx.waker());
                *this.registered = Some(cx.waker().clone());
            }
            if this.conn.closed_by_server() {
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// Cancels a handler the server closed: drops it now (guarded).
fn cancel<F>(handler: Pin<&mut Option<F>>) -> Outcome {
    match drop_guarded(handler) {
        None => Outcome::Cancelled,
        Some(message) => Outcome::Panicked(message),
    }
}

#[cfg(all(test, feature = "smol"))]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hooks::Hooks;

    /// A stream that never has anything: only its type matters here.
    struct Idle;

    impl futures_io::AsyncRead for Idle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    impl futures_io::AsyncWrite for Idle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl ByteStream for Idle {}

    fn addr(port: u16) -> Addr {
        std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()
    }

    /// Every open connection holds its task and its handler's future: most of berth's memory
    /// per idle connection. The TLS handshake is boxed so its large state is not inlined.
    #[test]
    fn a_plain_connection_task_stays_small() {
        let tls = None;
        let runtime = Arc::new(crate::runtime::Smol::global());
        let endpoint = Arc::new(Endpoint::new("test".into(), addr(1), tls));
        let core = Arc::new(Core::new(
            runtime,
            Config::default(),
            Hooks::default(),
            vec![endpoint],
        ));
        let serving = Arc::new(Serving {
            core: core.clone(),
            handler: |mut conn: Conn| async move {
                let _ = conn.readable().await;
            },
            tune: None,
        });
        let accepted = Box::new(Admitted {
            life: Lifecycle::new(core.clone(), addr(2), None),
            stream: Box::new(Idle),
            endpoint: core.endpoints()[0].clone(),
            local_addr: addr(1),
            proxied: false,
        });
        let task = run(serving, accepted);
        let size = std::mem::size_of_val(&task);
        // With `tracing` the task also holds the connection's span.
        // 448 bytes here with `tracing` (whose span the task also holds); before the task was
        // split into a synchronous setup and the handler, it was over 1,100.
        let limit = if cfg!(feature = "tracing") { 512 } else { 480 };
        assert!(
            size <= limit,
            "a connection's task, with its handler inside, grew to {size} bytes (limit {limit})"
        );
        drop(task);
        assert_eq!(core.open_connections(), 0, "its lifecycle ended");
    }
}
