//! The snapshot format: a copy of one shard's application keyspaces and its Raft markers.
//!
//! ```text
//! "TERNSNP1"  header length (u32 BE)  header (postcard: applied, membership, keyspace names)
//! { 0x01  keyspace number (u8)  key length (u32 BE)  key  value length (u32 BE)  value }*
//! 0x00
//! ```
//!
//! Keys are stored without their shard prefix, so a snapshot does not depend on the shard id
//! of the node that built it. The closing `0x00` tells a complete snapshot from a cut one.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::error::{decode, encode};
use crate::typ::{LogId, StoredMembership};

const MAGIC: &[u8; 8] = b"TERNSNP1";
const PAIR: u8 = 1;
const END: u8 = 0;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) last_membership: StoredMembership,
    /// The application keyspaces, in the order pairs refer to them by number.
    pub(crate) keyspaces: Vec<String>,
}

pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(header: &Header) -> Self {
        let header = encode(header);
        let mut buf = Vec::with_capacity(MAGIC.len() + 4 + header.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&len32(header.len()).to_be_bytes());
        buf.extend_from_slice(&header);
        Self { buf }
    }

    pub(crate) fn pair(&mut self, keyspace: u8, key: &[u8], value: &[u8]) {
        self.buf.push(PAIR);
        self.buf.push(keyspace);
        self.buf.extend_from_slice(&len32(key.len()).to_be_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&len32(value.len()).to_be_bytes());
        self.buf.extend_from_slice(value);
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.push(END);
        self.buf
    }
}

/// Keys and values are bounded far below 4 GiB by both engines.
fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("keys and values are shorter than 4 GiB")
}

/// One stored pair: keyspace number, key without shard prefix, value.
pub(crate) type Pair<'a> = (u8, &'a [u8], &'a [u8]);

/// Reads the pairs of a snapshot after its header.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    done: bool,
}

/// Splits a snapshot into its header and a reader of its pairs.
pub(crate) fn open(data: &[u8]) -> Result<(Header, Reader<'_>), Error> {
    let rest = data
        .strip_prefix(MAGIC)
        .ok_or_else(|| Error::Snapshot("not a Tern snapshot (bad magic)".into()))?;
    let (header, rest) = take_sized(rest, "header")?;
    let header = decode("snapshot header", header)?;
    Ok((header, Reader { rest, done: false }))
}

impl<'a> Reader<'a> {
    /// The next `(keyspace number, key, value)`, or `None` after the last.
    pub(crate) fn next_pair(&mut self) -> Result<Option<Pair<'a>>, Error> {
        if self.done {
            return Ok(None);
        }
        match self.rest {
            [END] => {
                self.done = true;
                Ok(None)
            }
            [PAIR, keyspace, rest @ ..] => {
                let (key, rest) = take_sized(rest, "key")?;
                let (value, rest) = take_sized(rest, "value")?;
                self.rest = rest;
                Ok(Some((*keyspace, key, value)))
            }
            [] => Err(Error::Snapshot("cut short".into())),
            _ => Err(Error::Snapshot("bad record".into())),
        }
    }
}

fn take_sized<'a>(bytes: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), Error> {
    let cut = || Error::Snapshot(format!("cut short in a {what}"));
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(cut)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(cut());
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            last_applied: Some(openraft::testing::log_id(3, 1, 9)),
            last_membership: StoredMembership::default(),
            keyspaces: vec!["kv".into(), "blobs".into()],
        }
    }

    #[test]
    fn pairs_round_trip() {
        let mut writer = Writer::new(&header());
        writer.pair(0, b"a", b"1");
        writer.pair(1, b"", &[7; 300]);
        let data = writer.finish();

        let (read_header, mut reader) = open(&data).unwrap();
        assert_eq!(read_header, header());
        assert_eq!(reader.next_pair().unwrap(), Some((0, &b"a"[..], &b"1"[..])));
        assert_eq!(
            reader.next_pair().unwrap(),
            Some((1, &b""[..], &[7; 300][..]))
        );
        assert_eq!(reader.next_pair().unwrap(), None);
        assert_eq!(reader.next_pair().unwrap(), None);
    }

    #[test]
    fn a_cut_snapshot_is_refused() {
        let mut writer = Writer::new(&header());
        writer.pair(0, b"key", b"value");
        let data = writer.finish();
        for len in 0..data.len() {
            let refused = match open(&data[..len]) {
                Err(_) => true,
                Ok((_, mut reader)) => loop {
                    match reader.next_pair() {
                        Err(_) => break true,
                        Ok(None) => break false,
                        Ok(Some(_)) => {}
                    }
                },
            };
            assert!(refused, "a snapshot cut to {len} bytes was accepted");
        }
    }
}
