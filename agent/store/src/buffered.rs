//! [`Buffered`]: an engine that keeps `Deferred` writes in memory until the next flush.
//!
//! A Raft state machine writes every applied entry `Deferred`: the log, not the state engine,
//! is what survives a crash, and the state is made durable every few hundred milliseconds. On
//! redb each of those writes is still a whole copy-on-write commit (new leaf and branch pages,
//! checksums, page allocation) even though nothing is synced, and under load those commits were
//! most of an agent's CPU. `Buffered` instead applies a `Deferred` batch to an in-memory
//! overlay, which reads see at once, and hands the overlay to the inner engine as one batch at
//! the next `flush` or `Immediate` write: one commit for everything applied in between.
//!
//! # Promises
//!
//! The [`Engine`] contract holds unchanged:
//! - reads see every write that has returned (the overlay is consulted before the engine);
//! - a batch is atomic: after a crash the store holds the state of some earlier flush or
//!   `Immediate` write, with all or none of every batch written before it — the overlay is
//!   written as one inner batch, so a crash never leaves part of it;
//! - `Deferred` writes are durable after the next `flush` or `Immediate` write, and may be lost
//!   by a crash before that.
//!
//! # Levels
//!
//! Data moves one way only: *active* overlay → *frozen* overlay (while a flush writes it) →
//! inner engine. A reader looks at the levels in that order and takes the first answer, so a
//! value moving down during a read is found at the next level it looks at, never missed.
//! Writers touch only the active overlay, so applies do not wait for a flush's fsync. Only one
//! flush runs at a time.
//!
//! When the active overlay grows past [`Buffered::with_limit`]'s bound (default
//! [`DEFAULT_LIMIT`]) the writer that crossed it flushes at once, so memory stays bounded
//! even when nobody calls `flush`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::engine::{Batch, Durability, Engine, KeyValue, Link, Op, OpRef, Space, StoreError};

/// Overlay size (keys plus values) at which a write flushes on its own.
pub const DEFAULT_LIMIT: usize = 64 << 20;

/// A pending write of a key: its new value (`None` for a delete) and, for a put that came with
/// one, its link, passed on to the inner engine. A later write of the key replaces both, so a
/// link never outlives its put.
#[derive(Clone)]
struct Write {
    value: Option<Vec<u8>>,
    link: Option<Box<Link>>,
}

/// Pending writes: per keyspace, key → its write.
#[derive(Clone, Default)]
struct Overlay {
    spaces: BTreeMap<&'static str, BTreeMap<Vec<u8>, Write>>,
    bytes: usize,
}

impl Overlay {
    fn apply(&mut self, ops: Vec<Op>) {
        for op in ops {
            let (keyspace, key, write) = match op {
                Op::Put {
                    keyspace,
                    key,
                    value,
                    link,
                } => (
                    keyspace,
                    key,
                    Write {
                        value: Some(value),
                        link,
                    },
                ),
                Op::Delete { keyspace, key } => (
                    keyspace,
                    key,
                    Write {
                        value: None,
                        link: None,
                    },
                ),
            };
            self.bytes += key.len() + write.value.as_ref().map_or(0, Vec::len);
            self.spaces.entry(keyspace).or_default().insert(key, write);
        }
    }

    /// Lays `newer` over these writes: where both write a key, `newer`'s write stays.
    fn absorb(&mut self, newer: Overlay) {
        for (keyspace, space) in newer.spaces {
            self.spaces.entry(keyspace).or_default().extend(space);
        }
        self.bytes += newer.bytes;
    }

    fn get(&self, keyspace: &str, key: &[u8]) -> Option<Option<&Vec<u8>>> {
        self.spaces
            .get(keyspace)
            .and_then(|space| space.get(key))
            .map(|write| write.value.as_ref())
    }

    fn is_empty(&self) -> bool {
        self.spaces.is_empty()
    }

    /// The overlay's writes, borrowed, in keyspace and key order.
    fn ops(&self) -> impl Iterator<Item = OpRef<'_>> {
        self.spaces.iter().flat_map(move |(keyspace, space)| {
            space.iter().map(move |(key, write)| match &write.value {
                Some(value) => OpRef::Put {
                    keyspace,
                    key,
                    value,
                    link: write.link.as_deref(),
                },
                None => OpRef::Delete { keyspace, key },
            })
        })
    }
}

