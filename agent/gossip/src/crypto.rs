//! Packet sealing: every gossip UDP packet and every push-pull TCP frame is AES-256-GCM.
//!
//! # Layout
//!
//! ```text
//!  0      2     3          7                 15                23                  35
//! +------+-----+----------+-----------------+-----------------+-------------------+------------+---------+
//! | "TG" | ver | key id   | sender node id  | sequence        | nonce             | ciphertext | tag     |
//! | 2 B  | 1 B | u32 BE   | u64 BE          | u64 BE          | 12 B, random      | n bytes    | 16 B    |
//! +------+-----+----------+-----------------+-----------------+-------------------+------------+---------+
//!  \___________________________ header (35 B) _____________________________________/
//! ```
//!
//! Overhead: [`OVERHEAD`] = 51 bytes per packet. The authenticated data is the whole header
//! followed by the cluster name, so magic, version, key id, sender, sequence and cluster are
//! all bound to the ciphertext; changing any of them makes opening fail.
//!
//! # Nonces
//!
//! The nonce is 96 random bits from the operating system (`ring::rand::SystemRandom`), sent
//! in the clear. It does not depend on the sequence number, so nothing a sender forgets on a
//! restart, and no clock step, can ever make it reuse a nonce — the failure that breaks
//! AES-GCM completely (it leaks the authentication key). The cost of random nonces is a
//! birthday bound: 2³² messages per key keep the collision chance under 2⁻³². To make that
//! bound per sender rather than per cluster, each sender seals with its own subkey derived
//! from the keyring key and its node id (HKDF-SHA256, see [`Keyring`]); 2³² packets is over a
//! year for one node at 100 packets a second, and keys are rotated far more often. (A nonce
//! of sender id ‖ sequence would need 128 bits, more than GCM's 96, and would make nonce
//! uniqueness depend on the sequence surviving restarts.)
//!
//! # What a receiver can tell apart
//!
//! A packet from another cluster (the cluster name is only in the authenticated data), one
//! sealed with a different key under the same id, and one tampered with in flight all fail
//! the same AEAD check and are reported as [`DropReason::AuthFailed`]: AES-GCM cannot tell them
//! apart, by design. Packets are checked in the order of [`DropReason`]'s variants, cheapest
//! first, and the replay window is only updated after authentication, so forged packets
//! cannot move a sender's window.

use ring::aead::{self, Aad, Nonce};
use ring::rand::{SecureRandom, SystemRandom};

use crate::keyring::{KeyId, Keyring};
use crate::replay::{ReplayError, ReplayTable};

/// First bytes of every Tern gossip packet.
pub const MAGIC: [u8; 2] = *b"TG";
/// Wire protocol version; bumped on any incompatible change to the layout or to what is
/// authenticated.
pub const VERSION: u8 = 1;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 35;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest sealed packet or push-pull frame accepted or produced (4 MiB): room for the full
/// state of a thousand-node cluster, small enough that a hostile frame costs little.
pub const MAX_SEALED_LEN: usize = 4 << 20;

const NONCE_AT: usize = 23;

/// What the sender says about a packet, besides its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender's node id (from the Assignment; never reused).
    pub sender: u64,
    /// From the sender's [`crate::replay::SequenceCounter`]; one per packet.
    pub sequence: u64,
}

/// A packet that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub sender: u64,
    pub sequence: u64,
    /// The key that opened it; a non-primary key here means a peer has not switched keys yet.
    pub key_id: KeyId,
    pub plaintext: Vec<u8>,
}

/// Why a received packet was dropped. Each reason is a separate metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    #[error("packet larger than {MAX_SEALED_LEN} bytes")]
    TooLarge,
    #[error("packet shorter than the {OVERHEAD}-byte envelope")]
    TooShort,
    #[error("not a Tern gossip packet")]
    BadMagic,
    #[error("unsupported gossip protocol version")]
    UnsupportedVersion,
    #[error("sealed with a key id this node does not hold")]
    UnknownKey,
    #[error("sequence number already seen from this sender")]
    Replayed,
    #[error("sequence number older than the sender's replay window")]
    TooOld,
    /// Wrong key, another cluster, or tampered: indistinguishable under AEAD.
    #[error("authentication failed: another cluster, another key, or tampered")]
    AuthFailed,
}

impl DropReason {
    /// Every reason, for registering metrics up front.
    pub const ALL: [DropReason; 8] = [
        Self::TooLarge,
        Self::TooShort,
        Self::BadMagic,
        Self::UnsupportedVersion,
        Self::UnknownKey,
        Self::Replayed,
        Self::TooOld,
        Self::AuthFailed,
    ];

    /// Stable snake_case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::TooShort => "too_short",
            Self::BadMagic => "bad_magic",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownKey => "unknown_key",
            Self::Replayed => "replayed",
            Self::TooOld => "too_old",
            Self::AuthFailed => "auth_failed",
        }
    }
}

impl From<ReplayError> for DropReason {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Replayed => Self::Replayed,
            ReplayError::TooOld => Self::TooOld,
        }
    }
}

/// Why a packet could not be sealed (a local problem, never the peer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("plaintext too large: the sealed packet would exceed {MAX_SEALED_LEN} bytes")]
    TooLarge,
    #[error("the operating system's random number generator failed")]
    Randomness,
    #[error("AES-GCM sealing failed")]
    Crypto,
}

