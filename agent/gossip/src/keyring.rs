//! The gossip keyring: every key that opens packets, and the one primary key that seals them.
//!
//! # File format
//!
//! UTF-8 text, one item per line; blank lines and lines starting with `#` are ignored:
//!
//! ```text
//! # Tern gossip keyring
//! primary 2
//! 1 uR6CwY3uVvEhzhy48Dx331hO4AiVG37qZVps3UaG6xY=
//! 2 9SPvvYFlDAEioqwGrMayA8jCzLTBS3Z6ci6QZAQkPOE=
//! ```
//!
//! * `<key id> <key>` — a key: the id is a decimal `u32` written into every packet so the
//!   receiver knows which key to try; the key is 32 random bytes in standard base64 with
//!   padding (44 characters).
//! * `primary <key id>` — exactly once: the key this node seals with. It must be listed.
//!
//! Every listed key opens packets. An explicit `primary` line (rather than "the first key")
//! keeps the file diffable: rotation changes one line at a time.
//!
//! # Rotation without downtime
//!
//! 1. **install** — add the new key (not primary) on every node; nodes still seal with the
//!    old key and can now open the new one;
//! 2. **use** — make the new key primary on every node; nodes that have switched and nodes
//!    that have not can open each other's packets, since both hold both keys;
//! 3. **remove** — drop the old key once every node has switched.
//!
//! Each step must reach every node before the next one starts; two nodes one step apart
//! always talk (tested in `tests/crypto.rs`), two steps apart may not.
//!
//! The cluster name is part of a keyring: a key authenticates packets only within the
//! cluster it was made for (the name is bound into every packet as authenticated data).
//! Key material never appears in `Debug` output.

use std::fmt;

use ring::{aead, hkdf};

/// The id written into every packet to say which key sealed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Length of a gossip key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Longest cluster name accepted (a Kubernetes object name).
pub const MAX_CLUSTER_NAME_LEN: usize = 253;

/// HKDF salt separating Tern gossip keys from any other use of the same bytes.
const HKDF_SALT: &[u8] = b"tern-gossip keyring v1";

/// Why a keyring could not be built. Line numbers start at 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("cluster name must be 1 to {MAX_CLUSTER_NAME_LEN} bytes long")]
    BadClusterName,
    #[error("line {line}: expected `<key id> <base64 key>` or `primary <key id>`")]
    Malformed { line: usize },
    #[error("line {line}: key id is not a decimal number from 0 to 4294967295")]
    BadKeyId { line: usize },
    #[error("line {line}: key is not valid standard base64 (with padding)")]
    BadBase64 { line: usize },
    #[error("line {line}: key is {len} bytes long, gossip keys are {KEY_LEN} bytes")]
    WrongKeyLength { line: usize, len: usize },
    #[error("line {line}: key id {id} is listed twice")]
    DuplicateKeyId { line: usize, id: KeyId },
    #[error("line {line}: a second `primary` line")]
    DuplicatePrimary { line: usize },
    #[error("no `primary <key id>` line: the keyring must name the key that seals")]
    NoPrimary,
    #[error("primary key id {0} is not listed in the keyring")]
    PrimaryNotListed(KeyId),
}

struct Entry {
    id: KeyId,
    secret: [u8; KEY_LEN],
    prk: hkdf::Prk,
}

/// The keys of one cluster. Cheap to share behind an `Arc`; replace it whole to rotate.
pub struct Keyring {
    cluster: String,
    primary: KeyId,
    /// Sorted by id, ids unique.
    entries: Vec<Entry>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("cluster", &self.cluster)
            .field("primary", &self.primary)
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Builds a keyring from keys already in memory.
    pub fn new(
        cluster: &str,
        primary: KeyId,
        keys: impl IntoIterator<Item = (KeyId, [u8; KEY_LEN])>,
    ) -> Result<Self, KeyringError> {
        let mut ring = Self::empty(cluster)?;
        for (id, secret) in keys {
            ring.insert(id, secret, 0)?;
        }
        ring.finish(Some(primary))
    }

