//! Per-connection bookkeeping slots: the registry of open connections and the pool of
//! free slots.
//!
//! A [`Slot`] holds what the server must be able to reach from outside a connection's task:
//! the activity stamp the idle scanner reads, the close state it (or a forced shutdown)
//! writes, and the wakers to wake the task when that happens. Slots are recycled so a
//! steady stream of connections allocates nothing for them.
//!
//! Recycling is where golib has a use-after-recycle bug (a finished handler's context,
//! returned to a `sync.Pool`, can reach the next connection's state). Here every slot
//! carries a generation, packed with the close state into one atomic word. A
//! [`ConnHandle`](crate::ConnHandle) remembers the generation it was made for; when the
//! connection ends the generation is bumped before the slot is reused, so any operation
//! through a stale handle compares unequal and does nothing.

use std::sync::Arc;

use atomic_waker::AtomicWaker;
use slab::Slab;

use crate::events::CloseReason;
use crate::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Mutex, lock};

/// The close state of a connection, stored in the low byte of a slot's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SlotState {
    Open = 0,
    IdleTimeout = 1,
    ShutdownForced = 2,
    Aborted = 3,
    /// Closed to make room under pressure (`Overload::evict_idle_after`).
    Evicted = 5,
    /// The connection ended; the slot is free or about to be.
    Finished = 4,
}

impl SlotState {
    fn from_bits(bits: u8) -> SlotState {
        match bits {
            0 => SlotState::Open,
            1 => SlotState::IdleTimeout,
            2 => SlotState::ShutdownForced,
            3 => SlotState::Aborted,
            5 => SlotState::Evicted,
            _ => SlotState::Finished,
        }
    }

    /// The reason to report when the server (not the handler) closed the connection.
    pub(crate) fn close_reason(self) -> Option<CloseReason> {
        match self {
            SlotState::IdleTimeout => Some(CloseReason::IdleTimeout),
            SlotState::ShutdownForced => Some(CloseReason::ShutdownForced),
            SlotState::Aborted => Some(CloseReason::Aborted),
            SlotState::Evicted => Some(CloseReason::Evicted),
            SlotState::Open | SlotState::Finished => None,
        }
    }
}

/// Things a connection's I/O observed, for the close reason.
pub(crate) const SAW_EOF: u8 = 1;
pub(crate) const SAW_ERROR: u8 = 2;
pub(crate) const PANICKED: u8 = 4;
/// The handler is done and the socket is in a lingering close (see `conn::Open::linger`).
pub(crate) const LINGERING: u8 = 8;
/// A read returned data: the peer has sent something (see `Config::first_request_grace`).
pub(crate) const SAW_DATA: u8 = 16;

const STATE_BITS: u32 = 8;

fn pack(generation: u64, state: SlotState) -> u64 {
    (generation << STATE_BITS) | state as u64
}

/// One connection's shared bookkeeping. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// `generation << 8 | state`.
    word: AtomicU64,
    /// Coarse-clock time of the last read or write progress (see `idle`).
    pub(crate) last_active: AtomicU64,
    /// `SAW_EOF | SAW_ERROR | PANICKED | LINGERING | SAW_DATA`.
    flags: AtomicU8,
    /// Live [`Busy`](crate::conn::Busy) marks, as `generation << 32 | count` (the low 32
    /// bits of the generation): while the count is above 0 the connection is in the middle
    /// of a unit of work (an HTTP request) and is never idle, however quiet its socket. The
    /// generation keeps a mark that outlives its connection from touching the next one's.
    busy: AtomicU64,
    /// Key in the registry while open.
    key: AtomicUsize,
    /// The connection's id (for reports about it from outside its task).
    pub(crate) id: AtomicU64,
    pub(crate) read_waker: AtomicWaker,
    pub(crate) write_waker: AtomicWaker,
    /// The connection task, woken so it can cancel the handler when the server closes it.
    pub(crate) task_waker: AtomicWaker,
}

impl Slot {
    pub(crate) fn generation(&self) -> u64 {
        self.word.load(Ordering::Acquire) >> STATE_BITS
    }

