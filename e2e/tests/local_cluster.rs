//! The local cluster (`tern-agent dev`) and the agent's side of the assignment contract, with
//! real processes on 127.0.0.1: nodes become ready once the assignment names them, follow
//! newer epochs, and ignore older ones; `--detach`/`--stop` and SIGTERM stop every agent.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_crds::Assignment;

/// Ports each node of `tern-agent dev` owns: `base + 20*i + offset`, offset 0 health, 1 RPC,
/// 2 admin.
const PORTS_PER_NODE: u16 = 20;

/// `target/<profile>/tern-agent`, next to this test's `deps/` directory. `scripts/test.sh`
/// builds the binaries before the tests; when it is missing it is built here.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let agent = profile_dir.join("tern-agent");
    if !agent.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--locked",
            "-p",
            "tern-agent",
            "--bin",
            "tern-agent",
        ]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().unwrap();
        assert!(
            status.success() && agent.exists(),
            "{} is missing and building it failed; run `cargo build --locked --bins`",
            agent.display()
        );
    }
    agent
}

/// A base port from which the served ports of `nodes` nodes are free; `salt` keeps tests
/// running in parallel apart.
fn free_base_port(nodes: u16, salt: u16) -> u16 {
    let start = 20_000 + ((std::process::id() as u16 % 1000) * 20 + salt * 1000) % 30_000;
    'outer: for base in (start..60_000).step_by(usize::from(PORTS_PER_NODE) * 4) {
        for i in 0..nodes {
            for offset in 0..3 {
                if TcpListener::bind(("127.0.0.1", base + PORTS_PER_NODE * i + offset)).is_err() {
                    continue 'outer;
                }
            }
        }
        return base;
    }
    panic!("no free ports");
}

