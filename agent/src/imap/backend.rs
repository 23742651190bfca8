//! [`StoreBackend`]: tern-imap's [`Backend`] over the replicated store. The policy it
//! follows (linearizable reads, which writes are retried, where a session is served) is
//! described in [the module above](super).

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tern_imap::backend::{ChangePage, MessageChange};
use tern_imap::command_scope;
use tern_imap::{
    Account, AppendItem, AuthVerdict, Backend, BackendError, BackendResult, FlagOp, MailboxInfo,
    MailboxStatus, MessageMeta, SpecialUse, StoreOutcome,
};
use tern_mail::{
    AppendMessage, ChangeCursor, Command, Flag, MailError, MailReader, Message, Reply, StoreOp,
    UidSet,
};
use tern_raft::ShardId;
use tern_store::StoreError;
use tokio::sync::watch;
use tokio::time::Instant;

use super::changes::Changes;
use crate::mailstore::{Barriers, Unavailable, retrying, unix_ms, verify};
use crate::shards::ShardHost;

/// Messages read from the store per page while listing a mailbox.
const PAGE: usize = 1000;

/// How the backend bounds its work and watches for changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImapOptions {
    /// The longest one backend call may take (retries included); what does not finish in
    /// time is `NO [UNAVAILABLE]`.
    pub deadline: Duration,
    /// How often an account with a session waiting in IDLE is checked for changes made
    /// through other nodes.
    pub poll_every: Duration,
}

impl ImapOptions {
    /// Twice the shard timeout (time for a second attempt after a leader change), at least
    /// 1 s and at most 60 s; changes polled twice a second.
    pub fn for_shard_timeout(timeout: Duration) -> Self {
        Self {
            deadline: (timeout * 2).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            poll_every: Duration::from_millis(500),
        }
    }
}

/// tern-imap's backend on this node's [`ShardHost`].
pub struct StoreBackend {
    host: Arc<ShardHost>,
    options: ImapOptions,
    changes: Changes,
    /// Read barriers shared by the sessions reading one shard at the same time.
    barriers: Barriers,
}

impl StoreBackend {
    pub fn new(host: Arc<ShardHost>, options: ImapOptions) -> Self {
        let changes = Changes::new(host.clone(), options.poll_every);
        Self {
            host,
            options,
            changes,
            barriers: Barriers::default(),
        }
    }

    /// Accounts whose change poller runs (sessions of theirs wait in IDLE).
    pub fn watched_accounts(&self) -> usize {
        self.changes.watched()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.options.deadline
    }

    /// Runs `f` on the account's shard's committed state, after a read barrier that started
    /// after this call (shared with the reads of the shard waiting at the same time).
    async fn read<T: Send + 'static>(
        &self,
        account: &Account,
        f: impl FnOnce(&MailReader<'_>, &str) -> Result<T, ReadError> + Send + 'static,
    ) -> BackendResult<T> {
        let shard = shard_of(&self.host, &account.name)?;
        // A barrier passed earlier in this IMAP command already covers everything
        // acknowledged before the command began (see `tern_imap::command_scope`).
        if !command_scope::is_fresh(u64::from(shard)) {
            retrying(self.deadline(), || {
                self.barriers.pass(shard, || self.host.read_barrier(shard))
            })
            .await
            .map_err(unavailable)?;
            command_scope::mark_fresh(u64::from(shard));
        }
        let engine = self.host.engine().clone();
        let address = account.name.clone();
        tokio::task::spawn_blocking(move || f(&MailReader::new(engine.as_ref(), shard), &address))
            .await
            .map_err(|e| BackendError::Unavailable(format!("reading the store: {e}")))?
            .map_err(|e| match e {
                ReadError::NoMailbox => BackendError::NoMailbox,
                ReadError::Store(e) => {
                    tracing::error!(error = %e, "reading the mail store failed");
                    BackendError::Unavailable("the mail store cannot be read".into())
                }
            })
    }

