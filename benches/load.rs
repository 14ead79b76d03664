//! Load generator for the echo servers (berth's example and the peers in `benches/`).
//!
//! ```text
//! cargo bench --bench load -- echo --addr 127.0.0.1:7000 --conns 50 --size 64 --secs 5
//! cargo bench --bench load -- idle --addr 127.0.0.1:7000 --conns 10000 --pid SERVER_PID
//! ```
//!
//! `echo`: closed-loop ping-pong on N connections; every reply is byte-checked. Prints
//! requests/s and latency percentiles, plus the server's CPU time per request when `--pid`
//! is given (read from /proc, so it is the server's own cost, not the client's).
//! `connect`: N workers each loop connect (+ full TLS handshake, no resumption), one echo,
//! close; prints connections/s. With `--resume`, each worker keeps its own TLS session
//! cache, so after its first connection every handshake resumes (TLS 1.3 tickets); the
//! line then also says how many resumed (see benches/resumption.sh).
//! With `--tls-ca CA.pem`, `echo` and `connect` speak TLS (server name "localhost").
//! `idle`: opens N connections (spread over 127.0.0.x source addresses), confirms each with
//! one echo, then reports the server's RSS growth per connection.
//! `fresh`: one fresh client at a time, in a loop: connect, one echo, close; prints the
//! latency percentiles of that whole exchange (see benches/sweep.sh).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Closed-loop echo ping-pong.
    Echo {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 50)]
        conns: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Server pid, to report its CPU time per request.
        #[arg(long)]
        pid: Option<u32>,
        /// Speak TLS, trusting this CA.
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        #[arg(long, hide = true)]
        bench: bool,
    },
    /// Connect, (full TLS handshake,) one echo, close; in a loop on N workers.
    Connect {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 50)]
        conns: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// Count failed connections (refused, timed-out handshakes) instead of stopping at
        /// the first (for floods).
        #[arg(long)]
        keep_going: bool,
        /// Resume TLS sessions (a session cache per worker) instead of full handshakes.
        #[arg(long, requires = "tls_ca")]
        resume: bool,
        #[arg(long, hide = true)]
        bench: bool,
    },
    /// Summarize result lines (from benches/compare.sh) as a markdown table and JSON.
    Report {
        /// The results file.
        input: std::path::PathBuf,
        /// Where to write the JSON summary.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        #[arg(long, hide = true)]
        bench: bool,
    },
    /// One fresh client at a time: connect, one echo, close; latency percentiles.
    Fresh {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        #[arg(long, hide = true)]
        bench: bool,
    },
    /// Open and hold idle connections; report the server's RSS per connection.
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Server pid, to read its RSS.
        #[arg(long)]
        pid: u32,
        /// Once every connection is confirmed, print `held conns=N` and keep them open
        /// until standard input closes (for runs that spread connections over several
        /// load processes, see benches/hold.sh).
        #[arg(long)]
        hold: bool,
        /// Then send the server SIGTERM and time its graceful shutdown: until every
        /// client has read end of file (clients close when they do), and until the server
        /// process has exited.
        #[arg(long)]
        shutdown: bool,
        #[arg(long, hide = true)]
        bench: bool,
    },
}

/// Server CPU time (user + system) in microseconds, from /proc/PID/stat.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks * 1_000_000 / 100 // USER_HZ is 100 on Linux
}

/// Server resident set size in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn main() {
    match Args::parse().mode {
        Mode::Echo {
            addr,
            conns,
            size,
            secs,
            pid,
            tls_ca,
            ..
        } => echo(
            addr,
            conns,
            size,
            Duration::from_secs_f64(secs),
            pid,
            tls(tls_ca),
        ),
        Mode::Connect {
            addr,
            conns,
            secs,
            pid,
            tls_ca,
            resume,
            ..
        } if resume => resumed_rate(
            addr,
            conns,
            Duration::from_secs_f64(secs),
            pid,
            tls_ca.expect("--resume requires --tls-ca"),
        ),
        Mode::Connect {
            addr,
            conns,
            secs,
            pid,
            tls_ca,
            keep_going,
            ..
        } => connect_rate(
            addr,
            conns,
            Duration::from_secs_f64(secs),
            pid,
            tls(tls_ca),
            keep_going,
        ),
        Mode::Idle {
            addr,
            conns,
            pid,
            hold,
            shutdown,
            ..
        } => idle(addr, conns, pid, hold, shutdown),
        Mode::Report { input, json, .. } => report(&input, json.as_deref()),
        Mode::Fresh { addr, secs, .. } => fresh(addr, Duration::from_secs_f64(secs)),
    }
}

