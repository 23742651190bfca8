//! `tern-bench imap`: Tern's IMAP service against Dovecot, same machine, same workload.
//!
//! 1. **Tern**: starts a local cluster of three agents (`tern-agent dev --detach`, release
//!    binaries next to this one; three shards, replication factor 3, so every node holds a
//!    replica of every user's shard), creates the users through the admin API, and sends every
//!    user to the IMAPS listener of one node, verified against the cluster's CA.
//! 2. **Dovecot**: the reference peer (`peer-stack.sh start DIR`: Postfix → LMTP → Dovecot
//!    from Debian packages on 127.0.0.1, any `@bench.local` address with password `pass`),
//!    over IMAPS on 1993 with its self-signed certificate pinned.
//!
//! Each target runs alone (the Tern cluster is stopped before Dovecot starts). For each user
//! count, every user's INBOX is filled to `--messages` messages (2–20 KiB, the same bytes for
//! both targets) with `APPEND` before timing; then every user runs the mixed workload of
//! [`workload`] for a warm-up second and `--seconds` measured; then each mailbox's size is
//! checked against the appends and expunges the run made. Printed: operations per second,
//! p50/p99 per operation kind, errors, and the Tern/Dovecot ratio.
//!
//! Usage: `tern-bench imap [--dir DIR] [--base-port P] [--users 16,64] [--seconds S]
//! [--messages M] [--peer-stack PATH] [--only tern|dovecot] [--keep]`.

pub mod client;
pub mod workload;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use client::{Endpoint, Trust};
use workload::{Kind, Report, Workload, percentile};

use crate::local::LocalCluster;

const TERN_DOMAIN: &str = "bench.test";
const TERN_PASSWORD: &str = "imap-bench-password";
const DOVECOT_DOMAIN: &str = "bench.local";
const DOVECOT_PASSWORD: &str = "pass";
const DOVECOT_IMAPS: &str = "127.0.0.1:1993";
/// Where the reference peer's script is kept next to the repository.
const PEER_STACK: &str = "../shared/reference/peer-stack.sh";

/// Command-line options.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub dir: PathBuf,
    pub base_port: u16,
    pub users: Vec<usize>,
    pub seconds: u64,
    pub messages: u32,
    pub peer_stack: PathBuf,
    pub tern: bool,
    pub dovecot: bool,
    pub keep: bool,
}

pub const USAGE: &str = "usage: tern-bench imap [--dir DIR] [--base-port P] [--users 16,64] [--seconds S] [--messages M] [--peer-stack PATH] [--only tern|dovecot] [--keep]";

/// Parses the arguments after `imap`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        dir: std::env::temp_dir().join(format!("tern-bench-imap-{}", std::process::id())),
        base_port: 19200,
        users: vec![16, 64],
        seconds: 20,
        messages: 100,
        peer_stack: std::env::var_os("TERN_PEER_STACK")
            .map_or_else(|| PathBuf::from(PEER_STACK), PathBuf::from),
        tern: true,
        dovecot: true,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| -> Result<u64, String> {
            v.trim()
                .parse::<u64>()
                .map_err(|e| format!("{flag} {v:?}: {e}"))
        };
        match flag.as_str() {
            "--dir" => o.dir = PathBuf::from(value()?),
            "--base-port" => {
                o.base_port = u16::try_from(number(value()?)?)
                    .ok()
                    .filter(|p| (1024..=65000).contains(p))
                    .ok_or("--base-port must be between 1024 and 65000")?
            }
            "--seconds" => {
                o.seconds = number(value()?)?;
                if !(1..=3600).contains(&o.seconds) {
                    return Err("--seconds must be between 1 and 3600".into());
                }
            }
            "--messages" => {
                o.messages = u32::try_from(number(value()?)?)
                    .ok()
                    .filter(|m| (1..=100_000).contains(m))
                    .ok_or("--messages must be between 1 and 100000")?
            }
            "--users" => {
                o.users = value()?
                    .split(',')
                    .map(|u| number(u.to_owned()).map(|n| n as usize))
                    .collect::<Result<_, _>>()?;
                if o.users.iter().any(|&u| !(1..=1000).contains(&u)) {
                    return Err("--users: each count must be between 1 and 1000".into());
                }
            }
            "--peer-stack" => o.peer_stack = PathBuf::from(value()?),
            "--only" => match value()?.as_str() {
                "tern" => o.dovecot = false,
                "dovecot" => o.tern = false,
                other => return Err(format!("--only tern|dovecot, not {other:?}")),
            },
            "--keep" => o.keep = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

/// `tern-bench imap ARGS`: the exit code.
pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tern-bench imap: {e}\n{USAGE}");
            return 2;
        }
    };
    crate::local::run_benchmark("imap", &o.dir, o.keep, run(&o))
}

