//! ACME against a real ACME server: the echo example (`--acme-*` flags) and pebble, Let's
//! Encrypt's test server, with pebble-challtestsrv resolving every name to 127.0.0.1 and
//! pebble validating TLS-ALPN-01 on the echo's port. Without pebble the tests are skipped
//! (loudly), or fail under CI=true.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use berth::tls::PemSource;
use berth::tls::acme::{AcmeConfig, CertificateOrigin};
use berth::{Builder, Config, Conn, ServerEvent};
use common::example::{Example, example_bin};
use common::pebble::{self, Pebble, free_port, handshake, handshake_with};
use common::pki::{Pki, client_verifying_as};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::CertificateDer;

const NAMES: [&str; 2] = ["one.example.com", "two.example.com"];
/// How long a certificate may take to be issued by pebble (it takes about a second).
const ISSUE: Duration = Duration::from_secs(60);

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-acme-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the echo example on `port`, its ACME directory `directory`.
fn echo(port: u16, directory: &str, ca: &Path, cache: &Path, extra: &[&str]) -> Example {
    let mut command = Command::new(example_bin("echo"));
    command
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--acme-directory", directory])
        .arg("--acme-ca")
        .arg(ca)
        .arg("--acme-cache")
        .arg(cache)
        .args(["--acme-contact", "ops@example.com", "--threads", "2"])
        .args(extra);
    for name in NAMES {
        command.args(["--acme-domain", name]);
    }
    Example::start(command)
}

/// Waits (within `limit`) for a stdout line starting with `prefix` and containing
/// `contains`, skipping others; returns it.
fn line(echo: &Example, prefix: &str, contains: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match echo.lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) && line.contains(contains) => return line,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                panic!("no line {prefix:?}..{contains:?} from echo within {limit:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("echo closed its stdout before a line {prefix:?}..{contains:?}")
            }
        }
    }
}

/// Waits (within `limit`) for one stdout line per `(prefix, contains)`, in any order;
/// returns them in the order asked.
fn all_lines(echo: &Example, wanted: &[(&str, &str)], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut found: Vec<Option<String>> = vec![None; wanted.len()];
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = echo
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("waiting for {wanted:?}, found {found:?}: {e:?}"));
        for (slot, (prefix, contains)) in found.iter_mut().zip(wanted) {
            if slot.is_none() && line.starts_with(prefix) && line.contains(contains) {
                *slot = Some(line.clone());
            }
        }
    }
    found.into_iter().flatten().collect()
}

