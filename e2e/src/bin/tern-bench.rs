//! `tern-bench store`: the replicated store's benchmark on this machine.
//!
//! Starts a local cluster of three agents (`tern-agent dev --detach`, release binaries next to
//! this one), creates one account per shard through the admin API, then:
//!
//! 1. **Deliveries**: for 1, 16 and 256 concurrent clients, each delivering 4 KiB messages
//!    (distinct bodies; fresh idempotency keys, SHA-256 digests as SMTP makes them) to the
//!    shards' leaders over the agents' RPC, for a fixed time: deliveries per second and latency
//!    percentiles. A delivery counts only when the leader answers it, i.e. once it is
//!    committed — fsynced on a majority — and applied. Beside them, what the machine did over
//!    the same window (`tern_e2e::host`): the CPU's busy and I/O-wait shares and the bytes
//!    written to the data's disk per delivery.
//! 2. **Failover**: repeatedly SIGKILLs the leader of shard 1 and measures the time from the
//!    kill to the first delivery committed by the new leader (writes are sent to the surviving
//!    nodes, following "not the leader" answers); the killed node is restarted and caught up
//!    before the next trial.
//!
//! `tern-bench imap`: IMAP against Dovecot, see `tern_e2e::imap_bench`.
//!
//! `tern-bench smtp`: SMTP intake with Postfix's smtp-source against Postfix → Dovecot, see
//! `e2e/src/smtp_bench.rs`.
//!
//! Usage: `tern-bench store [--dir DIR] [--base-port P] [--seconds S] [--clients 1,16,256]
//! [--trials N] [--keep]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_agent::dev::Endpoints;
use tern_agent::pki::LocalPki;
use tern_agent::rpc::{Network, Refused, RpcKind, RpcResponse, TlsConfig};
use tern_e2e::host::{self, Host, Usage};
use tern_e2e::local::{LocalCluster, agent_binary, read_json};
use tern_mail::{Command as MailCommand, Reply, decode_response};
use tern_raft::{Node, NodeId, Request, ShardId};

const BODY_SIZE: usize = 4096;
const DOMAIN: &str = "bench.test";

struct Options {
    dir: PathBuf,
    base_port: u16,
    seconds: u64,
    clients: Vec<usize>,
    trials: usize,
    keep: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        dir: std::env::temp_dir().join(format!("tern-bench-{}", std::process::id())),
        base_port: 19000,
        seconds: 10,
        clients: vec![1, 16, 256],
        trials: 20,
        keep: false,
    };
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("store") => {}
        other => return Err(format!("expected `store` or `smtp`, got {other:?}")),
    }
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dir" => o.dir = PathBuf::from(value()?),
            "--base-port" => o.base_port = value()?.parse().map_err(|e| format!("{e}"))?,
            "--seconds" => o.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--trials" => o.trials = value()?.parse().map_err(|e| format!("{e}"))?,
            "--clients" => {
                o.clients = value()?
                    .split(',')
                    .map(|c| c.trim().parse().map_err(|e| format!("--clients: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--keep" => o.keep = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("smtp") {
        std::process::exit(tern_e2e::smtp_bench::main(&args[1..]));
    }
    if args.first().map(String::as_str) == Some("imap") {
        std::process::exit(tern_e2e::imap_bench::main(&args[1..]));
    }
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "tern-bench: {e}\nusage: tern-bench store [--dir DIR] [--base-port P] [--seconds S] [--clients 1,16,256] [--trials N] [--keep]"
            );
            std::process::exit(2);
        }
    };
    std::process::exit(tern_e2e::local::run_benchmark(
        "store",
        &options.dir,
        options.keep,
        run(&options),
    ));
}

/// The cluster as the benchmark sees it.
struct Cluster {
    network: Network,
    /// Node id → RPC address.
    nodes: BTreeMap<NodeId, String>,
    /// Node id → ordinal (for restarts).
    ordinals: BTreeMap<NodeId, u32>,
    /// Shard → an account of it.
    accounts: BTreeMap<ShardId, String>,
    dir: PathBuf,
}

