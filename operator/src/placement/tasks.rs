//! Background tasks → nodes of the pool that runs them.
//!
//! Within a task shard the first node acts and the others stand by, so the acting node should
//! be live and should not change without reason: kept nodes keep their order, and a task shard
//! only gains nodes when it lost some. Only Alive nodes count as live here — unlike a data
//! replica, a task is cheap to move and must not sit on a node gossip doubts.

use std::collections::{BTreeMap, BTreeSet};

use tern_crds::Assignment;
use tern_crds::assignment::{NodeEntry, TaskAssignment};
use tern_crds::common::TaskSpec;

use super::{Health, NodeInfo, PlacementInput};

/// Upper bounds from the ClusterRole schema, applied again so a bad value cannot make
/// placement build millions of task shards.
const MAX_TASK_SHARDS: u32 = 1024;
const MAX_NODES_PER_SHARD: usize = 16;

/// Whether a node may act for a task.
fn is_live(node: &NodeInfo) -> bool {
    node.health == Health::Alive && !node.leaving
}

/// One pool's node, as tasks see it.
#[derive(Clone, Copy)]
struct Member {
    id: u64,
    ordinal: u32,
    live: bool,
}

/// Task shards of every pool's tasks, ordered by pool, task name and shard.
pub fn place_tasks(
    previous: Option<&Assignment>,
    input: &PlacementInput,
    ids: &BTreeMap<String, NodeEntry>,
) -> Vec<TaskAssignment> {
    // A pool or task named twice counts once: the first mention wins.
    // Keyed by the task's written name, which is the order the output promises.
    let mut specs: BTreeMap<(&str, &str), &TaskSpec> = BTreeMap::new();
    for pool in &input.tasks {
        for spec in &pool.tasks {
            specs
                .entry((pool.pool.as_str(), spec.name.as_str()))
                .or_insert(spec);
        }
    }

    let mut out = Vec::new();
    for ((pool, _), spec) in specs {
        let task = spec.name;
        let members = pool_members(input, ids, pool);
        let shards: Vec<Vec<u64>> = if let Some(lists) = &spec.nodes {
            explicit(lists, &members)
        } else if spec.shards.is_some() || spec.nodes_per_shard.is_some() {
            let count = clamp(spec.shards, MAX_TASK_SHARDS);
            let per = clamp(spec.nodes_per_shard, MAX_NODES_PER_SHARD as u32) as usize;
            let before: BTreeMap<u32, &[u64]> = previous
                .map(|p| {
                    p.tasks
                        .iter()
                        .filter(|t| t.pool == pool && t.task == task)
                        .map(|t| (t.shard, t.nodes.as_slice()))
                        .collect()
                })
                .unwrap_or_default();
            sharded(count, per, &members, &before)
        } else {
            vec![members.iter().filter(|m| m.live).map(|m| m.id).collect()]
        };
        out.extend(
            shards
                .into_iter()
                .zip(1..)
                .map(|(nodes, shard)| TaskAssignment {
                    task,
                    pool: pool.to_string(),
                    shard,
                    nodes,
                }),
        );
    }
    out
}

/// A spec count made at least 1 and at most `max`; absent means 1.
fn clamp(value: Option<i32>, max: u32) -> u32 {
    u32::try_from(value.unwrap_or(1)).unwrap_or(0).clamp(1, max)
}

/// The pool's nodes by ordinal, each name once.
fn pool_members(
    input: &PlacementInput,
    ids: &BTreeMap<String, NodeEntry>,
    pool: &str,
) -> Vec<Member> {
    let mut seen = BTreeSet::new();
    let mut members: Vec<Member> = input
        .nodes
        .iter()
        .filter(|n| n.pool == pool && seen.insert(n.name.as_str()))
        .filter_map(|n| {
            Some(Member {
                id: ids.get(&n.name)?.id,
                ordinal: n.ordinal,
                live: is_live(n),
            })
        })
        .collect();
    members.sort_by_key(|m| (m.ordinal, m.id));
    members
}

/// Explicit task shards: each string's ordinals, as ids, live nodes first (in the listed order),
/// so the acting node is live whenever the shard has a live node. Unknown ordinals are skipped:
/// the pool may not have scaled up to them yet.
fn explicit(lists: &[String], members: &[Member]) -> Vec<Vec<u64>> {
    lists
        .iter()
        .map(|list| {
            let mut listed: Vec<Member> = Vec::new();
            for ordinal in list.split(',').filter_map(|o| o.trim().parse::<u32>().ok()) {
                if let Some(m) = members.iter().find(|m| m.ordinal == ordinal)
                    && !listed.iter().any(|l| l.id == m.id)
                {
                    listed.push(*m);
                }
            }
            // A stable sort: live ones first, each side in the listed order.
            listed.sort_by_key(|m| !m.live);
            listed.into_iter().map(|m| m.id).collect()
        })
        .collect()
}

