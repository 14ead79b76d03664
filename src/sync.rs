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
mod model {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use self::atomic::{Ordering, fence};

    /// loom's atomics, worked around two limits of loom 0.7 that made models of berth's
    /// code wrong:
    /// - Its partial-order reduction can miss a race between a load and a later write when
    ///   another thread loads in between (tokio-rs/loom#166, #392): a load racing a
    ///   `fetch_update` (which starts with a load) ran one interleaving. With every access a
    ///   write it misses none, so loads are read one of two ways (see
    ///   `loom_models::explore`): as loads (what std does, weak memory included), or as
    ///   read-modify-writes (every interleaving; each load sees the newest value).
    ///   `fetch_update` reads with a read-modify-write either way: it only decides what its
    ///   compare-exchange expects.
    /// - It keeps the modification order of plain stores partial (tokio-rs/loom#282): a
    ///   read-modify-write racing a plain store could read the value the store had
    ///   replaced and still come after it (a stale compare-exchange succeeded; a
    ///   `fetch_max(2)` racing `store(3)` left 2). Stores are swaps here, which loom orders.
    pub(crate) mod atomic {
        use std::cell::Cell;

        pub(crate) use loom::sync::atomic::fence;
        pub(crate) use std::sync::atomic::Ordering;

        thread_local! {
            static LOADS_AS_RMW: Cell<bool> = const { Cell::new(false) };
        }

        /// Reads atomic loads as read-modify-writes (`true`) or as loads, from now on, in
        /// the models run on this thread (loom runs a model's threads on the caller's).
        pub(crate) fn loads_as_rmw(on: bool) {
            LOADS_AS_RMW.with(|c| c.set(on));
        }

        fn as_rmw() -> bool {
            LOADS_AS_RMW.with(Cell::get)
        }

        macro_rules! atomic_int {
            ($name:ident, $int:ty) => {
                #[derive(Debug, Default)]
                pub(crate) struct $name(loom::sync::atomic::$name);

                // Each type uses a different subset.
                #[allow(dead_code)]
                impl $name {
                    pub(crate) fn new(v: $int) -> Self {
                        Self(loom::sync::atomic::$name::new(v))
                    }

                    pub(crate) fn load(&self, order: Ordering) -> $int {
                        if as_rmw() {
                            self.0.fetch_add(0, order)
                        } else {
                            self.0.load(order)
                        }
                    }

                    pub(crate) fn store(&self, v: $int, order: Ordering) {
                        self.0.swap(v, order);
                    }

                    pub(crate) fn swap(&self, v: $int, order: Ordering) -> $int {
                        self.0.swap(v, order)
                    }

                    pub(crate) fn compare_exchange(
                        &self,
                        current: $int,
                        new: $int,
                        success: Ordering,
                        failure: Ordering,
                    ) -> Result<$int, $int> {
                        self.0.compare_exchange(current, new, success, failure)
                    }

                    pub(crate) fn fetch_add(&self, v: $int, order: Ordering) -> $int {
                        self.0.fetch_add(v, order)
                    }

                    pub(crate) fn fetch_sub(&self, v: $int, order: Ordering) -> $int {
                        self.0.fetch_sub(v, order)
                    }

                    pub(crate) fn fetch_or(&self, v: $int, order: Ordering) -> $int {
                        self.0.fetch_or(v, order)
                    }

                    pub(crate) fn fetch_max(&self, v: $int, order: Ordering) -> $int {
                        self.0.fetch_max(v, order)
                    }

                    pub(crate) fn fetch_update(
                        &self,
                        set: Ordering,
                        fetch: Ordering,
                        mut f: impl FnMut($int) -> Option<$int>,
                    ) -> Result<$int, $int> {
                        let mut prev = self.0.fetch_add(0, fetch);
                        while let Some(next) = f(prev) {
                            match self.0.compare_exchange(prev, next, set, fetch) {
                                Ok(prev) => return Ok(prev),
                                Err(actual) => prev = actual,
                            }
                        }
                        Err(prev)
                    }
                }
            };
        }

        atomic_int!(AtomicU8, u8);
        atomic_int!(AtomicU64, u64);
        atomic_int!(AtomicUsize, usize);

        #[derive(Debug, Default)]
        pub(crate) struct AtomicBool(loom::sync::atomic::AtomicBool);

        impl AtomicBool {
            pub(crate) fn load(&self, order: Ordering) -> bool {
                if as_rmw() {
                    self.0.fetch_or(false, order)
                } else {
                    self.0.load(order)
                }
            }

            pub(crate) fn store(&self, v: bool, order: Ordering) {
                self.0.swap(v, order);
            }
        }
    }

