//! The outbound queue's records: messages to remote recipients, kept in the sender's shard
//! until every recipient has a final outcome, claimed for delivery by one node at a time.
//!
//! A message is queued by [`Command::Enqueue`](crate::Command::Enqueue) (its body is a blob,
//! stored and counted as mailbox messages' bodies are), claimed by a node with
//! [`Command::ClaimOutbound`](crate::Command::ClaimOutbound), updated with the recipients'
//! outcomes by [`Command::RecordOutbound`](crate::Command::RecordOutbound) and removed by
//! [`Command::RemoveOutbound`](crate::Command::RemoveOutbound) once every recipient is final.
//!
//! # One node at a time
//!
//! Apply reads no clock: a claim carries the proposer's time (`now`) and lasts `lease_ms`
//! from it. A claim is granted only when the message is unclaimed or when `now` is past the
//! current claim's own end (`claim.at + claim.lease_ms`, both stamped by the holder), and it
//! returns a token; recording outcomes, releasing and removing need that token. So whatever
//! the clocks say, the state only ever takes the word of the latest holder: a node whose
//! claim was taken over (its lease ran out, or another node's clock ran ahead) can no longer
//! change the message. The one thing a clock far ahead can cause is a second delivery
//! attempt while the first one is still running — a duplicate at the remote side, which SMTP
//! tolerates (RFC 5321 §6.1) — never a lost outcome. Holders keep their attempts well inside
//! their lease, measured on their own monotonic clock.

use serde::{Deserialize, Serialize};

use crate::records::BlobHash;

/// A message waiting in the outbound queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Shard-unique, never reused.
    pub id: u64,
    /// The envelope sender (MAIL FROM), `local@domain`; empty for the null sender `<>`.
    pub sender: String,
    /// The local account that submitted the message: delivery status notifications go to
    /// its INBOX.
    pub account: String,
    /// In the order submitted.
    pub recipients: Vec<QueuedRecipient>,
    /// The body ([`crate::MailReader::blob`]).
    pub blob: BlobHash,
    pub size: u64,
    /// Unix milliseconds.
    pub queued_at: i64,
    /// After this, recipients still pending are given up (and bounced).
    pub expires_at: i64,
    /// When the next attempt is due.
    pub next_attempt: i64,
    /// Attempts made so far (claims granted).
    pub attempts: u32,
    pub claim: Option<Claim>,
    /// The next claim's token; never handed out twice for this message.
    pub next_token: u64,
}

impl QueuedMessage {
    /// Whether every recipient has a final outcome.
    pub fn is_final(&self) -> bool {
        self.recipients.iter().all(|r| r.state.is_final())
    }

    /// Whether a claim made at `now` would be granted (the claim check of apply).
    pub fn claimable(&self, now: i64) -> bool {
        self.claim.as_ref().is_none_or(|c| c.expired(now))
    }
}

/// One recipient of a queued message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRecipient {
    /// `local@domain` as the submitter wrote it.
    pub address: String,
    pub state: RecipientState,
    /// The last reply of a remote server (or why no server answered), for logs and DSNs.
    pub last_reply: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientState {
    /// Not delivered yet (never tried, or deferred after a temporary failure).
    Pending,
    /// Accepted by the next hop; the reply text.
    Delivered,
    /// Permanently refused (5xx), or given up at expiry.
    Failed,
}

impl RecipientState {
    pub fn is_final(&self) -> bool {
        !matches!(self, RecipientState::Pending)
    }
}

/// Who is delivering a message, since when, for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The node id of the holder.
    pub node: u64,
    /// What the holder shows to record, release or remove.
    pub token: u64,
    /// The holder's clock when it claimed (unix milliseconds).
    pub at: i64,
    pub lease_ms: u64,
}

impl Claim {
    /// The end of the lease, by the holder's clock.
    pub fn until(&self) -> i64 {
        self.at
            .saturating_add(i64::try_from(self.lease_ms).unwrap_or(i64::MAX))
    }

    /// Whether a claim made at `now` may take this one over.
    pub fn expired(&self, now: i64) -> bool {
        now >= self.until()
    }
}

/// One recipient's outcome of a delivery attempt, for
/// [`Command::RecordOutbound`](crate::Command::RecordOutbound).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientOutcome {
    /// The next hop accepted it.
    Delivered { reply: String },
    /// 5xx, or given up: final.
    Failed { reply: String },
    /// 4xx or no answer: tried again at the message's next attempt.
    Deferred { reply: String },
}

/// The longest lease a claim may ask for (a day): a node that dies holding a claim delays the
/// message at most this long.
pub const MAX_LEASE_MS: u64 = 24 * 60 * 60 * 1000;
