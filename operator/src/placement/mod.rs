//! Placement: pure functions from the cluster's pools, nodes and groups (and the previously
//! published assignment) to the next [`Assignment`].
//!
//! Shards → voters and learners over storage nodes; user groups → shards; tasks → nodes.
//! No I/O here; everything is property-tested.

mod groups;
mod nodes;
mod shards;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};

use tern_crds::Assignment;
use tern_crds::cluster_role::StorageRole;
use tern_crds::common::TaskSpec;

pub use groups::invalid_pins;

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
    #[error(
        "replicationFactor is {need} but the cluster has only {have} storage nodes that can vote"
    )]
    InsufficientVoters { need: u32, have: u32 },
}

/// How much two shards' loads may differ (heaviest ÷ lightest) before a group is moved.
pub const BALANCE_RATIO: f64 = 1.25;

/// The next assignment: node ids, shard replicas, group placement and task shards, with its
/// epoch set relative to `previous` (unchanged when the content is the same, one more when not),
/// so reconciling an unchanged cluster publishes nothing new.
pub fn place(
    previous: Option<&Assignment>,
    input: &PlacementInput,
) -> Result<Assignment, PlacementError> {
    let ids = nodes::assign_ids(previous, &input.nodes);
    let by_id = ids.by_id(&input.nodes);
    let shards = shards::place_shards(previous, input, &by_id)?;
    let groups = groups::place_groups(previous, input);
    let tasks = tasks::place_tasks(previous, input, &ids.nodes);
    let computed = Assignment {
        epoch: 0,
        cluster: input.cluster.clone(),
        nodes: ids.nodes,
        next_node_id: ids.next_node_id,
        shards,
        groups: groups.groups,
        default_groups: input.default_groups,
        members: groups.members,
        domains: groups.domains,
        tasks,
    };
    Ok(Assignment::succeed(previous, computed))
}

/// Nodes (by name) that are `leaving` and hold no voter/learner in `assignment` nor in
/// `observed_voters`, so their pods can be removed.
///
/// Both must be empty: the assignment only says where replicas should be, and a pod removed
/// while its shard still counts it as a voter would cost that shard a vote.
pub fn drained(assignment: &Assignment, input: &PlacementInput) -> BTreeSet<String> {
    let held: BTreeSet<u64> = assignment
        .shards
        .iter()
        .flat_map(|s| s.voters.iter().chain(&s.learners))
        .chain(input.observed_voters.values().flatten())
        .copied()
        .collect();
    input
        .nodes
        .iter()
        .filter(|n| n.leaving)
        .filter(|n| {
            assignment
                .node_id(&n.name)
                .is_none_or(|id| !held.contains(&id))
        })
        .map(|n| n.name.clone())
        .collect()
}

/// Builders shared by the placement tests.
#[cfg(test)]
mod testkit {
    use super::*;

    /// An alive voter pod `<cluster>-<pool>-<ordinal>` with no zone.
    pub fn node(cluster: &str, pool: &str, ordinal: u32) -> NodeInfo {
        NodeInfo {
            name: format!("{cluster}-{pool}-{ordinal}"),
            pool: pool.into(),
            ordinal,
            storage: StorageRole::Voter,
            zone: None,
            health: Health::Alive,
            leaving: false,
        }
    }

    /// `n` pods of the default pool; they get ids 1..=n.
    pub fn voters(cluster: &str, n: u32) -> Vec<NodeInfo> {
        (0..n).map(|o| node(cluster, "default", o)).collect()
    }

