//! Outbound delivery: messages that submission sessions queued for remote recipients (see
//! [`tern_mail::queue`]) leave the cluster here.
//!
//! - [`worker`](spawn): on the nodes that act for the `outbound-delivery` task (every node
//!   when the assignment gives the task to none; for each task shard, the first of its nodes
//!   that gossip holds alive, so the task fails over when that node dies — see [`acts`]),
//!   every few seconds, for each shard this node
//!   holds a replica of: a linearizable read (read barrier through the leader) of the
//!   messages due, a claim of each through Raft (so one node at a time attempts a message,
//!   for a bounded lease), the attempt, and the recipients' outcomes through Raft again.
//! - [`route`]: the next hop — the configured relay, or MX lookup (hickory-resolver).
//! - [`client`]: the SMTP client of one attempt.
//! - [`dkim`]: the DKIM signature each attempt puts on the message (`TERN_DKIM_*`).
//! - [`dsn`]: the bounce (RFC 3464) a failed recipient gets its sender, stored in the
//!   sender's INBOX through the shard (a `Deliver` whose idempotency key comes from the queued
//!   message, so a retried bounce is stored once).
//!
//! A 2xx is final; a 5xx is final too (the recipient failed); a 4xx or no answer defers the
//! recipient to the next attempt, after 1, 5, 15 and 30 minutes, then every hour, then every
//! 2 and 4 hours; when the message's lifetime ends (5 days by default) the recipients still
//! pending fail. Once every recipient is final the message is removed, after its bounce when
//! any failed. The attempt is bounded well inside the claim's lease by this node's monotonic
//! clock, so a claim normally ends only by being released.
//!
//! Configuration (environment, next to [`crate::serve`]'s):
//!
//! | variable | meaning |
//! |---|---|
//! | `TERN_OUTBOUND_QUEUE_LIFETIME_SECONDS` | how long a message may wait (default 432000, 5 days) |
//! | `TERN_OUTBOUND_RETRY_SECONDS` | comma-separated waits after the 1st, 2nd, … failed attempt; the last repeats |
//! | `TERN_OUTBOUND_POLL_MS` | how often the queue is looked at (default 5000) |
//! | `TERN_OUTBOUND_NEXT_HOP` | `host:port`: every domain's mail to this address instead of its MX hosts |
//! | `TERN_RELAY_CREDENTIALS_DIR` | `username` and `password` files for AUTH at the configured relay |
//! | `TERN_RELAY_CA_FILE` | PEM roots the relay's certificate is checked against (default: the system's) |
//! | `TERN_DKIM_KEY_FILE`, `TERN_DKIM_SELECTOR`, `TERN_DKIM_DOMAIN` | DKIM signing: see [`dkim`] |
//!
//! Metrics (on `/metrics`, see [`OutboundStats`]): `tern_outbound_queue_messages` and
//! `tern_outbound_oldest_message_age_seconds` per shard, as this node's worker last read
//! them (only while it acts), and `tern_outbound_deliveries_total` by outcome.

pub mod client;
pub mod dkim;
pub mod dsn;
pub mod route;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use tern_crds::Assignment;
use tern_crds::agent_config::RelayConfig;
use tern_crds::common::TaskName;
use tern_mail::{Command, MailReader, QueuedMessage, RecipientOutcome, RecipientState, Reply};
use tokio::time::Instant;

use crate::mailstore::{retrying, unix_ms};
use crate::shards::{ShardHost, live_first};
use client::{Credentials, RcptResult, Timeouts, TlsPolicy, Transaction};
use route::{NextHops, RouteError};

/// How long a message may wait in the queue by default (as most MTAs: five days).
pub const DEFAULT_QUEUE_LIFETIME: Duration = Duration::from_secs(5 * 24 * 3600);

/// The waits after each failed attempt; the last one repeats.
pub const DEFAULT_RETRY: [Duration; 7] = [
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(4 * 3600),
];

/// Labels the bounce's idempotency key.
const BOUNCE_LABEL: &[u8] = b"tern outbound bounce v1\0";

/// Messages one shard's look at the queue picks at most, and attempts running at once.
const BATCH: usize = 32;
const CONCURRENT_ATTEMPTS: usize = 8;
/// Most queued messages one shard's count for the metrics reads; a longer queue shows as this.
const MAX_COUNTED: usize = 100_000;

