//! Raft storage for Tern's shards: openraft's log and state machine on `tern-store` engines.
//!
//! One [`TypeConfig`] serves every shard. A node holds many shards (one Raft group each); they
//! all share one [`Storage`]: one [`Engine`] for everything ([`Storage::new`]), or one for the
//! logs and one for the state machines ([`Storage::with_engines`]). Every key starts with the
//! shard id (`u32` big-endian), so shards never see each other's log or state. The keyspaces:
//!
//! | keyspace     | engine | key                       | value                         |
//! |--------------|--------|---------------------------|-------------------------------|
//! | `raft_log`   | log    | shard ‖ index (`u64` BE)  | the log entry (postcard)      |
//! | `raft_meta`  | log    | shard ‖ `vote`/`committed`/`purged` | vote, log ids (postcard) |
//! | `sm_meta`    | state  | shard ‖ `applied`/`membership`/`snapshot_meta`/`snapshot_data` ‖ n | state machine markers, last snapshot |
//! | application's| state  | shard ‖ application key   | application values ([`Application`]) |
//!
//! The log is [`LogStore`] (openraft's `RaftLogStorage`), the state machine is
//! [`StateMachine`] (`RaftStateMachine`) over an [`Application`] that turns opaque commands
//! into engine writes; openraft's own storage test suite proves both on redb and sled, on one
//! engine and on two (`tests/storage_suite.rs`). Networking, membership changes and the
//! per-node shard runtime live elsewhere; [`new_raft`] ties the pieces together for them.
//!
//! # Durability
//!
//! Nothing is acknowledged before it is on disk, and nothing is applied twice:
//!
//! - **Log appends** wait in memory, in the group commit's pending overlay, readable at once
//!   as openraft requires; one thread per log engine writes everything pending, of every
//!   shard, in one `Immediate` write, and only then tells openraft that those appends are
//!   flushed. An append never waits for the disk, and one fsync covers every append queued
//!   while the previous one ran, so durable appends per second grow with concurrency instead
//!   of stopping at the disk's fsync rate. (openraft 0.9 appends each client write separately
//!   on the leader, and waits for it before the next, so this, not batching within one
//!   append, is where the grouping happens.)
//! - **Votes, truncation and purge** are `Immediate`, and serialised with the group commit's
//!   writes: a truncation is never undone by a later write of entries taken before it. They
//!   are rare, and a vote must be on disk before the node answers.
//! - **The state machine** writes each entry's application changes and its `applied` marker in
//!   one `Deferred` batch, so after a crash an entry is applied with its marker or not at all.
//!   A crash may lose a tail of applied entries; openraft re-applies it from the log, which
//!   holds it durably: openraft applies an entry only after this node's append of it was
//!   reported flushed (0.9's Raft core awaits each append's callback before it runs anything
//!   else), and that report follows the fsync.
//! - **The log is never purged past what the state machine holds durably.** openraft purges
//!   only up to the last snapshot, and the snapshot is stored with an `Immediate` write on
//!   the state machine's engine, which makes every state-machine write before it durable,
//!   i.e. at least up to the snapshot's last log id. The purge itself is `Immediate` too.
//!   Installing a snapshot is one `Immediate` batch.
//!
//! On **one engine**, each group-commit write also makes the state machine's earlier writes
//! durable, but a state-machine write waits for the log's fsync whenever one runs (an engine
//! has one write lock). On **two engines** it never does: the state engine's `Deferred` writes
//! become durable at its next `Immediate` write, a snapshot built or installed, or the flush a
//! thread runs every 200 ms when the state engine was written (so crash replay stays short
//! and redb can reuse the pages freed meanwhile). Until then the log covers them, by the two
//! rules above. Between flushes they wait in memory ([`tern_store::Buffered`]), readable at
//! once, and reach the engine as one batch: one engine commit per flush instead of one per
//! applied entry.
//!
//! Snapshots are stored in the engine (see [`StateMachine`] for why), so a restarted node
//! serves its last snapshot to a peer with an empty volume without rebuilding it.

#![forbid(unsafe_code)]

mod error;
mod group_commit;
pub mod keys;
mod log_store;
mod snapshot;
mod state_flush;
mod state_machine;
pub mod testing;

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use openraft::{Config, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
pub use tern_store::{Batch, Engine, Link};

pub use crate::error::Error;
pub use crate::log_store::{LogReader, LogStore};
pub use crate::state_machine::{Application, SnapshotBuilder, StateMachine};

use crate::group_commit::GroupCommit;
use crate::state_flush::StateFlush;

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
///
/// Its bytes are shared: the entries in memory, replication to each follower and apply all
/// refer to the same bytes, not copies of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(with = "byte_string")]
    pub bytes: bytes::Bytes,
}

