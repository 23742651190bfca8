//! Shards → voters and learners over the storage nodes.
//!
//! Moving a replica copies a shard's whole store, so placement keeps what it can: a voter stays
//! while its node can vote (suspicion alone moves nothing), vacancies go to the least-loaded
//! node, and balance moves happen one voter per shard per epoch, only in an epoch with no
//! repair to do. The shard leader carries a changed voter set out one Raft step at a time;
//! the step limit here additionally bounds how far a target may run ahead of the voters the
//! shard actually has.
//!
//! A dead voter is replaced as soon as a live node can take its place. Until then the shard
//! keeps it: Raft membership must name `replicationFactor` voters, the live majority keeps the
//! shard working, and a node that comes back rejoins. Only a spec that configures fewer
//! voter nodes than the replication factor makes placement fail.

use std::collections::{BTreeMap, BTreeSet};

use tern_crds::Assignment;
use tern_crds::assignment::ShardAssignment;
use tern_crds::cluster_role::StorageRole;

use super::{Health, NodeInfo, PlacementError, PlacementInput};

/// Whether a node may be given a voter replica.
pub fn can_vote(node: &NodeInfo) -> bool {
    voter_capable(node) && node.health != Health::Dead
}

/// Whether a node is configured to vote and stays, whatever its health: a dead one only
/// votes again when it comes back, but until a live node replaces it a shard keeps (or, when
/// nothing else exists, is given) it as a voter.
pub fn voter_capable(node: &NodeInfo) -> bool {
    node.storage == StorageRole::Voter && !node.leaving
}

/// Whether a node may be given a learner replica.
pub fn can_learn(node: &NodeInfo) -> bool {
    node.storage == StorageRole::Learner && node.health != Health::Dead && !node.leaving
}

/// A node that is declared dead or no longer exists; its replicas need no safe hand-over.
fn is_dead(nodes: &BTreeMap<u64, &NodeInfo>, id: u64) -> bool {
    nodes.get(&id).is_none_or(|n| n.health == Health::Dead)
}

/// How many live voters a shard may lose in one epoch: one, as long as at least half of its
/// live voters stay. With three or more that keeps a strict majority; a shard down to one live
/// voter first gains its replacement, and the pair may then shed the old one — a single Raft
/// change that is always safe, and without which a one-replica shard could never be drained.
pub fn allowed_live_drops(live_current: usize) -> usize {
    usize::from(live_current >= 2)
}

/// One shard while it is being worked out.
struct Plan {
    id: u32,
    /// Voters the previous assignment asked for.
    target: BTreeSet<u64>,
    /// Voters the shard has now (reported, else the previous target).
    current: BTreeSet<u64>,
    /// Desired voters: exactly `replication_factor` voter-capable nodes, live ones first.
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
}

