//! PROXY protocol (v1 text and v2 binary, via the `ppp` crate): learn a client's original
//! address from the load balancer in front of the server.
//!
//! Only peers in `trusted_proxies` may send a header, and from them one is required: a
//! header from anyone else would let any client choose its own address. The header is read
//! on the connection's task before TLS, under the handshake timeout, and never over-read:
//! bytes after it (a TLS ClientHello, the first request) are kept and served first.
//! Unix-socket peers have no IP: they are trusted only with `trust_unix_peers` (a proxy on
//! the same host, such as HAProxy's `server ... /run/app.sock send-proxy-v2`).

use std::net::{IpAddr, SocketAddr};

use futures_io::AsyncRead;
use futures_lite::AsyncReadExt;
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use serde::{Deserialize, Serialize};

/// PROXY protocol settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// Networks of the proxies allowed (and required) to send a PROXY header.
    pub trusted_proxies: Vec<IpNet>,
    /// Also trust every peer of a Unix domain socket server (a proxy on the same host):
    /// they too must send a header. File permissions decide who may connect, so only set
    /// this when only the proxy can. Default `false`.
    #[serde(default)]
    pub trust_unix_peers: bool,
}

impl ProxyProtocol {
    /// Trusted proxies on these networks; Unix-socket peers not trusted.
    pub fn new(trusted_proxies: Vec<IpNet>) -> Self {
        ProxyProtocol {
            trusted_proxies,
            trust_unix_peers: false,
        }
    }

    /// Whether `peer` must (and may) send a PROXY header.
    pub(crate) fn trusts(&self, peer: &crate::addr::Addr) -> bool {
        let Some(ip) = peer.ip() else {
            return self.trust_unix_peers;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The longest header accepted: a v1 header is at most 107 bytes; v2 headers carry TLVs,
/// and 4 KiB is far more than load balancers send.
pub(crate) const MAX_HEADER: usize = 4096;

/// The longest v1 header, CRLF included (the specification's limit).
const V1_MAX: usize = 107;

/// What the header said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The original client, or `None` for a header that carries no address (v1 UNKNOWN,
    /// v2 LOCAL such as health checks): the connection then stands for itself.
    pub(crate) source: Option<SocketAddr>,
    /// Bytes read after the header.
    pub(crate) rest: Vec<u8>,
}

/// Reads one PROXY header from `stream`.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk[..(MAX_HEADER - buf.len()).min(512)])
            .await
            .map_err(|e| format!("connection failed before the header was complete: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "connection closed before a PROXY header".to_owned()
            } else {
                "connection closed in the middle of the PROXY header".to_owned()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        // A v1 (text) header ends with CRLF within 107 bytes. Parse it only once complete:
        // ppp reports some cut-short headers (e.g. ending right after a space) as malformed
        // rather than incomplete.
        let text = b"PROXY";
        if buf[..buf.len().min(text.len())] == text[..buf.len().min(text.len())]
            && !buf.windows(2).any(|w| w == b"\r\n")
        {
            if buf.len() >= V1_MAX {
                return Err(format!("v1 PROXY header longer than {V1_MAX} bytes"));
            }
            continue;
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            if buf.len() >= MAX_HEADER {
                return Err(format!("PROXY header longer than {MAX_HEADER} bytes"));
            }
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => {
                let source = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Unknown => None,
                };
                (h.header.len(), source)
            }
            HeaderResult::V2(Ok(h)) => {
                let source = match h.addresses {
                    ppp::v2::Addresses::IPv4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v2::Addresses::IPv6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
                };
                (h.len(), source)
            }
            HeaderResult::V1(Err(e)) => return Err(format!("malformed or missing header: {e:?}")),
            HeaderResult::V2(Err(e)) => return Err(format!("malformed v2 header: {e:?}")),
        };
        let rest = buf.split_off(len.min(buf.len()));
        return Ok(Header { source, rest });
    }
}

#[cfg(test)]
mod tests {
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
}
