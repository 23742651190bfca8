//! Session proxying: a node that holds no replica of an account's shard relays the
//! account's IMAP sessions to one that does.
//!
//! # On the node the client connected to
//!
//! [`RoutingBackend`] is the IMAP backend of a node: the store's ([`StoreBackend`]) for
//! accounts whose shard it holds a replica of, and a relay ([`Relay`]) for the others. The
//! login is checked here as always (a linearizable query to the shard's replicas); then, when
//! this node runs no replica of the account's shard, tern-imap relays the session
//! ([`tern_imap::relay`]): this node opens a connection to a node that holds one, and only
//! once that node has accepted the session does the client get its login `OK`. From then on
//! the client's bytes and the other node's pass through unchanged, so the client sees one
//! ordinary session: the same capabilities, tagged answers, literals, IDLE.
//!
//! Which node: the shard's replicas in the assignment (voters and learners), those gossip
//! holds alive and only those while there are any (a node gossip holds suspect or dead is
//! tried only when no replica is alive: gossip may be wrong, and then nothing is lost by
//! asking). Among them, the order starts at a place that the account's address picks, so
//! sessions of one account meet on one node (they share its change poller) and different
//! accounts spread over the replicas. A node that cannot be connected to, or refuses, is
//! counted and the next one is tried; when none accepts, the login answers
//! `NO [UNAVAILABLE]` and the client may log in again later.
//!
//! # The connection between the two nodes
//!
//! A connection of its own to the other node's agent RPC port, with the RPC's mutual TLS
//! (certificates of the cluster CA on both sides, so only cluster members can open one). Its
//! first frame is [`RpcKind::ImapSession`](crate::rpc::RpcKind::ImapSession) with an
//! [`ImapHello`]: the account that logged in, the client's address (for the serving node's
//! logs), whether the client's connection is encrypted, and this node's name. The serving
//! node checks that it serves IMAP and runs a replica of the account's shard, answers, and
//! from then on the connection is a raw byte pipe into a tern-imap session that starts
//! authenticated for the account ([`RelayTarget`], [`tern_imap::Server::serve_relayed`]).
//! No password crosses it: the account is trusted because the peer is a cluster member, as
//! the Raft traffic on the same port is.
//!
//! # When the serving node is lost
//!
//! The client gets `* BYE [UNAVAILABLE] ...` and its connection closes, and a client that
//! reconnects (to this node or any other) is relayed to another live replica: sessions are
//! not moved while they run. The loss is noticed when the connection breaks (the node died:
//! its kernel closes the connection, without TLS's clean close) or, for a node that vanished
//! without closing anything (power loss, a cut network), when gossip has held it suspect or
//! dead for [`LOST_AFTER`].

