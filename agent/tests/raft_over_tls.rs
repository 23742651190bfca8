//! Raft over agent-to-agent RPC with mutual TLS: three nodes in one process, each with its own
//! engine and TLS listener on loopback, running two shards; writes through each shard's leader
//! reach every replica. A peer with a certificate of another CA is refused, and a peer that is
//! not listening is `Unreachable` at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::VoteRequest;
use openraft::{Config, RaftNetwork, RaftNetworkFactory, Vote};
use rustls::pki_types::ServerName;
use tern_agent::pki::LocalPki;
use tern_agent::rpc::{
    self, CallError, Network, RpcKind, RpcResponse, RpcStats, Shards, TlsConfig,
};
use tern_raft::testing::{KvApp, TempDir};
use tern_raft::{Node, NodeId, ShardId, ShardRaft, Storage, new_raft};
use tern_store::EngineKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const SHARDS: [ShardId; 2] = [1, 2];
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(5));

/// A CA, and PEMs (certificate, key) of one certificate it signed for `127.0.0.1`.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let ca = LocalPki::generate(name).unwrap();
    let (cert_pem, key_pem) = ca.issue(&["127.0.0.1".to_owned()]).unwrap();
    Pki {
        ca_pem: ca.ca_cert_pem.clone(),
        cert_pem,
        key_pem,
    }
}

/// The TLS configurations of an agent that trusts `ca`'s CA and presents `holder`'s
/// certificate.
fn tls_of(ca: &Pki, holder: &Pki) -> TlsConfig {
    TlsConfig::from_pem(
        ca.ca_pem.as_bytes(),
        holder.cert_pem.as_bytes(),
        holder.key_pem.as_bytes(),
    )
    .unwrap()
}

struct Agent {
    id: NodeId,
    _dir: TempDir,
    storage: Storage,
    addr: String,
    shards: Shards,
    stats: Arc<RpcStats>,
    server: JoinHandle<()>,
}

impl Agent {
    fn raft(&self, shard: ShardId) -> ShardRaft {
        self.shards.read().unwrap()[&shard].clone()
    }
}

