//! TLS: versions, SNI, ALPN, client authentication, handshake timeouts, bad clients,
//! reload, configuration errors. Certificates are generated at test time (rcgen); no key is
//! committed. Clients are rustls clients (futures-rustls).
#![cfg(all(feature = "smol", feature = "tls"))]

use crate::common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth::tls::{CertKey, ClientAuth, PemSource, TlsConfig, TlsFailure, TlsVersion};
use berth::{Builder, CloseReason, Config, ConfigError, Conn, ConnEvent, Error, ServerHandle};
use common::pki::{Leaf, Pki};
use common::{EOF, Ev, LIMIT, Recorder, SmolRt, connect, ending, run, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};

fn client(
    ca: CertificateDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
    identity: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let key: PrivateKeyDer<'static> =
                rustls::pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder
                .with_client_auth_cert(vec![leaf.der.clone()], key)
                .unwrap()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A client trusting `ca` that verifies the server's certificate as valid for `name`,
/// whatever name it connects to.
fn client_verifying_as(ca: CertificateDer<'static>, name: &str) -> Arc<ClientConfig> {
    Arc::new(common::pki::client_verifying_as(ca, name))
}

/// The rustls error inside an `io::Error` from a client, if there is one.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const ONLY_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

type ClientStream = futures_rustls::client::TlsStream<async_net::TcpStream>;

async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> io::Result<ClientStream> {
    let tcp = connect(addr).await;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    futures_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Handshake, one echo, and the certificate the server presented. Any failure, at the
/// handshake or (TLS 1.3 client-auth rejection) at the first read, is an `Err`.
async fn try_echo(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> io::Result<CertificateDer<'static>> {
    let mut s = tls_connect(addr, name, config).await?;
    s.write_all(b"ping").await?;
    s.flush().await?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await?;
    assert_eq!(&back, b"ping");
    let presented = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    s.close().await?; // close_notify: the server sees a clean end of stream
    Ok(presented)
}

/// Echo handler that reports each connection's TLS info.
fn echo_reporting(
    tx: async_channel::Sender<Option<berth::tls::TlsInfo>>,
) -> impl Fn(Conn) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
+ Send
+ Sync
+ 'static {
    move |mut conn: Conn| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(conn.tls().cloned()).await;
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                if conn.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        })
    }
}

fn start(
    config: Config,
) -> (
    ServerHandle,
    Recorder,
    async_channel::Receiver<Option<berth::tls::TlsInfo>>,
) {
    let rec = Recorder::new();
    let (tx, rx) = async_channel::unbounded();
    let server = rec
        .attach(Builder::new(config).runtime(berth::runtime::Smol::global()))
        .bind()
        .expect("bind");
    (server.serve(echo_reporting(tx)), rec, rx)
}

fn tls_config(tls: TlsConfig) -> Config {
    {
        let mut c_config = Config::new("127.0.0.1:0");
        c_config.tls = Some(tls);
        c_config
    }
}

async fn tls_failed(rec: &Recorder) -> TlsFailure {
    match rec
        .next("TlsFailed", |e| {
            matches!(e, Ev::Conn(ConnEvent::TlsFailed { .. }))
        })
        .await
    {
        Ev::Conn(ConnEvent::TlsFailed { reason, .. }) => reason,
        _ => unreachable!(),
    }
}

