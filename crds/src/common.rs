//! Field types shared by more than one resource.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Names the MailCluster a ClusterRole or UserGroup belongs to (same namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct ClusterRef {
    /// Name of the MailCluster in the same namespace.
    #[schemars(length(min = 1, max = 52))]
    pub name: String,
}

/// Pod scheduling for one pool of nodes. Each field is copied into the pool's pod template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodScheduling {
    /// CPU and memory requests and limits of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels a pod of this pool requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints this pool's pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity. When absent, the operator prefers spreading a pool's
    /// pods over nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pool's pods spread over zones and nodes. Shard replicas follow the
    /// `topology.kubernetes.io/zone` label when nodes carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// One client-facing listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct Listener {
    /// Whether the listener is served and exposed by the client Service.
    #[serde(default = "defaults_true")]
    pub enabled: bool,
    /// TCP port, used both in the pod and on the client Service.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

pub(crate) fn defaults_true() -> bool {
    true
}

impl Listener {
    fn on(port: i32) -> Self {
        Self {
            enabled: true,
            port,
        }
    }
}

/// The client listeners of the mail service. Every listener has a default port and can be
/// disabled; enabled listeners must use distinct ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new(
    "[self.smtp, self.submission, self.smtps, self.imap, self.imaps, self.lmtp, self.http, self.https].filter(l, l.enabled).all(a, [self.smtp, self.submission, self.smtps, self.imap, self.imaps, self.lmtp, self.http, self.https].filter(b, b.enabled && b.port == a.port).size() == 1)"
).message("enabled listeners must use distinct ports").reason(kube::core::Reason::FieldValueDuplicate))]
pub struct Listeners {
    /// Inbound SMTP from other mail servers (MX), STARTTLS offered. Default port 25.
    #[serde(default = "listener_default::smtp")]
    pub smtp: Listener,
    /// Message submission from users' clients, STARTTLS required before AUTH. Default port 587.
    #[serde(default = "listener_default::submission")]
    pub submission: Listener,
    /// Message submission over implicit TLS. Default port 465.
    #[serde(default = "listener_default::smtps")]
    pub smtps: Listener,
    /// IMAP with STARTTLS. Default port 143.
    #[serde(default = "listener_default::imap")]
    pub imap: Listener,
    /// IMAP over implicit TLS. Default port 993.
    #[serde(default = "listener_default::imaps")]
    pub imaps: Listener,
    /// LMTP delivery from other mail systems. Default port 24.
    #[serde(default = "listener_default::lmtp")]
    pub lmtp: Listener,
    /// HTTP: health, metrics, JMAP and the admin API. Probes use this port. Default port 8080.
    #[serde(default = "listener_default::http")]
    pub http: Listener,
    /// HTTPS: JMAP and the admin API over TLS. Default port 443.
    #[serde(default = "listener_default::https")]
    pub https: Listener,
}

mod listener_default {
    use super::Listener;
    pub fn smtp() -> Listener {
        Listener::on(25)
    }
    pub fn submission() -> Listener {
        Listener::on(587)
    }
    pub fn smtps() -> Listener {
        Listener::on(465)
    }
    pub fn imap() -> Listener {
        Listener::on(143)
    }
    pub fn imaps() -> Listener {
        Listener::on(993)
    }
    pub fn lmtp() -> Listener {
        Listener::on(24)
    }
    pub fn http() -> Listener {
        Listener::on(8080)
    }
    pub fn https() -> Listener {
        Listener::on(443)
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            smtp: listener_default::smtp(),
            submission: listener_default::submission(),
            smtps: listener_default::smtps(),
            imap: listener_default::imap(),
            imaps: listener_default::imaps(),
            lmtp: listener_default::lmtp(),
            http: listener_default::http(),
            https: listener_default::https(),
        }
    }
}

impl Listeners {
    /// Every listener with its protocol, in a stable order.
    pub fn all(&self) -> [(Protocol, &Listener); 8] {
        [
            (Protocol::Smtp, &self.smtp),
            (Protocol::Submission, &self.submission),
            (Protocol::Smtps, &self.smtps),
            (Protocol::Imap, &self.imap),
            (Protocol::Imaps, &self.imaps),
            (Protocol::Lmtp, &self.lmtp),
            (Protocol::Http, &self.http),
            (Protocol::Https, &self.https),
        ]
    }
}

