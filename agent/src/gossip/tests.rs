//! The runtime on real loopback sockets, in one process: joining through a seed address,
//! metadata, leaving, and packets that must be dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_crds::Assignment;
use tern_crds::assignment::NodeEntry;
use tern_crds::cluster_role::StorageRole;
use tern_crds::mail_cluster::RaftRole;
use tern_gossip::crypto::{Header, seal};
use tern_gossip::keyring::{KEY_LEN, KeyId, Keyring};
use tern_gossip::message::{Kind, Message};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::follow::Shared;
use crate::rpc::ShardStatus;

const KEY: [u8; KEY_LEN] = [0x5a; KEY_LEN];

fn followed(names: &[&str]) -> Shared {
    let shared = Shared::default();
    shared.lock().unwrap().current = Some(Assignment {
        epoch: 1,
        cluster: "mail".into(),
        nodes: names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let entry = NodeEntry {
                    id: i as u64 + 1,
                    pool: "default".into(),
                    storage: StorageRole::Voter,
                    zone: None,
                };
                (name.to_string(), entry)
            })
            .collect(),
        ..Default::default()
    });
    shared
}

fn key_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("keyring");
    std::fs::write(
        &path,
        Keyring::new("mail", KeyId(1), [(KeyId(1), KEY)])
            .unwrap()
            .render_secret(),
    )
    .unwrap();
    path
}

fn options(name: &str, key: &Path, seeds: &[SocketAddr]) -> GossipOptions {
    let mut o = GossipOptions::new(
        "mail",
        name,
        "default",
        "127.0.0.1:0".parse().unwrap(),
        key.to_path_buf(),
    );
    o.seeds = seeds
        .iter()
        .map(|a| Seed {
            host: a.ip().to_string(),
            port: a.port(),
        })
        .collect();
    o
}

