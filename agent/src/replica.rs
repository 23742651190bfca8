//! The mail model as the replicated application of every shard: Raft applies committed
//! `tern_mail` commands to the shard's state machine on every replica.
//!
//! A Raft entry carries a *group* of mail commands: the shard's leader puts the commands
//! that arrive while earlier entries are being committed into one entry, so one append, one
//! fsync and one state-machine write serve many clients. The entry's bytes are
//!
//! ```text
//! u32 BE count, then count × (u32 BE length, command bytes)
//! ```
//!
//! and its response is the same framing around one encoded `tern_mail` outcome per command,
//! in order. Commands in a group apply as if each were its own entry
//! (`MailStateMachine::apply_many`).

use tern_raft::{Application, ShardId};
use tern_store::{Batch, Engine, Link, StoreError};

/// The most commands one entry carries.
pub const MAX_GROUP: usize = 512;

/// `tern_mail`'s state machine behind `tern_raft`'s application trait.
#[derive(Clone, Copy, Debug, Default)]
pub struct MailApp(tern_mail::MailStateMachine);

impl Application for MailApp {
    fn keyspaces(&self) -> &'static [&'static str] {
        self.0.keyspaces()
    }

    fn apply(
        &self,
        shard: ShardId,
        index: u64,
        engine: &dyn Engine,
        batch: &mut Batch,
        entry: &[u8],
        stored: &Link,
    ) -> Result<Vec<u8>, StoreError> {
        // A malformed group applies nothing, on every replica alike; the leader that
        // proposed it sees an empty response and reports the failure.
        let Some(commands) = decode_group(entry) else {
            return Ok(encode_group::<&[u8]>(&[]));
        };
        // Each command is a slice of the entry, so the log holds it where the entry is.
        let base = entry.as_ptr() as usize;
        let stored: Vec<Link> = commands
            .iter()
            .map(|command| stored.within(command.as_ptr() as usize - base, 0))
            .collect();
        let outcomes = self
            .0
            .apply_many(shard, index, engine, batch, &commands, &stored)?;
        Ok(encode_group(&outcomes))
    }
}

/// Frames commands (or outcomes) as one entry (or response).
pub fn encode_group<B: AsRef<[u8]>>(items: &[B]) -> Vec<u8> {
    let len: usize = items.iter().map(|i| 4 + i.as_ref().len()).sum();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        let item = item.as_ref();
        out.extend_from_slice(&(item.len() as u32).to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// The items of a group, or `None` when the bytes are not exactly one group.
pub fn decode_group(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let count = take_u32(&mut bytes)? as usize;
    // Each item needs at least its 4-byte length: a count beyond that is garbage, and must not
    // size an allocation.
    if count > bytes.len() / 4 {
        return None;
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let len = take_u32(&mut bytes)? as usize;
        if len > bytes.len() {
            return None;
        }
        let (item, rest) = bytes.split_at(len);
        items.push(item);
        bytes = rest;
    }
    bytes.is_empty().then_some(items)
}

fn take_u32(bytes: &mut &[u8]) -> Option<u32> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    *bytes = rest;
    Some(u32::from_be_bytes(*head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip_and_garbage_is_refused() {
        let items: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![], vec![7; 300]];
        let bytes = encode_group(&items);
        let back = decode_group(&bytes).unwrap();
        assert_eq!(back, items.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert_eq!(decode_group(&encode_group::<&[u8]>(&[])).unwrap().len(), 0);
        assert!(
            decode_group(&bytes[..bytes.len() - 1]).is_none(),
            "truncated"
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_group(&longer).is_none(), "trailing bytes");
        assert!(
            decode_group(&[0xff, 0xff, 0xff, 0xff]).is_none(),
            "a huge count"
        );
        assert!(decode_group(&[]).is_none());
    }
}