    /// COPY or MOVE, tried once (a second proposal could copy twice): the target mailbox's
    /// UIDVALIDITY and the old → new UID pairs.
    async fn transfer(
        &self,
        account: &Account,
        command: Command,
    ) -> BackendResult<(u32, Vec<(u32, u32)>)> {
        match self.write(account, command, false).await? {
            Reply::Copied {
                uidvalidity,
                mapping,
            } => Ok((uidvalidity, mapping)),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes `command` on the account's shard and returns its answer. `repeatable`: the
    /// command may be proposed again while the shard is temporarily unavailable.
    async fn write(
        &self,
        account: &Account,
        command: Command,
        repeatable: bool,
    ) -> BackendResult<Reply> {
        let shard = shard_of(&self.host, &account.name)?;
        // The command's later reads must see this write: they pass a barrier again.
        command_scope::forget(u64::from(shard));
        let kind = command.kind();
        let bytes = command.encode();
        let deadline = self.deadline();
        let answer = if repeatable {
            retrying(deadline, || self.host.write(shard, bytes.clone())).await
        } else {
            match tokio::time::timeout_at(deadline, self.host.write(shard, bytes)).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(Unavailable(e.to_string())),
                Err(_) => Err(Unavailable("no answer within the deadline".into())),
            }
        };
        let answer = answer.map_err(|why| {
            tracing::warn!(shard, command = kind, why = %why.0, "IMAP write not carried out");
            unavailable(why)
        })?;
        self.changes.bump(&account.name);
        tern_mail::decode_response(&answer).map_err(refusal)
    }

    /// The metadata of the messages `uids` of `mailbox` (missing ones left out).
    async fn metas(
        &self,
        account: &Account,
        mailbox: &str,
        uids: Vec<u32>,
    ) -> BackendResult<Vec<MessageMeta>> {
        let (Some(&first), Some(&last)) = (uids.iter().min(), uids.iter().max()) else {
            return Ok(Vec::new());
        };
        let wanted: std::collections::BTreeSet<u32> = uids.into_iter().collect();
        let mailbox = mailbox.to_owned();
        let all = self
            .read(account, move |r, address| {
                messages(r, address, &mailbox, first..=last)
            })
            .await?;
        Ok(all
            .into_iter()
            .filter(|m| wanted.contains(&m.uid))
            .collect())
    }
}

/// Why a read found nothing to answer with.
enum ReadError {
    NoMailbox,
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(e)
    }
}

/// The shard the assignment places `address` on.
pub(crate) fn shard_of(host: &ShardHost, address: &str) -> BackendResult<ShardId> {
    host.assignment()
        .and_then(|a| a.shard_of(address))
        .ok_or_else(|| BackendError::Unavailable("this node follows no assignment yet".into()))
}

fn unavailable(why: Unavailable) -> BackendError {
    BackendError::Unavailable(why.0)
}

/// A command the store refused, as the session reports it.
fn refusal(e: MailError) -> BackendError {
    match e {
        MailError::NoSuchMailbox(_) => BackendError::NoMailbox,
        MailError::MailboxExists(_) => BackendError::AlreadyExists,
        MailError::QuotaExceeded { .. } => {
            BackendError::Refused("[OVERQUOTA] The account is over its quota".into())
        }
        MailError::InvalidMailboxName { reason, .. } => {
            BackendError::Refused(format!("[CANNOT] Invalid mailbox name: {reason}"))
        }
        MailError::InvalidFlag(flag) => BackendError::Refused(format!("Invalid flag {flag}")),
        MailError::InboxNotDeletable => BackendError::Refused("[CANNOT] INBOX stays".into()),
        MailError::UidsExhausted(_) => {
            BackendError::Refused("[LIMIT] The mailbox has used every UID; create a new one".into())
        }
        other => BackendError::Refused(format!("[SERVERBUG] {other}")),
    }
}

