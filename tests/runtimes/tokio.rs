//! The integration suite on the tokio adapter, plus the tokio listener.
#![cfg(feature = "tokio")]

use crate::common;
use crate::suite;

all_tests!(common::TokioRt);

/// Inside a tokio runtime the default runtime is tokio and `bind` serves tokio's sockets:
/// tokio clients, echo, counting, graceful shutdown.
#[test]
fn bind_inside_tokio_serves_on_tokio_and_drains() {
    use berth::{Builder, Config, Conn};
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    common::TokioRt::rt().block_on(async {
        tokio::time::timeout(common::LIMIT, async {
            let rec = common::Recorder::new();
            let handle = rec
                .attach(Builder::new(Config::new("127.0.0.1:0")))
                .bind()
                .unwrap()
                .serve(|mut conn: Conn| async move {
                    let mut draining = conn.draining();
                    let mut buf = [0u8; 1024];
                    loop {
                        let read = async { Some(conn.read(&mut buf).await) };
                        let drained = async {
                            (&mut draining).await;
                            None
                        };
                        match futures_lite::FutureExt::or(read, drained).await {
                            Some(Ok(n @ 1..)) => {
                                if conn.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            _ => return,
                        }
                    }
                });
            let addr = handle.local_addr().as_socket_addr().unwrap();
            let mut clients = Vec::new();
            for i in 0..20u8 {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                c.write_all(&[i; 100]).await.unwrap();
                let mut back = [0u8; 100];
                c.read_exact(&mut back).await.unwrap();
                assert_eq!(back, [i; 100]);
                clients.push(c);
            }
            assert_eq!(handle.open_connections(), 20);
            let closers = clients
                .into_iter()
                .map(|mut c| {
                    tokio::spawn(async move {
                        // A clean end of file when drained, nothing before it.
                        let mut sink = Vec::new();
                        c.read_to_end(&mut sink).await.unwrap();
                        assert!(sink.is_empty(), "{sink:?}");
                    })
                })
                .collect::<Vec<_>>();
            let report = handle
                .shutdown_within(std::time::Duration::from_secs(3600))
                .await
                .unwrap();
            assert_eq!((report.drained, report.forced), (20, 0));
            for c in closers {
                c.await.unwrap();
            }
            assert_eq!(
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionRefused)
            );
        })
        .await
        .expect("test timed out");
    });
}

/// Inside a tokio runtime built without its drivers (none, or timers but no I/O), `bind`
/// picks the tokio adapter and says what is missing instead of panicking.
#[test]
fn bind_inside_tokio_without_its_drivers_is_a_typed_error() {
    let bare = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let timers_only = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for (rt, missing) in [(bare, "time"), (timers_only, "I/O")] {
        let result = std::panic::catch_unwind(|| {
            rt.block_on(async {
                berth::Server::bind(berth::Config::new("127.0.0.1:0")).map(|_| ())
            })
        });
        match result {
            Ok(Err(e)) => assert!(
                e.to_string().contains(&format!(
                    "has no {missing} driver: build it with enable_all()"
                )),
                "{e}"
            ),
            Ok(Ok(())) => panic!("bound without the {missing} driver"),
            Err(_) => panic!("bind panicked instead of returning a typed error"),
        }
    }
}
