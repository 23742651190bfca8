//! The log engine: each batch is appended to a segment file as one checksummed record, and an
//! in-memory ordered index says where every live value lies.
//!
//! Built for what the B-tree engines do worst: a stream of large values written once and read
//! back rarely (Raft log entries, message bodies). A write costs one `pwrite` of the batch
//! (and one `fdatasync` when `Immediate`), whatever the size of the values, instead of
//! copy-on-write pages of a tree.
//!
//! # On disk
//!
//! A directory of segment files `NNNNNNNNNNNNNNNNNNNN.seg`, numbered upwards; only the newest
//! (the *active* segment) is written. A record is
//!
//! ```text
//! payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload
//! payload = op*;  op = 1 | keyspace length (u8) | keyspace | key length (u32 LE) | key
//!                          | value length (u32 LE) | value          (put)
//!                    | 2 | keyspace length (u8) | keyspace | key length (u32 LE) | key (delete)
//!                    | 3 | keyspace length (u8) | keyspace | key length (u32 LE) | key
//!                          | head length (u32 LE) | head | tail segment (u64 LE)
//!                          | tail offset (u64 LE) | tail length (u32 LE)          (linked put)
//! ```
//!
//! # Linked values
//!
//! A put with a [`Link`] whose source this engine holds, as a plain value with exactly the
//! promised bytes there (checked by reading them), is written as a *linked put*: the value's
//! head, and where in an earlier record its tail lies. That is how a message body is stored
//! once: the Raft log entry that carried it holds the bytes, and the body keyspace refers to
//! them. The index entry of a linked value has two parts; each keeps its segment alive (and
//! counts in its live bytes), so deleting the source (purging the Raft log) leaves the tail
//! where it is, and compaction copies a linked value forward whole, as a plain put, when
//! either part lies in the segment being compacted.
//!
//! A linked put is replayed after its source record (which precedes it in the log). When the
//! tail's segment is gone at replay, compaction removed it after copying the value forward,
//! or after the value was deleted; either way a later record replaces the link, and one
//! left pointing nowhere after replay is corruption, reported at open.
//!
//! # Crash safety
//!
//! - A batch is one record: after a crash its CRC either verifies (all of it applies) or not
//!   (none of it does), so batches are atomic.
//! - Opening replays the segments in order. A record cut short or failing its CRC can only be
//!   the unacknowledged tail of the active segment (a segment is fsynced before the next one
//!   is started); the file is cut back to the last whole record. The same damage in an older
//!   segment is corruption, reported, never skipped.
//! - A failed write is cut back off the file; a failed fsync stops every later write (the
//!   kernel may have dropped the unsynced pages), so nothing is acknowledged on top of a hole.
//!
//! # Space
//!
//! Overwritten and deleted values stay in their segments until compaction. Only the *oldest*
//! segment is ever compacted: its live values are appended again to the active segment (and
//! fsynced), then the file is deleted. Because every older segment is gone by then, the
//! deletes it records no longer hide anything, so dropping them cannot bring a value back.
//! This runs whenever a segment fills: a segment holding nothing live is deleted at once
//! (a purged Raft log costs nothing to reclaim), and live values are copied forward while the
//! sealed segments exceed twice the live bytes plus one segment. [`Engine::compact`] seals the
//! active segment and compacts every other.
//!
//! The index holds every key in memory, and opening reads every segment: fine for Raft logs
//! (purged after each snapshot), message bodies keyed by hash and the idempotency records of
//! the last days' deliveries (two small keys each); not meant for billions of small keys.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs::{self, File, OpenOptions};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::engine::{
    Batch, Durability, Engine, KeyValue, Link, OpRef, Space, StoreError, disk_usage,
    range_is_empty, sync_dir, validate_keyspace, validate_ops,
};
use crate::filter::KeyFilters;
use crate::index_key::IndexKey;
use crate::names::NameMap;

/// A segment is sealed and a new one started once it holds this many bytes.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

const HEADER: usize = 8;
const PUT: u8 = 1;
const DELETE: u8 = 2;
const LINK: u8 = 3;
const SUFFIX: &str = ".seg";

/// See the [module docs](self).
pub struct LogEngine {
    dir: PathBuf,
    segment_bytes: u64,
    /// Appends, sealing and compaction, one at a time; held across a write's fsync.
    writer: Mutex<Writer>,
    state: RwLock<State>,
    /// Holds the directory's advisory lock for as long as the engine is open.
    _lock: File,
}

struct Writer {
    file: Arc<File>,
    segment: u64,
    len: u64,
    /// Why writes stopped: a failed fsync leaves the file's durability unknown.
    failed: Option<String>,
}

#[derive(Default)]
struct State {
    keyspaces: NameMap<String, BTreeMap<IndexKey, Loc>>,
    /// Per keyspace, every key of its index (and some deleted ones): lookups of absent keys
    /// stop here.
    filters: NameMap<String, KeyFilters>,
    segments: BTreeMap<u64, Segment>,
    /// Key and value bytes of every live entry.
    live: u64,
}

struct Segment {
    file: Arc<File>,
    size: u64,
    /// Key and value bytes of the live entries whose value lies in this segment.
    live: u64,
}

/// Where a live value lies: its bytes (all of them, or the head of a linked value) and, for
/// a linked value, its tail in an earlier record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    tail: Option<Part>,
}

/// A run of bytes in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    segment: u64,
    offset: u64,
    len: u32,
}

impl Part {
    /// The offset just past its bytes.
    fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

impl Loc {
    fn len(&self) -> usize {
        self.len as usize + self.tail.map_or(0, |t| t.len as usize)
    }

    fn lies_in(&self, segment: u64) -> bool {
        self.segment == segment || self.tail.is_some_and(|t| t.segment == segment)
    }
}

/// What one operation of a record writes.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Put(&'a [u8]),
    /// A linked put: the head, and where the tail lies.
    Link(&'a [u8], Part),
    Delete,
}

/// One operation of an encoded record: where its value (or head) will lie within the record.
enum Placed<'a> {
    Put {
        keyspace: &'a str,
        key: &'a [u8],
        offset: u64,
        len: u32,
        tail: Option<Part>,
    },
    Delete {
        keyspace: &'a str,
        key: &'a [u8],
    },
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SUFFIX}"))
}

