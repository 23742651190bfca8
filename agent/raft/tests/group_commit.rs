//! The group commit's pending overlay: appends are readable at once, acknowledged only after
//! the durable write that stored them, never resurrected by a round that raced a truncation,
//! and lost (unacknowledged) when that write fails. Also the two-engine layout: the state
//! engine's periodic flush and shard deletion on both engines.

use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, RaftLogReader};
use tern_raft::testing::{KvApp, TempDir};
use tern_raft::typ::LogId;
use tern_raft::{LogStore, Storage, TypeConfig, keys};
use tern_store::{Batch, Durability, Engine, EngineKind, KeyValue, Op, Space, StoreError};

const SHARD: u32 = 1;

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Blank,
    }
}

fn ids(entries: Vec<Entry<TypeConfig>>) -> Vec<LogId> {
    entries.into_iter().map(|e| e.log_id).collect()
}

fn range(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<LogId> {
    indexes.map(|i| log_id(term, 1, i)).collect()
}

/// What a gate lets through, and what it saw.
#[derive(Default)]
struct Gate {
    open: bool,
    fail: bool,
    /// Durable writes that store log entries: begun (maybe waiting), and finished.
    started: usize,
    written: usize,
}

/// Forwards to an engine, but holds every durable write that stores log entries (a
/// group-commit round) until the test opens the gate, and can make them fail.
struct GatedEngine {
    inner: Arc<dyn Engine>,
    gate: Mutex<Gate>,
    changed: Condvar,
    /// Flushes and `Immediate` writes other than log appends: each makes the engine durable.
    flushes: AtomicUsize,
    /// Scans of the log's entries.
    log_scans: AtomicUsize,
}

impl GatedEngine {
    fn new(inner: Arc<dyn Engine>, open: bool) -> Arc<Self> {
        Arc::new(Self {
            inner,
            gate: Mutex::new(Gate {
                open,
                ..Gate::default()
            }),
            changed: Condvar::new(),
            flushes: AtomicUsize::new(0),
            log_scans: AtomicUsize::new(0),
        })
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) {
        self.gate().open = true;
        self.changed.notify_all();
    }

    fn fail(&self) {
        self.gate().fail = true;
    }

    fn started(&self) -> usize {
        self.gate().started
    }

    fn written(&self) -> usize {
        self.gate().written
    }
}

impl Engine for GatedEngine {
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
        if keyspace == keys::RAFT_LOG {
            self.log_scans.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.scan(keyspace, start, end, limit, reverse)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        let stores_entries = batch
            .ops()
            .iter()
            .any(|op| matches!(op, Op::Put { keyspace, .. } if *keyspace == keys::RAFT_LOG));
        if !stores_entries {
            if durability == Durability::Immediate {
                self.flushes.fetch_add(1, Ordering::SeqCst);
            }
            return self.inner.write(batch, durability);
        }
        assert_eq!(
            durability,
            Durability::Immediate,
            "log entries are written durably"
        );
        let mut gate = self.gate();
        gate.started += 1;
        while !gate.open {
            gate = self
                .changed
                .wait(gate)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if gate.fail {
            return Err(StoreError::Engine("injected crash".into()));
        }
        self.inner.write(batch, durability)?;
        gate.written += 1;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }

    fn space(&self) -> Result<Space, StoreError> {
        self.inner.space()
    }

    fn compact(&self) -> Result<(), StoreError> {
        self.inner.compact()
    }
}

/// The test's hold on a gate; opens it when dropped, so a failing test unwinds rather than
/// waiting forever for the group-commit thread to stop.
struct GateHandle(Arc<GatedEngine>);

impl std::ops::Deref for GateHandle {
    type Target = GatedEngine;

    fn deref(&self) -> &GatedEngine {
        &self.0
    }
}

impl Drop for GateHandle {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A node's engines: the log behind a gate, the state plain.
struct Node {
    dir: TempDir,
    kind: EngineKind,
}

impl Node {
    fn new(kind: EngineKind, label: &str) -> Self {
        Self {
            dir: TempDir::new(&format!("{label}-{kind}")),
            kind,
        }
    }

    fn open(&self, name: &str) -> Arc<dyn Engine> {
        tern_store::open(self.kind, &self.dir.path().join(name)).expect("open the engine")
    }

    /// Storage whose log engine is `gated` around the log files.
    fn storage(&self, open_gate: bool) -> (Storage, GateHandle) {
        let gated = GatedEngine::new(self.open("log"), open_gate);
        let storage = Storage::with_engines(gated.clone(), self.open("state"));
        (storage, GateHandle(gated))
    }

    /// The shard's log as the files hold it, read by a fresh storage.
    async fn reopened_log(&self) -> (Vec<LogId>, Option<LogId>) {
        let storage = Storage::with_engines(self.open("log"), self.open("state"));
        let mut log = storage.log_store(SHARD);
        let entries = ids(log.try_get_log_entries(..).await.unwrap());
        let last = log.get_log_state().await.unwrap().last_log_id;
        (entries, last)
    }
}

/// Stored entries of the shard in `engine`, not counting the overlay.
fn stored(engine: &dyn Engine) -> usize {
    let (start, end) = keys::shard_range(SHARD);
    engine
        .scan(
            keys::RAFT_LOG,
            start.as_ref().map(Vec::as_slice),
            end.as_ref().map(Vec::as_slice),
            usize::MAX,
            false,
        )
        .unwrap()
        .len()
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Appends `entries` in a task; it finishes when openraft would hear they are flushed.
fn spawn_append(
    mut log: LogStore,
    entries: Vec<Entry<TypeConfig>>,
) -> tokio::task::JoinHandle<Result<LogStore, tern_raft::typ::StorageError>> {
    tokio::spawn(async move { log.blocking_append(entries).await.map(|()| log) })
}

/// Not finished after a while: nothing told it to finish.
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>, what: &str) {
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_readable_at_once_and_acknowledged_after_the_durable_write() {
    for kind in EngineKind::ALL {
        let node = Node::new(kind, "overlay-read");
        let (storage, gated) = node.storage(false);
        let mut observer = storage.log_store(SHARD);
        let mut reader = observer.get_log_reader().await;

        let first = spawn_append(
            storage.log_store(SHARD),
            (1..=3).map(|i| blank(1, i)).collect(),
        );
        eventually("the round takes 1..=3", || gated.started() == 1).await;
        // Appended while that round waits: pending, not yet taken by any round.
        let second = spawn_append(
            storage.log_store(SHARD),
            (4..=5).map(|i| blank(1, i)).collect(),
        );
        let mut seen = Vec::new();
        for _ in 0..1000 {
            seen = ids(reader.try_get_log_entries(..).await.unwrap());
            if seen.len() == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            seen,
            range(1, 1..=5),
            "{kind}: readable before any is durable"
        );
        let limited = reader.limited_get_log_entries(2, 5).await.unwrap();
        assert_eq!(ids(limited), range(1, 2..=4), "{kind}");
        let state = observer.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 5)), "{kind}");
        assert_eq!(
            stored(&*gated.inner),
            0,
            "{kind}: nothing is in the engine yet"
        );

        still_waiting(&first, "acknowledged before its durable write").await;
        still_waiting(&second, "acknowledged before its durable write").await;
        gated.open();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(gated.written(), 2, "{kind}: one round per group");
        assert_eq!(
            stored(&*gated.inner),
            5,
            "{kind}: acknowledged means stored"
        );
        assert_eq!(
            ids(reader.try_get_log_entries(..).await.unwrap()),
            range(1, 1..=5),
            "{kind}: read from the engine once written"
        );
        drop((observer, reader, storage, gated));
        assert_eq!(
            node.reopened_log().await,
            (range(1, 1..=5), Some(log_id(1, 1, 5))),
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_entries_are_read_from_memory_until_truncated_or_purged() {
    for kind in EngineKind::ALL {
        let node = Node::new(kind, "recent");
        let (storage, gated) = node.storage(true);
        let mut log = storage.log_store(SHARD);
        let mut reader = log.get_log_reader().await;
        log.blocking_append((1..=10).map(|i| blank(1, i)))
            .await
            .unwrap();
        assert_eq!(stored(&*gated.inner), 10, "{kind}: written");
        let scans = gated.log_scans.load(Ordering::SeqCst);
        assert_eq!(
            ids(reader.try_get_log_entries(3..=7).await.unwrap()),
            range(1, 3..=7)
        );
        let limited = reader.limited_get_log_entries(8, 11).await.unwrap();
        assert_eq!(ids(limited), range(1, 8..=10), "{kind}");
        assert_eq!(
            gated.log_scans.load(Ordering::SeqCst),
            scans,
            "{kind}: entries just written are read from memory"
        );

        // A new leader's log differs from index 6 on: the written entries there are gone
        // from memory too, and the new ones are read.
        log.truncate(log_id(1, 1, 6)).await.unwrap();
        assert_eq!(
            ids(reader.try_get_log_entries(..).await.unwrap()),
            range(1, 1..=5)
        );
        log.blocking_append((6..=7).map(|i| blank(2, i)))
            .await
            .unwrap();
        let want = [range(1, 1..=5), range(2, 6..=7)].concat();
        assert_eq!(ids(reader.try_get_log_entries(..).await.unwrap()), want);
        assert_eq!(
            ids(reader.try_get_log_entries(4..).await.unwrap()),
            want[3..]
        );

        // A purge drops them from memory as from the engine.
        log.purge(log_id(1, 1, 3)).await.unwrap();
        assert_eq!(
            ids(reader.try_get_log_entries(..).await.unwrap()),
            want[3..]
        );
        assert_eq!(
            ids(reader.try_get_log_entries(1..=4).await.unwrap()),
            want[3..4]
        );
        drop((log, reader, storage, gated));
        assert_eq!(
            node.reopened_log().await,
            (want[3..].to_vec(), Some(log_id(2, 1, 7))),
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncation_during_a_round_leaves_no_stale_entry() {
    for kind in EngineKind::ALL {
        let node = Node::new(kind, "overlay-truncate");
        let (storage, gated) = node.storage(false);
        let mut reader = storage.log_store(SHARD).get_log_reader().await;

        // 1..=5 are taken by a round that waits at the gate; 6..=8 are pending behind it.
        let taken = spawn_append(
            storage.log_store(SHARD),
            (1..=5).map(|i| blank(1, i)).collect(),
        );
        eventually("the round takes 1..=5", || gated.started() == 1).await;
        let pending = spawn_append(
            storage.log_store(SHARD),
            (6..=8).map(|i| blank(1, i)).collect(),
        );
        for _ in 0..1000 {
            if reader.try_get_log_entries(..).await.unwrap().len() == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        // A new leader's log differs from index 4 on.
        let mut log = storage.log_store(SHARD);
        let truncate = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Handle::current();
            runtime.block_on(async move {
                log.truncate(log_id(1, 1, 4)).await.expect("truncate");
                log
            })
        });
        still_waiting(&truncate, "truncated while a round was writing").await;
        gated.open();
        let mut log = truncate.await.unwrap();
        taken.await.unwrap().unwrap();
        pending.await.unwrap().unwrap();
        assert_eq!(
            ids(reader.try_get_log_entries(..).await.unwrap()),
            range(1, 1..=3),
            "{kind}: truncated entries stay gone"
        );

        log.blocking_append((4..=5).map(|i| blank(2, i)))
            .await
            .unwrap();
        let want = [range(1, 1..=3), range(2, 4..=5)].concat();
        assert_eq!(ids(reader.try_get_log_entries(..).await.unwrap()), want);
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(2, 1, 5))
        );
        drop((log, reader, storage, gated));
        assert_eq!(
            node.reopened_log().await,
            (want, Some(log_id(2, 1, 5))),
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_drops_pending_entries_up_to_its_index() {
    let node = Node::new(EngineKind::Redb, "overlay-purge");
    let (storage, gated) = node.storage(false);
    let taken = spawn_append(
        storage.log_store(SHARD),
        (1..=5).map(|i| blank(1, i)).collect(),
    );
    eventually("the round takes 1..=5", || gated.started() == 1).await;
    let pending = spawn_append(
        storage.log_store(SHARD),
        (6..=8).map(|i| blank(1, i)).collect(),
    );
    let mut log = storage.log_store(SHARD);
    for _ in 0..1000 {
        if log.try_get_log_entries(..).await.unwrap().len() == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let purge = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Handle::current();
        runtime.block_on(async move {
            log.purge(log_id(1, 1, 7)).await.expect("purge");
            log
        })
    });
    still_waiting(&purge, "purged while a round was writing").await;
    gated.open();
    let mut log = purge.await.unwrap();
    taken.await.unwrap().unwrap();
    pending.await.unwrap().unwrap();
    assert_eq!(
        ids(log.try_get_log_entries(..).await.unwrap()),
        range(1, 8..=8)
    );
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 7)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 8)));
    drop((log, storage, gated));
    assert_eq!(
        node.reopened_log().await,
        (range(1, 8..=8), Some(log_id(1, 1, 8)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_durably_written_entries_survive_a_crash() {
    for kind in EngineKind::ALL {
        let node = Node::new(kind, "overlay-crash");
        let (storage, gated) = node.storage(true);
        let mut log = storage.log_store(SHARD);
        log.blocking_append((1..=3).map(|i| blank(1, i)))
            .await
            .unwrap();

        // The disk fails: the append is refused (openraft would stop the shard) ...
        gated.fail();
        log.blocking_append((4..=5).map(|i| blank(1, i)))
            .await
            .expect_err("the durable write fails");
        // ... while readers still see the log as appended.
        assert_eq!(
            ids(log.try_get_log_entries(..).await.unwrap()),
            range(1, 1..=5),
            "{kind}"
        );
        // The process dies; the last round on closing fails as well.
        drop((log, storage, gated));
        assert_eq!(
            node.reopened_log().await,
            (range(1, 1..=3), Some(log_id(1, 1, 3))),
            "{kind}: only acknowledged entries are on disk"
        );
    }
}

#[tokio::test]
async fn the_committed_log_id_is_read_at_once_and_written_with_the_next_round() {
    let node = Node::new(EngineKind::Redb, "overlay-committed");
    {
        let (storage, _gated) = node.storage(true);
        let mut log = storage.log_store(SHARD);
        log.save_committed(Some(log_id(1, 1, 2))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 2)));
        log.blocking_append((1..=3).map(|i| blank(1, i)))
            .await
            .unwrap();
        log.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
    }
    // Written by the round the closing storage runs.
    let storage = Storage::with_engines(node.open("log"), node.open("state"));
    let mut log = storage.log_store(SHARD);
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_engine_is_flushed_when_written() {
    let node = Node::new(EngineKind::Redb, "state-flush");
    let state = GatedEngine::new(node.open("state"), true);
    let storage = Storage::with_engines(node.open("log"), state.clone());
    let mut sm = storage.state_machine(SHARD, Arc::new(KvApp)).unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state.flushes.load(Ordering::SeqCst), 0, "nothing to flush");

    let put = Entry::<TypeConfig> {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Normal(KvApp::put("k", "v")),
    };
    sm.apply([put]).await.unwrap();
    eventually("a flush after the write", || {
        state.flushes.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        state.flushes.load(Ordering::SeqCst),
        1,
        "one flush per write burst"
    );
    drop((sm, storage, state));

    let storage = Storage::with_engines(node.open("log"), node.open("state"));
    assert_eq!(
        KvApp::get(&**storage.engine(), SHARD, b"k"),
        Some(b"v".to_vec())
    );
}

#[tokio::test]
async fn deleting_a_shard_cleans_both_engines() {
    let node = Node::new(EngineKind::Sled, "delete-two");
    let (storage, _gated) = node.storage(true);
    for shard in [SHARD, SHARD + 1] {
        let mut log = storage.log_store(shard);
        log.save_vote(&openraft::Vote::new(1, 1)).await.unwrap();
        log.blocking_append((1..=3).map(|i| blank(1, i)))
            .await
            .unwrap();
        let mut sm = storage.state_machine(shard, Arc::new(KvApp)).unwrap();
        let put = Entry::<TypeConfig> {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Normal(KvApp::put("k", "v")),
        };
        sm.apply([put]).await.unwrap();
    }
    storage.delete_shard(SHARD, &[KvApp::KEYSPACE]).unwrap();

    let (start, end) = keys::shard_range(SHARD);
    for (engine, keyspaces) in [
        (storage.log_engine(), &[keys::RAFT_LOG, keys::RAFT_META][..]),
        (storage.engine(), &[keys::SM_META, KvApp::KEYSPACE][..]),
    ] {
        for &keyspace in keyspaces {
            let left = engine
                .scan(
                    keyspace,
                    start.as_ref().map(Vec::as_slice),
                    end.as_ref().map(Vec::as_slice),
                    10,
                    false,
                )
                .unwrap();
            assert!(left.is_empty(), "shard left keys in {keyspace}");
        }
    }
    let mut other = storage.log_store(SHARD + 1);
    assert_eq!(other.try_get_log_entries(..).await.unwrap().len(), 3);
    assert_eq!(
        KvApp::get(&**storage.engine(), SHARD + 1, b"k"),
        Some(b"v".to_vec())
    );
}