#[test]
fn tls13_and_tls12_echo_with_session_info() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let (handle, rec, infos) = start(tls_config(leaf.tls_config()));
        assert!(handle.is_tls());
        assert!(matches!(
            rec.log()[0],
            Ev::Server(berth::ServerEvent::Listening { tls: true, .. })
        ));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        for (versions, expected) in [(ONLY_13, TlsVersion::Tls13), (ONLY_12, TlsVersion::Tls12)] {
            let presented = try_echo(addr, "localhost", client(pki.ca_der(), versions, &[], None))
                .await
                .unwrap();
            assert_eq!(presented, leaf.der);
            let info = infos
                .recv()
                .await
                .unwrap()
                .expect("a TLS connection has TLS info");
            assert_eq!(info.version, expected);
            assert!(!info.cipher_suite.is_empty());
            assert_eq!(info.server_name.as_deref(), Some("localhost"));
            assert!(info.peer_certificates.is_empty());
        }
        // Large payload over TLS, byte-exact.
        let mut s = tls_connect(addr, "localhost", client(pki.ca_der(), BOTH, &[], None))
            .await
            .unwrap();
        let data = common::pattern(3 << 20, 5);
        let (mut r, mut w) = futures_lite::io::split(&mut s);
        let send = async {
            w.write_all(&data).await.unwrap();
            w.flush().await.unwrap();
        };
        let mut back = vec![0u8; data.len()];
        let recv = async { r.read_exact(&mut back).await.unwrap() };
        futures_lite::future::zip(send, recv).await;
        assert!(back == data);
        let stats = handle.stats();
        assert_eq!(stats.tls_handshakes, 3);
        assert_eq!(stats.tls_failures, 0);
        handle.close().await;
    });
}

/// A client offering only versions the server does not take is refused with a
/// `protocol_version` alert, reported as a failed handshake and closed as `TlsFailed`.
async fn refused_for_its_version(addr: SocketAddr, client: Arc<ClientConfig>, rec: &Recorder) {
    let refused = try_echo(addr, "localhost", client).await.unwrap_err();
    assert_eq!(
        rustls_error(&refused),
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion
        )),
        "a client without the server's versions must be refused: {refused:?}"
    );
    let failure = tls_failed(rec).await;
    assert!(
        matches!(&failure, TlsFailure::Handshake(e) if e.contains("peer is incompatible")),
        "{failure:?}"
    );
    assert_eq!(rec.closed().await.1, CloseReason::TlsFailed);
}

#[test]
fn version_pinning_refuses_other_versions() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let tls = {
            let mut c_tls = leaf.tls_config();
            c_tls.min_version = TlsVersion::Tls13;
            c_tls
        };
        let (handle, rec, _infos) = start(tls_config(tls));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        refused_for_its_version(addr, client(pki.ca_der(), ONLY_12, &[], None), &rec).await;
        try_echo(addr, "localhost", client(pki.ca_der(), ONLY_13, &[], None))
            .await
            .unwrap();
        handle.close().await;
    });
}

/// `max_version = Tls12`: a client that offers both versions gets 1.2, one offering only
/// 1.3 is refused.
#[test]
fn max_version_pins_tls12() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let tls = {
            let mut c_tls = leaf.tls_config();
            c_tls.max_version = TlsVersion::Tls12;
            c_tls
        };
        let (handle, rec, infos) = start(tls_config(tls));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut s = tls_connect(addr, "localhost", client(pki.ca_der(), BOTH, &[], None))
            .await
            .unwrap();
        assert_eq!(
            s.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        s.write_all(b"ping").await.unwrap();
        s.flush().await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        let info = within(LIMIT, "tls info", infos.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.version, TlsVersion::Tls12);
        s.close().await.unwrap();
        assert_eq!(rec.closed().await.1, CloseReason::PeerClosed);

        refused_for_its_version(addr, client(pki.ca_der(), ONLY_13, &[], None), &rec).await;
        assert!(infos.try_recv().is_err(), "the handler never ran");
        assert_eq!(handle.stats().tls_failures, 1);
        handle.close().await;
    });
}

