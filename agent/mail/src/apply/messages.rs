//! Messages: delivery, APPEND, STORE, EXPUNGE, COPY and MOVE, and the bodies they share.

use std::collections::{BTreeMap, BTreeSet};

use tern_store::StoreError;

use super::directory::{put_account, put_mailbox, require_account, require_mailbox};
use super::{Fail, Step};
use crate::command::{
    AppendMessage, Delivered, Flag, MAX_APPEND_MESSAGES, Reply, StoreOp, StoredMessage, UidSet,
};
use crate::error::MailError;
use crate::keys;
use crate::names::{INBOX, normalize_address, normalize_mailbox_name};
use crate::records::{Account, BlobHash, Mailbox, Message};
use crate::source::{self, Source, Txn};

/// `mail_modseq` values.
const LIVE: u8 = 0;
const EXPUNGED: u8 = 1;

fn flag_set(flags: &[Flag]) -> Result<BTreeSet<Flag>, MailError> {
    flags.iter().try_for_each(Flag::validate)?;
    Ok(flags.iter().cloned().collect())
}

fn quota_allows(account: &Account, needed_bytes: u64) -> Result<(), MailError> {
    match account.quota_bytes {
        Some(quota_bytes) if account.used_bytes.saturating_add(needed_bytes) > quota_bytes => {
            Err(MailError::QuotaExceeded {
                account: account.address.clone(),
                quota_bytes,
                used_bytes: account.used_bytes,
                needed_bytes,
            })
        }
        _ => Ok(()),
    }
}

/// Refuses when `count` more messages would take the mailbox's UIDs past `u32::MAX` (UIDNEXT
/// itself must stay representable).
fn check_uid_space(mailbox: &Mailbox, count: u64) -> Result<(), MailError> {
    if u64::from(mailbox.uidnext) + count > u64::from(u32::MAX) {
        Err(MailError::UidsExhausted(mailbox.name.clone()))
    } else {
        Ok(())
    }
}

/// The MODSEQ of a change to the mailbox that is being made now.
fn next_modseq(mailbox: &mut Mailbox) -> u64 {
    mailbox.highestmodseq += 1;
    mailbox.highestmodseq
}

fn count_in(mailbox: &mut Mailbox, message: &Message) {
    mailbox.messages += 1;
    mailbox.size += message.size;
    if !message.flags.contains(&Flag::Seen) {
        mailbox.unseen += 1;
    }
    if message.flags.contains(&Flag::Deleted) {
        mailbox.deleted += 1;
    }
    for flag in &message.flags {
        if let Flag::Keyword(k) = flag
            && !mailbox.keywords.contains(k)
        {
            mailbox.keywords.insert(k.clone());
        }
    }
}

fn count_out(mailbox: &mut Mailbox, message: &Message) {
    mailbox.messages = mailbox.messages.saturating_sub(1);
    mailbox.size = mailbox.size.saturating_sub(message.size);
    if !message.flags.contains(&Flag::Seen) {
        mailbox.unseen = mailbox.unseen.saturating_sub(1);
    }
    if message.flags.contains(&Flag::Deleted) {
        mailbox.deleted = mailbox.deleted.saturating_sub(1);
    }
}

/// Takes a reference to the body `hash`, storing `body` when it is the first one. Without a
/// body (copies) the blob must already be referenced.
pub(super) fn blob_incref(txn: &mut Txn<'_>, hash: &BlobHash, body: Option<&[u8]>) -> Step<()> {
    let key = keys::blob(txn.shard(), &hash.0);
    let refs = match body {
        Some(_) => stored_refs(txn, &key)?,
        // The message copied refers to the body, so it is no leftover.
        None => source::blob_refs(txn, &hash.0)?,
    };
    match (refs, body) {
        (0, Some(body)) => {
            let value = source::blob_value(txn.index(), body);
            // The log holds the body already, in the command: store it once.
            let link = txn.link_to(body, value.len() - body.len());
            txn.put_linked(keys::BLOB, key, value, link);
        }
        (0, None) => {
            return Err(Fail::Store(StoreError::Corrupt(format!(
                "message refers to blob {hash} that has no references"
            ))));
        }
        (refs, _) => txn.put(keys::BLOBREF, key, (refs + 1).to_be_bytes().to_vec()),
    }
    Ok(())
}

