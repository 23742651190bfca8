//! `tern-agent dev`: a local Tern cluster on 127.0.0.1, without Kubernetes.
//!
//! It does what the operator and the kubelet do for a MailCluster, with files instead of
//! ConfigMaps and Secrets and child processes instead of pods: it places the shards, writes
//! the agent configuration, the assignment and the peers' RPC addresses, makes a cluster CA
//! and the certificates ([`crate::pki`]), then starts one `tern-agent run` (this executable)
//! per node, waits until every node is ready and writes `endpoints.json`.
//!
//! ```text
//! DIR/config.json  assignment.json  peers.json  admin-password  gossip-keyring
//!     endpoints.json  pids
//! DIR/pki/         ca.crt ca.key  agent.crt agent.key  tls.crt tls.key
//! DIR/<node>/      data/  agent.log
//! ```
//!
//! Node `i` (0-based) listens on `base + 20*i + offset`; see [`NodePorts`]. Every node gossips
//! on its own port with the cluster's one keyring, its seeds the other nodes' gossip addresses,
//! and serves SMTP, submission (STARTTLS), smtps, LMTP, IMAP (STARTTLS) and imaps with the
//! certificate `pki/tls.crt`.
//!
//! In the foreground it runs until Ctrl-C or SIGTERM, then stops the agents (SIGTERM, SIGKILL
//! after 10 s). `--detach` exits once the cluster is ready and leaves the agents running, their
//! pids in `DIR/pids`; `--stop` and `--restart I` act on such a cluster later.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tern_crds::Assignment;
use tern_crds::agent_config::{AgentConfig, GossipConfig, ListenerConfig};
use tern_crds::assignment::{NodeEntry, ShardAssignment, default_group_name};
use tern_crds::cluster_role::StorageRole;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

use crate::pki::{self, LocalPki};

pub const USAGE: &str = "usage:
  tern-agent dev [--nodes N] [--shards S] [--dir DIR] [--base-port P] [--json FILE] [--detach]
      run a local cluster of N agents on 127.0.0.1 (no Kubernetes) until Ctrl-C or SIGTERM;
      --detach leaves it running and exits once it is ready
  tern-agent dev --stop [--dir DIR]
      stop a detached local cluster
  tern-agent dev --restart I [--dir DIR]
      restart node I (0-based) of a detached local cluster

defaults: 3 nodes, as many shards as nodes, DIR ./.dev, base port 17000 (node i owns ports
  P+20i..P+20i+19), endpoints written to DIR/endpoints.json
";

/// The cluster, pool and namespace names of a local cluster.
pub const CLUSTER: &str = "dev";
pub const POOL: &str = "default";
const NAMESPACE: &str = "local";
/// Automatic user groups, as a MailCluster's default.
const DEFAULT_GROUPS: u32 = 16;
/// Ports each node owns from the base port on.
pub const PORTS_PER_NODE: u16 = 20;
/// The file that lists the nodes' addresses, in the cluster's directory.
pub const ENDPOINTS_FILE: &str = "endpoints.json";
/// How long the nodes have to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `tern-agent dev`'s options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub nodes: u32,
    /// Defaults to the number of nodes.
    pub shards: Option<u32>,
    pub dir: PathBuf,
    pub base_port: u16,
    /// Where `endpoints.json` goes; `DIR/endpoints.json` by default.
    pub json: Option<PathBuf>,
    /// Exit once the cluster is ready, leaving the agents running.
    pub detach: bool,
    /// Stop the agents a detached run left in `dir`.
    pub stop: bool,
    /// Restart this node (0-based ordinal) of a detached run in `dir`.
    pub restart: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 3,
            shards: None,
            dir: PathBuf::from(".dev"),
            base_port: 17000,
            json: None,
            detach: false,
            stop: false,
            restart: None,
        }
    }
}

impl Options {
    pub fn parse(args: &[&str]) -> Result<Self, String> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(&arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .map(|v| v.to_string())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            let number = |name: &str, v: String| {
                v.parse::<u32>()
                    .map_err(|_| format!("{name} takes a number, not {v:?}"))
            };
            match arg {
                "--nodes" => o.nodes = number(arg, value(arg)?)?,
                "--shards" => o.shards = Some(number(arg, value(arg)?)?),
                "--dir" => o.dir = value(arg)?.into(),
                "--base-port" => {
                    let v = value(arg)?;
                    o.base_port = v
                        .parse()
                        .map_err(|_| format!("--base-port takes a port, not {v:?}"))?;
                }
                "--json" => o.json = Some(value(arg)?.into()),
                "--detach" => o.detach = true,
                "--stop" => o.stop = true,
                "--restart" => o.restart = Some(number(arg, value(arg)?)?),
                other => {
                    return Err(format!(
                        "unknown argument {other:?} (see `tern-agent dev --help`)"
                    ));
                }
            }
        }
        if !(1..=64).contains(&o.nodes) {
            return Err("--nodes must be between 1 and 64".into());
        }
        if !(1..=1024).contains(&o.shards()) {
            return Err("--shards must be between 1 and 1024".into());
        }
        let last = u32::from(o.base_port) + u32::from(PORTS_PER_NODE) * o.nodes;
        if o.base_port == 0 || last > 65_536 {
            return Err(format!(
                "--base-port {} leaves no room for {} nodes of {PORTS_PER_NODE} ports each",
                o.base_port, o.nodes
            ));
        }
        Ok(o)
    }

    pub fn shards(&self) -> u32 {
        self.shards.unwrap_or(self.nodes)
    }
}

/// The ports of node `i`: `base + 20*i + offset`: health, RPC, admin, gossip (UDP and TCP),
/// smtp, submission, smtps, lmtp, imap and imaps; the rest of the 20 are reserved so that
/// addresses do not move when more listeners arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePorts {
    /// Plain HTTP: `/healthz/*`, `/metrics` (offset 0).
    pub http: u16,
    pub rpc: u16,
    /// The admin API over HTTPS.
    pub admin: u16,
    pub smtp: u16,
    pub submission: u16,
    pub lmtp: u16,
    pub imap: u16,
    pub imaps: u16,
    pub gossip: u16,
    pub smtps: u16,
}

