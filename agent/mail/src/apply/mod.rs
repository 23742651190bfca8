//! The state machine: one [`Command`] (or a group of them) in, its writes into the entry's
//! batch, an [`Outcome`] per command out.

mod directory;
mod messages;
mod queue;

use std::ops::Bound;

use tern_store::{Batch, Engine, Link, StoreError};

use crate::command::{Command, Outcome, Reply, encode_outcome};
use crate::error::MailError;
use crate::keys::{self, KEYSPACES};
use crate::records::IdemRecord;
use crate::source::{self, Source, Txn, Writes};

/// Expired idempotency records one command deletes at most: enough to keep up with the rate
/// at which they are written (at most one per command), bounded so no entry does much work.
const IDEMPOTENCY_PRUNE_PER_COMMAND: usize = 4;

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 512;

/// Applies mail commands to a shard's state. Deterministic: the same state and command give
/// the same writes and the same response on every replica.
#[derive(Clone, Copy, Debug, Default)]
pub struct MailStateMachine;

/// Why a command step stopped: a refusal (a response) or a local storage failure (no
/// response; the replica must stop applying).
pub(crate) enum Fail {
    Mail(MailError),
    Store(StoreError),
}

impl From<MailError> for Fail {
    fn from(e: MailError) -> Self {
        Fail::Mail(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

pub(crate) type Step<T> = Result<T, Fail>;

impl MailStateMachine {
    pub fn new() -> Self {
        Self
    }

    /// The keyspaces [`apply`](Self::apply) writes.
    pub fn keyspaces(&self) -> &'static [&'static str] {
        KEYSPACES
    }

    /// Applies one encoded [`Command`] for `shard`, as the entry at log index `index` (every
    /// entry's index is higher than the previous one's, as in a Raft log).
    ///
    /// Reads the state as of the previous entry through `engine` (ops already in `batch` are
    /// not read, so the caller writes each entry's batch before applying the next) and, when
    /// the command succeeds, appends its writes to `batch`; a refused command writes nothing.
    /// Returns the encoded [`Outcome`] ([`crate::decode_response`]); a malformed command is
    /// an `Err(MailError::Malformed)` outcome.
    ///
    /// `Err` only when reading the engine failed (I/O, corruption): that is local to this
    /// replica, so it must not become a response, which would make replicas diverge. The Raft
    /// layer treats it as a storage error and stops the replica.
    ///
    /// The same as [`apply_many`](Self::apply_many) with one command.
    pub fn apply(
        &self,
        shard: u32,
        index: u64,
        engine: &dyn Engine,
        batch: &mut Batch,
        command: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let mut group = Group::new(engine, shard, index);
        let response = group.apply(command, None)?;
        group.write_to(batch);
        Ok(response)
    }

    /// Applies several encoded [`Command`]s for `shard` in order, as if each were its own
    /// entry applied after the previous one: command `k` reads the state as of the previous
    /// entry (through `engine`, as [`apply`](Self::apply)) plus the writes of the commands
    /// `0..k` that succeeded. A refused command leaves no trace: the commands after it do not
    /// see its writes and none reach `batch`.
    ///
    /// The writes of the whole group are appended to `batch` at the end, once per key (the
    /// last write wins), by keyspace and key, so the group is one engine write and every
    /// replica builds the same batch. The engine state after writing it is the one that
    /// applying the commands one by one, one batch each, would leave. Returns one encoded
    /// [`Outcome`] per command, in order.
    ///
    /// `stored[k]`, when given, says where the Raft log holds `commands[k]`
    /// (`tern_raft::Application::apply`): the bodies the commands carry are then put linked
    /// to it, so an engine holding both stores each body once.
    ///
    /// `Err` only when reading the engine failed, as for [`apply`](Self::apply); `batch` is
    /// then left as it was.
    pub fn apply_many(
        &self,
        shard: u32,
        index: u64,
        engine: &dyn Engine,
        batch: &mut Batch,
        commands: &[&[u8]],
        stored: &[Link],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut group = Group::new(engine, shard, index);
        let responses = commands
            .iter()
            .enumerate()
            .map(|(k, command)| group.apply(command, stored.get(k)))
            .collect::<Result<Vec<_>, _>>()?;
        group.write_to(batch);
        Ok(responses)
    }
}

/// Commands applied one after another over the same engine state; their writes collect in
/// `staged` until the group is written as one batch.
struct Group<'a> {
    engine: &'a dyn Engine,
    shard: u32,
    /// The entry's log index.
    index: u64,
    /// The writes of the commands that succeeded so far.
    staged: Writes,
    /// No idempotency time-index entry lies below this key (in the engine overlaid with
    /// `staged`). The next prune starts its scan here rather than at the start of the index,
    /// so a group does not read again, command after command, the entries its earlier
    /// commands pruned.
    prune_from: Vec<u8>,
}

impl<'a> Group<'a> {
    fn new(engine: &'a dyn Engine, shard: u32, index: u64) -> Self {
        Self {
            engine,
            shard,
            index,
            staged: Writes::default(),
            prune_from: keys::idem_times(shard),
        }
    }

