//! Tern's own storage tests: crash atomicity of apply, snapshot transfer between engines,
//! and isolation of shards that share one engine.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, Vote};
use tern_raft::testing::{KvApp, TempDir};
use tern_raft::typ::{LogId, StoredMembership};
use tern_raft::{Node, Storage, TypeConfig, keys};
use tern_store::suite::Hooked;
use tern_store::{Engine, EngineKind, StoreError};

fn put(index: u64, key: &str, value: &[u8]) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(KvApp::put(key, value)),
    }
}

fn delete(index: u64, key: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(KvApp::delete(key)),
    }
}

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Blank,
    }
}

fn membership(index: u64) -> (Entry<TypeConfig>, StoredMembership) {
    let nodes: BTreeMap<u64, Node> = (1..=3)
        .map(|id| {
            let node = Node {
                rpc_addr: format!("10.0.0.{id}:7000"),
            };
            (id, node)
        })
        .collect();
    let members = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
    let entry = Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Membership(members.clone()),
    };
    (
        entry,
        StoredMembership::new(Some(log_id(1, 1, index)), members),
    )
}

fn kv(pairs: &[(&str, &[u8])]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
        .collect()
}

fn open(kind: EngineKind, dir: &TempDir) -> Arc<dyn Engine> {
    tern_store::open(kind, dir.path()).expect("open the engine")
}

/// Applied marker and application data agree after the engine is closed and reopened, whether
/// or not the last apply got to write.
#[tokio::test]
async fn apply_is_atomic_across_a_crash() {
    for kind in EngineKind::ALL {
        let dir = TempDir::new(&format!("crash-{kind}"));
        let (member, stored_member) = membership(1);
        {
            let engine = open(kind, &dir);
            // Every write after the first three fails: a crash at that write, as far as the
            // state machine can tell.
            let allowed = AtomicUsize::new(3);
            let failing: Arc<dyn Engine> = Arc::new(Hooked::new(engine, move |_, _| {
                allowed
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .map(drop)
                    .map_err(|_| StoreError::Engine("injected crash".into()))
            }));
            let mut sm = Storage::new(failing)
                .state_machine(1, Arc::new(KvApp))
                .unwrap();
            // The fourth entry's write fails: it must leave no trace, data nor marker.
            let entries = vec![
                member.clone(),
                put(2, "a", b"1"),
                put(3, "b", b"2"),
                put(4, "a", b"changed"),
            ];
            sm.apply(entries).await.expect_err("the fourth write fails");
        }
        {
            let storage = Storage::new(open(kind, &dir));
            let mut sm = storage.state_machine(1, Arc::new(KvApp)).unwrap();
            assert_eq!(
                sm.applied_state().await.unwrap(),
                (Some(log_id(1, 1, 3)), stored_member.clone()),
                "{kind}"
            );
            assert_eq!(
                KvApp::dump(&**storage.engine(), 1),
                kv(&[("a", b"1"), ("b", b"2")]),
                "{kind}"
            );
            // openraft re-applies from the marker on: the entry is applied once, and sees the
            // state it would have seen before the crash.
            let responses = sm
                .apply([put(4, "a", b"changed"), delete(5, "b")])
                .await
                .unwrap();
            assert_eq!(KvApp::previous(&responses[0]), Some(b"1".to_vec()));
            assert_eq!(KvApp::previous(&responses[1]), Some(b"2".to_vec()));
        }
        let storage = Storage::new(open(kind, &dir));
        let mut sm = storage.state_machine(1, Arc::new(KvApp)).unwrap();
        assert_eq!(
            sm.applied_state().await.unwrap(),
            (Some(log_id(1, 1, 5)), stored_member),
            "{kind}"
        );
        assert_eq!(
            KvApp::dump(&**storage.engine(), 1),
            kv(&[("a", b"changed")]),
            "{kind}"
        );
    }
}

