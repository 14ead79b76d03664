//! Shutdown signals: SIGTERM and SIGINT (Ctrl-C) as a future that any runtime can await
//! (feature `signal`, Unix).
//!
//! The handlers are installed once per process, by the first [`Signals::new`], and a thread
//! of their own (`berth-signals`) turns each signal into a wake-up. No reactor is involved,
//! so the same future works on smol, tokio, async-std or a plain `block_on`, and starts no
//! reactor thread on tokio. Once installed, SIGINT and SIGTERM no longer end the process by
//! themselves: the program decides (typically: drain, then return from `main`).
//!
//! ```no_run
//! # fn main() -> Result<(), berth::Error> {
//! let signals = berth::signal::Signals::new()?; // before binding: no signal is missed
//! let handle = berth::Server::bind(berth::Config::new("127.0.0.1:7000"))?
//!     .serve(|conn: berth::Conn| async move { drop(conn) });
//! let report = futures_lite::future::block_on(handle.shutdown_on(signals.recv()))?;
//! println!("shutdown complete: {report}");
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use event_listener::{Event, EventListener};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::error::Error;

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGTERM: a service manager (systemd, Kubernetes, `kill`) asks the process to stop.
    Terminate,
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
}

/// Signals received so far, process-wide.
struct Received {
    count: AtomicU64,
    last: AtomicU8,
    event: Event,
}

/// The process's signal handlers, installed at most once.
static INSTALLED: Mutex<Option<Arc<Received>>> = Mutex::new(None);

fn install() -> std::io::Result<Arc<Received>> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(received) = &*installed {
        return Ok(received.clone());
    }
    let mut iterator = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let received = Arc::new(Received {
        count: AtomicU64::new(0),
        last: AtomicU8::new(0),
        event: Event::new(),
    });
    let sink = received.clone();
    std::thread::Builder::new()
        .name("berth-signals".into())
        .spawn(move || {
            for signal in iterator.forever() {
                let kind = if signal == SIGINT { 1 } else { 0 };
                sink.last.store(kind, Ordering::Release);
                sink.count.fetch_add(1, Ordering::AcqRel);
                sink.event.notify(usize::MAX);
            }
        })?;
    *installed = Some(received.clone());
    Ok(received)
}

/// SIGTERM and SIGINT, from the moment it is created. See the [module docs](self).
#[derive(Clone)]
pub struct Signals {
    received: Arc<Received>,
    /// Signals already seen by this receiver.
    seen: Arc<AtomicU64>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("received", &self.received.count.load(Ordering::Acquire))
            .finish()
    }
}

impl Signals {
    /// Installs the handlers (once per process) and starts listening. Create it before
    /// binding, so a signal that arrives as soon as the server listens is not missed.
    ///
    /// Errors: [`Error::Signal`] when the handlers cannot be installed.
    pub fn new() -> Result<Self, Error> {
        let received = install().map_err(Error::Signal)?;
        let seen = received.count.load(Ordering::Acquire);
        Ok(Signals {
            received,
            seen: Arc::new(AtomicU64::new(seen)),
        })
    }

    /// Completes at the next SIGTERM or SIGINT not yet returned by this receiver (at once if
    /// one arrived since it was created), with which one it was.
    pub fn recv(&self) -> Recv {
        Recv {
            signals: self.clone(),
            listener: None,
        }
    }

    fn take(&self) -> Option<Signal> {
        let count = self.received.count.load(Ordering::Acquire);
        let seen = self.seen.load(Ordering::Acquire);
        if count == seen {
            return None;
        }
        self.seen.store(count, Ordering::Release);
        Some(match self.received.last.load(Ordering::Acquire) {
            1 => Signal::Interrupt,
            _ => Signal::Terminate,
        })
    }
}

/// The future of [`Signals::recv`].
#[must_use = "futures do nothing unless awaited"]
pub struct Recv {
    signals: Signals,
    listener: Option<EventListener>,
}

impl std::fmt::Debug for Recv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recv").finish_non_exhaustive()
    }
}

impl Future for Recv {
    type Output = Signal;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Signal> {
        let this = self.get_mut();
        loop {
            if let Some(signal) = this.signals.take() {
                this.listener = None;
                return Poll::Ready(signal);
            }
            match &mut this.listener {
                Some(listener) => {
                    std::task::ready!(Pin::new(listener).poll(cx));
                    this.listener = None;
                }
                // Listen, then loop to check again: a notification before `listen` is lost.
                None => this.listener = Some(this.signals.received.event.listen()),
            }
        }
    }
}
