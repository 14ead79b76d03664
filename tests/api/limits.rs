//! Limits and the PROXY protocol over real sockets: per-IP caps, rates, allow/deny, and
//! PROXY v1/v2 headers from trusted and untrusted peers (127.0.0.x loopback sources).
#![cfg(feature = "smol")]

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use berth::limits::{Limits, Rate, RejectReason};
use berth::{Builder, Config, Conn, ConnEvent, ProxyProtocol, ServerHandle};
use common::{Ev, LIMIT, Recorder, SmolRt, assert_closed_by_server, run, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// Connects from a chosen loopback source address.
async fn connect_from(src: &str, addr: SocketAddr) -> async_net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())
        .unwrap();
    sock.set_nonblocking(true).unwrap();
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => panic!("connect from {src}: {e}"),
    }
    let stream = async_io::Async::new(std::net::TcpStream::from(sock)).unwrap();
    within(LIMIT, "connect", stream.writable()).await.unwrap();
    // Writable also when the connect failed: the socket's error says which.
    assert!(stream.get_ref().take_error().unwrap().is_none());
    async_net::TcpStream::from(stream)
}

/// Echo handler that first reports the addresses berth saw.
fn start(
    config: Config,
) -> (
    ServerHandle,
    Recorder,
    async_channel::Receiver<(SocketAddr, Option<SocketAddr>)>,
) {
    let rec = Recorder::new();
    let (tx, rx) = async_channel::unbounded();
    let handle = rec
        .attach(Builder::new(config).runtime(berth::runtime::Smol::global()))
        .bind()
        .unwrap()
        .serve(move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                let peer = conn.peer_addr().as_socket_addr().unwrap();
                let proxy = conn.proxy_addr().and_then(|a| a.as_socket_addr());
                let _ = tx.send((peer, proxy)).await;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf).await {
                    if conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        });
    (handle, rec, rx)
}

async fn echoes(c: &mut async_net::TcpStream) -> bool {
    if c.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut back = [0u8; 4];
    matches!(c.read_exact(&mut back).await, Ok(())) && &back == b"ping"
}

async fn rejected(rec: &Recorder) -> (SocketAddr, RejectReason) {
    match rec
        .next("Rejected", |e| {
            matches!(e, Ev::Conn(ConnEvent::Rejected { .. }))
        })
        .await
    {
        Ev::Conn(ConnEvent::Rejected { peer_addr, reason }) => {
            (peer_addr.as_socket_addr().unwrap(), reason)
        }
        _ => unreachable!(),
    }
}

fn config(limits: Limits) -> Config {
    {
        let mut c_config = Config::new("127.0.0.1:0");
        c_config.limits = limits;
        c_config
    }
}

#[test]
fn per_ip_cap_refuses_the_next_and_frees_on_close() {
    run::<SmolRt>(LIMIT, async {
        let (handle, rec, _rx) = start(config({
            let mut c_limits = Limits::default();
            c_limits.max_per_ip = Some(2);
            c_limits
        }));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut a = connect_from("127.0.0.2", addr).await;
        let mut b = connect_from("127.0.0.2", addr).await;
        assert!(echoes(&mut a).await && echoes(&mut b).await);
        let mut third = connect_from("127.0.0.2", addr).await;
        let (who, reason) = rejected(&rec).await;
        assert_eq!(
            (who.ip(), reason),
            ("127.0.0.2".parse().unwrap(), RejectReason::PerIpConnections)
        );
        // Refused: closed at once, before it sent anything.
        assert_closed_by_server(&mut third, 0).await;
        // Another address is unaffected.
        let mut other = connect_from("127.0.0.3", addr).await;
        assert!(echoes(&mut other).await);
        // One closes: its place is free again.
        drop(a);
        rec.closed().await;
        let mut again = connect_from("127.0.0.2", addr).await;
        assert!(echoes(&mut again).await);
        let stats = handle.stats();
        assert_eq!(stats.rejected, 1);
        assert_eq!(
            stats.accepted, 4,
            "refused connections are not counted as accepted"
        );
        drop((b, third, other, again));
        handle.close().await;
    });
}

