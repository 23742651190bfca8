//! [`IndexKey`]: a key of the log engine's in-memory index, kept inside the index's own
//! B-tree nodes when it is short.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;

/// The longest key kept inline. Every key Tern puts on a log engine fits: log entries (12
/// bytes), message bodies (36), idempotency records (37) and their time index (45).
const INLINE: usize = 46;

/// A key of the log engine's index.
///
/// A `Vec<u8>` key is an allocation of its own: each insert mallocs it, and each comparison
/// during a walk of the tree reads it through a pointer, most often a cache miss once the
/// index holds millions of keys. A short key lives in the node instead, so a walk reads only
/// the nodes it passes. Longer keys are boxed. Either way the key orders, compares and
/// borrows as its bytes, so the index is searched with a plain `&[u8]`.
pub(crate) enum IndexKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<[u8]>),
}

impl IndexKey {
    pub(crate) fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            IndexKey::Boxed(key.into())
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IndexKey::Boxed(bytes) => bytes,
        }
    }
}

impl Deref for IndexKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Bound;

    use super::*;

    #[test]
    fn an_inline_key_takes_no_more_room_than_a_vec_and_its_allocation() {
        assert_eq!(std::mem::size_of::<IndexKey>(), 48);
    }

    #[test]
    fn short_keys_are_inline_and_long_ones_boxed() {
        assert!(matches!(
            IndexKey::new(&[7; INLINE]),
            IndexKey::Inline { .. }
        ));
        assert!(matches!(
            IndexKey::new(&[7; INLINE + 1]),
            IndexKey::Boxed(_)
        ));
        assert_eq!(IndexKey::new(b"").as_slice(), b"");
        assert_eq!(&*IndexKey::new(&[7; INLINE]), &[7; INLINE][..]);
        assert_eq!(&*IndexKey::new(&[9; 300]), &[9; 300][..]);
        // A key and a longer one with zero bytes after it differ, although the inline copy
        // of the first is padded with zeros.
        assert_ne!(IndexKey::new(b"ab"), IndexKey::new(b"ab\0"));
        assert!(IndexKey::new(b"ab") < IndexKey::new(b"ab\0"));
    }

    #[test]
    fn an_index_of_mixed_keys_orders_and_finds_them_as_bytes() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"ab".to_vec(),
            b"ab\0".to_vec(),
            [b"ab".as_slice(), &[0xff; 60]].concat(),
            [b"ab".as_slice(), &[0; 60]].concat(),
            vec![0xff; INLINE],
            vec![0xff; INLINE + 1],
            vec![0xfe; INLINE + 1],
            vec![1; 12],
        ];
        let mut index = BTreeMap::new();
        for (n, key) in keys.iter().enumerate() {
            index.insert(IndexKey::new(key), n);
        }
        let by_bytes: BTreeMap<&[u8], usize> =
            keys.iter().enumerate().map(|(n, k)| (&k[..], n)).collect();
        assert!(
            index
                .keys()
                .map(IndexKey::as_slice)
                .eq(by_bytes.keys().copied())
        );
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(index.get(&key[..]), Some(&n), "{key:02x?}");
        }
        assert_eq!(index.get(&b"a"[..]), None);
        let from_ab: Vec<usize> = index
            .range::<[u8], _>((Bound::Included(&b"ab"[..]), Bound::Excluded(&b"ab\x01"[..])))
            .map(|(_, n)| *n)
            .collect();
        let expected: Vec<usize> = by_bytes
            .iter()
            .filter(|(k, _)| k.starts_with(b"ab") && k.get(2).is_none_or(|b| *b == 0))
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(from_ab, expected);
        assert_eq!(from_ab.len(), 3);
    }
}