/// The references to the body under `key` before a command stores it: a body on disk that an
/// interrupted apply of this entry (or a later one) left there counts as none, since the state
/// refers to it only once this entry is applied (see [`keys::BLOBREF`]).
fn stored_refs(txn: &Txn<'_>, key: &[u8]) -> Result<u64, StoreError> {
    let stored = match txn.written(keys::BLOB, key) {
        Some(value) => value.is_some(),
        // Only the header: a body delivered again need not be read.
        None => match txn.committed_prefix(keys::BLOB, key, 8)? {
            Some(head) => source::blob_written_at(key, &head)? < txn.index(),
            None => false,
        },
    };
    if stored {
        source::counted_refs(txn, key)
    } else {
        Ok(0)
    }
}

/// Drops a reference to the body `hash`; the last one deletes it.
pub(super) fn blob_decref(txn: &mut Txn<'_>, hash: &BlobHash) -> Step<()> {
    let refs = source::blob_refs(txn, &hash.0)?;
    let key = keys::blob(txn.shard(), &hash.0);
    match refs {
        0 => Err(Fail::Store(StoreError::Corrupt(format!(
            "message refers to blob {hash} that has no references"
        )))),
        1 => {
            txn.delete(keys::BLOB, key);
            Ok(())
        }
        2 => {
            txn.delete(keys::BLOBREF, key);
            Ok(())
        }
        _ => {
            txn.put(keys::BLOBREF, key, (refs - 1).to_be_bytes().to_vec());
            Ok(())
        }
    }
}

/// Adds a message at UIDNEXT with MODSEQ `modseq`. The caller has checked quota and UID space,
/// bumped the mailbox's HIGHESTMODSEQ to `modseq`, and saves `account` and `mailbox`.
#[allow(clippy::too_many_arguments)]
fn insert_message(
    txn: &mut Txn<'_>,
    account: &mut Account,
    mailbox: &mut Mailbox,
    flags: BTreeSet<Flag>,
    internal_date: i64,
    size: u64,
    blob: BlobHash,
    body: Option<&[u8]>,
    modseq: u64,
) -> Step<Message> {
    let uid = mailbox.uidnext;
    mailbox.uidnext = uid
        .checked_add(1)
        .ok_or_else(|| MailError::UidsExhausted(mailbox.name.clone()))?;
    blob_incref(txn, &blob, body)?;
    let message = Message {
        uid,
        modseq,
        flags,
        internal_date,
        size,
        blob,
    };
    let shard = txn.shard();
    txn.put_record(keys::MSG, keys::message(shard, mailbox.id, uid), &message);
    txn.put(
        keys::MODSEQ,
        keys::modseq(shard, mailbox.id, modseq, uid),
        vec![LIVE],
    );
    count_in(mailbox, &message);
    account.used_bytes += size;
    account.messages += 1;
    Ok(message)
}

/// Expunges `message`, leaving a tombstone at `modseq` (the mailbox's new HIGHESTMODSEQ).
fn remove_message(
    txn: &mut Txn<'_>,
    account: &mut Account,
    mailbox: &mut Mailbox,
    message: &Message,
    modseq: u64,
) -> Step<()> {
    let shard = txn.shard();
    txn.delete(keys::MSG, keys::message(shard, mailbox.id, message.uid));
    txn.delete(
        keys::MODSEQ,
        keys::modseq(shard, mailbox.id, message.modseq, message.uid),
    );
    txn.put(
        keys::MODSEQ,
        keys::modseq(shard, mailbox.id, modseq, message.uid),
        vec![EXPUNGED],
    );
    blob_decref(txn, &message.blob)?;
    count_out(mailbox, message);
    account.used_bytes = account.used_bytes.saturating_sub(message.size);
    account.messages = account.messages.saturating_sub(1);
    Ok(())
}

