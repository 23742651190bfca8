//! The engine trait and the types every engine shares.

use std::fmt;
use std::fs;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::log_engine::LogEngine;
use crate::redb_engine::RedbEngine;
use crate::sled_engine::SledEngine;

/// An embedded, ordered key-value store with named keyspaces.
///
/// Keyspaces are created on first use. Keys and values are arbitrary bytes; keys are ordered
/// bytewise. Object safe, so the agent holds an `Arc<dyn Engine>` chosen at start-up.
pub trait Engine: Send + Sync + 'static {
    /// The value stored under `key`, if any.
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether a value is stored under `key`. Engines that can answer without reading the
    /// value (the log engine keeps its index in memory) do so; large values are then never
    /// read just to learn that they exist.
    fn contains(&self, keyspace: &'static str, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(keyspace, key)?.is_some())
    }

    /// The first `len` bytes (fewer when the value is shorter) of the value under `key`.
    /// Engines that can read part of a value (the log engine) read only those bytes, so a
    /// small header in front of a large value costs no more than the header.
    fn get_prefix(
        &self,
        keyspace: &'static str,
        key: &[u8],
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(keyspace, key)?.map(|mut value| {
            value.truncate(len);
            value
        }))
    }

    /// Ordered scan of [start, end) (either bound optional), at most `limit` pairs, ascending or
    /// descending. A range whose start lies after its end is empty.
    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies every put/delete of the batch atomically (all keyspaces together) — after a crash
    /// either all or none are visible. Operations apply in order, so the last one on a key wins.
    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError>;

    /// [`write`](Self::write) of a batch of these operations, borrowed: an engine that copies
    /// keys and values into its own storage anyway (redb, the log engine) writes them from
    /// where they are, so a caller holding its writes elsewhere (`Buffered`'s overlay) need
    /// not copy them into a [`Batch`] first. The default does that copy.
    fn write_ops(&self, ops: &[OpRef<'_>], durability: Durability) -> Result<(), StoreError> {
        self.write(Batch::from_refs(ops), durability)
    }

    /// Makes everything written so far durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;

    /// Bytes on disk and bytes of live keys+values (for space amplification). Reads every key,
    /// so it is for tests, benchmarks and occasional metrics, not for a hot path.
    fn space(&self) -> Result<Space, StoreError>;

    /// Reclaims space after churn (sled: nothing or its own GC; redb: `compact()`).
    fn compact(&self) -> Result<(), StoreError>;
}

/// A key and its value, as a scan returns them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// When a write must be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk (fsync) before `write` returns: what an acknowledgement may rest on.
    Immediate,
    /// Made durable by the next `Immediate` write or `flush`; lost by a crash before that.
    Deferred,
}

/// One operation of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Stores `value` under `key`, replacing any previous value.
    Put {
        keyspace: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
        /// Where the end of `value` is stored already ([`Batch::put_linked`]).
        link: Option<Box<Link>>,
    },
    /// Removes `key`; removing an absent key is not an error.
    Delete {
        keyspace: &'static str,
        key: Vec<u8>,
    },
}

impl Op {
    /// The keyspace the operation writes to.
    pub fn keyspace(&self) -> &'static str {
        match self {
            Op::Put { keyspace, .. } | Op::Delete { keyspace, .. } => keyspace,
        }
    }

    /// The operation, borrowed.
    pub fn as_ref(&self) -> OpRef<'_> {
        match self {
            Op::Put {
                keyspace,
                key,
                value,
                link,
            } => OpRef::Put {
                keyspace,
                key,
                value,
                link: link.as_deref(),
            },
            Op::Delete { keyspace, key } => OpRef::Delete { keyspace, key },
        }
    }
}

/// An [`Op`] whose key, value and link are borrowed ([`Engine::write_ops`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpRef<'a> {
    Put {
        keyspace: &'static str,
        key: &'a [u8],
        value: &'a [u8],
        link: Option<&'a Link>,
    },
    Delete {
        keyspace: &'static str,
        key: &'a [u8],
    },
}

