//! Placement: pure functions from the cluster's pools, nodes and groups (and the previously
//! published assignment) to the next [`Assignment`].
//!
//! Shards → voters and learners over storage nodes; user groups → shards; tasks → nodes.
//! No I/O here; everything is property-tested.

use std::collections::{BTreeMap, BTreeSet};

use tern_crds::cluster_role::StorageRole;
use tern_crds::common::TaskSpec;
use tern_crds::Assignment;

/// What gossip (through `MailCluster.status.members`) says of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// Alive, or not reported yet (a new pod is presumed healthy).
    #[default]
    Alive,
    /// Suspected by gossip: keeps its shard replicas, but acts for no task.
    Suspect,
    /// Declared dead: its shard replicas and task shards move to live nodes.
    Dead,
}

/// One pod the pools will have (or still have while being drained).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Pod name `<cluster>-<pool>-<ordinal>`.
    pub name: String,
    /// Pool name: `default` or the ClusterRole's name.
    pub pool: String,
    /// StatefulSet ordinal within the pool.
    pub ordinal: u32,
    /// What the pool holds.
    pub storage: StorageRole,
    /// Topology zone (`topology.kubernetes.io/zone` of the pod's node), when known.
    pub zone: Option<String>,
    pub health: Health,
    /// The pool is being scaled below this ordinal: the node gets no new replicas or tasks
    /// and its replicas move away (one safe step per epoch) so the pod can be removed.
    pub leaving: bool,
}

/// A UserGroup, as placement sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupInput {
    pub name: String,
    /// Lower-cased member addresses.
    pub members: Vec<String>,
    /// Lower-cased domain.
    pub domain: Option<String>,
    /// `spec.shard`, 1-based.
    pub pin: Option<u32>,
    /// Reported size (from `status.users` / `status.bytes`), 0 when unknown.
    pub users: u64,
    pub bytes: u64,
}

/// The tasks one pool runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolTasks {
    pub pool: String,
    pub tasks: Vec<TaskSpec>,
}

/// Everything placement needs besides the previous assignment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementInput {
    pub cluster: String,
    /// `spec.shards`.
    pub shards: u32,
    /// `spec.replicationFactor`.
    pub replication_factor: u32,
    /// `spec.readReplicas`.
    pub read_replicas: u32,
    /// `spec.defaultGroups`.
    pub default_groups: u32,
    /// Every node of every pool, including leaving ones; order is irrelevant.
    pub nodes: Vec<NodeInfo>,
    /// Every UserGroup of the cluster.
    pub groups: Vec<GroupInput>,
    /// Tasks per pool.
    pub tasks: Vec<PoolTasks>,
    /// Voters each shard actually has, as the agents report them (`status.members[].shards`);
    /// empty when nothing is reported yet, and then the previous assignment stands in.
    pub observed_voters: BTreeMap<u32, BTreeSet<u64>>,
    /// Groups that moved recently and may not move again yet (cool-down).
    pub cooling_down: BTreeSet<String>,
}

/// Why no assignment can be computed. The controller reports it in a condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replicationFactor is {need} but the cluster has only {have} storage nodes that can vote")]
    InsufficientVoters { need: u32, have: u32 },
}

/// How much two shards' loads may differ (heaviest ÷ lightest) before a group is moved.
pub const BALANCE_RATIO: f64 = 1.25;
