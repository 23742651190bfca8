//! The local cluster launcher and the agent's side of the assignment contract, with real
//! processes on 127.0.0.1: nodes become ready once the assignment names them, follow newer
//! epochs, and ignore older ones.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tern_crds::Assignment;

fn free_base_port(n: u16) -> u16 {
    // Look for n consecutive free ports.
    'outer: for base in (20_000 + (std::process::id() % 20_000) as u16..60_000).step_by(7) {
        for p in base..base + n {
            if TcpListener::bind(("127.0.0.1", p)).is_err() {
                continue 'outer;
            }
        }
        return base;
    }
    panic!("no free ports");
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

struct Cluster {
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("pids")) {
            for pid in pids.lines() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn local_cluster_follows_the_assignment_contract() {
    let dir = std::env::temp_dir().join(format!("tern-dev-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let base = free_base_port(3);
    let cluster = Cluster { dir: dir.clone() };
    let out = Command::new(env!("CARGO_BIN_EXE_tern-dev"))
        .args([
            "--nodes",
            "3",
            "--shards",
            "2",
            "--detach",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tern-dev failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 nodes ready"));

    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json")).unwrap())
            .unwrap();
    assert_eq!(endpoints["nodes"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        assert_eq!(get(base + i, "/healthz/ready").0, 200);
        assert_eq!(metric(base + i, "tern_agent_assignment_epoch"), 1);
    }

    // A newer epoch that no longer names node 2: it follows it and reports not ready.
    let path = dir.join("assignment.json");
    let mut a = Assignment::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(a.shards.len(), 2);
    a.epoch = 2;
    a.nodes.remove("dev-default-2");
    std::fs::write(&path, a.to_json()).unwrap();
    eventually("epoch 2 on every node", || {
        (0..3).all(|i| metric(base + i, "tern_agent_assignment_epoch") == 2)
    });
    assert_eq!(get(base + 2, "/healthz/ready").0, 503);
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
    drop(cluster);
}
