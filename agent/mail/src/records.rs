//! The records stored as values (postcard), which the read API also returns.
//!
//! Postcard is not self-describing: a field added to a record needs a migration of the stored
//! values (or a new record version), not just a new field.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tern_store::StoreError;

use crate::command::{Flag, SpecialUse};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    pub created: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Shard-unique, never reused.
    pub id: u64,
    /// Normalized `local@domain`.
    pub address: String,
    /// PHC string; see [`crate::verify_password`].
    pub password_hash: String,
    /// `None`: unlimited.
    pub quota_bytes: Option<u64>,
    /// Sum of the sizes of the account's messages (a body shared by two messages counts
    /// twice, as IMAP QUOTA's STORAGE resource does).
    pub used_bytes: u64,
    /// Number of the account's messages (QUOTA's MESSAGE resource).
    pub messages: u64,
    /// Addresses that resolve to this account.
    pub aliases: BTreeSet<String>,
    pub created: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub address: String,
    /// The account's address.
    pub account: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// Shard-unique, never reused: the key of the mailbox's messages.
    pub id: u64,
    pub account_id: u64,
    pub name: String,
    /// Fixed at creation; a mailbox created later (even with the same name) gets a greater one.
    pub uidvalidity: u32,
    /// The UID the next message gets; never decreases.
    pub uidnext: u32,
    /// MODSEQ of the mailbox's latest change (1 when nothing happened yet).
    pub highestmodseq: u64,
    pub special_use: Option<SpecialUse>,
    /// STATUS MESSAGES.
    pub messages: u32,
    /// STATUS UNSEEN: messages without `\Seen`.
    pub unseen: u32,
    /// STATUS DELETED: messages with `\Deleted`.
    pub deleted: u32,
    /// STATUS SIZE: sum of message sizes.
    pub size: u64,
    /// Keywords ever set on a message here (IMAP's FLAGS response).
    pub keywords: BTreeSet<String>,
    pub created: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub uid: u32,
    /// MODSEQ of the message's latest change.
    pub modseq: u64,
    pub flags: BTreeSet<Flag>,
    /// Unix milliseconds (IMAP INTERNALDATE, JMAP receivedAt).
    pub internal_date: i64,
    /// RFC822.SIZE: the body's length in bytes.
    pub size: u64,
    /// Where the body is: [`crate::MailReader::blob`].
    pub blob: BlobHash,
}

/// SHA-256 of a message body.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    pub fn of(body: &[u8]) -> BlobHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        BlobHash(hash)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({self})")
    }
}

/// Shard-wide counters; ids and UIDVALIDITY values are never handed out twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub last_account_id: u64,
    pub last_mailbox_id: u64,
    pub last_uidvalidity: u32,
}

/// A recorded response, returned again for a retried command with the same key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IdemRecord {
    pub at: i64,
    #[serde(with = "crate::bytes")]
    pub response: Vec<u8>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    to_vec(value).expect("postcard encodes every record into a Vec")
}

/// `value` encoded with postcard into a `Vec` allocated once at its exact size: growing one
/// by doubling copies a command's body again at each step, on every replica.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> postcard::Result<Vec<u8>> {
    let size = postcard::experimental::serialized_size(value)?;
    postcard::to_extend(value, Vec::with_capacity(size))
}

/// A value that does not decode is local corruption, not a deterministic outcome: it is a
/// storage error, so the replica stops instead of diverging.
pub(crate) fn decode<T: DeserializeOwned>(
    keyspace: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::Corrupt(format!("{keyspace} value at key {key:02x?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same bytes as postcard's own `Vec` encoding, in one allocation of exactly their size.
    #[test]
    fn to_vec_encodes_as_postcard_does_in_one_exact_allocation() {
        let command = crate::Command::Deliver {
            idempotency_key: vec![1; 32],
            recipients: vec!["a@example.org".into(), "b@example.org".into()],
            mailbox: Some("INBOX".into()),
            internal_date: 1_700_000_000,
            flags: vec![],
            body: vec![b'x'; 4096],
            now: 1_700_000_000_000,
        };
        let bytes = to_vec(&command).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&command).unwrap());
        assert_eq!(bytes.capacity(), bytes.len());
        let message = encode(&Message {
            uid: 7,
            modseq: 9,
            flags: Default::default(),
            internal_date: 1,
            size: 4096,
            blob: BlobHash::of(b"body"),
        });
        assert_eq!(message.capacity(), message.len());
    }

    #[test]
    fn blob_hash_is_sha256_in_hex() {
        assert_eq!(
            BlobHash::of(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