impl NodePorts {
    pub fn of(base: u16, ordinal: u32) -> Self {
        let p = |offset: u16| base + PORTS_PER_NODE * ordinal as u16 + offset;
        Self {
            http: p(0),
            rpc: p(1),
            admin: p(2),
            smtp: p(3),
            submission: p(4),
            lmtp: p(5),
            imap: p(6),
            imaps: p(7),
            gossip: p(8),
            smtps: p(9),
        }
    }

    /// The ports the agent listens on today, by what they serve (gossip: UDP and TCP).
    pub fn served(&self) -> [(&'static str, u16); 10] {
        [
            ("health", self.http),
            ("rpc", self.rpc),
            ("admin", self.admin),
            ("gossip", self.gossip),
            ("smtp", self.smtp),
            ("submission", self.submission),
            ("smtps", self.smtps),
            ("lmtp", self.lmtp),
            ("imap", self.imap),
            ("imaps", self.imaps),
        ]
    }

    /// `127.0.0.1:<gossip port>`.
    pub fn gossip_addr(&self) -> String {
        format!("127.0.0.1:{}", self.gossip)
    }
}

/// The pod name of node `ordinal`: the agent insists on `<cluster>-<pool>-<ordinal>`.
pub fn node_name(ordinal: u32) -> String {
    format!("{CLUSTER}-{POOL}-{ordinal}")
}

/// The largest odd replication factor up to 3 that `nodes` allow.
pub fn replication_factor(nodes: u32) -> u32 {
    if nodes >= 3 { 3 } else { 1 }
}

/// The assignment of a local cluster: node ids `1..=nodes`; shard `s` on `rf` consecutive
/// nodes from node `((s-1) mod nodes) + 1` on, wrapping; group `default-k` on shard
/// `((k-1) mod shards) + 1`. Its epoch follows `previous` as the operator's does.
pub fn assignment(nodes: u32, shards: u32, previous: Option<&Assignment>) -> Assignment {
    let rf = replication_factor(nodes);
    let groups = DEFAULT_GROUPS.max(shards);
    let computed = Assignment {
        epoch: 0,
        cluster: CLUSTER.to_owned(),
        nodes: (0..nodes)
            .map(|i| {
                let entry = NodeEntry {
                    id: u64::from(i) + 1,
                    pool: POOL.to_owned(),
                    storage: StorageRole::Voter,
                    zone: None,
                };
                (node_name(i), entry)
            })
            .collect(),
        next_node_id: u64::from(nodes) + 1,
        shards: (1..=shards)
            .map(|s| {
                let first = (s - 1) % nodes;
                let mut voters: Vec<u64> = (0..rf)
                    .map(|k| u64::from((first + k) % nodes) + 1)
                    .collect();
                voters.sort_unstable();
                ShardAssignment {
                    id: s,
                    voters,
                    learners: vec![],
                }
            })
            .collect(),
        groups: (1..=groups)
            .map(|k| (default_group_name(k), (k - 1) % shards + 1))
            .collect(),
        default_groups: groups,
        members: BTreeMap::new(),
        domains: BTreeMap::new(),
        tasks: vec![],
    };
    Assignment::succeed(previous, computed)
}

/// The configuration every node reads. Listener ports are node 0's: each node's own
/// addresses come from its environment (the agent's `TERN_<NAME>_ADDR`), which `spawn` sets for
/// every listener enabled here.
pub fn agent_config(o: &Options) -> AgentConfig {
    let p = NodePorts::of(o.base_port, 0);
    let listener = |enabled: bool, port: u16| ListenerConfig {
        enabled,
        port: i32::from(port),
    };
    AgentConfig {
        cluster: CLUSTER.to_owned(),
        namespace: NAMESPACE.to_owned(),
        domains: vec!["example.test".to_owned()],
        shards: o.shards() as i32,
        replication_factor: replication_factor(o.nodes) as i32,
        read_replicas: 0,
        default_groups: DEFAULT_GROUPS.max(o.shards()) as i32,
        listeners: BTreeMap::from([
            ("http".to_owned(), listener(true, p.http)),
            ("https".to_owned(), listener(true, p.admin)),
            ("smtp".to_owned(), listener(true, p.smtp)),
            ("submission".to_owned(), listener(true, p.submission)),
            ("smtps".to_owned(), listener(true, p.smtps)),
            ("lmtp".to_owned(), listener(true, p.lmtp)),
            ("imap".to_owned(), listener(true, p.imap)),
            ("imaps".to_owned(), listener(true, p.imaps)),
        ]),
        health_port: i32::from(p.http),
        proxy_protocol: false,
        relay: None,
        gossip: GossipConfig {
            port: i32::from(p.gossip),
            seeds: vec![],
        },
        rpc_port: i32::from(p.rpc),
        headless_service: format!("{CLUSTER}-nodes"),
        assignment_config_map: Assignment::config_map_name(CLUSTER),
    }
}

/// `endpoints.json`: where a local cluster's nodes listen and how to administer it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    pub cluster: String,
    pub dir: PathBuf,
    pub nodes: Vec<NodeEndpoints>,
    pub admin: AdminEndpoint,
    /// Demo accounts.
    pub accounts: Vec<DemoAccount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEndpoints {
    pub name: String,
    pub id: u64,
    /// `127.0.0.1:PORT`: plain HTTP, `/healthz/ready`, `/metrics`.
    pub http: String,
    /// `127.0.0.1:PORT`: agent-to-agent RPC (mutual TLS).
    pub rpc: String,
    /// `https://127.0.0.1:PORT`: the admin API.
    pub admin: String,
    /// `127.0.0.1:PORT`: gossip (UDP and TCP); `/cluster/members` on `http` shows its view.
    #[serde(default)]
    pub gossip: String,
    /// `127.0.0.1:PORT`: inbound SMTP (STARTTLS offered).
    #[serde(default)]
    pub smtp: String,
    /// `127.0.0.1:PORT`: submission, STARTTLS then AUTH.
    #[serde(default)]
    pub submission: String,
    /// `127.0.0.1:PORT`: submission over implicit TLS.
    #[serde(default)]
    pub smtps: String,
    /// `127.0.0.1:PORT`: LMTP.
    #[serde(default)]
    pub lmtp: String,
    /// `127.0.0.1:PORT`: IMAP, STARTTLS then LOGIN.
    #[serde(default)]
    pub imap: String,
    /// `127.0.0.1:PORT`: IMAP over implicit TLS.
    #[serde(default)]
    pub imaps: String,
    pub pid: u32,
    pub log: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminEndpoint {
    pub user: String,
    pub password: String,
    /// The first node's admin API.
    pub url: String,
    /// The CA that signed every node's certificate.
    pub ca_file: PathBuf,
}

/// An account the local cluster creates for trying it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoAccount {
    pub address: String,
    pub password: String,
}

/// The demo domain and account of a local cluster.
pub const DEMO_DOMAIN: &str = "example.test";
pub const DEMO_ADDRESS: &str = "demo@example.test";

/// How long the demo data may take: the first writes can meet a shard still electing.
const DEMO_DATA_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `create` until it succeeds, reports "exists" (409: done, by an earlier attempt or an
/// earlier run), or fails other than temporarily (503 while a shard elects its leader, 429,
/// no connection), or [`DEMO_DATA_TIMEOUT`] has passed.
async fn create_retrying<F, Fut>(what: &str, mut create: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::admin::ClientError>>,
{
    let deadline = Instant::now() + DEMO_DATA_TIMEOUT;
    loop {
        match create().await {
            Ok(()) => return Ok(()),
            Err(e) if e.status() == Some(409) => return Ok(()),
            Err(e) if e.is_temporary() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("creating {what}: {e}")),
        }
    }
}

/// Creates the demo domain and account through the first node's admin API (a cluster that
/// was started before keeps them, and the account keeps its password, from `demo-password`).
async fn demo_data(
    layout: &Layout,
    admin_password_text: &str,
    admin_port: u16,
) -> Result<DemoAccount, String> {
    let password = admin_password(&layout.file("demo-password"))?;
    let ca = std::fs::read(layout.ca()).map_err(io_error(&layout.ca()))?;
    let client = crate::admin::AdminClient::new(
        &format!("https://127.0.0.1:{admin_port}"),
        crate::admin::ADMIN_USER,
        admin_password_text,
        Some(&ca),
    )
    .map_err(|e| e.to_string())?;
    create_retrying(&format!("the demo domain {DEMO_DOMAIN}"), || {
        client.create_domain(DEMO_DOMAIN)
    })
    .await?;
    create_retrying(&format!("the demo account {DEMO_ADDRESS}"), || {
        client.create_account(DEMO_ADDRESS, &password, None)
    })
    .await?;
    Ok(DemoAccount {
        address: DEMO_ADDRESS.to_owned(),
        password,
    })
}

/// Where a local cluster keeps its files: every path follows from the directory, so a later
/// `--stop` or `--restart` finds them.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn config(&self) -> PathBuf {
        self.file("config.json")
    }
    fn assignment(&self) -> PathBuf {
        self.file("assignment.json")
    }
    fn peers(&self) -> PathBuf {
        self.file("peers.json")
    }
    fn admin_password(&self) -> PathBuf {
        self.file("admin-password")
    }
    fn gossip_keyring(&self) -> PathBuf {
        self.file("gossip-keyring")
    }
    fn pids(&self) -> PathBuf {
        self.file("pids")
    }
    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    fn ca(&self) -> PathBuf {
        self.pki().join(pki::CA_CERT_FILE)
    }
    /// `(certificate, key)` of `name` (`agent` or `tls`).
    fn certificate(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.pki().join(format!("{name}.crt")),
            self.pki().join(format!("{name}.key")),
        )
    }
    fn node(&self, ordinal: u32) -> PathBuf {
        self.dir.join(node_name(ordinal))
    }
    fn data(&self, ordinal: u32) -> PathBuf {
        self.node(ordinal).join("data")
    }
    fn log(&self, ordinal: u32) -> PathBuf {
        self.node(ordinal).join("agent.log")
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    pki::write_file(path, text, 0o644).map_err(|e| e.to_string())
}

