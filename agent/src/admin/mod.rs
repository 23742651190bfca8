//! The recovery administrator's HTTPS API: domains, accounts, passwords and this node's Raft
//! view, for when nothing else works (bootstrap, lost passwords, a shard without a leader).
//!
//! - [`server`]: the warp routes behind TLS and HTTP Basic authentication ([`serve`]);
//! - [`auth`]: the credential check and the per-address limiter of failed attempts;
//! - [`client`]: [`AdminClient`], used by the command line and the local-cluster launcher;
//! - [`cli`]: `tern-agent admin …`.
//!
//! The server validates and normalises input here, at the boundary; what lies behind it is an
//! [`AdminBackend`] (the Raft-backed one lives with the shards).

pub mod auth;
pub mod cli;
pub mod client;
pub mod server;

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

pub use client::{AdminClient, ClientError};
pub use server::{AdminServerConfig, PasswordFileError, ServeError, read_password_file, serve};

/// The only user name of the admin API.
pub const ADMIN_USER: &str = "admin";

/// Passwords shorter than this are refused (characters).
pub const PASSWORD_MIN: usize = 8;
/// Passwords longer than this are refused (characters); argon2 does not need more.
pub const PASSWORD_MAX: usize = 1024;

/// What the admin API acts on. Implementations answer [`AdminError::Unavailable`] when the
/// shard that would take the write has no leader or no quorum, so the client retries later.
///
/// Inputs arrive validated: domains and the domain part of addresses in lower case, addresses
/// of the form `local@domain`, passwords of [`PASSWORD_MIN`]`..=`[`PASSWORD_MAX`] characters.
pub trait AdminBackend: Send + Sync + 'static {
    fn create_domain(&self, domain: String) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn list_domains(&self) -> impl Future<Output = Result<Vec<DomainInfo>, AdminError>> + Send;
    fn delete_domain(&self, domain: String) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn create_account(
        &self,
        address: String,
        password: String,
        quota_bytes: Option<u64>,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn list_accounts(
        &self,
        domain: String,
    ) -> impl Future<Output = Result<Vec<AccountInfo>, AdminError>> + Send;
    fn delete_account(
        &self,
        address: String,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn set_password(
        &self,
        address: String,
        password: String,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// This node: id, name, and per shard it holds: raft role
    /// (leader/follower/learner/candidate/shutdown), term, leader id, last log index,
    /// committed, applied, voters, learners.
    fn node_state(&self) -> impl Future<Output = Result<NodeState, AdminError>> + Send;
    /// The messages of `address`'s `mailbox` by UID, after `after_uid`, at most `limit`
    /// (1..=[`MAX_MESSAGES`]). A backend that stores no mail has none to list.
    fn list_messages(
        &self,
        address: String,
        mailbox: String,
        after_uid: u32,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MessageInfo>, AdminError>> + Send {
        let _ = (mailbox, after_uid, limit);
        async move {
            Err(AdminError::NotFound(format!(
                "no mailbox of {address} here: this backend stores no mail"
            )))
        }
    }
}

/// The most messages one `GET /admin/v1/accounts/{address}/messages` returns.
pub const MAX_MESSAGES: u32 = 1000;

/// Why the admin API refused a request; each kind has its HTTP status and a stable `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: it exists already, or something still depends on it.
    #[error("{0}")]
    Conflict(String),
    /// 400: the request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// 503, temporary: no quorum or no leader; the answer carries `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// The stable name sent as `reason` in error bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            AdminError::NotFound(_) => "NotFound",
            AdminError::Conflict(_) => "Conflict",
            AdminError::Invalid(_) => "Invalid",
            AdminError::Unavailable(_) => "Unavailable",
            AdminError::Internal(_) => "Internal",
        }
    }

    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainInfo {
    pub name: String,
    /// Unix seconds.
    pub created: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInfo {
    pub address: String,
    pub quota_bytes: Option<u64>,
    pub used_bytes: u64,
    pub aliases: Vec<String>,
}

/// A message in a mailbox, summarised from its header (values lossily decoded, unfolded, at
/// most 200 characters; `null` when the message has no such field).
///
/// Also the answer of a shard query, postcard-encoded: no field may be skipped when empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageInfo {
    pub uid: u32,
    /// Bytes, as stored (with the `Received:` field Tern added).
    pub size: u64,
    /// When the message arrived, Unix milliseconds.
    pub internal_date: i64,
    /// IMAP spelling: `\Seen`, keywords.
    pub flags: Vec<String>,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub node_id: u64,
    pub name: String,
    pub shards: Vec<ShardState>,
}

/// One shard replica held by the node, as its Raft group sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardState {
    pub shard: u32,
    /// `leader`, `follower`, `learner`, `candidate` or `shutdown`.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// Body of `POST /admin/v1/domains`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewDomain {
    pub name: String,
}

/// Body of `POST /admin/v1/accounts`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewAccount {
    pub address: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

impl fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewAccount")
            .field("address", &self.address)
            .field("password", &"<redacted>")
            .field("quota_bytes", &self.quota_bytes)
            .finish()
    }
}

/// Body of `PUT /admin/v1/accounts/{address}/password`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPassword {
    pub password: String,
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword { password: <redacted> }")
    }
}