#[test]
fn per_ip_rate_allows_the_burst_then_refuses() {
    run::<SmolRt>(LIMIT, async {
        let mut limits = Limits::default();
        // A burst of 3, then one per 100 s: nothing refills during the test.
        limits.rate_per_ip = Some(Rate {
            per_second: 0.01,
            burst: 3,
        });
        let (handle, rec, _rx) = start(config(limits));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut kept = Vec::new();
        for _ in 0..3 {
            let mut c = connect_from("127.0.0.4", addr).await;
            assert!(echoes(&mut c).await);
            kept.push(c);
        }
        let mut fourth = connect_from("127.0.0.4", addr).await;
        assert_eq!(rejected(&rec).await.1, RejectReason::PerIpRate);
        assert_closed_by_server(&mut fourth, 0).await;
        let mut elsewhere = connect_from("127.0.0.5", addr).await;
        assert!(echoes(&mut elsewhere).await);
        handle.close().await;
    });
}

#[test]
fn allow_and_deny_lists() {
    run::<SmolRt>(LIMIT, async {
        let (handle, rec, _rx) = start(config({
            let mut c_limits = Limits::default();
            c_limits.allow = vec!["127.0.0.0/24".parse().unwrap()];
            c_limits.deny = vec!["127.0.0.6/32".parse().unwrap()];
            c_limits
        }));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut ok = connect_from("127.0.0.7", addr).await;
        assert!(echoes(&mut ok).await);
        let mut denied = connect_from("127.0.0.6", addr).await;
        assert_eq!(rejected(&rec).await.1, RejectReason::Denied);
        assert_closed_by_server(&mut denied, 0).await;
        let mut outside = connect_from("127.0.1.1", addr).await;
        assert_eq!(rejected(&rec).await.1, RejectReason::NotAllowed);
        assert_closed_by_server(&mut outside, 0).await;
        handle.close().await;
    });
}

fn proxy_config(limits: Limits) -> Config {
    {
        let mut c_config = config(limits);
        c_config.proxy_protocol = Some(ProxyProtocol::new(vec!["127.0.0.8/32".parse().unwrap()]));
        c_config
    }
}

fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (src, dst),
    )
    .build()
    .unwrap()
}

#[test]
fn proxy_v1_and_v2_give_the_original_address() {
    run::<SmolRt>(LIMIT, async {
        let (handle, _rec, rx) = start(proxy_config(Limits::default()));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let original: SocketAddr = "203.0.113.9:51000".parse().unwrap();
        for header in [
            format!("PROXY TCP4 203.0.113.9 127.0.0.1 51000 {}\r\n", addr.port()).into_bytes(),
            v2_header(original, addr),
        ] {
            let mut c = connect_from("127.0.0.8", addr).await;
            // The header split across writes, the first request right behind it.
            let (head, tail) = header.split_at(header.len() / 2);
            c.write_all(head).await.unwrap();
            c.flush().await.unwrap();
            let mut rest = tail.to_vec();
            rest.extend_from_slice(b"ping");
            c.write_all(&rest).await.unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"ping");
            let (peer, proxy) = within(LIMIT, "addresses", rx.recv()).await.unwrap();
            assert_eq!(peer, original);
            assert_eq!(proxy.unwrap().ip(), "127.0.0.8".parse::<IpAddr>().unwrap());
        }
        handle.close().await;
    });
}

