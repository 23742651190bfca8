//! Reading the mail state: one set of lookups over either the committed state ([`Committed`],
//! for the read API) or a command's view of it ([`Txn`]: committed state plus the command's
//! own writes so far).

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_store::{Batch, Engine, KeyValue, StoreError};

use crate::keys;
use crate::names::normalize_address;
use crate::records::{self, Account, Alias, Counters, Domain, Mailbox, Message};

/// Pairs per engine call when a whole range is read.
const SCAN_CHUNK: usize = 1024;

pub(crate) trait Source {
    fn shard(&self) -> u32;

    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Ascending scan of [start, end), at most `limit` pairs.
    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    fn load<T: DeserializeOwned>(
        &self,
        keyspace: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(keyspace, key)?
            .map(|v| records::decode(keyspace, key, &v))
            .transpose()
    }

    /// Every pair whose key starts with `prefix`, read in bounded chunks.
    fn scan_prefix(
        &self,
        keyspace: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<KeyValue>, StoreError> {
        let end = keys::prefix_upper(prefix);
        let mut out: Vec<KeyValue> = Vec::new();
        loop {
            let start = match out.last() {
                Some((k, _)) => Bound::Excluded(k.as_slice()),
                None => Bound::Included(prefix),
            };
            let chunk = self.scan(keyspace, start, as_ref(&end), SCAN_CHUNK)?;
            let done = chunk.len() < SCAN_CHUNK;
            out.extend(chunk);
            if done {
                return Ok(out);
            }
        }
    }
}

pub(crate) fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The committed state of one shard.
pub(crate) struct Committed<'a> {
    pub engine: &'a dyn Engine,
    pub shard: u32,
}

impl Source for Committed<'_> {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(keyspace, key)
    }

    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.engine.scan(keyspace, start, end, limit, false)
    }
}

type PendingKey = (&'static str, Vec<u8>);

/// One command's view: the engine (state as of the previous entry) overlaid with the
/// command's own writes, which reach the entry's batch only if the command succeeds.
pub(crate) struct Txn<'a> {
    engine: &'a dyn Engine,
    shard: u32,
    /// `None` is a delete. Ordered, so the batch comes out the same on every replica.
    pending: BTreeMap<PendingKey, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    pub fn new(engine: &'a dyn Engine, shard: u32) -> Self {
        Self {
            engine,
            shard,
            pending: BTreeMap::new(),
        }
    }

    pub fn put(&mut self, keyspace: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert((keyspace, key), Some(value));
    }

    pub fn put_record<T: Serialize>(&mut self, keyspace: &'static str, key: Vec<u8>, value: &T) {
        self.put(keyspace, key, records::encode(value));
    }

    pub fn delete(&mut self, keyspace: &'static str, key: Vec<u8>) {
        self.pending.insert((keyspace, key), None);
    }

    /// Appends the command's writes to `batch`, in key order.
    pub fn commit(self, batch: &mut Batch) {
        for ((keyspace, key), value) in self.pending {
            match value {
                Some(value) => batch.put(keyspace, key, value),
                None => batch.delete(keyspace, key),
            };
        }
    }
}

