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