/// How the worker runs.
#[derive(Clone)]
pub struct OutboundOptions {
    pub hops: Arc<dyn NextHops>,
    /// This node's name in EHLO and in bounces.
    pub hostname: String,
    pub poll: Duration,
    /// A claim's lease; an attempt is cut off at half of it.
    pub lease: Duration,
    pub retry: Vec<Duration>,
    pub timeouts: Timeouts,
    /// Signs each message before it is sent, when configured.
    pub dkim: Option<Arc<dkim::Signer>>,
}

impl OutboundOptions {
    /// From the configured relay and the environment (see the module's table).
    pub fn from_env(
        relay: Option<&RelayConfig>,
        hostname: String,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let hops: Arc<dyn NextHops> = match (var("TERN_OUTBOUND_NEXT_HOP"), relay) {
            (Some(addr), _) => Arc::new(route::Fixed(
                addr.parse()
                    .map_err(|e| format!("TERN_OUTBOUND_NEXT_HOP={addr}: {e}"))?,
            )),
            (None, Some(relay)) => Arc::new(relay_hops(relay, &var)?),
            (None, None) => Arc::new(route::Mx::from_system()?),
        };
        let retry = match var("TERN_OUTBOUND_RETRY_SECONDS") {
            Some(list) => list
                .split(',')
                .map(|s| s.trim().parse::<u64>().map(Duration::from_secs))
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    format!("TERN_OUTBOUND_RETRY_SECONDS={list}: expected seconds, comma-separated")
                })?,
            None => DEFAULT_RETRY.to_vec(),
        };
        let poll = match var("TERN_OUTBOUND_POLL_MS") {
            Some(ms) => Duration::from_millis(
                ms.parse()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| format!("TERN_OUTBOUND_POLL_MS={ms}: expected milliseconds"))?,
            ),
            None => Duration::from_secs(5),
        };
        let dkim = dkim::Signer::from_env(&var)?.map(Arc::new);
        if let Some(signer) = &dkim {
            tracing::info!(
                domain = signer.domain(),
                selector = signer.selector(),
                "outbound mail is DKIM-signed"
            );
        }
        Ok(Self {
            hops,
            hostname,
            poll,
            lease: Duration::from_secs(30 * 60),
            retry,
            timeouts: Timeouts::default(),
            dkim,
        })
    }

    /// The wait after the `attempts`-th failed attempt.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) as usize - 1).min(self.retry.len().saturating_sub(1));
        self.retry
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(60))
    }
}

/// `TERN_OUTBOUND_QUEUE_LIFETIME_SECONDS`, or the default.
pub fn queue_lifetime(var: impl Fn(&str) -> Option<String>) -> Result<Duration, String> {
    match var("TERN_OUTBOUND_QUEUE_LIFETIME_SECONDS") {
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("TERN_OUTBOUND_QUEUE_LIFETIME_SECONDS={s}: expected seconds")),
        None => Ok(DEFAULT_QUEUE_LIFETIME),
    }
}

