//! Unit tests of the settings' validation and address parsing.

use super::*;

fn err(address: &str) -> ConfigError {
    Config::new(address).validate().unwrap_err()
}

#[test]
fn addresses_parse_or_fail_precisely() {
    assert_eq!(
        parse_address("127.0.0.1:0").unwrap(),
        "127.0.0.1:0".parse().unwrap()
    );
    assert_eq!(
        parse_address("[::1]:80").unwrap(),
        "[::1]:80".parse().unwrap()
    );
    assert_eq!(
        parse_address(":7000").unwrap(),
        "0.0.0.0:7000".parse().unwrap()
    );
    assert!(parse_address("localhost:7000").unwrap().ip().is_loopback());
    assert_eq!(err(""), ConfigError::EmptyAddress);
    assert_eq!(err("   "), ConfigError::EmptyAddress);
    assert!(matches!(err("abc"), ConfigError::MissingPort(_)));
    assert!(matches!(err("localhost"), ConfigError::MissingPort(_)));
    assert!(matches!(err("::1"), ConfigError::MissingPort(_)));
    assert!(matches!(
        err("127.0.0.1:65536"),
        ConfigError::InvalidPort { .. }
    ));
    assert!(matches!(
        err("127.0.0.1:-1"),
        ConfigError::InvalidPort { .. }
    ));
    assert!(matches!(
        err("127.0.0.1:http"),
        ConfigError::InvalidPort { .. }
    ));
    assert!(matches!(err("a b:80"), ConfigError::InvalidAddress { .. }));
    assert!(matches!(
        err("no-such-host.invalid:80"),
        ConfigError::InvalidAddress { .. }
    ));
}

#[test]
fn limits_are_checked() {
    let base = Config::new("127.0.0.1:0");
    assert_eq!(base.validate(), Ok(()));
    let bad = |f: fn(&mut Config)| {
        let mut c = base.clone();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert_eq!(
        bad(|c| c.max_connections = Some(0)),
        ConfigError::ZeroMaxConnections
    );
    assert_eq!(
        bad(|c| c.idle_timeout = Some(Duration::ZERO)),
        ConfigError::ZeroIdleTimeout
    );
    assert_eq!(bad(|c| c.backlog = 0), ConfigError::InvalidBacklog(0));
    assert_eq!(
        bad(|c| c.backlog = u32::MAX),
        ConfigError::InvalidBacklog(u32::MAX)
    );
    assert!(matches!(
        bad(|c| c.drain_timeout = Duration::from_secs(u64::MAX)),
        ConfigError::TimeoutTooLarge {
            name: "drain_timeout",
            ..
        }
    ));
}

#[test]
fn proxy_protocol_must_trust_someone() {
    let with = |proxy: crate::ProxyProtocol| Config {
        proxy_protocol: Some(proxy),
        ..Config::new("127.0.0.1:0")
    };
    assert_eq!(
        with(crate::ProxyProtocol::new(Vec::new())).validate(),
        Err(ConfigError::NoTrustedProxies)
    );
    let unix_only = crate::ProxyProtocol {
        trust_unix_peers: true,
        ..crate::ProxyProtocol::new(Vec::new())
    };
    assert_eq!(with(unix_only).validate(), Ok(()));
    let proxies = crate::ProxyProtocol::new(vec!["10.0.0.0/8".parse().unwrap()]);
    assert_eq!(with(proxies).validate(), Ok(()));
}

#[test]
fn unix_settings_are_checked() {
    let with = |unix: UnixConfig| Config {
        unix: Some(unix),
        ..Config::default()
    };
    assert_eq!(with(UnixConfig::new("/tmp/a.sock")).validate(), Ok(()));
    assert_eq!(
        with(UnixConfig::new("")).validate(),
        Err(ConfigError::EmptyUnixPath)
    );
    let long = format!("/tmp/{}", "x".repeat(103));
    assert!(matches!(
        with(UnixConfig::new(long)).validate(),
        Err(ConfigError::UnixPathTooLong {
            len: 108,
            max: 107,
            ..
        })
    ));
    let mut bad_mode = UnixConfig::new("/tmp/a.sock");
    bad_mode.mode = Some(0o10000);
    assert_eq!(
        with(bad_mode).validate(),
        Err(ConfigError::InvalidUnixMode(0o10000))
    );
}

#[test]
fn a_tls_table_parses_everywhere_and_names_the_feature_where_tls_is_missing() {
    let config: Config = toml::from_str(
        r#"
        address = "127.0.0.1:0"
        [tls]
        certificates = [{ cert = { path = "cert.pem" }, key = { path = "key.pem" } }]
        "#,
    )
    .unwrap();
    assert!(config.tls.is_some());
    assert_eq!(config.check_compiled_in(true), Ok(()));
    let err = config.check_compiled_in(false).unwrap_err();
    assert_eq!(
        err,
        ConfigError::FeatureDisabled {
            field: "tls",
            feature: "tls"
        }
    );
    let message = err.to_string();
    assert!(message.contains("`tls` feature"), "{message}");
    assert!(message.contains(r#"features = ["tls"]"#), "{message}");
}

#[test]
fn serde_uses_human_durations_and_defaults() {
    let c: Config = serde_json::from_str(
        r#"{"address":"127.0.0.1:0","idle_timeout":"250ms","drain_timeout":"5m"}"#,
    )
    .unwrap();
    assert_eq!(c.idle_timeout, Some(Duration::from_millis(250)));
    assert_eq!(c.drain_timeout, Duration::from_secs(300));
    assert!(c.nodelay);
    let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let unknown = serde_json::from_str::<Config>(r#"{"adress":"x"}"#).unwrap_err();
    assert!(unknown.to_string().contains("unknown field"), "{unknown}");
    let bad = serde_json::from_str::<Config>(r#"{"idle_timeout":"xyz"}"#).unwrap_err();
    assert!(bad.to_string().contains("idle_timeout") || bad.to_string().contains("xyz"));
}
