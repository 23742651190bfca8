//! What every node says about itself in gossip: [`NodeMeta`], postcard-encoded into the
//! metadata of its `Alive` updates (at most [`MAX_META_BYTES`]).
//!
//! The encoding starts with a format number and is read with `take_from_bytes`, ignoring
//! trailing bytes: a later version may append fields and older agents still read the ones
//! they know. Metadata that does not decode is shown as unknown, never an error.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tern_crds::mail_cluster::RaftRole;
use tern_gossip::message::{MAX_META_BYTES, NodeId};

use crate::rpc::ShardStatus;

/// The metadata format this agent writes.
pub const META_FORMAT: u8 = 1;

/// Longest name, pool or version carried (longer ones are cut at a character boundary);
/// pod and pool names are Kubernetes names of at most 63 characters.
const MAX_TEXT: usize = 96;

/// A node's Raft role in one shard, as it gossips it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ShardRole {
    Leader,
    Follower,
    /// No leader known: an election is under way (or the replica is cut off).
    Candidate,
    Learner,
}

impl ShardRole {
    /// The role of node `me` in a shard whose replica reports `status`.
    pub fn of(me: NodeId, status: &ShardStatus) -> Self {
        if status.is_leader {
            Self::Leader
        } else if status.learners.contains(&me) {
            Self::Learner
        } else if status.leader.is_none() {
            Self::Candidate
        } else {
            Self::Follower
        }
    }

    /// The same role in the MailCluster status vocabulary.
    pub fn raft_role(self) -> RaftRole {
        match self {
            Self::Leader => RaftRole::Leader,
            Self::Follower => RaftRole::Follower,
            Self::Candidate => RaftRole::Candidate,
            Self::Learner => RaftRole::Learner,
        }
    }
}

/// One node's gossiped metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// [`META_FORMAT`] of the writer.
    pub format: u8,
    /// Pod name (the node's name in the assignment).
    pub name: String,
    pub pool: String,
    /// Agent version.
    pub version: String,
    /// Where its gossip listens (UDP and TCP), as it advertises it.
    pub gossip: Option<SocketAddr>,
    /// Where its agent RPC server listens, when it holds data.
    pub rpc: Option<SocketAddr>,
    /// Shards held and the role in each, leaders first; may be cut short to fit (then it
    /// lists fewer than `shards_held`).
    pub shards: Vec<(u32, ShardRole)>,
    /// Load figures: shards held and shards led.
    pub shards_held: u32,
    pub shards_led: u32,
}

impl NodeMeta {
    /// Fills the shard fields from the replicas' statuses of node `me`.
    pub fn set_shards(&mut self, me: NodeId, statuses: &[(u32, ShardStatus)]) {
        let mut shards: Vec<(u32, ShardRole)> = statuses
            .iter()
            .map(|(shard, status)| (*shard, ShardRole::of(me, status)))
            .collect();
        shards.sort_by_key(|(shard, role)| (*role != ShardRole::Leader, *shard));
        self.shards_held = u32::try_from(shards.len()).unwrap_or(u32::MAX);
        self.shards_led = u32::try_from(
            shards
                .iter()
                .filter(|(_, r)| *r == ShardRole::Leader)
                .count(),
        )
        .unwrap_or(u32::MAX);
        self.shards = shards;
    }

    /// The encoding, at most [`MAX_META_BYTES`]: long texts are cut and, when a node holds
    /// more shards than fit, the last ones listed (followers after leaders) are left out.
    pub fn encode(&self) -> Vec<u8> {
        let mut meta = self.clone();
        meta.format = META_FORMAT;
        for text in [&mut meta.name, &mut meta.pool, &mut meta.version] {
            cut(text, MAX_TEXT);
        }
        let bytes = postcard::to_stdvec(&meta).unwrap_or_default();
        if bytes.len() <= MAX_META_BYTES {
            return bytes;
        }
        // Keep the entries that fit next to everything else: each is its shard id as a
        // varint and one byte of role; the list's length varint grows by at most 2 bytes.
        let shards = std::mem::take(&mut meta.shards);
        let base = postcard::to_stdvec(&meta).map_or(0, |b| b.len());
        let mut budget = MAX_META_BYTES.saturating_sub(base + 2);
        for entry in shards {
            let size = varint_len(entry.0) + 1;
            if size > budget {
                break;
            }
            budget -= size;
            meta.shards.push(entry);
        }
        loop {
            let bytes = postcard::to_stdvec(&meta).unwrap_or_default();
            if bytes.len() <= MAX_META_BYTES || meta.shards.pop().is_none() {
                return bytes;
            }
        }
    }

