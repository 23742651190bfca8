//! Real openraft instances of one shard, each on its own engines, connected in-process by
//! `testing::Router`: replication, failover, restart, and catch-up by snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Config, SnapshotPolicy};
use tern_raft::testing::{KvApp, Router, TempDir};
use tern_raft::{Node, NodeId, ShardRaft, Storage, new_raft};
use tern_store::EngineKind;
use tokio::task::JoinSet;

const SHARD: u32 = 3;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

fn config(snapshot_policy: SnapshotPolicy) -> Arc<Config> {
    let config = Config {
        cluster_name: format!("shard-{SHARD}"),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy,
        max_in_snapshot_log_to_keep: 0,
        ..Config::default()
    };
    Arc::new(config.validate().expect("valid Raft config"))
}

fn node(id: NodeId) -> Node {
    Node {
        rpc_addr: format!("in-process-{id}"),
    }
}

/// One node of the shard: its data directory, storage and running Raft.
struct Member {
    id: NodeId,
    kind: EngineKind,
    dir: TempDir,
    storage: Storage,
    raft: ShardRaft,
}

impl Member {
    async fn start(
        id: NodeId,
        kind: EngineKind,
        dir: TempDir,
        router: &Router,
        config: &Arc<Config>,
    ) -> Self {
        // Mixed layouts too: even nodes keep log and state on separate engines.
        let open = |sub: &str| tern_store::open(kind, &dir.path().join(sub)).expect("open engine");
        let storage = if id.is_multiple_of(2) {
            Storage::with_engines(open("log"), open("state"))
        } else {
            Storage::new(open("store"))
        };
        Self::run(id, kind, dir, storage, router, config).await
    }

    /// As the agent lays a node out: the log on a log engine, which also holds the values
    /// the application links to the log's copy (`kv`), the rest of the state on `kind`.
    async fn start_linked(
        id: NodeId,
        kind: EngineKind,
        dir: TempDir,
        router: &Router,
        config: &Arc<Config>,
    ) -> Self {
        let log = tern_store::open(EngineKind::Log, &dir.path().join("log")).expect("open log");
        let main = tern_store::open(kind, &dir.path().join("state")).expect("open state");
        let state = Arc::new(
            tern_store::Split::open(main, log.clone(), &[KvApp::KEYSPACE], &[])
                .expect("open the split state"),
        );
        let storage = Storage::with_engines(log, state);
        Self::run(id, kind, dir, storage, router, config).await
    }

    async fn run(
        id: NodeId,
        kind: EngineKind,
        dir: TempDir,
        storage: Storage,
        router: &Router,
        config: &Arc<Config>,
    ) -> Self {
        let raft = new_raft(
            id,
            SHARD,
            config.clone(),
            &storage,
            Arc::new(KvApp),
            router.clone(),
        )
        .await
        .expect("start Raft");
        router.add(id, raft.clone());
        Self {
            id,
            kind,
            dir,
            storage,
            raft,
        }
    }

    /// Disconnects the node and stops its Raft; returns its data directory.
    async fn stop(self, router: &Router) -> (EngineKind, TempDir) {
        router.remove(self.id);
        self.raft.shutdown().await.expect("shut Raft down");
        drop(self.raft);
        drop(self.storage);
        (self.kind, self.dir)
    }

    fn data(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        KvApp::dump(&**self.storage.engine(), SHARD)
    }

    /// Builds a snapshot and purges the log up to `last`.
    async fn snapshot_and_purge(&self, last: u64) {
        self.raft.trigger().snapshot().await.unwrap();
        self.raft
            .wait(TIMEOUT)
            .metrics(
                |x| x.snapshot.is_some_and(|s| s.index >= last),
                "snapshot built",
            )
            .await
            .unwrap();
        self.raft.trigger().purge_log(last).await.unwrap();
        self.raft
            .wait(TIMEOUT)
            .metrics(|x| x.purged.is_some_and(|p| p.index >= last), "log purged")
            .await
            .unwrap();
    }