/// An [`Engine`] whose `Deferred` writes wait in memory for the next flush (module docs).
pub struct Buffered {
    inner: Arc<dyn Engine>,
    active: RwLock<Overlay>,
    /// What a running flush is writing; still read until the inner engine holds it.
    frozen: RwLock<Option<Arc<Overlay>>>,
    /// One flush (or `Immediate` write) at a time.
    flushing: Mutex<()>,
    limit: usize,
}

impl Buffered {
    pub fn new(inner: Arc<dyn Engine>) -> Self {
        Self::with_limit(inner, DEFAULT_LIMIT)
    }

    /// Flushes on its own once the pending writes exceed `limit` bytes of keys and values.
    pub fn with_limit(inner: Arc<dyn Engine>, limit: usize) -> Self {
        Self {
            inner,
            active: RwLock::new(Overlay::default()),
            frozen: RwLock::new(None),
            flushing: Mutex::new(()),
            limit,
        }
    }

    /// Bytes of keys and values waiting for the next flush.
    pub fn pending_bytes(&self) -> usize {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }

    /// Moves the active overlay down and writes it, with `extra` after it, to the inner
    /// engine in one `Immediate` batch.
    fn write_through(&self, extra: Option<Batch>) -> Result<(), StoreError> {
        let _one = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        let frozen = {
            let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
            if active.is_empty() {
                None
            } else {
                let frozen = Arc::new(std::mem::take(&mut *active));
                // Set while the active overlay is still locked: a reader never finds the
                // writes in neither level.
                *self.frozen.write().unwrap_or_else(PoisonError::into_inner) = Some(frozen.clone());
                Some(frozen)
            }
        };
        // Written from where the overlay holds them, not copied into a batch.
        let mut ops: Vec<OpRef<'_>> = frozen
            .as_deref()
            .map_or_else(Vec::new, |frozen| frozen.ops().collect());
        if let Some(extra) = &extra {
            ops.extend(extra.ops().iter().map(Op::as_ref));
        }
        let result = if ops.is_empty() {
            self.inner.flush()
        } else {
            self.inner.write_ops(&ops, Durability::Immediate)
        };
        drop(ops);
        match result {
            Ok(()) => {
                *self.frozen.write().unwrap_or_else(PoisonError::into_inner) = None;
                Ok(())
            }
            Err(e) => {
                // Put the writes back under anything written since, so nothing is lost and
                // the next flush tries again.
                if let Some(frozen) = frozen {
                    let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
                    // Readers look at the frozen level only while holding the active one, so
                    // with that locked the frozen level can go first: the writes are then
                    // moved back rather than copied.
                    *self.frozen.write().unwrap_or_else(PoisonError::into_inner) = None;
                    let newer = std::mem::take(&mut *active);
                    let mut restored =
                        Arc::try_unwrap(frozen).unwrap_or_else(|shared| (*shared).clone());
                    restored.absorb(newer);
                    *active = restored;
                }
                Err(e)
            }
        }
    }
}

/// Whether `BTreeMap::range` accepts the bounds (it panics when start > end, or when both are
/// excluded and equal).
fn valid_range(range: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> bool {
    match range {
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e))
            if s > e =>
        {
            false
        }
        (Bound::Excluded(s), Bound::Excluded(e)) if s == e => false,
        _ => true,
    }
}

/// One pending write: a key and its new value, `None` for a delete.
type Pending<'a> = (&'a Vec<u8>, &'a Option<Vec<u8>>);

/// One level's pending writes of `keyspace` in the range, in scan order.
fn level<'a>(
    overlay: Option<&'a Overlay>,
    keyspace: &str,
    range: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
    reverse: bool,
) -> Box<dyn Iterator<Item = Pending<'a>> + 'a> {
    let pending = |(key, write): (&'a Vec<u8>, &'a Write)| (key, &write.value);
    match overlay.and_then(|o| o.spaces.get(keyspace)) {
        None => Box::new(std::iter::empty()),
        Some(space) if reverse => {
            Box::new(space.range::<Vec<u8>, _>(range.clone()).rev().map(pending))
        }
        Some(space) => Box::new(space.range::<Vec<u8>, _>(range.clone()).map(pending)),
    }
}