fn too_large(what: &str) -> StoreError {
    StoreError::Engine(format!(
        "{what} is too large for one log record (4 GiB at most)"
    ))
}

fn len32(len: usize, what: &str) -> Result<u32, StoreError> {
    u32::try_from(len).map_err(|_| too_large(what))
}

/// Encodes `ops` as one record (header included) and says where each value lies in it.
fn encode<'a>(
    ops: impl Iterator<Item = (&'a str, &'a [u8], Payload<'a>)> + Clone,
) -> Result<(Vec<u8>, Vec<Placed<'a>>), StoreError> {
    // Sized first, so the record is not copied as it grows.
    let size: usize = ops
        .clone()
        .map(|(keyspace, key, payload)| {
            6 + keyspace.len()
                + key.len()
                + match payload {
                    Payload::Put(value) => 4 + value.len(),
                    Payload::Link(head, _) => 24 + head.len(),
                    Payload::Delete => 0,
                }
        })
        .sum();
    let mut record = Vec::with_capacity(HEADER + size);
    record.resize(HEADER, 0);
    let mut placed = Vec::new();
    for (keyspace, key, payload) in ops {
        record.push(match payload {
            Payload::Put(_) => PUT,
            Payload::Link(..) => LINK,
            Payload::Delete => DELETE,
        });
        record.push(keyspace.len() as u8);
        record.extend_from_slice(keyspace.as_bytes());
        record.extend_from_slice(&len32(key.len(), "a key")?.to_le_bytes());
        record.extend_from_slice(key);
        let (value, tail) = match payload {
            Payload::Put(value) => (value, None),
            Payload::Link(head, tail) => (head, Some(tail)),
            Payload::Delete => {
                placed.push(Placed::Delete { keyspace, key });
                continue;
            }
        };
        let len = len32(value.len(), "a value")?;
        record.extend_from_slice(&len.to_le_bytes());
        let offset = record.len() as u64;
        record.extend_from_slice(value);
        if let Some(tail) = tail {
            record.extend_from_slice(&tail.segment.to_le_bytes());
            record.extend_from_slice(&tail.offset.to_le_bytes());
            record.extend_from_slice(&tail.len.to_le_bytes());
        }
        placed.push(Placed::Put {
            keyspace,
            key,
            offset,
            len,
            tail,
        });
    }
    let payload = len32(record.len() - HEADER, "a batch")?;
    let crc = crc32fast::hash(&record[HEADER..]);
    record[..4].copy_from_slice(&payload.to_le_bytes());
    record[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok((record, placed))
}

/// The payload of the record at the start of `bytes`, if it is whole and its checksum holds.
fn record_payload(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// `ops` as one record of this engine's format, values whole (links are not kept): how
/// [`Split`](crate::Split) stores its redo record.
pub(crate) fn encode_ops(ops: &[OpRef<'_>]) -> Result<Vec<u8>, StoreError> {
    let (record, _) = encode(ops.iter().map(|op| match *op {
        OpRef::Put {
            keyspace,
            key,
            value,
            ..
        } => (keyspace, key, Payload::Put(value)),
        OpRef::Delete { keyspace, key } => (keyspace, key, Payload::Delete),
    }))?;
    Ok(record)
}

/// One operation [`decode_ops`] read: keyspace, key and value (`None` for a delete).
pub(crate) type RecordOp<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// The operations of a record [`encode_ops`] wrote; `None` unless `record` is exactly one
/// whole record that holds no links.
pub(crate) fn decode_ops(record: &[u8]) -> Option<Vec<RecordOp<'_>>> {
    let payload = record_payload(record).filter(|p| HEADER + p.len() == record.len())?;
    decode(payload, 0)?
        .into_iter()
        .map(|placed| match placed {
            Placed::Put {
                keyspace,
                key,
                offset,
                len,
                tail: None,
            } => {
                let start = usize::try_from(offset).ok()?;
                Some((
                    keyspace,
                    key,
                    Some(payload.get(start..start + len as usize)?),
                ))
            }
            Placed::Put { tail: Some(_), .. } => None,
            Placed::Delete { keyspace, key } => Some((keyspace, key, None)),
        })
        .collect()
}

/// Reads the operations of one record's payload; `base` is the payload's offset in the file.
fn decode(payload: &[u8], base: u64) -> Option<Vec<Placed<'_>>> {
    let mut ops = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let bytes = payload.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(bytes)
    };
    let u32_at =
        |at: &mut usize| -> Option<u32> { Some(u32::from_le_bytes(take(at, 4)?.try_into().ok()?)) };
    let u64_at =
        |at: &mut usize| -> Option<u64> { Some(u64::from_le_bytes(take(at, 8)?.try_into().ok()?)) };
    while at < payload.len() {
        let tag = take(&mut at, 1)?[0];
        let ks_len = take(&mut at, 1)?[0] as usize;
        let keyspace = std::str::from_utf8(take(&mut at, ks_len)?).ok()?;
        let key_len = u32_at(&mut at)? as usize;
        let key = take(&mut at, key_len)?;
        match tag {
            PUT | LINK => {
                let len = u32_at(&mut at)?;
                let offset = base + at as u64;
                take(&mut at, len as usize)?;
                let tail = match tag {
                    LINK => Some(Part {
                        segment: u64_at(&mut at)?,
                        offset: u64_at(&mut at)?,
                        len: u32_at(&mut at)?,
                    }),
                    _ => None,
                };
                ops.push(Placed::Put {
                    keyspace,
                    key,
                    offset,
                    len,
                    tail,
                });
            }
            DELETE => ops.push(Placed::Delete { keyspace, key }),
            _ => return None,
        }
    }
    Some(ops)
}