/// A chain with an intermediate CA in the PEM (leaf first) verifies for a client that
/// trusts only the root; without the intermediate it does not.
#[test]
fn certificate_chain_with_an_intermediate_verifies() {
    run::<SmolRt>(LIMIT, async {
        let root = Pki::new("root");
        let intermediate = root.intermediate("intermediate");
        let leaf = intermediate.leaf(&["localhost"]);
        let chain = TlsConfig::from_pem(
            format!("{}{}", leaf.cert_pem, intermediate.ca_pem()),
            leaf.key_pem.clone(),
        );
        let (handle, _rec, _infos) = start(tls_config(chain));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut s = tls_connect(addr, "localhost", client(root.ca_der(), BOTH, &[], None))
            .await
            .unwrap();
        assert_eq!(
            s.get_ref().1.peer_certificates().unwrap(),
            [leaf.der.clone(), intermediate.ca_der()],
            "the server sends the leaf, then the intermediate"
        );
        s.write_all(b"ping").await.unwrap();
        s.flush().await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        s.close().await.unwrap();
        handle.close().await;

        // The leaf alone: the client cannot build a path to the root.
        let (handle, _rec, _infos) = start(tls_config(leaf.tls_config()));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let err = tls_connect(addr, "localhost", client(root.ca_der(), BOTH, &[], None))
            .await
            .unwrap_err();
        assert_eq!(
            rustls_error(&err),
            Some(&rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
            "{err:?}"
        );
        handle.close().await;
    });
}

/// Mutual TLS with a client certificate from a CA the server does not trust: the handshake
/// fails on the server (TLS 1.3 too: a wrong certificate, unlike a missing one, fails at
/// the handshake), with `TlsFailed` and `Closed { TlsFailed }`, and the handler never runs.
#[test]
fn wrong_client_certificate_is_a_tls_failure() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("server-ca");
        let clients_ca = Pki::new("client-ca");
        let other_ca = Pki::new("other-ca");
        let leaf = pki.leaf(&["localhost"]);
        let wrong = other_ca.leaf(&["client.test"]);
        for mode in [ClientAuth::Optional, ClientAuth::Required] {
            let tls = {
                let mut c_tls = leaf.tls_config();
                c_tls.client_auth = mode;
                c_tls.client_ca = Some(PemSource::Pem(clients_ca.ca_pem()));
                c_tls
            };
            let (handle, rec, infos) = start(tls_config(tls));
            let addr = handle.local_addr().as_socket_addr().unwrap();
            for versions in [ONLY_13, ONLY_12] {
                let err = try_echo(
                    addr,
                    "localhost",
                    client(pki.ca_der(), versions, &[], Some(&wrong)),
                )
                .await
                .unwrap_err();
                // TLS 1.3 clients may see it at the handshake or at the first read.
                assert_eq!(
                    rustls_error(&err),
                    Some(&rustls::Error::AlertReceived(
                        rustls::AlertDescription::UnknownCA
                    )),
                    "{mode:?} {versions:?}: {err:?}"
                );
                let id = rec.accepted().await;
                let failure = tls_failed(&rec).await;
                assert!(
                    matches!(&failure, TlsFailure::Handshake(e) if e.contains("UnknownIssuer")),
                    "{mode:?} {versions:?}: {failure:?}"
                );
                assert_eq!(rec.closed().await, (id, CloseReason::TlsFailed));
            }
            assert!(infos.try_recv().is_err(), "the handler never ran");
            let log = rec.log();
            assert!(
                !log.iter()
                    .any(|e| matches!(e, Ev::Conn(ConnEvent::TlsEstablished { .. }))),
                "{log:#?}"
            );
            let stats = handle.stats();
            assert_eq!((stats.tls_failures, stats.tls_handshakes), (2, 0));
            assert_eq!(stats.closed_by(CloseReason::TlsFailed), 2);
            handle.close().await;
        }
    });
}

