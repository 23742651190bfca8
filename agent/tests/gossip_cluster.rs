//! Gossip membership between real `tern-agent run` processes on loopback (see `common`), with
//! faults only from outside: SIGKILL, SIGSTOP/SIGCONT, SIGTERM, keyring files, and raw packets
//! from this test. Timing targets are the simulator benchmark's business
//! (`cargo bench -p tern-gossip`); the deadlines here are generous.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Options, gossip_keyring_text, random_key};
use serde_json::Value;
use tern_gossip::crypto::{Header, seal};
use tern_gossip::keyring::{KeyId, Keyring};
use tern_gossip::message::{Kind, Message};
use tokio::io::AsyncWriteExt;

/// Nodes without data: gossip, health and metrics only (quick to start, nothing else running).
fn gossip_only() -> Options {
    Options {
        storage: false,
        ..Options::default()
    }
}

/// `(state, incarnation)` of every member in a `/cluster/members` document, by node id.
fn states(doc: &Value) -> BTreeMap<u64, (String, u64)> {
    doc["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                m["id"].as_u64()?,
                (m["state"].as_str()?.to_owned(), m["incarnation"].as_u64()?),
            ))
        })
        .collect()
}

/// Waits until every node in `observers` reports node `id` in one of `wanted`; returns the
/// incarnations they report.
async fn wait_state(
    cluster: &Cluster,
    observers: &[usize],
    id: u64,
    wanted: &[&str],
    within: Duration,
) -> Vec<u64> {
    let mut seen = vec![];
    cluster
        .wait_until(
            within,
            &format!("node {id} {} everywhere", wanted.join(" or ")),
            async || {
                seen.clear();
                for &o in observers {
                    let doc = cluster.members(o).await?;
                    match states(&doc).get(&id) {
                        Some((state, incarnation)) if wanted.contains(&state.as_str()) => {
                            seen.push(*incarnation)
                        }
                        other => return Err(format!("{} sees {other:?}", cluster.name(o))),
                    }
                }
                Ok(())
            },
        )
        .await;
    seen
}

