use serde::{Deserialize, Serialize};

use crate::command::SpecialUse;

/// Why a command (or one recipient of a delivery) was refused. Part of the replicated
/// response, so it is plain data and every replica produces the same one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MailError {
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    #[error("invalid domain {0:?}")]
    InvalidDomain(String),
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    #[error("invalid mailbox name {name:?}: {reason}")]
    InvalidMailboxName { name: String, reason: String },
    #[error("invalid flag {0:?}")]
    InvalidFlag(String),
    #[error("invalid password hash: not a PHC string")]
    InvalidPasswordHash,
    #[error("no such domain {0:?}")]
    NoSuchDomain(String),
    #[error("domain {0:?} exists")]
    DomainExists(String),
    #[error("domain {0:?} still has accounts or aliases")]
    DomainNotEmpty(String),
    #[error("no such account {0:?}")]
    NoSuchAccount(String),
    #[error("account {0:?} exists")]
    AccountExists(String),
    #[error("address {0:?} is already an account or an alias")]
    AddressInUse(String),
    #[error("no such alias {0:?}")]
    NoSuchAlias(String),
    #[error("no such mailbox {0:?}")]
    NoSuchMailbox(String),
    #[error("mailbox {0:?} exists")]
    MailboxExists(String),
    #[error("INBOX cannot be deleted")]
    InboxNotDeletable,
    #[error("mailbox {mailbox:?} already has special use {special_use:?}")]
    SpecialUseInUse {
        special_use: SpecialUse,
        mailbox: String,
    },
    #[error(
        "over quota: {account:?} uses {used_bytes} of {quota_bytes} bytes, needs {needed_bytes}"
    )]
    QuotaExceeded {
        account: String,
        quota_bytes: u64,
        used_bytes: u64,
        needed_bytes: u64,
    },
    #[error("mailbox {0:?} has used every UID; it must be recreated")]
    UidsExhausted(String),
    #[error("no queued message {0}")]
    NoSuchQueuedMessage(u64),
    #[error("queued message is being delivered by node {node} until {until}")]
    ClaimHeld { node: u64, until: i64 },
    #[error("the claim on queued message {0} is not this one's (it ended or was taken over)")]
    NotClaimHolder(u64),
    #[error("queued message {0} still has recipients to deliver to")]
    RecipientsPending(u64),
}

impl MailError {
    /// A stable, low-cardinality name for metrics, logs and protocol response codes.
    pub fn category(&self) -> &'static str {
        match self {
            MailError::Malformed(_) => "malformed",
            MailError::InvalidCommand(_) => "invalid_command",
            MailError::InvalidDomain(_) => "invalid_domain",
            MailError::InvalidAddress(_) => "invalid_address",
            MailError::InvalidMailboxName { .. } => "invalid_mailbox_name",
            MailError::InvalidFlag(_) => "invalid_flag",
            MailError::InvalidPasswordHash => "invalid_password_hash",
            MailError::NoSuchDomain(_) => "no_such_domain",
            MailError::DomainExists(_) => "domain_exists",
            MailError::DomainNotEmpty(_) => "domain_not_empty",
            MailError::NoSuchAccount(_) => "no_such_account",
            MailError::AccountExists(_) => "account_exists",
            MailError::AddressInUse(_) => "address_in_use",
            MailError::NoSuchAlias(_) => "no_such_alias",
            MailError::NoSuchMailbox(_) => "no_such_mailbox",
            MailError::MailboxExists(_) => "mailbox_exists",
            MailError::InboxNotDeletable => "inbox_not_deletable",
            MailError::SpecialUseInUse { .. } => "special_use_in_use",
            MailError::QuotaExceeded { .. } => "quota_exceeded",
            MailError::UidsExhausted(_) => "uids_exhausted",
            MailError::NoSuchQueuedMessage(_) => "no_such_queued_message",
            MailError::ClaimHeld { .. } => "claim_held",
            MailError::NotClaimHolder(_) => "not_claim_holder",
            MailError::RecipientsPending(_) => "recipients_pending",
        }
    }
}
