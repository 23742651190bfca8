//! The RPC client: openraft's network for one shard, over connections shared by all shards.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tern_raft::{Node, NodeId, ShardId, TypeConfig};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::mux::{self, ALPN_MUX, Mux, MuxError};
use super::tls::ALPN;
use super::wire::{
    MAX_FRAME, RpcKind, RpcRequest, RpcResponse, decode, encode, read_frame, write_frame,
};

/// Idle connections kept per peer address, for the next request of any shard. Forwarded
/// writes hold a connection each while they wait for their commit, so under load many are in
/// use at once; keeping them spares a TLS handshake per request (the peer closes idle ones).
const IDLE_PER_PEER: usize = 64;

/// A connection to a peer's RPC server.
pub type Stream = TlsStream<TcpStream>;
type Pool = Arc<Mutex<BTreeMap<String, Vec<(Stream, Instant)>>>>;

/// An idle connection older than this is not reused: the server closes connections idle for
/// 120 s, and a request that may not be repeated (a forwarded write) must not go out on one
/// the peer is closing.
const IDLE_REUSE: Duration = Duration::from_secs(60);

/// openraft's network for one shard of this node.
///
/// Clones, and the networks of other shards made with [`for_shard`](Self::for_shard), share
/// one pool of idle connections per peer for Raft's RPCs, and one multiplexed connection per
/// peer for every other request ([`request`](Self::request)).
#[derive(Clone)]
pub struct Network {
    pub tls: Arc<ClientConfig>,
    pub shard: ShardId,
    idle: Pool,
    peers: Arc<Peers>,
}

impl Network {
    pub fn new(tls: Arc<ClientConfig>, shard: ShardId) -> Self {
        let mut multiplexed = (*tls).clone();
        // A peer that does not know `tern-rpc/2` (an older agent) picks `tern-rpc/1`.
        multiplexed.alpn_protocols = vec![ALPN_MUX.to_vec(), ALPN.to_vec()];
        Self {
            tls,
            shard,
            idle: Pool::default(),
            peers: Arc::new(Peers {
                tls: Arc::new(multiplexed),
                slots: Mutex::default(),
            }),
        }
    }

    /// The network of another shard, sharing this one's connections.
    pub fn for_shard(&self, shard: ShardId) -> Self {
        Self {
            tls: self.tls.clone(),
            shard,
            idle: self.idle.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// The multiplexed connections of a [`Network`], one per peer address.
struct Peers {
    /// Offering `tern-rpc/2`, then `tern-rpc/1`.
    tls: Arc<ClientConfig>,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
}

/// The multiplexed connection to one peer.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<Mux>>>,
    /// Until when the peer is taken to know only `tern-rpc/1` (an older agent): requests
    /// go out one per connection. Asked again after [`IDLE_REUSE`], as it may be upgraded.
    single_until: Mutex<Option<Instant>>,
    /// Held while connecting, so that callers arriving meanwhile wait for that connection
    /// instead of opening their own.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    /// The open connection, if there is one that was used recently (the peer closes idle
    /// ones; a request must not go out on one it is closing).
    fn open(&self) -> Option<Arc<Mux>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some(mux) if mux.is_open() && mux.unused_for() < IDLE_REUSE => Some(mux.clone()),
            Some(_) => {
                *current = None;
                None
            }
            None => None,
        }
    }

    fn single(&self) -> bool {
        let single = self
            .single_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        single.is_some_and(|until| Instant::now() < until)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            network: self.clone(),
            target,
            node: node.clone(),
            stream: None,
        }
    }
}

/// One shard's link to one peer. It holds at most one connection, taken from (and, when it
/// is dropped, given back to) the pool of its [`Network`].
pub struct Connection {
    network: Network,
    target: NodeId,
    node: Node,
    stream: Option<Stream>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            let mut idle = self
                .network
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let streams = idle.entry(self.node.rpc_addr.clone()).or_default();
            if streams.len() < IDLE_PER_PEER {
                streams.push((stream, Instant::now()));
            }
        }
    }
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be connected to (refused, no route, handshake failed or timed out).
    #[error("unreachable: {0}")]
    Unreachable(io::Error),
    /// No answer within the time allowed; the request may or may not have been carried out.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke or the answer was garbage; the request may have been carried out.
    #[error("network: {0}")]
    Network(io::Error),
    /// The request does not fit in one frame.
    #[error("request exceeds the {MAX_FRAME}-byte frame limit")]
    TooLarge,
}

