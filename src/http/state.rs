//! What one HTTP connection's parts share: requests in flight, whether a request head is
//! arriving, whether it speaks HTTP/2, and whether it drains.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::runtime::Runtime;

/// Shared by the connection's driver, its I/O and its service (HTTP/2 streams run as tasks
/// of their own, hence atomics).
pub(super) struct Shared {
    /// The runtime clock's reading at the connection's start: times below are offsets.
    base: Instant,
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// Responses finished so far.
    finished: AtomicU64,
    /// When the current request head began, in nanoseconds after `base` plus one; 0 while no
    /// head is awaited with bytes (between requests: the idle timeout's time).
    head_since: AtomicU64,
    h2: AtomicBool,
    draining: AtomicBool,
}

impl Shared {
    /// A connection's state: its first request head is awaited from now on.
    pub(super) fn new(base: Instant, h2: bool) -> Self {
        Shared {
            base,
            in_flight: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            head_since: AtomicU64::new(1),
            h2: AtomicBool::new(h2),
            draining: AtomicBool::new(false),
        }
    }

    /// Bytes arrived: between requests on HTTP/1, they begin the next head.
    pub(super) fn bytes_read(&self, rt: &dyn Runtime) {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.h2.load(Ordering::Relaxed) {
            return;
        }
        if self.head_since.load(Ordering::Relaxed) == 0 {
            let since = rt.now().saturating_duration_since(self.base).as_nanos();
            let since = u64::try_from(since).unwrap_or(u64::MAX - 1) + 1;
            self.head_since.store(since, Ordering::Relaxed);
        }
    }

    /// A request (its head complete) goes to the service.
    pub(super) fn request_started(&self, h2: bool) {
        if h2 && !self.h2.load(Ordering::Relaxed) {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.head_since.store(0, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A response is finished (sent, or abandoned).
    pub(super) fn request_finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the HTTP/1 request head being awaited began; `None` between requests.
    pub(super) fn head_started(&self) -> Option<Instant> {
        let since = self.head_since.load(Ordering::Relaxed);
        if since == 0 || self.h2.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.base + Duration::from_nanos(since - 1))
    }

    /// Whether no request is in progress; if so, the key of this quiet period: it changes
    /// when a response finishes and when bytes of a next request head begin to arrive, so
    /// a drain's grace counts from the later of the two (a head on its way gets a whole
    /// grace to complete).
    pub(super) fn quiet(&self) -> Option<(u64, u64)> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| {
            (
                self.finished.load(Ordering::Relaxed),
                self.head_since.load(Ordering::Relaxed),
            )
        })
    }

    /// The connection speaks HTTP/2 (its first bytes were the HTTP/2 preface).
    pub(super) fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    pub(super) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
