//! Key layout of the mail model.
//!
//! Every key starts with the shard id (`u32`, big-endian), so one engine can hold several
//! shards and a shard's data is a contiguous range of every keyspace. Integers in keys are
//! big-endian so that byte order is numeric order. Values are postcard-encoded records
//! ([`crate::Account`], [`crate::Mailbox`], [`crate::Message`], …) unless said otherwise.
//!
//! | keyspace       | key (after the 4-byte shard)              | value                    |
//! |----------------|-------------------------------------------|--------------------------|
//! | `mail_dir`     | `C`                                       | shard counters           |
//! |                | `D` ‖ domain                              | domain                   |
//! |                | `A` ‖ domain ‖ `0x00` ‖ local part        | account                  |
//! |                | `L` ‖ domain ‖ `0x00` ‖ local part        | alias (target address)   |
//! |                | `N` ‖ account id (u64) ‖ mailbox name     | mailbox id (u64 BE)      |
//! |                | `X` ‖ mailbox id (u64)                    | mailbox                  |
//! |                | `S` ‖ account id (u64) ‖ mailbox name     | empty (subscribed)       |
//! | `mail_msg`     | mailbox id (u64) ‖ uid (u32)              | message metadata         |
//! | `mail_modseq`  | mailbox id (u64) ‖ modseq (u64) ‖ uid     | `0` live, `1` expunged   |
//! | `mail_blob`    | SHA-256 of the body (32 bytes)            | body bytes               |
//! | `mail_blobref` | SHA-256 of the body                       | reference count (u64 BE) |
//! | `mail_idem`    | `K` ‖ idempotency key                     | recorded response        |
//! |                | `T` ‖ recorded at (u64 millis) ‖ key      | empty (expiry index)     |
//! | `mail_queue`   | `C`                                       | last queued id (u64 BE)  |
//! |                | `M` ‖ queued id (u64)                     | queued message           |
//! |                | `W` ‖ due at (u64 millis) ‖ queued id     | empty (due index)        |
//!
//! Why this shape:
//! - Accounts and aliases are keyed domain first, so a domain's accounts are one range scan
//!   (listing, and refusing to delete a domain that still has any). Neither part may contain
//!   `0x00`, so the separator is unambiguous.
//! - Mailboxes are found by (account id, name) and stored by a shard-unique, never reused id,
//!   so a rename moves one small index entry and a deleted-then-recreated mailbox can never
//!   see the old one's messages. Account ids are never reused either.
//! - `mail_msg` keys end in the UID, so a UID range is a range scan (IMAP `UID FETCH 1:*`
//!   streams in bounded pages).
//! - `mail_modseq` orders each mailbox's messages by the MODSEQ of their last change, so
//!   CONDSTORE `CHANGEDSINCE` (and JMAP `/changes`) is a range scan. An expunged message
//!   leaves a tombstone at the MODSEQ of its expunge, for QRESYNC `VANISHED` and JMAP.
//! - Bodies are stored once per shard by content hash, with a reference count per message
//!   that points at them; the body is deleted when the count reaches zero.
//! - Idempotency records expire after [`crate::IDEMPOTENCY_TTL_MS`]; the `T` index lets each
//!   delivery delete a few expired ones, deterministically, by the proposer's clock.
//! - The outbound queue's `W` index orders messages by when they are next due (the next
//!   attempt, or the end of the current claim's lease), so listing due messages is one range
//!   scan up to now.

use std::ops::Bound;

/// Domains, accounts, aliases, mailboxes, subscriptions and the shard's counters.
pub const DIR: &str = "mail_dir";
/// Message metadata by mailbox id and UID.
pub const MSG: &str = "mail_msg";
/// Change index by mailbox id, MODSEQ and UID.
pub const MODSEQ: &str = "mail_modseq";
/// Message bodies by SHA-256, each after the log index (8 bytes, big-endian) of the entry
/// that stored it. A body is here while a message refers to it.
pub const BLOB: &str = "mail_blob";
/// Reference counts of bodies that two or more messages share; a stored body without one has
/// a single reference. Most bodies are delivered once, and then the state's B-tree holds
/// nothing for them: bodies sit on a log engine whose index is in memory (see the agent's
/// storage layout), so telling whether one exists reads no tree.
///
/// Bodies reach the disk before the state that refers to them (`tern_store::Split`), so a
/// crash can leave a body that the replayed entry then stores again: it is told apart from a
/// body stored by an earlier entry by its log index, which is not below the entry's own.
pub const BLOBREF: &str = "mail_blobref";
/// Responses of deliveries by idempotency key, and their expiry index.
///
/// Kept beside the bodies on the log engine ([`SIDE_AFTER`]): the keys are digests, and a
/// B-tree gives each new one a page of its own in every commit.
pub const IDEM: &str = "mail_idem";
/// The outbound queue: queued messages and their due index.
pub const QUEUE: &str = "mail_queue";