/// An answer of another kind than the command's.
fn unexpected(reply: &Reply) -> BackendError {
    tracing::error!(?reply, "the store answered an IMAP command unexpectedly");
    BackendError::Refused("[SERVERBUG] Unexpected answer from the mail store".into())
}

/// Flags from the wire; `\Recent` is per session and never stored.
fn parse_flags(flags: &[String]) -> BackendResult<Vec<Flag>> {
    flags
        .iter()
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .map(|f| Flag::parse(f).map_err(refusal))
        .collect()
}

/// The fewest ranges that hold `uids`.
fn uid_set(uids: &[u32]) -> UidSet {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut set = UidSet::new();
    let mut run: Option<(u32, u32)> = None;
    for uid in sorted {
        run = match run {
            Some((a, b)) if b.checked_add(1) == Some(uid) => Some((a, uid)),
            Some((a, b)) => {
                set.push(a, b);
                Some((uid, uid))
            }
            None => Some((uid, uid)),
        };
    }
    if let Some((a, b)) = run {
        set.push(a, b);
    }
    set
}

fn meta(m: &Message) -> MessageMeta {
    MessageMeta {
        uid: m.uid,
        flags: m.flags.iter().map(Flag::to_string).collect(),
        internal_date: m.internal_date.div_euclid(1000),
        size: u32::try_from(m.size).unwrap_or(u32::MAX),
        modseq: m.modseq,
    }
}

fn special_use(s: tern_mail::SpecialUse) -> Option<SpecialUse> {
    use tern_mail::SpecialUse as S;
    match s {
        S::All => Some(SpecialUse::All),
        S::Archive => Some(SpecialUse::Archive),
        S::Drafts => Some(SpecialUse::Drafts),
        S::Flagged => Some(SpecialUse::Flagged),
        S::Junk => Some(SpecialUse::Junk),
        S::Sent => Some(SpecialUse::Sent),
        S::Trash => Some(SpecialUse::Trash),
        S::Important => None,
    }
}

/// Every message of `mailbox` with a UID in `uids`, page by page.
fn messages(
    r: &MailReader<'_>,
    address: &str,
    mailbox: &str,
    uids: RangeInclusive<u32>,
) -> Result<Vec<MessageMeta>, ReadError> {
    let mailbox = r.mailbox(address, mailbox)?.ok_or(ReadError::NoMailbox)?;
    let mut out = Vec::new();
    let mut from = *uids.start();
    let end = *uids.end();
    loop {
        let page = r.messages(mailbox.id, from..=end, PAGE)?;
        out.extend(page.messages.iter().map(meta));
        match page.next {
            Some(next) => from = next,
            None => return Ok(out),
        }
    }
}

/// 16 random bytes: one APPEND's idempotency key.
fn idempotency_key() -> BackendResult<Vec<u8>> {
    let mut key = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| BackendError::Unavailable("no random source".into()))?;
    Ok(key)
}

impl Backend for StoreBackend {
    async fn authenticate(&self, user: &str, password: &str) -> AuthVerdict {
        let Ok(address) = tern_mail::normalize_address(user.trim()) else {
            verify(None, password).await;
            return AuthVerdict::Invalid;
        };
        let Ok(shard) = shard_of(&self.host, &address) else {
            return AuthVerdict::TempFail;
        };
        let account = match retrying(self.deadline(), || self.host.account(shard, &address)).await {
            Ok(account) => account,
            Err(why) => {
                tracing::warn!(why = %why.0, "IMAP login: the directory is temporarily unavailable");
                return AuthVerdict::TempFail;
            }
        };
        match (verify(account.as_ref(), password).await, account) {
            (true, Some(account)) => AuthVerdict::Ok(Account {
                name: account.address,
            }),
            _ => AuthVerdict::Invalid,
        }
    }

