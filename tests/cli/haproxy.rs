//! A real load balancer in front of berth: HAProxy with `send-proxy` (v1) and
//! `send-proxy-v2`. The echo must work through it, and berth must see each client's own
//! address and port, not HAProxy's. CI installs haproxy; with CI=true a missing haproxy
//! fails the test, elsewhere it is skipped with a loud message.
#![cfg(all(unix, feature = "smol"))]

use crate::common;
use crate::common::free_ports;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::{Builder, Config, Conn, ProxyProtocol};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

fn haproxy_available() -> bool {
    common::example::program_available("haproxy", "-v")
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts haproxy and waits until its frontend accepts connections (it binds before it
/// serves; a bounded wait on that signal, polled). The probe connection goes through to
/// berth too: the tests skip its report.
fn start_haproxy(config: &str, frontend: u16) -> Haproxy {
    let dir = std::env::temp_dir().join(format!("berth-haproxy-{}-{frontend}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start haproxy");
    let mut proxy = Haproxy(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", frontend)).is_err() {
        assert!(started.elapsed() < WAIT, "haproxy did not start listening");
        if let Ok(Some(status)) = proxy.0.try_wait() {
            panic!("haproxy exited with {status} (see its stderr above)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy
}

#[test]
fn haproxy_send_proxy_v1_and_v2_reach_berth_with_the_client_address() {
    let _light = crate::light();
    if !haproxy_available() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, Option<SocketAddr>)>();
    let tx = std::sync::Mutex::new(tx);
    let handle = Builder::new({
        let mut c_config = Config::new("127.0.0.1:0");
        c_config.proxy_protocol = Some(ProxyProtocol::new(vec!["127.0.0.1/32".parse().unwrap()]));
        c_config
    })
    .runtime(berth::runtime::Smol::global())
    .bind()
    .unwrap()
    .serve(move |mut conn: Conn| {
        let _ = tx.lock().unwrap().send((
            conn.peer_addr().as_socket_addr().unwrap(),
            conn.proxy_addr().and_then(|a| a.as_socket_addr()),
        ));
        async move {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    });
    let backend = handle.local_addr().as_socket_addr().unwrap().port();
    let [v1, v2] = free_ports();
    let config = format!(
        "global\n  maxconn 100\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend berth_v1\n\
         frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend berth_v2\n\
         backend berth_v1\n  server b 127.0.0.1:{backend} send-proxy\n\
         backend berth_v2\n  server b 127.0.0.1:{backend} send-proxy-v2\n"
    );
    let _haproxy = start_haproxy(&config, v2);
    for port in [v1, v2] {
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        let me = client.local_addr().unwrap();
        let msg = format!("hello through haproxy on {port}\n");
        client.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
        // The readiness probe also went through HAProxy: find this client's report. Were berth
        // seeing HAProxy's address instead of the client's, none would match.
        let proxy = loop {
            let (peer, proxy) = rx.recv_timeout(WAIT).expect("berth saw this client");
            let proxy = proxy.expect("every connection came through the proxy");
            assert_ne!(peer, proxy, "berth must see the client, not HAProxy");
            if peer == me {
                break proxy;
            }
        };
        assert_ne!(
            proxy.port(),
            me.port(),
            "HAProxy's connection is a different one"
        );
    }
    close_within_bound(&handle);
}

/// HAProxy on the same host speaking to berth over a Unix socket (`server ... /path
/// send-proxy-v2`): with `trust_unix_peers`, berth sees each TCP client's address, and the
/// Unix peer as the proxy.
#[test]
fn haproxy_over_a_unix_socket_with_trusted_unix_peers() {
    let _light = crate::light();
    if !haproxy_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("berth-haproxy-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("berth.sock");
    let (tx, rx) = std::sync::mpsc::channel::<(berth::Addr, Option<berth::Addr>)>();
    let tx = std::sync::Mutex::new(tx);
    let handle = Builder::new({
        let mut c_config = Config::default();
        c_config.proxy_protocol = Some({
            let mut c_proxy = ProxyProtocol::new(Vec::new());
            c_proxy.trust_unix_peers = true;
            c_proxy
        });
        c_config.unix = Some(berth::UnixConfig::new(&path));
        c_config
    })
    .runtime(berth::runtime::Smol::global())
    .bind()
    .unwrap()
    .serve(move |mut conn: Conn| {
        let _ = tx
            .lock()
            .unwrap()
            .send((conn.peer_addr().clone(), conn.proxy_addr().cloned()));
        async move {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    });
    let [front] = free_ports();
    let config = format!(
        "global\n  maxconn 100\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend f\n  bind 127.0.0.1:{front}\n  default_backend berth\n\
         backend berth\n  server b {} send-proxy-v2\n",
        path.display()
    );
    let _haproxy = start_haproxy(&config, front);
    let mut client = TcpStream::connect(("127.0.0.1", front)).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let me = client.local_addr().unwrap();
    client.write_all(b"over unix\n").unwrap();
    let mut back = [0u8; 10];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"over unix\n");
    // Skip the readiness probe's connection; find this client's.
    loop {
        let (peer, proxy) = rx.recv_timeout(WAIT).expect("berth saw this client");
        assert_eq!(
            proxy,
            Some(berth::Addr::Unix(None)),
            "HAProxy is the Unix peer"
        );
        if peer == me {
            break;
        }
    }
    close_within_bound(&handle);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `close()`, failing the test if it does not return within a bound.
fn close_within_bound(handle: &berth::ServerHandle) {
    let closed = async_io::block_on(futures_lite::future::or(
        async { Some(handle.close().await) },
        async {
            async_io::Timer::after(std::time::Duration::from_secs(20)).await;
            None
        },
    ));
    assert!(closed.is_some(), "close() did not return within 20 s");
}
