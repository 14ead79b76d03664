//! Property tests (proptest) of berth's configuration input: `Config` from TOML and JSON
//! (random text, random documents built on berth's own field names, mutations of valid
//! documents), `Config::validate`, and the `HOST:PORT` parser behind
//! `Config::resolve_address`.
//!
//! Nothing here touches the network: addresses whose host would go to the resolver (a name
//! that is not an IP literal) are replaced by an IP literal before `validate` or
//! `resolve_address` sees them (see `needs_resolver`).
//!
//! `PROPTEST_CASES` overrides the number of cases of every property.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use berth::limits::Rate;
use berth::tls::{CertKey, ClientAuth, PemSource, TlsConfig, TlsVersion};
use berth::{Config, ConfigError, ListenerConfig, ProxyProtocol, UnixConfig};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// Cases per address property unless `PROPTEST_CASES` says otherwise (they are cheap).
const ADDRESS_CASES: u32 = 2000;
/// Cases per document and config property unless `PROPTEST_CASES` says otherwise.
const DOCUMENT_CASES: u32 = 1000;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; no files next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------

/// Whether berth would hand `address` to the system resolver (a host that is not an IP
/// literal, with a valid port): the same steps as berth's parser, up to the lookup.
fn needs_resolver(address: &str) -> bool {
    let t = address.trim();
    if t.is_empty() || t.parse::<SocketAddr>().is_ok() || t.parse::<IpAddr>().is_ok() {
        return false;
    }
    let Some((host, port)) = t.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().is_err() {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty()
        && host.parse::<IpAddr>().is_err()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// `address`, or an IP literal in its place if it would need the resolver.
fn offline(address: String) -> String {
    if needs_resolver(&address) {
        "[::1]:0".to_owned()
    } else {
        address
    }
}

fn resolve(address: &str) -> Result<SocketAddr, ConfigError> {
    assert!(!needs_resolver(address), "{address:?} would need DNS");
    Config::new(address).resolve_address()
}

fn ip() -> BoxedStrategy<IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::from(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::from(Ipv6Addr::from(o))),
        // IPv4-mapped IPv6, and IPv6 with a single non-zero group (short forms, `::`).
        any::<[u8; 4]>().prop_map(|o| IpAddr::from(Ipv4Addr::from(o).to_ipv6_mapped())),
        (any::<u16>(), 0usize..8).prop_map(|(v, at)| {
            let mut s = [0u16; 8];
            s[at] = v;
            IpAddr::from(Ipv6Addr::from(s))
        }),
    ]
    .boxed()
}

fn socket_addr() -> BoxedStrategy<SocketAddr> {
    (ip(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::new(ip, port))
        .boxed()
}

/// Whitespace around an address (berth trims it).
fn padding() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => "[ \t\n]{1,3}",
    ]
    .boxed()
}

/// Mostly good addresses, and the usual mistakes; never one that needs the resolver.
fn config_address() -> BoxedStrategy<String> {
    mostly(
        prop_oneof![
            6 => socket_addr().prop_map(|a| a.to_string()),
            1 => any::<u16>().prop_map(|p| format!(":{p}")),
        ],
        prop_oneof![
            Just(String::new()),
            ip().prop_map(|ip| ip.to_string()),
            (socket_addr(), 65536u64..).prop_map(|(a, p)| format!("{}:{p}", a.ip())),
            "[a-z0-9_ .:\\[\\]-]{0,12}",
        ],
    )
    .prop_map(offline)
    .boxed()
}

/// Whether berth's address error names the address as given (quoted, as its messages do).
fn names_address(e: &ConfigError, trimmed: &str) -> bool {
    matches!(e, ConfigError::EmptyAddress) || e.to_string().contains(&format!("{trimmed:?}"))
}

proptest! {
    #![proptest_config(config(ADDRESS_CASES))]

    /// Any string: no panic; anything std parses as a socket address is that address; a
    /// success took its port from the text after the last colon; a failure is one of the
    /// address errors and quotes the address.
    #[test]
    fn any_address_string_is_parsed_or_rejected_precisely(
        s in prop_oneof![
            any::<String>(),
            "[0-9a-fA-F:\\[\\]. %+_-]{0,40}",
            (ip(), "[:\\]\\[+ -]{0,3}", "[0-9+-]{0,7}")
                .prop_map(|(ip, sep, port)| format!("{ip}{sep}{port}")),
        ],
    ) {
        // Host names would go to the system resolver: not in tests (no network).
        let s = offline(s);
        let trimmed = s.trim();
        let got = resolve(&s);
        if let Ok(std) = trimmed.parse::<SocketAddr>() {
            prop_assert_eq!(&got, &Ok(std));
        }
        match got {
            Ok(addr) => {
                let port = trimmed.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
                prop_assert_eq!(port, Some(Ok(addr.port())), "{:?}", s);
            }
            Err(e) => {
                prop_assert!(
                    matches!(
                        e,
                        ConfigError::EmptyAddress
                            | ConfigError::MissingPort(_)
                            | ConfigError::InvalidPort { .. }
                            | ConfigError::InvalidAddress { .. }
                    ),
                    "{:?} gave {:?}", s, e
                );
                prop_assert!(names_address(&e, trimmed), "{:?} not named in {}", trimmed, e);
            }
        }
    }

    /// `IP:PORT` as Rust prints it, IPv6 also with all eight groups written out, `:PORT`
    /// (every IPv4 interface), with whitespace around: the address comes back.
    #[test]
    fn ip_and_port_round_trip(addr in socket_addr(), pad in (padding(), padding()), form in 0..3) {
        let (text, expected) = match (form, addr) {
            (1, SocketAddr::V6(v6)) => {
                let groups: Vec<String> =
                    v6.ip().segments().iter().map(|g| format!("{g:x}")).collect();
                (format!("[{}]:{}", groups.join(":"), v6.port()), addr)
            }
            (2, _) => (
                format!(":{}", addr.port()),
                SocketAddr::from(([0, 0, 0, 0], addr.port())),
            ),
            _ => (addr.to_string(), addr),
        };
        let text = format!("{}{text}{}", pad.0, pad.1);
        prop_assert_eq!(resolve(&text), Ok(expected), "{:?}", text);
        let mut config = Config::new(text);
        config.listeners.push(ListenerConfig::tcp(expected.to_string()));
        prop_assert_eq!(config.validate(), Ok(()));
    }

    /// The usual mistakes are errors that say what is wrong: a port above 65535, a negative
    /// or empty port, no port at all, an empty address.
    #[test]
    fn bad_addresses_are_errors(
        ip in ip(),
        big in 65536u128..,
        port in any::<u16>(),
        pad in padding(),
        form in 0..6,
    ) {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let (text, is_expected): (String, fn(&ConfigError) -> bool) = match form {
            0 => (format!("{host}:{big}"), |e| matches!(e, ConfigError::InvalidPort { .. })),
            1 => (format!("{host}:-{port}"), |e| matches!(e, ConfigError::InvalidPort { .. })),
            2 => (format!("{host}:"), |e| {
                matches!(e, ConfigError::InvalidPort { port, .. } if port.is_empty())
            }),
            3 => (ip.to_string(), |e| matches!(e, ConfigError::MissingPort(_))),
            4 => (host, |e| {
                matches!(e, ConfigError::MissingPort(_) | ConfigError::InvalidPort { .. })
            }),
            _ => (pad.clone(), |e| matches!(e, ConfigError::EmptyAddress)),
        };
        let text = format!("{pad}{text}");
        let got = resolve(&text);
        prop_assert!(
            matches!(&got, Err(e) if is_expected(e) && names_address(e, text.trim())),
            "{:?} gave {:?}", text, got
        );
        // `validate` reports the same error for the listening address and for a listener.
        let e = got.unwrap_err();
        prop_assert_eq!(Config::new(text.clone()).validate(), Err(e.clone()));
        let mut config = Config::new("127.0.0.1:0");
        config.listeners.push(ListenerConfig::tcp(text));
        prop_assert_eq!(config.validate(), Err(e));
    }

    /// An IPv4 address written with zero-padded octets ("010.000.000.001") is not what std
    /// accepts, so berth hands it to the system resolver, and glibc's `inet_aton` reads a
    /// leading 0 as octal. Whatever berth does with it, it must not listen somewhere else.
    #[test]
    fn zero_padded_ipv4_is_not_read_as_octal(
        octets in any::<[u8; 4]>(),
        padded in any::<[bool; 4]>(),
        port in any::<u16>(),
    ) {
        // Only octets whose digits are octal ones get a leading zero, so that `inet_aton`
        // takes the whole address as numeric (no DNS query is made).
        let octal = |o: u8| o.to_string().bytes().all(|d| d <= b'7');
        let pad: Vec<bool> = padded.iter().zip(octets).map(|(p, o)| *p && octal(o)).collect();
        prop_assume!(pad.iter().zip(octets).any(|(p, o)| *p && o >= 8));
        let text: Vec<String> = octets
            .iter()
            .zip(pad)
            .map(|(o, p)| if p { format!("0{o}") } else { o.to_string() })
            .collect();
        let text = format!("{}:{port}", text.join("."));
        if let Ok(addr) = Config::new(text.clone()).resolve_address() {
            prop_assert_eq!(addr, SocketAddr::from((octets, port)), "{:?}", text);
        }
    }

    /// Only the forms the documentation lists are accepted: not a signed port, not brackets
    /// that do not pair up or that hold an IPv4 address, not empty brackets.
    #[test]
    fn malformed_forms_are_rejected(ip in ip(), port in any::<u16>(), form in 0..5) {
        let text = match (form, ip) {
            (0, _) => {
                let host = SocketAddr::new(ip, 0).to_string();
                format!("{}:+{port}", host.rsplit_once(':').unwrap().0)
            }
            (1, _) => format!("[{ip}:{port}"),
            (2, IpAddr::V6(v6)) => format!("{v6}]:{port}"),
            (3, IpAddr::V4(v4)) => format!("[{v4}]:{port}"),
            _ => format!("[]:{port}"),
        };
        prop_assume!(!needs_resolver(&text));
        let got = resolve(&text);
        prop_assert!(got.is_err(), "{:?} gave {:?}", text, got);
    }
}

