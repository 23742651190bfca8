//! `MailCluster`: the whole mail service, its shared configuration and the default node pool.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{DeletionPolicy, Listeners, PodScheduling, SecretKeyRef, VolumeSpec};

/// The pool name of the nodes a MailCluster runs itself (`spec.replicas`). ClusterRoles add
/// further pools and may not take this name.
pub const DEFAULT_POOL: &str = "default";

/// A highly available mail service: SMTP, submission, LMTP, IMAP and JMAP served by a pool
/// of nodes that replicate every write with Raft before acknowledging it.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "mail.tern.dev",
    version = "v1alpha1",
    kind = "MailCluster",
    plural = "mailclusters",
    singular = "mailcluster",
    shortname = "mc",
    category = "mail",
    namespaced,
    status = "MailClusterStatus",
    doc = "A highly available mail service and its default pool of nodes.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready", description = "Ready nodes over desired nodes, all pools"),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards", description = "Data shards (Raft groups)"),
    printcolumn(name = "Leaders", type_ = "string", json_path = ".status.leaders", description = "Shards with a healthy leader over all shards"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Degraded", type_ = "string", json_path = ".status.conditions[?(@.type==\"Degraded\")].reason", priority = 1, description = "Why the cluster is degraded"),
    validation = kube::core::Rule::new("size(self.metadata.name) <= 30")
        .message("a MailCluster name has at most 30 characters, so pod names (<cluster>-<pool>-<ordinal>) stay valid")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.replicationFactor >= 1 && self.replicationFactor % 2 == 1")
    .message("replicationFactor must be odd and at least 1 (1, 3, 5, ...): an even voter count adds no fault tolerance")
    .field_path(".replicationFactor"))]
#[x_kube(validation = kube::core::Rule::new("self.replicas == 0 || self.replicationFactor <= self.replicas")
    .message("replicationFactor cannot exceed replicas, the storage nodes of the default pool (set replicas to 0 to keep every voter in ClusterRole pools)")
    .field_path(".replicationFactor"))]
#[x_kube(validation = kube::core::Rule::new("self.shards >= 1")
    .message("shards must be at least 1")
    .field_path(".shards"))]
#[x_kube(validation = kube::core::Rule::new("self.updateStrategy.maxUnavailable == 1 || self.updateStrategy.maxUnavailable <= (self.replicationFactor - 1) / 2")
    .message("updateStrategy.maxUnavailable may exceed 1 only while a majority of every shard stays up: at most (replicationFactor - 1) / 2")
    .field_path(".updateStrategy.maxUnavailable"))]
pub struct MailClusterSpec {
    /// Number of nodes in the default pool (`<cluster>-default`), which holds shard voters and
    /// serves every enabled listener. `kubectl scale` changes it. Scaling down drains a node's
    /// shard replicas to other nodes before its pod is removed.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Container image with the `tern-agent` binary. The operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,

    /// Image pull policy of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Scheduling of the default pool's pods.
    #[serde(flatten)]
    pub scheduling: PodScheduling,

    /// Mail domains this cluster accepts mail for.
    #[schemars(
        length(min = 1, max = 256),
        inner(
            length(min = 1, max = 253),
            regex(
                pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
            )
        )
    )]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub domains: Vec<String>,

    /// Number of data shards (Raft groups). User groups are placed onto shards.
    #[serde(default = "default_shards")]
    #[schemars(range(max = 1024))]
    pub shards: i32,

    /// Voters per shard: a write is acknowledged once a majority of them hold it. Odd.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(max = 7))]
    pub replication_factor: i32,

    /// Read-only replicas (Raft learners) per shard, placed on pools with `storage: learner`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 8))]
    pub read_replicas: i32,

    /// Number of automatic user groups `default-1..N`; a user named in no UserGroup belongs to
    /// the one a stable hash of the address picks.
    #[serde(default = "default_groups")]
    #[schemars(range(min = 1, max = 4096))]
    pub default_groups: i32,

    /// The per-pod volume that holds shard replicas. Fixed at creation: a StatefulSet's
    /// volume claim templates cannot change (expand the PersistentVolumeClaims instead).
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("storage is immutable: StatefulSet volume claim templates cannot change; resize the PersistentVolumeClaims directly"))]
    pub storage: VolumeSpec,

    /// Client listeners and their ports.
    #[serde(default)]
    pub listeners: Listeners,

    /// TLS for the client listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Gossip encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<GossipSpec>,

    /// The recovery administrator's credential (a Secret key holding the password), mounted
    /// as a file. The operator generates one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret_ref: Option<SecretKeyRef>,

    /// The client Service in front of the listeners.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Smarthost for outbound mail; direct MX delivery when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelaySpec>,

    /// What happens to the volumes when the MailCluster is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How pods are replaced during an update.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
}

