//! Linearizable reads of a shard from any node: answered by the local replica after a read
//! barrier, or by a replica on another node over RPC when this node holds none.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_mail::{Account, Domain, MailReader};
use tern_raft::{Node, Request, ShardId};

use super::{ShardError, ShardHost};
use crate::admin::MessageInfo;
use crate::rpc::{CallError, Refused, RpcKind, RpcResponse};

/// The most accounts one query returns.
pub const MAX_ACCOUNTS: usize = 1000;
/// The most messages one query returns.
pub const MAX_MESSAGES: usize = 1000;
/// How much of a message's start is searched for the header fields of its summary.
const SUMMARY_HEAD_BYTES: usize = 16 * 1024;
/// Longest header value kept in a summary, in characters.
const SUMMARY_VALUE_CHARS: usize = 200;

/// A read of one shard's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Domains,
    /// Accounts of `domain` on the shard, in address order, after `after`.
    Accounts {
        domain: String,
        after: Option<String>,
        limit: u32,
    },
    Account {
        address: String,
    },
    /// Whether the domain of `address` is one of the shard's, and the account that mail to
    /// `address` reaches on this shard (itself, through an alias, or `local+tag`).
    Recipient {
        address: String,
    },
    /// The messages of an account's mailbox by UID, after `after_uid`.
    Messages {
        address: String,
        mailbox: String,
        after_uid: u32,
        limit: u32,
    },
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryAnswer {
    Domains(Vec<Domain>),
    Accounts(Vec<Account>),
    Account(Option<Account>),
    Recipient {
        local_domain: bool,
        /// The account's address.
        account: Option<String>,
    },
    Messages(MessagesAnswer),
}

/// The answer to [`Query::Messages`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessagesAnswer {
    NoAccount,
    NoMailbox,
    /// By UID, at most the limit asked for.
    Page(Vec<MessageInfo>),
}

impl Query {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a query always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

impl ShardHost {
    /// Answers `query` with the shard's state as of now (linearizable).
    pub async fn query(&self, shard: ShardId, query: &Query) -> Result<QueryAnswer, ShardError> {
        let bytes = if self.replica(shard).is_some() {
            self.query_local(shard, query).await?
        } else {
            self.query_remote(shard, query).await?
        };
        postcard::from_bytes(&bytes).map_err(|e| ShardError::Failed {
            shard,
            why: format!("malformed query answer: {e}"),
        })
    }

    /// An account by its own address (not an alias), linearizably.
    pub async fn account(
        &self,
        shard: ShardId,
        address: &str,
    ) -> Result<Option<Account>, ShardError> {
        let query = Query::Account {
            address: address.to_owned(),
        };
        match self.query(shard, &query).await? {
            QueryAnswer::Account(account) => Ok(account),
            other => Err(unexpected(shard, &other)),
        }
    }

    /// Whether `address`'s domain is a local one, and the address of the account on `shard`
    /// that mail to `address` reaches, linearizably.
    pub async fn recipient(
        &self,
        shard: ShardId,
        address: &str,
    ) -> Result<(bool, Option<String>), ShardError> {
        let query = Query::Recipient {
            address: address.to_owned(),
        };
        match self.query(shard, &query).await? {
            QueryAnswer::Recipient {
                local_domain,
                account,
            } => Ok((local_domain, account)),
            other => Err(unexpected(shard, &other)),
        }
    }

    /// Answers from the local replica, after a read barrier.
    pub(super) async fn query_local(
        &self,
        shard: ShardId,
        query: &Query,
    ) -> Result<Vec<u8>, ShardError> {
        self.read_barrier(shard).await?;
        let engine = self.engine().clone();
        let query = query.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let reader = MailReader::new(&*engine, shard);
            Ok::<_, tern_store::StoreError>(match query {
                Query::Domains => QueryAnswer::Domains(reader.domains()?),
                Query::Accounts {
                    domain,
                    after,
                    limit,
                } => QueryAnswer::Accounts(reader.accounts(
                    &domain,
                    after.as_deref(),
                    (limit as usize).min(MAX_ACCOUNTS),
                )?),
                Query::Account { address } => QueryAnswer::Account(reader.account(&address)?),
                Query::Recipient { address } => {
                    let local_domain = match address.rsplit_once('@') {
                        Some((_, domain)) => reader.domain(domain)?.is_some(),
                        None => false,
                    };
                    QueryAnswer::Recipient {
                        local_domain,
                        account: reader.resolve(&address)?.map(|a| a.address),
                    }
                }
                Query::Messages {
                    address,
                    mailbox,
                    after_uid,
                    limit,
                } => QueryAnswer::Messages(messages(
                    &reader,
                    &address,
                    &mailbox,
                    after_uid,
                    (limit as usize).clamp(1, MAX_MESSAGES),
                )?),
            })
        })
        .await
        .map_err(|e| ShardError::Failed {
            shard,
            why: e.to_string(),
        })?
        .map_err(|e| ShardError::Failed {
            shard,
            why: format!("reading the shard: {e}"),
        })?;
        Ok(postcard::to_stdvec(&answer).expect("an answer always encodes"))
    }

    /// Asks the shard's replicas on other nodes, one after another, those gossip holds alive
    /// first.
    async fn query_remote(&self, shard: ShardId, query: &Query) -> Result<Vec<u8>, ShardError> {
        let replicas: Vec<u64> = self
            .assignment()
            .and_then(|a| a.shards.iter().find(|s| s.id == shard).cloned())
            .map(|s| s.voters.into_iter().chain(s.learners).collect())
            .ok_or(ShardError::UnknownShard(shard))?;
        let mut last = String::from("no replica answered");
        for id in super::live_first(replicas, |id| self.is_live(id)) {
            let Some(rpc_addr) = self.address_of(id) else {
                continue;
            };
            let answer = self
                .network
                .for_shard(shard)
                .request(
                    id,
                    &Node { rpc_addr },
                    RpcKind::Query(Request {
                        bytes: query.encode().into(),
                    }),
                    self.timeout + Duration::from_secs(1),
                )
                .await;
            match answer {
                Ok(RpcResponse::Query(Ok(response))) => return Ok(response.bytes),
                Ok(RpcResponse::Query(Err(Refused::Failed(why)))) => {
                    return Err(ShardError::Failed { shard, why });
                }
                Ok(RpcResponse::Query(Err(refused))) => last = format!("node {id}: {refused:?}"),
                Ok(other) => last = format!("node {id}: unexpected answer {other:?}"),
                Err(CallError::TooLarge) => {
                    return Err(ShardError::Failed {
                        shard,
                        why: "query too large".into(),
                    });
                }
                Err(e) => last = format!("node {id}: {e}"),
            }
        }
        Err(ShardError::unavailable(shard, last))
    }
}

