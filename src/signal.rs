//! Shutdown signals: SIGTERM and SIGINT (Ctrl-C) as a future that any runtime can await
//! (feature `signal`, Unix).
//!
//! The handlers are installed once per process, by the first [`Signals::new`], and write to
//! a self-pipe. Who reads the pipe and turns each signal into a wake-up: while
//! [`ServerHandle::run`](crate::ServerHandle::run) runs, `run` itself reads it, on its
//! server's runtime's reactor (smol, async-std, tokio), so the process starts no thread for
//! its signals (a program on tokio's current-thread runtime stays one thread; signals wait,
//! like everything else, while a handler blocks the thread that polls `run`). Otherwise (a
//! `Recv` awaited before, after or without `run`, or a runtime without a reactor, such as a
//! simulator) a thread of their own, `berth-signals`, reads it. Either way the same future
//! works on smol, tokio, async-std or a plain `block_on`. Once installed, SIGINT and
//! SIGTERM no longer end the process by themselves: the program decides (typically: drain,
//! then return from `main`).
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

use std::convert::Infallible;
use std::future::Future;
use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use event_listener::{Event, EventListener};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::backend::{Handle, SignalDelivery};
use signal_hook::iterator::exfiltrator::SignalOnly;

use crate::error::Error;
use crate::runtime::Runtime;

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

/// The handlers' self-pipe (its reading end) and the signals they recorded.
type Delivery = SignalDelivery<UnixStream, SignalOnly>;

/// The process's signal handlers, installed at most once; SIGHUP is added on demand.
struct Installed {
    received: Arc<Received>,
    handle: Handle,
    hangup: bool,
    /// The pipe while nobody reads it; taken by the reader (a runtime's task or the
    /// thread), and given back by a task that ends (its runtime shut down).
    unread: Option<Delivery>,
}

static INSTALLED: Mutex<Option<Installed>> = Mutex::new(None);

fn install(hangup: bool) -> std::io::Result<Arc<Received>> {
    let mut guard = crate::sync::lock(&INSTALLED);
    let installed = if let Some(installed) = guard.as_mut() {
        installed
    } else {
        let (read, write) = UnixStream::pair()?;
        let delivery = SignalDelivery::with_pipe(read, write, SignalOnly, [SIGTERM, SIGINT])?;
        guard.insert(Installed {
            received: Arc::new(Received {
                counts: Default::default(),
                event: Event::new(),
            }),
            handle: delivery.handle(),
            hangup: false,
            unread: Some(delivery),
        })
    };
    if hangup && !installed.hangup {
        installed.handle.add_signal(SIGHUP)?;
        installed.hangup = true;
    }
    Ok(installed.received.clone())
}

/// Counts the signals recorded since the last call and wakes every `Recv`. The caller saw
/// the pipe readable (the handler records, then writes): nothing recorded before that is
/// missed, and `pending` empties the pipe, so one recorded later wakes the reader again.
fn deliver(delivery: &mut Delivery, received: &Received) {
    let mut any = false;
    for signal in delivery.pending() {
        let kind = match signal {
            SIGTERM => 0,
            SIGINT => 1,
            _ => 2,
        };
        received.counts[kind].fetch_add(1, Ordering::AcqRel);
        any = true;
    }
    if any {
        received.event.notify(usize::MAX);
    }
}

/// Reads the pipe on `rt`'s reactor for as long as the returned future is polled, unless
/// someone reads it already or `rt` cannot (no reactor): then `None`. The future never
/// completes; dropping it gives the pipe back (to the thread, if a receiver waits).
#[cfg_attr(not(any(feature = "async-io", feature = "tokio")), allow(dead_code))]
pub(crate) fn read_on(
    rt: &dyn Runtime,
) -> Option<impl Future<Output = Infallible> + Send + 'static> {
    let reactor = rt.reactor()?;
    let (delivery, received) = take_unread()?;
    let stream = delivery
        .get_read()
        .try_clone()
        .and_then(|read| reactor.register_unix_stream(read));
    // From here on the lease gives the pipe back when this reader goes (at once, if the
    // stream cannot be registered), and hands it to the thread if a receiver waits.
    let mut lease = Lease {
        delivery: Some(delivery),
        hand_on: true,
    };
    let mut stream = stream.ok()?;
    Some(async move {
        let mut wake = [0u8; 64];
        // Stops on an error or end of file (neither happens to a pipe whose writing end
        // the handlers hold): then the thread takes over.
        while let Ok(1..) = futures_lite::AsyncReadExt::read(&mut stream, &mut wake).await {
            if let Some(delivery) = &mut lease.delivery {
                deliver(delivery, &received);
            }
        }
        drop(lease);
        std::future::pending().await
    })
}

