//! Fleets, as a black box: the echo example's `/healthz` and `/readyz`, its lame duck
//! (`--lame-duck`), its systemd notifications (`NOTIFY_SOCKET`), and rolling restarts of
//! two instances behind a real HAProxy that checks `/readyz`, by replacement and by upgrade.
//!
//! No test sleeps to synchronize: each waits (bounded) for a line of output, an HTTP
//! answer, a datagram, an echo, HAProxy's view of a server (its stats socket), or a
//! process's exit (`waitpid` with `WNOHANG`: an exit gives no other signal). Sleeps only
//! pace load and space the polls of those.
//!
//! Upgraded generations are children of the process they replace, so the test process is a
//! child subreaper: each orphaned generation is reparented to it and its exit status read.
//! The tests of this file run one at a time, and alone in the cli binary (`crate::heavy`):
//! each measures latencies or carries load. CI installs haproxy; with CI=true a missing
//! haproxy fails the HAProxy tests, elsewhere they are skipped with a loud message.
#![cfg(all(target_os = "linux", feature = "smol", feature = "tokio"))]

use crate::common;
use crate::common::free_ports;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLockWriteGuard, mpsc};
use std::time::{Duration, Instant};

use common::example::{example_bin, program_available};
use rustix::process::{Pid, Signal, WaitOptions};

/// The bound of every single wait for a line, an answer, a datagram or an exit.
const WAIT: Duration = Duration::from_secs(20);
/// Connect, read and write timeout of every client socket.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The runtimes the echo example serves on.
const RUNTIMES: [&str; 2] = ["smol", "tokio"];

/// The tests of this file run one at a time, and alone in the cli binary (its load tests'
/// lock).
fn serial() -> RwLockWriteGuard<'static, ()> {
    crate::heavy()
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(what: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "berth-fleet-{}-{what}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

// --- echo processes ------------------------------------------------------------------------

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(i32),
}