    /// Parses the keyring file format (see the module documentation).
    ///
    /// ```
    /// use tern_gossip::keyring::{KeyId, Keyring};
    /// let text = "primary 2\n\
    ///             1 uR6CwY3uVvEhzhy48Dx331hO4AiVG37qZVps3UaG6xY=\n\
    ///             2 9SPvvYFlDAEioqwGrMayA8jCzLTBS3Z6ci6QZAQkPOE=\n";
    /// let keyring = Keyring::parse("mail", text)?;
    /// assert_eq!(keyring.primary_id(), KeyId(2));
    /// assert_eq!(format!("{keyring:?}"), r#"Keyring { cluster: "mail", primary: KeyId(2), key_ids: [KeyId(1), KeyId(2)], .. }"#);
    /// # Ok::<(), tern_gossip::keyring::KeyringError>(())
    /// ```
    pub fn parse(cluster: &str, text: &str) -> Result<Self, KeyringError> {
        let mut ring = Self::empty(cluster)?;
        let mut primary = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let mut fields = content.split_whitespace();
            let (Some(first), Some(second), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(KeyringError::Malformed { line });
            };
            if first == "primary" {
                if primary.is_some() {
                    return Err(KeyringError::DuplicatePrimary { line });
                }
                primary = Some(parse_key_id(second, line)?);
                continue;
            }
            let id = parse_key_id(first, line)?;
            let bytes = decode_base64(second).ok_or(KeyringError::BadBase64 { line })?;
            let secret: [u8; KEY_LEN] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyringError::WrongKeyLength {
                        line,
                        len: bytes.len(),
                    })?;
            ring.insert(id, secret, line)?;
        }
        ring.finish(primary)
    }

    /// Writes the keyring in the file format. The output contains the keys: it is meant for
    /// a Secret, never for a log.
    pub fn render_secret(&self) -> String {
        let mut out = format!("# Tern gossip keyring\nprimary {}\n", self.primary);
        for entry in &self.entries {
            out.push_str(&format!("{} {}\n", entry.id, encode_base64(&entry.secret)));
        }
        out
    }

    /// The cluster these keys belong to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The id of the key that seals.
    pub fn primary_id(&self) -> KeyId {
        self.primary
    }

    /// Every key id that opens packets, ascending.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// Whether `id` is in the keyring.
    pub fn contains(&self, id: KeyId) -> bool {
        self.entry(id).is_some()
    }

    /// The AES-256-GCM key for packets that `sender` seals with key `id`.
    ///
    /// Each sender gets its own subkey (HKDF-SHA256 of the keyring key with the sender id as
    /// info) so the random-nonce collision bound of AES-GCM applies per sender rather than
    /// to the whole cluster's traffic.
    pub(crate) fn sender_key(&self, id: KeyId, sender: u64) -> Option<aead::LessSafeKey> {
        let entry = self.entry(id)?;
        let sender = sender.to_be_bytes();
        let info: [&[u8]; 2] = [b"sender", &sender];
        let okm = entry.prk.expand(&info, &aead::AES_256_GCM).ok()?;
        Some(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
    }

    fn entry(&self, id: KeyId) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&id, |e| e.id)
            .ok()
            .map(|i| &self.entries[i])
    }

    fn empty(cluster: &str) -> Result<Self, KeyringError> {
        if cluster.is_empty() || cluster.len() > MAX_CLUSTER_NAME_LEN {
            return Err(KeyringError::BadClusterName);
        }
        Ok(Self {
            cluster: cluster.to_owned(),
            primary: KeyId(0),
            entries: Vec::new(),
        })
    }

    fn insert(
        &mut self,
        id: KeyId,
        secret: [u8; KEY_LEN],
        line: usize,
    ) -> Result<(), KeyringError> {
        match self.entries.binary_search_by_key(&id, |e| e.id) {
            Ok(_) => Err(KeyringError::DuplicateKeyId { line, id }),
            Err(at) => {
                let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&secret);
                self.entries.insert(at, Entry { id, secret, prk });
                Ok(())
            }
        }
    }

    fn finish(mut self, primary: Option<KeyId>) -> Result<Self, KeyringError> {
        let primary = primary.ok_or(KeyringError::NoPrimary)?;
        if !self.contains(primary) {
            return Err(KeyringError::PrimaryNotListed(primary));
        }
        self.primary = primary;
        Ok(self)
    }
}

