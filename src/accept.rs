//! The accept loop and the connection task it spawns.
//!
//! The loop only waits for capacity, accepts, counts and spawns: nothing slow (socket
//! tuning hooks, the TLS handshake, the handler) runs on it, so one stalled client can never stop others
//! from being accepted.
//!
//! Accept errors fall in two groups. Errors that concern one connection (ECONNABORTED,
//! ECONNRESET, EINTR) are retried at once. Everything else, notably running out of file
//! descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM), would come back immediately and
//! forever (the pending connection stays in the backlog) and spin a core: the loop backs off
//! on a timer, 5 ms doubling to 1 s, reports the first error of each such episode to the
//! error hook, and resumes at full speed after the next successful accept. The shutdown flag
//! is checked on every turn, so shutdown works even at the fd limit.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::addr::Addr;
use crate::conn::{Conn, Meta, Outcome, Supervised};
use crate::error::Error;
use crate::events::{CloseReason, ConnEvent};
use crate::handler::Handler;
use crate::limits::RejectReason;
use crate::listener::{Accepted, Listener};
use crate::server::{Permit, Shared, TuneHook};

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Waits until a connection may be accepted under `max_connections`. Returns false if
/// shutdown began meanwhile.
async fn capacity(shared: &Shared, max: Option<usize>) -> bool {
    let Some(max) = max else { return true };
    let below = async {
        while shared.pool.count() >= max {
            let listener = shared.shutdown.conn_closed.listen();
            if shared.pool.count() < max {
                break;
            }
            listener.await;
        }
        true
    };
    let stop = async {
        shared.shutdown.stop_accepting.wait().await;
        false
    };
    stop.or(below).await
}

pub(crate) async fn accept_loop<L: Listener, H: Handler>(
    shared: Arc<Shared>,
    listener: L,
    handler: Arc<H>,
    tune: Option<TuneHook<L::Stream>>,
) {
    let max = shared.config.max_connections;
    let mut backoff: Option<Duration> = None;
    while !shared.shutdown.stop_accepting.is_set() {
        if !capacity(&shared, max).await {
            break;
        }
        // Shutdown first: `or` polls its left side first, so a ready shutdown always wins
        // over a ready accept.
        let stop = async {
            shared.shutdown.stop_accepting.wait().await;
            None
        };
        let accepted = stop.or(async { Some(listener.accept().await) }).await;
        match accepted {
            None => break,
            Some(Ok(accepted)) => {
                backoff = None;
                // Direct clients are admitted here, before any task or TLS work; clients of a
                // trusted proxy are admitted on their original address once it is known.
                let proxied = shared
                    .config
                    .proxy_protocol
                    .as_ref()
                    .is_some_and(|p| p.trusts(&accepted.peer_addr));
                let admitted = if shared.limiter.is_active() && !proxied {
                    match shared
                        .limiter
                        .admit(accepted.peer_addr.ip(), shared.clock_now())
                    {
                        Ok(ip) => ip,
                        Err(reason) => {
                            drop(accepted.stream);
                            shared.reject(accepted.peer_addr, reason);
                            continue;
                        }
                    }
                } else {
                    None
                };
                let mut permit = Permit::new(shared.clone());
                permit.ip = admitted;
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                let task = connection(permit, handler.clone(), tune.clone(), accepted, proxied, id);
                shared.runtime.spawn(Box::pin(task));
            }
            Some(Err(e)) if is_per_connection(&e) => {}
            Some(Err(source)) => {
                shared
                    .counters
                    .accept_errors
                    .fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                crate::metrics::accept_error();
                let delay = backoff.map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
                if backoff.is_none() {
                    shared.hooks.error(&Error::Accept {
                        source,
                        backoff: delay,
                    });
                }
                backoff = Some(delay);
                let stop = shared.shutdown.stop_accepting.wait();
                stop.or(shared.runtime.sleep(delay)).await;
            }
        }
    }
    drop(listener);
    shared.shutdown.accept_stopped.set();
}

