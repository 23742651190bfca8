//! The shards a node holds: one Raft group per shard the assignment gives it, over one storage
//! engine, reached by peers through the RPC server.
//!
//! [`ShardHost`] follows the assignment ([`ShardHost::reconcile`], called whenever the
//! followed assignment may have changed and periodically):
//!
//! - **Starting a replica.** A shard the assignment names this node for (voter or learner)
//!   gets its Raft group. A replica that finds its storage for the shard empty *abstains*: it
//!   grants no votes and does not campaign, until it knows whether the shard is new. It asks
//!   the assignment's voters for their [`ShardStatus`]: when every one of them answers and
//!   none holds more than the initial membership (no leader has ever appended an entry),
//!   the shard is new — one voter (chosen by shard id) initialises it with the assigned
//!   voters if nobody has, and everyone votes. When any of them holds data, the replica
//!   is a newcomer or lost its volume: it keeps abstaining until it has applied as far as the
//!   shard's leader had when asked. A replica whose volume was wiped therefore never helps
//!   elect a leader that lacks entries it had acknowledged before losing them.
//! - **Membership.** On each shard it leads, the node takes the next step of
//!   [`membership::next_step`] towards the assignment (add learner → caught up → promote →
//!   remove), one at a time, each through openraft's joint consensus.
//! - **Leaving.** A replica the assignment no longer names keeps running until a leader of
//!   the shard reports a committed membership without it; then it stops and deletes the
//!   shard's data.
//!
//! Writes ([`ShardHost::write`]) go to the shard's leader: proposed locally when this node
//! leads, forwarded over RPC otherwise. The leader groups the commands that arrive while
//! earlier entries are being committed into one entry ([`crate::replica`]). Reads
//! ([`ShardHost::read_barrier`]) are linearizable on any replica: the leader confirms its
//! leadership with a quorum and names a log index (ReadIndex), the replica waits until it
//! has applied it. Both are bounded in time: a node cut off from the shard's majority
//! answers [`ShardError::Unavailable`] — a temporary error — never success and never a hang.

pub mod admin;
pub mod membership;
mod peers;
mod query;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tern_crds::{Assignment, ShardAssignment};
use tern_raft::{Node, NodeId, Request, ShardId, ShardRaft, Storage};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::replica::{self, MailApp};
use crate::rpc::{
    CallError, Network, Refused, RpcKind, RpcResponse, ShardService, ShardStatus, refusal,
    shard_status,
};

pub use peers::Peers;
pub use query::Query;

use membership::{Step, Target, View};

/// How far behind the leader's log a learner may be and still be promoted.
const PROMOTION_LAG: u64 = 64;
/// Entries proposed at once per shard; further commands wait and join the next group.
/// openraft 0.9 appends one entry per log flush on the leader, so more entries in flight only
/// queue inside it, while commands that wait here share the next entry. Every entry has a
/// cost of its own, about that of two or three deliveries (a log fsync on each replica, append
/// RPCs, openraft's bookkeeping), so fewer, larger entries leave more CPU for mail. Measured with
/// `tern-bench store` at 256 clients: 1 groups 42 commands an entry and delivers a median
/// 1.07× what 2 does (26 an entry); 4 groups 14 and delivers 0.87×. At 16 clients 1 and 2
/// deliver the same.
const MAX_IN_FLIGHT: usize = 1;
/// Bytes of commands one entry carries at most (one command may exceed it alone).
const MAX_GROUP_BYTES: usize = 4 << 20;
/// How long one status request to a peer may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a membership step may take before the leader tries again.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// openraft's configuration for every shard.
///
/// Heartbeats every 50 ms. A follower that has seen a leader waits openraft's leader lease
/// (the maximum election timeout) plus its own election timeout (150–300 ms) after the last
/// heartbeat before it campaigns: 450–600 ms. So a dead leader is replaced, and the new one
/// commits, within about 0.7 s, while a leader that is merely slow for a few heartbeats keeps
/// its place.
pub fn raft_config(cluster: &str) -> Config {
    Config {
        cluster_name: cluster.to_owned(),
        ..raft_config_with_snapshots(cluster, 20_000)
    }
}

/// [`raft_config`] with a snapshot every `logs` entries (tests use small numbers to make
/// replicas catch up by snapshot).
pub fn raft_config_with_snapshots(cluster: &str, logs: u64) -> Config {
    Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        // Entries carry groups of whole messages: keep appends well below the frame limit.
        max_payload_entries: 32,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(logs),
        max_in_snapshot_log_to_keep: (logs / 20).max(1),
        ..Config::default()
    }
}