use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use tern_crds::ShardAssignment;
use tern_imap::{
    Account, AppendItem, AuthVerdict, Backend, BackendError, BackendResult, FlagOp, MailboxInfo,
    MailboxStatus, MessageMeta, RelayRequest, RelayStream, Server, StoreOutcome,
};
use tern_raft::{NodeId, ShardId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::StoreBackend;
use super::backend::shard_of;
use crate::rpc::{self, ImapHello, SessionHandover};
use crate::shards::ShardHost;

/// How long connecting to one replica and having the session accepted may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long gossip must hold the serving node suspect or dead before its sessions end.
pub const LOST_AFTER: Duration = Duration::from_secs(3);
/// How often a relayed session asks gossip about the serving node.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What session proxying counted, for `/metrics`.
#[derive(Debug, Default)]
pub struct ImapStats {
    /// Sessions this node relayed to another one.
    pub relayed: AtomicU64,
    /// Attempts to open a relayed session on another node that failed (that node could not
    /// be reached, or refused); the next replica was tried.
    pub relay_connect_failures: AtomicU64,
    /// Sessions other nodes relayed to this one.
    pub relays_served: AtomicU64,
}

impl ImapStats {
    /// The counters in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let counters = [
            (
                "tern_imap_relayed_sessions_total",
                "IMAP sessions relayed to a node that holds the account's shard.",
                &self.relayed,
            ),
            (
                "tern_imap_relay_connect_failures_total",
                "Attempts to open a relayed IMAP session on another node that failed.",
                &self.relay_connect_failures,
            ),
            (
                "tern_imap_relays_served_total",
                "IMAP sessions other nodes relayed to this one.",
                &self.relays_served,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
    }
}

/// The nodes to relay `account`'s sessions on `shard` to, in the order to try them: the
/// shard's replicas other than `this`, only the live ones while there are any, starting at
/// a place the account picks.
pub fn relay_targets(
    shard: &ShardAssignment,
    this: NodeId,
    account: &str,
    is_live: impl Fn(NodeId) -> bool,
) -> Vec<NodeId> {
    let mut replicas: Vec<NodeId> = shard
        .voters
        .iter()
        .chain(&shard.learners)
        .copied()
        .filter(|id| *id != this)
        .collect();
    replicas.sort_unstable();
    replicas.dedup();
    let live: Vec<NodeId> = replicas.iter().copied().filter(|id| is_live(*id)).collect();
    let mut targets = if live.is_empty() { replicas } else { live };
    if !targets.is_empty() {
        let start = (fnv1a(account.as_bytes()) % targets.len() as u64) as usize;
        targets.rotate_left(start);
    }
    targets
}

/// FNV-1a: a stable hash, the same on every node and in every version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Opens relayed sessions on the nodes that hold an account's shard.
pub struct Relay {
    host: Arc<ShardHost>,
    tls: Arc<ClientConfig>,
    stats: Arc<ImapStats>,
}

impl Relay {
    /// `tls`: the agent's RPC client configuration (mutual TLS with the cluster CA).
    pub fn new(host: Arc<ShardHost>, tls: Arc<ClientConfig>, stats: Arc<ImapStats>) -> Self {
        Self { host, tls, stats }
    }

    pub fn host(&self) -> &Arc<ShardHost> {
        &self.host
    }

    pub fn stats(&self) -> &Arc<ImapStats> {
        &self.stats
    }

    /// Whether this node runs a replica of the account's shard (or cannot tell: then it
    /// serves the session itself, and answers `NO [UNAVAILABLE]` where the store cannot).
    fn serves(&self, account: &Account) -> bool {
        match shard_of(&self.host, &account.name) {
            Ok(shard) => self.host.metrics(shard).is_some(),
            Err(_) => true,
        }
    }

    async fn open(&self, request: &RelayRequest) -> BackendResult<Box<dyn RelayStream>> {
        let account = &request.account.name;
        let shard = shard_of(&self.host, account)?;
        let placement = self
            .host
            .assignment()
            .and_then(|a| a.shards.iter().find(|s| s.id == shard).cloned())
            .ok_or_else(|| BackendError::Unavailable(format!("shard {shard} is not assigned")))?;
        let targets = relay_targets(&placement, self.host.node_id(), account, |id| {
            self.host.is_live(id)
        });
        let hello = ImapHello {
            account: account.clone(),
            client: request.client,
            tls: request.tls,
            via: self.host.node_name().to_owned(),
        };
        let mut last = format!("no other node holds shard {shard}");
        for node in targets {
            let Some(rpc_addr) = self.host.address_of(node) else {
                self.stats
                    .relay_connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                last = format!("no address known for node {node}");
                continue;
            };
            match rpc::open_imap_session(
                &self.tls,
                &rpc_addr,
                shard,
                hello.clone(),
                CONNECT_TIMEOUT,
            )
            .await
            {
                Ok(stream) => {
                    self.stats.relayed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(account, shard, node, %rpc_addr, client = %request.client, "IMAP session relayed");
                    return Ok(Box::new(Watched::new(stream, self.host.clone(), node)));
                }
                Err(e) => {
                    self.stats
                        .relay_connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(account, shard, node, %rpc_addr, error = %e, "cannot relay the IMAP session to this node, trying the next");
                    last = format!("node {node}: {e}");
                }
            }
        }
        Err(BackendError::Unavailable(format!(
            "no replica of shard {shard} took the session: {last}"
        )))
    }
}

/// The stream to the serving node; a read fails once gossip has held that node suspect or
/// dead for [`LOST_AFTER`] (a node that vanished without closing its connections).
struct Watched {
    inner: rpc::Stream,
    host: Arc<ShardHost>,
    node: NodeId,
    check: Interval,
    doubted_since: Option<Instant>,
}

impl Watched {
    fn new(inner: rpc::Stream, host: Arc<ShardHost>, node: NodeId) -> Self {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            inner,
            host,
            node,
            check,
            doubted_since: None,
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.check.poll_tick(cx).is_ready() {
            if this.host.is_live(this.node) {
                this.doubted_since = None;
                continue;
            }
            let since = *this.doubted_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= LOST_AFTER {
                return Poll::Ready(Err(io::Error::other(format!(
                    "gossip holds node {} suspect or dead",
                    this.node
                ))));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A node's IMAP backend: the store for the accounts whose shard it holds, a relay to
/// another node for the others.
pub struct RoutingBackend {
    store: StoreBackend,
    relay: Option<Relay>,
}

impl RoutingBackend {
    /// Without `relay`, every session is served here.
    pub fn new(store: StoreBackend, relay: Option<Relay>) -> Self {
        Self { store, relay }
    }

    /// The store's backend.
    pub fn store(&self) -> &StoreBackend {
        &self.store
    }

    /// The relay, when sessions may be relayed.
    pub fn relaying(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }
}

impl Backend for RoutingBackend {
    async fn authenticate(&self, user: &str, password: &str) -> AuthVerdict {
        self.store.authenticate(user, password).await
    }
    async fn list(&self, account: &Account) -> BackendResult<Vec<MailboxInfo>> {
        self.store.list(account).await
    }
    async fn status(&self, account: &Account, mailbox: &str) -> BackendResult<MailboxStatus> {
        self.store.status(account, mailbox).await
    }
    async fn quota(&self, account: &Account) -> BackendResult<tern_imap::Quota> {
        self.store.quota(account).await
    }
    async fn create(&self, account: &Account, mailbox: &str) -> BackendResult<()> {
        self.store.create(account, mailbox).await
    }
    async fn delete(&self, account: &Account, mailbox: &str) -> BackendResult<()> {
        self.store.delete(account, mailbox).await
    }
    async fn rename(&self, account: &Account, from: &str, to: &str) -> BackendResult<()> {
        self.store.rename(account, from, to).await
    }
    async fn subscribe(&self, account: &Account, mailbox: &str, on: bool) -> BackendResult<()> {
        self.store.subscribe(account, mailbox, on).await
    }
    async fn subscriptions(&self, account: &Account) -> BackendResult<Vec<String>> {
        self.store.subscriptions(account).await
    }
    fn supports_append_many(&self) -> bool {
        self.store.supports_append_many()
    }
    async fn append_many(
        &self,
        account: &Account,
        mailbox: &str,
        messages: Vec<AppendItem>,
    ) -> BackendResult<(u32, Vec<u32>)> {
        self.store.append_many(account, mailbox, messages).await
    }
    async fn messages(
        &self,
        account: &Account,
        mailbox: &str,
        uids: RangeInclusive<u32>,
    ) -> BackendResult<Vec<MessageMeta>> {
        self.store.messages(account, mailbox, uids).await
    }
    async fn message(
        &self,
        account: &Account,
        mailbox: &str,
        uid: u32,
    ) -> BackendResult<Option<Vec<u8>>> {
        self.store.message(account, mailbox, uid).await
    }
    async fn bodies(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
    ) -> BackendResult<Vec<Option<Vec<u8>>>> {
        self.store.bodies(account, mailbox, uids).await
    }
    async fn changes_after(
        &self,
        account: &Account,
        mailbox: &str,
        after: (u64, u32),
        limit: usize,
    ) -> BackendResult<Option<tern_imap::backend::ChangePage>> {
        self.store
            .changes_after(account, mailbox, after, limit)
            .await
    }
    async fn append(
        &self,
        account: &Account,
        mailbox: &str,
        flags: Vec<String>,
        internal_date: i64,
        message: Vec<u8>,
    ) -> BackendResult<(u32, u32)> {
        self.store
            .append(account, mailbox, flags, internal_date, message)
            .await
    }
    async fn store(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> BackendResult<StoreOutcome> {
        self.store
            .store(account, mailbox, uids, op, flags, unchanged_since)
            .await
    }
    async fn expunge(
        &self,
        account: &Account,
        mailbox: &str,
        uids: &[u32],
    ) -> BackendResult<Vec<u32>> {
        self.store.expunge(account, mailbox, uids).await
    }
    async fn copy(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> BackendResult<(u32, Vec<(u32, u32)>)> {
        self.store.copy(account, from, uids, to).await
    }
    async fn move_messages(
        &self,
        account: &Account,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> BackendResult<(u32, Vec<(u32, u32)>)> {
        self.store.move_messages(account, from, uids, to).await
    }
    fn changes(&self, account: &Account) -> watch::Receiver<u64> {
        self.store.changes(account)
    }

    fn serves(&self, account: &Account) -> bool {
        self.relay.as_ref().is_none_or(|r| r.serves(account))
    }

    async fn relay(&self, request: &RelayRequest) -> BackendResult<Box<dyn RelayStream>> {
        match &self.relay {
            Some(relay) => relay.open(request).await,
            None => Err(BackendError::Unavailable(
                "this node relays no sessions".into(),
            )),
        }
    }
}

/// The serving end: takes the sessions other nodes relay here (registered with the RPC
/// server as its [`SessionHandover`]).
pub struct RelayTarget {
    server: Server<RoutingBackend>,
    host: Arc<ShardHost>,
    stats: Arc<ImapStats>,
}

impl RelayTarget {
    /// `server`: a tern-imap server without a listener of its own, for relayed sessions.
    pub fn new(
        server: Server<RoutingBackend>,
        host: Arc<ShardHost>,
        stats: Arc<ImapStats>,
    ) -> Self {
        Self {
            server,
            host,
            stats,
        }
    }
}

impl SessionHandover for RelayTarget {
    fn accept(&self, shard: ShardId, hello: &ImapHello) -> Result<(), String> {
        if self.host.metrics(shard).is_none() {
            return Err(format!("this node holds no replica of shard {shard}"));
        }
        match shard_of(&self.host, &hello.account) {
            Ok(mine) if mine == shard => Ok(()),
            Ok(mine) => Err(format!(
                "the assignment here places the account on shard {mine}, not {shard}"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    fn serve(
        &self,
        stream: Box<dyn RelayStream>,
        hello: ImapHello,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.stats.relays_served.fetch_add(1, Ordering::Relaxed);
        tracing::info!(account = %hello.account, via = %hello.via, %peer, client = %hello.client, "serving a relayed IMAP session");
        Box::pin(self.server.serve_relayed(
            stream,
            Account {
                name: hello.account,
            },
            hello.client,
            hello.tls,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(voters: &[NodeId], learners: &[NodeId]) -> ShardAssignment {
        ShardAssignment {
            id: 1,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
        }
    }

    #[test]
    fn targets_are_the_other_replicas_voters_and_learners() {
        let all = |_| true;
        let mut t = relay_targets(&shard(&[1, 2, 3], &[5]), 4, "a@example.test", all);
        t.sort_unstable();
        assert_eq!(t, [1, 2, 3, 5]);
        // This node is never its own target (a replica relays nothing, but the assignment
        // may list it while its replica is not running yet).
        let mut t = relay_targets(&shard(&[1, 2, 3], &[]), 2, "a@example.test", all);
        t.sort_unstable();
        assert_eq!(t, [1, 3]);
        assert!(relay_targets(&shard(&[4], &[]), 4, "a@example.test", all).is_empty());
    }

    #[test]
    fn doubted_replicas_are_left_out_while_one_is_alive() {
        let live = |id: NodeId| id == 3;
        for account in ["a@example.test", "b@example.test", "c@example.test"] {
            assert_eq!(
                relay_targets(&shard(&[1, 2, 3], &[]), 4, account, live),
                [3]
            );
        }
        // Nobody alive: everyone is worth a try (gossip may be wrong).
        let mut t = relay_targets(&shard(&[1, 2, 3], &[]), 4, "a@example.test", |_| false);
        t.sort_unstable();
        assert_eq!(t, [1, 2, 3]);
    }

    #[test]
    fn an_account_always_starts_at_the_same_replica_and_accounts_spread() {
        let s = shard(&[1, 2, 3], &[]);
        let first = |account: &str| relay_targets(&s, 4, account, |_| true)[0];
        for account in ["a@example.test", "reader@example.test"] {
            let t = relay_targets(&s, 4, account, |_| true);
            assert_eq!(t.len(), 3);
            assert_eq!(t, relay_targets(&s, 4, account, |_| true));
            // The order is a rotation: the others follow, each once.
            let mut sorted = t.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [1, 2, 3]);
        }
        let starts: std::collections::BTreeSet<NodeId> = (0..60)
            .map(|i| first(&format!("user{i}@example.test")))
            .collect();
        assert_eq!(starts.len(), 3, "accounts spread over every replica");
        // When the first choice is doubted, the account moves to one of the others.
        let account = "reader@example.test";
        let preferred = first(account);
        let t = relay_targets(&s, 4, account, |id| id != preferred);
        assert_eq!(t.len(), 2);
        assert!(!t.contains(&preferred));
    }

    #[test]
    fn the_hash_is_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