fn pretty<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

/// Runs `tern-agent dev`.
pub fn main(args: &[&str]) -> Result<(), String> {
    if matches!(args, ["--help" | "-h"]) {
        print!("{USAGE}");
        return Ok(());
    }
    let o = Options::parse(args)?;
    if o.stop || o.restart.is_some() {
        let dir = std::fs::canonicalize(&o.dir).map_err(io_error(&o.dir))?;
        let layout = Layout { dir };
        if let Some(ordinal) = o.restart {
            return restart(&layout, ordinal);
        }
        let stopped = stop_detached(&layout)?;
        println!("tern-agent dev: stopped {stopped} agents");
        return Ok(());
    }
    check_ports_free(
        (0..o.nodes).map(|i| (i, NodePorts::of(o.base_port, i))),
        &o.dir,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(run(o))
}

/// Fails, naming every busy port, when another process holds one of the nodes' ports.
fn check_ports_free(
    nodes: impl Iterator<Item = (u32, NodePorts)>,
    dir: &Path,
) -> Result<(), String> {
    let mut busy = vec![];
    for (i, ports) in nodes {
        for (what, port) in ports.served() {
            if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                busy.push(format!("  127.0.0.1:{port} ({} {what}): {e}", node_name(i)));
            } else if what == "gossip"
                && let Err(e) = std::net::UdpSocket::bind(("127.0.0.1", port))
            {
                busy.push(format!(
                    "  127.0.0.1:{port} UDP ({} {what}): {e}",
                    node_name(i)
                ));
            }
        }
    }
    if busy.is_empty() {
        return Ok(());
    }
    Err(format!(
        "ports in use:\n{}\nIs a local cluster still running? `tern-agent dev --stop --dir {}` \
         stops a detached one; or choose other ports with --base-port.",
        busy.join("\n"),
        dir.display()
    ))
}

