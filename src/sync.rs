//! Synchronisation helpers: a flag that is set once and can be awaited ([`Latch`]), the
//! wait every such flag or counter needs ([`until`]), and locks that survive a poisoning.
//!
//! Built on `event_listener::Event`, whose notifications do not stick to listeners created
//! after them: every wait checks its condition, registers a listener, and checks again
//! before sleeping ([`until`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use event_listener::{Event, EventListener};

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
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
