//! The accept loop never runs a user hook: a refused connection's `Rejected` event is
//! reported from another task, so a hook that blocks cannot stop the next client from being
//! accepted and served.
#![cfg(feature = "smol")]

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use berth::{Builder, Config, Conn, ConnEvent};
use common::{LIMIT, SmolRt, run, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// A TCP connection from source address `src` (a 127.x address).
async fn connect_from(src: &str, addr: SocketAddr) -> async_net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())
        .unwrap();
    sock.set_nonblocking(true).unwrap();
    let _ = sock.connect(&addr.into());
    let stream = async_io::Async::new(std::net::TcpStream::from(sock)).unwrap();
    within(LIMIT, "connect", stream.writable()).await.unwrap();
    async_net::TcpStream::from(stream)
}

#[test]
fn a_blocked_rejected_hook_does_not_stop_accepting() {
    run::<SmolRt>(LIMIT, async {
        let mut config = Config::new("127.0.0.1:0");
        config.limits.deny = vec!["127.0.0.2/32".parse().unwrap()];
        // The hook blocks its thread on the first `Rejected` until the test releases it.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let (entered_tx, entered) = async_channel::unbounded::<()>();
        let (rejected_tx, rejected) = async_channel::unbounded::<SocketAddr>();
        // Threads to spare: the blocked hook holds one of them.
        let executor = Arc::new(async_executor::Executor::new());
        for _ in 0..3 {
            let ex = executor.clone();
            std::thread::spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())));
        }
        let handle = Builder::new(config)
            .runtime(berth::runtime::Smol::with_executor(executor))
            .on_conn_event(move |event| {
                if let ConnEvent::Rejected { peer_addr, .. } = event {
                    let _ = entered_tx.try_send(());
                    let _ = held.lock().unwrap().recv_timeout(LIMIT);
                    let _ = rejected_tx.try_send(peer_addr.as_socket_addr().unwrap());
                }
            })
            .bind()
            .unwrap()
            .serve(|mut conn: Conn| async move {
                let mut buf = [0u8; 64];
                if let Ok(n @ 1..) = conn.read(&mut buf).await {
                    let _ = conn.write_all(&buf[..n]).await;
                }
            });
        let addr = handle.local_addr().as_socket_addr().unwrap();

        let mut denied = connect_from("127.0.0.2", addr).await;
        within(LIMIT, "the Rejected hook to start", entered.recv())
            .await
            .unwrap();
        // The hook is blocked now. An allowed client is still accepted and served.
        let mut allowed = connect_from("127.0.0.1", addr).await;
        allowed.write_all(b"still served").await.unwrap();
        let mut back = [0u8; 12];
        within(LIMIT, "the echo", allowed.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(&back, b"still served");
        // The refused client was closed at once, before its event was reported.
        let mut rest = Vec::new();
        // (a clean end of file or a reset, depending on timing: either way, closed)
        let _ = within(LIMIT, "the refusal", denied.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "a refused client gets no data: {rest:?}");
        release.send(()).unwrap();
        let peer = within(LIMIT, "the Rejected event", rejected.recv())
            .await
            .unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
        assert_eq!(handle.stats().rejected, 1);
        handle.close().await;
    });
}
