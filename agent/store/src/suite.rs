//! One test suite for every [`Engine`].
//!
//! Each case is a public function that takes a way to open the engine under test in a
//! directory. [`engine_suite!`](crate::engine_suite) turns them into one `#[test]` per case,
//! and [`run_all`] runs them in a row. Results are checked against a `BTreeMap` model, so a
//! wrong bound, order or limit fails a case rather than passing unnoticed.

use std::collections::BTreeMap;
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Batch, Durability, Engine, KeyValue, Link, OpRef, Space, StoreError};

/// How a case opens the engine under test in a directory (called again to reopen).
pub type Open<'a> = &'a dyn Fn(&Path) -> Arc<dyn Engine>;

/// One case of the suite.
pub type Case = fn(Open<'_>);

/// Expands to one `#[test]` per suite case, each calling `$open` (an expression of type
/// `impl Fn(&Path) -> Arc<dyn Engine>`). Use it inside a module per engine:
///
/// ```no_run
/// mod redb {
///     tern_store::engine_suite!(|dir: &std::path::Path| {
///         tern_store::open(tern_store::EngineKind::Redb, dir).unwrap()
///     });
/// }
/// ```
#[macro_export]
macro_rules! engine_suite {
    ($open:expr) => {
        $crate::__suite_cases! { tests[$open] }
    };
}

/// The list of cases, in one place for [`engine_suite!`] and [`CASES`].
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_cases {
    ($mode:ident[$($open:expr)?]) => {
        $crate::__suite_cases! {
            @expand $mode[$($open)?]
            get_put_delete,
            keyspaces_are_separate,
            batch_applies_in_order,
            scan_matches_model,
            scan_empty_keyspace,
            batch_atomic_across_keyspaces,
            invalid_batch_changes_nothing,
            reopen_keeps_immediate_writes,
            reopen_keeps_deferred_writes_after_flush,
            large_values,
            many_keyspaces,
            space_is_sane,
            compact_keeps_data,
            concurrent_writers,
            linked_puts_store_their_value,
            borrowed_writes,
        }
    };
    (@expand tests[$open:expr] $($case:ident,)*) => {
        $(
            #[test]
            fn $case() {
                $crate::suite::$case(&$open)
            }
        )*
    };
    (@expand list[] $($case:ident,)*) => {
        &[$((stringify!($case), $crate::suite::$case as $crate::suite::Case)),*]
    };
}

/// Every case with its name.
pub const CASES: &[(&str, Case)] = crate::__suite_cases!(list[]);

/// Runs every case against the engine that `open` opens; panics on the first failure.
pub fn run_all(open: impl Fn(&Path) -> Arc<dyn Engine>) {
    for (name, case) in CASES {
        eprintln!("engine suite: {name}");
        case(&open);
    }
}

/// An engine that forwards to `inner` but runs a hook before each write, which refuses the
/// write by returning an error: how tests make an engine fail at a chosen write.
pub struct Hooked {
    inner: Arc<dyn Engine>,
    hook: Box<WriteHook>,
}

type WriteHook = dyn Fn(&Batch, Durability) -> Result<(), StoreError> + Send + Sync;

impl Hooked {
    pub fn new(
        inner: Arc<dyn Engine>,
        hook: impl Fn(&Batch, Durability) -> Result<(), StoreError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            hook: Box::new(hook),
        }
    }
}

impl Engine for Hooked {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(keyspace, key)
    }

    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan(keyspace, start, end, limit, reverse)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        (self.hook)(&batch, durability)?;
        self.inner.write(batch, durability)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn space(&self) -> Result<Space, StoreError> {
        self.inner.space()
    }

    fn compact(&self) -> Result<(), StoreError> {
        self.inner.compact()
    }
}