fn pending_bound(keyspace: &'static str, bound: Bound<&[u8]>, low: bool) -> Bound<PendingKey> {
    match bound {
        Bound::Included(k) => Bound::Included((keyspace, k.to_vec())),
        Bound::Excluded(k) => Bound::Excluded((keyspace, k.to_vec())),
        // The keyspace's own end: the smallest key of the keyspace, or past its largest.
        Bound::Unbounded if low => Bound::Included((keyspace, Vec::new())),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Source for Txn<'_> {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.pending.get(&(keyspace, key.to_vec())) {
            Some(value) => Ok(value.clone()),
            None => self.engine.get(keyspace, key),
        }
    }

    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let range = (
            pending_bound(keyspace, start, true),
            pending_bound(keyspace, end, false),
        );
        // BTreeMap::range panics on inverted ranges; the engine answers them as empty.
        let inverted = match (&range.0, &range.1) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e)) => s >= e,
            _ => false,
        };
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = if inverted {
            Vec::new()
        } else {
            self.pending
                .range(range)
                .filter(|((ks, _), _)| *ks == keyspace)
                .map(|((_, k), v)| (k, v))
                .collect()
        };
        // Each pending entry can hide at most one engine pair, so this many engine pairs leave
        // at least `limit` visible ones whenever that many exist.
        let want = limit.saturating_add(pending.len());
        let engine_rows = self.engine.scan(keyspace, start, end, want, false)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = engine_rows.into_iter().collect();
        // Every surviving engine pair lies at or below the last one returned, and at least
        // `limit` survive when the engine was cut short, so pending puts past it never make
        // the first `limit`.
        for (k, v) in pending {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

// Lookups shared by apply and the read API.

pub(crate) fn counters<S: Source + ?Sized>(src: &S) -> Result<Counters, StoreError> {
    Ok(src
        .load(keys::DIR, &keys::counters(src.shard()))?
        .unwrap_or_default())
}

pub(crate) fn domain<S: Source + ?Sized>(
    src: &S,
    name: &str,
) -> Result<Option<Domain>, StoreError> {
    src.load(keys::DIR, &keys::domain(src.shard(), name))
}

/// `address` must be normalized.
pub(crate) fn account<S: Source + ?Sized>(
    src: &S,
    address: &str,
) -> Result<Option<Account>, StoreError> {
    src.load(keys::DIR, &keys::account(src.shard(), address))
}

pub(crate) fn alias<S: Source + ?Sized>(
    src: &S,
    address: &str,
) -> Result<Option<Alias>, StoreError> {
    src.load(keys::DIR, &keys::alias(src.shard(), address))
}

/// The account that mail to `address` goes to: the account itself, an alias's target, or
/// for `local+tag@domain` the same for `local@domain`.
pub(crate) fn resolve<S: Source + ?Sized>(
    src: &S,
    address: &str,
) -> Result<Option<Account>, StoreError> {
    let Ok(address) = normalize_address(address) else {
        return Ok(None);
    };
    if let Some(found) = resolve_exact(src, &address)? {
        return Ok(Some(found));
    }
    match address.split_once('@') {
        Some((local, domain)) => match local.split_once('+') {
            Some((base, _tag)) if !base.is_empty() => {
                resolve_exact(src, &format!("{base}@{domain}"))
            }
            _ => Ok(None),
        },
        None => Ok(None),
    }
}

fn resolve_exact<S: Source + ?Sized>(
    src: &S,
    address: &str,
) -> Result<Option<Account>, StoreError> {
    if let Some(found) = account(src, address)? {
        return Ok(Some(found));
    }
    match alias(src, address)? {
        Some(alias) => account(src, &alias.account),
        None => Ok(None),
    }
}

pub(crate) fn mailbox_by_id<S: Source + ?Sized>(
    src: &S,
    mailbox_id: u64,
) -> Result<Option<Mailbox>, StoreError> {
    src.load(keys::DIR, &keys::mailbox(src.shard(), mailbox_id))
}

/// `name` must be normalized.
pub(crate) fn mailbox<S: Source + ?Sized>(
    src: &S,
    account_id: u64,
    name: &str,
) -> Result<Option<Mailbox>, StoreError> {
    let key = keys::mailbox_name(src.shard(), account_id, name);
    match src.get(keys::DIR, &key)? {
        Some(id) => {
            let id = decode_id(&key, &id)?;
            match mailbox_by_id(src, id)? {
                Some(mailbox) => Ok(Some(mailbox)),
                None => Err(StoreError::Corrupt(format!(
                    "mailbox name {name:?} points at missing mailbox {id}"
                ))),
            }
        }
        None => Ok(None),
    }
}

pub(crate) fn decode_id(key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("mailbox id at key {key:02x?} is not 8 bytes")))
}

/// Every mailbox of an account, by name.
pub(crate) fn mailboxes<S: Source + ?Sized>(
    src: &S,
    account_id: u64,
) -> Result<Vec<Mailbox>, StoreError> {
    let rows = src.scan_prefix(keys::DIR, &keys::mailbox_names(src.shard(), account_id))?;
    rows.iter()
        .map(|(k, v)| {
            let id = decode_id(k, v)?;
            mailbox_by_id(src, id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("mailbox name at {k:02x?} points at missing {id}"))
            })
        })
        .collect()
}

