//! Faults injected from outside into a real cluster of `tern-agent run` processes on loopback
//! (see `common`): SIGKILL, SIGSTOP, a wiped data dir, a cut network link. What must hold
//! through them: reads are linearizable on every node, a majority keeps taking writes, a node
//! without its majority refuses (503, in bounded time) instead of answering or hanging, and
//! every node that comes back converges on exactly what was committed.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Cluster, Options, create_domain_retrying, skip_or_fail};
use tern_agent::admin::AdminClient;

/// The shard of the one-shard clusters.
const SHARD: u32 = 1;
const ACCOUNT_PASSWORD: &str = "correct horse battery staple";

/// The domains listed through `client`, in the order listed; panics (with the logs) when the
/// list fails or repeats a name.
async fn domains(cluster: &Cluster, client: &AdminClient, through: usize) -> Vec<String> {
    let listed = cluster.check(
        client.list_domains().await,
        &format!("listing domains through {}", cluster.name(through)),
    );
    let names: Vec<String> = listed.into_iter().map(|d| d.name).collect();
    let unique: BTreeSet<&String> = names.iter().collect();
    if unique.len() != names.len() {
        cluster.fail(&format!(
            "{} lists a domain twice: {names:?}",
            cluster.name(through)
        ));
    }
    names
}