trait Io: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin {}
impl<T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> Io for T {}

/// A TLS client without session resumption: every connection is a full handshake.
fn tls(ca: Option<std::path::PathBuf>) -> Option<futures_rustls::TlsConnector> {
    let ca = ca?;
    let mut config = tls_config(&ca);
    config.resumption = rustls::client::Resumption::disabled();
    Some(futures_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// A TLS 1.3 client trusting `ca`, with rustls's default (in-memory) session cache.
fn tls_config(ca: &std::path::Path) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// `connect --resume`: like [`connect_rate`] over TLS 1.3, each worker with a session cache
/// of its own (so it always holds a fresh ticket: rustls clients use each one once).
fn resumed_rate(
    addr: SocketAddr,
    workers: usize,
    secs: Duration,
    pid: Option<u32>,
    ca: std::path::PathBuf,
) {
    let ex = async_executor::LocalExecutor::new();
    let (done, resumed, elapsed, cpu) = async_io::block_on(ex.run(async {
        let connectors: Vec<_> = (0..workers)
            .map(|_| futures_rustls::TlsConnector::from(std::sync::Arc::new(tls_config(&ca))))
            .collect();
        // One full handshake each first, so the timed loop measures resumptions only.
        for connector in &connectors {
            once_resuming(addr, connector).await;
        }
        let cpu0 = pid.map(cpu_us);
        let start = Instant::now();
        let deadline = start + secs;
        let tasks: Vec<_> = connectors
            .into_iter()
            .map(|connector| {
                ex.spawn(async move {
                    let (mut n, mut resumed) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        n += 1;
                        resumed += u64::from(once_resuming(addr, &connector).await);
                    }
                    (n, resumed)
                })
            })
            .collect();
        let (mut done, mut resumed) = (0, 0);
        for t in tasks {
            let (n, r) = t.await;
            done += n;
            resumed += r;
        }
        let elapsed = start.elapsed();
        (
            done,
            resumed,
            elapsed,
            pid.map(|p| cpu_us(p) - cpu0.unwrap()),
        )
    }));
    print!(
        "connect workers={workers} tls=true resume=true connections={done} resumed={resumed} conn/s={:.0}",
        done as f64 / elapsed.as_secs_f64()
    );
    if let Some(cpu) = cpu {
        print!(" server_cpu_us_per_conn={:.1}", cpu as f64 / done as f64);
    }
    println!();
}

/// Connect, handshake (resuming if the connector holds a session), echo, close; whether
/// the handshake resumed.
async fn once_resuming(addr: SocketAddr, connector: &futures_rustls::TlsConnector) -> bool {
    let s = async_net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, s).await.expect("TLS handshake");
    let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    s.write_all(b"ping").await.expect("write");
    s.flush().await.expect("flush");
    let mut back = [0u8; 4];
    // The reply comes after the server's new tickets: the next connection has one.
    s.read_exact(&mut back).await.expect("read");
    assert_eq!(&back, b"ping");
    let _ = s.close().await;
    resumed
}

/// One connect (+ handshake), echo, close, failing instead of panicking.
async fn try_once(
    addr: SocketAddr,
    tls: &Option<futures_rustls::TlsConnector>,
) -> std::io::Result<()> {
    let s = async_net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut s: Box<dyn Io> = match tls {
        None => Box::new(s),
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            Box::new(connector.connect(name, s).await?)
        }
    };
    s.write_all(b"ping").await?;
    s.flush().await?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await?;
    let _ = s.close().await;
    Ok(())
}