    async fn wait_applied(&self, index: u64) {
        self.raft
            .wait(TIMEOUT)
            .applied_index_at_least(Some(index), format!("node {} applies {index}", self.id))
            .await
            .expect("applied in time");
    }
}

async fn start_three(router: &Router, config: &Arc<Config>) -> Vec<Member> {
    // Mixed engines: replication must not care which engine a replica runs on.
    let kinds = [EngineKind::Redb, EngineKind::Sled, EngineKind::Redb];
    let mut members = Vec::new();
    for (id, kind) in (1..).zip(kinds) {
        let dir = TempDir::new(&format!("cluster-{id}"));
        members.push(Member::start(id, kind, dir, router, config).await);
    }
    let nodes: BTreeMap<NodeId, Node> = members.iter().map(|m| (m.id, node(m.id))).collect();
    members[0]
        .raft
        .initialize(nodes)
        .await
        .expect("initialize the shard");
    members
}

/// Waits until one of `members` (other than `not`) is leader, as all of them see it.
async fn leader(members: &[Member], not: Option<NodeId>) -> NodeId {
    let metrics = members[0]
        .raft
        .wait(TIMEOUT)
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader is elected",
        )
        .await
        .expect("a leader in time");
    let leader = metrics.current_leader.expect("a leader");
    for member in members {
        member
            .raft
            .wait(TIMEOUT)
            .current_leader(leader, format!("node {} follows {leader}", member.id))
            .await
            .expect("every member follows the leader");
    }
    leader
}

/// Writes `keys` concurrently through `raft`; returns the log index of the last write.
async fn write(raft: &ShardRaft, keys: impl Iterator<Item = u32>) -> u64 {
    let mut writes = JoinSet::new();
    for i in keys {
        let raft = raft.clone();
        writes.spawn(async move {
            let value = format!("value-{i}").into_bytes();
            let reply = raft
                .client_write(KvApp::put(format!("key-{i:04}"), value))
                .await
                .expect("write commits");
            reply.log_id.index
        });
    }
    let mut last = 0;
    while let Some(index) = writes.join_next().await {
        last = last.max(index.expect("write task"));
    }
    last
}

