//! Session resumption state berth owns: session ticket keys and the session-ID cache.
//!
//! rustls's own ticketer draws its keys inside rustls, where nothing can reach them: no
//! session then survives an upgrade, and no two instances behind a load balancer resume
//! each other's sessions. [`TicketKeys`] holds the keys here instead, so they can be handed
//! to the next process at an upgrade, read from a file a fleet shares, and rotated.
//!
//! A ticket is `key name (16 bytes) || nonce (12 bytes) || AES-256-GCM(state) || tag`, the
//! key name as additional data: ring seals and opens it, nothing else is done by hand. The
//! name tells which key sealed a ticket, so old keys keep decrypting after a rotation.
//!
//! Lifetime is enforced as rustls asks, by erasing keys, not by a date inside the ticket:
//! a key issues tickets for `ticket_rotation`, then only decrypts for `ticket_lifetime`
//! more, then is dropped. So a ticket resumes for at least `ticket_lifetime` and at most
//! `ticket_lifetime + ticket_rotation` after it was issued.
//!
//! The clock is injected (the server's runtime clock), so rotation follows simulated time
//! in a simulation and can be tested without waiting.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::TlsError;

mod resumption;
#[cfg(test)]
mod tests;

pub(crate) use resumption::Resumption;

/// Bytes of a key's name, the first part of every ticket it seals.
const NAME_LEN: usize = 16;
/// Bytes of one key: its name, then its AES-256 secret. A key file holds each as 96 hex
/// digits.
pub const TICKET_KEY_LEN: usize = 48;
/// Bytes of the GCM tag.
const TAG_LEN: usize = 16;
/// The longest ticket lifetime TLS 1.3 allows (RFC 8446, 4.6.1).
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many keys are kept (lifetime / rotation + 1), so a decrypt stays cheap.
pub(crate) const MAX_KEYS: u128 = 1000;

/// The time source of a key ring.
pub(crate) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// One key's bytes: a name and a secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Material([u8; TICKET_KEY_LEN]);

impl fmt::Debug for Material {
    // The name only: the secret never goes to a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketKey(name ")?;
        for byte in self.name() {
            write!(f, "{byte:02x}")?;
        }
        f.write_str(")")
    }
}

impl Material {
    fn random(rng: &SystemRandom) -> Option<Material> {
        let mut bytes = [0u8; TICKET_KEY_LEN];
        rng.fill(&mut bytes).ok()?;
        Some(Material(bytes))
    }

    fn name(&self) -> &[u8] {
        &self.0[..NAME_LEN]
    }
}

/// A key in use.
struct Key {
    material: Material,
    aead: LessSafeKey,
    created: Instant,
    /// When it stopped issuing tickets. `None`: it is the current key, or it came from a
    /// key file (kept until the file changes).
    retired: Option<Instant>,
}

impl Key {
    fn new(material: Material, created: Instant, retired: Option<Instant>) -> Key {
        let unbound = UnboundKey::new(&AES_256_GCM, &material.0[NAME_LEN..])
            .expect("32 bytes is an AES-256 key");
        Key {
            material,
            aead: LessSafeKey::new(unbound),
            created,
            retired,
        }
    }

    fn expired(&self, now: Instant, lifetime: Duration) -> bool {
        self.retired
            .is_some_and(|retired| now.saturating_duration_since(retired) >= lifetime)
    }
}

/// Session ticket keys: the first key seals new tickets, every key still in the ring opens
/// them. A [`rustls::server::ProducesTickets`], so it can also serve a rustls
/// `ServerConfig` of your own (`config.ticketer = keys`), e.g. one a
/// [`tls_select`](crate::Builder::tls_select) hook returns.
///
/// Made by [`rotating`](Self::rotating) (random keys, a new one every rotation period) or
/// [`from_file`](Self::from_file) (the keys of a file several instances share; no automatic
/// rotation: whoever writes the file rotates). Servers make their own from
/// [`TlsConfig`](super::TlsConfig)'s `ticket_*` settings.
///
/// Its `Debug` output shows how many keys it holds, never their bytes.
pub struct TicketKeys {
    lifetime: Duration,
    /// `None`: keys from a file, never rotated here.
    rotation: Option<Duration>,
    clock: Clock,
    keys: RwLock<Vec<Key>>,
    rng: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("lifetime", &self.lifetime)
            .field("rotation", &self.rotation)
            .field("keys", &crate::sync::read(&self.keys).len())
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Random keys: one issues tickets for `rotation`, then is replaced by a new one and
    /// still opens its tickets for `lifetime` (the lifetime announced to clients).
    ///
    /// Errors: a lifetime outside 1 s ..= 7 days, a zero rotation, or one so short that
    /// more than 1,000 keys would be kept.
    pub fn rotating(lifetime: Duration, rotation: Duration) -> Result<Arc<TicketKeys>, TlsError> {
        TicketKeys::rotating_with(lifetime, rotation, Arc::new(Instant::now))
    }

