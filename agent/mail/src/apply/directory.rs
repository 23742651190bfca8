//! Domains, accounts, aliases, mailboxes and subscriptions.

use std::collections::BTreeSet;
use std::ops::Bound;

use tern_store::StoreError;

use super::messages::{move_all, remove_contents};
use super::{Fail, Step};
use crate::command::{Reply, SpecialUse};
use crate::error::MailError;
use crate::keys::{self, TAG_ACCOUNT, TAG_ALIAS};
use crate::names::{
    HIERARCHY_DELIMITER, INBOX, domain_of, normalize_address, normalize_domain,
    normalize_mailbox_name,
};
use crate::password::is_phc_string;
use crate::records::{Account, Alias, Counters, Domain, Mailbox};
use crate::source::{self, Source, Txn};

pub(super) fn create_domain(txn: &mut Txn<'_>, domain: &str, now: i64) -> Step<Reply> {
    let name = normalize_domain(domain)?;
    if source::domain(txn, &name)?.is_some() {
        return Err(MailError::DomainExists(name).into());
    }
    let key = keys::domain(txn.shard(), &name);
    txn.put_record(keys::DIR, key, &Domain { name, created: now });
    Ok(Reply::Done)
}

pub(super) fn delete_domain(txn: &mut Txn<'_>, domain: &str) -> Step<Reply> {
    let name = normalize_domain(domain)?;
    if source::domain(txn, &name)?.is_none() {
        return Err(MailError::NoSuchDomain(name).into());
    }
    let shard = txn.shard();
    for tag in [TAG_ACCOUNT, TAG_ALIAS] {
        let prefix = keys::domain_addresses(shard, tag, &name);
        let end = keys::prefix_upper(&prefix);
        let any = txn.scan(keys::DIR, Bound::Included(&prefix), source::as_ref(&end), 1)?;
        if !any.is_empty() {
            return Err(MailError::DomainNotEmpty(name).into());
        }
    }
    txn.delete(keys::DIR, keys::domain(shard, &name));
    Ok(Reply::Done)
}

/// The account at `address`, or `NoSuchAccount`.
pub(super) fn require_account(txn: &Txn<'_>, address: &str) -> Step<Account> {
    let address = normalize_address(address)?;
    match source::account(txn, &address)? {
        Some(account) => Ok(account),
        None => Err(MailError::NoSuchAccount(address).into()),
    }
}

pub(super) fn put_account(txn: &mut Txn<'_>, account: &Account) {
    let key = keys::account(txn.shard(), &account.address);
    txn.put_record(keys::DIR, key, account);
}

/// The account's mailbox `name` (normalized here), or `NoSuchMailbox`.
pub(super) fn require_mailbox(txn: &Txn<'_>, account: &Account, name: &str) -> Step<Mailbox> {
    let name = normalize_mailbox_name(name)?;
    match source::mailbox(txn, account.id, &name)? {
        Some(mailbox) => Ok(mailbox),
        None => Err(MailError::NoSuchMailbox(name).into()),
    }
}

pub(super) fn put_mailbox(txn: &mut Txn<'_>, mailbox: &Mailbox) {
    let key = keys::mailbox(txn.shard(), mailbox.id);
    txn.put_record(keys::DIR, key, mailbox);
}

fn check_password_hash(hash: &str) -> Result<(), MailError> {
    if is_phc_string(hash) {
        Ok(())
    } else {
        Err(MailError::InvalidPasswordHash)
    }
}

fn address_in_use(txn: &Txn<'_>, address: &str) -> Result<bool, StoreError> {
    Ok(source::account(txn, address)?.is_some() || source::alias(txn, address)?.is_some())
}

pub(super) fn create_account(
    txn: &mut Txn<'_>,
    address: &str,
    password_hash: String,
    quota_bytes: Option<u64>,
    now: i64,
) -> Step<Reply> {
    let address = normalize_address(address)?;
    let domain = domain_of(&address);
    if source::domain(txn, domain)?.is_none() {
        return Err(MailError::NoSuchDomain(domain.to_owned()).into());
    }
    if source::account(txn, &address)?.is_some() {
        return Err(MailError::AccountExists(address).into());
    }
    if source::alias(txn, &address)?.is_some() {
        return Err(MailError::AddressInUse(address).into());
    }
    check_password_hash(&password_hash)?;
    let mut counters = source::counters(txn)?;
    counters.last_account_id += 1;
    let account = Account {
        id: counters.last_account_id,
        address,
        password_hash,
        quota_bytes,
        used_bytes: 0,
        messages: 0,
        aliases: BTreeSet::new(),
        created: now,
    };
    let inbox = new_mailbox(txn, &mut counters, account.id, INBOX.to_owned(), None, now)?;
    put_counters(txn, &counters);
    put_account(txn, &account);
    Ok(Reply::AccountCreated {
        account_id: account.id,
        inbox_id: inbox.id,
        inbox_uidvalidity: inbox.uidvalidity,
    })
}

