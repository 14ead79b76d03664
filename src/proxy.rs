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
        let v1 = buf[..buf.len().min(text.len())] == text[..buf.len().min(text.len())];
        let line_end = buf.windows(2).position(|w| w == b"\r\n");
        if v1 && line_end.is_none() {
            if buf.len() >= V1_MAX {
                return Err(format!("v1 PROXY header longer than {V1_MAX} bytes"));
            }
            continue;
        }
        // Once its line has ended, nothing more can complete a v1 header (ppp calls
        // "PROXY TCP4\r\n" incomplete, as if more addresses might come).
        let parsed = match line_end.filter(|_| v1) {
            Some(end) => HeaderResult::parse(&buf[..end + 2]),
            None => HeaderResult::parse(&buf),
        };
        if v1 && parsed.is_incomplete() {
            return Err("malformed v1 header: the line ends before its addresses".to_owned());
        }
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
            // LOCAL: the proxy's own connection (a health check); any addresses it
            // carries are to be ignored.
            HeaderResult::V2(Ok(h)) if h.command == ppp::v2::Command::Local => (h.len(), None),
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

/// Property tests (proptest) of the header reader: arbitrary and mutated input never makes it
/// panic, spin or read more than it gives back; headers that the `ppp` crate writes come back
/// with the address written, however the peer's bytes are cut into reads.
///
/// `PROPTEST_CASES` overrides the number of cases of every property ([`CASES`] by default).
#[cfg(test)]
mod fuzz {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Version};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::future::Future;
    use std::io;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::pin::{Pin, pin};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    /// Cases per property unless `PROPTEST_CASES` says otherwise.
    const CASES: u32 = 2000;

    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES);
        ProptestConfig {
            cases,
            // Failures are reported with their minimal input; no files next to the sources.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// The v2 signature.
    const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

    /// A peer: hands out `data` in reads of the sizes in `chunks` (cycled; none: as much as
    /// asked), first answering `Pending` (and waking the task) where `stalls` says so. Once
    /// everything is sent it closes (EOF), or with `hang` stays silent without waking anyone.
    struct Peer {
        data: Vec<u8>,
        pos: usize,
        chunks: Vec<usize>,
        reads: usize,
        stalls: Vec<bool>,
        polls: usize,
        stalled: bool,
        hang: bool,
    }

    impl AsyncRead for Peer {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = &mut *self;
            this.polls += 1;
            if !this.stalled
                && !this.stalls.is_empty()
                && this.stalls[this.polls % this.stalls.len()]
            {
                this.stalled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.stalled = false;
            if this.pos == this.data.len() && this.hang {
                return Poll::Pending;
            }
            let want = if this.chunks.is_empty() {
                usize::MAX
            } else {
                this.chunks[this.reads % this.chunks.len()].max(1)
            };
            this.reads += 1;
            let n = buf.len().min(want).min(this.data.len() - this.pos);
            buf[..n].copy_from_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    /// Records whether the task was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// How the peer cuts its bytes.
    #[derive(Debug, Clone, Default)]
    struct Cuts {
        chunks: Vec<usize>,
        stalls: Vec<bool>,
    }

    fn cuts() -> impl Strategy<Value = Cuts> {
        prop_oneof![
            1 => Just(Cuts::default()),
            1 => Just(Cuts { chunks: vec![1], stalls: Vec::new() }),
            4 => (vec(0usize..600, 1..12), vec(any::<bool>(), 0..6))
                .prop_map(|(chunks, stalls)| Cuts { chunks, stalls }),
        ]
    }

    /// What the reader did with a peer's bytes.
    struct Run {
        /// `None`: it is still waiting for bytes from a peer that sends no more.
        result: Option<Result<Header, String>>,
        /// Bytes taken from the peer.
        consumed: usize,
    }

    /// Runs `read_header` against a peer sending `data` as `cuts` says, then closing
    /// (`hang`: staying silent). Panics if the reader spins without the peer waking it.
    fn feed(data: &[u8], cuts: &Cuts, hang: bool) -> Run {
        let mut peer = Peer {
            data: data.to_vec(),
            pos: 0,
            chunks: cuts.chunks.clone(),
            reads: 0,
            stalls: cuts.stalls.clone(),
            polls: 0,
            stalled: false,
            hang,
        };
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let result = {
            let mut reading = pin!(read_header(&mut peer));
            let mut polls = 0;
            loop {
                polls += 1;
                assert!(polls < 100_000, "the reader spins");
                flag.0.store(false, Ordering::SeqCst);
                match reading.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => break Some(r),
                    Poll::Pending if flag.0.load(Ordering::SeqCst) => continue,
                    Poll::Pending => break None,
                }
            }
        };
        Run {
            result,
            consumed: peer.pos,
        }
    }

    /// The address ppp itself reads from exactly `header` (which must be one whole header).
    fn ppp_source(header: &[u8]) -> Result<Option<SocketAddr>, String> {
        match HeaderResult::parse(header) {
            HeaderResult::V1(Ok(h)) if h.header.len() == header.len() => Ok(match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
                ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
                ppp::v1::Addresses::Unknown => None,
            }),
            HeaderResult::V2(Ok(h)) if h.len() == header.len() => Ok(match h.addresses {
                // LOCAL carries no client address, whatever its address block says.
                _ if h.command == ppp::v2::Command::Local => None,
                ppp::v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
                ppp::v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
                _ => None,
            }),
            other => Err(format!("not one whole header: {other:?}")),
        }
    }

    /// What holds for any input: at most `MAX_HEADER` bytes taken; on success the bytes taken
    /// are one whole header (as ppp reads it, with the same source) followed by `rest`.
    /// Returns the header's length and source on success.
    fn check_invariants(
        data: &[u8],
        run: &Run,
    ) -> Result<Option<(usize, Option<SocketAddr>)>, TestCaseError> {
        prop_assert!(run.consumed <= MAX_HEADER, "took {} bytes", run.consumed);
        prop_assert!(run.consumed <= data.len());
        match &run.result {
            Some(Ok(h)) => {
                prop_assert!(h.rest.len() < run.consumed, "no header before the rest");
                let len = run.consumed - h.rest.len();
                prop_assert_eq!(
                    &data[len..run.consumed],
                    &h.rest[..],
                    "rest is what followed"
                );
                prop_assert_eq!(ppp_source(&data[..len]), Ok(h.source));
                Ok(Some((len, h.source)))
            }
            Some(Err(e)) => {
                prop_assert!(!e.is_empty());
                Ok(None)
            }
            None => Err(TestCaseError::fail("waiting on a peer that has closed")),
        }
    }

    /// `len` pseudo-random bytes from `seed` (much cheaper to generate and shrink than a
    /// `vec(any::<u8>(), ..)` of thousands of value trees).
    fn bytes(len: impl Strategy<Value = usize>) -> impl Strategy<Value = Vec<u8>> {
        (len, any::<u64>()).prop_map(|(len, seed)| {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect()
        })
    }

    /// A header as the ppp crate writes it, and the source it carries (`None`: none to use).
    #[derive(Debug, Clone)]
    struct Written {
        bytes: Vec<u8>,
        source: Option<SocketAddr>,
    }

    fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| {
                    (
                        SocketAddr::from((Ipv4Addr::from(s), sp)),
                        SocketAddr::from((Ipv4Addr::from(d), dp)),
                    )
                }),
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| {
                    (
                        SocketAddr::from((Ipv6Addr::from(s), sp)),
                        SocketAddr::from((Ipv6Addr::from(d), dp)),
                    )
                }),
        ]
    }

    fn tlvs(max_len: usize) -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        vec((any::<u8>(), bytes(0..max_len)), 0..6)
    }

    fn v2(
        command: Command,
        addresses: impl Into<ppp::v2::Addresses>,
        tlvs: &[(u8, Vec<u8>)],
    ) -> Vec<u8> {
        let mut builder =
            Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses);
        for (kind, value) in tlvs {
            builder = builder.write_tlv(*kind, value).unwrap();
        }
        builder.build().unwrap()
    }

    fn v1_header() -> impl Strategy<Value = Written> {
        prop_oneof![
            4 => socket_pair().prop_map(|(src, dst)| Written {
                bytes: ppp::v1::Addresses::from((src, dst)).to_string().into_bytes(),
                source: Some(src),
            }),
            1 => Just(Written {
                bytes: ppp::v1::Addresses::Unknown.to_string().into_bytes(),
                source: None,
            }),
        ]
    }

    fn v2_header() -> impl Strategy<Value = Written> {
        prop_oneof![
            6 => (socket_pair(), tlvs(64)).prop_map(|((src, dst), tlvs)| Written {
                bytes: v2(Command::Proxy, (src, dst), &tlvs),
                source: Some(src),
            }),
            1 => (vec(any::<u8>(), 216), tlvs(16)).prop_map(|(paths, tlvs)| {
                let (mut src, mut dst) = ([0u8; 108], [0u8; 108]);
                src.copy_from_slice(&paths[..108]);
                dst.copy_from_slice(&paths[108..]);
                Written {
                    bytes: v2(Command::Proxy, ppp::v2::Unix::new(src, dst), &tlvs),
                    source: None,
                }
            }),
            1 => (any::<bool>(), tlvs(16)).prop_map(|(local, tlvs)| Written {
                bytes: v2(
                    if local { Command::Local } else { Command::Proxy },
                    ppp::v2::Addresses::Unspecified,
                    &tlvs,
                ),
                source: None,
            }),
        ]
    }

    fn written() -> impl Strategy<Value = Written> {
        prop_oneof![v1_header(), v2_header()]
    }

    /// Bytes after a header: nothing, random, or what looks like another header.
    fn trailing() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            1 => Just(Vec::new()),
            3 => bytes(1usize..1500),
            1 => (written(), bytes(0usize..64)).prop_map(|(w, mut more)| {
                let mut t = w.bytes;
                t.append(&mut more);
                t
            }),
        ]
    }

    /// Input for the arbitrary-bytes property: random bytes, often behind the start of a header.
    fn arbitrary_input() -> impl Strategy<Value = Vec<u8>> {
        let prefix = prop_oneof![
            Just(Vec::new()),
            Just(b"PROXY ".to_vec()),
            Just(b"PROXY TCP4 ".to_vec()),
            Just(b"PROXY TCP6 ".to_vec()),
            Just(b"PROXY UNKNOWN".to_vec()),
            Just(SIG.to_vec()),
            (0u8..0x40, any::<u8>()).prop_map(|(family, cmd)| {
                let mut p = SIG.to_vec();
                p.extend_from_slice(&[0x20 | (cmd & 0x1), family]);
                p
            }),
        ];
        let body = prop_oneof![
            3 => bytes(0usize..200),
            1 => bytes(0usize..5000),
            // Text that looks like a v1 line.
            3 => vec(
                prop_oneof![
                    Just("TCP4"), Just("TCP6"), Just("UNKNOWN"), Just(" "), Just("  "),
                    Just("\r\n"), Just("\r"), Just("\n"), Just("1.2.3.4"), Just("::1"),
                    Just("ffff::"), Just("80"),
                    Just("065535"), Just("65536"), Just("0"), Just("-1"), Just("PROXY"), Just("\0"),
                ],
                0..12,
            )
            .prop_map(|parts| parts.concat().into_bytes()),
        ];
        (prefix, body).prop_map(|(mut p, mut b)| {
            p.append(&mut b);
            p
        })
    }

    /// Changes to a valid header.
    #[derive(Debug, Clone)]
    enum Mutation {
        Truncate(prop::sample::Index),
        FlipBits(Vec<(prop::sample::Index, u8)>),
        Insert(prop::sample::Index, Vec<u8>),
        Delete(prop::sample::Index, usize),
        Replace(prop::sample::Index, u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            any::<prop::sample::Index>().prop_map(Mutation::Truncate),
            vec((any::<prop::sample::Index>(), 0u8..8), 1..4).prop_map(Mutation::FlipBits),
            (any::<prop::sample::Index>(), bytes(1usize..8))
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            (any::<prop::sample::Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        ]
    }

    fn mutate(header: &mut Vec<u8>, m: &Mutation) {
        match m {
            Mutation::Truncate(i) => header.truncate(i.index(header.len())),
            Mutation::FlipBits(flips) => {
                for (i, bit) in flips {
                    let i = i.index(header.len());
                    header[i] ^= 1 << bit;
                }
            }
            Mutation::Insert(i, bytes) => {
                let at = i.index(header.len() + 1);
                header.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i.index(header.len());
                header.drain(at..(at + n).min(header.len()));
            }
            Mutation::Replace(i, b) => {
                let i = i.index(header.len());
                header[i] = *b;
            }
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// Headers ppp writes (v1 TCP4/TCP6/UNKNOWN, v2 PROXY with IPv4/IPv6/Unix/no address
        /// and TLVs, v2 LOCAL), followed by anything, cut into reads anyhow: the source written
        /// comes back, the bytes taken are the header and then `rest`, and `rest` together with
        /// what is still unread is exactly what followed the header (nothing lost, nothing
        /// added), with at most one read's worth (< 512 bytes) taken past the header.
        #[test]
        fn written_headers_round_trip_whatever_the_reads(
            w in written(),
            after in trailing(),
            cuts in cuts(),
        ) {
            let mut data = w.bytes.clone();
            data.extend_from_slice(&after);
            let run = feed(&data, &cuts, false);
            let accepted = check_invariants(&data, &run)?;
            let (len, source) = accepted.expect("a written header is accepted");
            prop_assert_eq!(len, w.bytes.len());
            prop_assert_eq!(source, w.source);
            let Some(Ok(h)) = run.result else { unreachable!() };
            prop_assert!(h.rest.len() < 512, "{} bytes read past the header", h.rest.len());
            let mut left = h.rest;
            left.extend_from_slice(&data[run.consumed..]);
            prop_assert_eq!(left, after);
        }

        /// A peer that sends the header one byte per read, or sends just the header and then
        /// waits for the server: the reader takes exactly the header, never a byte more, and
        /// answers without waiting for bytes that will not come.
        #[test]
        fn written_headers_are_read_exactly_and_without_waiting(
            w in written(),
            after in bytes(0usize..64),
            stalls in vec(any::<bool>(), 0..6),
        ) {
            let mut data = w.bytes.clone();
            data.extend_from_slice(&after);
            let one_by_one = Cuts { chunks: vec![1], stalls };
            let run = feed(&data, &one_by_one, false);
            prop_assert_eq!(run.consumed, w.bytes.len());
            let Some(Ok(h)) = run.result else {
                return Err(TestCaseError::fail(format!("{:?}", run.result)));
            };
            prop_assert_eq!(h.source, w.source);
            prop_assert!(h.rest.is_empty());

            let waiting = feed(&w.bytes, &Cuts::default(), true);
            prop_assert_eq!(waiting.consumed, w.bytes.len());
            let header = Header { source: w.source, rest: Vec::new() };
            prop_assert_eq!(waiting.result, Some(Ok(header)));
        }

        /// Random bytes (often behind the start of a v1 or v2 header) in random reads: never a
        /// panic or a spin, at most `MAX_HEADER` bytes taken, a success is one whole header as
        /// ppp reads it plus `rest`, and how the bytes are cut into reads changes nothing.
        #[test]
        fn arbitrary_bytes_are_rejected_or_read_consistently(
            data in arbitrary_input(),
            cuts in cuts(),
        ) {
            let run = feed(&data, &cuts, false);
            let got = check_invariants(&data, &run)?;
            let whole = feed(&data, &Cuts::default(), false);
            prop_assert_eq!(got, check_invariants(&data, &whole)?, "cut into reads vs whole");
        }

        /// Valid headers truncated, with bits flipped, bytes inserted, deleted or replaced, then
        /// followed by anything: the same invariants, and the same outcome however they are
        /// read. A header cut short (nothing after it) is always an error.
        #[test]
        fn mutated_headers_are_rejected_or_read_consistently(
            w in written(),
            mutations in vec(mutation(), 1..4),
            after in prop_oneof![Just(Vec::new()), bytes(1usize..600)],
            cuts in cuts(),
        ) {
            let mut header = w.bytes.clone();
            for m in &mutations {
                if header.is_empty() {
                    break;
                }
                mutate(&mut header, m);
            }
            let mut data = header.clone();
            data.extend_from_slice(&after);
            let run = feed(&data, &cuts, false);
            let got = check_invariants(&data, &run)?;
            let whole = feed(&data, &Cuts::default(), false);
            prop_assert_eq!(got, check_invariants(&data, &whole)?, "cut into reads vs whole");
            if after.is_empty() && matches!(mutations[..], [Mutation::Truncate(_)]) {
                prop_assert!(got.is_none(), "a truncated header was accepted");
            }
        }

        /// A v2 header whose length field lies (shorter or longer than the addresses and TLVs
        /// it has): shorter than the address block is an error; otherwise the reader takes
        /// exactly 16 + length bytes as the header, if they arrive and fit in `MAX_HEADER`
        /// (else it is an error), and the address block still gives the source written.
        #[test]
        fn v2_length_that_lies(
            (src, dst) in socket_pair(),
            tlvs in tlvs(100),
            after in bytes(0usize..5000),
            length in prop_oneof![any::<u16>(), 0u16..600],
            cuts in cuts(),
        ) {
            let mut data = v2(Command::Proxy, (src, dst), &tlvs);
            data[14..16].copy_from_slice(&length.to_be_bytes());
            data.extend_from_slice(&after);
            let run = feed(&data, &cuts, false);
            let got = check_invariants(&data, &run)?;
            let addresses = if src.is_ipv4() { 12 } else { 36 };
            let len = 16 + usize::from(length);
            if usize::from(length) < addresses || len > MAX_HEADER || len > data.len() {
                prop_assert_eq!(got, None);
            } else {
                prop_assert_eq!(got, Some((len, Some(src))));
            }
        }

        /// The size limit: a v2 header of up to `MAX_HEADER` bytes (TLVs of any size) is
        /// read, a larger one is refused after taking at most `MAX_HEADER` bytes.
        #[test]
        fn v2_header_size_limit(
            (src, dst) in socket_pair(),
            tlv in prop_oneof![0usize..5000, 4000usize..4100],
            after in bytes(0usize..600),
            cuts in cuts(),
        ) {
            let header = v2(Command::Proxy, (src, dst), &[(0xE0, vec![7; tlv])]);
            let mut data = header.clone();
            data.extend_from_slice(&after);
            let run = feed(&data, &cuts, false);
            let got = check_invariants(&data, &run)?;
            if header.len() <= MAX_HEADER {
                prop_assert_eq!(got, Some((header.len(), Some(src))));
            } else {
                prop_assert_eq!(got, None);
            }
        }

        /// A v1 line is decided when its CRLF arrives (within 107 bytes, the specification's
        /// limit): a peer that sent one and waits for an answer gets one, never a wait for
        /// bytes that do not belong to the header.
        #[test]
        fn v1_line_is_decided_at_its_end(
            parts in vec(
                prop_oneof![
                    Just("TCP4"), Just("TCP6"), Just("UNKNOWN"), Just(" "), Just("1.2.3.4"),
                    Just("::1"), Just("80"), Just("x"),
                ],
                0..8,
            ),
        ) {
            let mut line = b"PROXY ".to_vec();
            line.extend_from_slice(parts.concat().as_bytes());
            line.extend_from_slice(b"\r\n");
            prop_assume!(line.len() <= V1_MAX);
            let run = feed(&line, &Cuts::default(), true);
            prop_assert!(run.result.is_some(), "waits after {:?}", String::from_utf8_lossy(&line));
        }

        /// A v2 header is decided once its 16 + length bytes have arrived, valid or not.
        #[test]
        fn v2_header_is_decided_once_complete(
            version_command in any::<u8>(),
            family_protocol in any::<u8>(),
            body in bytes(0usize..300),
        ) {
            let mut data = SIG.to_vec();
            data.extend_from_slice(&[version_command, family_protocol]);
            data.extend_from_slice(&(body.len() as u16).to_be_bytes());
            data.extend_from_slice(&body);
            let run = feed(&data, &Cuts::default(), true);
            prop_assert!(run.result.is_some(), "waits after a complete v2 header");
            prop_assert_eq!(run.consumed, data.len());
            if let Some(Ok(h)) = &run.result {
                prop_assert!(h.rest.is_empty());
            }
        }

        /// v2 LOCAL (a health check from the proxy itself): the specification says the
        /// receiver must discard the address block and use the real connection endpoints, as
        /// the reader's own documentation of `Header::source` promises (`None` for LOCAL).
        #[test]
        fn v2_local_ignores_its_address_block(
            (src, dst) in socket_pair(),
            tlvs in tlvs(16),
        ) {
            let data = v2(Command::Local, (src, dst), &tlvs);
            let run = feed(&data, &Cuts::default(), false);
            let got = check_invariants(&data, &run)?;
            prop_assert_eq!(got, Some((data.len(), None)));
        }
    }
}