    async fn list(&self, account: &Account) -> BackendResult<Vec<MailboxInfo>> {
        self.read(account, |r, address| {
            let subscribed = r.subscriptions(address)?;
            Ok(r.list_mailboxes(address)?
                .into_iter()
                .map(|m| MailboxInfo {
                    subscribed: subscribed.contains(&m.name),
                    special_use: m.special_use.and_then(special_use),
                    name: m.name,
                })
                .collect())
        })
        .await
    }

    async fn status(&self, account: &Account, mailbox: &str) -> BackendResult<MailboxStatus> {
        let mailbox = mailbox.to_owned();
        self.read(account, move |r, address| {
            let m = r.mailbox(address, &mailbox)?.ok_or(ReadError::NoMailbox)?;
            Ok(MailboxStatus {
                uid_validity: m.uidvalidity,
                uid_next: m.uidnext,
                highest_modseq: m.highestmodseq.max(1),
                messages: m.messages,
                unseen: m.unseen,
            })
        })
        .await
    }

    async fn quota(&self, account: &Account) -> BackendResult<tern_imap::Quota> {
        // The account record's limit and usage: STORAGE only (the store limits no count).
        self.read(account, |r, address| {
            let record = r.account(address)?;
            Ok(tern_imap::Quota {
                storage: record.and_then(|a| a.quota_bytes.map(|limit| (a.used_bytes, limit))),
                messages: None,
            })
        })
        .await
    }