/// `count` task shards of `per` live nodes each.
///
/// Each shard keeps its previous live nodes (in their order, so the acting node stays), then is
/// filled from the live nodes holding the fewest shards of this task. When there are enough live
/// nodes the shards are disjoint — a node kept by two shards stays in the first — so no two
/// shards share an acting node; with too few, a node serves several shards, never one twice.
fn sharded(
    count: u32,
    per: usize,
    members: &[Member],
    before: &BTreeMap<u32, &[u64]>,
) -> Vec<Vec<u64>> {
    let live: Vec<u64> = members.iter().filter(|m| m.live).map(|m| m.id).collect();
    let disjoint = live.len() >= count as usize * per;
    let mut claimed: BTreeSet<u64> = BTreeSet::new();
    let mut shards: Vec<Vec<u64>> = (1..=count)
        .map(|shard| {
            let mut kept: Vec<u64> = Vec::new();
            for &id in before.get(&shard).copied().unwrap_or_default() {
                let free = !disjoint || !claimed.contains(&id);
                if kept.len() < per && live.contains(&id) && !kept.contains(&id) && free {
                    kept.push(id);
                    claimed.insert(id);
                }
            }
            kept
        })
        .collect();

    let mut load: BTreeMap<u64, usize> = BTreeMap::new();
    for id in shards.iter().flatten() {
        *load.entry(*id).or_insert(0) += 1;
    }
    for shard in &mut shards {
        while shard.len() < per {
            // `live` is in ordinal order, and min_by_key keeps the first of equals.
            let Some(&pick) = live
                .iter()
                .filter(|id| !shard.contains(id))
                .min_by_key(|id| load.get(id).copied().unwrap_or(0))
            else {
                break;
            };
            shard.push(pick);
            *load.entry(pick).or_insert(0) += 1;
        }
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::PoolTasks;
    use crate::placement::nodes::assign_ids;
    use crate::placement::testkit::{input, node};
    use proptest::prelude::*;
    use tern_crds::common::TaskName;

    fn spec(name: TaskName) -> TaskSpec {
        TaskSpec {
            name,
            shards: None,
            nodes_per_shard: None,
            nodes: None,
        }
    }

    /// A `frontend` pool of `n` nodes (ids 1..=n by ordinal) running `specs`.
    fn frontend(n: u32, specs: Vec<TaskSpec>) -> PlacementInput {
        let mut inp = input((0..n).map(|o| node("mail", "frontend", o)).collect(), 0, 0);
        inp.tasks = vec![PoolTasks {
            pool: "frontend".into(),
            tasks: specs,
        }];
        inp
    }

    fn run(previous: Option<&Assignment>, inp: &PlacementInput) -> Assignment {
        let ids = assign_ids(previous, &inp.nodes);
        Assignment {
            tasks: place_tasks(previous, inp, &ids.nodes),
            nodes: ids.nodes,
            next_node_id: ids.next_node_id,
            ..Default::default()
        }
    }

    fn nodes_of(a: &Assignment) -> Vec<Vec<u64>> {
        a.tasks.iter().map(|t| t.nodes.clone()).collect()
    }

    fn push(shards: i32, per: i32) -> TaskSpec {
        TaskSpec {
            shards: Some(shards),
            nodes_per_shard: Some(per),
            ..spec(TaskName::PushNotifications)
        }
    }

    #[test]
    fn push_notification_shards_are_disjoint() {
        let a = run(None, &frontend(6, vec![push(3, 2)]));
        assert_eq!(nodes_of(&a), vec![vec![1, 2], vec![3, 4], vec![5, 6]]);
        assert!(
            a.tasks
                .iter()
                .all(|t| t.task == TaskName::PushNotifications && t.pool == "frontend")
        );
        assert_eq!(
            a.tasks.iter().map(|t| t.shard).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_dead_nodes_task_shards_move_to_live_nodes() {
        let mut inp = frontend(4, vec![push(2, 1)]);
        let a = run(None, &inp);
        assert_eq!(nodes_of(&a), vec![vec![1], vec![2]]);
        inp.nodes[0].health = Health::Dead;
        let b = run(Some(&a), &inp);
        assert_eq!(
            nodes_of(&b),
            vec![vec![3], vec![2]],
            "only the dead node's shard changes"
        );
        // A suspect node acts for nothing either, but a returning node takes nothing back.
        inp.nodes[0].health = Health::Alive;
        inp.nodes[1].health = Health::Suspect;
        let c = run(Some(&b), &inp);
        assert_eq!(nodes_of(&c), vec![vec![3], vec![1]]);
    }

    #[test]
    fn the_acting_node_stays_when_a_standby_dies() {
        let mut inp = frontend(5, vec![push(2, 2)]);
        let a = run(None, &inp);
        assert_eq!(nodes_of(&a), vec![vec![1, 2], vec![3, 4]]);
        inp.nodes[1].leaving = true;
        let b = run(Some(&a), &inp);
        assert_eq!(nodes_of(&b), vec![vec![1, 5], vec![3, 4]]);
    }

    #[test]
    fn too_few_nodes_share_but_never_repeat_within_a_shard() {
        let a = run(None, &frontend(2, vec![push(3, 1)]));
        assert_eq!(nodes_of(&a), vec![vec![1], vec![2], vec![1]]);
        let b = run(None, &frontend(1, vec![push(2, 3)]));
        assert_eq!(nodes_of(&b), vec![vec![1], vec![1]]);
        let mut none_live = frontend(2, vec![push(2, 1)]);
        none_live
            .nodes
            .iter_mut()
            .for_each(|n| n.health = Health::Dead);
        assert_eq!(
            nodes_of(&run(None, &none_live)),
            vec![Vec::<u64>::new(), vec![]]
        );
    }

    #[test]
    fn shards_become_disjoint_again_when_nodes_return() {
        let mut inp = frontend(3, vec![push(3, 1)]);
        inp.nodes[1].health = Health::Dead;
        inp.nodes[2].health = Health::Dead;
        let a = run(None, &inp);
        assert_eq!(nodes_of(&a), vec![vec![1], vec![1], vec![1]]);
        inp.nodes[1].health = Health::Alive;
        inp.nodes[2].health = Health::Alive;
        let b = run(Some(&a), &inp);
        assert_eq!(nodes_of(&b), vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn explicit_lists_map_ordinals_to_ids_live_first() {
        let mut inp = frontend(
            4,
            vec![TaskSpec {
                nodes: Some(vec!["0,3".into(), "1,2,9".into(), "7".into()]),
                ..spec(TaskName::AcmeRenew)
            }],
        );
        inp.nodes[0].health = Health::Dead;
        inp.nodes[2].health = Health::Suspect;
        let a = run(None, &inp);
        assert_eq!(nodes_of(&a), vec![vec![4, 1], vec![2, 3], vec![]]);
    }

    #[test]
    fn a_plain_task_runs_on_every_live_node() {
        let mut inp = frontend(3, vec![spec(TaskName::PurgeStores)]);
        inp.nodes[1].leaving = true;
        inp.nodes.push(node("mail", "backend", 0));
        let a = run(None, &inp);
        // Pool "backend" is numbered first, so frontend pods are ids 2..=4.
        assert_eq!(nodes_of(&a), vec![vec![2, 4]]);
    }

    #[test]
    fn output_is_ordered_by_pool_task_and_shard() {
        let mut inp = frontend(
            2,
            vec![
                push(2, 1),
                spec(TaskName::PurgeStores),
                spec(TaskName::AcmeRenew),
            ],
        );
        inp.nodes.push(node("mail", "backend", 0));
        inp.tasks.insert(
            1,
            PoolTasks {
                pool: "backend".into(),
                tasks: vec![spec(TaskName::MetricsPush)],
            },
        );
        let a = run(None, &inp);
        let order: Vec<_> = a
            .tasks
            .iter()
            .map(|t| (t.pool.as_str(), t.task, t.shard))
            .collect();
        assert_eq!(
            order,
            vec![
                ("backend", TaskName::MetricsPush, 1),
                ("frontend", TaskName::AcmeRenew, 1),
                ("frontend", TaskName::PurgeStores, 1),
                ("frontend", TaskName::PushNotifications, 1),
                ("frontend", TaskName::PushNotifications, 2),
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random pools and health changes: task shards hold only live nodes, each once; they are
        /// disjoint and full when there are enough live nodes; a node acts for its shard
        /// until it stops being live.
        #[test]
        fn sharded_tasks_stay_well_formed(
            size in 0u32..10,
            count in 1i32..5,
            per in 1i32..4,
            steps in prop::collection::vec(prop::collection::vec(0u8..4, 10), 1..8),
        ) {
            let mut inp = frontend(size, vec![push(count, per)]);
            let mut prev: Option<Assignment> = None;
            for healths in steps {
                for (n, h) in inp.nodes.iter_mut().zip(&healths) {
                    n.health = match h { 0 => Health::Dead, 1 => Health::Suspect, _ => Health::Alive };
                }
                let a = run(prev.as_ref(), &inp);
                let live: BTreeSet<u64> = inp.nodes.iter().filter(|n| is_live(n)).map(|n| a.nodes[&n.name].id).collect();
                prop_assert_eq!(a.tasks.len(), count as usize);
                let mut all = Vec::new();
                for t in &a.tasks {
                    let distinct: BTreeSet<u64> = t.nodes.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), t.nodes.len());
                    prop_assert!(distinct.is_subset(&live));
                    prop_assert_eq!(t.nodes.len(), (per as usize).min(live.len()));
                    all.extend(t.nodes.iter().copied());
                    // A node two earlier shards shared may leave the later one to make them disjoint.
                    if let Some(p) = &prev
                        && let Some(&acting) = p.tasks[t.shard as usize - 1].nodes.first()
                        && live.contains(&acting)
                        && !p.tasks[..t.shard as usize - 1].iter().any(|b| b.nodes.contains(&acting))
                    {
                        prop_assert_eq!(t.nodes.first(), Some(&acting), "a live acting node keeps acting");
                    }
                }
                if live.len() >= (count * per) as usize {
                    let distinct: BTreeSet<u64> = all.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), all.len(), "disjoint");
                }
                prev = Some(a);
            }
        }
    }
}
