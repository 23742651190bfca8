//! The Assignment: the one document through which the operator tells agents which node holds
//! which shard, which user group lives on which shard, and which node runs which task.
//!
//! Published as JSON under [`Assignment::CONFIG_MAP_KEY`] in the ConfigMap
//! `<cluster>-assignment` (or read from a file outside Kubernetes). Epochs only grow; an agent
//! ignores an assignment older than the one it follows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster_role::StorageRole;
use crate::common::TaskName;

/// The cluster's shard, group and task placement at one epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Grows by one each time the content changes; never otherwise.
    pub epoch: u64,
    /// Name of the MailCluster.
    pub cluster: String,
    /// Every node the cluster has ever named that still exists, by pod name.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// The id the next new node gets; ids are never reused for another node.
    pub next_node_id: u64,
    /// Voters and learners of each data shard, by ascending shard id (1-based).
    pub shards: Vec<ShardAssignment>,
    /// User group → shard id. Covers the automatic groups `default-1..N` and every UserGroup.
    pub groups: BTreeMap<String, u32>,
    /// Number of automatic groups; see [`default_group`].
    pub default_groups: u32,
    /// Explicit UserGroup membership: address (lower case) → group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, String>,
    /// Domain-wide UserGroups: domain (lower case) → group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub domains: BTreeMap<String, String>,
    /// Background task shards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskAssignment>,
}

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    /// Stable numeric id used by Raft and gossip.
    pub id: u64,
    /// Pool: `default` or a ClusterRole's name.
    pub pool: String,
    /// What the node's pool holds.
    pub storage: StorageRole,
    /// Topology zone, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// One data shard's replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardAssignment {
    /// Shard id, 1-based.
    pub id: u32,
    /// Node ids of the voters, ascending.
    pub voters: Vec<u64>,
    /// Node ids of the learners (read replicas), ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<u64>,
}

/// One shard of a background task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskAssignment {
    /// Task name.
    pub task: TaskName,
    /// Pool the task runs in.
    pub pool: String,
    /// Task shard, 1-based within the task and pool.
    pub shard: u32,
    /// Node ids in the shard; the first one acts, the rest stand by in order.
    pub nodes: Vec<u64>,
}

impl Assignment {
    /// Key of the JSON document in the `<cluster>-assignment` ConfigMap.
    pub const CONFIG_MAP_KEY: &'static str = "assignment.json";

    /// Name of the ConfigMap that carries a cluster's assignment.
    pub fn config_map_name(cluster: &str) -> String {
        format!("{cluster}-assignment")
    }

    /// Whether two assignments say the same thing, whatever their epochs.
    pub fn same_content(&self, other: &Self) -> bool {
        Self {
            epoch: 0,
            ..self.clone()
        } == Self {
            epoch: 0,
            ..other.clone()
        }
    }

    /// Gives `computed` its epoch relative to the previously published assignment: the same
    /// epoch when nothing changed, one more when anything did.
    pub fn succeed(previous: Option<&Self>, mut computed: Self) -> Self {
        computed.epoch = match previous {
            None => 1,
            Some(prev) if prev.same_content(&computed) => prev.epoch,
            Some(prev) => prev.epoch + 1,
        };
        computed
    }

    /// The user group an address belongs to: an explicit UserGroup member, else everyone at a
    /// domain with a UserGroup, else the automatic group its hash picks.
    pub fn group_of(&self, address: &str) -> String {
        let address = address.to_ascii_lowercase();
        if let Some(group) = self.members.get(&address) {
            return group.clone();
        }
        if let Some((_, domain)) = address.rsplit_once('@')
            && let Some(group) = self.domains.get(domain)
        {
            return group.clone();
        }
        default_group(&address, self.default_groups)
    }

    /// The shard an address's mail lives on.
    pub fn shard_of(&self, address: &str) -> Option<u32> {
        self.groups.get(&self.group_of(address)).copied()
    }

    /// The id of a node by pod name.
    pub fn node_id(&self, name: &str) -> Option<u64> {
        self.nodes.get(name).map(|n| n.id)
    }

    /// Serializes for the ConfigMap.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an assignment always serializes")
    }

    /// Parses the ConfigMap's document.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// Name of the automatic group `default-K` (1-based).
pub fn default_group_name(k: u32) -> String {
    format!("default-{k}")
}

/// The automatic group of an address: `default-(fnv1a64(lower(address)) mod n + 1)`.
///
/// FNV-1a is fixed forever here: changing it would move users between groups.
pub fn default_group(address: &str, n: u32) -> String {
    let n = u64::from(n.max(1));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in address.bytes() {
        hash ^= u64::from(b.to_ascii_lowercase());
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    default_group_name((hash % n) as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Assignment {
        let mut a = Assignment {
            cluster: "mail".into(),
            default_groups: 4,
            ..Default::default()
        };
        a.groups.insert("default-1".into(), 1);
        a.groups.insert("vip".into(), 2);
        a.members.insert("ceo@example.com".into(), "vip".into());
        a.domains.insert("corp.example".into(), "vip".into());
        a
    }

    #[test]
    fn epoch_grows_only_on_change() {
        let first = Assignment::succeed(None, sample());
        assert_eq!(first.epoch, 1);
        let same = Assignment::succeed(Some(&first), sample());
        assert_eq!(same.epoch, 1);
        let mut changed = sample();
        changed.groups.insert("vip".into(), 3);
        let next = Assignment::succeed(Some(&same), changed);
        assert_eq!(next.epoch, 2);
    }

    #[test]
    fn explicit_membership_wins_over_domain_and_hash() {
        let a = sample();
        assert_eq!(a.group_of("CEO@Example.com"), "vip");
        assert_eq!(a.group_of("anyone@corp.example"), "vip");
        assert!(a.group_of("someone@example.com").starts_with("default-"));
    }

    #[test]
    fn default_group_is_pinned() {
        // These values are part of the contract between operator and agent; they must never
        // change, or users would silently move between groups.
        assert_eq!(
            default_group("alice@example.com", 16),
            default_group("ALICE@example.com", 16)
        );
        assert_eq!(default_group("alice@example.com", 1), "default-1");
        let spread: std::collections::BTreeSet<_> = (0..200)
            .map(|i| default_group(&format!("u{i}@x.org"), 8))
            .collect();
        assert_eq!(spread.len(), 8, "200 addresses reach every one of 8 groups");
    }

    #[test]
    fn json_round_trip() {
        let a = Assignment::succeed(None, sample());
        assert_eq!(Assignment::from_json(&a.to_json()).unwrap(), a);
    }

    proptest! {
        #[test]
        fn default_group_in_range(addr in "[a-z0-9.]{1,20}@[a-z]{1,10}\\.[a-z]{2,4}", n in 1u32..500) {
            let g = default_group(&addr, n);
            let k: u32 = g.strip_prefix("default-").unwrap().parse().unwrap();
            prop_assert!(k >= 1 && k <= n);
        }
    }
}
