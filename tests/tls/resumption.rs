//! TLS session resumption: ticket keys berth owns, kept across certificate reloads, handed
//! to the new process at an upgrade, shared by processes through a key file and rotated by
//! replacing it; the session-ID cache for TLS 1.2 clients without tickets.
//!
//! In process with rustls clients; black box against the echo example with
//! `openssl s_client -sess_out/-sess_in` and Python's `ssl` (`tests/tls/resumption_client.py`),
//! TLS 1.2 and 1.3. Those fail when `CI=true` and the program is missing.
//! Rotation by time (old tickets within their lifetime, expired ones) is unit-tested with
//! an injected clock in `src/tls/tickets.rs`.
#![cfg(all(unix, feature = "smol", feature = "tls"))]

use crate::common;

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use berth::tls::{TlsConfig, TlsError};
use berth::{Builder, Config, Conn, ConnEvent, Error, ServerEvent, ServerHandle};
use common::example::{Example, WAIT, program_available};
use common::pki::Pki;
use common::{Ev, LIMIT, Recorder, SmolRt, TempDir, connect, run};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};

const ONLY_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

// --- in process ------------------------------------------------------------------------------

/// A client with a session cache of its own: it resumes when it can.
fn client(
    ca: CertificateDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// Connects, echoes a line (so TLS 1.3 tickets have arrived), closes; how it was set up.
async fn handshake(addr: SocketAddr, config: Arc<ClientConfig>) -> HandshakeKind {
    let tcp = connect(addr).await;
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = common::within(
        LIMIT,
        "a TLS handshake",
        futures_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake");
    s.write_all(b"ping").await.unwrap();
    s.flush().await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    let kind = s.get_ref().1.handshake_kind().unwrap();
    s.close().await.unwrap();
    kind
}

async fn echo(mut conn: Conn) {
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = conn.read(&mut buf).await {
        if conn.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn serve(tls: TlsConfig) -> Result<(ServerHandle, Recorder), Error> {
    let mut config = Config::new("127.0.0.1:0");
    config.tls = Some(tls);
    let rec = Recorder::new();
    let server = rec
        .attach(Builder::new(config).runtime(berth::runtime::Smol::global()))
        .bind()?;
    Ok((server.serve(echo), rec))
}

fn addr(handle: &ServerHandle) -> SocketAddr {
    handle.local_addr().as_socket_addr().unwrap()
}

/// The `resumed` flag of every `TlsEstablished` event so far.
fn resumed_flags(rec: &Recorder) -> Vec<bool> {
    rec.log()
        .into_iter()
        .filter_map(|e| match e {
            Ev::Conn(ConnEvent::TlsEstablished { info, .. }) => Some(info.resumed),
            _ => None,
        })
        .collect()
}

/// A key file line: 16 bytes of name, 32 of secret, from one byte each.
fn key_line(name: u8, secret: u8) -> String {
    format!(
        "{}{}\n",
        format!("{name:02x}").repeat(16),
        format!("{secret:02x}").repeat(32)
    )
}

#[test]
fn a_certificate_reload_keeps_sessions_resumable_and_resumptions_are_reported() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        for versions in [ONLY_13, ONLY_12] {
            let (handle, rec) = serve(leaf.tls_config()).unwrap();
            let client = client(pki.ca_der(), versions);
            assert_eq!(
                handshake(addr(&handle), client.clone()).await,
                HandshakeKind::Full
            );
            assert_eq!(
                handshake(addr(&handle), client.clone()).await,
                HandshakeKind::Resumed
            );
            // A reload builds a new rustls configuration: the keys and cache stay.
            handle.reload_tls(&leaf.tls_config()).unwrap();
            assert_eq!(
                handshake(addr(&handle), client.clone()).await,
                HandshakeKind::Resumed,
                "{versions:?} after a reload"
            );
            let stats = handle.stats();
            assert_eq!(
                (stats.tls_handshakes, stats.tls_resumed),
                (3, 2),
                "{stats:?}"
            );
            assert_eq!(resumed_flags(&rec), [false, true, true]);
            handle.close().await;
        }
    });
}

#[test]
fn a_session_cache_resumes_tls12_clients_without_tickets_and_its_size_is_configurable() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        for (size, clients, expect_all) in [(8, 8, true), (2, 8, false)] {
            let mut tls = leaf.tls_config();
            tls.session_tickets = false;
            tls.session_cache_size = size;
            let (handle, _rec) = serve(tls).unwrap();
            let configs: Vec<_> = (0..clients)
                .map(|_| client(pki.ca_der(), ONLY_12))
                .collect();
            for c in &configs {
                assert_eq!(
                    handshake(addr(&handle), c.clone()).await,
                    HandshakeKind::Full
                );
            }
            let mut resumed = 0;
            for c in &configs {
                resumed +=
                    (handshake(addr(&handle), c.clone()).await == HandshakeKind::Resumed) as usize;
            }
            if expect_all {
                assert_eq!(resumed, clients, "cache of {size}");
            } else {
                assert!(resumed <= size, "cache of {size}: {resumed} resumed");
            }
            handle.close().await;
        }
    });
}