/// One connection's task: tune the socket, read a PROXY header (from a trusted proxy), then
/// [`serve`].
async fn connection<S, H>(
    permit: Permit,
    handler: Arc<H>,
    tune: Option<TuneHook<S>>,
    accepted: Accepted<S>,
    proxied: bool,
    id: u64,
) where
    S: crate::listener::Stream,
    H: Handler,
{
    let shared = permit.shared().clone();
    // Taken apart at once: a partly moved `Accepted` would stay in the task's state.
    let Accepted {
        stream,
        peer_addr,
        local_addr,
    } = accepted;
    let meta = Meta {
        id,
        peer_addr,
        local_addr,
        proxy_addr: None,
        opened_at: shared.runtime.now(),
    };
    if let Some(tune) = tune {
        let tuned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tune(&stream)));
        let error = match tuned {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(Error::Tune {
                peer: meta.peer_addr.clone(),
                source,
            }),
            Err(payload) => Some(Error::HookPanicked {
                hook: "tune",
                message: crate::error::panic_message(&*payload),
            }),
        };
        if let Some(error) = error {
            accept(&shared, &meta);
            drop(stream);
            shared.hooks.error(&error);
            shared.finish(
                permit,
                id,
                meta.peer_addr,
                CloseReason::Error,
                meta.opened_at,
            );
            return;
        }
    }
    if proxied {
        // Boxed: the header read and a second instance of `serve` would otherwise size
        // every connection's task, direct ones included.
        Box::pin(via_proxy(permit, handler, stream, meta)).await;
    } else {
        let span = conn_span(&meta);
        in_span(serve(permit, handler, stream, meta), span).await;
    }
}

/// A connection from a trusted proxy: the PROXY header first (bounded like a handshake),
/// admission on the original address, then [`serve`].
async fn via_proxy<S, H>(mut permit: Permit, handler: Arc<H>, mut stream: S, mut meta: Meta)
where
    S: crate::listener::Stream,
    H: Handler,
{
    let shared = permit.shared().clone();
    let read = crate::runtime::timeout(
        &*shared.runtime,
        shared.config.handshake_timeout,
        crate::proxy::read_header(&mut stream),
    );
    let header = match read.await {
        Some(Ok(header)) => header,
        Some(Err(reason)) => {
            return refuse(permit, meta.peer_addr, RejectReason::ProxyHeader(reason));
        }
        None => {
            let reason = "no complete header within the handshake timeout".to_owned();
            return refuse(permit, meta.peer_addr, RejectReason::ProxyHeader(reason));
        }
    };
    if let Some(source) = header.source {
        meta.proxy_addr = Some(std::mem::replace(&mut meta.peer_addr, source.into()));
    }
    if shared.limiter.is_active() {
        match shared
            .limiter
            .admit(meta.peer_addr.ip(), shared.clock_now())
        {
            Ok(ip) => permit.ip = ip,
            Err(reason) => return refuse(permit, meta.peer_addr, reason),
        }
    }
    let stream = crate::proxy::Prefixed::new(header.rest, stream);
    let span = conn_span(&meta);
    in_span(serve(permit, handler, stream, meta), span).await;
}

/// A connection refused after accept: it never counted as served.
fn refuse(permit: Permit, peer_addr: Addr, reason: RejectReason) {
    permit.shared().reject(peer_addr, reason);
    drop(permit);
}

/// The connection is accepted: counted in `stats().accepted` together with its `Accepted`
/// event, so refused connections are counted in neither.
fn accept(shared: &Shared, meta: &Meta) {
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    shared.hooks.conn(ConnEvent::Accepted {
        id: meta.id,
        peer_addr: meta.peer_addr.clone(),
        local_addr: meta.local_addr.clone(),
    });
}

/// The connection's span (feature `tracing`): id, peer, proxy, and the TLS version and ALPN
/// once known. The whole connection, handshake, handler and `Closed` event included, runs
/// inside it. Without the feature it is `()` and costs nothing.
#[cfg(feature = "tracing")]
type ConnSpan = tracing::Span;
#[cfg(not(feature = "tracing"))]
type ConnSpan = ();

