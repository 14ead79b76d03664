//! The echo server: berth's main example and the server every benchmark drives.
//!
//! ```text
//! echo [--addr 127.0.0.1:7000]... [--threads N] [--runtime smol|tokio]
//!      [--tls-cert CERT.pem --tls-key KEY.pem] [--client-ca CA.pem] [--self-signed DIR]
//!      [--idle-timeout 30s] [--handshake-timeout 10s] [--drain-timeout 10s]
//!      [--max-connections N] [--reuse-port] [--metrics-addr ADDR]
//!      [--max-per-ip N] [--rate-per-ip R] [--burst N] [--allow CIDR]... [--deny CIDR]...
//!      [--proxy-protocol [--trusted-proxy CIDR]...]
//!      [--unix PATH [--unix-mode 660] [--unix-group GID]]
//!      [--evict-idle] [--max-handshakes N] [--tls-watch INTERVAL] [--lame-duck D]
//!      [--ticket-keys FILE]
//!      [--acme-domain NAME]... [--acme-directory URL] [--acme-ca PEM] [--acme-cache DIR]
//!      [--acme-contact EMAIL]... [--acme-renew-before D]
//! ```
//!
//! Prints `listening on ADDR` once bound, echoes every byte back, and on SIGTERM or SIGINT
//! shuts down gracefully (each connection stops at the end of its current chunk), prints a
//! one-line summary and exits 0. Bad flags print one error line and exit non-zero.
//!
//! `RUST_LOG=berth=debug` logs each connection's lifecycle to stderr (feature `tracing`).
//!
//! TLS in one command: `--self-signed DIR` writes a throwaway CA (`DIR/ca.pem`) and a
//! certificate for localhost/127.0.0.1 (`DIR/cert.pem`, `DIR/key.pem`), reusing them if they
//! exist, and serves TLS with them:
//!
//! ```text
//! cargo run --release --example echo -- --self-signed /tmp/berth-tls
//! openssl s_client -connect 127.0.0.1:7000 -CAfile /tmp/berth-tls/ca.pem -quiet
//! ```
//!
//! Certificates from Let's Encrypt (or any ACME directory) with `--acme-domain NAME`
//! (repeatable): the names must resolve to this machine and port 443 must reach the
//! listener, which answers the TLS-ALPN-01 challenge itself. The certificate and account key
//! are kept in `--acme-cache DIR`; each served, renewed or failed certificate prints a line
//! starting `acme: `.
//!
//! ```text
//! echo --addr 0.0.0.0:443 --acme-domain example.com --acme-domain www.example.com \
//!      --acme-cache /var/lib/echo/acme --acme-contact ops@example.com
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth::tls::acme::AcmeConfig;
use berth::tls::{ClientAuth, PemSource, TlsConfig};
use berth::{Builder, Config, Conn};
use clap::Parser;