fn workload(users: Vec<String>, password: &str, o: &Options) -> Workload {
    Workload {
        users,
        password: password.to_owned(),
        messages: o.messages,
        commands_per_session: 20,
        idle_hold: Duration::from_millis(20),
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(o.seconds),
        timeout: Duration::from_secs(30),
        seed: 0x7e24_1b3a,
    }
}

async fn run(o: &Options) -> Result<(), String> {
    let max_users = o.users.iter().copied().max().unwrap_or(1);
    println!(
        "tern-bench imap: users {:?}, {} messages of 2-20 KiB per INBOX, {} s measured after 1 s of warm-up, IMAPS (implicit TLS) for both targets, \
         each user from its own loopback address 127.1.x.y; sessions of LOGIN, SELECT, 20 mixed commands, LOGOUT",
        o.users, o.messages, o.seconds
    );
    let mut tern = Vec::new();
    if o.tern {
        tern = run_tern(o, max_users).await?;
    }
    let mut dovecot = Vec::new();
    if o.dovecot {
        dovecot = run_dovecot(o, max_users).await?;
    }
    println!();
    println!(
        "{:>6}  {:>12}  {:>14}  {:>12}  {:>15}  {:>12}",
        "USERS", "TERN OPS/S", "TERN ERRORS", "DOVECOT OPS/S", "DOVECOT ERRORS", "TERN/DOVECOT"
    );
    for (i, users) in o.users.iter().enumerate() {
        let t = tern.get(i);
        let d = dovecot.get(i);
        let rate =
            |r: Option<&Report>| r.map_or("-".into(), |r| format!("{:.0}", r.ops_per_second()));
        let errors = |r: Option<&Report>| r.map_or("-".into(), |r| r.errors().to_string());
        let ratio = match (t, d) {
            (Some(t), Some(d)) if d.ops_per_second() > 0.0 => {
                format!("{:.2}", t.ops_per_second() / d.ops_per_second())
            }
            _ => "-".into(),
        };
        println!(
            "{users:>6}  {:>12}  {:>14}  {:>12}  {:>15}  {:>12}",
            rate(t),
            errors(t),
            rate(d),
            errors(d),
            ratio
        );
    }
    Ok(())
}

async fn run_tern(o: &Options, max_users: usize) -> Result<Vec<Report>, String> {
    let cluster = LocalCluster::start(&o.dir.join("tern"), o.base_port, &[])?;
    tern_phase(o, &cluster, max_users).await
}

async fn tern_phase(
    o: &Options,
    cluster: &LocalCluster,
    max_users: usize,
) -> Result<Vec<Report>, String> {
    let (endpoints, assignment, admin) = (&cluster.endpoints, &cluster.assignment, &cluster.admin);
    let ca = std::fs::read(&endpoints.admin.ca_file)
        .map_err(|e| format!("{}: {e}", endpoints.admin.ca_file.display()))?;
    admin
        .create_domain(TERN_DOMAIN)
        .await
        .map_err(|e| format!("creating the domain: {e}"))?;
    let users: Vec<String> = (0..max_users)
        .map(|i| format!("imap{i}@{TERN_DOMAIN}"))
        .collect();
    for user in &users {
        admin
            .create_account(user, TERN_PASSWORD, None)
            .await
            .map_err(|e| format!("creating {user}: {e}"))?;
    }
    // Every user connects to one node; it must hold a replica of each user's shard.
    let shards: BTreeSet<u32> = users
        .iter()
        .filter_map(|u| assignment.shard_of(u))
        .collect();
    let node = endpoints
        .nodes
        .iter()
        .find(|n| {
            shards.iter().all(|s| {
                assignment
                    .shards
                    .iter()
                    .any(|a| a.id == *s && a.voters.contains(&n.id))
            })
        })
        .ok_or("no node holds a replica of every user's shard")?;
    let leads = leaderships(&node.http).await;
    println!();
    println!(
        "Tern: node {} (id {}), IMAPS {} (certificate verified against the cluster CA); users on shards {:?}, all with a replica on this node; it leads shard(s) {:?}",
        node.name, node.id, node.imaps, shards, leads
    );
    let endpoint = Endpoint::new(&node.imaps, &Trust::ca_pem(&ca).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    measure(o, &endpoint, users, TERN_PASSWORD, "Tern").await
}

/// The shards whose leader `http` (a node's health port) is, from its `/metrics`.
async fn leaderships(http: &str) -> Vec<u32> {
    let Ok(addr) = http.parse() else {
        return Vec::new();
    };
    let Ok((_, text)) = tern_agent::dev::http_get(addr, "/metrics").await else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("tern_shard_leader{shard=\"")?;
            let (shard, value) = rest.split_once("\"} ")?;
            (value.trim() == "1").then(|| shard.parse().ok())?
        })
        .collect()
}

