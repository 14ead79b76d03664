//! The pool's unit tests: generations, walks across chunks.

use super::*;

#[test]
fn stale_generation_cannot_touch_the_next_connection() {
    let pool = Pool::default();
    let mut allocs = 0;
    let (slot, first) = pool.open(0, || allocs += 1);
    assert_eq!(slot.state(first), SlotState::Open);
    pool.release(&slot, first);
    let (again, second) = pool.open(0, || allocs += 1);
    assert!(Arc::ptr_eq(&slot, &again), "the slot is reused");
    assert_eq!(allocs, 1);
    assert_ne!(first, second);
    // A stale reference sees its connection as finished and cannot close the new one.
    assert_eq!(again.state(first), SlotState::Finished);
    assert!(!again.close(first, SlotState::Aborted));
    assert_eq!(again.state(second), SlotState::Open);
    assert!(again.close(second, SlotState::Aborted));
    assert_eq!(again.state(second), SlotState::Aborted);
}

#[test]
fn a_busy_mark_of_an_ended_connection_cannot_touch_the_next() {
    let pool = Pool::default();
    let (slot, first) = pool.open(0, || ());
    assert!(slot.enter_busy(first));
    assert!(slot.enter_busy(first));
    slot.leave_busy(first, 7);
    assert!(slot.is_busy(), "one mark is still held");
    assert_eq!(slot.last_active.load(Ordering::Relaxed), 7);
    pool.release(&slot, first);
    let (again, second) = pool.open(0, || ());
    assert!(Arc::ptr_eq(&slot, &again));
    assert!(!again.is_busy(), "a new connection starts idle");
    // The first connection's last mark ends late: the new connection's count and
    // activity stay.
    again.leave_busy(first, 9);
    assert_eq!(again.last_active.load(Ordering::Relaxed), 0);
    assert!(!again.enter_busy(first));
    assert!(!again.is_busy());
    assert!(again.enter_busy(second));
    again.leave_busy(first, 9);
    assert!(again.is_busy());
    again.leave_busy(second, 9);
    assert!(!again.is_busy());
}

#[test]
fn for_each_open_skips_closed_slots() {
    let pool = Pool::default();
    let (a, ga) = pool.open(0, || ());
    let (_b, _gb) = pool.open(0, || ());
    a.close(ga, SlotState::IdleTimeout);
    let mut n = 0;
    pool.for_each_open(|_, _| n += 1);
    assert_eq!(n, 1);
}

#[test]
fn a_walk_in_chunks_sees_every_registered_slot_once() {
    let pool = Pool::default();
    let slots: Vec<_> = (0..3 * WALK_CHUNK as u64 + 5)
        .map(|stamp| pool.open(stamp + 10, || ()))
        .collect();
    // Holes in every chunk, and the last key freed (the end stays where it was).
    for (slot, generation) in slots.iter().step_by(3).chain(slots.last()) {
        pool.release(slot, *generation);
    }
    let mut seen = Vec::new();
    pool.for_each_registered(|slot, generation, _| {
        seen.push((slot.key.load(Ordering::Relaxed), generation))
    });
    let mut expected: Vec<_> = slots[..slots.len() - 1]
        .iter()
        .filter(|(slot, _)| slot.key.load(Ordering::Relaxed) % 3 != 0)
        .map(|(slot, generation)| (slot.key.load(Ordering::Relaxed), *generation))
        .collect();
    expected.sort_unstable();
    assert_eq!(seen, expected, "in key order, each once");
    // The idlest is found past the first chunk.
    let (oldest, generation) = &slots[2 * WALK_CHUNK + 2];
    oldest.last_active.store(1, Ordering::Relaxed);
    let (found, found_generation) = pool.idlest(5).expect("one is old enough");
    assert!(Arc::ptr_eq(&found, oldest));
    assert_eq!(found_generation, *generation);
    assert!(pool.idlest(0).is_none());
}

#[test]
fn a_walk_does_not_hold_the_registry_lock_while_it_looks() {
    let pool = Pool::default();
    let (_slot, _) = pool.open(0, || ());
    let mut opened = Vec::new();
    // An accept and a close from inside the walk (they would deadlock under the lock).
    pool.for_each_open(|_, _| {
        let (slot, generation) = pool.open(0, || ());
        pool.release(&slot, generation);
        opened.push(pool.open(0, || ()));
    });
    assert_eq!(opened.len(), 1);
}