/// A directory under the system's temporary directory, removed on drop unless the thread is
/// panicking.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tern-store-{label}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
        ));
        fs::create_dir_all(&path).expect("create temporary directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A failing test leaves its store behind as evidence.
        if thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Drops the last handle to an engine, so the directory can be opened again.
fn close(engine: Arc<dyn Engine>) {
    assert_eq!(
        Arc::strong_count(&engine),
        1,
        "the suite holds the only handle"
    );
    drop(engine);
}

fn put(engine: &dyn Engine, keyspace: &'static str, key: &[u8], value: &[u8]) {
    let mut batch = Batch::new();
    batch.put(keyspace, key, value);
    engine.write(batch, Durability::Immediate).expect("put");
}

fn delete(engine: &dyn Engine, keyspace: &'static str, key: &[u8]) {
    let mut batch = Batch::new();
    batch.delete(keyspace, key);
    engine.write(batch, Durability::Immediate).expect("delete");
}

/// The value under `key`; also checks that `contains` and `get_prefix` agree with it.
fn get(engine: &dyn Engine, keyspace: &'static str, key: &[u8]) -> Option<Vec<u8>> {
    let value = engine.get(keyspace, key).expect("get");
    assert_eq!(
        engine.contains(keyspace, key).expect("contains"),
        value.is_some(),
        "contains and get disagree on {key:02x?}"
    );
    for len in [0, 1, 3, usize::MAX] {
        assert_eq!(
            engine.get_prefix(keyspace, key, len).expect("get_prefix"),
            value.as_ref().map(|v| v[..len.min(v.len())].to_vec()),
            "get_prefix({len}) and get disagree on {key:02x?}"
        );
    }
    value
}

fn all(engine: &dyn Engine, keyspace: &'static str) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine
        .scan(
            keyspace,
            Bound::Unbounded,
            Bound::Unbounded,
            usize::MAX,
            false,
        )
        .expect("scan")
}

/// Deterministic bytes that differ per `seed`, so a value read back from the wrong key or
/// a mix of two values does not pass.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Leaks a keyspace name: the trait takes `&'static str`, as production code names its
/// keyspaces with constants.
fn keyspace_name(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

pub fn get_put_delete(open: Open<'_>) {
    let dir = TempDir::new("get-put-delete");
    let engine = open(dir.path());
    let e = engine.as_ref();
    assert_eq!(get(e, "a", b"k"), None, "fresh store is empty");
    put(e, "a", b"k", b"v1");
    assert_eq!(get(e, "a", b"k").as_deref(), Some(&b"v1"[..]));
    put(e, "a", b"k", b"v2");
    assert_eq!(get(e, "a", b"k").as_deref(), Some(&b"v2"[..]), "overwrite");
    put(e, "a", b"empty", b"");
    assert_eq!(
        get(e, "a", b"empty").as_deref(),
        Some(&b""[..]),
        "an empty value is a value"
    );
    put(e, "a", b"", b"empty key");
    assert_eq!(get(e, "a", b"").as_deref(), Some(&b"empty key"[..]));
    delete(e, "a", b"k");
    assert_eq!(get(e, "a", b"k"), None, "deleted");
    delete(e, "a", b"never-there");
    assert_eq!(get(e, "a", b"k2"), None);
    assert_eq!(
        all(e, "a"),
        vec![
            (b"".to_vec(), b"empty key".to_vec()),
            (b"empty".to_vec(), b"".to_vec())
        ]
    );
    engine
        .write(Batch::new(), Durability::Immediate)
        .expect("an empty batch is a no-op");
    engine.flush().expect("flush");
}

pub fn keyspaces_are_separate(open: Open<'_>) {
    let dir = TempDir::new("keyspaces");
    let engine = open(dir.path());
    let e = engine.as_ref();
    put(e, "a", b"k", b"in a");
    put(e, "b", b"k", b"in b");
    put(e, "a.b", b"k2", b"in a.b");
    assert_eq!(get(e, "a", b"k").as_deref(), Some(&b"in a"[..]));
    assert_eq!(get(e, "b", b"k").as_deref(), Some(&b"in b"[..]));
    assert_eq!(get(e, "a", b"k2"), None);
    delete(e, "a", b"k");
    assert_eq!(get(e, "b", b"k").as_deref(), Some(&b"in b"[..]));
    assert_eq!(all(e, "a"), Vec::<(Vec<u8>, Vec<u8>)>::new());
    assert_eq!(all(e, "b").len(), 1);
    assert_eq!(all(e, "a.b").len(), 1);
}

pub fn batch_applies_in_order(open: Open<'_>) {
    let dir = TempDir::new("batch-order");
    let engine = open(dir.path());
    let e = engine.as_ref();
    put(e, "a", b"existing", b"old");
    let mut batch = Batch::new();
    batch
        .put("a", b"put-then-delete".to_vec(), b"x".to_vec())
        .delete("a", b"put-then-delete".to_vec())
        .delete("a", b"existing".to_vec())
        .put("a", b"existing".to_vec(), b"new".to_vec())
        .put("a", b"twice".to_vec(), b"first".to_vec())
        .put("b", b"other".to_vec(), b"o".to_vec())
        .put("a", b"twice".to_vec(), b"second".to_vec());
    assert_eq!(batch.len(), 7);
    assert!(!batch.is_empty());
    engine.write(batch, Durability::Immediate).expect("write");
    assert_eq!(get(e, "a", b"put-then-delete"), None);
    assert_eq!(get(e, "a", b"existing").as_deref(), Some(&b"new"[..]));
    assert_eq!(get(e, "a", b"twice").as_deref(), Some(&b"second"[..]));
    assert_eq!(get(e, "b", b"other").as_deref(), Some(&b"o"[..]));
}

/// Keys around the edges of byte order: empty, 0x00 runs, 0xff runs, prefixes of each other.
fn edge_keys() -> Vec<Vec<u8>> {
    vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0xff],
        vec![0x01],
        b"a".to_vec(),
        b"a\x00".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0x7f],
        vec![0x80],
        vec![0xfe, 0xff],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0xff],
    ]
}

