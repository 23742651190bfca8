//! The backend: what the IMAP engine asks of the rest of the agent (passwords, the
//! replicated mail store). The engine owns the protocol (sequence numbers, states, what a
//! read-only mailbox may do); the backend answers facts about mailboxes and messages by UID.
//!
//! Every method may fail with [`BackendError::Unavailable`] (no quorum, shard moving); the
//! session answers that `NO [UNAVAILABLE]` and the client retries.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// An authenticated account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The account's identity (for logs and the backend's own use).
    pub name: String,
}

/// The backend's answer to a password check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Right user and password.
    Ok(Account),
    /// Wrong user or password (counted against the address and the account).
    Invalid,
    /// The directory cannot answer now.
    TempFail,
}

/// Why a backend call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Temporary: `NO [UNAVAILABLE]`.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The mailbox does not exist: `NO [NONEXISTENT]` (`[TRYCREATE]` for APPEND/COPY/MOVE).
    #[error("no such mailbox")]
    NoMailbox,
    /// The target mailbox already exists: `NO [ALREADYEXISTS]`.
    #[error("mailbox already exists")]
    AlreadyExists,
    /// A permanent refusal with a reason for the client: `NO`.
    #[error("{0}")]
    Refused(String),
}

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// RFC 6154 special-use roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialUse {
    /// `\All`
    All,
    /// `\Archive`
    Archive,
    /// `\Drafts`
    Drafts,
    /// `\Flagged`
    Flagged,
    /// `\Junk`
    Junk,
    /// `\Sent`
    Sent,
    /// `\Trash`
    Trash,
}

impl SpecialUse {
    /// The LIST attribute.
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::All => "\\All",
            SpecialUse::Archive => "\\Archive",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Flagged => "\\Flagged",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Trash => "\\Trash",
        }
    }
}

/// One mailbox of an account, as LIST shows it. Names use `/` as hierarchy delimiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxInfo {
    /// Full name (`INBOX`, `Archive/2024`).
    pub name: String,
    /// Its special-use role, if any.
    pub special_use: Option<SpecialUse>,
    /// Whether the account subscribed to it.
    pub subscribed: bool,
}

/// A mailbox's counters (STATUS, SELECT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxStatus {
    /// Changes whenever UIDs are reassigned (never 0).
    pub uid_validity: u32,
    /// The UID the next message will get.
    pub uid_next: u32,
    /// The highest modification sequence in the mailbox (RFC 7162), at least 1.
    pub highest_modseq: u64,
    /// Number of messages.
    pub messages: u32,
    /// Messages without `\Seen`.
    pub unseen: u32,
}

/// A message's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    /// Its UID in the mailbox.
    pub uid: u32,
    /// Flags and keywords as written on the wire (`\Seen`, `$Forwarded`).
    pub flags: Vec<String>,
    /// Internal date, seconds since the Unix epoch (UTC).
    pub internal_date: i64,
    /// Size of the raw message in octets.
    pub size: u32,
    /// Modification sequence of its last change.
    pub modseq: u64,
}

/// One message of a MULTIAPPEND ([`Backend::append_many`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendItem {
    /// Flags and keywords as written on the wire.
    pub flags: Vec<String>,
    /// Internal date, seconds since the Unix epoch (UTC).
    pub internal_date: i64,
    /// The raw message.
    pub message: Vec<u8>,
}

/// How STORE changes flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagOp {
    /// `FLAGS`: replace.
    Replace,
    /// `+FLAGS`: add.
    Add,
    /// `-FLAGS`: remove.
    Remove,
}

/// What a STORE did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Messages after the change (those changed, and those unchanged because the flags
    /// already matched), with their flags and modseq.
    pub updated: Vec<MessageMeta>,
    /// UIDs left unchanged because their modseq was above UNCHANGEDSINCE (RFC 7162).
    pub modified: Vec<u32>,
}

