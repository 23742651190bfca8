//! What goes into a Raft entry ([`Command`]) and what comes back ([`Outcome`]).
//!
//! Both are postcard-encoded. Postcard numbers enum variants by position, so new variants
//! (and new fields) go at the end, and a proposer must not send a command that some replica's
//! version cannot decode (during a rolling upgrade, feature-gate it on the oldest version).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::MailError;
use crate::queue::{QueuedMessage, RecipientOutcome};

/// One change to a shard's mail state. Everything apply needs is in it: apply reads no clock,
/// no randomness and nothing outside the shard's state.
///
/// Addresses and mailbox names are normalized by apply ([`crate::normalize_address`],
/// [`crate::normalize_mailbox_name`]); `now` and dates are unix milliseconds set by the
/// proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateDomain {
        domain: String,
        now: i64,
    },
    /// Refused while the domain has accounts or aliases.
    DeleteDomain {
        domain: String,
    },
    /// Creates the account and its INBOX. `password_hash` is a PHC string
    /// ([`crate::hash_password`]); `quota_bytes: None` is unlimited.
    CreateAccount {
        address: String,
        password_hash: String,
        quota_bytes: Option<u64>,
        now: i64,
    },
    /// Deletes the account with its aliases, mailboxes, messages and subscriptions.
    DeleteAccount {
        address: String,
    },
    SetPassword {
        address: String,
        password_hash: String,
    },
    SetQuota {
        address: String,
        quota_bytes: Option<u64>,
    },
    /// Mail to `alias` goes to `account`. The alias's domain must be one of the shard's.
    AddAlias {
        alias: String,
        account: String,
    },
    RemoveAlias {
        alias: String,
    },
    CreateMailbox {
        account: String,
        name: String,
        special_use: Option<SpecialUse>,
        now: i64,
    },
    /// Deletes the mailbox and its messages; INBOX cannot be deleted. Inferior mailboxes and
    /// subscriptions stay (RFC 9051 §6.3.5, §6.3.7).
    DeleteMailbox {
        account: String,
        name: String,
    },
    /// Renames the mailbox and its inferiors, keeping UIDVALIDITY and UIDs. Renaming INBOX
    /// creates `to` and moves INBOX's messages into it; INBOX stays, empty, with its
    /// UIDVALIDITY and UIDNEXT (RFC 9051 §6.3.6).
    RenameMailbox {
        account: String,
        from: String,
        to: String,
        now: i64,
    },
    /// Idempotent; the mailbox must exist.
    Subscribe {
        account: String,
        name: String,
    },
    /// Idempotent.
    Unsubscribe {
        account: String,
        name: String,
    },
    /// Mail arriving by SMTP or LMTP. Each recipient (an account or alias address) gets a
    /// message in `mailbox` (INBOX when `None`, or when the recipient has no such mailbox);
    /// one recipient's failure (no such account, over quota) does not affect the others.
    /// The body is stored once. A command with an idempotency key already seen stores
    /// nothing and returns the first response again.
    Deliver {
        idempotency_key: Vec<u8>,
        recipients: Vec<String>,
        mailbox: Option<String>,
        internal_date: i64,
        flags: Vec<Flag>,
        #[serde(with = "crate::bytes")]
        body: Vec<u8>,
        now: i64,
    },
    /// IMAP APPEND (and JMAP Email/import). The proposer sets a fresh idempotency key per
    /// client command so that a re-proposed entry is not stored twice.
    Append {
        account: String,
        mailbox: String,
        flags: Vec<Flag>,
        internal_date: i64,
        #[serde(with = "crate::bytes")]
        body: Vec<u8>,
        idempotency_key: Option<Vec<u8>>,
        now: i64,
    },
    /// IMAP STORE with CONDSTORE's UNCHANGEDSINCE: a message whose MODSEQ is above
    /// `unchanged_since` is not changed and is reported as failed.
    Store {
        account: String,
        mailbox: String,
        uids: UidSet,
        op: StoreOp,
        flags: Vec<Flag>,
        unchanged_since: Option<u64>,
    },
    /// Removes the messages flagged `\Deleted` (only those in `uids` when given).
    Expunge {
        account: String,
        mailbox: String,
        uids: Option<UidSet>,
    },
    /// Copies messages (flags and internal date kept) to the end of `to`; bodies are shared.
    Copy {
        account: String,
        from: String,
        to: String,
        uids: UidSet,
    },
    /// Copy and expunge from `from`, atomically.
    Move {
        account: String,
        from: String,
        to: String,
        uids: UidSet,
    },
    /// Queues a message for remote recipients in the sender's shard (see [`crate::queue`]).
    /// `account` is the submitting local account; `sender` the envelope sender (empty for
    /// `<>`). The body is stored once; a command with an idempotency key already seen queues
    /// nothing and returns the first response again.
    Enqueue {
        idempotency_key: Vec<u8>,
        sender: String,
        account: String,
        recipients: Vec<String>,
        #[serde(with = "crate::bytes")]
        body: Vec<u8>,
        expires_at: i64,
        now: i64,
    },
    /// Node `node` claims queued message `id` for `lease_ms` from `now`: granted when the
    /// message is unclaimed or its claim's lease ended by `now`. The reply carries the
    /// message with the new claim and its token.
    ClaimOutbound {
        id: u64,
        node: u64,
        lease_ms: u64,
        now: i64,
    },
    /// The holder of `token` records recipients' outcomes (by index into the message's
    /// recipients; final ones stay final) and when to try the pending ones again; with
    /// `release` it gives up its claim.
    RecordOutbound {
        id: u64,
        token: u64,
        outcomes: Vec<(u32, RecipientOutcome)>,
        next_attempt: i64,
        release: bool,
        now: i64,
    },
    /// The holder of `token` removes a message whose recipients are all final.
    RemoveOutbound {
        id: u64,
        token: u64,
    },
    /// IMAP MULTIAPPEND (RFC 3502): the messages are appended in order with consecutive
    /// UIDs, or none is (an unknown mailbox, an invalid flag, the quota for their total size,
    /// more than [`MAX_APPEND_MESSAGES`]). Idempotent by key, as [`Command::Append`].
    AppendMany {
        account: String,
        mailbox: String,
        messages: Vec<AppendMessage>,
        idempotency_key: Option<Vec<u8>>,
        now: i64,
    },
}

