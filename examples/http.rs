//! An HTTP/1.1 and HTTP/2 server: hyper on berth, on smol or tokio.
//!
//! ```text
//! http [--addr ADDR]... [--runtime smol|tokio] [--threads N]
//!      [--tls-cert C --tls-key K | --self-signed DIR] [--idle-timeout D] [--header-timeout D]
//!      [--drain-timeout D] [--max-connections N]
//! ```
//!
//! Routes: `GET /` answers `hello`; `GET /slow?ms=N` waits N ms on the runtime's timer, then
//! answers `slow`; `POST /echo` answers with the request body; anything else is a 404.
//! HTTP/2 by prior knowledge on plain TCP, by ALPN over TLS.
//!
//! Prints `listening on ADDR` per listener. SIGTERM or SIGINT drain (requests in flight
//! complete; keep-alive clients are told `Connection: close`, HTTP/2 clients get GOAWAY),
//! print a line starting `shutdown complete` and exit 0. SIGHUP upgrades to a new process
//! running the same program, as the echo example does.
//!
//! ```text
//! cargo run --release --example http -- --addr 127.0.0.1:8080
//! curl -s http://127.0.0.1:8080/ ; curl -s --http2-prior-knowledge http://127.0.0.1:8080/
//! ```

use std::convert::Infallible;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth::http::{ConnInfo, Http};
use berth::runtime::Runtime;
use berth::tls::TlsConfig;
use berth::{Builder, Config};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

#[path = "common/self_signed.rs"]
mod self_signed;

/// berth's HTTP example server.
#[derive(Parser, Debug)]
#[command(name = "http", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port); repeatable, one listener each
    /// (default 127.0.0.1:8080).
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
    /// Serve TLS with a throwaway CA and localhost certificate kept in DIR (created if
    /// missing); trust DIR/ca.pem in clients.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key"])]
    self_signed: Option<PathBuf>,
    /// Close keep-alive connections idle this long between requests (e.g. 30s, 500ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Close a connection whose request head takes longer than this to arrive.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    header_timeout: Duration,
    /// On SIGTERM/SIGINT, wait this long for requests in flight before force-closing.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain_timeout: Duration,
    /// Accept at most this many connections at once.
    #[arg(long)]
    max_connections: Option<usize>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RuntimeKind {
    Smol,
    Tokio,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let files = match (&args.self_signed, &args.tls_cert, &args.tls_key) {
        (Some(dir), _, _) => Some(self_signed::create(dir, "http")?),
        (None, Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    let tls = files.map(|(cert, key)| {
        let mut tls = TlsConfig::from_pem_files(cert, key);
        tls.alpn = vec!["h2".into(), "http/1.1".into()];
        tls
    });
    let mut addrs = args.addr.clone();
    if addrs.is_empty() {
        addrs.push("127.0.0.1:8080".into());
    }
    let mut config = Config::new(addrs.remove(0));
    config.tls = tls.clone();
    config.listeners = addrs
        .into_iter()
        .map(|addr| {
            let mut listener = berth::ListenerConfig::tcp(addr);
            listener.tls = tls.clone();
            listener
        })
        .collect();
    config.idle_timeout = args.idle_timeout;
    config.drain_timeout = args.drain_timeout;
    config.max_connections = args.max_connections;
    // Installed before binding, so a signal right after "listening on" is never lost.
    let signals = berth::signal::Signals::with_hangup().map_err(|e| e.to_string())?;

    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let builder = Builder::new(config);
    // The main thread is one of the runtime's threads (it runs `handle.run` below): with
    // `--threads 1` on tokio the process has no other thread at all.
    let (server, runtime) = match args.runtime {
        RuntimeKind::Smol => {
            let executor = Arc::new(async_executor::Executor::new());
            for n in 1..threads {
                let ex = executor.clone();
                std::thread::Builder::new()
                    .name(format!("http-{n}"))
                    .spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())))
                    .map_err(|e| format!("cannot start executor thread: {e}"))?;
            }
            let server = builder
                .runtime(berth::runtime::Smol::with_executor(executor.clone()))
                .bind();
            (server, MainThread::Smol(executor))
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
            let server = builder
                .runtime(berth::runtime::Tokio::from_handle(runtime.handle().clone()))
                .bind();
            (server, MainThread::Tokio(runtime))
        }
    };
    let server = server.map_err(|e| e.to_string())?;
    // Attached after bind, whose error is printed once, as the one error line.
    server.handle().on_error(|e| eprintln!("http: {e}"));

    let mut stdout = std::io::stdout().lock();
    for (_, addr) in server.listeners() {
        writeln!(stdout, "listening on {addr}").map_err(|e| format!("cannot write: {e}"))?;
    }
    stdout
        .flush()
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);

    // One service per connection, holding its runtime (for /slow's timer).
    let http = Http::per_connection(|info: &Arc<ConnInfo>| {
        let rt = info.runtime().clone();
        hyper::service::service_fn(move |req| route(req, rt.clone()))
    })
    .header_timeout(Some(args.header_timeout));
    let handle = server.serve(http);
    handle.on_server_event(|event| {
        if let berth::ServerEvent::Upgraded { pid } = event {
            println!("upgrade: process {pid} serves now; draining this one");
        }
    });
    // SIGTERM/SIGINT drain, SIGHUP upgrades (a failure is printed by the error hook).
    let summary = match runtime.block_on(handle.run(&signals)) {
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

/// The runtime, as the main thread takes part in it.
enum MainThread {
    Smol(Arc<async_executor::Executor<'static>>),
    Tokio(tokio::runtime::Runtime),
}

impl MainThread {
    /// Runs `future` to completion on this thread, serving the runtime's tasks meanwhile.
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        match self {
            MainThread::Smol(executor) => async_io::block_on(executor.run(future)),
            MainThread::Tokio(runtime) => runtime.block_on(future),
        }
    }
}

type Reply = Response<Full<Bytes>>;

async fn route(req: Request<Incoming>, rt: Arc<dyn Runtime>) -> Result<Reply, Infallible> {
    let reply = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => text(StatusCode::OK, "hello\n"),
        (&Method::GET, "/slow") => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|ms| ms.parse::<u64>().ok());
            match ms {
                Some(ms) => {
                    // The runtime's timer: tokio's, smol's, or simulated time.
                    rt.sleep(Duration::from_millis(ms)).await;
                    text(StatusCode::OK, "slow\n")
                }
                None => text(StatusCode::BAD_REQUEST, "usage: /slow?ms=N\n"),
            }
        }
        (&Method::POST, "/echo") => match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(body.to_bytes())),
            Err(_) => text(StatusCode::BAD_REQUEST, "cannot read the body\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(reply)
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    reply
}
