//! Overload and certificate operations through the echo example, as a black box: eviction
//! at the descriptor limit (`--evict-idle`), a handshake flood beside established sessions
//! (`--max-handshakes`), and certificate files replaced under a running server
//! (`--tls-watch`).
//!
//! Waiting is on bytes, ends of file and lines of output, each bounded. Timers appear only
//! where idleness is the condition under test (eviction needs connections idle for 1 s), and
//! read timeouts only to show that a client is *not* served.
#![cfg(all(unix, feature = "smol", feature = "tls"))]

use crate::common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use common::TempDir;
use common::example::{WAIT, example_bin};
use common::pki::{Leaf, Pki, relink, replace, revision};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

// --- the echo process ---------------------------------------------------------------------------

/// The echo example, with its stdout and stderr as channels of lines.
struct Echo {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

impl Echo {
    /// Runs echo with `args`, with at most `fd_limit` descriptors if given (set by the
    /// shell, which then execs echo).
    fn spawn(fd_limit: Option<u32>, args: &[&str]) -> Echo {
        let bin = example_bin("echo");
        let mut command = match fd_limit {
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(&bin);
                sh
            }
            None => Command::new(&bin),
        };
        let mut child = command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run echo");
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        Echo { child, out, err }
    }

    /// The address from its `listening on ADDR` line.
    fn addr(&self) -> String {
        let first = self
            .out
            .recv_timeout(WAIT)
            .expect("echo's `listening on` line");
        first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned()
    }