fn member(members: &[Member], id: NodeId) -> &Member {
    members.iter().find(|m| m.id == id).expect("a member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_fail_over_and_restart() {
    let router = Router::default();
    let config = config(SnapshotPolicy::LogsSinceLast(5000));
    let mut members = start_three(&router, &config).await;
    let first = leader(&members, None).await;

    let last = write(&member(&members, first).raft, 0..100).await;
    for m in &members {
        m.wait_applied(last).await;
    }
    let want = member(&members, first).data();
    assert_eq!(want.len(), 100);
    for m in &members {
        assert_eq!(m.data(), want, "node {} diverged", m.id);
    }

    // The leader dies: the other two elect a new one and writes resume there.
    let died = Instant::now();
    let position = members.iter().position(|m| m.id == first).unwrap();
    let (old_kind, old_dir) = members.remove(position).stop(&router).await;
    let second = leader(&members, Some(first)).await;
    let last = write(&member(&members, second).raft, 100..150).await;
    eprintln!(
        "failover: node {second} leads, first write committed {:?} after node {first} died",
        died.elapsed()
    );
    for m in &members {
        m.wait_applied(last).await;
    }
    let want = member(&members, second).data();
    assert_eq!(want.len(), 150);
    for m in &members {
        assert_eq!(m.data(), want, "node {} diverged", m.id);
    }

    // The old leader restarts on its data and catches up.
    let back = Member::start(first, old_kind, old_dir, &router, &config).await;
    back.wait_applied(last).await;
    assert_eq!(back.data(), want);
    members.push(back);
    for m in members {
        m.stop(&router).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_replica_catches_up_by_snapshot() {
    let router = Router::default();
    let config = config(SnapshotPolicy::Never);
    let mut members = start_three(&router, &config).await;
    let first = leader(&members, None).await;
    let leader_raft = member(&members, first).raft.clone();

    let last = write(&leader_raft, 0..60).await;
    for m in &members {
        m.wait_applied(last).await;
    }

    // Snapshot and purge the whole log on every member: from now on, only a snapshot can
    // bring a new replica up to date.
    for m in &members {
        m.snapshot_and_purge(last).await;
    }

    // A new node with an empty volume joins as a learner.
    let fresh = Member::start(
        4,
        EngineKind::Sled,
        TempDir::new("cluster-fresh"),
        &router,
        &config,
    )
    .await;
    leader_raft
        .add_learner(4, node(4), true)
        .await
        .expect("the learner catches up");
    let membership_index = leader_raft.metrics().borrow().last_log_index.unwrap();
    fresh.wait_applied(membership_index).await;
    let metrics = fresh.raft.metrics().borrow().clone();
    assert!(
        metrics.snapshot.is_some_and(|s| s.index >= last),
        "the learner installed a snapshot: {metrics:?}"
    );
    assert_eq!(fresh.data(), member(&members, first).data());
    assert_eq!(fresh.data().len(), 60);

    // It keeps up with new writes by log replication.
    let last = write(&leader_raft, 60..70).await;
    fresh.wait_applied(last).await;
    assert_eq!(fresh.data(), member(&members, first).data());
    let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));

    members.push(fresh);
    for m in members {
        m.stop(&router).await;
    }
}

/// Bytes of the files under `dir`, at any depth.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            match e.file_type().unwrap().is_dir() {
                true => disk_bytes(&e.path()),
                false => e.metadata().unwrap().len(),
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_copied_from_commands_are_stored_once_beside_the_log() {
    const VALUE: usize = 16 << 10;
    const COUNT: u32 = 120;
    let router = Router::default();
    let config = config(SnapshotPolicy::Never);
    let mut members = Vec::new();
    for id in 1..=3 {
        let dir = TempDir::new(&format!("linked-{id}"));
        members.push(Member::start_linked(id, EngineKind::Redb, dir, &router, &config).await);
    }
    let nodes: BTreeMap<NodeId, Node> = members.iter().map(|m| (m.id, node(m.id))).collect();
    members[0].raft.initialize(nodes).await.unwrap();
    let first = leader(&members, None).await;
    let leader_raft = member(&members, first).raft.clone();
    let value = |i: u32| -> Vec<u8> { (0..VALUE).map(|b| (b as u32 ^ i) as u8).collect() };
    let mut last = 0;
    for i in 0..COUNT {
        let reply = leader_raft
            .client_write(KvApp::put(format!("key-{i:04}"), value(i)))
            .await
            .expect("write commits");
        last = reply.log_id.index;
    }
    for m in &members {
        m.wait_applied(last).await;
        // The state flush writes the values; the log already holds them.
        m.storage.engine().flush().unwrap();
        let log = disk_bytes(&m.dir.path().join("log"));
        let values = u64::from(COUNT) * VALUE as u64;
        assert!(
            log < values + values / 4,
            "node {}: the log engine holds {log} bytes for {values} bytes of values",
            m.id
        );
    }

    // Purge the log behind a snapshot: the values stay, and a restart finds them.
    for m in &members {
        m.snapshot_and_purge(last).await;
    }
    let want: BTreeMap<Vec<u8>, Vec<u8>> = (0..COUNT)
        .map(|i| (format!("key-{i:04}").into_bytes(), value(i)))
        .collect();
    let stopped = members.pop().unwrap();
    let id = stopped.id;
    let (kind, dir) = stopped.stop(&router).await;
    let back = Member::start_linked(id, kind, dir, &router, &config).await;
    back.wait_applied(last).await;
    assert_eq!(back.data(), want);
    members.push(back);
    for m in &members {
        assert_eq!(m.data(), want, "node {}", m.id);
    }
    for m in members {
        m.stop(&router).await;
    }
}