/// The certificate's names (its subjectAltName DNS names).
fn names(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Handshakes until one succeeds (within `limit`).
fn served(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
    limit: Duration,
) -> CertificateDer<'static> {
    let deadline = Instant::now() + limit;
    loop {
        match handshake(addr, name, root) {
            Ok(leaf) => return leaf,
            Err(e) if Instant::now() > deadline => {
                panic!("no good handshake within {limit:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// pebble and an echo that got a certificate for both names from it.
struct Setup {
    dir: std::path::PathBuf,
    port: u16,
    metrics: SocketAddr,
    pebble: Pebble,
    echo: Example,
    root: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    took: Duration,
}

fn obtain(name: &str, validity: Option<u64>, runtime: &str) -> Setup {
    let dir = tempdir(name);
    let port = free_port();
    let pebble = Pebble::start(&dir, port, validity);
    let metrics = addr(free_port());
    let started = Instant::now();
    let echo = echo(
        port,
        &pebble.directory,
        &pebble.https_ca,
        &dir.join("cache"),
        &["--runtime", runtime, "--metrics-addr", &metrics.to_string()],
    );
    let issued = line(&echo, "acme: certificate for", " issued", ISSUE);
    assert!(
        issued.contains("one.example.com,two.example.com"),
        "{issued}"
    );
    let root = pebble.root();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let leaf = served(addr, NAMES[0], &root, Duration::from_secs(10));
    let took = started.elapsed();
    Setup {
        dir,
        port,
        metrics,
        pebble,
        echo,
        root,
        leaf,
        took,
    }
}

/// Kills a process that is not our child when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// The echo's `/metrics` text.
fn get_metrics(addr: SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// Whether `pid` runs (not exited, not a zombie nobody reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            Some(
                stat.rsplit_once(')')?
                    .1
                    .trim_start()
                    .starts_with(|c| c != 'Z'),
            )
        })
        .unwrap_or(false)
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

#[test]
fn a_certificate_for_two_names_is_obtained_and_served() {
    if !pebble::available() {
        return;
    }
    for runtime in ["smol", "tokio"] {
        let setup = obtain(&format!("two-names-{runtime}"), None, runtime);
        eprintln!(
            "[{runtime}] from start to the first ACME certificate served: {:?}",
            setup.took
        );
        let mut got = names(&setup.leaf);
        got.sort();
        assert_eq!(got, NAMES);
        // Both names (SNI) get it, verified against pebble's root.
        let other = handshake(addr(setup.port), NAMES[1], &setup.root).unwrap();
        assert_eq!(other, setup.leaf);
        // The account key and the certificate are in the cache.
        let cached: Vec<String> = std::fs::read_dir(setup.dir.join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            cached.iter().any(|f| f.starts_with("account-")),
            "{cached:?}"
        );
        assert!(
            cached
                .iter()
                .any(|f| f.starts_with("cert-one.example.com-")),
            "{cached:?}"
        );
        // Metrics: the certificate counted, its expiry a gauge (pebble's last 5 years).
        let text = get_metrics(setup.metrics);
        assert!(
            text.contains(r#"berth_acme_certificates_total{origin="issued"} 1"#),
            "{text}"
        );
        let gauge = text
            .lines()
            .find(|l| {
                l.starts_with(
                    r#"berth_tls_certificate_expiry_seconds{certificate="acme:one.example.com,two.example.com"}"#,
                )
            })
            .unwrap_or_else(|| panic!("no expiry gauge in {text}"));
        let seconds: f64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(seconds > 365.0 * 24.0 * 3600.0, "{gauge}");
        setup.echo.sigterm();
        let (status, _) = setup.echo.wait();
        assert!(status.success());
        let _ = std::fs::remove_dir_all(&setup.dir);
    }
}

#[test]
fn a_restart_with_the_same_cache_serves_it_at_once_with_pebble_stopped() {
    if !pebble::available() {
        return;
    }
    let setup = obtain("restart", None, "smol");
    let Setup {
        dir,
        port,
        pebble,
        echo,
        root,
        leaf,
        ..
    } = setup;
    let directory = pebble.directory.clone();
    echo.sigterm();
    assert!(echo.wait().0.success());
    pebble.stop();
    // Another runtime, the same cache, the directory down: served from its first connection.
    let again = self::echo(
        port,
        &directory,
        &dir.join("pebble-https-ca.pem"),
        &dir.join("cache"),
        &["--runtime", "tokio"],
    );
    // The certificate is read from the cache while binding, so its line may come first.
    all_lines(
        &again,
        &[
            ("listening on", ""),
            ("acme: certificate for", "loaded from the cache"),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(handshake(addr(port), NAMES[1], &root), Ok(leaf.clone()));
    again.sigterm();
    assert!(again.wait().0.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_upgrade_keeps_serving_it() {
    if !pebble::available() {
        return;
    }
    let setup = obtain("upgrade", None, "smol");
    let pid = setup.echo.child.id();
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // Both lines come, in either order: the new process reports its certificate from the
    // cache as it starts serving, the old one the upgrade once told it is serving.
    let found = all_lines(
        &setup.echo,
        &[
            ("upgrade: process", "serves now"),
            ("acme: certificate for", "loaded from the cache"),
        ],
        Duration::from_secs(20),
    );
    let upgraded = found[0].clone();
    let new_pid: u32 = upgraded
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{upgraded}"));
    // Not our child: killed by hand should the test fail half-way.
    let _guard = KillOnDrop(new_pid);
    // The new process read the cache: the same certificate, from its first connection.
    for name in NAMES {
        assert_eq!(
            handshake(addr(setup.port), name, &setup.root),
            Ok(setup.leaf.clone())
        );
    }
    // The old process drains and exits 0 (its output pipes stay open: the new process
    // inherited them).
    let mut old = setup.echo;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the old process exits 0: {status}");
    assert_eq!(
        handshake(addr(setup.port), NAMES[0], &setup.root),
        Ok(setup.leaf.clone())
    );
    let _ = Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(new_pid) {
        assert!(Instant::now() < deadline, "the new process did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(old);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[test]
fn a_renewal_happens_near_expiry_without_a_failed_handshake() {
    if !pebble::available() {
        return;
    }
    // 15-second certificates: renewal is due after two thirds of their life.
    let setup = obtain("renewal", Some(15), "smol");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut handshakes = 0;
    let renewed = loop {
        assert!(Instant::now() < deadline, "no renewal within 60 s");
        let leaf = handshake(addr(setup.port), NAMES[handshakes % 2], &setup.root)
            .unwrap_or_else(|e| panic!("handshake {handshakes} failed while renewing: {e}"));
        handshakes += 1;
        if leaf != setup.leaf {
            break leaf;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut got = names(&renewed);
    got.sort();
    assert_eq!(got, NAMES);
    line(
        &setup.echo,
        "acme: certificate for",
        " renewed",
        Duration::from_secs(5),
    );
    eprintln!("{handshakes} handshakes before the renewed certificate, none failed");
    setup.echo.sigterm();
    assert!(setup.echo.wait().0.success());
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[test]
fn a_directory_that_is_down_gives_a_clear_event_and_retries() {
    let dir = tempdir("down");
    let port = free_port();
    let closed = free_port();
    std::fs::write(dir.join("ca.pem"), common::pki::Pki::new("unused").ca_pem()).unwrap();
    let echo = echo(
        port,
        &format!("https://127.0.0.1:{closed}/dir"),
        &dir.join("ca.pem"),
        &dir.join("cache"),
        &[],
    );
    let first = line(&echo, "acme: failed for", "", Duration::from_secs(30));
    assert!(
        first.contains(&format!(
            "the ACME directory https://127.0.0.1:{closed}/dir cannot be reached"
        )) && first.contains("retrying in"),
        "{first}"
    );
    // The retry comes (after about 5 s) and fails the same way.
    let second = line(
        &echo,
        "acme: failed for",
        "cannot be reached",
        Duration::from_secs(30),
    );
    assert!(second.contains("retrying in"), "{second}");
    echo.sigterm();
    let (status, stderr) = echo.wait();
    assert!(status.success());
    assert!(
        stderr.contains("echo: no ACME certificate for one.example.com,two.example.com"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Echoes until the peer closes.
async fn echo_handler(mut conn: Conn) {
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = conn.read(&mut buf).await {
        if conn.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[test]
fn acme_serves_its_names_beside_file_certificates_and_tls_select() {
    if !pebble::available() {
        return;
    }
    let dir = tempdir("beside");
    let port = free_port();
    let pebble = Pebble::start(&dir, port, None);
    // The files serve other names and clients without SNI; the hook serves one tenant.
    let files = Pki::new("files CA");
    let file_leaf = files.leaf(&["files.example.com"]);
    let tenant = Pki::new("tenant CA");
    let tenant_leaf = tenant.leaf(&["tenant.example.com"]);
    let mut tls = file_leaf.tls_config();
    let mut acme = AcmeConfig::new(NAMES, dir.join("cache"));
    acme.directory = pebble.directory.clone();
    acme.ca = Some(PemSource::Path(pebble.https_ca.clone()));
    tls.acme = Some(acme);
    let mut config = Config::new(format!("127.0.0.1:{port}"));
    config.tls = Some(tls);
    let tenant_config = tenant_leaf.tls_config().load().unwrap().0;
    let (tx, events) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server =
        Builder::new(config)
            .tls_select(move |hello: berth::tls::ClientHelloInfo| {
                let config = tenant_config.clone();
                async move {
                    (hello.server_name.as_deref() == Some("tenant.example.com")).then_some(config)
                }
            })
            .on_server_event(move |event| {
                if let ServerEvent::AcmeCertificate { .. } | ServerEvent::AcmeFailed { .. } = event
                {
                    let _ = tx.lock().unwrap().send(event.clone());
                }
            })
            .bind()
            .unwrap();
    let handle = server.serve(echo_handler);
    match events.recv_timeout(ISSUE).expect("an ACME event") {
        ServerEvent::AcmeCertificate {
            domains, origin, ..
        } => {
            assert_eq!(domains, NAMES);
            assert_eq!(origin, CertificateOrigin::Issued);
        }
        other => panic!("{other:?}; pebble's log:\n{}", Pebble::log(&dir)),
    }
    let root = pebble.root();
    let addr = addr(port);
    for name in NAMES {
        let mut got = names(&handshake(addr, name, &root).unwrap());
        got.sort();
        assert_eq!(got, NAMES, "{name}");
    }
    let by_files = client_verifying_as(files.ca_der(), "files.example.com");
    assert_eq!(
        handshake_with(addr, "files.example.com", by_files.clone()),
        Ok(file_leaf.der.clone())
    );
    let mut no_sni = by_files;
    no_sni.enable_sni = false;
    assert_eq!(
        handshake_with(addr, "files.example.com", no_sni),
        Ok(file_leaf.der.clone())
    );
    let by_tenant = client_verifying_as(tenant.ca_der(), "tenant.example.com");
    assert_eq!(
        handshake_with(addr, "tenant.example.com", by_tenant),
        Ok(tenant_leaf.der.clone())
    );
    // A client offering other ALPN protocols is served as before (acme-tls/1 is not added
    // to the listener's list); one offering only acme-tls/1 outside an order gets nothing.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let client = || {
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth()
    };
    let mut h2 = client();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    assert!(handshake_with(addr, NAMES[0], h2).is_ok());
    let mut challenge = client();
    challenge.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    assert!(handshake_with(addr, NAMES[0], challenge).is_err());
    let report = futures_lite::future::block_on(handle.shutdown()).unwrap();
    assert_eq!(report.forced, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_certificate_has_an_expiry_gauge_too() {
    let dir = tempdir("file-gauge");
    let metrics = addr(free_port());
    let echo = Example::spawn(
        "echo",
        &[
            "--addr",
            "127.0.0.1:0",
            "--self-signed",
            dir.to_str().unwrap(),
            "--metrics-addr",
            &metrics.to_string(),
        ],
    );
    echo.addr();
    let label = format!(
        r#"berth_tls_certificate_expiry_seconds{{certificate="{}"}}"#,
        dir.join("cert.pem").display()
    );
    let text = get_metrics(metrics);
    let gauge = text
        .lines()
        .find(|l| l.starts_with(&label))
        .unwrap_or_else(|| panic!("no {label} in {text}"));
    let seconds: f64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds > 24.0 * 3600.0, "{gauge}");
    echo.sigterm();
    assert!(echo.wait().0.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_renewal_keeps_the_old_certificate_served_and_retries() {
    if !pebble::available() {
        return;
    }
    // 24-second certificates: the renewal is due after about 15 s; pebble is gone by then.
    let setup = obtain("failed-renewal", Some(24), "smol");
    let Setup {
        dir,
        port,
        pebble,
        echo,
        root,
        leaf,
        ..
    } = setup;
    pebble.stop();
    let failed = line(
        &echo,
        "acme: failed for",
        "cannot be reached",
        Duration::from_secs(30),
    );
    assert!(failed.contains("retrying in"), "{failed}");
    // The old certificate, still valid, is served meanwhile.
    assert_eq!(handshake(addr(port), NAMES[0], &root), Ok(leaf.clone()));
    // And the renewal is tried again.
    line(
        &echo,
        "acme: failed for",
        "cannot be reached",
        Duration::from_secs(30),
    );
    echo.sigterm();
    assert!(echo.wait().0.success());
    let _ = std::fs::remove_dir_all(&dir);
}