    /// Decodes untrusted bytes; `None` when they are not metadata this agent understands.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_META_BYTES {
            return None;
        }
        let (meta, _later_fields) = postcard::take_from_bytes::<NodeMeta>(bytes).ok()?;
        (meta.format >= 1).then_some(meta)
    }

    /// Whether `shards` lists fewer shards than the node holds.
    pub fn shards_truncated(&self) -> bool {
        (self.shards.len() as u64) < u64::from(self.shards_held)
    }
}

/// Bytes of `n` as a postcard varint.
fn varint_len(n: u32) -> usize {
    (32 - n.leading_zeros() as usize).div_ceil(7).max(1)
}

fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(is_leader: bool, leader: Option<u64>, learners: Vec<u64>) -> ShardStatus {
        ShardStatus {
            initialized: true,
            term: 1,
            leader,
            is_leader,
            last_log_index: None,
            applied: None,
            voters: vec![1, 2, 3],
            learners,
            committed_membership: true,
            abstaining: false,
        }
    }

    fn meta() -> NodeMeta {
        NodeMeta {
            format: META_FORMAT,
            name: "mail-default-0".into(),
            pool: "default".into(),
            version: "0.1.0".into(),
            gossip: Some("10.0.0.7:7946".parse().unwrap()),
            rpc: Some("[fd00::7]:7947".parse().unwrap()),
            ..NodeMeta::default()
        }
    }

    #[test]
    fn roles_follow_the_replica_status() {
        assert_eq!(
            ShardRole::of(1, &status(true, Some(1), vec![])),
            ShardRole::Leader
        );
        assert_eq!(
            ShardRole::of(1, &status(false, Some(2), vec![])),
            ShardRole::Follower
        );
        assert_eq!(
            ShardRole::of(4, &status(false, Some(2), vec![4])),
            ShardRole::Learner
        );
        assert_eq!(
            ShardRole::of(1, &status(false, None, vec![])),
            ShardRole::Candidate
        );
        assert_eq!(ShardRole::Learner.raft_role(), RaftRole::Learner);
    }

    #[test]
    fn round_trip_with_shards_leaders_first() {
        let mut m = meta();
        m.set_shards(
            1,
            &[
                (3, status(false, Some(2), vec![])),
                (1, status(true, Some(1), vec![])),
                (2, status(false, None, vec![])),
            ],
        );
        assert_eq!(
            m.shards,
            [
                (1, ShardRole::Leader),
                (2, ShardRole::Candidate),
                (3, ShardRole::Follower)
            ]
        );
        assert_eq!((m.shards_held, m.shards_led), (3, 1));
        let bytes = m.encode();
        assert!(bytes.len() < 100, "{}", bytes.len());
        assert_eq!(NodeMeta::decode(&bytes), Some(m.clone()));
        assert!(!m.shards_truncated());
    }

    #[test]
    fn many_shards_are_cut_to_fit_and_the_counts_stay_true() {
        let mut m = meta();
        m.name = "é".repeat(200);
        let statuses: Vec<(u32, ShardStatus)> = (1..=1000)
            .map(|s| (s, status(s % 7 == 0, Some(9), vec![])))
            .collect();
        m.set_shards(1, &statuses);
        let bytes = m.encode();
        assert!(bytes.len() <= MAX_META_BYTES, "{}", bytes.len());
        let back = NodeMeta::decode(&bytes).unwrap();
        assert_eq!(back.name, "é".repeat(MAX_TEXT / 2));
        assert_eq!((back.shards_held, back.shards_led), (1000, 142));
        assert!(back.shards_truncated());
        assert!(back.shards.len() > 100, "{}", back.shards.len());
        // Nearly all of the space is used.
        assert!(bytes.len() + 6 >= MAX_META_BYTES, "{}", bytes.len());
        assert_eq!((varint_len(0), varint_len(127), varint_len(128)), (1, 1, 2));
        assert_eq!(varint_len(u32::MAX), 5);
        // Leaders survive the cut.
        assert!(
            back.shards
                .iter()
                .take(142)
                .all(|(_, r)| *r == ShardRole::Leader)
        );
    }

    #[test]
    fn later_fields_are_ignored_and_garbage_is_unknown() {
        let mut bytes = meta().encode();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(NodeMeta::decode(&bytes).unwrap().name, "mail-default-0");
        assert_eq!(NodeMeta::decode(&[]), None);
        assert_eq!(NodeMeta::decode(&[0]), None, "format 0 is not metadata");
        assert_eq!(NodeMeta::decode(&[1, 200, 200, 200]), None);
        assert_eq!(NodeMeta::decode(&vec![1; MAX_META_BYTES + 1]), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = NodeMeta::decode(&bytes);
        }
    }
}