async fn start(tls: &TlsConfig) -> Vec<Agent> {
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..Config::default()
        }
        .validate()
        .unwrap(),
    );
    let mut agents = vec![];
    for id in 1..=3 {
        let dir = TempDir::new(&format!("raft-tls-{id}"));
        let storage = Storage::new(tern_store::open(EngineKind::Redb, dir.path()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shards = Shards::default();
        let network = Network::new(tls.client.clone(), 0);
        for shard in SHARDS {
            let raft = new_raft(
                id,
                shard,
                config.clone(),
                &storage,
                Arc::new(KvApp),
                network.for_shard(shard),
            )
            .await
            .unwrap();
            shards.write().unwrap().insert(shard, raft);
        }
        let stats = Arc::new(RpcStats::default());
        let server = tokio::spawn(rpc::serve_with_stats(
            listener,
            tls.server.clone(),
            shards.clone(),
            stats.clone(),
        ));
        agents.push(Agent {
            id,
            _dir: dir,
            storage,
            addr,
            shards,
            stats,
            server,
        });
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_shards_replicate_over_mutual_tls() {
    let started = Instant::now();
    let cluster = pki("cluster");
    let tls = tls_of(&cluster, &cluster);
    let agents = start(&tls).await;
    let members: BTreeMap<NodeId, Node> = agents
        .iter()
        .map(|a| {
            (
                a.id,
                Node {
                    rpc_addr: a.addr.clone(),
                },
            )
        })
        .collect();
    // Each shard is formed from a different node.
    for (i, shard) in SHARDS.into_iter().enumerate() {
        agents[i]
            .raft(shard)
            .initialize(members.clone())
            .await
            .unwrap();
    }

    for shard in SHARDS {
        let metrics = agents[0]
            .raft(shard)
            .wait(TIMEOUT)
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .unwrap();
        let leader_id = metrics.current_leader.unwrap();
        let leader = agents
            .iter()
            .find(|a| a.id == leader_id)
            .unwrap()
            .raft(shard);
        let mut last = 0;
        for n in 0..20 {
            let reply = leader
                .client_write(KvApp::put(
                    format!("key-{n}"),
                    format!("shard {shard} value {n}"),
                ))
                .await
                .unwrap();
            last = reply.log_id.index;
        }
        leader.client_write(KvApp::delete("key-0")).await.unwrap();
        last += 1;
        for agent in &agents {
            agent
                .raft(shard)
                .wait(TIMEOUT)
                .applied_index_at_least(Some(last), "every write applied")
                .await
                .unwrap();
        }
        let expected: BTreeMap<Vec<u8>, Vec<u8>> = (1..20)
            .map(|n| {
                (
                    format!("key-{n}").into_bytes(),
                    format!("shard {shard} value {n}").into_bytes(),
                )
            })
            .collect();
        for agent in &agents {
            assert_eq!(
                KvApp::dump(&**agent.storage.engine(), shard),
                expected,
                "node {} shard {shard}",
                agent.id
            );
        }
    }
    for agent in &agents {
        assert!(agent.stats.requests.load(Ordering::Relaxed) > 0);
        assert_eq!(agent.stats.malformed_frames.load(Ordering::Relaxed), 0);
        assert_eq!(agent.stats.handshake_failures.load(Ordering::Relaxed), 0);
    }

    // A client whose certificate comes from another CA (though it trusts the cluster's CA, so
    // only the server can refuse it) is Unreachable, and the server counts a failed handshake.
    let stranger = tls_of(&cluster, &pki("other"));
    let target = &agents[0];
    let mut network = Network::new(stranger.client.clone(), SHARDS[0]);
    let mut client = network
        .new_client(
            target.id,
            &Node {
                rpc_addr: target.addr.clone(),
            },
        )
        .await;
    let refused = client
        .vote(
            VoteRequest::new(Vote::new(1, 99), None),
            RPCOption::new(Duration::from_secs(2)),
        )
        .await;
    assert!(
        matches!(refused, Err(RPCError::Unreachable(_))),
        "{refused:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while target.stats.handshake_failures.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the server did not refuse the handshake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A member of the cluster that sends a frame longer than the limit is cut off, and counted.
    let tcp = TcpStream::connect(&target.addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(
            ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into()),
            tcp,
        )
        .await
        .unwrap();
    stream
        .write_all(&(rpc::MAX_FRAME + 1).to_be_bytes())
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut rest = vec![];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert_eq!(target.stats.malformed_frames.load(Ordering::Relaxed), 1);

    // Nothing listening: Unreachable, at once (long before the request's timeout).
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut network = Network::new(tls.client.clone(), SHARDS[0]);
    let mut client = network
        .new_client(
            7,
            &Node {
                rpc_addr: closed_addr,
            },
        )
        .await;
    let asked = Instant::now();
    let unreachable = client
        .vote(
            VoteRequest::new(Vote::new(1, 99), None),
            RPCOption::new(Duration::from_secs(5)),
        )
        .await;
    assert!(
        matches!(unreachable, Err(RPCError::Unreachable(_))),
        "{unreachable:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    // A shard the peer does not run: Unreachable too (openraft backs off), not a crash.
    let mut network = Network::new(tls.client.clone(), 99);
    let mut client = network
        .new_client(
            target.id,
            &Node {
                rpc_addr: target.addr.clone(),
            },
        )
        .await;
    let unknown = client
        .vote(
            VoteRequest::new(Vote::new(1, 99), None),
            RPCOption::new(Duration::from_secs(2)),
        )
        .await;
    assert!(
        matches!(unknown, Err(RPCError::Unreachable(_))),
        "{unknown:?}"
    );
    assert_eq!(target.stats.unknown_shard.load(Ordering::Relaxed), 1);

    for agent in agents {
        for shard in SHARDS {
            agent.raft(shard).shutdown().await.unwrap();
        }
        agent.server.abort();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Requests other than Raft's own (here: status) from one node to a peer share one
/// multiplexed connection; a peer that offers only one request per connection (an older
/// agent) is still answered, and a stranger's certificate is refused as on any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_requests_share_one_connection_per_peer_and_older_peers_still_answer() {
    let cluster = pki("cluster");
    let tls = tls_of(&cluster, &cluster);
    let agents = start(&tls).await;
    let target = &agents[0];
    let node = Node {
        rpc_addr: target.addr.clone(),
    };

    /// `n` status requests at once to `node`, each answered with a status.
    async fn statuses(network: &Network, id: NodeId, node: &Node, n: usize) {
        let asked: Vec<_> = (0..n)
            .map(|_| {
                let (network, node) = (network.clone(), node.clone());
                tokio::spawn(async move {
                    network
                        .request(id, &node, RpcKind::Status, Duration::from_secs(5))
                        .await
                })
            })
            .collect();
        for answer in asked {
            let answer = answer.await.unwrap();
            assert!(matches!(answer, Ok(RpcResponse::Status(_))), "{answer:?}");
        }
    }

    let network = Network::new(tls.client.clone(), SHARDS[0]);
    let before = target.stats.connections.load(Ordering::Relaxed);
    statuses(&network, target.id, &node, 64).await;
    statuses(&network, target.id, &node, 64).await;
    assert_eq!(
        target.stats.connections.load(Ordering::Relaxed) - before,
        1,
        "128 requests, one connection"
    );
    assert_eq!(target.stats.requests.load(Ordering::Relaxed), 128);

    // A server that knows only `tern-rpc/1`: one request per connection, kept for the next.
    let mut older = (*tls.server).clone();
    older.alpn_protocols = vec![b"tern-rpc/1".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let older_node = Node {
        rpc_addr: listener.local_addr().unwrap().to_string(),
    };
    let older_stats = Arc::new(RpcStats::default());
    let older_server = tokio::spawn(rpc::serve_with_stats(
        listener,
        Arc::new(older),
        target.shards.clone(),
        older_stats.clone(),
    ));
    statuses(&network, target.id, &older_node, 16).await;
    assert_eq!(older_stats.requests.load(Ordering::Relaxed), 16);
    let connections = older_stats.connections.load(Ordering::Relaxed);
    assert!((1..=17).contains(&connections), "{connections}");
    older_server.abort();

    // A client whose certificate comes from another CA is refused: Unreachable.
    let stranger = tls_of(&cluster, &pki("other"));
    let refused = Network::new(stranger.client.clone(), SHARDS[0])
        .request(target.id, &node, RpcKind::Status, Duration::from_secs(2))
        .await;
    assert!(
        matches!(refused, Err(CallError::Unreachable(_))),
        "{refused:?}"
    );

    for agent in agents {
        for shard in SHARDS {
            agent.raft(shard).shutdown().await.unwrap();
        }
        agent.server.abort();
    }
}