/// Every keyspace the mail model writes, for the Raft layer (snapshots, shard removal).
pub const KEYSPACES: &[&str] = &[DIR, MSG, MODSEQ, BLOB, BLOBREF, IDEM, QUEUE];

/// Keyspaces kept beside the state on a log engine (`tern_store::Split`) whose values the
/// state refers to: stored before the state's write.
pub const SIDE_REFERENCED: &[&str] = &[BLOB];
/// Keyspaces kept beside the state on a log engine (`tern_store::Split`) that nothing refers
/// to: written after the state's write, from its redo record, so they are never ahead of it.
pub const SIDE_AFTER: &[&str] = &[IDEM];

pub(crate) const TAG_COUNTERS: u8 = b'C';
pub(crate) const TAG_DOMAIN: u8 = b'D';
pub(crate) const TAG_ACCOUNT: u8 = b'A';
pub(crate) const TAG_ALIAS: u8 = b'L';
pub(crate) const TAG_MAILBOX_NAME: u8 = b'N';
pub(crate) const TAG_MAILBOX: u8 = b'X';
pub(crate) const TAG_SUBSCRIPTION: u8 = b'S';
pub(crate) const TAG_IDEM_KEY: u8 = b'K';
pub(crate) const TAG_IDEM_TIME: u8 = b'T';
pub(crate) const TAG_QUEUE_COUNTER: u8 = b'C';
pub(crate) const TAG_QUEUED: u8 = b'M';
pub(crate) const TAG_QUEUE_DUE: u8 = b'W';

/// The first bytes of every key of `shard`.
pub fn shard_prefix(shard: u32) -> [u8; 4] {
    shard.to_be_bytes()
}

fn tagged(shard: u32, tag: u8, capacity: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + capacity);
    key.extend_from_slice(&shard_prefix(shard));
    key.push(tag);
    key
}

pub(crate) fn counters(shard: u32) -> Vec<u8> {
    tagged(shard, TAG_COUNTERS, 0)
}

pub(crate) fn domain(shard: u32, domain: &str) -> Vec<u8> {
    let mut key = tagged(shard, TAG_DOMAIN, domain.len());
    key.extend_from_slice(domain.as_bytes());
    key
}

/// `address` is normalized `local@domain`; the key puts the domain first.
fn address_key(shard: u32, tag: u8, address: &str) -> Vec<u8> {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let mut key = tagged(shard, tag, address.len() + 1);
    key.extend_from_slice(domain.as_bytes());
    key.push(0);
    key.extend_from_slice(local.as_bytes());
    key
}

pub(crate) fn account(shard: u32, address: &str) -> Vec<u8> {
    address_key(shard, TAG_ACCOUNT, address)
}

pub(crate) fn alias(shard: u32, address: &str) -> Vec<u8> {
    address_key(shard, TAG_ALIAS, address)
}

/// Prefix of every account (or alias, by `tag`) key of `domain`.
pub(crate) fn domain_addresses(shard: u32, tag: u8, domain: &str) -> Vec<u8> {
    let mut key = tagged(shard, tag, domain.len() + 1);
    key.extend_from_slice(domain.as_bytes());
    key.push(0);
    key
}

pub(crate) fn mailbox_names(shard: u32, account_id: u64) -> Vec<u8> {
    let mut key = tagged(shard, TAG_MAILBOX_NAME, 8);
    key.extend_from_slice(&account_id.to_be_bytes());
    key
}

pub(crate) fn mailbox_name(shard: u32, account_id: u64, name: &str) -> Vec<u8> {
    let mut key = mailbox_names(shard, account_id);
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn mailbox(shard: u32, mailbox_id: u64) -> Vec<u8> {
    let mut key = tagged(shard, TAG_MAILBOX, 8);
    key.extend_from_slice(&mailbox_id.to_be_bytes());
    key
}

pub(crate) fn subscriptions(shard: u32, account_id: u64) -> Vec<u8> {
    let mut key = tagged(shard, TAG_SUBSCRIPTION, 8);
    key.extend_from_slice(&account_id.to_be_bytes());
    key
}

pub(crate) fn subscription(shard: u32, account_id: u64, name: &str) -> Vec<u8> {
    let mut key = subscriptions(shard, account_id);
    key.extend_from_slice(name.as_bytes());
    key
}

/// Prefix of a mailbox's keys in `mail_msg` and `mail_modseq`.
pub(crate) fn mailbox_messages(shard: u32, mailbox_id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&shard_prefix(shard));
    key.extend_from_slice(&mailbox_id.to_be_bytes());
    key
}

