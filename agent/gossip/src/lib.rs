//! tern-gossip: how Tern's nodes find each other and agree who is alive.
//!
//! Sans-IO: the membership protocol is a state machine driven by time and received packets
//! and answering with packets to send, so the same code runs on real sockets in the agent
//! and on virtual time in the deterministic simulator.
//!
//! - [`swim`]: SWIM membership (probe, indirect probes, suspicion with incarnations and
//!   refutation, dead, leave, rejoin, piggybacked updates retransmitted λ·log N times,
//!   push-pull sync) with Lifeguard-style local health; [`phi`]: phi-accrual suspicion per
//!   peer; [`message`]: what members say to each other.
//! - [`crypto`]: every packet sealed with AES-256-GCM under a key id, binding cluster name,
//!   protocol version, sender and sequence; [`replay`]: a sliding anti-replay window per
//!   sender; [`keyring`]: keys from a file, rotated install → use → remove.
//! - [`sim`]: the deterministic simulator (virtual time, seeded randomness, loss, delay,
//!   jitter, partitions, paused and crashed nodes); `cargo bench -p tern-gossip` reports
//!   detection time, false positives, convergence and bytes per node from it.
//!
//! The agent runs it on real sockets in `tern-agent`'s `gossip` module (UDP and TCP on one
//! port, DNS seeds, keyring reloads, metadata, metrics, `/cluster/members`).
#![forbid(unsafe_code)]

pub mod crypto;
pub mod keyring;
pub mod message;
pub mod phi;
pub mod replay;
pub mod sim;
pub mod swim;
