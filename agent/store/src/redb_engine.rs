//! The redb engine: one file, one table per keyspace, `&[u8]` → `&[u8]`.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, TableHandle,
};

use crate::engine::{
    Batch, Durability, Engine, KeyValue, OpRef, Space, StoreError, disk_usage, range_is_empty,
    validate_keyspace, validate_ops,
};

/// Each `compact()` call of redb moves some pages; it reports whether it could do more. The cap
/// only guards against a loop that never settles.
const MAX_COMPACTION_PASSES: usize = 64;

pub struct RedbEngine {
    // `compact()` needs `&mut Database`; every other operation shares it. Read guards are held
    // only for the length of one call, so compaction waits for in-flight calls and no more.
    db: RwLock<Database>,
    path: PathBuf,
    /// A read transaction of the last commit and the tables opened in it, shared by reads
    /// until the next write: beginning a transaction and opening a table for every `get`
    /// cost as much as the lookup.
    reads: Mutex<Option<Reads>>,
}

/// See [`RedbEngine::reads`]. `None` for a table that does not exist in the transaction.
struct Reads {
    txn: ReadTransaction,
    tables: HashMap<&'static str, Option<Arc<ReadTable>>>,
}

type ReadTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

type Bytes<'a> = redb::AccessGuard<'a, &'static [u8]>;
type BytesTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

fn table(keyspace: &'static str) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(keyspace)
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(e) => StoreError::Io(e),
            redb::Error::Corrupted(msg) => StoreError::Corrupt(msg),
            other => StoreError::Engine(format!("redb: {other}")),
        }
    }
}

/// Every redb error type converts into `redb::Error`; this funnels them into `StoreError`.
fn err(e: impl Into<redb::Error>) -> StoreError {
    e.into().into()
}

impl RedbEngine {
    /// Opens or creates the database file at `path`. After a crash redb repairs the file here
    /// (it falls back to the last commit whose checksums verify).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(err)?;
        Ok(Self {
            db: RwLock::new(db),
            path: path.to_owned(),
            reads: Mutex::new(None),
        })
    }

    /// The keyspace's table as of the last commit, or `None` when it does not exist.
    fn read_table(
        &self,
        db: &Database,
        keyspace: &'static str,
    ) -> Result<Option<Arc<ReadTable>>, StoreError> {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        // Begun under the lock: a write that committed before it has also dropped the
        // previous one (see `forget_reads`), so this sees every write that returned.
        let reads = match &mut *reads {
            Some(reads) => reads,
            empty => empty.insert(Reads {
                txn: db.begin_read().map_err(err)?,
                tables: HashMap::new(),
            }),
        };
        if let Some(table) = reads.tables.get(keyspace) {
            return Ok(table.clone());
        }
        let table = match reads.txn.open_table(table(keyspace)) {
            Ok(table) => Some(Arc::new(table)),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(err(e)),
        };
        reads.tables.insert(keyspace, table.clone());
        Ok(table)
    }

    /// Drops the shared read transaction after a commit, so later reads see it.
    fn forget_reads(&self) {
        let old = self
            .reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(old);
    }

    fn db(&self) -> RwLockReadGuard<'_, Database> {
        // A panic while holding the lock leaves the database itself consistent (redb aborts the
        // open transaction), so a poisoned lock is not a reason to stop serving.
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for RedbEngine {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        validate_keyspace(keyspace)?;
        let db = self.db();
        let Some(table) = self.read_table(&db, keyspace)? else {
            return Ok(None);
        };
        Ok(table.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        validate_keyspace(keyspace)?;
        if limit == 0 || range_is_empty(start, end) {
            return Ok(Vec::new());
        }
        let db = self.db();
        let Some(table) = self.read_table(&db, keyspace)? else {
            return Ok(Vec::new());
        };
        let range = table.range::<&[u8]>((start, end)).map_err(err)?;
        let pair = |entry: Result<(Bytes<'_>, Bytes<'_>), redb::StorageError>| {
            entry
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .map_err(err)
        };
        if reverse {
            range.rev().take(limit).map(pair).collect()
        } else {
            range.take(limit).map(pair).collect()
        }
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        self.write_ops(&batch.refs(), durability)
    }

    fn write_ops(&self, ops: &[OpRef<'_>], durability: Durability) -> Result<(), StoreError> {
        validate_ops(ops)?;
        if ops.is_empty() && durability == Durability::Deferred {
            return Ok(());
        }
        let db = self.db();
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_durability(match durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::Deferred => redb::Durability::None,
        })
        .map_err(err)?;
        // Consecutive operations on one keyspace share an open table; a transaction allows only
        // one open handle per table, so the previous one is dropped before the next opens.
        let mut open: Option<(&'static str, BytesTable<'_>)> = None;
        for op in ops {
            let keyspace = op.keyspace();
            let table = match &mut open {
                Some((name, table)) if *name == keyspace => table,
                slot => {
                    *slot = None;
                    let table = txn.open_table(table(keyspace)).map_err(err)?;
                    &mut slot.insert((keyspace, table)).1
                }
            };
            match *op {
                OpRef::Put { key, value, .. } => {
                    table.insert(key, value).map_err(err)?;
                }
                OpRef::Delete { key, .. } => {
                    table.remove(key).map_err(err)?;
                }
            }
        }
        drop(open);
        // An error before this point drops `txn`, which aborts it: nothing of the batch lands.
        let committed = txn.commit().map_err(err);
        self.forget_reads();
        committed
    }

    fn flush(&self) -> Result<(), StoreError> {
        // An empty durable commit persists every earlier non-durable one.
        self.write(Batch::new(), Durability::Immediate)
    }

    fn space(&self) -> Result<Space, StoreError> {
        let db = self.db();
        let txn = db.begin_read().map_err(err)?;
        let mut live_bytes = 0u64;
        for handle in txn.list_tables().map_err(err)? {
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(handle.name());
            let table = txn.open_table(def).map_err(err)?;
            for entry in table.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                live_bytes += (k.value().len() + v.value().len()) as u64;
            }
        }
        Ok(Space {
            disk_bytes: disk_usage(&self.path)?,
            live_bytes,
        })
    }

    fn compact(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        // Compaction needs every read transaction gone; no read runs while `db` is held.
        self.forget_reads();
        // Pages freed by non-durable commits are only reusable after a durable one.
        let txn = db.begin_write().map_err(err)?;
        txn.commit().map_err(err)?;
        for _ in 0..MAX_COMPACTION_PASSES {
            if !db.compact().map_err(err)? {
                break;
            }
        }
        Ok(())
    }
}