#[path = "common/self_signed.rs"]
mod self_signed;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// berth's echo server.
#[derive(Parser, Debug)]
#[command(name = "echo", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port); repeatable, one listener each
    /// (default 127.0.0.1:7000 unless --unix is given).
    #[arg(long, value_name = "ADDR")]
    addr: Vec<String>,
    /// The async runtime berth runs on.
    #[arg(long, value_enum, default_value = "smol")]
    runtime: RuntimeKind,
    /// Executor threads (default: available cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) to require and verify client certificates.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Close connections idle for longer than this (e.g. 30s, 500ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Drop TLS clients that have not finished the handshake within this.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    handshake_timeout: Duration,
    /// On SIGTERM/SIGINT, wait this long for connections to finish before force-closing.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain_timeout: Duration,
    /// Accept at most this many connections at once.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Set SO_REUSEPORT, so several echo processes can share one port (the kernel spreads
    /// new connections over them).
    #[arg(long)]
    reuse_port: bool,
    /// Serve TLS with a throwaway CA and localhost certificate kept in DIR (created if
    /// missing); trust DIR/ca.pem in clients.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key"])]
    self_signed: Option<PathBuf>,
    /// At most N concurrent connections per client address (IPv6: per /64).
    #[arg(long, value_name = "N")]
    max_per_ip: Option<usize>,
    /// New connections per client address: RATE, RATE/s or RATE/m (e.g. 10/s, 30/m).
    #[arg(long, value_name = "RATE[/s]", value_parser = parse_rate)]
    rate_per_ip: Option<f64>,
    /// Burst allowed by --rate-per-ip (default: the per-second rate, at least 1).
    #[arg(long, value_name = "N", requires = "rate_per_ip")]
    burst: Option<u32>,
    /// Only these networks may connect (repeatable).
    #[arg(long, value_name = "CIDR")]
    allow: Vec<ipnet::IpNet>,
    /// These networks may not connect (repeatable; deny wins over allow).
    #[arg(long, value_name = "CIDR")]
    deny: Vec<ipnet::IpNet>,
    /// Serve Prometheus metrics over HTTP on this address (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Expect a PROXY protocol (v1 or v2) header from the trusted proxies (with --unix:
    /// from every peer of the socket).
    #[arg(long)]
    proxy_protocol: bool,
    /// A proxy allowed to send PROXY headers (repeatable; needs --proxy-protocol).
    #[arg(long, value_name = "CIDR", requires = "proxy_protocol")]
    trusted_proxy: Vec<ipnet::IpNet>,
    /// Listen on this Unix domain socket too (alone: instead of the default address). A
    /// stale socket file there is replaced; the file is removed at shutdown.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Permission bits of the --unix socket file, in octal (e.g. 660: owner and group).
    #[arg(long, value_name = "OCTAL", requires = "unix", value_parser = parse_mode)]
    unix_mode: Option<u32>,
    /// Numeric group id to give the --unix socket file.
    #[arg(long, value_name = "GID", requires = "unix")]
    unix_group: Option<u32>,
    /// At the descriptor limit or --max-connections, close the connection idle the longest
    /// (idle at least 1 s) to make room for a new client.
    #[arg(long)]
    evict_idle: bool,
    /// At most N TLS handshakes at once (the others wait, within --handshake-timeout).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize))]
    max_handshakes: Option<usize>,
    /// Reload the --tls-cert/--tls-key files when their contents change, looking this often
    /// (e.g. 1s).
    #[arg(long, value_name = "INTERVAL", value_parser = humantime::parse_duration, requires = "tls_cert")]
    tls_watch: Option<Duration>,
    /// TLS session ticket keys shared with other instances: one key per line, 96 hex digits
    /// (`openssl rand -hex 48`), the first issuing tickets, the others still accepted.
    /// Re-read every --tls-watch INTERVAL (replace the file to rotate). Without it, keys
    /// are random, rotated hourly, and handed on at every upgrade (SIGHUP).
    #[arg(long, value_name = "FILE")]
    ticket_keys: Option<PathBuf>,
    /// On SIGTERM/SIGINT, first serve on this long while /readyz says 503 (so load balancers
    /// stop sending clients), then drain; a second signal ends it early.
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    lame_duck: Option<Duration>,
    /// Get a certificate for NAME from an ACME directory (repeatable: one certificate for
    /// all the names) and serve TLS with it on the listeners, answering the TLS-ALPN-01
    /// challenge on them (the names must resolve here, port 443 must reach a listener).
    /// With --tls-cert, the files serve the other names.
    #[arg(long, value_name = "NAME")]
    acme_domain: Vec<String>,
    /// The ACME directory URL.
    #[arg(long, value_name = "URL", default_value = berth::tls::acme::LETS_ENCRYPT)]
    acme_directory: String,
    /// An extra root certificate (PEM) to trust for the directory's HTTPS (e.g. a test
    /// server's, such as pebble's).
    #[arg(long, value_name = "PEM", requires = "acme_domain")]
    acme_ca: Option<PathBuf>,
    /// Where the ACME account key and certificates are kept across restarts and upgrades.
    #[arg(long, value_name = "DIR", default_value = "acme-cache")]
    acme_cache: PathBuf,
    /// A contact e-mail address for the ACME account (repeatable).
    #[arg(long, value_name = "EMAIL", requires = "acme_domain")]
    acme_contact: Vec<String>,
    /// Renew the ACME certificate this long before it expires (at most a third of its
    /// lifetime; default 30 days).
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration, requires = "acme_domain")]
    acme_renew_before: Option<Duration>,
}

