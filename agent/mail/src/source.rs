//! Reading the mail state: one set of lookups over either the committed state ([`Committed`],
//! for the read API) or a command's view of it ([`Txn`]: committed state plus the writes of
//! the earlier commands of its group plus the command's own writes so far).

use std::cmp::Ordering;
use std::collections::{BTreeMap, btree_map};
use std::iter::Peekable;
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_store::{Batch, Engine, KeyValue, Link, StoreError};

use crate::keys;
use crate::names::normalize_address;
use crate::records::{self, Account, Alias, Counters, Domain, Mailbox, Message};

/// Pairs per engine call when a whole range is read.
const SCAN_CHUNK: usize = 1024;

/// Values shorter than this are copied rather than linked to the log's copy of the command:
/// a link costs a read of the bytes to check them and a record of its own.
const MIN_LINKED: usize = 1024;

/// How far before the end of a command [`Txn::link_to`] looks for the bytes it links: bodies
/// are among the last fields of the commands that carry them, followed only by a time and an
/// idempotency key (at most 512 bytes).
const LINK_SEARCH: usize = 1024;

pub(crate) trait Source {
    fn shard(&self) -> u32;

    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether `key` has a value, without reading it where the engine can tell (bodies).
    fn contains(&self, keyspace: &'static str, key: &[u8]) -> Result<bool, StoreError>;

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

    fn contains(&self, keyspace: &'static str, key: &[u8]) -> Result<bool, StoreError> {
        self.engine.contains(keyspace, key)
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

/// One keyspace's writes; `None` is a delete.
type Layer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

static NO_WRITES: Layer = BTreeMap::new();

/// Puts and deletes that are not in the engine yet, per keyspace, in key order (so they reach
/// the batch in the same order on every replica). The last write to a key wins.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    keyspaces: BTreeMap<&'static str, Layer>,
    /// The links of the puts made with one ([`Txn::put_linked`]), per keyspace.
    links: BTreeMap<&'static str, BTreeMap<Vec<u8>, Link>>,
}

impl Writes {
    fn set(&mut self, keyspace: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.unlink(keyspace, &key);
        self.keyspaces
            .entry(keyspace)
            .or_default()
            .insert(key, value);
    }

    fn set_linked(&mut self, keyspace: &'static str, key: Vec<u8>, value: Vec<u8>, link: Link) {
        self.links
            .entry(keyspace)
            .or_default()
            .insert(key.clone(), link);
        self.keyspaces
            .entry(keyspace)
            .or_default()
            .insert(key, Some(value));
    }

    /// Forgets the link of `key`, whose value is replaced without one.
    fn unlink(&mut self, keyspace: &str, key: &[u8]) {
        if let Some(links) = self.links.get_mut(keyspace) {
            links.remove(key);
        }
    }

    /// `Some(None)` when `key` was deleted, `None` when it was not written.
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.keyspaces.get(keyspace)?.get(key)
    }

    /// The writes in a range that is not empty ([`range_is_empty`]), ascending.
    fn range<'w>(
        &'w self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> btree_map::Range<'w, Vec<u8>, Option<Vec<u8>>> {
        self.keyspaces
            .get(keyspace)
            .unwrap_or(&NO_WRITES)
            .range::<[u8], _>((start, end))
    }

    /// The smallest key put (not deleted) in [start, end).
    pub fn first_put(&self, keyspace: &'static str, start: &[u8], end: &[u8]) -> Option<&[u8]> {
        let range = (Bound::Included(start), Bound::Excluded(end));
        if range_is_empty(range.0, range.1) {
            return None;
        }
        self.range(keyspace, range.0, range.1)
            .find(|(_, value)| value.is_some())
            .map(|(key, _)| key.as_slice())
    }

    /// Lays `later` over these writes: where both write a key, `later`'s write stays.
    pub fn absorb(&mut self, later: Writes) {
        for (keyspace, layer) in &later.keyspaces {
            for key in layer.keys() {
                self.unlink(keyspace, key);
            }
        }
        for (keyspace, links) in later.links {
            self.links.entry(keyspace).or_default().extend(links);
        }
        for (keyspace, layer) in later.keyspaces {
            let mine = self.keyspaces.entry(keyspace).or_default();
            if mine.is_empty() {
                *mine = layer;
                continue;
            }
            // One insert per write: `BTreeMap::append` rebuilds the whole map, which over a
            // group of commands would be quadratic.
            for (key, value) in layer {
                mine.insert(key, value);
            }
        }
    }

    /// Appends the writes to `batch`, by keyspace, then by key.
    pub fn write_to(mut self, batch: &mut Batch) {
        for (keyspace, layer) in self.keyspaces {
            let mut links = self.links.remove(keyspace).unwrap_or_default();
            for (key, value) in layer {
                match value {
                    Some(value) => {
                        let link = links.remove(&key);
                        batch.put_linked(keyspace, key, value, link)
                    }
                    None => batch.delete(keyspace, key),
                };
            }
        }
    }
}

/// True when no key lies between `start` and `end`, as the engine answers it (`BTreeMap::range`
/// panics on some of these ranges).
fn range_is_empty(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e)) => s >= e,
        _ => false,
    }
}