/// A snapshot built on one engine and installed into another (and into another shard id)
/// reproduces the application state exactly, replaces what was there, leaves other shards
/// alone, and is still the current snapshot after a restart.
#[tokio::test]
async fn snapshot_moves_state_between_engines() {
    let leader_dir = TempDir::new("snap-leader");
    let follower_dir = TempDir::new("snap-follower");
    let leader = Storage::new(open(EngineKind::Redb, &leader_dir));
    let mut leader_sm = leader.state_machine(1, Arc::new(KvApp)).unwrap();

    let (member, stored_member) = membership(1);
    let mut entries = vec![member];
    // Larger than one 1 MiB snapshot chunk, with empty and binary values.
    let big = vec![0xab; 1_500_000];
    entries.push(put(2, "big", &big));
    entries.push(put(3, "empty", b""));
    for i in 4..200 {
        entries.push(put(i, &format!("key-{i:03}"), &i.to_be_bytes()));
    }
    entries.push(delete(200, "key-100"));
    leader_sm.apply(entries).await.unwrap();
    let want = KvApp::dump(&**leader.engine(), 1);
    assert_eq!(want.len(), 197);

    let built = leader_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, 200)));
    assert_eq!(built.meta.last_membership, stored_member);
    let current = leader_sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());

    // The follower is on sled, serves the shard as 5, and has stale state for it.
    {
        let follower = Storage::new(open(EngineKind::Sled, &follower_dir));
        let mut stale = follower.state_machine(5, Arc::new(KvApp)).unwrap();
        stale
            .apply([put(1, "stale", b"x"), put(2, "key-100", b"old")])
            .await
            .unwrap();
        let mut neighbour = follower.state_machine(4, Arc::new(KvApp)).unwrap();
        neighbour.apply([put(1, "other", b"y")]).await.unwrap();

        let mut sm = follower.state_machine(5, Arc::new(KvApp)).unwrap();
        let mut receiving = sm.begin_receiving_snapshot().await.unwrap();
        *receiving = *current.snapshot;
        sm.install_snapshot(&current.meta, receiving).await.unwrap();

        assert_eq!(KvApp::dump(&**follower.engine(), 5), want);
        assert_eq!(
            sm.applied_state().await.unwrap(),
            (Some(log_id(1, 1, 200)), stored_member.clone())
        );
        assert_eq!(KvApp::dump(&**follower.engine(), 4), kv(&[("other", b"y")]));
    }
    let follower = Storage::new(open(EngineKind::Sled, &follower_dir));
    let mut sm = follower.state_machine(5, Arc::new(KvApp)).unwrap();
    let after_restart = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(after_restart.meta, built.meta);
    assert_eq!(after_restart.snapshot.get_ref(), built.snapshot.get_ref());
    assert_eq!(KvApp::dump(&**follower.engine(), 5), want);

    // A smaller snapshot later replaces the stored one, chunks and all.
    sm.apply([delete(201, "big")]).await.unwrap();
    let smaller = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert!(smaller.snapshot.get_ref().len() < 1 << 20);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, smaller.meta);
    assert_eq!(current.snapshot.get_ref(), smaller.snapshot.get_ref());
}

/// A snapshot whose metadata does not match its data, or that is cut short, is refused and
/// changes nothing.
#[tokio::test]
async fn a_bad_snapshot_is_refused() {
    let dir = TempDir::new("bad-snapshot");
    let storage = Storage::new(open(EngineKind::Redb, &dir));
    let mut sm = storage.state_machine(1, Arc::new(KvApp)).unwrap();
    sm.apply([put(1, "k", b"v")]).await.unwrap();
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let mut other = storage.state_machine(2, Arc::new(KvApp)).unwrap();
    other.apply([put(1, "mine", b"keep")]).await.unwrap();

    let mut wrong_meta = snapshot.meta.clone();
    wrong_meta.last_log_id = Some(log_id(1, 1, 9));
    let data = snapshot.snapshot.get_ref().clone();
    let result = other
        .install_snapshot(&wrong_meta, Box::new(std::io::Cursor::new(data.clone())))
        .await;
    assert!(result.is_err());

    let cut = data[..data.len() - 1].to_vec();
    let result = other
        .install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(cut)))
        .await;
    assert!(result.is_err());

    assert_eq!(
        KvApp::dump(&**storage.engine(), 2),
        kv(&[("mine", b"keep")])
    );
    assert_eq!(
        other.applied_state().await.unwrap().0,
        Some(log_id(1, 1, 1))
    );
}