/// Deletes every message and change record of a mailbox that is going away; returns the
/// number of messages and their bytes, for the account's usage.
pub(super) fn remove_contents(txn: &mut Txn<'_>, mailbox: &Mailbox) -> Step<(u64, u64)> {
    let prefix = keys::mailbox_messages(txn.shard(), mailbox.id);
    let (mut messages, mut bytes) = (0u64, 0u64);
    for (key, value) in txn.scan_prefix(keys::MSG, &prefix)? {
        let message: Message = crate::records::decode(keys::MSG, &key, &value)?;
        blob_decref(txn, &message.blob)?;
        txn.delete(keys::MSG, key);
        messages += 1;
        bytes += message.size;
    }
    for (key, _) in txn.scan_prefix(keys::MODSEQ, &prefix)? {
        txn.delete(keys::MODSEQ, key);
    }
    Ok((messages, bytes))
}

/// The mailbox's messages whose UIDs are in `uids`, by UID.
fn select(txn: &Txn<'_>, mailbox_id: u64, uids: &UidSet) -> Result<Vec<Message>, StoreError> {
    let mut out = Vec::new();
    for (first, last) in uids.ranges() {
        out.extend(source::messages(txn, mailbox_id, first, last, usize::MAX)?);
    }
    Ok(out)
}

pub(super) fn deliver(
    txn: &mut Txn<'_>,
    recipients: &[String],
    mailbox: Option<&str>,
    internal_date: i64,
    flags: &[Flag],
    body: &[u8],
) -> Step<Reply> {
    if recipients.is_empty() {
        return Err(MailError::InvalidCommand("a delivery needs a recipient".into()).into());
    }
    let flags = flag_set(flags)?;
    let mailbox = mailbox.map(normalize_mailbox_name).transpose()?;
    let blob = BlobHash::of(body);
    let size = body.len() as u64;
    // Two recipients that are the same account (an address and its alias) get one copy.
    let mut done: BTreeMap<u64, Result<Delivered, MailError>> = BTreeMap::new();
    let mut results = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        let account = match normalize_address(recipient) {
            Ok(address) => source::resolve(txn, &address)?
                .ok_or_else(|| MailError::NoSuchAccount(address.clone())),
            Err(e) => Err(e),
        };
        let result = match account {
            Err(e) => Err(e),
            Ok(account) => match done.get(&account.id) {
                Some(result) => result.clone(),
                None => {
                    let id = account.id;
                    let result = deliver_to(
                        txn,
                        account,
                        mailbox.as_deref(),
                        &flags,
                        internal_date,
                        size,
                        blob,
                        body,
                    )?;
                    done.insert(id, result.clone());
                    result
                }
            },
        };
        results.push(result);
    }
    Ok(Reply::Delivered(results))
}

/// One recipient's copy; a refusal writes nothing.
#[allow(clippy::too_many_arguments)]
fn deliver_to(
    txn: &mut Txn<'_>,
    mut account: Account,
    mailbox: Option<&str>,
    flags: &BTreeSet<Flag>,
    internal_date: i64,
    size: u64,
    blob: BlobHash,
    body: &[u8],
) -> Step<Result<Delivered, MailError>> {
    // A missing target mailbox (a filing rule naming a folder since deleted) falls back to
    // INBOX: mail is not refused for it.
    let named = match mailbox {
        Some(name) => source::mailbox(txn, account.id, name)?,
        None => None,
    };
    let mut target = match named {
        Some(mailbox) => mailbox,
        None => match source::mailbox(txn, account.id, INBOX)? {
            Some(inbox) => inbox,
            None => return Ok(Err(MailError::NoSuchMailbox(INBOX.into()))),
        },
    };
    if let Err(e) = quota_allows(&account, size).and_then(|()| check_uid_space(&target, 1)) {
        return Ok(Err(e));
    }
    let modseq = next_modseq(&mut target);
    let message = insert_message(
        txn,
        &mut account,
        &mut target,
        flags.clone(),
        internal_date,
        size,
        blob,
        Some(body),
        modseq,
    )?;
    put_mailbox(txn, &target);
    put_account(txn, &account);
    Ok(Ok(Delivered {
        account: account.address,
        mailbox: target.name,
        mailbox_id: target.id,
        uidvalidity: target.uidvalidity,
        uid: message.uid,
    }))
}