/// Voters and learners of shards `1..=input.shards`.
pub fn place_shards(
    previous: Option<&Assignment>,
    input: &PlacementInput,
    nodes: &BTreeMap<u64, &NodeInfo>,
) -> Result<Vec<ShardAssignment>, PlacementError> {
    let rf = input.replication_factor as usize;
    let capable: BTreeSet<u64> = nodes
        .iter()
        .filter(|(_, n)| voter_capable(n))
        .map(|(&id, _)| id)
        .collect();
    if capable.len() < rf {
        return Err(PlacementError::InsufficientVoters {
            need: input.replication_factor,
            have: u32::try_from(capable.len()).unwrap_or(u32::MAX),
        });
    }
    let (eligible, dead): (BTreeSet<u64>, BTreeSet<u64>) = capable
        .iter()
        .partition(|id| nodes.get(id).is_some_and(|n| can_vote(n)));
    let learner_pool: BTreeSet<u64> = nodes
        .iter()
        .filter(|(_, n)| can_learn(n))
        .map(|(&id, _)| id)
        .collect();

    let previous_shards: BTreeMap<u32, &ShardAssignment> = previous
        .map(|p| p.shards.iter().map(|s| (s.id, s)).collect())
        .unwrap_or_default();

    // Keep every previous voter and learner that may stay.
    let mut plans: Vec<Plan> = (1..=input.shards)
        .map(|id| {
            let before = previous_shards.get(&id);
            let target: BTreeSet<u64> = before
                .map(|s| s.voters.iter().copied().collect())
                .unwrap_or_default();
            let current = input
                .observed_voters
                .get(&id)
                .cloned()
                .unwrap_or_else(|| target.clone());
            let voters = target.intersection(&eligible).copied().collect();
            let learners = before
                .map(|s| {
                    s.learners
                        .iter()
                        .copied()
                        .filter(|l| learner_pool.contains(l))
                        .collect()
                })
                .unwrap_or_default();
            Plan {
                id,
                target,
                current,
                voters,
                learners,
            }
        })
        .collect();

    let mut voter_load = load(plans.iter().map(|p| &p.voters));
    let mut learner_load = load(plans.iter().map(|p| &p.learners));
    for plan in &mut plans {
        trim(&mut plan.voters, rf, &mut voter_load);
        trim(
            &mut plan.learners,
            input.read_replicas as usize,
            &mut learner_load,
        );
    }
    for plan in &mut plans {
        fill(&mut plan.voters, rf, &eligible, &mut voter_load, nodes);
        fill(
            &mut plan.learners,
            input.read_replicas as usize,
            &learner_pool,
            &mut learner_load,
            nodes,
        );
    }
    // Fewer live nodes than voters needed: every shard now holds all the live ones, and the
    // vacancies stay with the dead voters it already has, else go to other dead nodes.
    if eligible.len() < rf {
        // A live voter that is being drained stays until a live node can take its place:
        // handing its seat to a dead node would cost the shard a failure it could survive.
        let live_leaving: BTreeSet<u64> = nodes
            .iter()
            .filter(|(_, n)| {
                n.storage == StorageRole::Voter && n.leaving && n.health != Health::Dead
            })
            .map(|(&id, _)| id)
            .collect();
        for plan in &mut plans {
            let own_live = plan.target.intersection(&live_leaving).copied().collect();
            fill(&mut plan.voters, rf, &own_live, &mut voter_load, nodes);
        }
        for plan in &mut plans {
            let own_dead = plan.target.intersection(&dead).copied().collect();
            fill(&mut plan.voters, rf, &own_dead, &mut voter_load, nodes);
        }
        for plan in &mut plans {
            fill(&mut plan.voters, rf, &dead, &mut voter_load, nodes);
        }
    }
    let repaired = plans.iter().any(|plan| plan.voters != plan.target);

    // Balance only when nothing needed repair, so that losing a node moves nothing but its own
    // replicas, and only shards that hold exactly what they were asked to.
    if !repaired {
        for plan in &mut plans {
            if plan.voters == plan.current {
                rebalance_one(&mut plan.voters, &eligible, &mut voter_load, nodes);
            }
        }
    }

    Ok(plans
        .into_iter()
        .map(|plan| {
            let voters = hold_back(&plan, nodes);
            ShardAssignment {
                id: plan.id,
                voters: voters.into_iter().collect(),
                learners: plan.learners.into_iter().collect(),
            }
        })
        .collect())
}

/// Cuts `members` down to `size`, dropping the most loaded nodes first.
///
/// A shard has more members that may stay than it needs when the size was lowered, or when the
/// previous epoch held back a voter that a balance move replaced: that voter is on the more
/// loaded node (the move went from a node holding at least two more replicas), so dropping the
/// most loaded finishes the move instead of undoing it.
fn trim(members: &mut BTreeSet<u64>, size: usize, load: &mut BTreeMap<u64, usize>) {
    while members.len() > size {
        let Some(&heaviest) = members
            .iter()
            .max_by_key(|&&id| (load.get(&id).copied().unwrap_or(0), id))
        else {
            return;
        };
        members.remove(&heaviest);
        if let Some(l) = load.get_mut(&heaviest) {
            *l -= 1;
        }
    }
}

/// Replicas per node over a set of shards.
fn load<'a>(sets: impl Iterator<Item = &'a BTreeSet<u64>>) -> BTreeMap<u64, usize> {
    let mut load = BTreeMap::new();
    for id in sets.flatten() {
        *load.entry(*id).or_insert(0) += 1;
    }
    load
}

/// Zones that `members` use, ignoring nodes whose zone is unknown.
fn zones<'a>(
    members: impl Iterator<Item = &'a u64>,
    nodes: &'a BTreeMap<u64, &NodeInfo>,
) -> BTreeSet<&'a str> {
    members
        .filter_map(|id| nodes.get(id).and_then(|n| n.zone.as_deref()))
        .collect()
}

/// Whether a node's zone is known and already used by the shard.
fn zone_taken(id: u64, used: &BTreeSet<&str>, nodes: &BTreeMap<u64, &NodeInfo>) -> bool {
    nodes
        .get(&id)
        .and_then(|n| n.zone.as_deref())
        .is_some_and(|z| used.contains(z))
}

/// Fills `members` up to `size` from `pool`: fewest replicas first, then a zone the shard does
/// not use yet, then the lowest id.
fn fill(
    members: &mut BTreeSet<u64>,
    size: usize,
    pool: &BTreeSet<u64>,
    load: &mut BTreeMap<u64, usize>,
    nodes: &BTreeMap<u64, &NodeInfo>,
) {
    while members.len() < size {
        let used = zones(members.iter(), nodes);
        let pick = pool
            .iter()
            .filter(|id| !members.contains(id))
            .min_by_key(|&&id| {
                (
                    load.get(&id).copied().unwrap_or(0),
                    zone_taken(id, &used, nodes),
                    id,
                )
            });
        let Some(&pick) = pick else { return };
        members.insert(pick);
        *load.entry(pick).or_insert(0) += 1;
    }
}