fn conn_span(meta: &Meta) -> ConnSpan {
    #[cfg(feature = "tracing")]
    {
        let span = tracing::info_span!(
            target: "berth",
            "conn",
            id = meta.id,
            peer = %meta.peer_addr,
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
    let _ = meta;
}

fn in_span<F: std::future::Future>(
    future: F,
    span: ConnSpan,
) -> impl std::future::Future<Output = F::Output> {
    #[cfg(feature = "tracing")]
    return tracing::Instrument::instrument(future, span);
    #[cfg(not(feature = "tracing"))]
    {
        let () = span;
        future
    }
}

/// `Accepted`, the TLS handshake (when configured), then the handler.
async fn serve<S, H>(permit: Permit, handler: Arc<H>, stream: S, meta: Meta)
where
    S: crate::listener::Stream,
    H: Handler,
{
    // Two steps, so the task's state holds either what establishing needs (the meta, the
    // handshake) or the running handler, never both.
    let Some(conn) = establish(permit, stream, meta).await else {
        return;
    };
    let shared = conn.server();
    let id = conn.id();
    let handle = conn.handle();
    if let Outcome::Panicked(message) = Supervised::new(handler.call(conn), handle).await {
        shared.hooks.error(&Error::HandlerPanicked {
            conn_id: id,
            message,
        });
    }
}

/// `Accepted`, then the TLS handshake when configured: the connection's `Conn`, or `None`
/// when the handshake failed (the connection is closed and reported).
async fn establish<S: crate::listener::Stream>(
    permit: Permit,
    stream: S,
    meta: Meta,
) -> Option<Conn> {
    let shared = permit.shared().clone();
    accept(&shared, &meta);
    #[cfg(feature = "tls")]
    let conn = match shared.tls() {
        None => Conn::new(permit, stream, meta, None),
        Some(config) => {
            let id = meta.id;
            let timeout = shared.config.handshake_timeout;
            // Boxed: the handshake's state is large (rustls), and inline it would size every
            // connection task, plain ones included, for the handshake.
            let handshake = crate::tls::handshake(&shared, config, stream, timeout);
            #[cfg(feature = "metrics")]
            let started = shared.runtime.now();
            let result = Box::pin(handshake).await;
            #[cfg(feature = "metrics")]
            crate::metrics::handshake(
                shared.runtime.now().saturating_duration_since(started),
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
                    shared
                        .counters
                        .tls_handshakes
                        .fetch_add(1, Ordering::Relaxed);
                    shared.hooks.conn(ConnEvent::TlsEstablished {
                        id,
                        info: Box::new(info.clone()),
                    });
                    Conn::new(permit, stream, meta, Some(info))
                }
                Err(reason) => {
                    // The stream was dropped with the handshake: the socket is closed.
                    shared.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                    shared.hooks.conn(ConnEvent::TlsFailed {
                        id,
                        peer_addr: meta.peer_addr.clone(),
                        reason,
                    });
                    shared.finish(
                        permit,
                        id,
                        meta.peer_addr,
                        CloseReason::TlsFailed,
                        meta.opened_at,
                    );
                    return None;
                }
            }
        }
    };
    #[cfg(not(feature = "tls"))]
    let conn = Conn::new(permit, stream, meta, None);
    Some(conn)
}

#[cfg(all(test, feature = "smol"))]
mod tests {
    use super::*;
    use crate::{Builder, Config};
    use std::pin::Pin;
    use std::task::{Context, Poll};

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
    impl crate::listener::Stream for Idle {}

    struct NoListener;
    impl Listener for NoListener {
        type Stream = Idle;
        async fn accept(&self) -> io::Result<Accepted<Idle>> {
            std::future::pending().await
        }
        fn local_addr(&self) -> io::Result<Addr> {
            Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 1)).into())
        }
    }

    /// Every open connection holds one of these futures: it is most of berth's memory per
    /// idle connection. The TLS handshake is boxed so its large state is not inlined here.
    #[test]
    fn a_plain_connection_task_stays_small() {
        let server = Builder::new(Config::default())
            .runtime(crate::runtime::Smol::global())
            .listener(NoListener)
            .unwrap();
        let accepted = Accepted {
            stream: Idle,
            peer_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 2)).into(),
            local_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)).into(),
        };
        let handler = Arc::new(|mut conn: Conn| async move {
            let _ = conn.readable().await;
        });
        let task = connection(
            Permit::new(server.shared.clone()),
            handler,
            None,
            accepted,
            false,
            1,
        );
        let size = std::mem::size_of_val(&task);
        // With `tracing` the task also holds the connection's span.
        let limit = if cfg!(feature = "tracing") {
            1152
        } else {
            1024
        };
        assert!(
            size <= limit,
            "the connection task grew to {size} bytes (limit {limit})"
        );
    }
}
