//! Let's Encrypt's test ACME server, pebble, with pebble-challtestsrv as its DNS server
//! answering 127.0.0.1 for every name, on free ports, in a directory of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};

use super::pki::Pki;

/// A port nobody listens on now (see [`super::free_ports`]).
pub fn free_port() -> u16 {
    let [port] = super::free_ports();
    port
}

/// Whether pebble and pebble-challtestsrv are installed (under CI=true: must be).
pub fn available() -> bool {
    let found = ["pebble", "pebble-challtestsrv"].iter().all(|name| {
        Command::new(name)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "pebble and pebble-challtestsrv are required when CI=true (.ci/run installs the Debian package pebble)"
        );
        eprintln!("SKIPPED: pebble is not installed (apt-get install pebble) to run this test");
    }
    found
}

/// Waits until something accepts connections on `addr`.
fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening on {addr}");
        }
        assert!(Instant::now() < deadline, "{what} not listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// The directory URL.
    pub directory: String,
    /// The CA of pebble's own HTTPS (for `--acme-ca`).
    pub https_ca: PathBuf,
    https_ca_der: CertificateDer<'static>,
    management: SocketAddr,
    listen: SocketAddr,
}

impl Pebble {
    /// Starts pebble (validating TLS-ALPN-01 on `tls_port`), its certificates valid for
    /// `validity` seconds when given, its files in `dir`.
    pub fn start(dir: &Path, tls_port: u16, validity: Option<u64>) -> Pebble {
        std::fs::create_dir_all(dir).unwrap();
        let pki = Pki::new("pebble https test CA");
        let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
        let https_ca = dir.join("pebble-https-ca.pem");
        std::fs::write(&https_ca, pki.ca_pem()).unwrap();
        std::fs::write(dir.join("pebble-cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), &leaf.key_pem).unwrap();
        let dns_port = free_port();
        let dns_management = free_port();
        let mut dns = Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        wait_listening(
            ([127, 0, 0, 1], dns_management).into(),
            "pebble-challtestsrv",
            &mut dns,
        );
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let management: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": free_port(),
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(seconds) = validity {
            config["pebble"]["certificateValidityPeriod"] = seconds.into();
        }
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let mut pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pebble");
        wait_listening(listen, "pebble", &mut pebble);
        wait_listening(management, "pebble's management", &mut pebble);
        Pebble {
            pebble,
            dns,
            directory: format!("https://{listen}/dir"),
            https_ca,
            https_ca_der: pki.ca_der(),
            management,
            listen,
        }
    }

    /// The root pebble issues under (it changes with each start).
    pub fn root(&self) -> CertificateDer<'static> {
        let body = https_get(self.management, &self.https_ca_der, "/roots/0");
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(body.as_bytes()).expect("a PEM root from /roots/0")
    }

    /// pebble's log so far.
    pub fn log(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
    }

    /// Stops pebble and its DNS server.
    pub fn stop(mut self) {
        self.kill();
        // Gone for good: nothing accepts on its address any more.
        assert!(TcpStream::connect_timeout(&self.listen, Duration::from_millis(500)).is_err());
    }

    fn kill(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A GET over HTTPS trusting `ca`, with a blocking rustls client; the body.
fn https_get(addr: SocketAddr, ca: &CertificateDer<'static>, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    // pebble closes without close_notify at times: keep what arrived.
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (_, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response from {addr}{path}: {response:?}"));
    body.to_owned()
}

/// A TLS handshake with `addr` asking for `name`, verifying the chain against `root`;
/// then one echo round trip. The server's end-entity certificate, or why it failed.
pub fn handshake(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> Result<CertificateDer<'static>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    handshake_with(addr, name, config)
}

/// [`handshake`] with a client configuration of the caller's.
pub fn handshake_with(
    addr: SocketAddr,
    name: &str,
    config: rustls::ClientConfig,
) -> Result<CertificateDer<'static>, String> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), server_name).map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"ping\n").map_err(|e| e.to_string())?;
    let mut echoed = [0u8; 5];
    tls.read_exact(&mut echoed).map_err(|e| e.to_string())?;
    if &echoed != b"ping\n" {
        return Err(format!("echoed {echoed:?}"));
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first().cloned())
        .ok_or("no certificate")?;
    Ok(leaf.into_owned())
}