#[test]
fn a_replaced_key_file_rotates_old_tickets_resume_removed_keys_do_not() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let dir = TempDir::new("resumption", "rotate");
        let keys = dir.join("ticket.keys");
        std::fs::write(&keys, key_line(0xa, 1)).unwrap();
        let mut tls = leaf.tls_config();
        tls.ticket_key_file = Some(keys.clone());
        tls.watch = Some(Duration::from_millis(20));
        let (handle, rec) = serve(tls).unwrap();
        let reloaded = || {
            rec.next("TlsReloaded", |e| {
                matches!(e, Ev::Server(ServerEvent::TlsReloaded { .. }))
            })
        };
        for versions in [ONLY_13, ONLY_12] {
            // Two clients, each holding a ticket sealed with key A.
            let (one, two) = (
                client(pki.ca_der(), versions),
                client(pki.ca_der(), versions),
            );
            assert_eq!(
                handshake(addr(&handle), one.clone()).await,
                HandshakeKind::Full
            );
            assert_eq!(
                handshake(addr(&handle), two.clone()).await,
                HandshakeKind::Full
            );
            // Rotation: B issues, A still opens.
            common::pki::replace(&keys, &(key_line(0xb, 2) + &key_line(0xa, 1)));
            reloaded().await;
            assert_eq!(
                handshake(addr(&handle), one.clone()).await,
                HandshakeKind::Resumed,
                "{versions:?}: a ticket of the previous key"
            );
            // A is gone: its tickets do a full handshake.
            common::pki::replace(&keys, &key_line(0xc, 3));
            reloaded().await;
            assert_eq!(
                handshake(addr(&handle), two.clone()).await,
                HandshakeKind::Full,
                "{versions:?}: a ticket of a removed key"
            );
            // Back to A for the next round.
            common::pki::replace(&keys, &key_line(0xa, 1));
            reloaded().await;
        }
        handle.close().await;
    });
}

#[test]
fn a_bad_key_file_is_a_clear_error_at_start_and_keeps_the_old_keys_on_reload() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let dir = TempDir::new("resumption", "bad-file");
        let keys = dir.join("ticket.keys");
        let mut tls = leaf.tls_config();
        tls.ticket_key_file = Some(keys.clone());
        // Missing, then malformed: refused at start, saying what the file must hold.
        for contents in [None, Some("not a key\n")] {
            if let Some(text) = contents {
                std::fs::write(&keys, text).unwrap();
            }
            let e = serve(tls.clone()).map(|_| ()).unwrap_err();
            assert!(
                matches!(&e, Error::Tls(TlsError::TicketKeyFile { path, .. }) if *path == keys),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.contains("ticket.keys") && text.contains("openssl rand -hex 48"),
                "{text}"
            );
        }
        // Out of range settings are typed errors too.
        let mut short = leaf.tls_config();
        short.ticket_lifetime = Duration::ZERO;
        let e = serve(short).map(|_| ()).unwrap_err();
        assert!(
            matches!(e, Error::Tls(TlsError::TicketLifetime(_))),
            "{e:?}"
        );
        let mut tiny = leaf.tls_config();
        tiny.ticket_rotation = Duration::from_millis(1);
        let e = serve(tiny).map(|_| ()).unwrap_err();
        assert!(
            matches!(e, Error::Tls(TlsError::TicketRotation { .. })),
            "{e:?}"
        );

        // A running server: a broken file is reported and the old keys stay.
        std::fs::write(&keys, key_line(0xa, 1)).unwrap();
        tls.watch = Some(Duration::from_millis(20));
        let (handle, rec) = serve(tls).unwrap();
        let c = client(pki.ca_der(), ONLY_13);
        assert_eq!(
            handshake(addr(&handle), c.clone()).await,
            HandshakeKind::Full
        );
        common::pki::replace(&keys, "zz\n");
        let failed = rec
            .next("TlsReloadFailed", |e| {
                matches!(e, Ev::Server(ServerEvent::TlsReloadFailed { .. }))
            })
            .await;
        let Ev::Server(ServerEvent::TlsReloadFailed { reason, .. }) = failed else {
            unreachable!()
        };
        assert!(reason.contains("ticket key file"), "{reason}");
        assert_eq!(
            handshake(addr(&handle), c.clone()).await,
            HandshakeKind::Resumed
        );
        handle.close().await;
    });
}

