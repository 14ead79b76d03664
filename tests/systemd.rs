//! systemd's watchdog, in process: `READY=1` at start, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` while the event loop keeps time, none while it is stalled (so systemd
//! restarts a hung server), again once it recovers, and `STOPPING=1` at shutdown.
//!
//! `NOTIFY_SOCKET` is process-wide, so the server runs in a child process (this binary again,
//! running the ignored `watchdog_child`) with the variables set; the test reads the datagrams
//! and the child's progress lines, each stamped on arrival.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::{Builder, Config, Conn};

const LIMIT: Duration = Duration::from_secs(30);
/// The stall, three and a half watchdog intervals long.
const STALL: Duration = Duration::from_millis(700);

#[test]
fn the_watchdog_beats_while_the_event_loop_runs_and_stops_while_it_is_stalled() {
    let dir = std::env::temp_dir().join(format!("berth-systemd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(LIMIT)).unwrap();
    let started = Instant::now();
    let datagrams = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let stopping = text == "STOPPING=1\n";
            got.push((Instant::now(), text));
            if stopping {
                break;
            }
        }
        got
    });
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "watchdog_child",
            "--ignored",
            "--nocapture",
            "--quiet",
        ])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env("BERTH_WATCHDOG_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut marks = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("mark ") {
            marks.push((Instant::now(), line));
        }
    }
    assert!(
        child.wait().unwrap().success(),
        "the child failed: {marks:?}"
    );
    assert!(started.elapsed() < LIMIT, "took {:?}", started.elapsed());
    let got = datagrams.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let at = |mark: &str| {
        marks
            .iter()
            .find(|(_, line)| line == mark)
            .unwrap_or_else(|| panic!("no {mark:?} in {marks:?}"))
            .0
    };
    let (stall_from, stall_to) = (at("mark stall"), at("mark stalled"));
    assert!(stall_to - stall_from >= STALL - Duration::from_millis(20));
    assert_eq!(
        got.first().map(|(_, t)| t.as_str()),
        Some("READY=1\n"),
        "{got:?}"
    );
    assert_eq!(
        got.last().map(|(_, t)| t.as_str()),
        Some("STOPPING=1\n"),
        "{got:?}"
    );
    let beats: Vec<Instant> = got
        .iter()
        .filter(|(_, t)| t == "WATCHDOG=1\n")
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(
        beats.len() + 2,
        got.len(),
        "only keep-alives between: {got:?}"
    );
    let before = beats.iter().filter(|b| **b < stall_from).count();
    let during: Vec<_> = beats
        .iter()
        .filter(|b| **b > stall_from + Duration::from_millis(50) && **b < stall_to)
        .collect();
    let after = beats.iter().filter(|b| **b > stall_to).count();
    // 500 ms healthy before and after at a 100 ms cadence: about 5 each (scheduling noise
    // allowed for); none while the loop is stalled.
    assert!(
        before >= 3,
        "{before} keep-alives before the stall: {got:?}"
    );
    assert!(
        during.is_empty(),
        "keep-alives during the stall: {during:?}"
    );
    assert!(after >= 2, "{after} keep-alives after the stall: {got:?}");
}

/// The server side, run as a child by the test above.
#[test]
#[ignore = "run by the_watchdog_beats_while_the_event_loop_runs_and_stops_while_it_is_stalled"]
fn watchdog_child() {
    if std::env::var_os("BERTH_WATCHDOG_CHILD").is_none() {
        return;
    }
    // One executor thread: a blocked task stalls the whole event loop.
    let executor = Arc::new(async_executor::Executor::new());
    let ex = executor.clone();
    std::thread::spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())));
    let handle = Builder::new(Config::new("127.0.0.1:0"))
        .runtime(berth::runtime::Smol::with_executor(executor.clone()))
        .bind()
        .unwrap()
        .serve(|conn: Conn| async move { drop(conn) });
    // Paces the scenario: healthy for a while (the keep-alives are what is measured).
    std::thread::sleep(Duration::from_millis(500));
    let (done_tx, done_rx) = async_channel::bounded(1);
    println!("mark stall");
    executor
        .spawn(async move {
            std::thread::sleep(STALL); // the stall under test: it blocks the only thread
            println!("mark stalled");
            let _ = done_tx.send(()).await;
        })
        .detach();
    async_io::block_on(done_rx.recv()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = async_io::block_on(handle.shutdown());
}