/// Seals `plaintext` with the keyring's primary key.
pub fn seal(keyring: &Keyring, header: &Header, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    if plaintext.len() > MAX_SEALED_LEN - OVERHEAD {
        return Err(SealError::TooLarge);
    }
    let key_id = keyring.primary_id();
    let key = keyring
        .sender_key(key_id, header.sender)
        .ok_or(SealError::Crypto)?;
    let mut nonce = [0u8; aead::NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Randomness)?;

    let mut packet = Vec::with_capacity(plaintext.len() + OVERHEAD);
    packet.extend_from_slice(&MAGIC);
    packet.push(VERSION);
    packet.extend_from_slice(&key_id.0.to_be_bytes());
    packet.extend_from_slice(&header.sender.to_be_bytes());
    packet.extend_from_slice(&header.sequence.to_be_bytes());
    packet.extend_from_slice(&nonce);
    debug_assert_eq!(packet.len(), HEADER_LEN);
    let aad = associated_data(&packet, keyring.cluster());
    packet.extend_from_slice(plaintext);

    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut packet[HEADER_LEN..],
        )
        .map_err(|_| SealError::Crypto)?;
    packet.extend_from_slice(tag.as_ref());
    Ok(packet)
}

/// Opens a received packet: checks it, decrypts it, and records its sequence number in
/// `replay`. Never panics; on any failure nothing in `replay` changes.
pub fn open(
    keyring: &Keyring,
    replay: &mut ReplayTable,
    packet: &[u8],
) -> Result<Opened, DropReason> {
    if packet.len() > MAX_SEALED_LEN {
        return Err(DropReason::TooLarge);
    }
    if packet.len() < OVERHEAD {
        return Err(DropReason::TooShort);
    }
    let (header, body) = packet.split_at(HEADER_LEN);
    if header[0..2] != MAGIC {
        return Err(DropReason::BadMagic);
    }
    if header[2] != VERSION {
        return Err(DropReason::UnsupportedVersion);
    }
    let key_id = KeyId(u32::from_be_bytes(field(header, 3)));
    let sender = u64::from_be_bytes(field(header, 7));
    let sequence = u64::from_be_bytes(field(header, 15));
    let nonce: [u8; aead::NONCE_LEN] = field(header, NONCE_AT);

    let key = keyring
        .sender_key(key_id, sender)
        .ok_or(DropReason::UnknownKey)?;
    // Cheap refusal before decrypting; the window itself only moves after authentication.
    replay.check(sender, sequence)?;

    let aad = associated_data(header, keyring.cluster());
    let mut buffer = body.to_vec();
    let plaintext_len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut buffer,
        )
        .map_err(|_| DropReason::AuthFailed)?
        .len();
    buffer.truncate(plaintext_len);

    replay.accept(sender, sequence)?;
    Ok(Opened {
        sender,
        sequence,
        key_id,
        plaintext: buffer,
    })
}

/// Reads the fixed-size field at `at` of a header already known to be `HEADER_LEN` long.
fn field<const N: usize>(header: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    if let Some(bytes) = header.get(at..at + N) {
        out.copy_from_slice(bytes);
    }
    out
}

/// Header ‖ cluster name. The header has a fixed length, so the concatenation is unambiguous.
fn associated_data(header: &[u8], cluster: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + cluster.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(cluster.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::KEY_LEN;

    fn ring(cluster: &str) -> Keyring {
        Keyring::new(cluster, KeyId(1), [(KeyId(1), [42; KEY_LEN])]).unwrap()
    }

    #[test]
    fn layout_matches_the_diagram() {
        let header = Header {
            sender: 0x0102_0304_0506_0708,
            sequence: 0x1112_1314_1516_1718,
        };
        let packet = seal(&ring("a"), &header, b"hello").unwrap();
        assert_eq!(packet.len(), 5 + OVERHEAD);
        assert_eq!(&packet[..3], b"TG\x01");
        assert_eq!(&packet[3..7], &[0, 0, 0, 1]);
        assert_eq!(&packet[7..15], &header.sender.to_be_bytes());
        assert_eq!(&packet[15..23], &header.sequence.to_be_bytes());
        assert_ne!(&packet[HEADER_LEN..HEADER_LEN + 5], b"hello");
    }

    #[test]
    fn nonces_differ_between_packets_with_the_same_sequence() {
        let header = Header {
            sender: 1,
            sequence: 1,
        };
        let a = seal(&ring("a"), &header, b"x").unwrap();
        let b = seal(&ring("a"), &header, b"x").unwrap();
        assert_ne!(a[NONCE_AT..HEADER_LEN], b[NONCE_AT..HEADER_LEN]);
    }

    #[test]
    fn senders_use_different_subkeys() {
        let keyring = ring("a");
        let mut packet = seal(
            &keyring,
            &Header {
                sender: 1,
                sequence: 1,
            },
            b"x",
        )
        .unwrap();
        // Claiming another sender changes the AAD and the subkey; either alone would fail.
        packet[7..15].copy_from_slice(&2u64.to_be_bytes());
        assert_eq!(
            open(&keyring, &mut ReplayTable::default(), &packet),
            Err(DropReason::AuthFailed)
        );
    }

    #[test]
    fn oversized_plaintext_is_refused_on_both_ends() {
        let big = vec![0; MAX_SEALED_LEN - OVERHEAD + 1];
        let header = Header {
            sender: 1,
            sequence: 1,
        };
        assert_eq!(seal(&ring("a"), &header, &big), Err(SealError::TooLarge));
        let packet = vec![0; MAX_SEALED_LEN + 1];
        assert_eq!(
            open(&ring("a"), &mut ReplayTable::default(), &packet),
            Err(DropReason::TooLarge)
        );
    }
}
