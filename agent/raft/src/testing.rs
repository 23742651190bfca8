//! Test helpers for this crate and for crates built on it: a key-value [`Application`], a
//! temporary directory, and an in-process network that connects Raft instances of one
//! process directly (a test boundary: the real network is agent-to-agent RPC over TLS).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use tern_store::{Batch, Engine, Link, StoreError};

use crate::error::{decode, encode};
use crate::{Application, Node, NodeId, Request, ShardId, ShardRaft, TypeConfig, keys};

/// A key-value application: `put` and `delete` commands in one keyspace, `kv`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvApp;

/// A command of [`KvApp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl KvApp {
    pub const KEYSPACE: &'static str = "kv";

    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Request {
        Self::request(&KvCommand::Put {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Request {
        Self::request(&KvCommand::Delete { key: key.into() })
    }

    pub fn request(command: &KvCommand) -> Request {
        Request {
            bytes: encode(command).into(),
        }
    }

    /// The response to a command: the key's previous value, if any.
    pub fn previous(response: &crate::Response) -> Option<Vec<u8>> {
        decode("kv response", &response.bytes).expect("a KvApp response")
    }

    /// The value of `key` in `shard`.
    pub fn get(engine: &dyn Engine, shard: ShardId, key: &[u8]) -> Option<Vec<u8>> {
        engine
            .get(Self::KEYSPACE, &keys::shard_key(shard, key))
            .expect("read kv")
    }

    /// Every key and value of `shard`.
    pub fn dump(engine: &dyn Engine, shard: ShardId) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut all = BTreeMap::new();
        keys::for_each_in_shard(engine, Self::KEYSPACE, shard, |key, value| {
            all.insert(keys::strip_shard(&key).to_vec(), value);
            Ok(())
        })
        .expect("scan kv");
        all
    }
}

impl Application for KvApp {
    fn keyspaces(&self) -> &'static [&'static str] {
        &[Self::KEYSPACE]
    }

    fn apply(
        &self,
        shard: ShardId,
        _index: u64,
        engine: &dyn Engine,
        batch: &mut Batch,
        bytes: &[u8],
        stored: &Link,
    ) -> Result<Vec<u8>, StoreError> {
        let Ok(command) = decode::<KvCommand>("kv command", bytes) else {
            // Refused, deterministically: nothing written, no previous value.
            return Ok(encode(&None::<Vec<u8>>));
        };
        let key = match &command {
            KvCommand::Put { key, .. } | KvCommand::Delete { key } => keys::shard_key(shard, key),
        };
        let previous = engine.get(Self::KEYSPACE, &key)?;
        match command {
            // The value is the command's last field: linked to the log's copy of it.
            KvCommand::Put { value, .. } => {
                let link = bytes
                    .ends_with(&value)
                    .then(|| stored.within(bytes.len() - value.len(), 0));
                batch.put_linked(Self::KEYSPACE, key, value, link)
            }
            KvCommand::Delete { .. } => batch.delete(Self::KEYSPACE, key),
        };
        Ok(encode(&previous))
    }
}

/// A directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tern-raft-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Connects the Raft instances of one shard inside one process by direct calls.
///
/// A node that is not registered (never added, or removed to simulate its death) is
/// `Unreachable`, as the real network reports a peer it cannot connect to.
#[derive(Clone, Default)]
pub struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, ShardRaft>>>,
}

impl Router {
    pub fn add(&self, id: NodeId, raft: ShardRaft) {
        self.lock().insert(id, raft);
    }

    /// Disconnects `id` and returns its Raft (to shut it down).
    pub fn remove(&self, id: NodeId) -> Option<ShardRaft> {
        self.lock().remove(&id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, ShardRaft>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: NodeId) -> Result<ShardRaft, Unreachable> {
        self.lock()
            .get(&id)
            .cloned()
            .ok_or_else(|| Unreachable::new(&NotConnected(id)))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not connected to the in-process router")]
struct NotConnected(NodeId);

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}

/// One node's link to a peer through the [`Router`].
pub struct Connection {
    router: Router,
    target: NodeId,
}

impl Connection {
    async fn call<T, E, F>(
        &self,
        option: &RPCOption,
        rpc: impl FnOnce(ShardRaft) -> F,
    ) -> Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        F: Future<Output = Result<T, RaftError<NodeId, E>>>,
        E: std::error::Error,
    {
        let raft = self
            .router
            .get(self.target)
            .map_err(RPCError::Unreachable)?;
        match tokio::time::timeout(option.hard_ttl(), rpc(raft)).await {
            Ok(reply) => reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(elapsed) => Err(RPCError::Network(NetworkError::new(&elapsed))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(
            &option,
            |raft| async move { raft.append_entries(rpc).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            &option,
            |raft| async move { raft.install_snapshot(rpc).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(&option, |raft| async move { raft.vote(rpc).await })
            .await
    }
}
