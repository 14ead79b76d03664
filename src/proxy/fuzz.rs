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

mod inputs;
use inputs::*;

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
        if !this.stalled && !this.stalls.is_empty() && this.stalls[this.polls % this.stalls.len()] {
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
