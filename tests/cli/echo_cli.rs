//! The echo example as a black box: its command line, its output, its signals, on both of
//! its runtimes (`--runtime smol` and `--runtime tokio`).
//!
//! No test sleeps to synchronize: each waits (bounded by `WAIT`) for a line of output, a
//! byte, an end of file, or a metric reaching a value. Drains are given a long
//! `--drain-timeout`, so a drained connection never races the deadline on a loaded machine.
#![cfg(all(unix, feature = "smol"))]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common;

use common::example::{Example, WAIT};

type Echo = Example;

/// The runtimes the echo example serves on.
const RUNTIMES: [&str; 2] = ["smol", "tokio"];

fn spawn(args: &[&str]) -> Echo {
    Example::spawn("echo", args)
}

/// Spawns echo on `runtime` with `args`.
fn spawn_on(runtime: &str, args: &[&str]) -> Echo {
    let mut all = args.to_vec();
    all.extend(["--runtime", runtime]);
    spawn(&all)
}

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

/// Reads until the server closes; returns what came first. A read timeout (or any error)
/// fails the test, naming `what`.
fn read_until_closed(c: &mut impl Read, what: &str) -> Vec<u8> {
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return rest,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                panic!("{what}: the server did not close the connection within {WAIT:?}: {e}")
            }
        }
    }
}

/// SIGTERM was sent: the next line is exactly `summary`, and the process exits 0.
fn summary_then_exit(echo: Echo, summary: &str, what: &str) {
    assert_eq!(echo.line(), summary, "{what}");
    let (status, stderr) = echo.wait();
    assert!(status.success(), "{what}: {status} {stderr}");
}

#[test]
fn echo_serves_and_drains_on_sigterm() {
    let _light = crate::light();
    for (runtime, threads) in [("smol", "2"), ("smol", "1"), ("tokio", "2"), ("tokio", "1")] {
        let what = format!("--runtime {runtime} --threads {threads}");
        let echo = spawn_on(runtime, &["--addr", "127.0.0.1:0", "--threads", threads]);
        let first = echo.line();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{what}: unexpected first line {first:?}"));
        let mut c = connect(addr);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&data).unwrap();
        let mut back = vec![0; data.len()];
        c.read_exact(&mut back).unwrap();
        assert!(back == data, "{what}: byte-exact echo");

        echo.sigterm();
        // The connection is drained: the client sees end of file, then closes.
        assert_eq!(read_until_closed(&mut c, &what), b"", "{what}");
        drop(c);
        summary_then_exit(
            echo,
            "shutdown complete: 1 connection(s) drained, 0 forced",
            &what,
        );
    }
}

/// The address of a port that was free a moment ago (for --metrics-addr).
fn free_addr() -> SocketAddr {
    let [port] = crate::common::free_ports();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Clients that connect and never send a byte are idle between requests: SIGTERM lets them
/// go at once (each reads end of file), long before the 30 s drain timeout.
#[test]
fn echo_drains_idle_clients_that_never_sent_a_byte() {
    let _light = crate::light();
    const CLIENTS: usize = 5;
    for runtime in RUNTIMES {
        let metrics = free_addr();
        let echo = spawn_on(
            runtime,
            &[
                "--addr",
                "127.0.0.1:0",
                "--drain-timeout",
                "30s",
                "--metrics-addr",
                &metrics.to_string(),
            ],
        );
        let addr = echo.addr();
        let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(&addr)).collect();
        // Accepted by berth (not just queued by the kernel), else SIGTERM would refuse them.
        wait_for_sample(metrics, "berth_connections_active", CLIENTS as f64);
        echo.sigterm();
        for (i, c) in clients.iter_mut().enumerate() {
            // The read timeout (WAIT, 20 s) is well under the drain timeout (30 s): a client
            // held until the deadline fails here.
            let what = format!("{runtime}: idle client {i}");
            assert_eq!(read_until_closed(c, &what), b"", "{what}");
        }
        drop(clients);
        summary_then_exit(
            echo,
            &format!("shutdown complete: {CLIENTS} connection(s) drained, 0 forced"),
            runtime,
        );
    }
}