/// One command's view: the engine (state as of the previous entry), overlaid with the writes
/// of the earlier commands of its group that succeeded, overlaid with the command's own
/// writes, which join the group's only if the command succeeds.
pub(crate) struct Txn<'a> {
    engine: &'a dyn Engine,
    shard: u32,
    /// The log index of the entry being applied.
    index: u64,
    staged: &'a Writes,
    pending: Writes,
    /// The command being applied, and where the log holds it.
    command: Option<(&'a [u8], &'a Link)>,
}

impl<'a> Txn<'a> {
    pub fn new(engine: &'a dyn Engine, shard: u32, index: u64, staged: &'a Writes) -> Self {
        Self {
            engine,
            shard,
            index,
            staged,
            pending: Writes::default(),
            command: None,
        }
    }

    /// Tells the transaction which command it applies and where the log holds it, so values
    /// copied from it can be linked ([`Self::link_to`]).
    pub fn stored_at(mut self, command: &'a [u8], stored: &'a Link) -> Self {
        self.command = Some((command, stored));
        self
    }

    /// A link for a value whose bytes after its first `head` are `part`, a copy of bytes of
    /// the command: found near the command's end, where bodies are. `None` for short values,
    /// or when the command does not hold the bytes there, or its place is unknown.
    pub fn link_to(&self, part: &[u8], head: usize) -> Option<Link> {
        let (command, stored) = self.command?;
        if part.len() < MIN_LINKED || part.len() > command.len() {
            return None;
        }
        let last = command.len() - part.len();
        let first = last.saturating_sub(LINK_SEARCH);
        let at = (first..=last).rev().find(|&at| {
            command[at..at + 8] == part[..8] && command[at..at + part.len()] == *part
        })?;
        Some(stored.within(at, head))
    }

    /// The log index of the entry being applied (see `tern_raft::Application::apply`).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// What this command or an earlier one of its group wrote under `key`: `Some(None)` for
    /// a delete, `None` when the group has not written it.
    pub fn written(&self, keyspace: &'static str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.pending
            .get(keyspace, key)
            .or_else(|| self.staged.get(keyspace, key))
    }

    /// The first `len` bytes of the value under `key` in the state as of the previous entry,
    /// ignoring the group's writes.
    pub fn committed_prefix(
        &self,
        keyspace: &'static str,
        key: &[u8],
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get_prefix(keyspace, key, len)
    }

    pub fn put(&mut self, keyspace: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.pending.set(keyspace, key, Some(value));
    }

    /// Puts `value`, with `link` saying where its end is stored already (see `tern_store::Link`).
    pub fn put_linked(
        &mut self,
        keyspace: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
        link: Option<Link>,
    ) {
        match link {
            Some(link) => self.pending.set_linked(keyspace, key, value, link),
            None => self.pending.set(keyspace, key, Some(value)),
        }
    }

    pub fn put_record<T: Serialize>(&mut self, keyspace: &'static str, key: Vec<u8>, value: &T) {
        self.put(keyspace, key, records::encode(value));
    }

    pub fn delete(&mut self, keyspace: &'static str, key: Vec<u8>) {
        self.pending.set(keyspace, key, None);
    }

    /// The command's own writes.
    pub fn into_writes(self) -> Writes {
        self.pending
    }
}

type WriteRange<'w> = Peekable<btree_map::Range<'w, Vec<u8>, Option<Vec<u8>>>>;

/// Two layers of writes over one range, merged in key order; `top` wins on a shared key.
struct Overlaid<'w> {
    top: WriteRange<'w>,
    below: WriteRange<'w>,
}

impl<'w> Iterator for Overlaid<'w> {
    type Item = (&'w Vec<u8>, &'w Option<Vec<u8>>);

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.top.peek(), self.below.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((t, _)), Some((b, _))) => t.cmp(b),
        };
        match order {
            Ordering::Less => self.top.next(),
            Ordering::Greater => self.below.next(),
            Ordering::Equal => {
                self.below.next();
                self.top.next()
            }
        }
    }
}