    pub(crate) fn rotating_with(
        lifetime: Duration,
        rotation: Duration,
        clock: Clock,
    ) -> Result<Arc<TicketKeys>, TlsError> {
        check_lifetime(lifetime)?;
        if rotation.is_zero() || lifetime.as_nanos() / rotation.as_nanos() >= MAX_KEYS {
            return Err(TlsError::TicketRotation { rotation, lifetime });
        }
        let rng = SystemRandom::new();
        let first = Material::random(&rng).ok_or_else(no_randomness)?;
        let now = clock();
        Ok(Arc::new(TicketKeys {
            lifetime,
            rotation: Some(rotation),
            keys: RwLock::new(vec![Key::new(first, now, None)]),
            clock,
            rng,
        }))
    }

    /// The keys of a key file (see [`TlsConfig::ticket_key_file`] for the format), with
    /// `lifetime` announced to clients. They are not rotated here.
    ///
    /// [`TlsConfig::ticket_key_file`]: super::TlsConfig::ticket_key_file
    pub fn from_file(path: &Path, lifetime: Duration) -> Result<Arc<TicketKeys>, TlsError> {
        let bytes = std::fs::read(path).map_err(|e| key_file_error(path, e.to_string()))?;
        TicketKeys::from_bytes(path, &bytes, lifetime, Arc::new(Instant::now))
    }

    pub(crate) fn from_bytes(
        path: &Path,
        bytes: &[u8],
        lifetime: Duration,
        clock: Clock,
    ) -> Result<Arc<TicketKeys>, TlsError> {
        check_lifetime(lifetime)?;
        let materials = parse_key_file(path, bytes)?;
        let now = clock();
        Ok(Arc::new(TicketKeys {
            lifetime,
            rotation: None,
            keys: RwLock::new(
                materials
                    .into_iter()
                    .map(|m| Key::new(m, now, None))
                    .collect(),
            ),
            clock,
            rng: SystemRandom::new(),
        }))
    }

    /// How many keys it holds now (the first seals, all open).
    pub fn len(&self) -> usize {
        crate::sync::read(&self.keys).len()
    }

    /// Always false: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the keys come from a file (and are rotated by whoever writes it).
    pub(crate) fn is_from_file(&self) -> bool {
        self.rotation.is_none()
    }

    /// Replaces every key with the keys of a changed key file.
    pub(crate) fn replace(&self, materials: Vec<Material>) {
        let now = (self.clock)();
        let keys = materials
            .into_iter()
            .map(|m| Key::new(m, now, None))
            .collect();
        *crate::sync::write(&self.keys) = keys;
    }

    /// Starts a new key when the current one has issued tickets for a rotation period, and
    /// drops keys whose tickets have all outlived the lifetime.
    fn rotate_if_due(&self, now: Instant) {
        let Some(rotation) = self.rotation else {
            return;
        };
        let due = |keys: &[Key]| {
            keys.first()
                .is_none_or(|k| now.saturating_duration_since(k.created) >= rotation)
        };
        if !due(&crate::sync::read(&self.keys)) {
            return;
        }
        let mut keys = crate::sync::write(&self.keys);
        if !due(&keys) {
            return; // another caller rotated meanwhile
        }
        // No randomness now: keep sealing with the current key rather than fail.
        let Some(material) = Material::random(&self.rng) else {
            return;
        };
        // Retired when it was due, not now: rotation happens lazily, at the first ticket
        // after the due time, and a quiet hour must not stretch its tickets' life.
        if let Some(current) = keys.first_mut() {
            let due = current.created.checked_add(rotation).unwrap_or(now);
            current.retired = Some(due.min(now));
        }
        keys.insert(0, Key::new(material, now, None));
        keys.retain(|k| !k.expired(now, self.lifetime));
    }

    /// The keys, for the process an upgrade starts: each key's bytes, its age and how long
    /// ago it was retired (ages, not instants: the clocks of two processes differ).
    #[cfg_attr(not(any(feature = "async-io", feature = "tokio")), allow(dead_code))]
    pub(crate) fn export(&self) -> Vec<u8> {
        let now = (self.clock)();
        let keys = crate::sync::read(&self.keys);
        let mut out = Vec::with_capacity(2 + keys.len() * (TICKET_KEY_LEN + 16));
        out.extend_from_slice(&(keys.len() as u16).to_be_bytes());
        for key in keys.iter() {
            out.extend_from_slice(&key.material.0);
            let age = now.saturating_duration_since(key.created).as_millis() as u64;
            let retired = key.retired.map_or(u64::MAX, |r| {
                now.saturating_duration_since(r).as_millis() as u64
            });
            out.extend_from_slice(&age.to_be_bytes());
            out.extend_from_slice(&retired.to_be_bytes());
        }
        out
    }