/// Two shards on one engine never see each other's log, vote or state; purging, truncating
/// and deleting one leaves the other intact.
#[tokio::test]
async fn shards_on_one_engine_are_isolated() {
    for kind in EngineKind::ALL {
        let dir = TempDir::new(&format!("shards-{kind}"));
        let storage = Storage::new(open(kind, &dir));
        let engine = storage.engine().clone();
        let mut log1 = storage.log_store(1);
        let mut log2 = storage.log_store(2);

        log1.save_vote(&Vote::new(3, 1)).await.unwrap();
        log2.save_vote(&Vote::new(5, 2)).await.unwrap();
        log1.blocking_append((1..=10).map(|i| blank(3, i)))
            .await
            .unwrap();
        log2.blocking_append((1..=10).map(|i| blank(5, i)))
            .await
            .unwrap();

        log1.purge(log_id(3, 1, 5)).await.unwrap();
        log2.truncate(log_id(5, 1, 8)).await.unwrap();

        let state1 = log1.get_log_state().await.unwrap();
        assert_eq!(state1.last_purged_log_id, Some(log_id(3, 1, 5)), "{kind}");
        assert_eq!(state1.last_log_id, Some(log_id(3, 1, 10)), "{kind}");
        let state2 = log2.get_log_state().await.unwrap();
        assert_eq!(state2.last_purged_log_id, None, "{kind}");
        assert_eq!(state2.last_log_id, Some(log_id(5, 1, 7)), "{kind}");

        let ids = |entries: Vec<Entry<TypeConfig>>| -> Vec<LogId> {
            entries.into_iter().map(|e| e.log_id).collect()
        };
        let got1 = ids(log1.try_get_log_entries(0..100).await.unwrap());
        assert_eq!(got1, (6..=10).map(|i| log_id(3, 1, i)).collect::<Vec<_>>());
        let got2 = ids(log2.try_get_log_entries(..).await.unwrap());
        assert_eq!(got2, (1..=7).map(|i| log_id(5, 1, i)).collect::<Vec<_>>());
        assert_eq!(log1.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(log2.read_vote().await.unwrap(), Some(Vote::new(5, 2)));

        let mut sm1 = storage.state_machine(1, Arc::new(KvApp)).unwrap();
        let mut sm2 = storage.state_machine(2, Arc::new(KvApp)).unwrap();
        sm1.apply([put(1, "k", b"one"), put(2, "only-1", b"x")])
            .await
            .unwrap();
        let responses = sm2.apply([put(1, "k", b"two")]).await.unwrap();
        assert_eq!(
            KvApp::previous(&responses[0]),
            None,
            "{kind}: shard 1 leaked"
        );
        assert_eq!(KvApp::get(&*engine, 1, b"k"), Some(b"one".to_vec()));
        assert_eq!(KvApp::get(&*engine, 2, b"k"), Some(b"two".to_vec()));

        // Shard 1's snapshot holds only shard 1's keys.
        let snapshot = sm1
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut sm3 = storage.state_machine(3, Arc::new(KvApp)).unwrap();
        sm3.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(KvApp::dump(&*engine, 3), KvApp::dump(&*engine, 1), "{kind}");
        assert_eq!(KvApp::dump(&*engine, 2), kv(&[("k", b"two")]), "{kind}");

        drop((log1, sm1));
        storage.delete_shard(1, &[KvApp::KEYSPACE]).unwrap();
        for keyspace in keys::RAFT_KEYSPACES.into_iter().chain([KvApp::KEYSPACE]) {
            let (start, end) = keys::shard_range(1);
            let left = engine
                .scan(keyspace, as_ref(&start), as_ref(&end), 10, false)
                .unwrap();
            assert!(left.is_empty(), "{kind}: shard 1 left keys in {keyspace}");
        }
        let got2 = ids(log2.try_get_log_entries(..).await.unwrap());
        assert_eq!(got2.len(), 7, "{kind}");
        assert_eq!(KvApp::dump(&*engine, 2), kv(&[("k", b"two")]), "{kind}");
        assert_eq!(KvApp::dump(&*engine, 3).len(), 2, "{kind}");
        assert_eq!(sm2.applied_state().await.unwrap().0, Some(log_id(1, 1, 1)));
    }
}

/// The last shard id has no next prefix; its keys are bounded all the same.
#[tokio::test]
async fn the_highest_shard_id_works() {
    let dir = TempDir::new("max-shard");
    let storage = Storage::new(open(EngineKind::Redb, &dir));
    let mut below = storage.log_store(u32::MAX - 1);
    let mut top = storage.log_store(u32::MAX);
    below
        .blocking_append((1..=3).map(|i| blank(1, i)))
        .await
        .unwrap();
    top.blocking_append((1..=2).map(|i| blank(2, i)))
        .await
        .unwrap();
    assert_eq!(
        below.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 1, 3))
    );
    assert_eq!(
        top.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 1, 2))
    );
    assert_eq!(top.try_get_log_entries(..).await.unwrap().len(), 2);
}

