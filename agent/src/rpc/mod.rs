//! Agent-to-agent RPC over mutual TLS: the Raft traffic of every shard a node holds.
//!
//! Every agent listens on one TCP port ([`serve`]); a peer connects with TLS, both sides
//! presenting a certificate of the cluster CA ([`TlsConfig`]). On the connection travel
//! length-prefixed frames (a `u32` big-endian length, at most [`MAX_FRAME`] bytes, then the
//! postcard-encoded message): one [`RpcRequest`], naming its shard, then its [`RpcResponse`],
//! and so on, one request at a time. Connections are kept and reused between requests for
//! every shard to the same peer; a connection that failed is dropped and the next request
//! opens a new one.
//!
//! [`Network`] is openraft's `RaftNetworkFactory` over this transport. As openraft expects, a
//! peer that cannot be connected to (refused, no route, connect or handshake timeout, or not
//! running the shard) is `RPCError::Unreachable`, so openraft backs off; a request that does
//! not finish within the option's `hard_ttl` is `RPCError::Timeout`; an append too large for one
//! frame is `RPCError::PayloadTooLarge`, so openraft sends fewer entries.

mod client;
mod server;
mod tls;
mod wire;

pub use client::{CallError, Connection, Network};
pub use server::{
    RefusalSource, RpcStats, ShardService, Shards, refusal, serve, serve_service, serve_with_stats,
    shard_status,
};
pub use tls::{TlsConfig, TlsError};
pub use wire::{MAX_FRAME, Refused, RpcKind, RpcRequest, RpcResponse, ShardStatus};
