//! The state machine of one shard: the application's keyspaces plus the `sm_meta` markers.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tern_store::{Batch, Durability, Engine, Link, Op, StoreError};

use crate::error::{decode, encode};
use crate::keys::{self, APPLIED, MEMBERSHIP, RAFT_LOG, SM_META, SNAPSHOT_DATA, SNAPSHOT_META};
use crate::snapshot::{self, Header};
use crate::state_flush::StateFlush;
use crate::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use crate::{Error, Response, ShardId, TypeConfig};

/// What a shard's state machine runs: the application (for Tern, the mail model).
pub trait Application: Send + Sync + 'static {
    /// The keyspaces this application writes. A snapshot copies exactly these, for the shard.
    fn keyspaces(&self) -> &'static [&'static str];

    /// Applies one committed command, deterministically: the same command on the same state
    /// must give the same writes and response on every replica.
    ///
    /// Reads go through `engine` and see the state as of the previous entry; writes go into
    /// `batch`, only into [`Self::keyspaces`] and only under the shard's prefix
    /// ([`keys::shard_key`]). They are written together with the entry's `applied` marker.
    /// A command the application refuses (bad input, quota, ...) is still applied: the refusal
    /// is its response. `Err` is for a failing engine only; it stops the shard's Raft group.
    ///
    /// `index` is the entry's log index: the same on every replica, and higher for every later
    /// entry. After a crash the entries after the last durable `applied` marker are applied
    /// again, with their own indexes, so a value an application tags with the index it was
    /// written at tells a leftover of an interrupted apply (tagged at or above `index`) from
    /// state written by an earlier entry.
    ///
    /// `stored` says where the log holds `command` (the `raft_log` value of the entry, from
    /// its offset on): a value that copies part of the command, such as a message body, can
    /// be put with [`Batch::put_linked`] and [`Link::within`], so an engine holding both the
    /// log and that keyspace stores those bytes once.
    fn apply(
        &self,
        shard: ShardId,
        index: u64,
        engine: &dyn Engine,
        batch: &mut Batch,
        command: &[u8],
        stored: &Link,
    ) -> Result<Vec<u8>, StoreError>;
}

/// openraft's `RaftStateMachine` for one shard.
///
/// Each entry is one `Deferred` batch: the application's writes plus the `applied` marker (and
/// the membership, for a membership entry), so an entry is applied with its marker or not at
/// all. See the crate docs for why `Deferred` loses nothing.
///
/// # Snapshots
///
/// A snapshot is a copy of the shard's application keyspaces with its `applied` log id and
/// membership, taken while applies of the shard wait, so it is consistent. The last one built
/// or installed is stored in `sm_meta` (meta under `snapshot_meta`, data in 1 MiB chunks under
/// `snapshot_data`), written `Immediate`, rather than rebuilt on demand:
///
/// - openraft's snapshot metadata must match what [`RaftStateMachine::get_current_snapshot`]
///   returns, and the engine cannot read a past state, so a snapshot cannot be rebuilt later;
/// - a restarted node has it at once to re-seed a peer with an empty volume, without a full
///   scan at start-up;
/// - its `Immediate` write is what makes the state machine durable up to the snapshot before
///   openraft may purge the log behind it.
///
/// The cost is a second copy of the shard's state on disk, and in memory while one is sent
/// or received (`SnapshotData` is a `Cursor<Vec<u8>>`); streaming snapshots from files is the
/// step to take when shards outgrow memory.
pub struct StateMachine<A> {
    shared: Arc<Shared<A>>,
}

/// Builds a snapshot of one shard; openraft runs it beside the state machine.
pub struct SnapshotBuilder<A> {
    shared: Arc<Shared<A>>,
}

struct Shared<A> {
    engine: Arc<dyn Engine>,
    shard: ShardId,
    app: Arc<A>,
    /// Flushes the engine now and then when it holds no log (see [`crate::Storage`]).
    flush: Option<Arc<StateFlush>>,
    /// Held by apply, snapshot build and install: a snapshot sees no half-applied state.
    lock: tokio::sync::Mutex<()>,
}

/// What `sm_meta` holds under `snapshot_meta`.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    len: u64,
    chunks: u32,
}

const SNAPSHOT_CHUNK: usize = 1 << 20;