impl Network {
    /// Sends one request for this network's shard to the peer `target` at `node`, and waits
    /// at most `ttl` for the answer (connecting included).
    pub async fn request(
        &self,
        target: NodeId,
        node: &Node,
        kind: RpcKind,
        ttl: Duration,
    ) -> Result<RpcResponse, CallError> {
        let mut connection = Connection {
            network: self.clone(),
            target,
            node: node.clone(),
            stream: None,
        };
        let option = RPCOption::new(ttl);
        let raft = matches!(
            kind,
            RpcKind::AppendEntries(_) | RpcKind::Vote(_) | RpcKind::InstallSnapshot(_)
        );
        // Raft's RPCs keep connections of their own (see `mux`); so do IMAP sessions, which
        // take a connection over ([`open_imap_session`]).
        if raft || matches!(kind, RpcKind::ImapSession(_)) {
            return connection.call(kind, &option).await;
        }
        let repeatable = repeatable(&kind);
        let frame = mux::frame(
            0,
            &RpcRequest {
                shard: self.shard,
                kind,
            },
        )
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => CallError::TooLarge,
            _ => CallError::Network(e),
        })?;
        let frame = Arc::new(frame);
        match self
            .multiplexed(&node.rpc_addr, &frame, repeatable, ttl)
            .await
        {
            Some(answer) => answer,
            // The peer takes one request per connection.
            None => {
                connection
                    .exchange(mux::message(&frame), repeatable, &option)
                    .await
            }
        }
    }

    /// Sends `frame` on the multiplexed connection to `rpc_addr` (opened if needed) and
    /// waits at most `ttl` for its answer; `None` if the peer takes one request per
    /// connection.
    async fn multiplexed(
        &self,
        rpc_addr: &str,
        frame: &Arc<Vec<u8>>,
        repeatable: bool,
        ttl: Duration,
    ) -> Option<Result<RpcResponse, CallError>> {
        let deadline = Instant::now() + ttl;
        let slot = self
            .peers
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(rpc_addr.to_owned())
            .or_default()
            .clone();
        for attempt in 0..2 {
            let mux = match slot.open() {
                Some(mux) => mux,
                None => match self.connect_multiplexed(&slot, rpc_addr, deadline).await {
                    Ok(Some(mux)) => mux,
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e)),
                },
            };
            let error = match mux.call(frame, deadline).await {
                Ok(answer) => return Some(decode(answer.message()).map_err(CallError::Network)),
                Err(MuxError::NotSent(ended) | MuxError::Lost(ended)) if ended.refused => {
                    return Some(Err(CallError::Unreachable(io::Error::other(ended.why))));
                }
                // Closed before it went out: it may go out on a new connection.
                Err(MuxError::NotSent(ended)) => {
                    io::Error::new(io::ErrorKind::ConnectionAborted, ended.why)
                }
                Err(MuxError::Lost(ended)) if repeatable && attempt == 0 => {
                    io::Error::new(io::ErrorKind::ConnectionAborted, ended.why)
                }
                Err(MuxError::Lost(ended)) => {
                    return Some(Err(CallError::Network(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        ended.why,
                    ))));
                }
                Err(MuxError::TimedOut) => return Some(Err(CallError::Timeout(ttl))),
            };
            if attempt == 1 {
                return Some(Err(CallError::Network(error)));
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Opens the multiplexed connection of `slot` unless another caller did meanwhile;
    /// `None` if the peer takes one request per connection (then the connection opened goes
    /// to the pool of those).
    async fn connect_multiplexed(
        &self,
        slot: &Slot,
        rpc_addr: &str,
        deadline: Instant,
    ) -> Result<Option<Arc<Mux>>, CallError> {
        if slot.single() {
            return Ok(None);
        }
        let timed_out = || {
            CallError::Unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {rpc_addr} timed out"),
            ))
        };
        let _connecting = tokio::time::timeout_at(deadline, slot.connecting.lock())
            .await
            .map_err(|_| timed_out())?;
        if let Some(mux) = slot.open() {
            return Ok(Some(mux));
        }
        if slot.single() {
            return Ok(None);
        }
        let stream = tokio::time::timeout_at(deadline, connect(&self.peers.tls, rpc_addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(CallError::Unreachable)?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_MUX) {
            *slot
                .single_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + IDLE_REUSE);
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(rpc_addr.to_owned())
                .or_default()
                .push((stream, Instant::now()));
            return Ok(None);
        }
        // Closed abortively, whenever it is closed: see `Mux::kill`.
        stream
            .get_ref()
            .0
            .set_zero_linger()
            .map_err(CallError::Unreachable)?;
        let mux = Arc::new(Mux::start(stream));
        *slot.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(mux.clone());
        Ok(Some(mux))
    }
}

