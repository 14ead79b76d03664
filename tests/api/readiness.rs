//! Readiness and the lame duck, in process on smol and tokio: a server is ready while it
//! runs, not while a condition of the user's fails, during a lame duck (while it still
//! accepts and serves), nor once it drains; a second shutdown, or `shutdown_within`, ends a
//! lame duck at once.

use crate::common;

use std::time::Duration;

use berth::{Conn, ServerEvent, ServerHandle};
use common::{Ev, LIMIT, Rt, connect, run, start, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

async fn echo(mut conn: Conn) {
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = conn.read(&mut buf).await {
        if conn.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn echo_once(addr: std::net::SocketAddr) {
    let mut c = connect(addr).await;
    c.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    within(LIMIT, "the echo", c.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"ping");
}

/// Runs `f` on the runtime under test in the background; its output when awaited.
fn spawn<R: Rt, T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> impl std::future::Future<Output = T> {
    use berth::runtime::Runtime as _;
    let (tx, rx) = async_channel::bounded(1);
    R::runtime().spawn(Box::pin(async move {
        let _ = tx.send(future.await).await;
    }));
    async move { rx.recv().await.expect("the task ran") }
}

fn conditions_decide_readiness_while_serving<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, _rec) = start::<R>(common::config(), echo);
        assert!(handle.is_ready(), "{:?}", handle.not_ready_reasons());
        handle.set_ready_condition("database", false);
        handle.set_ready_condition("cache", true);
        assert!(!handle.is_ready());
        assert_eq!(handle.not_ready_reasons(), ["database"]);
        // Not ready is not stopped: it serves on.
        echo_once(handle.local_addr().as_socket_addr().unwrap()).await;
        handle.set_ready_condition("database", true);
        assert!(handle.is_ready());
        handle.set_ready_condition("cache", false);
        handle.clear_ready_condition("cache");
        assert!(handle.is_ready());
        handle.shutdown().await.unwrap();
        assert_eq!(handle.not_ready_reasons(), ["stopped"]);
    });
}

fn a_lame_duck_serves_on_while_not_ready_then_drains<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut config = common::config();
        let lame_duck = Duration::from_millis(500);
        config.lame_duck = Some(lame_duck);
        let (handle, rec) = start::<R>(config, echo);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let stopping = handle.clone();
        let began = std::time::Instant::now();
        let shutdown = spawn::<R, _>(async move { stopping.shutdown().await });
        rec.next("LameDuck", |e| {
            matches!(e, Ev::Server(ServerEvent::LameDuck { duration }) if *duration == lame_duck)
        })
        .await;
        assert_eq!(handle.not_ready_reasons(), ["lame duck"]);
        assert!(handle.is_running(), "still accepting");
        // A new client is accepted and served during the lame duck.
        echo_once(addr).await;
        let report = within(LIMIT, "the shutdown", shutdown).await.unwrap();
        assert!(began.elapsed() >= lame_duck, "{:?}", began.elapsed());
        assert_eq!(report.forced, 0);
        assert!(
            async_net::TcpStream::connect(addr).await.is_err(),
            "refused after"
        );
        let draining_after_lame_duck = rec
            .log()
            .iter()
            .position(|e| matches!(e, Ev::Server(ServerEvent::Draining { .. })))
            > rec
                .log()
                .iter()
                .position(|e| matches!(e, Ev::Server(ServerEvent::LameDuck { .. })));
        assert!(draining_after_lame_duck, "{:?}", rec.log());
    });
}

async fn in_lame_duck(handle: &ServerHandle, rec: &common::Recorder) {
    rec.next("LameDuck", |e| {
        matches!(e, Ev::Server(ServerEvent::LameDuck { .. }))
    })
    .await;
    assert!(!handle.is_ready());
}

fn a_second_shutdown_or_shutdown_within_ends_the_lame_duck<R: Rt>() {
    run::<R>(LIMIT, async {
        for second in ["shutdown", "shutdown_within", "end_lame_duck"] {
            let mut config = common::config();
            config.lame_duck = Some(Duration::from_secs(3600));
            let (handle, rec) = start::<R>(config, echo);
            let stopping = handle.clone();
            let first = spawn::<R, _>(async move { stopping.shutdown().await });
            in_lame_duck(&handle, &rec).await;
            match second {
                "shutdown" => drop(within(LIMIT, second, handle.shutdown()).await.unwrap()),
                "shutdown_within" => drop(
                    within(
                        LIMIT,
                        second,
                        handle.shutdown_within(Duration::from_secs(5)),
                    )
                    .await
                    .unwrap(),
                ),
                _ => handle.end_lame_duck(),
            }
            within(LIMIT, "the first shutdown after the lame duck ended", first)
                .await
                .unwrap();
            assert_eq!(handle.not_ready_reasons(), ["stopped"], "{second}");
        }
    });
}

on_smol_and_tokio!(
    conditions_decide_readiness_while_serving,
    a_lame_duck_serves_on_while_not_ready_then_drains,
    a_second_shutdown_or_shutdown_within_ends_the_lame_duck,
);
