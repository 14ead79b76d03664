//! Accept back-off at the file-descriptor limit (EMFILE), in a child process.
//!
//! The test re-runs its own binary as a child with `ulimit -n 64`. The child serves echo and
//! prints what its error hook sees; the parent opens more connections than the child has
//! descriptors, then checks that the child reported the episode once, did not spin, served
//! the waiting clients once descriptors were freed, and shut down cleanly while at the limit.
#![cfg(all(unix, feature = "smol"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};

const CHILD_ENV: &str = "BERTH_EMFILE_CHILD";
const FD_LIMIT: u32 = 64;
const WAIT: Duration = Duration::from_secs(20);

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
    // Free descriptors: the clients still waiting in the backlog get served.
    clients.drain(..40);
    for c in &mut clients {
        echo(c);
    }

    // Episode 2, then shutdown while at the limit.
    clients.extend((0..60).map(|_| connect()));
    next("ACCEPT-ERROR");
    drop(child.stdin.take()); // tells the child to shut down
    let summary = next("STOPPED");
    eprintln!("child summary: {summary}");
    let status = child.wait().unwrap();
    assert!(status.success(), "child exited with {status}: {summary}");
    let errors: u64 = summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("accept_errors="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accept_errors in {summary:?}"));
    let reported: u64 = summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("reported="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    // Two episodes, each reported once; back-off keeps the attempts in the tens, where a
    // spinning loop makes hundreds of thousands per second.
    assert_eq!(reported, 2, "{summary}");
    assert!((2..200).contains(&errors), "{summary}");
    drop(clients);
}

/// The child: echo server with a tiny fd budget; stdin EOF means "shut down".
fn child() {
    let reported = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = reported.clone();
    let server = berth::Builder::new(berth::Config::new("127.0.0.1:0"))
        .on_error(move |e| {
            if let berth::Error::Accept { .. } = e {
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
    let (tx, rx) = async_channel::bounded::<()>(1);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send_blocking(());
    });
    async_io::block_on(async {
        let _ = rx.recv().await;
        let report = handle.shutdown_within(Duration::from_secs(5)).await;
        let stats = handle.stats();
        println!(
            "STOPPED ok={} open={} accept_errors={} reported={}",
            report.is_ok(),
            handle.open_connections(),
            stats.accept_errors,
            reported.load(std::sync::atomic::Ordering::SeqCst)
        );
    });
}
