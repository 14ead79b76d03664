//! Unit tests of the header reader.

use super::*;
use proptest::prelude::*;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

/// An in-memory stream that hands out its bytes in the given chunk sizes.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    reads: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let want = self
            .chunks
            .get(self.reads)
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        self.reads += 1;
        let n = buf.len().min(want).min(self.data.len() - self.pos);
        let start = self.pos;
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

fn read_all(data: &[u8], chunks: Vec<usize>) -> (Result<Header, String>, usize) {
    let mut s = Chunked {
        data: data.to_vec(),
        pos: 0,
        chunks,
        reads: 0,
    };
    let r = futures_lite::future::block_on(read_header(&mut s));
    (r, s.pos)
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
fn v1_and_v2_with_following_bytes_split_anywhere() {
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 443\r\n".to_vec();
    let v2 = v2_header(
        "[2001:db8::7]:40002".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    for (header, expected) in [
        (v1, "192.0.2.7:40001".parse::<SocketAddr>().unwrap()),
        (v2, "[2001:db8::7]:40002".parse().unwrap()),
    ] {
        let mut data = header.clone();
        data.extend_from_slice(b"\x16\x03\x01 then the ClientHello");
        for split in 1..data.len() {
            let (r, _) = read_all(&data, vec![split, 1, 3, 1000]);
            let h = r.unwrap();
            assert_eq!(h.source, Some(expected));
            let mut rebuilt = header.clone();
            rebuilt.extend_from_slice(&h.rest);
            assert!(data.starts_with(&rebuilt), "rest is exactly what followed");
        }
    }
}

#[test]
fn unknown_and_local_carry_no_address() {
    let (r, _) = read_all(b"PROXY UNKNOWN\r\nhello", vec![]);
    assert_eq!(
        r.unwrap(),
        Header {
            source: None,
            rest: b"hello".to_vec()
        }
    );
    let local = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    assert_eq!(read_all(&local, vec![]).0.unwrap().source, None);
}

#[test]
fn missing_truncated_garbage_and_oversized_are_errors() {
    assert!(read_all(b"GET / HTTP/1.1\r\n\r\n", vec![]).0.is_err());
    assert!(
        read_all(b"PROXY TCP4 192.0.2.7", vec![])
            .0
            .unwrap_err()
            .contains("middle")
    );
    assert!(
        read_all(b"", vec![])
            .0
            .unwrap_err()
            .contains("before a PROXY header")
    );
    assert!(
        read_all(b"PROXY TCP4 nonsense nonsense 1 2\r\n", vec![])
            .0
            .is_err()
    );
    let mut long = b"PROXY TCP4 ".to_vec();
    long.extend(std::iter::repeat_n(b'1', 10_000));
    assert!(read_all(&long, vec![]).0.is_err());
}

proptest! {
    /// Arbitrary bytes in arbitrary chunks: never a panic, never more than MAX_HEADER read,
    /// and on success the header plus `rest` is exactly what was read.
    #[test]
    fn arbitrary_input_never_panics_or_over_reads(
        data in proptest::collection::vec(any::<u8>(), 0..6000),
        prefix in prop_oneof![Just(Vec::new()), Just(b"PROXY ".to_vec()), Just(b"\r\n\r\n\0\r\nQUIT\n".to_vec())],
        chunks in proptest::collection::vec(1usize..700, 0..20),
    ) {
        let mut input = prefix;
        input.extend_from_slice(&data);
        let (r, consumed) = read_all(&input, chunks);
        prop_assert!(consumed <= MAX_HEADER);
        prop_assert!(consumed <= input.len());
        if let Ok(h) = r {
            prop_assert!(h.rest.len() <= consumed);
            prop_assert!(input[..consumed].ends_with(&h.rest));
        }
    }
}