/// Why a shard could not carry out a read or write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// Temporary: no leader reachable, no quorum, or no answer in time. A write that failed
    /// this way may still commit; retrying with the same idempotency key is safe.
    #[error("shard {shard} is temporarily unavailable: {why}")]
    Unavailable { shard: ShardId, why: String },
    /// The assignment has no such shard.
    #[error("shard {0} is not in the assignment")]
    UnknownShard(ShardId),
    /// A read needs a local replica, and this node holds none of the shard.
    #[error("this node holds no replica of shard {0}")]
    NotHere(ShardId),
    /// The command could not be applied (the state machine failed); not retryable here.
    #[error("shard {shard} failed: {why}")]
    Failed { shard: ShardId, why: String },
}

impl ShardError {
    fn unavailable(shard: ShardId, why: impl Into<String>) -> Self {
        Self::Unavailable {
            shard,
            why: why.into(),
        }
    }
}

/// Counters, for metrics.
#[derive(Debug, Default)]
pub struct HostStats {
    pub writes: AtomicU64,
    pub writes_forwarded: AtomicU64,
    pub writes_unavailable: AtomicU64,
    pub reads: AtomicU64,
    pub reads_unavailable: AtomicU64,
    /// Raft entries proposed, and the commands they carried.
    pub entries: AtomicU64,
    pub commands: AtomicU64,
    pub membership_steps: AtomicU64,
    pub shards_initialized: AtomicU64,
    pub shards_left: AtomicU64,
}

type Reply = oneshot::Sender<Result<Vec<u8>, Refused>>;

/// A command waiting to be proposed, with the time its caller stops waiting.
type Proposal = (Vec<u8>, Instant, Reply);

/// Milliseconds since the Unix epoch (deadlines of forwarded writes).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One shard's replica on this node.
struct Replica {
    raft: ShardRaft,
    /// Started empty while peers may hold data: grants no votes and does not campaign.
    abstaining: AtomicBool,
    /// A membership step is under way.
    changing: Arc<AtomicBool>,
    proposals: mpsc::Sender<Proposal>,
}

/// What this node needs to run its shards.
pub struct HostOptions {
    pub node_id: NodeId,
    pub node_name: String,
    pub raft: Arc<Config>,
    /// The longest a write or read waits before it fails as temporarily unavailable.
    pub timeout: Duration,
    pub peers: Peers,
    /// Where abstention markers are kept (the data volume); `None` keeps them in memory only.
    pub marker_dir: Option<std::path::PathBuf>,
}

/// Whether gossip holds a node alive (suspect, dead and left nodes are not).
pub type Liveness = Arc<dyn Fn(NodeId) -> bool + Send + Sync>;

/// `ids` with the nodes gossip holds alive first, each group in its given order. The others
/// stay at the end: gossip may be wrong, and when nobody else answers they are still worth
/// asking.
pub fn live_first(
    ids: impl IntoIterator<Item = NodeId>,
    is_live: impl Fn(NodeId) -> bool,
) -> Vec<NodeId> {
    let (mut live, doubted): (Vec<NodeId>, Vec<NodeId>) =
        ids.into_iter().partition(|id| is_live(*id));
    live.extend(doubted);
    live
}

/// The shards this node holds.
pub struct ShardHost {
    node_id: NodeId,
    node_name: String,
    storage: Storage,
    app: Arc<MailApp>,
    raft_config: Arc<Config>,
    network: Network,
    peers: Peers,
    timeout: Duration,
    marker_dir: Option<std::path::PathBuf>,
    replicas: RwLock<BTreeMap<ShardId, Arc<Replica>>>,
    assignment: RwLock<Option<Arc<Assignment>>>,
    /// The leader last seen answering for a shard this node does not hold.
    hints: Mutex<BTreeMap<ShardId, NodeId>>,
    /// Serialises reconciliation.
    reconciling: tokio::sync::Mutex<()>,
    /// Gossip's opinion of a node; until it is set every node counts as live.
    liveness: OnceLock<Liveness>,
    pub stats: HostStats,
    /// What this node's RPC server counted.
    pub rpc_stats: Arc<crate::rpc::RpcStats>,
}

impl ShardHost {
    pub fn new(options: HostOptions, storage: Storage, network: Network) -> Arc<Self> {
        Arc::new(Self {
            node_id: options.node_id,
            node_name: options.node_name,
            storage,
            app: Arc::new(MailApp::default()),
            raft_config: options.raft,
            network,
            peers: options.peers,
            timeout: options.timeout,
            marker_dir: options.marker_dir,
            replicas: RwLock::default(),
            assignment: RwLock::default(),
            hints: Mutex::default(),
            reconciling: tokio::sync::Mutex::new(()),
            liveness: OnceLock::new(),
            stats: HostStats::default(),
            rpc_stats: Arc::default(),
        })
    }

