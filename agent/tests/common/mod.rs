//! A real Tern cluster for fault tests: one `tern-agent run` process per node, configured as
//! the operator and the kubelet would (files instead of ConfigMaps and Secrets), on loopback.
//!
//! [`Cluster::start`] writes into a fresh directory under `CARGO_TARGET_TMPDIR`
//!
//! ```text
//! DIR/config.json  assignment.json  peers.json  admin-password
//! DIR/pki/         ca.crt  agent.crt agent.key  tls.crt tls.key
//! DIR/<node>/      data/  agent.log  gossip-keyring
//! ```
//!
//! (configuration and assignment from [`tern_agent::dev`], certificates from
//! [`tern_agent::pki`]), starts the nodes and waits until every one is ready. Faults come from
//! outside, as in production: SIGKILL ([`Cluster::kill`]), SIGSTOP ([`Cluster::pause`]), a lost
//! volume ([`Cluster::wipe`]) and a cut network link ([`Cluster::partition`]).
//!
//! Every node gossips on its own port, its seeds the other nodes' gossip addresses, with its
//! own copy of the cluster's keyring (so that a test can rotate keys node by node:
//! [`Cluster::write_gossip_keyring`]); readiness includes having joined.
//!
//! [`Cluster::start_with_netns`] puts one node in its own network namespace, joined to the host
//! by two veth pairs: the *cluster* link carries Raft traffic and is what [`Cluster::partition`]
//! takes down; the *control* link lets the test reach that node's admin API, health endpoint
//! and RPC status while it is cut off from its peers. The other nodes' RPC servers listen on
//! the host end of the cluster link, which stays reachable from the host while the link is down.
//!
//! Dropping the cluster SIGKILLs every node and removes the namespace and links, also when the
//! test panics; the directory is removed only when the test passed (and `TERN_KEEP_CLUSTERS`
//! is not set), so the logs of a failure stay (their tails are printed too).
// Each test file uses its own part of the harness.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tern_agent::admin::AdminClient;
use tern_agent::dev;
use tern_agent::pki::{self, LocalPki};
use tern_agent::rpc::{Network, RpcKind, RpcResponse, ShardStatus, TlsConfig};
use tern_crds::Assignment;
use tern_raft::Node;

/// The admin API's password in every test cluster.
const PASSWORD: &str = "fault-tests-admin-password";
/// How long a cluster (or a restarted node) has to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Ports each node uses: health, RPC, admin, gossip (UDP and TCP), smtp, submission, smtps,
/// lmtp, imap, imaps.
const PORTS_PER_NODE: u16 = 10;
/// Test clusters take ports from here, below the kernel's ephemeral range (32768 and up), so
/// that no outgoing connection takes a port between the check and the agent's bind or
/// between a kill and a restart; `tern-e2e` starts at 20000.
const PORT_RANGE: std::ops::Range<u16> = 10_000..20_000;
/// Lines of each log shown when something fails.
const TAIL_LINES: usize = 40;

/// Clusters started by this process: keeps their ports, directories and namespaces apart.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// What differs between test clusters.
#[derive(Clone, Debug)]
pub struct Options {
    /// Shards; each on three nodes (as `tern-agent dev` places them).
    pub shards: u32,
    /// `TERN_TIMEOUT_MS`: the longest a read or write waits for its shard.
    pub timeout_ms: u64,
    /// `TERN_SNAPSHOT_LOGS`: a shard snapshots every this many entries.
    pub snapshot_logs: Option<u64>,
    /// Whether the nodes hold data (`TERN_STORAGE=voter`) or not (`none`: no shards, no
    /// RPC server; health, metrics and gossip only).
    pub storage: bool,
    /// Nodes that [`Cluster::start`] does not start; [`Cluster::start_node`] starts them.
    pub hold_back: Vec<usize>,
    /// Whether [`Cluster::start`] waits until every node it started is ready.
    pub wait_ready: bool,
    /// More environment for some nodes: `(node, variable, value)`.
    pub node_env: Vec<(usize, &'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            shards: 1,
            timeout_ms: 5000,
            snapshot_logs: None,
            storage: true,
            hold_back: vec![],
            wait_ready: true,
            node_env: vec![],
        }
    }
}

/// One `tern-agent run` process and where it is reached.
struct NodeProcess {
    name: String,
    /// The environment of `tern-agent run`, the same at every (re)start.
    env: Vec<(String, String)>,
    /// The network namespace it runs in, if not the host's.
    netns: Option<String>,
    /// Where the test reaches its health endpoint, admin API, RPC server and gossip.
    health: SocketAddr,
    admin: SocketAddr,
    rpc: SocketAddr,
    gossip: SocketAddr,
    /// Where the test reaches its smtp, submission, smtps, lmtp, imap and imaps listeners.
    mail: [SocketAddr; 6],
    /// Its copy of the cluster's gossip keyring (`TERN_GOSSIP_KEY_FILE`).
    keyring: PathBuf,
    data: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

pub struct Cluster {
    dir: PathBuf,
    nodes: Vec<NodeProcess>,
    assignment: Assignment,
    ca_pem: String,
    tls: TlsConfig,
    /// The cluster's gossip key (id 1).
    gossip_key: [u8; tern_gossip::keyring::KEY_LEN],
    options: Options,
    started: Instant,
    /// Whether a panic message showed the logs already.
    tails_shown: AtomicBool,
    /// Declared last: dropped after [`Drop::drop`] has killed the nodes.
    netns: Option<Netns>,
}

impl Cluster {
    /// Starts `nodes` nodes on 127.0.0.1 and waits until all are ready.
    pub async fn start(nodes: usize, options: Options) -> Cluster {
        let k = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        Self::launch(k, nodes, options, None).await
    }

