//! What members say to each other. Encoded with postcard; the packet layer (crypto.rs)
//! seals the bytes and authenticates the sender, so `from` fields here must match it.

use serde::{Deserialize, Serialize};

/// A node's stable numeric id (never reused for another node).
pub type NodeId = u64;

/// Largest metadata blob carried in an update; bigger ones are refused by `Member::set_meta`.
pub const MAX_META_BYTES: usize = 512;

/// Membership state of one node, as gossiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    Alive,
    Suspect,
    Dead,
    /// Left on purpose (graceful leave); not a failure.
    Left,
}

/// One piggybacked membership fact: "`node` is `state` at `incarnation`, says `origin`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub node: NodeId,
    pub incarnation: u64,
    pub state: State,
    /// Who declared it: the suspecter for `Suspect` (distinct origins confirm a suspicion),
    /// the node itself for `Alive` and `Left`.
    pub origin: NodeId,
    /// Opaque node metadata (the agent's encoding); empty except on `Alive`.
    pub meta: Vec<u8>,
}

/// The protocol part of a packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Direct probe of `target`.
    Ping {
        seq: u32,
        from: NodeId,
        target: NodeId,
    },
    /// Answer to a `Ping`.
    Ack { seq: u32, from: NodeId },
    /// "Please probe `target` for me" (SWIM indirect probe).
    PingReq {
        seq: u32,
        from: NodeId,
        target: NodeId,
    },
    /// The relay heard `target` answer the probe requested with `seq`.
    IndirectAck { seq: u32, target: NodeId },
    /// The relay did not hear `target` in time (Lifeguard): proves the relay link works, so
    /// a missing nack counts against the requester's own health.
    Nack { seq: u32, from: NodeId },
    /// Only carries updates.
    Gossip,
    /// Full state exchange (push-pull, and the join handshake); `reply` asks for the peer's
    /// state back. Goes over the stream transport since it can be large.
    Sync { reply: bool, members: Vec<Update> },
}

/// One packet's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub kind: Kind,
    /// Piggybacked membership updates.
    pub updates: Vec<Update>,
}

/// A packet that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed gossip message: {0}")]
    Malformed(#[from] postcard::Error),
}

impl Message {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            updates: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising owned, well-formed values into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes untrusted bytes; never panics, trailing bytes are refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (message, rest) = postcard::take_from_bytes::<Message>(bytes)?;
        if !rest.is_empty() {
            return Err(Error::Malformed(postcard::Error::DeserializeBadEncoding));
        }
        Ok(message)
    }

    /// Whether this message belongs on the stream (TCP) transport rather than a datagram.
    pub fn needs_stream(&self) -> bool {
        matches!(self.kind, Kind::Sync { .. })
    }
}

impl Update {
    /// Encoded size, used to fill a packet up to its byte budget.
    pub fn encoded_len(&self) -> usize {
        postcard::to_stdvec(self)
            .map(|b| b.len())
            .unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn update() -> impl Strategy<Value = Update> {
        (
            any::<u64>(),
            any::<u64>(),
            0u8..4,
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..32),
        )
            .prop_map(|(node, incarnation, s, origin, meta)| Update {
                node,
                incarnation,
                state: [State::Alive, State::Suspect, State::Dead, State::Left][s as usize],
                origin,
                meta,
            })
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(seq, from, target)| Kind::Ping {
                seq,
                from,
                target
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(seq, from)| Kind::Ack { seq, from }),
            (any::<u32>(), any::<u64>(), any::<u64>())
                .prop_map(|(seq, from, target)| Kind::PingReq { seq, from, target }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(seq, target)| Kind::IndirectAck { seq, target }),
            (any::<u32>(), any::<u64>()).prop_map(|(seq, from)| Kind::Nack { seq, from }),
            Just(Kind::Gossip),
            (any::<bool>(), proptest::collection::vec(update(), 0..4))
                .prop_map(|(reply, members)| Kind::Sync { reply, members }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(kind in kind(), updates in proptest::collection::vec(update(), 0..6)) {
            let m = Message { kind, updates };
            prop_assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(&bytes);
        }
    }

    #[test]
    fn trailing_bytes_refused() {
        let mut b = Message::new(Kind::Gossip).encode();
        b.push(0);
        assert!(Message::decode(&b).is_err());
    }

    #[test]
    fn ping_is_small() {
        let m = Message::new(Kind::Ping {
            seq: 1234,
            from: 17,
            target: 3,
        });
        assert!(m.encode().len() <= 8, "{}", m.encode().len());
    }
}
