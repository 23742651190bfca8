//! Linearizable reads of a shard from any node: answered by the local replica after a read
//! barrier, or by a replica on another node over RPC when this node holds none.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_mail::{Account, Domain, MailReader};
use tern_raft::{Node, Request, ShardId};

use super::{ShardError, ShardHost};
use crate::rpc::{CallError, Refused, RpcKind, RpcResponse};

/// The most accounts one query returns.
pub const MAX_ACCOUNTS: usize = 1000;

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
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryAnswer {
    Domains(Vec<Domain>),
    Accounts(Vec<Account>),
    Account(Option<Account>),
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

    /// Asks the shard's replicas on other nodes, one after another.
    async fn query_remote(&self, shard: ShardId, query: &Query) -> Result<Vec<u8>, ShardError> {
        let replicas: Vec<u64> = self
            .assignment()
            .and_then(|a| a.shards.iter().find(|s| s.id == shard).cloned())
            .map(|s| s.voters.into_iter().chain(s.learners).collect())
            .ok_or(ShardError::UnknownShard(shard))?;
        let mut last = String::from("no replica answered");
        for id in replicas {
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
                        bytes: query.encode(),
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