pub fn scan_matches_model(open: Open<'_>) {
    let dir = TempDir::new("scan");
    let engine = open(dir.path());
    let mut model = BTreeMap::new();
    let mut batch = Batch::new();
    for (i, key) in edge_keys().into_iter().enumerate() {
        let value = pattern(i as u64, 1 + i % 5);
        batch.put("scan", key.clone(), value.clone());
        model.insert(key, value);
    }
    // Neighbours in other keyspaces must never leak into a scan.
    batch.put("scam", vec![0x00], b"other".to_vec());
    batch.put("scan2", vec![0x00], b"other".to_vec());
    engine.write(batch, Durability::Immediate).expect("write");

    let mut probes = edge_keys();
    probes.extend([
        vec![0x00, 0x01],
        b"aa".to_vec(),
        vec![0xff, 0xfe],
        vec![0xff, 0xff, 0xff, 0xff],
    ]);
    let mut bounds: Vec<Bound<&[u8]>> = vec![Bound::Unbounded];
    for p in &probes {
        bounds.push(Bound::Included(p));
        bounds.push(Bound::Excluded(p));
    }
    let mut checked = 0;
    for &start in &bounds {
        for &end in &bounds {
            let expected: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .filter(|(k, _)| {
                    let k = k.as_slice();
                    let above = match start {
                        Bound::Included(s) => k >= s,
                        Bound::Excluded(s) => k > s,
                        Bound::Unbounded => true,
                    };
                    let below = match end {
                        Bound::Included(e) => k <= e,
                        Bound::Excluded(e) => k < e,
                        Bound::Unbounded => true,
                    };
                    above && below
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for limit in [0, 1, 3, usize::MAX] {
                for reverse in [false, true] {
                    let got = engine
                        .scan("scan", start, end, limit, reverse)
                        .expect("scan");
                    let want: Vec<_> = if reverse {
                        expected.iter().rev().take(limit).cloned().collect()
                    } else {
                        expected.iter().take(limit).cloned().collect()
                    };
                    assert_eq!(
                        got, want,
                        "scan({start:?}, {end:?}, limit {limit}, reverse {reverse})"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000);
}

pub fn scan_empty_keyspace(open: Open<'_>) {
    let dir = TempDir::new("scan-empty");
    let engine = open(dir.path());
    let e = engine.as_ref();
    assert!(all(e, "never").is_empty());
    assert!(
        engine
            .scan("never", Bound::Unbounded, Bound::Unbounded, 10, true)
            .expect("scan")
            .is_empty()
    );
    put(e, "emptied", b"k", b"v");
    delete(e, "emptied", b"k");
    assert!(all(e, "emptied").is_empty());
    assert!(
        engine
            .scan(
                "emptied",
                Bound::Included(b"a"),
                Bound::Included(b"z"),
                10,
                true
            )
            .expect("scan")
            .is_empty()
    );
}

pub fn batch_atomic_across_keyspaces(open: Open<'_>) {
    let dir = TempDir::new("batch-atomic");
    let engine = open(dir.path());
    put(engine.as_ref(), "queue", b"msg-1", b"pending");
    let mut batch = Batch::new();
    batch
        .put("mailbox", b"msg-1".to_vec(), b"delivered".to_vec())
        .delete("queue", b"msg-1".to_vec());
    engine.write(batch, Durability::Immediate).expect("write");
    let check = |e: &dyn Engine| {
        assert_eq!(
            get(e, "mailbox", b"msg-1").as_deref(),
            Some(&b"delivered"[..])
        );
        assert_eq!(get(e, "queue", b"msg-1"), None);
    };
    check(engine.as_ref());
    close(engine);
    let engine = open(dir.path());
    check(engine.as_ref());
}

pub fn invalid_batch_changes_nothing(open: Open<'_>) {
    let dir = TempDir::new("batch-invalid");
    let engine = open(dir.path());
    put(engine.as_ref(), "b", b"keep", b"v");
    let mut batch = Batch::new();
    batch
        .put("a", b"k".to_vec(), b"v".to_vec())
        .delete("b", b"keep".to_vec())
        .put("Not A Keyspace", b"k".to_vec(), b"v".to_vec());
    let err = engine
        .write(batch, Durability::Immediate)
        .expect_err("an invalid keyspace rejects the batch");
    assert!(matches!(err, StoreError::InvalidKeyspace(_)), "{err}");
    assert_eq!(get(engine.as_ref(), "a", b"k"), None, "nothing applied");
    assert_eq!(
        get(engine.as_ref(), "b", b"keep").as_deref(),
        Some(&b"v"[..])
    );
    for bad in ["", "__sled__default", "UPPER", "a/b", "sp ace"] {
        let bad = keyspace_name(bad.to_owned());
        assert!(engine.get(bad, b"k").is_err(), "get in {bad:?}");
        assert!(
            engine
                .scan(bad, Bound::Unbounded, Bound::Unbounded, 1, false)
                .is_err(),
            "scan in {bad:?}"
        );
    }
}

pub fn reopen_keeps_immediate_writes(open: Open<'_>) {
    let dir = TempDir::new("reopen-immediate");
    let engine = open(dir.path());
    for i in 0..100u64 {
        put(
            engine.as_ref(),
            "log",
            &i.to_be_bytes(),
            &pattern(i, 100 + i as usize),
        );
    }
    delete(engine.as_ref(), "log", &7u64.to_be_bytes());
    close(engine);
    let engine = open(dir.path());
    let got = all(engine.as_ref(), "log");
    let want: Vec<_> = (0..100u64)
        .filter(|i| *i != 7)
        .map(|i| (i.to_be_bytes().to_vec(), pattern(i, 100 + i as usize)))
        .collect();
    assert_eq!(got, want);
    // And again, after writing on top of the recovered state.
    put(engine.as_ref(), "log", &100u64.to_be_bytes(), b"last");
    close(engine);
    let engine = open(dir.path());
    assert_eq!(all(engine.as_ref(), "log").len(), 100);
    assert_eq!(
        get(engine.as_ref(), "log", &100u64.to_be_bytes()).as_deref(),
        Some(&b"last"[..])
    );
}

pub fn reopen_keeps_deferred_writes_after_flush(open: Open<'_>) {
    let dir = TempDir::new("reopen-deferred");
    let engine = open(dir.path());
    for i in 0..50u64 {
        let mut batch = Batch::new();
        batch
            .put("a", i.to_be_bytes().to_vec(), pattern(i, 64))
            .put("b", i.to_be_bytes().to_vec(), pattern(i + 1000, 64));
        engine.write(batch, Durability::Deferred).expect("write");
    }
    let mut batch = Batch::new();
    batch.delete("b", 0u64.to_be_bytes().to_vec());
    engine.write(batch, Durability::Deferred).expect("write");
    assert_eq!(all(engine.as_ref(), "a").len(), 50, "visible before flush");
    engine.flush().expect("flush");
    close(engine);
    let engine = open(dir.path());
    assert_eq!(all(engine.as_ref(), "a").len(), 50);
    assert_eq!(all(engine.as_ref(), "b").len(), 49);
    for i in 0..50u64 {
        assert_eq!(
            get(engine.as_ref(), "a", &i.to_be_bytes()),
            Some(pattern(i, 64))
        );
    }
    assert_eq!(get(engine.as_ref(), "b", &0u64.to_be_bytes()), None);
}

pub fn large_values(open: Open<'_>) {
    const MIB: usize = 1 << 20;
    let dir = TempDir::new("large");
    let engine = open(dir.path());
    let mut batch = Batch::new();
    for i in 0..4u64 {
        batch.put("blobs", i.to_be_bytes().to_vec(), pattern(i, MIB));
    }
    batch.put("index", b"count".to_vec(), 4u64.to_be_bytes().to_vec());
    engine.write(batch, Durability::Immediate).expect("write");
    put(
        engine.as_ref(),
        "blobs",
        &9u64.to_be_bytes(),
        &pattern(9, MIB + 1),
    );
    let check = |e: &dyn Engine| {
        for i in 0..4u64 {
            let got = get(e, "blobs", &i.to_be_bytes()).expect("present");
            assert_eq!(got.len(), MIB);
            assert!(got == pattern(i, MIB), "blob {i} intact");
        }
        let scanned = e
            .scan(
                "blobs",
                Bound::Included(&1u64.to_be_bytes()),
                Bound::Unbounded,
                usize::MAX,
                true,
            )
            .expect("scan");
        let keys: Vec<u64> = scanned
            .iter()
            .map(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().expect("8 bytes")))
            .collect();
        assert_eq!(keys, vec![9, 3, 2, 1]);
        assert!(scanned[0].1 == pattern(9, MIB + 1));
    };
    check(engine.as_ref());
    close(engine);
    let engine = open(dir.path());
    check(engine.as_ref());
    put(engine.as_ref(), "blobs", &0u64.to_be_bytes(), b"small now");
    delete(engine.as_ref(), "blobs", &1u64.to_be_bytes());
    assert_eq!(
        get(engine.as_ref(), "blobs", &0u64.to_be_bytes()).as_deref(),
        Some(&b"small now"[..])
    );
    assert_eq!(get(engine.as_ref(), "blobs", &1u64.to_be_bytes()), None);
}

pub fn many_keyspaces(open: Open<'_>) {
    const KEYSPACES: u64 = 200;
    let names: Vec<&'static str> = (0..KEYSPACES)
        .map(|i| keyspace_name(format!("shard-{i:03}")))
        .collect();
    let dir = TempDir::new("many-keyspaces");
    let engine = open(dir.path());
    // One batch touching every keyspace, then one write per keyspace.
    let mut batch = Batch::new();
    for (i, name) in names.iter().enumerate() {
        batch.put(name, b"first".to_vec(), pattern(i as u64, 32));
    }
    engine.write(batch, Durability::Immediate).expect("write");
    for (i, name) in names.iter().enumerate() {
        let mut batch = Batch::new();
        batch.put(name, b"second".to_vec(), (i as u64).to_be_bytes().to_vec());
        engine.write(batch, Durability::Deferred).expect("write");
    }
    engine.flush().expect("flush");
    let check = |e: &dyn Engine| {
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                all(e, name),
                vec![
                    (b"first".to_vec(), pattern(i as u64, 32)),
                    (b"second".to_vec(), (i as u64).to_be_bytes().to_vec()),
                ],
                "keyspace {name}"
            );
        }
    };
    check(engine.as_ref());
    close(engine);
    let engine = open(dir.path());
    check(engine.as_ref());
}

pub fn space_is_sane(open: Open<'_>) {
    let dir = TempDir::new("space");
    let engine = open(dir.path());
    let empty = engine.space().expect("space");
    assert_eq!(empty.live_bytes, 0, "fresh store");

    let mut expected_live = 0u64;
    for chunk in 0..16u64 {
        let mut batch = Batch::new();
        for i in 0..16u64 {
            let key = (chunk * 16 + i).to_be_bytes();
            let value = pattern(chunk * 16 + i, 16 * 1024);
            expected_live += (key.len() + value.len()) as u64;
            batch.put("space", key.to_vec(), value);
        }
        engine.write(batch, Durability::Immediate).expect("write");
    }
    let full = engine.space().expect("space");
    assert_eq!(full.live_bytes, expected_live, "live bytes are exact");
    assert!(full.live_bytes <= full.disk_bytes, "live ≤ disk: {full:?}");
    assert!(full.disk_bytes >= empty.disk_bytes, "disk grew: {full:?}");

    // Growing values grow live bytes by exactly the difference.
    let mut batch = Batch::new();
    for i in 0..16u64 {
        batch.put("space", i.to_be_bytes().to_vec(), pattern(i, 32 * 1024));
        expected_live += 16 * 1024;
    }
    engine.write(batch, Durability::Immediate).expect("write");
    let grown = engine.space().expect("space");
    assert_eq!(grown.live_bytes, expected_live);
    assert!(grown.live_bytes > full.live_bytes);
    assert!(grown.live_bytes <= grown.disk_bytes, "{grown:?}");

    let mut batch = Batch::new();
    for i in 0..256u64 {
        batch.delete("space", i.to_be_bytes().to_vec());
    }
    engine.write(batch, Durability::Immediate).expect("write");
    engine.compact().expect("compact");
    let emptied = engine.space().expect("space");
    assert_eq!(emptied.live_bytes, 0, "{emptied:?}");
    // (An append-only engine with nothing live may occupy no blocks at all.)
    close(engine);
    let reopened = open(dir.path());
    assert_eq!(
        reopened.space().expect("space").live_bytes,
        0,
        "after reopening"
    );
}

pub fn compact_keeps_data(open: Open<'_>) {
    let dir = TempDir::new("compact");
    let engine = open(dir.path());
    let mut model = BTreeMap::new();
    for round in 0..4u64 {
        let mut batch = Batch::new();
        for i in 0..200u64 {
            let key = i.to_be_bytes().to_vec();
            if (i + round) % 3 == 0 {
                batch.delete("churn", key.clone());
                model.remove(&key);
            } else {
                let value = pattern(round * 1000 + i, 2048);
                batch.put("churn", key.clone(), value.clone());
                model.insert(key, value);
            }
        }
        engine.write(batch, Durability::Immediate).expect("write");
    }
    engine.compact().expect("compact");
    let want: Vec<_> = model.into_iter().collect();
    assert_eq!(all(engine.as_ref(), "churn"), want);
    put(engine.as_ref(), "churn", b"after", b"compaction");
    close(engine);
    let engine = open(dir.path());
    let mut got = all(engine.as_ref(), "churn");
    assert_eq!(got.pop(), Some((b"after".to_vec(), b"compaction".to_vec())));
    assert_eq!(got, want);
}

pub fn concurrent_writers(open: Open<'_>) {
    const THREADS: u64 = 4;
    const BATCHES: u64 = 50;
    let dir = TempDir::new("concurrent");
    let engine = open(dir.path());
    thread::scope(|s| {
        for t in 0..THREADS {
            let engine = &engine;
            s.spawn(move || {
                for b in 0..BATCHES {
                    let n = t * BATCHES + b;
                    let mut batch = Batch::new();
                    batch
                        .put("items", n.to_be_bytes().to_vec(), pattern(n, 128))
                        .put(
                            "counts",
                            t.to_be_bytes().to_vec(),
                            (b + 1).to_be_bytes().to_vec(),
                        );
                    let durability = if b % 10 == 9 {
                        Durability::Immediate
                    } else {
                        Durability::Deferred
                    };
                    engine.write(batch, durability).expect("write");
                    // Readers run alongside writers.
                    assert_eq!(
                        engine.get("items", &n.to_be_bytes()).expect("get"),
                        Some(pattern(n, 128))
                    );
                }
            });
        }
    });
    let items = all(engine.as_ref(), "items");
    assert_eq!(items.len() as u64, THREADS * BATCHES);
    for (k, v) in items {
        let n = u64::from_be_bytes(k.as_slice().try_into().expect("8 bytes"));
        assert_eq!(v, pattern(n, 128));
    }
    for t in 0..THREADS {
        assert_eq!(
            get(engine.as_ref(), "counts", &t.to_be_bytes()),
            Some(BATCHES.to_be_bytes().to_vec())
        );
    }
}

/// A store the crash test kills writers of: one engine, or the split the agent keeps its
/// state in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashStore {
    Engine(crate::EngineKind),
    /// redb in `main/` and the log engine in `side/`, with the crash writer's keyspace
    /// "window" referenced and "copy" written after the main engine (see [`crate::Split`]).
    Split,
}

impl CrashStore {
    pub fn name(self) -> &'static str {
        match self {
            CrashStore::Engine(kind) => kind.as_str(),
            CrashStore::Split => "split",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "split" => Ok(CrashStore::Split),
            other => other.parse().map(CrashStore::Engine),
        }
    }

    pub fn open(self, dir: &Path) -> Result<Arc<dyn Engine>, StoreError> {
        match self {
            CrashStore::Engine(kind) => crate::open(kind, dir),
            CrashStore::Split => {
                let main = crate::open(crate::EngineKind::Redb, &dir.join("main"))?;
                let side = crate::open(crate::EngineKind::Log, &dir.join("side"))?;
                Ok(Arc::new(crate::Split::open(
                    main,
                    side,
                    &["window"],
                    &["copy"],
                )?))
            }
        }
    }
}

/// The value the crash writer stores under log sequence number `seq`: a header naming `seq`,
/// the writer's seed and the payload length, then 2–8 KiB derived from all three. A value cut
/// short, or glued together from two writes, fails [`check_crash_record`].
pub fn crash_record(seq: u64, seed: u64) -> Vec<u8> {
    let len = 2048
        + (pattern(seq ^ seed, 8)
            .iter()
            .map(|b| *b as usize)
            .sum::<usize>()
            * 3);
    let mut record = Vec::with_capacity(20 + len);
    record.extend_from_slice(&seq.to_be_bytes());
    record.extend_from_slice(&seed.to_be_bytes());
    record.extend_from_slice(&(len as u32).to_be_bytes());
    record.extend_from_slice(&pattern(seq.rotate_left(32) ^ seed, len));
    record
}

/// Checks that `record` is exactly what [`crash_record`] wrote for `seq`.
pub fn check_crash_record(seq: u64, record: &[u8]) -> Result<(), String> {
    let Some(header) = record.get(..20) else {
        return Err(format!(
            "record {seq}: {} bytes, shorter than its header",
            record.len()
        ));
    };
    let field = |r: std::ops::Range<usize>| {
        header[r]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    };
    let (stored_seq, seed) = (field(0..8), field(8..16));
    if stored_seq != seq {
        return Err(format!(
            "record under key {seq} names sequence number {stored_seq}"
        ));
    }
    if record != crash_record(seq, seed).as_slice() {
        return Err(format!(
            "record {seq} (seed {seed}, {} bytes) is torn or altered",
            record.len()
        ));
    }
    Ok(())
}

/// A put with a [`Link`] stores its value whatever the link says: matching bytes, different
/// bytes or no source, through deleting the source, reopening and compaction.
pub fn linked_puts_store_their_value(open: Open<'_>) {
    let dir = TempDir::new("linked");
    let engine = open(dir.path());
    let body = pattern(1, 10_000);
    let mut source = b"0123456789".to_vec();
    source.extend_from_slice(&body);
    put(engine.as_ref(), "src", b"entry", &source);
    let link = |key: &[u8]| Link {
        keyspace: "src",
        key: key.to_vec(),
        offset: 10,
        head: 2,
    };
    let with_head = |tail: &[u8]| [&b"HD"[..], tail].concat();
    let same = with_head(&body);
    let other = with_head(&pattern(2, 10_000));
    let mut batch = Batch::new();
    batch.put_linked("b", b"same".to_vec(), same.clone(), Some(link(b"entry")));
    batch.put_linked("b", b"other".to_vec(), other.clone(), Some(link(b"entry")));
    batch.put_linked("b", b"lost".to_vec(), same.clone(), Some(link(b"missing")));
    // Longer than what the source holds from the offset on.
    let long = with_head(&[body.clone(), b"more".to_vec()].concat());
    batch.put_linked("b", b"long".to_vec(), long.clone(), Some(link(b"entry")));
    engine.write(batch, Durability::Immediate).expect("write");
    let want = |engine: &dyn Engine| {
        assert_eq!(get(engine, "b", b"same").as_deref(), Some(&same[..]));
        assert_eq!(get(engine, "b", b"other").as_deref(), Some(&other[..]));
        assert_eq!(get(engine, "b", b"lost").as_deref(), Some(&same[..]));
        assert_eq!(get(engine, "b", b"long").as_deref(), Some(&long[..]));
        assert_eq!(
            engine.get_prefix("b", b"same", 2).expect("get_prefix"),
            Some(b"HD".to_vec())
        );
        assert_eq!(
            engine.get_prefix("b", b"same", 5).expect("get_prefix"),
            Some(same[..5].to_vec())
        );
        let scanned = engine
            .scan("b", Bound::Unbounded, Bound::Unbounded, usize::MAX, false)
            .expect("scan");
        assert_eq!(scanned.len(), 4);
        assert!(scanned.contains(&(b"same".to_vec(), same.clone())));
    };
    want(engine.as_ref());
    delete(engine.as_ref(), "src", b"entry");
    want(engine.as_ref());
    close(engine);
    let engine = open(dir.path());
    want(engine.as_ref());
    engine.compact().expect("compact");
    want(engine.as_ref());
    close(engine);
    let engine = open(dir.path());
    want(engine.as_ref());
    assert_eq!(get(engine.as_ref(), "src", b"entry"), None);
}

/// `write_ops` writes borrowed operations as `write` writes a batch: in order, atomically
/// across keyspaces, linked puts stored whole, an invalid keyspace refusing all of them, and
/// `Deferred` ones kept across a reopen after a flush.
pub fn borrowed_writes(open: Open<'_>) {
    let dir = TempDir::new("borrowed");
    let body = pattern(3, 5_000);
    let source = [&b"0123"[..], &body].concat();
    let value = [&b"H"[..], &body].concat();
    let link = Link {
        keyspace: "src",
        key: b"entry".to_vec(),
        offset: 4,
        head: 1,
    };
    {
        let engine = open(dir.path());
        let e = engine.as_ref();
        put(e, "a", b"existing", b"old");
        put(e, "src", b"entry", &source);
        let put_op = |keyspace, key, value| OpRef::Put {
            keyspace,
            key,
            value,
            link: None,
        };
        let refused = [
            put_op("a", b"k", b"v"),
            put_op("Not A Keyspace", b"k", b"v"),
        ];
        let err = e
            .write_ops(&refused, Durability::Immediate)
            .expect_err("an invalid keyspace refuses every operation");
        assert!(matches!(err, StoreError::InvalidKeyspace(_)), "{err}");
        assert_eq!(get(e, "a", b"k"), None, "nothing applied");
        let ops = [
            put_op("a", b"gone", b"x"),
            OpRef::Delete {
                keyspace: "a",
                key: b"gone",
            },
            OpRef::Delete {
                keyspace: "a",
                key: b"existing",
            },
            put_op("a", b"twice", b"first"),
            put_op("b", b"other", b"o"),
            put_op("a", b"twice", b"second"),
            OpRef::Put {
                keyspace: "b",
                key: b"linked",
                value: &value,
                link: Some(&link),
            },
        ];
        e.write_ops(&ops, Durability::Deferred).expect("write_ops");
        let want = |e: &dyn Engine| {
            assert_eq!(get(e, "a", b"gone"), None);
            assert_eq!(get(e, "a", b"existing"), None);
            assert_eq!(get(e, "a", b"twice").as_deref(), Some(&b"second"[..]));
            assert_eq!(get(e, "b", b"other").as_deref(), Some(&b"o"[..]));
            assert_eq!(get(e, "b", b"linked").as_deref(), Some(&value[..]));
        };
        want(e);
        e.flush().expect("flush");
        // The linked value outlives its source.
        e.write_ops(
            &[OpRef::Delete {
                keyspace: "src",
                key: b"entry",
            }],
            Durability::Immediate,
        )
        .expect("delete the source");
        want(e);
    }
    let engine = open(dir.path());
    assert_eq!(get(engine.as_ref(), "src", b"entry"), None);
    assert_eq!(
        get(engine.as_ref(), "b", b"linked").as_deref(),
        Some(&value[..])
    );
    assert_eq!(
        get(engine.as_ref(), "a", b"twice").as_deref(),
        Some(&b"second"[..])
    );
}
