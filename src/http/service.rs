//! The service berth gives hyper: the user's service, plus per-request bookkeeping (busy
//! mark, in-flight count, `Connection: close` while draining, the request timeout, metrics
//! and tracing), and the response body that ends a request when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
#[cfg(any(feature = "metrics", feature = "tracing"))]
use std::time::Instant;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode, Version, header};

use super::state::Shared;

/// The user's service, with berth's bookkeeping around each request.
pub(super) struct Svc<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
    /// Whether each request carries `Arc<ConnInfo>` in its extensions (`Http::new`; a
    /// service made per connection has it already, and the insert costs allocations).
    pub(super) info_in_requests: bool,
    pub(super) request_timeout: Option<Duration>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> Service<Request<Incoming>> for Svc<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    // A named future, not a boxed one: no allocation and no copy of the user's future per
    // request.
    type Future = ResponseFuture<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let version = req.version();
        let guard = RequestGuard::start(&self.shared, &req);
        if self.info_in_requests {
            req.extensions_mut().insert(self.shared.info().clone());
        }
        ResponseFuture {
            inner: self.inner.call(req),
            timer: self
                .request_timeout
                .map(|timeout| self.shared.info().runtime().sleep(timeout)),
            guard: Some(guard),
            version,
        }
    }
}

pin_project_lite::pin_project! {
    /// The user's response future, raced against the request timeout; the response it
    /// gives carries the request's guard in its body.
    pub(super) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        timer: Option<crate::runtime::BoxTimer>,
        guard: Option<RequestGuard>,
        version: Version,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.inner.poll(cx) {
            Poll::Ready(result) => result?.map(|body| TrackedBody {
                inner: Some(body),
                guard: None,
            }),
            Poll::Pending => match this.timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    let mut response = Response::new(TrackedBody {
                        inner: None,
                        guard: None,
                    });
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    // Whatever the handler left half-done on this connection goes with it.
                    close_after(&mut response, *this.version);
                    response
                }
                _ => return Poll::Pending,
            },
        };
        let mut guard = this
            .guard
            .take()
            .expect("ResponseFuture polled after it completed");
        // The server's state, not only the connection task's flag: a request answered
        // right after the drain began, before the task saw it, is told to close too.
        if guard.shared.is_draining() || guard.shared.info().handle().server_is_draining() {
            close_after(&mut response, *this.version);
        }
        guard.status = Some(response.status());
        response.body_mut().guard = Some(guard);
        Poll::Ready(Ok(response))
    }
}

/// Asks an HTTP/1 client to close the connection after this response (hyper closes it
/// once the response is written). HTTP/2 has GOAWAY for that instead.
fn close_after<B>(response: &mut Response<B>, version: Version) {
    if version < Version::HTTP_2 {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
}

/// One request from its head to the end of its response: the request counts in flight
/// (the connection is busy while any does), and its end is measured. It holds one `Arc`,
/// the connection's shared state, which marks the connection busy through its handle (a
/// `Busy` guard per request held two more).
pub(super) struct RequestGuard {
    shared: Arc<Shared>,
    status: Option<StatusCode>,
    #[cfg(any(feature = "metrics", feature = "tracing"))]
    started: Instant,
    #[cfg(feature = "tracing")]
    method: hyper::Method,
}

impl RequestGuard {
    fn start(shared: &Arc<Shared>, req: &Request<Incoming>) -> Self {
        // A request lasts from its head's first byte (HTTP/1 after the first request:
        // known, no clock read).
        #[cfg(any(feature = "metrics", feature = "tracing"))]
        let started = shared
            .head_first_byte()
            .unwrap_or_else(|| shared.info().runtime().now());
        shared.request_started(req.version() == Version::HTTP_2);
        #[cfg(feature = "metrics")]
        metrics::gauge!("berth_http_requests_in_flight").increment(1.0);
        RequestGuard {
            shared: shared.clone(),
            status: None,
            #[cfg(any(feature = "metrics", feature = "tracing"))]
            started,
            #[cfg(feature = "tracing")]
            method: req.method().clone(),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.shared.request_finished();
        #[cfg(any(feature = "metrics", feature = "tracing"))]
        let took = self
            .shared
            .info()
            .runtime()
            .now()
            .saturating_duration_since(self.started);
        let class = status_class(self.status);
        #[cfg(feature = "metrics")]
        record_request(class, took);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            target: "berth::http",
            conn = self.shared.info().handle().id(),
            method = %self.method,
            status = self.status.map_or(0, |s| s.as_u16()),
            class,
            took_us = took.as_micros() as u64,
            "request"
        );
        let _ = class;
    }
}

/// A finished request in the metrics. Each class is spelled out so that every key is a
/// static one: a label from a variable would build (and allocate) the key per request.
#[cfg(feature = "metrics")]
fn record_request(class: &'static str, took: std::time::Duration) {
    macro_rules! record {
        ($class:literal) => {{
            metrics::counter!("berth_http_requests_total", "class" => $class).increment(1);
            metrics::histogram!("berth_http_request_duration_seconds", "class" => $class)
                .record(took.as_secs_f64());
        }};
    }
    metrics::gauge!("berth_http_requests_in_flight").decrement(1.0);
    match class {
        "1xx" => record!("1xx"),
        "2xx" => record!("2xx"),
        "3xx" => record!("3xx"),
        "4xx" => record!("4xx"),
        "5xx" => record!("5xx"),
        _ => record!("error"),
    }
}

/// The label of a response's status: `2xx` ... `5xx`, or `error` when the service failed
/// or the request was abandoned before its response.
fn status_class(status: Option<StatusCode>) -> &'static str {
    match status.map(|s| s.as_u16() / 100) {
        Some(1) => "1xx",
        Some(2) => "2xx",
        Some(3) => "3xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        _ => "error",
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request (see `RequestGuard`) when it ends or is
    /// dropped: a slow download keeps the connection busy, not idle.
    pub struct TrackedBody<B> {
        #[pin]
        inner: Option<B>,
        guard: Option<RequestGuard>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let poll = match this.inner.as_pin_mut() {
            Some(inner) => inner.poll_frame(cx),
            None => Poll::Ready(None),
        };
        if let Poll::Ready(None) = poll {
            this.guard.take();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