/// An echo process and every generation its upgrades started (they share its stdout and
/// stderr).
struct Echo {
    /// Every generation's pid, oldest first.
    pids: Vec<i32>,
    reaped: HashSet<i32>,
    lines: mpsc::Receiver<(&'static str, String)>,
    /// Everything printed so far, for failure messages.
    log: Vec<String>,
}

impl Echo {
    /// `echo --runtime RUNTIME ARGS...` with `env` added to the environment (and
    /// `WATCHDOG_PID` removed). With `own_watchdog_pid`, a shell sets `WATCHDOG_PID` to the
    /// process's own pid and `exec`s echo, as systemd does.
    fn spawn(runtime: &str, args: &[&str], env: &[(&str, &str)], own_watchdog_pid: bool) -> Echo {
        static SUBREAPER: std::sync::Once = std::sync::Once::new();
        SUBREAPER.call_once(|| {
            rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                .expect("PR_SET_CHILD_SUBREAPER");
        });
        let program = example_bin("echo");
        let mut command = if own_watchdog_pid {
            let mut c = Command::new("sh");
            c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
                .arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command
            .args(["--runtime", runtime])
            .args(args)
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run echo");
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for (src, pipe) in [("out", out), ("err", err)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send((src, line));
                }
            });
        }
        // Its status is collected with waitpid, like every later generation's.
        let pid = i32::try_from(child.id()).unwrap();
        drop(child);
        Echo {
            pids: vec![pid],
            reaped: HashSet::new(),
            lines,
            log: Vec::new(),
        }
    }

    /// The newest generation.
    fn pid(&self) -> i32 {
        *self.pids.last().unwrap()
    }

    fn transcript(&mut self) -> String {
        while let Ok((src, line)) = self.lines.try_recv() {
            self.log.push(format!("{src}: {line}"));
        }
        self.log.join("\n")
    }

    /// The next stdout line that `pred` accepts (earlier ones are only logged).
    fn line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((src, line)) => {
                    self.log.push(format!("{src}: {line}"));
                    if src == "out" && pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no {what} within {WAIT:?} ({e}); output:\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// The address of the first `listening on` line.
    fn listening(&mut self) -> SocketAddr {
        let line = self.line("`listening on` line", |l| l.starts_with("listening on "));
        line["listening on ".len()..].parse().unwrap()
    }

    fn signal(&self, pid: i32, signal: Signal) {
        rustix::process::kill_process(Pid::from_raw(pid).unwrap(), signal)
            .unwrap_or_else(|e| panic!("kill -{signal:?} {pid}: {e}"));
    }

    /// SIGHUP to the newest generation; returns the pid its `upgrade: process PID serves
    /// now` line names.
    fn upgrade(&mut self) -> i32 {
        self.signal(self.pid(), Signal::HUP);
        let line = self.line("`upgrade: process` line", |l| {
            l.starts_with("upgrade: process ")
        });
        let pid: i32 = line["upgrade: process ".len()..]
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        assert!(!self.pids.contains(&pid), "{pid} is a new process");
        self.pids.push(pid);
        pid
    }

    /// Waits (at most `WAIT`) for `pid` to exit. A generation whose parent runs is that
    /// parent's child until the parent exits; then it is ours.
    fn reap(&mut self, pid: i32) -> Exit {
        let deadline = Instant::now() + WAIT;
        loop {
            match rustix::process::waitpid(Some(Pid::from_raw(pid).unwrap()), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => {
                    self.reaped.insert(pid);
                    return match (status.exit_status(), status.terminating_signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(signal)) => Exit::Signal(signal),
                        _ => panic!("{pid}: unexpected wait status {status:?}"),
                    };
                }
                Ok(None) | Err(rustix::io::Errno::CHILD) => {}
                Err(e) => panic!("waitpid {pid}: {e}"),
            }
            if Instant::now() >= deadline {
                panic!(
                    "process {pid} did not exit within {WAIT:?}; output:\n{}",
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for `pid` to exit and asserts it exited 0.
    fn exits_0(&mut self, pid: i32) {
        let exit = self.reap(pid);
        assert_eq!(
            exit,
            Exit::Code(0),
            "process {pid} exits 0; output:\n{}",
            self.transcript()
        );
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // A failed test leaves no server running.
        for &pid in &self.pids {
            if !self.reaped.contains(&pid) {
                let pid = Pid::from_raw(pid).unwrap();
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
            }
        }
    }
}

// --- clients -------------------------------------------------------------------------------

/// `GET path` over HTTP/1.1: the status and the body.
fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad response {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

/// Polls `GET path` (bounded by `WAIT`) until `accept` takes the answer; returns it.
fn wait_http(
    addr: SocketAddr,
    path: &str,
    what: &str,
    accept: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match http_get(addr, path) {
            Ok((status, body)) if accept(status, &body) => return (status, body),
            other => other,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: no such answer to GET {path} on {addr} within {WAIT:?}; last: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of the Prometheus sample `name` (no labels) on `metrics`.
fn sample(metrics: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = http_get(metrics, "/metrics").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn client(addr: SocketAddr) -> io::Result<TcpStream> {
    let c = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(c)
}

/// Writes `payload` and reads the same bytes back.
fn echo_on(c: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    c.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    c.read_exact(&mut back)?;
    if back != payload {
        return Err(io::Error::other("a wrong echo"));
    }
    Ok(())
}

/// One short session: connect, echo `payload`, end our side and see the server's end of
/// file.
fn session(addr: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let mut c = client(addr).map_err(|e| format!("connect: {e}"))?;
    echo_on(&mut c, payload).map_err(|e| format!("echo: {e}"))?;
    c.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    match c.read(&mut [0u8; 64]) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} bytes after the echo")),
        Err(e) => Err(format!("read the end of file: {e}")),
    }
}

// --- 1. /healthz, /readyz and the lame duck ------------------------------------------------

/// From SIGTERM to the first 503 on /readyz, polled back to back.
fn flip_latency(echo: &Echo, metrics: SocketAddr) -> (Duration, String) {
    let sent = Instant::now();
    echo.signal(echo.pid(), Signal::TERM);
    loop {
        match http_get(metrics, "/readyz") {
            Ok((503, body)) => return (sent.elapsed(), body),
            Ok((200, _)) => {}
            other => panic!("/readyz during the lame duck: {other:?}"),
        }
        assert!(
            sent.elapsed() < WAIT,
            "/readyz still 200 {WAIT:?} after SIGTERM"
        );
    }
}

/// Every flip latency measured, for the report at the end of the file's tests.
static FLIPS: Mutex<Vec<(&str, Duration)>> = Mutex::new(Vec::new());

#[test]
fn readyz_turns_503_in_the_lame_duck_while_new_clients_are_served() {
    let _serial = serial();
    for runtime in RUNTIMES {
        let [mport] = free_ports();
        let metrics = local(mport);
        let mut echo = Echo::spawn(
            runtime,
            &[
                "--addr",
                "127.0.0.1:0",
                "--metrics-addr",
                &metrics.to_string(),
                "--lame-duck",
                "2s",
                "--drain-timeout",
                "10s",
            ],
            &[],
            false,
        );
        let addr = echo.listening();
        assert_eq!(http_get(metrics, "/healthz").unwrap(), (200, "ok\n".into()));
        // `listening on` comes before serving begins: /readyz may say "starting" first.
        let (_, body) = wait_http(metrics, "/readyz", runtime, |s, _| s == 200);
        assert_eq!(body, "ready\n", "{runtime}");
        let mut early = client(addr).unwrap();
        echo_on(&mut early, b"before\n").unwrap();

        let sent = Instant::now();
        let (flip, body) = flip_latency(&echo, metrics);
        FLIPS.lock().unwrap().push((runtime, flip));
        assert!(
            body.starts_with("not ready: ") && body.contains("lame duck"),
            "{runtime}: {body:?}"
        );
        // Served on, by the same process, while not ready.
        assert_eq!(http_get(metrics, "/healthz").unwrap(), (200, "ok\n".into()));
        let mut late = client(addr).expect("a new client connects in the lame duck");
        echo_on(&mut late, b"in the lame duck\n").expect("a new client's echo");
        echo_on(&mut early, b"still here\n").expect("an older client's echo");
        let served_within = sent.elapsed();
        assert!(
            served_within < Duration::from_secs(2),
            "{runtime}: the lame-duck checks took {served_within:?}, longer than the lame duck"
        );
        drop(late);

        // Then the drain: connects are refused, and not before the lame duck is over.
        let refused_after = loop {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break sent.elapsed(),
                Err(e) => panic!("{runtime}: connect after the lame duck: {e}"),
                Ok(c) => drop(c),
            }
            assert!(sent.elapsed() < WAIT, "{runtime}: connects never refused");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            refused_after >= Duration::from_millis(1950),
            "{runtime}: refused {refused_after:?} after SIGTERM, within the 2 s lame duck"
        );
        // The drain lasts while the older client is open (the server's lingering close
        // waits for it): not ready, and why.
        let (status, body) = http_get(metrics, "/readyz").unwrap();
        assert!(
            status == 503 && body.contains("draining"),
            "{runtime}: /readyz in the drain: {status} {body:?}"
        );
        // The older client is drained: end of file; our close ends the drain.
        assert_eq!(early.read(&mut [0u8; 16]).unwrap(), 0, "{runtime}");
        drop(early);
        let summary = echo.line("summary", |l| l.starts_with("shutdown"));
        assert!(
            summary.starts_with("shutdown complete: "),
            "{runtime}: {summary:?}"
        );
        echo.exits_0(echo.pid());
        eprintln!(
            "{runtime}: /readyz 503 {flip:?} after SIGTERM; connects refused after {refused_after:?}"
        );
    }
    report_flips();
}

#[test]
fn a_second_sigterm_ends_the_lame_duck_at_once() {
    let _serial = serial();
    for runtime in RUNTIMES {
        // Several rounds: each also measures the flip of /readyz.
        for _ in 0..3 {
            let [mport] = free_ports();
            let metrics = local(mport);
            let mut echo = Echo::spawn(
                runtime,
                &[
                    "--addr",
                    "127.0.0.1:0",
                    "--metrics-addr",
                    &metrics.to_string(),
                    "--lame-duck",
                    "30s",
                ],
                &[],
                false,
            );
            let addr = echo.listening();
            wait_http(metrics, "/readyz", runtime, |s, _| s == 200);
            let (flip, _) = flip_latency(&echo, metrics);
            FLIPS.lock().unwrap().push((runtime, flip));
            echo_on(&mut client(addr).unwrap(), b"lame\n").unwrap();
            let second = Instant::now();
            echo.signal(echo.pid(), Signal::TERM);
            let summary = echo.line("summary", |l| l.starts_with("shutdown"));
            assert!(
                summary.starts_with("shutdown complete: "),
                "{runtime}: {summary:?}"
            );
            echo.exits_0(echo.pid());
            let ended = second.elapsed();
            assert!(
                ended < Duration::from_secs(5),
                "{runtime}: exited {ended:?} after the second SIGTERM (lame duck 30 s)"
            );
        }
    }
    report_flips();
}

/// Prints the flip latencies measured so far (all of them, after the last of the two tests).
fn report_flips() {
    let flips = FLIPS.lock().unwrap().clone();
    let mut all: Vec<Duration> = flips.iter().map(|(_, d)| *d).collect();
    eprintln!(
        "SIGTERM -> /readyz 503 so far: median {:?} over {} samples: {flips:?}",
        median(&mut all),
        all.len()
    );
}

// --- 2. systemd notifications --------------------------------------------------------------

/// A datagram on the notification socket: when it came, who sent it, what it says.
#[derive(Debug, Clone)]
struct Note {
    at: Instant,
    pid: i32,
    text: String,
}

/// systemd's side of `NOTIFY_SOCKET`: a datagram socket that learns each sender's pid
/// (`SO_PASSCRED`), read by a thread of its own so that no sender ever blocks.
struct Notify {
    path: PathBuf,
    rx: mpsc::Receiver<Note>,
    /// Every datagram taken so far.
    seen: Vec<Note>,
    /// Ends the reader.
    done: Arc<AtomicBool>,
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        rustix::net::sockopt::set_socket_passcred(&socket, true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let over = done.clone();
        std::thread::spawn(move || {
            use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
            let mut buf = [0u8; 4096];
            while !over.load(Ordering::Relaxed) {
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = rustix::net::recvmsg(
                    &socket,
                    &mut [io::IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::empty(),
                );
                let msg = match got {
                    Ok(msg) => msg,
                    // The read timeout: look at `over` again.
                    Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
                    Err(e) => panic!("recvmsg: {e}"),
                };
                let pid = control
                    .drain()
                    .find_map(|m| match m {
                        RecvAncillaryMessage::ScmCredentials(cred) => {
                            Some(cred.pid.as_raw_nonzero().get())
                        }
                        _ => None,
                    })
                    .unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
                let _ = tx.send(Note {
                    at: Instant::now(),
                    pid,
                    text,
                });
            }
        });
        Notify {
            path,
            rx,
            seen: Vec::new(),
            done,
        }
    }

    /// The next datagram that `pred` accepts (the others are kept in `seen`), within
    /// `WAIT`.
    fn wait(&mut self, what: &str, pred: impl Fn(&Note) -> bool) -> Note {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(note) => {
                    self.seen.push(note.clone());
                    if pred(&note) {
                        return note;
                    }
                }
                Err(e) => panic!("no {what} within {WAIT:?} ({e}); got: {:?}", self.texts()),
            }
        }
    }

    /// Every datagram until `until`.
    fn until(&mut self, until: Instant) -> Vec<Note> {
        let mut got = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(note) => {
                    self.seen.push(note.clone());
                    got.push(note);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(e) => panic!("notification reader: {e}"),
            }
        }
        got
    }

    /// Takes every datagram sent so far: sends one of its own and waits for it (a datagram
    /// socket's queue keeps the order).
    fn flush(&mut self) {
        UnixDatagram::unbound()
            .unwrap()
            .send_to(MARK.as_bytes(), &self.path)
            .unwrap();
        self.wait("the test's own datagram", |n| n.text == MARK);
    }

    fn texts(&self) -> Vec<(i32, String)> {
        self.seen.iter().map(|n| (n.pid, n.text.clone())).collect()
    }
}

/// What the test sends to its own notification socket to see the end of the queue.
const MARK: &str = "TEST_MARK=1\n";

/// Whether a notification carries the assignment `line` (e.g. `READY=1`).
fn says(note: &Note, line: &str) -> bool {
    note.text.lines().any(|l| l == line)
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[test]
fn systemd_is_told_ready_watchdog_reloading_mainpid_and_stopping() {
    let _serial = serial();
    for runtime in RUNTIMES {
        let dir = temp_dir("notify");
        let mut notify = Notify::bind(&dir);
        let socket = notify.path.to_str().unwrap().to_owned();
        // On tokio, WATCHDOG_PID names the process itself (set by a shell that then execs
        // echo, as systemd sets it); on smol it is unset.
        let mut echo = Echo::spawn(
            runtime,
            &["--addr", "127.0.0.1:0", "--lame-duck", "1s"],
            &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "200000")],
            runtime == "tokio",
        );
        let first = echo.pid();
        let addr = echo.listening();
        notify.wait("READY=1", |n| n.pid == first && says(n, "READY=1"));
        echo_on(&mut client(addr).unwrap(), b"ready\n").unwrap();

        // WATCHDOG=1 every 100 ms (half of WATCHDOG_USEC), counted over a measured window.
        let start = notify.wait("WATCHDOG=1", |n| n.pid == first && says(n, "WATCHDOG=1"));
        let window = Duration::from_millis(1500);
        let ticks = notify
            .until(start.at + window)
            .iter()
            .filter(|n| n.pid == first && says(n, "WATCHDOG=1"))
            .count();
        let expected = window.as_millis() as usize / 100;
        eprintln!("{runtime}: {ticks} WATCHDOG=1 in {window:?} (expected {expected})");
        assert!(
            ticks * 10 >= expected * 6 && ticks * 10 <= expected * 15,
            "{runtime}: {ticks} WATCHDOG=1 in {window:?}, expected about {expected}"
        );

        // SIGHUP: RELOADING=1 with the monotonic clock, then the new main pid, ready.
        let mark = notify.seen.len();
        let new = echo.upgrade();
        let reloading = notify.wait("RELOADING=1", |n| says(n, "RELOADING=1"));
        let now = monotonic_usec();
        assert_eq!(reloading.pid, first, "{runtime}: {reloading:?}");
        let usec: u64 = reloading
            .text
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{runtime}: no numeric MONOTONIC_USEC in {reloading:?}"));
        assert!(
            usec <= now && now - usec < 5_000_000,
            "{runtime}: MONOTONIC_USEC={usec}, CLOCK_MONOTONIC is {now} µs"
        );
        let announced = notify.wait("MAINPID=", |n| n.text.contains("MAINPID="));
        assert_eq!(announced.pid, first, "{runtime}: {announced:?}");
        assert!(
            says(&announced, &format!("MAINPID={new}")) && says(&announced, "READY=1"),
            "{runtime}: {announced:?} names {new}, the pid of the `upgrade:` line, and READY=1"
        );
        // The new process keeps the watchdog (its WATCHDOG_PID, if any, is its parent's).
        notify.wait("WATCHDOG=1 from the new process", |n| {
            n.pid == new && says(n, "WATCHDOG=1")
        });
        echo_on(&mut client(addr).unwrap(), b"upgraded\n").unwrap();
        // The old one drains and exits 0, without STOPPING=1: the service goes on.
        echo.exits_0(first);
        let summary = echo.line("summary", |l| l.starts_with("shutdown"));
        assert!(summary.starts_with("shutdown complete: "), "{summary:?}");
        notify.flush();
        let since: Vec<(i32, String)> = notify.texts()[mark..]
            .iter()
            .filter(|(_, t)| !t.contains("WATCHDOG=1") && t != MARK)
            .cloned()
            .collect();
        assert!(
            since.iter().all(|(_, t)| !t.contains("STOPPING=1")),
            "{runtime}: STOPPING=1 during an upgrade: {since:?}"
        );
        assert!(
            since.iter().all(|(pid, _)| *pid == first),
            "{runtime}: the new process says nothing but WATCHDOG=1 when upgraded: {since:?}"
        );

        // SIGTERM to the new one: STOPPING=1 as its lame duck begins, then it exits 0.
        let term = Instant::now();
        echo.signal(new, Signal::TERM);
        let stopping = notify.wait("STOPPING=1", |n| n.pid == new && says(n, "STOPPING=1"));
        assert!(
            stopping.at - term < Duration::from_secs(1),
            "{runtime}: STOPPING=1 {:?} after SIGTERM, not as the 1 s lame duck began",
            stopping.at - term
        );
        let summary = echo.line("summary", |l| l.starts_with("shutdown"));
        assert!(summary.starts_with("shutdown complete: "), "{summary:?}");
        echo.exits_0(new);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// systemd gives the main process `WATCHDOG_PID=<its pid>`, and after `MAINPID=` it expects
/// the keep-alives from the new main process: every generation must send them, not only
/// the first two (the second sees its parent's pid in `WATCHDOG_PID`, the third its
/// grandparent's).
#[test]
fn the_watchdog_follows_the_main_process_across_two_upgrades() {
    let _serial = serial();
    let mut silent = Vec::new();
    for runtime in RUNTIMES {
        let dir = temp_dir("watchdog");
        let mut notify = Notify::bind(&dir);
        let socket = notify.path.to_str().unwrap().to_owned();
        let mut echo = Echo::spawn(
            runtime,
            &["--addr", "127.0.0.1:0"],
            &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "200000")],
            true,
        );
        echo.listening();
        let mut generations = vec![echo.pid()];
        for _ in 0..2 {
            let old = echo.pid();
            notify.wait("WATCHDOG=1", |n| n.pid == old && says(n, "WATCHDOG=1"));
            let new = echo.upgrade();
            notify.wait("MAINPID=", |n| says(n, &format!("MAINPID={new}")));
            echo.exits_0(old);
            generations.push(new);
        }
        // A healthy process says WATCHDOG=1 every 100 ms: a second without one is a failure.
        let newest = echo.pid();
        let from = Instant::now();
        let ticks = notify
            .until(from + Duration::from_secs(1))
            .iter()
            .filter(|n| n.pid == newest && says(n, "WATCHDOG=1"))
            .count();
        let senders: HashSet<i32> = notify
            .seen
            .iter()
            .filter(|n| says(n, "WATCHDOG=1"))
            .map(|n| n.pid)
            .collect();
        if ticks == 0 {
            silent.push(format!(
                "{runtime}: generation 3 ({newest}) sent no WATCHDOG=1 in 1 s; WATCHDOG_PID \
                 was generation 1's pid; generations {generations:?}, WATCHDOG=1 senders \
                 {senders:?}"
            ));
        }
        echo.signal(newest, Signal::TERM);
        echo.exits_0(newest);
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(silent.is_empty(), "{silent:#?}");
}

// --- 3. rolling restarts behind HAProxy ---------------------------------------------------

struct Haproxy {
    child: Child,
    stats: PathBuf,
    log: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    /// HAProxy in TCP mode on `front`, balancing over one server per slot `(port,
    /// metrics port)`, each checked with `GET /readyz` on its metrics port.
    fn start(dir: &Path, front: u16, slots: &[(u16, u16)]) -> Haproxy {
        let stats = dir.join("haproxy.sock");
        let log = dir.join("haproxy.log");
        let servers: String = slots
            .iter()
            .enumerate()
            .map(|(i, (port, metrics))| {
                format!("  server s{i} 127.0.0.1:{port} check port {metrics}\n")
            })
            .collect();
        // No `retries`, no `option redispatch`: a connect that fails fails the client. The
        // goal is zero failures with or without them: readiness alone must steer HAProxy.
        let config = format!(
            "global\n  maxconn 1000\n  nbthread 1\n  stats socket {stats} mode 600 level admin\n\
             defaults\n  mode tcp\n  retries 0\n  timeout connect 2s\n  timeout client 10s\n\
             \x20 timeout server 10s\n  timeout check 1s\n\
             frontend f\n  bind 127.0.0.1:{front}\n  default_backend echo\n\
             backend echo\n  balance roundrobin\n  option httpchk GET /readyz\n\
             \x20 http-check expect status 200\n  default-server inter 100ms fall 2 rise 2\n\
             {servers}",
            stats = stats.display()
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start haproxy");
        let mut haproxy = Haproxy { child, stats, log };
        let started = Instant::now();
        while haproxy.status().is_err() {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited with {status}: {}", haproxy.log_text());
            }
            assert!(started.elapsed() < WAIT, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `show stat` for the backend's servers: name -> (status, [failed checks, UP-to-DOWN
    /// transitions]).
    fn status(&self) -> io::Result<HashMap<String, (String, [u64; 2])>> {
        let mut c = UnixStream::connect(&self.stats)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.write_all(b"show stat\n")?;
        let mut text = String::new();
        c.read_to_string(&mut text)?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .ok_or_else(|| io::Error::other(format!("no header in {text:?}")))?
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let [px, sv, status, chkfail, chkdown] =
            ["pxname", "svname", "status", "chkfail", "chkdown"].map(col);
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() == header.len() && f[px] == "echo" && f[sv].starts_with('s'))
            .map(|f| {
                let counts = [chkfail, chkdown].map(|c| f[c].parse().unwrap_or(0));
                (f[sv].to_owned(), (f[status].to_owned(), counts))
            })
            .collect())
    }

    /// Waits until HAProxy's status of server `slot` is `want` (`UP` or `DOWN`).
    fn wait_status(&self, slot: usize, want: &str) -> Instant {
        let name = format!("s{slot}");
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.status().unwrap();
            if now.get(&name).is_some_and(|(s, _)| s == want) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy never saw {name} {want} within {WAIT:?}: {now:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Server `slot`'s failed checks and UP-to-DOWN transitions so far.
    fn checks(&self, slot: usize) -> [u64; 2] {
        self.status().unwrap()[&format!("s{slot}")].1
    }
}

/// Clients through HAProxy: each connects, echoes a few bytes, checks them and closes, in
/// a loop, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(front: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|n| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let payload = format!("client {n} session {i}\n");
                        match session(front, payload.as_bytes()) {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(format!("client {n}: {e}")),
                        }
                        // Paces the load (ports in TIME_WAIT, a 2-core machine).
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits (at most `WAIT`) until `more` sessions beyond now succeeded.
    fn served(&self, more: u64) {
        let target = self.ok() + more;
        let deadline = Instant::now() + WAIT;
        while self.ok() < target {
            assert!(
                Instant::now() < deadline,
                "clients stalled at {} sessions; failures: {:?}",
                self.ok(),
                self.failures.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the clients; returns the sessions served and the failures.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        (
            self.ok(),
            std::mem::take(&mut *self.failures.lock().unwrap()),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An echo instance on slot `(port, metrics port)`.
fn instance(runtime: &str, (port, metrics): (u16, u16)) -> Echo {
    let mut echo = Echo::spawn(
        runtime,
        &[
            "--addr",
            &local(port).to_string(),
            "--metrics-addr",
            &local(metrics).to_string(),
            "--lame-duck",
            "1s",
        ],
        &[],
        false,
    );
    echo.listening();
    echo
}

/// Waits until the instance on `metrics` accepted a client (through HAProxy).
fn wait_accepted(metrics: SocketAddr, what: &str) {
    let deadline = Instant::now() + WAIT;
    while sample(metrics, "berth_connections_accepted_total").unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "{what}: no client within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const CLIENTS: usize = 4;

/// Two echo instances on slots 0 and 1 of three, HAProxy in front, clients running.
struct Fleet {
    runtime: &'static str,
    /// Each slot's port and metrics port.
    slots: [(u16, u16); 3],
    echos: [Option<Echo>; 3],
    haproxy: Haproxy,
    load: Load,
    started: Instant,
    /// Time per instance replaced or upgraded.
    per_instance: Vec<Duration>,
}

impl Fleet {
    fn start(runtime: &'static str, dir: &Path) -> Fleet {
        let started = Instant::now();
        let [front, p0, m0, p1, m1, p2, m2] = free_ports();
        let slots = [(p0, m0), (p1, m1), (p2, m2)];
        let echos = [
            Some(instance(runtime, slots[0])),
            Some(instance(runtime, slots[1])),
            None,
        ];
        for &(_, m) in &slots[..2] {
            wait_http(local(m), "/readyz", runtime, |s, _| s == 200);
        }
        let haproxy = Haproxy::start(dir, front, &slots);
        haproxy.wait_status(0, "UP");
        haproxy.wait_status(1, "UP");
        haproxy.wait_status(2, "DOWN");
        let load = Load::start(local(front), CLIENTS);
        load.served(50);
        Fleet {
            runtime,
            slots,
            echos,
            haproxy,
            load,
            started,
            per_instance: Vec::new(),
        }
    }

    fn metrics(&self, slot: usize) -> SocketAddr {
        local(self.slots[slot].1)
    }

    /// Stops the clients and the instances; asserts that no client failed.
    fn finish(self, what: &str) {
        let Fleet {
            runtime,
            echos,
            haproxy,
            load,
            started,
            per_instance,
            ..
        } = self;
        load.served(50);
        let (served, failures) = load.finish();
        eprintln!(
            "{runtime} {what}: {served} clients served, {} failed, {:?} in all; per instance: \
             {per_instance:?}",
            failures.len(),
            started.elapsed()
        );
        assert!(
            failures.is_empty(),
            "{runtime} {what}: {} of {} clients failed through HAProxy; first: {:#?}\n\
             HAProxy:\n{}",
            failures.len(),
            served + failures.len() as u64,
            &failures[..failures.len().min(10)],
            haproxy.log_text()
        );
        let mut echos: Vec<Echo> = echos.into_iter().flatten().collect();
        for echo in &echos {
            echo.signal(echo.pid(), Signal::TERM);
        }
        for echo in &mut echos {
            echo.exits_0(echo.pid());
        }
    }
}

fn haproxy_available() -> bool {
    program_available("haproxy", "-v")
}

#[test]
fn rolling_replacement_behind_haproxy_fails_no_client() {
    if !haproxy_available() {
        return;
    }
    let _serial = serial();
    for runtime in RUNTIMES {
        let dir = temp_dir("replace");
        let mut fleet = Fleet::start(runtime, &dir);
        let mut free = 2;
        // Each original instance in turn: a replacement on the free slot, then SIGTERM.
        for old in 0..2 {
            let began = Instant::now();
            fleet.echos[free] = Some(instance(runtime, fleet.slots[free]));
            fleet.haproxy.wait_status(free, "UP");
            wait_accepted(fleet.metrics(free), runtime);
            let mut echo = fleet.echos[old].take().unwrap();
            let term = Instant::now();
            echo.signal(echo.pid(), Signal::TERM);
            let down = fleet.haproxy.wait_status(old, "DOWN") - term;
            let summary = echo.line("summary", |l| l.starts_with("shutdown"));
            assert!(summary.starts_with("shutdown complete: "), "{summary:?}");
            echo.exits_0(echo.pid());
            let took = began.elapsed();
            eprintln!(
                "{runtime}: slot {old} -> {free}: HAProxy saw it DOWN {down:?} after SIGTERM; \
                 {took:?} from the start of the replacement to the exit"
            );
            assert!(
                down < Duration::from_secs(1),
                "{runtime}: HAProxy took {down:?} to see the lame duck, longer than it lasts"
            );
            fleet.per_instance.push(took);
            free = old;
            fleet.load.served(20);
        }
        fleet.finish("replacement");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn rolling_upgrade_behind_haproxy_fails_no_client() {
    if !haproxy_available() {
        return;
    }
    let _serial = serial();
    for runtime in RUNTIMES {
        let dir = temp_dir("upgrade");
        let mut fleet = Fleet::start(runtime, &dir);
        for slot in 0..2 {
            let began = Instant::now();
            let [fails, downs] = fleet.haproxy.checks(slot);
            // A client that has sent nothing yet is spared by the drain for a while (1 s):
            // the old process lives on, answering 503 beside the new one on the metrics
            // port, and HAProxy's checks reach either meanwhile.
            let mut idle = client(local(fleet.slots[slot].0)).unwrap();
            let echo = fleet.echos[slot].as_mut().unwrap();
            let old = echo.pid();
            let new = echo.upgrade();
            // Accepted by the old process (the only one when it connected): let go by its
            // drain, an end of file; closing our side ends the old process's lingering close.
            match idle.read(&mut [0u8; 16]) {
                Ok(0) => drop(idle),
                other => panic!("{runtime}: the idle client's drain: {other:?}"),
            }
            echo.exits_0(old);
            // Once the old process is gone only the new one answers on the metrics port.
            let metrics = fleet.metrics(slot);
            wait_http(metrics, "/readyz", runtime, |s, _| s == 200);
            fleet.haproxy.wait_status(slot, "UP");
            wait_accepted(metrics, runtime);
            let took = began.elapsed();
            let [fails_now, downs_now] = fleet.haproxy.checks(slot);
            eprintln!(
                "{runtime}: slot {slot}: {old} -> {new} in {took:?}; meanwhile {} HAProxy \
                 check(s) failed and it was marked DOWN {} time(s)",
                fails_now - fails,
                downs_now - downs
            );
            fleet.per_instance.push(took);
            fleet.load.served(20);
        }
        fleet.finish("upgrade");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