async fn open(addr: SocketAddr, tls: &Option<futures_rustls::TlsConnector>) -> Box<dyn Io> {
    let s = async_net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    match tls {
        None => Box::new(s),
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            Box::new(connector.connect(name, s).await.expect("TLS handshake"))
        }
    }
}

fn connect_rate(
    addr: SocketAddr,
    workers: usize,
    secs: Duration,
    pid: Option<u32>,
    tls: Option<futures_rustls::TlsConnector>,
    keep_going: bool,
) {
    let failed = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let ex = async_executor::LocalExecutor::new();
    let (done, elapsed, cpu) = async_io::block_on(ex.run(async {
        let cpu0 = pid.map(cpu_us);
        let start = Instant::now();
        let deadline = start + secs;
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let tls = tls.clone();
                let failed = failed.clone();
                ex.spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        if keep_going {
                            match try_once(addr, &tls).await {
                                Ok(()) => n += 1,
                                Err(_) => failed.set(failed.get() + 1),
                            }
                            continue;
                        }
                        let mut s = open(addr, &tls).await;
                        s.write_all(b"ping").await.expect("write");
                        s.flush().await.expect("flush");
                        let mut back = [0u8; 4];
                        s.read_exact(&mut back).await.expect("read");
                        assert_eq!(&back, b"ping");
                        let _ = s.close().await;
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut done = 0;
        for t in tasks {
            done += t.await;
        }
        let elapsed = start.elapsed();
        (done, elapsed, pid.map(|p| cpu_us(p) - cpu0.unwrap()))
    }));
    print!(
        "connect workers={workers} tls={} connections={done} conn/s={:.0}",
        tls.is_some(),
        done as f64 / elapsed.as_secs_f64()
    );
    if keep_going {
        print!(" failed={}", failed.get());
    }
    if let Some(cpu) = cpu {
        print!(" server_cpu_us_per_conn={:.1}", cpu as f64 / done as f64);
    }
    println!();
}