/// Moves at most one voter of a shard from a node holding more than one replica over the
/// least-loaded node, without narrowing the shard's spread over zones.
fn rebalance_one(
    voters: &mut BTreeSet<u64>,
    eligible: &BTreeSet<u64>,
    load: &mut BTreeMap<u64, usize>,
    nodes: &BTreeMap<u64, &NodeInfo>,
) {
    let count = |load: &BTreeMap<u64, usize>, id: u64| load.get(&id).copied().unwrap_or(0);
    let mut from: Vec<u64> = voters.iter().copied().collect();
    from.sort_by_key(|&id| (std::cmp::Reverse(count(load, id)), std::cmp::Reverse(id)));
    let zone_count = zones(voters.iter(), nodes).len();
    for &heavy in &from {
        let rest: BTreeSet<u64> = voters.iter().copied().filter(|&v| v != heavy).collect();
        let used = zones(rest.iter(), nodes);
        let mut to: Vec<u64> = eligible
            .iter()
            .copied()
            .filter(|id| !voters.contains(id))
            .collect();
        to.sort_by_key(|&id| (count(load, id), zone_taken(id, &used, nodes), id));
        for light in to {
            if count(load, heavy) <= count(load, light) + 1 {
                break;
            }
            let after = zones(rest.iter().chain(std::iter::once(&light)), nodes).len();
            if after < zone_count {
                continue;
            }
            voters.remove(&heavy);
            voters.insert(light);
            *load.entry(heavy).or_insert(0) -= 1;
            *load.entry(light).or_insert(0) += 1;
            return;
        }
    }
}

