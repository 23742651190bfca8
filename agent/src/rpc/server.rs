//! The RPC server: accepts peers over mutual TLS and hands their Raft requests to the shard.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::VoteResponse;
use rustls::ServerConfig;
use tern_raft::{Node, NodeId, ShardId, ShardRaft};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::mux::{self, ALPN_MUX, Handler};
use super::wire::{
    ImapHello, Refused, RpcKind, RpcRequest, RpcResponse, ShardStatus, decode, encode, read_frame,
    write_frame,
};

/// How long a peer has to complete the TLS handshake after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may sit without completing a frame. Clients pool idle connections
/// and retry once on a fresh one, so closing an idle one costs nothing; a peer that sends half
/// a frame and stalls no longer holds a task forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The shards this node runs, by id; the server looks a request's shard up for each request,
/// so shards may come and go while it runs.
pub type Shards = Arc<RwLock<BTreeMap<ShardId, ShardRaft>>>;

/// What the server counted; shared with whoever reports metrics.
#[derive(Debug, Default)]
pub struct RpcStats {
    /// Connections accepted (TCP).
    pub connections: AtomicU64,
    /// TLS handshakes that failed or timed out (e.g. a peer without a certificate of the CA).
    pub handshake_failures: AtomicU64,
    /// Connections closed because of a malformed frame (too long, or not a request).
    pub malformed_frames: AtomicU64,
    /// Requests for a shard this node does not run.
    pub unknown_shard: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Connections closed because no complete frame arrived within the idle timeout.
    pub idle_closed: AtomicU64,
}

/// What the server needs of the node: the Raft group of a shard, and answers to the requests
/// that are not Raft's own ([`RpcKind::Write`], [`RpcKind::ReadIndex`], [`RpcKind::Status`]).
pub trait ShardService: Send + Sync + 'static {
    /// The shard's running Raft group.
    fn raft(&self, shard: ShardId) -> Option<ShardRaft>;

    /// Whether this replica must not grant votes for the shard (it started empty while its
    /// peers hold data, and has not caught up yet).
    fn abstaining(&self, _shard: ShardId) -> bool {
        false
    }

    /// Answers a request that is not a Raft RPC, for a shard this node runs.
    fn handle(
        &self,
        shard: ShardId,
        raft: ShardRaft,
        kind: RpcKind,
    ) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>>;
}

/// A bare map of shards (tests of the transport) runs Raft's RPCs and answers status; it
/// takes no writes, read indexes or queries: those need a [`crate::shards::ShardHost`].
impl ShardService for RwLock<BTreeMap<ShardId, ShardRaft>> {
    fn raft(&self, shard: ShardId) -> Option<ShardRaft> {
        self.read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&shard)
            .cloned()
    }

    fn handle(
        &self,
        _shard: ShardId,
        raft: ShardRaft,
        kind: RpcKind,
    ) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>> {
        let refused = || Refused::Failed("this server runs Raft only".into());
        let response = match kind {
            RpcKind::Status => RpcResponse::Status(shard_status(&raft, false)),
            RpcKind::Write(..) => RpcResponse::Write(Err(refused())),
            RpcKind::ReadIndex => RpcResponse::ReadIndex(Err(refused())),
            RpcKind::Query(_) => RpcResponse::Query(Err(refused())),
            other => unreachable!("Raft RPCs are dispatched by the server: {other:?}"),
        };
        Box::pin(std::future::ready(response))
    }
}

/// Turns openraft's refusal of a write or read into the wire's.
pub fn refusal<E: RefusalSource>(error: &RaftError<NodeId, E>) -> Refused {
    match error {
        RaftError::APIError(e) => match e.forward_to_leader() {
            Some(forward) => Refused::NotLeader {
                leader: forward.leader_id,
            },
            None => Refused::Unavailable(e.to_string()),
        },
        RaftError::Fatal(e) => Refused::Unavailable(format!("shard stopped: {e}")),
    }
}

/// openraft's API errors that may say "not the leader, ask that one".
pub trait RefusalSource: std::error::Error {
    fn forward_to_leader(&self) -> Option<&ForwardToLeader<NodeId, Node>>;
}

impl RefusalSource for ClientWriteError<NodeId, Node> {
    fn forward_to_leader(&self) -> Option<&ForwardToLeader<NodeId, Node>> {
        match self {
            ClientWriteError::ForwardToLeader(f) => Some(f),
            ClientWriteError::ChangeMembershipError(_) => None,
        }
    }
}

