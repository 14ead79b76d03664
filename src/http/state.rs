//! What one HTTP connection's parts share: requests in flight, whether a request head is
//! arriving, whether it speaks HTTP/2, and whether it drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::info::ConnInfo;

/// Shared by the connection's driver, its I/O and its service (HTTP/2 streams run as tasks
/// of their own, hence atomics).
pub(super) struct Shared {
    info: Arc<ConnInfo>,
    /// The runtime clock's reading at the connection's start: times below are offsets.
    base: Instant,
    /// Requests in flight and responses finished.
    requests: Requests,
    /// When the current request head began, in nanoseconds after `base` plus one; 0 while no
    /// head is awaited with bytes (between requests: the idle timeout's time).
    head_since: AtomicU64,
    h2: AtomicBool,
    draining: AtomicBool,
}

impl Shared {
    /// A connection's state: its first request head is awaited from now on.
    pub(super) fn new(info: Arc<ConnInfo>, base: Instant, h2: bool) -> Self {
        Shared {
            info,
            base,
            requests: Requests::default(),
            head_since: AtomicU64::new(CONNECTION_START),
            h2: AtomicBool::new(h2),
            draining: AtomicBool::new(false),
        }
    }

    /// The connection, as requests see it.
    pub(super) fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    /// Bytes arrived: between requests on HTTP/1, they begin the next head.
    pub(super) fn bytes_read(&self) {
        if self.requests.now().0 > 0 || self.h2.load(Ordering::Relaxed) {
            return;
        }
        if self.head_since.load(Ordering::Relaxed) == 0 {
            let since = self
                .info
                .runtime()
                .now()
                .saturating_duration_since(self.base)
                .as_nanos();
            let since = u64::try_from(since).unwrap_or(u64::MAX - 1) + 1;
            self.head_since.store(since, Ordering::Relaxed);
        }
    }

    /// A request (its head complete) goes to the service. The first one in flight marks
    /// the connection busy ([`Conn::busy`](crate::Conn::busy)), until the last one in
    /// flight finishes: HTTP/2's concurrent streams take one mark, not one each.
    pub(super) fn request_started(&self, h2: bool) {
        if h2 && !self.h2.load(Ordering::Relaxed) {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.head_since.store(0, Ordering::Relaxed);
        if self.requests.start() {
            // Fails, and so does the unmark, once the connection has ended.
            self.info.handle().mark_busy();
        }
    }

    /// A response is finished (sent, or abandoned).
    pub(super) fn request_finished(&self) {
        if self.requests.finish() {
            self.info.handle().unmark_busy();
        }
    }

    /// When the first byte of the HTTP/1 request head in hand arrived; `None` for HTTP/2
    /// and for a connection's first head (its header timeout counts from the connection's
    /// start, which is no byte's arrival).
    #[cfg(any(feature = "metrics", feature = "tracing"))]
    pub(super) fn head_first_byte(&self) -> Option<Instant> {
        if self.head_since.load(Ordering::Relaxed) == CONNECTION_START {
            return None;
        }
        self.head_started()
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
        let (in_flight, finished) = self.requests.now();
        (in_flight == 0).then(|| (finished, self.head_since.load(Ordering::Relaxed)))
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

/// `Shared::head_since` for the connection's start (its first head is awaited from then).
const CONNECTION_START: u64 = 1;

/// Requests whose response is not finished (low 32 bits) and responses finished so far
/// (high 32 bits, wrapping) in one word: a request's end is one atomic operation.
#[derive(Default)]
struct Requests(AtomicU64);

impl Requests {
    /// One more in flight; true if it is the only one. Each busy period (from a first
    /// request in flight to the last one finishing) is begun by the start that returns
    /// true, before that request can finish, so its end never comes before its beginning.
    fn start(&self) -> bool {
        self.0.fetch_add(1, Ordering::AcqRel) & 0xffff_ffff == 0
    }

    /// One more finished, one fewer in flight (at least 1 before: no borrow); true if
    /// none is left in flight.
    fn finish(&self) -> bool {
        let before = self.0.fetch_add((1 << 32) - 1, Ordering::AcqRel);
        before & 0xffff_ffff == 1
    }

    /// In flight, and finished so far.
    fn now(&self) -> (u64, u64) {
        let word = self.0.load(Ordering::Acquire);
        (word & 0xffff_ffff, word >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::Requests;

    #[test]
    fn requests_in_flight_and_finished_share_one_word() {
        let requests = Requests::default();
        assert!(requests.start(), "the first in flight begins a busy period");
        assert!(!requests.start());
        assert_eq!(requests.now(), (2, 0));
        assert!(!requests.finish(), "one is still in flight");
        assert_eq!(requests.now(), (1, 1));
        assert!(!requests.start());
        assert!(!requests.finish());
        assert!(requests.finish(), "the last one ends the busy period");
        assert_eq!(requests.now(), (0, 3));
        assert!(requests.start(), "and the next one begins another");
    }
}
