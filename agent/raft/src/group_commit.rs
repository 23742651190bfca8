//! Group commit of the Raft log: appends wait in memory, one durable write stores them all.
//!
//! An append puts its entries into the *pending overlay* (keyed by shard and index, holding
//! the entry for readers and its encoding for the write) and queues its `LogFlushed` callback;
//! it never touches the engine, so it never waits for a disk. A thread takes everything
//! pending, of every shard, writes it in one `Immediate` engine write (one fsync), then moves
//! exactly those entries from the overlay to the *recent* set and completes the callbacks it
//! took. Readers see engine ∪ recent ∪ overlay, the overlay winning. While one write runs,
//! the next group gathers, so durable appends per second grow with concurrency instead of
//! stopping at the disk's fsync rate, and nothing else waits for the log's fsync on the
//! engine's write lock.
//!
//! # Ordering
//!
//! - An append inserts its entries and queues its callback under one lock, so the round that
//!   takes a callback also takes (or has already written) that append's entries: a callback
//!   is completed only after a durable write that covered them.
//! - The *I/O lock* is held by a round from taking the overlay until its write returned and
//!   the written entries left the overlay, and by truncate, purge, the vote and shard
//!   deletion. So a truncation happens wholly before or after a round: entries a round took
//!   are never written after a truncation dropped them.
//! - A read looks at the overlay before the engine: an entry a round moves in between is in
//!   the engine by then. Truncations bump a sequence counter (odd while one runs) and a read
//!   that overlapped one is retried, so a read never mixes entries from both sides of it.
//! - A failed write completes its callbacks with the error (openraft then stops the shards
//!   concerned) and leaves the entries in the overlay, still readable, as appended.
//!
//! # Recent entries
//!
//! Replication and the state machine read entries just after they are appended, mostly after
//! a round has written them. The last [`RECENT_BYTES`] of written entries stay in memory, as
//! the same entries the engine holds, so those reads need no engine read and no decoding.
//! Truncation, purge and shard deletion drop them with the overlay's, so they never differ
//! from the engine. Per shard the overlay and the recent set together hold a run of the log
//! up to its end: appends come in index order, a truncation removes a run's tail from both,
//! and the oldest recent entries go first. So a read whose first index either holds is
//! answered from memory whole.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use openraft::storage::LogFlushed;
use tern_store::{Batch, Durability, Engine, Op, OpRef, StoreError};

use crate::error::encode;
use crate::keys::{self, COMMITTED, RAFT_LOG, RAFT_META};
use crate::typ::{Entry, LogId};
use crate::{ShardId, TypeConfig};

/// The log engine, its pending overlay and the thread that makes the overlay durable.
///
/// The thread stops (after writing what is pending) when this is dropped, i.e. with the last
/// [`crate::Storage`], [`crate::LogStore`] and [`crate::LogReader`] of the engine.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    engine: Arc<dyn Engine>,
    pending: Mutex<Pending>,
    /// Wakes the thread: a callback is queued, or the last handle is gone.
    wake: Condvar,
    /// Serialises every durable write of the log; see the module docs.
    io: Mutex<()>,
    /// Odd while a truncation runs; bumped twice by each.
    truncations: AtomicU64,
}

/// Bytes of written entries (as encoded) kept in memory for readers.
pub(crate) const RECENT_BYTES: usize = 32 << 20;

/// One appended entry waiting for its durable write.
struct PendingEntry {
    /// Tells this entry from a later one at the same place.
    seq: u64,
    entry: Entry,
    /// Shared with the round that writes it, which borrows it outside the lock.
    encoded: Arc<Vec<u8>>,
}

/// A written entry kept for readers.
struct RecentEntry {
    seq: u64,
    entry: Entry,
    len: usize,
}

