//! `tern-dev`: a local Tern cluster on 127.0.0.1, no Kubernetes needed.
//!
//! It does what the operator does for a MailCluster — places shards with the operator's own
//! placement code and writes the agent configuration and the assignment (as files instead of
//! ConfigMaps) — then starts one `tern-agent` process per node and waits until every node is
//! ready. `endpoints.json` in the state directory lists each node's addresses.
//!
//! ```text
//! cargo run --locked -p tern-e2e --bin tern-dev -- --nodes 3 --shards 2
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tern_crds::{Assignment, MailCluster};
use tern_operator::controller::plan;
use tern_operator::{placement, render};

struct Options {
    nodes: i32,
    shards: i32,
    dir: PathBuf,
    base_port: u16,
    /// Exit once the cluster is ready (for tests and scripts).
    detach: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        nodes: 3,
        shards: 2,
        dir: PathBuf::from(".dev"),
        base_port: 18080,
        detach: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--nodes" => o.nodes = value("--nodes")?.parse().map_err(|_| "--nodes takes a number")?,
            "--shards" => o.shards = value("--shards")?.parse().map_err(|_| "--shards takes a number")?,
            "--dir" => o.dir = value("--dir")?.into(),
            "--base-port" => o.base_port = value("--base-port")?.parse().map_err(|_| "--base-port takes a port")?,
            "--detach" => o.detach = true,
            "-h" | "--help" => return Err("usage: tern-dev [--nodes N] [--shards S] [--dir DIR] [--base-port PORT] [--detach]".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !(1..=64).contains(&o.nodes) {
        return Err("--nodes must be between 1 and 64".into());
    }
    Ok(o)
}

/// The MailCluster a local cluster stands for.
fn local_cluster(o: &Options) -> Result<MailCluster, String> {
    // The largest odd replication factor up to 3 that the nodes allow.
    let rf = if o.nodes >= 3 { 3 } else { 1 };
    serde_json::from_value(json!({
        "apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster",
        "metadata": {"name": "dev", "namespace": "local", "uid": "00000000-0000-0000-0000-000000000000"},
        "spec": {"domains": ["example.test"], "replicas": o.nodes, "shards": o.shards, "replicationFactor": rf}
    }))
    .map_err(|e| e.to_string())
}

/// Writes through a temporary file and a rename, as the kubelet updates ConfigMap volumes.
fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let agent = exe.with_file_name("tern-agent");
    if !agent.exists() {
        let cargo = std::env::var("CARGO").map_err(|_| {
            format!(
                "{} is missing: run `cargo build --locked -p tern-agent` first",
                agent.display()
            )
        })?;
        let status = Command::new(cargo)
            .args(["build", "--locked", "-p", "tern-agent"])
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() || !agent.exists() {
            return Err("building tern-agent failed".into());
        }
    }
    Ok(agent)
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(o: Options) -> Result<(), String> {
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let dir = std::fs::canonicalize(&o.dir).map_err(|e| e.to_string())?;
    let cluster = local_cluster(&o)?;
    let pools = plan::pools(&cluster, &[], &[]);
    plan::validate(&cluster, &pools)?;
    let assignment_path = dir.join("assignment.json");
    // A restarted dev cluster keeps its node ids and grows the epoch like the operator does.
    let previous = std::fs::read_to_string(&assignment_path)
        .ok()
        .and_then(|t| Assignment::from_json(&t).ok());
    let input = plan::placement_input(
        &cluster,
        &pools,
        &[],
        &Default::default(),
        previous.as_ref(),
    );
    let assignment = placement::place(previous.as_ref(), &input).map_err(|e| e.to_string())?;
    let settings = render::Settings {
        default_image: String::new(),
        cluster_domain: "cluster.local".into(),
    };
    let config =
        render::config_map::agent_config_for(&cluster, &settings).map_err(|e| e.to_string())?;
    let config_path = dir.join("config.json");
    write_atomic(
        &config_path,
        &serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?,
    )?;
    write_atomic(&assignment_path, &assignment.to_json())?;

    let agent = agent_binary()?;
    let mut nodes = Nodes(vec![]);
    let mut endpoints = vec![];
    for ordinal in 0..o.nodes {
        let name = plan::pod_name("dev", "default", ordinal);
        let port = o.base_port + ordinal as u16;
        let log =
            std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new(&agent)
            .arg("run")
            .env("POD_NAME", &name)
            .env("TERN_ROLE", "default")
            .env("TERN_CLUSTER", "dev")
            .env("TERN_CONFIG_FILE", &config_path)
            .env("TERN_ASSIGNMENT_FILE", &assignment_path)
            .env("TERN_HEALTH_ADDR", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", agent.display()))?;
        nodes.0.push(child);
        endpoints.push(json!({
            "name": name,
            "nodeId": assignment.node_id(&name),
            "health": format!("http://127.0.0.1:{port}/healthz/ready"),
            "metrics": format!("http://127.0.0.1:{port}/metrics"),
            "log": dir.join(format!("{name}.log")),
        }));
    }
    let endpoints = json!({"cluster": "dev", "epoch": assignment.epoch, "nodes": endpoints});
    write_atomic(
        &dir.join("endpoints.json"),
        &serde_json::to_string_pretty(&endpoints).map_err(|e| e.to_string())?,
    )?;

    let start = Instant::now();
    for ordinal in 0..o.nodes {
        let port = o.base_port + ordinal as u16;
        while http_get(port, "/healthz/ready").map(|(c, _)| c) != Some(200) {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "node {ordinal} not ready after 30 s; see {}",
                    dir.join(format!("dev-default-{ordinal}.log")).display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "tern-dev: {} nodes ready, assignment epoch {}, {} shards",
        o.nodes,
        assignment.epoch,
        assignment.shards.len()
    );
    for s in &assignment.shards {
        println!("  shard {}: voters {:?}", s.id, s.voters);
    }
    println!("endpoints: {}", dir.join("endpoints.json").display());
    if o.detach {
        // Leave the agents running for the caller; their pids are in endpoints.json's sibling.
        let pids: Vec<String> = nodes.0.iter().map(|c| c.id().to_string()).collect();
        write_atomic(&dir.join("pids"), &pids.join("\n"))?;
        std::mem::forget(nodes);
        return Ok(());
    }
    println!("Ctrl-C stops the cluster.");
    loop {
        for (i, c) in nodes.0.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "node {i} exited ({status}); see its log in {}",
                    dir.display()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = parse(&args).and_then(run) {
        eprintln!("tern-dev: {e}");
        std::process::exit(2);
    }
}
