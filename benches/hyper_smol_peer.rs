//! The smol hyper peer: bare hyper 1.x on smol, as a user would write it with smol-hyper
//! (smol-rs's glue: futures-io streams as hyper I/O, async-executor as hyper's executor,
//! async-io's timer). An async-io `TcpListener` accept loop, `TCP_NODELAY`, one task per
//! connection served by hyper-util's auto builder (HTTP/1.1, or HTTP/2 by prior knowledge).
//! The HTTP example's routes, its `--addr` and `--threads` flags; prints `listening on ADDR`.
//! What berth on smol costs beside hyper on the same runtime (`benches/http.sh`, server
//! `hyper-smol`).
//!
//! `cargo bench --bench hyper_smol_peer -- --addr 127.0.0.1:8083 --threads 1`

use std::io::Write as _;
use std::sync::Arc;

use async_executor::Executor;
use async_net::TcpListener;
use clap::Parser;
use hyper_util::server::conn::auto;
use smol_hyper::rt::{FuturesIo, SmolExecutor, SmolTimer};

#[path = "common/http_routes.rs"]
mod routes;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8083")]
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
    let ex = Arc::new(Executor::new());
    for _ in 1..threads {
        let ex = ex.clone();
        std::thread::spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())));
    }
    async_io::block_on(ex.run(async {
        let listener = TcpListener::bind(&args.addr).await.expect("bind");
        println!("listening on {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        let mut builder = auto::Builder::new(SmolExecutor::new(ex.clone()));
        builder.http1().timer(SmolTimer::new());
        builder.http2().timer(SmolTimer::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            ex.spawn(async move {
                // With upgrades, as berth::http serves its connections.
                let _ = builder
                    .serve_connection_with_upgrades(
                        FuturesIo::new(stream),
                        hyper::service::service_fn(|req| {
                            routes::route(req, |d| async move {
                                async_io::Timer::after(d).await;
                            })
                        }),
                    )
                    .await;
            })
            .detach();
        }
    }));
}
