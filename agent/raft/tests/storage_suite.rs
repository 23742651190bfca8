//! openraft's own storage test suite, on every engine, with logs and state on one engine
//! (`Storage::new`) and on two (`Storage::with_engines`), including the agent's layout: the
//! logs on the log engine, the state on redb.
//!
//! Every case gets fresh engines in a temporary directory whose neighbouring shards already
//! hold a log, a vote and applied state: the suite expects an empty store, so it also proves
//! that a shard sees nothing of the others.

use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite, blank_ent, log_id};
use openraft::{Entry, EntryPayload, Vote};
use tern_raft::testing::{KvApp, TempDir};
use tern_raft::typ::StorageError;
use tern_raft::{LogStore, StateMachine, Storage, TypeConfig};
use tern_store::EngineKind;

const SHARD: u32 = 7;

struct Builder {
    kind: EngineKind,
    two_engines: bool,
    /// With two engines, the logs' engine when it differs from `kind`.
    log_kind: Option<EngineKind>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine<KvApp>, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine<KvApp>), StorageError> {
        let dir = TempDir::new(&format!("suite-{}-{}", self.kind, self.two_engines));
        let open = |kind: EngineKind, name: &str| {
            tern_store::open(kind, &dir.path().join(name)).expect("open the engine")
        };
        let storage = if self.two_engines {
            Storage::with_engines(
                open(self.log_kind.unwrap_or(self.kind), "log"),
                open(self.kind, "state"),
            )
        } else {
            Storage::new(open(self.kind, "store"))
        };
        for neighbour in [SHARD - 1, SHARD + 1] {
            fill(&storage, neighbour).await?;
        }
        let sm = storage
            .state_machine(SHARD, Arc::new(KvApp))
            .expect("state machine");
        Ok((dir, storage.log_store(SHARD), sm))
    }
}

/// Gives `shard` a vote, log entries 0..=20 and applied state.
async fn fill(storage: &Storage, shard: u32) -> Result<(), StorageError> {
    let mut log = storage.log_store(shard);
    log.save_vote(&Vote::new(9, 9)).await?;
    log.blocking_append((0..=20).map(|i| blank_ent::<TypeConfig>(9, 9, i)))
        .await?;
    log.save_committed(Some(log_id(9, 9, 20))).await?;
    let mut sm = storage.state_machine(shard, Arc::new(KvApp)).unwrap();
    let put = Entry::<TypeConfig> {
        log_id: log_id(9, 9, 21),
        payload: EntryPayload::Normal(KvApp::put("neighbour", "data")),
    };
    sm.apply([put]).await?;
    Ok(())
}

fn suite(kind: EngineKind, two_engines: bool) {
    Suite::test_all(Builder {
        kind,
        two_engines,
        log_kind: None,
    })
    .unwrap();
}

#[test]
fn suite_on_redb() {
    suite(EngineKind::Redb, false);
}

#[test]
fn suite_on_sled() {
    suite(EngineKind::Sled, false);
}

#[test]
fn suite_on_redb_with_two_engines() {
    suite(EngineKind::Redb, true);
}

#[test]
fn suite_on_sled_with_two_engines() {
    suite(EngineKind::Sled, true);
}

#[test]
fn suite_on_log() {
    suite(EngineKind::Log, false);
}

#[test]
fn suite_on_log_engine_for_logs_and_redb_for_state() {
    Suite::test_all(Builder {
        kind: EngineKind::Redb,
        two_engines: true,
        log_kind: Some(EngineKind::Log),
    })
    .unwrap();
}
