//! The hyper peer: bare hyper 1.x on tokio, what most Rust users would write by hand. A
//! plain tokio `TcpListener` accept loop, `TCP_NODELAY`, one task per connection served by
//! hyper-util's auto builder (HTTP/1.1, or HTTP/2 by prior knowledge) with tokio's executor
//! and timer. The HTTP example's routes (`GET /` → `hello`, `GET /slow?ms=N`, `POST /echo`,
//! 404) and its `--addr` and `--threads` flags; prints `listening on ADDR`.
//!
//! `cargo bench --bench hyper_peer -- --addr 127.0.0.1:8082 --threads 1`

use std::convert::Infallible;
use std::io::Write as _;
use std::time::Duration;

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

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
                        hyper::service::service_fn(route),
                    )
                    .await;
            });
        }
    });
}

type Reply = Response<Full<Bytes>>;

async fn route(req: Request<Incoming>) -> Result<Reply, Infallible> {
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
                    tokio::time::sleep(Duration::from_millis(ms)).await;
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
