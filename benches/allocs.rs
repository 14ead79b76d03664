//! Heap allocations per accepted connection and per HTTP request, counted by dhat's global
//! allocator (every allocation in the process: berth's, the runtime's, and the few of the
//! blocking client threads, which this measures alone first and subtracts).
//!
//! ```sh
//! cargo bench --bench allocs                 # smol and tokio, 2,000 connections, 5,000 requests
//! N=500 cargo bench --bench allocs           # fewer
//! DHAT=out.json RUNTIMES=smol cargo bench --bench allocs   # where they come from (dh_view)
//! ```
//!
//! - **connection**: connect, write one byte, read the echo, close; a plain TCP echo server
//!   (the handler itself allocates nothing). Counted from accept to the close, with the
//!   server's pool warm (the slot of a closed connection is reused).
//! - **request**: keep-alive `GET /` on one connection to a `berth::http` server whose
//!   service answers `hello` from a static buffer (HTTP/1.1).
//!
//! The client is blocking std I/O on its own thread; its own allocations are measured
//! against a server that is not berth (a std echo thread), and subtracted. Not run in CI.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn blocks() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// `n` connections of one echoed byte each, one after the other, from a client thread.
fn connections(addr: SocketAddr, n: usize) {
    std::thread::spawn(move || {
        for _ in 0..n {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.write_all(b"x").expect("write");
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).expect("read the echo");
        }
    })
    .join()
    .expect("client thread");
}

/// `n` keep-alive requests on one connection from a client thread.
fn requests(addr: SocketAddr, n: usize) {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut buf = [0u8; 4096];
        for _ in 0..n {
            stream.write_all(REQUEST).expect("write");
            // The answer ends with the body `hello\n` (fixed length, no chunks).
            let mut seen = 0;
            loop {
                seen += stream.read(&mut buf[seen..]).expect("read");
                if buf[..seen].ends_with(b"hello\n") {
                    break;
                }
                assert!(seen > 0 && seen < buf.len(), "unexpected answer");
            }
        }
    })
    .join()
    .expect("client thread");
}

/// What the client alone allocates for `n` connections (against a std echo thread).
fn client_connections(n: usize) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).expect("read");
            stream.write_all(&byte).expect("write");
        }
    });
    // Both threads started before counting.
    let before = blocks();
    connections(addr, n);
    let after = blocks();
    server.join().expect("std server");
    after - before
}

async fn echo(mut conn: berth::Conn) {
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = conn.read(&mut buf).await {
        if conn.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

async fn hello(
    _req: hyper::Request<hyper::body::Incoming>,
) -> Result<Reply, std::convert::Infallible> {
    Ok(hyper::Response::new(http_body_util::Full::new(
        bytes::Bytes::from_static(b"hello\n"),
    )))
}

/// Runs both measurements against servers on the current default runtime (smol's global
/// executor, or tokio inside a tokio runtime), `close` ending each server.
fn measure(name: &str, n: usize, client: u64, close: &dyn Fn(berth::ServerHandle)) {
    let mut config = berth::Config::new("127.0.0.1:0");
    config.drain_timeout = Duration::from_secs(5);
    let handle = berth::Server::bind(config).expect("bind").serve(echo);
    let addr = handle.local_addr().as_socket_addr().expect("tcp");
    connections(addr, n / 10); // warm: pool slots, executor queues
    let before = blocks();
    connections(addr, n);
    let per_conn = (blocks() - before).saturating_sub(client) as f64 / n as f64;
    close(handle);

    let http = berth::http::Http::new(hyper::service::service_fn(hello));
    let handle = berth::Server::bind(berth::Config::new("127.0.0.1:0"))
        .expect("bind")
        .serve(http);
    let addr = handle.local_addr().as_socket_addr().expect("tcp");
    requests(addr, n / 10);
    let before = blocks();
    requests(addr, n * 5);
    let per_request = (blocks() - before) as f64 / (n * 5) as f64;
    close(handle);
    println!(
        "{name:<6} allocations per connection: {per_conn:6.2}   per HTTP/1.1 request: {per_request:6.2}"
    );
}

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let runtimes = std::env::var("RUNTIMES").unwrap_or_else(|_| "smol tokio".into());
    // With DHAT set, a full profile (every allocation site, for dh_view) goes to that file.
    let _profiler = match std::env::var("DHAT") {
        Ok(file) => dhat::Profiler::builder().file_name(file).build(),
        Err(_) => dhat::Profiler::builder().testing().build(),
    };
    let client = client_connections(n);
    println!(
        "client alone: {:.2} allocations per connection (subtracted below)",
        client as f64 / n as f64
    );
    // smol: the global executor runs on threads of its own while the client blocks here.
    if runtimes.contains("smol") {
        measure("smol", n, client, &|handle| {
            futures_lite::future::block_on(handle.close());
        });
    }
    if !runtimes.contains("tokio") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    measure("tokio", n, client, &|handle| {
        rt.block_on(handle.close());
    });
}
