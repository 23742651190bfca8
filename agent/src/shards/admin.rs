//! The recovery administrator's operations on the replicated directory.
//!
//! Domains live on every shard (each shard checks the domain of the accounts and aliases it
//! stores), so creating or deleting one is a write to each shard; accounts live on the shard
//! of their user group ([`Assignment::shard_of`]). Listing reads every shard, linearizably.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::ServerState;
use tern_crds::Assignment;
use tern_mail::{Command, MailError, decode_response};
use tern_raft::ShardId;

use super::query::{MAX_ACCOUNTS, MessagesAnswer, QueryAnswer};
use super::{Query, ShardError, ShardHost};
use crate::admin::{AccountInfo, AdminBackend, AdminError, DomainInfo, NodeState, ShardState};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn from_shard(error: ShardError) -> AdminError {
    match error {
        ShardError::Unavailable { .. } => AdminError::Unavailable(error.to_string()),
        _ => AdminError::Internal(error.to_string()),
    }
}

fn from_mail(error: MailError) -> AdminError {
    let text = error.to_string();
    match error {
        MailError::NoSuchDomain(_)
        | MailError::NoSuchAccount(_)
        | MailError::NoSuchAlias(_)
        | MailError::NoSuchMailbox(_) => AdminError::NotFound(text),
        MailError::DomainExists(_)
        | MailError::AccountExists(_)
        | MailError::AddressInUse(_)
        | MailError::DomainNotEmpty(_)
        | MailError::MailboxExists(_) => AdminError::Conflict(text),
        _ => AdminError::Invalid(text),
    }
}

async fn hash(password: String) -> Result<String, AdminError> {
    tokio::task::spawn_blocking(move || tern_mail::hash_password(&password))
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))
}

impl ShardHost {
    fn current(&self) -> Result<Arc<Assignment>, AdminError> {
        self.assignment().ok_or_else(|| {
            AdminError::Unavailable("this node does not follow an assignment yet".into())
        })
    }

    fn all_shards(&self) -> Result<Vec<ShardId>, AdminError> {
        Ok(self.current()?.shards.iter().map(|s| s.id).collect())
    }

    fn shard_of(&self, address: &str) -> Result<ShardId, AdminError> {
        self.current()?.shard_of(address).ok_or_else(|| {
            AdminError::Unavailable(format!("the assignment places no shard for {address}"))
        })
    }

    /// Runs one command on one shard: the mail model's outcome, or why it did not run.
    async fn command(
        &self,
        shard: ShardId,
        command: &Command,
    ) -> Result<Result<tern_mail::Reply, MailError>, AdminError> {
        let bytes = self
            .write(shard, command.encode())
            .await
            .map_err(from_shard)?;
        Ok(decode_response(&bytes))
    }

    /// Runs `command` on every shard; `tolerated` outcomes count as done on a shard (e.g.
    /// "exists" when creating: a retry after a partial failure completes the rest). Fails
    /// with `all_tolerated` when every shard answered a tolerated error.
    async fn on_every_shard(
        &self,
        command: Command,
        tolerated: impl Fn(&MailError) -> bool,
        all_tolerated: AdminError,
    ) -> Result<(), AdminError> {
        let shards = self.all_shards()?;
        let outcomes =
            futures::future::join_all(shards.iter().map(|shard| self.command(*shard, &command)))
                .await;
        let mut done = 0;
        let mut tolerated_count = 0;
        for outcome in outcomes {
            match outcome? {
                Ok(_) => done += 1,
                Err(e) if tolerated(&e) => tolerated_count += 1,
                Err(e) => return Err(from_mail(e)),
            }
        }
        if done == 0 && tolerated_count > 0 {
            return Err(all_tolerated);
        }
        Ok(())
    }

    async fn accounts_of(&self, domain: &str) -> Result<Vec<tern_mail::Account>, AdminError> {
        let mut all = Vec::new();
        for shard in self.all_shards()? {
            let mut after: Option<String> = None;
            loop {
                let query = Query::Accounts {
                    domain: domain.to_owned(),
                    after: after.clone(),
                    limit: MAX_ACCOUNTS as u32,
                };
                let QueryAnswer::Accounts(page) =
                    self.query(shard, &query).await.map_err(from_shard)?
                else {
                    return Err(AdminError::Internal("unexpected query answer".into()));
                };
                let full = page.len() >= MAX_ACCOUNTS;
                after = page.last().map(|a| a.address.clone());
                all.extend(page);
                if !full {
                    break;
                }
            }
        }
        all.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(all)
    }
}

impl AdminBackend for ShardHost {
    async fn create_domain(&self, domain: String) -> Result<(), AdminError> {
        let exists = AdminError::Conflict(format!("domain {domain:?} exists"));
        self.on_every_shard(
            Command::CreateDomain { domain, now: now() },
            |e| matches!(e, MailError::DomainExists(_)),
            exists,
        )
        .await
    }

