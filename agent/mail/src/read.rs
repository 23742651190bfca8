//! The read API: committed state, straight from the engine, for IMAP, JMAP and the admin API.
//!
//! Reads see whatever the engine holds when they run; a linearizable read first waits (Raft
//! ReadIndex) until the replica has applied the leader's commit index. Lists that can be long
//! come in bounded pages with a continuation.

use std::ops::{Bound, RangeInclusive};

use tern_store::{Engine, StoreError};

use crate::keys::{self, TAG_ACCOUNT};
use crate::names::{normalize_address, normalize_domain, normalize_mailbox_name};
use crate::queue::QueuedMessage;
use crate::records::{self, Account, Alias, BlobHash, Domain, Mailbox, Message};
use crate::source::{self, Committed, Source};

/// Reads one shard's committed mail state.
pub struct MailReader<'a> {
    src: Committed<'a>,
}

/// One page of [`MailReader::messages`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessagePage {
    /// By UID.
    pub messages: Vec<Message>,
    /// The UID to continue from when the page was cut short by the limit.
    pub next: Option<u32>,
}

/// A message changed (or, with `expunged`, removed) at `modseq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub uid: u32,
    pub modseq: u64,
    pub expunged: bool,
}

/// One page of [`MailReader::changed_since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangePage {
    /// By MODSEQ, then UID.
    pub changes: Vec<Change>,
    /// Where to continue ([`MailReader::changes_after`]) when the page was cut short.
    pub next: Option<ChangeCursor>,
}

/// A position in a mailbox's change order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeCursor {
    modseq: u64,
    uid: u32,
}

impl ChangeCursor {
    /// The position of the change of `uid` at `modseq`; [`MailReader::changes_after`] it
    /// continues with the next one. `(m, u32::MAX)` is after every change at MODSEQ `m`.
    pub fn new(modseq: u64, uid: u32) -> Self {
        Self { modseq, uid }
    }

    /// `(modseq, uid)`.
    pub fn position(&self) -> (u64, u32) {
        (self.modseq, self.uid)
    }
}

impl<'a> MailReader<'a> {
    pub fn new(engine: &'a dyn Engine, shard: u32) -> Self {
        Self {
            src: Committed { engine, shard },
        }
    }

    pub fn domains(&self) -> Result<Vec<Domain>, StoreError> {
        let prefix = [&keys::shard_prefix(self.src.shard)[..], &[keys::TAG_DOMAIN]].concat();
        self.src
            .scan_prefix(keys::DIR, &prefix)?
            .iter()
            .map(|(k, v)| records::decode(keys::DIR, k, v))
            .collect()
    }

    pub fn domain(&self, name: &str) -> Result<Option<Domain>, StoreError> {
        match normalize_domain(name) {
            Ok(name) => source::domain(&self.src, &name),
            Err(_) => Ok(None),
        }
    }

    /// A domain's accounts by local part, at most `limit`, starting after the address
    /// `after` (the last one of the previous page).
    pub fn accounts(
        &self,
        domain: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        let Ok(domain) = normalize_domain(domain) else {
            return Ok(Vec::new());
        };
        let prefix = keys::domain_addresses(self.src.shard, TAG_ACCOUNT, &domain);
        let end = keys::prefix_upper(&prefix);
        let after = after.map(|a| keys::account(self.src.shard, &a.to_ascii_lowercase()));
        let start = match &after {
            Some(key) if key.as_slice() >= prefix.as_slice() => Bound::Excluded(key.as_slice()),
            _ => Bound::Included(prefix.as_slice()),
        };
        self.src
            .scan(keys::DIR, start, source::as_ref(&end), limit)?
            .iter()
            .map(|(k, v)| records::decode(keys::DIR, k, v))
            .collect()
    }

    pub fn account(&self, address: &str) -> Result<Option<Account>, StoreError> {
        match normalize_address(address) {
            Ok(address) => source::account(&self.src, &address),
            Err(_) => Ok(None),
        }
    }

    pub fn alias(&self, address: &str) -> Result<Option<Alias>, StoreError> {
        match normalize_address(address) {
            Ok(address) => source::alias(&self.src, &address),
            Err(_) => Ok(None),
        }
    }

    /// The account that mail to `address` reaches: an account, an alias's account, or for
    /// `local+tag@domain` whichever `local@domain` reaches.
    pub fn resolve(&self, address: &str) -> Result<Option<Account>, StoreError> {
        source::resolve(&self.src, address)
    }

    pub fn mailbox(&self, account: &str, name: &str) -> Result<Option<Mailbox>, StoreError> {
        let (Some(account), Ok(name)) = (self.account(account)?, normalize_mailbox_name(name))
        else {
            return Ok(None);
        };
        source::mailbox(&self.src, account.id, &name)
    }

    pub fn mailbox_by_id(&self, mailbox_id: u64) -> Result<Option<Mailbox>, StoreError> {
        source::mailbox_by_id(&self.src, mailbox_id)
    }

    /// The account's mailboxes by name (bytewise); empty when there is no such account.
    pub fn list_mailboxes(&self, account: &str) -> Result<Vec<Mailbox>, StoreError> {
        match self.account(account)? {
            Some(account) => source::mailboxes(&self.src, account.id),
            None => Ok(Vec::new()),
        }
    }