    /// What `Event::notify` is asked for, as event-listener's `IntoNotification` builds it:
    /// `n`, or `n.additional()`.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Notification {
        count: usize,
        additional: bool,
    }

    /// event-listener's `IntoNotification`, for the notifications berth sends.
    pub(crate) trait IntoNotification {
        fn into_notification(self) -> Notification;

        fn additional(self) -> Notification
        where
            Self: Sized,
        {
            Notification {
                additional: true,
                ..self.into_notification()
            }
        }
    }

    impl IntoNotification for usize {
        fn into_notification(self) -> Notification {
            Notification {
                count: self,
                additional: false,
            }
        }
    }

    impl IntoNotification for Notification {
        fn into_notification(self) -> Notification {
            self
        }
    }

    /// event-listener's `Event` (5.x) on a loom mutex, with its contract:
    /// - listeners queue in the order they were made, and a notification reaches only
    ///   listeners made before it (it does not stick);
    /// - `notify(n)` notifies the oldest listeners not notified yet until `n` are notified,
    ///   counting those notified earlier that have not completed; `notify(n.additional())`
    ///   notifies `n` more;
    /// - a listener dropped after it was notified, without completing, passes its
    ///   notification on (as one more of the same kind);
    /// - `notify` starts with a `SeqCst` fence.
    #[derive(Debug, Default)]
    pub(crate) struct Event {
        list: Arc<loom::sync::Mutex<List>>,
    }

    #[derive(Debug, Default)]
    struct List {
        /// In the order the listeners were made.
        entries: Vec<Entry>,
        next_id: u64,
    }

    #[derive(Debug)]
    struct Entry {
        id: u64,
        /// `Some(additional)` once notified.
        notified: Option<bool>,
        waker: Option<Waker>,
    }

    impl List {
        fn notify(&mut self, notification: Notification) {
            let mut n = notification.count;
            if !notification.additional {
                let notified = self.entries.iter().filter(|e| e.notified.is_some()).count();
                n = n.saturating_sub(notified);
            }
            for entry in self.entries.iter_mut().filter(|e| e.notified.is_none()) {
                if n == 0 {
                    break;
                }
                n -= 1;
                entry.notified = Some(notification.additional);
                if let Some(waker) = entry.waker.take() {
                    waker.wake();
                }
            }
        }

        fn remove(&mut self, id: u64) -> Option<Entry> {
            let at = self.entries.iter().position(|e| e.id == id)?;
            Some(self.entries.remove(at))
        }
    }

    impl Event {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        pub(crate) fn listen(&self) -> EventListener {
            let mut list = super::lock(&*self.list);
            let id = list.next_id;
            list.next_id += 1;
            list.entries.push(Entry {
                id,
                notified: None,
                waker: None,
            });
            EventListener {
                list: self.list.clone(),
                id,
                done: false,
            }
        }

        pub(crate) fn notify(&self, notification: impl IntoNotification) {
            fence(Ordering::SeqCst);
            super::lock(&*self.list).notify(notification.into_notification());
        }
    }

    /// A listener of [`Event`]: completes once notified.
    #[derive(Debug)]
    pub(crate) struct EventListener {
        list: Arc<loom::sync::Mutex<List>>,
        id: u64,
        done: bool,
    }

    impl Future for EventListener {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let this = self.get_mut();
            if this.done {
                return Poll::Ready(());
            }
            let mut list = super::lock(&*this.list);
            let id = this.id;
            let Some(entry) = list.entries.iter_mut().find(|e| e.id == id) else {
                unreachable!("a listener stays listed until it completes or is dropped");
            };
            if entry.notified.is_none() {
                entry.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            list.remove(id);
            this.done = true;
            Poll::Ready(())
        }
    }

    impl Drop for EventListener {
        fn drop(&mut self) {
            // While a failing model unwinds, loom's state is no longer to be touched.
            if self.done || std::thread::panicking() {
                return;
            }
            let mut list = super::lock(&*self.list);
            if let Some(Entry {
                notified: Some(additional),
                ..
            }) = list.remove(self.id)
            {
                list.notify(Notification {
                    count: 1,
                    additional,
                });
            }
        }
    }

    /// The mutexes `sync::lock` takes in a loom build: loom's (the modelled parts) and std's
    /// (the rest of the crate).
    pub(crate) trait Lock {
        type Guard<'a>
        where
            Self: 'a;

        fn lock_recovering(&self) -> Self::Guard<'_>;
    }

    impl<T: ?Sized> Lock for std::sync::Mutex<T> {
        type Guard<'a>
            = std::sync::MutexGuard<'a, T>
        where
            Self: 'a;

        fn lock_recovering(&self) -> Self::Guard<'_> {
            self.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl<T: ?Sized> Lock for loom::sync::Mutex<T> {
        type Guard<'a>
            = loom::sync::MutexGuard<'a, T>
        where
            Self: 'a;

        fn lock_recovering(&self) -> Self::Guard<'_> {
            self.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

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
pub mod loom_models {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    use loom::thread;

    use super::*;

    /// Runs `future` to completion on this model thread, parking it while it waits (loom
    /// reports a thread parked forever as a deadlock). loom's own `block_on` cannot report
    /// one: its waker's loom `Arc` panics again while the first panic unwinds, and the test
    /// process aborts.
    pub fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(thread::Thread);

        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }

        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                return value;
            }
            thread::park();
        }
    }

    /// Checks `model` over every execution loom finds, twice: with atomic loads read as
    /// read-modify-writes (every interleaving, each load seeing the latest value; see
    /// `model::atomic`), then as loads (weak memory: a load may see an older value), with
    /// at most `preemptions` preemptions per execution when given (`LOOM_MAX_PREEMPTIONS`
    /// overrides it). Prints how many executions each way explored.
    pub fn explore(
        name: &str,
        preemptions: Option<usize>,
        model: impl Fn() + Sync + Send + 'static,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let model = Arc::new(model);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = builder.preemption_bound.or(preemptions);
        let bound = builder
            .preemption_bound
            .map_or_else(|| "none".to_owned(), |b| b.to_string());
        for (loads, as_rmw) in [("loads as RMW", true), ("loads", false)] {
            let runs = Arc::new(AtomicUsize::new(0));
            let (counted, model) = (runs.clone(), model.clone());
            let started = std::time::Instant::now();
            atomic::loads_as_rmw(as_rmw);
            builder.check(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                model();
            });
            eprintln!(
                "loom model {name} ({loads}): {} executions, preemption bound {bound}, {:.2?}",
                runs.load(Ordering::Relaxed),
                started.elapsed()
            );
        }
        atomic::loads_as_rmw(false);
    }

    pub fn event_stand_in_keeps_event_listeners_contract() {
        explore("event stand-in contract", None, check_event_contract);
    }

    /// A latch set on one thread, awaited on two others: with `wait`, and as
    /// `Conn::draining` does it by hand (check, listen, check again, sleep).
    pub fn latch_waiters_never_miss_the_set() {
        explore("latch: set vs wait and listen", None, || {
            let latch = Arc::new(Latch::default());
            let setter = {
                let latch = latch.clone();
                thread::spawn(move || latch.set())
            };
            let by_hand = {
                let latch = latch.clone();
                thread::spawn(move || {
                    if !latch.is_set() {
                        let listener = latch.listen();
                        if !latch.is_set() {
                            block_on(listener);
                        }
                    }
                    assert!(latch.is_set());
                })
            };
            block_on(latch.wait());
            assert!(latch.is_set());
            setter.join().unwrap();
            by_hand.join().unwrap();
        });
    }

    /// `until` on a condition two other threads complete, each notifying after its step:
    /// a notify between its two checks is never lost, and what it returns was true.
    pub fn until_never_misses_a_notify_between_its_checks() {
        explore("until: two steps vs check-listen-check", None, || {
            let shared = Arc::new((atomic::AtomicUsize::new(0), Event::new()));
            let steps: Vec<_> = (0..2)
                .map(|_| {
                    let shared = shared.clone();
                    thread::spawn(move || {
                        shared.0.fetch_add(1, Ordering::Release);
                        shared.1.notify(usize::MAX);
                    })
                })
                .collect();
            let seen = block_on(until(&shared.1, || {
                let n = shared.0.load(Ordering::Acquire);
                (n == 2).then_some(n)
            }));
            assert_eq!(seen, 2);
            for step in steps {
                step.join().unwrap();
            }
        });
    }

    /// A value sent on one thread while another waits for it (or not yet).
    pub fn oneshot_recv_gets_what_send_sent() {
        explore("oneshot: send vs recv", None, || {
            let done = Oneshot::new();
            let sender = done.clone();
            let sending = thread::spawn(move || sender.send(7));
            assert_eq!(block_on(done.recv()), 7);
            sending.join().unwrap();
        });
    }

    /// The control: a wait that listens without checking again is caught (a set between the
    /// check and `listen` is lost, and loom reports the waiter stuck), so the models above
    /// pass because the protocol is right, not because the stand-in's notifications stick.
    /// Panics (loom reports a deadlock): the runner expects it to.
    pub fn a_wait_without_the_second_check_is_caught() {
        explore("control: check, listen, sleep", None, || {
            let latch = Arc::new(Latch::default());
            let setter = {
                let latch = latch.clone();
                thread::spawn(move || latch.set())
            };
            if !latch.is_set() {
                block_on(latch.listen());
            }
            setter.join().unwrap();
        });
    }
}
