//! A flag that is set once and can be awaited.
//!
//! Built on `event_listener::Event`, whose notifications do not stick to listeners created
//! after them: every wait checks the flag, registers a listener, and checks the flag again
//! before sleeping.

use std::sync::atomic::{AtomicBool, Ordering};

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
        while !self.is_set() {
            let listener = self.event.listen();
            if self.is_set() {
                return;
            }
            listener.await;
        }
    }
}