impl State {
    /// Points `key` at `loc` (or removes it), keeping the live-byte counts.
    fn set(&mut self, keyspace: &str, key: &[u8], loc: Option<Loc>) {
        let old = match loc {
            Some(loc) => {
                if !self.keyspaces.contains_key(keyspace) {
                    self.keyspaces.insert(keyspace.to_owned(), BTreeMap::new());
                }
                let space = self.keyspaces.get_mut(keyspace).expect("just inserted");
                // One walk of the tree: most puts are of new keys (log entries, bodies,
                // idempotency records), whose key is copied in anyway.
                match space.entry(IndexKey::new(key)) {
                    Entry::Occupied(mut slot) => Some(std::mem::replace(slot.get_mut(), loc)),
                    Entry::Vacant(slot) => {
                        slot.insert(loc);
                        let filters = match self.filters.get_mut(keyspace) {
                            Some(filters) => filters,
                            None => self
                                .filters
                                .entry(keyspace.to_owned())
                                .or_insert_with(KeyFilters::new),
                        };
                        filters.inserted(key, space);
                        None
                    }
                }
            }
            None => self
                .keyspaces
                .get_mut(keyspace)
                .and_then(|space| space.remove(key)),
        };
        let key_len = key.len() as u64;
        if let Some(old) = old {
            for (segment, bytes) in parts(key_len, &old) {
                self.live -= bytes;
                if let Some(segment) = self.segments.get_mut(&segment) {
                    segment.live -= bytes;
                }
            }
        }
        if let Some(loc) = loc {
            for (segment, bytes) in parts(key_len, &loc) {
                self.live += bytes;
                if let Some(segment) = self.segments.get_mut(&segment) {
                    segment.live += bytes;
                }
            }
        }
    }

    fn apply(&mut self, segment: u64, record_start: u64, placed: &[Placed<'_>]) {
        for op in placed {
            match *op {
                Placed::Put {
                    keyspace,
                    key,
                    offset,
                    len,
                    tail,
                } => self.set(
                    keyspace,
                    key,
                    Some(Loc {
                        segment,
                        offset: record_start + offset,
                        len,
                        tail,
                    }),
                ),
                Placed::Delete { keyspace, key } => self.set(keyspace, key, None),
            }
        }
    }

    fn file(&self, segment: u64) -> Result<Arc<File>, StoreError> {
        self.segments
            .get(&segment)
            .map(|s| s.file.clone())
            .ok_or_else(|| {
                StoreError::Corrupt(format!("the index points into missing segment {segment}"))
            })
    }

    /// The files holding the value at `loc`, to read it after the lock is released (an open
    /// file stays readable even if compaction deletes it meanwhile).
    fn locate(&self, loc: &Loc) -> Result<Located, StoreError> {
        Ok(Located {
            head: self.file(loc.segment)?,
            tail: loc.tail.map(|t| self.file(t.segment)).transpose()?,
            loc: *loc,
        })
    }

    /// Where the value of `key` lies, if it is stored.
    fn loc(&self, keyspace: &str, key: &[u8]) -> Option<&Loc> {
        if self
            .filters
            .get(keyspace)
            .is_some_and(|filter| !filter.may_contain(key))
        {
            return None;
        }
        self.keyspaces.get(keyspace)?.get(key)
    }

    /// Where a put's `link` lets it keep only the head of a value of `len` bytes: the bytes
    /// the source holds there, and the file to check them in. `None` when the source is not
    /// a plain value of this engine long enough to hold them.
    fn link_target(&self, link: &Link, len: usize) -> Option<(Arc<File>, Part)> {
        let tail = len.checked_sub(link.head).filter(|&t| t > 0)?;
        let source = self.loc(link.keyspace, &link.key)?;
        if source.tail.is_some() {
            return None;
        }
        let end = link.offset.checked_add(tail as u64)?;
        if end > u64::from(source.len) {
            return None;
        }
        let file = self.segments.get(&source.segment)?.file.clone();
        Some((
            file,
            Part {
                segment: source.segment,
                offset: source.offset + link.offset,
                len: u32::try_from(tail).ok()?,
            },
        ))
    }
}

/// At most this many bytes of a segment lie between two tails read back with one read.
const READ_BACK_GAP: u64 = 16 << 10;
/// A read back of tails covers at most this many bytes.
const READ_BACK_MAX: u64 = 4 << 20;

/// `order` (indexes of parts, sorted by segment and offset) cut into runs read back together:
/// parts of one segment, each starting at most [`READ_BACK_GAP`] after the run's end so far,
/// spanning at most [`READ_BACK_MAX`] bytes (or one part, when it is longer).
fn runs(order: &[usize], part: impl Fn(usize) -> Part) -> impl Iterator<Item = &[usize]> {
    let mut rest = order;
    std::iter::from_fn(move || {
        let (&first, _) = rest.split_first()?;
        let first = part(first);
        let mut end = first.end();
        let len = rest[1..]
            .iter()
            .take_while(|&&next| {
                let next = part(next);
                let joins = next.segment == first.segment
                    && next.offset <= end.saturating_add(READ_BACK_GAP)
                    && next.end() - first.offset <= READ_BACK_MAX;
                if joins {
                    end = end.max(next.end());
                }
                joins
            })
            .count();
        let (run, after) = rest.split_at(1 + len);
        rest = after;
        Some(run)
    })
}

/// The segments a value's bytes lie in, with the live bytes each part counts for (the key
/// counts with the head).
fn parts(key_len: u64, loc: &Loc) -> impl Iterator<Item = (u64, u64)> {
    std::iter::once((loc.segment, key_len + u64::from(loc.len)))
        .chain(loc.tail.map(|t| (t.segment, u64::from(t.len))))
}

/// A value's location with its files.
struct Located {
    head: Arc<File>,
    tail: Option<Arc<File>>,
    loc: Loc,
}

impl Located {
    fn read(&self) -> Result<Vec<u8>, StoreError> {
        self.read_prefix(usize::MAX)
    }