// ---------------------------------------------------------------------------------------
// Documents: berth's schema, random values on it
// ---------------------------------------------------------------------------------------

/// The type of a configuration field, as far as documents are concerned.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Addr,
    Dur,
    Flag,
    U32,
    Usize,
    U8,
    F64,
    Text,
    File,
    Mode,
    Nets,
    Texts,
    Version,
    Auth,
    Pem,
    Table(&'static [Field]),
    /// An array of tables.
    Tables(&'static [Field]),
}

type Field = (&'static str, Kind);

use Kind::*;

const RATE: &[Field] = &[("per_second", F64), ("burst", U32)];
const LIMITS: &[Field] = &[
    ("max_per_ip", Usize),
    ("rate_per_ip", Table(RATE)),
    ("accept_rate", Table(RATE)),
    ("allow", Nets),
    ("deny", Nets),
    ("ipv6_prefix", U8),
    ("max_tracked_ips", Usize),
];
const OVERLOAD: &[Field] = &[
    ("high_pressure", F64),
    ("shrink_idle_timeout", Dur),
    ("evict_idle_after", Dur),
    ("max_lag", Dur),
];
const PROXY: &[Field] = &[("trusted_proxies", Nets), ("trust_unix_peers", Flag)];
const UNIX: &[Field] = &[("path", File), ("mode", Mode), ("group", U32)];
const CERT: &[Field] = &[("cert", Pem), ("key", Pem), ("server_names", Texts)];
const ACME: &[Field] = &[
    ("domains", Texts),
    ("directory", Text),
    ("contact", Texts),
    ("cache", File),
    ("ca", Pem),
    ("renew_before", Dur),
];
const TLS: &[Field] = &[
    ("certificates", Tables(CERT)),
    ("acme", Table(ACME)),
    ("min_version", Version),
    ("max_version", Version),
    ("cipher_suites", Texts),
    ("alpn", Texts),
    ("client_auth", Auth),
    ("client_ca", Pem),
    ("session_resumption", Flag),
    ("session_tickets", Flag),
    ("ticket_lifetime", Dur),
    ("ticket_rotation", Dur),
    ("ticket_key_file", File),
    ("session_cache_size", U32),
    ("watch", Dur),
];
const LISTENER: &[Field] = &[
    ("name", Text),
    ("address", Addr),
    ("unix", Table(UNIX)),
    ("tls", Table(TLS)),
];
const CONFIG: &[Field] = &[
    ("address", Addr),
    ("idle_timeout", Dur),
    ("drain_timeout", Dur),
    ("nodelay", Flag),
    ("backlog", U32),
    ("reuse_port", Flag),
    ("max_connections", Usize),
    ("linger_timeout", Dur),
    ("handshake_timeout", Dur),
    ("max_handshakes", Usize),
    ("limits", Table(LIMITS)),
    ("proxy_protocol", Table(PROXY)),
    ("tls", Table(TLS)),
    ("unix", Table(UNIX)),
    ("first_request_grace", Dur),
    ("lame_duck", Dur),
    ("overload", Table(OVERLOAD)),
    ("upgrade_timeout", Dur),
    ("listeners", Tables(LISTENER)),
];

/// A document, before it is written as TOML or JSON.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Big(u64),
    Float(f64),
    Str(String),
    Arr(Vec<Node>),
    Tab(Vec<(String, Node)>),
}

impl Node {
    fn json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::Big(u) => Value::from(*u),
            Node::Float(f) => Value::from(*f),
            Node::Str(s) => Value::from(s.clone()),
            Node::Arr(a) => Value::Array(a.iter().map(Node::json).collect()),
            Node::Tab(t) => Value::Object(t.iter().map(|(k, v)| (k.clone(), v.json())).collect()),
        }
    }

    /// As TOML: nulls and integers beyond i64 have no TOML form and are left out.
    fn toml(&self) -> Option<toml::Value> {
        use toml::Value;
        Some(match self {
            Node::Null => return None,
            Node::Big(u) => Value::Integer(i64::try_from(*u).ok()?),
            Node::Bool(b) => Value::Boolean(*b),
            Node::Int(i) => Value::Integer(*i),
            Node::Float(f) => Value::Float(*f),
            Node::Str(s) => Value::String(s.clone()),
            Node::Arr(a) => Value::Array(a.iter().filter_map(Node::toml).collect()),
            Node::Tab(t) => Value::Table(
                t.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.toml()?)))
                    .collect(),
            ),
        })
    }

    /// Whether TOML and JSON write exactly this document (nothing TOML cannot hold, no
    /// float JSON cannot hold).
    fn same_in_both(&self) -> bool {
        match self {
            Node::Null => false,
            Node::Big(u) => i64::try_from(*u).is_ok(),
            Node::Float(f) => f.is_finite(),
            Node::Arr(a) => a.iter().all(Node::same_in_both),
            Node::Tab(t) => t.iter().all(|(_, v)| v.same_in_both()),
            _ => true,
        }
    }
}

/// The message of the error `doc` (which must not parse) gives as a JSON `Config`.
fn json_error(doc: &Node) -> String {
    match serde_json::from_str::<Config>(&doc.json().to_string()) {
        Ok(c) => panic!("{} parsed as {c:?}", doc.json()),
        Err(e) => e.to_string(),
    }
}

