//! The coarse clock connections stamp their activity with, and the idle scanner reads.
//!
//! Reading the runtime's clock on every read and write would cost a call each; a stamp is
//! one relaxed load. The scanner advances the clock once per sweep, so a stamp is only as
//! precise as a sweep period, which is all an idle timeout needs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::sync::lock;

/// The coarse clock. Activity is stamped with the number of the current sweep period (one
/// relaxed load and store on the read/write path, no syscall); each sweep of the idle
/// scanner retires that number, noting when, and starts the next. So a stamp says the
/// activity happened before its period was retired: comparing the retirement time (not a
/// planned time) with the timeout never reaps early, even when a sweep runs late.
#[derive(Debug)]
pub(crate) struct Clock {
    origin: Instant,
    /// The current period's number.
    current: AtomicU64,
    /// The most recent retired periods: `(number, nanoseconds since origin)`, oldest first,
    /// consecutive numbers.
    retired: Mutex<std::collections::VecDeque<(u64, u64)>>,
}

impl Clock {
    pub(crate) fn new(origin: Instant) -> Self {
        Clock {
            origin,
            current: AtomicU64::new(0),
            retired: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The stamp for activity happening now.
    pub(crate) fn stamp(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    pub(crate) fn since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Retires the current period at `now_ns` and starts the next; keeps the last `keep`
    /// retired periods. Returns them.
    pub(crate) fn advance(&self, now_ns: u64, keep: usize) -> Periods {
        let mut retired = lock(&self.retired);
        let current = self.current.load(Ordering::Relaxed);
        retired.push_back((current, now_ns));
        while retired.len() > keep.max(1) {
            retired.pop_front();
        }
        self.current.store(current + 1, Ordering::Relaxed);
        Periods {
            next: current + 1,
            retired: retired.iter().map(|&(_, at)| at).collect(),
            first: retired.front().map_or(current, |&(n, _)| n),
        }
    }

    /// The retired periods as they are now.
    pub(crate) fn periods(&self) -> Periods {
        let retired = lock(&self.retired);
        let current = self.current.load(Ordering::Relaxed);
        Periods {
            next: current,
            retired: retired.iter().map(|&(_, at)| at).collect(),
            first: retired.front().map_or(current, |&(n, _)| n),
        }
    }
}

/// A copy of the clock's recent periods, to judge stamps against.
#[derive(Debug)]
pub(crate) struct Periods {
    /// The current (not retired) period.
    next: u64,
    /// When each retired period ended, from `first` on.
    retired: Vec<u64>,
    first: u64,
}

impl Periods {
    /// When the activity stamped `stamp` happened at the latest (nanoseconds since origin),
    /// or `None` if its period is still current. Periods older than those kept are taken as
    /// long past (0).
    pub(crate) fn latest(&self, stamp: u64) -> Option<u64> {
        if stamp >= self.next {
            return None;
        }
        match stamp.checked_sub(self.first) {
            Some(i) => self.retired.get(i as usize).copied(),
            None => Some(0),
        }
    }

    /// The newest stamp whose activity is at least `min` old at `now` (nanoseconds), if any.
    pub(crate) fn newest_older_than(&self, now: u64, min: u64) -> Option<u64> {
        let cutoff = now.checked_sub(min)?;
        let newest = self
            .retired
            .iter()
            .rposition(|&at| at <= cutoff)
            .map(|i| self.first + i as u64);
        match newest {
            Some(stamp) => Some(stamp),
            // Periods older than those kept ended before the oldest one kept.
            None if self.first > 0 => Some(self.first - 1),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_dates_activity_by_when_its_period_ended_even_when_a_sweep_is_late() {
        let clock = Clock::new(Instant::now());
        let early = clock.stamp();
        // Sweeps planned every 100 ns; the second runs 150 ns late.
        clock.advance(100, 10);
        let during_the_late_tick = clock.stamp();
        let periods = clock.advance(350, 10);
        assert_eq!(periods.latest(early), Some(100));
        assert_eq!(
            periods.latest(during_the_late_tick),
            Some(350),
            "activity stamped before the late sweep may have happened up to it"
        );
        assert_eq!(periods.latest(clock.stamp()), None, "still current");
        // At 500, what is at least 200 old ended at 300 or before: the first period only.
        assert_eq!(periods.newest_older_than(500, 200), Some(early));
        assert_eq!(periods.newest_older_than(500, 450), None);
        // Periods older than those kept count as long past.
        let clock = Clock::new(Instant::now());
        let ancient = clock.stamp();
        for at in 1..=5 {
            clock.advance(at * 100, 2);
        }
        let periods = clock.periods();
        assert_eq!(periods.latest(ancient), Some(0));
        assert_eq!(periods.newest_older_than(500, 50), Some(3));
    }
}
