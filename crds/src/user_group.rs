//! `UserGroup`: users that always live together in one data shard, the unit of placement and
//! of moves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::ClusterRef;

/// A set of users placed together on one data shard, by address or by domain.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "mail.tern.dev",
    version = "v1alpha1",
    kind = "UserGroup",
    plural = "usergroups",
    singular = "usergroup",
    shortname = "ug",
    category = "mail",
    namespaced,
    status = "UserGroupStatus",
    doc = "Users that live together in one data shard.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterRef.name"),
    printcolumn(name = "Shard", type_ = "integer", json_path = ".status.shard"),
    printcolumn(name = "Users", type_ = "integer", json_path = ".status.users"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("!self.metadata.name.startsWith('default-')")
        .message("names default-1..N belong to the automatic user groups; choose another name")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.members) != has(self.domain)")
    .message("give exactly one of members (addresses) or domain (everyone at a domain)"))]
pub struct UserGroupSpec {
    /// The MailCluster the group belongs to. Cannot be changed.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("clusterRef is immutable: create a new UserGroup in the other cluster"))]
    pub cluster_ref: ClusterRef,

    /// Addresses of the group's users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 10000),
        inner(length(min = 3, max = 320), regex(pattern = r"^[^@\s]+@[^@\s]+$"))
    )]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub members: Option<Vec<String>>,

    /// Every user at this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
        )
    )]
    pub domain: Option<String>,

    /// Pin the group to this shard (1-based); the operator places and balances it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub shard: Option<i32>,
}

/// Observed state of a UserGroup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserGroupStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The shard the group lives on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<i32>,
    /// Number of users in the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<i64>,
    /// Bytes of mail the group holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// `Ready` (placed), `Progressing` (moving).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The move under way, if any.
    #[serde(default, rename = "move", skip_serializing_if = "Option::is_none")]
    pub move_: Option<GroupMove>,
}

/// A move of a group between shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupMove {
    /// Source shard.
    pub from: i32,
    /// Destination shard.
    pub to: i32,
    /// When the move started.
    pub started_at: Time,
    /// Bytes copied so far.
    #[serde(default)]
    pub copied_bytes: i64,
}
