//! The framing examples as black boxes: a line protocol and length-prefixed frames, each
//! with an oversized message and a drain between messages.
#![cfg(all(unix, feature = "smol"))]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use common::example::{Example, WAIT};

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

/// Reads until the server closes (EOF or reset; the read timeout would fail the test);
/// true if nothing more came first.
fn closed_without_more(c: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match c.read_to_end(&mut rest) {
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            panic!("the server did not close the connection")
        }
        _ => rest.is_empty(),
    }
}

#[test]
fn lines_protocol_requests_limits_and_drain() {
    let server = Example::spawn("lines", &["--addr", "127.0.0.1:0", "--max-line", "64"]);
    let addr = server.addr();

    let mut c = connect(&addr);
    c.write_all(b"PING\nECHO hello there\nUPPER quiet\nNOPE\n")
        .unwrap();
    let mut replies = BufReader::new(c.try_clone().unwrap());
    for expected in ["PONG", "hello there", "QUIET", "ERR unknown command"] {
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), expected);
    }
    c.write_all(b"QUIT\n").unwrap();
    let mut line = String::new();
    replies.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "BYE");
    assert!(closed_without_more(&mut c));

    // A line over the limit: an error, then the connection is closed.
    let mut long = connect(&addr);
    long.write_all(&[b'x'; 200]).unwrap();
    let mut answer = String::new();
    BufReader::new(long.try_clone().unwrap())
        .read_line(&mut answer)
        .unwrap();
    assert!(answer.starts_with("ERR line too long"), "{answer:?}");

    // Drain between messages: an idle client is let go at once, its last answer intact.
    let mut idle = connect(&addr);
    idle.write_all(b"PING\n").unwrap();
    let mut reader = BufReader::new(idle.try_clone().unwrap());
    let mut pong = String::new();
    reader.read_line(&mut pong).unwrap();
    assert_eq!(pong.trim_end(), "PONG");
    server.sigterm();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap_or(0);
    assert_eq!(rest, "", "closed between messages");
    drop((idle, reader, long, replies, c));
    let summary = server.line();
    assert!(
        summary.contains("1 drained") || summary.contains("drained"),
        "{summary}"
    );
    let (status, stderr) = server.wait();
    assert!(status.success(), "{stderr}");
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn read_frame(c: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    c.read_exact(&mut len).unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    c.read_exact(&mut payload).unwrap();
    payload
}

#[test]
fn length_prefixed_frames_limits_and_drain() {
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
    assert!(closed_without_more(&mut over));

    // Drain between messages.
    c.write_all(&frame(b"last")).unwrap();
    assert_eq!(read_frame(&mut c), b"tsal");
    server.sigterm();
    assert!(closed_without_more(&mut c), "closed between frames");
    drop((c, over));
    assert!(server.line().starts_with("shutdown complete"));
    let (status, stderr) = server.wait();
    assert!(status.success(), "{stderr}");
}