    /// The first `len` bytes of the value (all of it when shorter).
    fn read_prefix(&self, len: usize) -> Result<Vec<u8>, StoreError> {
        let mut value = vec![0; len.min(self.loc.len())];
        let head = value.len().min(self.loc.len as usize);
        self.head
            .read_exact_at(&mut value[..head], self.loc.offset)?;
        if let (Some(file), Some(tail)) = (&self.tail, self.loc.tail)
            && value.len() > head
        {
            file.read_exact_at(&mut value[head..], tail.offset)?;
        }
        Ok(value)
    }
}

impl LogEngine {
    /// Opens or creates the log engine in directory `dir`, with the default segment size.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, DEFAULT_SEGMENT_BYTES)
    }

    /// Opens or creates the log engine in `dir`, sealing segments at `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|e| {
            StoreError::Engine(format!(
                "{} is in use by another process: {e}",
                dir.display()
            ))
        })?;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(number) = name.strip_suffix(SUFFIX) {
                let number = number.parse::<u64>().map_err(|_| {
                    StoreError::Corrupt(format!(
                        "unexpected segment file {name} in {}",
                        dir.display()
                    ))
                })?;
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        let mut state = State::default();
        let last = numbers.last().copied();
        for &number in &numbers {
            let path = segment_path(dir, number);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let bytes = fs::read(&path)?;
            state.segments.insert(
                number,
                Segment {
                    file: Arc::new(file),
                    size: 0,
                    live: 0,
                },
            );
            let good = Self::replay(&mut state, number, &bytes);
            if good < bytes.len() as u64 {
                if Some(number) != last {
                    return Err(StoreError::Corrupt(format!(
                        "{}: damaged record at byte {good} of a sealed segment",
                        path.display()
                    )));
                }
                tracing::warn!(
                    segment = %path.display(),
                    kept = good,
                    dropped = bytes.len() as u64 - good,
                    "cutting an unfinished write off the log engine's active segment"
                );
                let file = &state.segments[&number].file;
                file.set_len(good)?;
                file.sync_all()?;
            }
            state.segments.get_mut(&number).expect("inserted").size = good;
        }
        // A link's tail segment can be gone only while a later record replaces the link.
        for (keyspace, space) in &state.keyspaces {
            for (key, loc) in space {
                if let Some(tail) = loc.tail
                    && !state.segments.contains_key(&tail.segment)
                {
                    return Err(StoreError::Corrupt(format!(
                        "{}: {keyspace} key {key:02x?} refers to bytes in segment {}, which is gone",
                        dir.display(),
                        tail.segment
                    )));
                }
            }
        }
        let (segment, file, len) = match state.segments.iter().next_back() {
            Some((&number, s)) => (number, s.file.clone(), s.size),
            None => {
                let file = Arc::new(Self::create_segment(dir, 1)?);
                state.segments.insert(
                    1,
                    Segment {
                        file: file.clone(),
                        size: 0,
                        live: 0,
                    },
                );
                (1, file, 0)
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            segment_bytes: segment_bytes.max(1),
            writer: Mutex::new(Writer {
                file,
                segment,
                len,
                failed: None,
            }),
            state: RwLock::new(state),
            _lock: lock,
        })
    }

    /// Applies the whole records of one segment to the index; returns the length they span.
    fn replay(state: &mut State, segment: u64, bytes: &[u8]) -> u64 {
        let mut at = 0usize;
        while let Some(payload) = bytes.get(at..).and_then(record_payload) {
            let Some(placed) = decode(payload, 0) else {
                break;
            };
            state.apply(segment, (at + HEADER) as u64, &placed);
            at += HEADER + payload.len();
        }
        at as u64
    }

    fn create_segment(dir: &Path, number: u64) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(segment_path(dir, number))?;
        sync_dir(dir)?;
        Ok(file)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `record` to the active segment (and syncs it when asked); returns where it
    /// starts. A failed append is cut off again; a failed sync stops the writer.
    fn append(&self, w: &mut Writer, record: &[u8], sync: bool) -> Result<u64, StoreError> {
        if let Some(why) = &w.failed {
            return Err(StoreError::Engine(format!(
                "the log engine stopped writing after an earlier failure: {why}"
            )));
        }
        let start = w.len;
        if let Err(e) = w.file.write_all_at(record, start) {
            if let Err(cut) = w.file.set_len(start) {
                w.failed = Some(format!(
                    "append failed ({e}) and could not be cut off ({cut})"
                ));
            }
            return Err(e.into());
        }
        w.len += record.len() as u64;
        if sync {
            self.sync(w)?;
        }
        Ok(start)
    }

    fn sync(&self, w: &mut Writer) -> Result<(), StoreError> {
        if let Some(why) = &w.failed {
            return Err(StoreError::Engine(format!(
                "the log engine stopped writing after an earlier failure: {why}"
            )));
        }
        w.file.sync_data().map_err(|e| {
            w.failed = Some(format!("fsync failed: {e}"));
            StoreError::Io(e)
        })
    }

    /// Seals the active segment (synced) and starts the next one.
    fn seal(&self, w: &mut Writer) -> Result<(), StoreError> {
        self.sync(w)?;
        let next = w.segment + 1;
        let file = Arc::new(Self::create_segment(&self.dir, next)?);
        self.write_state().segments.insert(
            next,
            Segment {
                file: file.clone(),
                size: 0,
                live: 0,
            },
        );
        w.file = file;
        w.segment = next;
        w.len = 0;
        Ok(())
    }

    /// Compacts the oldest sealed segments while they are worth it (or all when `all`).
    fn compact_sealed(&self, w: &mut Writer, all: bool) -> Result<(), StoreError> {
        loop {
            let (oldest, worth) = {
                let state = self.read_state();
                let Some((&oldest, segment)) = state.segments.iter().next() else {
                    return Ok(());
                };
                if oldest == w.segment {
                    return Ok(());
                }
                let sealed: u64 = state
                    .segments
                    .iter()
                    .filter(|(n, _)| **n != w.segment)
                    .map(|(_, s)| s.size)
                    .sum();
                let worth =
                    all || segment.live == 0 || sealed > 2 * state.live + self.segment_bytes;
                (oldest, worth)
            };
            if !worth {
                return Ok(());
            }
            self.compact_segment(w, oldest)?;
        }
    }

    /// Appends the live values of segment `oldest` to the active segment, then deletes it.
    fn compact_segment(&self, w: &mut Writer, oldest: u64) -> Result<(), StoreError> {
        let live = {
            let state = self.read_state();
            let mut live = Vec::new();
            if state.segments[&oldest].live > 0 {
                for (keyspace, space) in &state.keyspaces {
                    for (key, loc) in space {
                        // A linked value with either part here moves whole.
                        if loc.lies_in(oldest) {
                            live.push((keyspace.clone(), key.to_vec(), state.locate(loc)?));
                        }
                    }
                }
            }
            live
        };
        if !live.is_empty() {
            let values = live
                .iter()
                .map(|(_, _, located)| located.read())
                .collect::<Result<Vec<_>, _>>()?;
            let (record, placed) =
                encode(live.iter().zip(&values).map(|((ks, key, _), value)| {
                    (ks.as_str(), key.as_slice(), Payload::Put(&value[..]))
                }))?;
            let start = self.append(w, &record, true)?;
            let segment = w.segment;
            let mut state = self.write_state();
            state.apply(segment, start, &placed);
            if let Some(s) = state.segments.get_mut(&segment) {
                s.size = w.len;
            }
        }
        self.write_state().segments.remove(&oldest);
        fs::remove_file(segment_path(&self.dir, oldest))?;
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// For each of `ops` (none when no put has a link), where the tail of its value lies
    /// already: its link's source holds exactly those bytes, read back to be sure.
    ///
    /// Tails that lie close together in a segment (the bodies of one log entry do) are read
    /// back with one read, not one each.
    fn link_tails(&self, ops: &[OpRef<'_>]) -> Result<Vec<Option<Part>>, StoreError> {
        fn linked<'a>(op: &OpRef<'a>) -> Option<(&'a [u8], &'a Link)> {
            match *op {
                OpRef::Put {
                    value,
                    link: Some(link),
                    ..
                } => Some((value, link)),
                _ => None,
            }
        }
        if !ops.iter().any(|op| linked(op).is_some()) {
            return Ok(Vec::new());
        }
        let targets: Vec<_> = {
            let state = self.read_state();
            ops.iter()
                .enumerate()
                .filter_map(|(i, op)| {
                    let (value, link) = linked(op)?;
                    let (file, tail) = state.link_target(link, value.len())?;
                    Some((i, file, tail))
                })
                .collect()
        };
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_unstable_by_key(|&t| (targets[t].2.segment, targets[t].2.offset));
        let mut tails = vec![None; ops.len()];
        let mut stored = Vec::new();
        for run in runs(&order, |t| targets[t].2) {
            let (_, file, first) = &targets[run[0]];
            let begin = first.offset;
            let end = run
                .iter()
                .map(|&t| targets[t].2.end())
                .max()
                .expect("a run is never empty");
            stored.resize((end - begin) as usize, 0);
            file.read_exact_at(&mut stored, begin)?;
            for &t in run {
                let (i, _, tail) = targets[t];
                let (value, link) = linked(&ops[i]).expect("targets are linked puts");
                let at = (tail.offset - begin) as usize;
                if stored[at..at + tail.len as usize] == value[link.head..] {
                    tails[i] = Some(tail);
                }
            }
        }
        Ok(tails)
    }

    /// The number of segment files, for tests and metrics.
    pub fn segments(&self) -> usize {
        self.read_state().segments.len()
    }
}