    /// The next line of stderr containing `needle` (bounded by `WAIT`).
    fn stderr_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("echo printed no line with {needle:?} on stderr within {WAIT:?}"),
            }
        }
    }

    /// SIGTERM, then a bounded wait for a successful exit.
    fn stop(&mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "echo exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "echo did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- plain clients ---------------------------------------------------------------------------------

/// One byte out, one byte back, within `timeout`: `Ok(false)` if nothing came back in time.
fn echoes_within(c: &mut TcpStream, byte: u8, timeout: Duration) -> io::Result<bool> {
    c.set_read_timeout(Some(timeout))?;
    c.write_all(&[byte])?;
    awaits_echo(c, byte)
}

/// Reads the echo of `byte` (with the socket's read timeout): `Ok(false)` on a timeout.
fn awaits_echo(c: &mut TcpStream, byte: u8) -> io::Result<bool> {
    let mut back = [0u8; 1];
    match c.read(&mut back) {
        Ok(1) => {
            assert_eq!(back[0], byte, "byte-exact echo");
            Ok(true)
        }
        Ok(_) => Err(io::ErrorKind::UnexpectedEof.into()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Whether the server has closed `c` (a read sees end of file within `timeout`).
fn closed_within(c: &mut TcpStream, timeout: Duration) -> bool {
    c.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected {n} bytes"),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => panic!("read failed: {e}"),
    }
}

/// Asserts that the server has closed none of `conns`.
fn still_open(conns: &mut [TcpStream], what: &str) {
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            !closed_within(c, Duration::from_millis(1)),
            "{what}: connection {i} of these was closed"
        );
    }
}

/// How a server at its descriptor limit was filled.
struct Full {
    /// Served connections, in the order they were opened.
    held: Vec<TcpStream>,
    /// The first client not served (it sent one byte, waiting for its echo).
    waiting: TcpStream,
    /// How long filling took.
    took: Duration,
}

/// Opens connections, each echoing one byte, until one is not served within 300 ms: the
/// server is then out of descriptors.
fn fill(addr: &str) -> Full {
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..1000u32 {
        let mut c = TcpStream::connect(addr).unwrap();
        if echoes_within(&mut c, i as u8, Duration::from_millis(300)).unwrap() {
            held.push(c);
        } else {
            return Full {
                held,
                waiting: c,
                took: started.elapsed(),
            };
        }
    }
    panic!("the server never ran out of descriptors");
}

// --- 7. eviction at the descriptor limit -----------------------------------------------------------

const FD_LIMIT: u32 = 256;

fn evicts_the_idlest_at_the_descriptor_limit(runtime: &str) {
    let echo = Echo::spawn(
        Some(FD_LIMIT),
        &[
            "--addr",
            "127.0.0.1:0",
            "--evict-idle",
            "--runtime",
            runtime,
        ],
    );
    let addr = echo.addr();
    let Full {
        mut held,
        mut waiting,
        took,
    } = fill(&addr);
    assert!(
        held.len() > 200 && held.len() < FD_LIMIT as usize,
        "{runtime}: {} served at a limit of {FD_LIMIT}",
        held.len()
    );
    // Filling must be quicker than the 1 s of idleness that makes a connection evictable,
    // or the first ones would already have been evicted for the later ones.
    assert!(
        !closed_within(&mut held[0], Duration::from_millis(1)),
        "{runtime}: filling took {took:?}"
    );
    // Once the first connection has been idle for 1 s, it makes room for the one waiting.
    waiting
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    assert!(
        awaits_echo(&mut waiting, held.len() as u8).unwrap(),
        "{runtime}: the waiting client is served once a connection is idle enough"
    );
    assert!(
        closed_within(&mut held[0], WAIT),
        "{runtime}: the connection idle the longest was evicted"
    );
    // Only that one: nobody else is waiting. (Linux's accept takes a descriptor before it
    // looks for a pending connection, so the accept after the one that took the last free
    // descriptor fails with EMFILE although no client waits; that must not evict anyone.)
    assert!(
        !closed_within(&mut held[1], Duration::from_millis(300)),
        "{runtime}: a second connection was evicted although no client was waiting"
    );
    still_open(&mut held[2..], runtime);
    // The others have now been idle for over 1 s: a new client is served at once (within
    // 2 s), in place of the connection idle the longest.
    std::thread::sleep(Duration::from_millis(1200));
    let mut newcomer = TcpStream::connect(&addr).unwrap();
    assert!(
        echoes_within(&mut newcomer, b'n', Duration::from_secs(2)).unwrap(),
        "{runtime}: a new client is served within 2 s"
    );
    assert!(
        closed_within(&mut held[1], WAIT),
        "{runtime}: the next connection idle the longest was evicted"
    );
    assert!(
        !closed_within(&mut held[2], Duration::from_millis(300)),
        "{runtime}: a third connection was evicted although no client was waiting"
    );
    still_open(&mut held[3..], runtime);
    let last = held.len() - 1;
    assert!(
        echoes_within(&mut held[last], b'l', WAIT).unwrap(),
        "{runtime}"
    );
    assert!(
        echoes_within(&mut waiting, b'w', WAIT).unwrap(),
        "{runtime}"
    );
    drop((held, waiting, newcomer));
    let mut echo = echo;
    echo.stop();
}

#[test]
fn evicts_the_idlest_at_the_descriptor_limit_smol() {
    let _light = crate::light();
    evicts_the_idlest_at_the_descriptor_limit("smol");
}

#[test]
fn evicts_the_idlest_at_the_descriptor_limit_tokio() {
    let _light = crate::light();
    evicts_the_idlest_at_the_descriptor_limit("tokio");
}

/// Without `--evict-idle`, idle connections at the limit lock new clients out until one
/// closes.
#[test]
fn without_evict_idle_new_clients_wait_at_the_descriptor_limit() {
    let _light = crate::light();
    let mut echo = Echo::spawn(Some(FD_LIMIT), &["--addr", "127.0.0.1:0"]);
    let addr = echo.addr();
    let Full {
        mut held,
        mut waiting,
        ..
    } = fill(&addr);
    std::thread::sleep(Duration::from_millis(1200));
    let mut newcomer = TcpStream::connect(&addr).unwrap();
    assert!(
        !echoes_within(&mut newcomer, b'n', Duration::from_millis(1500)).unwrap(),
        "without --evict-idle a new client is not served at the limit"
    );
    waiting
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    assert!(!awaits_echo(&mut waiting, held.len() as u8).unwrap());
    still_open(&mut held, "without --evict-idle nothing is evicted");
    // Two leave: both waiting clients are served.
    drop(held.remove(0));
    drop(held.remove(0));
    newcomer.set_read_timeout(Some(WAIT)).unwrap();
    waiting.set_read_timeout(Some(WAIT)).unwrap();
    assert!(awaits_echo(&mut newcomer, b'n').unwrap());
    assert!(awaits_echo(&mut waiting, held.len() as u8 + 2).unwrap());
    // The accept errors were reported (once per episode).
    let line = echo.stderr_line("accept");
    assert!(
        line.to_lowercase().contains("too many open files"),
        "{line}"
    );
    drop((held, waiting, newcomer));
    echo.stop();
}

// --- certificates and TLS clients ------------------------------------------------------------------

/// A client trusting `pki`'s CA that never resumes a session: every handshake is full.
fn client(pki: &Pki) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A full TLS handshake with `addr` as "localhost".
fn tls_connect(addr: &str, config: &Arc<ClientConfig>) -> io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Sends `msg` and checks that exactly it comes back.
fn tls_echo(s: &mut Tls, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    s.flush()?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    assert!(back == msg, "byte-exact echo");
    Ok(())
}

/// Handshake and one echo; the certificate the server presented.
fn handshake_and_echo(
    addr: &str,
    config: &Arc<ClientConfig>,
) -> io::Result<CertificateDer<'static>> {
    let mut s = tls_connect(addr, config)?;
    tls_echo(&mut s, b"ping")?;
    let presented = s.conn.peer_certificates().unwrap()[0].clone();
    s.conn.send_close_notify();
    let _ = s.flush();
    Ok(presented)
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    common::pattern(len, seed)
}

