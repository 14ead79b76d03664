//! Unit tests of the ticket keys: sealing, rotation, export and adoption, key files, the
//! hand-over encoding.

use super::*;
use rustls::server::ProducesTickets;
use std::sync::Mutex;

/// A clock the test moves by hand.
fn test_clock() -> (Arc<Mutex<Instant>>, Clock) {
    let now = Arc::new(Mutex::new(Instant::now()));
    let read = now.clone();
    (now, Arc::new(move || *read.lock().unwrap()))
}

fn advance(now: &Mutex<Instant>, by: Duration) {
    *now.lock().unwrap() += by;
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_ticket_opens_with_its_key_and_not_when_tampered_with() {
    let keys = TicketKeys::rotating(HOUR, HOUR).unwrap();
    let ticket = keys.encrypt(b"session state").unwrap();
    assert_eq!(ticket.len(), NAME_LEN + NONCE_LEN + 13 + TAG_LEN);
    assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
    // Every byte is covered: name (additional data), nonce, ciphertext and tag.
    for i in 0..ticket.len() {
        let mut bad = ticket.clone();
        bad[i] ^= 1;
        assert_eq!(keys.decrypt(&bad), None, "byte {i}");
    }
    assert_eq!(keys.decrypt(&ticket[..20]), None);
    assert_eq!(keys.decrypt(&[]), None);
    // Two tickets of the same state differ (fresh nonces).
    assert_ne!(keys.encrypt(b"x").unwrap(), keys.encrypt(b"x").unwrap());
    // Another ring's keys open nothing.
    let other = TicketKeys::rotating(HOUR, HOUR).unwrap();
    assert_eq!(other.decrypt(&ticket), None);
}

#[test]
fn rotated_keys_open_old_tickets_for_the_lifetime_then_are_dropped() {
    let (now, clock) = test_clock();
    let keys = TicketKeys::rotating_with(3 * HOUR, HOUR, clock).unwrap();
    let first = keys.encrypt(b"first").unwrap();
    advance(&now, HOUR); // rotation due: a new key seals
    let second = keys.encrypt(b"second").unwrap();
    assert_ne!(first[..NAME_LEN], second[..NAME_LEN], "a new key name");
    assert_eq!(keys.len(), 2);
    advance(&now, 2 * HOUR); // the first key retired 2 h ago: still within 3 h
    assert_eq!(keys.decrypt(&first).unwrap(), b"first");
    advance(&now, HOUR - Duration::from_millis(1));
    assert_eq!(keys.decrypt(&first).unwrap(), b"first");
    advance(&now, Duration::from_millis(1)); // retired 3 h ago: expired
    assert_eq!(keys.decrypt(&first), None, "an expired ticket");
    assert_eq!(keys.decrypt(&second).unwrap(), b"second");
    // Expired keys are erased at the next rotation, not only ignored.
    let _ = keys.encrypt(b"third");
    assert!(keys.len() <= 4, "{}", keys.len());
    advance(&now, 10 * HOUR);
    let _ = keys.encrypt(b"fourth");
    assert_eq!(keys.decrypt(&second), None);
    // Left: only the new key; the one it replaced was due to retire 9 h ago, so its
    // tickets are past their lifetime already.
    assert_eq!(keys.len(), 1);
}

#[test]
fn a_quiet_period_does_not_stretch_a_tickets_life() {
    let (now, clock) = test_clock();
    let keys = TicketKeys::rotating_with(2 * HOUR, HOUR, clock).unwrap();
    let ticket = keys.encrypt(b"early").unwrap();
    // No traffic for 2 h 30: the key was due to retire at 1 h, so its tickets end at
    // 3 h, however late the rotation actually ran.
    advance(&now, 2 * HOUR + HOUR / 2);
    assert_eq!(keys.decrypt(&ticket).unwrap(), b"early");
    advance(&now, HOUR / 2);
    assert_eq!(keys.decrypt(&ticket), None);
}

#[test]
fn keys_survive_export_and_adopt_with_their_ages() {
    let (now, clock) = test_clock();
    let old = TicketKeys::rotating_with(2 * HOUR, HOUR, clock).unwrap();
    let before = old.encrypt(b"before").unwrap();
    advance(&now, HOUR);
    let current = old.encrypt(b"current").unwrap();
    let exported = old.export();

    let (later, clock2) = test_clock();
    let new = TicketKeys::rotating_with(2 * HOUR, HOUR, clock2).unwrap();
    assert_eq!(new.decrypt(&before), None);
    assert!(new.adopt(&exported));
    assert_eq!(new.decrypt(&before).unwrap(), b"before");
    assert_eq!(new.decrypt(&current).unwrap(), b"current");
    // The ages came along: the retired key expires 2 h after its retirement.
    advance(&later, 2 * HOUR);
    assert_eq!(new.decrypt(&before), None);
    // Garbage is refused and the keys stay.
    assert!(!new.adopt(b"\x00\x01garbage"));
    assert!(!new.adopt(&[]));
    assert_eq!(new.decrypt(&current).unwrap(), b"current");
}

#[test]
fn a_key_file_is_parsed_and_its_errors_say_what_to_fix() {
    let path = Path::new("keys.txt");
    let a = "00".repeat(16) + &"11".repeat(32);
    let b = "aa".repeat(16) + &"BB".repeat(32);
    let text = format!("# ticket keys\n{a}\n\n  {b}  \n");
    let keys = parse_key_file(path, text.as_bytes()).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].name(), &[0u8; 16]);
    let error = |text: &str| {
        parse_key_file(path, text.as_bytes())
            .unwrap_err()
            .to_string()
    };
    assert!(error("").contains("holds no key"), "{}", error(""));
    let short = error("abcd\n");
    assert!(short.contains("line 1 is not 96 hex digits"), "{short}");
    assert!(short.contains("openssl rand -hex 48"), "{short}");
    let bad = error(&format!("{a}\n{}\n", "zz".repeat(48)));
    assert!(bad.contains("line 2"), "{bad}");
    let twice = error(&format!("{a}\n{a}\n"));
    assert!(twice.contains("repeats the name"), "{twice}");

    // Two rings from one file open each other's tickets; the first key seals.
    let one = TicketKeys::from_bytes(path, text.as_bytes(), HOUR, Arc::new(Instant::now)).unwrap();
    let two = TicketKeys::from_bytes(path, text.as_bytes(), HOUR, Arc::new(Instant::now)).unwrap();
    let ticket = one.encrypt(b"shared").unwrap();
    assert_eq!(&ticket[..NAME_LEN], &[0u8; 16]);
    assert_eq!(two.decrypt(&ticket).unwrap(), b"shared");
    // A file key is never rotated or expired by time, only by a new file.
    let (now, clock) = test_clock();
    let file = TicketKeys::from_bytes(path, text.as_bytes(), HOUR, clock).unwrap();
    advance(&now, 100 * HOUR);
    assert_eq!(file.decrypt(&ticket).unwrap(), b"shared");
    file.replace(parse_key_file(path, b.as_bytes()).unwrap());
    assert_eq!(file.decrypt(&ticket), None);
    assert!(
        !file.adopt(&one.export()),
        "file keys are not replaced by a handover"
    );
}