impl RefusalSource for CheckIsLeaderError<NodeId, Node> {
    fn forward_to_leader(&self) -> Option<&ForwardToLeader<NodeId, Node>> {
        match self {
            CheckIsLeaderError::ForwardToLeader(f) => Some(f),
            CheckIsLeaderError::QuorumNotEnough(_) => None,
        }
    }
}

/// The replica's view of its shard, from openraft's metrics.
pub fn shard_status(raft: &ShardRaft, abstaining: bool) -> ShardStatus {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    ShardStatus {
        initialized: m.last_log_index.is_some() || m.vote.leader_id().term > 0,
        term: m.vote.leader_id().term,
        leader: m.current_leader,
        is_leader: m.state == openraft::ServerState::Leader,
        last_log_index: m.last_log_index,
        applied: m.last_applied.map(|id| id.index),
        voters,
        learners,
        committed_membership: m
            .membership_config
            .log_id()
            .is_some_and(|id| m.last_applied.is_some_and(|a| a.index >= id.index)),
        abstaining,
    }
}

/// Who takes over connections that ask for an IMAP session ([`RpcKind::ImapSession`]).
pub trait SessionHandover: Send + Sync + 'static {
    /// Whether this node takes a session for `hello` on `shard` (it serves IMAP and holds a
    /// replica of the shard, which is the account's); the reason for a refusal otherwise.
    fn accept(&self, shard: ShardId, hello: &ImapHello) -> Result<(), String>;

    /// Runs the accepted session on `stream` until it ends; `peer` is the relaying node.
    fn serve(
        &self,
        stream: Box<dyn tern_imap::RelayStream>,
        hello: ImapHello,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Where the IMAP listeners register their [`SessionHandover`] once they run; until then
/// (and on nodes without IMAP) session requests are refused.
pub type Handover = Arc<OnceLock<Arc<dyn SessionHandover>>>;

/// Serves RPC on `listener` until the task is dropped (aborted).
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, shards: Shards) {
    serve_with_stats(listener, tls, shards, Arc::default()).await
}

/// As [`serve`], counting into `stats`.
pub async fn serve_with_stats(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    shards: Shards,
    stats: Arc<RpcStats>,
) {
    serve_service(listener, tls, shards, stats).await
}

/// Serves RPC for `service` on `listener` until the task is dropped (aborted).
pub async fn serve_service(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    shards: Arc<dyn ShardService>,
    stats: Arc<RpcStats>,
) {
    serve_with_handover(listener, tls, shards, stats, Handover::default()).await
}

/// As [`serve_service`], handing connections that ask for an IMAP session to `handover`.
pub async fn serve_with_handover(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    shards: Arc<dyn ShardService>,
    stats: Arc<RpcStats>,
    handover: Handover,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: wait a little instead of spinning.
                tracing::warn!(%error, "rpc: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shards = shards.clone();
        let stats = stats.clone();
        let handover = handover.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, %error, "rpc: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, "rpc: TLS handshake timed out");
                    return;
                }
            };
            if stream.get_ref().1.alpn_protocol() == Some(ALPN_MUX) {
                let handler: Handler = {
                    let stats = stats.clone();
                    Arc::new(move |request| {
                        let (shards, stats) = (shards.clone(), stats.clone());
                        Box::pin(async move { answer_multiplexed(&shards, &stats, request).await })
                    })
                };
                mux::serve(stream, peer, handler, stats, IDLE_TIMEOUT).await;
                return;
            }
            let ends = Ends {
                shards: &shards,
                handover: &handover,
            };
            connection(stream, peer, ends, &stats, IDLE_TIMEOUT).await;
        });
    }
}

/// What a connection's requests are served by.
#[derive(Clone, Copy)]
struct Ends<'a> {
    shards: &'a Arc<dyn ShardService>,
    handover: &'a Handover,
}

