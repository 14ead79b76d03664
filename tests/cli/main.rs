//! The examples as black boxes, real processes driven by real clients, one module per
//! subject (`cargo test --test cli fleet::` runs one): the echo example's command
//! line (`echo_cli::`), its overload and certificate operations (`operations_cli::`), the
//! HTTP example (`http_cli::`), fleets behind HAProxy (`fleet::`), the framing examples,
//! the README's quick start, and berth behind a real HAProxy.
//!
//! `cargo test` builds the examples; `cargo test --test cli` alone does not, and would run
//! whatever is in `target/debug/examples/` (`cargo build --examples` first).
//!
//! Scheduling: these tests once ran as seven binaries, one after the other. A load test
//! (each of `fleet::`, and `http_cli::`'s wrk, h2load and upgrade tests) still runs alone:
//! it takes [`heavy`]; every other test takes [`light`] and may run beside other light ones.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod echo_cli;
mod fleet;
mod framing;
mod haproxy;
mod http_cli;
mod operations_cli;
mod quickstart;

static LOCK: RwLock<()> = RwLock::new(());

/// A load test: runs alone in this binary.
pub fn heavy() -> RwLockWriteGuard<'static, ()> {
    LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// A light test: may run beside other light tests, never beside a load test.
pub fn light() -> RwLockReadGuard<'static, ()> {
    LOCK.read().unwrap_or_else(|e| e.into_inner())
}