/// A mail or HTTP protocol served by a listener; a ClusterRole names the ones its pool serves.
#[derive(
    Clone,
    Copy,
    Debug,
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
pub enum Protocol {
    Smtp,
    Submission,
    Smtps,
    Imap,
    Imaps,
    Lmtp,
    Http,
    Https,
}

impl Protocol {
    /// The name used for container ports, Service ports and in `spec.listeners`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Submission => "submission",
            Self::Smtps => "smtps",
            Self::Imap => "imap",
            Self::Imaps => "imaps",
            Self::Lmtp => "lmtp",
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// The per-pod PersistentVolumeClaim that holds a node's shard replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Requested size of each pod's volume, as a Kubernetes quantity (e.g. `10Gi`).
    #[serde(default = "default_volume_size")]
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
    )]
    pub size: String,
    /// StorageClass of the volumes; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
}

fn default_volume_size() -> String {
    "10Gi".into()
}

impl Default for VolumeSpec {
    fn default() -> Self {
        Self {
            size: default_volume_size(),
            storage_class_name: None,
        }
    }
}

/// A reference to a key of a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What happens to data when the resource is deleted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// PersistentVolumeClaims (and so the mail) outlive the resource. The default.
    #[default]
    Retain,
    /// PersistentVolumeClaims are deleted with the resource.
    Delete,
}

/// The background duties a node can hold.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TaskName {
    PurgeStores,
    PurgeAccounts,
    AcmeRenew,
    MetricsCalculate,
    MetricsPush,
    PushNotifications,
    FtsIndexing,
    SpamTraining,
    ImipProcessing,
    CalendarAlerts,
    OutboundDelivery,
}

impl TaskName {
    /// The name as written in `spec.tasks[].name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PurgeStores => "purge-stores",
            Self::PurgeAccounts => "purge-accounts",
            Self::AcmeRenew => "acme-renew",
            Self::MetricsCalculate => "metrics-calculate",
            Self::MetricsPush => "metrics-push",
            Self::PushNotifications => "push-notifications",
            Self::FtsIndexing => "fts-indexing",
            Self::SpamTraining => "spam-training",
            Self::ImipProcessing => "imip-processing",
            Self::CalendarAlerts => "calendar-alerts",
            Self::OutboundDelivery => "outbound-delivery",
        }
    }
}

/// A background task a pool runs.
///
/// Either the operator forms the task's shards (`shards` and `nodesPerShard`, from the pool's
/// live members, moving them off dead nodes), or `nodes` lists each shard's members by pod
/// ordinal within the pool (`["0,3", "1,2"]`: shard 1 on pods 0 and 3, shard 2 on pods 1 and
/// 2). Within one task shard only one node acts at a time. A task with neither runs as one
/// shard over all of the pool's live nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.nodes) && (has(self.shards) || has(self.nodesPerShard)))")
    .message("give either nodes (explicit lists) or shards/nodesPerShard, not both"))]
#[x_kube(validation = kube::core::Rule::new("self.name != 'push-notifications' || has(self.shards) || has(self.nodes)")
    .message("push-notifications must be sharded: set shards (or explicit nodes lists) so each user is notified by one node only"))]
#[x_kube(validation = kube::core::Rule::new("self.name != 'push-notifications' || !has(self.nodes) || self.nodes.all(a, self.nodes.all(b, a == b || a.split(',').all(x, !(x in b.split(',')))))")
    .message("push-notifications shards must not share nodes"))]
pub struct TaskSpec {
    /// Which task.
    pub name: TaskName,
    /// Number of task shards the operator forms from the pool's live members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub shards: Option<i32>,
    /// Nodes in each task shard (one acts, the others stand by). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub nodes_per_shard: Option<i32>,
    /// Explicit task shards: each string is one shard's pod ordinals within this pool,
    /// comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        inner(
            length(min = 1, max = 32),
            regex(pattern = r"^[0-9]{1,4}(,[0-9]{1,4})*$")
        )
    )]
    pub nodes: Option<Vec<String>>,
}