/// One entry of a mailbox's change feed (RFC 7162): a message changed at `modseq` (or, with
/// `expunged`, was removed then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageChange {
    pub uid: u32,
    pub modseq: u64,
    pub expunged: bool,
}

/// One page of [`Backend::changes_after`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangePage {
    /// By MODSEQ, then UID.
    pub changes: Vec<MessageChange>,
    /// `(modseq, uid)` to continue after when the page was cut short.
    pub next: Option<(u64, u32)>,
}

/// An account's quota (RFC 9208): for each resource with a limit, `(usage, limit)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// STORAGE, in octets (the sum of the account's message sizes).
    pub storage: Option<(u64, u64)>,
    /// MESSAGE: the number of the account's messages.
    pub messages: Option<(u64, u64)>,
}

/// What the engine needs from the agent. Mailbox names are the decoded full names.
pub trait Backend: Send + Sync + 'static {
    /// Checks a password.
    fn authenticate(&self, user: &str, password: &str) -> impl Future<Output = AuthVerdict> + Send;

    /// The account's mailboxes (INBOX included).
    fn list(
        &self,
        account: &Account,
    ) -> impl Future<Output = BackendResult<Vec<MailboxInfo>>> + Send;

    /// A mailbox's counters.
    fn status(
        &self,
        account: &Account,
        mailbox: &str,
    ) -> impl Future<Output = BackendResult<MailboxStatus>> + Send;

    /// Creates a mailbox.
    fn create(
        &self,
        account: &Account,
        mailbox: &str,
    ) -> impl Future<Output = BackendResult<()>> + Send;

    /// Deletes a mailbox and its messages (never INBOX: the engine refuses that first).
    fn delete(
        &self,
        account: &Account,
        mailbox: &str,
    ) -> impl Future<Output = BackendResult<()>> + Send;

    /// Renames a mailbox.
    fn rename(
        &self,
        account: &Account,
        from: &str,
        to: &str,
    ) -> impl Future<Output = BackendResult<()>> + Send;

    /// Sets or clears the subscription of a mailbox.
    fn subscribe(
        &self,
        account: &Account,
        mailbox: &str,
        subscribed: bool,
    ) -> impl Future<Output = BackendResult<()>> + Send;

    /// The metadata of the messages whose UID is in `uids`, in UID order.
    fn messages(
        &self,
        account: &Account,
        mailbox: &str,
        uids: RangeInclusive<u32>,
    ) -> impl Future<Output = BackendResult<Vec<MessageMeta>>> + Send;

    /// The raw bytes of one message; `None` when it was expunged meanwhile.
    fn message(
        &self,
        account: &Account,
        mailbox: &str,
        uid: u32,
    ) -> impl Future<Output = BackendResult<Option<Vec<u8>>>> + Send;

    /// The raw bytes of the messages `uids`, in that order (`None` for one expunged
    /// meanwhile). Default: one [`Backend::message`] call each; a backend whose reads have a
    /// fixed cost (a read barrier) reads them together.
    fn bodies(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
    ) -> impl Future<Output = BackendResult<Vec<Option<Vec<u8>>>>> + Send {
        async move {
            let mut bodies = Vec::with_capacity(uids.len());
            for &uid in uids {
                bodies.push(self.message(account, mailbox, uid).await?);
            }
            Ok(bodies)
        }
    }

    /// The mailbox's change feed after the position `after` (`(modseq, uid)`; `(m,
    /// u32::MAX)` for everything changed after MODSEQ `m`), at most `limit` entries: every
    /// message whose last change is later, and a tombstone for every message expunged later.
    /// `None` when the backend keeps no feed; the session then compares the whole mailbox.
    fn changes_after(
        &self,
        _account: &Account,
        _mailbox: &str,
        _after: (u64, u32),
        _limit: usize,
    ) -> impl Future<Output = BackendResult<Option<ChangePage>>> + Send {
        std::future::ready(Ok(None))
    }

    /// The account's quota: one root (`""`) for all its mailboxes. Default: no limits.
    fn quota(&self, _account: &Account) -> impl Future<Output = BackendResult<Quota>> + Send {
        std::future::ready(Ok(Quota::default()))
    }

    /// Appends a message; returns `(uid_validity, uid)` (for APPENDUID).
    fn append(
        &self,
        account: &Account,
        mailbox: &str,
        flags: Vec<String>,
        internal_date: i64,
        message: Vec<u8>,
    ) -> impl Future<Output = BackendResult<(u32, u32)>> + Send;

    /// Whether [`Backend::append_many`] works (the session then offers MULTIAPPEND).
    fn supports_append_many(&self) -> bool {
        false
    }

    /// Appends the messages in order, all of them or none (RFC 3502 MULTIAPPEND); returns
    /// the mailbox's UIDVALIDITY and the new UIDs in the messages' order. Default: refused.
    fn append_many(
        &self,
        _account: &Account,
        _mailbox: &str,
        _messages: Vec<AppendItem>,
    ) -> impl Future<Output = BackendResult<(u32, Vec<u32>)>> + Send {
        std::future::ready(Err(BackendError::Refused(
            "[CANNOT] This server appends one message per APPEND".into(),
        )))
    }

    /// The names the account subscribed to, whether or not the mailboxes exist (a mailbox
    /// deleted after it was subscribed stays subscribed, RFC 9051 §6.3.5). Default: the
    /// subscribed mailboxes [`Backend::list`] returns.
    fn subscriptions(
        &self,
        account: &Account,
    ) -> impl Future<Output = BackendResult<Vec<String>>> + Send {
        async move {
            Ok(self
                .list(account)
                .await?
                .into_iter()
                .filter(|m| m.subscribed)
                .map(|m| m.name)
                .collect())
        }
    }

    /// Changes flags of the messages `uids`; with `unchanged_since`, only those whose
    /// modseq is not above it.
    fn store(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> impl Future<Output = BackendResult<StoreOutcome>> + Send;

    /// Removes the messages `uids`; returns the UIDs actually removed.
    fn expunge(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
    ) -> impl Future<Output = BackendResult<Vec<u32>>> + Send;

    /// Copies messages into `to`; returns the target's UIDVALIDITY and `(source uid, new
    /// uid)` pairs (for COPYUID).
    fn copy(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> impl Future<Output = BackendResult<(u32, Vec<(u32, u32)>)>> + Send;

    /// Moves messages atomically (copy then expunge as one change).
    fn move_messages(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> impl Future<Output = BackendResult<(u32, Vec<(u32, u32)>)>> + Send;

    /// A change counter of the account: its value changes after every write to any of the
    /// account's mailboxes (IDLE waits on it, then re-reads the selected mailbox).
    fn changes(&self, account: &Account) -> watch::Receiver<u64>;

    // Relaying (see [`crate::relay`]): a node that does not hold an account's mailboxes
    // hands its sessions to one that does, right after login.

    /// Whether this node serves the account's mailboxes itself; when it does not, the
    /// session is relayed after a successful login ([`Backend::relay`]). Default: always.
    fn serves(&self, _account: &Account) -> bool {
        true
    }

    /// Opens a byte stream to a session for `request.account`, already authenticated, on a
    /// node that serves it; it answers what the client sends from then on. An error refuses
    /// the login with `NO [UNAVAILABLE]`.
    fn relay(
        &self,
        _request: &RelayRequest,
    ) -> impl Future<Output = BackendResult<Box<dyn RelayStream>>> + Send {
        std::future::ready(Err(BackendError::Unavailable(
            "this server relays no sessions".into(),
        )))
    }
}

/// A byte stream to the node that serves a relayed session.
pub trait RelayStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> RelayStream for T {}

/// A session to relay: who logged in, from where, and whether the client's connection is
/// encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRequest {
    pub account: Account,
    pub client: SocketAddr,
    pub tls: bool,
}