/// The started agents; killed when dropped unless [`Agents::detach`]ed, so an error on the
/// way never leaves processes behind.
struct Agents(Vec<Agent>);

struct Agent {
    ordinal: u32,
    child: Child,
}

impl Agents {
    fn detach(mut self) {
        self.0.clear();
    }

    fn exited(&mut self) -> Option<(u32, String)> {
        self.0.iter_mut().find_map(|a| match a.child.try_wait() {
            Ok(Some(status)) => Some((a.ordinal, status.to_string())),
            Ok(None) => None,
            Err(e) => Some((a.ordinal, e.to_string())),
        })
    }

    /// SIGTERM to every agent, then SIGKILL to those still running after the grace time.
    async fn stop(mut self) {
        for a in &self.0 {
            terminate(a.child.id());
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            self.0
                .retain_mut(|a| matches!(a.child.try_wait(), Ok(None)));
            if self.0.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for a in &self.0 {
            eprintln!(
                "tern-agent dev: {} did not stop within {} s, killing it",
                node_name(a.ordinal),
                STOP_GRACE.as_secs()
            );
        }
        // Drop kills the rest.
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for a in &mut self.0 {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
    }
}

/// SIGTERM, through kill(1): the crate has no unsafe code and no libc binding.
fn terminate(pid: u32) {
    signal_pid("-TERM", pid);
}

fn signal_pid(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What stops a foreground cluster.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> Result<Self, String> {
        let on = |kind| signal(kind).map_err(|e| format!("signal handler: {e}"));
        Ok(Self {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Writes what the operator would publish (configuration, assignment, peers) and put in
/// Secrets (CA, certificates, admin password). Returns the assignment and the password.
fn prepare(o: &Options, layout: &Layout) -> Result<(Assignment, String), String> {
    write(&layout.config(), &pretty(&agent_config(o))?)?;
    // A restarted local cluster keeps its epoch unless the placement changed.
    let previous = std::fs::read_to_string(layout.assignment())
        .ok()
        .and_then(|t| Assignment::from_json(&t).ok());
    let assignment = assignment(o.nodes, o.shards(), previous.as_ref());
    write(&layout.assignment(), &assignment.to_json())?;
    let peers: BTreeMap<String, String> = (0..o.nodes)
        .map(|i| {
            let rpc = NodePorts::of(o.base_port, i).rpc;
            (node_name(i), format!("127.0.0.1:{rpc}"))
        })
        .collect();
    write(&layout.peers(), &pretty(&peers)?)?;

    let ca = LocalPki::load_or_generate(&layout.pki(), CLUSTER).map_err(|e| e.to_string())?;
    // One certificate for every agent, as in Kubernetes, and one for the client listeners.
    for name in ["agent", "tls"] {
        let (cert, key) = ca
            .issue(&["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(|e| e.to_string())?;
        let (cert_path, key_path) = layout.certificate(name);
        write(&cert_path, &cert)?;
        pki::write_private(&key_path, &key).map_err(|e| e.to_string())?;
    }
    let password = admin_password(&layout.admin_password())?;
    gossip_keyring(&layout.gossip_keyring())?;
    Ok((assignment, password))
}

/// The cluster's gossip keyring in `path`: kept when it is valid (a restarted cluster keeps
/// its key), else a new one with one random key.
fn gossip_keyring(path: &Path) -> Result<(), String> {
    use tern_gossip::keyring::{KEY_LEN, KeyId, Keyring};
    if crate::gossip::keys::read_key_file(CLUSTER, path).is_ok() {
        return Ok(());
    }
    use ring::rand::{SecureRandom, SystemRandom};
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "the system's random source failed".to_owned())?;
    let keyring = Keyring::new(CLUSTER, KeyId(1), [(KeyId(1), key)]).map_err(|e| e.to_string())?;
    pki::write_private(path, &keyring.render_secret()).map_err(|e| e.to_string())
}

/// The other nodes' gossip addresses, comma-separated: node `ordinal`'s seeds.
fn gossip_seeds(base: u16, nodes: u32, ordinal: u32) -> String {
    (0..nodes)
        .filter(|&j| j != ordinal)
        .map(|j| NodePorts::of(base, j).gossip_addr())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts node `ordinal` as `tern-agent run` (this executable), logging to its `agent.log`
/// (appended to when `append`), in its own process group: Ctrl-C reaches only this launcher,
/// which stops the agents in order, and a detached cluster outlives the terminal's jobs.
fn spawn(
    layout: &Layout,
    ordinal: u32,
    ports: NodePorts,
    seeds: &str,
    append: bool,
) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let data = layout.data(ordinal);
    std::fs::create_dir_all(&data).map_err(io_error(&data))?;
    let log_path = layout.log(ordinal);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&log_path)
        .map_err(io_error(&log_path))?;
    let (agent_cert, agent_key) = layout.certificate("agent");
    let (tls_cert, tls_key) = layout.certificate("tls");
    // The agent's own default: openraft reports every vote and replication step at info.
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".to_owned());
    Command::new(&exe)
        .arg("run")
        .env("POD_NAME", node_name(ordinal))
        .env("TERN_ROLE", POOL)
        .env("TERN_CLUSTER", CLUSTER)
        .env("TERN_STORAGE", "voter")
        .env("TERN_CONFIG_FILE", layout.config())
        .env("TERN_ASSIGNMENT_FILE", layout.assignment())
        .env("TERN_HEALTH_ADDR", format!("127.0.0.1:{}", ports.http))
        .env("TERN_DATA_DIR", &data)
        .env("TERN_CLUSTER_CA_FILE", layout.ca())
        .env("TERN_AGENT_CERT_FILE", agent_cert)
        .env("TERN_AGENT_KEY_FILE", agent_key)
        .env("TERN_TLS_CERT_FILE", tls_cert)
        .env("TERN_TLS_KEY_FILE", tls_key)
        .env("TERN_RPC_ADDR", format!("127.0.0.1:{}", ports.rpc))
        .env("TERN_PEERS_FILE", layout.peers())
        .env("TERN_ADMIN_ADDR", format!("127.0.0.1:{}", ports.admin))
        .env("TERN_ADMIN_PASSWORD_FILE", layout.admin_password())
        .env("TERN_GOSSIP_ADDR", ports.gossip_addr())
        .env("TERN_GOSSIP_SEEDS", seeds)
        .env("TERN_GOSSIP_KEY_FILE", layout.gossip_keyring())
        .env("TERN_SMTP_ADDR", format!("127.0.0.1:{}", ports.smtp))
        .env(
            "TERN_SUBMISSION_ADDR",
            format!("127.0.0.1:{}", ports.submission),
        )
        .env("TERN_SMTPS_ADDR", format!("127.0.0.1:{}", ports.smtps))
        .env("TERN_LMTP_ADDR", format!("127.0.0.1:{}", ports.lmtp))
        .env("TERN_IMAP_ADDR", format!("127.0.0.1:{}", ports.imap))
        .env("TERN_IMAPS_ADDR", format!("127.0.0.1:{}", ports.imaps))
        .env("RUST_LOG", rust_log)
        // The log is a file: no terminal colour codes in it.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io_error(&log_path))?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(io_error(&exe))
}

fn write_pids(layout: &Layout, pids: &[u32]) -> Result<(), String> {
    write(
        &layout.pids(),
        &pids.iter().map(|p| format!("{p}\n")).collect::<String>(),
    )
}

async fn run(o: Options) -> Result<(), String> {
    // Signals are caught from here on, so Ctrl-C during start-up stops the agents too.
    let mut stop = Stop::new()?;
    std::fs::create_dir_all(&o.dir).map_err(io_error(&o.dir))?;
    let dir = std::fs::canonicalize(&o.dir).map_err(io_error(&o.dir))?;
    let layout = Layout { dir: dir.clone() };
    let (assignment, password) = prepare(&o, &layout)?;

    let ports: Vec<NodePorts> = (0..o.nodes)
        .map(|i| NodePorts::of(o.base_port, i))
        .collect();
    let mut agents = Agents(vec![]);
    for (i, p) in (0..o.nodes).zip(&ports) {
        let child = spawn(
            &layout,
            i,
            *p,
            &gossip_seeds(o.base_port, o.nodes, i),
            false,
        )?;
        agents.0.push(Agent { ordinal: i, child });
    }
    let pids: Vec<u32> = agents.0.iter().map(|a| a.child.id()).collect();
    write_pids(&layout, &pids)?;

    let started = Instant::now();
    let health: Vec<(u32, u16)> = (0..o.nodes).zip(ports.iter().map(|p| p.http)).collect();
    let ready = tokio::select! {
        ready = wait_ready(&mut agents, &health, &layout) => ready,
        signal = stop.wait() => {
            eprintln!("tern-agent dev: {signal} while starting, stopping the agents");
            agents.stop().await;
            let _ = std::fs::remove_file(layout.pids());
            return Ok(());
        }
    };
    if let Err(e) = ready {
        agents.stop().await;
        let _ = std::fs::remove_file(layout.pids());
        return Err(e);
    }
    let demo = match demo_data(&layout, &password, ports[0].admin).await {
        Ok(demo) => demo,
        Err(e) => {
            agents.stop().await;
            let _ = std::fs::remove_file(layout.pids());
            return Err(e);
        }
    };

    let endpoints = Endpoints {
        cluster: CLUSTER.to_owned(),
        dir: dir.clone(),
        nodes: (0..o.nodes)
            .map(|i| {
                let p = ports[i as usize];
                NodeEndpoints {
                    name: node_name(i),
                    id: u64::from(i) + 1,
                    http: format!("127.0.0.1:{}", p.http),
                    rpc: format!("127.0.0.1:{}", p.rpc),
                    admin: format!("https://127.0.0.1:{}", p.admin),
                    gossip: p.gossip_addr(),
                    smtp: format!("127.0.0.1:{}", p.smtp),
                    submission: format!("127.0.0.1:{}", p.submission),
                    smtps: format!("127.0.0.1:{}", p.smtps),
                    lmtp: format!("127.0.0.1:{}", p.lmtp),
                    imap: format!("127.0.0.1:{}", p.imap),
                    imaps: format!("127.0.0.1:{}", p.imaps),
                    pid: pids[i as usize],
                    log: layout.log(i),
                }
            })
            .collect(),
        admin: AdminEndpoint {
            user: "admin".to_owned(),
            password,
            url: format!("https://127.0.0.1:{}", ports[0].admin),
            ca_file: layout.ca(),
        },
        accounts: vec![demo],
    };
    let endpoints_path = match &o.json {
        Some(path) => std::path::absolute(path).map_err(io_error(path))?,
        None => layout.file(ENDPOINTS_FILE),
    };
    write(&endpoints_path, &pretty(&endpoints)?)?;
    if o.json.is_some() {
        // `--restart` and the tools that find a cluster by its directory read it there.
        write(&layout.file(ENDPOINTS_FILE), &pretty(&endpoints)?)?;
    }
    print_summary(
        &o,
        &assignment,
        &endpoints,
        &endpoints_path,
        started.elapsed(),
    );

    if o.detach {
        println!(
            "The agents keep running; stop them with: tern-agent dev --stop --dir {}",
            dir.display()
        );
        agents.detach();
        return Ok(());
    }
    println!("Ctrl-C stops the cluster.");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            signal = stop.wait() => {
                println!("tern-agent dev: {signal}, stopping the agents");
                agents.stop().await;
                let _ = std::fs::remove_file(layout.pids());
                println!("tern-agent dev: stopped");
                return Ok(());
            }
            _ = tick.tick() => {
                if let Some((i, status)) = agents.exited() {
                    agents.stop().await;
                    let _ = std::fs::remove_file(layout.pids());
                    return Err(format!(
                        "{} exited ({status}); the end of {}:\n{}",
                        node_name(i),
                        layout.log(i).display(),
                        log_tail(&layout.log(i))
                    ));
                }
            }
        }
    }
}

/// Restarts node `ordinal` of a detached cluster (stopping it first if it still runs) with the
/// files already in the directory, waits until it is ready, and leaves it running.
fn restart(layout: &Layout, ordinal: u32) -> Result<(), String> {
    let endpoints_path = layout.file(ENDPOINTS_FILE);
    let text = std::fs::read_to_string(&endpoints_path).map_err(io_error(&endpoints_path))?;
    let mut endpoints: Endpoints =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", endpoints_path.display()))?;
    let node = endpoints.nodes.get(ordinal as usize).ok_or_else(|| {
        format!(
            "the cluster in {} has no node {ordinal}",
            layout.dir.display()
        )
    })?;
    let http: u16 = node
        .http
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| {
            format!(
                "{}: bad http address {:?}",
                endpoints_path.display(),
                node.http
            )
        })?;
    let base = http - PORTS_PER_NODE * ordinal as u16;
    let ports = NodePorts::of(base, ordinal);
    if is_our_agent(node.pid) {
        stop_pids(&[node.pid]);
    }
    check_ports_free(std::iter::once((ordinal, ports)), &layout.dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let seeds = gossip_seeds(base, endpoints.nodes.len() as u32, ordinal);
        let child = spawn(layout, ordinal, ports, &seeds, true)?;
        let mut agents = Agents(vec![Agent { ordinal, child }]);
        if let Err(e) = wait_ready(&mut agents, &[(ordinal, ports.http)], layout).await {
            agents.stop().await;
            return Err(e);
        }
        let pid = agents.0[0].child.id();
        agents.detach();
        endpoints.nodes[ordinal as usize].pid = pid;
        write(&endpoints_path, &pretty(&endpoints)?)?;
        let pids: Vec<u32> = endpoints.nodes.iter().map(|n| n.pid).collect();
        write_pids(layout, &pids)?;
        println!(
            "tern-agent dev: restarted {} (pid {pid})",
            node_name(ordinal)
        );
        Ok(())
    })
}

/// The admin password kept in `path`, or a new one (24 URL-safe characters) written there.
fn admin_password(path: &Path) -> Result<String, String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let kept = text.trim();
        if !kept.is_empty() {
            return Ok(kept.to_owned());
        }
    }
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 18];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random source failed".to_owned())?;
    let password = base64url(&bytes);
    pki::write_private(path, &password).map_err(|e| e.to_string())?;
    Ok(password)
}

