//! The Raft log of one shard: entries in `raft_log`, vote and log pointers in `raft_meta`, on
//! the log engine, with appends waiting in the group commit's pending overlay until written.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use tern_store::{Batch, Durability, Engine};

use crate::error::{decode, encode};
use crate::group_commit::{GroupCommit, PendingRead};
use crate::keys::{self, COMMITTED, PURGED, RAFT_LOG, RAFT_META, VOTE};
use crate::typ::{Entry, LogId, StorageError, Vote};
use crate::{Error, ShardId, TypeConfig};

/// openraft's `RaftLogStorage` for one shard on the shared log engine.
///
/// Appends go to the group commit (`group_commit.rs`, and the crate docs) and are readable
/// at once; their callbacks complete after the durable write that stored them. The vote,
/// truncation and purge are written `Immediate`, between group-commit rounds. The committed
/// pointer is written with the next round, without an fsync of its own: losing it costs only
/// a wait for the leader's next heartbeat before applying again.
pub struct LogStore {
    reader: LogReader,
}

/// Replication reads at most this many bytes of entries per call (at least one entry), so a
/// run of large messages does not become one huge RPC.
const REPLICATION_READ_BYTES: usize = 8 << 20;

/// Entries per engine call when replication reads the log.
const REPLICATION_READ_PAGE: usize = 64;

/// Reads one shard's log (the engine and the pending overlay); openraft hands these to its
/// replication tasks.
#[derive(Clone)]
pub struct LogReader {
    log: Arc<GroupCommit>,
    shard: ShardId,
}

impl LogStore {
    pub(crate) fn new(log: Arc<GroupCommit>, shard: ShardId) -> Self {
        Self {
            reader: LogReader { log, shard },
        }
    }

    pub fn shard(&self) -> ShardId {
        self.reader.shard
    }

    fn log(&self) -> &GroupCommit {
        &self.reader.log
    }

    fn engine(&self) -> &dyn Engine {
        &**self.reader.log.engine()
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

    /// Adds deletes of the shard's stored entries with index in `[from, to]` to `batch`.
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
        self.merged(first, last, usize::MAX, keys::SCAN_PAGE)
    }

    /// Entries from `start` on, before `end`, until about [`REPLICATION_READ_BYTES`].
    fn limited_entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, Error> {
        match end.checked_sub(1) {
            Some(last) => self.merged(start, last, REPLICATION_READ_BYTES, REPLICATION_READ_PAGE),
            None => Ok(Vec::new()),
        }
    }

    /// Entries with index in `[first, last]` from the engine and the overlay (the overlay wins
    /// at an index both hold), in order, ending with the one whose encoded size brings the
    /// total to `byte_limit`. Reads the engine `page` entries at a time.
    fn merged(
        &self,
        first: u64,
        last: u64,
        byte_limit: usize,
        page: usize,
    ) -> Result<Vec<Entry>, Error> {
        if first > last {
            return Ok(Vec::new());
        }
        self.log.consistent_read(|| {
            // The overlay first: an entry written to the engine meanwhile is there by then.
            let pending = self
                .log
                .pending_entries(self.shard, first, last, byte_limit);
            // Memory holds a run of the log up to its end; one starting at `first` holds all
            // of the range there is (see `group_commit`).
            if pending.first().is_some_and(|p| p.index == first) {
                return Ok(pending.into_iter().map(|p| p.entry).collect());
            }
            let mut merge = Merge {
                pending: pending.into_iter().peekable(),
                out: Vec::new(),
                bytes: 0,
                byte_limit,
            };
            let end = keys::log_key(self.shard, last);
            let mut from = Bound::Included(keys::log_key(self.shard, first).to_vec());
            loop {
                let rows = self.log.engine().scan(
                    RAFT_LOG,
                    keys::as_ref(&from),
                    Bound::Included(&end),
                    page,
                    false,
                )?;
                for (key, value) in &rows {
                    let index = keys::log_index(key).ok_or_else(|| {
                        Error::Store(tern_store::StoreError::Corrupt(format!(
                            "log key {key:?} is not shard and index"
                        )))
                    })?;
                    if merge.stored(index, value)? {
                        return Ok(merge.out);
                    }
                }
                match rows.last() {
                    Some((key, _)) if rows.len() == page => from = Bound::Excluded(key.clone()),
                    _ => break,
                }
            }
            merge.rest();
            Ok(merge.out)
        })
    }

