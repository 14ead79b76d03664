//! The echo server: berth's main example and the server every benchmark drives.
//!
//! ```text
//! echo [--addr 127.0.0.1:7000] [--threads N] [--tls-cert CERT.pem --tls-key KEY.pem]
//!      [--client-ca CA.pem] [--idle-timeout 30s] [--handshake-timeout 10s]
//!      [--drain-timeout 10s] [--max-connections N]
//! ```
//!
//! Prints `listening on ADDR` once bound, echoes every byte back, and on SIGTERM or SIGINT
//! shuts down gracefully (each connection stops at the end of its current chunk), prints a
//! one-line summary and exits 0. Bad flags print one error line and exit non-zero.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_signal::{Signal, Signals};
use berth::{Config, Conn, Server};
use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};

/// berth's echo server.
#[derive(Parser, Debug)]
#[command(name = "echo", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
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
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
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
    if args.tls_cert.is_some() || args.client_ca.is_some() {
        return Err("TLS is not supported yet: --tls-cert, --tls-key and --client-ca are reserved for the TLS release".into());
    }
    let _ = args.handshake_timeout; // only meaningful with TLS

    let config = Config {
        address: args.addr,
        idle_timeout: args.idle_timeout,
        drain_timeout: args.drain_timeout,
        max_connections: args.max_connections,
        ..Config::default()
    };
    // Register signal handlers before binding, so a signal right after "listening on" is
    // never lost.
    let mut signals = Signals::new([Signal::Term, Signal::Int])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let executor = Arc::new(async_executor::Executor::new());
    for n in 0..threads {
        let ex = executor.clone();
        std::thread::Builder::new()
            .name(format!("echo-{n}"))
            .spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())))
            .map_err(|e| format!("cannot start executor thread: {e}"))?;
    }

    let server = Server::builder(config)
        .runtime(berth::runtime::Smol::with_executor(executor))
        .bind()
        .map_err(|e| e.to_string())?;
    // Attached after bind, whose error is printed below as the one error line.
    server.handle().on_error(|e| eprintln!("echo: {e}"));
    let handle = server.serve(echo);

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", handle.local_addr())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);

    async_io::block_on(async {
        let signal = async {
            signals.next().await;
        };
        // The server only stops by a signal here, but if it ever stops by itself, exit too.
        signal.or(handle.stopped()).await;
        let summary = match handle.shutdown(args.drain_timeout).await {
            Ok(report) => format!(
                "shutdown complete: {} connection(s) drained, 0 forced",
                report.drained
            ),
            Err(berth::Error::ShutdownTimeout {
                forced, drained, ..
            }) => format!(
                "shutdown complete: {drained} connection(s) drained, {forced} forced after {:?}",
                args.drain_timeout
            ),
            Err(e) => format!("shutdown failed: {e}"),
        };
        println!("{summary}");
    });
    Ok(())
}

/// Echoes until the peer closes, I/O fails, or the server drains (after the chunk in hand).
async fn echo(mut conn: Conn) {
    let mut draining = conn.draining();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = async { Some(conn.read(&mut buf).await) };
        let drained = async {
            (&mut draining).await;
            None
        };
        let n = match read.or(drained).await {
            Some(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if conn.write_all(&buf[..n]).await.is_err() || conn.is_draining() {
            return;
        }
    }
}