#[test]
fn proxy_header_problems_refuse_the_connection() {
    run::<SmolRt>(LIMIT, async {
        let config = {
            let mut c_config = proxy_config(Limits::default());
            c_config.handshake_timeout = Duration::from_millis(300);
            c_config
        };
        let (handle, rec, rx) = start(config);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let cases: [(&[u8], &str); 4] = [
            (b"ping without a header", "malformed"), // trusted source, no header
            (b"PROXY TCP4 203.0.113.9 127.0.0.1 51", ""), // truncated: then silence
            (b"PROXY TCP4 banana 127.0.0.1 1 2\r\n", "malformed"), // garbage
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", ""), // v2 promising 64 KiB: oversized or late
        ];
        for (bytes, expect) in cases {
            let mut c = connect_from("127.0.0.8", addr).await;
            c.write_all(bytes).await.unwrap();
            let (_, reason) = rejected(&rec).await;
            let RejectReason::ProxyHeader(text) = reason else {
                panic!("expected a PROXY reason, got {reason:?}");
            };
            assert!(text.contains(expect), "{text}");
            // The header was read (and found wanting): a clean, full close.
            assert_closed_by_server(&mut c, 0).await;
        }
        // An untrusted source sending a header: not honoured, its bytes are just data.
        let mut c = connect_from("127.0.0.9", addr).await;
        let header = b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 443\r\n";
        c.write_all(header).await.unwrap();
        let mut back = vec![0u8; header.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, header, "echoed as data");
        let (peer, proxy) = within(LIMIT, "addresses", rx.recv()).await.unwrap();
        assert_eq!(peer.ip(), "127.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(proxy, None);
        assert_eq!(handle.stats().rejected, 4);
        assert_eq!(handle.open_connections(), 1);
        handle.close().await;
    });
}

#[test]
fn limits_apply_to_the_original_address_behind_a_proxy() {
    run::<SmolRt>(LIMIT, async {
        let (handle, rec, _rx) = start(proxy_config({
            let mut c_limits = Limits::default();
            c_limits.max_per_ip = Some(1);
            c_limits.deny = vec!["198.51.100.0/24".parse().unwrap()];
            c_limits
        }));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let via = |src: &str| format!("PROXY TCP4 {src} 127.0.0.1 40000 {}\r\n", addr.port());
        let mut first = connect_from("127.0.0.8", addr).await;
        first
            .write_all(via("203.0.113.1").as_bytes())
            .await
            .unwrap();
        assert!(echoes(&mut first).await);
        // The same original client through the same proxy: over its limit.
        let mut second = connect_from("127.0.0.8", addr).await;
        second
            .write_all(via("203.0.113.1").as_bytes())
            .await
            .unwrap();
        let (who, reason) = rejected(&rec).await;
        assert_eq!(
            (who.ip().to_string(), reason),
            ("203.0.113.1".into(), RejectReason::PerIpConnections)
        );
        // Another original client through the same proxy: fine; a denied one: refused.
        let mut other = connect_from("127.0.0.8", addr).await;
        other
            .write_all(via("203.0.113.2").as_bytes())
            .await
            .unwrap();
        assert!(echoes(&mut other).await);
        let mut denied = connect_from("127.0.0.8", addr).await;
        denied
            .write_all(via("198.51.100.7").as_bytes())
            .await
            .unwrap();
        assert_eq!(rejected(&rec).await.1, RejectReason::Denied);
        assert_closed_by_server(&mut second, 0).await;
        assert_closed_by_server(&mut denied, 0).await;
        handle.close().await;
    });
}

#[test]
fn proxy_header_followed_by_a_tls_client_hello() {
    run::<SmolRt>(LIMIT, async {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = {
            let mut c_config = proxy_config(Limits::default());
            c_config.tls = Some(berth::tls::TlsConfig::from_pem(
                cert.pem(),
                key.serialize_pem(),
            ));
            c_config
        };
        let (handle, _rec, rx) = start(config);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut tcp = connect_from("127.0.0.8", addr).await;
        tcp.write_all(&v2_header("192.0.2.44:7777".parse().unwrap(), addr))
            .await
            .unwrap();
        // No pause: the ClientHello follows the header in the same stream.
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = futures_rustls::TlsConnector::from(std::sync::Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();
        let (peer, _) = within(LIMIT, "addresses", rx.recv()).await.unwrap();
        assert_eq!(peer, "192.0.2.44:7777".parse().unwrap());
        handle.close().await;
    });
}
