//! An in-memory [`Backend`] for tests of the engine and of its clients: one account map,
//! mailboxes with UIDs and modseqs, and a switch that makes every call fail temporarily.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::backend::{
    Account, AppendItem, AuthVerdict, Backend, BackendError, BackendResult, ChangePage, FlagOp,
    MailboxInfo, MailboxStatus, MessageChange, MessageMeta, Quota, SpecialUse, StoreOutcome,
};

#[derive(Clone, Debug)]
struct Message {
    meta: MessageMeta,
    body: Vec<u8>,
}

#[derive(Debug)]
struct Folder {
    uid_validity: u32,
    uid_next: u32,
    modseq: u64,
    special_use: Option<SpecialUse>,
    subscribed: bool,
    messages: BTreeMap<u32, Message>,
    /// Expunged UIDs and the MODSEQ of their expunge (the change feed's tombstones).
    expunged: Vec<(u64, u32)>,
}

impl Folder {
    fn new(uid_validity: u32, special_use: Option<SpecialUse>) -> Self {
        Folder {
            uid_validity,
            uid_next: 1,
            modseq: 1,
            special_use,
            subscribed: true,
            messages: BTreeMap::new(),
            expunged: Vec::new(),
        }
    }

    /// Removes the messages `uids` at one new MODSEQ; returns those that were there.
    fn remove(&mut self, uids: &[u32]) -> Vec<Message> {
        let removed: Vec<Message> = uids
            .iter()
            .filter_map(|uid| self.messages.remove(uid))
            .collect();
        if !removed.is_empty() {
            self.modseq += 1;
            for m in &removed {
                self.expunged.push((self.modseq, m.meta.uid));
            }
        }
        removed
    }

    fn add(&mut self, mut meta: MessageMeta, body: Vec<u8>) -> u32 {
        let uid = self.uid_next;
        self.uid_next += 1;
        self.modseq += 1;
        meta.uid = uid;
        meta.modseq = self.modseq;
        self.messages.insert(uid, Message { meta, body });
        uid
    }
}

#[derive(Debug, Default)]
struct Accounts {
    passwords: BTreeMap<String, String>,
    folders: BTreeMap<String, BTreeMap<String, Folder>>,
    /// Storage limits in octets, by account.
    quotas: BTreeMap<String, u64>,
    /// Subscriptions whose mailbox was deleted (they stay, as in the replicated store), by
    /// account.
    orphans: BTreeMap<String, std::collections::BTreeSet<String>>,
    next_validity: u32,
}

/// The in-memory backend.
#[derive(Debug)]
pub struct MemoryBackend {
    state: Mutex<Accounts>,
    unavailable: AtomicBool,
    changes: watch::Sender<u64>,
    largest_read: AtomicUsize,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend {
            state: Mutex::new(Accounts {
                next_validity: 1,
                ..Accounts::default()
            }),
            unavailable: AtomicBool::new(false),
            changes: watch::channel(0).0,
            largest_read: AtomicUsize::new(0),
        }
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an account with INBOX, Sent (`\Sent`) and Trash (`\Trash`).
    pub fn add_account(&self, user: &str, password: &str) {
        let mut s = self.lock();
        s.passwords.insert(user.into(), password.into());
        let base = s.next_validity;
        s.next_validity += 3;
        let folders = BTreeMap::from([
            ("INBOX".to_string(), Folder::new(base, None)),
            (
                "Sent".to_string(),
                Folder::new(base + 1, Some(SpecialUse::Sent)),
            ),
            (
                "Trash".to_string(),
                Folder::new(base + 2, Some(SpecialUse::Trash)),
            ),
        ]);
        s.folders.insert(user.into(), folders);
    }

    /// Limits the account's storage to `bytes` (RFC 9208 STORAGE); APPEND beyond it is
    /// refused `[OVERQUOTA]`, as the replicated store refuses it.
    pub fn set_quota(&self, user: &str, bytes: u64) {
        self.lock().quotas.insert(user.into(), bytes);
    }

    /// The most message metadata records one [`Backend::messages`] call returned so far
    /// (how much of a mailbox the engine holds at once).
    pub fn largest_read(&self) -> usize {
        self.largest_read.load(Ordering::SeqCst)
    }