// --- 8. a handshake flood beside established connections -------------------------------------------

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const FLOOD: usize = 48;
const ESTABLISHED: usize = 3;

fn handshake_flood_beside_established_connections(runtime: &str) {
    let dir = TempDir::new("ops", &format!("flood-{runtime}"));
    let pki = Pki::new("operations test CA");
    let leaf = pki.leaf(&["localhost"]);
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut echo = Echo::spawn(
        None,
        &[
            "--addr",
            "127.0.0.1:0",
            "--runtime",
            runtime,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--max-handshakes",
            "2",
            "--handshake-timeout",
            "5s",
        ],
    );
    let addr = echo.addr();
    let client = client(&pki);

    // Established sessions echo throughout the flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let established: Vec<_> = (0..ESTABLISHED)
        .map(|i| {
            let mut s = tls_connect(&addr, &client).expect("an established session");
            let flooding = flooding.clone();
            std::thread::spawn(move || {
                let mut echoes = 0u32;
                while flooding.load(Ordering::SeqCst) || echoes == 0 {
                    let msg = pattern(4096, (i as u64) << 32 | u64::from(echoes));
                    tls_echo(&mut s, &msg).expect("an established session echoes");
                    echoes += 1;
                }
                s.conn.send_close_notify();
                let _ = s.flush();
                echoes
            })
        })
        .collect();

    // The flood: many clients at once, each a full handshake and one echo.
    let start = Arc::new(Barrier::new(FLOOD));
    let (done_tx, done) = mpsc::channel();
    for n in 0..FLOOD {
        let (start, addr, client, done_tx) =
            (start.clone(), addr.clone(), client.clone(), done_tx.clone());
        std::thread::spawn(move || {
            start.wait();
            let began = Instant::now();
            let outcome = tls_connect(&addr, &client)
                .and_then(|mut s| tls_echo(&mut s, &pattern(64, n as u64)));
            let _ = done_tx.send((outcome, began.elapsed()));
        });
    }
    drop(done_tx);
    let bound = HANDSHAKE_TIMEOUT + WAIT;
    let deadline = Instant::now() + bound;
    let (mut served, mut timed_out) = (0, 0);
    for _ in 0..FLOOD {
        let left = deadline.saturating_duration_since(Instant::now());
        let (outcome, took) = done
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{runtime}: a flood client hung for {bound:?}"));
        match outcome {
            Ok(()) => served += 1,
            // The server dropped it at the handshake timeout: the client sees its stream
            // end (or reset) no sooner.
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                    ) && took >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
                    "{runtime}: a flood client failed otherwise than by a handshake timeout \
                     after {took:?}: {e}"
                );
                timed_out += 1;
            }
        }
    }
    assert_eq!(served + timed_out, FLOOD, "{runtime}: no client lost");
    assert!(served > 0, "{runtime}: the flood is served");
    flooding.store(false, Ordering::SeqCst);
    for t in established {
        let echoes = t.join().expect("an established session echoed throughout");
        assert!(echoes > 0);
    }
    // Afterwards a new client is served as usual.
    assert_eq!(handshake_and_echo(&addr, &client).unwrap(), leaf.der);
    echo.stop();
}

