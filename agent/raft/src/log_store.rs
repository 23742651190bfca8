//! The Raft log of one shard: entries in `raft_log`, vote and log pointers in `raft_meta`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use tern_store::{Batch, Durability, Engine};

use crate::error::{decode, encode};
use crate::group_commit::GroupCommit;
use crate::keys::{self, COMMITTED, PURGED, RAFT_LOG, RAFT_META, VOTE};
use crate::typ::{Entry, LogId, StorageError, Vote};
use crate::{Error, ShardId, TypeConfig};

/// openraft's `RaftLogStorage` for one shard on the shared engine.
///
/// Appends are group-committed (see the crate docs); the vote, truncation and purge are written
/// `Immediate`; the committed pointer is written `Deferred`, because losing it costs only a
/// wait for the leader's next heartbeat before applying again.
pub struct LogStore {
    reader: LogReader,
    group_commit: Arc<GroupCommit>,
}

/// Replication reads at most this many bytes of entries per call (at least one entry), so a
/// run of large messages does not become one huge RPC.
const REPLICATION_READ_BYTES: usize = 8 << 20;

/// Entries per engine call when replication reads the log.
const REPLICATION_READ_PAGE: usize = 64;

/// Reads one shard's log; openraft hands these to its replication tasks.
#[derive(Clone)]
pub struct LogReader {
    engine: Arc<dyn Engine>,
    shard: ShardId,
}

impl LogStore {
    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        shard: ShardId,
        group_commit: Arc<GroupCommit>,
    ) -> Self {
        Self {
            reader: LogReader { engine, shard },
            group_commit,
        }
    }

    pub fn shard(&self) -> ShardId {
        self.reader.shard
    }

    fn engine(&self) -> &dyn Engine {
        &*self.reader.engine
    }

    fn meta_key(&self, name: &[u8]) -> Vec<u8> {
        keys::shard_key(self.reader.shard, name)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &'static [u8],
        what: &'static str,
    ) -> Result<Option<T>, Error> {
        match self.engine().get(RAFT_META, &self.meta_key(name))? {
            Some(bytes) => Ok(Some(decode(what, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Adds deletes of the shard's entries with index in `[from, to]` to `batch`.
    fn delete_entries(&self, from: u64, to: u64, batch: &mut Batch) -> Result<(), Error> {
        let shard = self.reader.shard;
        keys::delete_range(
            self.engine(),
            RAFT_LOG,
            Bound::Included(keys::log_key(shard, from).to_vec()),
            Bound::Included(keys::log_key(shard, to).to_vec()),
            batch,
        )?;
        Ok(())
    }
}

impl LogReader {
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Entries with index in `range`, in order; absent ones are skipped.
    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, Error> {
        let first = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let last = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_sub(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        };
        if first > last {
            return Ok(Vec::new());
        }
        let start = keys::log_key(self.shard, first);
        let end = keys::log_key(self.shard, last);
        let pairs = self.engine.scan(
            RAFT_LOG,
            Bound::Included(&start),
            Bound::Included(&end),
            usize::MAX,
            false,
        )?;
        pairs
            .iter()
            .map(|(_, value)| decode("log entry", value))
            .collect()
    }

    /// Entries from `start` on, before `end`, until about [`REPLICATION_READ_BYTES`].
    fn limited_entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, Error> {
        let mut entries = Vec::new();
        if start >= end {
            return Ok(entries);
        }
        let end_key = keys::log_key(self.shard, end);
        let mut from = keys::log_key(self.shard, start);
        let mut bytes = 0;
        loop {
            let page = self.engine.scan(
                RAFT_LOG,
                Bound::Included(&from),
                Bound::Excluded(&end_key),
                REPLICATION_READ_PAGE,
                false,
            )?;
            let full = page.len() == REPLICATION_READ_PAGE;
            for (_, value) in &page {
                bytes += value.len();
                entries.push(decode("log entry", value)?);
                if bytes >= REPLICATION_READ_BYTES {
                    return Ok(entries);
                }
            }
            let next = entries.last().and_then(|e| e.log_id.index.checked_add(1));
            match next {
                Some(next) if full => from = keys::log_key(self.shard, next),
                _ => return Ok(entries),
            }
        }
    }

    fn last_entry(&self) -> Result<Option<Entry>, Error> {
        let start = keys::log_key(self.shard, 0);
        let end = keys::log_key(self.shard, u64::MAX);
        let last = self.engine.scan(
            RAFT_LOG,
            Bound::Included(&start),
            Bound::Included(&end),
            1,
            true,
        )?;
        last.first()
            .map(|(_, value)| decode("log entry", value))
            .transpose()
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range)
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.limited_entries(start, end)
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = || -> Result<_, Error> {
            let last_purged_log_id: Option<LogId> = self.read_meta(PURGED, "purged log id")?;
            let last_log_id = match self.reader.last_entry()? {
                Some(entry) => Some(entry.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        state().map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.put(RAFT_META, self.meta_key(VOTE), encode(vote));
        self.engine()
            .write(batch, Durability::Immediate)
            .map_err(|e| Error::from(e).storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE, "vote")
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        match committed {
            Some(log_id) => batch.put(RAFT_META, self.meta_key(COMMITTED), encode(&log_id)),
            None => batch.delete(RAFT_META, self.meta_key(COMMITTED)),
        };
        self.engine()
            .write(batch, Durability::Deferred)
            .map_err(|e| Error::from(e).storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(COMMITTED, "committed log id")
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // All entries of one append in one write: atomic, and one fsync for the group.
        let mut batch = Batch::new();
        for entry in entries {
            let key = keys::log_key(self.reader.shard, entry.log_id.index);
            batch.put(RAFT_LOG, key.to_vec(), encode(&entry));
        }
        self.engine()
            .write(batch, Durability::Deferred)
            .map_err(|e| Error::from(e).storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        self.group_commit.after_flush(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let truncate = || -> Result<(), Error> {
            let mut batch = Batch::new();
            self.delete_entries(log_id.index, u64::MAX, &mut batch)?;
            self.engine().write(batch, Durability::Immediate)?;
            Ok(())
        };
        truncate().map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // `Immediate` also makes every earlier state-machine write durable, so the state machine
        // is on disk at least up to here before the entries that could rebuild it are gone.
        let purge = || -> Result<(), Error> {
            let mut batch = Batch::new();
            batch.put(RAFT_META, self.meta_key(PURGED), encode(&log_id));
            self.delete_entries(0, log_id.index, &mut batch)?;
            self.engine().write(batch, Durability::Immediate)?;
            Ok(())
        };
        purge().map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}
