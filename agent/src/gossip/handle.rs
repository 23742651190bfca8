//! [`Gossip`]: what the rest of the agent sees of membership — a cheap, cloneable handle on
//! the view the runtime publishes.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tern_crds::mail_cluster::{GossipState, MemberShard, MemberStatus, RaftRole};
use tern_gossip::keyring::Keyring;
use tern_gossip::message::{NodeId, State};
use tokio::sync::{mpsc, oneshot, watch};

use super::metrics::Metrics;
use crate::follow::Shared;

/// A member's gossip state, as served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl MemberState {
    pub const ALL: [MemberState; 4] = [Self::Alive, Self::Suspect, Self::Dead, Self::Left];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Dead => "dead",
            Self::Left => "left",
        }
    }

    /// The same state in the MailCluster status vocabulary.
    pub fn gossip_state(self) -> GossipState {
        match self {
            Self::Alive => GossipState::Alive,
            Self::Suspect => GossipState::Suspect,
            Self::Dead => GossipState::Dead,
            Self::Left => GossipState::Left,
        }
    }
}

impl From<State> for MemberState {
    fn from(s: State) -> Self {
        match s {
            State::Alive => Self::Alive,
            State::Suspect => Self::Suspect,
            State::Dead => Self::Dead,
            State::Left => Self::Left,
        }
    }
}

/// A shard a member holds and its Raft role there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardView {
    pub shard: u32,
    pub role: RaftRole,
}

/// One member as this node sees it. Name, pool, version, addresses and shards come from the
/// member's gossiped metadata (name and pool from the assignment until it arrives); a dead or
/// departed member keeps its last known name and addresses, and lists no shards.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub id: NodeId,
    pub name: Option<String>,
    pub pool: Option<String>,
    pub state: MemberState,
    pub incarnation: u64,
    /// Phi-accrual suspicion level (0 for this node itself), rounded to 0.01.
    pub phi: f64,
    pub version: Option<String>,
    pub gossip_addr: Option<SocketAddr>,
    pub rpc_addr: Option<SocketAddr>,
    pub shards: Vec<ShardView>,
    /// Load figures: shards held and led (may exceed `shards` when the list was cut to fit).
    pub shards_held: u32,
    pub shards_led: u32,
    /// Milliseconds since this node last heard from the member (`None`: never, or itself).
    pub last_heard_ms: Option<u64>,
    /// Whether this entry is the node serving the view.
    #[serde(rename = "self")]
    pub is_self: bool,
}

impl MemberView {
    /// The entry for `MailCluster.status.members`.
    pub fn to_status(&self) -> MemberStatus {
        MemberStatus {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("node-{}", self.id)),
            node_id: i64::try_from(self.id).unwrap_or(i64::MAX),
            pool: self.pool.clone().unwrap_or_default(),
            state: self.state.gossip_state(),
            phi: Some(format!("{:.2}", self.phi)),
            version: self.version.clone(),
            shards: self
                .shards
                .iter()
                .map(|s| MemberShard {
                    shard: i32::try_from(s.shard).unwrap_or(i32::MAX),
                    role: s.role,
                })
                .collect(),
        }
    }
}

/// What the runtime publishes, a few times a second and after every change.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// This node's id, once the assignment names it (gossip runs from then on).
    pub id: Option<NodeId>,
    pub joined: bool,
    pub incarnation: u64,
    pub local_health: u32,
    /// Every member known, this node first.
    pub members: Vec<MemberView>,
    pub replay_evictions: u64,
}

/// `GET /cluster/members`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMembers {
    pub node: String,
    pub id: Option<NodeId>,
    pub joined: bool,
    pub incarnation: u64,
    pub local_health: u32,
    pub key_id: u32,
    pub members: Vec<MemberView>,
}

pub(super) enum Command {
    /// Announce `Left`, spread it, stop; answered when done.
    Leave(oneshot::Sender<()>),
}

/// State shared by the handle and the runtime.
pub(super) struct Inner {
    pub node: String,
    pub listen: SocketAddr,
    pub followed: Shared,
    pub snapshot: RwLock<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub commands: mpsc::Sender<Command>,
    pub keyring: watch::Receiver<Arc<Keyring>>,
}

/// A handle on this node's gossip; clones share it.
#[derive(Clone)]
pub struct Gossip {
    pub(super) inner: Arc<Inner>,
}

impl Gossip {
    fn snapshot(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every member this node knows, itself first.
    pub fn members(&self) -> Vec<MemberView> {
        self.snapshot().members.clone()
    }

    /// The entries for `MailCluster.status.members`.
    pub fn member_statuses(&self) -> Vec<MemberStatus> {
        self.snapshot()
            .members
            .iter()
            .map(MemberView::to_status)
            .collect()
    }

    /// Whether routing may send work to `node`: it is `Alive` (not suspect, dead or gone).
    /// Until gossip has joined, nodes it does not know count as live, so that routing works
    /// while the node starts.
    pub fn is_live(&self, node: NodeId) -> bool {
        let snapshot = self.snapshot();
        match snapshot.members.iter().find(|m| m.id == node) {
            Some(m) => m.state == MemberState::Alive,
            None => !snapshot.joined,
        }
    }

    /// Whether this node has joined the cluster's gossip (heard from a member), or is the only
    /// node its assignment lists.
    pub fn joined(&self) -> bool {
        let joined = self.snapshot().joined;
        joined || self.joined_alone()
    }

    /// This node's gossip id, once the assignment names it.
    pub fn node_id(&self) -> Option<NodeId> {
        self.snapshot().id
    }

    /// Where gossip listens (UDP and TCP).
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// Leaves the cluster gracefully: announces `Left` and keeps gossiping until the news is
    /// out or a second has passed, then stops. Call it once, at shutdown.
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The document served at `GET /cluster/members`.
    pub fn cluster_members(&self) -> ClusterMembers {
        let key_id = self.inner.keyring.borrow().primary_id().0;
        let alone = self.joined_alone();
        let snapshot = self.snapshot();
        ClusterMembers {
            node: self.inner.node.clone(),
            id: snapshot.id,
            joined: snapshot.joined || alone,
            incarnation: snapshot.incarnation,
            local_health: snapshot.local_health,
            key_id,
            members: snapshot.members.clone(),
        }
    }

    fn joined_alone(&self) -> bool {
        let followed = self
            .inner
            .followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        followed
            .current
            .as_ref()
            .is_some_and(|a| a.nodes.len() == 1 && a.nodes.contains_key(&self.inner.node))
    }

    /// Appends the gossip metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let (primary, keys) = {
            let keyring = self.inner.keyring.borrow();
            (keyring.primary_id().0, keyring.key_ids().count())
        };
        let alone = self.joined_alone();
        let mut snapshot = self.snapshot().clone();
        snapshot.joined |= alone;
        self.inner.metrics.render(&snapshot, primary, keys, out);
    }

    /// Packets dropped for `reason` (a `DropReason` label, or `malformed`).
    pub fn dropped(&self, reason: &str) -> u64 {
        self.inner.metrics.dropped_count(reason)
    }
}
