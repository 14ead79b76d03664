//! The echo example as a black box: its command line, its output, its signals.
#![cfg(all(unix, feature = "smol"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;

mod common;

use common::example::{Example, WAIT};

type Echo = Example;

fn spawn(args: &[&str]) -> Echo {
    Example::spawn("echo", args)
}

#[test]
fn echo_serves_and_drains_on_sigterm() {
    let echo = spawn(&["--addr", "127.0.0.1:0", "--threads", "2"]);
    let first = echo.line();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&data).unwrap();
    let mut back = vec![0; data.len()];
    c.read_exact(&mut back).unwrap();
    assert!(back == data);

    echo.sigterm();
    // The connection is drained: the client sees end of file, then closes.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    drop(c);
    let summary = echo.line();
    assert!(
        summary.contains("1 connection(s) drained, 0 forced"),
        "{summary}"
    );
    let (status, stderr) = echo.wait();
    assert!(status.success(), "{status} {stderr}");
}

#[test]
fn echo_forces_stuck_clients_at_the_drain_timeout() {
    let echo = spawn(&["--addr", "127.0.0.1:0", "--drain-timeout", "200ms"]);
    let addr = echo.line().replace("listening on ", "");
    // A client that never reads and never closes keeps the lingering close waiting.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.read_exact(&mut one).unwrap();
    echo.sigterm();
    let summary = echo.line();
    assert!(summary.starts_with("shutdown complete"), "{summary}");
    let (status, _) = echo.wait();
    assert!(status.success());
    drop(c);
}

#[test]
fn echo_rejects_bad_input_with_one_line() {
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
        &["--unix", "/tmp/x.sock", "--addr", "127.0.0.1:0"],
        &["--unix-mode", "660"],
        &["--unix", "/tmp/x.sock", "--unix-mode", "999"],
        &["--unix", "/nonexistent-dir/x.sock"],
        &["--unix", ""],
    ];
    for args in cases {
        let echo = spawn(args);
        let (status, stderr) = echo.wait();
        assert!(!status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.starts_with("echo: "), "{args:?}: {stderr}");
    }
}

#[test]
fn echo_defaults_to_loopback_port_7000() {
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
        for line in BufReader::new(out).lines().map_while(Result::ok) {
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
    if !openssl_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("berth-openssl-{}", std::process::id()));
    let echo = spawn(&[
        "--addr",
        "127.0.0.1:0",
        "--self-signed",
        dir.to_str().unwrap(),
    ]);
    let addr = echo.line().replace("listening on ", "");
    for version in ["-tls1_3", "-tls1_2"] {
        s_client_echo(&addr, version, &dir.join("ca.pem")).unwrap();
    }
    // The same certificate files through --tls-cert/--tls-key, with client auth required:
    // s_client without a certificate is refused.
    drop(echo);
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ca = dir.join("ca.pem");
    let mtls = spawn(&[
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--client-ca",
        ca.to_str().unwrap(),
    ]);
    let addr = mtls.line().replace("listening on ", "");
    assert!(s_client_echo(&addr, "-tls1_3", &ca).is_err());
    assert!(s_client_echo(&addr, "-tls1_2", &ca).is_err());
    drop(mtls);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Keys in the traditional formats rcgen does not write: PKCS#1 (RSA) and SEC1 (EC),
/// generated by openssl, served through --tls-cert/--tls-key and checked with s_client.
#[test]
fn pkcs1_and_sec1_keys_are_accepted() {
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
    let echo = spawn(&[
        "--addr",
        "127.0.0.1:0",
        "--max-per-ip",
        "1",
        "--deny",
        "127.0.0.9/32",
    ]);
    let addr: std::net::SocketAddr = echo.line().replace("listening on ", "").parse().unwrap();
    let ping = |c: &mut TcpStream| -> bool {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut back = [0u8; 4];
        c.write_all(b"ping").is_ok() && c.read_exact(&mut back).is_ok()
    };
    let mut first = TcpStream::connect(addr).unwrap();
    assert!(ping(&mut first));
    let mut second = TcpStream::connect(addr).unwrap();
    assert!(
        !ping(&mut second),
        "a second connection from 127.0.0.1 is refused"
    );
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 9], 0)).into())
        .unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut denied = TcpStream::from(sock);
    assert!(!ping(&mut denied), "127.0.0.9 is denied");
    drop((first, second, denied));
}

