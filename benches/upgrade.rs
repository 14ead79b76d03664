//! Zero-downtime upgrades, measured: the echo example under a steady stream of short
//! connections (connect, 16-byte echo, close) is upgraded (SIGHUP) again and again.
//!
//! ```text
//! cargo build --release --example echo
//! cargo bench --bench upgrade -- --echo target/release/examples/echo --upgrades 10
//! ```
//!
//! Prints the time from SIGHUP until the new process serves (the old one's `upgrade:
//! process PID` line, printed once the new one said it is ready), connect latency (connect
//! until the echo came back) p50/p99 in steady state and in the windows around upgrades, and
//! every failed connection (refused, reset, wrong echo): there should be none.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The echo example's binary.
    #[arg(long)]
    echo: std::path::PathBuf,
    /// How many upgrades in a row.
    #[arg(long, default_value_t = 10)]
    upgrades: usize,
    /// Client threads doing connect + echo + close in a loop.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Steady state measured before the first upgrade, and between upgrades (seconds).
    #[arg(long, default_value_t = 1.0)]
    gap: f64,
    #[arg(long, hide = true)]
    bench: bool,
}

/// One connection: when it started, how long until its echo came back, and whether it
/// worked.
struct Sample {
    started: Instant,
    latency: Duration,
    ok: bool,
}

fn main() {
    let args = Args::parse();
    let mut echo = Command::new(&args.echo)
        .args(["--addr", "127.0.0.1:0", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the echo example");
    let (tx, lines) = mpsc::channel::<(Instant, String)>();
    let out = echo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let wait_line = |prefix: &str| -> (Instant, String) {
        loop {
            let (at, line) = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("a line from echo");
            if line.starts_with(prefix) {
                return (at, line);
            }
        }
    };
    let addr = wait_line("listening on ").1.replace("listening on ", "");

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let workers: Vec<_> = (0..args.workers)
        .map(|w| {
            let (stop, samples, addr) = (stop.clone(), samples.clone(), addr.clone());
            std::thread::spawn(move || {
                let msg = [b'a' + (w % 26) as u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let ok = (|| -> std::io::Result<bool> {
                        let mut s = TcpStream::connect(&addr)?;
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        s.write_all(&msg)?;
                        let mut back = [0u8; 16];
                        s.read_exact(&mut back)?;
                        Ok(back == msg)
                    })()
                    .unwrap_or(false);
                    samples.lock().unwrap().push(Sample {
                        started,
                        latency: started.elapsed(),
                        ok,
                    });
                }
            })
        })
        .collect();

    let gap = Duration::from_secs_f64(args.gap);
    std::thread::sleep(gap); // steady state before the first upgrade
    let first_upgrade = Instant::now();
    let mut pid = echo.id();
    let mut windows = Vec::new();
    let mut ready_after = Vec::new();
    for _ in 0..args.upgrades {
        let hup = Instant::now();
        let sent = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -HUP {pid}");
        let (ready, line) = wait_line("upgrade: process ");
        pid = line
            .split_whitespace()
            .nth(2)
            .and_then(|p| p.parse().ok())
            .expect("the new pid");
        ready_after.push(ready - hup);
        windows.push((hup, ready + Duration::from_millis(500)));
        std::thread::sleep(gap); // the old generation drains meanwhile
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = echo.wait();

    let samples = samples.lock().unwrap();
    let steady: Vec<Duration> = samples
        .iter()
        .filter(|s| s.ok && s.started < first_upgrade)
        .map(|s| s.latency)
        .collect();
    let during: Vec<Duration> = samples
        .iter()
        .filter(|s| {
            s.ok && windows
                .iter()
                .any(|(from, to)| s.started >= *from && s.started <= *to)
        })
        .map(|s| s.latency)
        .collect();
    let failed = samples.iter().filter(|s| !s.ok).count();
    println!(
        "upgrade upgrades={} connections={} failed={failed} sighup_to_serving_ms_p50={:.1} sighup_to_serving_ms_max={:.1} steady_us_p50={:.0} steady_us_p99={:.0} during_us_p50={:.0} during_us_p99={:.0} during_samples={}",
        args.upgrades,
        samples.len(),
        ms(percentile(&ready_after, 50)),
        ms(percentile(&ready_after, 100)),
        us(percentile(&steady, 50)),
        us(percentile(&steady, 99)),
        us(percentile(&during, 50)),
        us(percentile(&during, 99)),
        during.len(),
    );
}

fn percentile(values: &[Duration], p: usize) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