#[derive(Default)]
struct Pending {
    entries: BTreeMap<(ShardId, u64), PendingEntry>,
    /// Written entries, as the engine holds them, the oldest first out.
    recent: BTreeMap<(ShardId, u64), RecentEntry>,
    /// Places and seqs of `recent`'s entries in the order they came; some may be gone.
    recent_order: VecDeque<((ShardId, u64), u64)>,
    /// Encoded bytes of the entries in `recent`.
    recent_bytes: usize,
    /// The committed log id of a shard, saved after its last write (`seq`, value).
    committed: BTreeMap<ShardId, (u64, Option<LogId>)>,
    callbacks: Vec<LogFlushed<TypeConfig>>,
    next_seq: u64,
    closed: bool,
}

impl Pending {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn has_writes(&self) -> bool {
        !self.entries.is_empty() || !self.committed.is_empty()
    }

    /// Moves an entry a round wrote to the recent set, dropping the oldest beyond the bound.
    fn written(&mut self, place: (ShardId, u64), entry: PendingEntry) {
        let len = entry.encoded.len();
        self.recent_order.push_back((place, entry.seq));
        let old = self.recent.insert(
            place,
            RecentEntry {
                seq: entry.seq,
                entry: entry.entry,
                len,
            },
        );
        self.recent_bytes += len;
        if let Some(old) = old {
            self.recent_bytes -= old.len;
        }
        while self.recent_bytes > RECENT_BYTES {
            let Some((place, seq)) = self.recent_order.pop_front() else {
                break;
            };
            if self.recent.get(&place).is_some_and(|e| e.seq == seq) {
                let gone = self.recent.remove(&place).expect("just found");
                self.recent_bytes -= gone.len;
            }
        }
        // Places dropped by truncation or purge leave stale records; keep them few.
        if self.recent_order.len() > 2 * self.recent.len() + 1024 {
            let recent = &self.recent;
            self.recent_order
                .retain(|(place, seq)| recent.get(place).is_some_and(|e| e.seq == *seq));
        }
    }
}

/// What a round took from the overlay: the places and seqs it writes.
struct Taken {
    entries: Vec<((ShardId, u64), u64)>,
    committed: Vec<(ShardId, u64)>,
}

/// An entry as a read of the overlay returns it.
pub(crate) struct PendingRead {
    pub(crate) index: u64,
    pub(crate) entry: Entry,
    /// Its encoded length, as a read of the engine would count it.
    pub(crate) len: usize,
}

/// Held while writing the log durably outside a round: truncate, purge, vote, shard deletion.
pub(crate) struct IoGuard<'a> {
    shared: &'a Shared,
    _io: MutexGuard<'a, ()>,
}

impl GroupCommit {
    pub(crate) fn start(engine: Arc<dyn Engine>) -> Self {
        let shared = Arc::new(Shared {
            engine,
            pending: Mutex::default(),
            wake: Condvar::new(),
            io: Mutex::new(()),
            truncations: AtomicU64::new(0),
        });
        let thread = thread::Builder::new()
            .name("raft-group-commit".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })
            .expect("spawn the group-commit thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    pub(crate) fn engine(&self) -> &Arc<dyn Engine> {
        &self.shared.engine
    }

