//! What the properties feed the reader: random bytes, headers the `ppp` crate writes,
//! what follows them, and mutations of them.

use super::*;

/// `len` pseudo-random bytes from `seed` (much cheaper to generate and shrink than a
/// `vec(any::<u8>(), ..)` of thousands of value trees).
pub(super) fn bytes(len: impl Strategy<Value = usize>) -> impl Strategy<Value = Vec<u8>> {
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
pub(super) struct Written {
    pub(super) bytes: Vec<u8>,
    pub(super) source: Option<SocketAddr>,
}

pub(super) fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
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

pub(super) fn tlvs(max_len: usize) -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    vec((any::<u8>(), bytes(0..max_len)), 0..6)
}

pub(super) fn v2(
    command: Command,
    addresses: impl Into<ppp::v2::Addresses>,
    tlvs: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    let mut builder = Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses);
    for (kind, value) in tlvs {
        builder = builder.write_tlv(*kind, value).unwrap();
    }
    builder.build().unwrap()
}

pub(super) fn v1_header() -> impl Strategy<Value = Written> {
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

pub(super) fn v2_header() -> impl Strategy<Value = Written> {
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

pub(super) fn written() -> impl Strategy<Value = Written> {
    prop_oneof![v1_header(), v2_header()]
}

/// Bytes after a header: nothing, random, or what looks like another header.
pub(super) fn trailing() -> impl Strategy<Value = Vec<u8>> {
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
pub(super) fn arbitrary_input() -> impl Strategy<Value = Vec<u8>> {
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
pub(super) enum Mutation {
    Truncate(prop::sample::Index),
    FlipBits(Vec<(prop::sample::Index, u8)>),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
    Replace(prop::sample::Index, u8),
}

pub(super) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        vec((any::<prop::sample::Index>(), 0u8..8), 1..4).prop_map(Mutation::FlipBits),
        (any::<prop::sample::Index>(), bytes(1usize..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<prop::sample::Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
    ]
}

pub(super) fn mutate(header: &mut Vec<u8>, m: &Mutation) {
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
