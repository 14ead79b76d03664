//! How close the server is to a limit: descriptors in use against the process's limit,
//! connections against `max_connections`, and the event loop's lag against
//! `overload.max_lag`; and the level last reported.
//!
//! Counting descriptors by listing `/proc/self/fd` on every tick would cost a walk per tick;
//! instead they are counted once before serving and estimated as that baseline plus the
//! connections in use (each holds one).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Overload;
use crate::events::PressureLevel;

/// Descriptors this process has open, and its soft limit (0 where unknown).
fn descriptors() -> (usize, usize) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .and_then(|limit| usize::try_from(limit).ok())
        .unwrap_or(0);
    #[cfg(not(all(unix, any(feature = "async-io", feature = "tokio"))))]
    let limit = 0;
    (used, limit)
}

/// The pressure's sources and the last reported level. See the module docs.
#[derive(Debug)]
pub(crate) struct Pressure {
    max_connections: Option<usize>,
    max_lag: Option<Duration>,
    /// From this pressure on, the level is `High`.
    high: f64,
    /// Descriptors in use before serving, and the soft limit (0: unknown).
    fd_baseline: AtomicUsize,
    fd_limit: AtomicUsize,
    /// The last accept failed for want of descriptors.
    out_of_descriptors: AtomicBool,
    /// The last reported `PressureLevel`.
    level: AtomicU8,
}

/// One measure of the pressure (see [`Pressure::update`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// 1.0 is at a limit.
    pub(crate) pressure: f64,
    pub(crate) level: PressureLevel,
    /// The level reported before this reading.
    pub(crate) before: PressureLevel,
}

impl Pressure {
    pub(crate) fn new(max_connections: Option<usize>, overload: &Overload) -> Self {
        Pressure {
            max_connections,
            max_lag: overload.max_lag,
            high: overload.high_pressure,
            fd_baseline: AtomicUsize::new(0),
            fd_limit: AtomicUsize::new(0),
            out_of_descriptors: AtomicBool::new(false),
            level: AtomicU8::new(PressureLevel::Normal as u8),
        }
    }

    /// Notes the descriptor limit and the descriptors in use before serving, so that the
    /// descriptors in use can be estimated as those plus the open connections.
    pub(crate) fn measure_descriptors(&self) {
        let (used, limit) = descriptors();
        self.fd_baseline.store(used, Ordering::Relaxed);
        self.fd_limit.store(limit, Ordering::Relaxed);
    }

    /// `accept` ran out of descriptors (true) or succeeded again (false).
    pub(crate) fn set_out_of_descriptors(&self, out: bool) {
        self.out_of_descriptors.store(out, Ordering::Relaxed);
    }

    /// The pressure now, with `in_use` connections (open or reserved) and the event loop's
    /// `lag`: the highest of its sources. 1.0 is at a limit.
    pub(crate) fn at(&self, in_use: usize, lag: Duration) -> f64 {
        if self.out_of_descriptors.load(Ordering::Relaxed) {
            return 1.0;
        }
        let mut pressure: f64 = 0.0;
        let limit = self.fd_limit.load(Ordering::Relaxed);
        if limit > 0 {
            let used = self.fd_baseline.load(Ordering::Relaxed) + in_use;
            pressure = pressure.max(used as f64 / limit as f64);
        }
        if let Some(max) = self.max_connections {
            pressure = pressure.max(in_use as f64 / max as f64);
        }
        if let Some(max_lag) = self.max_lag {
            pressure = pressure.max(lag.as_secs_f64() / max_lag.as_secs_f64());
        }
        pressure
    }

    /// Measures the pressure (see [`at`](Self::at)) and records its level as the one
    /// reported; returns it with the level reported before.
    pub(crate) fn update(&self, in_use: usize, lag: Duration) -> Reading {
        let pressure = self.at(in_use, lag);
        let level = if pressure >= 1.0 {
            PressureLevel::Critical
        } else if pressure >= self.high {
            PressureLevel::High
        } else {
            PressureLevel::Normal
        };
        let before = match self.level.swap(level as u8, Ordering::AcqRel) {
            2 => PressureLevel::Critical,
            1 => PressureLevel::High,
            _ => PressureLevel::Normal,
        };
        Reading {
            pressure,
            level,
            before,
        }
    }
}