    /// Makes `entries` (with their encodings) readable at once, and durable by the next round,
    /// which then completes `callback`.
    pub(crate) fn append(
        &self,
        shard: ShardId,
        entries: Vec<(Entry, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    ) {
        let mut pending = self.shared.lock();
        for (entry, encoded) in entries {
            let seq = pending.seq();
            let place = (shard, entry.log_id.index);
            pending.entries.insert(
                place,
                PendingEntry {
                    seq,
                    entry,
                    encoded: Arc::new(encoded),
                },
            );
        }
        pending.callbacks.push(callback);
        self.shared.wake.notify_one();
    }

    /// Saves the committed log id of `shard` with the next round. It needs no fsync of its
    /// own: losing it costs only a wait for the leader's next heartbeat.
    pub(crate) fn save_committed(&self, shard: ShardId, committed: Option<LogId>) {
        let mut pending = self.shared.lock();
        let seq = pending.seq();
        pending.committed.insert(shard, (seq, committed));
    }

    /// The committed log id of `shard` saved but not yet written, if any.
    pub(crate) fn pending_committed(&self, shard: ShardId) -> Option<Option<LogId>> {
        self.shared
            .lock()
            .committed
            .get(&shard)
            .map(|(_, committed)| *committed)
    }

    /// Copies of the pending and recent entries of `shard` with index in `[first, last]`, in
    /// order, until the one whose encoded size brings the total to `byte_limit`.
    pub(crate) fn pending_entries(
        &self,
        shard: ShardId,
        first: u64,
        last: u64,
        byte_limit: usize,
    ) -> Vec<PendingRead> {
        let pending = self.shared.lock();
        let range = (shard, first)..=(shard, last);
        let recent = pending
            .recent
            .range(range.clone())
            .map(|(&(_, index), e)| PendingRead {
                index,
                entry: e.entry.clone(),
                len: e.len,
            });
        let appended = pending
            .entries
            .range(range)
            .map(|(&(_, index), e)| PendingRead {
                index,
                entry: e.entry.clone(),
                len: e.encoded.len(),
            });
        // The two hold different places (a round moves an entry from one to the other), and
        // recent ones come before appended ones but for a truncation's re-appends.
        let mut merged = Vec::new();
        let mut bytes = 0usize;
        let mut recent = recent.peekable();
        let mut appended = appended.peekable();
        loop {
            let next = match (recent.peek(), appended.peek()) {
                (Some(r), Some(a)) if a.index < r.index => appended.next(),
                (Some(_), _) => recent.next(),
                (None, _) => appended.next(),
            };
            let Some(next) = next else { break };
            bytes = bytes.saturating_add(next.len);
            merged.push(next);
            if bytes >= byte_limit {
                break;
            }
        }
        merged
    }

    /// The log id of the last pending entry of `shard`.
    pub(crate) fn pending_last(&self, shard: ShardId) -> Option<LogId> {
        self.shared
            .lock()
            .entries
            .range((shard, 0)..=(shard, u64::MAX))
            .next_back()
            .map(|(_, pending)| pending.entry.log_id)
    }

    /// Runs `read` (which must look at the overlay before the engine) until no truncation
    /// overlapped it. Not for a holder of the I/O lock, which a truncation in progress holds.
    pub(crate) fn consistent_read<T, E>(
        &self,
        mut read: impl FnMut() -> Result<T, E>,
    ) -> Result<T, E> {
        let counter = &self.shared.truncations;
        loop {
            let before = counter.load(Ordering::SeqCst);
            if before % 2 == 1 {
                // A truncation holds the I/O lock until it is done.
                drop(self.shared.io());
                continue;
            }
            let value = read()?;
            if counter.load(Ordering::SeqCst) == before {
                return Ok(value);
            }
        }
    }

    /// Excludes rounds (and other durable log writes) until the guard is dropped.
    pub(crate) fn exclusive(&self) -> IoGuard<'_> {
        IoGuard {
            _io: self.shared.io(),
            shared: &self.shared,
        }
    }
}

