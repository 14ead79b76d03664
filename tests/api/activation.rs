//! Inherited listeners: an already-bound std listener, and systemd socket activation (a
//! bound socket passed to a child as fd 3 with LISTEN_FDS/LISTEN_PID).
#![cfg(all(unix, feature = "smol"))]

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Command;

use berth::{Builder, Config, Conn, listener::TcpListener};
use common::example::{Example, WAIT, example_bin};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

#[test]
fn from_std_serves_an_already_bound_listener() {
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std.local_addr().unwrap();
    let smol = berth::runtime::Smol::global();
    let reactor = berth::runtime::Runtime::reactor(&smol);
    let listener = TcpListener::from_std(std, true, reactor).unwrap();
    let handle = Builder::new(Config::default())
        .runtime(berth::runtime::Smol::global())
        .listener(listener)
        .unwrap()
        .serve(|mut conn: Conn| async move {
            let mut buf = [0u8; 16];
            if let Ok(n @ 1..) = conn.read(&mut buf).await {
                let _ = conn.write_all(&buf[..n]).await;
            }
        });
    assert_eq!(handle.local_addr().as_socket_addr().unwrap(), addr);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"inherited").unwrap();
    let mut back = [0u8; 9];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"inherited");
    // Bounded: a close that never returns fails the test instead of hanging the suite.
    let closed = async_io::block_on(futures_lite::future::or(
        async { Some(handle.close().await) },
        async {
            async_io::Timer::after(WAIT).await;
            None
        },
    ));
    assert!(closed.is_some(), "close() did not return within {WAIT:?}");
}

#[test]
fn systemd_socket_activation_hands_a_bound_socket_to_the_echo_example() {
    // The "service manager": bind, then pass the socket to the child as fd 3.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // std opens sockets close-on-exec; an inherited socket must survive exec.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let fd = listener.as_raw_fd().to_string();
    let echo = example_bin("echo");
    // bash moves the socket to fd 3 and sets LISTEN_PID to its own pid, which `exec` keeps:
    // what systemd does between fork and exec. --addr names a port that is never bound.
    // (Not sh: dash takes only one-digit descriptors, and the socket's may be 10 or more.)
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(r#"exec 3<&"$0"; LISTEN_PID=$$ LISTEN_FDS=1 exec "$1" --addr 127.0.0.1:9"#)
        .arg(&fd)
        .arg(&echo);
    let example = Example::start(command);
    assert_eq!(
        example.line(),
        format!("listening on {addr}"),
        "the inherited socket"
    );
    drop(listener); // the parent keeps nothing: the child serves alone
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"activated").unwrap();
    let mut back = [0u8; 9];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"activated");
    // The client stays connected: the one connection open at SIGTERM is drained (it reads
    // end of file), so the summary is exact.
    example.sigterm();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("end of file within the read timeout");
    assert!(rest.is_empty(), "{rest:?}");
    drop(c);
    assert_eq!(
        example.line(),
        "shutdown complete: 1 connection(s) drained, 0 forced"
    );
    let (status, stderr) = example.wait();
    assert!(status.success(), "{stderr}");
}
