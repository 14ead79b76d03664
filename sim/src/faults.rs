//! Seeded fault injection at berth's own fault points, for swarm testing.
//!
//! berth (feature `fault`, which this crate turns on) asks a [`Faults`] at each of its fault
//! points whether to fail there: an accept error, a short read or write, a spurious "not
//! ready yet", a connection task that starts late, a late idle sweep, a stalled TLS
//! handshake, a PROXY header read one byte at a time. [`SwarmFaults`] answers from a seed.
//!
//! Swarm testing (Groce et al., ISSTA 2012): rather than enabling every fault everywhere at a
//! low rate, each seed enables a random *subset* of the points, each at a rate of its own.
//! Runs where a fault is absent explore what it would have masked; runs where it is dense
//! explore what it causes. Over many seeds every combination gets its turn.
//!
//! Decisions come from one random number generator behind a mutex: turmoil runs a whole
//! simulation on one thread, in a fixed order, so the same seed makes the same decisions at
//! the same moments, and a failing seed replays exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::fault::{Faults, Point};

use crate::rng::Rng;

/// How [`SwarmFaults`] draws a seed's faults: which points it may enable, how often, how
/// late the delaying points run.
///
/// ```
/// use std::time::Duration;
/// use berth::fault::Point;
///
/// // Only I/O faults; each seed enables each with probability 0.5, firing at 1-20 %.
/// let swarm = berth_sim::Swarm {
///     points: vec![Point::ShortRead, Point::ShortWrite, Point::SpuriousPending],
///     fire: (0.01, 0.2),
///     ..berth_sim::Swarm::default()
/// };
/// let faults = swarm.faults(7);
/// assert!(faults.enabled().iter().all(|(p, _)| swarm.points.contains(p)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Swarm {
    /// The points a seed may enable. Default: every point ([`Point::ALL`]).
    pub points: Vec<Point>,
    /// The probability that a seed enables each point. Default 0.5.
    pub enable: f64,
    /// The range each enabled point's firing probability is drawn from, per seed.
    /// Default `(0.01, 0.3)`.
    pub fire: (f64, f64),
    /// The range the delay of a delaying point (`DelayedSpawn`, `LateIdleTick`,
    /// `StalledHandshake`) is drawn from, each time it fires. Default 1 ms to 50 ms.
    pub delay: (Duration, Duration),
}

impl Default for Swarm {
    fn default() -> Self {
        Swarm {
            points: Point::ALL.to_vec(),
            enable: 0.5,
            fire: (0.01, 0.3),
            delay: (Duration::from_millis(1), Duration::from_millis(50)),
        }
    }
}

impl Swarm {
    /// The faults of `seed`: the same seed gives the same points, rates and decisions.
    pub fn faults(&self, seed: u64) -> SwarmFaults {
        // The choice of points has its own stream, so changing how often points fire does
        // not change which ones a seed enables.
        let mut choose = Rng::new(seed ^ 0x5EED_F4017);
        let enabled = self
            .points
            .iter()
            .filter_map(|&point| {
                let on = choose.chance(self.enable);
                let p = choose.between(self.fire.0, self.fire.1);
                on.then_some((point, p))
            })
            .collect();
        SwarmFaults {
            inner: Arc::new(Inner {
                seed,
                enabled,
                delay: self.delay,
                active: AtomicBool::new(true),
                rng: Mutex::new(Rng::new(seed.rotate_left(17) ^ 0xFA_0175)),
                fired: Mutex::new(Vec::new()),
            }),
        }
    }
}

/// One firing of a fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// When, on the simulation's clock (zero outside a simulation).
    pub at: Duration,
    /// Where.
    pub point: Point,
    /// For a delaying point, how long it waited.
    pub delay: Option<Duration>,
}