#[test]
fn sni_selects_the_certificate_with_a_default() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let alpha = pki.leaf(&["alpha.test"]);
        let beta = pki.leaf(&["beta.test", "*.beta.test"]);
        let entry = |leaf: &Leaf, names: &[&str]| CertKey {
            cert: PemSource::Pem(leaf.cert_pem.clone()),
            key: PemSource::Pem(leaf.key_pem.clone()),
            server_names: names.iter().map(|s| s.to_string()).collect(),
        };
        let tls = {
            let mut c_tls = TlsConfig::default();
            c_tls.certificates = vec![
                entry(&alpha, &["alpha.test"]),
                entry(&beta, &["beta.test", "www.beta.test"]),
            ];
            c_tls
        };
        let (handle, _rec, infos) = start(tls_config(tls));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let c = || client(pki.ca_der(), BOTH, &[], None);
        assert_eq!(try_echo(addr, "beta.test", c()).await.unwrap(), beta.der);
        assert_eq!(
            try_echo(addr, "www.beta.test", c()).await.unwrap(),
            beta.der
        );
        assert_eq!(try_echo(addr, "alpha.test", c()).await.unwrap(), alpha.der);
        let names: Vec<_> = (0..3)
            .map(|_| infos.try_recv().unwrap().unwrap().server_name.unwrap())
            .collect();
        assert_eq!(names, ["beta.test", "www.beta.test", "alpha.test"]);
        // An unknown name gets the default (first) certificate: a normal client rejects it
        // because it does not cover the name...
        let unknown = tls_connect(addr, "gamma.test", c()).await.unwrap_err();
        assert!(
            matches!(
                rustls_error(&unknown),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{unknown:?}"
        );
        // ...and a client that accepts alpha's name sees that it was alpha's certificate,
        // a full session on it: the fallback is the default, not an error.
        let fallback = client_verifying_as(pki.ca_der(), "alpha.test");
        assert_eq!(
            try_echo(addr, "gamma.test", fallback.clone())
                .await
                .unwrap(),
            alpha.der
        );
        // No SNI at all (a client connecting to an IP address sends none): the default too.
        let tcp = connect(addr).await;
        let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut s = futures_rustls::TlsConnector::from(fallback)
            .connect(ip, tcp)
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], alpha.der);
        s.write_all(b"ping").await.unwrap();
        s.flush().await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        let servers_view: Vec<_> = (0..2)
            .map(|_| infos.try_recv().unwrap().unwrap().server_name)
            .collect();
        assert_eq!(servers_view, [Some("gamma.test".to_owned()), None]);
        drop(s);
        handle.close().await;
    });
}

#[test]
fn alpn_is_negotiated_and_visible() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let tls = {
            let mut c_tls = leaf.tls_config();
            c_tls.alpn = vec!["h2".into(), "http/1.1".into()];
            c_tls
        };
        let (handle, rec, infos) = start(tls_config(tls));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let s = tls_connect(
            addr,
            "localhost",
            client(pki.ca_der(), BOTH, &["http/1.1"], None),
        )
        .await
        .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let info = within(LIMIT, "tls info", infos.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
        let established = rec
            .next("TlsEstablished", |e| {
                matches!(e, Ev::Conn(ConnEvent::TlsEstablished { .. }))
            })
            .await;
        assert!(matches!(
            established,
            Ev::Conn(ConnEvent::TlsEstablished { info, .. }) if info.alpn.as_deref() == Some(&b"http/1.1"[..])
        ));
        drop(s);
        handle.close().await;
    });
}

#[test]
fn client_auth_none_optional_required() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("server-ca");
        let clients_ca = Pki::new("client-ca");
        let other_ca = Pki::new("other-ca");
        let leaf = pki.leaf(&["localhost"]);
        let good = clients_ca.leaf(&["client.test"]);
        let wrong = other_ca.leaf(&["client.test"]);
        for mode in [ClientAuth::None, ClientAuth::Optional, ClientAuth::Required] {
            let tls = {
                let mut c_tls = leaf.tls_config();
                c_tls.client_auth = mode;
                c_tls.client_ca =
                    (mode != ClientAuth::None).then(|| PemSource::Pem(clients_ca.ca_pem()));
                c_tls
            };
            let (handle, _rec, infos) = start(tls_config(tls));
            let addr = handle.local_addr().as_socket_addr().unwrap();
            for versions in [ONLY_13, ONLY_12] {
                let attempt = |identity: Option<&Leaf>| {
                    try_echo(
                        addr,
                        "localhost",
                        client(pki.ca_der(), versions, &[], identity),
                    )
                };
                // No certificate: fine unless required (TLS 1.3 shows the rejection on the
                // first read, TLS 1.2 at the handshake; try_echo covers both).
                let none = attempt(None).await;
                assert_eq!(
                    none.is_ok(),
                    mode != ClientAuth::Required,
                    "{mode:?} {versions:?}"
                );
                if none.is_ok() {
                    let info = infos.recv().await.unwrap().unwrap();
                    assert!(info.peer_certificates.is_empty());
                }
                // A certificate from the trusted CA: always fine; visible when asked for.
                attempt(Some(&good)).await.unwrap();
                let info = infos.recv().await.unwrap().unwrap();
                if mode == ClientAuth::None {
                    assert!(info.peer_certificates.is_empty());
                } else {
                    assert_eq!(info.peer_certificates, vec![good.der.to_vec()]);
                }
                // A certificate from another CA: rejected whenever it is verified.
                let wrong_result = attempt(Some(&wrong)).await;
                assert_eq!(wrong_result.is_ok(), mode == ClientAuth::None, "{mode:?}");
                if wrong_result.is_ok() {
                    infos.recv().await.unwrap();
                }
            }
            // Failed handshakes close on the server's side too: nothing is left to force.
            let report = handle.close().await;
            assert_eq!(report.still_open, 0);
        }
    });
}