fn echo(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    secs: Duration,
    pid: Option<u32>,
    tls: Option<futures_rustls::TlsConnector>,
) {
    let ex = async_executor::LocalExecutor::new();
    let (latencies, elapsed, cpu) = async_io::block_on(ex.run(async {
        let mut streams = Vec::new();
        for _ in 0..conns {
            streams.push(open(addr, &tls).await);
        }
        let cpu0 = pid.map(cpu_us);
        let start = Instant::now();
        let deadline = start + secs;
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                ex.spawn(async move {
                    let msg: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
                    let mut back = vec![0u8; size];
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        s.write_all(&msg).await.expect("write");
                        s.flush().await.expect("flush");
                        s.read_exact(&mut back).await.expect("read");
                        assert!(back == msg, "echo mismatch");
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await);
        }
        let elapsed = start.elapsed();
        let cpu = pid.map(|p| cpu_us(p) - cpu0.unwrap());
        (all, elapsed, cpu)
    }));
    let mut lat = latencies;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    let rps = lat.len() as f64 / elapsed.as_secs_f64();
    print!(
        "echo conns={conns} size={size} requests={} req/s={rps:.0} mib/s={:.1} p50_us={:.1} p99_us={:.1} p999_us={:.1}",
        lat.len(),
        rps * size as f64 / (1024.0 * 1024.0),
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
    if let Some(cpu) = cpu {
        print!(
            " server_cpu_us_per_req={:.2}",
            cpu as f64 / lat.len() as f64
        );
    }
    println!();
}

/// Connect + one 64-byte echo + close, one client at a time, from source addresses
/// 127.255.x.y in turn (the client closes first, so each exchange leaves a port in TIME-WAIT:
/// 250 addresses give each one time to leave it). Prints percentiles of the whole exchange.
fn fresh(addr: SocketAddr, secs: Duration) {
    let mut lat = async_io::block_on(async {
        let deadline = Instant::now() + secs;
        let mut lat = Vec::new();
        let msg = [7u8; 64];
        let mut back = [0u8; 64];
        let mut i = 0u32;
        while Instant::now() < deadline {
            let src = IpAddr::V4(Ipv4Addr::new(
                127,
                255,
                (i / 250 % 250) as u8,
                (i % 250 + 1) as u8,
            ));
            i = i.wrapping_add(1);
            let started = Instant::now();
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.bind(&SocketAddr::new(src, 0).into())
                .expect("bind source");
            sock.set_nonblocking(true).unwrap();
            sock.set_tcp_nodelay(true).unwrap();
            let _ = sock.connect(&addr.into());
            let std: std::net::TcpStream = sock.into();
            let s = async_io::Async::new(std).expect("register");
            s.writable().await.expect("connect");
            let mut s = async_net::TcpStream::from(s);
            s.write_all(&msg).await.expect("write");
            s.read_exact(&mut back).await.expect("echo");
            assert_eq!(back, msg);
            drop(s);
            lat.push(started.elapsed().as_nanos() as u64);
        }
        lat
    });
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "fresh connections={} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
        lat.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
}

fn idle(addr: SocketAddr, conns: usize, pid: u32, hold: bool, shutdown: bool) {
    let before = rss_kib(pid);
    let base = 1 + std::process::id() % 200;
    let ex = async_executor::LocalExecutor::new();
    let held = async_io::block_on(ex.run(async {
        let mut held = Vec::with_capacity(conns);
        for i in 0..conns {
            // Loopback is a /8: give every 250 connections a source address of their own,
            // in a block that changes from run to run, so neither the ephemeral port range
            // nor ports left in TIME-WAIT by an earlier run get in the way.
            let k = i as u32;
            let src = IpAddr::V4(Ipv4Addr::new(
                127,
                (base + k / 62_500) as u8,
                (k / 250 % 250) as u8,
                (k % 250 + 1) as u8,
            ));
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.bind(&SocketAddr::new(src, 0).into())
                .expect("bind source");
            sock.set_nonblocking(true).unwrap();
            let _ = sock.connect(&addr.into());
            let std: std::net::TcpStream = sock.into();
            let s = async_io::Async::new(std).expect("register");
            s.writable().await.expect("connect");
            let mut s = async_net::TcpStream::from(s);
            s.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("confirm echo");
            held.push(s);
        }
        held
    }));
    if hold {
        println!("held conns={}", held.len());
        std::io::Write::flush(&mut std::io::stdout()).expect("stdout");
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    }
    // Let the server settle its buffers before reading RSS.
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    // Still responsive with all of them held: one fresh connection's echo.
    let responsive_us = async_io::block_on(async {
        let started = Instant::now();
        let mut s = async_net::TcpStream::connect(addr)
            .await
            .expect("connect while holding");
        s.write_all(b"still there?").await.expect("write");
        let mut back = [0u8; 12];
        s.read_exact(&mut back).await.expect("echo while holding");
        started.elapsed().as_micros()
    });
    // What the server spends while every connection is idle (no idle timeout: nothing).
    let window = Duration::from_secs(2);
    let cpu_before = cpu_us(pid);
    std::thread::sleep(window);
    let idle_cpu_pct = (cpu_us(pid) - cpu_before) as f64 / window.as_micros() as f64 * 100.0;
    print!(
        "idle conns={} rss_before_kib={before} rss_after_kib={after} kib_per_conn={:.2} fresh_echo_us={responsive_us} idle_cpu_pct={idle_cpu_pct:.2}",
        held.len(),
        (after.saturating_sub(before)) as f64 / held.len() as f64
    );
    if shutdown {
        let (drain, exit) = shutdown_time(pid, held);
        print!(
            " drain_ms={:.1} exit_ms={:.1}",
            drain.as_secs_f64() * 1e3,
            exit.as_secs_f64() * 1e3
        );
    }
    println!();
}

/// SIGTERM to the server, then: how long until every held connection reads end of file
/// (each client closes its side as soon as it does, as a well-behaved client would), and
/// how long until the server process has exited.
fn shutdown_time(pid: u32, held: Vec<async_net::TcpStream>) -> (Duration, Duration) {
    let started = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -TERM {pid} failed");
    let ex = async_executor::LocalExecutor::new();
    async_io::block_on(ex.run(async {
        let readers: Vec<_> = held
            .into_iter()
            .map(|mut s| {
                ex.spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(1..) = s.read(&mut buf).await {}
                })
            })
            .collect();
        for reader in readers {
            reader.await;
        }
    }));
    let drained = started.elapsed();
    // Exited: gone, or a zombie its parent (the benchmark script) has not reaped yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let exited = state
            .as_deref()
            .is_none_or(|s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'));
        if exited {
            break;
        }
        assert!(Instant::now() < deadline, "server {pid} did not exit");
        std::thread::sleep(Duration::from_millis(1));
    }
    (drained, started.elapsed())
}

