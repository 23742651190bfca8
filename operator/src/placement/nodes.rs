//! Node ids: the stable numbers Raft and gossip know nodes by.
//!
//! Raft logs and gossip state outlive pods, so an id must keep meaning the same node for as long
//! as that node exists and must never be handed to another node afterwards.

use std::collections::BTreeMap;

use tern_crds::Assignment;
use tern_crds::assignment::NodeEntry;

use super::NodeInfo;

/// The `nodes` and `next_node_id` of the next assignment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIds {
    /// Every node of the input, by pod name.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// The id the next new node will get.
    pub next_node_id: u64,
}

impl NodeIds {
    /// The input's nodes by id, so shards and tasks can ask about a node they only know by id.
    /// A name listed twice keeps its first description.
    pub fn by_id<'a>(&self, input: &'a [NodeInfo]) -> BTreeMap<u64, &'a NodeInfo> {
        let mut out = BTreeMap::new();
        for node in input {
            if let Some(entry) = self.nodes.get(&node.name) {
                out.entry(entry.id).or_insert(node);
            }
        }
        out
    }
}

/// Gives every node of the input an id: the one it had, else the next unused one.
///
/// New nodes are numbered by pool then ordinal so that the same input always yields the same
/// ids. `next_node_id` starts at 1 and never shrinks, even when the previous assignment's
/// counter lags behind an id it hands out (a hand-edited document), so ids are never reused.
pub fn assign_ids(previous: Option<&Assignment>, nodes: &[NodeInfo]) -> NodeIds {
    let mut next = previous.map_or(1, |prev| {
        let past_max = prev
            .nodes
            .values()
            .map(|n| n.id.saturating_add(1))
            .max()
            .unwrap_or(1);
        prev.next_node_id.max(past_max)
    });
    next = next.max(1);

    let mut ordered: Vec<&NodeInfo> = nodes.iter().collect();
    ordered.sort_by(|a, b| (&a.pool, a.ordinal, &a.name).cmp(&(&b.pool, b.ordinal, &b.name)));

    let mut out = BTreeMap::new();
    for node in ordered {
        if out.contains_key(&node.name) {
            continue;
        }
        let id = match previous.and_then(|prev| prev.nodes.get(&node.name)) {
            Some(entry) => entry.id,
            None => {
                next += 1;
                next - 1
            }
        };
        let entry = NodeEntry {
            id,
            pool: node.pool.clone(),
            storage: node.storage,
            zone: node.zone.clone(),
        };
        out.insert(node.name.clone(), entry);
    }
    NodeIds {
        nodes: out,
        next_node_id: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::testkit::{node, voters};
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use tern_crds::cluster_role::StorageRole;

    fn with_ids(ids: &NodeIds) -> Assignment {
        Assignment {
            nodes: ids.nodes.clone(),
            next_node_id: ids.next_node_id,
            ..Default::default()
        }
    }

    #[test]
    fn first_ids_follow_pool_then_ordinal() {
        let mut input = voters("mail", 2);
        input.push(node("mail", "backend", 0));
        input.reverse();
        let ids = assign_ids(None, &input);
        assert_eq!(ids.nodes["mail-backend-0"].id, 1);
        assert_eq!(ids.nodes["mail-default-0"].id, 2);
        assert_eq!(ids.nodes["mail-default-1"].id, 3);
        assert_eq!(ids.next_node_id, 4);
        assert_eq!(ids.nodes["mail-backend-0"].pool, "backend");
    }

    #[test]
    fn ids_are_stable_across_calls() {
        let input = voters("mail", 3);
        let first = assign_ids(None, &input);
        let second = assign_ids(Some(&with_ids(&first)), &input);
        assert_eq!(first, second);
    }

    #[test]
    fn ids_are_never_reused() {
        let input = voters("mail", 3);
        let first = assign_ids(None, &input);
        // Pod 2 goes away, then a new pod 3 appears: it must not inherit id 3.
        let shrunk = assign_ids(Some(&with_ids(&first)), &input[..2]);
        assert!(!shrunk.nodes.contains_key("mail-default-2"));
        assert_eq!(shrunk.next_node_id, 4);
        let mut grown = input[..2].to_vec();
        grown.push(node("mail", "default", 3));
        let third = assign_ids(Some(&with_ids(&shrunk)), &grown);
        assert_eq!(third.nodes["mail-default-3"].id, 4);
        assert_eq!(third.nodes["mail-default-0"].id, 1);
        assert_eq!(third.next_node_id, 5);
    }

    #[test]
    fn a_lagging_counter_cannot_hand_out_a_used_id() {
        let input = voters("mail", 2);
        let mut prev = with_ids(&assign_ids(None, &input));
        prev.next_node_id = 0;
        let mut grown = input.clone();
        grown.push(node("mail", "default", 2));
        let ids = assign_ids(Some(&prev), &grown);
        assert_eq!(ids.nodes["mail-default-2"].id, 3);
    }

    #[test]
    fn entries_describe_the_input() {
        let mut n = node("mail", "archive", 0);
        n.storage = StorageRole::Learner;
        n.zone = Some("eu-1a".into());
        let ids = assign_ids(None, std::slice::from_ref(&n));
        let entry = &ids.nodes["mail-archive-0"];
        assert_eq!(entry.storage, StorageRole::Learner);
        assert_eq!(entry.zone.as_deref(), Some("eu-1a"));
        assert_eq!(
            ids.by_id(std::slice::from_ref(&n))[&1].name,
            "mail-archive-0"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever pods come and go, a name keeps its id while it exists, and an id once
        /// given never names another pod.
        #[test]
        fn ids_stay_and_are_never_reused(steps in prop::collection::vec(prop::collection::btree_set(0u32..12, 0..8), 1..12)) {
            let mut prev: Option<Assignment> = None;
            let mut owner: BTreeMap<u64, String> = BTreeMap::new();
            for ordinals in steps {
                let input: Vec<NodeInfo> = ordinals.iter().map(|&o| node("mail", "default", o)).collect();
                let ids = assign_ids(prev.as_ref(), &input);
                let names: BTreeSet<_> = input.iter().map(|n| n.name.clone()).collect();
                prop_assert_eq!(ids.nodes.keys().cloned().collect::<BTreeSet<_>>(), names);
                for (name, entry) in &ids.nodes {
                    prop_assert!(entry.id >= 1 && entry.id < ids.next_node_id);
                    if let Some(p) = prev.as_ref().and_then(|p| p.nodes.get(name)) {
                        prop_assert_eq!(p.id, entry.id);
                    } else {
                        prop_assert!(!owner.contains_key(&entry.id), "id {} reused", entry.id);
                    }
                    owner.insert(entry.id, name.clone());
                }
                if let Some(p) = &prev {
                    prop_assert!(ids.next_node_id >= p.next_node_id);
                }
                prev = Some(with_ids(&ids));
            }
        }
    }
}
