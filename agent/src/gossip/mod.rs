//! Gossip membership on real sockets: the `tern-gossip` protocol (SWIM with phi-accrual
//! suspicion, sealed packets) run by the agent.
//!
//! # Transports
//!
//! One UDP socket and one TCP listener on the same port (`TERN_GOSSIP_ADDR`, default
//! `0.0.0.0:<gossip.port>`, 7946 in Kubernetes). Probes, acks and piggybacked updates travel
//! as datagrams; the full-state exchanges (push-pull, joining) that may be large travel over
//! TCP, one length-prefixed frame each way per connection ([`transport`]). Every datagram and
//! every frame is one packet sealed with the keyring's primary key and a sequence number from
//! a counter started at boot time; received ones are opened against the keyring and the
//! anti-replay table. A packet that fails any check is dropped and counted by reason in
//! `/metrics` (`tern_gossip_packets_dropped_total`): it changes no state, not even the
//! address a member is reached at.
//!
//! # Identity and addresses
//!
//! A node gossips under the id the assignment gives its name; until the assignment names it,
//! its gossip waits. Members are reached at the address their last authenticated datagram
//! came from, the address that answered a dial, or the gossip address in their metadata,
//! whichever was learned last. Seeds (`gossip.seeds` of the configuration — the headless
//! Service's name — and `TERN_GOSSIP_SEEDS`) are host names or addresses whose node ids are
//! unknown: while a node has not joined, or knows no live member, it sends a join request
//! (its state, asking for theirs) to a few of them every second; names are resolved again
//! every 30 s. A seed that turns out to be this node is skipped from then on.
//!
//! # Keys
//!
//! `TERN_GOSSIP_KEY_FILE`, read again every 5 s ([`keys`]): rotation (install → use →
//! remove, each step on every node before the next) needs no restart.
//!
//! # Metadata
//!
//! Each node gossips its name, pool, version, gossip and RPC addresses, and the shards it
//! holds with its Raft role in each ([`meta`]); rebuilt every second from a [`ShardSource`]
//! and announced (with a new incarnation) only when it changed.
//!
//! # Serving it
//!
//! [`Gossip`] is the handle the rest of the agent uses: the members as this node sees them,
//! whether a node is live (routing), whether this node has joined (readiness), and a graceful
//! [`Gossip::leave`] at shutdown. The HTTP server serves it at `GET /cluster/members` and in
//! `/metrics`.

mod handle;
pub mod keys;
pub mod meta;
mod metrics;
mod options;
mod runtime;
pub mod transport;

pub use handle::{ClusterMembers, Gossip, MemberState, MemberView, ShardView};
pub use metrics::MALFORMED;
pub use options::{GossipOptions, Seed, advertised};
pub use runtime::{ShardSource, start};

#[cfg(test)]
mod tests;
