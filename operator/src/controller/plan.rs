//! Pure steps between what was observed and what is applied: the pools, the placement input,
//! the replica count each pool may have while nodes drain, and cross-resource validation.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use tern_crds::cluster_role::StorageRole;
use tern_crds::mail_cluster::{DEFAULT_POOL, GossipState, RaftRole};
use tern_crds::{Assignment, ClusterRole, MailCluster, UserGroup};

use crate::placement::{GroupInput, Health, NodeInfo, PlacementInput, PoolTasks};

/// One pool of nodes: the MailCluster's own, or a ClusterRole's.
#[derive(Clone, Debug)]
pub struct PoolPlan<'a> {
    pub name: String,
    pub role: Option<&'a ClusterRole>,
    pub storage: StorageRole,
    /// `spec.replicas` of the pool.
    pub desired: i32,
    /// Replicas the pool's StatefulSet has now (0 when it does not exist).
    pub current: i32,
}

impl PoolPlan<'_> {
    /// Pods of the pool that exist or will: `max(desired, current)`.
    pub fn span(&self) -> i32 {
        self.desired.max(self.current)
    }
}

/// The StatefulSet name of a pool.
pub fn statefulset_name(cluster: &str, pool: &str) -> String {
    format!("{cluster}-{pool}")
}

/// The pod name of a pool's node.
pub fn pod_name(cluster: &str, pool: &str, ordinal: i32) -> String {
    format!("{cluster}-{pool}-{ordinal}")
}

/// The default pool, then the ClusterRoles by name.
pub fn pools<'a>(
    cluster: &MailCluster,
    roles: &'a [ClusterRole],
    statefulsets: &[StatefulSet],
) -> Vec<PoolPlan<'a>> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let current = |pool: &str| {
        let sts = statefulset_name(name, pool);
        statefulsets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&sts))
            .and_then(|s| s.spec.as_ref()?.replicas)
            .unwrap_or(0)
    };
    let mut out = vec![PoolPlan {
        name: DEFAULT_POOL.into(),
        role: None,
        storage: StorageRole::Voter,
        desired: cluster.spec.replicas,
        current: current(DEFAULT_POOL),
    }];
    let mut roles: Vec<&ClusterRole> = roles.iter().collect();
    roles.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for role in roles {
        let pool = role.metadata.name.clone().unwrap_or_default();
        out.push(PoolPlan {
            current: current(&pool),
            name: pool,
            role: Some(role),
            storage: role.spec.storage,
            desired: role.spec.replicas,
        });
    }
    out
}

/// Cross-resource checks the API server cannot make (CEL sees one object at a time).
pub fn validate(cluster: &MailCluster, pools: &[PoolPlan]) -> Result<(), String> {
    let voters: i32 = pools
        .iter()
        .filter(|p| p.storage == StorageRole::Voter)
        .map(|p| p.desired)
        .sum();
    if cluster.spec.replication_factor > voters {
        return Err(format!(
            "replicationFactor is {} but the voter pools have {} nodes in all; add voter nodes or lower replicationFactor",
            cluster.spec.replication_factor, voters
        ));
    }
    Ok(())
}

fn health(state: GossipState) -> Health {
    match state {
        GossipState::Alive => Health::Alive,
        GossipState::Suspect => Health::Suspect,
        GossipState::Dead | GossipState::Left => Health::Dead,
    }
}

/// Voters of each shard as the agents report them, by node id.
fn observed_voters(
    cluster: &MailCluster,
    previous: Option<&Assignment>,
) -> BTreeMap<u32, BTreeSet<u64>> {
    let mut out: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let Some(status) = &cluster.status else {
        return out;
    };
    for m in &status.members {
        let id = previous
            .and_then(|a| a.node_id(&m.name))
            .unwrap_or(m.node_id as u64);
        for s in &m.shards {
            if matches!(
                s.role,
                RaftRole::Leader | RaftRole::Follower | RaftRole::Candidate
            ) && s.shard > 0
            {
                out.entry(s.shard as u32).or_default().insert(id);
            }
        }
    }
    out
}

