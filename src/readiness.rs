//! Whether a server wants new clients, for load balancers and service managers: not during a
//! lame duck, a drain, or after an upgrade handed the listeners to another process, nor
//! while a condition of the user's says no (a database down).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::sync::{Latch, lock};

/// A server's readiness, beside its state (see `ServerHandle::is_ready`).
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    /// The lame duck began: serving on, reported not ready.
    lame_duck: Latch,
    /// The lame duck ends early (a second signal or shutdown call, `shutdown_within`).
    skip: Latch,
    /// An upgrade handed the listeners to a new process.
    handed_over: Latch,
    /// The user's conditions, by name: `false` makes the server not ready.
    conditions: Mutex<BTreeMap<String, bool>>,
}

impl Readiness {
    /// Begins the lame duck; false when it had begun already.
    pub(crate) fn begin_lame_duck(&self) -> bool {
        let first = !self.lame_duck.is_set();
        self.lame_duck.set();
        first
    }

    pub(crate) fn in_lame_duck(&self) -> bool {
        self.lame_duck.is_set()
    }

    /// Ends the lame duck now (or makes one that begins later end at once).
    pub(crate) fn skip_lame_duck(&self) {
        self.skip.set();
    }

    /// Completes when the lame duck is to end early.
    pub(crate) async fn lame_duck_skipped(&self) {
        self.skip.wait().await;
    }

    #[cfg_attr(
        not(all(unix, any(feature = "async-io", feature = "tokio"))),
        allow(dead_code)
    )]
    pub(crate) fn set_handed_over(&self) {
        self.handed_over.set();
    }

    pub(crate) fn is_handed_over(&self) -> bool {
        self.handed_over.is_set()
    }

    pub(crate) fn set_condition(&self, name: String, ready: bool) {
        lock(&self.conditions).insert(name, ready);
    }

    pub(crate) fn clear_condition(&self, name: &str) {
        lock(&self.conditions).remove(name);
    }

    /// The user's conditions that say "not ready", by name.
    pub(crate) fn failing(&self) -> Vec<String> {
        lock(&self.conditions)
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| name.clone())
            .collect()
    }
}