/// Most messages one [`Command::AppendMany`] carries.
pub const MAX_APPEND_MESSAGES: usize = 1000;

/// One message of a [`Command::AppendMany`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendMessage {
    pub flags: Vec<Flag>,
    pub internal_date: i64,
    #[serde(with = "crate::bytes")]
    pub body: Vec<u8>,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing into a Vec fails only for types whose Serialize impl reports an error or
        // gives no sequence length; none of the command's types does.
        crate::records::to_vec(self).expect("postcard encodes every Command into a Vec")
    }

    /// Strict: bytes left over after the command make it malformed too.
    pub fn decode(bytes: &[u8]) -> Result<Command, MailError> {
        match postcard::take_from_bytes(bytes) {
            Ok((command, [])) => Ok(command),
            Ok((_, rest)) => Err(MailError::Malformed(format!(
                "{} bytes after the command",
                rest.len()
            ))),
            Err(e) => Err(MailError::Malformed(e.to_string())),
        }
    }

    /// A stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateDomain { .. } => "create_domain",
            Command::DeleteDomain { .. } => "delete_domain",
            Command::CreateAccount { .. } => "create_account",
            Command::DeleteAccount { .. } => "delete_account",
            Command::SetPassword { .. } => "set_password",
            Command::SetQuota { .. } => "set_quota",
            Command::AddAlias { .. } => "add_alias",
            Command::RemoveAlias { .. } => "remove_alias",
            Command::CreateMailbox { .. } => "create_mailbox",
            Command::DeleteMailbox { .. } => "delete_mailbox",
            Command::RenameMailbox { .. } => "rename_mailbox",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Deliver { .. } => "deliver",
            Command::Append { .. } => "append",
            Command::Store { .. } => "store",
            Command::Expunge { .. } => "expunge",
            Command::Copy { .. } => "copy",
            Command::Move { .. } => "move",
            Command::Enqueue { .. } => "enqueue",
            Command::ClaimOutbound { .. } => "claim_outbound",
            Command::RecordOutbound { .. } => "record_outbound",
            Command::RemoveOutbound { .. } => "remove_outbound",
            Command::AppendMany { .. } => "append_many",
        }
    }
}

/// A message flag: one of IMAP's system flags or a keyword. `\Recent` is per session, not
/// stored, so it is not a `Flag`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Flag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
    /// An IMAP atom (JMAP keyword), kept as given: 1 to 255 printable ASCII characters other
    /// than `( ) { % * " \ ]`.
    Keyword(String),
}