/// Lower-cases and sorts a group's addresses so the assignment is stable.
fn group_input(group: &UserGroup) -> GroupInput {
    let mut members: Vec<String> = group
        .spec
        .members
        .iter()
        .flatten()
        .map(|m| m.to_ascii_lowercase())
        .collect();
    members.sort();
    members.dedup();
    let status = group.status.as_ref();
    GroupInput {
        name: group.metadata.name.clone().unwrap_or_default(),
        members,
        domain: group.spec.domain.as_ref().map(|d| d.to_ascii_lowercase()),
        pin: group.spec.shard.map(|s| s.max(0) as u32),
        users: status.and_then(|s| s.users).unwrap_or(0).max(0) as u64,
        bytes: status.and_then(|s| s.bytes).unwrap_or(0).max(0) as u64,
    }
}

/// Everything placement needs, from the observed resources.
pub fn placement_input(
    cluster: &MailCluster,
    pools: &[PoolPlan],
    groups: &[UserGroup],
    zones: &BTreeMap<String, String>,
    previous: Option<&Assignment>,
) -> PlacementInput {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let members: BTreeMap<&str, GossipState> = cluster
        .status
        .iter()
        .flat_map(|s| &s.members)
        .map(|m| (m.name.as_str(), m.state))
        .collect();
    let mut nodes = vec![];
    for pool in pools {
        for ordinal in 0..pool.span() {
            let pod = pod_name(&name, &pool.name, ordinal);
            nodes.push(NodeInfo {
                health: members
                    .get(pod.as_str())
                    .copied()
                    .map_or(Health::Alive, health),
                zone: zones.get(&pod).cloned(),
                name: pod,
                pool: pool.name.clone(),
                ordinal: ordinal as u32,
                storage: pool.storage,
                leaving: ordinal >= pool.desired,
            });
        }
    }
    let tasks = pools
        .iter()
        .filter_map(|p| {
            let tasks = p.role?.spec.tasks.clone()?;
            Some(PoolTasks {
                pool: p.name.clone(),
                tasks,
            })
        })
        .collect();
    // A group whose data is still being copied to its new shard may not move again.
    let cooling_down = groups
        .iter()
        .filter(|g| g.status.as_ref().is_some_and(|s| s.move_.is_some()))
        .filter_map(|g| g.metadata.name.clone())
        .collect();
    let mut groups: Vec<GroupInput> = groups.iter().map(group_input).collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    PlacementInput {
        cluster: name,
        shards: cluster.spec.shards.max(1) as u32,
        replication_factor: cluster.spec.replication_factor.max(1) as u32,
        read_replicas: cluster.spec.read_replicas.max(0) as u32,
        default_groups: cluster.spec.default_groups.max(1) as u32,
        nodes,
        groups,
        tasks,
        observed_voters: observed_voters(cluster, previous),
        cooling_down,
    }
}

/// The replica count to give a pool's StatefulSet: the desired count, except that a pod being
/// scaled away stays until its shard replicas have moved off it (`drained`).
pub fn replicas_to_set(cluster: &str, pool: &PoolPlan, drained: &BTreeSet<String>) -> i32 {
    if pool.current <= pool.desired {
        return pool.desired;
    }
    // StatefulSets remove the highest ordinals first, so the count can only drop to just
    // above the highest ordinal that still holds data.
    (pool.desired..pool.current)
        .rev()
        .find(|&ordinal| !drained.contains(&pod_name(cluster, &pool.name, ordinal)))
        .map_or(pool.desired, |ordinal| ordinal + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(desired: i32, current: i32) -> PoolPlan<'static> {
        PoolPlan {
            name: "default".into(),
            role: None,
            storage: StorageRole::Voter,
            desired,
            current,
        }
    }

    #[test]
    fn scale_up_is_immediate() {
        assert_eq!(replicas_to_set("m", &pool(5, 3), &BTreeSet::new()), 5);
    }

    #[test]
    fn scale_down_waits_for_the_highest_undrained_ordinal() {
        let none = BTreeSet::new();
        assert_eq!(replicas_to_set("m", &pool(3, 5), &none), 5);
        let only4: BTreeSet<String> = ["m-default-4".to_string()].into();
        assert_eq!(replicas_to_set("m", &pool(3, 5), &only4), 4);
        let only3: BTreeSet<String> = ["m-default-3".to_string()].into();
        assert_eq!(
            replicas_to_set("m", &pool(3, 5), &only3),
            5,
            "ordinal 4 still holds data"
        );
        let both: BTreeSet<String> = ["m-default-3".to_string(), "m-default-4".to_string()].into();
        assert_eq!(replicas_to_set("m", &pool(3, 5), &both), 3);
    }
}