impl Connection {
    /// Sends `kind` and waits for the answer, within `option.hard_ttl()`.
    async fn call(&mut self, kind: RpcKind, option: &RPCOption) -> Result<RpcResponse, CallError> {
        let repeatable = repeatable(&kind);
        let body = encode(&RpcRequest {
            shard: self.network.shard,
            kind,
        })
        .map_err(CallError::Network)?;
        self.exchange(&body, repeatable, option).await
    }

    /// Sends the encoded request `body` and waits for the answer, within `option.hard_ttl()`.
    async fn exchange(
        &mut self,
        body: &[u8],
        repeatable: bool,
        option: &RPCOption,
    ) -> Result<RpcResponse, CallError> {
        let ttl = option.hard_ttl();
        let deadline = Instant::now() + ttl;
        if body.len() > MAX_FRAME as usize {
            return Err(CallError::TooLarge);
        }
        // A kept connection may have been closed by the peer meanwhile (restarted, idle); then
        // the request is sent once more on a new one. Only requests that may be carried out
        // twice are: Raft's RPCs, status and read indexes; a forwarded write or a query is not
        // (the first one may have been carried out before the connection broke).
        for attempt in 0..2 {
            let (mut stream, reused) = match self.stream.take().or_else(|| self.take_idle()) {
                Some(stream) => (stream, true),
                None => {
                    let stream = tokio::time::timeout_at(deadline, self.connect())
                        .await
                        .map_err(|_| {
                            CallError::Unreachable(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("connecting to {} timed out", self.node.rpc_addr),
                            ))
                        })?
                        .map_err(CallError::Unreachable)?;
                    (stream, false)
                }
            };
            // The stream lives in this frame while the exchange runs: if the caller drops
            // this future mid-exchange (openraft's own timeout, a client gone), it is closed
            // with it, never reused out of step (the next request would read this answer).
            let exchange = async {
                write_frame(&mut stream, body).await?;
                read_frame(&mut stream).await
            };
            match tokio::time::timeout_at(deadline, exchange).await {
                Ok(Ok(frame)) => {
                    let decoded = decode(&frame).map_err(CallError::Network);
                    if decoded.is_ok() {
                        self.stream = Some(stream);
                    }
                    return decoded;
                }
                Ok(Err(error)) => {
                    if is_tls_refusal(&error) {
                        // With TLS 1.3 the client hears that the server refused its
                        // certificate only at its first read: the peer cannot be connected to.
                        return Err(CallError::Unreachable(error));
                    }
                    if !(reused && attempt == 0 && repeatable) {
                        return Err(CallError::Network(error));
                    }
                }
                Err(_) => {
                    // The answer may still come; the connection is out of step. Close it, and
                    // abortively: a request still in the kernel's send queue (the peer is
                    // cut off) must not be retransmitted and carried out minutes later, after
                    // the caller was told it failed.
                    let _ = stream.get_ref().0.set_zero_linger();
                    return Err(CallError::Timeout(ttl));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    fn take_idle(&self) -> Option<Stream> {
        let mut idle = self
            .network
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let streams = idle.get_mut(&self.node.rpc_addr)?;
        while let Some((stream, since)) = streams.pop() {
            if since.elapsed() < IDLE_REUSE {
                return Some(stream);
            }
        }
        None
    }

    async fn connect(&self) -> io::Result<Stream> {
        connect(&self.network.tls, &self.node.rpc_addr).await
    }

    fn error<E: std::error::Error>(
        &self,
        error: CallError,
        action: RPCTypes,
        entries: u64,
    ) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        match error {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
            // openraft sends fewer entries next time (half as many), or, for another request,
            // treats it as any failure to send.
            CallError::TooLarge => match action {
                RPCTypes::AppendEntries => RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint((entries / 2).max(1)),
                ),
                _ => RPCError::Network(NetworkError::new(&io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("request exceeds the {MAX_FRAME}-byte frame limit"),
                ))),
            },
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                // The network does not know this node's id; openraft only displays it.
                id: 0,
                target: self.target,
                timeout,
            }),
        }
    }

    fn remote<E: std::error::Error>(
        &self,
        error: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            error,
        ))
    }

    /// An answer that is not the one asked for: the peer does not run the shard (openraft
    /// should back off, as from a peer that is down), or speaks another protocol.
    fn unexpected<E: std::error::Error>(
        &mut self,
        response: RpcResponse,
    ) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        match response {
            RpcResponse::UnknownShard(shard) => RPCError::Unreachable(Unreachable::new(
                &io::Error::other(format!("{} does not run shard {shard}", self.node.rpc_addr)),
            )),
            other => {
                self.stream = None;
                RPCError::Network(NetworkError::new(&io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected answer from {}: {other:?}", self.node.rpc_addr),
                )))
            }
        }
    }
}

