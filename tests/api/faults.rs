//! berth's own fault points (feature `fault`): with every point firing often, echo stays
//! byte-exact, accept errors back off and recover, a split PROXY header is still read, and
//! a stalled handshake either completes or times out; every connection is accounted for.
#![cfg(all(feature = "fault", feature = "smol", feature = "tls"))]

use crate::common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth::fault::{Faults, Point};
use berth::{Builder, CloseReason, Config, Conn, ConnEvent};
use common::{Ev, LIMIT, Recorder, Rt, SmolRt, pattern, run, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// Fires each enabled point one time in `every`, deterministically (a counter per point).
#[derive(Debug)]
struct Every {
    enabled: Vec<Point>,
    every: u64,
    calls: Mutex<std::collections::BTreeMap<Point, u64>>,
    fired: AtomicU64,
}

impl Every {
    fn new(enabled: &[Point], every: u64) -> Self {
        Every {
            enabled: enabled.to_vec(),
            every,
            calls: Mutex::default(),
            fired: AtomicU64::new(0),
        }
    }
}

impl Faults for Every {
    fn fire(&self, point: Point) -> bool {
        if !self.enabled.contains(&point) {
            return false;
        }
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(point).or_default();
        *n += 1;
        let fire = *n % self.every == 0;
        if fire {
            self.fired.fetch_add(1, Ordering::Relaxed);
        }
        fire
    }

    fn delay(&self, _: Point) -> Duration {
        Duration::from_millis(20)
    }
}

async fn echo(mut conn: Conn) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n @ 1..) = conn.read(&mut buf).await {
        if conn.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[test]
fn echo_stays_byte_exact_with_io_and_accept_faults() {
    run::<SmolRt>(LIMIT, async {
        let faults = std::sync::Arc::new(Every::new(
            &[
                Point::AcceptEmfile,
                Point::AcceptAborted,
                Point::ShortRead,
                Point::ShortWrite,
                Point::SpuriousPending,
                Point::DelayedSpawn,
            ],
            3,
        ));
        let rec = Recorder::new();
        let handle = rec
            .attach(
                Builder::new(Config::new("127.0.0.1:0"))
                    .runtime(SmolRt::runtime())
                    .faults(Shared(faults.clone())),
            )
            .bind()
            .unwrap()
            .serve(echo);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        for i in 0..12u64 {
            let c = common::connect(addr).await;
            let data = pattern(20_000 + i as usize * 777, i);
            let (mut reader, mut writer) = (c.clone(), c);
            let (written, back) = futures_lite::future::zip(writer.write_all(&data), async {
                let mut back = vec![0u8; data.len()];
                reader.read_exact(&mut back).await.map(|()| back)
            })
            .await;
            written.unwrap();
            assert!(back.unwrap() == data, "connection {i} echoed wrong bytes");
        }
        assert!(faults.fired.load(Ordering::Relaxed) > 20, "faults fired");
        // The injected EMFILE was reported (once per back-off episode) and served past.
        assert!(handle.stats().accept_errors > 0);
        handle.close().await;
        let accepted = rec
            .log()
            .iter()
            .filter(|e| matches!(e, Ev::Conn(ConnEvent::Accepted { .. })))
            .count();
        let closed = rec
            .log()
            .iter()
            .filter(|e| matches!(e, Ev::Conn(ConnEvent::Closed { .. })))
            .count();
        assert_eq!((accepted, closed), (12, 12));
        assert_eq!(handle.open_connections(), 0);
    });
}

#[test]
fn a_split_proxy_header_is_read_and_a_stalled_handshake_times_out() {
    run::<SmolRt>(LIMIT, async {
        let mut config = Config::new("127.0.0.1:0");
        config.proxy_protocol = Some(berth::ProxyProtocol::new(vec![
            "127.0.0.0/8".parse().unwrap(),
        ]));
        let handle = Builder::new(config)
            .runtime(SmolRt::runtime())
            .faults(Every::new(&[Point::SplitProxyHeader], 1))
            .bind()
            .unwrap()
            .serve(|mut conn: Conn| async move {
                let peer = conn.peer_addr().to_string();
                let _ = conn.write_all(peer.as_bytes()).await;
            });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut c = common::connect(addr).await;
        c.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 7000\r\n")
            .await
            .unwrap();
        let mut peer = String::new();
        within(LIMIT, "the reply", c.read_to_string(&mut peer))
            .await
            .unwrap();
        assert_eq!(peer, "203.0.113.7:40000");
        handle.close().await;

        // A handshake stalled past its timeout fails as a timeout; the server serves on.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut config = Config::new("127.0.0.1:0");
        config.tls = Some(berth::tls::TlsConfig::from_pem(
            cert.pem(),
            key.serialize_pem(),
        ));
        config.handshake_timeout = Duration::from_millis(5);
        let rec = Recorder::new();
        let handle = rec
            .attach(
                Builder::new(config)
                    .runtime(SmolRt::runtime())
                    .faults(Every::new(&[Point::StalledHandshake], 1)),
            )
            .bind()
            .unwrap()
            .serve(echo);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let _c = common::connect(addr).await;
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::TlsFailed);
        assert!(rec.log().iter().any(|e| matches!(
            e,
            Ev::Conn(ConnEvent::TlsFailed {
                reason: berth::tls::TlsFailure::Timeout,
                ..
            })
        )));
        handle.close().await;
    });
}

/// Lends an `Arc<Every>` to the server while the test keeps counting.
#[derive(Debug)]
struct Shared(std::sync::Arc<Every>);

impl Faults for Shared {
    fn fire(&self, point: Point) -> bool {
        self.0.fire(point)
    }
    fn delay(&self, point: Point) -> Duration {
        self.0.delay(point)
    }
}
