//! The membership changes a new assignment implies for one shard, one step at a time.
//!
//! The shard's leader compares the Raft membership in its log with the assignment's voters
//! and learners and takes the next step: add a missing node as a learner; promote a learner
//! the assignment makes a voter once it has caught up; only when every assigned voter votes,
//! demote or remove one voter the assignment no longer names; last, remove learners nobody
//! names. Each voter change goes through openraft's joint consensus, so every committed
//! configuration keeps a majority of the previous one; and since voters are added before any
//! is removed, the voter set never shrinks below the assignment's while it changes.

use std::collections::{BTreeMap, BTreeSet};

use tern_raft::NodeId;

/// The shard's membership as its leader sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// A joint configuration is being committed; openraft finishes it before the next step.
    pub joint: bool,
    /// The leader's last log index.
    pub last_log_index: Option<u64>,
    /// The highest log index known replicated to each follower and learner.
    pub matched: BTreeMap<NodeId, Option<u64>>,
}

/// What the assignment wants for the shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

/// One membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add the node as a learner (non-voting; it starts receiving the log or a snapshot).
    AddLearner(NodeId),
    /// Make a caught-up learner a voter.
    Promote(NodeId),
    /// Make a voter a learner (it stays a read replica).
    Demote(NodeId),
    /// Remove a voter from the shard.
    RemoveVoter(NodeId),
    /// Remove a learner from the shard.
    RemoveLearner(NodeId),
}

/// The next step from `view` towards `target`, or `None` when there is nothing to do (or
/// nothing that can be done yet). A learner counts as caught up when it is at most `lag`
/// entries behind the leader's last log index.
pub fn next_step(view: &View, target: &Target, lag: u64) -> Option<Step> {
    if view.joint || target.voters.is_empty() {
        return None;
    }
    let present = |id: &NodeId| view.voters.contains(id) || view.learners.contains(id);
    if let Some(id) = target
        .voters
        .iter()
        .chain(&target.learners)
        .find(|id| !present(id))
    {
        return Some(Step::AddLearner(*id));
    }
    let caught_up = |id: &NodeId| {
        let matched = view.matched.get(id).copied().flatten();
        match (view.last_log_index, matched) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(last), Some(m)) => m.saturating_add(lag) >= last,
        }
    };
    if let Some(id) = target
        .voters
        .iter()
        .find(|id| view.learners.contains(id) && caught_up(id))
    {
        return Some(Step::Promote(*id));
    }
    if !target.voters.is_subset(&view.voters) {
        // Wait for the assigned voters to catch up before anyone leaves.
        return None;
    }
    if let Some(id) = view.voters.iter().find(|id| !target.voters.contains(id)) {
        return Some(if target.learners.contains(id) {
            Step::Demote(*id)
        } else {
            Step::RemoveVoter(*id)
        });
    }
    view.learners
        .iter()
        .find(|id| !target.voters.contains(id) && !target.learners.contains(id))
        .map(|id| Step::RemoveLearner(*id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn view(voters: &[NodeId], learners: &[NodeId], last: u64) -> View {
        View {
            voters: set(voters),
            learners: set(learners),
            joint: false,
            last_log_index: Some(last),
            matched: voters
                .iter()
                .chain(learners)
                .map(|id| (*id, Some(last)))
                .collect(),
        }
    }

    fn target(voters: &[NodeId], learners: &[NodeId]) -> Target {
        Target {
            voters: set(voters),
            learners: set(learners),
        }
    }

    #[test]
    fn a_replacement_is_added_caught_up_promoted_then_the_old_voter_removed() {
        let t = target(&[1, 2, 4], &[]);
        let mut v = view(&[1, 2, 3], &[], 100);
        assert_eq!(next_step(&v, &t, 10), Some(Step::AddLearner(4)));
        v.learners.insert(4);
        v.matched.insert(4, Some(20));
        assert_eq!(
            next_step(&v, &t, 10),
            None,
            "not caught up: 3 keeps its seat"
        );
        v.matched.insert(4, Some(95));
        assert_eq!(next_step(&v, &t, 10), Some(Step::Promote(4)));
        v.learners.remove(&4);
        v.voters.insert(4);
        assert_eq!(next_step(&v, &t, 10), Some(Step::RemoveVoter(3)));
        v.voters.remove(&3);
        assert_eq!(next_step(&v, &t, 10), None);
    }

    #[test]
    fn a_voter_that_becomes_a_read_replica_is_demoted_and_stray_learners_removed() {
        let t = target(&[1, 2, 3], &[4]);
        let v = view(&[1, 2, 3, 4], &[], 5);
        assert_eq!(
            next_step(&v, &t, 0),
            Some(Step::Demote(4)),
            "4 is assigned as a learner"
        );
        let v = view(&[1, 2, 3], &[4, 9], 5);
        assert_eq!(next_step(&v, &t, 0), Some(Step::RemoveLearner(9)));
    }

    #[test]
    fn nothing_happens_during_a_joint_configuration_or_without_assigned_voters() {
        let mut v = view(&[1, 2, 3], &[], 5);
        v.joint = true;
        assert_eq!(next_step(&v, &target(&[1, 2, 4], &[]), 0), None);
        let v = view(&[1, 2, 3], &[], 5);
        assert_eq!(next_step(&v, &target(&[], &[]), 0), None);
    }

    #[test]
    fn a_learner_never_heard_from_is_not_caught_up() {
        let mut v = view(&[1], &[2], 7);
        v.matched.insert(2, None);
        assert_eq!(next_step(&v, &target(&[1, 2], &[]), 100), None);
    }

    proptest! {
        /// Following the steps (with learners catching up at once) always reaches the
        /// target, and no voter leaves while an assigned voter is missing; every step
        /// changes at most one node.
        #[test]
        fn steps_reach_the_target_without_dropping_voters_early(
            start in proptest::collection::btree_set(1u64..8, 1..5),
            want in proptest::collection::btree_set(1u64..8, 1..5),
            learners in proptest::collection::btree_set(1u64..8, 0..3),
        ) {
            let learners: BTreeSet<NodeId> = learners.difference(&want).copied().collect();
            let t = Target { voters: want.clone(), learners: learners.clone() };
            let mut v = View {
                voters: start.clone(),
                last_log_index: Some(10),
                ..View::default()
            };
            for _ in 0..64 {
                for id in v.voters.iter().chain(&v.learners) {
                    v.matched.insert(*id, Some(10));
                }
                let Some(step) = next_step(&v, &t, 0) else { break };
                match step {
                    Step::AddLearner(id) => { prop_assert!(v.learners.insert(id)); }
                    Step::Promote(id) => {
                        prop_assert!(v.learners.remove(&id));
                        v.voters.insert(id);
                    }
                    Step::Demote(id) | Step::RemoveVoter(id) => {
                        prop_assert!(t.voters.is_subset(&v.voters), "removal before all assigned voters vote");
                        prop_assert!(v.voters.remove(&id));
                        prop_assert!(!v.voters.is_empty());
                        if matches!(step, Step::Demote(_)) {
                            v.learners.insert(id);
                        }
                    }
                    Step::RemoveLearner(id) => { prop_assert!(v.learners.remove(&id)); }
                }
            }
            prop_assert_eq!(&v.voters, &want);
            prop_assert_eq!(&v.learners, &learners);
        }
    }
}