/// Answers one peer's requests, one after another, until it closes or sends garbage, or
/// hands the connection over to an IMAP session.
async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
    peer: SocketAddr,
    ends: Ends<'_>,
    stats: &RpcStats,
    idle_timeout: Duration,
) {
    let shards = ends.shards;
    loop {
        let frame = match tokio::time::timeout(idle_timeout, read_frame(&mut stream)).await {
            Ok(frame) => frame,
            Err(_) => {
                stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "rpc: no complete frame in time, closing the connection");
                return;
            }
        };
        let request = match frame.and_then(|f| decode(&f)) {
            Ok(request) => request,
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                stats.malformed_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, %error, "rpc: malformed frame, closing the connection");
                return;
            }
            // The peer closed (between frames or not) or the connection broke.
            Err(_) => return,
        };
        let request = match request {
            RpcRequest {
                shard,
                kind: RpcKind::ImapSession(hello),
            } => {
                let Some(handover) = ends.handover.get() else {
                    let refused = Refused::Unavailable("this node serves no IMAP".into());
                    answer(&mut stream, peer, RpcResponse::ImapSession(Err(refused))).await;
                    return;
                };
                if let Err(why) = handover.accept(shard, &hello) {
                    tracing::info!(%peer, shard, why, "rpc: IMAP session refused");
                    let refused = Refused::Unavailable(why);
                    answer(&mut stream, peer, RpcResponse::ImapSession(Err(refused))).await;
                    return;
                }
                stats.requests.fetch_add(1, Ordering::Relaxed);
                if answer(&mut stream, peer, RpcResponse::ImapSession(Ok(()))).await {
                    handover.serve(Box::new(stream), hello, peer).await;
                }
                return;
            }
            request => request,
        };
        let response = dispatch(shards, stats, request).await;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let sent = match encode(&response) {
            Ok(body) => write_frame(&mut stream, &body).await,
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            tracing::debug!(%peer, %error, "rpc: cannot answer, closing the connection");
            return;
        }
    }
}

/// Sends one answer; whether it went out.
async fn answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    response: RpcResponse,
) -> bool {
    let sent = match encode(&response) {
        Ok(body) => write_frame(stream, &body).await,
        Err(error) => Err(error),
    };
    if let Err(error) = &sent {
        tracing::debug!(%peer, %error, "rpc: cannot answer, closing the connection");
    }
    sent.is_ok()
}

/// Answers a request of a multiplexed connection, which carries no IMAP sessions: those take
/// a connection of their own over.
async fn answer_multiplexed(
    shards: &Arc<dyn ShardService>,
    stats: &RpcStats,
    request: RpcRequest,
) -> RpcResponse {
    match request.kind {
        RpcKind::ImapSession(_) => RpcResponse::ImapSession(Err(Refused::Unavailable(
            "an IMAP session needs a connection of its own".into(),
        ))),
        _ => dispatch(shards, stats, request).await,
    }
}

async fn dispatch(
    shards: &Arc<dyn ShardService>,
    stats: &RpcStats,
    request: RpcRequest,
) -> RpcResponse {
    let Some(raft) = shards.raft(request.shard) else {
        stats.unknown_shard.fetch_add(1, Ordering::Relaxed);
        return RpcResponse::UnknownShard(request.shard);
    };
    match request.kind {
        RpcKind::AppendEntries(rpc) => RpcResponse::AppendEntries(raft.append_entries(rpc).await),
        RpcKind::Vote(_) if shards.abstaining(request.shard) => {
            // Not a refusal openraft would send itself, but one it handles: the candidate
            // sees a vote that is not granted and not higher than its own.
            let m = raft.metrics().borrow().clone();
            RpcResponse::Vote(Ok(VoteResponse {
                vote: m.vote,
                vote_granted: false,
                last_log_id: m.last_applied,
            }))
        }
        RpcKind::Vote(rpc) => RpcResponse::Vote(raft.vote(rpc).await),
        RpcKind::InstallSnapshot(rpc) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        kind => shards.handle(request.shard, raft, kind).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_stalled_half_frame_is_dropped_after_the_idle_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let shards: Arc<dyn ShardService> = Shards::default();
        let stats = RpcStats::default();
        // A length prefix announcing 100 bytes, then only 3 of them, then silence.
        client.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let handover = Handover::default();
        let ends = Ends {
            shards: &shards,
            handover: &handover,
        };
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            connection(server, peer, ends, &stats, Duration::from_millis(100)),
        )
        .await;
        assert!(
            served.is_ok(),
            "the connection task ends instead of waiting forever"
        );
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
        drop(client);
    }
}
