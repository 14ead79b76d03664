//! The floor berth is measured against: a bare async-net + async-executor echo loop with
//! the echo example's `--addr` and `--threads` flags. No limits, no idle reaping, no
//! shutdown: just accept, spawn, copy.
//!
//! `cargo bench --bench bare_smol -- --addr 127.0.0.1:7001 --threads 1`

use std::io::Write as _;
use std::sync::Arc;

use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7001")]
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
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            ex.spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
    }));
}
