//! Raft storage for Tern's shards: openraft's log and state machine on a `tern-store` engine.
//!
//! One [`TypeConfig`] serves every shard. A node holds many shards (one Raft group each); they
//! all share one [`Engine`] through one [`Storage`], and every key they write starts with the
//! shard id (`u32` big-endian), so shards never see each other's log or state. The keyspaces:
//!
//! | keyspace     | key                       | value                                  |
//! |--------------|---------------------------|----------------------------------------|
//! | `raft_log`   | shard ‖ index (`u64` BE)  | the log entry (postcard)               |
//! | `raft_meta`  | shard ‖ `vote`/`committed`/`purged` | vote, log ids (postcard)     |
//! | `sm_meta`    | shard ‖ `applied`/`membership`/`snapshot_meta`/`snapshot_data` ‖ n | state machine markers, last snapshot |
//! | application's| shard ‖ application key   | application values ([`Application`])   |
//!
//! The log is [`LogStore`] (openraft's `RaftLogStorage`), the state machine is
//! [`StateMachine`] (`RaftStateMachine`) over an [`Application`] that turns opaque commands
//! into engine writes; openraft's own storage test suite proves both on redb and sled
//! (`tests/storage_suite.rs`). Networking, membership changes and the per-node shard runtime
//! live elsewhere; [`new_raft`] ties the pieces together for them.
//!
//! # Durability
//!
//! Nothing is acknowledged before it is on disk, and nothing is applied twice:
//!
//! - **Log appends** are written `Deferred` (readable at once, as openraft requires) and made
//!   durable by a group commit ([`Storage`] runs one fsync thread per engine): openraft hears
//!   that an append is flushed only after an fsync that began after the append's write. One
//!   fsync covers every append of every shard queued while the previous one ran, so durable
//!   appends per second grow with concurrency instead of stopping at the disk's fsync rate.
//!   (openraft 0.9 appends each client write separately on the leader, so this, not batching
//!   within one append, is where the grouping happens.)
//! - **Votes, truncation and purge** are `Immediate`: they are rare, and a vote must be on disk
//!   before the node answers.
//! - **The state machine** writes each entry's application changes and its `applied` marker in
//!   one `Deferred` batch, so after a crash an entry is applied with its marker or not at all.
//!   A crash may lose a tail of applied entries; openraft re-applies it from the log, which is
//!   durable at least as far (every entry was appended before it was applied, and the engines
//!   make writes durable in the order they were made: a `Deferred` write becomes durable with
//!   the next `Immediate` write or flush, never alone after a later one).
//! - **The log is never purged past what the state machine holds durably.** openraft purges
//!   only up to the last snapshot, and the snapshot is stored with an `Immediate` write, which
//!   makes every state-machine write before it durable, i.e. at least up to the snapshot's
//!   last log id. The purge itself is `Immediate` too. Installing a snapshot is one
//!   `Immediate` batch.
//!
//! Snapshots are stored in the engine (see [`StateMachine`] for why), so a restarted node
//! serves its last snapshot to a peer with an empty volume without rebuilding it.

#![forbid(unsafe_code)]

mod error;
mod group_commit;
pub mod keys;
mod log_store;
mod snapshot;
mod state_machine;
pub mod testing;

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use openraft::{Config, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
pub use tern_store::{Batch, Engine};

pub use crate::error::Error;
pub use crate::log_store::{LogReader, LogStore};
pub use crate::state_machine::{Application, SnapshotBuilder, StateMachine};

use crate::group_commit::GroupCommit;

/// A shard: one Raft group, and the prefix of every key it owns.
pub type ShardId = u32;

/// A node (agent) in the cluster, as Raft names it.
pub type NodeId = u64;

/// Where a Raft peer is reached; the network layer decides what the address means.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub rpc_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rpc_addr)
    }
}

/// An application command, encoded by the application (the mail model); opaque to Raft.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(with = "byte_string")]
    pub bytes: Vec<u8>,
}

/// What the application returned for a command, encoded by the application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(with = "byte_string")]
    pub bytes: Vec<u8>,
}

/// Serde's default for `Vec<u8>` is a sequence, coded one byte at a time; commands carry mail
/// bodies, so code them as one byte string (in postcard the same bytes on the wire, copied at
/// once).
mod byte_string {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        // Self-describing formats (JSON) may give a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

openraft::declare_raft_types!(
    /// The one openraft type configuration of Tern: every shard's Raft group uses it.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft group for one shard.
pub type ShardRaft = openraft::Raft<TypeConfig>;

/// Aliases of openraft's generic types for [`TypeConfig`].
pub mod typ {
    use super::{Node, NodeId, TypeConfig};

    pub type Entry = openraft::Entry<TypeConfig>;
    pub type LogId = openraft::LogId<NodeId>;
    pub type Vote = openraft::Vote<NodeId>;
    pub type Membership = openraft::Membership<NodeId, Node>;
    pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    pub type StorageError = openraft::StorageError<NodeId>;
    pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
}

/// Raft storage for all shards on one engine.
///
/// Cheap to clone; all clones share the engine and its group-commit thread, which stops (after
/// a last fsync) when the last clone and the last [`LogStore`] are dropped, so the engine can
/// then be closed and reopened.
#[derive(Clone)]
pub struct Storage {
    engine: Arc<dyn Engine>,
    group_commit: Arc<GroupCommit>,
}

impl Storage {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        let group_commit = Arc::new(GroupCommit::start(engine.clone()));
        Self {
            engine,
            group_commit,
        }
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The Raft log of `shard`.
    pub fn log_store(&self, shard: ShardId) -> LogStore {
        LogStore::new(self.engine.clone(), shard, self.group_commit.clone())
    }

    /// The state machine of `shard`, applying commands with `app`.
    ///
    /// Fails when the application names a keyspace that Raft itself uses.
    pub fn state_machine<A: Application>(
        &self,
        shard: ShardId,
        app: Arc<A>,
    ) -> Result<StateMachine<A>, Error> {
        StateMachine::new(self.engine.clone(), shard, app)
    }

    /// Deletes everything `shard` stored: log, vote, state machine, snapshot and the given
    /// application keyspaces. For a node that has left the shard, once the configuration
    /// without it is committed; the shard's Raft must be shut down first.
    pub fn delete_shard(
        &self,
        shard: ShardId,
        app_keyspaces: &[&'static str],
    ) -> Result<(), Error> {
        let mut batch = Batch::new();
        for keyspace in keys::RAFT_KEYSPACES.iter().chain(app_keyspaces) {
            keys::delete_shard_keys(&*self.engine, keyspace, shard, &mut batch)?;
        }
        self.engine
            .write(batch, tern_store::Durability::Immediate)?;
        Ok(())
    }
}

/// Starts the Raft group of `shard` on this node, with its log and state machine on `storage`.
pub async fn new_raft<A, N>(
    node_id: NodeId,
    shard: ShardId,
    config: Arc<Config>,
    storage: &Storage,
    app: Arc<A>,
    network: N,
) -> Result<ShardRaft, Error>
where
    A: Application,
    N: RaftNetworkFactory<TypeConfig>,
{
    let log_store = storage.log_store(shard);
    let state_machine = storage.state_machine(shard, app)?;
    Ok(ShardRaft::new(node_id, config, network, log_store, state_machine).await?)
}