impl Source for Txn<'_> {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.written(keyspace, key) {
            Some(value) => Ok(value.clone()),
            None => self.engine.get(keyspace, key),
        }
    }

    fn contains(&self, keyspace: &'static str, key: &[u8]) -> Result<bool, StoreError> {
        match self.written(keyspace, key) {
            Some(value) => Ok(value.is_some()),
            None => self.engine.contains(keyspace, key),
        }
    }

    /// Merges the engine's pairs with the writes as it goes, so the work is bounded by the
    /// pairs returned and the writes they pass over, not by every write of the group.
    fn scan(
        &self,
        keyspace: &'static str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if limit == 0 || range_is_empty(start, end) {
            return Ok(Vec::new());
        }
        let mut writes = Overlaid {
            top: self.pending.range(keyspace, start, end).peekable(),
            below: self.staged.range(keyspace, start, end).peekable(),
        }
        .peekable();
        let mut rows = Vec::new().into_iter().peekable();
        // The last engine key read, and whether the engine has nothing past it.
        let mut read_to: Option<Vec<u8>> = None;
        let mut engine_done = false;
        // Engine pairs that writes replaced or deleted: each one read costs a pair of the page,
        // so the next read asks for that many more (reads grow geometrically).
        let mut shadowed = 0usize;
        let mut out: Vec<KeyValue> = Vec::new();
        while out.len() < limit {
            if rows.peek().is_none() && !engine_done {
                let want = (limit - out.len()).saturating_add(shadowed);
                let from = match &read_to {
                    Some(key) => Bound::Excluded(key.as_slice()),
                    None => start,
                };
                let chunk = self.engine.scan(keyspace, from, end, want, false)?;
                engine_done = chunk.len() < want;
                if let Some((key, _)) = chunk.last() {
                    read_to = Some(key.clone());
                }
                rows = chunk.into_iter().peekable();
            }
            let order = match (writes.peek(), rows.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((w, _)), Some((r, _))) => w.as_slice().cmp(r.as_slice()),
            };
            if order == Ordering::Greater {
                out.extend(rows.next());
                continue;
            }
            if order == Ordering::Equal {
                rows.next();
                shadowed += 1;
            }
            if let Some((key, Some(value))) = writes.next() {
                out.push((key.clone(), value.clone()));
            }
        }
        Ok(out)
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

/// How many messages refer to the body `hash`, as the committed state (or a command's view of
/// it) says: see [`crate::keys::BLOBREF`].
pub(crate) fn blob_refs<S: Source + ?Sized>(src: &S, hash: &[u8; 32]) -> Result<u64, StoreError> {
    let key = keys::blob(src.shard(), hash);
    if src.contains(keys::BLOB, &key)? {
        counted_refs(src, &key)
    } else {
        Ok(0)
    }
}

/// The reference count of a body that is stored: `mail_blobref`'s count, or 1 without one.
pub(crate) fn counted_refs<S: Source + ?Sized>(src: &S, key: &[u8]) -> Result<u64, StoreError> {
    match src.get(keys::BLOBREF, key)? {
        Some(v) => match <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes) {
            Ok(refs) if refs >= 2 => Ok(refs),
            _ => Err(StoreError::Corrupt(format!(
                "blob reference count at {key:02x?} is not a count from 2 up"
            ))),
        },
        None => Ok(1),
    }
}

/// A `mail_blob` value: the log index of the entry that stored the body, then the body.
pub(crate) fn blob_value(written_at: u64, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + body.len());
    value.extend_from_slice(&written_at.to_be_bytes());
    value.extend_from_slice(body);
    value
}

/// The log index a `mail_blob` value was stored at.
pub(crate) fn blob_written_at(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    value
        .first_chunk::<8>()
        .map(|at| u64::from_be_bytes(*at))
        .ok_or_else(|| StoreError::Corrupt(format!("blob at {key:02x?} has no header")))
}