impl Engine for LogEngine {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_prefix(keyspace, key, usize::MAX)
    }

    fn get_prefix(
        &self,
        keyspace: &'static str,
        key: &[u8],
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        validate_keyspace(keyspace)?;
        let located = {
            let state = self.read_state();
            let Some(loc) = state.loc(keyspace, key) else {
                return Ok(None);
            };
            state.locate(loc)?
        };
        located.read_prefix(len).map(Some)
    }

    fn contains(&self, keyspace: &'static str, key: &[u8]) -> Result<bool, StoreError> {
        validate_keyspace(keyspace)?;
        Ok(self.read_state().loc(keyspace, key).is_some())
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
        // Where the values lie, under the lock; the reads after it (an open file stays
        // readable even if compaction deletes it meanwhile).
        let found = {
            let state = self.read_state();
            let Some(space) = state.keyspaces.get(keyspace) else {
                return Ok(Vec::new());
            };
            let range = space.range::<[u8], _>((start, end));
            let pick = |(key, loc): (&IndexKey, &Loc)| -> Result<_, StoreError> {
                Ok((key.to_vec(), state.locate(loc)?))
            };
            if reverse {
                range
                    .rev()
                    .take(limit)
                    .map(pick)
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                range.take(limit).map(pick).collect::<Result<Vec<_>, _>>()?
            }
        };
        found
            .into_iter()
            .map(|(key, located)| Ok((key, located.read()?)))
            .collect()
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        self.write_ops(&batch.refs(), durability)
    }

    fn write_ops(&self, ops: &[OpRef<'_>], durability: Durability) -> Result<(), StoreError> {
        validate_ops(ops)?;
        let sync = durability == Durability::Immediate;
        // Read back before taking the writer lock, so group-commit rounds do not wait for
        // it: the bytes at a place in a segment never change while the segment exists.
        let tails = self.link_tails(ops)?;
        let mut w = self.writer();
        if ops.is_empty() {
            return if sync { self.sync(&mut w) } else { Ok(()) };
        }
        // Under the writer lock no compaction deletes a segment, so a tail whose segment is
        // still there stays until this record is written and counts it as live.
        let tails: Vec<Option<Part>> = match tails.is_empty() {
            true => tails,
            false => {
                let state = self.read_state();
                tails
                    .into_iter()
                    .map(|tail| tail.filter(|t| state.segments.contains_key(&t.segment)))
                    .collect()
            }
        };
        let (record, placed) = encode(ops.iter().enumerate().map(|(i, op)| match *op {
            OpRef::Put {
                keyspace,
                key,
                value,
                link,
            } => match (link, tails.get(i).copied().flatten()) {
                (Some(link), Some(tail)) => {
                    (keyspace, key, Payload::Link(&value[..link.head], tail))
                }
                _ => (keyspace, key, Payload::Put(value)),
            },
            OpRef::Delete { keyspace, key } => (keyspace, key, Payload::Delete),
        }))?;
        let start = self.append(&mut w, &record, sync)?;
        {
            let mut state = self.write_state();
            state.apply(w.segment, start, &placed);
            if let Some(s) = state.segments.get_mut(&w.segment) {
                s.size = w.len;
            }
        }
        if w.len >= self.segment_bytes {
            self.seal(&mut w)?;
            self.compact_sealed(&mut w, false)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut w = self.writer();
        self.sync(&mut w)
    }

    fn space(&self) -> Result<Space, StoreError> {
        let live_bytes = self.read_state().live;
        Ok(Space {
            disk_bytes: disk_usage(&self.dir)?,
            live_bytes,
        })
    }

    fn compact(&self) -> Result<(), StoreError> {
        let mut w = self.writer();
        if w.len > 0 {
            self.seal(&mut w)?;
        }
        self.compact_sealed(&mut w, true)
    }
}

impl Drop for LogEngine {
    fn drop(&mut self) {
        // Deferred writes are in the page cache already; make them durable on a clean close.
        let mut w = self.writer();
        if let Err(error) = self.sync(&mut w) {
            tracing::warn!(%error, dir = %self.dir.display(), "syncing the log engine on close");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::TempDir;

    fn put(engine: &LogEngine, key: &[u8], value: &[u8], durability: Durability) {
        let mut batch = Batch::new();
        batch.put("ks", key.to_vec(), value.to_vec());
        engine.write(batch, durability).expect("write");
    }

    /// The key filters are rebuilt as keys come and go (from 1,024 keys up); across that and
    /// a reopen, every stored key is found and no deleted or never written one.
    #[test]
    fn lookups_agree_with_the_writes_across_filter_rebuilds() {
        let dir = TempDir::new("log-filters");
        let key = |i: u32| format!("k{i}").into_bytes();
        let check = |engine: &LogEngine| {
            for i in 0..6_000 {
                let stored = i < 5_000 && i % 3 != 0;
                assert_eq!(engine.contains("ks", &key(i)).unwrap(), stored, "key {i}");
                let got = engine.get("ks", &key(i)).unwrap();
                assert_eq!(got, stored.then(|| i.to_be_bytes().to_vec()), "key {i}");
            }
        };
        {
            let engine = LogEngine::open(dir.path()).unwrap();
            for chunk in (0..5_000).collect::<Vec<u32>>().chunks(500) {
                let mut batch = Batch::new();
                for &i in chunk {
                    batch.put("ks", key(i), i.to_be_bytes().to_vec());
                }
                engine.write(batch, Durability::Deferred).unwrap();
            }
            let mut batch = Batch::new();
            for i in (0..5_000).step_by(3) {
                batch.delete("ks", key(i));
            }
            engine.write(batch, Durability::Immediate).unwrap();
            check(&engine);
        }
        check(&LogEngine::open(dir.path()).unwrap());
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_earlier_records_survive() {
        let dir = TempDir::new("log-torn");
        {
            let engine = LogEngine::open(dir.path()).unwrap();
            put(&engine, b"a", b"one", Durability::Immediate);
            put(&engine, b"b", b"two", Durability::Immediate);
        }
        let path = segment_path(dir.path(), 1);
        let len = fs::metadata(&path).unwrap().len();
        // Half of a third record: a header promising more bytes than follow.
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 2], len)
            .unwrap();
        drop(file);
        let engine = LogEngine::open(dir.path()).unwrap();
        assert_eq!(
            engine.get("ks", b"a").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            engine.get("ks", b"b").unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            len,
            "the torn tail is cut off"
        );
        put(&engine, b"c", b"three", Durability::Immediate);
        drop(engine);
        let engine = LogEngine::open(dir.path()).unwrap();
        assert_eq!(
            engine.get("ks", b"c").unwrap().as_deref(),
            Some(&b"three"[..])
        );
    }

    #[test]
    fn a_flipped_bit_ends_the_replay_of_the_active_segment() {
        let dir = TempDir::new("log-crc");
        {
            let engine = LogEngine::open(dir.path()).unwrap();
            put(&engine, b"a", b"one", Durability::Immediate);
            put(&engine, b"b", b"two", Durability::Immediate);
        }
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let engine = LogEngine::open(dir.path()).unwrap();
        assert_eq!(
            engine.get("ks", b"a").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            engine.get("ks", b"b").unwrap(),
            None,
            "a record failing its CRC is not applied"
        );
    }

    #[test]
    fn damage_in_a_sealed_segment_is_reported() {
        let dir = TempDir::new("log-sealed");
        {
            let engine = LogEngine::open_with(dir.path(), 64).unwrap();
            for i in 0..8u8 {
                put(&engine, &[i], &[i; 40], Durability::Immediate);
            }
            assert!(engine.segments() > 1);
        }
        let first = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .min()
            .unwrap();
        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER + 2] ^= 1;
        fs::write(&first, &bytes).unwrap();
        match LogEngine::open_with(dir.path(), 64) {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains("sealed segment"), "{msg}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a damaged sealed segment opened"),
        }
    }

    #[test]
    fn segments_holding_nothing_live_are_deleted_as_the_log_moves_on() {
        let dir = TempDir::new("log-purge");
        let engine = LogEngine::open_with(dir.path(), 4096).unwrap();
        // A Raft-log-like pattern: append entries, delete the old ones.
        for i in 0u64..2000 {
            let mut batch = Batch::new();
            batch.put("log", i.to_be_bytes().to_vec(), vec![7u8; 100]);
            if i >= 50 {
                batch.delete("log", (i - 50).to_be_bytes().to_vec());
            }
            engine.write(batch, Durability::Deferred).unwrap();
        }
        assert!(
            engine.segments() <= 6,
            "{} segments for ~6 KiB of live data",
            engine.segments()
        );
        let space = engine.space().unwrap();
        assert_eq!(space.live_bytes, 50 * (8 + 100));
        drop(engine);
        let engine = LogEngine::open_with(dir.path(), 4096).unwrap();
        let all = engine
            .scan("log", Bound::Unbounded, Bound::Unbounded, usize::MAX, false)
            .unwrap();
        let keys: Vec<u64> = all
            .iter()
            .map(|(k, _)| u64::from_be_bytes(k[..].try_into().unwrap()))
            .collect();
        assert_eq!(keys, (1950..2000).collect::<Vec<_>>());
    }

    #[test]
    fn copying_live_values_forward_never_revives_a_deleted_key() {
        let dir = TempDir::new("log-revive");
        let engine = LogEngine::open_with(dir.path(), 1024).unwrap();
        put(&engine, b"keep", &[1; 200], Durability::Deferred);
        put(&engine, b"gone", &[2; 200], Durability::Deferred);
        for round in 0..50u8 {
            put(&engine, b"churn", &[round; 300], Durability::Deferred);
            if round == 10 {
                let mut batch = Batch::new();
                batch.delete("ks", b"gone".to_vec());
                engine.write(batch, Durability::Deferred).unwrap();
            }
        }
        engine.compact().unwrap();
        assert_eq!(engine.segments(), 1, "everything live sits in one segment");
        drop(engine);
        let engine = LogEngine::open_with(dir.path(), 1024).unwrap();
        assert_eq!(engine.get("ks", b"keep").unwrap(), Some(vec![1; 200]));
        assert_eq!(engine.get("ks", b"gone").unwrap(), None);
        assert_eq!(engine.get("ks", b"churn").unwrap(), Some(vec![49; 300]));
        let live = engine.space().unwrap().live_bytes;
        let on_disk: u64 = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(live, 4 + 200 + 5 + 300);
        assert!(
            on_disk < 2 * live,
            "{on_disk} bytes of segments for {live} live bytes"
        );
    }

    fn linked_put(engine: &LogEngine, key: &[u8], value: &[u8], source: &[u8], offset: u64) {
        let mut batch = Batch::new();
        batch.put_linked(
            "blob",
            key.to_vec(),
            value.to_vec(),
            Some(Link {
                keyspace: "log",
                key: source.to_vec(),
                offset,
                head: 8,
            }),
        );
        engine.write(batch, Durability::Immediate).expect("write");
    }

    /// An entry of `n` bytes whose bytes from 16 on are `body`, like a Raft entry carrying a
    /// message.
    fn entry_with(body: &[u8]) -> Vec<u8> {
        [&[0xEE; 16][..], body].concat()
    }

    fn body(seed: u8) -> Vec<u8> {
        (0..20_000u32).map(|i| (i as u8) ^ seed).collect()
    }

    fn blob_value(body: &[u8]) -> Vec<u8> {
        [&7u64.to_be_bytes()[..], body].concat()
    }

    #[test]
    fn a_linked_put_writes_only_its_head_and_outlives_its_source() {
        let dir = TempDir::new("log-link");
        let engine = LogEngine::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put("log", b"e1".to_vec(), entry_with(&body(1)));
        engine.write(batch, Durability::Immediate).unwrap();
        let before = engine.writer().len;
        linked_put(&engine, b"h1", &blob_value(&body(1)), b"e1", 16);
        let written = engine.writer().len - before;
        assert!(written < 100, "a linked put of 20 KB wrote {written} bytes");
        // Different bytes at the source: stored whole.
        let before = engine.writer().len;
        linked_put(&engine, b"h2", &blob_value(&body(2)), b"e1", 16);
        assert!(engine.writer().len - before > 20_000);
        // The source goes (a purged log); the linked value stays, also after reopening.
        let mut batch = Batch::new();
        batch.delete("log", b"e1".to_vec());
        engine.write(batch, Durability::Immediate).unwrap();
        let check = |engine: &LogEngine| {
            assert_eq!(
                engine.get("blob", b"h1").unwrap(),
                Some(blob_value(&body(1)))
            );
            assert_eq!(
                engine.get("blob", b"h2").unwrap(),
                Some(blob_value(&body(2)))
            );
            assert_eq!(
                engine.get_prefix("blob", b"h1", 8).unwrap(),
                Some(7u64.to_be_bytes().to_vec())
            );
            assert_eq!(engine.get("log", b"e1").unwrap(), None);
            // Live bytes count the linked value once, its source no more.
            let live = engine.space().unwrap().live_bytes;
            assert_eq!(live, 2 * (2 + 8 + 20_000));
        };
        check(&engine);
        drop(engine);
        check(&LogEngine::open(dir.path()).unwrap());
    }

    #[test]
    fn the_tails_of_one_batch_are_read_back_in_runs_and_each_checked() {
        let dir = TempDir::new("log-link-runs");
        let engine = LogEngine::open(dir.path()).unwrap();
        // Two entries of three bodies each, as a Raft entry carries a group of deliveries.
        let bodies: Vec<Vec<u8>> = (0..6).map(|i| body(10 + i)).collect();
        for (entry, three) in bodies.chunks(3).enumerate() {
            let mut batch = Batch::new();
            batch.put("log", vec![b'e', entry as u8], entry_with(&three.concat()));
            engine.write(batch, Durability::Immediate).unwrap();
        }
        // One batch links all six, in an order other than the log's, and one of them (the
        // middle of the first entry's run) does not hold what its link says.
        let mut batch = Batch::new();
        let mut values = Vec::new();
        for i in [4usize, 1, 0, 5, 3, 2] {
            let mut value = blob_value(&bodies[i]);
            if i == 1 {
                value[100] ^= 1;
            }
            batch.put_linked(
                "blob",
                vec![b'h', i as u8],
                value.clone(),
                Some(Link {
                    keyspace: "log",
                    key: vec![b'e', (i / 3) as u8],
                    offset: 16 + (i % 3 * 20_000) as u64,
                    head: 8,
                }),
            );
            values.push((i, value));
        }
        let before = engine.writer().len;
        engine.write(batch, Durability::Immediate).unwrap();
        let written = engine.writer().len - before;
        assert!(
            (20_000..21_000).contains(&written),
            "five linked and one whole: {written} bytes"
        );
        let check = |engine: &LogEngine| {
            for (i, value) in &values {
                assert_eq!(
                    engine.get("blob", &[b'h', *i as u8]).unwrap().as_ref(),
                    Some(value)
                );
            }
        };
        check(&engine);
        drop(engine);
        check(&LogEngine::open(dir.path()).unwrap());
    }

    #[test]
    fn read_back_runs_stop_at_a_gap_another_segment_or_the_size_limit() {
        let part = |segment, offset, len| Part {
            segment,
            offset,
            len,
        };
        let parts = [
            part(1, 0, 100),
            part(1, 50, 10),
            part(1, 100 + READ_BACK_GAP, 10),
            part(1, 200 + 2 * READ_BACK_GAP, 10),
            part(2, 200 + 2 * READ_BACK_GAP + 10, 10),
            part(2, READ_BACK_MAX, 10),
            part(2, READ_BACK_MAX + 10, 10),
            part(3, 0, READ_BACK_MAX as u32 - 5),
            part(3, READ_BACK_MAX - 5, 10),
        ];
        let order: Vec<usize> = (0..parts.len()).collect();
        let cut: Vec<&[usize]> = runs(&order, |i| parts[i]).collect();
        assert_eq!(cut, [&[0, 1, 2][..], &[3], &[4], &[5, 6], &[7], &[8]]);
        assert_eq!(runs(&[], |i| parts[i]).count(), 0);
    }

    #[test]
    fn linked_values_keep_their_segments_until_compaction_moves_them_whole() {
        let dir = TempDir::new("log-link-compact");
        let engine = LogEngine::open_with(dir.path(), 64 << 10).unwrap();
        let blob_key = |i: u64| [&b"h"[..], &i.to_be_bytes()].concat();
        // Entries carry bodies that are linked as they are applied; then the log is purged.
        for i in 0u64..40 {
            let mut batch = Batch::new();
            batch.put("log", i.to_be_bytes().to_vec(), entry_with(&body(i as u8)));
            engine.write(batch, Durability::Deferred).unwrap();
            linked_put(
                &engine,
                &blob_key(i),
                &blob_value(&body(i as u8)),
                &i.to_be_bytes(),
                16,
            );
        }
        let segments = engine.segments();
        assert!(segments > 10, "{segments} segments");
        let purge = |from: u64, to: u64| {
            let mut batch = Batch::new();
            for i in from..to {
                batch.delete("log", i.to_be_bytes().to_vec());
            }
            engine.write(batch, Durability::Immediate).unwrap();
        };
        purge(0, 40);
        // More entries seal more segments; the ones holding bodies are not worth copying.
        for i in 40u64..50 {
            let mut batch = Batch::new();
            batch.put("log", i.to_be_bytes().to_vec(), vec![1; 20_000]);
            engine.write(batch, Durability::Deferred).unwrap();
        }
        purge(40, 50);
        assert!(segment_path(dir.path(), 1).exists());
        assert!(engine.segments() >= segments);
        for i in 0u64..40 {
            assert_eq!(
                engine.get("blob", &blob_key(i)).unwrap(),
                Some(blob_value(&body(i as u8)))
            );
        }
        // Most messages are expunged: now the old segments are copied forward.
        let mut batch = Batch::new();
        for i in 0u64..36 {
            batch.delete("blob", blob_key(i));
        }
        engine.write(batch, Durability::Immediate).unwrap();
        for i in 50u64..60 {
            let mut batch = Batch::new();
            batch.put("log", i.to_be_bytes().to_vec(), vec![1; 20_000]);
            batch.delete("log", (i - 1).to_be_bytes().to_vec());
            engine.write(batch, Durability::Deferred).unwrap();
        }
        assert!(!segment_path(dir.path(), 1).exists());
        purge(59, 60);
        engine.compact().unwrap();
        drop(engine);
        let engine = LogEngine::open_with(dir.path(), 64 << 10).unwrap();
        for i in 0u64..40 {
            let want = (i >= 36).then(|| blob_value(&body(i as u8)));
            assert_eq!(engine.get("blob", &blob_key(i)).unwrap(), want);
        }
        assert_eq!(engine.space().unwrap().live_bytes, 4 * (9 + 8 + 20_000));
    }

    #[test]
    fn a_link_into_a_missing_segment_is_reported() {
        let dir = TempDir::new("log-link-dangling");
        let engine = LogEngine::open_with(dir.path(), 64 << 10).unwrap();
        for i in 0u64..8 {
            let mut batch = Batch::new();
            batch.put("log", i.to_be_bytes().to_vec(), entry_with(&body(i as u8)));
            engine.write(batch, Durability::Immediate).unwrap();
        }
        linked_put(
            &engine,
            b"h0",
            &blob_value(&body(0)),
            &0u64.to_be_bytes(),
            16,
        );
        drop(engine);
        fs::remove_file(segment_path(dir.path(), 1)).unwrap();
        let error = LogEngine::open_with(dir.path(), 64 << 10)
            .err()
            .expect("refused");
        assert!(
            matches!(&error, StoreError::Corrupt(m) if m.contains("gone")),
            "{error}"
        );
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = TempDir::new("log-lock");
        let _engine = LogEngine::open(dir.path()).unwrap();
        match LogEngine::open(dir.path()) {
            Err(StoreError::Engine(msg)) => assert!(msg.contains("in use"), "{msg}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("opened twice"),
        }
    }
}
