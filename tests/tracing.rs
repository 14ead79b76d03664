//! The `tracing` feature: one span per connection with its fields, lifecycle events inside
//! it, server events, and nothing per read or write.
#![cfg(all(feature = "tracing", feature = "smol", feature = "tls"))]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use berth::{Builder, Config, Conn};
use common::{LIMIT, Recorder, SmolRt, connect, run};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn connection_span_and_lifecycle_events() {
    let log = Captured::default();
    let writer = log.clone();
    // Global: berth's events happen on executor threads.
    tracing_subscriber::fmt()
        .with_env_filter("berth=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    run::<SmolRt>(LIMIT, async {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let rec = Recorder::new();
        let handle = rec
            .attach(Builder::new({
                let mut c_config = Config::new("127.0.0.1:0");
                c_config.tls = Some(berth::tls::TlsConfig::from_pem(
                    cert.pem(),
                    key.serialize_pem(),
                ));
                c_config
            }))
            .bind()
            .unwrap()
            .serve(|mut conn: Conn| async move {
                let mut buf = [0u8; 64];
                for _ in 0..50 {
                    match conn.read(&mut buf).await {
                        Ok(n @ 1..) => {
                            let _ = conn.write_all(&buf[..n]).await;
                        }
                        _ => return,
                    }
                }
            });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = futures_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();
        for _ in 0..20 {
            tls.write_all(b"ping").await.unwrap();
            tls.flush().await.unwrap();
            let mut back = [0u8; 4];
            tls.read_exact(&mut back).await.unwrap();
        }
        tls.close().await.unwrap();
        rec.closed().await;
        handle
            .shutdown_within(std::time::Duration::from_secs(5))
            .await
            .unwrap();
    });

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let has = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(has("listening"), "{text}");
    assert!(
        has("conn{id=1 peer=127.0.0.1:"),
        "the connection's span: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("conn{id=1") && l.contains("accepted")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("tls=TLS 1.3") && l.contains("closed")),
        "TLS fields recorded, Closed inside the span: {text}"
    );
    assert!(has("draining") && has("stopped"), "{text}");
    // 20 round trips, yet only a handful of lines: nothing per read or write.
    assert!(text.lines().count() < 12, "{text}");
}
