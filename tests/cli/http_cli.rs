//! The HTTP example (`examples/http.rs`) as a black box, driven by real clients (curl, wrk,
//! h2load, raw sockets) on both of its runtimes (`--runtime smol` and `--runtime tokio`).
//!
//! No test sleeps to synchronize: each waits (bounded) for a printed line, a client's output
//! or exit, an end of file, or a process's exit. The only polling loops look at things that
//! give no signal: how many descriptors the server holds (whether wrk's connections were
//! accepted) and whether an upgraded generation has exited (`waitpid` with `WNOHANG`).
//! Sleeps only pace an action: the bytes of a slowloris client, the requests of a patient
//! one, the spacing of upgrades, a load generator reaching its steady state.
//!
//! The load tests (wrk, h2load, upgrades) run one at a time and alone in the cli binary
//! (`crate::heavy`); the light ones may run beside each other (`crate::light`).
//!
//! wrk, h2load and curl are outside programs: without them a test is skipped with a loud
//! message, or fails under `CI=true` (`.ci/run` installs them).
//!
//! `cargo test` builds the example; `cargo test --test cli http_cli::` alone does not, and
//! would run whatever `target/debug/examples/http` is there (`cargo build --example http`
//! first).
#![cfg(all(
    target_os = "linux",
    feature = "smol",
    feature = "tokio",
    feature = "tls",
    feature = "http"
))]

use crate::common;

use std::collections::HashSet;
use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::example::{Example, WAIT, example_bin, program_available};
use common::{TempDir, pattern};
use rustix::process::{Pid, Signal, WaitOptions};

/// Generates `name::smol` and `name::tokio` from `fn name(runtime: &str)`.
macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn smol() {
                    super::$name("smol")
                }
                #[test]
                fn tokio() {
                    super::$name("tokio")
                }
            }
        )*
    };
}

on_both_runtimes!(
    curl_keep_alive_echo_h2c_and_tls_alpn,
    sigterm_drains_wrk_load_and_slow_requests,
    twenty_upgrades_under_wrk,
    twenty_upgrades_under_h2load,
    idle_timeout_counts_between_requests_only,
    header_timeout_closes_a_slowloris_client,
);

/// How many upgrades the upgrade tests make in a row.
const UPGRADES: usize = 20;
/// wrk's connections (`-c`).
const WRK_CONNECTIONS: usize = 50;

// --- scheduling -----------------------------------------------------------------------------

// A load test runs alone (`crate::heavy`, the cli binary's lock: nothing else of the binary
// runs beside it); a light test may run beside other light tests (`crate::light`).
use crate::{heavy, light};

// --- outside programs -----------------------------------------------------------------------

/// Whether `name` can be run at all (`wrk` has no flag that exits 0, so only whether it
/// starts). Under CI (CI=true) a missing program fails the test; locally it is skipped
/// with a loud message.
fn installed(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is required when CI=true (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {name} is not installed; install it to run this test");
    }
    ok
}

fn have_curl() -> bool {
    program_available("curl", "--version")
}

fn have_wrk() -> bool {
    installed("wrk")
}

fn have_h2load() -> bool {
    program_available("h2load", "--version")
}

/// Runs `program args` with its stdout read line by line (see [`Example`]); killed when
/// dropped.
fn start(program: &str, args: &[&str]) -> Example {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    Example::start(command)
}

/// Every line `ex` writes to stdout until it closes it (each line within `WAIT`).
fn all_lines(ex: &Example, what: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match ex.lines.recv_timeout(WAIT) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what}: no output nor exit within {WAIT:?}; so far:\n{lines:#?}")
            }
        }
    }
}

/// Waits (bounded) for `ex` to end; returns its stdout lines, its status and its stderr.
fn finish(ex: Example, what: &str) -> (Vec<String>, ExitStatus, String) {
    let lines = all_lines(&ex, what);
    let (status, stderr) = ex.wait();
    (lines, status, stderr)
}

fn running(ex: &mut Example) -> bool {
    matches!(ex.child.try_wait(), Ok(None))
}

fn signal(pid: u32, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap()).expect("a positive pid");
    rustix::process::kill_process(pid, sig).unwrap_or_else(|e| panic!("kill -{sig:?} {pid}: {e}"));
}

/// Runs curl (`-sS`, bounded by `--max-time`), which must succeed; returns its stdout.
fn curl(what: &str, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{what}: curl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("curl's output is text")
}

// --- the server -----------------------------------------------------------------------------

/// Starts the example on `runtime`, on a free loopback port, with `args`; returns it and
/// its address.
fn serve(runtime: &str, args: &[&str]) -> (Example, String) {
    let mut all = vec!["--addr", "127.0.0.1:0", "--runtime", runtime];
    all.extend(args);
    let server = Example::spawn("http", &all);
    let addr = server.addr();
    (server, addr)
}

/// SIGTERM: the server prints its `shutdown complete` line and exits 0. Returns the line.
fn terminate(server: Example, what: &str) -> String {
    server.sigterm();
    let summary = loop {
        let line = server.line();
        if line.starts_with("shutdown complete") {
            break line;
        }
    };
    let (status, stderr) = server.wait();
    assert!(
        status.success(),
        "{what}: the server exits 0 after SIGTERM: {status}; stderr:\n{stderr}"
    );
    summary
}