#[test]
fn handshake_flood_beside_established_connections_smol() {
    let _light = crate::light();
    handshake_flood_beside_established_connections("smol");
}

#[test]
fn handshake_flood_beside_established_connections_tokio() {
    let _light = crate::light();
    handshake_flood_beside_established_connections("tokio");
}

// --- 9. certificate files replaced under a running server -------------------------------------------

const INTERVAL: Duration = Duration::from_millis(200);

/// Handshakes until the server presents `want`; fails after two intervals (plus slack for
/// a loaded machine).
fn served_within_two_intervals(addr: &str, client: &Arc<ClientConfig>, want: &Leaf, what: &str) {
    let bound = INTERVAL * 2 + Duration::from_secs(1);
    let started = Instant::now();
    loop {
        if handshake_and_echo(addr, client).unwrap() == want.der {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "{what}: the new certificate was not served within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tls_watch_reloads_replaced_files(runtime: &str) {
    let dir = TempDir::new("ops", &format!("watch-{runtime}"));
    let pki = Pki::new("operations test CA");
    let leaves: Vec<Leaf> = (0..5).map(|_| pki.leaf(&["localhost"])).collect();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &leaves[0].cert_pem).unwrap();
    std::fs::write(&key, &leaves[0].key_pem).unwrap();
    let mut echo = Echo::spawn(
        None,
        &[
            "--addr",
            "127.0.0.1:0",
            "--runtime",
            runtime,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-watch",
            "200ms",
        ],
    );
    let addr = echo.addr();
    let client = client(&pki);
    let generation = {
        let ders: Vec<CertificateDer<'static>> = leaves.iter().map(|l| l.der.clone()).collect();
        move |der: &CertificateDer<'static>| {
            ders.iter()
                .position(|d| d == der)
                .expect("a certificate the test never served")
        }
    };
    assert_eq!(generation(&handshake_and_echo(&addr, &client).unwrap()), 0);

    // A stream of handshakes throughout: none may fail, and the certificates come in order.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (stop, addr, client, generation) = (
            stop.clone(),
            addr.clone(),
            client.clone(),
            generation.clone(),
        );
        std::thread::spawn(move || {
            let mut presented = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match handshake_and_echo(&addr, &client) {
                    Ok(der) => presented.push(generation(&der)),
                    Err(e) => panic!("handshake {} failed: {e}", presented.len() + 1),
                }
            }
            presented
        })
    };

    // Atomic renames over both files.
    replace(&cert, &leaves[1].cert_pem);
    replace(&key, &leaves[1].key_pem);
    served_within_two_intervals(&addr, &client, &leaves[1], "renamed");

    // A key that does not match: reported on stderr, the last good pair stays.
    replace(&key, &leaves[2].key_pem);
    let line = echo.stderr_line("does not match");
    assert!(line.contains("key.pem"), "{line}");
    for _ in 0..3 {
        assert_eq!(generation(&handshake_and_echo(&addr, &client).unwrap()), 1);
    }

    // Kubernetes style: the files become links into `..data`, a link to a revision...
    revision(&dir, "..rev1", &leaves[3]);
    relink(&dir.join("..data"), "..rev1");
    relink(&cert, "..data/cert.pem");
    relink(&key, "..data/key.pem");
    served_within_two_intervals(&addr, &client, &leaves[3], "linked");
    // ...and the next revision is published by swapping `..data`.
    revision(&dir, "..rev2", &leaves[4]);
    relink(&dir.join("..data"), "..rev2");
    served_within_two_intervals(&addr, &client, &leaves[4], "swapped");

    stop.store(true, Ordering::SeqCst);
    let presented = stream.join().expect("no handshake failed");
    assert!(presented.len() >= 5, "{presented:?}");
    assert!(presented.windows(2).all(|w| w[0] <= w[1]), "{presented:?}");
    assert!(!presented.contains(&2), "{presented:?}");
    echo.stop();
}

#[test]
fn tls_watch_reloads_replaced_files_smol() {
    let _light = crate::light();
    tls_watch_reloads_replaced_files("smol");
}

#[test]
fn tls_watch_reloads_replaced_files_tokio() {
    let _light = crate::light();
    tls_watch_reloads_replaced_files("tokio");
}