/// The published voter set: the desired voters plus the live voters the shard has now that it
/// may not lose yet (see [`allowed_live_drops`]).
///
/// When more live voters leave than the limit allows, the one the previous assignment had
/// already dropped goes first, so a hand-over in progress is finished rather than restarted;
/// then nodes that can no longer vote; then the lowest id.
fn hold_back(plan: &Plan, nodes: &BTreeMap<u64, &NodeInfo>) -> BTreeSet<u64> {
    let live: Vec<u64> = plan
        .current
        .iter()
        .copied()
        .filter(|&id| !is_dead(nodes, id))
        .collect();
    let mut dropped: Vec<u64> = live
        .iter()
        .copied()
        .filter(|id| !plan.voters.contains(id))
        .collect();
    dropped.sort_by_key(|&id| {
        (
            plan.target.contains(&id),
            nodes.get(&id).is_some_and(|n| can_vote(n)),
            id,
        )
    });
    let mut voters = plan.voters.clone();
    voters.extend(dropped.into_iter().skip(allowed_live_drops(live.len())));
    voters
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::testkit::{input, node, voters};
    use crate::placement::{NodeInfo, place};
    use proptest::prelude::*;

    fn voter_sets(a: &Assignment) -> Vec<BTreeSet<u64>> {
        a.shards
            .iter()
            .map(|s| s.voters.iter().copied().collect())
            .collect()
    }

    /// Places until the assignment stops changing, as repeated reconciles would.
    fn settle(mut a: Assignment, inp: &PlacementInput) -> Assignment {
        for _ in 0..100 {
            let next = place(Some(&a), inp).unwrap();
            if next.epoch == a.epoch {
                return next;
            }
            a = next;
        }
        panic!("placement did not settle");
    }

    fn load_of(a: &Assignment) -> BTreeMap<u64, usize> {
        load(voter_sets(a).iter())
    }

    #[test]
    fn each_shard_has_rf_distinct_eligible_voters() {
        let inp = input(voters("mail", 5), 4, 3);
        let a = place(None, &inp).unwrap();
        assert_eq!(
            a.shards.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        for s in &a.shards {
            assert_eq!(s.voters.len(), 3);
            assert!(
                s.voters.windows(2).all(|w| w[0] < w[1]),
                "sorted and distinct: {:?}",
                s.voters
            );
            assert!(s.voters.iter().all(|id| (1..=5).contains(id)));
        }
        // 12 replicas over 5 nodes: nobody holds more than one above anyone else.
        let loads = load_of(&a);
        assert_eq!(loads.len(), 5);
        assert!(loads.values().max().unwrap() - loads.values().min().unwrap() <= 1);
    }

    #[test]
    fn ineligible_nodes_get_no_voters() {
        let mut nodes = voters("mail", 6);
        nodes[0].health = Health::Dead;
        nodes[1].leaving = true;
        nodes[2].storage = StorageRole::Learner;
        nodes[3].storage = StorageRole::None;
        let inp = input(nodes, 3, 1);
        let a = place(None, &inp).unwrap();
        for s in &a.shards {
            assert!(s.voters.iter().all(|&id| id >= 5), "{:?}", s.voters);
        }
    }

    #[test]
    fn a_draining_voter_keeps_its_seat_rather_than_hand_it_to_a_dead_node() {
        // rf 3 on nodes 1..3; node 4 joins and dies; node 3 is then scaled away.
        let inp = input(voters("mail", 4), 1, 3);
        let a = place(None, &inp).unwrap();
        let mut next = inp.clone();
        next.nodes[3].health = Health::Dead;
        let b = place(Some(&a), &next).unwrap();
        let held = voter_sets(&b)[0].clone();
        let mut leaving = next.clone();
        // The live voter that is not node 4 and has the highest id leaves.
        let leaver = *held.iter().filter(|&&id| id != 4).max().unwrap();
        leaving.nodes[(leaver - 1) as usize].leaving = true;
        let c = place(Some(&b), &leaving).unwrap();
        assert!(
            voter_sets(&c)[0].contains(&leaver),
            "scale-down waits for a live replacement: {:?}",
            voter_sets(&c)
        );
        assert!(
            !crate::placement::drained(&c, &leaving)
                .contains(&leaving.nodes[(leaver - 1) as usize].name)
        );
    }

    #[test]
    fn a_dead_voter_stays_until_a_live_node_replaces_it() {
        let inp = input(voters("mail", 3), 2, 3);
        let a = place(None, &inp).unwrap();
        let mut one_dead = inp.clone();
        one_dead.nodes[2].health = Health::Dead;
        // Each shard keeps its live majority and its dead voter: nobody can replace it.
        let b = place(Some(&a), &one_dead).unwrap();
        assert_eq!(voter_sets(&b), vec![[1, 2, 3].into(), [1, 2, 3].into()]);
        assert_eq!(b.epoch, a.epoch);
        // Shards that are new while the node is dead get it too: Raft needs rf voters.
        let mut more = one_dead.clone();
        more.shards = 3;
        let c = place(Some(&b), &more).unwrap();
        assert_eq!(c.shards[2].voters, vec![1, 2, 3]);
        assert_eq!(
            place(None, &one_dead).unwrap().shards[0].voters,
            vec![1, 2, 3]
        );
        // A new node replaces the dead voter everywhere at once.
        more.nodes.push(node("mail", "default", 3));
        let d = place(Some(&c), &more).unwrap();
        assert!(d.shards.iter().all(|s| s.voters == vec![1, 2, 4]), "{d:?}");
    }

    #[test]
    fn dead_nodes_fill_only_what_live_ones_cannot() {
        // rf 5 over 3 live and 3 dead nodes: every shard has the 3 live ones, and the dead
        // ones are spread by load.
        let mut nodes = voters("mail", 6);
        for n in &mut nodes[3..] {
            n.health = Health::Dead;
        }
        let inp = input(nodes, 3, 5);
        let a = place(None, &inp).unwrap();
        for s in &a.shards {
            assert_eq!(s.voters.len(), 5);
            assert!(s.voters.starts_with(&[1, 2, 3]), "{s:?}");
        }
        let loads = load_of(&a);
        assert_eq!([loads[&4], loads[&5], loads[&6]], [2, 2, 2]);
        assert_eq!(place(Some(&a), &inp).unwrap().epoch, a.epoch, "stable");
    }

    #[test]
    fn a_spec_with_too_few_voter_nodes_is_an_error() {
        let mut nodes = voters("mail", 2);
        nodes.push(NodeInfo {
            storage: StorageRole::Learner,
            ..node("mail", "replica", 0)
        });
        nodes[1].health = Health::Dead;
        let err = place(None, &input(nodes, 1, 3)).unwrap_err();
        assert_eq!(err, PlacementError::InsufficientVoters { need: 3, have: 2 });
    }

    #[test]
    fn leaving_below_the_replication_factor_is_an_error() {
        let inp = input(voters("mail", 3), 1, 3);
        let a = place(None, &inp).unwrap();
        let mut shrunk = inp.clone();
        shrunk.nodes[1].leaving = true;
        shrunk.nodes[2].leaving = true;
        let err = place(Some(&a), &shrunk).unwrap_err();
        assert_eq!(err, PlacementError::InsufficientVoters { need: 3, have: 1 });
    }

    #[test]
    fn every_shard_spans_three_zones() {
        for layout in [
            ["a", "b", "c", "a", "b", "c", "a", "b", "c"],
            ["a", "a", "a", "b", "b", "b", "c", "c", "c"],
        ] {
            for shards in 1..=8 {
                let mut nodes = voters("mail", 9);
                for (n, z) in nodes.iter_mut().zip(layout) {
                    n.zone = Some(z.into());
                }
                let a = place(None, &input(nodes.clone(), shards, 3)).unwrap();
                let by_id: BTreeMap<u64, &NodeInfo> = (1..).zip(nodes.iter()).collect();
                for s in &a.shards {
                    assert_eq!(
                        zones(s.voters.iter(), &by_id).len(),
                        3,
                        "shards={shards} {layout:?} {s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn suspicion_alone_moves_nothing() {
        let inp = input(voters("mail", 4), 4, 3);
        let a = place(None, &inp).unwrap();
        let mut suspect = inp.clone();
        suspect.nodes[0].health = Health::Suspect;
        let b = place(Some(&a), &suspect).unwrap();
        assert_eq!(voter_sets(&a), voter_sets(&b));
        assert_eq!(a.epoch, b.epoch);
    }

    #[test]
    fn adding_a_node_moves_at_most_one_voter_per_shard() {
        let inp = input(voters("mail", 3), 6, 3);
        let a = settle(place(None, &inp).unwrap(), &inp);
        let mut grown = inp.clone();
        grown.nodes.push(node("mail", "default", 3));
        let b = place(Some(&a), &grown).unwrap();
        let mut moved = 0;
        for (old, new) in voter_sets(&a).iter().zip(voter_sets(&b)) {
            assert_eq!(new.len(), 3);
            let gone = old.difference(&new).count();
            assert!(gone <= 1, "{old:?} → {new:?}");
            if gone == 1 {
                moved += 1;
                assert!(new.contains(&4), "moves go to the new node");
            }
        }
        assert!(moved >= 1, "the new empty node gets something");
        // Settling reaches 18 replicas over 4 nodes: 4 or 5 each.
        let c = settle(b, &grown);
        assert!(
            load_of(&c).values().all(|&l| l == 4 || l == 5),
            "{:?}",
            load_of(&c)
        );
    }

    #[test]
    fn adding_a_node_to_a_balanced_cluster_moves_nothing_needlessly() {
        // 3 shards × 3 voters over 4 nodes: loads 3,2,2,2; a fifth node at 0 differs by > 1,
        // but afterwards nothing should keep churning.
        let inp = input(voters("mail", 4), 3, 3);
        let a = settle(place(None, &inp).unwrap(), &inp);
        let mut grown = inp.clone();
        grown.nodes.push(node("mail", "default", 4));
        let b = settle(place(Some(&a), &grown).unwrap(), &grown);
        let loads = load_of(&b);
        assert!(loads.values().max().unwrap() - loads.values().min().unwrap() <= 1);
        assert!(b.epoch <= a.epoch + 3, "settles in a few epochs");
    }

    #[test]
    fn a_dead_node_moves_only_its_own_replicas() {
        let inp = input(voters("mail", 6), 4, 3);
        let a = settle(place(None, &inp).unwrap(), &inp);
        let mut killed = inp.clone();
        killed.nodes[1].health = Health::Dead;
        let b = place(Some(&a), &killed).unwrap();
        assert_eq!(b.epoch, a.epoch + 1);
        for (old, new) in voter_sets(&a).iter().zip(voter_sets(&b)) {
            assert_eq!(new.len(), 3);
            assert!(!new.contains(&2));
            if old.contains(&2) {
                assert_eq!(old.difference(&new).collect::<Vec<_>>(), vec![&2]);
                assert_eq!(new.difference(old).count(), 1);
            } else {
                assert_eq!(old, &new);
            }
        }
    }

    #[test]
    fn repairs_come_before_balancing() {
        // An unbalanced cluster loses node 1 while node 5 joins: that epoch only repairs.
        let mut inp = input(voters("mail", 4), 4, 3);
        let mut a = place(None, &inp).unwrap();
        for (s, v) in
            a.shards
                .iter_mut()
                .zip([vec![1, 2, 3], vec![2, 3, 4], vec![2, 3, 4], vec![2, 3, 4]])
        {
            s.voters = v;
        }
        inp.nodes[0].health = Health::Dead;
        inp.nodes.push(node("mail", "default", 4));
        let b = place(Some(&a), &inp).unwrap();
        assert_eq!(b.shards[0].voters, vec![2, 3, 5]);
        assert_eq!(voter_sets(&a)[1..], voter_sets(&b)[1..]);
        // The next epoch balances, one voter per shard.
        let c = place(Some(&b), &inp).unwrap();
        for (old, new) in voter_sets(&b).iter().zip(voter_sets(&c)) {
            assert!(old.difference(&new).count() <= 1);
        }
        assert_ne!(voter_sets(&b), voter_sets(&c));
    }

    #[test]
    fn dead_voters_are_all_replaced_at_once() {
        let inp = input(voters("mail", 6), 1, 3);
        let a = place(None, &inp).unwrap();
        assert_eq!(a.shards[0].voters, vec![1, 2, 3]);
        let mut two_dead = inp.clone();
        two_dead.nodes[0].health = Health::Dead;
        two_dead.nodes[1].health = Health::Dead;
        let b = place(Some(&a), &two_dead).unwrap();
        assert_eq!(b.shards[0].voters, vec![3, 4, 5]);
    }

    #[test]
    fn leaving_voters_go_one_per_epoch() {
        let inp = input(voters("mail", 6), 1, 3);
        let a = place(None, &inp).unwrap();
        let mut leaving = inp.clone();
        leaving.nodes[0].leaving = true;
        leaving.nodes[1].leaving = true;
        let b = place(Some(&a), &leaving).unwrap();
        // Node 1 may go; node 2 stays a voter this epoch beside its replacements.
        assert_eq!(b.shards[0].voters, vec![2, 3, 4, 5]);
        // While the shard still reports its old voters the target holds still.
        let mut lagging = leaving.clone();
        lagging.observed_voters.insert(1, [1, 2, 3].into());
        let c = place(Some(&b), &lagging).unwrap();
        assert_eq!(c.epoch, b.epoch);
        // Once the shard has caught up, node 2 goes too.
        let mut caught_up = leaving.clone();
        caught_up.observed_voters.insert(1, [2, 3, 4, 5].into());
        let d = place(Some(&c), &caught_up).unwrap();
        assert_eq!(d.shards[0].voters, vec![3, 4, 5]);
        assert_eq!(d.epoch, b.epoch + 1);
    }

    #[test]
    fn a_single_voter_shard_can_be_drained() {
        let mut inp = input(voters("mail", 2), 1, 1);
        let a = place(None, &inp).unwrap();
        assert_eq!(a.shards[0].voters, vec![1]);
        inp.nodes[0].leaving = true;
        let b = place(Some(&a), &inp).unwrap();
        assert_eq!(
            b.shards[0].voters,
            vec![1, 2],
            "the only live voter stays until its replacement is in"
        );
        let c = place(Some(&b), &inp).unwrap();
        assert_eq!(c.shards[0].voters, vec![2]);
    }

    #[test]
    fn a_balance_move_of_a_single_voter_finishes() {
        let mut inp = input(voters("mail", 3), 3, 1);
        inp.nodes[0].health = Health::Dead;
        let a = place(None, &inp).unwrap();
        assert_eq!(voter_sets(&a), vec![[2].into(), [3].into(), [2].into()]);
        inp.nodes.push(node("mail", "default", 3));
        let b = place(Some(&a), &inp).unwrap();
        assert_eq!(
            b.shards[0].voters,
            vec![2, 4],
            "the lone voter stays until its successor is in"
        );
        let c = place(Some(&b), &inp).unwrap();
        assert_eq!(
            c.shards[0].voters,
            vec![4],
            "then goes, rather than the move being undone"
        );
        let d = place(Some(&c), &inp).unwrap();
        assert_eq!(d.epoch, c.epoch);
    }

    #[test]
    fn observed_voters_bound_the_step() {
        // The previous target already swapped 2 for 4, but the shard still has 1, 2, 3.
        let inp = input(voters("mail", 6), 1, 3);
        let mut prev = place(None, &inp).unwrap();
        prev.shards[0].voters = vec![1, 3, 4];
        let mut next = inp.clone();
        next.nodes[0].leaving = true; // node 1
        next.nodes[1].leaving = true; // node 2
        next.observed_voters.insert(1, [1, 2, 3].into());
        let a = place(Some(&prev), &next).unwrap();
        // Finishing the hand-over of 2 is the one drop allowed; 1 stays for now although its
        // id is lower.
        assert_eq!(a.shards[0].voters, vec![1, 3, 4, 5]);
    }

    #[test]
    fn learners_fill_from_learner_pools() {
        let mut nodes = voters("mail", 3);
        for o in 0..3 {
            let mut n = node("mail", "archive", o);
            n.storage = StorageRole::Learner;
            nodes.push(n);
        }
        let mut inp = input(nodes, 3, 3);
        inp.read_replicas = 2;
        let a = place(None, &inp).unwrap();
        let archive = |a: &Assignment| {
            a.shards
                .iter()
                .map(|s| s.learners.clone())
                .collect::<Vec<_>>()
        };
        // Learner pool "archive" is numbered before "default": ids 1..=3.
        assert_eq!(archive(&a), vec![vec![1, 2], vec![1, 3], vec![2, 3]]);
        assert!(
            a.shards
                .iter()
                .all(|s| s.voters.iter().all(|v| (4..=6).contains(v)))
        );
        // A dead learner is replaced only where it was; with one learner node left, shards
        // get what exists.
        inp.nodes[3].health = Health::Dead;
        inp.nodes[4].leaving = true;
        let b = place(Some(&a), &inp).unwrap();
        assert_eq!(archive(&b), vec![vec![3], vec![3], vec![3]]);
    }

    /// One change to a simulated cluster.
    #[derive(Clone, Debug)]
    enum Change {
        Add,
        Kill(usize),
        Leave(usize),
        Suspect(usize),
        /// The shards report the voters of the last assignment.
        CatchUp,
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            2 => Just(Change::Add),
            2 => any::<prop::sample::Index>().prop_map(|i| Change::Kill(i.index(64))),
            2 => any::<prop::sample::Index>().prop_map(|i| Change::Leave(i.index(64))),
            1 => any::<prop::sample::Index>().prop_map(|i| Change::Suspect(i.index(64))),
            2 => Just(Change::CatchUp),
        ]
    }

    fn zone_of(i: u32, zones: u32) -> Option<String> {
        (zones > 0).then(|| format!("z{}", i % zones))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random clusters under random changes: each new voter set keeps enough of the voters
        /// the shard has, loses at most one live voter per epoch, and only ever adds nodes that
        /// can vote.
        #[test]
        fn voter_changes_are_safe_steps(
            size in 3u32..9,
            shards in 1u32..6,
            rf in prop::sample::select(vec![1u32, 3, 5]),
            zones in 0u32..4,
            changes in prop::collection::vec(change(), 1..25),
        ) {
            prop_assume!(rf <= size);
            let mut nodes: Vec<NodeInfo> = (0..size)
                .map(|o| NodeInfo { zone: zone_of(o, zones), ..node("mail", "default", o) })
                .collect();
            let mut inp = input(nodes.clone(), shards, rf);
            let mut prev = place(None, &inp).unwrap();
            for change in changes {
                let mut next = inp.clone();
                match change {
                    Change::Add => {
                        let o = nodes.len() as u32;
                        nodes.push(NodeInfo { zone: zone_of(o, zones), ..node("mail", "default", o) });
                        next.nodes = nodes.clone();
                    }
                    Change::Kill(i) => { let i = i % next.nodes.len(); next.nodes[i].health = Health::Dead; }
                    Change::Leave(i) => { let i = i % next.nodes.len(); next.nodes[i].leaving = true; }
                    Change::Suspect(i) => { let i = i % next.nodes.len(); next.nodes[i].health = Health::Suspect; }
                    Change::CatchUp => {
                        next.observed_voters = prev.shards.iter().map(|s| (s.id, s.voters.iter().copied().collect())).collect();
                    }
                }
                let Ok(a) = place(Some(&prev), &next) else { continue };
                let by_id: BTreeMap<u64, &NodeInfo> = next.nodes.iter().map(|n| (a.nodes[&n.name].id, n)).collect();
                let eligible: BTreeSet<u64> = by_id.iter().filter(|(_, n)| can_vote(n)).map(|(&id, _)| id).collect();
                let degraded = eligible.len() < rf as usize;
                for (before, after) in prev.shards.iter().zip(&a.shards) {
                    let new: BTreeSet<u64> = after.voters.iter().copied().collect();
                    prop_assert_eq!(new.len(), after.voters.len(), "distinct");
                    let current: BTreeSet<u64> = next.observed_voters.get(&after.id).cloned()
                        .unwrap_or_else(|| before.voters.iter().copied().collect());
                    let live: BTreeSet<u64> = current.iter().copied().filter(|&id| !is_dead(&by_id, id)).collect();
                    let kept = live.intersection(&new).count();
                    let dropped = live.len() - kept;
                    prop_assert!(dropped <= 1, "shard {}: {:?} → {:?}", after.id, current, new);
                    if live.len() >= 3 {
                        prop_assert!(kept * 2 > live.len(), "majority kept: {:?} → {:?}", current, new);
                    } else {
                        prop_assert!(kept * 2 >= live.len(), "half kept: {:?} → {:?}", current, new);
                    }
                    let voting: Vec<u64> = new.iter().copied().filter(|id| by_id.get(id).is_some_and(|n| can_vote(n))).collect();
                    prop_assert!(voting.len() >= rf.min(eligible.len() as u32) as usize);
                    if degraded {
                        prop_assert!(new.is_superset(&eligible), "too few live nodes: all of them vote");
                    }
                    for id in &new {
                        let dead_stand_in = degraded && by_id.get(id).is_some_and(|n| voter_capable(n));
                        // Too few live nodes: a live voter being drained keeps its seat.
                        let kept_leaving = degraded && before.voters.contains(id)
                            && by_id.get(id).is_some_and(|n| n.leaving && n.health != Health::Dead);
                        prop_assert!(!is_dead(&by_id, *id) || dead_stand_in, "no dead voter while live nodes can replace it");
                        prop_assert!(voting.contains(id) || live.contains(id) || dead_stand_in || kept_leaving, "a node that cannot vote is only ever held back");
                    }
                    prop_assert!(new.len() <= rf as usize + live.len(), "extra voters only from those the shard has");
                }
                prev = a;
                inp = next;
            }

            // Once the shards keep up, every leaving node is drained and shards are exactly rf.
            for _ in 0..40 {
                let mut caught = inp.clone();
                caught.observed_voters = prev.shards.iter().map(|s| (s.id, s.voters.iter().copied().collect())).collect();
                prev = place(Some(&prev), &caught).unwrap();
            }
            let mut caught = inp.clone();
            caught.observed_voters = prev.shards.iter().map(|s| (s.id, s.voters.iter().copied().collect())).collect();
            prop_assert_eq!(place(Some(&prev), &caught).unwrap().epoch, prev.epoch, "settled");
            let by_id: BTreeMap<u64, &NodeInfo> = inp.nodes.iter().map(|n| (prev.nodes[&n.name].id, n)).collect();
            let eligible = by_id.values().filter(|n| can_vote(n)).count();
            for s in &prev.shards {
                prop_assert_eq!(s.voters.len(), rf as usize);
                // A live voter being drained keeps its seat while no live node can take it.
                prop_assert!(s.voters.iter().all(|id| voter_capable(by_id[id])
                    || (eligible < rf as usize && by_id[id].leaving && by_id[id].health != Health::Dead)));
                let voting = s.voters.iter().filter(|id| can_vote(by_id[id])).count();
                prop_assert_eq!(voting, eligible.min(rf as usize));
            }
        }
    }

    fn random_node() -> impl Strategy<Value = (StorageRole, Health, bool)> {
        (
            prop::sample::select(vec![
                StorageRole::Voter,
                StorageRole::Voter,
                StorageRole::Learner,
                StorageRole::None,
            ]),
            prop::sample::select(vec![Health::Alive, Health::Suspect, Health::Dead]),
            prop::bool::weighted(0.2),
        )
    }

    fn apply(nodes: &mut [NodeInfo], states: &[(StorageRole, Health, bool)]) {
        for (n, &(storage, health, leaving)) in nodes.iter_mut().zip(states) {
            n.storage = storage;
            n.health = health;
            n.leaving = leaving;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the nodes' health, placement fails only when the spec configures fewer
        /// voter nodes (not leaving) than the replication factor, and otherwise gives every
        /// shard at least rf distinct voters: exactly rf voter-capable ones, live ones first,
        /// plus only live voters held back by the step limit.
        #[test]
        fn only_a_short_spec_fails_placement(
            shards in 1u32..5,
            rf in prop::sample::select(vec![1u32, 2, 3, 5]),
            zones in 0u32..4,
            before in prop::collection::vec(random_node(), 1..9),
            after in prop::collection::vec(random_node(), 9),
        ) {
            let mut nodes: Vec<NodeInfo> = (0..before.len() as u32)
                .map(|o| NodeInfo { zone: zone_of(o, zones), ..node("mail", "default", o) })
                .collect();
            apply(&mut nodes, &before);
            let first = input(nodes.clone(), shards, rf);
            let mut second = first.clone();
            apply(&mut second.nodes, &after);
            let mut prev: Option<Assignment> = None;
            for inp in [&first, &second] {
                let capable = inp.nodes.iter().filter(|n| voter_capable(n)).count();
                let eligible = inp.nodes.iter().filter(|n| can_vote(n)).count();
                let result = place(prev.as_ref(), inp);
                if capable < rf as usize {
                    prop_assert_eq!(
                        result,
                        Err(PlacementError::InsufficientVoters { need: rf, have: capable as u32 })
                    );
                    continue;
                }
                let a = result.unwrap();
                let by_id: BTreeMap<u64, &NodeInfo> = inp.nodes.iter().map(|n| (a.nodes[&n.name].id, n)).collect();
                prop_assert_eq!(a.shards.len(), shards as usize);
                for s in &a.shards {
                    prop_assert!(s.voters.windows(2).all(|w| w[0] < w[1]), "sorted, distinct: {:?}", s.voters);
                    let stays: Vec<u64> = s.voters.iter().copied().filter(|id| voter_capable(by_id[id])).collect();
                    let live = stays.iter().filter(|id| can_vote(by_id[id])).count();
                    let held: Vec<u64> = s.voters.iter().copied().filter(|id| !voter_capable(by_id[id])).collect();
                    let had: BTreeSet<u64> = prev.as_ref()
                        .and_then(|p| p.shards.iter().find(|p| p.id == s.id))
                        .map(|p| p.voters.iter().copied().collect())
                        .unwrap_or_default();
                    let extra = s.voters.len() - rf as usize;
                    prop_assert!(s.voters.len() >= rf as usize, "{:?}", s);
                    let kept_live_leaving = s.voters.iter().filter(|id| by_id[*id].leaving && by_id[*id].health != Health::Dead && had.contains(id)).count();
                    prop_assert!(stays.len() + kept_live_leaving >= rf as usize, "{:?}", s);
                    if eligible >= rf as usize {
                        prop_assert!(stays.len() >= rf as usize, "{:?}", s);
                    }
                    prop_assert_eq!(live, eligible.min(stays.len()), "live nodes first: {:?}", s);
                    prop_assert!(extra <= had.len(), "more than rf only while holding back: {:?}", s);
                    for id in held {
                        prop_assert!(had.contains(&id) && by_id[&id].health != Health::Dead, "held back: {} in {:?}", id, s);
                    }
                }
                prev = Some(a);
            }
        }
    }
}