/// A client that never closes its side: the server drains it (end of file), lingers for the
/// client's close for at most its linger timeout (2 s), then closes. Drained, not forced.
#[test]
fn echo_lets_a_client_that_never_closes_go_after_the_linger() {
    let _light = crate::light();
    for runtime in RUNTIMES {
        let echo = spawn_on(
            runtime,
            &["--addr", "127.0.0.1:0", "--drain-timeout", "30s"],
        );
        let addr = echo.addr();
        let mut c = connect(&addr);
        c.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).unwrap();
        echo.sigterm();
        assert_eq!(read_until_closed(&mut c, runtime), b"", "{runtime}");
        // `c` stays open until the process has exited.
        summary_then_exit(
            echo,
            "shutdown complete: 1 connection(s) drained, 0 forced",
            runtime,
        );
        drop(c);
    }
}

/// A TLS client that connects and never sends its ClientHello is still in the handshake at
/// the drain deadline (the handshake timeout is 10 s): it is forced.
#[test]
fn echo_forces_a_stalled_tls_handshake_at_the_drain_timeout() {
    let _light = crate::light();
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("stalled-{runtime}"));
        let metrics = free_addr();
        let echo = spawn_on(
            runtime,
            &[
                "--addr",
                "127.0.0.1:0",
                "--self-signed",
                dir.to_str().unwrap(),
                "--drain-timeout",
                "300ms",
                "--metrics-addr",
                &metrics.to_string(),
            ],
        );
        let addr = echo.addr();
        let mut c = connect(&addr);
        wait_for_sample(metrics, "berth_connections_accepted_total", 1.0);
        let signalled = Instant::now();
        echo.sigterm();
        assert_eq!(read_until_closed(&mut c, runtime), b"", "{runtime}");
        assert!(
            signalled.elapsed() >= Duration::from_millis(300),
            "{runtime}: forced at the deadline, not before"
        );
        summary_then_exit(
            echo,
            "shutdown complete: 0 connection(s) drained, 1 forced after 300ms",
            runtime,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn echo_rejects_bad_input_with_one_line() {
    let _light = crate::light();
    let cases: &[&[&str]] = &[
        &["--addr", "abc"],
        &["--addr", "127.0.0.1:99999"],
        &["--addr", ""],
        &["--idle-timeout", "xyz"],
        &["--drain-timeout", "-1s"],
        &["--threads", "0"],
        &["--max-connections", "0"],
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        &["--bogus"],
        &["--max-per-ip", "0"],
        &["--rate-per-ip", "5/h"],
        &["--allow", "10.0.0.0/33"],
        &["--proxy-protocol"],
        &["--trusted-proxy", "10.0.0.0/8"],
        &["--addr", "127.0.0.1:0", "--addr", "abc"],
        &["--unix-group", "5"],
        &["--unix-mode", "660"],
        &["--unix", "/tmp/x.sock", "--unix-mode", "999"],
        &["--unix", "/nonexistent-dir/x.sock"],
        &["--unix", ""],
    ];
    let one_line = |args: &[&str]| {
        let (status, stderr) = spawn(args).wait();
        assert!(!status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.starts_with("echo: "), "{args:?}: {stderr}");
    };
    for runtime in RUNTIMES {
        for args in cases {
            one_line(&[args, &["--runtime", runtime][..]].concat());
        }
    }
    one_line(&["--runtime", "bogus"]);
}

#[test]
fn echo_defaults_to_loopback_port_7000() {
    let _light = crate::light();
    let echo = spawn(&[]);
    match echo.lines.recv_timeout(WAIT) {
        Ok(line) => assert_eq!(line, "listening on 127.0.0.1:7000"),
        // Port 7000 taken by another process on this machine: the error still names it.
        Err(_) => {
            let (status, stderr) = echo.wait();
            assert!(!status.success());
            assert!(stderr.contains("127.0.0.1:7000"), "{stderr}");
        }
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("berth-echo-cli-{name}-{}", std::process::id()))
}

fn openssl_available() -> bool {
    common::example::program_available("openssl", "version")
}

/// Sends one line through `openssl s_client` and waits for it to come back.
fn s_client_echo(addr: &str, version_flag: &str, ca: &std::path::Path) -> Result<(), String> {
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            version_flag,
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let out = client.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = format!("hello over {version_flag}");
    let mut stdin = client.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    let got = rx.recv_timeout(WAIT);
    let _ = client.kill();
    let _ = client.wait();
    match got {
        Ok(l) if l == line => Ok(()),
        other => Err(format!("{version_flag}: expected {line:?}, got {other:?}")),
    }
}

#[test]
fn openssl_s_client_interoperates_over_tls12_and_tls13() {
    let _light = crate::light();
    if !openssl_available() {
        return;
    }
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("openssl-{runtime}"));
        let echo = spawn_on(
            runtime,
            &[
                "--addr",
                "127.0.0.1:0",
                "--self-signed",
                dir.to_str().unwrap(),
            ],
        );
        let addr = echo.addr();
        for version in ["-tls1_3", "-tls1_2"] {
            s_client_echo(&addr, version, &dir.join("ca.pem"))
                .unwrap_or_else(|e| panic!("{runtime}: {e}"));
        }
        // The same certificate files through --tls-cert/--tls-key, with client auth
        // required: s_client without a certificate is refused.
        drop(echo);
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let ca = dir.join("ca.pem");
        let mtls = spawn_on(
            runtime,
            &[
                "--addr",
                "127.0.0.1:0",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                "--client-ca",
                ca.to_str().unwrap(),
            ],
        );
        let addr = mtls.addr();
        assert!(s_client_echo(&addr, "-tls1_3", &ca).is_err(), "{runtime}");
        assert!(s_client_echo(&addr, "-tls1_2", &ca).is_err(), "{runtime}");
        drop(mtls);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A TLS session the idle timeout ends is closed with `close_notify`: `openssl s_client`
/// (which, with `-quiet`, reads until the server closes) exits 0 without "unexpected eof
/// while reading", which it reports for a TLS session cut without `close_notify`.
#[test]
fn tls_idle_timeout_closes_with_close_notify() {
    let _light = crate::light();
    if !openssl_available() {
        return;
    }
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("close-notify-{runtime}"));
        let metrics = free_addr();
        let echo = spawn_on(
            runtime,
            &[
                "--addr",
                "127.0.0.1:0",
                "--self-signed",
                dir.to_str().unwrap(),
                "--idle-timeout",
                "300ms",
                "--metrics-addr",
                &metrics.to_string(),
            ],
        );
        let addr = echo.addr();
        let connected = Instant::now();
        let mut client = Command::new("openssl")
            .args(["s_client", "-connect", &addr, "-servername", "localhost"])
            .arg("-CAfile")
            .arg(dir.join("ca.pem"))
            .args(["-verify_return_error", "-quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl s_client");
        // Sends nothing, and keeps its input open: only the server ends the session.
        let stdin = client.stdin.take();
        let mut err = client.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        let stderr = match rx.recv_timeout(WAIT) {
            Ok(stderr) => stderr,
            Err(_) => {
                let _ = client.kill();
                panic!("{runtime}: the idle TLS session was not closed within {WAIT:?}");
            }
        };
        let status = client.wait().unwrap();
        drop(stdin);
        assert!(
            connected.elapsed() >= Duration::from_millis(300),
            "{runtime}: closed before the idle timeout"
        );
        assert!(
            !stderr.contains("unexpected eof"),
            "{runtime}: the session ended without close_notify: {stderr}"
        );
        assert!(status.success(), "{runtime}: s_client {status}: {stderr}");
        assert!(
            stderr.contains("verify return:1"),
            "{runtime}: the handshake completed: {stderr}"
        );
        // berth closed it for the idle timeout.
        wait_for_sample(
            metrics,
            "berth_connections_closed_total{reason=\"idle_timeout\"}",
            1.0,
        );
        wait_for_sample(metrics, "berth_connections_active", 0.0);
        echo.sigterm();
        summary_then_exit(
            echo,
            "shutdown complete: 0 connection(s) drained, 0 forced",
            runtime,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Keys in the traditional formats rcgen does not write: PKCS#1 (RSA) and SEC1 (EC),
/// generated by openssl, served through --tls-cert/--tls-key and checked with s_client.
#[test]
fn pkcs1_and_sec1_keys_are_accepted() {
    let _light = crate::light();
    if !openssl_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("berth-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&["genrsa", "-traditional", "-out", "rsa.pem", "2048"]);
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ec.pem",
    ]);
    for (key, marker) in [
        ("rsa.pem", "BEGIN RSA PRIVATE KEY"),
        ("ec.pem", "BEGIN EC PRIVATE KEY"),
    ] {
        let text = std::fs::read_to_string(dir.join(key)).unwrap();
        assert!(
            text.contains(marker),
            "{key} is not in the traditional format"
        );
        let cert = format!("{key}.crt");
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ]);
        let echo = spawn(&[
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            dir.join(&cert).to_str().unwrap(),
            "--tls-key",
            dir.join(key).to_str().unwrap(),
        ]);
        let addr = echo.line().replace("listening on ", "");
        s_client_echo(&addr, "-tls1_3", &dir.join(&cert)).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn echo_limit_flags_take_effect() {
    let _light = crate::light();
    for runtime in RUNTIMES {
        let echo = spawn_on(
            runtime,
            &[
                "--addr",
                "127.0.0.1:0",
                "--max-per-ip",
                "1",
                "--deny",
                "127.0.0.9/32",
            ],
        );
        let addr: SocketAddr = echo.addr().parse().unwrap();
        let ping = |c: &mut TcpStream| -> bool {
            c.set_read_timeout(Some(WAIT)).unwrap();
            let mut back = [0u8; 4];
            c.write_all(b"ping").is_ok() && c.read_exact(&mut back).is_ok()
        };
        let mut first = TcpStream::connect(addr).unwrap();
        assert!(ping(&mut first), "{runtime}");
        let mut second = TcpStream::connect(addr).unwrap();
        assert!(
            !ping(&mut second),
            "{runtime}: a second connection from 127.0.0.1 is refused"
        );
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from(([127, 0, 0, 9], 0)).into())
            .unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut denied = TcpStream::from(sock);
        assert!(!ping(&mut denied), "{runtime}: 127.0.0.9 is denied");
        drop((first, second, denied));
    }
}

/// Scrapes a Prometheus endpoint over plain HTTP.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    c.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.").then_some(response)
}