#[test]
fn handshake_timeout_drops_silent_and_half_hello_clients() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let config = {
            let mut c_config = tls_config(leaf.tls_config());
            c_config.handshake_timeout = Duration::from_millis(300);
            c_config
        };
        let (handle, rec, _infos) = start(config);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        // Silent: connects and sends nothing.
        let mut silent = connect(addr).await;
        let started = std::time::Instant::now();
        assert_eq!(tls_failed(&rec).await, TlsFailure::Timeout);
        assert!(started.elapsed() >= Duration::from_millis(250));
        // Closed without a word: no alert, a clean end of file.
        assert_eq!(ending(&mut silent).await, EOF);
        // Half a ClientHello: a record header promising 512 bytes, then only a few.
        let mut half = connect(addr).await;
        half.write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .unwrap();
        assert_eq!(tls_failed(&rec).await, TlsFailure::Timeout);
        assert_eq!(ending(&mut half).await, EOF);
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::TlsFailed);
        assert_eq!(handle.open_connections(), 0);
        assert_eq!(handle.stats().tls_failures, 2);
        handle.close().await;
    });
}

#[test]
fn two_hundred_silent_clients_do_not_delay_a_good_one() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let (handle, rec, _infos) = start(tls_config(leaf.tls_config())); // 10 s handshake timeout
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(connect(addr).await);
        }
        for _ in 0..200 {
            rec.accepted().await;
        }
        // All 200 are mid-handshake (none timed out: the timeout is 10 s) and a good client
        // is served at once.
        try_echo(addr, "localhost", client(pki.ca_der(), BOTH, &[], None))
            .await
            .unwrap();
        assert!(handle.open_connections() >= 200);
        assert_eq!(handle.stats().tls_failures, 0);
        // The good client has gone; wait for its connection to close before counting.
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::PeerClosed);
        let report = handle.close().await;
        assert_eq!(
            report.forced, 200,
            "connections mid-handshake are forced at close"
        );
        let failures = rec
            .log()
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    Ev::Conn(ConnEvent::TlsFailed {
                        reason: TlsFailure::Shutdown,
                        ..
                    })
                )
            })
            .count();
        assert_eq!(failures, 200);
    });
}

#[test]
fn garbage_and_plain_text_fail_only_their_connection() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let (handle, rec, _infos) = start(tls_config(leaf.tls_config()));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        for junk in [
            common::pattern(4096, 1),
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            b"hello server\n".to_vec(),
        ] {
            let mut c = connect(addr).await;
            c.write_all(&junk).await.unwrap();
            assert!(matches!(tls_failed(&rec).await, TlsFailure::Handshake(_)));
            // The server answers with one fatal alert record, then closes cleanly.
            let mut answer = Vec::new();
            within(LIMIT, "the server's answer", c.read_to_end(&mut answer))
                .await
                .unwrap();
            assert_eq!(answer.len(), 7, "{answer:?}");
            assert_eq!(
                (answer[0], &answer[3..6]),
                (0x15, &[0, 2, 2][..]),
                "{answer:?}"
            );
        }
        try_echo(addr, "localhost", client(pki.ca_der(), BOTH, &[], None))
            .await
            .unwrap();
        assert_eq!(handle.stats().tls_failures, 3);
        assert_eq!(handle.stats().closed_by(CloseReason::TlsFailed), 3);
        handle.close().await;
    });
}