impl<'a> OpRef<'a> {
    pub fn keyspace(&self) -> &'static str {
        match self {
            OpRef::Put { keyspace, .. } | OpRef::Delete { keyspace, .. } => keyspace,
        }
    }

    pub fn key(&self) -> &'a [u8] {
        match self {
            OpRef::Put { key, .. } | OpRef::Delete { key, .. } => key,
        }
    }

    /// An owned copy.
    pub fn to_op(&self) -> Op {
        match *self {
            OpRef::Put {
                keyspace,
                key,
                value,
                link,
            } => Op::Put {
                keyspace,
                key: key.to_vec(),
                value: value.to_vec(),
                link: link.map(|link| Box::new(link.clone())),
            },
            OpRef::Delete { keyspace, key } => Op::Delete {
                keyspace,
                key: key.to_vec(),
            },
        }
    }
}

/// Where the end of a value being put is stored already: `value[head..]` are the bytes of the
/// value under `key` in `keyspace`, from byte `offset` on.
///
/// A hint, never a change of meaning: the put stores `value` either way. An engine that can
/// refer to stored bytes (the [`LogEngine`](crate::LogEngine)) writes only `value[..head]`
/// and a reference, once it has checked that the bytes there are `value[head..]`; the others,
/// and the log engine when the source is gone or differs, write `value` whole. The reference
/// keeps those bytes alive after the source key is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub keyspace: &'static str,
    pub key: Vec<u8>,
    pub offset: u64,
    pub head: usize,
}

impl Link {
    /// The link for a part of the bytes this link points at: the value's end is the source's
    /// bytes from `at` on (relative to this link's offset), after a head of `head` bytes.
    pub fn within(&self, at: usize, head: usize) -> Link {
        Link {
            keyspace: self.keyspace,
            key: self.key.clone(),
            offset: self.offset + at as u64,
            head,
        }
    }
}

/// Puts and deletes over any keyspaces, applied atomically by [`Engine::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(
        &mut self,
        keyspace: &'static str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.ops.push(Op::Put {
            keyspace,
            key: key.into(),
            value: value.into(),
            link: None,
        });
        self
    }

    /// Puts `value`, whose end is already stored where `link` says (see [`Link`]). Without a
    /// link, the same as [`put`](Self::put).
    pub fn put_linked(
        &mut self,
        keyspace: &'static str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        link: Option<Link>,
    ) -> &mut Self {
        self.ops.push(Op::Put {
            keyspace,
            key: key.into(),
            value: value.into(),
            link: link.map(Box::new),
        });
        self
    }

    pub fn delete(&mut self, keyspace: &'static str, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete {
            keyspace,
            key: key.into(),
        });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations (not of distinct keys).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// The operations, borrowed ([`Engine::write_ops`]).
    pub fn refs(&self) -> Vec<OpRef<'_>> {
        self.ops.iter().map(Op::as_ref).collect()
    }

    /// A batch of owned copies of `ops`.
    pub fn from_refs(ops: &[OpRef<'_>]) -> Batch {
        Batch {
            ops: ops.iter().map(OpRef::to_op).collect(),
        }
    }

    /// Rejects the batch as a whole before any of it is applied.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        self.ops
            .iter()
            .try_for_each(|op| validate_keyspace(op.keyspace()))
    }
}

/// Rejects borrowed operations as a whole before any of them is applied, as
/// [`Batch::validate`].
pub(crate) fn validate_ops(ops: &[OpRef<'_>]) -> Result<(), StoreError> {
    ops.iter()
        .try_for_each(|op| validate_keyspace(op.keyspace()))
}

/// Space used by a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// Bytes the store's files occupy on disk (allocated blocks on Unix).
    pub disk_bytes: u64,
    /// Sum of key and value lengths over all live entries.
    pub live_bytes: u64,
}

impl Space {
    /// `disk_bytes / live_bytes`; infinite for an empty store.
    pub fn amplification(&self) -> f64 {
        self.disk_bytes as f64 / self.live_bytes as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(#[from] io::Error),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("invalid keyspace name {0:?}: use 1 to 64 characters of a-z, 0-9, '_', '-', '.'")]
    InvalidKeyspace(String),
    #[error("{dir} holds a {found} store, not a {wanted} one")]
    WrongEngine {
        dir: String,
        found: EngineKind,
        wanted: EngineKind,
    },
}

impl StoreError {
    /// A stable, low-cardinality name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            StoreError::Io(_) => "io",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Engine(_) => "engine",
            StoreError::InvalidKeyspace(_) => "invalid_keyspace",
            StoreError::WrongEngine { .. } => "wrong_engine",
        }
    }
}

