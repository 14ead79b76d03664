//! Micro-benchmarks of the hot paths, run on demand (they print, they do not assert speed):
//!
//! ```text
//! cargo test --release --lib micro -- --ignored --nocapture --test-threads=1
//! ```

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::pool::{Pool, SlotState};

fn per_op(label: &str, ops: u64, elapsed: Duration) {
    println!(
        "{label}: {:.1} ns/op ({ops} ops in {elapsed:?})",
        elapsed.as_nanos() as f64 / ops as f64
    );
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture in release mode"]
fn micro_slot_take_and_return() {
    let pool = Pool::default();
    // Warm: one slot in the free list, as at steady state.
    let (slot, generation) = pool.open(0, || ());
    pool.release(&slot, generation);
    let ops = 1_000_000;
    let start = Instant::now();
    for _ in 0..ops {
        let (slot, generation) = pool.open(0, || ());
        black_box(&slot);
        pool.release(&slot, generation);
    }
    per_op("slot take + return", ops, start.elapsed());
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture in release mode"]
fn micro_idle_sweep_100k() {
    let pool = Pool::default();
    let slots: Vec<_> = (0..100_000).map(|_| pool.open(0, || ())).collect();
    let sweeps = 50u64;
    let timeout = 1_000_000_000u64;
    let start = Instant::now();
    let mut reaped = 0;
    for _ in 0..sweeps {
        let now = black_box(500_000_000u64); // nobody is idle long enough: a full scan
        pool.for_each_open(|slot, generation| {
            if now.saturating_sub(slot.last_active.load(Ordering::Relaxed)) >= timeout {
                slot.close(generation, SlotState::IdleTimeout);
                reaped += 1;
            }
        });
    }
    let elapsed = start.elapsed();
    assert_eq!(reaped, 0);
    println!(
        "idle sweep over 100,000 open connections: {:?} per sweep, {:.1} ns per connection",
        elapsed / sweeps as u32,
        elapsed.as_nanos() as f64 / (sweeps * 100_000) as f64
    );
    drop(slots);
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture in release mode"]
fn micro_activity_stamp() {
    let pool = Pool::default();
    let (slot, _) = pool.open(0, || ());
    let clock = Clock::new(Instant::now());
    let ops = 10_000_000;
    let start = Instant::now();
    for _ in 0..ops {
        // What Conn does on every read or write that makes progress.
        slot.last_active
            .store(black_box(&clock).stamp(), Ordering::Relaxed);
    }
    per_op("activity stamp", ops, start.elapsed());
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture in release mode"]
#[cfg(feature = "smol")]
fn micro_accept_to_handler_start() {
    let (tx, rx) = async_channel::unbounded::<Instant>();
    let handle = crate::Builder::new(crate::Config::new("127.0.0.1:0"))
        .bind()
        .unwrap()
        .serve(move |conn: crate::Conn| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now()).await;
                drop(conn);
            }
        });
    let addr = handle.local_addr().as_socket_addr().unwrap();
    let mut latencies: Vec<Duration> = async_io::block_on(async {
        let mut v = Vec::new();
        for _ in 0..2000 {
            let connected = std::net::TcpStream::connect(addr).unwrap();
            let started_at = Instant::now();
            let handler_at = rx.recv().await.unwrap();
            v.push(handler_at.saturating_duration_since(started_at));
            drop(connected);
        }
        v
    });
    latencies.sort();
    println!(
        "connect() returned -> handler started: p50 {:?}, p99 {:?} (2000 connections)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    async_io::block_on(handle.close());
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture in release mode"]
fn micro_admission_at_the_cap() {
    use crate::admission::Limiter;
    use crate::limits::{Limits, Rate};
    use std::net::{IpAddr, Ipv4Addr};
    const CAP: usize = 100_000;
    // Drained rate buckets keep every address tracked after it leaves: the table fills to
    // the cap with idle addresses, and from then on each new address evicts one.
    let limiter = Limiter::new(Limits {
        max_per_ip: Some(10),
        rate_per_ip: Some(Rate {
            per_second: 0.001,
            burst: 1,
        }),
        max_tracked_ips: CAP,
        ..Limits::default()
    });
    let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    for i in 0..CAP as u32 {
        let key = limiter.admit(ip(i), u64::from(i)).unwrap().unwrap();
        limiter.release(key, u64::from(i));
    }
    assert_eq!(limiter.tracked(), CAP);
    let ops = 200_000u32;
    let now = 1_000_000u64;
    // The worst single admission shows whether eviction ever scans the table.
    let mut each = Vec::with_capacity(ops as usize);
    let start = Instant::now();
    for i in 0..ops {
        let one = Instant::now();
        let key = limiter
            .admit(black_box(ip(CAP as u32 + i)), now)
            .unwrap()
            .unwrap();
        limiter.release(key, now);
        each.push(one.elapsed());
    }
    per_op(
        "admission of a new address with 100,000 tracked (at the cap: evicts one)",
        u64::from(ops),
        start.elapsed(),
    );
    each.sort_unstable();
    let at = |q: f64| each[((each.len() - 1) as f64 * q) as usize];
    eprintln!(
        "single admissions at the cap: p99.9 {:?}, p99.99 {:?}, max {:?}; over 1 ms: {}",
        at(0.999),
        at(0.9999),
        at(1.0),
        each.iter()
            .filter(|d| **d > Duration::from_millis(1))
            .count()
    );
    assert_eq!(limiter.tracked(), CAP);
    let known = ip(CAP as u32 + ops - 1);
    let start = Instant::now();
    for _ in 0..ops {
        // A known address, refused by its drained bucket: the common case under a flood.
        let _ = black_box(limiter.admit(black_box(known), now));
    }
    per_op(
        "admission of a tracked address with 100,000 tracked",
        u64::from(ops),
        start.elapsed(),
    );
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture in release mode"]
fn micro_accept_and_close_behind_sweeps_18k() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    // 18,000 open slots swept back to back on one thread (as the idle scanner does once a
    // tick), while another registers and releases one slot at a time (an accept and a
    // close): how long that pair waits behind the sweeps (see `Pool::walk`).
    let pool = Arc::new(Pool::default());
    let held: Vec<_> = (0..18_000).map(|_| pool.open(0, || ())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut sweeps, started) = (0u32, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                pool.for_each_open(|slot, generation| {
                    if slot.last_active.load(Ordering::Relaxed) > black_box(u64::MAX - 1) {
                        slot.close(generation, SlotState::IdleTimeout);
                    }
                });
                sweeps += 1;
            }
            started.elapsed() / sweeps.max(1)
        })
    };
    let mut each = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let one = Instant::now();
        let (slot, generation) = pool.open(0, || ());
        pool.release(&slot, generation);
        each.push(one.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let sweep = sweeper.join().unwrap();
    each.sort_unstable();
    let at = |q: f64| each[((each.len() - 1) as f64 * q) as usize];
    println!(
        "open + release during back-to-back sweeps of 18,000 slots ({sweep:?} per sweep): \
         p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?} ({} pairs)",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0),
        each.len()
    );
    drop(held);
}