    fn apply(&mut self, bytes: &[u8], stored: Option<&Link>) -> Result<Vec<u8>, StoreError> {
        let command = match Command::decode(bytes) {
            Ok(command) => command,
            Err(e) => return Ok(encode_outcome(&Err(e))),
        };
        let shard = self.shard;
        let mut txn = Txn::new(self.engine, shard, self.index, &self.staged);
        if let Some(stored) = stored {
            txn = txn.stored_at(bytes, stored);
        }
        let idempotency = match idempotency(&command) {
            Ok(idempotency) => idempotency,
            Err(e) => return Ok(encode_outcome(&Err(e))),
        };
        if let Some((key, _)) = &idempotency
            && let Some(record) = txn.load::<IdemRecord>(keys::IDEM, &keys::idem_key(shard, key))?
        {
            return Ok(record.response);
        }
        let outcome: Outcome = match execute(&mut txn, command) {
            Ok(reply) => Ok(reply),
            Err(Fail::Mail(e)) => Err(e),
            Err(Fail::Store(e)) => return Err(e),
        };
        let response = encode_outcome(&outcome);
        if outcome.is_ok() {
            let mut prune_from = None;
            if let Some((key, now)) = idempotency {
                remember(&mut txn, &key, now, &response);
                prune_from = Some(prune_idempotency(&mut txn, now, &self.prune_from)?);
            }
            let writes = txn.into_writes();
            if let Some(prune_from) = prune_from {
                self.prune_from = prune_from;
            }
            // An entry this command put below the mark (a proposer's clock behind the
            // others') is the next prune's to find.
            if let Some(below) =
                writes.first_put(keys::IDEM, &keys::idem_times(shard), &self.prune_from)
            {
                self.prune_from = below.to_vec();
            }
            self.staged.absorb(writes);
        }
        Ok(response)
    }

