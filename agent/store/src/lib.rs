//! Tern's storage engines: an ordered key-value store with named keyspaces and atomic,
//! durable batches, behind one object-safe trait.
//!
//! Three implementations prove themselves against one test suite ([`suite`]), a SIGKILL crash
//! test and a benchmark (see `tests/` and `benches/`): the B-trees [`RedbEngine`] and
//! [`SledEngine`] for the shards' state, and [`LogEngine`], append-only segments for the Raft
//! logs. The agent picks them with [`EngineKind`] and [`open`].

#![forbid(unsafe_code)]

mod buffered;
mod engine;
mod filter;
mod index_key;
mod log_engine;
mod names;
mod redb_engine;
mod sled_engine;
mod split;
pub mod suite;

pub use buffered::Buffered;
pub use engine::{
    Batch, Durability, Engine, EngineKind, EngineOptions, KeyValue, Link, Op, OpRef, Space,
    StoreError, open, open_with,
};
pub use log_engine::{DEFAULT_SEGMENT_BYTES, LogEngine};
pub use redb_engine::RedbEngine;
pub use sled_engine::SledEngine;
pub use split::Split;