    /// Makes every call fail with [`BackendError::Unavailable`] (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Delivers a message into a mailbox (as the mail path would), waking IDLE sessions.
    pub fn deliver(&self, user: &str, mailbox: &str, body: &[u8]) -> BackendResult<u32> {
        let uid = {
            let mut s = self.lock();
            let folder = s
                .folders
                .get_mut(user)
                .and_then(|f| f.get_mut(mailbox))
                .ok_or(BackendError::NoMailbox)?;
            folder.add(meta(Vec::new(), 0, body), body.to_vec())
        };
        self.changed();
        Ok(uid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn check(&self) -> BackendResult<()> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("store has no quorum".into()));
        }
        Ok(())
    }

    fn with<T>(
        &self,
        account: &Account,
        f: impl FnOnce(&mut BTreeMap<String, Folder>, &mut u32) -> BackendResult<T>,
    ) -> BackendResult<T> {
        self.check()?;
        let mut s = self.lock();
        let s = &mut *s;
        let folders = s
            .folders
            .get_mut(&account.name)
            .ok_or(BackendError::NoMailbox)?;
        f(folders, &mut s.next_validity)
    }

    fn with_folder<T>(
        &self,
        account: &Account,
        mailbox: &str,
        f: impl FnOnce(&mut Folder) -> BackendResult<T>,
    ) -> BackendResult<T> {
        self.with(account, |folders, _| {
            f(folders.get_mut(mailbox).ok_or(BackendError::NoMailbox)?)
        })
    }

    fn transfer(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
        remove: bool,
    ) -> BackendResult<(u32, Vec<(u32, u32)>)> {
        let out = self.with(account, |folders, _| {
            if !folders.contains_key(to) {
                return Err(BackendError::NoMailbox);
            }
            let source = folders.get_mut(from).ok_or(BackendError::NoMailbox)?;
            let taken = if remove {
                source.remove(uids)
            } else {
                uids.iter()
                    .filter_map(|uid| source.messages.get(uid).cloned())
                    .collect()
            };
            let target = folders.get_mut(to).ok_or(BackendError::NoMailbox)?;
            let pairs = taken
                .into_iter()
                .map(|m| (m.meta.uid, target.add(m.meta, m.body)))
                .collect();
            Ok((target.uid_validity, pairs))
        })?;
        self.changed();
        Ok(out)
    }
}

fn meta(flags: Vec<String>, internal_date: i64, body: &[u8]) -> MessageMeta {
    MessageMeta {
        uid: 0,
        flags,
        internal_date,
        size: u32::try_from(body.len()).unwrap_or(u32::MAX),
        modseq: 0,
    }
}

/// The sum of the sizes of the account's messages.
fn used_bytes(s: &Accounts, user: &str) -> u64 {
    s.folders.get(user).map_or(0, |folders| {
        folders
            .values()
            .flat_map(|f| f.messages.values())
            .map(|m| u64::from(m.meta.size))
            .sum()
    })
}