    /// The state as seen by the connection of `generation`: `Finished` once that connection
    /// has ended, whatever the slot is doing now.
    pub(crate) fn state(&self, generation: u64) -> SlotState {
        let word = self.word.load(Ordering::Acquire);
        if word >> STATE_BITS != generation {
            return SlotState::Finished;
        }
        SlotState::from_bits(word as u8)
    }

    /// Closes the connection of `generation` from outside its task. Returns false when it
    /// was already closed or has ended (a stale generation).
    pub(crate) fn close(&self, generation: u64, state: SlotState) -> bool {
        debug_assert!(state.close_reason().is_some());
        let closed = self
            .word
            .compare_exchange(
                pack(generation, SlotState::Open),
                pack(generation, state),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if closed {
            self.read_waker.wake();
            self.write_waker.wake();
            self.task_waker.wake();
        }
        closed
    }

    pub(crate) fn mark(&self, flag: u8) {
        // Load first: the common case (flag already set, e.g. many EOF reads) stays a read.
        if self.flags.load(Ordering::Relaxed) & flag == 0 {
            self.flags.fetch_or(flag, Ordering::Relaxed);
        }
    }

    pub(crate) fn flags(&self) -> u8 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Marks the connection of `generation` busy (one more unit of work in progress).
    /// Returns false, changing nothing, once that connection has ended.
    pub(crate) fn enter_busy(&self, generation: u64) -> bool {
        self.update_busy(generation, |count| count.checked_add(1))
    }

    /// Ends one unit of work of the connection of `generation`; its end counts as activity
    /// at `stamp`. Does nothing once that connection has ended.
    pub(crate) fn leave_busy(&self, generation: u64, stamp: u64) {
        self.update_busy(generation, |count| {
            // Stamp before the count drops (release): a sweep that sees the drop sees it.
            // The slot may be reused between the generation check and this store: the
            // maximum keeps a late stamp of an ended connection from making the next one
            // look idle since before it opened (the clock only moves forward, so a late
            // stamp above the next connection's is from after its opening began).
            // Loaded first: the stamp is coarse, so it is usually there already, and a
            // load costs no locked instruction (a request/response protocol leaves busy
            // once per request).
            if self.last_active.load(Ordering::Relaxed) < stamp {
                self.last_active.fetch_max(stamp, Ordering::Relaxed);
            }
            count.checked_sub(1)
        });
    }

    fn update_busy(&self, generation: u64, f: impl Fn(u32) -> Option<u32>) -> bool {
        let tag = (generation as u32 as u64) << 32;
        self.busy
            .fetch_update(Ordering::Release, Ordering::Relaxed, |word| {
                if word & !0xffff_ffff != tag {
                    return None;
                }
                f(word as u32).map(|count| tag | u64::from(count))
            })
            .is_ok()
    }

    /// Whether some unit of work is in progress (see `enter_busy`).
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) as u32 > 0
    }
}

/// The registry of open connections plus the free list.
///
/// Walks over the open connections (the idle sweep, the drain's wakes, shutdown's final
/// sweep, the eviction scan) never hold the registry lock that accepts (`open`) and closes
/// (`release`) take for more than [`WALK_CHUNK`] keys: they copy a chunk of slots out under
/// the lock and look at them after letting it go (see `walk`).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    open: Mutex<Registry>,
    free: Mutex<Vec<Arc<Slot>>>,
}

/// The open slots by key.
#[derive(Debug, Default)]
struct Registry {
    slots: Slab<Arc<Slot>>,
    /// One past the highest key ever used: a walk looks at the keys below it. (A slab
    /// keeps its keys where they are and reuses the freed ones first, so this is its
    /// length, which it does not expose.)
    end: usize,
}

/// The most free slots kept for reuse; beyond this, released slots are freed, so a burst
/// does not pin its peak memory forever.
const MAX_FREE: usize = 4096;

/// How many registry keys a walk looks at per hold of the registry lock: what bounds the
/// wait of an accept or a close behind a walk (copying this many `Arc`s, well under a
/// microsecond), whatever the number of connections. One under loom, so the models see a
/// walk let go of the lock between any two slots.
#[cfg(not(berth_loom))]
const WALK_CHUNK: usize = 64;
#[cfg(berth_loom)]
const WALK_CHUNK: usize = 1;