pub(crate) fn message(shard: u32, mailbox_id: u64, uid: u32) -> Vec<u8> {
    let mut key = mailbox_messages(shard, mailbox_id);
    key.extend_from_slice(&uid.to_be_bytes());
    key
}

pub(crate) fn modseq(shard: u32, mailbox_id: u64, modseq: u64, uid: u32) -> Vec<u8> {
    let mut key = mailbox_messages(shard, mailbox_id);
    key.extend_from_slice(&modseq.to_be_bytes());
    key.extend_from_slice(&uid.to_be_bytes());
    key
}

/// The MODSEQ and UID at the end of a `mail_modseq` key.
pub(crate) fn modseq_uid_of_key(key: &[u8]) -> Option<(u64, u32)> {
    let tail = key.get(key.len().checked_sub(12)?..)?;
    let modseq = u64::from_be_bytes(tail[..8].try_into().ok()?);
    let uid = u32::from_be_bytes(tail[8..].try_into().ok()?);
    Some((modseq, uid))
}

pub(crate) fn blob(shard: u32, hash: &[u8; 32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(36);
    key.extend_from_slice(&shard_prefix(shard));
    key.extend_from_slice(hash);
    key
}

pub(crate) fn idem_key(shard: u32, idempotency_key: &[u8]) -> Vec<u8> {
    let mut key = tagged(shard, TAG_IDEM_KEY, idempotency_key.len());
    key.extend_from_slice(idempotency_key);
    key
}

pub(crate) fn idem_times(shard: u32) -> Vec<u8> {
    tagged(shard, TAG_IDEM_TIME, 0)
}

pub(crate) fn idem_time(shard: u32, at: u64, idempotency_key: &[u8]) -> Vec<u8> {
    let mut key = tagged(shard, TAG_IDEM_TIME, 8 + idempotency_key.len());
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(idempotency_key);
    key
}

pub(crate) fn queue_counter(shard: u32) -> Vec<u8> {
    tagged(shard, TAG_QUEUE_COUNTER, 0)
}

pub(crate) fn queued(shard: u32, id: u64) -> Vec<u8> {
    let mut key = tagged(shard, TAG_QUEUED, 8);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn queue_due_all(shard: u32) -> Vec<u8> {
    tagged(shard, TAG_QUEUE_DUE, 0)
}

pub(crate) fn queue_due(shard: u32, at: u64, id: u64) -> Vec<u8> {
    let mut key = tagged(shard, TAG_QUEUE_DUE, 16);
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The queued id at the end of a `W` key.
pub(crate) fn queued_id_of_due_key(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The smallest key greater than every key that starts with `prefix`; `None` when there is
/// none (the prefix is all `0xff`), which means "unbounded".
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The upper bound of a scan over every key that starts with `prefix`.
pub(crate) fn prefix_upper(prefix: &[u8]) -> Bound<Vec<u8>> {
    match prefix_end(prefix) {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(&[1, 2, 3]), Some(vec![1, 2, 4]));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }

    #[test]
    fn numeric_order_is_key_order() {
        assert!(message(1, 2, 255) < message(1, 2, 256));
        assert!(message(1, 2, u32::MAX) < message(1, 3, 0));
        assert!(modseq(0, 9, 1, u32::MAX) < modseq(0, 9, 2, 0));
        assert!(message(1, u64::MAX, 0) < message(2, 0, 0));
    }

    #[test]
    fn accounts_are_keyed_domain_first_and_unambiguous() {
        let key = account(7, "bob@example.com");
        assert_eq!(&key[..5], &[0, 0, 0, 7, b'A']);
        assert_eq!(&key[5..], b"example.com\0bob");
        // "a@bc" and "a@b" must not share a domain prefix.
        assert!(!account(0, "a@bc").starts_with(&domain_addresses(0, TAG_ACCOUNT, "b")));
        assert!(account(0, "a@b").starts_with(&domain_addresses(0, TAG_ACCOUNT, "b")));
    }

    #[test]
    fn key_tails_decode() {
        assert_eq!(modseq_uid_of_key(&modseq(3, 4, 99, 5)), Some((99, 5)));
        assert_eq!(modseq_uid_of_key(&[1, 2]), None);
    }
}
