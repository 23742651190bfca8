//! Hash maps keyed by keyspace names.
//!
//! Every write and lookup finds its keyspace's table, index or filter by name. The names are
//! the handful the code chose (or read back from the engine's own files), never a client's
//! input, so they need no defence against chosen collisions: FNV-1a hashes them in a few
//! instructions where the standard SipHash took more than the lookup it served.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a, 64 bits.
pub(crate) struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` keyed by keyspace names.
pub(crate) type NameMap<K, V> = HashMap<K, V, BuildHasherDefault<NameHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV-1a test vectors, and a map that finds what it holds.
    #[test]
    fn hashes_as_fnv_1a_and_maps_by_name() {
        let hash = |bytes: &[u8]| {
            let mut h = NameHasher::default();
            h.write(bytes);
            h.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
        let mut map: NameMap<&str, u32> = NameMap::default();
        for (i, name) in ["mail_dir", "mail_msg", "mail_modseq", "mail_idem"]
            .iter()
            .enumerate()
        {
            map.insert(name, i as u32);
        }
        assert_eq!(map.get("mail_modseq"), Some(&2));
        assert_eq!(map.get("mail_blob"), None);
    }
}
