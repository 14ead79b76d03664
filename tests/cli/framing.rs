//! The framing examples as black boxes: a line protocol and length-prefixed frames, each
//! with an oversized message and a drain between messages.
//!
//! Every read is bounded by `WAIT`: a read that times out fails the test. Each drain runs on
//! a server of its own, where the one connection open at SIGTERM is known, so the summary
//! line is asserted exactly.
#![cfg(all(unix, feature = "smol"))]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use common::example::{Example, WAIT};

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

/// Reads until the server closes: end of file, or a reset (the server closed with input of
/// ours unread). Returns what came first. A read timeout fails the test.
fn read_until_closed(c: &mut impl Read) -> Vec<u8> {
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return rest,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the server did not close the connection within {WAIT:?}")
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return rest,
            Err(e) => panic!("reading until the server closes: {e}"),
        }
    }
}

/// One line (without its newline); a read timeout or end of file fails the test.
fn read_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("no line within {WAIT:?}: {e}"));
    assert!(n > 0, "end of file instead of a line");
    assert!(line.ends_with('\n'), "a partial line: {line:?}");
    line.pop();
    line
}

/// Waits (bounded) for the server to exit after its summary line: it must exit 0.
fn exits_cleanly(server: Example) {
    let (status, stderr) = server.wait();
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn lines_protocol_requests_and_limits() {
    let _light = crate::light();
    let server = Example::spawn("lines", &["--addr", "127.0.0.1:0", "--max-line", "64"]);
    let addr = server.addr();

    let mut c = connect(&addr);
    c.write_all(b"PING\nECHO hello there\nUPPER quiet\nNOPE\n")
        .unwrap();
    let mut replies = BufReader::new(c.try_clone().unwrap());
    for expected in ["PONG", "hello there", "QUIET", "ERR unknown command"] {
        assert_eq!(read_line(&mut replies), expected);
    }
    c.write_all(b"QUIT\n").unwrap();
    assert_eq!(read_line(&mut replies), "BYE");
    assert_eq!(
        read_until_closed(&mut replies),
        b"",
        "closed after BYE, nothing more"
    );

    // A line over the limit: an error, then the connection is closed.
    let mut long = connect(&addr);
    long.write_all(&[b'x'; 200]).unwrap();
    let mut long_replies = BufReader::new(long.try_clone().unwrap());
    let answer = read_line(&mut long_replies);
    assert!(answer.starts_with("ERR line too long"), "{answer:?}");
    assert_eq!(read_until_closed(&mut long_replies), b"");
    // (The drain is checked on a server of its own, below: here the lingering closes of
    // these two connections may or may not have ended by a SIGTERM.)
    drop((c, replies, long, long_replies, server));
}

#[test]
fn lines_drain_between_messages() {
    let _light = crate::light();
    let server = Example::spawn("lines", &["--addr", "127.0.0.1:0"]);
    let addr = server.addr();
    // Drain between messages: an idle client is let go at once, its last answer intact.
    let mut idle = connect(&addr);
    idle.write_all(b"PING\n").unwrap();
    let mut reader = BufReader::new(idle.try_clone().unwrap());
    assert_eq!(read_line(&mut reader), "PONG");
    server.sigterm();
    assert_eq!(
        read_until_closed(&mut reader),
        b"",
        "closed between messages"
    );
    drop((idle, reader));
    // The one connection open at SIGTERM finished by itself.
    assert_eq!(
        server.line(),
        "shutdown complete: 1 connection(s) drained, 0 forced"
    );
    exits_cleanly(server);
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn read_frame(c: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    c.read_exact(&mut len)
        .unwrap_or_else(|e| panic!("no frame header within {WAIT:?}: {e}"));
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    c.read_exact(&mut payload)
        .unwrap_or_else(|e| panic!("no frame payload within {WAIT:?}: {e}"));
    payload
}

#[test]
fn length_prefixed_frames_and_limits() {
    let _light = crate::light();
    let server = Example::spawn(
        "length_prefixed",
        &["--addr", "127.0.0.1:0", "--max-frame", "1000"],
    );
    let addr = server.addr();

    let mut c = connect(&addr);
    // Two frames in one write, one split across writes, an empty one.
    let mut both = frame(b"abc");
    both.extend(frame(b"hello"));
    c.write_all(&both).unwrap();
    assert_eq!(read_frame(&mut c), b"cba");
    assert_eq!(read_frame(&mut c), b"olleh");
    let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let f = frame(&big);
    c.write_all(&f[..3]).unwrap();
    c.flush().unwrap();
    c.write_all(&f[3..]).unwrap();
    let back = read_frame(&mut c);
    assert_eq!(back, big.iter().rev().copied().collect::<Vec<_>>());
    c.write_all(&frame(b"")).unwrap();
    assert_eq!(read_frame(&mut c), b"");

    // Over the limit: refused from the length alone (no payload sent), connection closed.
    let mut over = connect(&addr);
    over.write_all(&1001u32.to_be_bytes()).unwrap();
    assert_eq!(
        read_until_closed(&mut over),
        b"",
        "closed without an answer"
    );
    drop((c, over, server));
}

#[test]
fn length_prefixed_drain_between_frames() {
    let _light = crate::light();
    let server = Example::spawn("length_prefixed", &["--addr", "127.0.0.1:0"]);
    let addr = server.addr();
    let mut c = connect(&addr);
    c.write_all(&frame(b"last")).unwrap();
    assert_eq!(read_frame(&mut c), b"tsal");
    server.sigterm();
    assert_eq!(read_until_closed(&mut c), b"", "closed between frames");
    drop(c);
    assert_eq!(
        server.line(),
        "shutdown complete: 1 connection(s) drained, 0 forced"
    );
    exits_cleanly(server);
}
