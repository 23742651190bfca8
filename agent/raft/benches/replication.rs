//! Replicated write throughput and latency: three in-process replicas of three shards, each
//! replica on its own engine files in a temporary directory, connected by `testing::Router`.
//!
//! `cargo bench -p tern-raft` prints one row per storage layout and client count. Every write
//! is a `KvApp` put of a 4 KiB value, acknowledged once a majority has it on disk and the
//! leader has applied it. Each shard is led by a different node, as a running cluster spreads
//! them. `TERN_BENCH_SECS` sets the measured seconds per row (default 3);
//! `TERN_BENCH_CLIENTS` a comma-separated list of client counts (default `1,16,256`);
//! arguments `one-engine` / `two-engines` / `log-engine` pick the layouts (default all three).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::Config;
use tern_raft::testing::{KvApp, Router, TempDir};
use tern_raft::{Node, NodeId, ShardId, ShardRaft, Storage, new_raft};
use tern_store::EngineKind;

const NODES: [NodeId; 3] = [1, 2, 3];
const SHARDS: [ShardId; 3] = [1, 2, 3];
const VALUE: usize = 4096;
/// Keys each client cycles through, so the state (and each snapshot) stays bounded.
const KEYS_PER_CLIENT: u64 = 16;
const WARM_UP: Duration = Duration::from_millis(500);

/// Where a node keeps its Raft log and its state machine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `Storage::new`: log and state on one redb file.
    OneEngine,
    /// `Storage::with_engines`: the log on one redb file, the state on another.
    TwoEngines,
    /// The agent's layout: the log on the log engine, the state on redb.
    LogEngine,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::OneEngine => "one-engine",
            Layout::TwoEngines => "two-engines",
            Layout::LogEngine => "log-engine",
        }
    }

    fn storage(self, dir: &TempDir) -> Storage {
        let open = |kind: EngineKind, name: &str| {
            tern_store::open(kind, &dir.path().join(name)).expect("open the engine")
        };
        match self {
            Layout::OneEngine => Storage::new(open(EngineKind::Redb, "store")),
            Layout::TwoEngines => Storage::with_engines(
                open(EngineKind::Redb, "log"),
                open(EngineKind::Redb, "state"),
            ),
            Layout::LogEngine => Storage::with_engines(
                open(EngineKind::Log, "log"),
                open(EngineKind::Redb, "state"),
            ),
        }
    }
}

struct Cluster {
    _dirs: Vec<TempDir>,
    _storages: Vec<Storage>,
    /// Every Raft, by shard then node.
    rafts: BTreeMap<ShardId, BTreeMap<NodeId, ShardRaft>>,
}

fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: "bench".into(),
        heartbeat_interval: 100,
        // Generous: a busy 2-core machine must not trigger elections mid-run.
        election_timeout_min: 1500,
        election_timeout_max: 3000,
        ..Config::default()
    };
    Arc::new(config.validate().expect("valid Raft config"))
}

impl Cluster {
    async fn start(layout: Layout) -> Self {
        let config = config();
        let mut dirs = Vec::new();
        let mut storages = Vec::new();
        for node in NODES {
            let dir = TempDir::new(&format!("bench-{}-{node}", layout.name()));
            storages.push(layout.storage(&dir));
            dirs.push(dir);
        }
        let members: BTreeMap<NodeId, Node> = NODES
            .iter()
            .map(|&id| {
                let node = Node {
                    rpc_addr: format!("in-process-{id}"),
                };
                (id, node)
            })
            .collect();
        let mut rafts = BTreeMap::new();
        for shard in SHARDS {
            let router = Router::default();
            let mut by_node = BTreeMap::new();
            for (&node, storage) in NODES.iter().zip(&storages) {
                let raft = new_raft(
                    node,
                    shard,
                    config.clone(),
                    storage,
                    Arc::new(KvApp),
                    router.clone(),
                )
                .await
                .expect("start Raft");
                router.add(node, raft.clone());
                by_node.insert(node, raft);
            }
            // The initialising node campaigns at once: shard s is led by node s.
            let leader = NODES[(shard as usize - 1) % NODES.len()];
            by_node[&leader]
                .initialize(members.clone())
                .await
                .expect("initialize the shard");
            rafts.insert(shard, by_node);
        }
        let cluster = Self {
            _dirs: dirs,
            _storages: storages,
            rafts,
        };
        for shard in SHARDS {
            cluster.leader(shard).await;
        }
        cluster
    }