impl Flag {
    /// Parses IMAP's spelling: `\Seen` (any case) or a keyword.
    pub fn parse(s: &str) -> Result<Flag, MailError> {
        let flag = match s.strip_prefix('\\') {
            Some(system) => match system.to_ascii_lowercase().as_str() {
                "seen" => Flag::Seen,
                "answered" => Flag::Answered,
                "flagged" => Flag::Flagged,
                "deleted" => Flag::Deleted,
                "draft" => Flag::Draft,
                _ => return Err(MailError::InvalidFlag(s.to_owned())),
            },
            None => Flag::Keyword(s.to_owned()),
        };
        flag.validate()?;
        Ok(flag)
    }

    pub(crate) fn validate(&self) -> Result<(), MailError> {
        match self {
            Flag::Keyword(k) => {
                let ok = (1..=255).contains(&k.len())
                    && k.bytes().all(|b| {
                        (0x21..=0x7e).contains(&b)
                            && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
                    });
                if ok {
                    Ok(())
                } else {
                    Err(MailError::InvalidFlag(k.clone()))
                }
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flag::Seen => "\\Seen",
            Flag::Answered => "\\Answered",
            Flag::Flagged => "\\Flagged",
            Flag::Deleted => "\\Deleted",
            Flag::Draft => "\\Draft",
            Flag::Keyword(k) => k,
        })
    }
}

/// RFC 6154 special-use attributes (JMAP mailbox roles), plus RFC 8457's `\Important`. An
/// account has at most one mailbox of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SpecialUse {
    All,
    Archive,
    Drafts,
    Flagged,
    Junk,
    Sent,
    Trash,
    Important,
}

impl SpecialUse {
    pub fn as_imap(self) -> &'static str {
        match self {
            SpecialUse::All => "\\All",
            SpecialUse::Archive => "\\Archive",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Flagged => "\\Flagged",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Important => "\\Important",
        }
    }
}

/// How STORE combines the given flags with a message's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOp {
    Add,
    Remove,
    Replace,
}

/// A set of UIDs as inclusive ranges, in any order (IMAP's `5:3` is the same as `3:5`).
/// `*` is the proposer's to resolve; `n:*` is usually `n..=u32::MAX`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidSet {
    ranges: Vec<(u32, u32)>,
}

impl UidSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every UID.
    pub fn all() -> Self {
        Self::range(1, u32::MAX)
    }

    pub fn range(first: u32, last: u32) -> Self {
        Self {
            ranges: vec![(first, last)],
        }
    }

    pub fn single(uid: u32) -> Self {
        Self::range(uid, uid)
    }

    pub fn push(&mut self, first: u32, last: u32) -> &mut Self {
        self.ranges.push((first, last));
        self
    }

    /// Sorted, non-overlapping, non-adjacent inclusive ranges.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        let mut ranges: Vec<(u32, u32)> = self
            .ranges
            .iter()
            .map(|&(a, b)| (a.min(b), a.max(b)))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some((_, last)) if u64::from(a) <= u64::from(*last) + 1 => *last = (*last).max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    pub fn contains(&self, uid: u32) -> bool {
        self.ranges
            .iter()
            .any(|&(a, b)| (a.min(b)..=a.max(b)).contains(&uid))
    }
}

impl FromIterator<u32> for UidSet {
    fn from_iter<I: IntoIterator<Item = u32>>(uids: I) -> Self {
        Self {
            ranges: uids.into_iter().map(|u| (u, u)).collect(),
        }
    }
}

/// What a command produced. Responses of failed commands are `Err`.
pub type Outcome = Result<Reply, MailError>;

/// The successful result of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Domain, account settings, alias, subscription and delete commands.
    Done,
    AccountCreated {
        account_id: u64,
        inbox_id: u64,
        inbox_uidvalidity: u32,
    },
    /// CreateMailbox, and RenameMailbox (the mailbox now called `to`).
    Mailbox {
        mailbox_id: u64,
        uidvalidity: u32,
    },
    /// One result per recipient, in the command's order.
    Delivered(Vec<Result<Delivered, MailError>>),
    /// For APPENDUID.
    Appended {
        mailbox_id: u64,
        uidvalidity: u32,
        uid: u32,
        modseq: u64,
    },
    Stored {
        /// Messages whose flags changed, with their new MODSEQ and flags, by UID.
        modified: Vec<StoredMessage>,
        /// UIDs refused by UNCHANGEDSINCE (CONDSTORE's MODIFIED response code).
        failed: Vec<u32>,
        highestmodseq: u64,
    },
    Expunged {
        uids: Vec<u32>,
        highestmodseq: u64,
    },
    /// For COPYUID: the destination's UIDVALIDITY and (source UID, destination UID) pairs in
    /// source UID order. For Move, the source UIDs are also the expunged ones.
    Copied {
        uidvalidity: u32,
        mapping: Vec<(u32, u32)>,
    },
    /// Enqueue: the queued message's id.
    Queued {
        id: u64,
    },
    /// ClaimOutbound, RecordOutbound: the message as it is now (for a claim, with the
    /// claim's token).
    Outbound(QueuedMessage),
    /// AppendMany, for APPENDUID: the messages got the UIDs `first_uid..=last_uid` in the
    /// command's order, all at MODSEQ `modseq`.
    AppendedMany {
        mailbox_id: u64,
        uidvalidity: u32,
        first_uid: u32,
        last_uid: u32,
        modseq: u64,
    },
}