/// `shutdown complete: N connection(s) drained, M forced`: M.
fn forced(summary: &str) -> u64 {
    summary
        .split(", ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no forced count in {summary:?}"))
}

/// How many descriptors `pid` holds.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Waits until the server (`pid`) holds `extra` more descriptors than `base`: that many
/// more connections accepted. Polls (every 5 ms): a descriptor count gives no signal.
fn wait_accepted(pid: u32, base: usize, extra: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    let mut counts = Vec::new();
    loop {
        let now = fd_count(pid);
        if now >= base + extra {
            return;
        }
        if counts.last() != Some(&now) {
            counts.push(now);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the server does not accept {extra} connections within {WAIT:?}: it holds \
             {now} descriptors, {base} before (counts seen: {counts:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// curl in the background: its verbose output (stderr, which curl does not buffer) read
/// line by line as it comes, its stdout kept whole. Killed when dropped.
struct Curl {
    child: Child,
    verbose: mpsc::Receiver<String>,
    stdout: mpsc::Receiver<String>,
}

impl Curl {
    fn start(args: &[&str]) -> Curl {
        let mut child = Command::new("curl")
            .args(["-sS", "-v", "--max-time", "20"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run curl");
        let (tx, verbose) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (tx, stdout) = mpsc::channel();
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        Curl {
            child,
            verbose,
            stdout,
        }
    }

    /// Takes verbose lines until one starts with `prefix` (within `WAIT`); returns them.
    fn until(&self, prefix: &str, what: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.verbose.recv_timeout(WAIT).unwrap_or_else(|e| {
                panic!("{what}: no `{prefix}` line from curl within {WAIT:?} ({e}): {seen:#?}")
            });
            let found = line.starts_with(prefix);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }

    /// Waits (bounded) for its end: its status, stdout and the rest of its verbose output.
    fn finish(mut self, what: &str) -> (ExitStatus, String, Vec<String>) {
        let stdout = self
            .stdout
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{what}: curl did not finish within {WAIT:?}"));
        let verbose = self.verbose.iter().collect();
        let status = self.child.wait().unwrap();
        (status, stdout, verbose)
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- raw HTTP/1.1 ---------------------------------------------------------------------------

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// A response: its status, its head (lower-cased) and its body.
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response whose body has a `content-length` (every response of the example).
fn read_response(s: &mut TcpStream) -> io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "end of file within a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().expect("a content-length"));
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf.len(), head_end + len, "nothing after the response");
    Ok(Response {
        status,
        head,
        body: buf[head_end..].to_vec(),
    })
}

/// One keep-alive GET on `s`.
fn get(s: &mut TcpStream, path: &str) -> Response {
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    read_response(s).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// How a connection ended: `Ok(bytes read before)` for an end of file or a reset, `Err` if
/// it stayed open for `WAIT`.
fn closed(s: &mut TcpStream) -> Result<Vec<u8>, io::Error> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(data),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(data);
            }
            Err(e) => return Err(e),
        }
    }
}

// --- wrk and h2load reports -----------------------------------------------------------------

/// Counts `Connection: close` responses (printed at the end). With a number N as its
/// argument, a thread stops after its N-th: once each of its connections was told to close,
/// it stops rather than spin on reconnects a drained server refuses.
const WRK_SCRIPT: &str = r#"
closes = 0
local stop_at = nil
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  stop_at = tonumber(args[1])
end
function response(status, headers, body)
  local c = headers["connection"] or headers["Connection"]
  if c ~= nil and string.lower(c) == "close" then
    closes = closes + 1
    if stop_at ~= nil and closes >= stop_at then
      wrk.thread:stop()
    end
  end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + t:get("closes")
  end
  io.write(string.format("connection-close responses: %d\n", total))
end
"#;

/// What wrk reported.
#[derive(Debug, Default)]
struct Wrk {
    requests: u64,
    /// connect, read, write, timeout (all 0 when wrk prints no `Socket errors:` line).
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    non_2xx: u64,
    /// Responses with `Connection: close` (the script's count).
    closes: u64,
}

impl Wrk {
    fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

fn parse_wrk(lines: &[String]) -> Wrk {
    let mut wrk = Wrk::default();
    let mut saw_requests = false;
    let mut saw_closes = false;
    for line in lines.iter().map(|l| l.trim()) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            wrk.requests = n.trim().parse().expect("wrk's request count");
            saw_requests = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (kind, n) = (words.next().unwrap(), words.next().unwrap());
                let n: u64 = n.parse().expect("a socket error count");
                match kind {
                    "connect" => wrk.connect = n,
                    "read" => wrk.read = n,
                    "write" => wrk.write = n,
                    "timeout" => wrk.timeout = n,
                    other => panic!("unknown socket error kind {other:?} in {line:?}"),
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.non_2xx = n.trim().parse().expect("wrk's non-2xx count");
        } else if let Some(n) = line.strip_prefix("connection-close responses:") {
            wrk.closes = n.trim().parse().expect("the script's count");
            saw_closes = true;
        }
    }
    assert!(
        saw_requests && saw_closes,
        "an incomplete wrk report:\n{}",
        lines.join("\n")
    );
    wrk
}

/// wrk's threads (`-t`).
const WRK_THREADS: usize = 2;

/// Starts `wrk -t2 -c50` with the counting script against `addr` for `duration`; with
/// `stop_after_close`, each thread stops once all its connections were told to close.
fn start_wrk(addr: &str, duration: &str, dir: &Path, stop_after_close: bool) -> Example {
    let script = dir.join("count.lua");
    std::fs::write(&script, WRK_SCRIPT).unwrap();
    let (threads, connections) = (WRK_THREADS.to_string(), WRK_CONNECTIONS.to_string());
    let url = format!("http://{addr}/");
    let mut args = vec![
        "-t",
        &threads,
        "-c",
        &connections,
        "-d",
        duration,
        "--timeout",
        "5s",
        "-s",
        script.to_str().unwrap(),
        &url,
    ];
    let per_thread = (WRK_CONNECTIONS / WRK_THREADS).to_string();
    if stop_after_close {
        args.extend(["--", &per_thread]);
    }
    start("wrk", &args)
}

/// What one h2load run reported.
#[derive(Debug, Default, Clone, Copy)]
struct H2load {
    total: u64,
    started: u64,
    succeeded: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
    ok_2xx: u64,
}

fn parse_h2load(lines: &[String]) -> H2load {
    // "requests: 6000 total, 6000 started, 6000 done, 6000 succeeded, 0 failed, 0 errored, 0 timeout"
    // "status codes: 6000 2xx, 0 3xx, 0 4xx, 0 5xx"
    let counts = |rest: &str| -> Vec<(String, u64)> {
        rest.split(',')
            .map(|part| {
                let mut words = part.split_whitespace();
                let n = words.next().unwrap().parse().expect("an h2load count");
                (words.next().unwrap_or_default().to_owned(), n)
            })
            .collect()
    };
    let mut report = H2load::default();
    let (mut saw_requests, mut saw_codes) = (false, false);
    for line in lines {
        if let Some(rest) = line.strip_prefix("requests:") {
            saw_requests = true;
            for (kind, n) in counts(rest) {
                match kind.as_str() {
                    "total" => report.total = n,
                    "started" => report.started = n,
                    "succeeded" => report.succeeded = n,
                    "failed" => report.failed = n,
                    "errored" => report.errored = n,
                    "timeout" => report.timeout = n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            saw_codes = true;
            report.ok_2xx = counts(rest)
                .into_iter()
                .find(|(kind, _)| kind == "2xx")
                .map_or(0, |(_, n)| n);
        }
    }
    assert!(
        saw_requests && saw_codes,
        "an incomplete h2load report:\n{}",
        lines.join("\n")
    );
    report
}

// --- a family of generations (upgrades) -----------------------------------------------------

/// Orphaned generations are reparented to this process, so their exit status can be read.
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(i32),
}

/// The first server process and every generation an upgrade started after it. They share
/// one stdout and one stderr.
struct Family {
    /// Every generation's pid, oldest first.
    pids: Vec<i32>,
    reaped: HashSet<i32>,
    out: mpsc::Receiver<String>,
    /// Every stdout line so far, and whether a wait took it.
    log: Vec<(String, bool)>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Family {
    fn spawn(args: &[&str]) -> Family {
        become_subreaper();
        let mut child = Command::new(example_bin("http"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the http example");
        let (tx, out) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (pipe, keep) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in io::BufReader::new(pipe).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        // Its status is collected with waitpid, like every later generation's.
        let pid = i32::try_from(child.id()).unwrap();
        drop(child);
        Family {
            pids: vec![pid],
            reaped: HashSet::new(),
            out,
            log: Vec::new(),
            stderr,
        }
    }

    fn current(&self) -> i32 {
        *self.pids.last().unwrap()
    }

    fn signal(&self, pid: i32, sig: Signal) {
        signal(u32::try_from(pid).unwrap(), sig);
    }

    /// Takes the first stdout line not taken yet that `pred` accepts, waiting at most
    /// `WAIT` for it.
    fn take(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut from = 0;
        loop {
            if let Some(i) =
                (from..self.log.len()).find(|&i| !self.log[i].1 && pred(&self.log[i].0))
            {
                self.log[i].1 = true;
                return self.log[i].0.clone();
            }
            from = self.log.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) => self.log.push((line, false)),
                Err(e) => panic!(
                    "no {what} within {WAIT:?} ({e}); stdout so far:\n{}\nstderr:\n{}",
                    self.transcript(),
                    self.stderr.lock().unwrap().join("\n")
                ),
            }
        }
    }

    fn transcript(&self) -> String {
        self.log
            .iter()
            .map(|(l, _)| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The address of the first generation's `listening on` line.
    fn addr(&mut self) -> String {
        let line = self.take("`listening on` line", |l| l.starts_with("listening on "));
        line["listening on ".len()..].to_owned()
    }

    /// SIGHUP to the newest generation; waits for its `upgrade: process PID` line. Returns
    /// the new pid.
    fn upgrade(&mut self) -> i32 {
        self.signal(self.current(), Signal::HUP);
        let line = self.take("`upgrade: process` line", |l| {
            l.starts_with("upgrade: process ")
        });
        let pid: i32 = line
            .strip_prefix("upgrade: process ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        assert!(
            line.ends_with(" serves now; draining this one"),
            "unexpected upgrade line {line:?}"
        );
        assert!(
            !self.pids.contains(&pid),
            "{pid} is a new process: {:?}",
            self.pids
        );
        self.pids.push(pid);
        pid
    }

    /// Waits (at most `WAIT`) for `pid` to exit and collects its status. A generation whose
    /// parent still runs is that parent's child until the parent exits; then it is ours.
    fn reap(&mut self, pid: i32) -> Exit {
        let deadline = Instant::now() + WAIT;
        let id = Pid::from_raw(pid).unwrap();
        loop {
            match rustix::process::waitpid(Some(id), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => {
                    self.reaped.insert(pid);
                    return match (status.exit_status(), status.terminating_signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(signal)) => Exit::Signal(signal),
                        _ => panic!("{pid}: unexpected wait status {status:?}"),
                    };
                }
                // Ours and running, or not ours yet (its parent runs).
                Ok(None) | Err(rustix::io::Errno::CHILD) => {}
                Err(e) => panic!("waitpid {pid}: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} did not exit within {WAIT:?}; stdout:\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM to the newest generation, then one `shutdown complete` line per generation;
    /// every generation exits 0. Returns the summaries.
    fn terminate_all(&mut self, what: &str) -> Vec<String> {
        self.signal(self.current(), Signal::TERM);
        let summaries: Vec<String> = (0..self.pids.len())
            .map(|_| {
                self.take("`shutdown complete` line", |l| {
                    l.starts_with("shutdown complete")
                })
            })
            .collect();
        let pids: Vec<i32> = self.pids.clone();
        let exits: Vec<(i32, Exit)> = pids.iter().map(|&pid| (pid, self.reap(pid))).collect();
        let bad: Vec<_> = exits.iter().filter(|(_, e)| *e != Exit::Code(0)).collect();
        assert!(
            bad.is_empty(),
            "{what}: every generation exits 0; these did not: {bad:?}\nstdout:\n{}",
            self.transcript()
        );
        summaries
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Family {
    fn drop(&mut self) {
        // A failed test leaves no server running.
        for &pid in &self.pids {
            if !self.reaped.contains(&pid) {
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

// --- the tests ------------------------------------------------------------------------------

/// curl: keep-alive reuse, a 1 MiB echo byte-exact (HTTP/1.1 and HTTP/2), HTTP/2 by prior
/// knowledge, a 404; over TLS, ALPN picks h2 or http/1.1 as asked.
fn curl_keep_alive_echo_h2c_and_tls_alpn(runtime: &str) {
    if !have_curl() {
        return;
    }
    let _light = light();
    let dir = TempDir::new("http-cli", &format!("curl-{runtime}"));
    let (server, addr) = serve(runtime, &["--threads", "2"]);
    let url = format!("http://{addr}");

    // Two URLs in one invocation: the second reuses the first's connection.
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "20", "-w", "%{num_connects}\n"])
        .args([format!("{url}/"), format!("{url}/")])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let (stdout, verbose) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{runtime}: curl: {verbose}");
    assert_eq!(
        stdout, "hello\n1\nhello\n0\n",
        "{runtime}: two GETs, one connect"
    );
    assert!(
        verbose.contains("Re-using existing connection"),
        "{runtime}: curl reuses the connection:\n{verbose}"
    );

    // 1 MiB of random bytes through /echo, byte-exact, on HTTP/1.1 and HTTP/2.
    let body = pattern(1 << 20, 42);
    let (sent, got) = (dir.join("body"), dir.join("echoed"));
    std::fs::write(&sent, &body).unwrap();
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let _ = std::fs::remove_file(&got);
        let out = curl(
            "1 MiB echo",
            &[
                version,
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("@{}", sent.display()),
                "-o",
                got.to_str().unwrap(),
                "-w",
                "%{http_code} %{http_version}",
                &format!("{url}/echo"),
            ],
        );
        let expected = if version == "--http1.1" {
            "200 1.1"
        } else {
            "200 2"
        };
        assert_eq!(out, expected, "{runtime}: {version} echo");
        let echoed = std::fs::read(&got).unwrap();
        assert!(
            echoed == body,
            "{runtime}: {version}: the echo is byte-exact ({} bytes back of {})",
            echoed.len(),
            body.len()
        );
    }

    // HTTP/2 by prior knowledge.
    let out = curl(
        "h2c",
        &[
            "--http2-prior-knowledge",
            "-w",
            "%{http_code} %{http_version}",
            &format!("{url}/"),
        ],
    );
    assert_eq!(out, "hello\n200 2", "{runtime}: h2c");
    // Anything else is a 404.
    let out = curl(
        "404",
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{url}/nope"),
        ],
    );
    assert_eq!(out, "404", "{runtime}: unknown path");
    let summary = terminate(server, runtime);
    assert_eq!(forced(&summary), 0, "{runtime}: {summary}");

    // TLS with a throwaway CA: ALPN h2 and http/1.1.
    let pki = dir.join("pki");
    let (server, addr) = serve(
        runtime,
        &["--threads", "2", "--self-signed", pki.to_str().unwrap()],
    );
    let ca = pki.join("ca.pem");
    assert!(ca.exists(), "{runtime}: --self-signed writes DIR/ca.pem");
    let port = addr.rsplit_once(':').unwrap().1;
    let resolve = format!("localhost:{port}:127.0.0.1");
    for (host, flag, version) in [
        ("localhost", "--http2", "2"),
        ("localhost", "--http1.1", "1.1"),
        ("127.0.0.1", "--http2", "2"),
        ("127.0.0.1", "--http1.1", "1.1"),
    ] {
        let out = curl(
            "TLS",
            &[
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                flag,
                "-w",
                "%{http_code} %{http_version}",
                &format!("https://{host}:{port}/"),
            ],
        );
        assert_eq!(
            out,
            format!("hello\n200 {version}"),
            "{runtime}: TLS {flag} to {host}"
        );
    }
    // The echo over TLS and h2 too.
    let _ = std::fs::remove_file(&got);
    let out = curl(
        "TLS echo",
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "--http2",
            "--data-binary",
            &format!("@{}", sent.display()),
            "-o",
            got.to_str().unwrap(),
            "-w",
            "%{http_code} %{http_version}",
            &format!("https://localhost:{port}/echo"),
        ],
    );
    assert_eq!(out, "200 2", "{runtime}: TLS echo");
    assert!(
        std::fs::read(&got).unwrap() == body,
        "{runtime}: the TLS echo is byte-exact"
    );
    let summary = terminate(server, runtime);
    assert_eq!(forced(&summary), 0, "{runtime}: {summary}");
}

/// SIGTERM in the middle of `wrk -t2 -c50` and of several `/slow?ms=1500` requests: every
/// request in flight completes (the slow ones with `slow` and `Connection: close`), wrk
/// sees no error on any connection it had and no non-2xx response, an idle keep-alive
/// connection is closed after the 1 s quiet grace, and the server exits 0.
///
/// wrk cannot report zero socket errors of every kind here: it reconnects after each
/// `Connection: close`, and a draining server has closed its listener (new connects are
/// refused, BEHAVIOUR.md, Shutdown). wrk counts those refused reconnects as `connect` or
/// `write` errors (a refused non-blocking connect fails at the first write); they are the
/// only errors allowed, and each wrk thread stops once all its connections were told to
/// close, so it does not spin on them. A request cut short on a connection wrk had would be
/// a `read` error (an end of file or a reset before the whole response) or a `timeout`:
/// both must be 0, and every one of wrk's connections must have ended with a complete
/// `Connection: close` response.
fn sigterm_drains_wrk_load_and_slow_requests(runtime: &str) {
    if !have_wrk() || !have_curl() {
        return;
    }
    const SLOW: usize = 5;
    let _heavy = heavy();
    let dir = TempDir::new("http-cli", &format!("drain-{runtime}"));
    let (server, addr) = serve(runtime, &["--threads", "2", "--drain-timeout", "20s"]);
    let pid = server.child.id();
    let base = fd_count(pid);

    let mut wrk = start_wrk(&addr, "3s", &dir, true);
    wait_accepted(pid, base, WRK_CONNECTIONS, "wrk");
    // Pacing: wrk at its steady state, well inside its 3 s.
    std::thread::sleep(Duration::from_millis(500));

    let url = format!("http://{addr}/slow?ms=1500");
    let mut slow: Vec<Curl> = (0..SLOW).map(|_| Curl::start(&[&url])).collect();
    // Each is connected and has sent its request.
    let early: Vec<Vec<String>> = slow
        .iter()
        .enumerate()
        .map(|(i, c)| c.until("> GET /slow", &format!("{runtime}: slow request {i}")))
        .collect();
    // The server accepted each: a client that connected after all of them has its answer,
    // and one listener's pending connections are accepted in order. This keep-alive
    // connection then idles through the drain.
    let mut idle = connect(&addr);
    let r = get(&mut idle, "/");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"hello\n"[..]),
        "{runtime}: a GET beside the load"
    );
    assert!(running(&mut wrk), "{runtime}: wrk still runs at SIGTERM");
    for (i, c) in slow.iter_mut().enumerate() {
        assert!(
            matches!(c.child.try_wait(), Ok(None)),
            "{runtime}: slow request {i} is still in flight at SIGTERM"
        );
    }
    let fds = fd_count(pid);
    let signalled = Instant::now();
    server.sigterm();
    let idle = std::thread::spawn(move || {
        let end = closed(&mut idle);
        (end, signalled.elapsed())
    });

    // Everything is gathered first, so a failure shows the whole picture.
    let slow: Vec<(ExitStatus, String, String)> = slow
        .into_iter()
        .zip(early)
        .enumerate()
        .map(|(i, (c, early))| {
            let (status, body, verbose) = c.finish(&format!("{runtime}: slow request {i}"));
            (status, body, [early, verbose].concat().join("\n"))
        })
        .collect();
    let slow_done = signalled.elapsed();
    let summary = loop {
        let line = server.line();
        if line.starts_with("shutdown complete") {
            break line;
        }
    };
    let drained_in = signalled.elapsed();
    let (status, stderr) = server.wait();
    let (lines, _, wrk_stderr) = finish(wrk, &format!("{runtime}: wrk"));
    let report = parse_wrk(&lines);
    let (idle_end, idle_closed) = idle.join().unwrap();
    let context = format!(
        "the server held {fds} descriptors at SIGTERM ({base} before any client); it printed \
         {summary:?}, exited {status}, stderr {stderr:?}; wrk:\n{}\n{wrk_stderr}",
        lines.join("\n")
    );
    eprintln!(
        "{runtime}: drain: {summary}; slow requests done {slow_done:?} and server drained \
         {drained_in:?}, the idle keep-alive connection closed {idle_closed:?} after SIGTERM; \
         wrk: {report:?}"
    );

    for (i, (status, body, verbose)) in slow.iter().enumerate() {
        assert!(
            status.success() && body == "slow\n",
            "{runtime}: slow request {i} completes with `slow` after SIGTERM: {status}, \
             {body:?}\n{verbose}\n{context}"
        );
        assert!(
            verbose
                .lines()
                .any(|l| l.trim().eq_ignore_ascii_case("< connection: close")),
            "{runtime}: a response during the drain carries `Connection: close`:\n{verbose}"
        );
    }
    match idle_end {
        Ok(rest) => assert!(
            rest.is_empty(),
            "{runtime}: nothing more on the idle connection: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => panic!("{runtime}: the idle keep-alive connection is closed by the drain: {e}"),
    }
    // Its quiet grace (1 s) began when the drain reached it, after the signal.
    assert!(
        idle_closed >= Duration::from_secs(1) && idle_closed < Duration::from_secs(5),
        "{runtime}: the idle keep-alive connection is closed after a 1 s quiet grace, not \
         {idle_closed:?} after SIGTERM"
    );
    assert!(
        status.success(),
        "{runtime}: the server exits 0 after SIGTERM:\n{context}"
    );
    assert_eq!(forced(&summary), 0, "{runtime}: {context}");
    assert!(report.requests > 0, "{runtime}: wrk ran:\n{context}");
    assert_eq!(
        report.non_2xx, 0,
        "{runtime}: no non-2xx response:\n{context}"
    );
    assert_eq!(
        (report.read, report.timeout),
        (0, 0),
        "{runtime}: no request cut short on a connection wrk had (read errors, timeouts):\n{context}"
    );
    assert!(
        report.closes >= WRK_CONNECTIONS as u64,
        "{runtime}: each of wrk's {WRK_CONNECTIONS} connections is told `Connection: close` \
         (got {}):\n{context}",
        report.closes
    );
    if report.socket_errors() > 0 {
        eprintln!(
            "{runtime}: wrk's reconnects to the closed listener after the drain: {} connect, \
             {} write errors",
            report.connect, report.write
        );
    }
}

/// 20 upgrades in a row (each SIGHUP to the newest generation) while `wrk -t2 -c50` runs
/// the whole time: no socket error of any kind, no non-2xx response, every generation
/// exits 0.
fn twenty_upgrades_under_wrk(runtime: &str) {
    if !have_wrk() {
        return;
    }
    let _heavy = heavy();
    let dir = TempDir::new("http-cli", &format!("upgrade-wrk-{runtime}"));
    let started = Instant::now();
    let mut family = Family::spawn(&[
        "--addr",
        "127.0.0.1:0",
        "--runtime",
        runtime,
        "--threads",
        "2",
        "--drain-timeout",
        "20s",
    ]);
    let addr = family.addr();
    let first = u32::try_from(family.current()).unwrap();
    let base = fd_count(first);

    let mut wrk = start_wrk(&addr, "120s", &dir, false);
    wait_accepted(first, base, WRK_CONNECTIONS, "wrk");
    let mut times = Vec::new();
    for i in 1..=UPGRADES {
        // Pacing: each generation serves wrk for a while.
        std::thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        family.upgrade();
        times.push(t.elapsed());
        assert!(
            running(&mut wrk),
            "{runtime}: wrk still runs after upgrade {i}"
        );
    }
    // Pacing: the last generation serves wrk for a while too.
    std::thread::sleep(Duration::from_millis(300));
    signal(wrk.child.id(), Signal::INT);
    let (lines, _, wrk_stderr) = finish(wrk, &format!("{runtime}: wrk"));
    let report = parse_wrk(&lines);

    let summaries = family.terminate_all(runtime);
    let stderr = family.stderr();
    eprintln!(
        "{runtime}: {UPGRADES} upgrades under wrk in {:?}; each took {:?}..{:?}; wrk: {report:?}; \
         summaries: {summaries:?}; stderr: {stderr:?}",
        started.elapsed(),
        times.iter().min().unwrap(),
        times.iter().max().unwrap(),
    );
    let transcript = format!("{}\n{wrk_stderr}", lines.join("\n"));
    assert!(report.requests > 0, "{runtime}: wrk ran:\n{transcript}");
    assert_eq!(
        report.socket_errors(),
        0,
        "{runtime}: no socket error of any kind through {UPGRADES} upgrades:\n{transcript}"
    );
    assert_eq!(
        report.non_2xx, 0,
        "{runtime}: no non-2xx response:\n{transcript}"
    );
    assert_eq!(family.pids.len(), UPGRADES + 1);
    for summary in &summaries {
        assert_eq!(
            forced(summary),
            0,
            "{runtime}: no drain forced: {summaries:?}"
        );
    }
    assert!(
        !stderr.iter().any(|l| l.contains("upgrade failed")),
        "{runtime}: no upgrade failed: {stderr:#?}"
    );
}

/// One h2load run: its output lines, exit status and stderr.
type H2loadRun = (Vec<String>, ExitStatus, String);

/// Runs `h2load args URL` again and again until `stop` is set (at least once); says on
/// `connected` when a run has connected. Returns every run.
fn h2load_loop(
    args: &'static [&'static str],
    url: String,
    stop: Arc<AtomicBool>,
    connected: mpsc::Sender<()>,
) -> std::thread::JoinHandle<Vec<H2loadRun>> {
    std::thread::spawn(move || {
        let mut runs = Vec::new();
        loop {
            let mut all = args.to_vec();
            all.push(&url);
            let h2load = start("h2load", &all);
            let mut lines = Vec::new();
            while let Ok(line) = h2load.lines.recv_timeout(WAIT) {
                if line.starts_with("Application protocol:") {
                    let _ = connected.send(());
                }
                lines.push(line);
            }
            let (rest, status, stderr) = finish(h2load, "h2load");
            lines.extend(rest);
            runs.push((lines, status, stderr));
            if stop.load(Ordering::Relaxed) {
                return runs;
            }
        }
    })
}

/// New connections at a steady rate (10 every 100 ms), 10 requests each, all sent at once
/// with the connection's preface, so a drain's GOAWAY can only come after they were sent.
/// (Not `--rps`: h2load counts a request it had queued but not sent when a GOAWAY came as
/// failed, though no server ever saw it, and does not reconnect after a GOAWAY.)
const H2LOAD_RATE: &[&str] = &[
    "-c600",
    "-n6000",
    "-m10",
    "--rate",
    "10",
    "--rate-period",
    "100ms",
];

/// 20 upgrades in a row while h2load (HTTP/2: `h2load -c600 -n6000 -m10 --rate 10
/// --rate-period 100ms`) runs the whole time: no request failed, errored or timed out, all
/// 2xx; every generation exits 0, and no drain is forced.
fn twenty_upgrades_under_h2load(runtime: &str) {
    if !have_h2load() {
        return;
    }
    let _heavy = heavy();
    let started = Instant::now();
    let mut family = Family::spawn(&[
        "--addr",
        "127.0.0.1:0",
        "--runtime",
        runtime,
        "--threads",
        "1",
        "--drain-timeout",
        "20s",
    ]);
    let addr = family.addr();

    // h2load runs again and again until the upgrades are over (a run takes about 6 s); it
    // has connected before the first upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let (connected_tx, connected) = mpsc::channel();
    let load = h2load_loop(
        H2LOAD_RATE,
        format!("http://{addr}/"),
        stop.clone(),
        connected_tx,
    );
    connected
        .recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{runtime}: h2load connects within {WAIT:?}: {e}"));
    let mut times = Vec::new();
    for _ in 1..=UPGRADES {
        // Pacing: each generation serves h2load for a while.
        std::thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        family.upgrade();
        times.push(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let runs = load.join().expect("the h2load thread");
    let summaries = family.terminate_all(runtime);
    let stderr = family.stderr();

    let reports: Vec<H2load> = runs
        .iter()
        .map(|(lines, _, _)| parse_h2load(lines))
        .collect();
    eprintln!(
        "{runtime}: {UPGRADES} upgrades under h2load in {:?}; each took {:?}..{:?}; \
         {} h2load run(s): {reports:?}; summaries: {summaries:?}; stderr: {stderr:?}",
        started.elapsed(),
        times.iter().min().unwrap(),
        times.iter().max().unwrap(),
        runs.len(),
    );
    for ((lines, status, h2_stderr), report) in runs.iter().zip(&reports) {
        let transcript = format!("{}\n{h2_stderr}", lines.join("\n"));
        assert!(
            status.success(),
            "{runtime}: h2load {status}:\n{transcript}"
        );
        assert_eq!(
            (report.failed, report.errored, report.timeout),
            (0, 0, 0),
            "{runtime}: no request failed, errored or timed out through the upgrades:\n{transcript}"
        );
        assert!(
            report.total > 0
                && report.started == report.total
                && report.succeeded == report.total
                && report.ok_2xx == report.total,
            "{runtime}: every request was sent and succeeded with a 2xx:\n{transcript}"
        );
    }
    assert_eq!(family.pids.len(), UPGRADES + 1);
    for summary in &summaries {
        assert_eq!(
            forced(summary),
            0,
            "{runtime}: no drain forced: {summaries:?}"
        );
    }
    assert!(
        !stderr.iter().any(|l| l.contains("upgrade failed")),
        "{runtime}: no upgrade failed: {stderr:#?}"
    );
}

/// `--idle-timeout 1s` counts between requests only: a 2.5 s request completes, requests
/// 600 ms apart keep a connection, and an idle keep-alive connection is closed between 1 s
/// and 2.5 s after its last response.
fn idle_timeout_counts_between_requests_only(runtime: &str) {
    let _light = light();
    let (server, addr) = serve(runtime, &["--threads", "1", "--idle-timeout", "1s"]);

    // A request longer than the idle timeout completes, and its connection stays usable.
    let mut c = connect(&addr);
    let r = get(&mut c, "/slow?ms=2500");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"slow\n"[..]),
        "{runtime}: /slow?ms=2500 with a 1 s idle timeout: {}",
        r.head
    );
    let r = get(&mut c, "/");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello\n"[..]));
    drop(c);

    // Requests 600 ms apart (paced): never idle for 1 s, never closed.
    let mut c = connect(&addr);
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(600));
        }
        let r = get(&mut c, "/");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"hello\n"[..]),
            "{runtime}: request {i}, 600 ms after the one before"
        );
    }
    drop(c);

    // An idle keep-alive connection: closed at [1 s, 2.5 s] after its response. The
    // server's last activity lies between our write and our read of the response, so the
    // lower bound counts from the write, the upper one from the read.
    let mut c = connect(&addr);
    let sent = Instant::now();
    let r = get(&mut c, "/");
    let answered = Instant::now();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello\n"[..]));
    assert!(
        !r.head.contains("connection: close"),
        "{runtime}: a keep-alive response: {}",
        r.head
    );
    let rest = closed(&mut c)
        .unwrap_or_else(|e| panic!("{runtime}: an idle connection is closed within {WAIT:?}: {e}"));
    let (after_send, after_answer) = (sent.elapsed(), answered.elapsed());
    assert!(
        rest.is_empty(),
        "{runtime}: nothing sent before the close: {:?}",
        String::from_utf8_lossy(&rest)
    );
    eprintln!("{runtime}: idle connection closed {after_answer:?} after its response");
    assert!(
        after_send >= Duration::from_secs(1),
        "{runtime}: closed {after_send:?} after the request, before the idle timeout (1 s)"
    );
    assert!(
        after_answer <= Duration::from_millis(2500),
        "{runtime}: closed {after_answer:?} after the response, later than 2.5 s"
    );
    terminate(server, runtime);
}

/// `--header-timeout 1s`: a client sending its request head one byte every 300 ms is
/// closed between 1 s and 3 s after it connected, while a good client, meanwhile, is
/// answered at once.
fn header_timeout_closes_a_slowloris_client(runtime: &str) {
    let _light = light();
    let (server, addr) = serve(runtime, &["--threads", "1", "--header-timeout", "1s"]);

    let connected = Instant::now();
    let mut slow = connect(&addr);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent_tx, sent) = mpsc::channel();
    let writer = {
        let (mut w, stop) = (slow.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let head = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slowloris\r\n\r\n";
            for (i, byte) in head.iter().enumerate() {
                if stop.load(Ordering::Relaxed) || w.write_all(&[*byte]).is_err() {
                    return;
                }
                let _ = sent_tx.send(i + 1);
                // Pacing: one byte every 300 ms.
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    sent.recv_timeout(WAIT)
        .expect("the slowloris client sends its first byte");

    // A good client, while the slow one dribbles: answered at once.
    let t = Instant::now();
    let mut good = connect(&addr);
    write!(
        good,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut good).expect("the good client's response");
    let answered_in = t.elapsed();
    let answered_at = connected.elapsed();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"hello\n"[..]),
        "{runtime}: the good client"
    );

    let rest = closed(&mut slow).unwrap_or_else(|e| {
        panic!("{runtime}: the slowloris client is closed within {WAIT:?}: {e}")
    });
    let closed_at = connected.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let bytes_sent = sent.try_iter().last().unwrap_or(1);
    eprintln!(
        "{runtime}: slowloris closed {closed_at:?} after connecting ({bytes_sent} bytes sent); \
         the good client was answered in {answered_in:?}; the server sent {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("hello"),
        "{runtime}: the slowloris request is not served"
    );
    assert!(
        answered_at < closed_at,
        "{runtime}: the good client ({answered_at:?}) is answered before the slow one is \
         closed ({closed_at:?})"
    );
    assert!(
        answered_in < Duration::from_secs(1),
        "{runtime}: the good client is answered at once, not after {answered_in:?}"
    );
    assert!(
        closed_at >= Duration::from_secs(1) && closed_at < Duration::from_secs(3),
        "{runtime}: the slowloris client is closed {closed_at:?} after connecting, not within \
         [1 s, 3 s)"
    );
    terminate(server, runtime);
}
