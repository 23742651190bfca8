//! Keyspaces and key layout: every key starts with its shard id, `u32` big-endian, so one
//! shard's keys form one contiguous range in every keyspace.

use std::ops::Bound;

use tern_store::{Batch, Engine, StoreError};

use crate::ShardId;

/// Log entries: shard ‖ index (`u64` BE).
pub const RAFT_LOG: &str = "raft_log";
/// Log metadata: shard ‖ [`VOTE`] / [`COMMITTED`] / [`PURGED`].
pub const RAFT_META: &str = "raft_meta";
/// State machine metadata: shard ‖ [`APPLIED`] / [`MEMBERSHIP`] / [`SNAPSHOT_META`] /
/// [`SNAPSHOT_DATA`] ‖ chunk (`u32` BE).
pub const SM_META: &str = "sm_meta";

/// The keyspaces Raft itself writes; applications must not use them.
pub const RAFT_KEYSPACES: [&str; 3] = [RAFT_LOG, RAFT_META, SM_META];

pub const VOTE: &[u8] = b"vote";
pub const COMMITTED: &[u8] = b"committed";
pub const PURGED: &[u8] = b"purged";
pub const APPLIED: &[u8] = b"applied";
pub const MEMBERSHIP: &[u8] = b"membership";
pub const SNAPSHOT_META: &[u8] = b"snapshot_meta";
pub const SNAPSHOT_DATA: &[u8] = b"snapshot_data";

/// Pairs read per engine call when walking a range.
pub(crate) const SCAN_PAGE: usize = 1024;

/// `shard ‖ key`: how an application names `key` of `shard` in its keyspaces.
pub fn shard_key(shard: ShardId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len());
    out.extend_from_slice(&shard.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The key without its shard prefix (empty for a key shorter than a prefix).
pub fn strip_shard(key: &[u8]) -> &[u8] {
    key.get(4..).unwrap_or_default()
}

/// The bounds of every key of `shard`: from its prefix to the next shard's.
pub fn shard_range(shard: ShardId) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = Bound::Included(shard.to_be_bytes().to_vec());
    let end = match shard.checked_add(1) {
        Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    };
    (start, end)
}

pub(crate) fn log_key(shard: ShardId, index: u64) -> [u8; 12] {
    let mut out = [0; 12];
    out[..4].copy_from_slice(&shard.to_be_bytes());
    out[4..].copy_from_slice(&index.to_be_bytes());
    out
}

/// The index of a `raft_log` key.
pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    let index = key.get(4..12).filter(|_| key.len() == 12)?;
    Some(u64::from_be_bytes(index.try_into().ok()?))
}

/// Calls `each` for every pair of `shard` in `keyspace`, in key order, reading a page at a
/// time (so a large shard is never held in memory at once).
pub(crate) fn for_each_in_shard(
    engine: &dyn Engine,
    keyspace: &'static str,
    shard: ShardId,
    mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), crate::Error>,
) -> Result<(), crate::Error> {
    let (start, end) = shard_range(shard);
    let mut start = start;
    loop {
        let page = engine.scan(keyspace, as_ref(&start), as_ref(&end), SCAN_PAGE, false)?;
        let full = page.len() == SCAN_PAGE;
        let mut last = None;
        for (key, value) in page {
            last = Some(key.clone());
            each(key, value)?;
        }
        match last {
            Some(key) if full => start = Bound::Excluded(key),
            _ => return Ok(()),
        }
    }
}

/// Adds a delete of every key of `shard` in `keyspace` to `batch`.
pub(crate) fn delete_shard_keys(
    engine: &dyn Engine,
    keyspace: &'static str,
    shard: ShardId,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    let (start, end) = shard_range(shard);
    delete_range(engine, keyspace, start, end, batch)
}

/// Adds a delete of every key in `[start, end)` of `keyspace` to `batch`.
pub(crate) fn delete_range(
    engine: &dyn Engine,
    keyspace: &'static str,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    let mut start = start;
    loop {
        let page = engine.scan(keyspace, as_ref(&start), as_ref(&end), SCAN_PAGE, false)?;
        let full = page.len() == SCAN_PAGE;
        let Some(last) = page.last().map(|(key, _)| key.clone()) else {
            return Ok(());
        };
        for (key, _) in page {
            batch.delete(keyspace, key);
        }
        if !full {
            return Ok(());
        }
        start = Bound::Excluded(last);
    }
}

pub(crate) fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key),
        Bound::Excluded(key) => Bound::Excluded(key),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_sort_by_shard_then_key() {
        assert!(shard_key(1, b"\xff\xff") < shard_key(2, b""));
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert!(log_key(1, 255) < log_key(1, 256));
        assert_eq!(log_index(&log_key(7, 300)), Some(300));
        assert_eq!(log_index(b"short"), None);
        assert_eq!(strip_shard(&shard_key(9, b"abc")), b"abc");
        assert_eq!(strip_shard(b"ab"), b"");
    }

    #[test]
    fn the_last_shard_has_no_upper_bound() {
        assert_eq!(shard_range(u32::MAX).1, Bound::Unbounded);
        assert_eq!(shard_range(1).1, Bound::Excluded(vec![0, 0, 0, 2]));
    }
}
