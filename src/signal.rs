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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use event_listener::{Event, EventListener};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::error::Error;

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGTERM: a service manager (systemd, Kubernetes, `kill`) asks the process to stop.
    Terminate,
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
    /// SIGHUP, when asked for ([`Signals::with_hangup`]): by convention, reload or upgrade
    /// (`systemctl reload` with `ExecReload=kill -HUP $MAINPID`).
    Hangup,
}

const KINDS: [Signal; 3] = [Signal::Terminate, Signal::Interrupt, Signal::Hangup];

/// Signals received so far, process-wide, by kind.
struct Received {
    counts: [AtomicU64; 3],
    event: Event,
}

/// The process's signal handlers, installed at most once; SIGHUP is added on demand.
struct Installed {
    received: Arc<Received>,
    handle: signal_hook::iterator::Handle,
    hangup: bool,
}

static INSTALLED: Mutex<Option<Installed>> = Mutex::new(None);

fn install(hangup: bool) -> std::io::Result<Arc<Received>> {
    let mut guard = crate::sync::lock(&INSTALLED);
    let installed = if let Some(installed) = guard.as_mut() {
        installed
    } else {
        let mut iterator = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let received = Arc::new(Received {
            counts: Default::default(),
            event: Event::new(),
        });
        let sink = received.clone();
        let handle = iterator.handle();
        std::thread::Builder::new()
            .name("berth-signals".into())
            .spawn(move || {
                for signal in iterator.forever() {
                    let kind = match signal {
                        SIGTERM => 0,
                        SIGINT => 1,
                        _ => 2,
                    };
                    sink.counts[kind].fetch_add(1, Ordering::AcqRel);
                    sink.event.notify(usize::MAX);
                }
            })?;
        guard.insert(Installed {
            received,
            handle,
            hangup: false,
        })
    };
    if hangup && !installed.hangup {
        installed.handle.add_signal(SIGHUP)?;
        installed.hangup = true;
    }
    Ok(installed.received.clone())
}

/// SIGTERM and SIGINT (and SIGHUP when asked for), from the moment it is created. See the
/// [module docs](self).
#[derive(Clone)]
#[must_use = "the signals are caught from now on: without a receiver nobody acts on them"]
pub struct Signals {
    received: Arc<Received>,
    /// Signals of each kind already returned by this receiver.
    seen: Arc<[AtomicU64; 3]>,
    hangup: bool,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("hangup", &self.hangup)
            .finish_non_exhaustive()
    }
}

impl Signals {
    /// Installs the handlers for SIGTERM and SIGINT (once per process) and starts
    /// listening. Create it before binding, so a signal that arrives as soon as the server
    /// listens is not missed.
    ///
    /// Errors: [`Error::Signal`] when the handlers cannot be installed.
    pub fn new() -> Result<Self, Error> {
        Self::listen(false)
    }

    /// Like [`new`](Self::new), and SIGHUP too (then it no longer ends the process): for
    /// programs that upgrade or reload on SIGHUP.
    pub fn with_hangup() -> Result<Self, Error> {
        Self::listen(true)
    }

    fn listen(hangup: bool) -> Result<Self, Error> {
        let received = install(hangup).map_err(Error::Signal)?;
        let seen = Arc::new(std::array::from_fn(|kind| {
            AtomicU64::new(received.counts[kind].load(Ordering::Acquire))
        }));
        Ok(Signals {
            received,
            seen,
            hangup,
        })
    }

    /// Completes at the next signal not yet returned by this receiver (at once if one
    /// arrived since it was created), with which one it was.
    pub fn recv(&self) -> Recv {
        Recv {
            signals: self.clone(),
            listener: None,
        }
    }

    fn take(&self) -> Option<Signal> {
        for (kind, signal) in KINDS.iter().enumerate() {
            if *signal == Signal::Hangup && !self.hangup {
                continue;
            }
            let count = self.received.counts[kind].load(Ordering::Acquire);
            let seen = &self.seen[kind];
            let was = seen.load(Ordering::Acquire);
            if count > was
                && seen
                    .compare_exchange(was, was + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Some(*signal);
            }
        }
        None
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