fn health_port(base: u16, i: u16) -> u16 {
    base + PORTS_PER_NODE * i
}

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out.split_whitespace().nth(1).unwrap().parse().unwrap(), out)
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, body) = get(port, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a process runs (a zombie whose parent is gone does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-dev-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Stops whatever a test left running and removes its directory, even when it fails.
struct Cluster {
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(agent_binary())
            .args(["dev", "--stop", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
        for pid in pids(&self.dir) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn detached_local_cluster_follows_the_assignment_contract_and_stops() {
    let dir = test_dir("detach");
    let base = free_base_port(3, 1);
    let cluster = Cluster { dir: dir.clone() };
    let out = Command::new(agent_binary())
        .args(["dev", "--nodes", "3", "--shards", "2", "--detach"])
        .args(["--base-port", &base.to_string(), "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tern-agent dev failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 nodes ready"), "{stdout}");
    assert!(
        stdout.contains(&dir.join("endpoints.json").display().to_string()),
        "{stdout}"
    );

    // endpoints.json: every node's addresses and process, the admin credentials.
    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json")).unwrap())
            .unwrap();
    assert_eq!(endpoints["cluster"], "dev");
    assert_eq!(endpoints["dir"], dir.display().to_string());
    let nodes = endpoints["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let mut agent_pids = vec![];
    for (i, node) in nodes.iter().enumerate() {
        let port = health_port(base, i as u16);
        assert_eq!(node["name"], format!("dev-default-{i}"));
        assert_eq!(node["id"], i as u64 + 1);
        assert_eq!(node["http"], format!("127.0.0.1:{port}"));
        assert_eq!(node["rpc"], format!("127.0.0.1:{}", port + 1));
        assert_eq!(node["admin"], format!("https://127.0.0.1:{}", port + 2));
        let pid = node["pid"].as_u64().unwrap() as u32;
        assert!(alive(pid), "{node}");
        agent_pids.push(pid);
    }
    assert_eq!(pids(&dir), agent_pids);
    let admin = &endpoints["admin"];
    assert_eq!(admin["user"], "admin");
    let password = admin["password"].as_str().unwrap();
    assert_eq!(password.len(), 24);
    assert_eq!(
        std::fs::read_to_string(dir.join("admin-password")).unwrap(),
        password
    );
    assert_eq!(admin["url"], format!("https://127.0.0.1:{}", base + 2));
    let ca_file = admin["caFile"].as_str().unwrap();
    assert!(
        std::fs::read_to_string(ca_file)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    // The demo account exists, and every node reads it (created through node 0's admin API).
    let demo = &endpoints["accounts"][0];
    assert_eq!(demo["address"], "demo@example.test");
    assert_eq!(
        std::fs::read_to_string(dir.join("demo-password")).unwrap(),
        demo["password"].as_str().unwrap()
    );
    let ca = std::fs::read(ca_file).unwrap();
    for i in 0..3 {
        let url = format!("https://127.0.0.1:{}", base + 20 * i + 2);
        let client =
            tern_agent::admin::AdminClient::new(&url, "admin", password, Some(&ca)).unwrap();
        let accounts = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(client.list_accounts("example.test"))
            .unwrap();
        assert_eq!(
            accounts
                .iter()
                .map(|a| a.address.as_str())
                .collect::<Vec<_>>(),
            ["demo@example.test"],
            "node {i} reads the demo account"
        );
    }
    let peers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("peers.json")).unwrap()).unwrap();
    assert_eq!(peers["dev-default-2"], format!("127.0.0.1:{}", base + 41));

    for i in 0..3 {
        let port = health_port(base, i);
        assert_eq!(get(port, "/healthz/ready").0, 200);
        assert_eq!(metric(port, "tern_agent_assignment_epoch"), 1);
    }

    // A newer epoch that no longer names node 2: it follows it and reports not ready.
    let path = dir.join("assignment.json");
    let mut a = Assignment::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(a.shards.len(), 2);
    a.epoch = 2;
    a.nodes.remove("dev-default-2");
    std::fs::write(&path, a.to_json()).unwrap();
    eventually("epoch 2 on every node", || {
        (0..3).all(|i| metric(health_port(base, i), "tern_agent_assignment_epoch") == 2)
    });
    assert_eq!(get(health_port(base, 2), "/healthz/ready").0, 503);
    assert_eq!(get(base, "/healthz/ready").0, 200);

    // An older epoch is ignored and counted; garbage is counted and changes nothing.
    a.epoch = 1;
    std::fs::write(&path, a.to_json()).unwrap();
    eventually("older epoch refused", || {
        metric(base, "tern_agent_assignment_refused_total") >= 1
    });
    std::fs::write(&path, "{\"epoch\": \"not a number\"").unwrap();
    eventually("garbage counted", || {
        metric(base, "tern_agent_assignment_unreadable_total") >= 1
    });
    assert_eq!(metric(base, "tern_agent_assignment_epoch"), 2);

    // --stop: every agent is gone, the ports are free again.
    let out = Command::new(agent_binary())
        .args(["dev", "--stop", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped 3 agents"));
    for pid in agent_pids {
        assert!(!alive(pid), "agent {pid} still runs");
    }
    assert!(!dir.join("pids").exists());
    assert!(TcpListener::bind(("127.0.0.1", base)).is_ok());
    drop(cluster);
}

#[test]
fn sigterm_stops_a_foreground_local_cluster() {
    let dir = test_dir("foreground");
    let base = free_base_port(3, 2);
    let cluster = Cluster { dir: dir.clone() };
    let mut dev = Command::new(agent_binary())
        .args([
            "dev",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // endpoints.json appears once every node is ready.
    let start = Instant::now();
    while !dir.join("endpoints.json").exists() {
        if let Some(status) = dev.try_wait().unwrap() {
            let mut err = String::new();
            dev.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("tern-agent dev exited ({status}): {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the cluster is not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent_pids = pids(&dir);
    assert_eq!(agent_pids.len(), 3);
    assert!(agent_pids.iter().all(|&p| alive(p)));
    for i in 0..3 {
        assert_eq!(get(health_port(base, i), "/healthz/ready").0, 200);
    }

    let sent = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = dev.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "tern-agent dev did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    dev.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    for pid in agent_pids {
        assert!(!alive(pid), "agent {pid} still runs");
    }
    assert!(!dir.join("pids").exists());
    drop(cluster);
}