#[test]
fn reload_changes_the_certificate_for_new_connections_only() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let first = pki.leaf(&["localhost"]);
        let second = pki.leaf(&["localhost"]);
        let (handle, _rec, _infos) = start(tls_config(first.tls_config()));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let c = || client(pki.ca_der(), BOTH, &[], None);
        let mut established = tls_connect(addr, "localhost", c()).await.unwrap();
        assert_eq!(
            established.get_ref().1.peer_certificates().unwrap()[0],
            first.der
        );

        handle.reload_tls(&second.tls_config()).unwrap();
        assert_eq!(try_echo(addr, "localhost", c()).await.unwrap(), second.der);
        // The established session is unaffected.
        established.write_all(b"ping").await.unwrap();
        established.flush().await.unwrap();
        let mut back = [0u8; 4];
        established.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");

        // A reload that fails validation keeps the current configuration.
        let broken = TlsConfig::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem");
        let err = handle.reload_tls(&broken).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
        let mismatched = TlsConfig::from_pem(first.cert_pem.clone(), second.key_pem.clone());
        assert!(matches!(
            handle.reload_tls(&mismatched),
            Err(Error::Tls(berth::tls::TlsError::KeyMismatch { .. }))
        ));
        assert_eq!(try_echo(addr, "localhost", c()).await.unwrap(), second.der);
        handle.close().await;
    });
}

#[test]
fn reload_of_a_plain_server_is_refused() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let (handle, _rec, _infos) = start(Config::new("127.0.0.1:0"));
        assert!(!handle.is_tls());
        assert!(matches!(
            handle.reload_tls(&leaf.tls_config()),
            Err(Error::Tls(berth::tls::TlsError::NotEnabled))
        ));
        handle.close().await;
    });
}

#[test]
fn user_built_rustls_config_is_served() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let (config, _) = leaf.tls_config().load().unwrap();
        let (tx, _rx) = async_channel::unbounded();
        let handle = Builder::new(Config::new("127.0.0.1:0"))
            .runtime(berth::runtime::Smol::global())
            .tls_server_config(config)
            .bind()
            .unwrap()
            .serve(echo_reporting(tx));
        try_echo(
            handle.local_addr().as_socket_addr().unwrap(),
            "localhost",
            client(pki.ca_der(), BOTH, &[], None),
        )
        .await
        .unwrap();
        handle.close().await;
    });
}