    /// The log id of the last entry, stored or pending.
    fn last_log_id(&self) -> Result<Option<LogId>, Error> {
        self.log.consistent_read(|| {
            let pending = self.log.pending_last(self.shard);
            let start = keys::log_key(self.shard, 0);
            let end = keys::log_key(self.shard, u64::MAX);
            let stored = self.log.engine().scan(
                RAFT_LOG,
                Bound::Included(&start),
                Bound::Included(&end),
                1,
                true,
            )?;
            let stored = stored
                .first()
                .map(|(_, value)| decode::<Entry>("log entry", value).map(|e| e.log_id))
                .transpose()?;
            Ok(match (pending, stored) {
                (Some(p), Some(s)) if s.index > p.index => Some(s),
                (Some(p), _) => Some(p),
                (None, s) => s,
            })
        })
    }
}

/// Merges pending entries into entries read from the engine, in index order.
struct Merge<I: Iterator<Item = PendingRead>> {
    pending: std::iter::Peekable<I>,
    out: Vec<Entry>,
    bytes: usize,
    byte_limit: usize,
}

impl<I: Iterator<Item = PendingRead>> Merge<I> {
    /// Adds the engine's entry at `index` (or the pending one there), after any pending ones
    /// before it; true once the byte limit is reached.
    fn stored(&mut self, index: u64, value: &[u8]) -> Result<bool, Error> {
        while let Some(pending) = self.pending.next_if(|p| p.index < index) {
            if self.push(pending.entry, pending.len) {
                return Ok(true);
            }
        }
        Ok(match self.pending.next_if(|p| p.index == index) {
            Some(pending) => self.push(pending.entry, pending.len),
            None => self.push(decode("log entry", value)?, value.len()),
        })
    }

    /// Adds the pending entries after the last stored one, up to the byte limit.
    fn rest(&mut self) {
        while let Some(pending) = self.pending.next() {
            if self.push(pending.entry, pending.len) {
                return;
            }
        }
    }

    fn push(&mut self, entry: Entry, len: usize) -> bool {
        self.out.push(entry);
        self.bytes = self.bytes.saturating_add(len);
        self.bytes >= self.byte_limit
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
            let last_log_id = self.reader.last_log_id()?.or(last_purged_log_id);
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
        let _io = self.log().exclusive();
        self.engine()
            .write(batch, Durability::Immediate)
            .map_err(|e| Error::from(e).storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE, "vote")
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.log().save_committed(self.reader.shard, committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        if let Some(committed) = self.log().pending_committed(self.reader.shard) {
            return Ok(committed);
        }
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
        // Encoded here, on the Raft core's task, so a round only copies bytes.
        let entries = entries
            .into_iter()
            .map(|entry| {
                let encoded = encode(&entry);
                (entry, encoded)
            })
            .collect();
        self.log().append(self.reader.shard, entries, callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let shard = self.reader.shard;
        let io = self.log().exclusive();
        io.truncation(|io| -> Result<(), Error> {
            let mut batch = Batch::new();
            self.delete_entries(log_id.index, u64::MAX, &mut batch)?;
            self.engine().write(batch, Durability::Immediate)?;
            // Only once the engine holds the truncation: a failed write leaves both as they were.
            io.drop_pending(shard, log_id.index, u64::MAX);
            Ok(())
        })
        .map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // openraft purges only up to its last snapshot, which the state machine stored with an
        // `Immediate` write: the state is on disk at least up to here before the entries that
        // could rebuild it are gone.
        let shard = self.reader.shard;
        let io = self.log().exclusive();
        let purge = || -> Result<(), Error> {
            let mut batch = Batch::new();
            batch.put(RAFT_META, self.meta_key(PURGED), encode(&log_id));
            self.delete_entries(0, log_id.index, &mut batch)?;
            self.engine().write(batch, Durability::Immediate)?;
            io.drop_pending(shard, 0, log_id.index);
            Ok(())
        };
        purge().map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}
