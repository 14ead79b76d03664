//! Several listeners, one server: a plain TCP port, a TLS port and a Unix socket share one
//! pool, one set of limits, one drain; events and connections know their listener.
#![cfg(all(unix, feature = "smol", feature = "tls"))]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use berth::{Builder, Config, Conn, ConnEvent, ListenerConfig, ServerEvent, UnixConfig};
use common::{Ev, LIMIT, Recorder, Rt, SmolRt, TempDir, run, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// A throwaway CA and a certificate for localhost, as PEM, plus the CA for clients.
fn certificate() -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

fn tls_client(root: rustls::pki_types::CertificateDer<'static>) -> futures_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    futures_rustls::TlsConnector::from(Arc::new(config))
}

/// Writes `msg`, reads it back, then reads the handler's report of its listener.
async fn echo_and_listener<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin>(
    s: &mut S,
    msg: &[u8],
) -> String {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within(LIMIT, "the echo", s.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, msg);
    let mut name = vec![0u8; 64];
    let n = within(LIMIT, "the listener's name", s.read(&mut name))
        .await
        .unwrap();
    String::from_utf8(name[..n].to_vec()).unwrap()
}

#[test]
fn plain_tls_and_unix_listeners_share_one_server() {
    let dir = TempDir::new("listeners", "three");
    let sock = dir.join("s.sock");
    let (cert, key, root) = certificate();
    let mut config = Config::new("127.0.0.1:0");
    config.max_connections = Some(2);
    let mut tls = ListenerConfig::tcp("127.0.0.1:0");
    tls.name = Some("tls".into());
    tls.tls = Some(berth::tls::TlsConfig::from_pem(cert, key));
    config.listeners.push(tls);
    config
        .listeners
        .push(ListenerConfig::unix(UnixConfig::new(&sock)));
    run::<SmolRt>(LIMIT, async {
        let rec = Recorder::new();
        let server = rec
            .attach(Builder::new(config).runtime(SmolRt::runtime()))
            .bind()
            .unwrap();
        let listeners = server.listeners();
        let names: Vec<&str> = listeners.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:0", "tls", sock.to_str().unwrap()]);
        let plain_addr = listeners[0].1.as_socket_addr().unwrap();
        let tls_addr = listeners[1].1.as_socket_addr().unwrap();
        assert_ne!(plain_addr, tls_addr);
        assert_eq!(listeners[2].1.as_unix_path(), Some(sock.as_path()));

        let handle = server.serve(|mut conn: Conn| async move {
            let mut buf = [0u8; 64];
            if let Ok(n @ 1..) = conn.read(&mut buf).await {
                let _ = conn.write_all(&buf[..n]).await;
                let name = conn.listener().to_owned();
                let _ = conn.write_all(name.as_bytes()).await;
                let _ = conn.flush().await;
            }
            // Stay open until the client closes or the server drains.
            let _ = conn.readable().await;
        });
        // One Listening event per listener, in order, with its TLS setting.
        let mut listening = Vec::new();
        while listening.len() < 3 {
            if let Ev::Server(ServerEvent::Listening { listener, tls, .. }) = rec
                .next("a Listening event", |e| {
                    matches!(e, Ev::Server(ServerEvent::Listening { .. }))
                })
                .await
            {
                listening.push((listener.to_string(), tls));
            }
        }
        assert_eq!(
            listening,
            [
                ("127.0.0.1:0".to_owned(), false),
                ("tls".to_owned(), true),
                (sock.display().to_string(), false)
            ]
        );
        assert!(handle.is_tls());

        let mut plain = async_net::TcpStream::connect(plain_addr).await.unwrap();
        assert_eq!(echo_and_listener(&mut plain, b"plain").await, "127.0.0.1:0");
        let tcp = async_net::TcpStream::connect(tls_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut secure = tls_client(root).connect(name, tcp).await.unwrap();
        assert_eq!(echo_and_listener(&mut secure, b"secure").await, "tls");
        // Each Accepted names its listener.
        let mut accepted = Vec::new();
        while accepted.len() < 2 {
            if let Ev::Conn(ConnEvent::Accepted { listener, .. }) = rec
                .next("an Accepted event", |e| {
                    matches!(e, Ev::Conn(ConnEvent::Accepted { .. }))
                })
                .await
            {
                accepted.push(listener.to_string());
            }
        }
        assert_eq!(accepted, ["127.0.0.1:0", "tls"]);

        // One limit for the whole server: with two open, the Unix listener waits too.
        assert_eq!(handle.open_connections(), 2);
        let mut unix = async_net::unix::UnixStream::connect(&sock).await.unwrap();
        unix.write_all(b"queued").await.unwrap();
        let mut back = [0u8; 6];
        let waited =
            common::completes_within(Duration::from_millis(200), unix.read_exact(&mut back)).await;
        assert!(waited.is_none(), "max_connections applies across listeners");
        drop(plain);
        within(LIMIT, "the queued echo", unix.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(&back, b"queued");
        let mut name = vec![0u8; sock.as_os_str().len()];
        within(LIMIT, "the listener's name", unix.read_exact(&mut name))
            .await
            .unwrap();
        assert_eq!(name, sock.as_os_str().as_encoded_bytes());

        // One drain for all: both open connections end (the clients read end of file and
        // close), all listeners close.
        let clients = async {
            let mut rest = Vec::new();
            secure.read_to_end(&mut rest).await.unwrap();
            drop(secure);
            unix.read_to_end(&mut rest).await.unwrap();
            drop(unix);
            rest
        };
        let (report, rest) = within(
            LIMIT,
            "shutdown",
            futures_lite::future::zip(handle.shutdown_within(LIMIT), clients),
        )
        .await;
        assert!(rest.is_empty(), "{rest:?}");
        let report = report.unwrap();
        assert_eq!((report.drained, report.forced), (2, 0), "{:#?}", rec.log());
        assert!(async_net::TcpStream::connect(plain_addr).await.is_err());
        assert!(async_net::TcpStream::connect(tls_addr).await.is_err());
        assert!(!sock.exists(), "the Unix socket file is removed");
    });
}

#[test]
fn repeated_addresses_get_numbered_names_and_explicit_names_must_be_unique() {
    let mut config = Config::new("127.0.0.1:0");
    config.listeners.push(ListenerConfig::tcp("127.0.0.1:0"));
    config.listeners.push(ListenerConfig::tcp("127.0.0.1:0"));
    let server = Builder::new(config.clone())
        .runtime(SmolRt::runtime())
        .bind()
        .expect("unnamed listeners on one address are numbered");
    let names: Vec<String> = server.listeners().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["127.0.0.1:0", "127.0.0.1:0#2", "127.0.0.1:0#3"]);
    drop(server);

    let mut named = ListenerConfig::tcp("127.0.0.1:0");
    named.name = Some("api".into());
    config.listeners = vec![named.clone(), named];
    let err = Builder::new(config)
        .runtime(SmolRt::runtime())
        .bind()
        .unwrap_err();
    assert!(
        matches!(
            &err,
            berth::Error::Config(berth::ConfigError::DuplicateListenerName(name)) if name == "api"
        ),
        "{err}"
    );
}