async fn run(o: &Options) -> Result<(), String> {
    // Stopped when `run` returns, whatever happened.
    let local = LocalCluster::start(&o.dir.join("cluster"), o.base_port, &[])?;
    let (endpoints, assignment, admin) = (&local.endpoints, &local.assignment, &local.admin);
    let pki =
        LocalPki::load_or_generate(&local.dir.join("pki"), "dev").map_err(|e| e.to_string())?;
    let (cert, key) = pki
        .issue(&["127.0.0.1".to_owned()])
        .map_err(|e| e.to_string())?;
    let tls = TlsConfig::from_pem(pki.ca_cert_pem.as_bytes(), cert.as_bytes(), key.as_bytes())
        .map_err(|e| e.to_string())?;
    admin
        .create_domain(DOMAIN)
        .await
        .map_err(|e| format!("creating the domain: {e}"))?;
    let mut accounts = BTreeMap::new();
    for i in 0.. {
        if accounts.len() == assignment.shards.len() || i > 10_000 {
            break;
        }
        let address = format!("user{i}@{DOMAIN}");
        let Some(shard) = assignment.shard_of(&address) else {
            continue;
        };
        if accounts.contains_key(&shard) {
            continue;
        }
        admin
            .create_account(&address, "bench-password", None)
            .await
            .map_err(|e| format!("creating {address}: {e}"))?;
        accounts.insert(shard, address);
    }
    let cluster = Cluster {
        network: Network::new(tls.client.clone(), 0),
        nodes: endpoints
            .nodes
            .iter()
            .map(|n| (n.id, n.rpc.clone()))
            .collect(),
        ordinals: endpoints
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id, i as u32))
            .collect(),
        accounts,
        dir: local.dir.clone(),
    };
    let cluster = Arc::new(cluster);
    println!(
        "tern-bench store: 3 nodes, {} shards (replication factor 3), {BODY_SIZE}-byte deliveries, {} s per level",
        cluster.accounts.len(),
        o.seconds
    );
    println!();
    println!(
        "{:>8}  {:>12}  {:>9}  {:>9}  {:>9}  {:>11}  {:>8}  {:>7}  {:>13}",
        "CLIENTS",
        "DELIVERIES/S",
        "P50 MS",
        "P99 MS",
        "ERRORS",
        "CMDS/ENTRY",
        "CPU BUSY",
        "IOWAIT",
        "DISK KIB/DELIV"
    );
    let http: Vec<String> = endpoints.nodes.iter().map(|n| n.http.clone()).collect();
    for &clients in &o.clients {
        let before = proposed(&http).await;
        let (rate, mut latencies, errors, usage) = deliveries(&cluster, clients, o.seconds).await;
        let after = proposed(&http).await;
        latencies.sort_unstable();
        let per_entry = (after.1 - before.1) as f64 / ((after.0 - before.0).max(1)) as f64;
        let [busy, iowait, written] = host::columns(usage, rate * o.seconds as f64);
        println!(
            "{clients:>8}  {rate:>12.0}  {:>9.2}  {:>9.2}  {errors:>9}  {per_entry:>11.1}  {busy:>8}  {iowait:>7}  {written:>13}",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
        );
    }
    if o.trials > 0 {
        println!();
        let mut times = Vec::new();
        for trial in 1..=o.trials {
            let t = failover(&cluster, 1).await?;
            println!(
                "failover trial {trial:>2}: first commit on the new leader after {:.0} ms",
                t.as_secs_f64() * 1e3
            );
            times.push(t);
        }
        times.sort_unstable();
        println!(
            "failover over {} trials: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            times.len(),
            percentile(&times, 0.50),
            percentile(&times, 0.99),
            times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3)
        );
    }
    Ok(())
}

/// Entries and commands proposed by every node's leaders so far, from `/metrics`.
async fn proposed(http: &[String]) -> (u64, u64) {
    let mut totals = (0, 0);
    for addr in http {
        let Ok(addr) = addr.parse() else { continue };
        let Ok((_, text)) = tern_agent::dev::http_get(addr, "/metrics").await else {
            continue;
        };
        for line in text.lines() {
            let value = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let Some(v) = value("tern_store_entries_proposed_total ") {
                totals.0 += v;
            }
            if let Some(v) = value("tern_store_commands_proposed_total ") {
                totals.1 += v;
            }
        }
    }
    totals
}