pub(super) fn append(
    txn: &mut Txn<'_>,
    account: &str,
    mailbox: &str,
    flags: &[Flag],
    internal_date: i64,
    body: &[u8],
) -> Step<Reply> {
    let mut account = require_account(txn, account)?;
    let mut mailbox = require_mailbox(txn, &account, mailbox)?;
    let flags = flag_set(flags)?;
    let size = body.len() as u64;
    quota_allows(&account, size)?;
    check_uid_space(&mailbox, 1)?;
    let modseq = next_modseq(&mut mailbox);
    let message = insert_message(
        txn,
        &mut account,
        &mut mailbox,
        flags,
        internal_date,
        size,
        BlobHash::of(body),
        Some(body),
        modseq,
    )?;
    put_mailbox(txn, &mailbox);
    put_account(txn, &account);
    Ok(Reply::Appended {
        mailbox_id: mailbox.id,
        uidvalidity: mailbox.uidvalidity,
        uid: message.uid,
        modseq,
    })
}

/// All of `messages` or none: everything that can refuse the command is checked before the
/// first message is inserted, and a refusal discards the command's writes anyway.
pub(super) fn append_many(
    txn: &mut Txn<'_>,
    account: &str,
    mailbox: &str,
    messages: &[AppendMessage],
) -> Step<Reply> {
    if messages.is_empty() || messages.len() > MAX_APPEND_MESSAGES {
        return Err(MailError::InvalidCommand(format!(
            "an append carries 1 to {MAX_APPEND_MESSAGES} messages, not {}",
            messages.len()
        ))
        .into());
    }
    let mut account = require_account(txn, account)?;
    let mut mailbox = require_mailbox(txn, &account, mailbox)?;
    let flags = messages
        .iter()
        .map(|m| flag_set(&m.flags))
        .collect::<Result<Vec<_>, _>>()?;
    let total: u64 = messages.iter().map(|m| m.body.len() as u64).sum();
    quota_allows(&account, total)?;
    check_uid_space(&mailbox, messages.len() as u64)?;
    // One MODSEQ for the whole command, as COPY gives its copies.
    let modseq = next_modseq(&mut mailbox);
    let first_uid = mailbox.uidnext;
    let mut last_uid = first_uid;
    for (message, flags) in messages.iter().zip(flags) {
        last_uid = insert_message(
            txn,
            &mut account,
            &mut mailbox,
            flags,
            message.internal_date,
            message.body.len() as u64,
            BlobHash::of(&message.body),
            Some(&message.body),
            modseq,
        )?
        .uid;
    }
    put_mailbox(txn, &mailbox);
    put_account(txn, &account);
    Ok(Reply::AppendedMany {
        mailbox_id: mailbox.id,
        uidvalidity: mailbox.uidvalidity,
        first_uid,
        last_uid,
        modseq,
    })
}

pub(super) fn store(
    txn: &mut Txn<'_>,
    account: &str,
    mailbox: &str,
    uids: &UidSet,
    op: StoreOp,
    flags: &[Flag],
    unchanged_since: Option<u64>,
) -> Step<Reply> {
    let account = require_account(txn, account)?;
    let mut mailbox = require_mailbox(txn, &account, mailbox)?;
    let flags = flag_set(flags)?;
    // Every message this command changes shares one MODSEQ (RFC 7162 allows it).
    let modseq = mailbox.highestmodseq + 1;
    let shard = txn.shard();
    let (mut modified, mut failed) = (Vec::new(), Vec::new());
    for mut message in select(txn, mailbox.id, uids)? {
        if unchanged_since.is_some_and(|since| message.modseq > since) {
            failed.push(message.uid);
            continue;
        }
        let new_flags: BTreeSet<Flag> = match op {
            StoreOp::Add => message.flags.union(&flags).cloned().collect(),
            StoreOp::Remove => message.flags.difference(&flags).cloned().collect(),
            StoreOp::Replace => flags.clone(),
        };
        if new_flags == message.flags {
            continue;
        }
        count_out(&mut mailbox, &message);
        txn.delete(
            keys::MODSEQ,
            keys::modseq(shard, mailbox.id, message.modseq, message.uid),
        );
        message.flags = new_flags;
        message.modseq = modseq;
        count_in(&mut mailbox, &message);
        txn.put(
            keys::MODSEQ,
            keys::modseq(shard, mailbox.id, modseq, message.uid),
            vec![LIVE],
        );
        txn.put_record(
            keys::MSG,
            keys::message(shard, mailbox.id, message.uid),
            &message,
        );
        modified.push(StoredMessage {
            uid: message.uid,
            modseq,
            flags: message.flags,
        });
    }
    if !modified.is_empty() {
        mailbox.highestmodseq = modseq;
        put_mailbox(txn, &mailbox);
    }
    Ok(Reply::Stored {
        modified,
        failed,
        highestmodseq: mailbox.highestmodseq,
    })
}