/// Where one recipient's copy of a delivery went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The account (an alias resolves to its account).
    pub account: String,
    pub mailbox: String,
    pub mailbox_id: u64,
    pub uidvalidity: u32,
    pub uid: u32,
}

/// A message whose flags a Store changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub uid: u32,
    pub modseq: u64,
    pub flags: BTreeSet<Flag>,
}

pub(crate) fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    crate::records::to_vec(outcome).expect("postcard encodes every Outcome into a Vec")
}

/// Decodes the bytes [`crate::MailStateMachine::apply`] returned. Bytes that are not a
/// response decode as `Err(MailError::Malformed)`.
pub fn decode_response(bytes: &[u8]) -> Outcome {
    postcard::from_bytes::<Outcome>(bytes)
        .unwrap_or_else(|e| Err(MailError::Malformed(format!("response: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_imap_spelling() {
        assert_eq!(Flag::parse("\\SEEN"), Ok(Flag::Seen));
        assert_eq!(Flag::parse("\\deleted"), Ok(Flag::Deleted));
        assert_eq!(Flag::parse("$Junk"), Ok(Flag::Keyword("$Junk".into())));
        assert!(Flag::parse("\\Recent").is_err());
        assert!(Flag::parse("\\Whatever").is_err());
        assert!(Flag::parse("").is_err());
        assert!(Flag::parse("a b").is_err());
        assert!(Flag::parse("a]").is_err());
        assert!(Flag::parse(&"k".repeat(256)).is_err());
        assert_eq!(Flag::Seen.to_string(), "\\Seen");
    }

    #[test]
    fn uid_sets_normalize() {
        let mut set = UidSet::range(9, 5);
        set.push(1, 2).push(3, 3).push(7, 12).push(20, 20);
        assert_eq!(set.ranges(), vec![(1, 3), (5, 12), (20, 20)]);
        assert!(set.contains(6) && set.contains(20) && !set.contains(4));
        assert_eq!(UidSet::all().ranges(), vec![(1, u32::MAX)]);
        let mut edge = UidSet::range(u32::MAX, u32::MAX);
        edge.push(0, u32::MAX - 1);
        assert_eq!(edge.ranges(), vec![(0, u32::MAX)]);
        assert_eq!(
            [4, 2, 3].into_iter().collect::<UidSet>().ranges(),
            vec![(2, 4)]
        );
    }

    #[test]
    fn commands_round_trip_and_garbage_is_malformed() {
        let cmd = Command::Deliver {
            idempotency_key: b"q1".to_vec(),
            recipients: vec!["a@example.com".into()],
            mailbox: None,
            internal_date: -5,
            flags: vec![Flag::Seen, Flag::Keyword("x".into())],
            body: vec![0, 1, 2, 255],
            now: 1_700_000_000_000,
        };
        assert_eq!(Command::decode(&cmd.encode()), Ok(cmd.clone()));
        let mut trailing = cmd.encode();
        trailing.push(0);
        assert_eq!(
            Command::decode(&trailing),
            Err(MailError::Malformed("1 bytes after the command".into()))
        );
        assert!(matches!(
            Command::decode(&[0xff, 0xff, 0xff]),
            Err(MailError::Malformed(_))
        ));
        assert!(matches!(Command::decode(&[]), Err(MailError::Malformed(_))));
        assert!(matches!(
            decode_response(&[9, 9]),
            Err(MailError::Malformed(_))
        ));
    }

    #[test]
    fn bodies_round_trip_as_raw_bytes() {
        let body: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let cmd = Command::Append {
            account: "a@b".into(),
            mailbox: "INBOX".into(),
            flags: vec![],
            internal_date: 0,
            body: body.clone(),
            idempotency_key: Some(vec![1, 2]),
            now: 0,
        };
        let bytes = cmd.encode();
        assert!(bytes.windows(body.len()).any(|w| w == body.as_slice()));
        assert_eq!(Command::decode(&bytes), Ok(cmd));
    }
}