/// A seeded [`Faults`]: give a clone to [`Builder::faults`](berth::Builder::faults) and keep
/// one to see what fired.
///
/// Swarm testing (Groce et al., ISSTA 2012): rather than enabling every fault everywhere at
/// a low rate, each seed enables a random *subset* of berth's fault points, each at a rate
/// of its own ([`Swarm`] sets the ranges). Runs where a fault is absent explore what it
/// would have masked; runs where it is dense explore what it causes. Decisions come from
/// one seeded random number generator behind a mutex: turmoil runs a simulation on one
/// thread in a fixed order, so a seed makes the same decisions at the same moments and a
/// failing seed replays exactly.
///
/// ```
/// let faults = berth_sim::SwarmFaults::new(42);
/// let builder = berth::Builder::new(berth::Config::default()).faults(faults.clone());
/// # drop(builder);
/// // ... run the simulation, then:
/// for fired in faults.fired() {
///     println!("{:?} at {:?}", fired.point, fired.at);
/// }
/// ```
#[derive(Debug, Clone)]
pub struct SwarmFaults {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    seed: u64,
    enabled: Vec<(Point, f64)>,
    delay: (Duration, Duration),
    active: AtomicBool,
    rng: Mutex<Rng>,
    fired: Mutex<Vec<Fired>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SwarmFaults {
    /// The faults of `seed` with the default [`Swarm`].
    pub fn new(seed: u64) -> Self {
        Swarm::default().faults(seed)
    }

    /// No fault ever fires (a baseline run of the same test).
    pub fn none() -> Self {
        Swarm {
            points: Vec::new(),
            ..Swarm::default()
        }
        .faults(0)
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// The points this seed enabled, with the probability each fires when asked.
    pub fn enabled(&self) -> &[(Point, f64)] {
        &self.inner.enabled
    }

    /// Whether `point` is enabled for this seed.
    pub fn is_enabled(&self, point: Point) -> bool {
        self.inner.enabled.iter().any(|(p, _)| *p == point)
    }

    /// Stops (false) or resumes (true) firing, e.g. to let a test check its results on a
    /// quiet server. Decisions stay deterministic: they depend on the seed and on when
    /// this is called.
    pub fn set_active(&self, active: bool) {
        self.inner.active.store(active, Ordering::Relaxed);
    }

    /// Every firing so far, in order.
    pub fn fired(&self) -> Vec<Fired> {
        lock(&self.inner.fired).clone()
    }

    /// How often each point fired so far.
    pub fn counts(&self) -> BTreeMap<Point, usize> {
        let mut counts = BTreeMap::new();
        for fired in lock(&self.inner.fired).iter() {
            *counts.entry(fired.point).or_default() += 1;
        }
        counts
    }

    /// The delays `point` added between `from` and `to` (simulated times): how much later
    /// than planned things could have happened in that window because of it.
    pub fn delay_between(&self, point: Point, from: Duration, to: Duration) -> Duration {
        lock(&self.inner.fired)
            .iter()
            .filter(|f| f.point == point && f.at >= from && f.at <= to)
            .filter_map(|f| f.delay)
            .sum()
    }
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Faults for SwarmFaults {
    fn fire(&self, point: Point) -> bool {
        let inner = &self.inner;
        if !inner.active.load(Ordering::Relaxed) {
            return false;
        }
        let Some(&(_, p)) = inner.enabled.iter().find(|(q, _)| *q == point) else {
            return false;
        };
        let fire = lock(&inner.rng).chance(p);
        if fire {
            lock(&inner.fired).push(Fired {
                at: now(),
                point,
                delay: None,
            });
        }
        fire
    }

    fn delay(&self, point: Point) -> Duration {
        let inner = &self.inner;
        let delay = lock(&inner.rng).duration(inner.delay.0, inner.delay.1);
        // berth asks right after `fire` said yes: note it on that firing.
        let mut fired = lock(&inner.fired);
        match fired.last_mut() {
            Some(last) if last.point == point && last.delay.is_none() => last.delay = Some(delay),
            _ => fired.push(Fired {
                at: now(),
                point,
                delay: Some(delay),
            }),
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_decides_the_same_way_twice() {
        let run = |seed| {
            let f = SwarmFaults::new(seed);
            let decisions: Vec<bool> = (0..200)
                .map(|i| f.fire(Point::ALL[i % Point::ALL.len()]))
                .collect();
            (f.enabled().to_vec(), decisions)
        };
        assert_eq!(run(3), run(3));
        // Over many seeds, every point is enabled by some and left out by others.
        for point in Point::ALL {
            let on = (0..64)
                .filter(|&s| SwarmFaults::new(s).is_enabled(point))
                .count();
            assert!(on > 8 && on < 56, "{point:?} enabled by {on} of 64 seeds");
        }
        assert!(SwarmFaults::none().enabled().is_empty());
    }

    #[test]
    fn delays_are_drawn_in_range_and_noted() {
        let swarm = Swarm {
            points: vec![Point::LateIdleTick],
            enable: 1.0,
            fire: (1.0, 1.0),
            delay: (Duration::from_millis(5), Duration::from_millis(7)),
        };
        let f = swarm.faults(1);
        for _ in 0..20 {
            assert!(f.fire(Point::LateIdleTick));
            let d = f.delay(Point::LateIdleTick);
            assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(7));
        }
        assert_eq!(f.fired().len(), 20);
        assert!(f.fired().iter().all(|x| x.delay.is_some()));
        f.set_active(false);
        assert!(!f.fire(Point::LateIdleTick));
    }
}