#[test]
fn settings_out_of_range_are_refused() {
    assert!(matches!(
        TicketKeys::rotating(Duration::ZERO, HOUR),
        Err(TlsError::TicketLifetime(_))
    ));
    assert!(matches!(
        TicketKeys::rotating(MAX_LIFETIME + HOUR, HOUR),
        Err(TlsError::TicketLifetime(_))
    ));
    assert!(matches!(
        TicketKeys::rotating(HOUR, Duration::ZERO),
        Err(TlsError::TicketRotation { .. })
    ));
    assert!(matches!(
        TicketKeys::rotating(HOUR, Duration::from_millis(100)),
        Err(TlsError::TicketRotation { .. })
    ));
    let debug = format!("{:?}", TicketKeys::rotating(HOUR, HOUR).unwrap());
    assert!(debug.contains("keys: 1"), "{debug}");
}

#[test]
fn the_handover_encoding_round_trips() {
    let listeners = vec![
        ("127.0.0.1:7000".to_owned(), vec![1, 2, 3]),
        ("b".to_owned(), Vec::new()),
    ];
    let bytes = encode_handover(&listeners);
    let back = decode_handover(&bytes).unwrap();
    assert_eq!(back.into_iter().collect::<Vec<_>>(), listeners);
    assert_eq!(decode_handover(&bytes[..bytes.len() - 1]), None);
    assert_eq!(decode_handover(&[]), None);
}
