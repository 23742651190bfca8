//! [`KeyFilter`]: a Bloom filter over the keys of one keyspace of the log engine's index, so
//! a lookup of a key that is not there (a new message body's content hash, say) is answered
//! without walking the index.
//!
//! A filter never says "absent" for a key that was inserted (no false negatives); it says
//! "maybe" for about 1% of keys that were not. Deleted keys stay in it until it is rebuilt
//! from the index, which happens when more keys were inserted than it was sized for
//! ([`KeyFilters`]).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;

/// Bits per key the filter is sized for: about 1% false positives.
const BITS_PER_KEY: usize = 10;
/// Bits set per key, all in one 512-bit block (one cache line).
const PROBES: u32 = 6;
/// The fewest keys a filter is sized for.
const MIN_CAPACITY: usize = 1024;
/// Keys of the index copied into the filter being rebuilt per key inserted, so a rebuild
/// never holds up a write for long, however large the index.
const REBUILD_STEP: usize = 64;

/// The filter of one keyspace's index, rebuilt a little at a time once it is full.
pub(crate) struct KeyFilters {
    current: KeyFilter,
    /// While `current` is full: its successor, sized for the index, with every key the index
    /// held up to the cursor (the last key copied) and every key inserted since it began.
    next: Option<(KeyFilter, Option<Vec<u8>>)>,
}

impl KeyFilters {
    pub(crate) fn new() -> Self {
        KeyFilters {
            current: KeyFilter::with_capacity(0),
            next: None,
        }
    }

    /// False only when `key` is not in the index.
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        self.current.may_contain(key)
    }

    /// Records that `key` was added to `index` (which holds it now).
    pub(crate) fn inserted<K: Borrow<[u8]> + Ord, V>(
        &mut self,
        key: &[u8],
        index: &BTreeMap<K, V>,
    ) {
        self.current.insert(key);
        if self.next.is_none() && self.current.is_full() {
            self.next = Some((KeyFilter::with_capacity(2 * index.len()), None));
        }
        let Some((next, cursor)) = &mut self.next else {
            return;
        };
        next.insert(key);
        let from = match cursor {
            Some(last) => Bound::Excluded(last.as_slice()),
            None => Bound::Unbounded,
        };
        let mut copied = 0;
        let mut last = None;
        for key in index
            .range::<[u8], _>((from, Bound::Unbounded))
            .map(|(key, _)| key)
            .take(REBUILD_STEP)
        {
            next.insert(key.borrow());
            last = Some(key);
            copied += 1;
        }
        match last {
            Some(last) if copied == REBUILD_STEP => *cursor = Some(last.borrow().to_vec()),
            // The whole index is in `next`.
            _ => {
                let (next, _) = self.next.take().expect("matched above");
                self.current = next;
            }
        }
    }
}

type Block = [u64; 8];

pub(crate) struct KeyFilter {
    blocks: Vec<Block>,
    /// This filter's hash seed, random: keys chosen to collide in one process's filters do
    /// not collide in another's, nor in this one's successor.
    seed: u64,
    /// Keys inserted since the filter was built.
    added: usize,
    /// Keys it was sized for.
    capacity: usize,
}

impl KeyFilter {
    /// An empty filter sized for `keys` keys (at least [`MIN_CAPACITY`]).
    pub(crate) fn with_capacity(keys: usize) -> Self {
        let capacity = keys.max(MIN_CAPACITY);
        KeyFilter {
            blocks: vec![[0; 8]; (capacity * BITS_PER_KEY).div_ceil(512)],
            seed: RandomState::new().hash_one(capacity),
            added: 0,
            capacity,
        }
    }

    pub(crate) fn insert(&mut self, key: &[u8]) {
        let (block, mixed) = self.probe(key);
        let block = &mut self.blocks[block];
        for bit in bits(mixed) {
            block[bit / 64] |= 1 << (bit % 64);
        }
        self.added += 1;
    }