/// The pending writes of two levels in scan order; on the same key the newer level wins.
struct Levels<'a, N: Iterator<Item = Pending<'a>>, O: Iterator<Item = Pending<'a>>> {
    newer: std::iter::Peekable<N>,
    older: std::iter::Peekable<O>,
    reverse: bool,
}

impl<'a, N: Iterator<Item = Pending<'a>>, O: Iterator<Item = Pending<'a>>> Iterator
    for Levels<'a, N, O>
{
    type Item = Pending<'a>;

    fn next(&mut self) -> Option<Pending<'a>> {
        let order = match (self.newer.peek(), self.older.peek()) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((n, _)), Some((o, _))) if self.reverse => o.cmp(n),
            (Some((n, _)), Some((o, _))) => n.cmp(o),
        };
        match order {
            std::cmp::Ordering::Less => self.newer.next(),
            std::cmp::Ordering::Greater => self.older.next(),
            std::cmp::Ordering::Equal => {
                self.older.next();
                self.newer.next()
            }
        }
    }
}

impl Buffered {
    /// What the overlay levels say about `key` (`Some(None)`: deleted there), taken from the
    /// first level that has it; `None` when only the inner engine can answer.
    fn overlaid<T>(
        &self,
        keyspace: &'static str,
        key: &[u8],
        found: impl Fn(Option<&Vec<u8>>) -> T,
    ) -> Option<T> {
        let active = self.active.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = active.get(keyspace, key) {
            return Some(found(value));
        }
        // The frozen level is read before the active lock is released, so a flush cannot
        // move the key from the active level past this reader.
        let frozen = self.frozen.read().unwrap_or_else(PoisonError::into_inner);
        frozen
            .as_deref()
            .and_then(|f| f.get(keyspace, key))
            .map(found)
    }
}

