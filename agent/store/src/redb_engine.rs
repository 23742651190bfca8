//! The redb engine: one file, one table per keyspace, `&[u8]` → `&[u8]`.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use redb::{
    Builder, Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, TableError, TableHandle,
};

use crate::engine::{
    Batch, Durability, Engine, KeyValue, OpRef, Space, StoreError, disk_usage, range_is_empty,
    sync_dir, validate_keyspace, validate_ops,
};
use crate::names::NameMap;

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
    tables: NameMap<&'static str, Option<Arc<ReadTable>>>,
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

/// Bytes at the start of a redb file within which its creation writes before it marks the
/// file as a database (the header: 320 bytes in redb 4); nothing past them is written until
/// the file is marked.
const CREATION_WRITES: u64 = 4096;

/// Opens the database at `path`, creating it when there is none, so that a crash never leaves
/// a file that cannot be opened.
///
/// redb initialises a new file in steps: it sizes the file, writes and syncs the header, and
/// only then writes the magic number that marks the file as a database. It refuses for good a
/// file that has a size but no magic number, which is what a crash between those steps
/// leaves: the store would never open again. So a new database is initialised under a
/// temporary name and renamed into place: `path` holds an initialised database or nothing.
///
/// A file that an earlier build left half-initialised at `path` (redb does not recognise it,
/// and it holds nothing past the header page: no commit ever wrote to it) is created again the
/// same way. Any other file that does not open (one that another process has open, say) is an
/// error, never replaced.
fn open_or_create(path: &Path, builder: &Builder) -> Result<Database, StoreError> {
    // An empty file is a creation cut off before redb sized it: redb would initialise it in
    // place, in the same steps.
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return create_in_place_of(path, builder);
        }
        Err(e) => return Err(e.into()),
        Ok(meta) if meta.len() == 0 => return create_in_place_of(path, builder),
        Ok(_) => {}
    }
    match builder.create(path) {
        Ok(db) => Ok(db),
        // Only a file redb does not recognise (not, say, one another process has open).
        Err(ref e @ redb::DatabaseError::Storage(redb::StorageError::Io(ref io)))
            if io.kind() == std::io::ErrorKind::InvalidData && never_committed(path)? =>
        {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "the store file's creation was cut off before it held anything; creating it again"
            );
            create_in_place_of(path, builder)
        }
        Err(e) => Err(err(e)),
    }
}

/// Initialises a database under a temporary name beside `path`, then renames it to `path`.
fn create_in_place_of(path: &Path, builder: &Builder) -> Result<Database, StoreError> {
    let mut creating = path.as_os_str().to_owned();
    creating.push(".creating");
    let creating = PathBuf::from(creating);
    // Left by a creation that a crash cut off: never a store.
    match std::fs::remove_file(&creating) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    // redb syncs the file before `create` returns.
    drop(Database::create(&creating).map_err(err)?);
    std::fs::rename(&creating, path)?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    builder.create(path).map_err(err)
}

/// Whether the file at `path` holds no byte past the header page: a creation cut off before
/// redb marked it as a database. Once marked, redb writes pages past it as it opens.
fn never_committed(path: &Path) -> Result<bool, StoreError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len <= CREATION_WRITES {
        return Ok(true);
    }
    file.seek(SeekFrom::Start(CREATION_WRITES))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