    /// False only when `key` was never inserted.
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        let (block, mixed) = self.probe(key);
        let block = &self.blocks[block];
        bits(mixed).all(|bit| block[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Whether more keys were inserted than it was sized for (it should be rebuilt).
    pub(crate) fn is_full(&self) -> bool {
        self.added > self.capacity
    }

    /// The block of `key`, and a second mix of its hash that [`bits`] takes its bits from.
    fn probe(&self, key: &[u8]) -> (usize, u64) {
        let hash = hash(self.seed, key);
        let block = ((u128::from(hash) * self.blocks.len() as u128) >> 64) as usize;
        (
            block,
            hash.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29),
        )
    }
}

/// A seeded 64-bit hash of `key`: eight bytes at a time, each word mixed in by a multiply,
/// then murmur3's finaliser so every input bit reaches every output bit. Several times
/// cheaper than SipHash on short keys, and the filter needs no more: a collision costs a tree
/// lookup, never a wrong answer.
fn hash(seed: u64, key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(K);
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(31);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(last))
            .wrapping_mul(K)
            .rotate_left(31);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bits of a key in its block: 9 bits (0..512) of `mixed` per probe.
fn bits(mixed: u64) -> impl Iterator<Item = usize> {
    (0..PROBES).map(move |i| ((mixed >> (9 * i)) & 511) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index_key::IndexKey;

    fn key(i: u32) -> Vec<u8> {
        format!("key-{i}").into_bytes()
    }

    #[test]
    fn inserted_keys_are_always_found_and_most_others_are_not() {
        let keys: Vec<Vec<u8>> = (0..20_000).map(key).collect();
        let mut filter = KeyFilter::with_capacity(10_000);
        for k in &keys {
            filter.insert(k);
        }
        assert!(filter.is_full(), "sized for 10,000, holds 20,000");
        assert!(
            keys.iter().all(|k| filter.may_contain(k)),
            "no false negative"
        );
        // Sized for twice what it holds, as a rebuilt filter is, it answers "maybe" for few
        // absent keys.
        let mut filter = KeyFilter::with_capacity(40_000);
        for k in &keys {
            filter.insert(k);
        }
        let absent = (20_000..120_000)
            .filter(|&i| filter.may_contain(&key(i)))
            .count();
        // About 0.05% with twenty bits per key; a poorly mixing hash shows many more.
        assert!(absent < 500, "{absent} false positives in 100,000");
        assert!(!KeyFilter::with_capacity(0).may_contain(b"anything"));
    }

    /// Keys come and go through several rebuilds, each spread over later inserts: at every
    /// step every key of the index is found, and after the churn deleted keys have mostly
    /// left the filter.
    #[test]
    fn rebuilds_keep_every_key_of_the_index_and_shed_deleted_ones() {
        // Keyed as the log engine's index is.
        let mut index: BTreeMap<IndexKey, ()> = BTreeMap::new();
        let mut filters = KeyFilters::new();
        let mut rebuilds = 0;
        for i in 0..60_000u32 {
            let k = key(i);
            index.insert(IndexKey::new(&k), ());
            let rebuilding = filters.next.is_some();
            filters.inserted(&k, &index);
            if rebuilding && filters.next.is_none() {
                rebuilds += 1;
            }
            // Most keys live briefly, one in ten stays.
            if i >= 100 && (i - 100) % 10 != 0 {
                index.remove(&key(i - 100)[..]);
            }
            if i % 997 == 0 {
                assert!(index.keys().all(|k| filters.may_contain(k)), "after {i}");
            }
        }
        assert!(index.keys().all(|k| filters.may_contain(k)));
        assert!(rebuilds >= 3, "{rebuilds} rebuilds");
        let deleted = (0..59_900u32)
            .filter(|i| i % 10 != 0)
            .filter(|&i| filters.may_contain(&key(i)))
            .count();
        assert!(
            deleted < 54_000 / 2,
            "{deleted} of 54,000 deleted keys still in"
        );
    }
}