impl Pool {
    /// Takes a free slot (or allocates one), registers it as open and returns it with its
    /// generation. `allocated` is called when a new slot had to be allocated.
    pub(crate) fn open(&self, now: u64, allocated: impl FnOnce()) -> (Arc<Slot>, u64) {
        let slot = lock(&self.free).pop().unwrap_or_else(|| {
            allocated();
            Arc::new(Slot::default())
        });
        let generation = slot.generation();
        slot.flags.store(0, Ordering::Relaxed);
        slot.busy
            .store((generation as u32 as u64) << 32, Ordering::Relaxed);
        slot.last_active.store(now, Ordering::Relaxed);
        // Wakers left by the previous connection must not be woken for this one.
        drop(slot.read_waker.take());
        drop(slot.write_waker.take());
        drop(slot.task_waker.take());
        let key = {
            let mut open = lock(&self.open);
            let key = open.slots.insert(slot.clone());
            open.end = open.end.max(key + 1);
            key
        };
        slot.key.store(key, Ordering::Relaxed);
        slot.word
            .store(pack(generation, SlotState::Open), Ordering::Release);
        (slot, generation)
    }

    /// Ends the connection of `generation`: deregisters the slot, makes every stale
    /// reference harmless by bumping the generation, and returns the slot to the free list.
    /// Returns the slot's final state as that connection saw it.
    pub(crate) fn release(&self, slot: &Arc<Slot>, generation: u64) -> SlotState {
        lock(&self.open)
            .slots
            .remove(slot.key.load(Ordering::Relaxed));
        let old = slot
            .word
            .swap(pack(generation + 1, SlotState::Finished), Ordering::AcqRel);
        let mut free = lock(&self.free);
        if free.len() < MAX_FREE {
            free.push(slot.clone());
        }
        SlotState::from_bits(old as u8)
    }

    /// Runs `f` on every registered slot with its word (generation and state) as it was
    /// when the slot was copied out, holding the registry lock for at most [`WALK_CHUNK`]
    /// keys at a time and never while `f` runs.
    ///
    /// What a walk sees, and why that is all its callers need:
    /// - A slot registered before the walk began and still registered when the walk reaches
    ///   its key is seen: a slot keeps its key while registered, and the walk goes through
    ///   the keys in order up to the end it reads under each hold.
    /// - A slot registered while the walk runs may be seen or not (its key may be behind
    ///   the walk), as a slot registered just after a walk under one lock was not seen.
    ///   Shutdown's final sweep relies on this only through the fences in `Stop::force` and
    ///   `Core::register`: every hold of the lock comes after the force latch and its fence,
    ///   so a registration the walk does not see (its key visited before it was inserted:
    ///   that hold came first in the lock's order) sees the latch and closes itself. The
    ///   loom model `a_chunked_walk_misses_no_registration_the_latch_does_not_catch`
    ///   checks it.
    /// - The word is read under the lock, while the slot is registered for that
    ///   generation, so it is never `Finished` there except for a slot still being
    ///   registered (as before). By the time `f` runs the connection may have ended and the
    ///   slot been reused: what `f` reads of the slot (activity, busy mark, flags) may then
    ///   be the next connection's, but what it does goes through the generation it was
    ///   given (`Slot::close` compares it), so it cannot touch the next connection; a waker
    ///   it wakes may be the next connection's, a spurious wake its task tolerates.
    fn walk(&self, mut f: impl FnMut(&Arc<Slot>, u64)) {
        // On the stack: a sweep allocates nothing.
        let mut chunk: [Option<(Arc<Slot>, u64)>; WALK_CHUNK] = std::array::from_fn(|_| None);
        let mut key = 0;
        loop {
            let mut copied = 0;
            let more = {
                let open = lock(&self.open);
                let stop = open.end.min(key + WALK_CHUNK);
                while key < stop {
                    if let Some(slot) = open.slots.get(key) {
                        chunk[copied] = Some((slot.clone(), slot.word.load(Ordering::Acquire)));
                        copied += 1;
                    }
                    key += 1;
                }
                key < open.end
            };
            for (slot, word) in chunk[..copied].iter_mut().filter_map(Option::take) {
                f(&slot, word);
            }
            if !more {
                return;
            }
        }
    }