    async fn list_domains(&self) -> Result<Vec<DomainInfo>, AdminError> {
        let mut domains: BTreeMap<String, i64> = BTreeMap::new();
        for shard in self.all_shards()? {
            let QueryAnswer::Domains(list) = self
                .query(shard, &Query::Domains)
                .await
                .map_err(from_shard)?
            else {
                return Err(AdminError::Internal("unexpected query answer".into()));
            };
            for d in list {
                let created = domains.entry(d.name).or_insert(d.created);
                *created = (*created).min(d.created);
            }
        }
        Ok(domains
            .into_iter()
            .map(|(name, created)| DomainInfo { name, created })
            .collect())
    }

    async fn delete_domain(&self, domain: String) -> Result<(), AdminError> {
        // Refuse up front when any shard still has accounts of the domain, so that no shard
        // deletes it while another refuses.
        if !self.accounts_of(&domain).await?.is_empty() {
            return Err(AdminError::Conflict(format!(
                "domain {domain:?} still has accounts"
            )));
        }
        let missing = AdminError::NotFound(format!("no such domain {domain:?}"));
        self.on_every_shard(
            Command::DeleteDomain { domain },
            |e| matches!(e, MailError::NoSuchDomain(_)),
            missing,
        )
        .await
    }

    async fn create_account(
        &self,
        address: String,
        password: String,
        quota_bytes: Option<u64>,
    ) -> Result<(), AdminError> {
        let shard = self.shard_of(&address)?;
        let command = Command::CreateAccount {
            address,
            password_hash: hash(password).await?,
            quota_bytes,
            now: now(),
        };
        self.command(shard, &command)
            .await?
            .map(|_| ())
            .map_err(from_mail)
    }

    async fn list_accounts(&self, domain: String) -> Result<Vec<AccountInfo>, AdminError> {
        Ok(self
            .accounts_of(&domain)
            .await?
            .into_iter()
            .map(|a| AccountInfo {
                address: a.address,
                quota_bytes: a.quota_bytes,
                used_bytes: a.used_bytes,
                aliases: a.aliases.into_iter().collect(),
            })
            .collect())
    }

    async fn delete_account(&self, address: String) -> Result<(), AdminError> {
        let shard = self.shard_of(&address)?;
        self.command(shard, &Command::DeleteAccount { address })
            .await?
            .map(|_| ())
            .map_err(from_mail)
    }

    async fn set_password(&self, address: String, password: String) -> Result<(), AdminError> {
        let shard = self.shard_of(&address)?;
        let command = Command::SetPassword {
            address,
            password_hash: hash(password).await?,
        };
        self.command(shard, &command)
            .await?
            .map(|_| ())
            .map_err(from_mail)
    }

    async fn list_messages(
        &self,
        address: String,
        mailbox: String,
        after_uid: u32,
        limit: u32,
    ) -> Result<Vec<crate::admin::MessageInfo>, AdminError> {
        let shard = self.shard_of(&address)?;
        let query = Query::Messages {
            address: address.clone(),
            mailbox: mailbox.clone(),
            after_uid,
            limit,
        };
        match self.query(shard, &query).await.map_err(from_shard)? {
            QueryAnswer::Messages(MessagesAnswer::Page(page)) => Ok(page),
            QueryAnswer::Messages(MessagesAnswer::NoAccount) => {
                Err(AdminError::NotFound(format!("no such account {address:?}")))
            }
            QueryAnswer::Messages(MessagesAnswer::NoMailbox) => Err(AdminError::NotFound(format!(
                "{address} has no mailbox {mailbox:?}"
            ))),
            _ => Err(AdminError::Internal("unexpected query answer".into())),
        }
    }

    async fn node_state(&self) -> Result<NodeState, AdminError> {
        let shards = self
            .shard_statuses()
            .into_iter()
            .map(|(shard, status)| {
                let m = self.metrics(shard);
                let role = match m.as_ref().map(|m| m.state) {
                    Some(ServerState::Leader) => "leader",
                    Some(ServerState::Follower) => "follower",
                    Some(ServerState::Learner) => "learner",
                    Some(ServerState::Candidate) => "candidate",
                    Some(ServerState::Shutdown) | None => "shutdown",
                };
                ShardState {
                    shard,
                    role: if status.abstaining {
                        format!("{role} (catching up)")
                    } else {
                        role.to_owned()
                    },
                    term: m.as_ref().map_or(0, |m| m.current_term),
                    leader: status.leader,
                    last_log_index: status.last_log_index,
                    // openraft's metrics carry no commit index; what is applied is committed.
                    committed: status.applied,
                    applied: status.applied,
                    voters: status.voters,
                    learners: status.learners,
                }
            })
            .collect();
        Ok(NodeState {
            node_id: self.node_id(),
            name: self.node_name().to_owned(),
            shards,
        })
    }
}
