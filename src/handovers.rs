//! The listeners' sockets kept to hand to a new process at an upgrade, and the claim on the
//! one upgrade that may run at a time.
//!
//! The sockets are duplicates of the listeners' descriptors, kept apart from the accept
//! loops so that an upgrade can send them while the loops go on accepting. They are closed
//! when accepting stops, so that clients are refused after a shutdown rather than left in a
//! backlog nobody accepts from.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
#[cfg(any(feature = "async-io", feature = "tokio"))]
use std::sync::atomic::Ordering;

use crate::listener::Handover;
use crate::sync::lock;

/// Each listener's socket, by name, and whether an upgrade is under way. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Handovers {
    sockets: Mutex<Vec<(Arc<str>, Handover)>>,
    /// An upgrade is under way.
    #[cfg_attr(not(any(feature = "async-io", feature = "tokio")), allow(dead_code))]
    upgrading: AtomicBool,
}

impl Handovers {
    /// Keeps the listeners' sockets for an upgrade.
    pub(crate) fn keep(&self, handovers: Vec<(Arc<str>, Handover)>) {
        lock(&self.sockets).extend(handovers);
    }

    /// Keeps one more socket for an upgrade (replacing one of the same name).
    #[cfg(any(feature = "async-io", feature = "tokio"))]
    pub(crate) fn add(&self, name: Arc<str>, handover: Handover) {
        let mut sockets = lock(&self.sockets);
        sockets.retain(|(n, _)| *n != name);
        sockets.push((name, handover));
    }

    /// Closes every kept socket (accepting stopped).
    pub(crate) fn close_all(&self) {
        lock(&self.sockets).clear();
    }

    /// Duplicates of the listeners' sockets, by name, for a new process.
    #[cfg(any(feature = "async-io", feature = "tokio"))]
    pub(crate) fn duplicates(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
        lock(&self.sockets)
            .iter()
            .map(|(name, handover)| Ok((name.to_string(), handover.fd.try_clone()?)))
            .collect()
    }

    /// The sockets were handed over: the old listeners leave Unix socket files in place.
    /// False, and nothing done, when `stopping` (asked under the lock that
    /// [`close_all`](Self::close_all) takes, so a shutdown is seen either before or after)
    /// says a shutdown began: its listeners may already be gone, files and all, and the new
    /// process must not serve then.
    #[cfg(any(feature = "async-io", feature = "tokio"))]
    pub(crate) fn handed_over_unless(&self, stopping: impl FnOnce() -> bool) -> bool {
        let sockets = lock(&self.sockets);
        if stopping() {
            return false;
        }
        for (_, handover) in sockets.iter() {
            if let Some(keep) = &handover.keep_file {
                keep.store(true, Ordering::Release);
            }
        }
        true
    }

    /// Every Unix socket file is its listener's again (after an adopting server said it is
    /// ready: until then a failure must not remove the file the old process serves).
    #[cfg(any(feature = "async-io", feature = "tokio"))]
    pub(crate) fn own_socket_files(&self) {
        for (_, handover) in lock(&self.sockets).iter() {
            if let Some(keep) = &handover.keep_file {
                keep.store(false, Ordering::Release);
            }
        }
    }

    /// Claims the one upgrade that may run at a time; false if one is under way.
    #[cfg(any(feature = "async-io", feature = "tokio"))]
    pub(crate) fn start_upgrade(&self) -> bool {
        !self.upgrading.swap(true, Ordering::AcqRel)
    }

    #[cfg(any(feature = "async-io", feature = "tokio"))]
    pub(crate) fn end_upgrade(&self) {
        self.upgrading.store(false, Ordering::Release);
    }
}