fn relay_hops(
    relay: &RelayConfig,
    var: &impl Fn(&str) -> Option<String>,
) -> Result<route::Relay, String> {
    let port = u16::try_from(relay.port).map_err(|_| format!("relay port {}", relay.port))?;
    let credentials = if relay.has_credentials {
        let dir = var("TERN_RELAY_CREDENTIALS_DIR")
            .ok_or("the relay has credentials but TERN_RELAY_CREDENTIALS_DIR is not set")?;
        let read = |name: &str| {
            let path = std::path::Path::new(&dir).join(name);
            std::fs::read_to_string(&path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        Some(Credentials {
            username: read("username")?,
            password: read("password")?,
        })
    } else {
        None
    };
    // AUTH only ever over TLS: credentials make STARTTLS required whatever `starttls` says.
    let tls = if relay.starttls || credentials.is_some() {
        let mut roots = rustls::RootCertStore::empty();
        match var("TERN_RELAY_CA_FILE") {
            Some(path) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                for cert in CertificateDer::pem_file_iter(&path)
                    .map_err(|e| format!("TERN_RELAY_CA_FILE={path}: {e}"))?
                {
                    let cert = cert.map_err(|e| format!("TERN_RELAY_CA_FILE={path}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("TERN_RELAY_CA_FILE={path}: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let name = rustls::pki_types::ServerName::try_from(relay.host.clone())
            .map_err(|e| format!("relay host {}: {e}", relay.host))?;
        TlsPolicy::Required {
            config: client::verifying_config(roots),
            name,
        }
    } else {
        TlsPolicy::Never
    };
    Ok(route::Relay {
        host: relay.host.clone(),
        port,
        tls,
        credentials,
    })
}

/// Whether this node delivers: the task is given to nobody, or, for some task shard of
/// `outbound-delivery`, this node is the first of the shard's nodes that gossip holds alive
/// (`is_live`), so a standby takes over when the nodes before it are suspect or dead. Gossip
/// may disagree between nodes for a moment, and two nodes then act at once: harmless, since
/// each queued message is claimed through Raft before it is attempted.
pub fn acts(assignment: &Assignment, node: u64, is_live: impl Fn(u64) -> bool) -> bool {
    let mut tasks = assignment
        .tasks
        .iter()
        .filter(|t| t.task == TaskName::OutboundDelivery)
        .peekable();
    if tasks.peek().is_none() {
        return true;
    }
    tasks.any(|t| live_first(t.nodes.iter().copied(), &is_live).first() == Some(&node))
}

/// What the outbound worker counted, for `/metrics`.
#[derive(Debug, Default)]
pub struct OutboundStats {
    /// Per recipient attempt: accepted by the next hop.
    pub delivered: AtomicU64,
    /// Per recipient attempt: 4xx, no answer, or no next hop for now.
    pub deferred: AtomicU64,
    /// Per recipient attempt: 5xx, or given up at expiry.
    pub failed: AtomicU64,
    /// Bounces (delivery status notifications) stored for senders.
    pub bounced: AtomicU64,
    /// Per shard: queued messages and the oldest one's queue time (unix ms), as last read.
    queues: Mutex<BTreeMap<u32, (u64, Option<i64>)>>,
}

impl OutboundStats {
    /// Replaces the queue figures with this round's (shards no longer read disappear).
    pub fn set_queues(&self, queues: BTreeMap<u32, (u64, Option<i64>)>) {
        *self.queues.lock().unwrap_or_else(PoisonError::into_inner) = queues;
    }

    fn count(&self, outcome: &RecipientOutcome) {
        let counter = match outcome {
            RecipientOutcome::Delivered { .. } => &self.delivered,
            RecipientOutcome::Deferred { .. } => &self.deferred,
            RecipientOutcome::Failed { .. } => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures in Prometheus' text format; ages from `now` (unix ms).
    pub fn render(&self, out: &mut String, now: i64) {
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let name = "tern_outbound_queue_messages";
        let _ = writeln!(
            out,
            "# HELP {name} Messages in the outbound queue, by shard, as this node's delivery worker last read them.\n# TYPE {name} gauge"
        );
        for (shard, (depth, _)) in &queues {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {depth}");
        }
        let name = "tern_outbound_oldest_message_age_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Age of the oldest message in the outbound queue, by shard (0 when empty).\n# TYPE {name} gauge"
        );
        for (shard, (_, oldest)) in &queues {
            let age = oldest.map_or(0, |at| now.saturating_sub(at).max(0) / 1000);
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {age}");
        }
        let name = "tern_outbound_deliveries_total";
        let _ = writeln!(
            out,
            "# HELP {name} Outbound delivery attempts per recipient by outcome (delivered, deferred, failed), and bounces stored for senders (bounced).\n# TYPE {name} counter"
        );
        for (outcome, counter) in [
            ("delivered", &self.delivered),
            ("deferred", &self.deferred),
            ("failed", &self.failed),
            ("bounced", &self.bounced),
        ] {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

/// How many messages `reader`'s shard has queued (at most [`MAX_COUNTED`]) and the oldest
/// one's queue time.
fn queue_summary(reader: &MailReader<'_>) -> Result<(u64, Option<i64>), tern_store::StoreError> {
    let (mut count, mut oldest, mut after) = (0u64, None::<i64>, 0u64);
    loop {
        let page = reader.queued_messages(after, 1024)?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        for m in &page {
            count += 1;
            oldest = Some(oldest.map_or(m.queued_at, |o| o.min(m.queued_at)));
        }
        if page.len() < 1024 || count as usize >= MAX_COUNTED {
            break;
        }
    }
    Ok((count, oldest))
}

/// Starts the worker; it runs until the task is aborted.
pub fn spawn(
    host: Arc<ShardHost>,
    options: OutboundOptions,
    stats: Arc<OutboundStats>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let worker = Worker {
            host,
            options,
            stats,
        };
        let mut tick = tokio::time::interval(worker.options.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            worker.round().await;
        }
    })
}

struct Worker {
    host: Arc<ShardHost>,
    options: OutboundOptions,
    stats: Arc<OutboundStats>,
}

impl Worker {
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    async fn round(&self) {
        let Some(assignment) = self.host.assignment() else {
            return;
        };
        let me = self.host.node_id();
        if !acts(&assignment, me, |id| self.host.is_live(id)) {
            // Another node delivers: its figures count, not stale ones from here.
            self.stats.set_queues(BTreeMap::new());
            return;
        }
        let shards: Vec<u32> = assignment
            .shards
            .iter()
            .filter(|s| s.voters.contains(&me) || s.learners.contains(&me))
            .map(|s| s.id)
            .collect();
        let mut queues = BTreeMap::new();
        for shard in shards {
            let due = match self.due(shard).await {
                Ok((due, summary)) => {
                    queues.insert(shard, summary);
                    self.stats.set_queues(queues.clone());
                    due
                }
                Err(why) => {
                    tracing::debug!(shard, %why, "outbound queue not read");
                    continue;
                }
            };
            futures::stream::iter(due)
                .for_each_concurrent(CONCURRENT_ATTEMPTS, |message| self.attempt(shard, message))
                .await;
        }
    }

    /// The messages due on `shard`, read linearizably from the local replica, and the
    /// queue's length and oldest queue time.
    async fn due(&self, shard: u32) -> Result<(Vec<QueuedMessage>, (u64, Option<i64>)), String> {
        self.host
            .read_barrier(shard)
            .await
            .map_err(|e| e.to_string())?;
        let engine = self.host.engine().clone();
        let now = unix_ms();
        tokio::task::spawn_blocking(move || {
            let reader = MailReader::new(&*engine, shard);
            Ok::<_, tern_store::StoreError>((
                reader.due_outbound(now, BATCH)?,
                queue_summary(&reader)?,
            ))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    async fn body(&self, shard: u32, message: &QueuedMessage) -> Result<Vec<u8>, String> {
        self.host
            .read_barrier(shard)
            .await
            .map_err(|e| e.to_string())?;
        let engine = self.host.engine().clone();
        let blob = message.blob;
        tokio::task::spawn_blocking(move || MailReader::new(&*engine, shard).blob(&blob))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the body of queued message {} is missing", message.id))
    }

    async fn write(&self, shard: u32, command: &Command) -> Result<tern_mail::Outcome, String> {
        let bytes = command.encode();
        retrying(self.deadline(), || self.host.write(shard, bytes.clone()))
            .await
            .map(|answer| tern_mail::decode_response(&answer))
            .map_err(|e| e.0)
    }

    /// Claims `message`, attempts its pending recipients, records the outcomes, and
    /// finishes it (bounce, removal) once every recipient is final.
    async fn attempt(&self, shard: u32, message: QueuedMessage) {
        let id = message.id;
        let claim = Command::ClaimOutbound {
            id,
            node: self.host.node_id(),
            lease_ms: self.options.lease.as_millis() as u64,
            now: unix_ms(),
        };
        let started = Instant::now();
        let message = match self.write(shard, &claim).await {
            Ok(Ok(Reply::Outbound(message))) => message,
            Ok(Ok(other)) => {
                tracing::error!(shard, id, answer = ?other, "unexpected answer to a claim");
                return;
            }
            // Another node took it first, or it is gone: nothing to do.
            Ok(Err(e)) => {
                tracing::debug!(shard, id, error = %e, "queued message not claimed");
                return;
            }
            Err(why) => {
                tracing::warn!(shard, id, %why, "queued message not claimed");
                return;
            }
        };
        let Some(token) = message.claim.as_ref().map(|c| c.token) else {
            return;
        };
        let body = match self.body(shard, &message).await {
            Ok(body) => body,
            Err(why) => {
                tracing::warn!(shard, id, %why, "queued message not read; its claim runs out");
                return;
            }
        };
        let message = if message.is_final() {
            message
        } else {
            let now = unix_ms();
            let outcomes = if now >= message.expires_at {
                expired(&message, self.options.lease)
            } else {
                // Half the lease at most, by this node's own clock.
                let budget = (self.options.lease / 2).saturating_sub(started.elapsed());
                // Signed now, over the exact bytes sent (the bounce quotes the original).
                let wire: Cow<[u8]> = match &self.options.dkim {
                    Some(signer) => {
                        let (signed, outcome) = signer.sign(&body);
                        if let Err(why) = outcome {
                            tracing::debug!(shard, id, %why, "sent without a DKIM signature");
                        }
                        Cow::Owned(signed)
                    }
                    None => Cow::Borrowed(&body),
                };
                match tokio::time::timeout(budget, self.deliver(&message, &wire)).await {
                    Ok(outcomes) => outcomes,
                    Err(_) => pending(&message)
                        .map(|i| {
                            (
                                i,
                                RecipientOutcome::Deferred {
                                    reply: "delivery attempt timed out".into(),
                                },
                            )
                        })
                        .collect(),
                }
            };
            for (_, outcome) in &outcomes {
                self.stats.count(outcome);
            }
            let next = unix_ms().saturating_add(
                i64::try_from(self.options.backoff(message.attempts).as_millis())
                    .unwrap_or(i64::MAX),
            );
            let will_be_final = {
                let mut check = message.clone();
                for (i, outcome) in &outcomes {
                    if let Some(r) = check.recipients.get_mut(*i as usize)
                        && !r.state.is_final()
                        && !matches!(outcome, RecipientOutcome::Deferred { .. })
                    {
                        r.state = RecipientState::Delivered;
                    }
                }
                check.is_final()
            };
            let record = Command::RecordOutbound {
                id,
                token,
                outcomes,
                next_attempt: next,
                release: !will_be_final,
                now: unix_ms(),
            };
            match self.write(shard, &record).await {
                Ok(Ok(Reply::Outbound(message))) => message,
                other => {
                    tracing::warn!(shard, id, answer = ?other, "outcomes not recorded; the claim runs out and the message is tried again");
                    return;
                }
            }
        };
        for r in &message.recipients {
            tracing::info!(shard, id, recipient = %r.address, state = ?r.state, reply = r.last_reply.as_deref().unwrap_or(""), "outbound delivery");
        }
        if message.is_final() {
            self.finish(shard, &message, token, &body).await;
        }
    }

    /// Delivers the pending recipients: grouped by domain (all together through a relay),
    /// each group to its hosts in order until one answers.
    async fn deliver(&self, message: &QueuedMessage, body: &[u8]) -> Vec<(u32, RecipientOutcome)> {
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        for i in pending(message) {
            let address = &message.recipients[i as usize].address;
            let domain = if self.options.hops.single() {
                String::new()
            } else {
                address
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase())
                    .unwrap_or_default()
            };
            match groups.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, list)) => list.push(i),
                None => groups.push((domain, vec![i])),
            }
        }
        let mut out = Vec::new();
        for (domain, indexes) in groups {
            let recipients: Vec<String> = indexes
                .iter()
                .map(|&i| message.recipients[i as usize].address.clone())
                .collect();
            let results = self
                .deliver_group(message, &domain, &recipients, body)
                .await;
            out.extend(
                indexes
                    .into_iter()
                    .zip(results.into_iter().map(|r| match r {
                        RcptResult::Delivered(reply) => RecipientOutcome::Delivered { reply },
                        RcptResult::Failed(reply) => RecipientOutcome::Failed { reply },
                        RcptResult::Deferred(reply) => RecipientOutcome::Deferred { reply },
                    })),
            );
        }
        out
    }

    async fn deliver_group(
        &self,
        message: &QueuedMessage,
        domain: &str,
        recipients: &[String],
        body: &[u8],
    ) -> Vec<RcptResult> {
        let all = |r: RcptResult| vec![r; recipients.len()];
        let hops = match self.options.hops.hops(domain).await {
            Ok(hops) if !hops.is_empty() => hops,
            Ok(_) => return all(RcptResult::Failed(format!("{domain}: no mail host"))),
            Err(RouteError::Permanent(why)) => return all(RcptResult::Failed(why)),
            Err(RouteError::Temporary(why)) => return all(RcptResult::Deferred(why)),
        };
        let tx = Transaction {
            helo: &self.options.hostname,
            sender: &message.sender,
            recipients,
            message: body,
        };
        let mut last = String::from("no address to connect to");
        for hop in &hops {
            for addr in &hop.addrs {
                match client::deliver(
                    *addr,
                    &hop.host,
                    &hop.tls,
                    hop.credentials.as_ref(),
                    &tx,
                    self.options.timeouts,
                )
                .await
                {
                    Ok(results) => return results,
                    Err(client::AttemptError::Permanent(why)) => {
                        return all(RcptResult::Failed(format!("{}: {why}", hop.host)));
                    }
                    Err(client::AttemptError::Temporary(why)) => {
                        tracing::info!(host = %hop.host, %addr, %why, "next hop failed; trying the next one");
                        last = format!("{}: {why}", hop.host);
                    }
                }
            }
        }
        all(RcptResult::Deferred(last))
    }

    /// Every recipient is final: the bounce (when any failed) into the submitting account's
    /// INBOX, then the message goes.
    async fn finish(&self, shard: u32, message: &QueuedMessage, token: u64, body: &[u8]) {
        if !message.sender.is_empty()
            && let Some(dsn) = dsn::bounce(
                message,
                body,
                &self.options.hostname,
                jiff::Timestamp::now(),
            )
        {
            let now = unix_ms();
            let deliver = Command::Deliver {
                idempotency_key: bounce_key(shard, message),
                recipients: vec![message.account.clone()],
                mailbox: None,
                internal_date: now,
                flags: Vec::new(),
                body: dsn,
                now,
            };
            match self.write(shard, &deliver).await {
                Ok(Ok(Reply::Delivered(results))) => match results.first() {
                    // The account is gone or full: the bounce cannot be kept; the message
                    // still goes (a bounce is never bounced).
                    Some(Err(e)) => {
                        tracing::warn!(shard, id = message.id, error = %e, "bounce not stored");
                    }
                    _ => {
                        self.stats.bounced.fetch_add(1, Ordering::Relaxed);
                    }
                },
                other => {
                    tracing::warn!(shard, id = message.id, answer = ?other, "bounce not stored yet; tried again when the claim runs out");
                    return;
                }
            }
        }
        let remove = Command::RemoveOutbound {
            id: message.id,
            token,
        };
        if let Err(why) = self.write(shard, &remove).await {
            tracing::warn!(shard, id = message.id, %why, "finished message not removed yet");
        }
    }
}

fn pending(message: &QueuedMessage) -> impl Iterator<Item = u32> + '_ {
    message
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.state.is_final())
        .map(|(i, _)| i as u32)
}

fn expired(message: &QueuedMessage, _lease: Duration) -> Vec<(u32, RecipientOutcome)> {
    pending(message)
        .map(|i| {
            let last = message.recipients[i as usize]
                .last_reply
                .as_deref()
                .unwrap_or("never attempted");
            (
                i,
                RecipientOutcome::Failed {
                    reply: format!("given up: the message expired in the queue (last: {last})"),
                },
            )
        })
        .collect()
}

/// The bounce's idempotency key: from the shard, the queued id and its queue time, which
/// never name another message.
pub fn bounce_key(shard: u32, message: &QueuedMessage) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(BOUNCE_LABEL);
    ctx.update(&shard.to_be_bytes());
    ctx.update(&message.id.to_be_bytes());
    ctx.update(&message.queued_at.to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_at_its_cap() {
        let options = OutboundOptions {
            hops: Arc::new(route::Fixed("127.0.0.1:1".parse().unwrap())),
            hostname: "h".into(),
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            retry: DEFAULT_RETRY.to_vec(),
            timeouts: Timeouts::default(),
            dkim: None,
        };
        assert_eq!(options.backoff(0), Duration::from_secs(60));
        assert_eq!(options.backoff(1), Duration::from_secs(60));
        assert_eq!(options.backoff(2), Duration::from_secs(300));
        assert_eq!(options.backoff(7), Duration::from_secs(4 * 3600));
        assert_eq!(options.backoff(1000), Duration::from_secs(4 * 3600));
    }

    #[test]
    fn the_task_decides_who_delivers() {
        let mut assignment = Assignment::default();
        let all = |_: u64| true;
        assert!(acts(&assignment, 3, all), "nobody assigned: everyone");
        assignment
            .tasks
            .push(tern_crds::assignment::TaskAssignment {
                task: TaskName::OutboundDelivery,
                pool: "p".into(),
                shard: 1,
                nodes: vec![2, 3, 5],
            });
        assert!(acts(&assignment, 2, all));
        assert!(!acts(&assignment, 3, all), "a standby does not act");
        assert!(!acts(&assignment, 4, all));
        // Node 2 is suspect or dead: the next node of the task takes over, and only it.
        let without_2 = |id: u64| id != 2;
        assert!(acts(&assignment, 3, without_2));
        assert!(!acts(&assignment, 5, without_2));
        let only_5 = |id: u64| id == 5;
        assert!(acts(&assignment, 5, only_5));
        assert!(!acts(&assignment, 3, only_5));
        // Gossip doubts everyone: the task's own order decides.
        assert!(acts(&assignment, 2, |_| false));
        assert!(!acts(&assignment, 3, |_| false));
        // Another task shard that node 5 leads: it acts for that one.
        assignment
            .tasks
            .push(tern_crds::assignment::TaskAssignment {
                task: TaskName::OutboundDelivery,
                pool: "p".into(),
                shard: 2,
                nodes: vec![5, 2],
            });
        assert!(acts(&assignment, 5, all));
        assert!(acts(&assignment, 2, |id| id != 5));
    }

    #[test]
    fn metrics_show_queues_and_outcomes() {
        let stats = OutboundStats::default();
        stats.count(&RecipientOutcome::Delivered {
            reply: "250".into(),
        });
        stats.count(&RecipientOutcome::Deferred {
            reply: "451".into(),
        });
        stats.count(&RecipientOutcome::Deferred {
            reply: "451".into(),
        });
        stats.bounced.fetch_add(1, Ordering::Relaxed);
        stats.set_queues(BTreeMap::from([(1, (3, Some(10_000))), (2, (0, None))]));
        let mut out = String::new();
        stats.render(&mut out, 70_000);
        for line in [
            "tern_outbound_queue_messages{shard=\"1\"} 3",
            "tern_outbound_queue_messages{shard=\"2\"} 0",
            "tern_outbound_oldest_message_age_seconds{shard=\"1\"} 60",
            "tern_outbound_oldest_message_age_seconds{shard=\"2\"} 0",
            "tern_outbound_deliveries_total{outcome=\"delivered\"} 1",
            "tern_outbound_deliveries_total{outcome=\"deferred\"} 2",
            "tern_outbound_deliveries_total{outcome=\"failed\"} 0",
            "tern_outbound_deliveries_total{outcome=\"bounced\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        assert!(out.contains("# TYPE tern_outbound_queue_messages gauge"));
        assert!(out.contains("# TYPE tern_outbound_deliveries_total counter"));
        stats.set_queues(BTreeMap::new());
        let mut out = String::new();
        stats.render(&mut out, 0);
        assert!(
            !out.contains("shard="),
            "a node that stopped acting shows no queue: {out}"
        );
    }

    #[test]
    fn configuration_comes_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let o = OutboundOptions::from_env(
            None,
            "h".into(),
            env(&[
                ("TERN_OUTBOUND_NEXT_HOP", "127.0.0.1:2525"),
                ("TERN_OUTBOUND_RETRY_SECONDS", "2, 4"),
                ("TERN_OUTBOUND_POLL_MS", "250"),
            ]),
        )
        .unwrap();
        assert_eq!(
            o.retry,
            vec![Duration::from_secs(2), Duration::from_secs(4)]
        );
        assert_eq!(o.poll, Duration::from_millis(250));
        assert!(
            OutboundOptions::from_env(None, "h".into(), env(&[("TERN_OUTBOUND_NEXT_HOP", "nope")]))
                .is_err()
        );
        assert!(
            OutboundOptions::from_env(
                None,
                "h".into(),
                env(&[
                    ("TERN_OUTBOUND_NEXT_HOP", "127.0.0.1:1"),
                    ("TERN_OUTBOUND_RETRY_SECONDS", "x")
                ])
            )
            .is_err()
        );
        assert_eq!(queue_lifetime(env(&[])).unwrap(), DEFAULT_QUEUE_LIFETIME);
        assert_eq!(
            queue_lifetime(env(&[("TERN_OUTBOUND_QUEUE_LIFETIME_SECONDS", "30")])).unwrap(),
            Duration::from_secs(30)
        );
        assert!(queue_lifetime(env(&[("TERN_OUTBOUND_QUEUE_LIFETIME_SECONDS", "0")])).is_err());
        let relay = RelayConfig {
            host: "relay.example".into(),
            port: 587,
            starttls: false,
            has_credentials: true,
        };
        // Credentials without their directory: refused at start-up.
        assert!(OutboundOptions::from_env(Some(&relay), "h".into(), env(&[])).is_err());
    }
}