/// Has a thread of its own read the pipe, unless someone reads it already.
fn read_on_a_thread() {
    let Some((delivery, received)) = take_unread() else {
        return;
    };
    // A runtime's reactor made the (shared) descriptor non-blocking. Should making it
    // blocking again fail, the thread below looks every 100 ms instead of waiting.
    let _ = delivery.get_read().set_nonblocking(false);
    let mut lease = Lease {
        delivery: Some(delivery),
        hand_on: false,
    };
    // If the thread cannot start, the lease comes back with the closure: the next
    // receiver to wait tries again.
    let _ = std::thread::Builder::new()
        .name("berth-signals".into())
        .spawn(move || {
            let Some(delivery) = &mut lease.delivery else {
                return;
            };
            let mut wake = [0u8; 64];
            loop {
                match delivery.get_read_mut().read(&mut wake) {
                    Ok(0) => return,
                    Ok(_) => deliver(delivery, &received),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    Err(_) => return,
                }
            }
        });
}

/// The pipe, if nobody reads it, for a reader to take.
fn take_unread() -> Option<(Delivery, Arc<Received>)> {
    let mut guard = crate::sync::lock(&INSTALLED);
    let installed = guard.as_mut()?;
    let delivery = installed.unread.take()?;
    Some((delivery, installed.received.clone()))
}

/// A reader's hold on the pipe: given back when the reader ends.
struct Lease {
    delivery: Option<Delivery>,
    /// A runtime's task: when it goes and a receiver waits, the thread takes over.
    hand_on: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let waiting = match crate::sync::lock(&INSTALLED).as_mut() {
            Some(installed) => {
                installed.unread = self.delivery.take();
                installed.received.event.total_listeners() > 0
            }
            None => false,
        };
        // A receiver that starts waiting from now on starts the thread itself (`Recv`).
        if waiting && self.hand_on {
            read_on_a_thread();
        }
    }
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
        // Signals that came while nobody read the pipe count before this receiver's
        // snapshot: it hears of signals from its creation on, not of older ones.
        if let Some(installed) = crate::sync::lock(&INSTALLED).as_mut() {
            if let Some(delivery) = installed.unread.as_mut() {
                deliver(delivery, &installed.received);
            }
        }
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
                None => {
                    this.listener = Some(this.signals.received.event.listen());
                    // Someone must read the pipe for the listener to hear of a signal: the
                    // thread, unless a runtime does (after the listener: a runtime's reader
                    // that goes meanwhile sees it and starts the thread, see `Lease`).
                    read_on_a_thread();
                }
            }
        }
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use std::time::Duration;

    use super::{Signal, Signals};

    fn signal_thread_running() -> bool {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .any(|name| name.trim() == "berth-signals")
    }

    /// The one test of this process's handlers (they are process-wide): `read_on`'s future
    /// reads the signals on a runtime, with no thread; when it goes while a receiver waits
    /// (on no runtime at all), the thread takes over and the receiver hears of the next
    /// signal.
    #[test]
    fn a_runtime_reads_the_signals_and_the_thread_takes_over_when_it_goes() {
        use futures_lite::future::or;

        let signals = Signals::with_hangup().expect("handlers");
        // A signal while nobody reads the pipe: a receiver made after it does not hear of it.
        signal_hook::low_level::raise(signal_hook::consts::SIGHUP).expect("raise");
        let later = Signals::with_hangup().expect("handlers");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.block_on(async {
            let tokio = crate::runtime::Tokio::current().expect("in tokio");
            let mut reading = Box::pin(super::read_on(&tokio).expect("tokio has a reactor"));
            let within =
                |receiver: &Signals| tokio::time::timeout(Duration::from_secs(10), receiver.recv());
            assert_eq!(
                within(&signals).await,
                Ok(Signal::Hangup),
                "the earlier receiver"
            );
            assert_eq!(
                futures_lite::future::poll_once(later.recv()).await,
                None,
                "a receiver hears of no signal from before it"
            );
            signal_hook::low_level::raise(signal_hook::consts::SIGHUP).expect("raise");
            let got = or(within(&later), async { match reading.as_mut().await {} }).await;
            assert_eq!(got, Ok(Signal::Hangup), "read on the runtime");
            assert!(!signal_thread_running(), "no thread while a runtime reads");

            // A receiver waits on a plain thread, with no runtime...
            let waiting = later.clone();
            std::thread::spawn(move || {
                let _ = tx.send(futures_lite::future::block_on(waiting.recv()));
            });
            let listening = std::time::Instant::now();
            while signals.received.event.total_listeners() == 0 {
                assert!(
                    listening.elapsed() < Duration::from_secs(10),
                    "no receiver waits"
                );
                std::thread::yield_now();
            }
            assert!(!signal_thread_running(), "the runtime still reads");
            // ...when the reader goes: it gives the pipe to the thread.
            drop(reading);
        });
        signal_hook::low_level::raise(signal_hook::consts::SIGHUP).expect("raise");
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Ok(Signal::Hangup),
            "read on the thread"
        );
        // It named itself before it could read anything.
        assert!(signal_thread_running());
    }
}