    /// Runs `f` on every open slot with its generation (see `walk` for which it sees).
    pub(crate) fn for_each_open(&self, mut f: impl FnMut(&Slot, u64)) {
        self.walk(|slot, word| {
            if SlotState::from_bits(word as u8) == SlotState::Open {
                f(slot, word >> STATE_BITS);
            }
        });
    }

    /// Runs `f` on every registered slot (open, or closed by the server while its task has
    /// not ended yet) with its generation and state (see `walk` for which it sees).
    pub(crate) fn for_each_registered(&self, mut f: impl FnMut(&Slot, u64, SlotState)) {
        self.walk(|slot, word| f(slot, word >> STATE_BITS, SlotState::from_bits(word as u8)));
    }

    /// The open slot whose last activity is the oldest, if at or before `before`, with its
    /// generation: one walk over the open slots. Busy slots are never the idlest. Activity
    /// moves while the walk runs (with or without the lock), so "oldest" is as of when each
    /// slot was looked at; the caller closes the result through its generation.
    pub(crate) fn idlest(&self, before: u64) -> Option<(Arc<Slot>, u64)> {
        let mut best: Option<(Arc<Slot>, u64, u64)> = None;
        self.walk(|slot, word| {
            let last = slot.last_active.load(Ordering::Relaxed);
            if SlotState::from_bits(word as u8) == SlotState::Open
                && !slot.is_busy()
                && last <= before
                && best.as_ref().is_none_or(|&(_, _, oldest)| last < oldest)
            {
                best = Some((slot.clone(), word >> STATE_BITS, last));
            }
        });
        best.map(|(slot, generation, _)| (slot, generation))
    }
}

#[cfg(test)]
mod tests;

/// Loom models of the generation protocol (see `sync` and `.ci/run`).
#[cfg(berth_loom)]
#[allow(missing_docs)] // model names say what they check; run by the `loom` crate
pub mod loom_models {
    use loom::thread;

    use super::*;
    use crate::sync::loom_models::explore;

    /// A connection's busy mark ends and the idle scanner closes it, both late: through the
    /// first generation while the slot is released and reused for the next connection,
    /// which marks itself busy at once. The stale stamp is older than the next connection's
    /// open stamp: the case that would make it look idle too soon.
    pub fn a_stale_close_or_busy_mark_never_reaches_the_next_connection() {
        explore(
            "pool: stale close + busy end vs release + reopen",
            None,
            || {
                const STALE: u64 = 2;
                const OPENED: u64 = 3;
                let pool = Pool::default();
                let (slot, first) = pool.open(1, || ());
                assert!(slot.enter_busy(first));
                let stale = {
                    let slot = slot.clone();
                    thread::spawn(move || {
                        let closed = slot.close(first, SlotState::IdleTimeout);
                        slot.leave_busy(first, STALE);
                        closed
                    })
                };
                let ended = pool.release(&slot, first);
                let (next, second) = pool.open(OPENED, || ());
                assert!(Arc::ptr_eq(&slot, &next), "the slot is reused");
                assert!(next.enter_busy(second));
                let closed = stale.join().unwrap();
                assert_eq!(
                    closed,
                    ended == SlotState::IdleTimeout,
                    "a close succeeds exactly when the connection it was meant for sees it"
                );
                assert_eq!(next.state(second), SlotState::Open);
                assert_eq!(
                    next.busy.load(Ordering::Relaxed) as u32,
                    1,
                    "its own mark only"
                );
                assert_eq!(next.last_active.load(Ordering::Relaxed), OPENED);
            },
        );
    }

    /// A busy mark made through the first generation while the slot is released and reused
    /// (a request that outlives its connection), held on: it never counts for the next
    /// connection.
    pub fn a_stale_busy_mark_never_counts_for_the_next_connection() {
        explore("pool: stale busy mark vs release + reopen", None, || {
            let pool = Pool::default();
            let (slot, first) = pool.open(1, || ());
            let stale = {
                let slot = slot.clone();
                thread::spawn(move || slot.enter_busy(first))
            };
            pool.release(&slot, first);
            let (next, second) = pool.open(3, || ());
            stale.join().unwrap();
            assert!(!next.is_busy(), "a new connection starts idle");
            assert_eq!(next.state(second), SlotState::Open);
        });
    }