    /// Lets routing skip nodes gossip holds suspect or dead: writes and reads forwarded to a
    /// shard's leader, and queries sent to a shard's replicas, try live nodes first.
    pub fn set_liveness(&self, liveness: Liveness) {
        let _ = self.liveness.set(liveness);
    }

    pub(crate) fn is_live(&self, id: NodeId) -> bool {
        id == self.node_id || self.liveness.get().is_none_or(|live| live(id))
    }

    fn abstain_marker(&self, shard: ShardId) -> Option<std::path::PathBuf> {
        self.marker_dir
            .as_ref()
            .map(|d| d.join(format!("shard-{shard}.abstaining")))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn engine(&self) -> &Arc<dyn tern_store::Engine> {
        self.storage.engine()
    }

    /// The assignment last reconciled.
    pub fn assignment(&self) -> Option<Arc<Assignment>> {
        self.assignment
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The shards this node runs, with each replica's view.
    pub fn shard_statuses(&self) -> Vec<(ShardId, ShardStatus)> {
        self.replicas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(shard, r)| {
                (
                    *shard,
                    shard_status(&r.raft, r.abstaining.load(Ordering::Relaxed)),
                )
            })
            .collect()
    }

    /// Raft metrics of a shard this node runs.
    pub fn metrics(&self, shard: ShardId) -> Option<tern_raft::typ::RaftMetrics> {
        self.replica(shard)
            .map(|r| r.raft.metrics().borrow().clone())
    }

    fn replica(&self, shard: ShardId) -> Option<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&shard)
            .cloned()
    }

    /// Stops every shard's Raft group.
    pub async fn shutdown(&self) {
        let replicas: Vec<Arc<Replica>> = std::mem::take(
            &mut *self
                .replicas
                .write()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_values()
        .collect();
        for r in replicas {
            let _ = r.raft.shutdown().await;
        }
    }

    // ---------------------------------------------------------------- following

    /// Brings the shards in line with `assignment`: starts, settles, changes membership,
    /// leaves. Each call does what it can now and returns; call it again (periodically) to
    /// continue.
    pub async fn reconcile(self: &Arc<Self>, assignment: Arc<Assignment>) {
        let _one = self.reconciling.lock().await;
        self.peers.refresh();
        *self
            .assignment
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(assignment.clone());
        let me = self.node_id;
        let wanted: BTreeMap<ShardId, &ShardAssignment> = assignment
            .shards
            .iter()
            .filter(|s| s.voters.contains(&me) || s.learners.contains(&me))
            .map(|s| (s.id, s))
            .collect();
        for shard in wanted.keys() {
            if self.replica(*shard).is_none()
                && let Err(error) = self.start(*shard).await
            {
                tracing::error!(shard, %error, "cannot start the shard's Raft group");
            }
        }
        let running: Vec<(ShardId, Arc<Replica>)> = self
            .replicas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(s, r)| (*s, r.clone()))
            .collect();
        for (shard, replica) in running {
            let assigned = assignment.shards.iter().find(|s| s.id == shard);
            if replica.abstaining.load(Ordering::Relaxed) {
                if let Some(sa) = assigned {
                    self.settle(shard, &replica, sa).await;
                }
                continue;
            }
            let leads = replica.raft.metrics().borrow().state == ServerState::Leader;
            if leads {
                // Also when this node is no longer assigned: it removes itself.
                if let Some(sa) = assigned {
                    self.step_membership(shard, &replica, sa);
                }
            } else if !wanted.contains_key(&shard) {
                self.try_leave(shard, &replica, assigned).await;
            }
        }
    }

    /// Follows the assignment the agent follows, forever.
    pub async fn follow(self: Arc<Self>, followed: crate::follow::Shared, every: Duration) {
        loop {
            let current = followed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .current
                .clone();
            if let Some(a) = current {
                self.reconcile(Arc::new(a)).await;
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn start(self: &Arc<Self>, shard: ShardId) -> Result<(), String> {
        let raft = tern_raft::new_raft(
            self.node_id,
            shard,
            self.raft_config.clone(),
            &self.storage,
            self.app.clone(),
            self.network.for_shard(shard),
        )
        .await
        .map_err(|e| e.to_string())?;
        // The metrics describe the stored state only once the Raft core runs; ask the core.
        let (term, committed) = raft
            .with_raft_state(|st| (st.vote_ref().leader_id().term, st.committed))
            .await
            .map_err(|e| format!("reading the replica's state: {e}"))?;
        let empty = term == 0 && committed.is_none();
        // Abstention outlives restarts: a replica that started empty and restarts before it
        // has caught up holds a vote and part of the log, but still not what it may have
        // acknowledged before it lost its volume.
        let marker = self.abstain_marker(shard);
        let marked = marker.as_ref().is_some_and(|m| m.exists());
        if empty
            && !marked
            && let Some(m) = &marker
        {
            durable_create(m).map_err(|e| format!("{}: {e}", m.display()))?;
        }
        let abstain = empty || marked;
        if abstain {
            raft.runtime_config().elect(false);
        }
        let (tx, rx) = mpsc::channel(4 * replica::MAX_GROUP);
        tokio::spawn(propose(raft.clone(), rx, self.timeout, self.clone()));
        tracing::info!(shard, empty, abstain, "shard replica started");
        self.replicas
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                shard,
                Arc::new(Replica {
                    raft,
                    abstaining: AtomicBool::new(abstain),
                    changing: Arc::default(),
                    proposals: tx,
                }),
            );
        Ok(())
    }

    /// Decides whether an empty replica may vote: the shard is new (then the lowest voter
    /// initialises it), or the replica has caught up with the shard's leader.
    async fn settle(&self, shard: ShardId, replica: &Replica, sa: &ShardAssignment) {
        let others: Vec<NodeId> = sa
            .voters
            .iter()
            .copied()
            .filter(|id| *id != self.node_id)
            .collect();
        let answers =
            futures::future::join_all(others.iter().map(|id| self.status_of(shard, *id))).await;
        let local = replica.raft.metrics().borrow().clone();
        let all_answered = answers.iter().all(Option::is_some);
        // No replica holds more than the initial membership (index 0): no leader has ever
        // appended anything, so no replica can have acknowledged an entry it lost since.
        let unused = all_answered
            && answers
                .iter()
                .flatten()
                .all(|s| s.last_log_index.is_none_or(|i| i == 0));
        let settled = if unused {
            // A new shard. One voter initialises it and so becomes its first leader; which
            // one rotates with the shard id, spreading the shards' leaders over the nodes.
            let anyone_initialized = answers.iter().flatten().any(|s| s.initialized);
            if !anyone_initialized && initializer(shard, &sa.voters) == Some(self.node_id) {
                let members: BTreeMap<NodeId, Node> = sa
                    .voters
                    .iter()
                    .filter_map(|id| {
                        Some((
                            *id,
                            Node {
                                rpc_addr: self.address_of(*id)?,
                            },
                        ))
                    })
                    .collect();
                if members.len() != sa.voters.len() {
                    tracing::warn!(
                        shard,
                        "addresses of some voters are unknown; not initialising yet"
                    );
                    return;
                }
                match replica.raft.initialize(members).await {
                    Ok(()) => {
                        self.stats
                            .shards_initialized
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(shard, voters = ?sa.voters, "initialised a new shard");
                    }
                    // E.g. this replica initialised the shard before a restart; no leader
                    // has appended anything since, so voting is safe all the same.
                    Err(error) => tracing::warn!(shard, %error, "initialising the shard"),
                }
            }
            true
        } else {
            // An existing shard: vote only once as far as a leader elected without us.
            answers
                .iter()
                .flatten()
                .find(|s| s.is_leader)
                .is_some_and(|leader| {
                    // The leader's log holds every committed entry; its applied index may not
                    // yet (just elected, or restarted).
                    local.current_leader == leader.leader
                        && leader.last_log_index.is_some()
                        && local.last_applied.map(|l| l.index) >= leader.last_log_index
                })
        };
        if settled {
            if let Some(m) = self.abstain_marker(shard)
                && let Err(error) = durable_remove(&m)
            {
                tracing::error!(shard, %error, "removing the abstention marker; still abstaining");
                return;
            }
            tracing::info!(shard, "replica settled; it votes from now on");
            replica.abstaining.store(false, Ordering::Relaxed);
            replica.raft.runtime_config().elect(true);
        }
    }

    /// On the leader: the next membership change the assignment implies, in the background.
    fn step_membership(&self, shard: ShardId, replica: &Arc<Replica>, sa: &ShardAssignment) {
        if replica.changing.swap(true, Ordering::AcqRel) {
            return;
        }
        let m = replica.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let view = View {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
            last_log_index: m.last_log_index,
            matched: m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
                .unwrap_or_default(),
        };
        let target = Target {
            voters: sa.voters.iter().copied().collect(),
            learners: sa.learners.iter().copied().collect(),
        };
        let Some(step) = membership::next_step(&view, &target, PROMOTION_LAG) else {
            replica.changing.store(false, Ordering::Release);
            return;
        };
        let node = match step {
            Step::AddLearner(id) => match self.address_of(id) {
                Some(rpc_addr) => Some(Node { rpc_addr }),
                None => {
                    tracing::warn!(shard, node = id, "no address for the node; cannot add it");
                    replica.changing.store(false, Ordering::Release);
                    return;
                }
            },
            _ => None,
        };
        self.stats.membership_steps.fetch_add(1, Ordering::Relaxed);
        tracing::info!(shard, ?step, "membership step");
        let raft = replica.raft.clone();
        let changing = replica.changing.clone();
        tokio::spawn(async move {
            let one = |id: NodeId| BTreeSet::from([id]);
            let change = async {
                match step {
                    Step::AddLearner(id) => {
                        let node = node.expect("an address was found above");
                        raft.add_learner(id, node, false).await
                    }
                    Step::Promote(id) => {
                        raft.change_membership(ChangeMembers::AddVoterIds(one(id)), false)
                            .await
                    }
                    Step::Demote(id) => {
                        raft.change_membership(ChangeMembers::RemoveVoters(one(id)), true)
                            .await
                    }
                    Step::RemoveVoter(id) => {
                        raft.change_membership(ChangeMembers::RemoveVoters(one(id)), false)
                            .await
                    }
                    Step::RemoveLearner(id) => {
                        raft.change_membership(ChangeMembers::RemoveNodes(one(id)), false)
                            .await
                    }
                }
            };
            match tokio::time::timeout(STEP_TIMEOUT, change).await {
                Ok(Ok(_)) => tracing::info!(shard, ?step, "membership step committed"),
                Ok(Err(error)) => tracing::warn!(shard, ?step, %error, "membership step failed"),
                Err(_) => tracing::warn!(shard, ?step, "membership step not committed in time"),
            }
            changing.store(false, Ordering::Release);
        });
    }

    /// Leaves a shard the assignment no longer names this node for, once a leader reports a
    /// committed membership without it: stops the replica and deletes the shard's data.
    async fn try_leave(
        &self,
        shard: ShardId,
        replica: &Replica,
        assigned: Option<&ShardAssignment>,
    ) {
        let local = replica.raft.metrics().borrow().clone();
        let mut asked: BTreeSet<NodeId> =
            local.membership_config.membership().voter_ids().collect();
        if let Some(sa) = assigned {
            asked.extend(sa.voters.iter().copied());
        }
        asked.remove(&self.node_id);
        let answers =
            futures::future::join_all(asked.iter().map(|id| self.status_of(shard, *id))).await;
        let gone = answers.iter().flatten().any(|s| {
            s.is_leader
                && s.committed_membership
                && !s.voters.contains(&self.node_id)
                && !s.learners.contains(&self.node_id)
        });
        if !gone {
            return;
        }
        let Some(replica) = self
            .replicas
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&shard)
        else {
            return;
        };
        if let Err(error) = replica.raft.shutdown().await {
            tracing::warn!(shard, %error, "stopping the shard's Raft group");
        }
        drop(replica);
        let storage = self.storage.clone();
        let keyspaces = tern_raft::Application::keyspaces(&*self.app);
        match tokio::task::spawn_blocking(move || storage.delete_shard(shard, keyspaces)).await {
            Ok(Ok(())) => {
                if let Some(m) = self.abstain_marker(shard) {
                    let _ = durable_remove(&m);
                }
                self.stats.shards_left.fetch_add(1, Ordering::Relaxed);
                tracing::info!(shard, "left the shard and deleted its data");
            }
            Ok(Err(error)) => tracing::error!(shard, %error, "deleting the shard's data"),
            Err(error) => tracing::error!(shard, %error, "deleting the shard's data"),
        }
    }

    /// The RPC address of a node, by id: from a local replica's membership, else from the
    /// assignment's node names and [`Peers`].
    pub(crate) fn address_of(&self, id: NodeId) -> Option<String> {
        let assignment = self.assignment()?;
        let name = assignment
            .nodes
            .iter()
            .find(|(_, n)| n.id == id)
            .map(|(name, _)| name.clone())?;
        self.peers.address(&name)
    }

    async fn status_of(&self, shard: ShardId, id: NodeId) -> Option<ShardStatus> {
        let node = Node {
            rpc_addr: self.address_of(id)?,
        };
        match self
            .network
            .for_shard(shard)
            .request(id, &node, RpcKind::Status, STATUS_TIMEOUT)
            .await
        {
            Ok(RpcResponse::Status(status)) => Some(status),
            // A peer that does not run the shard (yet, or its start failed) may hold its data
            // all the same: it has not answered.
            _ => None,
        }
    }

    // ---------------------------------------------------------------- writes and reads

    /// Applies one encoded mail command on `shard` through its leader; returns the encoded
    /// outcome once the command is committed (durable on a majority) and applied.
    pub async fn write(&self, shard: ShardId, command: Vec<u8>) -> Result<Vec<u8>, ShardError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let result = self.ask_leader(shard, Op::Write(command)).await;
        if matches!(result, Err(ShardError::Unavailable { .. })) {
            self.stats
                .writes_unavailable
                .fetch_add(1, Ordering::Relaxed);
        }
        match result? {
            Answer::Written(bytes) => Ok(bytes),
            Answer::Index(_) => unreachable!("a write is answered with its outcome"),
        }
    }

    /// Waits until this node's replica of `shard` has applied everything committed before
    /// the call (ReadIndex through the leader); the caller then reads the engine.
    pub async fn read_barrier(&self, shard: ShardId) -> Result<(), ShardError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let replica = self.replica(shard).ok_or(ShardError::NotHere(shard))?;
        let deadline = Instant::now() + self.timeout;
        let result = async {
            let Answer::Index(index) = self.ask_leader(shard, Op::ReadIndex).await? else {
                unreachable!("a read index is answered with an index")
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            replica
                .raft
                .wait(Some(remaining))
                .applied_index_at_least(index, "read index")
                .await
                .map(|_| ())
                .map_err(|e| {
                    ShardError::unavailable(shard, format!("catching up to the read index: {e}"))
                })
        }
        .await;
        if matches!(result, Err(ShardError::Unavailable { .. })) {
            self.stats.reads_unavailable.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Carries out `op` on the shard's leader: locally when this node leads, else over RPC,
    /// following "not the leader" answers, within the host's timeout.
    async fn ask_leader(&self, shard: ShardId, op: Op) -> Result<Answer, ShardError> {
        let deadline = Instant::now() + self.timeout;
        let voters: Vec<NodeId> = live_first(
            self.assignment()
                .and_then(|a| a.shards.iter().find(|s| s.id == shard).cloned())
                .ok_or(ShardError::UnknownShard(shard))?
                .voters,
            |id| self.is_live(id),
        );
        if voters.is_empty() {
            return Err(ShardError::unavailable(
                shard,
                "the assignment names no voters",
            ));
        }
        let mut hint: Option<NodeId> = None;
        let mut next_voter = 0usize;
        loop {
            let local = self.replica(shard);
            // A leader remembered here that gossip holds suspect or dead is not waited for:
            // the live voters answer, or name the leader they know — a name from a voter's
            // answer is followed whatever gossip says, since Raft's heartbeats back it.
            let remembered = || {
                local
                    .as_ref()
                    .and_then(|r| r.raft.metrics().borrow().current_leader)
                    .or_else(|| {
                        self.hints
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(&shard)
                            .copied()
                    })
                    .filter(|id| self.is_live(*id))
            };
            let known = hint.or_else(remembered);
            let target = known.unwrap_or_else(|| {
                next_voter += 1;
                voters[(next_voter - 1) % voters.len()]
            });
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ShardError::unavailable(
                    shard,
                    format!("no leader could {} within {:?}", op.verb(), self.timeout),
                ));
            }
            let outcome = if target == self.node_id {
                match &local {
                    Some(replica) => self.on_leader(shard, replica, op.clone(), deadline).await,
                    None => Err(Refused::NotLeader { leader: None }),
                }
            } else {
                if matches!(op, Op::Write(_)) {
                    self.stats.writes_forwarded.fetch_add(1, Ordering::Relaxed);
                }
                self.forward(shard, target, &op, deadline).await?
            };
            match outcome {
                Ok(answer) => {
                    if target != self.node_id {
                        self.hints
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(shard, target);
                    }
                    return Ok(answer);
                }
                Err(Refused::NotLeader { leader }) => {
                    self.hints
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&shard);
                    hint = leader.filter(|l| *l != target);
                    if hint.is_none() {
                        // An election may be under way.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                Err(Refused::Unavailable(why)) => return Err(ShardError::unavailable(shard, why)),
                Err(Refused::Failed(why)) => return Err(ShardError::Failed { shard, why }),
            }
        }
    }

    /// Sends `op` to `target`. `Ok(Err(NotLeader))` also stands for "try someone else".
    async fn forward(
        &self,
        shard: ShardId,
        target: NodeId,
        op: &Op,
        deadline: Instant,
    ) -> Result<Result<Answer, Refused>, ShardError> {
        let ttl = deadline.saturating_duration_since(Instant::now());
        let Some(rpc_addr) = self.address_of(target) else {
            return Ok(Err(Refused::NotLeader { leader: None }));
        };
        let kind = match op {
            Op::Write(bytes) => RpcKind::Write(
                Request::new(bytes.clone()),
                unix_ms() + ttl.as_millis() as u64,
            ),
            Op::ReadIndex => RpcKind::ReadIndex,
        };
        let response = self
            .network
            .for_shard(shard)
            .request(target, &Node { rpc_addr }, kind, ttl)
            .await;
        match response {
            Ok(RpcResponse::Write(r)) => Ok(r.map(|r| Answer::Written(r.bytes))),
            Ok(RpcResponse::ReadIndex(r)) => Ok(r.map(Answer::Index)),
            Ok(RpcResponse::UnknownShard(_)) => Ok(Err(Refused::NotLeader { leader: None })),
            Ok(other) => Err(ShardError::Failed {
                shard,
                why: format!("unexpected answer from node {target}: {other:?}"),
            }),
            Err(CallError::Unreachable(e)) => {
                tracing::debug!(shard, target, error = %e, "leader unreachable");
                tokio::time::sleep(Duration::from_millis(25)).await;
                Ok(Err(Refused::NotLeader { leader: None }))
            }
            // The request may have been carried out: only the caller may retry a write
            // (with its idempotency key).
            Err(e @ (CallError::Timeout(_) | CallError::Network(_))) => Err(
                ShardError::unavailable(shard, format!("no answer from node {target}: {e}")),
            ),
            Err(CallError::TooLarge) => Err(ShardError::Failed {
                shard,
                why: "the command exceeds the RPC frame limit".into(),
            }),
        }
    }

    /// Carries out `op` as the shard's leader.
    async fn on_leader(
        &self,
        shard: ShardId,
        replica: &Replica,
        op: Op,
        deadline: Instant,
    ) -> Result<Answer, Refused> {
        if Instant::now() >= deadline {
            return Err(Refused::Unavailable(
                "the request arrived after its sender stopped waiting".into(),
            ));
        }
        let m = replica.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(Refused::NotLeader {
                leader: m.current_leader.filter(|l| *l != self.node_id),
            });
        }
        // A leader cut off from its followers keeps believing it leads until it hears of a
        // newer term; refuse at once instead of letting every request run into the timeout.
        let silence = self.raft_config.election_timeout_max * 2;
        if let Some(ms) = m.millis_since_quorum_ack
            && ms > silence
        {
            return Err(Refused::Unavailable(format!(
                "the leader of shard {shard} has not heard from a quorum for {ms} ms"
            )));
        }
        match op {
            Op::Write(command) => {
                let (tx, rx) = oneshot::channel();
                match tokio::time::timeout_at(
                    deadline,
                    replica.proposals.send((command, deadline, tx)),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        return Err(Refused::Unavailable("the shard is stopping".into()));
                    }
                    Err(_) => {
                        return Err(Refused::Unavailable(
                            "too many writes waiting for the shard's leader".into(),
                        ));
                    }
                }
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(result)) => result.map(Answer::Written),
                    Ok(Err(_)) => Err(Refused::Unavailable("the shard is stopping".into())),
                    Err(_) => Err(Refused::Unavailable(
                        "not committed in time; it may still be: retry with the same idempotency key"
                            .into(),
                    )),
                }
            }
            Op::ReadIndex => {
                match tokio::time::timeout_at(deadline, replica.raft.get_read_log_id()).await {
                    Ok(Ok((read, _applied))) => Ok(Answer::Index(read.map(|l| l.index))),
                    Ok(Err(e)) => Err(refusal(&e)),
                    Err(_) => Err(Refused::Unavailable(format!(
                        "the leader of shard {shard} could not confirm its leadership with a quorum within {:?}",
                        self.timeout
                    ))),
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(Vec<u8>),
    ReadIndex,
}

impl Op {
    fn verb(&self) -> &'static str {
        match self {
            Op::Write(_) => "commit the write",
            Op::ReadIndex => "confirm a read",
        }
    }
}

