//! Agent-to-agent RPC over mutual TLS: the Raft traffic of every shard a node holds.
//!
//! Every agent listens on one TCP port ([`serve`]); a peer connects with TLS, both sides
//! presenting a certificate of the cluster CA ([`TlsConfig`]). On the connection travel
//! length-prefixed frames (a `u32` big-endian length, at most [`MAX_FRAME`] bytes, then the
//! postcard-encoded message): one [`RpcRequest`], naming its shard, then its [`RpcResponse`],
//! and so on, one request at a time (ALPN `tern-rpc/1`). Raft's RPCs travel so; connections
//! are kept and reused between requests for every shard to the same peer, and a connection
//! that failed is dropped and the next request opens a new one. Every other request (writes
//! forwarded to a leader, read indexes, queries, status) shares one multiplexed connection
//! per peer (ALPN `tern-rpc/2`, see `mux`), where each frame carries its request's id and
//! answers come in any order.
//!
//! [`Network`] is openraft's `RaftNetworkFactory` over this transport. As openraft expects, a
//! peer that cannot be connected to (refused, no route, connect or handshake timeout, or not
//! running the shard) is `RPCError::Unreachable`, so openraft backs off; a request that does
//! not finish within the option's `hard_ttl` is `RPCError::Timeout`; an append too large for one
//! frame is `RPCError::PayloadTooLarge`, so openraft sends fewer entries.
//!
//! One request changes what a connection carries: [`RpcKind::ImapSession`], sent first on a
//! connection of its own ([`open_imap_session`]). When the peer accepts, the connection
//! becomes a byte pipe into an IMAP session there ([`SessionHandover`], see
//! `crate::imap::proxy`); it is never given back to the pool. The same mutual TLS admits it:
//! only cluster members can open one.

mod client;
mod mux;
mod server;
mod tls;
mod wire;

pub use client::{CallError, Connection, Network, Stream, open_imap_session};
pub use server::{
    Handover, RefusalSource, RpcStats, SessionHandover, ShardService, Shards, refusal, serve,
    serve_service, serve_with_handover, serve_with_stats, shard_status,
};
pub use tls::{TlsConfig, TlsError};
pub use wire::{ImapHello, MAX_FRAME, Refused, RpcKind, RpcRequest, RpcResponse, ShardStatus};