#[test]
fn tls_configuration_errors_name_the_problem() {
    let pki = Pki::new("ca");
    let leaf = pki.leaf(&["localhost"]);
    let other = pki.leaf(&["localhost"]);
    let dir = std::env::temp_dir().join(format!("berth-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, &leaf.cert_pem).unwrap();
    std::fs::write(&key_file, &leaf.key_pem).unwrap();
    let bind = |tls: TlsConfig| {
        Builder::new(tls_config(tls))
            .runtime(berth::runtime::Smol::global())
            .bind()
            .map(|_| ())
    };
    // From files: works.
    bind(TlsConfig::from_pem_files(&cert_file, &key_file)).unwrap();

    let message = |tls: TlsConfig| bind(tls).unwrap_err().to_string();
    let missing = message(TlsConfig::from_pem_files(dir.join("nope.pem"), &key_file));
    assert!(missing.contains("nope.pem"), "{missing}");
    let no_cert = message(TlsConfig::from_pem(
        leaf.key_pem.clone(),
        leaf.key_pem.clone(),
    ));
    assert!(no_cert.contains("no certificate found"), "{no_cert}");
    let no_key = message(TlsConfig::from_pem(
        leaf.cert_pem.clone(),
        leaf.cert_pem.clone(),
    ));
    assert!(no_key.contains("no private key found"), "{no_key}");
    let garbled = message(TlsConfig::from_pem(
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        leaf.key_pem.clone(),
    ));
    assert!(garbled.contains("in-memory PEM"), "{garbled}");
    let mismatch = message(TlsConfig::from_pem(
        leaf.cert_pem.clone(),
        other.key_pem.clone(),
    ));
    assert!(mismatch.contains("does not match"), "{mismatch}");
    let inverted = message({
        let mut c_tls = leaf.tls_config();
        c_tls.min_version = TlsVersion::Tls13;
        c_tls.max_version = TlsVersion::Tls12;
        c_tls
    });
    assert!(inverted.contains("min_version"), "{inverted}");
    let cipher = message({
        let mut c_tls = leaf.tls_config();
        c_tls.cipher_suites = vec!["TLS_NOT_A_SUITE".into()];
        c_tls
    });
    assert!(
        cipher.contains("TLS_NOT_A_SUITE") && cipher.contains("TLS13_"),
        "{cipher}"
    );
    bind({
        let mut c_tls = leaf.tls_config();
        c_tls.cipher_suites = vec!["TLS13_AES_256_GCM_SHA384".into()];
        c_tls
    })
    .unwrap();
    for ca in [None, Some(PemSource::Pem(String::new()))] {
        let empty_ca = message({
            let mut c_tls = leaf.tls_config();
            c_tls.client_auth = ClientAuth::Required;
            c_tls.client_ca = ca;
            c_tls
        });
        assert!(empty_ca.contains("client CA bundle"), "{empty_ca}");
    }
    let none = message(TlsConfig::default());
    assert!(none.contains("no certificate is configured"), "{none}");
    let bad_sni = message({
        let mut c_tls = TlsConfig::default();
        c_tls.certificates = vec![CertKey {
            cert: PemSource::Pem(leaf.cert_pem.clone()),
            key: PemSource::Pem(leaf.key_pem.clone()),
            server_names: vec!["not-covered.test".into()],
        }];
        c_tls
    });
    assert!(bad_sni.contains("not-covered.test"), "{bad_sni}");
    // Typed, too.
    assert!(matches!(
        bind(TlsConfig::default()),
        Err(Error::Tls(berth::tls::TlsError::NoCertificates))
    ));
    assert!(matches!(
        Builder::new({
            let mut c_config = tls_config(leaf.tls_config());
            c_config.handshake_timeout = Duration::ZERO;
            c_config
        })
        .bind(),
        Err(Error::Config(ConfigError::ZeroHandshakeTimeout))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn expired_certificate_is_reported_at_load() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let expired = pki.leaf_with(&["localhost"], |p| {
            p.not_before = rcgen::date_time_ymd(2001, 1, 1);
            p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        });
        let rec = Recorder::new();
        let server = rec
            .attach(
                Builder::new(tls_config(expired.tls_config()))
                    .runtime(berth::runtime::Smol::global()),
            )
            .bind()
            .expect("an expired certificate is a warning, not a bind failure");
        let warning = rec.error().await;
        assert!(warning.contains("outside its validity period"), "{warning}");
        drop(server);
    });
}

#[test]
fn tls_config_is_serde() {
    let text = r#"
        address = "127.0.0.1:0"
        handshake_timeout = "5s"
        [tls]
        min_version = "1.3"
        alpn = ["h2"]
        client_auth = "optional"
        client_ca = { path = "/etc/berth/clients.pem" }
        [[tls.certificates]]
        cert = { path = "/etc/berth/cert.pem" }
        key = { path = "/etc/berth/key.pem" }
        server_names = ["example.test"]
    "#;
    let config: Config = toml::from_str(text).unwrap();
    let tls = config.tls.clone().unwrap();
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.client_auth, ClientAuth::Optional);
    assert_eq!(config.handshake_timeout, Duration::from_secs(5));
    let back: Config = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
    // In-memory PEM never shows up in Debug output (it may be a private key).
    let secret = TlsConfig::from_pem("CERT", "SECRET KEY");
    assert!(!format!("{secret:?}").contains("SECRET"));
}

#[test]
fn session_resumption_is_on_by_default_and_can_be_turned_off() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        for (resumption, versions) in [(true, ONLY_13), (true, ONLY_12), (false, ONLY_13)] {
            let tls = {
                let mut c_tls = leaf.tls_config();
                c_tls.session_resumption = resumption;
                c_tls
            };
            let (handle, _rec, _infos) = start(tls_config(tls));
            let addr = handle.local_addr().as_socket_addr().unwrap();
            // One client config, so the client keeps its session cache between connections.
            let config = client(pki.ca_der(), versions, &[], None);
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let mut s = tls_connect(addr, "localhost", config.clone())
                    .await
                    .unwrap();
                s.write_all(b"ping").await.unwrap();
                s.flush().await.unwrap();
                let mut back = [0u8; 4];
                s.read_exact(&mut back).await.unwrap(); // TLS 1.3 tickets arrive with data
                kinds.push(s.get_ref().1.handshake_kind().unwrap());
                s.close().await.unwrap();
            }
            use rustls::HandshakeKind::{Full, Resumed};
            let expected = if resumption {
                [Full, Resumed]
            } else {
                [Full, Full]
            };
            assert_eq!(kinds, expected, "resumption {resumption} {versions:?}");
            handle.close().await;
        }
    });
}

