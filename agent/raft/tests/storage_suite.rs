//! openraft's own storage test suite, on both engines.
//!
//! Every case gets a fresh engine in a temporary directory whose neighbouring shards already
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

struct Builder(EngineKind);

impl StoreBuilder<TypeConfig, LogStore, StateMachine<KvApp>, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine<KvApp>), StorageError> {
        let dir = TempDir::new(&format!("suite-{}", self.0));
        let engine = tern_store::open(self.0, dir.path()).expect("open the engine");
        let storage = Storage::new(engine);
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

#[test]
fn suite_on_redb() {
    Suite::test_all(Builder(EngineKind::Redb)).unwrap();
}

#[test]
fn suite_on_sled() {
    Suite::test_all(Builder(EngineKind::Sled)).unwrap();
}
