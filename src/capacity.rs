//! The places connections and handshakes take: the open count with the `max_connections`
//! reservations, the `Closed` reports still under way, and the `max_handshakes` places.
//!
//! Lock-free counters plus an event that wakes waiters when a place is given back. Every
//! wait checks, listens and checks again ([`until`]), and every give-back notifies after it
//! has changed its counter, so a freed place always reaches a waiter. The loom models at the
//! bottom check this over every interleaving (see `.ci/run`).

use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::{Event, IntoNotification as _, until};

/// The open count, the reservations under `max_connections`, and the handshake places.
#[derive(Debug, Default)]
pub(crate) struct Capacity {
    /// Connections counted as open: from accept until their socket is closed.
    open: AtomicUsize,
    /// Places under `max_connections` held by accept loops waiting in `accept`.
    reserved: AtomicUsize,
    /// `Closed` events being reported (shutdown waits for them too).
    reports: AtomicUsize,
    /// The open count went down, a reservation was given back, or a `Closed` report
    /// finished.
    closed: Event,
    /// TLS handshakes under way, and the event their ends notify (`max_handshakes`).
    handshakes: AtomicUsize,
    handshake_done: Event,
}

/// A place under `max_connections` held by an accept loop (see [`Capacity::reserve`]). The
/// connection accepted with it is counted before the place is given back, so the two never
/// add up to less than what is in use.
pub(crate) struct Reservation<'a>(&'a Capacity);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify(usize::MAX);
    }
}

/// One of the `max_handshakes` places, held while a handshake runs.
pub(crate) struct HandshakePlace<'a>(Option<&'a Capacity>);

impl HandshakePlace<'_> {
    /// A place when there is no limit: holds nothing.
    pub(crate) fn unlimited() -> Self {
        HandshakePlace(None)
    }
}

impl Drop for HandshakePlace<'_> {
    fn drop(&mut self) {
        if let Some(capacity) = self.0 {
            capacity.handshakes.fetch_sub(1, Ordering::AcqRel);
            // `additional`: a waiter already notified but not yet running does not count,
            // or two places freed in a row could wake one waiter only.
            capacity.handshake_done.notify(1_usize.additional());
        }
    }
}

impl Capacity {
    // --- the open count -------------------------------------------------------------------

    /// Connections open now: counted from accept until their socket is closed.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections open plus places reserved, for the pressure (a relaxed estimate).
    pub(crate) fn in_use(&self) -> usize {
        self.open() + self.reserved.load(Ordering::Relaxed)
    }

    /// Counts a connection as open.
    pub(crate) fn count_open(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    /// A counted connection ended.
    pub(crate) fn count_down(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.closed.notify(usize::MAX);
    }

    /// Notified when the open count goes down, a reservation is given back, or a `Closed`
    /// report finished.
    pub(crate) fn closed(&self) -> &Event {
        &self.closed
    }

    /// A `Closed` event is about to be reported: [`all_closed`](Self::all_closed) waits for
    /// it until [`report_done`](Self::report_done).
    pub(crate) fn report_begun(&self) {
        self.reports.fetch_add(1, Ordering::AcqRel);
    }

    /// The `Closed` event begun with [`report_begun`](Self::report_begun) is out.
    pub(crate) fn report_done(&self) {
        self.reports.fetch_sub(1, Ordering::AcqRel);
        self.closed.notify(usize::MAX);
    }

    /// Whether no connection is open and every `Closed` event has been reported.
    pub(crate) fn all_closed(&self) -> bool {
        self.open() == 0 && self.reports.load(Ordering::Acquire) == 0
    }

    /// Waits until fewer than `max` connections are open.
    pub(crate) async fn below(&self, max: usize) {
        until(&self.closed, || (self.open() < max).then_some(())).await
    }

    /// Waits for a place under `max` (see [`try_reserve`](Self::try_reserve)).
    pub(crate) async fn reserve(&self, max: usize) -> Reservation<'_> {
        until(&self.closed, || self.try_reserve(max)).await
    }

    /// A place under `max` for a connection just accepted, held until the connection is
    /// counted, so that several accept loops (one per listener) never serve more than `max`
    /// between them; `None` when there is none now.
    pub(crate) fn try_reserve(&self, max: usize) -> Option<Reservation<'_>> {
        let reserved = self.reserved.fetch_add(1, Ordering::AcqRel) + 1;
        if self.open() + reserved <= max {
            return Some(Reservation(self));
        }
        self.reserved.fetch_sub(1, Ordering::AcqRel);
        None
    }

    // --- handshakes -----------------------------------------------------------------------

    /// Waits for a place among `max` TLS handshakes at once; the handshake holds it until it
    /// ends.
    pub(crate) async fn handshake_place(&self, max: usize) -> HandshakePlace<'_> {
        until(&self.handshake_done, || self.try_handshake_place(max)).await
    }

    fn try_handshake_place(&self, max: usize) -> Option<HandshakePlace<'_>> {
        self.handshakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| HandshakePlace(Some(self)))
    }
}

/// Loom models of the places (see `sync` and `.ci/run`).
#[cfg(berth_loom)]
#[allow(missing_docs)] // model names say what they check; run by the `loom` crate
pub mod loom_models {
    use std::sync::Arc;

    use futures_lite::FutureExt as _;
    use loom::thread;

    use super::*;
    use crate::sync::Latch;
    use crate::sync::loom_models::{block_on, explore};

    /// The preemption bound of the models with three threads that wait (unbounded they
    /// take minutes); the others explore every interleaving.
    const PREEMPTIONS: usize = 5;