impl RedbEngine {
    /// Opens or creates the database file at `path`. After a crash redb repairs the file here
    /// (it falls back to the last commit whose checksums verify).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, None)
    }

    /// [`open`](Self::open) with a page cache of at most `cache_bytes` (redb's read cache and
    /// write buffer together; `None`: redb's default, 1 GiB).
    pub fn open_with(path: &Path, cache_bytes: Option<usize>) -> Result<Self, StoreError> {
        let mut builder = Builder::new();
        if let Some(bytes) = cache_bytes {
            builder.set_cache_size(bytes);
        }
        let db = open_or_create(path, &builder)?;
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
                tables: NameMap::default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::TempDir;

    fn put_and_read_back(path: &Path) {
        let engine = RedbEngine::open(path).unwrap();
        let mut batch = Batch::new();
        batch.put("ks", b"k".to_vec(), b"v".to_vec());
        engine.write(batch, Durability::Immediate).unwrap();
        drop(engine);
        let engine = RedbEngine::open(path).unwrap();
        assert_eq!(engine.get("ks", b"k").unwrap(), Some(b"v".to_vec()));
    }

    /// Writes 4 MiB in 1 KiB values, then reads them all; returns redb's cache evictions.
    fn evictions_for(cache_bytes: Option<usize>) -> u64 {
        let dir = TempDir::new("redb-cache");
        let path = dir.path().join("db.redb");
        let engine = RedbEngine::open_with(&path, cache_bytes).unwrap();
        for chunk in 0..16u32 {
            let mut batch = Batch::new();
            for i in 0..256u32 {
                let key = (chunk * 256 + i).to_be_bytes();
                batch.put("ks", key.to_vec(), vec![i as u8; 1024]);
            }
            engine.write(batch, Durability::Immediate).unwrap();
        }
        for i in 0..16 * 256u32 {
            let value = engine.get("ks", &i.to_be_bytes()).unwrap().unwrap();
            assert_eq!(value, vec![(i % 256) as u8; 1024]);
        }
        let db = engine.db.read().unwrap_or_else(PoisonError::into_inner);
        db.cache_stats().evictions()
    }

    /// The cache size reaches redb: 4 MiB of values fit the default cache (1 GiB) and not one
    /// of 256 KiB, which evicts pages and still reads every value.
    #[test]
    fn the_page_cache_is_as_large_as_asked() {
        assert_eq!(evictions_for(None), 0);
        assert!(evictions_for(Some(256 << 10)) > 0);
    }

    /// What a crash during a creation leaves: a temporary file beside a store that is not
    /// there yet (this build), or, from earlier builds, a store file that is empty, zero-filled
    /// (sized but not yet written), or holds a header without anything past it. Each opens as
    /// a new store, and the temporary file goes.
    #[test]
    fn a_creation_cut_off_by_a_crash_is_created_again() {
        let dir = TempDir::new("redb-create");
        let path = dir.path().join("db.redb");
        let creating = dir.path().join("db.redb.creating");
        std::fs::write(&creating, vec![0u8; 1 << 20]).unwrap();
        put_and_read_back(&path);
        assert!(!creating.exists(), "the cut-off creation's file is removed");

        let mut header_only = vec![0u8; 1 << 20];
        header_only[..CREATION_WRITES as usize].fill(0x5a);
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("zero-filled", vec![0u8; 1 << 20]),
            ("a header and nothing more", header_only),
        ] {
            let path = dir.path().join(format!("{}.redb", what.replace(' ', "-")));
            std::fs::write(&path, bytes).unwrap();
            let opened = RedbEngine::open(&path);
            assert!(opened.is_ok(), "{what}: {:?}", opened.err());
            drop(opened);
            put_and_read_back(&path);
        }
    }

    /// A store that is open already, even a new one with nothing written to it, is refused to
    /// a second opener and left as it is: the first opener's writes land in it.
    #[test]
    fn a_store_open_elsewhere_is_refused_and_left_alone() {
        let dir = TempDir::new("redb-open-twice");
        let path = dir.path().join("db.redb");
        let first = RedbEngine::open(&path).unwrap();
        assert!(RedbEngine::open(&path).is_err());
        let mut batch = Batch::new();
        batch.put("ks", b"k".to_vec(), b"v".to_vec());
        first.write(batch, Durability::Immediate).unwrap();
        drop(first);
        assert_eq!(
            RedbEngine::open(&path).unwrap().get("ks", b"k").unwrap(),
            Some(b"v".to_vec())
        );
    }

    /// A store that held data but no longer opens (its header destroyed) is refused, and its
    /// file is left as it was for whoever repairs it.
    #[test]
    fn a_damaged_store_is_refused_not_replaced() {
        let dir = TempDir::new("redb-damaged");
        let path = dir.path().join("db.redb");
        put_and_read_back(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..CREATION_WRITES as usize].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        assert!(RedbEngine::open(&path).is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the file is untouched"
        );
    }
}