/// The value of the sample whose line starts with `name` and a space.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Re-scrapes (bounded by `WAIT`) until the sample `name` is `value`; returns that scrape.
///
/// One scrape reads each counter and gauge at its own instant, so no order of updates
/// makes a scrape consistent: wait for each value on its own, and compare several values in
/// one scrape only once nothing moves any more.
fn wait_for_sample(addr: SocketAddr, name: &str, value: f64) -> String {
    let started = Instant::now();
    let mut last = None;
    loop {
        if let Some(text) = scrape(addr) {
            if sample(&text, name) == Some(value) {
                return text;
            }
            last = Some(text);
        }
        assert!(
            started.elapsed() < WAIT,
            "{name} never reached {value} within {WAIT:?}; last scrape: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn echo_serves_prometheus_metrics_that_move() {
    let _light = crate::light();
    for runtime in RUNTIMES {
        let metrics = free_addr();
        let echo = spawn_on(
            runtime,
            &[
                "--addr",
                "127.0.0.1:0",
                "--metrics-addr",
                &metrics.to_string(),
            ],
        );
        let addr = echo.addr();
        let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(&addr)).collect();
        for c in &mut clients {
            c.write_all(b"0123456789").unwrap();
            let mut back = [0u8; 10];
            c.read_exact(&mut back).unwrap();
        }
        wait_for_sample(metrics, "berth_connections_accepted_total", 3.0);
        wait_for_sample(metrics, "berth_connections_active", 3.0);
        drop(clients);
        // berth counts a close (the counter) before it lowers the gauge, and tallies the
        // bytes before both; but a scrape may read the gauge before the counter, so wait for
        // each final value, then check them all in one scrape.
        let closed = "berth_connections_closed_total{reason=\"peer_closed\"}";
        wait_for_sample(metrics, closed, 3.0);
        wait_for_sample(metrics, "berth_connections_active", 0.0);
        wait_for_sample(metrics, "berth_bytes_read_total", 30.0);
        wait_for_sample(metrics, "berth_bytes_written_total", 30.0);
        let text = scrape(metrics).expect("a scrape");
        for (name, value) in [
            ("berth_connections_accepted_total", 3.0),
            ("berth_connections_active", 0.0),
            (closed, 3.0),
            ("berth_bytes_read_total", 30.0),
            ("berth_bytes_written_total", 30.0),
        ] {
            assert_eq!(
                sample(&text, name),
                Some(value),
                "{runtime}: {name}\n{text}"
            );
        }
        assert!(
            text.contains("berth_connection_duration_seconds"),
            "{runtime}: {text}"
        );
    }
}

/// One echo of `msg` over `c`, then SIGTERM: the client reads to end of file and closes,
/// and the server reports exactly that connection drained and exits 0.
fn echo_once_then_drain(echo: Echo, mut c: impl Read + Write, msg: &[u8], what: &str) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg, "{what}");
    echo.sigterm();
    assert_eq!(read_until_closed(&mut c, what), b"", "{what}");
    drop(c);
    summary_then_exit(
        echo,
        "shutdown complete: 1 connection(s) drained, 0 forced",
        what,
    );
}