/// Opens a connection to the peer at `rpc_addr` for an IMAP session of `hello`'s account on
/// `shard` ([`RpcKind::ImapSession`]): connects, asks, and returns the connection once the
/// peer has accepted, all within `timeout`. From then on it carries the session's bytes.
pub async fn open_imap_session(
    tls: &Arc<ClientConfig>,
    rpc_addr: &str,
    shard: ShardId,
    hello: super::wire::ImapHello,
    timeout: Duration,
) -> Result<Stream, CallError> {
    let body = encode(&RpcRequest {
        shard,
        kind: RpcKind::ImapSession(hello),
    })
    .map_err(CallError::Network)?;
    let deadline = Instant::now() + timeout;
    let mut stream = tokio::time::timeout_at(deadline, connect(tls, rpc_addr))
        .await
        .map_err(|_| {
            CallError::Unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {rpc_addr} timed out"),
            ))
        })?
        .map_err(CallError::Unreachable)?;
    let exchange = async {
        write_frame(&mut stream, &body).await?;
        read_frame(&mut stream).await
    };
    let frame = match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => return Err(CallError::Timeout(timeout)),
        Ok(Err(error)) if is_tls_refusal(&error) => return Err(CallError::Unreachable(error)),
        Ok(Err(error)) => return Err(CallError::Network(error)),
        Ok(Ok(frame)) => frame,
    };
    let refused = |why: String| CallError::Unreachable(io::Error::other(why));
    match decode(&frame).map_err(CallError::Network)? {
        RpcResponse::ImapSession(Ok(())) => Ok(stream),
        RpcResponse::ImapSession(Err(why)) => Err(refused(format!("{rpc_addr} refused: {why:?}"))),
        other => Err(CallError::Network(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer from {rpc_addr}: {other:?}"),
        ))),
    }
}

/// Whether `kind` may be carried out twice: Raft's RPCs, status and read indexes; a forwarded
/// write or a query may not.
fn repeatable(kind: &RpcKind) -> bool {
    !matches!(kind, RpcKind::Write(..) | RpcKind::Query(_))
}

/// TCP connect and TLS handshake; the server's certificate must name the host of `rpc_addr`
/// (an IP address SAN for an address).
async fn connect(tls: &Arc<ClientConfig>, rpc_addr: &str) -> io::Result<Stream> {
    let name = server_name(rpc_addr)?;
    let tcp = TcpStream::connect(rpc_addr).await?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(tls.clone()).connect(name, tcp).await
}

/// Whether `error` is TLS refusing the session (an alert, a certificate not accepted) rather
/// than the connection breaking.
pub(super) fn is_tls_refusal(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// The TLS server name of `host:port`: an IP address, or a DNS name.
fn server_name(rpc_addr: &str) -> io::Result<ServerName<'static>> {
    if let Ok(addr) = rpc_addr.parse::<SocketAddr>() {
        return Ok(ServerName::IpAddress(addr.ip().into()));
    }
    let host = rpc_addr
        .rsplit_once(':')
        .map_or(rpc_addr, |(host, _port)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no TLS server name in {rpc_addr:?}: {e}"),
        )
    })
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        match self.call(RpcKind::AppendEntries(rpc), &option).await {
            Ok(RpcResponse::AppendEntries(Ok(reply))) => Ok(reply),
            Ok(RpcResponse::AppendEntries(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.error(e, RPCTypes::AppendEntries, entries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RpcKind::InstallSnapshot(rpc), &option).await {
            Ok(RpcResponse::InstallSnapshot(Ok(reply))) => Ok(reply),
            Ok(RpcResponse::InstallSnapshot(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.error(e, RPCTypes::InstallSnapshot, 0)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(RpcKind::Vote(rpc), &option).await {
            Ok(RpcResponse::Vote(Ok(reply))) => Ok(reply),
            Ok(RpcResponse::Vote(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.error(e, RPCTypes::Vote, 0)),
        }
    }
}