/// The same through `serde_path_to_error` (as `Config`'s docs advise for JSON): the path
/// of the field, then serde_json's message.
fn json_error_with_path(doc: &Node) -> String {
    let text = doc.json().to_string();
    let mut de = serde_json::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, Config>(&mut de) {
        Ok(c) => panic!("{text} parsed as {c:?}"),
        Err(e) => format!("{}: {}", e.path(), e.inner()),
    }
}

/// The message of the error `text` (which must not parse) gives as a TOML `Config`.
fn toml_error(text: &str) -> String {
    match toml::from_str::<Config>(text) {
        Ok(c) => panic!("{text} parsed as {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn field_name() -> BoxedStrategy<&'static str> {
    prop::sample::select(CONFIG.iter().map(|(n, _)| *n).collect::<Vec<_>>()).boxed()
}

fn toml_text(doc: &Node) -> String {
    match doc.toml() {
        Some(toml::Value::Table(t)) => toml::to_string(&t).expect("a table serializes"),
        other => panic!("not a table: {other:?}"),
    }
}

/// Durations as humantime writes them: zero, tiny, around the limits, huge.
fn duration_text() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(
            &[
                "0s",
                "1ns",
                "999us",
                "1ms",
                "9ms",
                "10ms",
                "365days",
                "366days",
                "1h 30m",
                "600000000000years",
            ][..]
        )
        .prop_map(str::to_owned),
        (
            any::<u32>(),
            prop::sample::select(&["ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y"][..])
        )
            .prop_map(|(n, unit)| format!("{n}{unit}")),
    ]
    .boxed()
}

fn net_text() -> BoxedStrategy<String> {
    (ip(), any::<u8>())
        .prop_map(|(ip, p)| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            format!("{ip}/{}", p % (max + 1))
        })
        .boxed()
}

/// An integer in `0..=max`, often at the edges berth checks.
fn int(max: u64) -> BoxedStrategy<Node> {
    let edges: Vec<u64> = [0, 1, 2, 127, 128, 129, 255, 0o7777, 0o10000, 65535, 65536]
        .into_iter()
        .chain([
            i32::MAX as u64,
            i32::MAX as u64 + 1,
            u32::MAX as u64,
            i64::MAX as u64,
            u64::MAX,
        ])
        .filter(|e| *e <= max)
        .collect();
    prop_oneof![
        3 => prop::sample::select(edges),
        3 => 0u64..=max.min(100_000),
        1 => 0u64..=max,
    ]
    .prop_map(|n| i64::try_from(n).map_or(Node::Big(n), Node::Int))
    .boxed()
}

fn float() -> BoxedStrategy<Node> {
    prop_oneof![
        3 => (0.0f64..=1.0).prop_map(Node::Float),
        2 => prop::sample::select(
            &[
                0.0, -0.0, 1.0, 1.000_000_1, -1.0, 1e300, f64::MIN_POSITIVE, f64::NAN,
                f64::INFINITY, f64::NEG_INFINITY,
            ][..]
        )
        .prop_map(Node::Float),
        1 => any::<f64>().prop_map(Node::Float),
        1 => (0i64..3).prop_map(Node::Int),
    ]
    .boxed()
}

/// Any value at all (of any type), for unknown keys and wrong types.
fn any_node() -> BoxedStrategy<Node> {
    let leaf = prop_oneof![
        Just(Node::Null),
        any::<bool>().prop_map(Node::Bool),
        any::<i64>().prop_map(Node::Int),
        any::<f64>().prop_map(Node::Float),
        "[a-z0-9 .]{0,8}".prop_map(Node::Str),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Node::Arr),
            vec(("[a-z_]{1,6}", inner), 0..3).prop_map(Node::Tab),
        ]
    })
    .boxed()
}

fn text(s: &'static [&'static str]) -> BoxedStrategy<Node> {
    prop::sample::select(s)
        .prop_map(|s| Node::Str(s.to_owned()))
        .boxed()
}

/// A value berth can read into the field (valid or not for `validate`).
fn readable(kind: Kind) -> BoxedStrategy<Node> {
    match kind {
        Addr => config_address().prop_map(Node::Str).boxed(),
        Dur => duration_text().prop_map(Node::Str).boxed(),
        Flag => any::<bool>().prop_map(Node::Bool).boxed(),
        U8 => int(u8::MAX.into()),
        U32 | Mode => int(u32::MAX.into()),
        Usize => int(u64::MAX),
        F64 => float(),
        Text => prop_oneof![Just(String::new()), "[a-z0-9.:]{1,8}"]
            .prop_map(Node::Str)
            .boxed(),
        File => prop_oneof![
            Just(String::new()),
            "/tmp/[a-z]{1,8}\\.sock",
            (100usize..115).prop_map(|n| format!("/{}", "p".repeat(n))),
        ]
        .prop_map(Node::Str)
        .boxed(),
        Nets => vec(net_text().prop_map(Node::Str), 0..3)
            .prop_map(Node::Arr)
            .boxed(),
        Texts => vec("[a-z0-9/._]{0,8}".prop_map(Node::Str), 0..3)
            .prop_map(Node::Arr)
            .boxed(),
        Version => text(&["1.2", "1.3"]),
        Auth => text(&["none", "optional", "required"]),
        Pem => (prop::sample::select(&["path", "pem"][..]), "[a-z./-]{0,12}")
            .prop_map(|(k, v)| Node::Tab(vec![(k.to_owned(), Node::Str(v))]))
            .boxed(),
        Table(fields) => table(fields),
        Tables(fields) => vec(table(fields), 0..3).prop_map(Node::Arr).boxed(),
    }
}

/// A value of the field's type (as JSON and TOML see it) that berth cannot read into it.
fn unreadable(kind: Kind) -> BoxedStrategy<Node> {
    match kind {
        Dur => prop_oneof![
            text(&[
                "",
                "1",
                "1x",
                "-1s",
                "1.5.5s",
                "99999999999999999999999s",
                "s"
            ]),
            "[0-9a-z .-]{0,8}".prop_map(Node::Str),
        ]
        .boxed(),
        U8 => prop_oneof![(256i64..).prop_map(Node::Int), (..0i64).prop_map(Node::Int)].boxed(),
        U32 | Mode => prop_oneof![
            (1i64 << 32..).prop_map(Node::Int),
            (..0i64).prop_map(Node::Int),
        ]
        .boxed(),
        Usize => (..0i64).prop_map(Node::Int).boxed(),
        Nets => vec(
            prop_oneof![
                (ip(), 33u8..).prop_map(|(ip, p)| format!("{ip}/{p}")),
                ip().prop_map(|ip| ip.to_string()),
                "[0-9a-f.:/]{0,12}",
            ]
            .prop_map(Node::Str),
            1..3,
        )
        .prop_map(Node::Arr)
        .boxed(),
        Version => text(&["1.1", "TLS1.3", "", "1.3 "]),
        Auth => text(&["Required", "yes", ""]),
        Pem => prop_oneof![
            Just(Node::Tab(Vec::new())),
            Just(Node::Tab(vec![
                ("path".into(), Node::Str("a".into())),
                ("pem".into(), Node::Str("b".into())),
            ])),
        ]
        .boxed(),
        _ => any_node(),
    }
}

/// A value for a field: mostly one berth reads, sometimes one of the right type it cannot
/// read, sometimes anything.
fn value(kind: Kind) -> BoxedStrategy<Node> {
    prop_oneof![40 => readable(kind), 1 => unreadable(kind), 1 => any_node()].boxed()
}