impl<A: Application> StateMachine<A> {
    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        flush: Option<Arc<StateFlush>>,
        shard: ShardId,
        app: Arc<A>,
    ) -> Result<Self, Error> {
        let keyspaces = app.keyspaces();
        if let Some(taken) = keyspaces.iter().find(|k| keys::RAFT_KEYSPACES.contains(k)) {
            return Err(Error::Config(format!(
                "application keyspace {taken:?} is reserved for Raft"
            )));
        }
        if keyspaces.len() > usize::from(u8::MAX) + 1 {
            return Err(Error::Config("more than 256 application keyspaces".into()));
        }
        if (1..keyspaces.len()).any(|i| keyspaces[..i].contains(&keyspaces[i])) {
            return Err(Error::Config("application keyspaces repeat".into()));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                shard,
                app,
                flush,
                lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn shard(&self) -> ShardId {
        self.shared.shard
    }

    pub fn app(&self) -> &Arc<A> {
        &self.shared.app
    }
}

impl<A: Application> Shared<A> {
    fn key(&self, name: &[u8]) -> Vec<u8> {
        keys::shard_key(self.shard, name)
    }

    fn chunk_key(&self, chunk: u32) -> Vec<u8> {
        let mut key = self.key(SNAPSHOT_DATA);
        key.extend_from_slice(&chunk.to_be_bytes());
        key
    }

    fn read<T: serde::de::DeserializeOwned>(
        &self,
        name: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, Error> {
        match self.engine.get(SM_META, &self.key(name))? {
            Some(bytes) => Ok(Some(decode(what, &bytes)?)),
            None => Ok(None),
        }
    }

    fn applied_state(&self) -> Result<(Option<LogId>, StoredMembership), Error> {
        let applied = self.read(APPLIED, "applied log id")?;
        let membership = self.read(MEMBERSHIP, "membership")?.unwrap_or_default();
        Ok((applied, membership))
    }

    fn apply(&self, entry: Entry) -> Result<Response, Error> {
        let mut batch = Batch::new();
        let response = match entry.payload {
            EntryPayload::Blank => Response::default(),
            EntryPayload::Normal(ref request) => {
                let stored = command_link(self.shard, &entry, request)?;
                let bytes = self.app.apply(
                    self.shard,
                    entry.log_id.index,
                    &*self.engine,
                    &mut batch,
                    &request.bytes,
                    &stored,
                )?;
                self.check_app_writes(&batch)?;
                Response { bytes }
            }
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id), membership);
                batch.put(SM_META, self.key(MEMBERSHIP), encode(&stored));
                Response::default()
            }
        };
        batch.put(SM_META, self.key(APPLIED), encode(&entry.log_id));
        self.engine.write(batch, Durability::Deferred)?;
        if let Some(flush) = &self.flush {
            flush.wrote();
        }
        Ok(response)
    }

    /// An application that wrote outside its keyspaces or its shard would corrupt another
    /// shard or Raft itself; stop instead.
    fn check_app_writes(&self, batch: &Batch) -> Result<(), Error> {
        let prefix = self.shard.to_be_bytes();
        for op in batch.ops() {
            let key = match op {
                Op::Put { key, .. } | Op::Delete { key, .. } => key,
            };
            if !self.app.keyspaces().contains(&op.keyspace()) || !key.starts_with(&prefix) {
                return Err(Error::Config(format!(
                    "the application wrote {:?} in keyspace {:?}, outside shard {}'s keys",
                    key,
                    op.keyspace(),
                    self.shard
                )));
            }
        }
        Ok(())
    }

    /// Copies the shard's state into a snapshot and stores it. Runs with `lock` held.
    fn build_snapshot(&self) -> Result<Snapshot, Error> {
        let (last_applied, last_membership) = self.applied_state()?;
        let keyspaces = self.app.keyspaces();
        let mut writer = snapshot::Writer::new(&Header {
            last_applied,
            last_membership: last_membership.clone(),
            keyspaces: keyspaces.iter().map(|k| k.to_string()).collect(),
        });
        for (number, keyspace) in (0..=u8::MAX).zip(keyspaces) {
            keys::for_each_in_shard(&*self.engine, keyspace, self.shard, |key, value| {
                writer.pair(number, keys::strip_shard(&key), &value);
                Ok(())
            })?;
        }
        let data = writer.finish();
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id: snapshot_id(self.shard, last_applied),
        };
        let mut batch = Batch::new();
        self.store_snapshot(&meta, &data, &mut batch)?;
        // Also makes every earlier apply durable: the log may be purged up to this snapshot.
        self.engine.write(batch, Durability::Immediate)?;
        tracing::info!(shard = self.shard, snapshot = %meta, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    /// Replaces the shard's state with a snapshot's, in one batch. Runs with `lock` held.
    fn install_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), Error> {
        let (header, mut pairs) = snapshot::open(data)?;
        if header.last_applied != meta.last_log_id || header.last_membership != meta.last_membership
        {
            return Err(Error::Snapshot(format!(
                "data is at {:?}, metadata says {meta}",
                header.last_applied
            )));
        }
        let ours = self.app.keyspaces();
        let keyspaces = header
            .keyspaces
            .iter()
            .map(|name| {
                ours.iter().find(|k| **k == name).copied().ok_or_else(|| {
                    Error::Snapshot(format!("holds keyspace {name:?}, unknown to this node"))
                })
            })
            .collect::<Result<Vec<&'static str>, Error>>()?;

        let mut batch = Batch::new();
        for keyspace in ours {
            keys::delete_shard_keys(&*self.engine, keyspace, self.shard, &mut batch)?;
        }
        while let Some((number, key, value)) = pairs.next_pair()? {
            let keyspace = keyspaces
                .get(usize::from(number))
                .ok_or_else(|| Error::Snapshot(format!("refers to keyspace number {number}")))?;
            batch.put(keyspace, keys::shard_key(self.shard, key), value);
        }
        match &meta.last_log_id {
            Some(log_id) => batch.put(SM_META, self.key(APPLIED), encode(log_id)),
            None => batch.delete(SM_META, self.key(APPLIED)),
        };
        batch.put(SM_META, self.key(MEMBERSHIP), encode(&meta.last_membership));
        self.store_snapshot(meta, data, &mut batch)?;
        self.engine.write(batch, Durability::Immediate)?;
        tracing::info!(shard = self.shard, snapshot = %meta, bytes = data.len(), "installed snapshot");
        Ok(())
    }

    /// Adds the writes that make `data` the shard's current snapshot to `batch`.
    fn store_snapshot(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let old_chunks = self
            .read::<StoredSnapshot>(SNAPSHOT_META, "snapshot metadata")?
            .map_or(0, |old| old.chunks);
        let mut chunks = 0;
        for chunk in data.chunks(SNAPSHOT_CHUNK) {
            batch.put(SM_META, self.chunk_key(chunks), chunk);
            chunks += 1;
        }
        for stale in chunks..old_chunks {
            batch.delete(SM_META, self.chunk_key(stale));
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            len: data.len() as u64,
            chunks,
        };
        batch.put(SM_META, self.key(SNAPSHOT_META), encode(&stored));
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, Error> {
        let Some(stored) = self.read::<StoredSnapshot>(SNAPSHOT_META, "snapshot metadata")? else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(usize::try_from(stored.len).unwrap_or(0));
        for chunk in 0..stored.chunks {
            let bytes = self
                .engine
                .get(SM_META, &self.chunk_key(chunk))?
                .ok_or_else(|| Error::Snapshot(format!("stored chunk {chunk} is missing")))?;
            data.extend_from_slice(&bytes);
        }
        if data.len() as u64 != stored.len {
            return Err(Error::Snapshot("stored length differs".into()));
        }
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Where the log holds an entry's command: the log stores the entry as [`encode`] makes it,
/// and the command's bytes are the last field of that encoding, so they end it.
fn command_link(shard: ShardId, entry: &Entry, request: &crate::Request) -> Result<Link, Error> {
    let len = postcard::experimental::serialized_size(entry)
        .map_err(|e| Error::Config(format!("sizing a log entry: {e}")))?;
    Ok(Link {
        keyspace: RAFT_LOG,
        key: keys::log_key(shard, entry.log_id.index).to_vec(),
        offset: (len - request.bytes.len()) as u64,
        head: 0,
    })
}

fn snapshot_id(shard: ShardId, last: Option<LogId>) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    match last {
        Some(log_id) => format!("{shard}-{}-{}-{nanos}", log_id.leader_id, log_id.index),
        None => format!("{shard}-none-{nanos}"),
    }
}

/// Runs `work` on the blocking pool with the shard's lock held: engine calls block on disk.
async fn blocking<A: Application, T: Send + 'static>(
    shared: &Arc<Shared<A>>,
    work: impl FnOnce(&Shared<A>) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let _guard = shared.lock.blocking_lock();
        work(&shared)
    })
    .await?
}

impl<A: Application> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        blocking(&self.shared, |shared| shared.build_snapshot())
            .await
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}

impl<A: Application> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotBuilder = SnapshotBuilder<A>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let _guard = self.shared.lock.lock().await;
        self.shared
            .applied_state()
            .map_err(|e| e.storage(ErrorSubject::StateMachine, ErrorVerb::Read))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let _guard = self.shared.lock.lock().await;
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let response = self
                .shared
                .apply(entry)
                .map_err(|e| e.storage(ErrorSubject::Apply(log_id), ErrorVerb::Write))?;
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder<A> {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let owned_meta = meta.clone();
        blocking(&self.shared, move |shared| {
            shared.install_snapshot(&owned_meta, &data)
        })
        .await
        .map_err(|e| {
            e.storage(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            )
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        blocking(&self.shared, |shared| shared.current_snapshot())
            .await
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
