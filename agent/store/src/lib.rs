//! Tern's storage engines: an ordered key-value store with named keyspaces and atomic,
//! durable batches, behind one object-safe trait.
//!
//! Two implementations, [`RedbEngine`] and [`SledEngine`], prove themselves against one test
//! suite ([`suite`]), a SIGKILL crash test and a benchmark (see `tests/` and `benches/`); the
//! agent picks one with [`EngineKind`] and [`open`].

#![forbid(unsafe_code)]

mod buffered;
mod engine;
mod redb_engine;
mod sled_engine;
pub mod suite;

pub use buffered::Buffered;
pub use engine::{Batch, Durability, Engine, EngineKind, KeyValue, Op, Space, StoreError, open};
pub use redb_engine::RedbEngine;
pub use sled_engine::SledEngine;
