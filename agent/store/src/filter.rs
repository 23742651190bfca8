//! [`KeyFilter`]: a Bloom filter over the keys of one keyspace of the log engine's index, so
//! a lookup of a key that is not there (a new message body's content hash, say) is answered
//! without walking the index.
//!
//! A filter never says "absent" for a key that was inserted (no false negatives); it says
//! "maybe" for about 1% of keys that were not. Deleted keys stay in it until it is rebuilt
//! from the index, which happens when more keys were inserted than it was sized for.

use std::hash::{DefaultHasher, Hasher};

/// Bits per key the filter is sized for: about 1% false positives.
const BITS_PER_KEY: usize = 10;
/// Bits set per key, all in one 512-bit block (one cache line).
const PROBES: u32 = 6;
/// The fewest keys a filter is sized for.
const MIN_CAPACITY: usize = 1024;

type Block = [u64; 8];

pub(crate) struct KeyFilter {
    blocks: Vec<Block>,
    /// Keys inserted since the filter was built.
    added: usize,
    /// Keys it was sized for.
    capacity: usize,
}

impl KeyFilter {
    /// A filter of `keys`, sized for twice as many.
    pub(crate) fn of<'a>(keys: impl ExactSizeIterator<Item = &'a [u8]>) -> Self {
        let capacity = (2 * keys.len()).max(MIN_CAPACITY);
        let mut filter = KeyFilter {
            blocks: vec![[0; 8]; (capacity * BITS_PER_KEY).div_ceil(512)],
            added: 0,
            capacity,
        };
        for key in keys {
            filter.insert(key);
        }
        filter
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
        let mut hasher = DefaultHasher::new();
        hasher.write(key);
        let hash = hasher.finish();
        let block = ((u128::from(hash) * self.blocks.len() as u128) >> 64) as usize;
        (
            block,
            hash.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29),
        )
    }
}

/// The bits of a key in its block: 9 bits (0..512) of `mixed` per probe.
fn bits(mixed: u64) -> impl Iterator<Item = usize> {
    (0..PROBES).map(move |i| ((mixed >> (9 * i)) & 511) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        format!("key-{i}").into_bytes()
    }

    #[test]
    fn inserted_keys_are_always_found_and_most_others_are_not() {
        let keys: Vec<Vec<u8>> = (0..20_000).map(key).collect();
        let mut filter = KeyFilter::of(keys[..5_000].iter().map(Vec::as_slice));
        assert!(!filter.is_full());
        for k in &keys[5_000..] {
            filter.insert(k);
        }
        assert!(filter.is_full(), "sized for 10,000, holds 20,000");
        assert!(
            keys.iter().all(|k| filter.may_contain(k)),
            "no false negative"
        );
        // Sized for what it holds, the filter answers "maybe" for few absent keys.
        let filter = KeyFilter::of(keys.iter().map(Vec::as_slice));
        let absent = (20_000..120_000)
            .filter(|&i| filter.may_contain(&key(i)))
            .count();
        assert!(absent < 2_000, "{absent} false positives in 100,000");
        let empty = KeyFilter::of(std::iter::empty());
        assert!(!empty.may_contain(b"anything"));
    }
}
