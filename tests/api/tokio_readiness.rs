//! On the tokio adapter, `Conn::readable` must not report stale readiness: when it returns
//! (and the server is not draining), a read has something to return at once.
//!
//! berth bug, found by `echo_cli`'s Unix-socket test with `--runtime tokio` under CPU load:
//! `readable` returned with nothing to read, the echo handler then waited in a read, deaf to
//! the drain, and a connection idle between requests was forced at the drain deadline
//! ("0 connection(s) drained, 1 forced after 10s") instead of drained.
//!
//! Cause (src/runtime/tokio/stream.rs): `TokioStream` trusts tokio's read readiness without the
//! confirming one-byte peek once it believes tokio cleared it: after a short read
//! (`unconfirmed = false`, `SHORT_READ_CLEARS`) and after a peek that would block. But tokio
//! clears readiness only if no reactor event arrived since the readiness it was asked about
//! (`clear_readiness` compares ticks); when one did (here: the events of a socket just
//! registered, racing its first read), the stale "readable" survives and the next
//! `poll_readable` returns it as is. Confirming every readiness with the peek (never
//! `return Ready` on `!unconfirmed`) makes both tests pass, also under CPU load.
#![cfg(all(unix, feature = "tokio"))]

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth::{Builder, Config, Conn};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// Echo that checks every return of `readable`: the read right after it must be ready.
async fn checking_echo(mut conn: Conn, stale: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if conn.readable().await.is_err() || conn.is_draining() {
            return;
        }
        let n = match futures_lite::future::poll_once(conn.read(&mut buf)).await {
            Some(Ok(n)) => n,
            Some(Err(_)) => return,
            None => {
                // "Readable", yet the read waits: stale readiness.
                stale.fetch_add(1, Ordering::SeqCst);
                match conn.read(&mut buf).await {
                    Ok(n) => n,
                    Err(_) => return,
                }
            }
        };
        if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn connect(addr: &berth::Addr) -> Box<dyn Stream> {
    if let Some(path) = addr.as_unix_path() {
        let s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Box::new(s)
    } else {
        let s = std::net::TcpStream::connect(addr.as_socket_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Box::new(s)
    }
}

/// 1,000 fresh connections, each: one request sent at once (its data races the socket's
/// registration with the reactor), a pause (the handler waits in `readable` with nothing
/// to read), a second request, close. Counts the `readable` returns with nothing to read.
fn stale_readable_returns(unix: bool) -> usize {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("berth-tokio-readiness-{}", std::process::id()));
    let mut config = Config::new("127.0.0.1:0");
    if unix {
        std::fs::create_dir_all(&dir).unwrap();
        config.unix = Some(berth::UnixConfig::new(dir.join("echo.sock")));
    }
    let stale = Arc::new(AtomicUsize::new(0));
    let s = stale.clone();
    let handle = Builder::new(config)
        .runtime(berth::runtime::Tokio::from_handle(rt.handle().clone()))
        .bind()
        .unwrap()
        .serve(move |conn: Conn| checking_echo(conn, s.clone()));
    let clients: Vec<_> = (0..4u8)
        .map(|i| {
            let addr = handle.local_addr();
            std::thread::spawn(move || {
                for round in 0..250u8 {
                    let mut c = connect(&addr);
                    for second in [false, true] {
                        if second {
                            // Part of the scenario (an idle gap), not a synchronization.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        let msg = [i ^ round; 18];
                        c.write_all(&msg).unwrap();
                        let mut back = [0u8; 18];
                        c.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    rt.block_on(async { tokio::time::timeout(WAIT, handle.close()).await })
        .expect("close() returns");
    if unix {
        let _ = std::fs::remove_dir_all(&dir);
    }
    stale.load(Ordering::SeqCst)
}

#[test]
fn tokio_readable_after_a_short_read_has_data_tcp() {
    assert_eq!(
        stale_readable_returns(false),
        0,
        "readable() returned with nothing to read"
    );
}

#[test]
fn tokio_readable_after_a_short_read_has_data_unix() {
    assert_eq!(
        stale_readable_returns(true),
        0,
        "readable() returned with nothing to read"
    );
}