/// Scrapes a Prometheus endpoint over plain HTTP.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    c.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.").then_some(response)
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes until `check` holds (metrics move when the server's tasks run), bounded.
fn scrape_until(addr: std::net::SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    let started = std::time::Instant::now();
    loop {
        if let Some(text) = scrape(addr).filter(|t| check(t)) {
            return text;
        }
        assert!(
            started.elapsed() < WAIT,
            "metrics never showed {what}: {:?}",
            scrape(addr)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn echo_serves_prometheus_metrics_that_move() {
    let metrics_addr: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let echo = spawn(&[
        "--addr",
        "127.0.0.1:0",
        "--metrics-addr",
        &metrics_addr.to_string(),
    ]);
    let addr = echo.addr();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    for c in &mut clients {
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(b"0123456789").unwrap();
        let mut back = [0u8; 10];
        c.read_exact(&mut back).unwrap();
    }
    let text = scrape_until(metrics_addr, "3 active", |t| {
        sample(t, "berth_connections_active") == Some(3.0)
    });
    assert_eq!(sample(&text, "berth_connections_accepted_total"), Some(3.0));
    drop(clients);
    let text = scrape_until(metrics_addr, "0 active", |t| {
        sample(t, "berth_connections_active") == Some(0.0)
    });
    assert_eq!(
        sample(
            &text,
            "berth_connections_closed_total{reason=\"peer_closed\"}"
        ),
        Some(3.0)
    );
    assert_eq!(sample(&text, "berth_bytes_read_total"), Some(30.0));
    assert_eq!(sample(&text, "berth_bytes_written_total"), Some(30.0));
    assert!(text.contains("berth_connection_duration_seconds"), "{text}");
}

#[test]
fn echo_runs_on_the_tokio_adapter_too() {
    let echo = spawn(&[
        "--addr",
        "127.0.0.1:0",
        "--runtime",
        "tokio",
        "--threads",
        "2",
    ]);
    let c = TcpStream::connect(echo.addr()).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    echo_once_then_drain(echo, c, b"on tokio");
}

/// One echo of `msg` over `c`, then SIGTERM: the client reads to end of file and closes,
/// and the server reports exactly that connection drained and exits 0.
fn echo_once_then_drain(echo: Echo, mut c: impl Read + Write, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    echo.sigterm();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    drop(c);
    let summary = echo.line();
    assert!(
        summary.contains("1 connection(s) drained, 0 forced"),
        "{summary}"
    );
    let (status, stderr) = echo.wait();
    assert!(status.success(), "{stderr}");
}

#[test]
fn echo_serves_a_unix_socket_with_its_mode_and_removes_it() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    let dir = std::env::temp_dir().join(format!("berth-echo-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let path_arg = path.to_str().unwrap();
    for runtime in ["smol", "tokio"] {
        let echo = spawn(&[
            "--unix",
            path_arg,
            "--unix-mode",
            "660",
            "--runtime",
            runtime,
        ]);
        assert_eq!(echo.addr(), format!("unix:{path_arg}"));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        let c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        echo_once_then_drain(echo, c, b"over a unix socket");
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "{runtime}: the socket file is removed at shutdown"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn echo_processes_share_a_port_with_reuse_port() {
    let first = spawn(&["--addr", "127.0.0.1:0", "--reuse-port"]);
    let addr = first.addr();
    // Without the flag the port is taken: one error line, non-zero exit.
    let refused = spawn(&["--addr", &addr]);
    let (status, stderr) = refused.wait();
    assert!(
        !status.success() && stderr.contains("cannot listen"),
        "{stderr}"
    );
    let second = spawn(&["--addr", &addr, "--reuse-port"]);
    assert_eq!(second.addr(), addr);
    for i in 0..8u8 {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(&[i]).unwrap();
        let mut back = [0u8; 1];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, [i]);
    }
    for echo in [first, second] {
        echo.sigterm();
        assert!(echo.line().starts_with("shutdown complete"));
        let (status, stderr) = echo.wait();
        assert!(status.success(), "{stderr}");
    }
}