fn default_replicas() -> i32 {
    3
}
fn default_shards() -> i32 {
    1
}
fn default_replication_factor() -> i32 {
    3
}
fn default_groups() -> i32 {
    16
}

/// Kubernetes image pull policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// TLS for the client listeners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret (for example one cert-manager keeps renewed). When absent
    /// the operator issues a self-signed certificate for the cluster's domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

/// Gossip encryption settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GossipSpec {
    /// The Secret key holding the gossip keyring. When absent the operator generates a key
    /// once and never rotates it silently. The key may hold the keyring text format (a
    /// `primary <id>` line and `<id> <base64 of 32 bytes>` lines; every key listed opens
    /// packets, the primary one seals), 32 raw random bytes, or one line of base64 of 32
    /// bytes (such as `openssl rand -base64 32` prints); the last two are key id 1. Agents
    /// read it again every few seconds: rotate without restarts by adding a key, then making
    /// it primary, then removing the old one, each step on every pod before the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

/// Kubernetes Service type of the client Service.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    #[default]
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Routing of external traffic; `Local` keeps the client's address.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum TrafficPolicy {
    #[default]
    Local,
    Cluster,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "Local",
            Self::Cluster => "Cluster",
        }
    }
}

/// The client Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'")
    .message("externalTrafficPolicy applies only to NodePort and LoadBalancer Services"))]
pub struct ServiceSpec {
    /// Service type. `LoadBalancer` (the default) for a mail service reachable from outside.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// `Local` (the default for NodePort and LoadBalancer) keeps the client's source
    /// address, which anti-abuse checks and rate limits need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// Expect a HAProxy PROXY protocol header (v1 or v2) on every listener, for load balancers
    /// that cannot keep the client address. Connections without one are refused.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Annotations for the Service (load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Source ranges allowed through a cloud load balancer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    pub load_balancer_source_ranges: Vec<String>,
}

/// Outbound smarthost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelaySpec {
    /// Host name of the smarthost.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Port of the smarthost.
    #[serde(default = "default_relay_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Require STARTTLS to the smarthost (default true).
    #[serde(default = "crate::common::defaults_true")]
    pub starttls: bool,
    /// A Secret with `username` and `password` keys for AUTH at the smarthost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret_name: Option<String>,
}

fn default_relay_port() -> i32 {
    587
}

/// Pod replacement during an update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// Pods of one pool replaced at a time. Never more than keeps every shard's majority up.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 3))]
    pub max_unavailable: i32,
}

fn one() -> i32 {
    1
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        Self { max_unavailable: 1 }
    }
}

/// Observed state of a MailCluster. The operator writes the replica counts, conditions and
/// the shards' placement; the agents' elected reporter writes `members` and each shard's
/// `leader` and `lastAppliedLag`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailClusterStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the default pool.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods of the default pool.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the default pool's pods (for the scale subresource and HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready nodes over desired nodes across every pool, e.g. `3/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Shards with a leader over all shards, e.g. `4/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaders: Option<String>,
    /// Epoch of the assignment last published in `<cluster>-assignment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_epoch: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// One entry per node, as gossip sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub members: Vec<MemberStatus>,
    /// One entry per data shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["id".into()]))]
    pub shards: Vec<ShardStatus>,
}

/// Gossip's view of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum GossipState {
    Alive,
    Suspect,
    Dead,
    Left,
}

/// A node's Raft role in one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
}

/// A shard a member holds and its role there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct MemberShard {
    /// Shard id.
    pub shard: i32,
    /// Raft role in that shard.
    pub role: RaftRole,
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod name.
    pub name: String,
    /// Stable numeric id used by Raft and gossip.
    pub node_id: i64,
    /// Pool (`default` or a ClusterRole name).
    #[serde(default)]
    pub pool: String,
    /// Gossip state.
    pub state: GossipState,
    /// Current phi-accrual suspicion level, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phi: Option<String>,
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Shards held and the role in each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<MemberShard>,
}

/// One data shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// Shard id (1-based).
    pub id: i32,
    /// Node id of the current Raft leader, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<i64>,
    /// Node ids of the voters the assignment gives the shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<i64>,
    /// Node ids of the learners (read replicas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<i64>,
    /// User groups placed on the shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Entries the slowest replica has yet to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_lag: Option<i64>,
}
