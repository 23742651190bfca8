//! The backend: what the protocol engine asks of the rest of the agent (the directory, the
//! password store, the replicated mail store). The engine decides protocol questions (who
//! may relay, what a client may claim); the backend answers facts (does this mailbox exist,
//! is this password right, is this message durable).
//!
//! # Acknowledgement rule
//!
//! A `250` after DATA/BDAT is the promise that the message is durable. The engine gives it
//! only when [`Backend::deliver`] returned [`DeliveryStatus::Stored`] for **every** accepted
//! recipient, and a backend must return `Stored` only once the copy for that recipient is
//! committed on a majority of its shard's voters (or in a replicated inbound queue whose
//! delivery into the mailbox is idempotent).
//!
//! Partial outcomes:
//!
//! - **SMTP and submission** have one reply for the whole message. If any recipient got a
//!   temporary failure the reply is `451 4.3.0` (or that recipient's own 4xx reply when it
//!   is the only recipient) and the client retries the whole message later. A retry is a new
//!   transaction with a new [`DeliveryKey`](crate::envelope::DeliveryKey) but the same
//!   [`Delivery::digest`](crate::envelope::Delivery::digest): a backend that remembers the
//!   digests it stored per recipient for the retry horizon skips those recipients and does
//!   not duplicate their copy. Without that, recipients stored in the first attempt may get
//!   the message twice, the usual at-least-once outcome of SMTP; never zero times. If no
//!   recipient failed temporarily but some failed permanently, the first permanent reply is
//!   returned (the client bounces; the recipients already stored keep their copy).
//! - **LMTP** replies once per accepted recipient, in RCPT order, with that recipient's
//!   own outcome (RFC 2033), so nothing is ambiguous.
//!
//! Within one attempt the backend must be idempotent by [`DeliveryKey`]: storing the same
//! key twice for a recipient stores one copy.

use std::future::Future;

use crate::auth::Credentials;
use crate::envelope::Delivery;
use crate::parser::{Mailbox, ReversePath};
use crate::reply::{Reply, Status};
use crate::session::SessionInfo;

/// An authenticated account and what it may send as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The account's identity (for logs and the backend's own use).
    pub name: String,
    /// Addresses the account may use as envelope sender and header From: its own address
    /// and its aliases. An entry `@example.org` allows every address at that domain.
    pub addresses: Vec<String>,
}

impl Account {
    /// Whether the account may send as `address` (`local@domain`); compared
    /// case-insensitively.
    pub fn may_send_as(&self, address: &str) -> bool {
        let address = address.to_lowercase();
        let domain = address.rsplit_once('@').map(|(_, d)| d);
        self.addresses.iter().any(|a| {
            let a = a.to_lowercase();
            match a.strip_prefix('@') {
                Some(d) => domain == Some(d),
                None => a == address,
            }
        })
    }

    /// [`Account::may_send_as`] for a parsed mailbox.
    pub fn may_send_as_mailbox(&self, mailbox: &Mailbox) -> bool {
        !mailbox.domain.is_empty() && self.may_send_as(&mailbox.to_string())
    }
}

/// The backend's answer about a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptVerdict {
    /// A mailbox (or alias) this cluster stores.
    Local,
    /// Not local, and this session's account may send to it. The engine accepts it only
    /// from an authenticated session on a listener other than LMTP, whatever the backend
    /// says: an unauthenticated client never relays, from any address.
    Relay,
    /// No such mailbox: `550 5.1.1`.
    Unknown,
    /// The directory cannot answer now: `451 4.3.0`.
    TempFail,
    /// Refused with the backend's own reply, for a refusal the other verdicts cannot say
    /// (e.g. a recipient the server will not deliver to for a reason of its own). A 4xx or
    /// 5xx reply; anything else becomes `550 5.0.0`.
    Refuse(Reply),
}

/// The backend's answer about an envelope sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderVerdict {
    /// Go on.
    Accept,
    /// Refused with `550 5.7.1` (e.g. an unauthenticated client claiming a local domain).
    Refuse,
    /// Cannot decide now: `451 4.3.0`.
    TempFail,
}

/// The result of checking credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Right: the session is now this account's.
    Ok(Account),
    /// Wrong user or password: `535 5.7.8`.
    Invalid,
    /// Cannot check now: `454 4.7.0`.
    TempFail,
    /// Too many recent failures for this address or account; refused without checking:
    /// `454 4.7.0`. The server's rate limiter answers this; a backend may too.
    Throttled,
}

/// The outcome of storing a message for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Durable (the promise behind a `250`).
    Stored,
    /// Not stored; the client should retry. A 4xx reply (anything else becomes
    /// `451 4.3.0`).
    TempFail(Reply),
    /// Not stored and never will be. A 5xx reply (anything else becomes `554 5.0.0`).
    PermFail(Reply),
}

impl DeliveryStatus {
    /// `TempFail` with `451 4.3.0` and `text`.
    pub fn temp(text: impl Into<String>) -> Self {
        DeliveryStatus::TempFail(Reply::new(451, Status(4, 3, 0), text.into()))
    }

    /// `PermFail` with `554 5.0.0` and `text`.
    pub fn perm(text: impl Into<String>) -> Self {
        DeliveryStatus::PermFail(Reply::new(554, Status(5, 0, 0), text.into()))
    }
}

/// What the engine needs from the rest of the agent. Every method gets the session's
/// details (client address, TLS, authenticated account).
///
/// The futures must be `Send` (sessions run on tokio's multi-threaded runtime) and should
/// bound their own time: the engine waits for them.
pub trait Backend: Send + Sync + 'static {
    /// Whether `address` may receive mail in this session.
    fn recipient(
        &self,
        session: &SessionInfo,
        address: &Mailbox,
    ) -> impl Future<Output = RcptVerdict> + Send;

    /// Checks a password.
    fn authenticate(
        &self,
        session: &SessionInfo,
        credentials: &Credentials,
    ) -> impl Future<Output = AuthVerdict> + Send;

    /// Stores a message; one status per entry of `delivery.envelope.recipients`, in order.
    fn deliver(
        &self,
        session: &SessionInfo,
        delivery: &Delivery,
    ) -> impl Future<Output = Vec<DeliveryStatus>> + Send;

    /// Whether the envelope sender is acceptable. The engine has already held an
    /// authenticated session to its account's addresses; this hook is for policy on
    /// unauthenticated senders (e.g. refusing a local domain from outside). Accepts all by
    /// default.
    fn sender(
        &self,
        session: &SessionInfo,
        sender: &ReversePath,
    ) -> impl Future<Output = SenderVerdict> + Send {
        let _ = (session, sender);
        async { SenderVerdict::Accept }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_addresses_and_domain_aliases() {
        let account = Account {
            name: "alice".into(),
            addresses: vec!["Alice@Example.org".into(), "@alice.example".into()],
        };
        assert!(account.may_send_as("alice@example.org"));
        assert!(account.may_send_as("ALICE@EXAMPLE.ORG"));
        assert!(account.may_send_as("anything@alice.example"));
        assert!(!account.may_send_as("bob@example.org"));
        assert!(!account.may_send_as("alice@example.org.evil"));
        assert!(!account.may_send_as("x@sub.alice.example"));
        let postmaster = Mailbox {
            local_part: "Postmaster".into(),
            domain: String::new(),
        };
        assert!(!account.may_send_as_mailbox(&postmaster));
    }
}
