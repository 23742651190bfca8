//! The RPC server: accepts peers over mutual TLS and hands their Raft requests to the shard.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use tern_raft::{ShardId, ShardRaft};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::wire::{RpcKind, RpcRequest, RpcResponse, decode, encode, read_frame, write_frame};

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
            connection(stream, peer, &shards, &stats, IDLE_TIMEOUT).await;
        });
    }
}

/// Answers one peer's requests, one after another, until it closes or sends garbage.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    shards: &Shards,
    stats: &RpcStats,
    idle_timeout: Duration,
) {
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

async fn dispatch(shards: &Shards, stats: &RpcStats, request: RpcRequest) -> RpcResponse {
    let raft = shards
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&request.shard)
        .cloned();
    let Some(raft) = raft else {
        stats.unknown_shard.fetch_add(1, Ordering::Relaxed);
        return RpcResponse::UnknownShard(request.shard);
    };
    match request.kind {
        RpcKind::AppendEntries(rpc) => RpcResponse::AppendEntries(raft.append_entries(rpc).await),
        RpcKind::Vote(rpc) => RpcResponse::Vote(raft.vote(rpc).await),
        RpcKind::InstallSnapshot(rpc) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_stalled_half_frame_is_dropped_after_the_idle_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let shards: Shards = Arc::default();
        let stats = RpcStats::default();
        // A length prefix announcing 100 bytes, then only 3 of them, then silence.
        client.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            connection(server, peer, &shards, &stats, Duration::from_millis(100)),
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