    pub fn input(nodes: Vec<NodeInfo>, shards: u32, replication_factor: u32) -> PlacementInput {
        PlacementInput {
            cluster: "mail".into(),
            shards,
            replication_factor,
            nodes,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{input, node, voters};
    use super::*;
    use tern_crds::common::TaskName;

    fn cluster() -> PlacementInput {
        let mut inp = input(voters("mail", 4), 2, 3);
        inp.default_groups = 4;
        inp.groups = vec![GroupInput {
            name: "vip".into(),
            members: vec!["ceo@example.com".into()],
            pin: Some(2),
            ..Default::default()
        }];
        inp.nodes.extend((0..2).map(|o| NodeInfo {
            storage: StorageRole::None,
            ..node("mail", "frontend", o)
        }));
        inp.tasks = vec![PoolTasks {
            pool: "frontend".into(),
            tasks: vec![TaskSpec {
                name: TaskName::PushNotifications,
                shards: Some(2),
                nodes_per_shard: None,
                nodes: None,
            }],
        }];
        inp
    }

    #[test]
    fn a_whole_assignment() {
        let a = place(None, &cluster()).unwrap();
        assert_eq!(a.epoch, 1);
        assert_eq!(a.cluster, "mail");
        assert_eq!(a.nodes.len(), 6);
        assert_eq!(a.nodes["mail-frontend-0"].id, 5, "default < frontend");
        assert_eq!(a.next_node_id, 7);
        assert_eq!(a.shards.len(), 2);
        assert!(
            a.shards
                .iter()
                .all(|s| s.voters.len() == 3 && s.voters.iter().all(|&v| v <= 4))
        );
        assert_eq!(a.groups.len(), 5);
        assert_eq!(a.shard_of("CEO@example.com"), Some(2));
        assert!(a.shard_of("someone@example.com").is_some());
        assert_eq!(a.default_groups, 4);
        assert_eq!(
            a.tasks.iter().map(|t| t.nodes.clone()).collect::<Vec<_>>(),
            vec![vec![5], vec![6]]
        );
        assert_eq!(Assignment::from_json(&a.to_json()).unwrap(), a);
    }

    #[test]
    fn epoch_grows_exactly_when_content_changes() {
        let inp = cluster();
        let a = place(None, &inp).unwrap();
        let same = place(Some(&a), &inp).unwrap();
        assert_eq!(same, a, "same input, same assignment and epoch");

        let changes: [fn(&mut PlacementInput); 7] = [
            |i| i.nodes.push(node("mail", "frontend", 2)),
            |i| i.shards = 3,
            |i| i.default_groups = 5,
            |i| i.groups[0].pin = Some(1),
            |i| i.groups[0].members.push("cfo@example.com".into()),
            |i| i.nodes[4].health = Health::Dead,
            |i| i.cluster = "other".into(),
        ];
        for change in changes {
            let mut changed = inp.clone();
            change(&mut changed);
            let b = place(Some(&a), &changed).unwrap();
            assert_eq!(b.epoch, a.epoch + 1, "{b:?}");
            assert_eq!(place(Some(&b), &changed).unwrap().epoch, b.epoch);
        }
    }

    #[test]
    fn too_few_voters_fail_the_whole_placement() {
        let mut inp = cluster();
        inp.replication_factor = 5;
        assert_eq!(
            place(None, &inp),
            Err(PlacementError::InsufficientVoters { need: 5, have: 4 })
        );
    }

    #[test]
    fn a_leaving_node_is_drained_only_once_it_holds_nothing() {
        let mut inp = input(voters("mail", 5), 1, 3);
        let a = place(None, &inp).unwrap();
        assert_eq!(a.shards[0].voters, vec![1, 2, 3]);
        inp.nodes[0].leaving = true; // id 1, a voter
        inp.nodes[4].leaving = true; // id 5, holds nothing
        assert_eq!(drained(&a, &inp), ["mail-default-4".to_string()].into());

        let b = place(Some(&a), &inp).unwrap();
        assert_eq!(b.shards[0].voters, vec![2, 3, 4]);
        // The shard still reports node 1 as a voter: its pod must stay.
        let mut lagging = inp.clone();
        lagging.observed_voters.insert(1, [1, 2, 3].into());
        assert_eq!(drained(&b, &lagging), ["mail-default-4".to_string()].into());
        lagging.observed_voters.insert(1, [2, 3, 4].into());
        assert_eq!(
            drained(&b, &lagging),
            ["mail-default-0".to_string(), "mail-default-4".to_string()].into()
        );
        // Not leaving means never drained, however empty.
        inp.nodes[4].leaving = false;
        assert_eq!(drained(&b, &inp), ["mail-default-0".to_string()].into());
    }

    #[test]
    fn a_leaving_learner_is_drained_once_replaced() {
        let mut inp = input(voters("mail", 3), 1, 3);
        inp.read_replicas = 1;
        inp.nodes.extend((0..2).map(|o| NodeInfo {
            storage: StorageRole::Learner,
            ..node("mail", "replica", o)
        }));
        let a = place(None, &inp).unwrap();
        assert_eq!(a.shards[0].learners, vec![4]);
        inp.nodes[3].leaving = true;
        assert!(drained(&a, &inp).is_empty());
        let b = place(Some(&a), &inp).unwrap();
        assert_eq!(b.shards[0].learners, vec![5]);
        assert_eq!(drained(&b, &inp), ["mail-replica-0".to_string()].into());
    }
}