/// The body of every error answer: `{"error": "…", "reason": "NotFound"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub reason: String,
}

/// A mail domain in lower case: dot-separated labels of letters, digits and inner hyphens
/// (internationalised names in their `xn--` form), at most 253 characters.
pub fn normalize_domain(domain: &str) -> Result<String, AdminError> {
    let invalid = |why: &str| AdminError::Invalid(format!("invalid domain {domain:?}: {why}"));
    if domain.is_empty() {
        return Err(invalid("empty"));
    }
    if domain.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    if !domain.is_ascii() {
        return Err(invalid(
            "use the ASCII (xn--) form of internationalised names",
        ));
    }
    let domain = domain.to_ascii_lowercase();
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(invalid("empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    Ok(domain)
}

/// An address `local@domain`: the local part a dot-atom of at most 64 characters (kept as
/// given), the domain normalised by [`normalize_domain`].
pub fn normalize_address(address: &str) -> Result<String, AdminError> {
    let invalid = |why: &str| AdminError::Invalid(format!("invalid address {address:?}: {why}"));
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(invalid("expected local@domain"));
    };
    if local.is_empty() {
        return Err(invalid("empty local part"));
    }
    if local.len() > 64 {
        return Err(invalid("local part longer than 64 characters"));
    }
    const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";
    if !local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || ATEXT_SPECIALS.contains(&b))
    {
        return Err(invalid(
            "the local part may hold letters, digits, '.' and !#$%&'*+-/=?^_`{|}~",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(invalid("misplaced '.' in the local part"));
    }
    let domain = normalize_domain(domain).map_err(|e| match e {
        AdminError::Invalid(why) => {
            AdminError::Invalid(format!("invalid address {address:?}: {why}"))
        }
        other => other,
    })?;
    Ok(format!("{local}@{domain}"))
}

/// A new password: [`PASSWORD_MIN`]`..=`[`PASSWORD_MAX`] characters, no control characters.
pub fn check_password(password: &str) -> Result<(), AdminError> {
    let n = password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(AdminError::Invalid(format!(
            "the password must have {PASSWORD_MIN} to {PASSWORD_MAX} characters, not {n}"
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(AdminError::Invalid(
            "the password must not hold control characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lower_cased_and_checked() {
        assert_eq!(normalize_domain("Example.ORG").unwrap(), "example.org");
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        assert_eq!(
            normalize_domain("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "-a.b",
            "a-.b",
            "a b.c",
            "bücher.de",
            "a_b.c",
        ] {
            assert!(
                matches!(normalize_domain(bad), Err(AdminError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(normalize_domain(&"a".repeat(64)).is_err());
        assert!(normalize_domain(&["a"; 128].join(".")).is_err());
    }

    #[test]
    fn addresses_keep_the_local_part_and_lower_the_domain() {
        assert_eq!(
            normalize_address("John.Doe+tag@Example.ORG").unwrap(),
            "John.Doe+tag@example.org"
        );
        for bad in [
            "",
            "nobody",
            "@example.org",
            "a@",
            "a@@example.org",
            "a b@example.org",
            ".a@example.org",
            "a..b@example.org",
            "a@exa mple.org",
            "\"quoted\"@example.org",
        ] {
            let err = normalize_address(bad).unwrap_err();
            assert!(matches!(err, AdminError::Invalid(_)), "{bad:?}");
            assert!(err.to_string().contains("invalid address"), "{err}");
        }
        assert!(normalize_address(&format!("{}@example.org", "a".repeat(65))).is_err());
    }

    #[test]
    fn password_length_is_bounded() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"p".repeat(1024)).is_ok());
        assert!(check_password(&"p".repeat(1025)).is_err());
        assert!(check_password("ünïcödé!").is_ok());
        assert!(check_password("line\nbreak").is_err());
    }

    #[test]
    fn errors_map_to_status_and_reason() {
        assert_eq!(AdminError::NotFound("x".into()).status(), 404);
        assert_eq!(AdminError::Conflict("x".into()).status(), 409);
        assert_eq!(AdminError::Invalid("x".into()).status(), 400);
        assert_eq!(AdminError::Unavailable("x".into()).status(), 503);
        assert_eq!(AdminError::Internal("x".into()).status(), 500);
        assert_eq!(AdminError::Unavailable("x".into()).reason(), "Unavailable");
    }

    #[test]
    fn json_field_names_are_camel_case() {
        let shard = ShardState {
            shard: 1,
            role: "leader".into(),
            term: 2,
            leader: Some(3),
            last_log_index: Some(4),
            committed: None,
            applied: Some(4),
            voters: vec![1, 2, 3],
            learners: vec![],
        };
        let v = serde_json::to_value(&shard).unwrap();
        assert_eq!(v["lastLogIndex"], 4);
        assert!(v["committed"].is_null());
        let a: NewAccount =
            serde_json::from_str(r#"{"address":"a@b.c","password":"12345678","quotaBytes":5}"#)
                .unwrap();
        assert_eq!(a.quota_bytes, Some(5));
        assert!(!format!("{a:?}").contains("12345678"));
        assert!(serde_json::from_str::<NewDomain>(r#"{"name":"a","extra":1}"#).is_err());
    }
}
