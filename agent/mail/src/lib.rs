//! Tern's mail data model: domains, accounts, aliases, mailboxes, messages and blobs as
//! deterministic commands that a shard's Raft state machine applies, and a read API over the
//! committed state.
//!
//! - [`Command`] is what a proposer (SMTP, LMTP, IMAP, JMAP, the admin API) puts in a Raft
//!   entry, encoded with postcard ([`Command::encode`]). It carries everything apply needs to
//!   be deterministic: the proposer's clock (`now`, unix milliseconds), password hashes
//!   computed before proposing ([`hash_password`]), idempotency keys.
//! - [`MailStateMachine::apply`] runs one command against the state as of the previous entry
//!   and writes its effects into the entry's [`tern_store::Batch`]. A command either succeeds
//!   completely or writes nothing; its outcome ([`Outcome`]) is the response bytes
//!   ([`decode_response`]). Errors are values ([`MailError`]), never panics.
//! - [`MailStateMachine::apply_many`] runs a group of commands (many client commands in one
//!   Raft entry) as if each were its own entry: each reads the writes of the group's earlier
//!   commands that succeeded, and the whole group is one batch, so one engine write.
//! - [`MailReader`] reads committed state straight from the engine, for IMAP and JMAP.
//!
//! The key layout is documented in [`keys`].

#![forbid(unsafe_code)]

mod apply;
mod bytes;
mod command;
mod error;
pub mod keys;
mod names;
mod password;
pub mod queue;
mod read;
mod records;
mod source;

pub use apply::MailStateMachine;
pub use command::{
    AppendMessage, Command, Delivered, Flag, MAX_APPEND_MESSAGES, Outcome, Reply, SpecialUse,
    StoreOp, StoredMessage, UidSet, decode_response,
};
pub use error::MailError;
pub use keys::KEYSPACES;
pub use names::{HIERARCHY_DELIMITER, INBOX, normalize_address, normalize_mailbox_name};
pub use password::{hash_password, verify_password};
pub use queue::{Claim, QueuedMessage, QueuedRecipient, RecipientOutcome, RecipientState};
pub use read::{Change, ChangeCursor, ChangePage, MailReader, MessagePage};
pub use records::{Account, Alias, BlobHash, Domain, Mailbox, Message};

/// How long a delivery's idempotency key is remembered: longer than any sender retries one
/// message (SMTP queues give up after about five days).
pub const IDEMPOTENCY_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
