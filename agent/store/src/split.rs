//! [`Split`]: some keyspaces on a second engine, for values a B-tree stores badly.
//!
//! Message bodies are large, written once, never changed and deleted whole: on redb each one
//! costs copy-on-write pages of a tree, on the [`LogEngine`](crate::LogEngine) one append.
//! Idempotency records are small, but keyed by digests: on a B-tree each new one dirties a
//! page of its own in every commit, on the log engine it is one append and an entry in the
//! in-memory index. The agent keeps the shards' state on a B-tree engine (the *main* engine)
//! and routes such keyspaces to a log engine (the *side* engine).
//!
//! # What a write promises
//!
//! Two engines cannot commit one batch atomically, so a split write orders its parts, and
//! keeps a *redo record* in the main engine, such that after a crash the side engine holds
//! exactly what the main engine's last write says it does:
//!
//! 1. the puts into *referenced* keyspaces (values the main engine refers to, like bodies),
//!    made durable (`Immediate`) whatever the batch asked for;
//! 2. the main engine's part, together with the redo record: every other side operation of
//!    the batch (deletes, and puts into *after* keyspaces), or, when there are none but the
//!    batch wrote to the side, the removal of the last redo record;
//! 3. those other side operations, durably.
//!
//! Operations on one side key within the batch are reduced to their final effect first, so a
//! delete followed by a put (a snapshot being installed) stores the value.
//!
//! [`Split::open`] carries out the redo record it finds, so a crash between 2 and 3 loses
//! nothing and leaves nothing behind that should be gone. A crash between 1 and 2 leaves
//! referenced values nothing refers to yet; whoever wrote the batch writes them again when it
//! redoes its work (Raft re-applies the entries after the last applied marker, which is in the
//! main engine). An after keyspace is never ahead of the main engine: its writes reach the
//! side only once the main engine holds them in the redo record.
//!
//! The redo record stays until the next write that touches the side replaces it; carrying it
//! out again is harmless, since no side key it names has changed since without replacing it.
//! The record is written durably: a batch with side operations other than referenced puts is
//! `Immediate`, whatever it asked for (the agent's state flush asks for that anyway).
//!
//! Readers of the split engine itself may see a referenced value before the main engine
//! refers to it (never a reference without its value), and, during a write, the main
//! engine's part before step 3. `Buffered` over a split engine hides both: its readers see a
//! batch's writes in its overlay until the whole write has returned.
//!
//! This is weaker than [`Engine::write`]'s atomicity across keyspaces, so a `Split` is for
//! writers that keep the rules above: referenced values are referred to from the main engine,
//! and the batch's atomicity is needed only as the main engine and the redo record give it.

use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

use crate::engine::{
    Batch, Durability, Engine, KeyValue, Op, OpRef, Space, StoreError, validate_ops,
};
use crate::log_engine;

/// The main engine's keyspace that holds the redo record.
pub const REDO_KEYSPACE: &str = "split_redo";
const REDO_KEY: &[u8] = b"redo";
/// The redo record's format.
const REDO_VERSION: u8 = 1;

/// A write to [`REDO_KEYSPACE`] from outside, or a split that would keep it on the side.
fn reserved() -> StoreError {
    StoreError::InvalidKeyspace(format!(
        "{REDO_KEYSPACE} (it holds the split engine's redo record)"
    ))
}

/// See the [module docs](self).
pub struct Split {
    main: Arc<dyn Engine>,
    side: Arc<dyn Engine>,
    referenced: Vec<&'static str>,
    after: Vec<&'static str>,
    /// Held for a whole write, so redo records replace each other in order; whether the main
    /// engine holds one.
    redo: Mutex<bool>,
}

