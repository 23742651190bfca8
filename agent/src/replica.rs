//! The mail model as the replicated application of every shard: Raft applies committed
//! `tern_mail` commands to the shard's state machine on every replica.

use tern_raft::{Application, ShardId};
use tern_store::{Batch, Engine, StoreError};

/// `tern_mail`'s state machine behind `tern_raft`'s application trait.
#[derive(Clone, Copy, Debug, Default)]
pub struct MailApp(tern_mail::MailStateMachine);

impl Application for MailApp {
    fn keyspaces(&self) -> &'static [&'static str] {
        self.0.keyspaces()
    }

    fn apply(
        &self,
        shard: ShardId,
        engine: &dyn Engine,
        batch: &mut Batch,
        command: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.0.apply(shard, engine, batch, command)
    }
}
