//! [`Split`]: some keyspaces on a second engine, for values a B-tree stores badly.
//!
//! Message bodies are large, written once, never changed and deleted whole: on redb each one
//! costs copy-on-write pages of a tree, on the [`LogEngine`](crate::LogEngine) one append. The
//! agent keeps the shards' state on a B-tree engine (the *main* engine) and routes the body
//! keyspace to a log engine (the *side* engine).
//!
//! # What a write promises
//!
//! Two engines cannot commit one batch atomically, so a split write orders its parts such
//! that the main engine never refers to a side value that is not on disk:
//!
//! 1. the side engine's puts, made durable (`Immediate`) whatever the batch asked for;
//! 2. the main engine's part, with the batch's durability;
//! 3. the side engine's deletes, with the batch's durability.
//!
//! Operations on one side key within the batch are reduced to their final effect first, so a
//! delete followed by a put (a snapshot being installed) stores the value.
//!
//! A crash between 1 and 2 leaves side values nothing refers to yet; whoever wrote the batch
//! writes them again when it redoes its work (Raft re-applies the entries after the last
//! applied marker, which is in the main engine). A crash between 2 and 3 leaves values
//! nothing refers to any more: space, never wrong data. Readers may see a side value before
//! the main engine refers to it, never a reference without its value.
//!
//! This is weaker than [`Engine::write`]'s atomicity across keyspaces, so a `Split` is for
//! writers that keep the rule above: side values are referred to from the main engine, and
//! the batch's atomicity is needed only within the main engine.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::engine::{Batch, Durability, Engine, KeyValue, OpRef, Space, StoreError, validate_ops};

/// See the [module docs](self).
pub struct Split {
    main: Arc<dyn Engine>,
    side: Arc<dyn Engine>,
    side_keyspaces: Vec<&'static str>,
}

impl Split {
    /// Keyspaces in `side_keyspaces` on `side`, all others on `main`.
    pub fn new(
        main: Arc<dyn Engine>,
        side: Arc<dyn Engine>,
        side_keyspaces: &[&'static str],
    ) -> Self {
        Self {
            main,
            side,
            side_keyspaces: side_keyspaces.to_vec(),
        }
    }

    fn engine(&self, keyspace: &str) -> &dyn Engine {
        if self.is_side(keyspace) {
            &*self.side
        } else {
            &*self.main
        }
    }

    fn is_side(&self, keyspace: &str) -> bool {
        self.side_keyspaces.contains(&keyspace)
    }
}

impl Engine for Split {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine(keyspace).get(keyspace, key)
    }

    fn contains(&self, keyspace: &'static str, key: &[u8]) -> Result<bool, StoreError> {
        self.engine(keyspace).contains(keyspace, key)
    }