/// Waits until every node sees every node (itself included) alive.
async fn wait_all_alive(cluster: &Cluster, within: Duration) {
    let n = cluster.len();
    cluster
        .wait_until(within, "every node alive everywhere", async || {
            for o in 0..n {
                let doc = cluster.members(o).await?;
                let seen = states(&doc);
                let alive = (0..n)
                    .filter(|&i| {
                        seen.get(&cluster.node_id(i))
                            .is_some_and(|(s, _)| s == "alive")
                    })
                    .count();
                if alive != n || doc["joined"] != true {
                    return Err(format!("{} sees {seen:?}", cluster.name(o)));
                }
            }
            Ok(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_through_seeds_share_their_shards_and_are_ready_only_once_joined() {
    // Three storage nodes with one shard; only the first starts.
    let cluster = Cluster::start(
        3,
        Options {
            hold_back: vec![1, 2],
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    // Alone, it names gossip as the reason it is not ready, and keeps doing so.
    cluster
        .wait_until(
            Duration::from_secs(30),
            "node 0 not ready for gossip",
            async || match cluster.ready(0).await {
                Err(why) if why.starts_with("503") && why.contains("gossip has not joined") => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let why = cluster.ready(0).await.unwrap_err();
    assert!(why.contains("gossip has not joined"), "{why}");
    let doc = cluster.check(cluster.members(0).await, "members of node 0");
    assert_eq!(doc["joined"], false);
    assert_eq!(states(&doc).len(), 1, "only itself: {doc}");
    assert_eq!(
        cluster.check(cluster.metric(0, "tern_gossip_joined").await, "joined"),
        0
    );

    // Its peers arrive: everyone joins through the seeds, then becomes ready.
    cluster.start_node(1);
    cluster.start_node(2);
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    wait_all_alive(&cluster, Duration::from_secs(15)).await;

    // Metadata: every node knows every other's name, version and address, and all agree on
    // which node leads the shard (the one whose Raft says so).
    let leader = cluster
        .wait_leader(1, &[0, 1, 2], Duration::from_secs(20))
        .await;
    let leader_id = cluster.node_id(leader);
    cluster
        .wait_until(
            Duration::from_secs(15),
            "every node sees the shard's roles",
            async || {
                for o in 0..3 {
                    let doc = cluster.members(o).await?;
                    for m in doc["members"].as_array().ok_or("no members")? {
                        let id = m["id"].as_u64().ok_or("no id")?;
                        let i = (0..3).find(|&i| cluster.node_id(i) == id).ok_or("id")?;
                        if m["name"] != cluster.name(i)
                            || m["version"] != env!("CARGO_PKG_VERSION")
                            || m["gossipAddr"] != cluster.gossip_addr(i).to_string()
                        {
                            return Err(format!("{} sees {m}", cluster.name(o)));
                        }
                        let role = if id == leader_id {
                            "Leader"
                        } else {
                            "Follower"
                        };
                        let want = serde_json::json!([{"shard": 1, "role": role}]);
                        if m["shards"] != want || m["shardsHeld"] != 1 {
                            return Err(format!("{} sees {m}", cluster.name(o)));
                        }
                    }
                }
                Ok(())
            },
        )
        .await;
    for i in 0..3 {
        assert_eq!(
            cluster.check(
                cluster
                    .metric(i, "tern_gossip_members{state=\"alive\"}")
                    .await,
                "alive members"
            ),
            3
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_declared_dead_by_the_others() {
    let cluster = Cluster::start(4, gossip_only()).await;
    wait_all_alive(&cluster, Duration::from_secs(15)).await;
    let victim = 3;
    let started = Instant::now();
    cluster.kill(victim);
    wait_state(
        &cluster,
        &[0, 1, 2],
        cluster.node_id(victim),
        &["dead"],
        Duration::from_secs(15),
    )
    .await;
    eprintln!(
        "dead everywhere {:.1} s after SIGKILL",
        started.elapsed().as_secs_f64()
    );
    // The survivors stay alive to each other.
    for o in 0..3 {
        let doc = cluster.check(cluster.members(o).await, "members");
        for i in 0..3 {
            assert_eq!(
                states(&doc)[&cluster.node_id(i)].0,
                "alive",
                "{} about {}",
                cluster.name(o),
                cluster.name(i)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_suspected_and_comes_back_with_a_higher_incarnation() {
    let cluster = Cluster::start(4, gossip_only()).await;
    wait_all_alive(&cluster, Duration::from_secs(15)).await;
    let paused = 2;
    let id = cluster.node_id(paused);
    let others = [0, 1, 3];
    let before = states(&cluster.check(cluster.members(0).await, "members"))[&id].1;

    cluster.pause(paused);
    wait_state(
        &cluster,
        &others,
        id,
        &["suspect", "dead"],
        Duration::from_secs(15),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.resume(paused);

    let after = wait_state(&cluster, &others, id, &["alive"], Duration::from_secs(20)).await;
    assert!(
        after.iter().all(|&i| i > before),
        "incarnation {before} before the pause, {after:?} after"
    );
    // And it sees everyone alive again.
    wait_all_alive(&cluster, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_garbage_packets_are_dropped_counted_and_change_nothing() {
    let cluster = Cluster::start(3, gossip_only()).await;
    wait_all_alive(&cluster, Duration::from_secs(15)).await;
    let target = cluster.gossip_addr(0);
    let dropped =
        |reason: &str| format!("tern_gossip_packets_dropped_total{{reason=\"{reason}\"}}");
    let count =
        async |reason: &str| cluster.check(cluster.metric(0, &dropped(reason)).await, reason);
    let mut before = BTreeMap::new();
    for reason in [
        "bad_magic",
        "too_short",
        "too_large",
        "auth_failed",
        "replayed",
        "unknown_key",
    ] {
        before.insert(reason, count(reason).await);
    }
    let members_before = states(&cluster.check(cluster.members(0).await, "members"));

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Garbage datagrams.
    udp.send_to(
        b"GET / HTTP/1.1\r\n\r\n and more to be long enough for a header",
        target,
    )
    .await
    .unwrap();
    udp.send_to(b"TG\x01", target).await.unwrap();
    // A well-formed packet of another cluster: same key and key id, other cluster name.
    let ping = Message::new(Kind::Ping {
        seq: 7,
        from: 2,
        target: 1,
    })
    .encode();
    let key = cluster.gossip_key();
    let other_cluster = Keyring::new("other-cluster", KeyId(1), [(KeyId(1), key)]).unwrap();
    let header = |sender, sequence| Header { sender, sequence };
    // (Senders this node has not heard: a real member's old sequence numbers would be
    // refused as too old before the key is even tried.)
    udp.send_to(
        &seal(&other_cluster, &header(98, 1), &ping).unwrap(),
        target,
    )
    .await
    .unwrap();
    // A key id this cluster does not hold.
    let unknown = Keyring::new("dev", KeyId(9), [(KeyId(9), random_key())]).unwrap();
    udp.send_to(&seal(&unknown, &header(97, 1), &ping).unwrap(), target)
        .await
        .unwrap();
    // A key holder's empty gossip packet, then a replay of it.
    let ours = Keyring::new("dev", KeyId(1), [(KeyId(1), key)]).unwrap();
    let genuine = seal(&ours, &header(99, 1), &Message::new(Kind::Gossip).encode()).unwrap();
    udp.send_to(&genuine, target).await.unwrap();
    udp.send_to(&genuine, target).await.unwrap();
    // Streams: a garbage frame, a frame too large to accept, and a peer that stalls.
    let mut garbage = tokio::net::TcpStream::connect(target).await.unwrap();
    garbage.write_all(&64u32.to_be_bytes()).await.unwrap();
    garbage.write_all(&[0xAB; 64]).await.unwrap();
    let mut huge = tokio::net::TcpStream::connect(target).await.unwrap();
    huge.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _stalled = tokio::net::TcpStream::connect(target).await.unwrap();

    let expected = [
        ("bad_magic", 2),
        ("too_short", 1),
        ("too_large", 1),
        ("auth_failed", 1),
        ("unknown_key", 1),
        ("replayed", 1),
    ];
    cluster
        .wait_until(Duration::from_secs(10), "every drop counted", async || {
            for (reason, n) in expected {
                let now = cluster.metric(0, &dropped(reason)).await?;
                if now != before[reason] + n {
                    return Err(format!("{reason}: {} then {now}", before[reason]));
                }
            }
            Ok(())
        })
        .await;

    // Membership as before: the same members, all alive, no node 99; the other nodes too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = states(&cluster.check(cluster.members(0).await, "members"));
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        members_before.keys().collect::<Vec<_>>()
    );
    assert!(after.values().all(|(s, _)| s == "alive"), "{after:?}");
    wait_all_alive(&cluster, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_file_by_file_without_anyone_leaving_alive() {
    let cluster = Cluster::start(3, gossip_only()).await;
    wait_all_alive(&cluster, Duration::from_secs(15)).await;
    let n = cluster.len();

    // Watch every node's view all along: nobody may ever see anybody dead or gone. (A
    // passing suspicion is tolerated: on a loaded 2-core CI machine a probe can miss its
    // 80 ms timeout for reasons that have nothing to do with keys; the key-specific proof is
    // the drop counters below, which must stay at zero.)
    let cluster = Arc::new(cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let cluster = cluster.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen_bad = vec![];
            let mut polls = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for o in 0..n {
                    if let Ok(doc) = cluster.members(o).await {
                        polls += 1;
                        for (id, (state, _)) in states(&doc) {
                            if state != "alive" && state != "suspect" {
                                seen_bad.push(format!("{} saw node {id} {state}", cluster.name(o)));
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (seen_bad, polls)
        })
    };

    let old = cluster.gossip_key();
    let new = random_key();
    let steps = [
        (
            "install",
            gossip_keyring_text(1, &[(1, old), (2, new)]),
            1,
            2,
        ),
        ("use", gossip_keyring_text(2, &[(1, old), (2, new)]), 2, 2),
        ("remove", gossip_keyring_text(2, &[(2, new)]), 2, 1),
    ];
    for (step, text, primary, keys) in &steps {
        // File by file; the next step only once every node has taken this one.
        for i in 0..n {
            cluster.write_gossip_keyring(i, text);
        }
        cluster
            .wait_until(
                Duration::from_secs(15),
                &format!("rotation step {step} on every node"),
                async || {
                    for i in 0..n {
                        let k = cluster.metric(i, "tern_gossip_key_id").await?;
                        let c = cluster.metric(i, "tern_gossip_keys").await?;
                        if (k, c) != (*primary, *keys) {
                            return Err(format!("{}: key {k}, {c} keys", cluster.name(i)));
                        }
                    }
                    Ok(())
                },
            )
            .await;
        eprintln!("rotation step {step} done");
    }

    // A broken file keeps the keys in use.
    let errors = cluster.check(
        cluster.metric(0, "tern_gossip_keyring_errors_total").await,
        "keyring errors",
    );
    cluster.write_gossip_keyring(0, "primary 3\n");
    cluster
        .wait_until(
            Duration::from_secs(15),
            "the broken keyring reported",
            async || {
                let now = cluster
                    .metric(0, "tern_gossip_keyring_errors_total")
                    .await?;
                (now == errors + 1)
                    .then_some(())
                    .ok_or(format!("{now} errors"))
            },
        )
        .await;
    assert_eq!(
        cluster.check(cluster.metric(0, "tern_gossip_key_id").await, "key id"),
        2
    );
    // Traffic still flows under the new key alone: fresh packets are opened on every node.
    let received = async |i: usize| {
        cluster.check(
            cluster
                .metric(i, "tern_gossip_packets_received_total{transport=\"udp\"}")
                .await,
            "received",
        )
    };
    let r0 = received(0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(received(0).await > r0);

    stop.store(true, Ordering::SeqCst);
    let (seen_bad, polls) = watcher.await.unwrap();
    assert!(polls > 30, "the watcher polled {polls} times");
    if !seen_bad.is_empty() {
        cluster.fail(&format!(
            "a member left alive during the rotation: {seen_bad:?}"
        ));
    }
    for i in 0..n {
        for reason in ["unknown_key", "auth_failed"] {
            let series = format!("tern_gossip_packets_dropped_total{{reason=\"{reason}\"}}");
            assert_eq!(
                cluster.check(cluster.metric(i, &series).await, reason),
                0,
                "{} dropped packets for {reason} during the rotation",
                cluster.name(i)
            );
        }
    }
    wait_all_alive(&cluster, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_node_leaves_and_the_others_see_it_left() {
    let cluster = Cluster::start(3, gossip_only()).await;
    wait_all_alive(&cluster, Duration::from_secs(15)).await;
    let leaving = 1;
    let (status, took) = cluster.terminate(leaving, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "took {took:?} to leave");
    wait_state(
        &cluster,
        &[0, 2],
        cluster.node_id(leaving),
        &["left"],
        Duration::from_secs(10),
    )
    .await;
    // Left, not dead: a departure is not a failure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_state(
        &cluster,
        &[0, 2],
        cluster.node_id(leaving),
        &["left"],
        Duration::from_secs(1),
    )
    .await;
}
