//! The frames and messages of agent-to-agent RPC.

use std::io::{self, IoSlice};

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tern_raft::{NodeId, Request, Response, ShardId, TypeConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side sends or accepts: 64 MiB. A larger length prefix is refused
/// (and the connection closed) before anything is allocated for it.
pub const MAX_FRAME: u32 = 64 << 20;

/// A request for one shard's Raft group on the peer.
#[derive(Debug, Serialize, Deserialize)]
pub struct RpcRequest {
    pub shard: ShardId,
    pub kind: RpcKind,
}

/// The Raft RPC a request carries.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcKind {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write for the shard's leader: an encoded application command (see
    /// [`crate::replica`]); a non-leader answers [`Refused::NotLeader`]. The second field is
    /// when the sender stops waiting (milliseconds since the Unix epoch): a leader that
    /// receives the write later, or cannot propose it by then, refuses it, so a write whose
    /// sender reported it failed is not carried out long after.
    Write(Request, u64),
    /// The first half of a linearizable read on a follower or learner: the leader confirms
    /// its leadership with a quorum and answers the log index the reader must have applied.
    ReadIndex,
    /// What the peer knows of the shard: for bootstrapping, catching up and leaving.
    Status,
    /// A linearizable read answered by the peer's replica (an encoded query, see
    /// `crate::shards::Query`), for nodes that hold no replica of the shard.
    Query(Request),
    /// Hands the connection over to an IMAP session for the hello's account, on a node that
    /// holds a replica of the request's shard: after an `Ok` answer the connection carries
    /// the session's bytes, no more frames (see `crate::imap::proxy`).
    ImapSession(ImapHello),
}

/// What a node relaying an IMAP session tells the node that is to serve it. The account
/// has logged in on the relaying node; the mutual TLS of the connection is what makes this
/// trusted (only cluster members hold a certificate of the cluster CA).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapHello {
    /// The account that logged in.
    pub account: String,
    /// The client's address (for logs and limits on the serving node).
    pub client: std::net::SocketAddr,
    /// Whether the client's connection is encrypted.
    pub tls: bool,
    /// The relaying node's name, for logs.
    pub via: String,
}

/// Why a peer did not carry out a [`RpcKind::Write`] or [`RpcKind::ReadIndex`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refused {
    /// The peer is not the shard's leader; `leader` is the one it knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// The shard cannot commit now (no quorum reachable, leadership being lost, shutting
    /// down); a temporary condition.
    Unavailable(String),
    /// The peer could not apply the command: the state machine stopped on a storage error.
    Failed(String),
}

/// One replica's view of a shard, answered to [`RpcKind::Status`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// Whether the replica has ever stored anything for the shard (a vote or a log entry).
    pub initialized: bool,
    /// The replica's vote's term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Whether it is the leader (and has heard a quorum recently).
    pub is_leader: bool,
    pub last_log_index: Option<u64>,
    pub applied: Option<u64>,
    /// Voters and learners of the shard's membership in its log (the last one, committed or
    /// not); `committed_membership` says whether that one is known committed.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub committed_membership: bool,
    /// Replicas that started empty while their peers had data abstain from votes until
    /// they have caught up (see `crate::shards`).
    pub abstaining: bool,
}

/// The answer to an [`RpcRequest`]: openraft's own result, or a refusal by the transport.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The peer does not (or no longer, or not yet) run the shard's Raft group.
    UnknownShard(ShardId),
    /// The command's encoded response.
    Write(Result<Response, Refused>),
    /// The log index a linearizable read must wait for (`None`: nothing committed yet).
    ReadIndex(Result<Option<u64>, Refused>),
    Status(ShardStatus),
    /// The encoded answer to a [`RpcKind::Query`].
    Query(Result<Response, Refused>),
    /// Whether the node takes the [`RpcKind::ImapSession`]; after `Ok` the session's bytes
    /// follow.
    ImapSession(Result<(), Refused>),
}

/// `message` in postcard, in a `Vec` allocated once at its exact size (Raft's appends carry
/// many commands' bodies, which growing the `Vec` by doubling would copy again).
pub(crate) fn encode<T: Serialize>(message: &T) -> io::Result<Vec<u8>> {
    postcard::experimental::serialized_size(message)
        .and_then(|size| postcard::to_extend(message, Vec::with_capacity(size)))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> io::Result<T> {
    postcard::from_bytes(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The length prefix of a frame body of `len` bytes; `InvalidInput` above [`MAX_FRAME`].
pub(crate) fn frame_len(len: usize) -> io::Result<u32> {
    u32::try_from(len)
        .ok()
        .filter(|len| *len <= MAX_FRAME)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {len} bytes exceeds {MAX_FRAME}"),
            )
        })
}

/// Writes one frame and flushes it (TLS buffers until flushed).
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = frame_len(body.len())?;
    // Length and body in one vectored write, not copied into one buffer first: TLS puts
    // both into the same records.
    let header = len.to_be_bytes();
    let mut written = 0;
    while written < header.len() + body.len() {
        let n = match written.checked_sub(header.len()) {
            None => {
                let parts = [IoSlice::new(&header[written..]), IoSlice::new(body)];
                w.write_vectored(&parts).await?
            }
            Some(at) => w.write(&body[at..]).await?,
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    w.flush().await
}

/// Reads one frame. A length above [`MAX_FRAME`] is `InvalidData`; the end of the stream
/// before a frame starts is `UnexpectedEof`.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut len = [0; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Takes at most `step` bytes per write, across the slices of a vectored one, or (not
    /// `vectored`) from its first non-empty slice only, as tokio's default does.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        vectored: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if !self.vectored {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                return self.poll_write(cx, first);
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.step - n);
                self.out.extend_from_slice(&buf[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_survive_partial_writes() {
        let body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for vectored in [true, false] {
            for step in [1, 3, 5, 4096] {
                let mut w = Trickle {
                    out: Vec::new(),
                    step,
                    vectored,
                };
                write_frame(&mut w, &body).await.unwrap();
                write_frame(&mut w, b"").await.unwrap();
                let mut r = &w.out[..];
                assert_eq!(read_frame(&mut r).await.unwrap(), body, "step {step}");
                assert_eq!(read_frame(&mut r).await.unwrap(), b"");
                assert!(r.is_empty(), "nothing after the frames");
            }
        }
    }
}