    fn get_prefix(
        &self,
        keyspace: &'static str,
        key: &[u8],
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine(keyspace).get_prefix(keyspace, key, len)
    }

    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.engine(keyspace)
            .scan(keyspace, start, end, limit, reverse)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        self.write_ops(&batch.refs(), durability)
    }

    fn write_ops(&self, ops: &[OpRef<'_>], durability: Durability) -> Result<(), StoreError> {
        validate_ops(ops)?;
        let mut main = Vec::with_capacity(ops.len());
        // The final effect on each side key, in the order the keys were first written.
        let mut order = Vec::new();
        let mut last: HashMap<(&'static str, &[u8]), OpRef<'_>> = HashMap::new();
        for op in ops {
            if !self.is_side(op.keyspace()) {
                main.push(*op);
                continue;
            }
            let place = (op.keyspace(), op.key());
            if last.insert(place, *op).is_none() {
                order.push(place);
            }
        }
        let (puts, deletes): (Vec<OpRef<'_>>, Vec<OpRef<'_>>) = order
            .into_iter()
            .map(|place| last[&place])
            .partition(|op| matches!(op, OpRef::Put { .. }));
        if !puts.is_empty() {
            self.side.write_ops(&puts, Durability::Immediate)?;
        }
        if !main.is_empty() || (durability == Durability::Immediate && deletes.is_empty()) {
            self.main.write_ops(&main, durability)?;
        }
        if !deletes.is_empty() {
            self.side.write_ops(&deletes, durability)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.side.flush()?;
        self.main.flush()
    }

    fn space(&self) -> Result<Space, StoreError> {
        let (main, side) = (self.main.space()?, self.side.space()?);
        Ok(Space {
            disk_bytes: main.disk_bytes + side.disk_bytes,
            live_bytes: main.live_bytes + side.live_bytes,
        })
    }

    fn compact(&self) -> Result<(), StoreError> {
        self.main.compact()?;
        self.side.compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{Hooked, TempDir};
    use crate::{EngineKind, open};

    fn split(dir: &std::path::Path) -> (Arc<dyn Engine>, Arc<dyn Engine>, Split) {
        let main = open(EngineKind::Redb, &dir.join("main")).unwrap();
        let side = open(EngineKind::Log, &dir.join("side")).unwrap();
        let split = Split::new(main.clone(), side.clone(), &["blob"]);
        (main, side, split)
    }

    #[test]
    fn keyspaces_go_to_their_engine() {
        let dir = TempDir::new("split-route");
        let (main, side, split) = split(dir.path());
        let mut batch = Batch::new();
        batch.put("blob", b"h".to_vec(), b"body".to_vec());
        batch.put("index", b"h".to_vec(), b"ref".to_vec());
        split.write(batch, Durability::Immediate).unwrap();
        assert_eq!(side.get("blob", b"h").unwrap(), Some(b"body".to_vec()));
        assert_eq!(side.get("index", b"h").unwrap(), None);
        assert_eq!(main.get("index", b"h").unwrap(), Some(b"ref".to_vec()));
        assert_eq!(main.get("blob", b"h").unwrap(), None);
        assert_eq!(split.get("blob", b"h").unwrap(), Some(b"body".to_vec()));
        assert_eq!(split.get("index", b"h").unwrap(), Some(b"ref".to_vec()));
    }

    #[test]
    fn the_last_operation_on_a_side_key_wins_within_a_batch() {
        let dir = TempDir::new("split-order");
        let (_, _, split) = split(dir.path());
        let mut first = Batch::new();
        first.put("blob", b"a".to_vec(), b"old".to_vec());
        first.put("blob", b"b".to_vec(), b"old".to_vec());
        split.write(first, Durability::Immediate).unwrap();
        // As a snapshot install does: delete everything, then put the snapshot's values.
        let mut batch = Batch::new();
        batch.delete("blob", b"a".to_vec());
        batch.delete("blob", b"b".to_vec());
        batch.put("blob", b"a".to_vec(), b"new".to_vec());
        batch.put("blob", b"c".to_vec(), b"x".to_vec());
        batch.delete("blob", b"c".to_vec());
        split.write(batch, Durability::Immediate).unwrap();
        assert_eq!(split.get("blob", b"a").unwrap(), Some(b"new".to_vec()));
        assert_eq!(split.get("blob", b"b").unwrap(), None);
        assert_eq!(split.get("blob", b"c").unwrap(), None);
    }

    #[test]
    fn side_values_are_stored_before_and_deleted_after_the_main_write() {
        let dir = TempDir::new("split-failing");
        let side = open(EngineKind::Log, dir.path()).unwrap();
        // A main engine whose writes fail, to see what a failed main write leaves behind.
        let main = open(EngineKind::Redb, &dir.path().join("main")).unwrap();
        let failing = Hooked::new(main, |_, _| Err(StoreError::Engine("refused".into())));
        let split = Split::new(Arc::new(failing), side.clone(), &["blob"]);
        let mut seed = Batch::new();
        seed.put("blob", b"old".to_vec(), b"1".to_vec());
        side.write(seed, Durability::Immediate).unwrap();

        let mut batch = Batch::new();
        batch.put("blob", b"new".to_vec(), b"2".to_vec());
        batch.delete("blob", b"old".to_vec());
        batch.put("index", b"k".to_vec(), b"v".to_vec());
        assert!(split.write(batch, Durability::Immediate).is_err());
        // The new value is there (harmless until referred to); the old one, which the main
        // engine still refers to, was not deleted.
        assert_eq!(side.get("blob", b"new").unwrap(), Some(b"2".to_vec()));
        assert_eq!(side.get("blob", b"old").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn the_engine_suite_passes_on_a_split_engine() {
        crate::suite::run_all(|dir| {
            let main = open(EngineKind::Redb, &dir.join("main")).unwrap();
            let side = open(EngineKind::Log, &dir.join("side")).unwrap();
            // Keyspaces holding large values, and one the multi-keyspace cases use, go to the side engine.
            Arc::new(Split::new(main, side, &["blobs", "space", "b"]))
        });
    }
}