async fn run_dovecot(o: &Options, max_users: usize) -> Result<Vec<Report>, String> {
    let dir = o.dir.join("dovecot");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !o.peer_stack.is_file() {
        return Err(format!(
            "the reference peer's script {} is missing (--peer-stack PATH or TERN_PEER_STACK)",
            o.peer_stack.display()
        ));
    }
    let status = Command::new("bash")
        .arg(&o.peer_stack)
        .arg("start")
        .arg(&dir)
        .status()
        .map_err(|e| format!("running {}: {e}", o.peer_stack.display()))?;
    if !status.success() {
        return Err("the reference peer (Dovecot) did not start".into());
    }
    let result = dovecot_phase(o, &dir, max_users).await;
    let _ = Command::new("bash")
        .arg(&o.peer_stack)
        .arg("stop")
        .arg(&dir)
        .status();
    result
}

async fn dovecot_phase(o: &Options, dir: &Path, max_users: usize) -> Result<Vec<Report>, String> {
    let cert_file = dir.join("tls/cert.pem");
    let cert = std::fs::read(&cert_file).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let endpoint = Endpoint::new(
        DOVECOT_IMAPS,
        &Trust::pinned_pem(&cert).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let version = Command::new("dovecot")
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    println!();
    println!(
        "Dovecot {version}: IMAPS {DOVECOT_IMAPS} (its self-signed certificate pinned), Maildir under {}",
        dir.display()
    );
    let users: Vec<String> = (0..max_users)
        .map(|i| format!("imap{i}@{DOVECOT_DOMAIN}"))
        .collect();
    measure(o, &endpoint, users, DOVECOT_PASSWORD, "Dovecot").await
}

/// Fills the mailboxes, then runs each user count and prints its table.
async fn measure(
    o: &Options,
    endpoint: &Endpoint,
    users: Vec<String>,
    password: &str,
    target: &str,
) -> Result<Vec<Report>, String> {
    let all = workload(users.clone(), password, o);
    let began = Instant::now();
    let added = workload::populate(endpoint, &all).await?;
    println!(
        "{target}: {added} messages appended to {} mailboxes in {:.1} s before timing",
        users.len(),
        began.elapsed().as_secs_f64()
    );
    let mut reports = Vec::new();
    for &n in &o.users {
        let w = workload(users[..n].to_vec(), password, o);
        let before = workload::counts(endpoint, &w).await?;
        let report = workload::run(endpoint, &w).await;
        let (checked, wrong) = workload::verify(endpoint, &w, &before, &report).await;
        print_report(target, n, &report);
        println!(
            "mailbox sizes after the run: {checked} of {n} checked against the appends and expunges, {} wrong{}",
            wrong.len(),
            wrong
                .first()
                .map_or(String::new(), |w| format!(" (first: {w})"))
        );
        if !wrong.is_empty() {
            return Err(format!(
                "{target}: {} mailboxes lost or gained messages",
                wrong.len()
            ));
        }
        reports.push(report);
    }
    Ok(reports)
}

fn print_report(target: &str, users: usize, r: &Report) {
    println!();
    println!(
        "{target}, {users} users: {:.0} ops/s ({} ops in {} s), {} errors, {} sessions, {:.1} MiB of message data read",
        r.ops_per_second(),
        r.ops(),
        r.measured.as_secs(),
        r.errors(),
        r.sessions,
        r.literal_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  {:<14}  {:>8}  {:>8}  {:>8}  {:>8}  {:>7}",
        "OPERATION", "OPS", "OPS/S", "P50 MS", "P99 MS", "ERRORS"
    );
    for kind in Kind::ALL {
        let k = r.kind(kind);
        println!(
            "  {:<14}  {:>8}  {:>8.0}  {:>8.2}  {:>8.2}  {:>7}",
            kind.name(),
            k.latencies.len(),
            k.latencies.len() as f64 / r.measured.as_secs_f64(),
            percentile(&k.latencies, 0.50),
            percentile(&k.latencies, 0.99),
            k.errors
        );
    }
    println!(
        "  {:<14}  {:>8}  {:>8}  {:>8.2}  {:>8.2}  {:>7}",
        "(connect+TLS)",
        r.connects.len(),
        "-",
        percentile(&r.connects, 0.50),
        percentile(&r.connects, 0.99),
        "-"
    );
    for e in &r.first_errors {
        println!("  error: {e}");
    }
}

#[cfg(test)]
mod tests;