impl Engine for Buffered {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlaid(keyspace, key, |value| value.cloned()) {
            Some(value) => Ok(value),
            None => self.inner.get(keyspace, key),
        }
    }

    fn contains(&self, keyspace: &'static str, key: &[u8]) -> Result<bool, StoreError> {
        match self.overlaid(keyspace, key, |value| value.is_some()) {
            Some(present) => Ok(present),
            None => self.inner.contains(keyspace, key),
        }
    }

    fn get_prefix(
        &self,
        keyspace: &'static str,
        key: &[u8],
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let head = |value: Option<&Vec<u8>>| value.map(|v| v[..len.min(v.len())].to_vec());
        match self.overlaid(keyspace, key, head) {
            Some(value) => Ok(value),
            None => self.inner.get_prefix(keyspace, key, len),
        }
    }

    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let range = (start.map(<[u8]>::to_vec), end.map(<[u8]>::to_vec));
        if limit == 0 || !valid_range(&range) {
            return Ok(Vec::new());
        }
        // Held for the whole scan: a flush cannot move entries between the levels meanwhile.
        let active = self.active.read().unwrap_or_else(PoisonError::into_inner);
        let frozen = self
            .frozen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let nothing_pending = |o: Option<&Overlay>| {
            o.and_then(|o| o.spaces.get(keyspace))
                .is_none_or(BTreeMap::is_empty)
        };
        if nothing_pending(Some(&active)) && nothing_pending(frozen.as_deref()) {
            drop(active);
            return self.inner.scan(keyspace, start, end, limit, reverse);
        }
        let mut pending = Levels {
            newer: level(Some(&active), keyspace, &range, reverse).peekable(),
            older: level(frozen.as_deref(), keyspace, &range, reverse).peekable(),
            reverse,
        }
        .peekable();

        // The engine is read a page at a time, each page merged with the pending writes up to
        // its last key: a page can shrink by deletes, so another page may be needed, and the
        // pending writes are walked only as far as the result needs.
        let mut out: Vec<KeyValue> = Vec::new();
        let (mut low, mut high) = (range.0.clone(), range.1.clone());
        loop {
            let want = limit - out.len();
            let page = want.saturating_add(8);
            let base = self.inner.scan(
                keyspace,
                low.as_ref().map(Vec::as_slice),
                high.as_ref().map(Vec::as_slice),
                page,
                reverse,
            )?;
            let exhausted = base.len() < page;
            let last = base.last().map(|(k, _)| k.clone());
            for (key, value) in base {
                // Pending writes that come first in the scan's order.
                while let Some((k, _)) = pending.peek() {
                    let first = if reverse { *k > &key } else { *k < &key };
                    if !first {
                        break;
                    }
                    let (k, v) = pending.next().expect("peeked");
                    if let Some(v) = v {
                        out.push((k.clone(), v.clone()));
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
                let replaced = match pending.peek() {
                    Some((k, _)) if *k == &key => pending.next().map(|(_, v)| v.clone()),
                    _ => None,
                };
                match replaced {
                    Some(None) => continue, // deleted
                    Some(Some(v)) => out.push((key, v)),
                    None => out.push((key, value)),
                }
                if out.len() == limit {
                    return Ok(out);
                }
            }
            if exhausted {
                for (k, v) in pending {
                    if let Some(v) = v {
                        out.push((k.clone(), v.clone()));
                        if out.len() == limit {
                            break;
                        }
                    }
                }
                return Ok(out);
            }
            let last = last.expect("a full page has a last key");
            if reverse {
                high = Bound::Excluded(last);
            } else {
                low = Bound::Excluded(last);
            }
        }
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        batch.validate()?;
        match durability {
            Durability::Immediate => self.write_through(Some(batch)),
            Durability::Deferred => {
                let over = {
                    let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
                    active.apply(batch.into_ops());
                    active.bytes > self.limit
                };
                if over {
                    self.write_through(None)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.write_through(None)
    }

    fn space(&self) -> Result<Space, StoreError> {
        self.write_through(None)?;
        self.inner.space()
    }

    fn compact(&self) -> Result<(), StoreError> {
        self.write_through(None)?;
        self.inner.compact()
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        if let Err(e) = self.write_through(None) {
            tracing::error!(error = %e, "could not write pending state on close; the Raft log replays it");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::EngineKind;
    use crate::suite::{Hooked, TempDir};

    fn open_buffered(kind: EngineKind, dir: &std::path::Path) -> Arc<dyn Engine> {
        Arc::new(Buffered::new(crate::open(kind, dir).unwrap()))
    }

    /// A flush the inner engine refuses loses nothing: its writes stay readable under the
    /// ones made while it ran, and the next flush writes both, the newer winning.
    #[test]
    fn a_failed_flush_keeps_its_writes_under_newer_ones() {
        let dir = TempDir::new("buffered-failed-flush");
        let store = crate::open(EngineKind::Redb, dir.path()).unwrap();
        let refuse = Arc::new(AtomicBool::new(true));
        type During = Option<Box<dyn FnOnce() + Send>>;
        let during: Arc<Mutex<During>> = Arc::new(Mutex::new(None));
        let inner = Arc::new(Hooked::new(store.clone(), {
            let (refuse, during) = (refuse.clone(), during.clone());
            move |_, _| {
                if let Some(during) = during.lock().unwrap().take() {
                    during();
                }
                match refuse.load(Ordering::SeqCst) {
                    true => Err(StoreError::Engine("refused".into())),
                    false => Ok(()),
                }
            }
        }));
        let engine = Arc::new(Buffered::new(inner.clone()));
        let mut first = Batch::new();
        first
            .put("a", b"kept".to_vec(), b"1".to_vec())
            .put("a", b"replaced".to_vec(), b"old".to_vec())
            .put("a", b"deleted".to_vec(), b"x".to_vec());
        engine.write(first, Durability::Deferred).unwrap();
        // Written while the flush is at the inner engine.
        let writer = engine.clone();
        *during.lock().unwrap() = Some(Box::new(move || {
            let mut newer = Batch::new();
            newer
                .put("a", b"replaced".to_vec(), b"new".to_vec())
                .delete("a", b"deleted".to_vec());
            writer.write(newer, Durability::Deferred).unwrap();
        }));
        assert!(engine.flush().is_err(), "the inner engine refuses");
        let want = |e: &dyn Engine| {
            assert_eq!(e.get("a", b"kept").unwrap().as_deref(), Some(&b"1"[..]));
            assert_eq!(
                e.get("a", b"replaced").unwrap().as_deref(),
                Some(&b"new"[..])
            );
            assert_eq!(e.get("a", b"deleted").unwrap(), None);
        };
        want(engine.as_ref());
        assert_eq!(
            store.get("a", b"kept").unwrap(),
            None,
            "nothing written yet"
        );
        refuse.store(false, Ordering::SeqCst);
        engine.flush().unwrap();
        want(store.as_ref());
        want(engine.as_ref());
    }

    fn links_of(overlay: &Overlay) -> Vec<(Vec<u8>, bool)> {
        overlay
            .ops()
            .map(|op| match op {
                OpRef::Put { key, link, .. } => (key.to_vec(), link.is_some()),
                OpRef::Delete { key, .. } => (key.to_vec(), false),
            })
            .collect()
    }

    #[test]
    fn a_link_goes_with_its_put_and_not_with_a_later_write_of_the_key() {
        let link = Link {
            keyspace: "log",
            key: b"entry".to_vec(),
            offset: 0,
            head: 1,
        };
        let mut first = Batch::new();
        first.put_linked("b", b"a".to_vec(), b"xa".to_vec(), Some(link.clone()));
        first.put_linked("b", b"b".to_vec(), b"xb".to_vec(), Some(link.clone()));
        first.put_linked("b", b"c".to_vec(), b"xc".to_vec(), Some(link.clone()));
        let mut overlay = Overlay::default();
        overlay.apply(first.into_ops());
        let mut later = Batch::new();
        later.put("b", b"b".to_vec(), b"plain".to_vec());
        overlay.apply(later.into_ops());
        let mut newer = Overlay::default();
        let mut last = Batch::new();
        last.delete("b", b"c".to_vec());
        newer.apply(last.into_ops());
        // As a failed flush puts the frozen writes back under the newer ones.
        overlay.absorb(newer);
        assert_eq!(
            links_of(&overlay),
            vec![
                (b"a".to_vec(), true),
                (b"b".to_vec(), false),
                (b"c".to_vec(), false)
            ]
        );
    }

    #[test]
    fn scan_merges_levels_with_limits() {
        let dir = TempDir::new("buffered-scan");
        let inner = crate::open(EngineKind::Redb, dir.path()).unwrap();
        let engine = Buffered::new(inner.clone());
        let mut base = Batch::new();
        for k in 0u8..10 {
            base.put("ks", vec![k], vec![k]);
        }
        engine.write(base, Durability::Immediate).unwrap();
        // Deleted in the overlay: 0..5; replaced: 7; new: 20.
        let mut over = Batch::new();
        for k in 0u8..5 {
            over.delete("ks", vec![k]);
        }
        over.put("ks", vec![7], vec![70])
            .put("ks", vec![20], vec![20]);
        engine.write(over, Durability::Deferred).unwrap();
        assert_eq!(
            inner.get("ks", &[0]).unwrap(),
            Some(vec![0]),
            "not flushed yet"
        );
        let keys = |v: Vec<KeyValue>| v.into_iter().map(|(k, v)| (k[0], v[0])).collect::<Vec<_>>();
        let all = engine
            .scan("ks", Bound::Unbounded, Bound::Unbounded, 3, false)
            .unwrap();
        assert_eq!(keys(all), [(5, 5), (6, 6), (7, 70)]);
        let back = engine
            .scan("ks", Bound::Unbounded, Bound::Unbounded, 2, true)
            .unwrap();
        assert_eq!(keys(back), [(20, 20), (9, 9)]);
        let none = engine
            .scan(
                "ks",
                Bound::Included(&[3]),
                Bound::Excluded(&[3]),
                10,
                false,
            )
            .unwrap();
        assert!(none.is_empty());
        engine.flush().unwrap();
        assert_eq!(inner.get("ks", &[0]).unwrap(), None);
        assert_eq!(inner.get("ks", &[7]).unwrap(), Some(vec![70]));
        assert_eq!(engine.pending_bytes(), 0);
    }

    #[test]
    fn scan_reads_past_pages_that_pending_deletes_empty() {
        let dir = TempDir::new("buffered-pages");
        let engine = Buffered::new(crate::open(EngineKind::Redb, dir.path()).unwrap());
        let mut base = Batch::new();
        for k in 0u8..100 {
            base.put("ks", vec![k], vec![k]);
        }
        engine.write(base, Durability::Immediate).unwrap();
        let mut gone = Batch::new();
        for k in (0u8..50).chain(60..100) {
            gone.delete("ks", vec![k]);
        }
        engine.write(gone, Durability::Deferred).unwrap();
        let keys = |reverse| {
            engine
                .scan("ks", Bound::Unbounded, Bound::Unbounded, 5, reverse)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(false), [50, 51, 52, 53, 54]);
        assert_eq!(keys(true), [59, 58, 57, 56, 55]);
    }

    #[test]
    fn crossing_the_limit_flushes() {
        let dir = TempDir::new("buffered-limit");
        let inner = crate::open(EngineKind::Redb, dir.path()).unwrap();
        let engine = Buffered::with_limit(inner.clone(), 1000);
        let mut batch = Batch::new();
        batch.put("ks", b"a".to_vec(), vec![1; 600]);
        engine.write(batch, Durability::Deferred).unwrap();
        assert_eq!(inner.get("ks", b"a").unwrap(), None);
        let mut batch = Batch::new();
        batch.put("ks", b"b".to_vec(), vec![2; 600]);
        engine.write(batch, Durability::Deferred).unwrap();
        assert_eq!(inner.get("ks", b"a").unwrap(), Some(vec![1; 600]));
        assert_eq!(engine.pending_bytes(), 0);
    }

    #[test]
    fn concurrent_readers_never_miss_a_value_during_flushes() {
        let dir = TempDir::new("buffered-race");
        let engine = Arc::new(Buffered::new(
            crate::open(EngineKind::Redb, dir.path()).unwrap(),
        ));
        let mut first = Batch::new();
        first.put("ks", b"k".to_vec(), 0u64.to_be_bytes().to_vec());
        engine.write(first, Durability::Immediate).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let v = engine.get("ks", b"k").unwrap().expect("never missing");
                    let n = u64::from_be_bytes(v.try_into().unwrap());
                    assert!(n >= last, "went back from {last} to {n}");
                    last = n;
                }
            })
        };
        for n in 1..=300u64 {
            let mut b = Batch::new();
            b.put("ks", b"k".to_vec(), n.to_be_bytes().to_vec());
            engine.write(b, Durability::Deferred).unwrap();
            if n % 7 == 0 {
                engine.flush().unwrap();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
    }

    /// Random puts, deletes, flushes and `Immediate` writes, with every scan shape checked
    /// against a model after each step (a seeded generator, so a failure replays).
    #[test]
    fn matches_a_model_under_random_operations() {
        let dir = TempDir::new("buffered-model");
        let engine = Buffered::new(crate::open(EngineKind::Redb, dir.path()).unwrap());
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..600 {
            let mut batch = Batch::new();
            for _ in 0..=next(4) {
                let key = vec![next(40) as u8];
                if next(3) == 0 {
                    batch.delete("ks", key.clone());
                    model.remove(&key);
                } else {
                    let value = vec![step as u8, next(256) as u8];
                    batch.put("ks", key.clone(), value.clone());
                    model.insert(key, value);
                }
            }
            let durability = if next(10) == 0 {
                Durability::Immediate
            } else {
                Durability::Deferred
            };
            engine.write(batch, durability).unwrap();
            if next(15) == 0 {
                engine.flush().unwrap();
            }
            let (a, b) = (next(42) as u8, next(42) as u8);
            let (lo, hi) = (a.min(b), a.max(b));
            let limit = next(12) as usize;
            let reverse = next(2) == 0;
            let got = engine
                .scan(
                    "ks",
                    Bound::Included(&[lo]),
                    Bound::Excluded(&[hi]),
                    limit,
                    reverse,
                )
                .unwrap();
            let range = model
                .range(vec![lo]..vec![hi])
                .map(|(k, v)| (k.clone(), v.clone()));
            let want: Vec<KeyValue> = if reverse {
                range.rev().take(limit).collect()
            } else {
                range.take(limit).collect()
            };
            assert_eq!(
                got, want,
                "step {step}: [{lo}, {hi}) limit {limit} reverse {reverse}"
            );
            let probe = vec![next(40) as u8];
            assert_eq!(
                engine.get("ks", &probe).unwrap(),
                model.get(&probe).cloned()
            );
        }
    }

    mod redb_suite {
        crate::engine_suite!(|dir: &std::path::Path| super::open_buffered(
            crate::EngineKind::Redb,
            dir
        ));
    }

    mod sled_suite {
        crate::engine_suite!(|dir: &std::path::Path| super::open_buffered(
            crate::EngineKind::Sled,
            dir
        ));
    }
}
