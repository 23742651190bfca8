//! `ClusterRole` (`clusterroles.mail.tern.dev`): a named pool of nodes inside one MailCluster
//! and what the pool does. Not to be confused with RBAC's ClusterRole.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{ClusterRef, PodScheduling, Protocol, TaskSpec};

/// A pool of nodes in a MailCluster: its size, the protocols it serves, whether it holds data
/// and which background tasks it runs. Becomes the StatefulSet `<cluster>-<role>`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "mail.tern.dev",
    version = "v1alpha1",
    kind = "ClusterRole",
    plural = "clusterroles",
    singular = "clusterrole",
    shortname = "mcr",
    shortname = "mailrole",
    category = "mail",
    namespaced,
    status = "ClusterRoleStatus",
    doc = "A pool of nodes in a MailCluster (clusterroles.mail.tern.dev, not RBAC's ClusterRole).",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterRef.name"),
    printcolumn(name = "Storage", type_ = "string", json_path = ".spec.storage"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Degraded", type_ = "string", json_path = ".status.conditions[?(@.type==\"Degraded\")].reason", priority = 1),
    validation = kube::core::Rule::new("size(self.metadata.name) <= 21 && self.metadata.name != 'default'")
        .message("a ClusterRole name has at most 21 characters and is not 'default' (the MailCluster's own pool), so pod names (<cluster>-<role>-<ordinal>) stay valid")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.tasks) || self.tasks.all(t, !has(t.nodes) || t.nodes.all(s, s.split(',').all(x, int(x) < self.replicas)))")
    .message("task node lists may only name pod ordinals of this pool (0 to replicas-1)")
    .field_path(".tasks"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.tasks) || self.tasks.all(a, self.tasks.exists_one(b, b.name == a.name))")
    .message("each task may be listed once per pool")
    .field_path(".tasks"))]
pub struct ClusterRoleSpec {
    /// The MailCluster this pool belongs to. Cannot be changed.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("clusterRef is immutable: create a new ClusterRole to move a pool to another cluster"))]
    pub cluster_ref: ClusterRef,

    /// Number of nodes in the pool. `kubectl scale` changes it.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Protocols this pool serves (their ports come from the MailCluster's listeners). All
    /// of the cluster's enabled listeners when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub listeners: Option<Vec<Protocol>>,

    /// Whether the pool's pods hold shard replicas: `voter` (Raft voters), `learner`
    /// (read-only replicas), or `none` (stateless front ends that proxy to data nodes).
    /// Fixed at creation: a pool's volumes cannot be added or removed in place.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("storage is immutable: create a new ClusterRole for a pool that holds different data"))]
    pub storage: StorageRole,

    /// Background tasks the pool runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub tasks: Option<Vec<TaskSpec>>,

    /// Scheduling of the pool's pods.
    #[serde(flatten)]
    pub scheduling: PodScheduling,
}

fn one() -> i32 {
    1
}

/// What a pool's pods hold.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StorageRole {
    /// Raft voters: acknowledged writes live on a majority of them.
    #[default]
    Voter,
    /// Raft learners: read-only replicas that never vote.
    Learner,
    /// No data; a stateless front end.
    None,
}

impl StorageRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voter => "voter",
            Self::Learner => "learner",
            Self::None => "none",
        }
    }

    /// Whether pods of this role need a volume.
    pub fn holds_data(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// Observed state of a ClusterRole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the pool.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods of the pool.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pool's pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Where each background task runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_assignments: Vec<TaskAssignmentStatus>,
}

/// One task shard of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskAssignmentStatus {
    /// Task name.
    pub task: String,
    /// Task shard (1-based).
    pub shard: i32,
    /// Node ids in the shard.
    pub nodes: Vec<i64>,
    /// The node that acts for the shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting: Option<i64>,
}