/// Log entries are stored in postcard, not a self-describing format: a mail body costs
/// little more than its own bytes.
#[tokio::test]
async fn log_entries_are_compact() {
    let dir = TempDir::new("compact");
    let storage = Storage::new(open(EngineKind::Redb, &dir));
    let mut log = storage.log_store(1);
    let body = vec![b'x'; 4096];
    let entry = Entry::<TypeConfig> {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Normal(tern_raft::Request::new(body)),
    };
    log.blocking_append([entry.clone()]).await.unwrap();
    let stored = storage
        .engine()
        .get(keys::RAFT_LOG, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1])
        .unwrap()
        .expect("stored under shard ‖ index");
    assert!(stored.len() < 4096 + 16, "{} bytes", stored.len());
    assert_eq!(log.try_get_log_entries(1..2).await.unwrap(), vec![entry]);
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key),
        Bound::Excluded(key) => Bound::Excluded(key),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Replication reads a bounded number of bytes per call, but always at least one entry, and
/// reads across engine pages when entries are small.
#[tokio::test]
async fn replication_reads_are_bounded() {
    let dir = TempDir::new("limited");
    let storage = Storage::new(open(EngineKind::Sled, &dir));
    let mut log = storage.log_store(1);
    let entry = |index: u64, size: usize| Entry::<TypeConfig> {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(tern_raft::Request {
            bytes: vec![b'm'; size].into(),
        }),
    };
    log.blocking_append((1..=150).map(|i| entry(i, 10)))
        .await
        .unwrap();
    log.blocking_append((151..=250).map(|i| entry(i, 200_000)))
        .await
        .unwrap();
    log.blocking_append([entry(251, 20_000_000)]).await.unwrap();

    let mut reader = log.get_log_reader().await;
    let small = reader.limited_get_log_entries(1, 151).await.unwrap();
    assert_eq!(small.len(), 150);
    let big = reader.limited_get_log_entries(140, 260).await.unwrap();
    let indexes: Vec<u64> = big.iter().map(|e| e.log_id.index).collect();
    assert_eq!(
        indexes,
        (140..140 + indexes.len() as u64).collect::<Vec<_>>()
    );
    assert!(
        (40..120).contains(&indexes.len()),
        "{} entries",
        indexes.len()
    );
    let huge = reader.limited_get_log_entries(251, 252).await.unwrap();
    assert_eq!(huge.len(), 1);
    assert!(
        reader
            .limited_get_log_entries(5, 5)
            .await
            .unwrap()
            .is_empty()
    );
}