/// URL- and shell-safe base64 without padding (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

/// Waits until every node answers `/healthz/ready` with 200; fails at once when a node exits,
/// or after [`READY_TIMEOUT`], naming the node and showing the end of its log.
async fn wait_ready(
    agents: &mut Agents,
    health: &[(u32, u16)],
    layout: &Layout,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let port: BTreeMap<u32, u16> = health.iter().copied().collect();
    let mut pending: Vec<u32> = port.keys().copied().collect();
    let mut last: BTreeMap<u32, String> = BTreeMap::new();
    while !pending.is_empty() {
        if let Some((i, status)) = agents.exited() {
            return Err(format!(
                "{} exited while starting ({status}); the end of {}:\n{}",
                node_name(i),
                layout.log(i).display(),
                log_tail(&layout.log(i))
            ));
        }
        let mut still = vec![];
        for i in pending {
            match http_get(
                std::net::SocketAddr::from(([127, 0, 0, 1], port[&i])),
                "/healthz/ready",
            )
            .await
            {
                Ok((200, _)) => {}
                Ok((code, body)) => {
                    last.insert(i, format!("{code} {}", body.trim()));
                    still.push(i);
                }
                Err(e) => {
                    last.insert(i, e);
                    still.push(i);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let i = pending[0];
            return Err(format!(
                "{} is not ready after {} s (last answer: {}); the end of {}:\n{}",
                pending
                    .iter()
                    .map(|&i| node_name(i))
                    .collect::<Vec<_>>()
                    .join(", "),
                READY_TIMEOUT.as_secs(),
                last.get(&i).map_or("none", String::as_str),
                layout.log(i).display(),
                log_tail(&layout.log(i))
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A plain HTTP/1.1 GET (health and metrics endpoints): the status code and the body, within
/// 2 s.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response);
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| format!("{addr}: no answer within 2 s"))?
}

/// The last lines of a log, indented.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    if tail.is_empty() {
        return "    (empty)".to_owned();
    }
    tail.iter().map(|l| format!("    {l}\n")).collect()
}

fn print_summary(
    o: &Options,
    assignment: &Assignment,
    endpoints: &Endpoints,
    endpoints_path: &Path,
    took: Duration,
) {
    println!(
        "tern-agent dev: {} nodes ready in {:.1} s (cluster {CLUSTER}, assignment epoch {}, {} shards, replication factor {})",
        o.nodes,
        took.as_secs_f64(),
        assignment.epoch,
        assignment.shards.len(),
        replication_factor(o.nodes)
    );
    println!();
    println!(
        "{:<15} {:>3}  {:<16} {:<16} {:<25} {:<16} PID",
        "NODE", "ID", "HTTP", "RPC", "ADMIN", "GOSSIP"
    );
    for n in &endpoints.nodes {
        println!(
            "{:<15} {:>3}  {:<16} {:<16} {:<25} {:<16} {}",
            n.name, n.id, n.http, n.rpc, n.admin, n.gossip, n.pid
        );
    }
    println!();
    println!(
        "{:<15} {:<16} {:<16} {:<16} {:<16} {:<16} IMAPS",
        "NODE", "SMTP", "SUBMISSION", "SMTPS", "LMTP", "IMAP"
    );
    for n in &endpoints.nodes {
        println!(
            "{:<15} {:<16} {:<16} {:<16} {:<16} {:<16} {}",
            n.name, n.smtp, n.submission, n.smtps, n.lmtp, n.imap, n.imaps
        );
    }
    println!();
    for s in &assignment.shards {
        println!("shard {}: voters {:?}", s.id, s.voters);
    }
    println!();
    println!(
        "admin:     {} / {}  {}  (CA {})",
        endpoints.admin.user,
        endpoints.admin.password,
        endpoints.admin.url,
        endpoints.admin.ca_file.display()
    );
    for a in &endpoints.accounts {
        println!("account:   {} / {}", a.address, a.password);
    }
    println!(
        "logs:      {}",
        endpoints.dir.join("<node>").join("agent.log").display()
    );
    println!("endpoints: {}", endpoints_path.display());
}

/// Stops the agents a detached run left: SIGTERM, then SIGKILL after the grace time. Returns
/// how many were running.
fn stop_detached(layout: &Layout) -> Result<usize, String> {
    let pids_path = layout.pids();
    let text = match std::fs::read_to_string(&pids_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: {e}", pids_path.display())),
    };
    let pids: Vec<u32> = text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| is_our_agent(pid))
        .collect();
    stop_pids(&pids);
    let _ = std::fs::remove_file(&pids_path);
    Ok(pids.len())
}

/// SIGTERM to processes this launcher did not start (their parent is gone), then SIGKILL to
/// those still running after the grace time.
fn stop_pids(pids: &[u32]) {
    for &pid in pids {
        terminate(pid);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        eprintln!(
            "tern-agent dev: agent {pid} did not stop within {} s, killing it",
            STOP_GRACE.as_secs()
        );
        signal_pid("-KILL", pid);
    }
}

/// Whether `pid` runs and has not exited. A detached agent's parent is gone, so once it exits
/// it may stay a zombie until init reaps it; that counts as stopped.
pub fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if proc.is_dir() {
        return match std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        };
    }
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Guards against a stale pids file whose numbers now belong to other processes: where
/// `/proc` tells, only a `tern-agent run` process is signalled.
fn is_our_agent(pid: u32) -> bool {
    if !alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.len() >= 2 && args[0].ends_with(b"tern-agent") && args[1] == b"run"
        }
        Err(_) => !Path::new("/proc").is_dir(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(a: &Assignment) -> Vec<Vec<u64>> {
        a.shards.iter().map(|s| s.voters.clone()).collect()
    }

    #[test]
    fn options_parse_with_defaults() {
        let o = Options::parse(&[]).unwrap();
        assert_eq!(o, Options::default());
        assert_eq!(o.shards(), 3);
        let o = Options::parse(&[
            "--nodes",
            "5",
            "--shards",
            "2",
            "--dir",
            "/tmp/x",
            "--base-port",
            "20000",
            "--json",
            "e.json",
            "--detach",
        ])
        .unwrap();
        assert_eq!(
            o,
            Options {
                nodes: 5,
                shards: Some(2),
                dir: "/tmp/x".into(),
                base_port: 20000,
                json: Some("e.json".into()),
                detach: true,
                stop: false,
                restart: None,
            }
        );
        assert!(Options::parse(&["--stop"]).unwrap().stop);
        assert_eq!(
            Options::parse(&["--restart", "1"]).unwrap().restart,
            Some(1)
        );
        for bad in [
            &["--nodes"][..],
            &["--nodes", "0"],
            &["--nodes", "x"],
            &["--shards", "0"],
            &["--base-port", "65530"],
            &["--frobnicate"],
        ] {
            assert!(Options::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_follow_the_node_ordinal() {
        let p = NodePorts::of(17000, 2);
        assert_eq!(
            (
                p.http,
                p.rpc,
                p.admin,
                p.smtp,
                p.submission,
                p.lmtp,
                p.imap,
                p.imaps,
                p.gossip
            ),
            (
                17040, 17041, 17042, 17043, 17044, 17045, 17046, 17047, 17048
            )
        );
        assert_eq!(p.smtps, 17049);
        let served: Vec<u16> = p.served().iter().map(|(_, port)| *port).collect();
        assert_eq!(
            served,
            [
                17040, 17041, 17042, 17048, 17043, 17044, 17049, 17045, 17046, 17047
            ]
        );
    }

    #[tokio::test]
    async fn demo_data_waits_out_temporary_refusals_and_takes_exists_as_done() {
        let refused = |status: u16| crate::admin::ClientError::Refused {
            status,
            reason: "x".into(),
            message: "x".into(),
            retry_after: None,
        };
        let calls = std::cell::Cell::new(0);
        let result = create_retrying("it", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(refused(503)) } else { Ok(()) } }
        })
        .await;
        assert_eq!((result, calls.get()), (Ok(()), 3));
        calls.set(0);
        let result = create_retrying("it", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 2 {
                    Err(refused(503))
                } else {
                    Err(refused(409))
                }
            }
        })
        .await;
        assert_eq!((result, calls.get()), (Ok(()), 2));
        calls.set(0);
        let result = create_retrying("the demo domain", || {
            calls.set(calls.get() + 1);
            async { Err(refused(400)) }
        })
        .await;
        assert!(result.unwrap_err().starts_with("creating the demo domain"));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn replication_factor_is_the_largest_odd_up_to_three() {
        let rf: Vec<u32> = (1..=6).map(replication_factor).collect();
        assert_eq!(rf, [1, 1, 3, 3, 3, 3]);
    }

    #[test]
    fn shards_go_round_the_nodes_and_groups_round_the_shards() {
        let a = assignment(3, 3, None);
        assert_eq!(a.epoch, 1);
        assert_eq!(a.cluster, "dev");
        assert_eq!(a.next_node_id, 4);
        assert_eq!(a.node_id("dev-default-0"), Some(1));
        assert_eq!(a.node_id("dev-default-2"), Some(3));
        assert_eq!(a.nodes["dev-default-1"].storage, StorageRole::Voter);
        assert_eq!(voters(&a), [[1, 2, 3], [1, 2, 3], [1, 2, 3]]);
        assert_eq!(a.default_groups, 16);
        assert_eq!(a.groups.len(), 16);
        assert_eq!(a.groups["default-1"], 1);
        assert_eq!(a.groups["default-3"], 3);
        assert_eq!(a.groups["default-4"], 1);
        assert_eq!(a.groups["default-16"], 1);

        let a = assignment(5, 5, None);
        assert_eq!(
            voters(&a),
            [[1, 2, 3], [2, 3, 4], [3, 4, 5], [1, 4, 5], [1, 2, 5]]
        );
        let a = assignment(2, 2, None);
        assert_eq!(voters(&a), [[1], [2]]);
        let a = assignment(1, 3, None);
        assert_eq!(voters(&a), [[1], [1], [1]]);
        assert_eq!(a.groups["default-2"], 2);
    }

    #[test]
    fn a_restart_keeps_the_epoch_and_a_change_raises_it() {
        let first = assignment(3, 3, None);
        assert_eq!(assignment(3, 3, Some(&first)).epoch, 1);
        let grown = assignment(4, 3, Some(&first));
        assert_eq!(grown.epoch, 2);
    }

    #[test]
    fn the_config_names_node_zero_ports_and_the_cluster() {
        let o = Options::default();
        let c = agent_config(&o);
        assert_eq!(c.cluster, "dev");
        assert_eq!(c.health_port, 17000);
        assert_eq!(c.rpc_port, 17001);
        assert_eq!(c.shards, 3);
        assert_eq!(c.replication_factor, 3);
        assert_eq!(
            c.listeners["https"],
            ListenerConfig {
                enabled: true,
                port: 17002
            }
        );
        for (name, port) in [
            ("smtp", 17003),
            ("submission", 17004),
            ("lmtp", 17005),
            ("smtps", 17009),
            ("imap", 17006),
            ("imaps", 17007),
        ] {
            assert_eq!(
                c.listeners[name],
                ListenerConfig {
                    enabled: true,
                    port
                },
                "{name}"
            );
        }
        assert_eq!(c.listeners.len(), 8);
        // What `tern-agent run` reads.
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(AgentConfig::from_json(&text).unwrap(), c);
    }

    #[test]
    fn the_admin_password_is_random_and_kept() {
        assert_eq!(base64url(b"\xfb\xff\xbf"), "-_-_");
        assert_eq!(base64url(b"ab"), "YWI");
        let dir = tern_raft::testing::TempDir::new("dev-password");
        let path = dir.path().join("admin-password");
        let first = admin_password(&path).unwrap();
        assert_eq!(first.len(), 24);
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(admin_password(&path).unwrap(), first);
        let other = dir.path().join("other");
        assert_ne!(admin_password(&other).unwrap(), first);
    }

    #[test]
    fn endpoints_serialize_in_camel_case() {
        let e = Endpoints {
            cluster: "dev".into(),
            dir: "/d".into(),
            nodes: vec![NodeEndpoints {
                name: "dev-default-0".into(),
                id: 1,
                http: "127.0.0.1:17000".into(),
                rpc: "127.0.0.1:17001".into(),
                admin: "https://127.0.0.1:17002".into(),
                gossip: "127.0.0.1:17008".into(),
                smtp: "127.0.0.1:17003".into(),
                submission: "127.0.0.1:17004".into(),
                smtps: "127.0.0.1:17009".into(),
                lmtp: "127.0.0.1:17005".into(),
                imap: "127.0.0.1:17006".into(),
                imaps: "127.0.0.1:17007".into(),
                pid: 42,
                log: "/d/dev-default-0/agent.log".into(),
            }],
            admin: AdminEndpoint {
                user: "admin".into(),
                password: "pw".into(),
                url: "https://127.0.0.1:17002".into(),
                ca_file: "/d/pki/ca.crt".into(),
            },
            accounts: vec![DemoAccount {
                address: DEMO_ADDRESS.into(),
                password: "pw".into(),
            }],
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["admin"]["caFile"], "/d/pki/ca.crt");
        assert_eq!(v["nodes"][0]["http"], "127.0.0.1:17000");
        assert_eq!(v["nodes"][0]["gossip"], "127.0.0.1:17008");
        assert_eq!(v["nodes"][0]["smtp"], "127.0.0.1:17003");
        assert_eq!(v["nodes"][0]["submission"], "127.0.0.1:17004");
        assert_eq!(v["nodes"][0]["smtps"], "127.0.0.1:17009");
        assert_eq!(v["nodes"][0]["lmtp"], "127.0.0.1:17005");
        assert_eq!(v["nodes"][0]["imap"], "127.0.0.1:17006");
        assert_eq!(v["nodes"][0]["imaps"], "127.0.0.1:17007");
        // An endpoints file from before gossip and the mail listeners still reads.
        let mut old = v.clone();
        for field in [
            "gossip",
            "smtp",
            "submission",
            "smtps",
            "lmtp",
            "imap",
            "imaps",
        ] {
            old["nodes"][0].as_object_mut().unwrap().remove(field);
        }
        let back: Endpoints = serde_json::from_value(old).unwrap();
        assert_eq!(back.nodes[0].gossip, "");
        assert_eq!(back.nodes[0].smtp, "");
        assert_eq!(back.nodes[0].imaps, "");
        assert_eq!(
            v["accounts"],
            serde_json::json!([{"address": DEMO_ADDRESS, "password": "pw"}])
        );
    }

    #[test]
    fn seeds_are_the_other_nodes_and_the_keyring_is_kept() {
        assert_eq!(gossip_seeds(17000, 3, 1), "127.0.0.1:17008,127.0.0.1:17048");
        assert_eq!(gossip_seeds(17000, 1, 0), "");
        let dir = tern_raft::testing::TempDir::new("dev-gossip");
        let path = dir.path().join("gossip-keyring");
        gossip_keyring(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        let (keyring, _) = crate::gossip::keys::read_key_file(CLUSTER, &path).unwrap();
        assert_eq!(keyring.primary_id().0, 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        gossip_keyring(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "kept");
        std::fs::write(&path, "garbage").unwrap();
        gossip_keyring(&path).unwrap();
        assert_ne!(std::fs::read_to_string(&path).unwrap(), first, "replaced");
        assert!(crate::gossip::keys::read_key_file(CLUSTER, &path).is_ok());
    }

    #[test]
    fn a_process_that_is_gone_is_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(alive(std::process::id()));
        assert!(!is_our_agent(pid));
    }
}
