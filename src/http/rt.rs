//! A berth [`Runtime`] as hyper's executor and timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::runtime::{BoxFuture, Runtime};

/// The runtime a connection runs on, in the forms hyper takes: an
/// [`Executor`](hyper::rt::Executor) (HTTP/2 streams, a client's connection task) and a
/// [`Timer`](hyper::rt::Timer) (timeouts, HTTP/2 keep-alive pings). One type for every
/// runtime (smol, tokio, async-std, a simulator): get it from
/// [`Conn::runtime`](crate::Conn::runtime) or [`ConnInfo::runtime`](super::ConnInfo::runtime)
/// and nothing is written per runtime.
///
/// ```no_run
/// # async fn f(conn: berth::Conn) {
/// let rt = berth::http::HyperRuntime::new(conn.runtime().clone());
/// let mut builder = hyper::server::conn::http2::Builder::new(rt.clone());
/// builder.timer(rt);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HyperRuntime {
    rt: Arc<dyn Runtime>,
}

impl HyperRuntime {
    /// Wraps `rt`.
    pub fn new(rt: Arc<dyn Runtime>) -> Self {
        HyperRuntime { rt }
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.rt
    }
}

impl<F> hyper::rt::Executor<F> for HyperRuntime
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.rt.spawn(Box::pin(future));
    }
}

impl hyper::rt::Timer for HyperRuntime {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(Mutex::new(self.rt.sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(self.rt.now()))
    }

    /// The runtime's clock (virtual under simulation), not the wall clock.
    fn now(&self) -> Instant {
        self.rt.now()
    }
}

/// A runtime's sleep as hyper's `Sleep`, which must be `Sync`: the mutex is never locked,
/// only reached through `&mut` (`get_mut`), so it costs nothing.
struct Sleep(Mutex<BoxFuture>);

impl hyper::rt::Sleep for Sleep {}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut().0.get_mut() {
            Ok(sleep) => sleep.as_mut().poll(cx),
            // Poisoned only by a panic inside a poll: that sleep is over.
            Err(_) => Poll::Ready(()),
        }
    }
}