pub(super) fn delete_account(txn: &mut Txn<'_>, address: &str) -> Step<Reply> {
    let account = require_account(txn, address)?;
    let shard = txn.shard();
    for mailbox in source::mailboxes(txn, account.id)? {
        remove_contents(txn, &mailbox)?;
        txn.delete(keys::DIR, keys::mailbox(shard, mailbox.id));
        txn.delete(
            keys::DIR,
            keys::mailbox_name(shard, account.id, &mailbox.name),
        );
    }
    for (key, _) in txn.scan_prefix(keys::DIR, &keys::subscriptions(shard, account.id))? {
        txn.delete(keys::DIR, key);
    }
    for alias in &account.aliases {
        txn.delete(keys::DIR, keys::alias(shard, alias));
    }
    txn.delete(keys::DIR, keys::account(shard, &account.address));
    Ok(Reply::Done)
}

pub(super) fn set_password(txn: &mut Txn<'_>, address: &str, password_hash: String) -> Step<Reply> {
    let mut account = require_account(txn, address)?;
    check_password_hash(&password_hash)?;
    account.password_hash = password_hash;
    put_account(txn, &account);
    Ok(Reply::Done)
}

pub(super) fn set_quota(txn: &mut Txn<'_>, address: &str, quota_bytes: Option<u64>) -> Step<Reply> {
    let mut account = require_account(txn, address)?;
    account.quota_bytes = quota_bytes;
    put_account(txn, &account);
    Ok(Reply::Done)
}

pub(super) fn add_alias(txn: &mut Txn<'_>, alias: &str, account: &str) -> Step<Reply> {
    let alias = normalize_address(alias)?;
    let domain = domain_of(&alias);
    if source::domain(txn, domain)?.is_none() {
        return Err(MailError::NoSuchDomain(domain.to_owned()).into());
    }
    if address_in_use(txn, &alias)? {
        return Err(MailError::AddressInUse(alias).into());
    }
    let mut target = require_account(txn, account)?;
    target.aliases.insert(alias.clone());
    put_account(txn, &target);
    let key = keys::alias(txn.shard(), &alias);
    txn.put_record(
        keys::DIR,
        key,
        &Alias {
            address: alias,
            account: target.address,
        },
    );
    Ok(Reply::Done)
}

pub(super) fn remove_alias(txn: &mut Txn<'_>, alias: &str) -> Step<Reply> {
    let alias = normalize_address(alias)?;
    let Some(record) = source::alias(txn, &alias)? else {
        return Err(MailError::NoSuchAlias(alias).into());
    };
    if let Some(mut target) = source::account(txn, &record.account)? {
        target.aliases.remove(&alias);
        put_account(txn, &target);
    }
    txn.delete(keys::DIR, keys::alias(txn.shard(), &alias));
    Ok(Reply::Done)
}

fn put_counters(txn: &mut Txn<'_>, counters: &Counters) {
    let key = keys::counters(txn.shard());
    txn.put_record(keys::DIR, key, counters);
}

/// The next UIDVALIDITY: the proposer's clock in seconds, but always above every value the
/// shard handed out before, so a mailbox created again under an old name never repeats one
/// (RFC 9051 §2.3.1.1 wants it greater), whatever the clocks of past leaders said.
fn next_uidvalidity(counters: &mut Counters, now: i64) -> Result<u32, MailError> {
    let seconds = u32::try_from(now.div_euclid(1000).max(0)).unwrap_or(u32::MAX);
    let above = counters.last_uidvalidity.checked_add(1).ok_or_else(|| {
        MailError::InvalidCommand("the shard has used every UIDVALIDITY value".into())
    })?;
    let uidvalidity = seconds.max(above);
    counters.last_uidvalidity = uidvalidity;
    Ok(uidvalidity)
}

/// Creates a mailbox record and its name entry; the caller saves `counters`.
fn new_mailbox(
    txn: &mut Txn<'_>,
    counters: &mut Counters,
    account_id: u64,
    name: String,
    special_use: Option<SpecialUse>,
    now: i64,
) -> Step<Mailbox> {
    counters.last_mailbox_id += 1;
    let mailbox = Mailbox {
        id: counters.last_mailbox_id,
        account_id,
        uidvalidity: next_uidvalidity(counters, now)?,
        name,
        uidnext: 1,
        highestmodseq: 1,
        special_use,
        messages: 0,
        unseen: 0,
        deleted: 0,
        size: 0,
        keywords: BTreeSet::new(),
        created: now,
    };
    let shard = txn.shard();
    txn.put(
        keys::DIR,
        keys::mailbox_name(shard, account_id, &mailbox.name),
        mailbox.id.to_be_bytes().to_vec(),
    );
    put_mailbox(txn, &mailbox);
    Ok(mailbox)
}