    fn write_to(self, batch: &mut Batch) {
        self.staged.write_to(batch);
    }
}

fn execute(txn: &mut Txn<'_>, command: Command) -> Step<Reply> {
    match command {
        Command::CreateDomain { domain, now } => directory::create_domain(txn, &domain, now),
        Command::DeleteDomain { domain } => directory::delete_domain(txn, &domain),
        Command::CreateAccount {
            address,
            password_hash,
            quota_bytes,
            now,
        } => directory::create_account(txn, &address, password_hash, quota_bytes, now),
        Command::DeleteAccount { address } => directory::delete_account(txn, &address),
        Command::SetPassword {
            address,
            password_hash,
        } => directory::set_password(txn, &address, password_hash),
        Command::SetQuota {
            address,
            quota_bytes,
        } => directory::set_quota(txn, &address, quota_bytes),
        Command::AddAlias { alias, account } => directory::add_alias(txn, &alias, &account),
        Command::RemoveAlias { alias } => directory::remove_alias(txn, &alias),
        Command::CreateMailbox {
            account,
            name,
            special_use,
            now,
        } => directory::create_mailbox(txn, &account, &name, special_use, now),
        Command::DeleteMailbox { account, name } => directory::delete_mailbox(txn, &account, &name),
        Command::RenameMailbox {
            account,
            from,
            to,
            now,
        } => directory::rename_mailbox(txn, &account, &from, &to, now),
        Command::Subscribe { account, name } => directory::subscribe(txn, &account, &name, true),
        Command::Unsubscribe { account, name } => directory::subscribe(txn, &account, &name, false),
        Command::Deliver {
            idempotency_key: _,
            recipients,
            mailbox,
            internal_date,
            flags,
            body,
            now: _,
        } => messages::deliver(
            txn,
            &recipients,
            mailbox.as_deref(),
            internal_date,
            &flags,
            &body,
        ),
        Command::Append {
            account,
            mailbox,
            flags,
            internal_date,
            body,
            idempotency_key: _,
            now: _,
        } => messages::append(txn, &account, &mailbox, &flags, internal_date, &body),
        Command::Store {
            account,
            mailbox,
            uids,
            op,
            flags,
            unchanged_since,
        } => messages::store(txn, &account, &mailbox, &uids, op, &flags, unchanged_since),
        Command::Expunge {
            account,
            mailbox,
            uids,
        } => messages::expunge(txn, &account, &mailbox, uids.as_ref()),
        Command::Copy {
            account,
            from,
            to,
            uids,
        } => messages::copy(txn, &account, &from, &to, &uids, false),
        Command::Move {
            account,
            from,
            to,
            uids,
        } => messages::copy(txn, &account, &from, &to, &uids, true),
        Command::Enqueue {
            idempotency_key: _,
            sender,
            account,
            recipients,
            body,
            expires_at,
            now,
        } => queue::enqueue(txn, &sender, &account, &recipients, &body, expires_at, now),
        Command::ClaimOutbound {
            id,
            node,
            lease_ms,
            now,
        } => queue::claim(txn, id, node, lease_ms, now),
        Command::RecordOutbound {
            id,
            token,
            outcomes,
            next_attempt,
            release,
            now: _,
        } => queue::record(txn, id, token, &outcomes, next_attempt, release),
        Command::RemoveOutbound { id, token } => queue::remove(txn, id, token),
        Command::AppendMany {
            account,
            mailbox,
            messages,
            idempotency_key: _,
            now: _,
        } => messages::append_many(txn, &account, &mailbox, &messages),
    }
}

/// The idempotency key and clock of a command that has one.
fn idempotency(command: &Command) -> Result<Option<(Vec<u8>, i64)>, MailError> {
    let (key, now) = match command {
        Command::Deliver {
            idempotency_key,
            now,
            ..
        } => (idempotency_key, *now),
        Command::Append {
            idempotency_key: Some(idempotency_key),
            now,
            ..
        } => (idempotency_key, *now),
        Command::AppendMany {
            idempotency_key: Some(idempotency_key),
            now,
            ..
        } => (idempotency_key, *now),
        Command::Enqueue {
            idempotency_key,
            now,
            ..
        } => (idempotency_key, *now),
        _ => return Ok(None),
    };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(MailError::InvalidCommand(format!(
            "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    Ok(Some((key.clone(), now)))
}

pub(crate) fn clock(now: i64) -> u64 {
    u64::try_from(now).unwrap_or(0)
}

fn remember(txn: &mut Txn<'_>, key: &[u8], now: i64, response: &[u8]) {
    let shard = txn.shard();
    let record = IdemRecord {
        at: now,
        response: response.to_vec(),
    };
    txn.put_record(keys::IDEM, keys::idem_key(shard, key), &record);
    txn.put(
        keys::IDEM,
        keys::idem_time(shard, clock(now), key),
        Vec::new(),
    );
}

/// Deletes a few idempotency records older than the TTL, oldest first, by the proposer's clock
/// (in the command, so every replica deletes the same ones).
///
/// `from` is a time-index key below which the command's view holds no entry (the group's
/// [`Group::prune_from`]); the scan starts there, which finds what a scan from the start of
/// the index would: the command's own entry (`remember`) is at its clock, past the cutoff.
/// Returns the new such key for the view after the deletions (the caller lowers it for the
/// entries the command put): the first entry that is left, when the scan reached it, so the
/// commands after this one need not scan while nothing has expired (their cutoff is below it).
fn prune_idempotency(txn: &mut Txn<'_>, now: i64, from: &[u8]) -> Result<Vec<u8>, StoreError> {
    let cutoff = now.saturating_sub(crate::IDEMPOTENCY_TTL_MS);
    if cutoff <= 0 {
        return Ok(from.to_vec());
    }
    let shard = txn.shard();
    let start = keys::idem_times(shard);
    let end = keys::idem_time(shard, clock(cutoff), &[]);
    if from >= end.as_slice() {
        // Nothing lies below `from`, so nothing below the cutoff.
        return Ok(from.to_vec());
    }
    // One entry more than is pruned: the first one left, if the scan gets that far.
    let mut page = txn.scan(
        keys::IDEM,
        Bound::Included(from),
        source::as_ref(&keys::prefix_upper(&start)),
        IDEMPOTENCY_PRUNE_PER_COMMAND + 1,
    )?;
    let expired = page
        .iter()
        .take(IDEMPOTENCY_PRUNE_PER_COMMAND)
        .take_while(|(key, _)| *key < end)
        .count();
    let left = page.get(expired).map(|(key, _)| key.clone());
    page.truncate(expired);
    // The index is empty up to the first entry left; after a full page of expired entries,
    // up to the last of them (the smallest key after it is that key with a zero byte
    // appended); when the scan found nothing more, up to the end of the index.
    let mut emptied_to = match (left, page.last()) {
        (Some(left), _) if *left >= *end => left,
        (_, Some((last, _))) if expired == IDEMPOTENCY_PRUNE_PER_COMMAND => {
            [last.as_slice(), &[0]].concat()
        }
        _ => keys::prefix_end(&start).unwrap_or(end),
    };
    for (time_key, _) in page {
        let entry = time_key
            .get(start.len()..)
            .filter(|rest| rest.len() >= 8)
            .map(|rest| rest.split_at(8));
        let Some((at, key)) = entry else {
            // Left in place, so the index is empty only up to it.
            emptied_to = emptied_to.min(time_key);
            continue;
        };
        let record_key = keys::idem_key(shard, key);
        // Only the record this index entry was written for; a newer one has its own entry.
        if let Some(record) = txn.load::<IdemRecord>(keys::IDEM, &record_key)?
            && clock(record.at).to_be_bytes() == at
        {
            txn.delete(keys::IDEM, record_key);
        }
        txn.delete(keys::IDEM, time_key);
    }
    Ok(emptied_to)
}