pub(super) fn expunge(
    txn: &mut Txn<'_>,
    account: &str,
    mailbox: &str,
    uids: Option<&UidSet>,
) -> Step<Reply> {
    let mut account = require_account(txn, account)?;
    let mut mailbox = require_mailbox(txn, &account, mailbox)?;
    let every = UidSet::range(0, u32::MAX);
    let deleted: Vec<Message> = select(txn, mailbox.id, uids.unwrap_or(&every))?
        .into_iter()
        .filter(|m| m.flags.contains(&Flag::Deleted))
        .collect();
    if !deleted.is_empty() {
        let modseq = next_modseq(&mut mailbox);
        for message in &deleted {
            remove_message(txn, &mut account, &mut mailbox, message, modseq)?;
        }
        put_mailbox(txn, &mailbox);
        put_account(txn, &account);
    }
    Ok(Reply::Expunged {
        uids: deleted.iter().map(|m| m.uid).collect(),
        highestmodseq: mailbox.highestmodseq,
    })
}

/// Appends copies of `messages` (from mailbox `from_id`) to `to`, and with `remove` expunges
/// the originals. Returns (source UID, new UID) pairs. The caller saves `account`.
fn transfer(
    txn: &mut Txn<'_>,
    account: &mut Account,
    from_id: u64,
    mut to: Mailbox,
    messages: &[Message],
    remove: bool,
) -> Step<Vec<(u32, u32)>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    check_uid_space(&to, messages.len() as u64)?;
    let modseq = next_modseq(&mut to);
    let mut mapping = Vec::with_capacity(messages.len());
    for message in messages {
        let copy = insert_message(
            txn,
            account,
            &mut to,
            message.flags.clone(),
            message.internal_date,
            message.size,
            message.blob,
            None,
            modseq,
        )?;
        mapping.push((message.uid, copy.uid));
    }
    put_mailbox(txn, &to);
    if remove {
        // Read after saving `to`: source and target may be the same mailbox.
        let mut from = source::mailbox_by_id(txn, from_id)?.ok_or_else(|| {
            Fail::Store(StoreError::Corrupt(format!("mailbox {from_id} vanished")))
        })?;
        let modseq = next_modseq(&mut from);
        for message in messages {
            remove_message(txn, account, &mut from, message, modseq)?;
        }
        put_mailbox(txn, &from);
    }
    Ok(mapping)
}

pub(super) fn copy(
    txn: &mut Txn<'_>,
    account: &str,
    from: &str,
    to: &str,
    uids: &UidSet,
    remove: bool,
) -> Step<Reply> {
    let mut account = require_account(txn, account)?;
    let from = require_mailbox(txn, &account, from)?;
    let to = require_mailbox(txn, &account, to)?;
    let messages = select(txn, from.id, uids)?;
    if !remove {
        quota_allows(&account, messages.iter().map(|m| m.size).sum())?;
    }
    let uidvalidity = to.uidvalidity;
    let mapping = transfer(txn, &mut account, from.id, to, &messages, remove)?;
    put_account(txn, &account);
    Ok(Reply::Copied {
        uidvalidity,
        mapping,
    })
}

/// Moves every message of `from_id` into `to_id` (renaming INBOX).
pub(super) fn move_all(
    txn: &mut Txn<'_>,
    account: &mut Account,
    from_id: u64,
    to_id: u64,
) -> Step<()> {
    let to = source::mailbox_by_id(txn, to_id)?
        .ok_or_else(|| Fail::Store(StoreError::Corrupt(format!("mailbox {to_id} vanished"))))?;
    let messages = select(txn, from_id, &UidSet::range(0, u32::MAX))?;
    transfer(txn, account, from_id, to, &messages, true)?;
    Ok(())
}