fn same_flag(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl Backend for MemoryBackend {
    async fn authenticate(&self, user: &str, password: &str) -> AuthVerdict {
        if self.unavailable.load(Ordering::SeqCst) {
            return AuthVerdict::TempFail;
        }
        match self.lock().passwords.get(user) {
            Some(p) if p == password => AuthVerdict::Ok(Account { name: user.into() }),
            _ => AuthVerdict::Invalid,
        }
    }

    async fn list(&self, account: &Account) -> BackendResult<Vec<MailboxInfo>> {
        self.with(account, |folders, _| {
            Ok(folders
                .iter()
                .map(|(name, f)| MailboxInfo {
                    name: name.clone(),
                    special_use: f.special_use,
                    subscribed: f.subscribed,
                })
                .collect())
        })
    }

    async fn status(&self, account: &Account, mailbox: &str) -> BackendResult<MailboxStatus> {
        self.with_folder(account, mailbox, |f| {
            Ok(MailboxStatus {
                uid_validity: f.uid_validity,
                uid_next: f.uid_next,
                highest_modseq: f.modseq,
                messages: u32::try_from(f.messages.len()).unwrap_or(u32::MAX),
                unseen: u32::try_from(
                    f.messages
                        .values()
                        .filter(|m| !m.meta.flags.iter().any(|x| same_flag(x, "\\Seen")))
                        .count(),
                )
                .unwrap_or(u32::MAX),
            })
        })
    }

    async fn create(&self, account: &Account, mailbox: &str) -> BackendResult<()> {
        self.with(account, |folders, validity| {
            if folders.contains_key(mailbox) {
                return Err(BackendError::AlreadyExists);
            }
            *validity += 1;
            folders.insert(mailbox.into(), Folder::new(*validity, None));
            Ok(())
        })?;
        // A new mailbox starts subscribed, which covers an old subscription of its name.
        if let Some(orphans) = self.lock().orphans.get_mut(&account.name) {
            orphans.remove(mailbox);
        }
        self.changed();
        Ok(())
    }

    async fn delete(&self, account: &Account, mailbox: &str) -> BackendResult<()> {
        let removed = self.with(account, |folders, _| {
            folders.remove(mailbox).ok_or(BackendError::NoMailbox)
        })?;
        if removed.subscribed {
            self.lock()
                .orphans
                .entry(account.name.clone())
                .or_default()
                .insert(mailbox.to_owned());
        }
        self.changed();
        Ok(())
    }

    async fn rename(&self, account: &Account, from: &str, to: &str) -> BackendResult<()> {
        self.with(account, |folders, validity| {
            if folders.contains_key(to) {
                return Err(BackendError::AlreadyExists);
            }
            let mut folder = folders.remove(from).ok_or(BackendError::NoMailbox)?;
            if from == "INBOX" {
                // RFC 3501: renaming INBOX moves its messages and leaves it empty.
                *validity += 1;
                let inbox = Folder::new(*validity, None);
                folders.insert(from.into(), inbox);
            }
            folder.special_use = folder.special_use.filter(|_| from != "INBOX");
            folders.insert(to.into(), folder);
            Ok(())
        })?;
        self.changed();
        Ok(())
    }

    async fn subscribe(&self, account: &Account, mailbox: &str, on: bool) -> BackendResult<()> {
        // As the store: subscribing needs the mailbox; unsubscribing a deleted one works.
        let orphan = !on
            && self
                .lock()
                .orphans
                .get_mut(&account.name)
                .is_some_and(|names| names.remove(mailbox));
        match self.with_folder(account, mailbox, |f| {
            f.subscribed = on;
            Ok(())
        }) {
            Err(BackendError::NoMailbox) if orphan => Ok(()),
            other => other,
        }
    }

    async fn subscriptions(&self, account: &Account) -> BackendResult<Vec<String>> {
        let mut names: Vec<String> = self.with(account, |folders, _| {
            Ok(folders
                .iter()
                .filter(|(_, f)| f.subscribed)
                .map(|(name, _)| name.clone())
                .collect())
        })?;
        if let Some(orphans) = self.lock().orphans.get(&account.name) {
            names.extend(orphans.iter().cloned());
        }
        Ok(names)
    }

    async fn messages(
        &self,
        account: &Account,
        mailbox: &str,
        uids: RangeInclusive<u32>,
    ) -> BackendResult<Vec<MessageMeta>> {
        let metas: Vec<MessageMeta> = self.with_folder(account, mailbox, |f| {
            Ok(f.messages
                .range(uids)
                .map(|(_, m)| m.meta.clone())
                .collect())
        })?;
        self.largest_read.fetch_max(metas.len(), Ordering::SeqCst);
        Ok(metas)
    }

    async fn message(
        &self,
        account: &Account,
        mailbox: &str,
        uid: u32,
    ) -> BackendResult<Option<Vec<u8>>> {
        self.with_folder(account, mailbox, |f| {
            Ok(f.messages.get(&uid).map(|m| m.body.clone()))
        })
    }

    async fn quota(&self, account: &Account) -> BackendResult<Quota> {
        self.check()?;
        let s = self.lock();
        Ok(Quota {
            storage: s
                .quotas
                .get(&account.name)
                .map(|&limit| (used_bytes(&s, &account.name), limit)),
            messages: None,
        })
    }

    async fn append(
        &self,
        account: &Account,
        mailbox: &str,
        flags: Vec<String>,
        internal_date: i64,
        message: Vec<u8>,
    ) -> BackendResult<(u32, u32)> {
        self.check()?;
        let limit = self.lock().quotas.get(&account.name).copied();
        if let Some(limit) = limit {
            let used = used_bytes(&self.lock(), &account.name);
            if used + message.len() as u64 > limit {
                return Err(BackendError::Refused(
                    "[OVERQUOTA] The account is over its quota".into(),
                ));
            }
        }
        let out = self.with_folder(account, mailbox, |f| {
            let uid = f.add(meta(flags, internal_date, &message), message);
            Ok((f.uid_validity, uid))
        })?;
        self.changed();
        Ok(out)
    }

    fn supports_append_many(&self) -> bool {
        true
    }

    async fn append_many(
        &self,
        account: &Account,
        mailbox: &str,
        messages: Vec<AppendItem>,
    ) -> BackendResult<(u32, Vec<u32>)> {
        self.check()?;
        let total: u64 = messages.iter().map(|m| m.message.len() as u64).sum();
        {
            let s = self.lock();
            if let Some(&limit) = s.quotas.get(&account.name)
                && used_bytes(&s, &account.name) + total > limit
            {
                return Err(BackendError::Refused(
                    "[OVERQUOTA] The account is over its quota".into(),
                ));
            }
        }
        let out = self.with_folder(account, mailbox, |f| {
            let uids = messages
                .into_iter()
                .map(|m| f.add(meta(m.flags, m.internal_date, &m.message), m.message))
                .collect();
            Ok((f.uid_validity, uids))
        })?;
        self.changed();
        Ok(out)
    }

    async fn store(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> BackendResult<StoreOutcome> {
        let out = self.with_folder(account, mailbox, |f| {
            let mut out = StoreOutcome::default();
            for uid in uids {
                let Some(m) = f.messages.get_mut(uid) else {
                    continue;
                };
                if unchanged_since.is_some_and(|u| m.meta.modseq > u) {
                    out.modified.push(*uid);
                    continue;
                }
                let mut new = m.meta.flags.clone();
                match op {
                    FlagOp::Replace => new = flags.to_vec(),
                    FlagOp::Add => {
                        for flag in flags {
                            if !new.iter().any(|x| same_flag(x, flag)) {
                                new.push(flag.clone());
                            }
                        }
                    }
                    FlagOp::Remove => new.retain(|x| !flags.iter().any(|f| same_flag(x, f))),
                }
                if new != m.meta.flags {
                    f.modseq += 1;
                    m.meta.flags = new;
                    m.meta.modseq = f.modseq;
                }
                out.updated.push(m.meta.clone());
            }
            Ok(out)
        })?;
        self.changed();
        Ok(out)
    }

    async fn expunge(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
    ) -> BackendResult<Vec<u32>> {
        let out = self.with_folder(account, mailbox, |f| {
            Ok(f.remove(uids).iter().map(|m| m.meta.uid).collect())
        })?;
        self.changed();
        Ok(out)
    }

    async fn copy(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> BackendResult<(u32, Vec<(u32, u32)>)> {
        self.transfer(account, from, uids, to, false)
    }

    async fn move_messages(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> BackendResult<(u32, Vec<(u32, u32)>)> {
        self.transfer(account, from, uids, to, true)
    }

    async fn changes_after(
        &self,
        account: &Account,
        mailbox: &str,
        after: (u64, u32),
        limit: usize,
    ) -> BackendResult<Option<ChangePage>> {
        let limit = limit.max(1);
        self.with_folder(account, mailbox, |f| {
            let live = f.messages.values().map(|m| MessageChange {
                uid: m.meta.uid,
                modseq: m.meta.modseq,
                expunged: false,
            });
            let gone = f.expunged.iter().map(|&(modseq, uid)| MessageChange {
                uid,
                modseq,
                expunged: true,
            });
            let mut changes: Vec<MessageChange> = live
                .chain(gone)
                .filter(|c| (c.modseq, c.uid) > after)
                .collect();
            changes.sort_unstable_by_key(|c| (c.modseq, c.uid));
            let next = (changes.len() > limit).then(|| {
                changes.truncate(limit);
                changes.last().map(|c| (c.modseq, c.uid))
            });
            Ok(Some(ChangePage {
                changes,
                next: next.flatten(),
            }))
        })
    }

    fn changes(&self, _account: &Account) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