#[test]
fn idle_tls_connections_drain_without_being_forced() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let rec = Recorder::new();
        let handle = rec
            .attach(
                Builder::new({
                    let mut c_config = tls_config(leaf.tls_config());
                    c_config.linger_timeout = Duration::from_secs(3600);
                    c_config
                })
                .runtime(berth::runtime::Smol::global()),
            )
            .bind()
            .unwrap()
            .serve(|mut conn: Conn| async move {
                // The echo example's loop: readable() also returns when draining starts.
                loop {
                    if conn.readable().await.is_err() || conn.is_draining() {
                        return;
                    }
                    let mut buf = [0u8; 256];
                    match conn.read(&mut buf).await {
                        Ok(n @ 1..) => {
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
        for _ in 0..3 {
            let mut s = tls_connect(addr, "localhost", client(pki.ca_der(), BOTH, &[], None))
                .await
                .unwrap();
            s.write_all(b"ping").await.unwrap();
            s.flush().await.unwrap();
            let mut back = [0u8; 4];
            s.read_exact(&mut back).await.unwrap();
            clients.push(s);
        }
        // Idle TLS connections: the drain reaches them (deadline an hour away).
        let h = handle.clone();
        let shutdown = async move { h.shutdown_within(Duration::from_secs(3600)).await };
        let clients_close = async {
            for s in &mut clients {
                // The handler returned on the drain: close_notify (rustls reports a bare FIN
                // as an error), so a clean end of file.
                assert_eq!(ending(s).await, EOF);
            }
            clients.clear();
        };
        let (report, ()) = futures_lite::future::zip(shutdown, clients_close).await;
        assert_eq!(report.unwrap().drained, 3);
    });
}

/// TLS works over any listener: here a Unix domain socket, whose peer credentials still
/// reach the handler through the TLS stream.
#[cfg(unix)]
#[test]
fn tls_over_a_unix_socket_keeps_peer_credentials() {
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("ca");
        let leaf = pki.leaf(&["localhost"]);
        let dir = std::env::temp_dir().join(format!("berth-tls-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tls.sock");
        let config = {
            let mut c_config = tls_config(leaf.tls_config());
            c_config.unix = Some(berth::UnixConfig::new(&path));
            c_config
        };
        let (tx, rx) = async_channel::unbounded();
        let handle = Builder::new(config)
            .runtime(berth::runtime::Smol::global())
            .bind()
            .unwrap()
            .serve(move |mut conn: Conn| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((conn.tls().cloned(), conn.peer_cred())).await;
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
        let unix = async_net::unix::UnixStream::connect(&path).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut s = futures_rustls::TlsConnector::from(client(pki.ca_der(), ONLY_13, &[], None))
            .connect(name, unix)
            .await
            .expect("TLS handshake over the Unix socket");
        s.write_all(b"secret").await.unwrap();
        s.flush().await.unwrap();
        let mut back = [0u8; 6];
        within(LIMIT, "echo", s.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(&back, b"secret");
        let (info, cred) = within(LIMIT, "handler report", rx.recv()).await.unwrap();
        assert_eq!(info.unwrap().version, TlsVersion::Tls13);
        assert_eq!(cred.unwrap().pid, Some(std::process::id() as i32));
        s.close().await.unwrap();
        handle
            .shutdown_within(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
