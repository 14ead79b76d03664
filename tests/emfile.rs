//! Accept back-off at the file-descriptor limit (EMFILE), in a child process.
//!
//! The test re-runs its own binary as a child with `ulimit -n 64`. The child serves echo,
//! prints what its error hook sees, and answers `STATS` on its stdin with its counters; the
//! parent opens more connections than the child has descriptors, then checks that the child
//! reported the episode, did not spin, served the waiting clients once descriptors were
//! freed, reported a sustained episode exactly once however many times accept failed in it,
//! and shut down cleanly while at the limit.
#![cfg(all(unix, feature = "smol"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};

const CHILD_ENV: &str = "BERTH_EMFILE_CHILD";
const FD_LIMIT: u32 = 64;
const WAIT: Duration = Duration::from_secs(20);

/// The child's counters, from its `STATS` line.
#[derive(Debug, Clone, Copy)]
struct ChildStats {
    /// Accept errors (every failed attempt).
    errors: u64,
    /// Accept errors passed to the error hook (one per episode).
    reported: u64,
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn emfile_backs_off_reports_once_recovers_and_still_shuts_down() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args([
            "--exact",
            "emfile_backs_off_reports_once_recovers_and_still_shuts_down",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("BERTH_THREADS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let mut stdin: Option<ChildStdin> = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |prefix: &str| -> String {
        loop {
            let line = lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("the child never printed {prefix:?}"));
            // The test harness's own "test NAME ... " may precede the first line.
            if let Some((_, rest)) = line.split_once(prefix) {
                return rest.trim().to_owned();
            }
        }
    };
    let addr: SocketAddr = next("listening on").parse().unwrap();
    let stats = |stdin: &mut Option<ChildStdin>| -> ChildStats {
        writeln!(stdin.as_mut().unwrap(), "STATS").unwrap();
        let line = next("STATS");
        ChildStats {
            errors: field(&line, "accept_errors"),
            reported: field(&line, "reported"),
        }
    };

    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    };
    let echo = |s: &mut TcpStream| {
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("echo");
        assert_eq!(&buf, b"ping");
    };

    // Episode 1: more clients than the child has descriptors.
    let mut clients: Vec<TcpStream> = (0..80).map(|_| connect()).collect();
    let error = next("ACCEPT-ERROR");
    assert!(
        error.contains("os error 24") || error.to_lowercase().contains("too many open files"),
        "{error}"
    );
    // Free descriptors: the clients still waiting in the backlog get served. (While the
    // child closes the dropped connections one by one, it may accept a few and hit the limit
    // again: a new episode, reported again. So episode 1 is not counted exactly.)
    clients.drain(..40);
    for c in &mut clients {
        echo(c);
    }
    let recovered = stats(&mut stdin);
    assert!(recovered.reported >= 1, "{recovered:?}");

    // Episode 2 is sustained: nothing is freed while it lasts, so however many accepts fail
    // in it (the back-off retries), it is reported once.
    clients.extend((0..60).map(|_| connect()));
    next("ACCEPT-ERROR");
    let started = Instant::now();
    let sustained = loop {
        let now = stats(&mut stdin);
        // Several failed attempts, and the episode's report has reached the hook (reports
        // go through a reporter task, so the count can trail the errors).
        if now.errors >= recovered.errors + 4 && now.reported > recovered.reported {
            break now;
        }
        assert!(
            started.elapsed() < WAIT,
            "the child did not retry accept at the limit: {now:?}"
        );
        // A poll interval (the back-off is 5 ms doubling): not a synchronization.
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        sustained.reported,
        recovered.reported + 1,
        "one report for the sustained episode: {recovered:?} then {sustained:?}"
    );

    // Shutdown while at the limit.
    drop(stdin.take()); // tells the child to shut down
    let summary = next("STOPPED");
    eprintln!("child summary: {summary}");
    let status = child.wait().unwrap();
    assert!(status.success(), "child exited with {status}: {summary}");
    assert!(
        summary.contains("ok=true") && summary.contains("open=0"),
        "{summary}"
    );
    // Back-off keeps the attempts in the tens, where a spinning loop makes hundreds of
    // thousands per second.
    let errors = field(&summary, "accept_errors");
    let reported = field(&summary, "reported");
    assert_eq!(reported, sustained.reported, "{summary}");
    assert!((4..200).contains(&errors), "{summary}");
    drop(clients);
}

/// The child: echo server with a tiny fd budget; `STATS` on stdin prints its counters, end
/// of stdin means "shut down".
fn child() {
    let reported = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = reported.clone();
    let server = berth::Builder::new(berth::Config::new("127.0.0.1:0"))
        .on_error(move |e| {
            if let berth::ServeError::Accept { .. } = e {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                println!("ACCEPT-ERROR {e}");
            }
        })
        .bind()
        .unwrap();
    println!(
        "listening on {}",
        server.local_addr().as_socket_addr().unwrap()
    );
    let handle = server.serve(|mut conn: berth::Conn| async move {
        let mut draining = conn.draining();
        let mut buf = [0u8; 64];
        loop {
            let read = async { Some(conn.read(&mut buf).await) };
            let drained = async {
                (&mut draining).await;
                None
            };
            match read.or(drained).await {
                Some(Ok(n @ 1..)) => {
                    if conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let stats = |handle: &berth::ServerHandle| {
        format!(
            "accept_errors={} reported={}",
            handle.stats().accept_errors,
            reported.load(std::sync::atomic::Ordering::SeqCst)
        )
    };
    // Reads stdin on a thread (opened before the limit bites: stdin is fd 0).
    let (tx, rx) = async_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let _ = tx.send_blocking(line);
        }
    });
    async_io::block_on(async {
        while let Ok(command) = rx.recv().await {
            if command == "STATS" {
                println!("STATS {}", stats(&handle));
            }
        }
        // Lingering closes (2 s) end well within the grace: the shutdown is graceful.
        let report = handle.shutdown_within(Duration::from_secs(15)).await;
        println!(
            "STOPPED ok={} open={} {}",
            report.is_ok(),
            handle.open_connections(),
            stats(&handle)
        );
    });
}