    /// Two closes of one connection at once (the idle scanner and a forced shutdown):
    /// exactly one wins, and its reason is what the connection ends with.
    pub fn of_two_closes_exactly_one_wins() {
        explore("pool: close vs close", None, || {
            let pool = Pool::default();
            let (slot, generation) = pool.open(0, || ());
            let other = {
                let slot = slot.clone();
                thread::spawn(move || slot.close(generation, SlotState::ShutdownForced))
            };
            let mine = slot.close(generation, SlotState::IdleTimeout);
            let theirs = other.join().unwrap();
            assert!(mine != theirs, "exactly one close wins");
            let won = if mine {
                SlotState::IdleTimeout
            } else {
                SlotState::ShutdownForced
            };
            assert_eq!(slot.state(generation), won);
            assert_eq!(pool.release(&slot, generation), won);
        });
    }

    /// Shutdown's final sweep walks the registry a slot per hold of the lock (`WALK_CHUNK`
    /// under loom) while a connection ends and another registers into the key it freed,
    /// behind the walk or ahead of it, fenced against the force latch as `Core::register`
    /// and `Stop::force` do: the one registered throughout is forced by the sweep, and the
    /// late one is forced too, by the sweep or by itself on seeing the latch.
    pub fn a_chunked_walk_misses_no_registration_the_latch_does_not_catch() {
        use crate::sync::atomic::{AtomicBool, fence};
        explore(
            "pool: chunked final sweep vs release + register",
            None,
            || {
                let pool = Arc::new(Pool::default());
                let forced = Arc::new(AtomicBool::default());
                let (ending, first) = pool.open(0, || ());
                let (staying, kept) = pool.open(0, || ());
                let churn = {
                    let (pool, forced) = (pool.clone(), forced.clone());
                    thread::spawn(move || {
                        pool.release(&ending, first);
                        // As `Core::register`.
                        let (slot, generation) = pool.open(0, || ());
                        fence(Ordering::SeqCst);
                        if forced.load(Ordering::Acquire) {
                            slot.close(generation, SlotState::ShutdownForced);
                        }
                        (slot, generation)
                    })
                };
                // As `Stop::force`, then the sweep in `shutdown`.
                forced.store(true, Ordering::Release);
                fence(Ordering::SeqCst);
                pool.for_each_registered(|slot, generation, state| {
                    if state == SlotState::Open {
                        slot.close(generation, SlotState::ShutdownForced);
                    }
                });
                let (late, generation) = churn.join().unwrap();
                assert_eq!(
                    staying.state(kept),
                    SlotState::ShutdownForced,
                    "registered throughout: seen"
                );
                assert_eq!(
                    late.state(generation),
                    SlotState::ShutdownForced,
                    "registered during the sweep: seen, or saw the latch"
                );
            },
        );
    }

    /// The idle scanner looks at a busy mark as it ends: if it sees the mark gone, it sees
    /// the stamp of its end (never the older one, which would close the connection). Both
    /// what the scanner can see are reached (loom explores the race, see `sync::model`).
    pub fn a_sweep_that_sees_a_busy_mark_end_sees_its_stamp() {
        let seen = Arc::new([(); 2].map(|()| std::sync::atomic::AtomicUsize::new(0)));
        let counted = seen.clone();
        explore("pool: busy end vs sweep", None, move || {
            let pool = Pool::default();
            let (slot, generation) = pool.open(1, || ());
            assert!(slot.enter_busy(generation));
            let worker = {
                let slot = slot.clone();
                thread::spawn(move || slot.leave_busy(generation, 5))
            };
            // As `idle` looks: busy first, then the stamp.
            let busy = slot.is_busy();
            if !busy {
                assert_eq!(slot.last_active.load(Ordering::Relaxed), 5);
            }
            counted[usize::from(busy)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            worker.join().unwrap();
        });
        for (i, seen) in seen.iter().enumerate() {
            let what = ["the mark gone", "the mark held"][i];
            assert!(
                seen.load(std::sync::atomic::Ordering::Relaxed) > 0,
                "no execution saw {what}"
            );
        }
    }
}
