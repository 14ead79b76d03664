//! The tokio peer: a plain tokio `TcpListener` (+ tokio-rustls) echo loop, what most Rust
//! users would write by hand, with the echo example's `--addr`, `--threads`, `--tls-cert`
//! and `--tls-key` flags. A 16 KiB buffer per connection, like most such loops.
//!
//! `cargo bench --bench tokio_peer -- --addr 127.0.0.1:7002 --threads 1`

use std::io::Write as _;

use clap::Parser;

mod common;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7002")]
    addr: String,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
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
        tokio_rustls::TlsAcceptor::from(common::tls_server_config(
            cert,
            args.tls_key.as_ref().unwrap(),
        ))
    });
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
    .enable_all()
    .build()
    .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
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
            tokio::spawn(async move {
                match tls {
                    None => echo(stream).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            echo(stream).await;
                        }
                    }
                }
            });
        }
    });
}

async fn echo(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
            break;
        }
    }
}