    /// What an accept loop does with a place under `max`: waits for it, counts the
    /// connection it accepted, gives the place back (the open count holds it now); the
    /// connection is served, then closes. `serving` counts connections between getting a
    /// place and closing, across loops.
    fn accept_one(capacity: &Capacity, max: usize, serving: &AtomicUsize) {
        let place = block_on(capacity.reserve(max));
        let now = serving.fetch_add(1, Ordering::AcqRel) + 1;
        assert!(
            now <= max,
            "{now} connections under max_connections = {max}"
        );
        capacity.count_open();
        drop(place);
        serving.fetch_sub(1, Ordering::AcqRel);
        capacity.count_down();
    }

    /// Two accept loops (two listeners) race for the one place of `max_connections = 1`:
    /// never both served at once, and the loser is woken when the winner's connection
    /// closes (else loom reports it stuck).
    pub fn two_accept_loops_share_max_connections() {
        explore("capacity: two accept loops, max 1", None, || {
            let capacity = Arc::new(Capacity::default());
            let serving = Arc::new(AtomicUsize::new(0));
            let other = {
                let (capacity, serving) = (capacity.clone(), serving.clone());
                thread::spawn(move || accept_one(&capacity, 1, &serving))
            };
            accept_one(&capacity, 1, &serving);
            other.join().unwrap();
            assert_eq!(capacity.open(), 0);
            assert_eq!(capacity.in_use(), 0);
        });
    }

    /// A reservation given back unused (the accept failed, or the client was refused on the
    /// loop) reaches an accept loop waiting for a place.
    pub fn a_reservation_given_back_reaches_a_waiter() {
        explore("capacity: reservation given back vs waiter", None, || {
            let capacity = Arc::new(Capacity::default());
            let serving = Arc::new(AtomicUsize::new(1));
            let held = capacity.try_reserve(1).expect("a place is free");
            let waiter = {
                let (capacity, serving) = (capacity.clone(), serving.clone());
                thread::spawn(move || accept_one(&capacity, 1, &serving))
            };
            serving.fetch_sub(1, Ordering::AcqRel);
            drop(held);
            waiter.join().unwrap();
        });
    }

    /// An accept loop at the limit waits (`below`) until a connection closes, then takes
    /// the place it freed.
    pub fn a_closed_connection_reaches_a_loop_waiting_below_the_limit() {
        explore("capacity: connection close vs below", None, || {
            let capacity = Arc::new(Capacity::default());
            let serving = Arc::new(AtomicUsize::new(1));
            capacity.count_open();
            let waiter = {
                let (capacity, serving) = (capacity.clone(), serving.clone());
                thread::spawn(move || {
                    block_on(capacity.below(1));
                    accept_one(&capacity, 1, &serving);
                })
            };
            serving.fetch_sub(1, Ordering::AcqRel);
            capacity.count_down();
            waiter.join().unwrap();
        });
    }

    /// Two handshake places freed in a row while two handshakes wait (`max_handshakes = 2`):
    /// both get one, though neither gives it back (the `additional` notification: a plain
    /// `notify(1)` would wake one and loom would report the other stuck).
    pub fn two_freed_handshake_places_reach_two_waiters() {
        explore(
            "capacity: two places freed vs two handshakes",
            Some(PREEMPTIONS),
            || {
                let capacity = Arc::new(Capacity::default());
                let holding = Arc::new(AtomicUsize::new(0));
                fn take<'a>(capacity: &'a Capacity, holding: &AtomicUsize) -> HandshakePlace<'a> {
                    let place = block_on(capacity.handshake_place(2));
                    let now = holding.fetch_add(1, Ordering::AcqRel) + 1;
                    assert!(now <= 2, "{now} handshakes under max_handshakes = 2");
                    place
                }
                let first = take(&capacity, &holding);
                let second = take(&capacity, &holding);
                let waiters: Vec<_> = (0..2)
                    .map(|_| {
                        let (capacity, holding) = (capacity.clone(), holding.clone());
                        thread::spawn(move || {
                            // A long handshake: it keeps its place.
                            std::mem::forget(take(&capacity, &holding));
                        })
                    })
                    .collect();
                for place in [first, second] {
                    holding.fetch_sub(1, Ordering::AcqRel);
                    drop(place);
                }
                for waiter in waiters {
                    waiter.join().unwrap();
                }
                assert_eq!(capacity.handshakes.load(Ordering::Relaxed), 2);
            },
        );
    }

    /// A waiting handshake gives up (its timeout) around the moment a place is freed for
    /// it: the place reaches the other waiter all the same (a listener dropped after its
    /// notification passes it on).
    pub fn a_handshake_that_gives_up_passes_its_place_on() {
        explore(
            "capacity: freed place vs waiter giving up",
            Some(PREEMPTIONS),
            || {
                let capacity = Arc::new(Capacity::default());
                let timeout = Arc::new(Latch::default());
                let held = block_on(capacity.handshake_place(1));
                let giving_up = {
                    let (capacity, timeout) = (capacity.clone(), timeout.clone());
                    thread::spawn(move || {
                        let handshake = async {
                            drop(capacity.handshake_place(1).await);
                        };
                        // As a timeout races the wait: the timeout is looked at first.
                        block_on(timeout.wait().or(handshake));
                    })
                };
                let waiting = {
                    let capacity = capacity.clone();
                    thread::spawn(move || drop(block_on(capacity.handshake_place(1))))
                };
                drop(held);
                timeout.set();
                giving_up.join().unwrap();
                waiting.join().unwrap();
                assert_eq!(capacity.handshakes.load(Ordering::Relaxed), 0);
            },
        );
    }
}
