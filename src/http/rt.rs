//! A berth [`Runtime`] as hyper's executor and timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::runtime::{BoxTimer, Runtime};

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
        Box::pin(Sleep(self.rt.sleep(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(self.rt.timer(deadline)))
    }

    /// Moves the runtime's timer in place when it is one of ours: no new timer.
    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(ours) => ours.get_mut().0.as_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    /// The runtime's clock (virtual under simulation), not the wall clock.
    fn now(&self) -> Instant {
        self.rt.now()
    }
}

/// A runtime's timer as hyper's `Sleep`.
struct Sleep(BoxTimer);

impl hyper::rt::Sleep for Sleep {}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.as_mut().poll(cx)
    }
}