fn no_shards() -> ShardSource {
    Arc::new(Vec::new)
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "no {what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state_of(g: &Gossip, id: u64) -> Option<MemberState> {
    g.members().iter().find(|m| m.id == id).map(|m| m.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_join_through_a_seed_address_share_metadata_and_leave() {
    let dir = tern_raft::testing::TempDir::new("gossip-join");
    let key = key_file(dir.path());
    let names = ["mail-default-0", "mail-default-1"];
    let leader_of_one: ShardSource = Arc::new(|| {
        vec![(
            1,
            ShardStatus {
                initialized: true,
                term: 3,
                leader: Some(1),
                is_leader: true,
                last_log_index: Some(5),
                applied: Some(5),
                voters: vec![1, 2],
                learners: vec![],
                committed_membership: true,
                abstaining: false,
            },
        )]
    });
    let a = start(
        options(names[0], &key, &[]),
        followed(&names),
        leader_of_one,
    )
    .await
    .unwrap();
    // Before it has heard anyone, a node counts unknown nodes as live (routing at start-up).
    assert!(a.is_live(42));
    // b's seed is a name, resolved through DNS (the resolver's `localhost`).
    let mut b_options = options(names[1], &key, &[]);
    b_options.seeds = vec![Seed {
        host: "localhost".into(),
        port: a.listen_addr().port(),
    }];
    let b = start(b_options, followed(&names), no_shards())
        .await
        .unwrap();
    eventually("both alive on both", || {
        state_of(&a, 2) == Some(MemberState::Alive) && state_of(&b, 1) == Some(MemberState::Alive)
    })
    .await;
    assert!(a.joined() && b.joined());
    assert!(b.is_live(1) && b.is_live(2));
    assert!(!b.is_live(42), "once joined, an unknown node is not live");

    // b learned a's metadata: name, version, shard role, load.
    eventually("a's metadata at b", || {
        b.members().iter().any(|m| m.id == 1 && m.shards_led == 1)
    })
    .await;
    let seen = b.members().into_iter().find(|m| m.id == 1).unwrap();
    assert_eq!(seen.name.as_deref(), Some("mail-default-0"));
    assert_eq!(seen.pool.as_deref(), Some("default"));
    assert_eq!(seen.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(seen.gossip_addr, Some(a.listen_addr()));
    assert_eq!(
        seen.shards,
        [ShardView {
            shard: 1,
            role: RaftRole::Leader
        }]
    );
    assert!(seen.last_heard_ms.is_some_and(|ms| ms < 5_000));
    let status = seen.to_status();
    assert_eq!(
        (status.name.as_str(), status.node_id),
        ("mail-default-0", 1)
    );
    let json = serde_json::to_value(b.cluster_members()).unwrap();
    assert_eq!(json["joined"], true);
    assert_eq!(json["members"][0]["self"], true);
    assert_eq!(json["members"][0]["state"], "alive");

    let mut metrics = String::new();
    a.render_metrics(&mut metrics);
    assert!(
        metrics.contains("tern_gossip_members{state=\"alive\"} 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("tern_gossip_joined 1\n"), "{metrics}");
    assert!(metrics.contains("tern_gossip_key_id 1\n"), "{metrics}");
    for node in ["mail-default-0", "mail-default-1"] {
        let alive = format!("tern_gossip_member_state{{node=\"{node}\",state=\"alive\"}} 1\n");
        let dead = format!("tern_gossip_member_state{{node=\"{node}\",state=\"dead\"}} 0\n");
        assert!(metrics.contains(&alive), "{metrics}");
        assert!(metrics.contains(&dead), "{metrics}");
        assert!(
            metrics.contains(&format!("tern_gossip_member_phi{{node=\"{node}\"}} ")),
            "{metrics}"
        );
    }
    assert!(
        metrics
            .contains("tern_gossip_member_info{node=\"mail-default-1\",id=\"2\",pool=\"default\""),
        "{metrics}"
    );

    let started = Instant::now();
    b.leave().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(state_of(&b, 2), Some(MemberState::Left));
    assert!(!b.is_live(2));
    eventually("a sees b left", || {
        state_of(&a, 2) == Some(MemberState::Left)
    })
    .await;
    // Leaving again returns at once.
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_are_dropped_counted_and_change_nothing() {
    let dir = tern_raft::testing::TempDir::new("gossip-drops");
    let key = key_file(dir.path());
    let names = ["mail-default-0", "mail-default-1"];
    let a = start(options(names[0], &key, &[]), followed(&names), no_shards())
        .await
        .unwrap();
    eventually("a running", || a.node_id() == Some(1)).await;
    let target = a.listen_addr();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let ping = Message::new(Kind::Ping {
        seq: 1,
        from: 2,
        target: 1,
    })
    .encode();
    let ours = Keyring::new("mail", KeyId(1), [(KeyId(1), KEY)]).unwrap();
    let other_cluster = Keyring::new("other", KeyId(1), [(KeyId(1), KEY)]).unwrap();
    let other_key = Keyring::new("mail", KeyId(7), [(KeyId(7), KEY)]).unwrap();
    let header = |sequence| Header {
        sender: 2,
        sequence,
    };
    let valid_gossip = seal(&ours, &header(10), &Message::new(Kind::Gossip).encode()).unwrap();
    let not_a_message = seal(&ours, &header(11), b"\xff\xff\xff").unwrap();
    let packets: Vec<(&str, Vec<u8>)> = vec![
        ("bad_magic", vec![0x42; 200]),
        ("too_short", b"TG".to_vec()),
        (
            "auth_failed",
            seal(&other_cluster, &header(1), &ping).unwrap(),
        ),
        ("unknown_key", seal(&other_key, &header(2), &ping).unwrap()),
        ("malformed", not_a_message),
    ];
    for (_, packet) in &packets {
        udp.send_to(packet, target).await.unwrap();
    }
    // An authentic packet (a key holder's), and the same bytes again: a replay.
    udp.send_to(&valid_gossip, target).await.unwrap();
    udp.send_to(&valid_gossip, target).await.unwrap();
    for (reason, _) in &packets {
        eventually(reason, || a.dropped(reason) == 1).await;
    }
    eventually("replayed", || a.dropped("replayed") == 1).await;

    // Streams: a frame announcing more than the limit, a garbage frame, a stalled connection.
    let mut huge = tokio::net::TcpStream::connect(target).await.unwrap();
    huge.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(target).await.unwrap();
    garbage.write_all(&100u32.to_be_bytes()).await.unwrap();
    garbage.write_all(&[0x17; 100]).await.unwrap();
    let _stalled = tokio::net::TcpStream::connect(target).await.unwrap();
    eventually("too_large", || a.dropped("too_large") == 1).await;
    eventually("bad_magic from the stream", || a.dropped("bad_magic") == 2).await;

    // Nothing of it changed the membership, and the node still takes a real member.
    assert_eq!(a.members().len(), 1);
    assert!(!a.joined());
    let b = start(
        options(names[1], &key, &[target]),
        followed(&names),
        no_shards(),
    )
    .await
    .unwrap();
    eventually("b joins a", || state_of(&a, 2) == Some(MemberState::Alive)).await;
    assert!(b.joined());
    assert_eq!(a.dropped("auth_failed"), 1);
}

#[tokio::test]
async fn before_the_assignment_names_the_node_it_waits_and_a_lone_node_counts_as_joined() {
    let dir = tern_raft::testing::TempDir::new("gossip-wait");
    let key = key_file(dir.path());
    let nobody = Shared::default();
    let g = start(
        options("mail-default-0", &key, &[]),
        nobody.clone(),
        no_shards(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(g.node_id(), None);
    assert!(!g.joined());
    assert!(g.is_live(3));
    // Leaving before gossip started returns at once.
    tokio::time::timeout(Duration::from_secs(1), g.leave())
        .await
        .unwrap();

    let alone = start(
        options("mail-default-0", &key, &[]),
        followed(&["mail-default-0"]),
        no_shards(),
    )
    .await
    .unwrap();
    assert!(alone.joined(), "the only node of its assignment");
    assert!(alone.cluster_members().joined);
}

#[tokio::test]
async fn a_bad_keyring_or_a_busy_port_refuses_to_start() {
    let dir = tern_raft::testing::TempDir::new("gossip-refuse");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "primary 9\n").unwrap();
    let e = start(
        options("mail-default-0", &bad, &[]),
        Shared::default(),
        no_shards(),
    )
    .await
    .err()
    .unwrap();
    assert!(e.contains("primary key id 9 is not listed"), "{e}");

    let key = key_file(dir.path());
    let first = start(
        options("mail-default-0", &key, &[]),
        Shared::default(),
        no_shards(),
    )
    .await
    .unwrap();
    let mut o = options("mail-default-1", &key, &[]);
    o.listen = first.listen_addr();
    let e = start(o, Shared::default(), no_shards())
        .await
        .err()
        .unwrap();
    assert!(e.starts_with("gossip UDP socket"), "{e}");
}

/// A sample of the gossip metrics, e.g. `tern_gossip_packets_sent_total{transport="tcp"}`.
fn metric(g: &Gossip, series: &str) -> u64 {
    let mut text = String::new();
    g.render_metrics(&mut text);
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_is_the_node_itself_is_asked_once() {
    // Listening on every interface with no advertised address, the node cannot tell that the
    // seed 127.0.0.1:P is itself until it answers its own join request.
    let dir = tern_raft::testing::TempDir::new("gossip-self-seed");
    let key = key_file(dir.path());
    let port = {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.local_addr().unwrap().port()
    };
    let mut o = options(
        "mail-default-0",
        &key,
        &[SocketAddr::from(([127, 0, 0, 1], port))],
    );
    o.listen = SocketAddr::from(([0, 0, 0, 0], port));
    let g = start(
        o,
        followed(&["mail-default-0", "mail-default-1"]),
        no_shards(),
    )
    .await
    .unwrap();
    eventually("its own answer", || {
        metric(&g, "tern_gossip_packets_received_total{transport=\"tcp\"}") == 2
    })
    .await;
    // Several join rounds later (one a second), it has not asked itself again.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        metric(&g, "tern_gossip_packets_sent_total{transport=\"tcp\"}"),
        2
    );
    assert_eq!(
        metric(&g, "tern_gossip_packets_received_total{transport=\"tcp\"}"),
        2
    );
    assert!(!g.joined(), "hearing itself is not joining");
    assert_eq!(g.members().len(), 1);
}