fn parse_key_id(field: &str, line: usize) -> Result<KeyId, KeyringError> {
    // `u32::from_str` accepts a leading `+`; ids are plain digits.
    if !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KeyringError::BadKeyId { line });
    }
    field
        .parse()
        .map(KeyId)
        .map_err(|_| KeyringError::BadKeyId { line })
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub fn encode_base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(
                    BASE64_ALPHABET[(n >> (18 - 6 * i) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 with padding, strictly: no whitespace, no missing padding, no
/// stray bits in the last character (so every key has exactly one spelling).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let input = text.as_bytes();
    if !input.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| {
        BASE64_ALPHABET
            .iter()
            .position(|&a| a == c)
            .map(|v| v as u32)
    };
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let quads = input.len() / 4;
    for (q, quad) in input.chunks(4).enumerate() {
        let pad = match quad {
            [_, _, b'=', b'='] => 2,
            [_, _, _, b'='] => 1,
            _ => 0,
        };
        if pad > 0 && q + 1 != quads {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = 3 - pad;
        if bytes[keep..].iter().any(|&b| b != 0) {
            return None; // non-canonical trailing bits
        }
        out.extend_from_slice(&bytes[..keep]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    #[test]
    fn base64_round_trips_and_is_strict() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = encode_base64(&bytes);
            assert_eq!(decode_base64(&text), Some(bytes), "{text}");
        }
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        assert_eq!(decode_base64("Zm8="), Some(b"fo".to_vec()));
        assert_eq!(decode_base64("Zm9="), None); // stray bits
        assert_eq!(decode_base64("Zm8"), None); // no padding
        assert_eq!(decode_base64("Zm=8"), None);
        assert_eq!(decode_base64("Zm8=Zm8="), None); // padding in the middle
        assert_eq!(decode_base64("Zm-_"), None); // URL alphabet
        assert_eq!(decode_base64("Zm 8"), None);
    }

    #[test]
    fn parses_comments_blank_lines_and_primary_anywhere() {
        let text = format!("# keys\n\n  {K1}\n");
        assert!(Keyring::parse("c", &text).is_err());
        let text = format!("# keys\n\n1 {K1}\nprimary 1\n");
        let ring = Keyring::parse("c", &text).unwrap();
        assert_eq!(ring.primary_id(), KeyId(1));
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), vec![KeyId(1)]);
        let again = Keyring::parse("c", &ring.render_secret()).unwrap();
        assert_eq!(again.render_secret(), ring.render_secret());
    }

    #[test]
    fn malformed_files_say_what_and_where() {
        let short = encode_base64(&[7; 16]);
        let cases = [
            (format!("1 {K1}\n"), KeyringError::NoPrimary),
            (
                format!("primary 2\n1 {K1}\n"),
                KeyringError::PrimaryNotListed(KeyId(2)),
            ),
            (
                format!("primary 1\n1 {K1}\n1 {K1}\n"),
                KeyringError::DuplicateKeyId {
                    line: 3,
                    id: KeyId(1),
                },
            ),
            (
                format!("primary 1\nprimary 1\n1 {K1}\n"),
                KeyringError::DuplicatePrimary { line: 2 },
            ),
            (
                format!("primary 1\n1 {short}\n"),
                KeyringError::WrongKeyLength { line: 2, len: 16 },
            ),
            (
                "primary 1\n1 not*base64\n".to_owned(),
                KeyringError::BadBase64 { line: 2 },
            ),
            (
                format!("primary 1\n-1 {K1}\n"),
                KeyringError::BadKeyId { line: 2 },
            ),
            (
                format!("primary 1\n+1 {K1}\n"),
                KeyringError::BadKeyId { line: 2 },
            ),
            (
                format!("primary 1\n4294967296 {K1}\n"),
                KeyringError::BadKeyId { line: 2 },
            ),
            (
                format!("primary 1\n1 {K1} extra\n"),
                KeyringError::Malformed { line: 2 },
            ),
            ("primary\n".to_owned(), KeyringError::Malformed { line: 1 }),
            (String::new(), KeyringError::NoPrimary),
        ];
        for (text, want) in cases {
            assert_eq!(Keyring::parse("c", &text).unwrap_err(), want, "{text:?}");
        }
        assert_eq!(
            Keyring::parse("", &format!("primary 1\n1 {K1}\n")).unwrap_err(),
            KeyringError::BadClusterName
        );
    }

    #[test]
    fn debug_never_shows_key_material() {
        let ring = Keyring::new("c", KeyId(9), [(KeyId(9), [0xAB; KEY_LEN])]).unwrap();
        let debug = format!("{ring:?}");
        assert!(debug.contains("primary: KeyId(9)"), "{debug}");
        assert!(!debug.to_lowercase().contains("ab, ab"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
        assert!(!debug.contains(&encode_base64(&[0xAB; KEY_LEN])), "{debug}");
    }
}