    /// The current leader of `shard`, once there is one.
    async fn leader(&self, shard: ShardId) -> ShardRaft {
        let any = self.rafts[&shard].values().next().expect("a node");
        let metrics = any
            .wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .expect("a leader in time");
        let leader = metrics.current_leader.expect("a leader");
        self.rafts[&shard][&leader].clone()
    }

    async fn shutdown(self) {
        for by_node in self.rafts.into_values() {
            for raft in by_node.into_values() {
                let _ = raft.shutdown().await;
            }
        }
    }
}

/// What one measured row found.
struct Row {
    writes_per_sec: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

/// `clients` tasks write as fast as their replies come back for `secs` (after a warm-up).
async fn measure(cluster: &Arc<Cluster>, clients: usize, secs: Duration) -> Row {
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let measure_until = measure_from + secs;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let shard = SHARDS[client % SHARDS.len()];
            let value = value(client as u64);
            let mut raft = cluster.leader(shard).await;
            let mut latencies = Vec::new();
            let mut errors = 0;
            for seq in 0.. {
                let sent = Instant::now();
                if sent >= measure_until {
                    break;
                }
                let key = format!("client-{client}-{}", seq % KEYS_PER_CLIENT);
                match raft.client_write(KvApp::put(key, value.clone())).await {
                    Ok(_) => {
                        if sent >= measure_from {
                            latencies.push(sent.elapsed());
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        raft = cluster.leader(shard).await;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (mine, failed) = done.expect("client task");
        latencies.extend(mine);
        errors += failed;
    }
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Row {
        writes_per_sec: latencies.len() as f64 / secs.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        errors,
    }
}

/// 4 KiB of incompressible bytes, different for every client.
fn value(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn main() {
    let secs = std::env::var("TERN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64);
    let clients: Vec<usize> = std::env::var("TERN_BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256]);
    // `cargo bench` passes `--bench`; anything else names a layout.
    let mut layouts: Vec<Layout> = std::env::args()
        .skip(1)
        .filter_map(|arg| match arg.as_str() {
            "one-engine" => Some(Layout::OneEngine),
            "two-engines" => Some(Layout::TwoEngines),
            "log-engine" => Some(Layout::LogEngine),
            _ => None,
        })
        .collect();
    if layouts.is_empty() {
        layouts = vec![Layout::OneEngine, Layout::TwoEngines, Layout::LogEngine];
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "3 replicas × 3 shards on redb, {VALUE}-byte puts, {:.1} s per row",
        secs.as_secs_f64()
    );
    println!(
        "{:<12} {:>8} {:>10} {:>9} {:>9} {:>7}",
        "layout", "clients", "writes/s", "p50 ms", "p99 ms", "errors"
    );
    for layout in layouts {
        runtime.block_on(async {
            let cluster = Arc::new(Cluster::start(layout).await);
            for &n in &clients {
                let row = measure(&cluster, n, secs).await;
                println!(
                    "{:<12} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>7}",
                    layout.name(),
                    n,
                    row.writes_per_sec,
                    row.p50.as_secs_f64() * 1e3,
                    row.p99.as_secs_f64() * 1e3,
                    row.errors
                );
            }
            let cluster = Arc::into_inner(cluster).expect("clients are done");
            cluster.shutdown().await;
        });
    }
}
