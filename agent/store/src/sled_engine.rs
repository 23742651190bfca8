//! The sled engine: one tree per keyspace.
//!
//! sled 0.34 is beta. A batch on one tree uses `Tree::apply_batch`; a batch over several uses a
//! transaction over those trees. Both seal their log entries as one unit, which recovery
//! replays all or nothing.
//!
//! Durability needs more than `Db::flush()`: on Linux sled 0.34 ends a flush with
//! `sync_file_range`, which writes the pages but neither the file's metadata (its log grows by
//! appending, so the new length is metadata) nor the drive's write cache; its real `fsync` runs
//! only every 500 ms on a background thread. Values too large for a log segment go to files
//! under `blobs/`, which it never syncs. So `Immediate` writes and `flush` also fsync the log
//! file, every blob file new or grown since the last sync, and the blob directory.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::engine::{
    Batch, Durability, Engine, KeyValue, Op, Space, StoreError, disk_usage, range_is_empty,
    sync_dir, validate_keyspace,
};

pub struct SledEngine {
    db: sled::Db,
    trees: RwLock<HashMap<&'static str, sled::Tree>>,
    path: PathBuf,
    /// sled's log file, opened again only to fsync it.
    log: File,
    /// Length of each blob file at its last fsync. A blob is written once, but possibly while
    /// another thread syncs, so a blob is synced again whenever its length changed.
    synced_blobs: Mutex<HashMap<OsString, u64>>,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(e) => StoreError::Io(e),
            corrupt @ sled::Error::Corruption { .. } => {
                StoreError::Corrupt(format!("sled: {corrupt}"))
            }
            other => StoreError::Engine(format!("sled: {other}")),
        }
    }
}

/// How long `open` waits for the lock of a sled directory that was just closed.
const LOCK_WAIT: Duration = Duration::from_secs(5);

impl SledEngine {
    /// Opens or creates the sled directory at `path`; recovery replays sled's log here.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, None)
    }

    /// [`open`](Self::open) with a page cache of at most `cache_bytes` (`None`: sled's
    /// default, 1 GiB).
    pub fn open_with(path: &Path, cache_bytes: Option<usize>) -> Result<Self, StoreError> {
        let mut config = sled::Config::new();
        if let Some(bytes) = cache_bytes {
            config = config.cache_capacity(bytes as u64);
        }
        let config = config
            .path(path)
            // The default background flush every 500 ms is kept: it bounds what a crash loses
            // of `Deferred` writes, which `Immediate` writes and `flush` then make certain.
            .mode(sled::Mode::LowSpace);
        // sled's file lock goes with its flusher thread, which outlives the last handle
        // briefly: reopening in the same process right after a close can find it still held.
        let waiting_since = Instant::now();
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && waiting_since.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        let log = File::open(path.join("db"))?;
        let engine = Self {
            db,
            trees: RwLock::new(HashMap::new()),
            path: path.to_owned(),
            log,
            synced_blobs: Mutex::new(HashMap::new()),
        };
        // Files sled created (the log, `conf`, `blobs/`) must survive a power loss too.
        sync_dir(path)?;
        engine.sync()?;
        Ok(engine)
    }

    /// Everything written so far, on disk: sled's flush, then the fsyncs it leaves out.
    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log.sync_all()?;
        let blobs = self.path.join("blobs");
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = HashMap::with_capacity(synced.len());
        let mut any_new = false;
        let entries = match fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let len = match entry.metadata() {
                Ok(meta) => meta.len(),
                // Removed by sled's blob GC since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let name = entry.file_name();
            if synced.get(&name) != Some(&len) {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_all()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                any_new = true;
            }
            now.insert(name, len);
        }
        *synced = now;
        if any_new {
            sync_dir(&blobs)?;
        }
        Ok(())
    }

    fn tree(&self, keyspace: &'static str) -> Result<sled::Tree, StoreError> {
        validate_keyspace(keyspace)?;
        if let Some(tree) = self
            .trees
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(keyspace)
        {
            return Ok(tree.clone());
        }
        let tree = self.db.open_tree(keyspace)?;
        self.trees
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(keyspace, tree.clone());
        Ok(tree)
    }
}

impl Engine for SledEngine {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(keyspace)?.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let tree = self.tree(keyspace)?;
        if limit == 0 || range_is_empty(start, end) {
            return Ok(Vec::new());
        }
        let range = tree.range::<&[u8], _>((start, end));
        let pair = |entry: sled::Result<(sled::IVec, sled::IVec)>| {
            entry
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        };
        if reverse {
            range.rev().take(limit).map(pair).collect()
        } else {
            range.take(limit).map(pair).collect()
        }
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        batch.validate()?;
        // One sled batch per keyspace, in order of first appearance; within a sled batch the
        // last operation on a key wins, as in the trait's contract.
        let mut trees: Vec<sled::Tree> = Vec::new();
        let mut batches: Vec<sled::Batch> = Vec::new();
        let mut index: HashMap<&'static str, usize> = HashMap::new();
        for op in batch.into_ops() {
            let keyspace = op.keyspace();
            let i = match index.get(keyspace) {
                Some(&i) => i,
                None => {
                    trees.push(self.tree(keyspace)?);
                    batches.push(sled::Batch::default());
                    index.insert(keyspace, trees.len() - 1);
                    trees.len() - 1
                }
            };
            match op {
                Op::Put { key, value, .. } => batches[i].insert(key, value),
                Op::Delete { key, .. } => batches[i].remove(key),
            }
        }
        match trees.len() {
            0 => {}
            1 => trees[0].apply_batch(batches.pop().unwrap_or_default())?,
            _ => trees
                .as_slice()
                .transaction(|views| {
                    for (view, batch) in views.iter().zip(&batches) {
                        view.apply_batch(batch)?;
                    }
                    Ok::<(), ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Storage(e) => StoreError::from(e),
                    TransactionError::Abort(()) => {
                        StoreError::Engine("sled: transaction aborted".into())
                    }
                })?,
        }
        if durability == Durability::Immediate {
            self.sync()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.sync()
    }

    fn space(&self) -> Result<Space, StoreError> {
        let mut live_bytes = 0u64;
        for name in self.db.tree_names() {
            // The default tree is not a keyspace (keyspace names cannot start with "__").
            if name.starts_with(b"__") {
                continue;
            }
            for entry in self.db.open_tree(&name)?.iter() {
                let (k, v) = entry?;
                live_bytes += (k.len() + v.len()) as u64;
            }
        }
        Ok(Space {
            disk_bytes: disk_usage(&self.path)?,
            live_bytes,
        })
    }

    fn compact(&self) -> Result<(), StoreError> {
        // sled 0.34 has no compaction call: its segment cleaner rewrites sparse segments in the
        // background as writes go on. Flushing lets it reuse segments freed so far.
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Batch, Durability, Engine};
    use crate::suite::TempDir;

    /// A close followed at once by an open, as the suite's reopen cases do: the open waits
    /// for the lock that sled's flusher thread still holds.
    #[test]
    fn reopening_right_after_a_close_waits_for_the_lock() {
        let dir = TempDir::new("sled-reopen");
        for round in 0..100u32 {
            let engine = SledEngine::open(dir.path()).expect("open");
            let mut batch = Batch::new();
            batch.put("k", round.to_be_bytes().to_vec(), b"v".to_vec());
            engine.write(batch, Durability::Immediate).expect("write");
            drop(engine);
        }
        let engine = SledEngine::open(dir.path()).expect("open");
        assert_eq!(
            engine
                .scan("k", Bound::Unbounded, Bound::Unbounded, 100, false)
                .unwrap()
                .len(),
            100
        );
    }
}