#[test]
fn echo_serves_a_unix_socket_with_its_mode_and_removes_it() {
    let _light = crate::light();
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    let dir = temp_dir("unix");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let path_arg = path.to_str().unwrap();
    for runtime in RUNTIMES {
        let echo = spawn_on(runtime, &["--unix", path_arg, "--unix-mode", "660"]);
        assert_eq!(echo.addr(), format!("unix:{path_arg}"));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        let c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        echo_once_then_drain(echo, c, b"over a unix socket", runtime);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "{runtime}: the socket file is removed at shutdown"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn echo_processes_share_a_port_with_reuse_port() {
    let _light = crate::light();
    for runtime in RUNTIMES {
        let first = spawn_on(runtime, &["--addr", "127.0.0.1:0", "--reuse-port"]);
        let addr = first.addr();
        // Without the flag the port is taken: one error line, non-zero exit.
        let refused = spawn_on(runtime, &["--addr", &addr]);
        let (status, stderr) = refused.wait();
        assert!(
            !status.success() && stderr.contains("cannot listen"),
            "{runtime}: {stderr}"
        );
        let second = spawn_on(runtime, &["--addr", &addr, "--reuse-port"]);
        assert_eq!(second.addr(), addr);
        for i in 0..8u8 {
            let mut c = connect(&addr);
            c.write_all(&[i]).unwrap();
            let mut back = [0u8; 1];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, [i]);
            c.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(
                read_until_closed(&mut c, runtime),
                b"",
                "the server closes after us"
            );
        }
        for echo in [first, second] {
            echo.sigterm();
            // Which process served how many is the kernel's choice, and a server's
            // bookkeeping of a close trails the close itself by an instant: the counts are
            // not exact, but nothing is forced.
            let summary = echo.line();
            assert!(
                summary.starts_with("shutdown complete: ") && summary.ends_with(" 0 forced"),
                "{runtime}: {summary}"
            );
            let (status, stderr) = echo.wait();
            assert!(status.success(), "{runtime}: {stderr}");
        }
    }
}
