//! The floor berth is measured against: a bare async-net + async-executor echo loop with
//! the echo example's `--addr`, `--threads`, `--tls-cert` and `--tls-key` flags. No limits,
//! no idle reaping, no shutdown: just accept, spawn, (handshake,) copy.
//!
//! `cargo bench --bench bare_smol -- --addr 127.0.0.1:7001 --threads 1`

use std::io::Write as _;
use std::sync::Arc;

use clap::Parser;

mod common;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: String,
    #[arg(long)]
    threads: Option<usize>,
    /// Serve TLS (futures-rustls, ring) with this certificate chain...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// ...and this key.
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// Ignored: `cargo bench` passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let tls = args.tls_cert.as_ref().map(|cert| {
        futures_rustls::TlsAcceptor::from(common::tls_server_config(
            cert,
            args.tls_key.as_ref().unwrap(),
        ))
    });
    let ex = Arc::new(async_executor::Executor::new());
    for _ in 1..threads {
        let ex = ex.clone();
        std::thread::spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())));
    }
    async_io::block_on(ex.run(async {
        let listener = async_net::TcpListener::bind(args.addr.as_str())
            .await
            .expect("bind");
        println!("listening on {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tls = tls.clone();
            ex.spawn(async move {
                match tls {
                    None => echo(stream).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            echo(stream).await;
                        }
                    }
                }
            })
            .detach();
        }
    }));
}

async fn echo(mut stream: impl futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
            break;
        }
    }
}
