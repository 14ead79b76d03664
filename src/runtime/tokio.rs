//! The tokio adapter.

use std::time::{Duration, Instant};

use super::{BoxFuture, Runtime};

/// Runs berth on a tokio runtime, with tokio's timers (so `tokio::time::pause` and
/// simulators built on tokio's clock apply to berth's timeouts too).
///
/// ```no_run
/// # async fn f() -> Result<(), berth::Error> {
/// use berth::{Builder, Config, runtime::Tokio, listener::TokioTcpListener};
/// let config = Config::new("127.0.0.1:7000");
/// let listener = TokioTcpListener::bind(&config)?;
/// let server = Builder::new(config)
///     .runtime(Tokio::current().expect("inside a tokio runtime"))
///     .listener(listener)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Tokio {
    handle: tokio::runtime::Handle,
}

impl Tokio {
    /// The runtime the caller runs in; `None` outside a tokio runtime.
    pub fn current() -> Option<Self> {
        tokio::runtime::Handle::try_current()
            .ok()
            .map(|handle| Tokio { handle })
    }

    /// A specific runtime, by handle.
    pub fn from_handle(handle: tokio::runtime::Handle) -> Self {
        Tokio { handle }
    }
}

impl Runtime for Tokio {
    fn spawn(&self, future: BoxFuture) {
        // On a runtime that has shut down, tokio drops the task without polling it.
        drop(self.handle.spawn(future));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        let _guard = self.handle.enter();
        Box::pin(tokio::time::sleep(duration))
    }

    fn now(&self) -> Instant {
        let _guard = self.handle.enter();
        tokio::time::Instant::now().into_std()
    }
}
