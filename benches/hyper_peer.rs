//! The hyper peer: bare hyper 1.x on tokio, what most Rust users would write by hand. A
//! plain tokio `TcpListener` accept loop, `TCP_NODELAY`, one task per connection served by
//! hyper-util's auto builder (HTTP/1.1, or HTTP/2 by prior knowledge) with tokio's executor
//! and timer. The HTTP example's routes (`GET /` → `hello`, `GET /slow?ms=N`, `POST /echo`,
//! 404) and its `--addr` and `--threads` flags; prints `listening on ADDR`.
//!
//! `cargo bench --bench hyper_peer -- --addr 127.0.0.1:8082 --threads 1`

use std::io::Write as _;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

#[path = "common/http_routes.rs"]
mod routes;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8082")]
    addr: String,
    #[arg(long)]
    threads: Option<usize>,
    /// Ignored: `cargo bench` passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                // With upgrades, as berth::http serves its connections.
                let _ = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        hyper::service::service_fn(|req| routes::route(req, tokio::time::sleep)),
                    )
                    .await;
            });
        }
    });
}
