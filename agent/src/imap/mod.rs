//! Where IMAP meets the replicated store: the imap (143, STARTTLS) and imaps (993, implicit
//! TLS) listeners of `tern-agent run`, and the backend that gives tern-imap's protocol engine
//! the shards this node holds.
//!
//! - [`backend`]: [`StoreBackend`], tern-imap's `Backend` over the [`ShardHost`]: password
//!   checks, mailbox and message reads, every change as a tern-mail command through Raft.
//! - [`changes`]: the per-account change counter IDLE waits on, fed by this node's own
//!   writes and by a poller that notices writes made through other nodes.
//! - [`listeners`]: which IMAP listeners a node runs, and starting and stopping them.
//! - [`proxy`]: sessions of accounts whose shard this node holds no replica of, relayed to
//!   a node that holds one.
//!
//! # Reads and writes
//!
//! A read is linearizable: a read barrier on the account's shard (ReadIndex through its
//! leader), then the local replica's committed state through [`tern_mail::MailReader`]. A
//! node cut off from its shard's majority answers `NO [UNAVAILABLE]` rather than serve a
//! stale mailbox. A change (APPEND, STORE, EXPUNGE, COPY, MOVE, CREATE, DELETE, RENAME,
//! SUBSCRIBE) is one tern-mail command written through the shard's leader; the command's
//! answer carries what the client is told (APPENDUID, COPYUID, the expunged UIDs). UIDs,
//! UIDVALIDITY and MODSEQ are the store's, assigned when the command is applied, so they are
//! the same on every replica and survive leader changes and restarts.
//!
//! Writes that are safe to repeat are retried while the shard elects a leader, until the
//! backend's deadline: APPEND carries a fresh idempotency key per client command (a
//! re-proposed entry is stored once), STORE and EXPUNGE change nothing the second time,
//! SUBSCRIBE is idempotent. COPY, MOVE and the mailbox operations are tried once: a write
//! that failed as "temporarily unavailable" may still have committed, and a second copy
//! would be a duplicate.
//!
//! # Where a session is served
//!
//! Only a node that holds a replica of the account's shard serves its mailboxes (every node
//! of a three-node cluster holds every shard). Any node takes the login (the password check
//! is a query to the shard's replicas); a node without a replica then relays the session to
//! one that holds it, live ones first, transparently to the client ([`proxy`]). If that node
//! is lost mid-session, the client gets `* BYE [UNAVAILABLE]` and reconnects; its next
//! session goes to another live replica.

pub mod backend;
pub mod changes;
pub mod listeners;
pub mod proxy;

pub use backend::{ImapOptions, StoreBackend};
pub use listeners::{ImapListeners, ImapPlan};
pub use proxy::{ImapStats, Relay, RoutingBackend};

#[cfg(test)]
mod tests;