/// The headline metric of a result line, and whether bigger is better.
fn headline(fields: &std::collections::BTreeMap<String, f64>) -> Option<(&'static str, bool)> {
    ["req/s", "conn/s", "drain_ms", "kib_per_conn"]
        .into_iter()
        .find(|k| fields.contains_key(*k))
        .map(|k| (k, matches!(k, "req/s" | "conn/s")))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Lines look like `SERVER SCENARIO rep=N MODE key=value ...`.
fn report(input: &std::path::Path, json: Option<&std::path::Path>) {
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(input).expect("read results");
    let mut order: Vec<String> = Vec::new();
    // scenario -> server -> metric -> samples
    let mut data: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<f64>>>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(server), Some(scenario)) = (words.next(), words.next()) else {
            continue;
        };
        let fields: BTreeMap<String, f64> = words
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
            .collect();
        if headline(&fields).is_none() {
            continue;
        }
        if !order.contains(&scenario.to_owned()) {
            order.push(scenario.to_owned());
        }
        let metrics = data
            .entry(scenario.to_owned())
            .or_default()
            .entry(server.to_owned())
            .or_default();
        for (k, v) in fields {
            metrics.entry(k).or_default().push(v);
        }
    }
    let servers = ["berth", "bare", "tokio"];
    println!(
        "| scenario | metric | berth | bare smol | tokio | berth / bare | berth / tokio | server CPU µs per op (berth / bare / tokio) | p99 µs (berth / bare / tokio) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut summary = serde_json::Map::new();
    for scenario in &order {
        let by_server = &data[scenario];
        let med = |server: &str, metric: &str| {
            by_server
                .get(server)
                .and_then(|m| m.get(metric))
                .map(|v| median(v.clone()))
        };
        let any = by_server.values().next().unwrap();
        let first: BTreeMap<String, f64> = any.iter().map(|(k, v)| (k.clone(), v[0])).collect();
        let (metric, bigger_better) = headline(&first).unwrap();
        let cpu_key = ["server_cpu_us_per_req", "server_cpu_us_per_conn"]
            .into_iter()
            .find(|k| any.contains_key(*k));
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let ratio = |other: &str| match (med("berth", metric), med(other, metric)) {
            (Some(b), Some(o)) if o > 0.0 => {
                let r = b / o;
                format!(
                    "{r:.2}x{}",
                    if bigger_better {
                        ""
                    } else {
                        " (lower is better)"
                    }
                )
            }
            _ => "-".to_owned(),
        };
        let triple = |key: Option<&str>| {
            key.map_or("-".to_owned(), |k| {
                servers.map(|s| fmt(med(s, k))).join(" / ")
            })
        };
        println!(
            "| {scenario} | {metric} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(med("berth", metric)),
            fmt(med("bare", metric)),
            fmt(med("tokio", metric)),
            ratio("bare"),
            ratio("tokio"),
            triple(cpu_key),
            triple(any.contains_key("p99_us").then_some("p99_us")),
        );
        let mut entry = serde_json::Map::new();
        for (server, metrics) in by_server {
            let m: serde_json::Map<String, serde_json::Value> = metrics
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(median(v.clone()))))
                .collect();
            entry.insert(server.clone(), serde_json::Value::Object(m));
        }
        summary.insert(scenario.clone(), serde_json::Value::Object(entry));
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&summary).unwrap()).expect("write JSON");
    }
}