/// Keyspace names become redb table names and sled tree names; a narrow alphabet keeps them
/// clear of sled's `__sled__default` tree and of anything a file system or shell treats specially.
pub(crate) fn validate_keyspace(keyspace: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&keyspace.len())
        && keyspace
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.'))
        && !keyspace.starts_with("__");
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKeyspace(keyspace.to_owned()))
    }
}

/// True when no key can lie between `start` and `end`. Both engines (like `BTreeMap`) may
/// panic on such ranges, so callers answer them without asking the engine.
pub(crate) fn range_is_empty(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

/// Makes the entries of directory `path` (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(path)?.sync_all()?;
    // Elsewhere a directory cannot be opened as a file; its entries go with the files' syncs.
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Bytes that the files under `path` occupy on disk.
pub(crate) fn disk_usage(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut total = 0;
        for entry in fs::read_dir(path)? {
            // An engine may remove or rename its files while they are counted (sled does, in
            // the background): a file gone meanwhile takes no space.
            match disk_usage(&entry?.path()) {
                Ok(bytes) => total += bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    } else {
        Ok(allocated_bytes(&meta))
    }
}

#[cfg(unix)]
fn allocated_bytes(meta: &fs::Metadata) -> u64 {
    // Blocks actually allocated, so sparse regions do not count; st_blocks is in 512-byte units.
    std::os::unix::fs::MetadataExt::blocks(meta) * 512
}

#[cfg(not(unix))]
fn allocated_bytes(meta: &fs::Metadata) -> u64 {
    meta.len()
}

/// The storage engines Tern can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    Redb,
    Sled,
    /// Append-only segments with an in-memory index ([`LogEngine`]): for the Raft logs.
    Log,
}

impl EngineKind {
    pub const ALL: [EngineKind; 3] = [EngineKind::Redb, EngineKind::Sled, EngineKind::Log];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Redb => "redb",
            EngineKind::Sled => "sled",
            EngineKind::Log => "log",
        }
    }

    /// The file or directory inside a store directory that holds this engine's data.
    fn data_path(self) -> &'static str {
        match self {
            EngineKind::Redb => "store.redb",
            EngineKind::Sled => "sled",
            EngineKind::Log => "segments",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redb" => Ok(EngineKind::Redb),
            "sled" => Ok(EngineKind::Sled),
            "log" => Ok(EngineKind::Log),
            other => Err(format!(
                "unknown storage engine {other:?}: expected \"redb\", \"sled\" or \"log\""
            )),
        }
    }
}

/// How a store is opened, beyond its engine and directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineOptions {
    /// The most memory the engine keeps pages of its file in: redb's read cache and write
    /// buffer together, sled's page cache. `None` is the engine's own default (1 GiB for
    /// both). The log engine caches nothing, so it ignores this.
    pub cache_bytes: Option<usize>,
}

/// Opens (creating if needed) the store of engine `kind` in directory `dir`, with the engine's
/// default options.
///
/// Refuses a directory that holds the other engine's data: switching engines must not look
/// like an empty store, which would silently drop every acknowledged write on this node.
pub fn open(kind: EngineKind, dir: &Path) -> Result<Arc<dyn Engine>, StoreError> {
    open_with(kind, dir, EngineOptions::default())
}

/// [`open`] with `options`.
pub fn open_with(
    kind: EngineKind,
    dir: &Path,
    options: EngineOptions,
) -> Result<Arc<dyn Engine>, StoreError> {
    fs::create_dir_all(dir)?;
    for other in EngineKind::ALL.into_iter().filter(|k| *k != kind) {
        if dir.join(other.data_path()).exists() {
            return Err(StoreError::WrongEngine {
                dir: dir.display().to_string(),
                found: other,
                wanted: kind,
            });
        }
    }
    let path = dir.join(kind.data_path());
    let engine: Arc<dyn Engine> = match kind {
        EngineKind::Redb => Arc::new(RedbEngine::open_with(&path, options.cache_bytes)?),
        EngineKind::Sled => Arc::new(SledEngine::open_with(&path, options.cache_bytes)?),
        EngineKind::Log => Arc::new(LogEngine::open(&path)?),
    };
    // The engines sync their files, not the directories naming them: without this a power
    // loss soon after the first start could take the whole store file with it.
    sync_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(engine)
}
