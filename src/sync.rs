//! Synchronisation helpers: a flag that is set once and can be awaited ([`Latch`]), the
//! wait every such flag or counter needs ([`until`]), and locks that survive a poisoning.
//!
//! Built on `event_listener::Event`, whose notifications do not stick to listeners created
//! after them: every wait checks its condition, registers a listener, and checks again
//! before sleeping ([`until`]).
//!
//! The atomics, the mutex and the event that the lock-free parts (this module, `pool`,
//! `capacity`) are built on are named through here. Normally they are std's and
//! event-listener's, unchanged. Under `--cfg berth_loom` they are loom's, plus a stand-in for
//! event-listener's `Event` (loom cannot see into event-listener) with the same contract, so
//! the loom models (run by the `loom` crate of the workspace, see `.ci/run`) explore every interleaving of
//! berth's own protocols.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(not(berth_loom))]
pub(crate) use event_listener::{Event, EventListener, IntoNotification};
#[cfg(berth_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(berth_loom)]
pub(crate) use model::{Event, EventListener, IntoNotification, atomic};
#[cfg(not(berth_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard, atomic};

use atomic::{AtomicBool, Ordering};

/// A flag that is set once and can be awaited.
#[derive(Debug, Default)]
pub(crate) struct Latch {
    set: AtomicBool,
    event: Event,
}

impl Latch {
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// A listener for the notification; check `is_set` again after creating it.
    pub(crate) fn listen(&self) -> EventListener {
        self.event.listen()
    }

    pub(crate) async fn wait(&self) {
        until(&self.event, || self.is_set().then_some(())).await
    }
}

/// A value sent once from one task or thread to another, awaited on any runtime.
#[cfg_attr(
    not(any(
        feature = "tls",
        all(unix, any(feature = "async-io", feature = "tokio"))
    )),
    allow(dead_code)
)]
pub(crate) struct Oneshot<T> {
    slot: Arc<(Mutex<Option<T>>, Event)>,
}

impl<T> Clone for Oneshot<T> {
    fn clone(&self) -> Self {
        Oneshot {
            slot: self.slot.clone(),
        }
    }
}

#[cfg_attr(
    not(any(
        feature = "tls",
        all(unix, any(feature = "async-io", feature = "tokio"))
    )),
    allow(dead_code)
)]
impl<T> Oneshot<T> {
    pub(crate) fn new() -> Self {
        Oneshot {
            slot: Arc::new((Mutex::new(None), Event::new())),
        }
    }

    pub(crate) fn send(&self, value: T) {
        *lock(&self.slot.0) = Some(value);
        self.slot.1.notify(usize::MAX);
    }

    pub(crate) async fn recv(&self) -> T {
        until(&self.slot.1, || lock(&self.slot.0).take()).await
    }
}

/// Waits until `ready` gives a value, looking again each time `event` is notified. The
/// listener is registered before the second look, so a notification between the two is
/// not lost.
pub(crate) async fn until<T>(event: &Event, mut ready: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(value) = ready() {
            return value;
        }
        let listener = event.listen();
        if let Some(value) = ready() {
            return value;
        }
        listener.await;
    }
}

// No code path panics while holding berth's locks; if one did, the others recover the data
// rather than cascade the panic.

/// Locks `m`, recovering from a poisoning.
#[cfg(not(berth_loom))]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks `m` (std's mutex, or loom's), recovering from a poisoning.
#[cfg(berth_loom)]
pub(crate) fn lock<M: model::Lock + ?Sized>(m: &M) -> M::Guard<'_> {
    m.lock_recovering()
}

/// Reads `l`, recovering from a poisoning.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Writes `l`, recovering from a poisoning.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on a thread of its own and completes with its result: blocking work awaited on
/// any runtime, without a reactor.
#[cfg_attr(
    not(any(
        feature = "tls",
        all(unix, any(feature = "async-io", feature = "tokio"))
    )),
    allow(dead_code)
)]
pub(crate) async fn on_thread<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::io::Result<R> {
    let done = crate::sync::Oneshot::new();
    let sender = done.clone();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || sender.send(f()))?;
    Ok(done.recv().await)
}

/// Stand-ins for the loom models (see the module docs): event-listener's `Event`, and the
/// mutexes `lock` takes.
#[cfg(berth_loom)]
mod model;

/// The contract of event-listener's `Event` that the loom stand-in copies, checked against
/// this build's `Event`: event-listener's in a plain build, the stand-in in a loom model.
#[cfg(any(test, berth_loom))]
fn check_event_contract() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};

    fn ready(listener: &mut EventListener) -> bool {
        Pin::new(listener)
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    let event = Event::new();
    // A notification does not stick: a listener made after it is not notified.
    event.notify(usize::MAX);
    let mut first = event.listen();
    assert!(!ready(&mut first));
    // `notify(n)` counts the listeners notified earlier and not done; `additional` does not.
    let mut second = event.listen();
    event.notify(1);
    event.notify(1);
    assert!(
        !ready(&mut second),
        "the second notify(1) was absorbed by the first"
    );
    event.notify(1_usize.additional());
    assert!(ready(&mut second));
    // A listener dropped after it was notified, undone, passes the notification on.
    let mut third = event.listen();
    assert!(!ready(&mut third));
    drop(first);
    assert!(ready(&mut third));
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_listener_keeps_the_contract_the_stand_in_copies() {
        super::check_event_contract();
    }
}

/// Loom models of the latch, `until` and `Oneshot` (see the module docs), and the helper
/// every loom model in the crate runs through.
#[cfg(berth_loom)]
#[allow(missing_docs)] // model names say what they check; run by the `loom` crate
pub mod loom_models;
