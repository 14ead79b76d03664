//! berth's loom models (`berth::loom_models`), each a test. They exist only under
//! `--cfg berth_loom`; without it this file is empty:
//!
//! ```sh
//! RUSTFLAGS="--cfg berth_loom" CARGO_TARGET_DIR=target/loom cargo test --release -p berth-loom
//! ```
//!
//! `-- --nocapture` prints how many executions each model explored.
#![cfg(berth_loom)]

use berth::loom_models as models;

#[test]
fn sync_event_stand_in_keeps_event_listeners_contract() {
    models::sync::event_stand_in_keeps_event_listeners_contract();
}

#[test]
fn sync_latch_waiters_never_miss_the_set() {
    models::sync::latch_waiters_never_miss_the_set();
}

#[test]
fn sync_until_never_misses_a_notify_between_its_checks() {
    models::sync::until_never_misses_a_notify_between_its_checks();
}

#[test]
fn sync_oneshot_recv_gets_what_send_sent() {
    models::sync::oneshot_recv_gets_what_send_sent();
}

#[test]
fn pool_a_stale_close_or_busy_mark_never_reaches_the_next_connection() {
    models::pool::a_stale_close_or_busy_mark_never_reaches_the_next_connection();
}

#[test]
fn pool_a_stale_busy_mark_never_counts_for_the_next_connection() {
    models::pool::a_stale_busy_mark_never_counts_for_the_next_connection();
}

#[test]
fn pool_of_two_closes_exactly_one_wins() {
    models::pool::of_two_closes_exactly_one_wins();
}

#[test]
fn pool_a_sweep_that_sees_a_busy_mark_end_sees_its_stamp() {
    models::pool::a_sweep_that_sees_a_busy_mark_end_sees_its_stamp();
}

#[test]
fn pool_a_chunked_walk_misses_no_registration_the_latch_does_not_catch() {
    models::pool::a_chunked_walk_misses_no_registration_the_latch_does_not_catch();
}

#[test]
fn capacity_two_accept_loops_share_max_connections() {
    models::capacity::two_accept_loops_share_max_connections();
}

#[test]
fn capacity_a_reservation_given_back_reaches_a_waiter() {
    models::capacity::a_reservation_given_back_reaches_a_waiter();
}

#[test]
fn capacity_a_closed_connection_reaches_a_loop_waiting_below_the_limit() {
    models::capacity::a_closed_connection_reaches_a_loop_waiting_below_the_limit();
}

#[test]
fn capacity_two_freed_handshake_places_reach_two_waiters() {
    models::capacity::two_freed_handshake_places_reach_two_waiters();
}

#[test]
fn capacity_a_handshake_that_gives_up_passes_its_place_on() {
    models::capacity::a_handshake_that_gives_up_passes_its_place_on();
}

/// The control: a wait without the second check must be caught, so the models above pass
/// because the protocol is right.
#[test]
#[should_panic(expected = "deadlock")]
fn sync_a_wait_without_the_second_check_is_caught() {
    models::sync::a_wait_without_the_second_check_is_caught();
}
