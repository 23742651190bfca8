//! The change counter IDLE waits on, per account.
//!
//! A write through this node bumps the account's counter at once. Writes through other
//! nodes (mail delivered by SMTP on node A while the client idles on node B) reach this
//! node's replica by Raft, which tells nobody; so while at least one session of the account
//! waits, a poller reads the account's mailboxes every [`Changes::new`]'s `every` (after a
//! read barrier, like any read) and bumps the counter when a mailbox's UIDNEXT, HIGHESTMODSEQ
//! or message count moved, or a mailbox came or went. When the last session stops waiting,
//! the poller stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tern_mail::MailReader;
use tokio::sync::watch;

use super::backend::shard_of;
use crate::shards::ShardHost;

/// What a poll compares: each mailbox's id, UIDNEXT, HIGHESTMODSEQ and message count.
type Fingerprint = Vec<(u64, u32, u64, u32)>;

type Watchers = Arc<Mutex<HashMap<String, watch::Sender<u64>>>>;

/// The accounts' change counters, and their pollers.
pub struct Changes {
    host: Arc<ShardHost>,
    every: Duration,
    watchers: Watchers,
}

impl Changes {
    pub fn new(host: Arc<ShardHost>, every: Duration) -> Self {
        Self {
            host,
            every,
            watchers: Arc::default(),
        }
    }

    /// A receiver of `account`'s counter; starts the account's poller if none runs.
    pub fn subscribe(&self, account: &str) -> watch::Receiver<u64> {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = watchers.get(account) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(0);
        watchers.insert(account.to_owned(), sender.clone());
        // Outside a runtime nothing polls; this node's own writes still bump the counter.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(poll(
                self.host.clone(),
                account.to_owned(),
                sender,
                self.watchers.clone(),
                self.every,
            ));
        }
        receiver
    }

    /// A write through this node changed `account`'s mail.
    pub fn bump(&self, account: &str) {
        if let Some(sender) = self
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(account)
        {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Accounts with a running poller.
    pub fn watched(&self) -> usize {
        self.watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Polls `account` until nobody holds a receiver of `sender`. The first fingerprint bumps
/// the counter once: a session that began waiting just before it re-reads its mailbox, so
/// nothing committed between that session's last read and the poller's first is missed.
async fn poll(
    host: Arc<ShardHost>,
    account: String,
    sender: watch::Sender<u64>,
    watchers: Watchers,
    every: Duration,
) {
    let mut last: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        {
            let mut watchers = watchers.lock().unwrap_or_else(PoisonError::into_inner);
            if sender.receiver_count() == 0 {
                if watchers
                    .get(&account)
                    .is_some_and(|s| s.same_channel(&sender))
                {
                    watchers.remove(&account);
                }
                return;
            }
        }
        match fingerprint(&host, &account).await {
            Ok(now) => {
                if last.as_ref() != Some(&now) {
                    sender.send_modify(|n| *n = n.wrapping_add(1));
                }
                last = Some(now);
            }
            Err(why) => tracing::debug!(%account, %why, "IMAP change poll failed"),
        }
    }
}

async fn fingerprint(host: &Arc<ShardHost>, account: &str) -> Result<Fingerprint, String> {
    let shard = shard_of(host, account).map_err(|e| e.to_string())?;
    host.read_barrier(shard).await.map_err(|e| e.to_string())?;
    let engine = host.engine().clone();
    let account = account.to_owned();
    tokio::task::spawn_blocking(move || {
        MailReader::new(engine.as_ref(), shard)
            .list_mailboxes(&account)
            .map(|boxes| {
                boxes
                    .iter()
                    .map(|m| (m.id, m.uidnext, m.highestmodseq, m.messages))
                    .collect()
            })
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