/// Which runtime adapter serves.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RuntimeKind {
    /// async-executor threads with async-io (berth's default adapter).
    Smol,
    /// tokio (a current-thread runtime for one thread, multi-threaded otherwise).
    Tokio,
}

/// `660` or `0o660`: file permission bits in octal.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal file mode such as 660")),
    }
}

/// `10`, `10/s` or `30/m`, as connections per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let (number, per) = match text.split_once('/') {
        Some((n, "s")) => (n, 1.0),
        Some((n, "m")) => (n, 60.0),
        Some((_, unit)) => return Err(format!("unknown unit {unit:?}: use /s or /m")),
        None => (text, 1.0),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n / per),
        _ => Err(format!("{number:?} is not a positive number")),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's message up to its usage section, joined.
            let text = e.to_string();
            let line = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("echo: {line} (try --help)");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("echo: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    // RUST_LOG=berth=debug logs every connection's lifecycle (to stderr: stdout carries
    // the "listening on" and summary lines).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    // The metrics port: bound here, or handed over by the process this one replaces (an
    // upgrade), which still holds it.
    // It answers /healthz and /readyz too, from the server's handle once there is one.
    let serving = Arc::new(std::sync::OnceLock::<berth::ServerHandle>::new());
    let metrics = match args.metrics_addr {
        Some(addr) => Some(metrics::serve(addr, serving.clone())?),
        None => None,
    };
    let files = match (&args.self_signed, &args.tls_cert, &args.tls_key) {
        (Some(dir), _, _) => Some(self_signed::create(dir, "echo")?),
        (None, Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    let acme = (!args.acme_domain.is_empty()).then(|| {
        let mut acme = AcmeConfig::new(args.acme_domain.clone(), args.acme_cache.clone());
        acme.directory = args.acme_directory.clone();
        acme.ca = args.acme_ca.clone().map(PemSource::Path);
        acme.contact = args
            .acme_contact
            .iter()
            .map(|email| match email.contains(':') {
                true => email.clone(),
                false => format!("mailto:{email}"),
            })
            .collect();
        if let Some(margin) = args.acme_renew_before {
            acme.renew_before = margin;
        }
        acme
    });
    let files = match (files, &acme) {
        (None, Some(_)) => Some(None),
        (files, _) => files.map(Some),
    };
    let tls = files.map(|files| {
        let mut tls = match files {
            Some((cert, key)) => TlsConfig::from_pem_files(cert, key),
            None => TlsConfig::default(),
        };
        tls.acme = acme.clone();
        tls.watch = args.tls_watch;
        tls.ticket_key_file = args.ticket_keys.clone();
        if let Some(ca) = &args.client_ca {
            tls.client_auth = ClientAuth::Required;
            tls.client_ca = Some(PemSource::Path(ca.clone()));
        }
        tls
    });
    if args.ticket_keys.is_some() && tls.is_none() {
        return Err(
            "--ticket-keys needs TLS: add --tls-cert and --tls-key (or --self-signed DIR)".into(),
        );
    }
    if args.client_ca.is_some() && tls.is_none() {
        return Err(
            "--client-ca needs TLS: add --tls-cert and --tls-key (or --self-signed DIR)".into(),
        );
    }

    let mut limits = berth::limits::Limits::default();
    limits.max_per_ip = args.max_per_ip;
    limits.rate_per_ip = args.rate_per_ip.map(|per_second| berth::limits::Rate {
        per_second,
        burst: args.burst.unwrap_or((per_second.ceil() as u32).max(1)),
    });
    limits.allow = args.allow.clone();
    limits.deny = args.deny.clone();
    let unix = args.unix.clone().map(|path| {
        let mut unix = berth::UnixConfig::new(path);
        unix.mode = args.unix_mode;
        unix.group = args.unix_group;
        unix
    });
    // One listener per --addr, then --unix; the first is the config's own.
    let mut addrs = args.addr.clone();
    if addrs.is_empty() && unix.is_none() {
        addrs.push("127.0.0.1:7000".into());
    }
    let mut listeners: Vec<berth::ListenerConfig> = addrs
        .into_iter()
        .map(berth::ListenerConfig::tcp)
        .chain(unix.map(berth::ListenerConfig::unix))
        .collect();
    // Names identify listeners across upgrades: berth names each after its address (a
    // repeated address gets `#2`, `#3`...), so the same arguments give the same names.
    let first = listeners.remove(0);
    let mut config = Config::new(first.address.clone().unwrap_or_default());
    config.unix = first.unix;
    for listener in &mut listeners {
        listener.tls = tls.clone();
    }
    config.listeners = listeners;
    config.tls = tls;
    config.limits = limits;
    config.proxy_protocol = args.proxy_protocol.then(|| {
        let mut proxy = berth::ProxyProtocol::new(args.trusted_proxy.clone());
        // On a Unix socket the proxy is whoever may connect to it.
        proxy.trust_unix_peers = args.unix.is_some();
        proxy
    });
    config.handshake_timeout = args.handshake_timeout;
    config.idle_timeout = args.idle_timeout;
    config.drain_timeout = args.drain_timeout;
    config.max_connections = args.max_connections;
    config.reuse_port = args.reuse_port;
    config.max_handshakes = args.max_handshakes;
    config.lame_duck = args.lame_duck;
    if args.evict_idle {
        config.overload.evict_idle_after = Some(Duration::from_secs(1));
    }
    // Installed before binding, so a signal right after "listening on" is never lost.
    let signals = berth::signal::Signals::with_hangup().map_err(|e| e.to_string())?;

    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    // On the builder, so that events of the first moments (an ACME certificate read from
    // the cache) are printed too.
    let builder = Builder::new(config).on_server_event(report);
    // `bind` serves config.address (or --unix), or the socket systemd passed, on the reactor
    // of the chosen runtime.
    let server = match args.runtime {
        RuntimeKind::Smol => {
            let executor = Arc::new(async_executor::Executor::new());
            for n in 0..threads {
                let ex = executor.clone();
                std::thread::Builder::new()
                    .name(format!("echo-{n}"))
                    .spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())))
                    .map_err(|e| format!("cannot start executor thread: {e}"))?;
            }
            builder
                .runtime(berth::runtime::Smol::with_executor(executor))
                .bind()
        }
        RuntimeKind::Tokio => {
            let runtime = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(threads);
                b
            }
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start tokio: {e}"))?;
            let handle = runtime.handle().clone();
            // A current-thread runtime runs where it is blocked on: give it a thread.
            std::thread::Builder::new()
                .name("echo-tokio".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .map_err(|e| format!("cannot start executor thread: {e}"))?;
            builder
                .runtime(berth::runtime::Tokio::from_handle(handle))
                .bind()
        }
    }
    .map_err(|e| e.to_string())?;
    // Attached after bind, whose error is printed once, as the one error line.
    server.handle().on_error(|e| eprintln!("echo: {e}"));

    // Printed before serving: in an upgrade, serving tells the old process to go on, which
    // prints `upgrade: process N`, and the new process's lines come first. A readiness
    // check right after them may still see "starting" for a moment.
    let mut stdout = std::io::stdout().lock();
    for (_, addr) in server.listeners() {
        writeln!(stdout, "listening on {addr}").map_err(|e| format!("cannot write: {e}"))?;
    }
    stdout
        .flush()
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    let handle = server.serve(echo);
    let _ = serving.set(handle.clone());

    if let Some(socket) = metrics {
        handle
            .hand_over_too("metrics", socket)
            .map_err(|e| e.to_string())?;
    }

    // SIGHUP: upgrade (start this program again, hand it the listeners, then drain here;
    // a failure goes to the error hook above and this process serves on). SIGTERM or
    // SIGINT: drain (each connection stops after its current chunk) within --drain-timeout.
    let stopped = futures_lite::future::block_on(handle.run(&signals));
    let summary = match stopped {
        // `run` counts connections forced at the end of --drain-timeout in its report.
        Ok(report) if report.forced > 0 => format!(
            "shutdown complete: {} connection(s) drained, {} forced after {:?}",
            report.drained, report.forced, args.drain_timeout
        ),
        Ok(report) => format!("shutdown complete: {report}"),
        Err(e) => format!("shutdown failed: {e}"),
    };
    println!("{summary}");
    Ok(())
}