pub(super) fn create_mailbox(
    txn: &mut Txn<'_>,
    account: &str,
    name: &str,
    special_use: Option<SpecialUse>,
    now: i64,
) -> Step<Reply> {
    let account = require_account(txn, account)?;
    let name = normalize_mailbox_name(name)?;
    if source::mailbox(txn, account.id, &name)?.is_some() {
        return Err(MailError::MailboxExists(name).into());
    }
    if let Some(special_use) = special_use
        && let Some(other) = source::mailboxes(txn, account.id)?
            .into_iter()
            .find(|m| m.special_use == Some(special_use))
    {
        return Err(MailError::SpecialUseInUse {
            special_use,
            mailbox: other.name,
        }
        .into());
    }
    let mut counters = source::counters(txn)?;
    let mailbox = new_mailbox(txn, &mut counters, account.id, name, special_use, now)?;
    put_counters(txn, &counters);
    Ok(Reply::Mailbox {
        mailbox_id: mailbox.id,
        uidvalidity: mailbox.uidvalidity,
    })
}

pub(super) fn delete_mailbox(txn: &mut Txn<'_>, account: &str, name: &str) -> Step<Reply> {
    let mut account = require_account(txn, account)?;
    let mailbox = require_mailbox(txn, &account, name)?;
    if mailbox.name == INBOX {
        return Err(MailError::InboxNotDeletable.into());
    }
    let (messages, bytes) = remove_contents(txn, &mailbox)?;
    account.messages = account.messages.saturating_sub(messages);
    account.used_bytes = account.used_bytes.saturating_sub(bytes);
    put_account(txn, &account);
    let shard = txn.shard();
    txn.delete(keys::DIR, keys::mailbox(shard, mailbox.id));
    txn.delete(
        keys::DIR,
        keys::mailbox_name(shard, account.id, &mailbox.name),
    );
    Ok(Reply::Done)
}

pub(super) fn rename_mailbox(
    txn: &mut Txn<'_>,
    account: &str,
    from: &str,
    to: &str,
    now: i64,
) -> Step<Reply> {
    let mut account = require_account(txn, account)?;
    let source_mailbox = require_mailbox(txn, &account, from)?;
    let to = normalize_mailbox_name(to)?;
    if source::mailbox(txn, account.id, &to)?.is_some() {
        return Err(MailError::MailboxExists(to).into());
    }
    if source_mailbox.name == INBOX {
        // INBOX stays, keeping its UIDVALIDITY and UIDNEXT; its messages move to a new
        // mailbox. Inferiors of INBOX are not renamed.
        let mut counters = source::counters(txn)?;
        let target = new_mailbox(txn, &mut counters, account.id, to, None, now)?;
        put_counters(txn, &counters);
        move_all(txn, &mut account, source_mailbox.id, target.id)?;
        put_account(txn, &account);
        return Ok(Reply::Mailbox {
            mailbox_id: target.id,
            uidvalidity: target.uidvalidity,
        });
    }
    let from_prefix = format!("{}{HIERARCHY_DELIMITER}", source_mailbox.name);
    if to.starts_with(&from_prefix) {
        return Err(MailError::InvalidMailboxName {
            name: to,
            reason: "a mailbox cannot be moved under itself".into(),
        }
        .into());
    }
    let shard = txn.shard();
    let mut renames = vec![source_mailbox.clone()];
    let inferiors = keys::mailbox_name(shard, account.id, &from_prefix);
    for (key, value) in txn.scan_prefix(keys::DIR, &inferiors)? {
        let id = source::decode_id(&key, &value)?;
        let mailbox = source::mailbox_by_id(txn, id)?.ok_or_else(|| {
            Fail::Store(StoreError::Corrupt(format!(
                "mailbox name at {key:02x?} points at missing {id}"
            )))
        })?;
        renames.push(mailbox);
    }
    // Every old name goes before any new one is written, so a rename whose new names overlap
    // the old ones ("a" → "a-b" while "a/x" exists) is checked against the final state.
    for mailbox in &renames {
        txn.delete(
            keys::DIR,
            keys::mailbox_name(shard, account.id, &mailbox.name),
        );
    }
    for mut mailbox in renames {
        let new_name = format!("{to}{}", &mailbox.name[source_mailbox.name.len()..]);
        if source::mailbox(txn, account.id, &new_name)?.is_some() {
            return Err(MailError::MailboxExists(new_name).into());
        }
        // A new name that is not a valid name (too long) refuses the whole rename.
        let new_name = normalize_mailbox_name(&new_name)?;
        mailbox.name = new_name;
        txn.put(
            keys::DIR,
            keys::mailbox_name(shard, account.id, &mailbox.name),
            mailbox.id.to_be_bytes().to_vec(),
        );
        put_mailbox(txn, &mailbox);
    }
    Ok(Reply::Mailbox {
        mailbox_id: source_mailbox.id,
        uidvalidity: source_mailbox.uidvalidity,
    })
}

pub(super) fn subscribe(
    txn: &mut Txn<'_>,
    account: &str,
    name: &str,
    subscribe: bool,
) -> Step<Reply> {
    let account = require_account(txn, account)?;
    if subscribe {
        let mailbox = require_mailbox(txn, &account, name)?;
        let key = keys::subscription(txn.shard(), account.id, &mailbox.name);
        txn.put(keys::DIR, key, Vec::new());
    } else {
        let name = normalize_mailbox_name(name)?;
        let key = keys::subscription(txn.shard(), account.id, &name);
        txn.delete(keys::DIR, key);
    }
    Ok(Reply::Done)
}