impl IoGuard<'_> {
    /// Runs `truncate` (which drops entries of the engine and the overlay) so that concurrent
    /// reads retry rather than see half of it.
    pub(crate) fn truncation<T>(&self, truncate: impl FnOnce(&Self) -> T) -> T {
        struct Bump<'a>(&'a AtomicU64);
        impl Drop for Bump<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let counter = &self.shared.truncations;
        counter.fetch_add(1, Ordering::SeqCst);
        let _even_again = Bump(counter);
        truncate(self)
    }

    /// Drops the pending and recent entries of `shard` with index in `[first, last]`. The
    /// callbacks of pending ones stay queued: the next round completes them, with nothing of
    /// theirs left to write.
    pub(crate) fn drop_pending(&self, shard: ShardId, first: u64, last: u64) {
        let mut pending = self.shared.lock();
        let range = (shard, first)..=(shard, last);
        let doomed: Vec<_> = pending
            .entries
            .range(range.clone())
            .map(|(p, _)| *p)
            .collect();
        for place in doomed {
            pending.entries.remove(&place);
        }
        let doomed: Vec<_> = pending.recent.range(range).map(|(p, _)| *p).collect();
        for place in doomed {
            let gone = pending.recent.remove(&place).expect("just listed");
            pending.recent_bytes -= gone.len;
        }
    }

    /// Drops everything pending of `shard`: entries and committed log id.
    pub(crate) fn forget_shard(&self, shard: ShardId) {
        self.drop_pending(shard, 0, u64::MAX);
        self.shared.lock().committed.remove(&shard);
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread writes what is pending, then exits and releases the engine.
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding the lock; a poisoned overlay is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn io(&self) -> MutexGuard<'_, ()> {
        self.io.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        loop {
            let closing = {
                let mut pending = self.lock();
                while pending.callbacks.is_empty() && !pending.closed {
                    pending = self
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if pending.closed && pending.callbacks.is_empty() && !pending.has_writes() {
                    return;
                }
                pending.closed
            };
            let (result, callbacks) = self.round();
            if let Err(error) = &result {
                tracing::error!(%error, appends = callbacks.len(), "writing the Raft log failed");
            }
            for callback in callbacks {
                callback.log_io_completed(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| io::Error::other(e.to_string())),
                );
            }
            if closing && result.is_err() {
                // Nobody is left to append; what could not be written is lost, unacknowledged.
                return;
            }
        }
    }

    /// Writes everything pending in one durable write; returns its result and the callbacks
    /// it covers.
    fn round(&self) -> (Result<(), StoreError>, Vec<LogFlushed<TypeConfig>>) {
        let _io = self.io();
        let mut batch = Batch::new();
        let (taken, callbacks, entries) = {
            let mut pending = self.lock();
            let mut taken = Taken {
                entries: Vec::with_capacity(pending.entries.len()),
                committed: Vec::with_capacity(pending.committed.len()),
            };
            let mut entries = Vec::with_capacity(pending.entries.len());
            for (&(shard, index), entry) in &pending.entries {
                entries.push((keys::log_key(shard, index), entry.encoded.clone()));
                taken.entries.push(((shard, index), entry.seq));
            }
            for (&shard, &(seq, committed)) in &pending.committed {
                let key = keys::shard_key(shard, COMMITTED);
                match committed {
                    Some(log_id) => batch.put(RAFT_META, key, encode(&log_id)),
                    None => batch.delete(RAFT_META, key),
                };
                taken.committed.push((shard, seq));
            }
            (taken, mem::take(&mut pending.callbacks), entries)
        };
        if entries.is_empty() && batch.is_empty() {
            // Every entry of these appends was truncated or purged meanwhile (durably).
            return (Ok(()), callbacks);
        }
        // The entries are written from their encoded bytes in memory, not copied into a batch.
        let mut ops: Vec<OpRef<'_>> = entries
            .iter()
            .map(|(key, encoded)| OpRef::Put {
                keyspace: RAFT_LOG,
                key,
                value: encoded,
                link: None,
            })
            .collect();
        ops.extend(batch.ops().iter().map(Op::as_ref));
        let result = self.engine.write_ops(&ops, Durability::Immediate);
        if result.is_ok() {
            let mut pending = self.lock();
            for (place, seq) in taken.entries {
                if pending.entries.get(&place).is_some_and(|e| e.seq == seq) {
                    let entry = pending.entries.remove(&place).expect("just found");
                    pending.written(place, entry);
                }
            }
            for (shard, seq) in taken.committed {
                if pending.committed.get(&shard).is_some_and(|c| c.0 == seq) {
                    pending.committed.remove(&shard);
                }
            }
        }
        (result, callbacks)
    }
}