    /// Takes over the keys the process before this one exported (random keys only; a key
    /// file is read afresh). False, keeping its own, when `bytes` is malformed or empty.
    pub(crate) fn adopt(&self, bytes: &[u8]) -> bool {
        if self.is_from_file() {
            return false;
        }
        let Some(exported) = parse_export(bytes) else {
            return false;
        };
        let now = (self.clock)();
        let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
        let keys: Vec<Key> = exported
            .into_iter()
            .map(|(material, age, retired)| {
                let retired = (retired != u64::MAX).then(|| ago(retired));
                Key::new(material, ago(age), retired)
            })
            .filter(|k| !k.expired(now, self.lifetime))
            .collect();
        if keys.is_empty() || keys[0].retired.is_some() {
            return false;
        }
        *crate::sync::write(&self.keys) = keys;
        true
    }
}

fn parse_export(bytes: &[u8]) -> Option<Vec<(Material, u64, u64)>> {
    let (count, mut rest) = bytes.split_first_chunk::<2>()?;
    let mut keys = Vec::new();
    for _ in 0..u16::from_be_bytes(*count) {
        let (material, tail) = rest.split_first_chunk::<TICKET_KEY_LEN>()?;
        let (age, tail) = tail.split_first_chunk::<8>()?;
        let (retired, tail) = tail.split_first_chunk::<8>()?;
        keys.push((
            Material(*material),
            u64::from_be_bytes(*age),
            u64::from_be_bytes(*retired),
        ));
        rest = tail;
    }
    rest.is_empty().then_some(keys)
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime.as_secs().clamp(1, u64::from(u32::MAX)) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due((self.clock)());
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let keys = crate::sync::read(&self.keys);
        let key = keys.first()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(key.material.name());
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.material.name()),
                &mut ticket[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let now = (self.clock)();
        self.rotate_if_due(now);
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = crate::sync::read(&self.keys);
        let key = keys
            .iter()
            .find(|k| k.material.name() == name && !k.expired(now, self.lifetime))?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(name),
                &mut buffer,
            )
            .ok()?
            .len();
        buffer.truncate(plain);
        Some(buffer)
    }
}

fn check_lifetime(lifetime: Duration) -> Result<(), TlsError> {
    if lifetime < Duration::from_secs(1) || lifetime > MAX_LIFETIME {
        return Err(TlsError::TicketLifetime(lifetime));
    }
    Ok(())
}

fn no_randomness() -> TlsError {
    TlsError::Rustls("the system's random number generator failed".into())
}

fn key_file_error(path: &Path, reason: String) -> TlsError {
    TlsError::TicketKeyFile {
        path: path.to_owned(),
        reason,
    }
}

/// Reads a key file: one key per line, 96 hex digits (48 bytes: a 16-byte name, then a
/// 32-byte secret); blank lines and lines starting with `#` are skipped; the first key
/// seals. At least one key, no name twice.
pub(crate) fn parse_key_file(path: &Path, bytes: &[u8]) -> Result<Vec<Material>, TlsError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| key_file_error(path, "it is not text (expected hex lines)".into()))?;
    let mut keys: Vec<Material> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = index + 1;
        let material = decode_hex(line).ok_or_else(|| {
            key_file_error(
                path,
                format!(
                    "line {number} is not {} hex digits ({} characters found)",
                    TICKET_KEY_LEN * 2,
                    line.chars().count()
                ),
            )
        })?;
        if keys.iter().any(|k| k.name() == material.name()) {
            return Err(key_file_error(
                path,
                format!("line {number} repeats the name (first 16 bytes) of an earlier key"),
            ));
        }
        keys.push(material);
    }
    if keys.is_empty() {
        return Err(key_file_error(path, "it holds no key".into()));
    }
    Ok(keys)
}

fn decode_hex(line: &str) -> Option<Material> {
    let digits = line.as_bytes();
    if digits.len() != TICKET_KEY_LEN * 2 {
        return None;
    }
    let mut bytes = [0u8; TICKET_KEY_LEN];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(Material(bytes))
}
/// The ticket keys of every listener, for the process an upgrade starts:
/// `count (u16)`, then per listener `name length (u16) || name || keys length (u32) || keys`.
// Used by upgrades, which need real sockets (a runtime adapter).
#[cfg_attr(not(any(feature = "async-io", feature = "tokio")), allow(dead_code))]
pub(crate) fn encode_handover(listeners: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(listeners.len() as u16).to_be_bytes());
    for (name, keys) in listeners {
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
        out.extend_from_slice(keys);
    }
    out
}

/// Reads [`encode_handover`]'s bytes back; `None` when they are malformed.
// Used by upgrades, which need real sockets (a runtime adapter).
#[cfg_attr(not(any(feature = "async-io", feature = "tokio")), allow(dead_code))]
pub(crate) fn decode_handover(bytes: &[u8]) -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
    let (count, mut rest) = bytes.split_first_chunk::<2>()?;
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..u16::from_be_bytes(*count) {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let (name, tail) = tail.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
        let (len, tail) = tail.split_first_chunk::<4>()?;
        let (keys, tail) = tail.split_at_checked(u32::from_be_bytes(*len) as usize)?;
        out.insert(String::from_utf8(name.to_vec()).ok()?, keys.to_vec());
        rest = tail;
    }
    rest.is_empty().then_some(out)
}