/// A table with some of `fields` (random values) and, now and then, an unknown key.
fn table(fields: &'static [Field]) -> BoxedStrategy<Node> {
    let known: Vec<BoxedStrategy<Option<(String, Node)>>> = fields
        .iter()
        .map(|&(name, kind)| {
            prop::option::weighted(0.4, value(kind).prop_map(move |v| (name.to_owned(), v))).boxed()
        })
        .collect();
    let unknown = prop::option::weighted(0.01, ("[a-z_]{1,10}", any_node()));
    (known, unknown)
        .prop_map(move |(known, unknown)| {
            let mut entries: Vec<(String, Node)> = known.into_iter().flatten().collect();
            if let Some((k, v)) = unknown {
                if !fields.iter().any(|(name, _)| *name == k) {
                    entries.push((k, v));
                }
            }
            Node::Tab(entries)
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------
// What `validate` must say about a config
// ---------------------------------------------------------------------------------------

/// One rule a config breaks, and which errors report it.
struct Broken {
    rule: String,
    reports: Box<dyn Fn(&ConfigError) -> bool>,
}

fn broken(rule: impl Into<String>, reports: impl Fn(&ConfigError) -> bool + 'static) -> Broken {
    Broken {
        rule: rule.into(),
        reports: Box::new(reports),
    }
}

/// An `InvalidDuration` of `field`.
fn bad_duration(field: &'static str) -> Broken {
    broken(
        field,
        move |e| matches!(e, ConfigError::InvalidDuration { name, .. } if *name == field),
    )
}

/// An `InvalidLimit` whose message names `field`.
fn limit(field: &'static str) -> Broken {
    broken(
        field,
        move |e| matches!(e, ConfigError::InvalidLimit(m) if m.contains(field)),
    )
}

fn unix_rules(unix: &UnixConfig, out: &mut Vec<Broken>) {
    let len = unix.path.as_os_str().len();
    if len == 0 {
        out.push(broken("unix.path empty", |e| {
            matches!(e, ConfigError::EmptyUnixPath)
        }));
    }
    if len > 107 {
        out.push(broken("unix.path too long", move |e| {
            matches!(e, ConfigError::UnixPathTooLong { len: l, max: 107, .. } if *l == len)
        }));
    }
    if let Some(mode) = unix.mode.filter(|m| *m > 0o7777) {
        out.push(broken("unix.mode", move |e| {
            *e == ConfigError::InvalidUnixMode(mode)
        }));
    }
}

/// Every rule of berth's documentation that `c` breaks (written from the documentation of
/// each field and error, not from `validate`'s code). Empty: `c` must validate.
fn rules_broken(c: &Config) -> Vec<Broken> {
    let mut out = Vec::new();
    if c.unix.is_none() {
        if let Err(err) = resolve(&c.address) {
            out.push(broken("address", move |e| *e == err));
        }
    }
    match c.idle_timeout {
        Some(t) if t.is_zero() => out.push(broken("idle_timeout zero", |e| {
            matches!(e, ConfigError::ZeroIdleTimeout)
        })),
        Some(t) if t < Duration::from_millis(1) => out.push(bad_duration("idle_timeout")),
        _ => {}
    }
    let tls = std::iter::once(&c.tls).chain(c.listeners.iter().map(|l| &l.tls));
    if tls
        .flatten()
        .any(|t| t.watch.is_some_and(|w| w < Duration::from_millis(10)))
    {
        out.push(bad_duration("tls.watch"));
    }
    if c.handshake_timeout.is_zero() {
        out.push(broken("handshake_timeout zero", |e| {
            matches!(e, ConfigError::ZeroHandshakeTimeout)
        }));
    }
    for (name, value) in [
        ("idle_timeout", c.idle_timeout),
        ("drain_timeout", Some(c.drain_timeout)),
        ("linger_timeout", Some(c.linger_timeout)),
        ("handshake_timeout", Some(c.handshake_timeout)),
        ("upgrade_timeout", Some(c.upgrade_timeout)),
        ("first_request_grace", Some(c.first_request_grace)),
        ("lame_duck", c.lame_duck),
    ] {
        if let Some(value) = value.filter(|v| *v > Config::MAX_TIMEOUT) {
            out.push(broken(name, move |e| {
                *e == ConfigError::TimeoutTooLarge {
                    name,
                    value,
                    max: Config::MAX_TIMEOUT,
                }
            }));
        }
    }
    if c.max_connections == Some(0) {
        out.push(broken("max_connections", |e| {
            matches!(e, ConfigError::ZeroMaxConnections)
        }));
    }
    if c.max_handshakes == Some(0) {
        out.push(limit("max_handshakes"));
    }
    if c.backlog == 0 || c.backlog > i32::MAX as u32 {
        let backlog = c.backlog;
        out.push(broken("backlog", move |e| {
            *e == ConfigError::InvalidBacklog(backlog)
        }));
    }
    let l = &c.limits;
    if l.max_per_ip == Some(0) {
        out.push(limit("max_per_ip"));
    }
    for (name, rate) in [
        ("rate_per_ip", l.rate_per_ip),
        ("accept_rate", l.accept_rate),
    ] {
        if rate.is_some_and(|r| !(r.per_second.is_finite() && r.per_second > 0.0) || r.burst == 0) {
            out.push(limit(name));
        }
    }
    if l.ipv6_prefix > 128 {
        out.push(limit("ipv6_prefix"));
    }
    if l.max_tracked_ips == 0 {
        out.push(limit("max_tracked_ips"));
    }
    let o = &c.overload;
    if !(o.high_pressure > 0.0 && o.high_pressure <= 1.0) {
        out.push(limit("high_pressure"));
    }
    if o.shrink_idle_timeout == Some(Duration::ZERO) {
        out.push(bad_duration("overload.shrink_idle_timeout"));
    }
    if o.max_lag == Some(Duration::ZERO) {
        out.push(bad_duration("overload.max_lag"));
    }
    if c.proxy_protocol
        .as_ref()
        .is_some_and(|p| p.trusted_proxies.is_empty() && !p.trust_unix_peers)
    {
        out.push(broken("proxy_protocol", |e| {
            matches!(e, ConfigError::NoTrustedProxies)
        }));
    }
    if let Some(unix) = &c.unix {
        unix_rules(unix, &mut out);
    }
    for listener in &c.listeners {
        match (&listener.address, &listener.unix) {
            (Some(address), None) => {
                if let Err(err) = resolve(address) {
                    out.push(broken("listener address", move |e| *e == err));
                }
            }
            (None, Some(unix)) => unix_rules(unix, &mut out),
            _ => out.push(broken("listener: address xor unix", |e| {
                matches!(e, ConfigError::ListenerMismatch(_))
            })),
        }
        if listener.name.as_deref() == Some("") {
            out.push(broken("listener name", |e| {
                matches!(e, ConfigError::EmptyListenerName)
            }));
        }
    }
    let names = c.listener_names();
    let repeated: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, n)| names[..*i].contains(n))
        .map(|(_, n)| n.clone())
        .collect();
    if !repeated.is_empty() {
        out.push(broken(
            "listener names",
            move |e| matches!(e, ConfigError::DuplicateListenerName(n) if repeated.contains(n)),
        ));
    }
    out
}

/// Replaces addresses that would need the resolver by IP literals (no network in tests).
fn make_offline(c: &mut Config) {
    c.address = offline(std::mem::take(&mut c.address));
    for listener in &mut c.listeners {
        if let Some(address) = listener.address.take() {
            listener.address = Some(offline(address));
        }
    }
}

/// `validate` never panics, succeeds exactly when no documented rule is broken, and
/// otherwise returns an error that reports one of the broken rules.
fn check_validate(c: &Config) -> Result<(), TestCaseError> {
    let mut c = c.clone();
    make_offline(&mut c);
    let broken = rules_broken(&c);
    match c.validate() {
        Ok(()) => prop_assert!(
            broken.is_empty(),
            "validated although it breaks {:?}: {:?}",
            broken.iter().map(|b| &b.rule).collect::<Vec<_>>(),
            c
        ),
        Err(e) => {
            prop_assert!(
                broken.iter().any(|b| (b.reports)(&e)),
                "error {:?} ({}) reports none of the broken rules {:?}",
                e,
                e,
                broken.iter().map(|b| &b.rule).collect::<Vec<_>>()
            );
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

/// Equal, counting NaN equal to NaN (`Config` holds floats).
fn same(a: &Config, b: &Config) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

/// Equal but for floats a few ulps apart: serde_json (without its `float_roundtrip`
/// feature) does not always read back the float it wrote (0.09422455864942923 comes back
/// as 0.09422455864942925).
fn same_from_json(a: &Config, b: &Config) -> bool {
    fn close(x: f64, y: f64) -> bool {
        x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-14 * x.abs().max(y.abs())
    }
    let mut b = b.clone();
    if close(a.overload.high_pressure, b.overload.high_pressure) {
        b.overload.high_pressure = a.overload.high_pressure;
    }
    for (x, y) in [
        (a.limits.rate_per_ip, &mut b.limits.rate_per_ip),
        (a.limits.accept_rate, &mut b.limits.accept_rate),
    ] {
        if let (Some(x), Some(y)) = (x, y.as_mut()) {
            if close(x.per_second, y.per_second) {
                y.per_second = x.per_second;
            }
        }
    }
    same(a, &b)
}

/// Parses `doc` as TOML and as JSON (text and `Value`): no panics; whatever parses also
/// passes `check_validate`; a document both formats write alike gets the same answer from
/// both. Returns what TOML made of it.
fn check_document(doc: &Node) -> Result<Option<Config>, TestCaseError> {
    let json = doc.json();
    let from_text = serde_json::from_str::<Config>(&json.to_string());
    let from_value = serde_json::from_value::<Config>(json.clone());
    match (&from_text, &from_value) {
        (Ok(t), Ok(v)) => prop_assert!(same_from_json(v, t), "JSON text and value disagree"),
        (Err(_), Err(_)) => {}
        (t, v) => prop_assert!(false, "JSON text {:?} but JSON value {:?}", t, v),
    }
    let toml = toml::from_str::<Config>(&toml_text(doc));
    for c in [from_text.as_ref().ok(), toml.as_ref().ok()]
        .into_iter()
        .flatten()
    {
        check_validate(c)?;
    }
    if doc.same_in_both() {
        match (&from_text, &toml) {
            (Ok(j), Ok(t)) => prop_assert!(
                same_from_json(t, j),
                "JSON and TOML read {} differently",
                json
            ),
            (Err(_), Err(_)) => {}
            (j, t) => prop_assert!(false, "JSON {:?} but TOML {:?} for {}", j, t, json),
        }
    }
    Ok(toml.ok())
}

// ---------------------------------------------------------------------------------------
// Random configs (as values, not documents)
// ---------------------------------------------------------------------------------------

/// Mostly `good`, now and then `edge`: each field of a config is then rarely at an edge, so
/// that about a third of the configs are valid and the rest break one rule or a few.
fn mostly<T: std::fmt::Debug + Clone + 'static>(
    good: impl Strategy<Value = T> + 'static,
    edge: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![25 => good, 1 => edge].boxed()
}

fn duration() -> BoxedStrategy<Duration> {
    mostly(
        (10_000_000u64..100_000_000_000_000).prop_map(Duration::from_nanos),
        prop_oneof![
            prop::sample::select(vec![
                Duration::ZERO,
                Duration::from_nanos(1),
                Duration::from_micros(999),
                Duration::from_millis(1),
                Duration::from_millis(9),
                Duration::from_millis(10),
                Config::MAX_TIMEOUT,
                Config::MAX_TIMEOUT + Duration::from_nanos(1),
                Duration::MAX,
            ]),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ],
    )
}

fn usize_value() -> BoxedStrategy<usize> {
    mostly(
        1usize..1_000_000,
        prop::sample::select(&[0, 1, usize::MAX][..]),
    )
}

fn rate() -> BoxedStrategy<Rate> {
    let good = (0.001f64..1e6, 1u32..).prop_map(|(per_second, burst)| Rate { per_second, burst });
    let edge = (
        prop::sample::select(
            &[
                0.0,
                -1.0,
                f64::MIN_POSITIVE,
                f64::MAX,
                f64::INFINITY,
                f64::NAN,
            ][..],
        ),
        0u32..3,
    )
        .prop_map(|(per_second, burst)| Rate { per_second, burst });
    mostly(good, edge)
}

fn nets(min: usize) -> BoxedStrategy<Vec<ipnet::IpNet>> {
    vec(
        (ip(), any::<u8>()).prop_map(|(ip, p)| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            ipnet::IpNet::new(ip, p % (max + 1)).unwrap()
        }),
        min..3,
    )
    .boxed()
}

fn unix_config() -> BoxedStrategy<UnixConfig> {
    let path = mostly(
        "/tmp/[a-z]{1,12}\\.sock",
        prop_oneof![
            Just(String::new()),
            (100usize..112).prop_map(|n| format!("/{}", "u".repeat(n))),
        ],
    );
    let mode = prop::option::of(mostly(
        0u32..0o10000,
        prop_oneof![Just(0o10000), any::<u32>()],
    ));
    (path, mode, prop::option::of(any::<u32>()))
        .prop_map(|(path, mode, group)| {
            let mut unix = UnixConfig::new(path);
            unix.mode = mode;
            unix.group = group;
            unix
        })
        .boxed()
}

fn pem() -> BoxedStrategy<PemSource> {
    prop_oneof![
        "[a-z]{1,8}\\.pem".prop_map(|p| PemSource::Path(p.into())),
        "-----BEGIN [A-Z]{1,8}-----".prop_map(PemSource::Pem),
    ]
    .boxed()
}

fn tls_config() -> BoxedStrategy<TlsConfig> {
    let cert = (pem(), pem(), vec("[a-z.]{1,10}", 0..2)).prop_map(|(cert, key, names)| {
        let mut c = CertKey {
            cert,
            key,
            server_names: Vec::new(),
        };
        c.server_names = names;
        c
    });
    let version = prop::sample::select(&[TlsVersion::Tls12, TlsVersion::Tls13][..]);
    let auth =
        prop::sample::select(&[ClientAuth::None, ClientAuth::Optional, ClientAuth::Required][..]);
    (
        vec(cert, 0..2),
        (version.clone(), version),
        vec("[a-z0-9/._]{1,8}", 0..3),
        auth,
        prop::option::of(pem()),
        any::<bool>(),
        prop::option::of(duration()),
    )
        .prop_map(
            |(certificates, (min, max), alpn, auth, ca, resume, watch)| {
                let mut tls = TlsConfig::default();
                tls.certificates = certificates;
                tls.min_version = min;
                tls.max_version = max;
                tls.alpn = alpn;
                tls.client_auth = auth;
                tls.client_ca = ca;
                tls.session_resumption = resume;
                tls.watch = watch;
                tls
            },
        )
        .boxed()
}

fn listener() -> BoxedStrategy<ListenerConfig> {
    let name = prop::option::of(mostly("[a-z]{1,6}", Just(String::new())));
    let place = mostly(
        prop_oneof![
            2 => config_address().prop_map(|a| (Some(a), None)),
            1 => unix_config().prop_map(|u| (None, Some(u))),
        ],
        prop_oneof![
            (config_address(), unix_config()).prop_map(|(a, u)| (Some(a), Some(u))),
            Just((None, None)),
        ],
    );
    (name, place, prop::option::weighted(0.2, tls_config()))
        .prop_map(|(name, (address, unix), tls)| {
            let mut l = ListenerConfig::tcp("");
            l.name = name;
            l.address = address;
            l.unix = unix;
            l.tls = tls;
            l
        })
        .boxed()
}

/// Any config berth's types can hold, valid or not; mostly close to valid.
fn any_config() -> BoxedStrategy<Config> {
    let timeouts = (
        prop::option::of(duration()),
        duration(),
        duration(),
        duration(),
        duration(),
        duration(),
        prop::option::of(duration()),
    )
        .boxed();
    let counts = (
        mostly(
            1u32..5000,
            prop_oneof![
                prop::sample::select(&[0, 1, i32::MAX as u32, i32::MAX as u32 + 1, u32::MAX][..]),
                any::<u32>(),
            ],
        ),
        prop::option::of(usize_value()),
        prop::option::of(usize_value()),
        any::<bool>(),
        any::<bool>(),
    )
        .boxed();
    let limits = (
        prop::option::of(usize_value()),
        prop::option::of(rate()),
        prop::option::of(rate()),
        nets(0),
        nets(0),
        mostly(0u8..=128, 129u8..),
        usize_value(),
    )
        .boxed();
    let overload = (
        mostly(
            0.01f64..=1.0,
            prop::sample::select(&[0.0, 1.0, 1.5, -0.5, f64::NAN, f64::INFINITY][..]),
        ),
        prop::option::of(duration()),
        prop::option::of(duration()),
        prop::option::of(duration()),
    )
        .boxed();
    let places = (
        config_address(),
        prop::option::weighted(0.2, unix_config()),
        prop::option::weighted(
            0.3,
            mostly((nets(1), any::<bool>()), (nets(0), any::<bool>())),
        ),
        prop::option::weighted(0.2, tls_config()),
        vec(listener(), 0..3),
    )
        .boxed();
    (timeouts, counts, limits, overload, places)
        .prop_map(|(timeouts, counts, limits, overload, places)| {
            let mut c = Config::new(places.0);
            (
                c.idle_timeout,
                c.drain_timeout,
                c.linger_timeout,
                c.handshake_timeout,
                c.upgrade_timeout,
                c.first_request_grace,
                c.lame_duck,
            ) = timeouts;
            (
                c.backlog,
                c.max_connections,
                c.max_handshakes,
                c.nodelay,
                c.reuse_port,
            ) = counts;
            let l = &mut c.limits;
            (
                l.max_per_ip,
                l.rate_per_ip,
                l.accept_rate,
                l.allow,
                l.deny,
                l.ipv6_prefix,
                l.max_tracked_ips,
            ) = limits;
            let o = &mut c.overload;
            (
                o.high_pressure,
                o.shrink_idle_timeout,
                o.evict_idle_after,
                o.max_lag,
            ) = overload;
            c.unix = places.1;
            c.proxy_protocol = places.2.map(|(nets, unix)| ProxyProtocol {
                trusted_proxies: nets,
                trust_unix_peers: unix,
            });
            c.tls = places.3;
            c.listeners = places.4;
            c
        })
        .boxed()
}

/// Edits of a document's text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(Index, usize),
    Insert(Index, String),
    Replace(Index, char),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Truncate(Index),
    /// Another digit in place of one: the document still parses, with other values.
    Digit(Index, char),
}

fn edit() -> BoxedStrategy<Edit> {
    let snippet = prop_oneof![
        "[\\[\\]{}=,:\"'#.\\n 0-9eE_+-]{1,4}",
        field_name().prop_map(str::to_owned),
        prop::sample::select(
            &[
                "true",
                "null",
                "1e999",
                "-1",
                "nan",
                "\"",
                "[[listeners]]",
                "[tls]",
                "\\u0000",
                "\u{0}",
                "é"
            ][..]
        )
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        1 => (any::<Index>(), 1usize..6).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => (any::<Index>(), snippet).prop_map(|(i, s)| Edit::Insert(i, s)),
        1 => (any::<Index>(), any::<char>()).prop_map(|(i, c)| Edit::Replace(i, c)),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        4 => (any::<Index>(), prop::char::range('0', '9')).prop_map(|(i, d)| Edit::Digit(i, d)),
    ]
    .boxed()
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<&str> = text.lines().collect();
    match edit {
        Edit::Delete(i, n) if !chars.is_empty() => {
            let at = i.index(chars.len());
            chars.drain(at..(at + n).min(chars.len()));
        }
        Edit::Insert(i, s) => {
            let at = i.index(chars.len() + 1);
            chars.splice(at..at, s.chars());
        }
        Edit::Replace(i, c) if !chars.is_empty() => {
            let at = i.index(chars.len());
            chars[at] = *c;
        }
        Edit::Truncate(i) => chars.truncate(i.index(chars.len() + 1)),
        Edit::Digit(i, d) => {
            let digits: Vec<usize> = (0..chars.len())
                .filter(|&at| chars[at].is_ascii_digit())
                .collect();
            if !digits.is_empty() {
                chars[digits[i.index(digits.len())]] = *d;
            }
        }
        Edit::DuplicateLine(i) if !lines.is_empty() => {
            let at = i.index(lines.len());
            lines.insert(at, lines[at]);
            return lines.join("\n");
        }
        Edit::SwapLines(a, b) if !lines.is_empty() => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
            return lines.join("\n");
        }
        _ => {}
    }
    chars.into_iter().collect()
}