#[test]
fn ticket_settings_are_serde() {
    let text = r#"
        address = "127.0.0.1:0"
        [tls]
        session_tickets = true
        ticket_lifetime = "12h"
        ticket_rotation = "30m"
        ticket_key_file = "/etc/berth/ticket.keys"
        session_cache_size = 20000
    "#;
    let config: Config = toml::from_str(text).unwrap();
    let tls = config.tls.clone().unwrap();
    assert_eq!(tls.ticket_lifetime, Duration::from_secs(12 * 3600));
    assert_eq!(tls.ticket_rotation, Duration::from_secs(1800));
    assert_eq!(
        tls.ticket_key_file.as_deref(),
        Some(Path::new("/etc/berth/ticket.keys"))
    );
    assert_eq!(tls.session_cache_size, 20000);
    let back: Config = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
    let defaults = TlsConfig::default();
    assert!(defaults.session_tickets && defaults.ticket_key_file.is_none());
    assert!(defaults.session_cache_size >= 2000);
}

// --- the echo example, black box ---------------------------------------------------------------

fn openssl() -> bool {
    program_available("openssl", "version")
}

fn python() -> bool {
    program_available("python3", "--version")
}

/// The echo example over TLS with the certificates of `dir` (made once, then reused).
fn echo_server(dir: &Path, extra: &[&str]) -> Example {
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--self-signed",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Example::spawn("echo", &args)
}

/// Makes the certificates in `dir` once (a short-lived server does), so several echo
/// processes started at once serve the same one.
fn make_certificates(dir: &Path) {
    let first = echo_server(dir, &[]);
    let _ = first.addr();
    assert!(dir.join("ca.pem").exists());
}

/// One `openssl s_client` connection: echo a line, save the session to `out`, resume
/// `resume` if given. Returns whether the session was reused.
fn s_client(addr: &str, version: &str, ca: &Path, out: &Path, resume: Option<&Path>) -> bool {
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            addr,
            version,
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca)
        .arg("-verify_return_error")
        .arg("-sess_out")
        .arg(out);
    if let Some(resume) = resume {
        command.arg("-sess_in").arg(resume);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "resumption ping").unwrap();
    let mut reused = None;
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("s_client {version} to {addr}: no echo ({e})"));
        if line.starts_with("Reused,") {
            reused = Some(true);
        } else if line.starts_with("New,") {
            reused = Some(false);
        } else if line == "resumption ping" {
            break;
        }
    }
    // End of input: s_client closes the session and writes -sess_out as it exits.
    drop(stdin);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    done_rx
        .recv_timeout(WAIT)
        .expect("s_client exits at the end of its input")
        .unwrap();
    reused.expect("s_client printed New or Reused")
}

/// The Python client's counts for one phase.
#[derive(Debug)]
struct Phase {
    resumed: u64,
    full: u64,
    failed: u64,
    text: String,
}