    /// Subscribed mailbox names (which need not exist any more), by name.
    pub fn subscriptions(&self, account: &str) -> Result<Vec<String>, StoreError> {
        let Some(account) = self.account(account)? else {
            return Ok(Vec::new());
        };
        let prefix = keys::subscriptions(self.src.shard, account.id);
        self.src
            .scan_prefix(keys::DIR, &prefix)?
            .into_iter()
            .map(|(k, _)| {
                String::from_utf8(k[prefix.len()..].to_vec()).map_err(|_| {
                    StoreError::Corrupt(format!("subscription key {k:02x?} is not UTF-8"))
                })
            })
            .collect()
    }

    pub fn message(&self, mailbox_id: u64, uid: u32) -> Result<Option<Message>, StoreError> {
        source::message(&self.src, mailbox_id, uid)
    }

    /// Messages with UIDs in `uids`, by UID, at most `limit` (at least one). Continue with
    /// `next..=end` while `next` is `Some`.
    pub fn messages(
        &self,
        mailbox_id: u64,
        uids: RangeInclusive<u32>,
        limit: usize,
    ) -> Result<MessagePage, StoreError> {
        let limit = limit.max(1);
        let mut messages = source::messages(
            &self.src,
            mailbox_id,
            *uids.start(),
            *uids.end(),
            limit.saturating_add(1),
        )?;
        let next = if messages.len() > limit {
            messages.pop().map(|m| m.uid)
        } else {
            None
        };
        Ok(MessagePage { messages, next })
    }

    /// Messages changed or expunged after `modseq` (CONDSTORE CHANGEDSINCE, QRESYNC
    /// VANISHED, JMAP `/changes`), at most `limit` (at least one) per page.
    pub fn changed_since(
        &self,
        mailbox_id: u64,
        modseq: u64,
        limit: usize,
    ) -> Result<ChangePage, StoreError> {
        let Some(from) = modseq.checked_add(1) else {
            return Ok(ChangePage {
                changes: Vec::new(),
                next: None,
            });
        };
        let start = keys::modseq(self.src.shard, mailbox_id, from, 0);
        self.changes(mailbox_id, Bound::Included(&start), limit)
    }

    /// The page after the one that returned `cursor`.
    pub fn changes_after(
        &self,
        mailbox_id: u64,
        cursor: ChangeCursor,
        limit: usize,
    ) -> Result<ChangePage, StoreError> {
        let start = keys::modseq(self.src.shard, mailbox_id, cursor.modseq, cursor.uid);
        self.changes(mailbox_id, Bound::Excluded(&start), limit)
    }

    fn changes(
        &self,
        mailbox_id: u64,
        start: Bound<&[u8]>,
        limit: usize,
    ) -> Result<ChangePage, StoreError> {
        let limit = limit.max(1);
        let end = keys::prefix_upper(&keys::mailbox_messages(self.src.shard, mailbox_id));
        let rows = self.src.scan(
            keys::MODSEQ,
            start,
            source::as_ref(&end),
            limit.saturating_add(1),
        )?;
        let more = rows.len() > limit;
        let changes: Vec<Change> = rows
            .iter()
            .take(limit)
            .map(|(k, v)| {
                let (modseq, uid) = keys::modseq_uid_of_key(k).ok_or_else(|| {
                    StoreError::Corrupt(format!("change key {k:02x?} is too short"))
                })?;
                Ok(Change {
                    uid,
                    modseq,
                    expunged: v.first() == Some(&1),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let next = match changes.last() {
            Some(last) if more => Some(ChangeCursor {
                modseq: last.modseq,
                uid: last.uid,
            }),
            _ => None,
        };
        Ok(ChangePage { changes, next })
    }

    /// A message body.
    pub fn blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError> {
        let key = keys::blob(self.src.shard, &hash.0);
        self.src
            .get(keys::BLOB, &key)?
            .map(|value| source::blob_body(&key, value))
            .transpose()
    }

    /// A message of the outbound queue.
    pub fn queued(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        self.src
            .load(keys::QUEUE, &keys::queued(self.src.shard, id))
    }

    /// Queued messages due at `now` (their next attempt has come and nobody holds a live
    /// claim on them), most overdue first, at most `limit`.
    pub fn due_outbound(&self, now: i64, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let shard = self.src.shard;
        let start = keys::queue_due_all(shard);
        let end = keys::queue_due(shard, crate::apply::clock(now).saturating_add(1), 0);
        let mut out = Vec::new();
        for (key, _) in self.src.scan(
            keys::QUEUE,
            Bound::Included(&start),
            Bound::Excluded(&end),
            limit,
        )? {
            let id = keys::queued_id_of_due_key(&key).ok_or_else(|| {
                StoreError::Corrupt(format!("queue due key {key:02x?} is too short"))
            })?;
            if let Some(message) = self.queued(id)?
                && message.claimable(now)
            {
                out.push(message);
            }
        }
        Ok(out)
    }

    /// Every queued message by id, after `after`, at most `limit`.
    pub fn queued_messages(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let shard = self.src.shard;
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let start = keys::queued(shard, first);
        let end =
            keys::prefix_upper(&[&keys::shard_prefix(shard)[..], &[keys::TAG_QUEUED]].concat());
        self.src
            .scan(
                keys::QUEUE,
                Bound::Included(&start),
                source::as_ref(&end),
                limit,
            )?
            .iter()
            .map(|(k, v)| records::decode(keys::QUEUE, k, v))
            .collect()
    }

    /// How many messages refer to the body `hash`.
    pub fn blob_refs(&self, hash: &BlobHash) -> Result<u64, StoreError> {
        source::blob_refs(&self.src, &hash.0)
    }
}