// ---------------------------------------------------------------------------------------
// Wrong types on known fields
// ---------------------------------------------------------------------------------------

/// Where a field is: keys, with 0 for the first table of an array of tables.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    First,
}

/// Every field of the schema that holds a value (not a table), with its path and kind.
fn leaves() -> Vec<(Vec<Step>, Kind)> {
    fn walk(fields: &'static [Field], at: Vec<Step>, out: &mut Vec<(Vec<Step>, Kind)>) {
        for &(name, kind) in fields {
            let mut path = at.clone();
            path.push(Step::Key(name.to_owned()));
            match kind {
                Table(inner) => walk(inner, path.clone(), out),
                Tables(inner) => {
                    let mut first = path.clone();
                    first.push(Step::First);
                    walk(inner, first, out);
                }
                _ => {}
            }
            out.push((path, kind));
        }
    }
    let mut out = Vec::new();
    walk(CONFIG, Vec::new(), &mut out);
    out
}

/// A value of a type that `kind` never accepts (and that names no field: digits, booleans,
/// non-integral floats and containers of those).
fn wrong(kind: Kind) -> BoxedStrategy<Node> {
    let str_ok = matches!(kind, Addr | Dur | Text | File | Version | Auth | Pem);
    let int_ok = matches!(kind, U32 | Usize | U8 | Mode | F64);
    let mut options: Vec<BoxedStrategy<Node>> = Vec::new();
    if !matches!(kind, Flag) {
        options.push(any::<bool>().prop_map(Node::Bool).boxed());
    }
    if !int_ok {
        options.push(any::<i64>().prop_map(Node::Int).boxed());
    }
    if !matches!(kind, F64) {
        options.push(
            (-1e6f64..1e6)
                .prop_filter("not integral", |f| f.fract() != 0.0)
                .prop_map(Node::Float)
                .boxed(),
        );
    }
    if !str_ok {
        options.push("[0-9 ]{0,5}".prop_map(Node::Str).boxed());
    }
    if !matches!(kind, Nets | Texts | Tables(_)) {
        // Not empty: a struct with defaults would take `[]` (serde reads structs from
        // sequences too), and booleans: no struct here starts with a bool field.
        options.push(
            vec(any::<bool>().prop_map(Node::Bool), 1..3)
                .prop_map(Node::Arr)
                .boxed(),
        );
    }
    // Enums read a table as `{ variant = value }`: for them a table is a bad variant name
    // (reported at that key), not a value of the wrong type.
    if !matches!(kind, Table(_) | Pem | Version | Auth) {
        options.push(
            vec(("x[0-9]", any::<i64>().prop_map(Node::Int)), 0..2)
                .prop_map(Node::Tab)
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

/// `doc` with `value` put at `path` (tables and first elements created as needed).
fn put(doc: &mut Node, path: &[Step], value: Node) {
    let Some((step, rest)) = path.split_first() else {
        *doc = value;
        return;
    };
    match step {
        Step::Key(key) => {
            if !matches!(doc, Node::Tab(_)) {
                *doc = Node::Tab(Vec::new());
            }
            let Node::Tab(entries) = doc else {
                unreachable!()
            };
            let at = match entries.iter().position(|(k, _)| k == key) {
                Some(at) => at,
                None => {
                    entries.push((key.clone(), Node::Null));
                    entries.len() - 1
                }
            };
            put(&mut entries[at].1, rest, value);
        }
        Step::First => {
            if !matches!(doc, Node::Arr(a) if !a.is_empty()) {
                *doc = Node::Arr(vec![Node::Tab(Vec::new())]);
            }
            let Node::Arr(items) = doc else {
                unreachable!()
            };
            put(&mut items[0], rest, value);
        }
    }
}

fn node_of(value: &serde_json::Value) -> Node {
    use serde_json::Value;
    match value {
        Value::Null => Node::Null,
        Value::Bool(b) => Node::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Node::Int(i),
            (_, Some(u), _) => Node::Big(u),
            (_, _, f) => Node::Float(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) => Node::Str(s.clone()),
        Value::Array(a) => Node::Arr(a.iter().map(node_of).collect()),
        Value::Object(o) => Node::Tab(o.iter().map(|(k, v)| (k.clone(), node_of(v))).collect()),
    }
}

/// JSON with one key per line (values other than objects on their key's line), and the
/// line (1-based) of the key at `path`.
fn json_lines(doc: &Node, path: &[Step]) -> (String, usize) {
    fn write(
        node: &Node,
        path: Option<&[Step]>,
        out: &mut Vec<String>,
        indent: usize,
        hit: &mut usize,
    ) {
        let pad = " ".repeat(indent);
        match node {
            Node::Tab(entries) => {
                for (i, (k, v)) in entries.iter().enumerate() {
                    let comma = if i + 1 < entries.len() { "," } else { "" };
                    let sub = match path {
                        Some([Step::Key(key), rest @ ..]) if key == k => Some(rest),
                        _ => None,
                    };
                    if sub.is_some_and(|r| r.is_empty()) {
                        *hit = out.len() + 1;
                    }
                    let target = sub.is_some_and(|r| r.is_empty());
                    match v {
                        Node::Tab(_) if !target => {
                            out.push(format!("{pad}{}: {{", serde_json::to_string(k).unwrap()));
                            write(v, sub, out, indent + 2, hit);
                            out.push(format!("{pad}}}{comma}"));
                        }
                        Node::Arr(items)
                            if !target && matches!(items.first(), Some(Node::Tab(_))) =>
                        {
                            out.push(format!("{pad}{}: [", serde_json::to_string(k).unwrap()));
                            for (j, item) in items.iter().enumerate() {
                                let inner = match sub {
                                    Some([Step::First, rest @ ..]) if j == 0 => Some(rest),
                                    _ => None,
                                };
                                out.push(format!("{pad}  {{"));
                                write(item, inner, out, indent + 4, hit);
                                let comma = if j + 1 < items.len() { "," } else { "" };
                                out.push(format!("{pad}  }}{comma}"));
                            }
                            out.push(format!("{pad}]{comma}"));
                        }
                        _ => out.push(format!(
                            "{pad}{}: {}{comma}",
                            serde_json::to_string(k).unwrap(),
                            v.json()
                        )),
                    }
                }
            }
            other => out.push(format!("{pad}{}", other.json())),
        }
    }
    let mut out = vec!["{".to_owned()];
    let mut hit = 0;
    write(doc, Some(path), &mut out, 2, &mut hit);
    out.push("}".to_owned());
    (out.join("\n"), hit)
}

fn name_of(path: &[Step]) -> &str {
    match path.last() {
        Some(Step::Key(name)) => name,
        _ => unreachable!("paths end with a key"),
    }
}

fn wrong_field() -> BoxedStrategy<(Vec<Step>, Node)> {
    prop::sample::select(leaves())
        .prop_flat_map(|(path, kind)| (Just(path), wrong(kind)))
        .boxed()
}

/// A config with every field set (valid).
fn full_config() -> Config {
    let mut c = Config::new("127.0.0.1:0");
    c.idle_timeout = Some(Duration::from_secs(1));
    c.lame_duck = Some(Duration::from_secs(1));
    c.max_connections = Some(1);
    c.max_handshakes = Some(1);
    c.limits.max_per_ip = Some(1);
    c.limits.rate_per_ip = Some(Rate {
        per_second: 1.0,
        burst: 1,
    });
    c.limits.accept_rate = c.limits.rate_per_ip;
    c.limits.allow = vec!["10.0.0.0/8".parse().unwrap()];
    c.limits.deny = vec!["10.1.0.0/16".parse().unwrap()];
    c.overload.shrink_idle_timeout = Some(Duration::from_secs(1));
    c.overload.evict_idle_after = Some(Duration::from_secs(1));
    c.overload.max_lag = Some(Duration::from_secs(1));
    c.proxy_protocol = Some(ProxyProtocol::new(vec!["10.0.0.0/8".parse().unwrap()]));
    let mut unix = UnixConfig::new("/tmp/a.sock");
    unix.mode = Some(0o600);
    unix.group = Some(1);
    c.unix = Some(unix.clone());
    let mut tls = TlsConfig::from_pem_files("c.pem", "k.pem");
    tls.client_ca = Some(PemSource::Path("ca.pem".into()));
    tls.watch = Some(Duration::from_secs(1));
    tls.alpn = vec!["h2".into()];
    tls.cipher_suites = vec!["TLS13_AES_256_GCM_SHA384".into()];
    tls.certificates[0].server_names = vec!["a".into()];
    let mut acme = berth::tls::acme::AcmeConfig::new(["a.example"], "/tmp/acme");
    acme.contact = vec!["mailto:a@a.example".into()];
    acme.ca = Some(PemSource::Path("pebble.pem".into()));
    tls.acme = Some(acme);
    c.tls = Some(tls.clone());
    let mut l = ListenerConfig::unix(UnixConfig::new("/tmp/b.sock"));
    l.name = Some("n".into());
    l.tls = Some(tls);
    c.listeners.push(l);
    c.listeners.push(ListenerConfig::tcp("[::1]:0"));
    c
}

/// A valid config as a document: the base that wrong values are put into.
fn valid_doc() -> BoxedStrategy<Node> {
    let mut tcp = full_config();
    tcp.unix = None;
    tcp.tls = None;
    let docs: Vec<Node> = [Config::new("127.0.0.1:0"), full_config(), tcp]
        .iter()
        .map(|c| {
            assert_eq!(c.validate(), Ok(()));
            node_of(&serde_json::to_value(c).unwrap())
        })
        .collect();
    prop::sample::select(docs).boxed()
}

proptest! {
    #![proptest_config(config(DOCUMENT_CASES))]

    /// Random text, some of it shaped like TOML or JSON: TOML, JSON text and JSON bytes never
    /// panic; what parses validates as documented.
    #[test]
    fn random_text_never_panics(
        text in prop_oneof![
            any::<String>(),
            "[a-z_\\[\\]{}=,:\"'#.\\n 0-9]{0,60}",
            (field_name(), "[ =:\"'\\[\\]{}0-9a-z.,-]{0,20}")
                .prop_map(|(k, v)| format!("{k} = {v}")),
        ],
    ) {
        let parsed = [
            toml::from_str::<Config>(&text).ok(),
            serde_json::from_str::<Config>(&text).ok(),
            serde_json::from_slice::<Config>(text.as_bytes()).ok(),
        ];
        for c in parsed.iter().flatten() {
            check_validate(c)?;
        }
        prop_assert_eq!(&parsed[1], &parsed[2], "JSON from text and from bytes disagree");
    }

    /// Random documents on berth's field names (values of the right type with any content,
    /// sometimes of any type, sometimes unknown keys), in TOML and in JSON: no panic, what
    /// parses validates as documented, both formats agree, and a config read from TOML is
    /// written back to the same config.
    #[test]
    fn random_documents_parse_and_validate_as_documented(doc in table(CONFIG)) {
        if let Some(c) = check_document(&doc)? {
            let again: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
            prop_assert!(same(&again, &c), "{:?} came back as {:?}", c, again);
        }
    }

    /// Any config value: `validate` never panics, succeeds exactly when no documented rule
    /// is broken, else returns an error (a `ConfigError` variant, an `InvalidLimit` naming
    /// the field) for one of the broken rules; and TOML and JSON write it and read it back
    /// unchanged.
    #[test]
    fn validate_follows_the_documented_rules(c in any_config()) {
        check_validate(&c)?;
        let finite = c.overload.high_pressure.is_finite()
            && [c.limits.rate_per_ip, c.limits.accept_rate]
                .iter()
                .flatten()
                .all(|r| r.per_second.is_finite());
        if finite {
            let json: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            prop_assert!(same_from_json(&c, &json), "{:?} came back as {:?}", c, json);
        }
        let toml: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        prop_assert!(same(&toml, &c), "{:?} came back as {:?}", c, toml);
    }

    /// Valid and invalid configs written as TOML or JSON, then edited (characters deleted,
    /// inserted, replaced, lines duplicated or swapped, the text cut short): no panic, and
    /// what still parses validates as documented.
    #[test]
    fn edited_documents_never_panic(
        c in any_config(),
        json in any::<bool>(),
        edits in vec(edit(), 1..5),
    ) {
        let mut text = if json {
            serde_json::to_string_pretty(&c).unwrap()
        } else {
            toml::to_string(&c).unwrap()
        };
        for e in &edits {
            text = apply(&text, e);
        }
        let parsed = if json {
            serde_json::from_str::<Config>(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str::<Config>(&text).map_err(|e| e.to_string())
        };
        match parsed {
            Ok(edited) => check_validate(&edited)?,
            Err(message) => prop_assert!(!message.is_empty()),
        }
    }

    /// A value of the wrong type on any known field (in a valid TOML document): an error
    /// whose message names the field.
    #[test]
    fn toml_type_errors_name_the_field((path, bad) in wrong_field(), base in valid_doc()) {
        let mut doc = base;
        put(&mut doc, &path, bad);
        let text = toml_text(&doc);
        let err = toml_error(&text);
        let name = name_of(&path);
        prop_assert!(err.contains(name), "{:?} not named in:\n{}\nfor:\n{}", name, err, text);
    }

    /// The same in JSON: an error located on the field's line (serde_json gives line and
    /// column; its message does not name fields, see the next property).
    #[test]
    fn json_type_errors_point_at_the_field((path, bad) in wrong_field(), base in valid_doc()) {
        let mut doc = base;
        put(&mut doc, &path, bad);
        let (text, line) = json_lines(&doc, &path);
        prop_assert!(line > 0);
        let err = serde_json::from_str::<Config>(&text).map(|_| ()).unwrap_err();
        prop_assert_eq!(err.line(), line, "{} in\n{}", err, text);
    }

    /// In JSON through `serde_path_to_error`: the error names the field's path (every
    /// field's deserializer, the durations, addresses and CIDRs included, keeps the path).
    #[test]
    fn json_type_errors_name_the_field((path, bad) in wrong_field(), base in valid_doc()) {
        let mut doc = base;
        put(&mut doc, &path, bad);
        let err = json_error_with_path(&doc);
        let name = name_of(&path);
        prop_assert!(err.contains(name), "{:?} not named in {}", name, err);
    }

    /// An unknown key in any table of a valid document: an error naming it, in TOML and JSON.
    #[test]
    fn unknown_fields_are_named(
        (path, _) in prop::sample::select(leaves()),
        key in "[a-z][a-z_]{2,12}",
        value in prop_oneof![
            any::<bool>().prop_map(Node::Bool),
            any::<i64>().prop_map(Node::Int),
            "[a-z ]{0,5}".prop_map(Node::Str),
            Just(Node::Tab(Vec::new())),
        ],
        base in valid_doc(),
    ) {
        // Put the key beside the chosen field, unless it is one of that table's fields.
        let table = CONFIG_TABLES
            .iter()
            .find(|(p, _)| same_table(p, &path))
            .map_or(CONFIG, |(_, fields)| *fields);
        prop_assume!(!table.iter().any(|(n, _)| *n == key));
        let mut at: Vec<Step> = path[..path.len() - 1].to_vec();
        at.push(Step::Key(key.clone()));
        let mut doc = base;
        put(&mut doc, &at, value);
        let unknown = format!("unknown field `{key}`");
        let json = json_error(&doc);
        prop_assert!(json.contains(&unknown), "JSON: {}", json);
        let toml = toml_error(&toml_text(&doc));
        prop_assert!(toml.contains(&unknown), "TOML: {}", toml);
    }
}

/// The tables of the schema by path (for `unknown_fields_are_named`).
const CONFIG_TABLES: &[(&[&str], &[Field])] = &[
    (&[], CONFIG),
    (&["limits"], LIMITS),
    (&["limits", "rate_per_ip"], RATE),
    (&["limits", "accept_rate"], RATE),
    (&["overload"], OVERLOAD),
    (&["proxy_protocol"], PROXY),
    (&["unix"], UNIX),
    (&["tls"], TLS),
    (&["tls", "certificates"], CERT),
    (&["tls", "acme"], ACME),
    (&["listeners"], LISTENER),
    (&["listeners", "unix"], UNIX),
    (&["listeners", "tls"], TLS),
    (&["listeners", "tls", "certificates"], CERT),
    (&["listeners", "tls", "acme"], ACME),
];

/// Whether `field` (a leaf path) lies directly in the table at `table`.
fn same_table(table: &[&str], field: &[Step]) -> bool {
    let keys: Vec<&str> = field[..field.len() - 1]
        .iter()
        .filter_map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::First => None,
        })
        .collect();
    keys == table
}

/// The schema above is berth's: every field of a fully populated config is in it, and
/// every field in it is one berth reads.
#[test]
fn schema_is_berths() {
    let c = full_config();
    fn compare(value: &serde_json::Value, fields: &'static [Field], at: &str) {
        let object = value.as_object().unwrap();
        let mut written: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut schema: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
        written.sort_unstable();
        schema.sort_unstable();
        assert_eq!(written, schema, "fields of {at}");
        for &(name, kind) in fields {
            match kind {
                Table(inner) => compare(&object[name], inner, name),
                Tables(inner) => compare(&object[name][0], inner, name),
                _ => {}
            }
        }
    }
    compare(&serde_json::to_value(&c).unwrap(), CONFIG, "Config");
    // And berth reads it back.
    let back: Config = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}