pub(crate) fn message<S: Source + ?Sized>(
    src: &S,
    mailbox_id: u64,
    uid: u32,
) -> Result<Option<Message>, StoreError> {
    src.load(keys::MSG, &keys::message(src.shard(), mailbox_id, uid))
}

/// Messages with UIDs in `first..=last`, ascending, at most `limit`.
pub(crate) fn messages<S: Source + ?Sized>(
    src: &S,
    mailbox_id: u64,
    first: u32,
    last: u32,
    limit: usize,
) -> Result<Vec<Message>, StoreError> {
    if first > last {
        return Ok(Vec::new());
    }
    let start = keys::message(src.shard(), mailbox_id, first);
    let end = keys::message(src.shard(), mailbox_id, last);
    src.scan(
        keys::MSG,
        Bound::Included(&start),
        Bound::Included(&end),
        limit,
    )?
    .into_iter()
    .map(|(k, v)| records::decode(keys::MSG, &k, &v))
    .collect()
}

pub(crate) fn blob_refs<S: Source + ?Sized>(src: &S, hash: &[u8; 32]) -> Result<u64, StoreError> {
    let key = keys::blob(src.shard(), hash);
    match src.get(keys::BLOBREF, &key)? {
        Some(v) => v
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| {
                StoreError::Corrupt(format!("blob reference count at {key:02x?} is not 8 bytes"))
            }),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use proptest::prelude::*;
    use tern_store::{Durability, EngineKind};

    use super::*;

    const KS: &str = "mail_test";

    /// A command's view must equal the committed state with its writes applied, whatever the
    /// range and the limit; the model is a plain map.
    fn check_scan(
        engine: &dyn Engine,
        case: u32,
        committed: &BTreeMap<u8, u8>,
        writes: &[(u8, Option<u8>)],
        (low, high, limit): (u8, u8, usize),
    ) -> Result<(), TestCaseError> {
        let key = |k: u8| [&case.to_be_bytes()[..], &[k]].concat();
        let mut batch = Batch::new();
        for (k, v) in committed {
            batch.put(KS, key(*k), vec![*v]);
        }
        engine.write(batch, Durability::Deferred).unwrap();
        let mut txn = Txn::new(engine, 0);
        let mut model = committed.clone();
        for (k, v) in writes {
            match v {
                Some(v) => {
                    txn.put(KS, key(*k), vec![*v]);
                    model.insert(*k, *v);
                }
                None => {
                    txn.delete(KS, key(*k));
                    model.remove(k);
                }
            }
        }
        let got: Vec<(u8, u8)> = txn
            .scan(
                KS,
                Bound::Included(&key(low)),
                Bound::Excluded(&key(high)),
                limit,
            )
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k[4], v[0]))
            .collect();
        let want: Vec<(u8, u8)> = if low < high {
            model
                .range(low..high)
                .map(|(k, v)| (*k, *v))
                .take(limit)
                .collect()
        } else {
            Vec::new()
        };
        prop_assert_eq!(got, want);
        for k in 0..16u8 {
            let got = txn.get(KS, &key(k)).unwrap().map(|v| v[0]);
            prop_assert_eq!(got, model.get(&k).copied());
        }
        Ok(())
    }

    #[test]
    fn a_commands_view_is_the_committed_state_plus_its_writes() {
        let dir = std::env::temp_dir().join(format!("tern-mail-txn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = tern_store::open(EngineKind::Redb, &dir).unwrap();
        let case = AtomicU32::new(0);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 200,
            ..ProptestConfig::default()
        });
        let result = runner.run(
            &(
                prop::collection::btree_map(0u8..16, any::<u8>(), 0..12),
                prop::collection::vec((0u8..16, prop::option::of(any::<u8>())), 0..10),
                (0u8..17, 0u8..17, 0usize..8),
            ),
            |(committed, writes, range)| {
                let case = case.fetch_add(1, Ordering::Relaxed);
                check_scan(&*engine, case, &committed, &writes, range)
            },
        );
        let _ = std::fs::remove_dir_all(&dir);
        result.unwrap();
    }
}