/// The `q` quantile in milliseconds of sorted durations.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A 4 KiB message whose body differs per (client, n), so every delivery stores a blob: the
/// headers name the pair, the text after them is the same for all (made once, so the client
/// spends its share of the machine's two cores on sending, not on making text).
fn message(client: usize, n: u64) -> Vec<u8> {
    static FILLER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let filler = FILLER.get_or_init(|| {
        let mut text = Vec::with_capacity(BODY_SIZE);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while text.len() < BODY_SIZE {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push(b'a' + (x % 26) as u8);
            if text.len() % 78 == 76 {
                text.extend_from_slice(b"\r\n");
            }
        }
        text
    });
    let mut body = format!(
        "From: bench@{DOMAIN}\r\nTo: someone@{DOMAIN}\r\nSubject: {client}-{n}\r\nMessage-ID: <{client}.{n}@{DOMAIN}>\r\n\r\n"
    )
    .into_bytes();
    let rest = (BODY_SIZE - 2).saturating_sub(body.len());
    body.extend_from_slice(&filler[..rest]);
    body.extend_from_slice(b"\r\n");
    body
}

/// The key SMTP and LMTP give a delivery (`tern_agent::smtp::delivery::idempotency_key`): a
/// SHA-256 digest, so the keys land all over the idempotency index, as in production. The message
/// digest it is made from is unique per run, client and delivery.
fn idempotency_key(recipient: &str, client: usize, n: u64) -> Vec<u8> {
    let mut digest = [0u8; 32];
    let seed = [u64::from(std::process::id()), client as u64, n, 0x7465_726e];
    for (chunk, word) in digest.chunks_mut(8).zip(seed) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    tern_agent::smtp::delivery::idempotency_key(&digest, &[recipient.to_owned()])
}

fn deliver(recipient: &str, key: Vec<u8>, body: Vec<u8>) -> Vec<u8> {
    MailCommand::Deliver {
        idempotency_key: key,
        recipients: vec![recipient.to_owned()],
        mailbox: None,
        internal_date: now(),
        flags: vec![],
        body,
        now: now(),
    }
    .encode()
}

/// Sends one delivery to the shard's leader, following "not the leader" answers and trying the
/// nodes in turn, until `deadline`. Returns whether it was delivered.
async fn send(
    cluster: &Cluster,
    shard: ShardId,
    leader: &mut NodeId,
    command: &bytes::Bytes,
    deadline: Instant,
    skip: Option<NodeId>,
) -> Result<(), String> {
    let ids: Vec<NodeId> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| Some(*id) != skip)
        .collect();
    let mut turn = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err("no leader committed the delivery in time".into());
        }
        let target = *leader;
        let node = Node {
            rpc_addr: cluster.nodes[&target].clone(),
        };
        let answer = cluster
            .network
            .for_shard(shard)
            .request(
                target,
                &node,
                RpcKind::Write(
                    Request {
                        bytes: command.clone(),
                    },
                    unix_ms() + remaining.as_millis() as u64,
                ),
                remaining.min(Duration::from_secs(10)),
            )
            .await;
        match answer {
            Ok(RpcResponse::Write(Ok(response))) => {
                let outcomes = decode_response(&response.bytes);
                return match outcomes {
                    Ok(Reply::Delivered(results)) if results.iter().all(Result::is_ok) => Ok(()),
                    other => Err(format!("delivery refused: {other:?}")),
                };
            }
            Ok(RpcResponse::Write(Err(Refused::NotLeader { leader: Some(l) })))
                if Some(l) != skip && cluster.nodes.contains_key(&l) =>
            {
                *leader = l;
            }
            Ok(RpcResponse::Write(Err(Refused::Failed(why)))) => return Err(why),
            _ => {
                turn += 1;
                *leader = ids[turn % ids.len()];
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

async fn leader_of(cluster: &Cluster, shard: ShardId) -> Option<NodeId> {
    for (id, addr) in &cluster.nodes {
        let node = Node {
            rpc_addr: addr.clone(),
        };
        if let Ok(RpcResponse::Status(s)) = cluster
            .network
            .for_shard(shard)
            .request(*id, &node, RpcKind::Status, Duration::from_secs(1))
            .await
            && s.is_leader
        {
            return Some(*id);
        }
    }
    None
}

/// `clients` concurrent clients delivering for `seconds`: deliveries per second, every
/// latency, errors.
async fn deliveries(
    cluster: &Arc<Cluster>,
    clients: usize,
    seconds: u64,
) -> (f64, Vec<Duration>, u64, Option<Usage>) {
    let mut leaders = BTreeMap::new();
    for shard in cluster.accounts.keys() {
        leaders.insert(*shard, leader_of(cluster, *shard).await.unwrap_or(1));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let shards: Vec<ShardId> = cluster.accounts.keys().copied().collect();
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + warmup;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let cluster = cluster.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let shard = shards[client % shards.len()];
        let mut leader = leaders[&shard];
        tasks.push(tokio::spawn(async move {
            let recipient = cluster.accounts[&shard].clone();
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = idempotency_key(&recipient, client, n);
                let command = bytes::Bytes::from(deliver(&recipient, key, message(client, n)));
                let began = Instant::now();
                let sent = send(
                    &cluster,
                    shard,
                    &mut leader,
                    &command,
                    began + Duration::from_secs(10),
                    None,
                )
                .await;
                let took = began.elapsed();
                match sent {
                    Ok(()) if began >= measure_from => latencies.push(took),
                    Ok(()) => {}
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first error: {e}");
                        }
                    }
                }
            }
            latencies
        }));
    }
    let host = Host::for_dir(&cluster.dir);
    tokio::time::sleep_until((start + warmup).into()).await;
    let before = host.sample();
    tokio::time::sleep_until((start + warmup + Duration::from_secs(seconds)).into()).await;
    let usage = before.until(&host.sample());
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    // Count only deliveries that began inside the measured window.
    let rate = all.len() as f64 / seconds as f64;
    (rate, all, errors.load(Ordering::Relaxed), usage)
}