    async fn create(&self, account: &Account, mailbox: &str) -> BackendResult<()> {
        let command = Command::CreateMailbox {
            account: account.name.clone(),
            name: mailbox.to_owned(),
            special_use: None,
            now: unix_ms(),
        };
        match self.write(account, command, false).await? {
            Reply::Mailbox { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete(&self, account: &Account, mailbox: &str) -> BackendResult<()> {
        let command = Command::DeleteMailbox {
            account: account.name.clone(),
            name: mailbox.to_owned(),
        };
        match self.write(account, command, false).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn rename(&self, account: &Account, from: &str, to: &str) -> BackendResult<()> {
        let command = Command::RenameMailbox {
            account: account.name.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
            now: unix_ms(),
        };
        match self.write(account, command, false).await? {
            Reply::Mailbox { .. } | Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn subscribe(&self, account: &Account, mailbox: &str, on: bool) -> BackendResult<()> {
        let (account_name, name) = (account.name.clone(), mailbox.to_owned());
        let command = if on {
            Command::Subscribe {
                account: account_name,
                name,
            }
        } else {
            Command::Unsubscribe {
                account: account_name,
                name,
            }
        };
        match self.write(account, command, true).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn messages(
        &self,
        account: &Account,
        mailbox: &str,
        uids: RangeInclusive<u32>,
    ) -> BackendResult<Vec<MessageMeta>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let mailbox = mailbox.to_owned();
        self.read(account, move |r, address| {
            messages(r, address, &mailbox, uids)
        })
        .await
    }

    async fn message(
        &self,
        account: &Account,
        mailbox: &str,
        uid: u32,
    ) -> BackendResult<Option<Vec<u8>>> {
        let mailbox = mailbox.to_owned();
        let body = self
            .read(account, move |r, address| {
                let m = r.mailbox(address, &mailbox)?.ok_or(ReadError::NoMailbox)?;
                let Some(message) = r.message(m.id, uid)? else {
                    return Ok(None);
                };
                Ok(Some(r.blob(&message.blob)?.ok_or(message.blob)))
            })
            .await?;
        match body {
            None => Ok(None),
            Some(Ok(body)) => Ok(Some(body)),
            Some(Err(hash)) => {
                tracing::error!(%hash, uid, "a message's body is missing from the store");
                Err(BackendError::Unavailable(
                    "the message body cannot be read".into(),
                ))
            }
        }
    }

    async fn bodies(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
    ) -> BackendResult<Vec<Option<Vec<u8>>>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        // One read barrier for the batch, not one per message.
        let (mailbox, wanted) = (mailbox.to_owned(), uids.to_vec());
        let bodies = self
            .read(account, move |r, address| {
                let m = r.mailbox(address, &mailbox)?.ok_or(ReadError::NoMailbox)?;
                let mut bodies = Vec::with_capacity(wanted.len());
                for uid in wanted {
                    bodies.push(match r.message(m.id, uid)? {
                        None => None,
                        Some(message) => Some(r.blob(&message.blob)?.ok_or(message.blob)),
                    });
                }
                Ok(bodies)
            })
            .await?;
        bodies
            .into_iter()
            .zip(uids)
            .map(|(body, uid)| match body {
                None => Ok(None),
                Some(Ok(body)) => Ok(Some(body)),
                Some(Err(hash)) => {
                    tracing::error!(%hash, uid, "a message's body is missing from the store");
                    Err(BackendError::Unavailable(
                        "the message body cannot be read".into(),
                    ))
                }
            })
            .collect()
    }

    async fn changes_after(
        &self,
        account: &Account,
        mailbox: &str,
        after: (u64, u32),
        limit: usize,
    ) -> BackendResult<Option<ChangePage>> {
        let mailbox = mailbox.to_owned();
        self.read(account, move |r, address| {
            let m = r.mailbox(address, &mailbox)?.ok_or(ReadError::NoMailbox)?;
            let page = r.changes_after(m.id, ChangeCursor::new(after.0, after.1), limit)?;
            Ok(Some(ChangePage {
                changes: page
                    .changes
                    .iter()
                    .map(|c| MessageChange {
                        uid: c.uid,
                        modseq: c.modseq,
                        expunged: c.expunged,
                    })
                    .collect(),
                next: page.next.map(|c| c.position()),
            }))
        })
        .await
    }

    async fn append(
        &self,
        account: &Account,
        mailbox: &str,
        flags: Vec<String>,
        internal_date: i64,
        message: Vec<u8>,
    ) -> BackendResult<(u32, u32)> {
        let command = Command::Append {
            account: account.name.clone(),
            mailbox: mailbox.to_owned(),
            flags: parse_flags(&flags)?,
            internal_date: internal_date.saturating_mul(1000),
            body: message,
            idempotency_key: Some(idempotency_key()?),
            now: unix_ms(),
        };
        match self.write(account, command, true).await? {
            Reply::Appended {
                uidvalidity, uid, ..
            } => Ok((uidvalidity, uid)),
            other => Err(unexpected(&other)),
        }
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
        let messages = messages
            .into_iter()
            .map(|m| {
                Ok(AppendMessage {
                    flags: parse_flags(&m.flags)?,
                    internal_date: m.internal_date.saturating_mul(1000),
                    body: m.message,
                })
            })
            .collect::<BackendResult<Vec<_>>>()?;
        // One entry for all the messages, so the store applies them as one: all or none.
        // Its key makes a re-proposal after a leader change store them once.
        let command = Command::AppendMany {
            account: account.name.clone(),
            mailbox: mailbox.to_owned(),
            messages,
            idempotency_key: Some(idempotency_key()?),
            now: unix_ms(),
        };
        match self.write(account, command, true).await? {
            Reply::AppendedMany {
                uidvalidity,
                first_uid,
                last_uid,
                ..
            } => Ok((uidvalidity, (first_uid..=last_uid).collect())),
            other => Err(unexpected(&other)),
        }
    }

    async fn subscriptions(&self, account: &Account) -> BackendResult<Vec<String>> {
        self.read(account, |r, address| Ok(r.subscriptions(address)?))
            .await
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
        if uids.is_empty() {
            return Ok(StoreOutcome::default());
        }
        let command = Command::Store {
            account: account.name.clone(),
            mailbox: mailbox.to_owned(),
            uids: uid_set(uids),
            op: match op {
                FlagOp::Replace => StoreOp::Replace,
                FlagOp::Add => StoreOp::Add,
                FlagOp::Remove => StoreOp::Remove,
            },
            flags: parse_flags(flags)?,
            unchanged_since,
        };
        let failed = match self.write(account, command, true).await? {
            Reply::Stored { failed, .. } => failed,
            other => return Err(unexpected(&other)),
        };
        // The answer names the messages it changed; the session reports every message of
        // the set that is still there, so they are read back (the barrier orders the read
        // after the write).
        let rest: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|u| !failed.contains(u))
            .collect();
        Ok(StoreOutcome {
            updated: self.metas(account, mailbox, rest).await?,
            modified: failed,
        })
    }

    async fn expunge(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
    ) -> BackendResult<Vec<u32>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let command = Command::Expunge {
            account: account.name.clone(),
            mailbox: mailbox.to_owned(),
            uids: Some(uid_set(uids)),
        };
        match self.write(account, command, true).await? {
            Reply::Expunged { uids, .. } => Ok(uids),
            other => Err(unexpected(&other)),
        }
    }

    async fn copy(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> BackendResult<(u32, Vec<(u32, u32)>)> {
        let command = Command::Copy {
            account: account.name.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
            uids: uid_set(uids),
        };
        self.transfer(account, command).await
    }

    async fn move_messages(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> BackendResult<(u32, Vec<(u32, u32)>)> {
        let command = Command::Move {
            account: account.name.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
            uids: uid_set(uids),
        };
        self.transfer(account, command).await
    }

    fn changes(&self, account: &Account) -> watch::Receiver<u64> {
        self.changes.subscribe(&account.name)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn uid_sets_are_runs() {
        assert_eq!(
            uid_set(&[5, 1, 2, 3, 9, 7, 8, 3]).ranges(),
            [(1, 3), (5, 5), (7, 9)]
        );
        assert_eq!(
            uid_set(&[u32::MAX, u32::MAX - 1]).ranges(),
            [(u32::MAX - 1, u32::MAX)]
        );
        assert!(uid_set(&[]).ranges().is_empty());
    }

    #[test]
    fn flags_parse_and_recent_is_dropped() {
        assert_eq!(
            parse_flags(&["\\Seen".into(), "\\Recent".into(), "$Work".into()]).unwrap(),
            [Flag::Seen, Flag::Keyword("$Work".into())]
        );
        assert!(matches!(
            parse_flags(&["\\Bogus".into()]),
            Err(BackendError::Refused(_))
        ));
    }

    #[test]
    fn the_session_and_the_store_allow_as_many_messages_per_append() {
        assert_eq!(
            tern_imap::session::MAX_APPEND_MESSAGES,
            tern_mail::MAX_APPEND_MESSAGES
        );
    }

    #[test]
    fn store_refusals_map_to_imap_answers() {
        assert_eq!(
            refusal(MailError::NoSuchMailbox("x".into())),
            BackendError::NoMailbox
        );
        assert_eq!(
            refusal(MailError::MailboxExists("x".into())),
            BackendError::AlreadyExists
        );
        let BackendError::Refused(text) = refusal(MailError::QuotaExceeded {
            account: "a@b".into(),
            quota_bytes: 1,
            used_bytes: 1,
            needed_bytes: 2,
        }) else {
            panic!("quota is a refusal")
        };
        assert!(text.starts_with("[OVERQUOTA]"), "{text}");
    }

    #[test]
    fn dates_are_seconds_and_sizes_saturate() {
        let m = Message {
            uid: 4,
            modseq: 9,
            flags: [Flag::Seen].into_iter().collect(),
            internal_date: -1500,
            size: u64::MAX,
            blob: tern_mail::BlobHash([0; 32]),
        };
        let meta = meta(&m);
        assert_eq!(meta.internal_date, -2);
        assert_eq!(meta.size, u32::MAX);
        assert_eq!(meta.flags, ["\\Seen"]);
        assert_eq!((meta.uid, meta.modseq), (4, 9));
    }
}