enum Answer {
    Written(Vec<u8>),
    Index(Option<u64>),
}

/// Creates `path` (empty) and makes it and its directory entry durable.
fn durable_create(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    sync_parent(path)
}

/// Removes `path` if it exists, durably.
fn durable_remove(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_parent(path: &std::path::Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The voter that initialises a new shard: the assigned voters in ascending order, taken in
/// turn by shard id.
fn initializer(shard: ShardId, voters: &[NodeId]) -> Option<NodeId> {
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[(shard as usize).saturating_sub(1) % sorted.len()])
}

/// The leader's proposer for one shard: groups the commands that are waiting into one entry,
/// with up to [`MAX_IN_FLIGHT`] entries being committed at once.
async fn propose(
    raft: ShardRaft,
    mut commands: mpsc::Receiver<Proposal>,
    timeout: Duration,
    host: Arc<ShardHost>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = commands.recv().await else {
            return;
        };
        let mut bytes = 0;
        let mut group = Vec::new();
        let mut next = Some(first);
        while let Some((command, deadline, reply)) = next.take() {
            if Instant::now() >= deadline {
                // Its caller has given up (and answered its client): never propose it.
                let _ = reply.send(Err(Refused::Unavailable(
                    "not proposed before its deadline".into(),
                )));
            } else {
                bytes += command.len();
                group.push((command, reply));
            }
            if group.len() < replica::MAX_GROUP && bytes < MAX_GROUP_BYTES {
                next = commands.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue;
        }
        host.stats.entries.fetch_add(1, Ordering::Relaxed);
        host.stats
            .commands
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        let raft = raft.clone();
        tokio::spawn(async move {
            let (group, replies): (Vec<Vec<u8>>, Vec<Reply>) = group.into_iter().unzip();
            let entry = Request {
                bytes: replica::encode_group(&group).into(),
            };
            drop(group);
            let result = tokio::time::timeout(timeout, raft.client_write(entry)).await;
            drop(permit);
            let outcomes: Result<Vec<Vec<u8>>, Refused> = match result {
                Ok(Ok(written)) => match replica::decode_group(&written.data.bytes) {
                    Some(outcomes) if outcomes.len() == replies.len() => {
                        Ok(outcomes.into_iter().map(<[u8]>::to_vec).collect())
                    }
                    _ => Err(Refused::Failed(
                        "the state machine did not answer every command of the entry".into(),
                    )),
                },
                Ok(Err(e)) => Err(refusal(&e)),
                Err(_) => Err(Refused::Unavailable(format!(
                    "not committed within {timeout:?}; it may still be: retry with the same idempotency key"
                ))),
            };
            match outcomes {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(refused) => {
                    for reply in replies {
                        let _ = reply.send(Err(refused.clone()));
                    }
                }
            }
        });
    }
}

impl ShardService for ShardHost {
    fn raft(&self, shard: ShardId) -> Option<ShardRaft> {
        self.replica(shard).map(|r| r.raft.clone())
    }

    fn abstaining(&self, shard: ShardId) -> bool {
        self.replica(shard)
            .is_some_and(|r| r.abstaining.load(Ordering::Relaxed))
    }

    fn handle(
        &self,
        shard: ShardId,
        raft: ShardRaft,
        kind: RpcKind,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = RpcResponse> + Send + '_>> {
        Box::pin(async move {
            let Some(replica) = self.replica(shard) else {
                return RpcResponse::UnknownShard(shard);
            };
            match kind {
                RpcKind::Write(request, deadline_ms) => RpcResponse::Write(
                    self.on_leader(
                        shard,
                        &replica,
                        Op::Write(request.bytes.into()),
                        Instant::now()
                            + Duration::from_millis(deadline_ms.saturating_sub(unix_ms())),
                    )
                    .await
                    .map(|a| match a {
                        Answer::Written(bytes) => tern_raft::Response { bytes },
                        Answer::Index(_) => unreachable!(),
                    }),
                ),
                RpcKind::ReadIndex => RpcResponse::ReadIndex(
                    self.on_leader(
                        shard,
                        &replica,
                        Op::ReadIndex,
                        Instant::now() + self.timeout,
                    )
                    .await
                    .map(|a| match a {
                        Answer::Index(index) => index,
                        Answer::Written(_) => unreachable!(),
                    }),
                ),
                RpcKind::Status => RpcResponse::Status(shard_status(
                    &raft,
                    replica.abstaining.load(Ordering::Relaxed),
                )),
                RpcKind::Query(request) => {
                    RpcResponse::Query(match Query::decode(&request.bytes) {
                        Some(query) => self
                            .query_local(shard, &query)
                            .await
                            .map(|bytes| tern_raft::Response { bytes })
                            .map_err(|e| match e {
                                ShardError::Unavailable { why, .. } => Refused::Unavailable(why),
                                other => Refused::Failed(other.to_string()),
                            }),
                        None => Err(Refused::Failed("malformed query".into())),
                    })
                }
                other => unreachable!("Raft RPCs are dispatched by the server: {other:?}"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_shards_are_initialised_by_voters_in_turn() {
        assert_eq!(initializer(1, &[3, 1, 2]), Some(1));
        assert_eq!(initializer(2, &[3, 1, 2]), Some(2));
        assert_eq!(initializer(3, &[3, 1, 2]), Some(3));
        assert_eq!(initializer(4, &[3, 1, 2]), Some(1));
        assert_eq!(initializer(7, &[5]), Some(5));
        assert_eq!(initializer(1, &[]), None);
    }

    #[test]
    fn live_nodes_are_asked_first_and_doubted_ones_last() {
        let live = |id: NodeId| id != 2 && id != 4;
        assert_eq!(live_first([1, 2, 3, 4, 5], live), [1, 3, 5, 2, 4]);
        assert_eq!(live_first([2, 4], live), [2, 4]);
        assert_eq!(live_first([], live), Vec::<NodeId>::new());
    }
}