/// Kills the leader of `shard`, measures the time to the first delivery committed by a new
/// leader, restarts the old one and waits until it has caught up.
async fn failover(cluster: &Arc<Cluster>, shard: ShardId) -> Result<Duration, String> {
    let old = leader_of(cluster, shard)
        .await
        .ok_or("shard 1 has no leader")?;
    let endpoints: Endpoints = read_json(&cluster.dir.join("endpoints.json"))?;
    let pid = endpoints
        .nodes
        .iter()
        .find(|n| n.id == old)
        .map(|n| n.pid)
        .ok_or("no pid for the leader")?;
    let recipient = cluster.accounts[&shard].clone();
    let killed = Instant::now();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    let mut leader = *cluster
        .nodes
        .keys()
        .find(|id| **id != old)
        .expect("three nodes");
    let command = bytes::Bytes::from(deliver(
        &recipient,
        format!(
            "failover-{}-{}",
            std::process::id(),
            killed.elapsed().as_nanos()
        )
        .into_bytes(),
        message(usize::MAX, 0),
    ));
    send(
        cluster,
        shard,
        &mut leader,
        &command,
        killed + Duration::from_secs(30),
        Some(old),
    )
    .await?;
    let took = killed.elapsed();
    // Bring the old leader back and let it catch up before the next trial.
    let ordinal = cluster.ordinals[&old];
    let status = Command::new(agent_binary())
        .args(["dev", "--restart", &ordinal.to_string(), "--dir"])
        .arg(&cluster.dir)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("restarting node {old} failed"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            return Err(format!("node {old} did not catch up within 60 s"));
        }
        let node = Node {
            rpc_addr: cluster.nodes[&old].clone(),
        };
        let mine = cluster
            .network
            .for_shard(shard)
            .request(old, &node, RpcKind::Status, Duration::from_secs(1))
            .await;
        let lead = leader_of(cluster, shard).await;
        if let (Ok(RpcResponse::Status(mine)), Some(l)) = (mine, lead) {
            let node = Node {
                rpc_addr: cluster.nodes[&l].clone(),
            };
            if let Ok(RpcResponse::Status(theirs)) = cluster
                .network
                .for_shard(shard)
                .request(l, &node, RpcKind::Status, Duration::from_secs(1))
                .await
                && mine.applied >= theirs.applied
                && !mine.abstaining
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(took)
}