impl Request {
    pub fn new(bytes: impl Into<bytes::Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
        }
    }
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

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        deserializer.deserialize_byte_buf(Bytes).map(T::from)
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

/// Raft storage for all shards of a node: their logs on one engine, their state machines on
/// the same engine or another.
///
/// Cheap to clone; all clones share the engines and their threads: the log's group commit,
/// which stops (after writing what is pending) when the last clone, [`LogStore`] and
/// [`LogReader`] are dropped, and with two engines the state engine's periodic flush, which
/// stops (after a last flush) with the last clone and [`StateMachine`]. The engines can then
/// be closed and reopened.
#[derive(Clone)]
pub struct Storage {
    log: Arc<GroupCommit>,
    state: Arc<dyn Engine>,
    /// Only when the state machines have an engine of their own.
    state_flush: Option<Arc<StateFlush>>,
}

impl Storage {
    /// Logs and state machines on one engine.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            log: Arc::new(GroupCommit::start(engine.clone())),
            state: engine,
            state_flush: None,
        }
    }

    /// Logs (`raft_log`, `raft_meta`) on `log`; state machines, snapshots and the
    /// application's keyspaces on `state`. Then applying never waits for a log fsync. The same
    /// engine twice is [`Storage::new`].
    pub fn with_engines(log: Arc<dyn Engine>, state: Arc<dyn Engine>) -> Self {
        if Arc::ptr_eq(&log, &state) {
            return Self::new(log);
        }
        // Applies land in memory and reach the engine as one batch per flush (see
        // `tern_store::Buffered`); the log holds them durably until then.
        let state: Arc<dyn Engine> = Arc::new(tern_store::Buffered::new(state));
        Self {
            log: Arc::new(GroupCommit::start(log)),
            state_flush: Some(Arc::new(StateFlush::start(state.clone()))),
            state,
        }
    }

    /// The engine of the state machines and the application's keyspaces: where the
    /// application reads.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.state
    }

    /// The engine of the logs (the same as [`Storage::engine`] on one engine).
    pub fn log_engine(&self) -> &Arc<dyn Engine> {
        self.log.engine()
    }

    /// The Raft log of `shard`.
    pub fn log_store(&self, shard: ShardId) -> LogStore {
        LogStore::new(self.log.clone(), shard)
    }

    /// The state machine of `shard`, applying commands with `app`.
    ///
    /// Fails when the application names a keyspace that Raft itself uses.
    pub fn state_machine<A: Application>(
        &self,
        shard: ShardId,
        app: Arc<A>,
    ) -> Result<StateMachine<A>, Error> {
        StateMachine::new(self.state.clone(), self.state_flush.clone(), shard, app)
    }

    /// Deletes everything `shard` stored: log, vote, state machine, snapshot and the given
    /// application keyspaces. For a node that has left the shard, once the configuration
    /// without it is committed; the shard's Raft must be shut down first.
    ///
    /// One `Immediate` write per engine, the log's first: a crash between the two leaves only
    /// state, which calling this again removes.
    pub fn delete_shard(
        &self,
        shard: ShardId,
        app_keyspaces: &[&'static str],
    ) -> Result<(), Error> {
        let log = &**self.log.engine();
        let mut log_batch = Batch::new();
        let mut state_batch = Batch::new();
        // Under the I/O lock, so no round writes an entry of the shard after the scan.
        let io = self.log.exclusive();
        for keyspace in [keys::RAFT_LOG, keys::RAFT_META] {
            keys::delete_shard_keys(log, keyspace, shard, &mut log_batch)?;
        }
        let one_engine = self.state_flush.is_none();
        let state_deletes = if one_engine {
            &mut log_batch
        } else {
            &mut state_batch
        };
        for keyspace in [keys::SM_META].iter().chain(app_keyspaces) {
            keys::delete_shard_keys(&*self.state, keyspace, shard, state_deletes)?;
        }
        log.write(log_batch, tern_store::Durability::Immediate)?;
        io.forget_shard(shard);
        drop(io);
        if !state_batch.is_empty() {
            self.state
                .write(state_batch, tern_store::Durability::Immediate)?;
        }
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