fn unexpected(shard: ShardId, answer: &QueryAnswer) -> ShardError {
    ShardError::Failed {
        shard,
        why: format!("unexpected query answer {answer:?}"),
    }
}

/// A page of the messages of `address`'s `mailbox`, each summarised from its header.
fn messages(
    reader: &MailReader<'_>,
    address: &str,
    mailbox: &str,
    after_uid: u32,
    limit: usize,
) -> Result<MessagesAnswer, tern_store::StoreError> {
    let Some(account) = reader.resolve(address)? else {
        return Ok(MessagesAnswer::NoAccount);
    };
    let Some(mailbox) = reader.mailbox(&account.address, mailbox)? else {
        return Ok(MessagesAnswer::NoMailbox);
    };
    let Some(first) = after_uid.checked_add(1) else {
        return Ok(MessagesAnswer::Page(Vec::new()));
    };
    let page = reader.messages(mailbox.id, first..=u32::MAX, limit)?;
    let mut out = Vec::with_capacity(page.messages.len());
    for m in page.messages {
        let body = reader.blob(&m.blob)?.unwrap_or_default();
        let head = &body[..body.len().min(SUMMARY_HEAD_BYTES)];
        out.push(MessageInfo {
            uid: m.uid,
            size: m.size,
            internal_date: m.internal_date,
            flags: m.flags.iter().map(ToString::to_string).collect(),
            message_id: header_value(head, "message-id"),
            from: header_value(head, "from"),
            subject: header_value(head, "subject"),
        });
    }
    Ok(MessagesAnswer::Page(out))
}

/// The first field `name` (lower case) of the header at the start of `message`, unfolded and
/// trimmed, as (lossy) UTF-8 of at most [`SUMMARY_VALUE_CHARS`] characters.
fn header_value(message: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut found: Option<String> = None;
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let folded = line.starts_with([' ', '\t']);
        match (&mut found, folded) {
            (Some(value), true) => {
                value.push(' ');
                value.push_str(line.trim());
            }
            (Some(_), false) => break,
            (None, true) => {}
            (None, false) => {
                if let Some((field, value)) = line.split_once(':')
                    && field.trim_end().eq_ignore_ascii_case(name)
                {
                    found = Some(value.trim().to_owned());
                }
            }
        }
    }
    found.map(|v| v.chars().take(SUMMARY_VALUE_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_found_unfolded_and_bounded() {
        let message = b"Received: from x\r\n\tby y\r\nMessage-ID: <1@example.test>\r\nSUBJECT: a\r\n  long one\r\nFrom: A <a@example.test>\r\n\r\nSubject: in the body\r\n";
        assert_eq!(
            header_value(message, "message-id").as_deref(),
            Some("<1@example.test>")
        );
        assert_eq!(
            header_value(message, "subject").as_deref(),
            Some("a long one")
        );
        assert_eq!(
            header_value(message, "from").as_deref(),
            Some("A <a@example.test>")
        );
        assert_eq!(header_value(message, "to"), None);
        assert_eq!(
            header_value(b"Subject: x\n\nbody", "subject").as_deref(),
            Some("x")
        );
        let long = format!("Subject: {}\r\n\r\n", "y".repeat(500));
        assert_eq!(
            header_value(long.as_bytes(), "subject").map(|v| v.len()),
            Some(SUMMARY_VALUE_CHARS)
        );
        assert_eq!(header_value(b"\xff\xfe: \r\n", "subject"), None);
    }

    #[test]
    fn queries_round_trip() {
        for query in [
            Query::Recipient {
                address: "a@example.test".into(),
            },
            Query::Messages {
                address: "a@example.test".into(),
                mailbox: "INBOX".into(),
                after_uid: 7,
                limit: 10,
            },
        ] {
            assert_eq!(Query::decode(&query.encode()), Some(query));
        }
    }
}