fn sorted(names: &BTreeSet<String>) -> Vec<String> {
    names.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_is_read_on_the_others() {
    // Three shards, led by three different nodes (a new shard's first leader rotates with
    // its id): domains are written to every shard, accounts to their group's shard.
    let cluster = Cluster::start(
        3,
        Options {
            shards: 3,
            ..Options::default()
        },
    )
    .await;
    let clients: Vec<AdminClient> = (0..3).map(|i| cluster.admin(i)).collect();

    cluster.check(
        clients[0].create_domain("example.org").await,
        "creating example.org through node 0",
    );
    let addresses: Vec<String> = ["alice", "bob", "carol", "dave", "erin", "frank"]
        .iter()
        .map(|user| format!("{user}@example.org"))
        .collect();
    for address in &addresses {
        cluster.check(
            clients[0]
                .create_account(address, ACCOUNT_PASSWORD, None)
                .await,
            &format!("creating {address} through node 0"),
        );
    }
    let shards: BTreeSet<u32> = addresses
        .iter()
        .filter_map(|a| cluster.assignment().shard_of(a))
        .collect();
    assert!(
        shards.len() >= 2,
        "the accounts should span shards: {shards:?}"
    );

    // At once, with no wait in between: a read anywhere sees every write acknowledged before.
    for i in [1, 2] {
        assert_eq!(
            domains(&cluster, &clients[i], i).await,
            ["example.org"],
            "domains through {}",
            cluster.name(i)
        );
        let accounts = cluster.check(
            clients[i].list_accounts("example.org").await,
            &format!("listing accounts through {}", cluster.name(i)),
        );
        let listed: Vec<String> = accounts.into_iter().map(|a| a.address).collect();
        assert_eq!(listed, addresses, "accounts through {}", cluster.name(i));
    }

    // Each write through one node is read at once through the next, round the cluster.
    let mut expected = BTreeSet::from(["example.org".to_owned()]);
    for n in 0..9 {
        let (writer, reader) = (n % 3, (n + 1) % 3);
        let domain = format!("round-{n}.test");
        cluster.check(
            clients[writer].create_domain(&domain).await,
            &format!("creating {domain} through {}", cluster.name(writer)),
        );
        expected.insert(domain);
        assert_eq!(
            domains(&cluster, &clients[reader], reader).await,
            sorted(&expected),
            "read through {} right after a write through {}",
            cluster.name(reader),
            cluster.name(writer)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_the_old_one_catches_up() {
    let cluster = Cluster::start(3, Options::default()).await;
    let all = [0, 1, 2];
    let old = cluster
        .wait_leader(SHARD, &all, Duration::from_secs(20))
        .await;
    let survivors: Vec<usize> = all.into_iter().filter(|i| *i != old).collect();
    let through = cluster.admin(survivors[0]);

    let mut expected = BTreeSet::new();
    for n in 0..5 {
        let domain = format!("before-{n}.test");
        cluster.check(through.create_domain(&domain).await, &domain);
        expected.insert(domain);
    }

    cluster.kill(old);
    let killed = Instant::now();
    // Only temporary errors are retried, for at most 10 s in all.
    let took = cluster.check(
        create_domain_retrying(&through, "after-kill.test", Duration::from_secs(10)).await,
        "the first write after the leader was killed",
    );
    expected.insert("after-kill.test".to_owned());
    eprintln!(
        "first write after killing {} committed {:.2} s after the kill",
        cluster.name(old),
        killed.elapsed().as_secs_f64()
    );
    assert!(took <= Duration::from_secs(10), "took {took:?}");
    let new = cluster
        .wait_leader(SHARD, &survivors, Duration::from_secs(10))
        .await;
    assert_ne!(new, old);
    assert_eq!(
        domains(&cluster, &through, survivors[0]).await,
        sorted(&expected)
    );

    // More writes while the old leader is down, then it comes back with its data.
    for n in 0..5 {
        let domain = format!("while-down-{n}.test");
        cluster.check(through.create_domain(&domain).await, &domain);
        expected.insert(domain);
    }
    cluster.restart(old);
    cluster.wait_ready(old).await;
    // The restarted node may campaign before the leader reaches it again and so cause one
    // more election (openraft 0.9 has no pre-vote); whoever leads then, it follows and catches
    // up, and it cannot lead itself: it lacks the entries written while it was down.
    let mut leader = new;
    cluster
        .wait_until(
            Duration::from_secs(20),
            "the restarted node following the leader and applied as far",
            async || {
                leader = cluster.leader(SHARD).await.ok_or("no leader")?;
                let l = cluster.status(leader, SHARD).await?;
                let back = cluster.status(old, SHARD).await?;
                if leader != old
                    && back.leader == Some(cluster.node_id(leader))
                    && back.applied >= l.applied
                {
                    Ok(())
                } else {
                    Err(format!("leader {l:?}, restarted {back:?}"))
                }
            },
        )
        .await;
    let back = cluster.admin(old);
    assert_eq!(domains(&cluster, &back, old).await, sorted(&expected));
    assert_eq!(
        domains(&cluster, &cluster.admin(leader), leader).await,
        sorted(&expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_at_once_keeps_every_write() {
    // As after a power cut: every replica restarts with its data at the same moment, so none
    // can learn from a running leader whether it is a replica with data or an empty newcomer.
    let cluster = Cluster::start(
        3,
        Options {
            shards: 2,
            ..Options::default()
        },
    )
    .await;
    let all = [0, 1, 2];
    let mut expected = BTreeSet::new();
    for n in 0..10 {
        let domain = format!("before-{n}.test");
        cluster.check(cluster.admin(n % 3).create_domain(&domain).await, &domain);
        expected.insert(domain);
    }
    for i in all {
        cluster.kill(i);
    }
    for i in all {
        cluster.restart(i);
    }
    for i in all {
        cluster.wait_ready(i).await;
    }
    for shard in [1, 2] {
        cluster
            .wait_leader(shard, &all, Duration::from_secs(15))
            .await;
    }
    for i in all {
        let log = cluster.log_since_restart(i);
        assert!(
            !log.contains("empty=true"),
            "{} took its replica for an empty one:\n{log}",
            cluster.name(i)
        );
    }
    cluster.check(
        cluster.admin(1).create_domain("after.test").await,
        "a write after the restart",
    );
    expected.insert("after.test".to_owned());
    for i in all {
        assert_eq!(
            domains(&cluster, &cluster.admin(i), i).await,
            sorted(&expected),
            "through {}",
            cluster.name(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_is_reseeded_by_a_snapshot() {
    let cluster = Cluster::start(
        3,
        Options {
            snapshot_logs: Some(10),
            ..Options::default()
        },
    )
    .await;
    let all = [0, 1, 2];
    let leader = cluster
        .wait_leader(SHARD, &all, Duration::from_secs(20))
        .await;
    let wiped = (leader + 1) % 3;
    let through = cluster.admin(leader);

    let mut expected = BTreeSet::new();
    let mut create = async |name: String| {
        cluster.check(through.create_domain(&name).await, &name);
        expected.insert(name);
    };
    for n in 0..60 {
        create(format!("first-{n:02}.test")).await;
    }
    cluster.kill(wiped);
    cluster.wipe(wiped);
    for n in 0..30 {
        create(format!("second-{n:02}.test")).await;
    }
    let target = cluster.check(cluster.status(leader, SHARD).await, "leader status");
    let target_applied = target.applied.unwrap();
    cluster.restart(wiped);

    // From its start until it is ready, the empty replica abstains unless it has applied as
    // far as the leader: it never votes while it lacks acknowledged entries.
    // (Seeing it abstain over RPC or in /metrics depends on polling at the right moment; its
    // log, checked below, proves it.)
    let (mut abstaining_in_status, mut abstaining_in_metrics) = (false, false);
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the wiped node ready",
            async || {
                if let Ok(s) = cluster.status(wiped, SHARD).await {
                    abstaining_in_status |= s.abstaining;
                    if !s.abstaining && s.applied < Some(target_applied) {
                        cluster.fail(&format!(
                            "the wiped replica votes while behind the leader's {target_applied}: {s:?}"
                        ));
                    }
                }
                if let Ok(gauge) = cluster
                    .shard_gauge(wiped, "tern_shard_abstaining", SHARD)
                    .await
                {
                    abstaining_in_metrics |= gauge == 1;
                }
                cluster.ready(wiped).await
            },
        )
        .await;
    let status = cluster.check(cluster.status(wiped, SHARD).await, "status");
    assert!(
        !status.abstaining && status.applied >= Some(target_applied),
        "{status:?}"
    );

    // Its log: started empty (abstaining), installed a snapshot, and only then settled.
    let log = cluster.log_since_restart(wiped);
    let at = |needle: &str| {
        log.find(needle).unwrap_or_else(|| {
            cluster.fail(&format!(
                "{} logged no {needle:?} after its restart",
                cluster.name(wiped)
            ))
        })
    };
    let started = at("empty=true");
    let installed = at("installed snapshot");
    let settled = at("replica settled");
    assert!(
        started < installed && installed < settled,
        "started empty, then installed a snapshot, then settled:\n{log}"
    );
    // The snapshot covered entries the leader no longer had in its log: its index is past the
    // first batch of writes, so the replica cannot have replayed them from the log.
    let line = log[installed..].lines().next().unwrap_or_default();
    let index = snapshot_index(line)
        .unwrap_or_else(|| cluster.fail(&format!("no snapshot index in {line:?}")));
    assert!(
        index >= 60,
        "installed a snapshot at {index} (after 90 writes): {line}"
    );
    eprintln!(
        "{} was reseeded by a snapshot at log index {index} (leader applied {target_applied}); \
         abstaining seen in its status: {abstaining_in_status}, in /metrics: {abstaining_in_metrics}",
        cluster.name(wiped)
    );

    let listed = domains(&cluster, &cluster.admin(wiped), wiped).await;
    assert_eq!(listed.len(), 90);
    assert_eq!(listed, sorted(&expected));
    assert_eq!(domains(&cluster, &through, leader).await, listed);
}

/// The log index of an `installed snapshot` line: its `last_log` id, `<term>-<node>-<index>`.
fn snapshot_index(line: &str) -> Option<u64> {
    let after = &line[line.find("last_log")?..];
    let id: String = after
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '-' || *c == 'T' || *c == 'N')
        .collect();
    id.rsplit('-').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_its_majority_refuses_writes_and_converges_after_healing() {
    const TEST: &str =
        "a_node_cut_off_from_its_majority_refuses_writes_and_converges_after_healing";
    // A short shard timeout keeps the refusals quick.
    let options = Options {
        timeout_ms: 2000,
        ..Options::default()
    };
    let cut = 2;
    let cluster = match Cluster::start_with_netns(3, options, cut).await {
        Ok(cluster) => cluster,
        Err(why) => return skip_or_fail(TEST, &why),
    };
    let all = [0, 1, 2];
    let mut expected = BTreeSet::new();
    for n in 0..3 {
        let domain = format!("before-{n}.test");
        cluster.check(cluster.admin(0).create_domain(&domain).await, &domain);
        expected.insert(domain);
    }

    // A new shard's first leader is its lowest voter, node 0: node 2 follows.
    let leader = cluster
        .wait_leader(SHARD, &all, Duration::from_secs(20))
        .await;
    let mut refused = vec![];
    let mut violations = vec![];
    if leader != cut {
        refused.push(cut_off(&cluster, cut, "follower", &mut expected, &mut violations).await);
    }
    make_leader(&cluster, cut, &mut expected).await;
    refused.push(cut_off(&cluster, cut, "leader", &mut expected, &mut violations).await);

    // Long after, on every node: exactly what was committed, without the refused writes.
    for i in all {
        let listed = domains(&cluster, &cluster.admin(i), i).await;
        assert_eq!(listed, sorted(&expected), "through {}", cluster.name(i));
        for r in &refused {
            if listed.contains(r) && !violations.iter().any(|v| v.starts_with(r.as_str())) {
                violations.push(format!("{r} was refused but is listed in the end"));
            }
        }
    }
    if !violations.is_empty() {
        cluster.fail(&violations.join("\n"));
    }
}

/// Cuts node `cut` off while it is the shard's `role`; checks that it refuses a write and a
/// read in bounded time while the majority goes on, then heals and checks that it converges.
/// Returns the refused domain.
async fn cut_off(
    cluster: &Cluster,
    cut: usize,
    role: &str,
    expected: &mut BTreeSet<String>,
    violations: &mut Vec<String>,
) -> String {
    let majority: Vec<usize> = (0..cluster.len()).filter(|i| *i != cut).collect();
    let isolated = cluster.admin(cut);
    let bound = Duration::from_millis(cluster.options().timeout_ms) + Duration::from_secs(2);
    eprintln!("cutting off {} ({role})", cluster.name(cut));
    cluster.partition();
    let cut_at = Instant::now();

    // The cut-off node refuses, as temporarily unavailable, in bounded time: a write (never
    // retried, so it must not appear anywhere) and a read (it must not answer from its copy).
    let refused = format!("refused-while-{role}.test");
    let asked = Instant::now();
    let write = isolated.create_domain(&refused).await;
    let took = asked.elapsed();
    match &write {
        Err(e) if e.status() == Some(503) && e.is_temporary() => {}
        other => cluster.fail(&format!(
            "a write through the cut-off {role} answered {other:?} after {took:?}, not 503"
        )),
    }
    assert!(took <= bound, "the refusal took {took:?} (bound {bound:?})");
    let asked = Instant::now();
    let read = isolated.list_domains().await;
    let read_took = asked.elapsed();
    match &read {
        Err(e) if e.status() == Some(503) => {}
        other => cluster.fail(&format!(
            "a read through the cut-off {role} answered {other:?} after {read_took:?}, not 503"
        )),
    }
    assert!(read_took <= bound, "the read's refusal took {read_took:?}");
    eprintln!(
        "cut-off {role}: write refused after {:.2} s, read after {:.2} s",
        took.as_secs_f64(),
        read_took.as_secs_f64()
    );

    // Meanwhile the majority takes writes (electing a leader first if the leader was cut off).
    let through = cluster.admin(majority[0]);
    for n in 0..5 {
        let domain = format!("during-{role}-cut-{n}.test");
        let took = cluster.check(
            create_domain_retrying(&through, &domain, Duration::from_secs(15)).await,
            &format!("writing {domain} through the majority"),
        );
        if n == 0 {
            eprintln!(
                "cut-off {role}: the majority's first write took {:.2} s",
                took.as_secs_f64()
            );
        }
        expected.insert(domain);
    }
    cluster
        .wait_leader(SHARD, &majority, Duration::from_secs(10))
        .await;
    assert_eq!(
        domains(cluster, &through, majority[0]).await,
        sorted(expected)
    );

    cluster.heal();
    let healed = Instant::now();
    let partitioned = healed - cut_at;
    cluster
        .wait_until(
            Duration::from_secs(20),
            "the healed node following the leader and caught up",
            async || {
                // Its higher term (it campaigned while cut off) may force one more election.
                let leader = cluster.leader(SHARD).await.ok_or("no leader")?;
                let l = cluster.status(leader, SHARD).await?;
                let c = cluster.status(cut, SHARD).await?;
                if leader != cut
                    && c.leader == Some(cluster.node_id(leader))
                    && c.applied >= l.applied
                {
                    Ok(())
                } else {
                    Err(format!("leader {l:?}, healed {c:?}"))
                }
            },
        )
        .await;
    eprintln!(
        "cut-off {role}: converged {:.2} s after healing",
        healed.elapsed().as_secs_f64()
    );
    let listed = domains(cluster, &isolated, cut).await;
    if let Some(missing) = expected.iter().find(|d| !listed.contains(d)) {
        cluster.fail(&format!(
            "the healed {role} does not list {missing}: {listed:?}"
        ));
    }
    // What the cut-off node sent before it gave up may still sit in its kernel's send queue;
    // TCP retransmits it with exponential backoff, so it arrives at most about as long after
    // healing as the partition lasted. Only after that is the refused write's absence final.
    let settle = partitioned + Duration::from_secs(2);
    tokio::time::sleep(settle.saturating_sub(healed.elapsed())).await;
    let listed = domains(cluster, &isolated, cut).await;
    if listed.contains(&refused) {
        // Reported at the end of the test, so that the other case still runs.
        violations.push(format!(
            "{refused} was refused (503) by the cut-off {role} and never retried, yet it is \
             listed {:.1} s after healing",
            healed.elapsed().as_secs_f64()
        ));
        expected.insert(refused.clone());
    }
    assert_eq!(listed, sorted(expected), "through the healed {role}");
    refused
}

/// Makes node `target` the shard's leader with signals only. The other follower is killed
/// while one more entry commits, so its log lacks that entry and nobody votes for it; then the
/// leader is paused (SIGSTOP) and the other follower restarted: `target` is the only node that
/// can win. (Pausing the follower instead would not do: the kernel still takes the leader's
/// appends into its socket buffers, and it reads them when it resumes.)
async fn make_leader(cluster: &Cluster, target: usize, expected: &mut BTreeSet<String>) {
    let all: Vec<usize> = (0..cluster.len()).collect();
    let leader = cluster
        .wait_leader(SHARD, &all, Duration::from_secs(20))
        .await;
    if leader == target {
        return;
    }
    let other = (0..cluster.len())
        .find(|i| *i != leader && *i != target)
        .unwrap();
    cluster.kill(other);
    let domain = "only-some-have-it.test".to_owned();
    cluster.check(cluster.admin(leader).create_domain(&domain).await, &domain);
    expected.insert(domain);
    cluster.pause(leader);
    cluster.restart(other);
    let new = cluster
        .wait_leader(SHARD, &[target, other], Duration::from_secs(15))
        .await;
    assert_eq!(new, target, "{} lacks the last entry", cluster.name(other));
    cluster.resume(leader);
    let settled = cluster
        .wait_leader(SHARD, &all, Duration::from_secs(15))
        .await;
    assert_eq!(settled, target);
    eprintln!("{} leads", cluster.name(target));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_assignment_moves_a_voter_step_by_step_and_the_old_one_leaves() {
    // Four nodes; the shard starts on the first three. The next assignment gives the fourth
    // node the third one's seat: the leader adds it as a learner, promotes it once caught
    // up, then removes the third, which deletes its data for the shard.
    let mut cluster = Cluster::start(4, Options::default()).await;
    let ids: Vec<u64> = (0..4).map(|i| cluster.node_id(i)).collect();
    assert_eq!(cluster.assignment().shards[0].voters, ids[..3]);
    let client = cluster.admin(0);
    let mut expected = BTreeSet::new();
    for n in 0..20 {
        let name = format!("before-{n}.example");
        cluster.check(client.create_domain(&name).await, "creating a domain");
        expected.insert(name);
    }

    let mut next = cluster.assignment().clone();
    next.epoch += 1;
    next.shards[0].voters = vec![ids[0], ids[1], ids[3]];
    cluster.publish(next);

    let new_voters = vec![ids[0], ids[1], ids[3]];
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the fourth node votes instead of the third",
            async || {
                let leader = cluster.leader(SHARD).await.ok_or("no leader")?;
                let s = cluster.status(leader, SHARD).await?;
                if s.voters == new_voters && s.learners.is_empty() && s.committed_membership {
                    Ok(())
                } else {
                    Err(format!(
                        "voters {:?}, learners {:?}, committed {}",
                        s.voters, s.learners, s.committed_membership
                    ))
                }
            },
        )
        .await;
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the third node leaves the shard",
            async || match cluster.status(2, SHARD).await {
                Err(e) if e.contains("UnknownShard") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    // The replica is gone from the node's shards before its data is: wait for the deletion.
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the third node deletes the shard's data",
            async || {
                let (_, metrics) = cluster.http_get(2, "/metrics").await?;
                if metrics.contains("tern_store_shards_left_total 1") {
                    Ok(())
                } else {
                    Err("tern_store_shards_left_total is not 1 yet".into())
                }
            },
        )
        .await;

    // The fourth node holds everything, and it is a voter that counts: with the first node
    // down, the second and fourth still commit.
    assert_eq!(
        domains(&cluster, &cluster.admin(3), 3).await,
        sorted(&expected)
    );
    cluster.kill(0);
    let survivor = cluster.admin(1);
    let name = "after.example".to_owned();
    cluster.check(
        create_domain_retrying(&survivor, &name, Duration::from_secs(10)).await,
        "writing with the first node down",
    );
    expected.insert(name);
    assert_eq!(
        domains(&cluster, &cluster.admin(3), 3).await,
        sorted(&expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_added_by_the_assignment_serves_linearizable_reads() {
    // Four nodes, the shard on the first three; the next assignment makes the fourth a
    // learner (a read replica): it joins without a vote and answers reads that see every
    // write committed before them.
    let mut cluster = Cluster::start(4, Options::default()).await;
    let ids: Vec<u64> = (0..4).map(|i| cluster.node_id(i)).collect();
    let mut next = cluster.assignment().clone();
    next.epoch += 1;
    next.shards[0].learners = vec![ids[3]];
    cluster.publish(next);
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the fourth node is the shard's learner and caught up",
            async || {
                let s = cluster.status(3, SHARD).await?;
                if s.learners == [ids[3]] && s.voters == ids[..3] && !s.abstaining {
                    Ok(())
                } else {
                    Err(format!(
                        "voters {:?}, learners {:?}, abstaining {}",
                        s.voters, s.learners, s.abstaining
                    ))
                }
            },
        )
        .await;

    let writer = cluster.admin(0);
    let reader = cluster.admin(3);
    let mut expected = BTreeSet::new();
    for n in 0..10 {
        let name = format!("learner-{n}.example");
        cluster.check(writer.create_domain(&name).await, "creating a domain");
        expected.insert(name);
        // No wait between the write and the read: the learner's read index covers it.
        assert_eq!(domains(&cluster, &reader, 3).await, sorted(&expected));
    }
    let leader = cluster.leader(SHARD).await.expect("a leader");
    assert_ne!(leader, 3, "a learner never leads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_catching_up_keeps_abstaining_after_a_restart() {
    // A replica that started empty leaves a marker on its volume until it has caught up, so
    // that a restart in between (when it already holds a vote and part of the log) does not
    // let it vote. Here the marker is left as such a crash would leave it.
    let cluster = Cluster::start(3, Options::default()).await;
    let client = cluster.admin(0);
    let mut expected = BTreeSet::new();
    for n in 0..5 {
        let name = format!("marker-{n}.example");
        cluster.check(client.create_domain(&name).await, "creating a domain");
        expected.insert(name);
    }
    let marker = cluster
        .data_dir(2)
        .join(format!("shard-{SHARD}.abstaining"));
    assert!(!marker.exists(), "a settled replica leaves no marker");
    cluster.kill(2);
    std::fs::write(&marker, b"").unwrap();
    cluster.restart(2);
    cluster.wait_ready(2).await;
    let log = cluster.log_since_restart(2);
    assert!(
        log.contains("empty=false abstain=true"),
        "the marker makes a non-empty replica abstain:\n{log}"
    );
    assert!(log.contains("replica settled"), "it settles once caught up");
    assert!(!marker.exists(), "settling removes the marker");
    assert_eq!(
        domains(&cluster, &cluster.admin(2), 2).await,
        sorted(&expected)
    );
}