impl Split {
    /// Keyspaces in `referenced` and `after` on `side`, all others on `main`; carries out the
    /// redo record of the last write (see the [module docs](self)).
    pub fn open(
        main: Arc<dyn Engine>,
        side: Arc<dyn Engine>,
        referenced: &[&'static str],
        after: &[&'static str],
    ) -> Result<Self, StoreError> {
        if let Some(both) = referenced.iter().find(|k| after.contains(k)) {
            return Err(StoreError::Engine(format!(
                "side keyspace {both:?} is both referenced and written after the main engine"
            )));
        }
        if referenced.contains(&REDO_KEYSPACE) || after.contains(&REDO_KEYSPACE) {
            return Err(reserved());
        }
        let split = Self {
            main,
            side,
            referenced: referenced.to_vec(),
            after: after.to_vec(),
            redo: Mutex::new(false),
        };
        if let Some(record) = split.main.get(REDO_KEYSPACE, REDO_KEY)? {
            let ops = split.decode_redo(&record)?;
            let refs: Vec<OpRef<'_>> = ops.iter().map(Op::as_ref).collect();
            split.side.write_ops(&refs, Durability::Immediate)?;
            *split.redo.lock().unwrap_or_else(PoisonError::into_inner) = true;
        }
        Ok(split)
    }

    fn engine(&self, keyspace: &str) -> &dyn Engine {
        if self.is_side(keyspace) {
            &*self.side
        } else {
            &*self.main
        }
    }

    fn is_side(&self, keyspace: &str) -> bool {
        self.referenced.contains(&keyspace) || self.after.contains(&keyspace)
    }

    /// `ops` as the redo record stores them: a version byte, then one record of the log
    /// engine's format (length, CRC-32 and the operations, values whole).
    fn encode_redo(ops: &[OpRef<'_>]) -> Result<Vec<u8>, StoreError> {
        let record = log_engine::encode_ops(ops)?;
        let mut redo = Vec::with_capacity(1 + record.len());
        redo.push(REDO_VERSION);
        redo.extend_from_slice(&record);
        Ok(redo)
    }

    /// The operations of a redo record; its keyspaces must be this split's side keyspaces.
    fn decode_redo(&self, record: &[u8]) -> Result<Vec<Op>, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("split redo record: {what}"));
        let (&version, record) = record.split_first().ok_or_else(|| corrupt("empty"))?;
        if version != REDO_VERSION {
            return Err(corrupt(&format!(
                "format {version}, expected {REDO_VERSION}"
            )));
        }
        let ops = log_engine::decode_ops(record).ok_or_else(|| corrupt("cut short or damaged"))?;
        ops.into_iter()
            .map(|(name, key, value)| {
                let keyspace = self
                    .referenced
                    .iter()
                    .chain(&self.after)
                    .find(|k| **k == name)
                    .copied()
                    .ok_or_else(|| {
                        corrupt(&format!("keyspace {name:?} is not on the side engine"))
                    })?;
                let key = key.to_vec();
                Ok(match value {
                    Some(value) => Op::Put {
                        keyspace,
                        key,
                        value: value.to_vec(),
                        link: None,
                    },
                    None => Op::Delete { keyspace, key },
                })
            })
            .collect()
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
        let mut redo = self.redo.lock().unwrap_or_else(PoisonError::into_inner);
        let mut main = Vec::with_capacity(ops.len() + 1);
        let mut side = Vec::new();
        for op in ops {
            if op.keyspace() == REDO_KEYSPACE {
                return Err(reserved());
            }
            if self.is_side(op.keyspace()) {
                side.push(*op);
            } else {
                main.push(*op);
            }
        }
        // The final effect on each side key: the last operation of each run of equal keys,
        // which a stable sort keeps in batch order (a batch from `Buffered` is sorted, with
        // each key once, so the sort only checks that).
        side.sort_by(|a, b| (a.keyspace(), a.key()).cmp(&(b.keyspace(), b.key())));
        let mut last: Vec<OpRef<'_>> = Vec::with_capacity(side.len());
        for op in side {
            match last.last_mut() {
                Some(previous)
                    if previous.keyspace() == op.keyspace() && previous.key() == op.key() =>
                {
                    *previous = op;
                }
                _ => last.push(op),
            }
        }
        let (before, later): (Vec<OpRef<'_>>, Vec<OpRef<'_>>) = last.into_iter().partition(|op| {
            matches!(op, OpRef::Put { .. }) && self.referenced.contains(&op.keyspace())
        });
        if !before.is_empty() {
            self.side.write_ops(&before, Durability::Immediate)?;
        }
        let record = if later.is_empty() {
            None
        } else {
            Some(Self::encode_redo(&later)?)
        };
        let main_durability = match record {
            Some(_) => Durability::Immediate,
            None => durability,
        };
        let redo_after = match &record {
            Some(record) => {
                main.push(OpRef::Put {
                    keyspace: REDO_KEYSPACE,
                    key: REDO_KEY,
                    value: record,
                    link: None,
                });
                true
            }
            // The side changed: the last record no longer describes it.
            None if *redo && !before.is_empty() => {
                main.push(OpRef::Delete {
                    keyspace: REDO_KEYSPACE,
                    key: REDO_KEY,
                });
                false
            }
            None => *redo,
        };
        if !main.is_empty() || durability == Durability::Immediate {
            self.main.write_ops(&main, main_durability)?;
        }
        *redo = redo_after;
        if !later.is_empty() {
            self.side.write_ops(&later, Durability::Immediate)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.side.flush()?;
        self.main.flush()
    }

    fn space(&self) -> Result<Space, StoreError> {
        let (main, side) = (self.main.space()?, self.side.space()?);
        // The redo record is bookkeeping, not data.
        let redo = self
            .main
            .get(REDO_KEYSPACE, REDO_KEY)?
            .map_or(0, |record| (REDO_KEY.len() + record.len()) as u64);
        Ok(Space {
            disk_bytes: main.disk_bytes + side.disk_bytes,
            live_bytes: main.live_bytes.saturating_sub(redo) + side.live_bytes,
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
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::engine::Link;
    use crate::suite::{Hooked, TempDir};
    use crate::{EngineKind, open};

    fn split(dir: &std::path::Path) -> (Arc<dyn Engine>, Arc<dyn Engine>, Split) {
        let main = open(EngineKind::Redb, &dir.join("main")).unwrap();
        let side = open(EngineKind::Log, &dir.join("side")).unwrap();
        let split = Split::open(main.clone(), side.clone(), &["blob"], &["idem"]).unwrap();
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
        let split = Split::open(Arc::new(failing), side.clone(), &["blob"], &[]).unwrap();
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

    /// A side engine that refuses every write once `fail` is set: a crash between the main
    /// write and the side's, as far as the disk is concerned.
    fn failing_side(dir: &std::path::Path) -> (Arc<dyn Engine>, Arc<AtomicBool>, Arc<dyn Engine>) {
        let side = open(EngineKind::Log, &dir.join("side")).unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let hooked = Hooked::new(side.clone(), {
            let fail = fail.clone();
            move |_, _| {
                if fail.load(Ordering::SeqCst) {
                    Err(StoreError::Engine("cut off".into()))
                } else {
                    Ok(())
                }
            }
        });
        (side, fail, Arc::new(hooked))
    }

    #[test]
    fn side_writes_cut_off_after_the_main_write_are_redone_at_open() {
        let dir = TempDir::new("split-redo");
        let main = open(EngineKind::Redb, &dir.path().join("main")).unwrap();
        // The durability of each write the main engine receives.
        let asked = Arc::new(Mutex::new(Vec::new()));
        let watched = Hooked::new(main.clone(), {
            let asked = asked.clone();
            move |_, durability| {
                asked.lock().unwrap().push(durability);
                Ok(())
            }
        });
        let (side, fail, hooked) = failing_side(dir.path());
        let split = Split::open(Arc::new(watched), hooked, &["blob"], &["idem"]).unwrap();
        let mut seed = Batch::new();
        seed.put("blob", b"old".to_vec(), b"1".to_vec());
        seed.put("idem", b"gone".to_vec(), b"r".to_vec());
        split.write(seed, Durability::Immediate).unwrap();

        fail.store(true, Ordering::SeqCst);
        let mut batch = Batch::new();
        batch.put("index", b"k".to_vec(), b"v".to_vec());
        batch.put("idem", b"new".to_vec(), b"response".to_vec());
        batch.delete("idem", b"gone".to_vec());
        batch.delete("blob", b"old".to_vec());
        assert!(split.write(batch, Durability::Deferred).is_err());
        // The main engine committed its part, durably although the batch was deferred; the
        // side has none of it yet, and an after keyspace is never ahead of the main engine.
        assert_eq!(main.get("index", b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(asked.lock().unwrap().last(), Some(&Durability::Immediate));
        assert_eq!(side.get("idem", b"new").unwrap(), None);
        assert_eq!(side.get("idem", b"gone").unwrap(), Some(b"r".to_vec()));
        assert_eq!(side.get("blob", b"old").unwrap(), Some(b"1".to_vec()));
        drop(split);

        let split = Split::open(main, side.clone(), &["blob"], &["idem"]).unwrap();
        assert_eq!(
            side.get("idem", b"new").unwrap(),
            Some(b"response".to_vec())
        );
        assert_eq!(split.get("idem", b"gone").unwrap(), None);
        assert_eq!(split.get("blob", b"old").unwrap(), None);
    }

    #[test]
    fn a_redo_record_is_dropped_once_the_side_changes_without_one() {
        let dir = TempDir::new("split-redo-dropped");
        let (main, side, split) = split(dir.path());
        let mut first = Batch::new();
        first.put("blob", b"h".to_vec(), b"body".to_vec());
        split.write(first, Durability::Immediate).unwrap();
        // The record says: delete h.
        let mut deleted = Batch::new();
        deleted.delete("blob", b"h".to_vec());
        deleted.put("index", b"ref".to_vec(), b"none".to_vec());
        split.write(deleted, Durability::Immediate).unwrap();
        // Stored again and referred to, by a batch with nothing to redo.
        let mut again = Batch::new();
        again.put("blob", b"h".to_vec(), b"body".to_vec());
        again.put("index", b"ref".to_vec(), b"h".to_vec());
        split.write(again, Durability::Immediate).unwrap();
        drop(split);

        // Carrying out the old record now would delete a body the main engine refers to.
        let split = Split::open(main.clone(), side, &["blob"], &["idem"]).unwrap();
        assert_eq!(split.get("blob", b"h").unwrap(), Some(b"body".to_vec()));
        assert_eq!(main.get(REDO_KEYSPACE, REDO_KEY).unwrap(), None);
    }

    #[test]
    fn a_redo_record_round_trips_and_refuses_what_it_cannot_read() {
        let dir = TempDir::new("split-redo-format");
        let (_, _, split) = split(dir.path());
        let link = Link {
            keyspace: "log",
            key: b"e".to_vec(),
            offset: 3,
            head: 1,
        };
        let mut batch = Batch::new();
        batch.put_linked("blob", b"a".to_vec(), vec![7; 300], Some(link));
        batch.delete("idem", vec![0; 70_000]);
        batch.put("idem", Vec::new(), Vec::new());
        let refs: Vec<OpRef<'_>> = batch.refs();
        let record = Split::encode_redo(&refs).unwrap();
        let decoded = split.decode_redo(&record).unwrap();
        // Values are stored whole in the record: links are not kept.
        let expected: Vec<Op> = batch
            .ops()
            .iter()
            .cloned()
            .map(|op| match op {
                Op::Put {
                    keyspace,
                    key,
                    value,
                    ..
                } => Op::Put {
                    keyspace,
                    key,
                    value,
                    link: None,
                },
                delete => delete,
            })
            .collect();
        assert_eq!(decoded, expected);

        // A record of another split's keyspace, and one whose bytes were altered.
        let foreign = Split::encode_redo(&[OpRef::Delete {
            keyspace: "x",
            key: b"k",
        }])
        .unwrap();
        let mut damaged = record.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        for (bad, why) in [
            (&record[..record.len() - 1], "cut short"),
            (&[2][..], "format 2"),
            (&foreign[..], "keyspace \"x\""),
            (&damaged[..], "damaged"),
        ] {
            let error = split.decode_redo(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{error} should say {why}");
        }
        assert!(matches!(
            Split::open(split.main.clone(), split.side.clone(), &["a"], &["a"]),
            Err(StoreError::Engine(_))
        ));
    }

    #[test]
    fn the_engine_suite_passes_on_a_split_engine() {
        crate::suite::run_all(|dir| {
            let main = open(EngineKind::Redb, &dir.join("main")).unwrap();
            let side = open(EngineKind::Log, &dir.join("side")).unwrap();
            // Keyspaces holding large values, and one the multi-keyspace cases use, go to the
            // side engine; the latter is written after the main engine.
            Arc::new(Split::open(main, side, &["blobs", "space"], &["b"]).unwrap())
        });
    }
}