fn phase(json: &serde_json::Value, name: &str) -> Phase {
    let p = &json[name];
    Phase {
        resumed: p["resumed"].as_u64().unwrap(),
        full: p["full"].as_u64().unwrap(),
        failed: p["failed"].as_u64().unwrap(),
        text: p.to_string(),
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls/resumption_client.py")
}

/// Runs the Python client; `between` runs while it pauses between its two phases.
fn python_clients(
    addr: &str,
    ca: &Path,
    version: &str,
    clients: usize,
    extra: &[&str],
    between: Option<&mut dyn FnMut()>,
) -> (Phase, Phase) {
    let mut command = Command::new("python3");
    command
        .arg(script())
        .arg(addr)
        .arg(ca)
        .arg(version)
        .arg(clients.to_string())
        .args(extra);
    if between.is_some() {
        command.arg("--pause");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let limit = Duration::from_secs(240);
    let mut stdin = child.stdin.take().unwrap();
    if let Some(between) = between {
        let line = rx.recv_timeout(limit).expect("the client's first phase");
        assert_eq!(line, "paused");
        between();
        writeln!(stdin, "go").unwrap();
    }
    let line = rx.recv_timeout(limit).expect("the client's result line");
    let _ = child.wait();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    (phase(&json, "first"), phase(&json, "second"))
}

/// SIGHUP to `pid`; the pid of the process that serves after the upgrade, once the old
/// one has stopped.
fn upgrade(echo: &Example, pid: u32) -> u32 {
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut new = None;
    loop {
        let line = echo.line();
        if let Some(rest) = line.strip_prefix("upgrade: process ") {
            new = rest.split_whitespace().next().and_then(|p| p.parse().ok());
        } else if let (true, Some(pid)) = (line.starts_with("shutdown complete"), new) {
            // The old process drained: only the new one accepts now.
            return pid;
        }
    }
}

fn kill(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

/// Kills the process an upgrade started when the test ends, however it ends.
struct Reap(u32);
impl Drop for Reap {
    fn drop(&mut self) {
        kill(self.0);
    }
}

#[test]
fn openssl_sessions_resume_in_process_and_across_an_upgrade_tls12_and_tls13() {
    if !openssl() {
        return;
    }
    let dir = TempDir::new("resumption", "upgrade-openssl");
    let echo = echo_server(&dir, &[]);
    let addr = echo.addr();
    let ca = dir.join("ca.pem");
    let versions = ["-tls1_2", "-tls1_3"];
    for version in versions {
        let session = dir.join(format!("session{version}"));
        assert!(
            !s_client(&addr, version, &ca, &session, None),
            "{version}: first is full"
        );
        assert!(
            s_client(&addr, version, &ca, &dir.join("again"), Some(&session)),
            "{version}: resumed in process"
        );
    }
    let new = upgrade(&echo, echo.child.id());
    let _reap = Reap(new);
    for version in versions {
        let session = dir.join(format!("session{version}"));
        assert!(
            s_client(&addr, version, &ca, &dir.join("after"), Some(&session)),
            "{version}: a session from before the upgrade resumes after it"
        );
    }
}

#[test]
fn python_clients_resume_across_an_upgrade() {
    if !python() {
        return;
    }
    let dir = TempDir::new("resumption", "upgrade-python");
    let echo = echo_server(&dir, &[]);
    let addr = echo.addr();
    let ca = dir.join("ca.pem");
    let mut current = echo.child.id();
    let mut reap = Vec::new();
    for version in ["1.3", "1.2"] {
        let mut between = || {
            current = upgrade(&echo, current);
            reap.push(Reap(current));
        };
        let (first, second) = python_clients(&addr, &ca, version, 50, &[], Some(&mut between));
        assert_eq!(
            (first.full, first.failed),
            (50, 0),
            "{version}: {}",
            first.text
        );
        assert_eq!(
            second.resumed, 50,
            "{version} after an upgrade: {}",
            second.text
        );
    }
}

#[test]
fn processes_sharing_a_key_file_resume_each_others_sessions() {
    let (has_openssl, has_python) = (openssl(), python());
    let dir = TempDir::new("resumption", "shared");
    make_certificates(&dir);
    let keys = dir.join("ticket.keys");
    std::fs::write(&keys, key_line(0x1, 0x2) + &key_line(0x3, 0x4)).unwrap();
    let shared = ["--ticket-keys", keys.to_str().unwrap()];
    let one = echo_server(&dir, &shared);
    let two = echo_server(&dir, &shared);
    let alone = echo_server(&dir, &[]);
    let (a, b, c) = (one.addr(), two.addr(), alone.addr());
    let ca = dir.join("ca.pem");
    if has_openssl {
        for version in ["-tls1_2", "-tls1_3"] {
            let session = dir.join(format!("session{version}"));
            assert!(!s_client(&a, version, &ca, &session, None));
            assert!(
                s_client(&b, version, &ca, &dir.join("b"), Some(&session)),
                "{version}: a session of one process resumes on the other"
            );
            assert!(
                !s_client(&c, version, &ca, &dir.join("c"), Some(&session)),
                "{version}: a process with other keys does a full handshake"
            );
        }
    }
    if has_python {
        for version in ["1.3", "1.2"] {
            let (first, second) = python_clients(&a, &ca, version, 50, &["--second", &b], None);
            assert_eq!((first.full, first.failed), (50, 0), "{}", first.text);
            assert_eq!(second.resumed, 50, "{version}: {}", second.text);
        }
    }
}

#[test]
fn two_thousand_clients_resume_with_tickets_and_tls12_without_through_the_cache() {
    if !python() {
        return;
    }
    let dir = TempDir::new("resumption", "many");
    let echo = echo_server(&dir, &[]);
    let addr = echo.addr();
    let ca = dir.join("ca.pem");
    const CLIENTS: usize = 2000;
    for (version, extra) in [
        ("1.3", &[][..]),
        ("1.2", &[][..]),
        ("1.2", &["--no-tickets"][..]),
    ] {
        let (first, second) = python_clients(&addr, &ca, version, CLIENTS, extra, None);
        assert_eq!(first.failed, 0, "{version} {extra:?}: {}", first.text);
        assert_eq!(second.failed, 0, "{version} {extra:?}: {}", second.text);
        assert!(
            second.resumed * 100 >= 99 * CLIENTS as u64,
            "{version} {extra:?}: {} of {CLIENTS} resumed: {}",
            second.resumed,
            second.text
        );
    }
}
