//! tern-agent: the node agent that runs in every pod of a Tern mail cluster.
//!
//! This first version follows the operator–agent contract: it reads its configuration and the
//! published [`Assignment`](tern_crds::Assignment) (from files: the ConfigMap volumes in
//! Kubernetes, plain files outside it), applies the epoch rule, and serves health and metrics.
//! Mail protocols, gossip and Raft build on it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod dev;
pub mod follow;
pub mod gossip;
pub mod http;
pub mod imap;
pub mod local_dns;
mod mailstore;
pub mod node;
pub mod outbound;
pub mod pki;
pub mod replica;
pub mod report;
pub mod rpc;
pub mod serve;
pub mod shards;
pub mod smtp;