/// Prints the server events the black-box tests and operators watch for: upgrades and ACME
/// certificates (one line each).
fn report(event: &berth::ServerEvent) {
    use berth::ServerEvent;
    let line = match event {
        ServerEvent::Upgraded { pid } => {
            format!("upgrade: process {pid} serves now; draining this one")
        }
        ServerEvent::AcmeCertificate {
            domains,
            origin,
            not_after,
            ..
        } => {
            let left = not_after
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            let left = match left {
                0..86_400 => format!("{left}s"),
                _ => format!("{} days", left / 86_400),
            };
            format!(
                "acme: certificate for {} {origin}, expires in {left}",
                domains.join(",")
            )
        }
        ServerEvent::AcmeFailed {
            domains,
            reason,
            retry_in,
            ..
        } => format!(
            "acme: failed for {}: {reason}; retrying in {}",
            domains.join(","),
            humantime::format_duration(Duration::from_millis(retry_in.as_millis() as u64))
        ),
        _ => return,
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Echoes until the peer closes, I/O fails, or the server drains (after the chunk in hand).
///
/// An idle connection holds no read buffer: it waits with `Conn::readable`, and borrows a
/// buffer from a per-thread pool only for the read and the write that follow.
async fn echo(mut conn: Conn) {
    loop {
        // Returns on data, and also when the server starts draining.
        if conn.readable().await.is_err() || conn.is_draining() {
            return;
        }
        let mut buf = buffers::take();
        let n = match conn.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => return buffers::give(buf),
        };
        let written = conn.write_all(&buf[..n]).await;
        buffers::give(buf);
        if written.is_err() || conn.is_draining() {
            return;
        }
    }
}

/// Prometheus metrics over HTTP (`GET /metrics`), served by a thread of its own from a
/// listening socket that an upgrade hands over with the server's.
mod metrics {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::OwnedFd;
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

    /// The server whose health and readiness the endpoints report.
    type Serving = Arc<OnceLock<berth::ServerHandle>>;

    /// Installs the recorder and serves it on `addr` (`GET /metrics`), with `GET /healthz`
    /// (200 while the process runs) and `GET /readyz` (200 while the server is ready, else
    /// 503 with the reasons); returns a duplicate of the socket, for the next upgrade.
    pub fn serve(addr: SocketAddr, serving: Serving) -> Result<OwnedFd, String> {
        let recorder = PrometheusBuilder::new()
            .install_recorder()
            .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
        let handed = berth::upgrade::take_socket("metrics")
            .map_err(|e| format!("cannot take over the metrics port: {e}"))?;
        let listener = match handed {
            Some(socket) => TcpListener::from(socket),
            None => TcpListener::bind(addr)
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?,
        };
        let socket = listener
            .try_clone()
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        let upkeep = recorder.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        });
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let _ = answer(client, &recorder, &serving);
            }
        });
        Ok(socket.into())
    }

    /// Reads one request (its head) and answers it.
    fn answer(
        mut client: TcpStream,
        recorder: &PrometheusHandle,
        serving: &Serving,
    ) -> std::io::Result<()> {
        client.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = client.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        let path = std::str::from_utf8(&head)
            .ok()
            .and_then(|head| head.split_whitespace().nth(1))
            .unwrap_or("/");
        let (status, kind, body) = match path {
            "/metrics" => ("200 OK", "text/plain; version=0.0.4", recorder.render()),
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
            "/readyz" => match serving.get().map(|h| h.not_ready_reasons()) {
                Some(reasons) if reasons.is_empty() => ("200 OK", "text/plain", "ready\n".into()),
                Some(reasons) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("not ready: {}\n", reasons.join(", ")),
                ),
                None => ("503 Service Unavailable", "text/plain", "starting\n".into()),
            },
            _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        };
        write!(
            client,
            "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

/// Per-thread pool of 16 KiB read buffers. A buffer taken on one executor thread may be
/// given back on another: it just moves pools.
mod buffers {
    use std::cell::RefCell;

    const SIZE: usize = 16 * 1024;
    const KEEP: usize = 256;

    thread_local! {
        static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Vec<u8> {
        POOL.with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0; SIZE])
    }

    pub fn give(buf: Vec<u8>) {
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < KEEP {
                pool.push(buf);
            }
        });
    }
}