    /// As [`start`](Self::start), with node `isolated` in its own network namespace (see the
    /// module doc). Fails, saying why, when namespaces cannot be made (not root, no `ip`);
    /// the caller decides whether that skips the test ([`skip_or_fail`]).
    pub async fn start_with_netns(
        nodes: usize,
        options: Options,
        isolated: usize,
    ) -> Result<Cluster, String> {
        assert!(isolated < nodes, "node {isolated} of {nodes}");
        let k = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let netns = Netns::create(k)?;
        Ok(Self::launch(k, nodes, options, Some((isolated, netns))).await)
    }

    async fn launch(
        k: u32,
        count: usize,
        options: Options,
        isolated: Option<(usize, Netns)>,
    ) -> Cluster {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cluster-faults-{}-{k}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(k, count);
        let (isolated, netns) = match isolated {
            Some((i, netns)) => (Some(i), Some(netns)),
            None => (None, None),
        };
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

        // Where each node's listeners bind, where its peers reach its RPC server, and where
        // the test reaches it.
        struct Plan {
            health_bind: SocketAddr,
            rpc_bind: SocketAddr,
            admin_bind: SocketAddr,
            gossip_bind: SocketAddr,
            /// smtp, submission, smtps, lmtp, imap, imaps.
            mail_bind: [SocketAddr; 6],
            gossip_advertised: SocketAddr,
            rpc_advertised: SocketAddr,
            /// Where the test reaches the health endpoint and the admin API.
            reach: IpAddr,
            /// Where the test reaches the RPC server and gossip.
            rpc_reach: SocketAddr,
            gossip_reach: SocketAddr,
        }
        let dns = tern_agent::local_dns::start()
            .expect("a local DNS server")
            .to_string();
        let plans: Vec<Plan> = (0..count)
            .map(|i| {
                let [
                    health,
                    rpc,
                    admin,
                    gossip,
                    smtp,
                    submission,
                    smtps,
                    lmtp,
                    imap,
                    imaps,
                ] = ports[i];
                let mail = [smtp, submission, smtps, lmtp, imap, imaps];
                let mail_on = |ip: IpAddr| mail.map(|port| SocketAddr::new(ip, port));
                match (&netns, isolated) {
                    (Some(ns), Some(j)) if i == j => Plan {
                        // Inside its namespace it listens everywhere: its peers come over the
                        // cluster link, the test over the control link.
                        health_bind: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), health),
                        rpc_bind: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), rpc),
                        admin_bind: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), admin),
                        gossip_bind: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), gossip),
                        mail_bind: mail_on(Ipv4Addr::UNSPECIFIED.into()),
                        gossip_advertised: SocketAddr::new(ns.ns_ip.into(), gossip),
                        rpc_advertised: SocketAddr::new(ns.ns_ip.into(), rpc),
                        reach: ns.control_ns_ip.into(),
                        rpc_reach: SocketAddr::new(ns.control_ns_ip.into(), rpc),
                        gossip_reach: SocketAddr::new(ns.control_ns_ip.into(), gossip),
                    },
                    (Some(ns), _) => Plan {
                        health_bind: SocketAddr::new(loopback, health),
                        rpc_bind: SocketAddr::new(ns.host_ip.into(), rpc),
                        admin_bind: SocketAddr::new(loopback, admin),
                        gossip_bind: SocketAddr::new(ns.host_ip.into(), gossip),
                        mail_bind: mail_on(loopback),
                        gossip_advertised: SocketAddr::new(ns.host_ip.into(), gossip),
                        rpc_advertised: SocketAddr::new(ns.host_ip.into(), rpc),
                        reach: loopback,
                        rpc_reach: SocketAddr::new(ns.host_ip.into(), rpc),
                        gossip_reach: SocketAddr::new(ns.host_ip.into(), gossip),
                    },
                    (None, _) => Plan {
                        health_bind: SocketAddr::new(loopback, health),
                        rpc_bind: SocketAddr::new(loopback, rpc),
                        admin_bind: SocketAddr::new(loopback, admin),
                        gossip_bind: SocketAddr::new(loopback, gossip),
                        mail_bind: mail_on(loopback),
                        gossip_advertised: SocketAddr::new(loopback, gossip),
                        rpc_advertised: SocketAddr::new(loopback, rpc),
                        reach: loopback,
                        rpc_reach: SocketAddr::new(loopback, rpc),
                        gossip_reach: SocketAddr::new(loopback, gossip),
                    },
                }
            })
            .collect();

        // What the operator publishes, with `tern-agent dev`'s placement.
        let dev_options = dev::Options {
            nodes: count as u32,
            shards: Some(options.shards),
            dir: dir.clone(),
            base_port: ports[0][0],
            ..dev::Options::default()
        };
        let assignment = dev::assignment(count as u32, options.shards, None);
        let config_file = dir.join("config.json");
        let assignment_file = dir.join("assignment.json");
        let peers_file = dir.join("peers.json");
        let password_file = dir.join("admin-password");
        write(
            &config_file,
            &serde_json::to_string_pretty(&dev::agent_config(&dev_options)).unwrap(),
        );
        write(&assignment_file, &assignment.to_json());
        let peers: BTreeMap<String, String> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| (dev::node_name(i as u32), p.rpc_advertised.to_string()))
            .collect();
        write(&peers_file, &serde_json::to_string_pretty(&peers).unwrap());
        pki::write_private(&password_file, PASSWORD).unwrap();
        let gossip_key = random_key();
        let keyring = gossip_keyring_text(1, &[(1, gossip_key)]);

        // One certificate for every agent and one for the listeners, valid for every
        // address any node is reached at.
        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        if let Some(ns) = &netns {
            names.extend(
                [ns.host_ip, ns.ns_ip, ns.control_host_ip, ns.control_ns_ip]
                    .iter()
                    .map(Ipv4Addr::to_string),
            );
        }
        let ca = LocalPki::generate(dev::CLUSTER).unwrap();
        let pki_dir = dir.join("pki");
        write(&pki_dir.join(pki::CA_CERT_FILE), &ca.ca_cert_pem);
        let certificate = |name: &str| {
            let (cert, key) = ca.issue(&names).unwrap();
            let cert_path = pki_dir.join(format!("{name}.crt"));
            let key_path = pki_dir.join(format!("{name}.key"));
            write(&cert_path, &cert);
            pki::write_private(&key_path, &key).unwrap();
            (cert_path, key_path, cert, key)
        };
        let (agent_cert, agent_key, agent_cert_pem, agent_key_pem) = certificate("agent");
        let (tls_cert, tls_key, _, _) = certificate("tls");
        // The test speaks RPC to the nodes as one of them.
        let tls = TlsConfig::from_pem(
            ca.ca_cert_pem.as_bytes(),
            agent_cert_pem.as_bytes(),
            agent_key_pem.as_bytes(),
        )
        .unwrap();

        let path = |p: &Path| p.display().to_string();
        let nodes = plans
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let name = dev::node_name(i as u32);
                let node_dir = dir.join(&name);
                std::fs::create_dir_all(&node_dir).unwrap();
                let data = node_dir.join("data");
                let keyring_file = node_dir.join("gossip-keyring");
                pki::write_private(&keyring_file, &keyring).unwrap();
                let seeds: Vec<String> = plans
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| p.gossip_advertised.to_string())
                    .collect();
                let mut env = vec![
                    ("POD_NAME", name.clone()),
                    // The machine may have no network: lookups answered at once with NXDOMAIN
                    // instead of waiting for a resolver that never answers. A node in its own
                    // namespace cannot reach the host's loopback; it gets an address its
                    // namespace has no route to (TEST-NET-1), so its lookups fail at once.
                    (
                        "TERN_DNS_SERVERS",
                        if isolated == Some(i) {
                            "192.0.2.53".to_owned()
                        } else {
                            dns.clone()
                        },
                    ),
                    ("TERN_ROLE", dev::POOL.to_owned()),
                    ("TERN_CLUSTER", dev::CLUSTER.to_owned()),
                    (
                        "TERN_STORAGE",
                        if options.storage { "voter" } else { "none" }.to_owned(),
                    ),
                    ("TERN_CONFIG_FILE", path(&config_file)),
                    ("TERN_ASSIGNMENT_FILE", path(&assignment_file)),
                    ("TERN_HEALTH_ADDR", plan.health_bind.to_string()),
                    ("TERN_DATA_DIR", path(&data)),
                    (
                        "TERN_CLUSTER_CA_FILE",
                        path(&pki_dir.join(pki::CA_CERT_FILE)),
                    ),
                    ("TERN_AGENT_CERT_FILE", path(&agent_cert)),
                    ("TERN_AGENT_KEY_FILE", path(&agent_key)),
                    ("TERN_RPC_ADDR", plan.rpc_bind.to_string()),
                    ("TERN_PEERS_FILE", path(&peers_file)),
                    ("TERN_ADMIN_ADDR", plan.admin_bind.to_string()),
                    ("TERN_ADMIN_PASSWORD_FILE", path(&password_file)),
                    ("TERN_TLS_CERT_FILE", path(&tls_cert)),
                    ("TERN_TLS_KEY_FILE", path(&tls_key)),
                    ("TERN_TIMEOUT_MS", options.timeout_ms.to_string()),
                    ("TERN_GOSSIP_ADDR", plan.gossip_bind.to_string()),
                    (
                        "TERN_GOSSIP_ADVERTISE_ADDR",
                        plan.gossip_advertised.to_string(),
                    ),
                    ("TERN_GOSSIP_SEEDS", seeds.join(",")),
                    ("TERN_GOSSIP_KEY_FILE", path(&keyring_file)),
                    ("TERN_SMTP_ADDR", plan.mail_bind[0].to_string()),
                    ("TERN_SUBMISSION_ADDR", plan.mail_bind[1].to_string()),
                    ("TERN_SMTPS_ADDR", plan.mail_bind[2].to_string()),
                    ("TERN_LMTP_ADDR", plan.mail_bind[3].to_string()),
                    ("TERN_IMAP_ADDR", plan.mail_bind[4].to_string()),
                    ("TERN_IMAPS_ADDR", plan.mail_bind[5].to_string()),
                    ("RUST_LOG", "info,openraft=warn".to_owned()),
                    ("NO_COLOR", "1".to_owned()),
                ];
                for (node, key, value) in &options.node_env {
                    if *node == i {
                        env.retain(|(k, _)| k != key);
                        env.push((key, value.clone()));
                    }
                }
                if let Some(n) = options.snapshot_logs {
                    env.push(("TERN_SNAPSHOT_LOGS", n.to_string()));
                }
                NodeProcess {
                    env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                    netns: match (&netns, isolated) {
                        (Some(ns), Some(j)) if i == j => Some(ns.name.clone()),
                        _ => None,
                    },
                    health: SocketAddr::new(plan.reach, plan.health_bind.port()),
                    admin: SocketAddr::new(plan.reach, plan.admin_bind.port()),
                    rpc: plan.rpc_reach,
                    gossip: plan.gossip_reach,
                    mail: plan
                        .mail_bind
                        .map(|a| SocketAddr::new(plan.reach, a.port())),
                    keyring: keyring_file,
                    data,
                    log: node_dir.join("agent.log"),
                    name,
                    child: Mutex::new(None),
                }
            })
            .collect();

        let cluster = Cluster {
            dir,
            nodes,
            assignment,
            ca_pem: ca.ca_cert_pem.clone(),
            tls,
            gossip_key,
            options,
            started: Instant::now(),
            tails_shown: AtomicBool::new(false),
            netns,
        };
        let started: Vec<usize> = (0..count)
            .filter(|i| !cluster.options.hold_back.contains(i))
            .collect();
        for &i in &started {
            cluster.spawn(i);
        }
        if !cluster.options.wait_ready {
            return cluster;
        }
        for &i in &started {
            cluster.wait_ready(i).await;
        }
        eprintln!(
            "cluster of {count} nodes ready in {:.1} s in {}",
            cluster.started.elapsed().as_secs_f64(),
            cluster.dir.display()
        );
        cluster
    }

    // ------------------------------------------------------------ processes

    fn spawn(&self, i: usize) {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut command = match &node.netns {
            None => Command::new(env!("CARGO_BIN_EXE_tern-agent")),
            Some(ns) => {
                // `ip netns exec` enters the namespace and execs the agent: the child's pid is
                // the agent's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_tern-agent")]);
                c
            }
        };
        command.arg("run");
        // Nothing of the test's own environment configures the agent by accident.
        for (key, _) in std::env::vars() {
            if key.starts_with("TERN_") {
                command.env_remove(key);
            }
        }
        let child = command
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", node.name));
        *node.child.lock().unwrap() = Some(child);
    }

    /// SIGKILLs node `i` and waits until it has exited.
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.mark(i, "killed (SIGKILL)");
    }

    /// Starts node `i` again with its data dir as it is (a killed node); does not wait until
    /// it is ready (see [`wait_ready`](Self::wait_ready)).
    pub fn restart(&self, i: usize) {
        assert!(
            self.nodes[i].child.lock().unwrap().is_none(),
            "{} still runs",
            self.nodes[i].name
        );
        self.mark(i, "restarted");
        self.spawn(i);
    }

    /// Starts node `i`, held back by [`Options::hold_back`]; does not wait until it is ready.
    pub fn start_node(&self, i: usize) {
        assert!(
            self.nodes[i].child.lock().unwrap().is_none(),
            "{} already runs",
            self.nodes[i].name
        );
        self.mark(i, "started");
        self.spawn(i);
    }

    /// SIGTERM (a pod being deleted): waits until node `i` has exited, at most `within`, and
    /// returns its exit status and how long it took.
    pub async fn terminate(&self, i: usize, within: Duration) -> (ExitStatus, Duration) {
        self.signal(i, "-TERM");
        self.mark(i, "terminated (SIGTERM)");
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited(i) {
                self.nodes[i].child.lock().unwrap().take();
                return (status, started.elapsed());
            }
            if started.elapsed() > within {
                self.fail(&format!(
                    "{} did not exit within {:.1} s of SIGTERM",
                    self.nodes[i].name,
                    within.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes node `i`'s data dir: a lost volume. The node must not run.
    pub fn wipe(&self, i: usize) {
        assert!(
            self.nodes[i].child.lock().unwrap().is_none(),
            "wipe a stopped node, not the running {}",
            self.nodes[i].name
        );
        std::fs::remove_dir_all(&self.nodes[i].data).unwrap();
        self.mark(i, "data dir wiped");
    }

    /// Node `i`'s data directory (`TERN_DATA_DIR`).
    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        &self.nodes[i].data
    }

    /// SIGSTOP: node `i` freezes, its sockets stay open (a stalled machine).
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
        self.mark(i, "paused (SIGSTOP)");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
        self.mark(i, "resumed (SIGCONT)");
    }

    fn signal(&self, i: usize, signal: &str) {
        let guard = self.nodes[i].child.lock().unwrap();
        let child = guard.as_ref().expect("the node runs");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", child.id());
    }

    /// The exit status of node `i` if it ran and has exited on its own.
    fn exited(&self, i: usize) -> Option<ExitStatus> {
        let mut guard = self.nodes[i].child.lock().unwrap();
        guard.as_mut()?.try_wait().ok().flatten()
    }

    /// Writes a line into node `i`'s log, so that the log tells what the test did when.
    fn mark(&self, i: usize, what: &str) {
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
        {
            let _ = writeln!(
                log,
                "{} === test harness, +{:.1} s: {} {what} ===",
                jiff::Timestamp::now(),
                self.started.elapsed().as_secs_f64(),
                self.nodes[i].name
            );
        }
    }

    // ------------------------------------------------------------ the network

    /// Takes the isolated node's cluster link down: it can no longer reach its peers nor they
    /// it; the test still reaches it over the control link.
    pub fn partition(&self) {
        let ns = self.netns.as_ref().expect("a cluster started with a netns");
        ip(&["link", "set", &ns.host_link, "down"]).unwrap();
        for i in 0..self.nodes.len() {
            self.mark(i, "partition: the isolated node's link is down");
        }
    }

    /// Brings the cluster link up again.
    pub fn heal(&self) {
        let ns = self.netns.as_ref().expect("a cluster started with a netns");
        ip(&["link", "set", &ns.host_link, "up"]).unwrap();
        for i in 0..self.nodes.len() {
            self.mark(i, "healed: the isolated node's link is up");
        }
    }

    // ------------------------------------------------------------ observing

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s Raft id (the assignment numbers nodes from 1).
    pub fn node_id(&self, i: usize) -> u64 {
        self.assignment.node_id(&self.nodes[i].name).unwrap()
    }

    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// Publishes `assignment` (as the operator would, by replacing the file the nodes
    /// follow) and remembers it as the cluster's.
    pub fn publish(&mut self, assignment: Assignment) {
        let path = self.dir.join("assignment.json");
        let temporary = self.dir.join("assignment.json.new");
        write(&temporary, &assignment.to_json());
        std::fs::rename(&temporary, &path).unwrap();
        self.assignment = assignment;
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Whether node `i`'s process runs (paused counts as running).
    pub fn runs(&self, i: usize) -> bool {
        self.nodes[i].child.lock().unwrap().is_some() && self.exited(i).is_none()
    }

    /// A client of node `i`'s admin API. It gives up after the shard timeout and 5 s more, so
    /// that a hanging request fails the test instead of blocking it.
    pub fn admin(&self, i: usize) -> AdminClient {
        AdminClient::new(
            &format!("https://{}", self.nodes[i].admin),
            "admin",
            PASSWORD,
            Some(self.ca_pem.as_bytes()),
        )
        .unwrap()
        .with_timeout(Duration::from_millis(self.options.timeout_ms) + Duration::from_secs(5))
    }

    /// Node `i`'s replica of `shard` as it answers a peer's status request.
    pub async fn status(&self, i: usize, shard: u32) -> Result<ShardStatus, String> {
        let node = Node {
            rpc_addr: self.nodes[i].rpc.to_string(),
        };
        let answer = Network::new(self.tls.client.clone(), shard)
            .request(
                self.node_id(i),
                &node,
                RpcKind::Status,
                Duration::from_secs(1),
            )
            .await;
        match answer {
            Ok(RpcResponse::Status(status)) => Ok(status),
            Ok(other) => Err(format!("{}: {other:?}", self.nodes[i].name)),
            Err(e) => Err(format!("{}: {e}", self.nodes[i].name)),
        }
    }

    /// The node that leads `shard` by the view of every node that runs: of those that say
    /// they lead, the one with the highest term (a node cut off from its majority may still
    /// believe it leads in an older term).
    pub async fn leader(&self, shard: u32) -> Option<usize> {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|i| self.runs(*i)).collect();
        let answers =
            futures::future::join_all(running.iter().map(|i| self.status(*i, shard))).await;
        running
            .into_iter()
            .zip(answers)
            .filter_map(|(i, s)| s.ok().filter(|s| s.is_leader).map(|s| (s.term, i)))
            .max()
            .map(|(_, i)| i)
    }

    /// Waits until some node in `among` leads `shard` and every other running node in
    /// `among` follows it; returns the leader.
    pub async fn wait_leader(&self, shard: u32, among: &[usize], within: Duration) -> usize {
        let mut found = None;
        self.wait_until(
            within,
            &format!("a leader of shard {shard} among {among:?}"),
            async || {
                let answers =
                    futures::future::join_all(among.iter().map(|i| self.status(*i, shard))).await;
                let statuses: Vec<ShardStatus> = answers.into_iter().collect::<Result<_, _>>()?;
                let leaders: Vec<usize> = among
                    .iter()
                    .zip(&statuses)
                    .filter(|(_, s)| s.is_leader)
                    .map(|(i, _)| *i)
                    .collect();
                let [leader] = leaders[..] else {
                    return Err(format!("leaders: {leaders:?}"));
                };
                let id = self.node_id(leader);
                if let Some(s) = statuses.iter().find(|s| s.leader != Some(id)) {
                    return Err(format!("not every node follows {id}: {s:?}"));
                }
                found = Some(leader);
                Ok(())
            },
        )
        .await;
        found.unwrap()
    }

    /// `GET path` on node `i`'s health and metrics server: status code and body.
    pub async fn http_get(&self, i: usize, path: &str) -> Result<(u16, String), String> {
        tern_agent::dev::http_get(self.nodes[i].health, path).await
    }

    /// A sample of node `i`'s `/metrics`, named with its labels as exposed, e.g.
    /// `tern_gossip_packets_dropped_total{reason="auth_failed"}`.
    pub async fn metric(&self, i: usize, series: &str) -> Result<u64, String> {
        let (code, body) = self.http_get(i, "/metrics").await?;
        if code != 200 {
            return Err(format!("/metrics answered {code}"));
        }
        let prefix = format!("{series} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .ok_or_else(|| format!("no {series} in /metrics"))?
            .trim()
            .parse()
            .map_err(|e| format!("{series}: {e}"))
    }

    /// Node `i`'s `GET /cluster/members` (gossip's view).
    pub async fn members(&self, i: usize) -> Result<serde_json::Value, String> {
        let (code, body) = self.http_get(i, "/cluster/members").await?;
        if code != 200 {
            return Err(format!("/cluster/members answered {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/cluster/members: {e}: {body}"))
    }

    /// Where the test reaches node `i`'s mail listener `kind` (`smtp`, `submission`, `smtps`,
    /// `lmtp`, `imap` or `imaps`).
    pub fn mail_addr(&self, i: usize, kind: &str) -> SocketAddr {
        let k = match kind {
            "smtp" => 0,
            "submission" => 1,
            "smtps" => 2,
            "lmtp" => 3,
            "imap" => 4,
            "imaps" => 5,
            other => panic!("no mail listener {other:?}"),
        };
        self.nodes[i].mail[k]
    }

    /// The cluster CA's certificate file (it signed the listeners' certificate, which names
    /// 127.0.0.1 and localhost).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki").join(pki::CA_CERT_FILE)
    }

    /// The cluster's directory (logs, configuration, PKI).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where node `i`'s gossip listens (UDP and TCP), as the test reaches it.
    pub fn gossip_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].gossip
    }

    /// The cluster's gossip key, id 1 in every node's keyring at start.
    pub fn gossip_key(&self) -> [u8; tern_gossip::keyring::KEY_LEN] {
        self.gossip_key
    }

    /// Replaces node `i`'s gossip keyring file (by a rename, as a Secret volume update swaps
    /// a link: the node reads the old or the new file, never half of one).
    pub fn write_gossip_keyring(&self, i: usize, text: &str) {
        pki::write_private(&self.nodes[i].keyring, text).unwrap();
        self.mark(i, "gossip keyring file replaced");
    }

    /// A per-shard gauge of node `i`'s `/metrics`, e.g. `tern_shard_abstaining`.
    pub async fn shard_gauge(&self, i: usize, name: &str, shard: u32) -> Result<u64, String> {
        let (code, body) = self.http_get(i, "/metrics").await?;
        if code != 200 {
            return Err(format!("/metrics answered {code}"));
        }
        let prefix = format!("{name}{{shard=\"{shard}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .ok_or_else(|| format!("no {prefix}in /metrics"))?
            .trim()
            .parse()
            .map_err(|e| format!("{name}: {e}"))
    }

    /// Whether node `i` answers `/healthz/ready` with 200; else why not.
    pub async fn ready(&self, i: usize) -> Result<(), String> {
        match self.http_get(i, "/healthz/ready").await? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {}", body.trim())),
        }
    }

    /// Waits until node `i` is ready; fails at once when it exits.
    pub async fn wait_ready(&self, i: usize) {
        self.wait_until(
            READY_TIMEOUT,
            &format!("{} ready", self.nodes[i].name),
            async || self.ready(i).await,
        )
        .await
    }

    /// Polls `condition` every 50 ms until it holds; after `within`, or as soon as a node
    /// exits on its own, panics with the last reason it gave and the end of every log.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        mut condition: impl AsyncFnMut() -> Result<(), String>,
    ) {
        let deadline = Instant::now() + within;
        for attempt in 0u64.. {
            let why = match condition().await {
                Ok(()) => return,
                Err(why) => why,
            };
            // A panic in a Raft task leaves the process running: look for one now and then.
            if attempt % 10 == 9 && !self.panics().is_empty() {
                self.fail(&format!(
                    "a node panicked while waiting for {what} (last: {why})"
                ));
            }
            if let Some((i, status)) =
                (0..self.nodes.len()).find_map(|i| Some((i, self.exited(i)?)))
            {
                self.fail(&format!(
                    "{} exited ({status}) while waiting for {what} (last: {why})",
                    self.nodes[i].name
                ));
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no {what} within {:.1} s; last: {why}",
                    within.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `i`'s log from its last (re)start on.
    pub fn log_since_restart(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        match text.rfind("restarted ===") {
            Some(at) => text[at..].to_owned(),
            None => text,
        }
    }

    /// The last lines of every node's log.
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
                format!(
                    "--- the end of {}:\n{}\n",
                    n.log.display(),
                    tail.iter()
                        .map(|l| format!("    {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
            .collect()
    }

    /// Panics with `message`, the panics any node logged, and the end of every node's log.
    pub fn fail(&self, message: &str) -> ! {
        self.tails_shown.store(true, Ordering::SeqCst);
        panic!("{message}\n{}\n{}", self.panics(), self.log_tails())
    }

    /// The panics in the nodes' logs (a panic in a Raft task does not end the process; its
    /// message is soon far from the end of the log).
    fn panics(&self) -> String {
        let mut found = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                if line.contains("panicked at") {
                    let message = lines.get(n + 1).unwrap_or(&"");
                    found += &format!("\n{} PANICKED: {line}\n    {message}", node.name);
                }
            }
        }
        found
    }

    /// Unwraps `result`, or fails with the logs.
    pub fn check<T, E: std::fmt::Display>(&self, result: Result<T, E>, what: &str) -> T {
        result.unwrap_or_else(|e| self.fail(&format!("{what}: {e}")))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(mut child) = node.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
                // SIGKILL also ends a stopped (paused) process.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            let tails = if self.tails_shown.load(Ordering::SeqCst) {
                String::new()
            } else {
                self.log_tails()
            };
            eprintln!(
                "the cluster's files are kept in {}\n{tails}",
                self.dir.display()
            );
        } else if std::env::var_os("TERN_KEEP_CLUSTERS").is_some() {
            eprintln!("the cluster's files are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // `netns` drops after this: the namespace is removed once its process is gone.
    }
}

/// When network namespaces are unavailable: skips the test (returns) on a developer's machine,
/// fails it in CI (`CI` set, as CI services do) or with `TERN_REQUIRE_NETNS=1`, so that the
/// partition test cannot silently stop running where it is expected to.
pub fn skip_or_fail(test: &str, why: &str) {
    let required = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "false");
    if required("CI") || required("TERN_REQUIRE_NETNS") {
        panic!("{test} needs network namespaces (root and iproute2): {why}");
    }
    eprintln!("SKIPPED {test}: needs network namespaces (root and iproute2): {why}");
}

/// Creates domains through `client`, retrying each on temporary errors until `within` has
/// passed since it was first tried. A create retried after a temporary error may find the
/// domain made by the earlier attempt ("exists", 409); that counts as done.
pub async fn create_domain_retrying(
    client: &AdminClient,
    name: &str,
    within: Duration,
) -> Result<Duration, tern_agent::admin::ClientError> {
    let started = Instant::now();
    let mut retried = false;
    loop {
        match client.create_domain(name).await {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) if retried && e.status() == Some(409) => return Ok(started.elapsed()),
            Err(e) if e.is_temporary() && started.elapsed() < within => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates account `address`, retrying while the shard is not ready (temporary errors) for up
/// to `within`; an account that already exists (a retried create that had landed) counts.
pub async fn create_account_retrying(
    client: &AdminClient,
    address: &str,
    password: &str,
    within: Duration,
) -> Result<(), tern_agent::admin::ClientError> {
    let started = Instant::now();
    loop {
        match client.create_account(address, password, None).await {
            Ok(()) => return Ok(()),
            Err(e) if e.status() == Some(409) => return Ok(()),
            Err(e) if e.is_temporary() && started.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether every program (and check) a test needs is there: `needed` holds a name and a
/// shell check for each. When one is missing: fails in CI (`CI` set), else says so and
/// returns false (the test returns).
pub fn tools(test: &str, needed: &[(&str, &str)]) -> bool {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, check)| {
            !Command::new("sh")
                .args(["-c", check])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    let why = format!("{test} needs {missing:?} (scripts/test.sh installs them)");
    assert!(!ci, "{why}");
    eprintln!("SKIPPED {why}");
    false
}

/// Runs a program (bounded by `timeout(1)`, 60 s), with `stdin` as its input when given;
/// returns its exit status and what it wrote on stdout and stderr together.
pub async fn run(program: &str, args: Vec<String>, stdin: Option<String>) -> (i32, String) {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("timeout")
            .arg("60")
            .arg(&program)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    })
    .await
    .unwrap()
}

/// Owned copies of `args`.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The keyring file text with `primary` and `keys` (id, key).
pub fn gossip_keyring_text(
    primary: u32,
    keys: &[(u32, [u8; tern_gossip::keyring::KEY_LEN])],
) -> String {
    use tern_gossip::keyring::{KeyId, Keyring};
    Keyring::new(
        dev::CLUSTER,
        KeyId(primary),
        keys.iter().map(|(id, key)| (KeyId(*id), *key)),
    )
    .unwrap()
    .render_secret()
}

/// A new random gossip key.
pub fn random_key() -> [u8; tern_gossip::keyring::KEY_LEN] {
    use ring::rand::SecureRandom;
    let mut key = [0u8; tern_gossip::keyring::KEY_LEN];
    ring::rand::SystemRandom::new().fill(&mut key).unwrap();
    key
}

/// `count` blocks of [`PORTS_PER_NODE`] ports, free on every address (TCP, and UDP for
/// gossip): from a place that depends on the process and the cluster, so that parallel tests
/// and test processes do not race for the same ports.
fn free_ports(k: u32, count: usize) -> Vec<[u16; PORTS_PER_NODE as usize]> {
    let width = PORTS_PER_NODE * count as u16;
    let slots = (PORT_RANGE.end - PORT_RANGE.start) / width;
    let first = (std::process::id().wrapping_mul(7919).wrapping_add(k * 613)) % u32::from(slots);
    for n in 0..slots {
        let base = PORT_RANGE.start + ((first as u16 + n) % slots) * width;
        let all_free = (base..base + width).all(|p| {
            std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).is_ok()
                && std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, p)).is_ok()
        });
        if all_free {
            return (0..count as u16)
                .map(|i| {
                    let b = base + i * PORTS_PER_NODE;
                    std::array::from_fn(|k| b + k as u16)
                })
                .collect();
        }
    }
    panic!("no {width} free ports in {PORT_RANGE:?}");
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    pki::write_file(path, text, 0o644).unwrap();
}

/// `ip ARGS…`; the error says what failed and why.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {} {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A network namespace joined to the host by two veth pairs, in a /24 of 10.120.0.0 to
/// 10.219.255.0:
///
/// - the cluster link: host `.1`, namespace `.2` (/30), what [`Cluster::partition`] cuts;
/// - the control link: host `.5`, namespace `.6` (/30), the test's own way in.
///
/// A blackhole route for the /24 on the host claims the subnet (adding it fails when another
/// process holds the subnet) and keeps packets for the namespace from leaving through the
/// default route while the cluster link is down. The names carry the process id, so that a
/// later run removes what a killed test process left.
struct Netns {
    name: String,
    host_link: String,
    control_link: String,
    subnet: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    control_host_ip: Ipv4Addr,
    control_ns_ip: Ipv4Addr,
}

/// The /24s namespaces take: `10.(120 + slot / 256).(slot % 256).0`.
const SUBNET_SLOTS: u32 = 100 * 256;

impl Netns {
    fn named(pid: u32, k: u32, slot: u32) -> Netns {
        // Interface names have at most 15 characters: the pid in base 36 takes at most 5.
        let tag = format!("tf{}x{k}", base36(pid));
        let (a, b) = (120 + slot / 256, slot % 256);
        let at = |last: u8| Ipv4Addr::new(10, a as u8, b as u8, last);
        Netns {
            name: format!("tern-faults-{pid}-{k}-{slot}"),
            host_link: format!("{tag}h"),
            control_link: format!("{tag}c"),
            subnet: format!("10.{a}.{b}.0/24"),
            host_ip: at(1),
            ns_ip: at(2),
            control_host_ip: at(5),
            control_ns_ip: at(6),
        }
    }

    /// `(pid, k, slot)` of a namespace name made by [`named`](Self::named).
    fn parse(name: &str) -> Option<(u32, u32, u32)> {
        let mut parts = name.strip_prefix("tern-faults-")?.split('-');
        let mut next = || parts.next()?.parse().ok();
        Some((next()?, next()?, next()?))
    }

    fn create(k: u32) -> Result<Netns, String> {
        let pid = std::process::id();
        Self::remove_stale(pid, k)?;
        let first = pid.wrapping_mul(8).wrapping_add(k) % SUBNET_SLOTS;
        for n in 0..256 {
            let netns = Self::named(pid, k, (first + n) % SUBNET_SLOTS);
            match ip(&["route", "add", "blackhole", &netns.subnet]) {
                Ok(()) => {
                    // Dropped (and so removed) if it cannot be set up.
                    netns.set_up()?;
                    return Ok(netns);
                }
                Err(e) if e.contains("File exists") => {}
                Err(e) => return Err(e),
            }
        }
        Err("no free /24 in 10.120.0.0/8..10.219.255.0 for the namespace".into())
    }

    /// Removes the namespaces (and links and routes) of test processes that are gone, and
    /// an earlier one of this process's pid and cluster number.
    fn remove_stale(pid: u32, k: u32) -> Result<(), String> {
        let output = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map_err(|e| format!("ip netns list: {e}"))?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if let Some((owner, number, slot)) = Self::parse(name)
                && ((owner, number) == (pid, k) || !Path::new(&format!("/proc/{owner}")).exists())
            {
                Self::named(owner, number, slot).remove();
            }
        }
        Ok(())
    }

    fn set_up(&self) -> Result<(), String> {
        let ns = self.name.as_str();
        ip(&["netns", "add", ns])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
        for (host, host_ip, ns_ip) in [
            (&self.host_link, self.host_ip, self.ns_ip),
            (&self.control_link, self.control_host_ip, self.control_ns_ip),
        ] {
            let peer = format!("{host}n");
            ip(&["link", "add", host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", ns])?;
            ip(&["addr", "add", &format!("{host_ip}/30"), "dev", host])?;
            ip(&["link", "set", host, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", ns, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &peer])?;
            inside(&["link", "set", &peer, "up"])?;
        }
        Ok(())
    }

    /// Removes what [`create`](Self::create) made; what is not there is ignored.
    fn remove(&self) {
        // Deleting the host end of a veth pair deletes both ends.
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["link", "del", &self.control_link]);
        let _ = ip(&["route", "del", "blackhole", &self.subnet]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn base36(mut n: u32) -> String {
    let mut digits = vec![];
    loop {
        digits.push(char::from_digit(n % 36, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The start of a Python mail client for [`Cluster::python_step`]: reads the mode and the CA
/// file from its arguments and defines `deliver(smtp_addr, to, subject)` (SMTP, retried for
/// 30 s through a leader election's `451`), `login(imap_addr, user, password)` (IMAP with
/// STARTTLS; with `implicit_tls=True`, imaps) and `fail(why)`. A test's script follows it
/// with its modes.
pub const PY_MAIL_CLIENT: &str = r#"
import imaplib, smtplib, socket, ssl, sys, time

mode, ca = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)

def deliver(addr, to, subject):
    host, port = addr.rsplit(":", 1)
    msg = (f"From: sender@remote.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject}@remote.test>\r\n\r\n{subject} body\r\n")
    deadline = time.time() + 30
    while True:
        try:
            with smtplib.SMTP(host, int(port), timeout=30) as s:
                s.sendmail("sender@remote.test", [to], msg)
            return
        except smtplib.SMTPException:
            # 451 while the shard elects its leader: the client retries.
            if time.time() > deadline:
                raise
            time.sleep(0.2)

def login(addr, user, password, implicit_tls=False):
    host, port = addr.rsplit(":", 1)
    if implicit_tls:
        m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=30)
    else:
        m = imaplib.IMAP4(host, int(port), timeout=30)
        m.starttls(ssl_context=ctx)
    typ, _ = m.login(user, password)
    assert typ == "OK", typ
    return m

def fail(why):
    print("FAIL", why)
    sys.exit(1)
"#;

impl Cluster {
    /// Runs one step of a Python client (`python3 -c script mode CA args…`): fails the test,
    /// with the cluster's logs, unless it exits 0 having printed `OK`; returns what followed.
    pub async fn python_step(&self, script: &str, mode: &str, args: &[impl AsRef<str>]) -> String {
        let mut all = vec![
            "-c".to_owned(),
            script.to_owned(),
            mode.to_owned(),
            self.ca_file().display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.as_ref().to_owned()));
        let (status, out) = run("python3", all, None).await;
        match out.strip_prefix("OK") {
            Some(rest) if status == 0 => rest.trim().to_owned(),
            _ => self.fail(&format!("client {mode}: exit {status}: {out}")),
        }
    }
}