/// The body of a `mail_blob` value.
pub(crate) fn blob_body(key: &[u8], mut value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    blob_written_at(key, &value)?;
    value.drain(..8);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tern_store::{Durability, EngineKind};

    use super::*;

    const KS: &str = "mail_test";

    #[test]
    fn a_link_goes_with_its_put_and_not_with_a_later_write_of_the_key() {
        let link = Link {
            keyspace: "log",
            key: b"entry".to_vec(),
            offset: 0,
            head: 1,
        };
        let mut group = Writes::default();
        for key in [b"a", b"b", b"c"] {
            group.set_linked(KS, key.to_vec(), b"xx".to_vec(), link.clone());
        }
        group.set(KS, b"b".to_vec(), Some(b"plain".to_vec()));
        let mut later = Writes::default();
        later.set(KS, b"c".to_vec(), None);
        group.absorb(later);
        let mut batch = Batch::new();
        group.write_to(&mut batch);
        let linked: Vec<(Vec<u8>, bool)> = batch
            .ops()
            .iter()
            .map(|op| match op {
                tern_store::Op::Put { key, link, .. } => (key.clone(), link.is_some()),
                tern_store::Op::Delete { key, .. } => (key.clone(), false),
            })
            .collect();
        assert_eq!(
            linked,
            vec![
                (b"a".to_vec(), true),
                (b"b".to_vec(), false),
                (b"c".to_vec(), false)
            ]
        );
    }

    type Write = (u8, Option<u8>);

    fn bound(bound: Bound<u8>) -> Bound<Vec<u8>> {
        bound.map(|k| vec![k])
    }

    /// A command's view must equal the committed state with the group's earlier writes and
    /// then its own applied, whatever the range and the limit; the model is a plain map.
    fn check_view(
        engine: &dyn Engine,
        committed: &BTreeMap<u8, u8>,
        staged_writes: &[Write],
        own_writes: &[Write],
        (low, high, limit): (Bound<u8>, Bound<u8>, usize),
    ) -> Result<(), TestCaseError> {
        // Keys are one byte, so the keyspace holds only this case's pairs.
        let mut batch = Batch::new();
        for k in 0..=u8::MAX {
            batch.delete(KS, vec![k]);
        }
        for (k, v) in committed {
            batch.put(KS, vec![*k], vec![*v]);
        }
        engine.write(batch, Durability::Deferred).unwrap();
        let mut model = committed.clone();
        let nothing = Writes::default();
        let mut staged = Txn::new(engine, 0, 1, &nothing);
        for (k, v) in staged_writes {
            write(&mut staged, &mut model, *k, *v);
        }
        let staged = staged.into_writes();
        let mut txn = Txn::new(engine, 0, 1, &staged);
        for (k, v) in own_writes {
            write(&mut txn, &mut model, *k, *v);
        }
        let (low, high) = (bound(low), bound(high));
        let got: Vec<(u8, u8)> = txn
            .scan(KS, as_ref(&low), as_ref(&high), limit)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k[0], v[0]))
            .collect();
        let want: Vec<(u8, u8)> = if range_is_empty(as_ref(&low), as_ref(&high)) {
            Vec::new()
        } else {
            let range = (low.map(|k| k[0]), high.map(|k| k[0]));
            model
                .range(range)
                .map(|(k, v)| (*k, *v))
                .take(limit)
                .collect()
        };
        prop_assert_eq!(got, want);
        for k in 0..16u8 {
            let got = txn.get(KS, &[k]).unwrap().map(|v| v[0]);
            prop_assert_eq!(got, model.get(&k).copied());
        }
        Ok(())
    }

    fn write(txn: &mut Txn<'_>, model: &mut BTreeMap<u8, u8>, k: u8, v: Option<u8>) {
        match v {
            Some(v) => {
                txn.put(KS, vec![k], vec![v]);
                model.insert(k, v);
            }
            None => {
                txn.delete(KS, vec![k]);
                model.remove(&k);
            }
        }
    }

    fn writes() -> impl Strategy<Value = Vec<Write>> {
        // Mostly deletes, so that pages run past keys the writes hide.
        let value = prop_oneof![2 => Just(None), 1 => any::<u8>().prop_map(Some)];
        prop::collection::vec((0u8..16, value), 0..12)
    }

    fn bounds() -> impl Strategy<Value = Bound<u8>> {
        prop_oneof![
            (0u8..17).prop_map(Bound::Included),
            (0u8..17).prop_map(Bound::Excluded),
            Just(Bound::Unbounded),
        ]
    }

    #[test]
    fn a_commands_view_is_the_committed_state_plus_the_groups_writes_plus_its_own() {
        let dir = std::env::temp_dir().join(format!("tern-mail-txn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = tern_store::open(EngineKind::Redb, &dir).unwrap();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 300,
            ..ProptestConfig::default()
        });
        let limit = prop_oneof![0usize..8, Just(usize::MAX)];
        let result = runner.run(
            &(
                prop::collection::btree_map(0u8..16, any::<u8>(), 0..14),
                writes(),
                writes(),
                (bounds(), bounds(), limit),
            ),
            |(committed, staged, own, range)| {
                check_view(&*engine, &committed, &staged, &own, range)
            },
        );
        let _ = std::fs::remove_dir_all(&dir);
        result.unwrap();
    }
}
