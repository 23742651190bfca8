//! `tern-agent run`: everything one agent serves, wired together.
//!
//! Identity and configuration come from the environment and files ([`Node`]); what else it
//! reads:
//!
//! | variable | meaning |
//! |---|---|
//! | `TERN_STORAGE` | `none` for a pool that holds no data; otherwise the node runs shards |
//! | `TERN_DATA_DIR` | the volume: the storage engines' files (`log/`: Raft logs and message bodies, `state/`: shard state) |
//! | `TERN_STORE_ENGINE` | `redb` (default) or `sled`: the shards' state (the Raft logs are on the log engine) |
//! | `TERN_CLUSTER_CA_FILE`, `TERN_AGENT_CERT_FILE`, `TERN_AGENT_KEY_FILE` | agent-to-agent mutual TLS (PEM) |
//! | `TERN_RPC_ADDR` | where the RPC server listens (default `0.0.0.0:<rpcPort>`) |
//! | `TERN_PEERS_FILE` | JSON `{pod name: "host:port"}` of every node's RPC server; without it `<pod>.<headlessService>.<namespace>.svc:<rpcPort>` |
//! | `TERN_ADMIN_ADDR` | where the admin API listens (HTTPS); default `127.0.0.1:7948`, inside the pod only (`kubectl port-forward`); `none` turns it off |
//! | `TERN_ADMIN_PASSWORD_FILE` | the recovery administrator's password |
//! | `TERN_TLS_CERT_FILE`, `TERN_TLS_KEY_FILE` | the listeners' certificate (PEM): the admin API, STARTTLS on smtp, submission, lmtp and imap, smtps and imaps |
//! | `TERN_LISTENERS` | the protocols this node's pool serves, comma-separated (set by the operator); unset: every listener the configuration enables |
//! | `TERN_SMTP_ADDR`, `TERN_SUBMISSION_ADDR`, `TERN_SMTPS_ADDR`, `TERN_LMTP_ADDR` | where the mail listeners listen (default `0.0.0.0:<listeners.NAME.port>`); `none` turns one off. They run on storage nodes only |
//! | `TERN_IMAP_ADDR`, `TERN_IMAPS_ADDR` | where the IMAP listeners listen: imap (STARTTLS) and imaps (implicit TLS), default `0.0.0.0:<listeners.NAME.port>`; `none` turns one off. Storage nodes only |
//! | `TERN_PROXY_PROTOCOL` | `true` or `false`: a PROXY header on every connection to this node's smtp, submission and smtps listeners (default: the configuration's `proxyProtocol`) |
//! | `TERN_HOSTNAME` | the name in SMTP and IMAP greetings and `Received:` fields (default `POD_NAME`) |
//! | `TERN_TIMEOUT_MS` | the longest a read or write waits for its shard (default 5000) |
//! | `TERN_SNAPSHOT_LOGS` | a shard snapshots every this many log entries (default 20000) |
//! | `TERN_STATE_CACHE_MB` | the state engine's page cache in MiB (default: an eighth of the container's memory limit, 32 MiB to 1 GiB; without a limit the engine's 1 GiB) |
//! | `TERN_GOSSIP_KEY_FILE` | the gossip keyring (required): the keyring text format, a raw 32-byte key, or one base64 key; read again every 5 s |
//! | `TERN_GOSSIP_ADDR` | where gossip listens, UDP and TCP on the same port (default `0.0.0.0:<gossip.port>`) |
//! | `TERN_GOSSIP_ADVERTISE_ADDR` | the gossip address peers are told (default: `TERN_GOSSIP_ADDR`, or `POD_IP:<port>` when that listens on every interface) |
//! | `KUBERNETES_SERVICE_HOST`, `POD_NAMESPACE` | in Kubernetes: the agents elect one (Lease `<cluster>-reporter`) that writes gossip's view into the MailCluster's `status.members` and shard leaders, at most once a second |
//! | `TERN_GOSSIP_SEEDS` | comma-separated `host[:port]` seeds, added to the configuration's `gossip.seeds` |
//! | `POD_IP` | the pod's address (Downward API), advertised for listeners bound to every interface |
//! | `TERN_OUTBOUND_*`, `TERN_RELAY_*`, `TERN_DKIM_*` | outbound delivery: see [`crate::outbound`] |
//! | `TERN_DNS_SERVERS` | DNS servers for SPF, DKIM and DMARC checks (default: the system's): see [`crate::smtp::auth_results`] |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tern_raft::Storage;
use tern_store::{EngineKind, EngineOptions};
use tokio::net::TcpListener;

use crate::admin::{self, AdminServerConfig};
use crate::follow::{self, Shared};
use crate::gossip::{self, GossipOptions, ShardSource};
use crate::http::{self, View};
use crate::imap::{ImapListeners, ImapOptions, ImapStats, Relay, RoutingBackend, StoreBackend};
use crate::node::Node;
use crate::report;
use crate::rpc::{Handover, Network, TlsConfig, serve_with_handover};
use crate::shards::{HostOptions, Peers, ShardHost, raft_config_with_snapshots};
use crate::smtp::{BackendOptions, Listeners, MailBackend, SmtpStats};

/// Where the admin API listens when `TERN_ADMIN_ADDR` is not set: 127.0.0.1 only, next to
/// the gossip (7946) and RPC (7947) ports.
pub const DEFAULT_ADMIN_PORT: u16 = 7948;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn need(name: &str) -> Result<String, String> {
    var(name).ok_or_else(|| format!("{name} is not set"))
}

fn read(name: &str) -> Result<Vec<u8>, String> {
    let path = need(name)?;
    std::fs::read(&path).map_err(|e| format!("{name}={path}: {e}"))
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(node: Node) -> Result<(), String> {
    let followed = Shared::default();
    let host_cell: Arc<OnceLock<Arc<ShardHost>>> = Arc::default();
    let stores = var("TERN_STORAGE").is_none_or(|s| s != "none") && var("TERN_DATA_DIR").is_some();
    let gossip_options = GossipOptions::from_vars(
        &node,
        if stores { Some(rpc_addr(&node)?) } else { None },
        var,
    )?;
    let shard_source: ShardSource = {
        let host_cell = host_cell.clone();
        Arc::new(move || {
            host_cell
                .get()
                .map(|host| host.shard_statuses())
                .unwrap_or_default()
        })
    };
    let gossip = gossip::start(gossip_options, followed.clone(), shard_source).await?;
    let smtp_stats: Arc<SmtpStats> = Arc::default();
    let imap_stats: Arc<ImapStats> = Arc::default();
    let view = View {
        node: node.name.clone(),
        pool: node.pool.clone(),
        followed: followed.clone(),
        stores,
        host: host_cell.clone(),
        gossip: gossip.clone(),
        smtp: smtp_stats.clone(),
        imap: imap_stats.clone(),
    };
    let addr = http::spawn(node.health_addr, view)
        .await
        .map_err(|e| format!("{}: {e}", node.health_addr))?;
    tracing::info!(node = %node.name, pool = %node.pool, %addr, "serving health and metrics");
    tokio::spawn(follow::run(
        node.config.cluster.clone(),
        node.assignment_file.clone(),
        followed.clone(),
        Duration::from_secs(1),
    ));

    let reporter = start_reporter(&node, &gossip).await;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let started = async {
        if stores {
            start_store(
                &node,
                &followed,
                &host_cell,
                (&smtp_stats, &imap_stats),
                &gossip,
            )
            .await
        } else {
            std::future::pending().await
        }
    };
    let mut mail_listeners = MailListeners::default();
    tokio::select! {
        result = started => {
            mail_listeners = result?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    // Mail first: messages being received may still be stored while the shards run.
    mail_listeners.shutdown().await;
    if let Some(reporter) = reporter {
        reporter.shutdown().await;
    }
    // First tell the others, so they stop routing here before the shards stop.
    gossip.leave().await;
    if let Some(host) = host_cell.get() {
        host.shutdown().await;
    }
    Ok(())
}

/// In Kubernetes, joins the election of the one agent that writes the cluster's membership
/// view into the MailCluster's status, fed from gossip twice a second. A view is published
/// only once gossip has joined: the reporter writes the whole member list, and a partial one
/// would hide nodes from the operator's placement.
async fn start_reporter(node: &Node, gossip: &gossip::Gossip) -> Option<report::Reporter> {
    let kube = match report::in_cluster_client().await {
        Ok(Some(kube)) => kube,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client: the status reporter does not run");
            return None;
        }
    };
    let (tx, rx) = tokio::sync::watch::channel(report::ClusterView::default());
    let source = gossip.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while !tx.is_closed() {
            tick.tick().await;
            if !source.joined() {
                continue;
            }
            let view = report::ClusterView::from_members(source.member_statuses());
            tx.send_if_modified(|current| {
                let changed = *current != view;
                if changed {
                    *current = view;
                }
                changed
            });
        }
    });
    Some(report::spawn(
        kube.client,
        &kube.namespace,
        &node.config.cluster,
        &node.name,
        rx,
    ))
}

/// Where the RPC server listens: `TERN_RPC_ADDR`, or every interface on the configured port.
fn rpc_addr(node: &Node) -> Result<SocketAddr, String> {
    match var("TERN_RPC_ADDR") {
        Some(a) => a.parse().map_err(|e| format!("TERN_RPC_ADDR={a}: {e}")),
        None => Ok(SocketAddr::from((
            [0, 0, 0, 0],
            node.config.rpc_port as u16,
        ))),
    }
}

type SharedEngine = Arc<dyn tern_store::Engine>;

/// The layout of what an agent keeps in `TERN_DATA_DIR` (`FORMAT` holds it). 2: message bodies
/// carry the log index of the entry that stored them, and only shared bodies have a reference
/// count. 3: bodies are kept with the Raft logs in `log/`, linked to the entries that carried
/// them, instead of in a `bodies/` engine of their own. 4: idempotency records are kept there
/// too, written after the state from its redo record (`tern_store::Split`); an agent moves a
/// format 3 directory's records there when it opens it ([`open_engines`]).
const DATA_FORMAT: u32 = 4;
/// The oldest format an agent moves to [`DATA_FORMAT`] itself.
const MOVED_FORMAT: u32 = 3;

/// The format of the data in `dir`: refuses a layout this agent cannot read, rather than
/// misreading it, and marks a new directory with [`DATA_FORMAT`], durably, before anything is
/// stored in it.
fn check_data_format(dir: &Path) -> Result<u32, String> {
    let marker = dir.join("FORMAT");
    let found = match std::fs::read_to_string(&marker) {
        Ok(text) => Some(text.trim().parse::<u32>().map_err(|_| {
            format!(
                "{} does not hold a data format number: {text:?}",
                marker.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", marker.display())),
    };
    let stored = ["state", "bodies", "log"]
        .iter()
        .any(|sub| dir.join(sub).exists());
    match found {
        Some(format) if (MOVED_FORMAT..=DATA_FORMAT).contains(&format) => Ok(format),
        Some(other) => Err(format!(
            "{} holds data in format {other}; this agent reads formats {MOVED_FORMAT} to \
             {DATA_FORMAT} only",
            dir.display()
        )),
        None if stored => Err(format!(
            "{} holds data written before data formats were recorded (format 1), which this \
             agent (format {DATA_FORMAT}) would misread: recreate the cluster's volumes, or run \
             the release that wrote them",
            dir.display()
        )),
        None => {
            mark_data_format(dir)?;
            Ok(DATA_FORMAT)
        }
    }
}

/// Records, durably, that the data in `dir` is in [`DATA_FORMAT`].
fn mark_data_format(dir: &Path) -> Result<(), String> {
    let marker = dir.join("FORMAT");
    let temporary = dir.join("FORMAT.new");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, format!("{DATA_FORMAT}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &marker)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", marker.display()))
}

/// Opens the engines of the data in `dir`: the Raft logs, and the shards' state (the main
/// engine `kind` in `state/` split with the logs' engine), moving a format 3 directory to 4
/// first. Blocks.
///
/// Two engines: the Raft logs, whose appends wait for fsyncs, and the shards' state, whose
/// writes then never queue behind them (see tern-raft's durability notes). The logs are
/// append-only segments whatever `kind` says: a log entry is written once, read back by
/// replication while recent, and deleted in bulk after a snapshot, which a B-tree does at
/// several times the cost.
///
/// Message bodies (written once, read rarely, deleted whole) are on the logs' engine beside
/// the state: a body is linked to the log entry that carried it, so it is written once (see
/// `tern_store::Link`), and stays when the log is purged. Idempotency records too: their keys
/// are digests, which a B-tree stores a page apiece per commit, and every delivery looks one
/// up and misses, which the log engine's key filter answers from memory. `Split` orders the
/// two engines' writes so the state never refers to a body that is not on disk, and the
/// idempotency records are never ahead of the state nor behind it.
fn open_engines(
    dir: &Path,
    kind: EngineKind,
    options: EngineOptions,
) -> Result<(SharedEngine, SharedEngine), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let format = check_data_format(dir)?;
    let open = |sub: &str, kind: EngineKind| {
        let path = dir.join(sub);
        tern_store::open_with(kind, &path, options)
            .map_err(|e| format!("opening the store in {}: {e}", path.display()))
    };
    let log = open("log", EngineKind::Log)?;
    let main = open("state", kind)?;
    if format == MOVED_FORMAT {
        // Copied, then deleted: a crash in between leaves them in both, and the next start
        // copies them again. The directory says format 3 until they are all moved.
        let moved = move_keyspace(&*main, &*log, tern_mail::keys::IDEM)
            .map_err(|e| format!("moving the idempotency records in {}: {e}", dir.display()))?;
        mark_data_format(dir)?;
        tracing::info!(records = moved, dir = %dir.display(), "moved the data to format {DATA_FORMAT}");
    }
    let state = tern_store::Split::open(
        main,
        log.clone(),
        tern_mail::keys::SIDE_REFERENCED,
        tern_mail::keys::SIDE_AFTER,
    )
    .map_err(|e| format!("opening the state in {}: {e}", dir.display()))?;
    Ok((log, Arc::new(state)))
}

/// Where the state engine's page cache size comes from when `TERN_STATE_CACHE_MB` is not set:
/// this process's memory cgroup's limit file, cgroup v2 first, then v1, given the text of
/// `/proc/self/cgroup`. Each version's file under the process's cgroup path comes first, then
/// the one at the mount's root, which is the container's own cgroup when the container has a
/// cgroup namespace or its cgroup mounted there (a pod's container does).
fn cgroup_limit_files(proc_self_cgroup: &str) -> Vec<String> {
    let path_of = |wanted: &dyn Fn(&str) -> bool| {
        proc_self_cgroup.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            wanted(controllers).then(|| path.trim_end_matches('/').to_owned())
        })
    };
    let mut files = Vec::new();
    if let Some(path) = path_of(&|c| c.is_empty()) {
        files.push(format!("/sys/fs/cgroup{path}/memory.max"));
    }
    files.push("/sys/fs/cgroup/memory.max".to_owned());
    if let Some(path) = path_of(&|c| c.split(',').any(|c| c == "memory")) {
        files.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
    }
    files.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".to_owned());
    files.dedup();
    files
}

/// The least and the most the state engine caches when its size follows the memory limit.
const STATE_CACHE_RANGE: (u64, u64) = (32 << 20, 1 << 30);

/// The state engine's page cache: `TERN_STATE_CACHE_MB` when set; else an eighth of the
/// container's memory limit, within [`STATE_CACHE_RANGE`], so that a pod given little memory
/// is not killed for a cache the engine would otherwise fill to 1 GiB; else (no limit) the
/// engine's default. The rest of the limit is for the log engine's index (every stored body's
/// key), the write buffers and the connections. Returns the size and where it came from.
fn state_cache(
    setting: Option<&str>,
    limit_files: &[&str],
) -> Result<(Option<usize>, String), String> {
    if let Some(mib) = setting {
        let bytes = mib
            .parse::<u64>()
            .ok()
            .filter(|mib| (1..=1 << 20).contains(mib))
            .ok_or_else(|| {
                format!("TERN_STATE_CACHE_MB={mib}: expected a number of MiB from 1 to 1048576")
            })?;
        return Ok((Some((bytes << 20) as usize), "TERN_STATE_CACHE_MB".into()));
    }
    for file in limit_files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        return Ok(match memory_limit(&text) {
            Some(limit) => {
                let (least, most) = STATE_CACHE_RANGE;
                let bytes = (limit / 8).clamp(least, most);
                (
                    Some(bytes as usize),
                    format!(
                        "an eighth of the memory limit, {} MiB ({file})",
                        limit >> 20
                    ),
                )
            }
            None => (
                None,
                format!("the engine's default: no memory limit ({file})"),
            ),
        });
    }
    Ok((
        None,
        "the engine's default: no cgroup memory limit found".into(),
    ))
}

/// A cgroup memory limit file's limit in bytes; `None` for none (v2's `max`, v1's huge
/// number) or text that is not a limit.
fn memory_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|bytes| *bytes > 0 && *bytes < 1 << 62)
}

/// Moves every key of `keyspace` from `from` to `to`, durably, a page at a time; returns how
/// many it moved.
fn move_keyspace(
    from: &dyn tern_store::Engine,
    to: &dyn tern_store::Engine,
    keyspace: &'static str,
) -> Result<u64, tern_store::StoreError> {
    const PAGE: usize = 4096;
    let mut moved = 0;
    loop {
        let page = from.scan(
            keyspace,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            PAGE,
            false,
        )?;
        if page.is_empty() {
            return Ok(moved);
        }
        let mut copy = tern_store::Batch::new();
        let mut delete = tern_store::Batch::new();
        for (key, value) in page {
            delete.delete(keyspace, key.clone());
            copy.put(keyspace, key, value);
            moved += 1;
        }
        to.write(copy, tern_store::Durability::Immediate)?;
        from.write(delete, tern_store::Durability::Immediate)?;
    }
}

/// Opens the store, waits until the assignment names this node, then runs its shards, the
/// RPC server, the admin API and the mail listeners. Returns once they run.
async fn start_store(
    node: &Node,
    followed: &Shared,
    host_cell: &OnceLock<Arc<ShardHost>>,
    (smtp_stats, imap_stats): (&Arc<SmtpStats>, &Arc<ImapStats>),
    gossip: &gossip::Gossip,
) -> Result<MailListeners, String> {
    let dir = PathBuf::from(need("TERN_DATA_DIR")?);
    let kind = match var("TERN_STORE_ENGINE").as_deref() {
        None | Some("redb") => EngineKind::Redb,
        Some("sled") => EngineKind::Sled,
        Some(other) => return Err(format!("TERN_STORE_ENGINE={other}: expected redb or sled")),
    };
    let limit_files =
        cgroup_limit_files(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let limit_files: Vec<&str> = limit_files.iter().map(String::as_str).collect();
    let (cache_bytes, cache_from) =
        state_cache(var("TERN_STATE_CACHE_MB").as_deref(), &limit_files)?;
    tracing::info!(
        cache_mib = cache_bytes.map(|b| b >> 20),
        from = %cache_from,
        "state engine page cache"
    );
    let options = EngineOptions { cache_bytes };
    let (log, state) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || open_engines(&dir, kind, options))
            .await
            .map_err(|e| e.to_string())??
    };
    let storage = Storage::with_engines(log, state);
    let tls = TlsConfig::from_pem(
        &read("TERN_CLUSTER_CA_FILE")?,
        &read("TERN_AGENT_CERT_FILE")?,
        &read("TERN_AGENT_KEY_FILE")?,
    )
    .map_err(|e| format!("agent TLS: {e}"))?;
    let rpc_addr = rpc_addr(node)?;
    let peers = match var("TERN_PEERS_FILE") {
        Some(path) => Peers::file(PathBuf::from(path)),
        None => Peers::dns(
            &node.config.headless_service,
            &node.config.namespace,
            node.config.rpc_port as u16,
        ),
    };
    let timeout = match var("TERN_TIMEOUT_MS") {
        Some(ms) => Duration::from_millis(
            ms.parse()
                .map_err(|e| format!("TERN_TIMEOUT_MS={ms}: {e}"))?,
        ),
        None => Duration::from_secs(5),
    };

    let snapshot_logs = match var("TERN_SNAPSHOT_LOGS") {
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("TERN_SNAPSHOT_LOGS={n}: expected a positive number"))?,
        None => 20_000,
    };

    // The node's Raft id comes from the assignment.
    let node_id = loop {
        let id = followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .as_ref()
            .and_then(|a| a.node_id(&node.name));
        if let Some(id) = id {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let host = ShardHost::new(
        HostOptions {
            node_id,
            node_name: node.name.clone(),
            raft: Arc::new(
                raft_config_with_snapshots(&node.config.cluster, snapshot_logs)
                    .validate()
                    .map_err(|e| e.to_string())?,
            ),
            timeout,
            peers,
            marker_dir: Some(dir.clone()),
        },
        storage,
        Network::new(tls.client.clone(), 0),
    );
    // Forwarded writes and queries try the nodes gossip holds alive first.
    host.set_liveness({
        let gossip = gossip.clone();
        Arc::new(move |id| gossip.is_live(id))
    });
    let listener = TcpListener::bind(rpc_addr)
        .await
        .map_err(|e| format!("RPC listener {rpc_addr}: {e}"))?;
    // The IMAP listeners register here to take the sessions other nodes relay to this one.
    let handover = Handover::default();
    tokio::spawn(serve_with_handover(
        listener,
        tls.server.clone(),
        host.clone(),
        host.rpc_stats.clone(),
        handover.clone(),
    ));
    tracing::info!(node_id, %rpc_addr, "serving agent RPC");
    let _ = host_cell.set(host.clone());
    tokio::spawn(
        host.clone()
            .follow(followed.clone(), Duration::from_millis(500)),
    );

    // The recovery administrator's API is never on a public port by default: only inside
    // the pod (reach it with `kubectl port-forward`), unless TERN_ADMIN_ADDR says otherwise.
    let admin_addr: Option<SocketAddr> = match var("TERN_ADMIN_ADDR") {
        Some(a) if a == "none" => None,
        Some(a) => Some(a.parse().map_err(|e| format!("TERN_ADMIN_ADDR={a}: {e}"))?),
        None => Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT))),
    };
    let password_file = var("TERN_ADMIN_PASSWORD_FILE");
    if admin_addr.is_some() && password_file.is_none() {
        tracing::info!("no TERN_ADMIN_PASSWORD_FILE: the admin API is off");
    }
    if let (Some(addr), Some(password_file)) = (admin_addr, password_file) {
        let password =
            admin::read_password_file(&PathBuf::from(password_file)).map_err(|e| e.to_string())?;
        let (bound, _task) = admin::serve(
            AdminServerConfig {
                addr,
                cert_pem: read("TERN_TLS_CERT_FILE")?,
                key_pem: read("TERN_TLS_KEY_FILE")?,
                password,
            },
            host.clone(),
        )
        .await
        .map_err(|e| format!("admin API: {e}"))?;
        tracing::info!(%bound, "serving the admin API");
    }
    let relay = Relay::new(host.clone(), tls.client.clone(), imap_stats.clone());
    // Outbound delivery of the queued messages of the shards this node holds.
    let outbound = crate::outbound::OutboundOptions::from_env(
        node.config.relay.as_ref(),
        var("TERN_HOSTNAME").unwrap_or_else(|| node.name.clone()),
        var,
    )?;
    crate::outbound::spawn(host.clone(), outbound, smtp_stats.outbound.clone());
    start_mail(node, &host, timeout, smtp_stats, (relay, &handover)).await
}

/// The mail listeners a node runs.
#[derive(Default)]
struct MailListeners {
    smtp: Option<Listeners>,
    imap: Option<ImapListeners>,
}

impl MailListeners {
    /// Stops both kinds together: SMTP sessions in the middle of a message may finish.
    async fn shutdown(self) {
        let smtp = async {
            if let Some(listeners) = self.smtp {
                listeners.shutdown().await;
            }
        };
        let imap = async {
            if let Some(listeners) = self.imap {
                listeners.shutdown().await;
            }
        };
        tokio::join!(smtp, imap);
    }
}

/// Starts the SMTP, submission, smtps and LMTP listeners (see [`crate::smtp::listeners`])
/// and the imap and imaps listeners (see [`crate::imap::listeners`]) this node runs,
/// storing through `host`.
async fn start_mail(
    node: &Node,
    host: &Arc<ShardHost>,
    shard_timeout: Duration,
    stats: &Arc<SmtpStats>,
    (relay, handover): (Relay, &Handover),
) -> Result<MailListeners, String> {
    let plans = crate::smtp::listeners::plan(&node.config, var)?;
    let imap_plans = crate::imap::listeners::plan(&node.config, var)?;
    if plans.is_empty() && imap_plans.is_empty() {
        tracing::info!("no mail listeners on this node");
        return Ok(MailListeners::default());
    }
    let tls = match (var("TERN_TLS_CERT_FILE"), var("TERN_TLS_KEY_FILE")) {
        (Some(_), Some(_)) => Some(
            crate::smtp::listeners::tls_config(
                &read("TERN_TLS_CERT_FILE")?,
                &read("TERN_TLS_KEY_FILE")?,
            )
            .map_err(|e| format!("the mail listeners' TLS: {e}"))?,
        ),
        _ => {
            tracing::warn!(
                "no TERN_TLS_CERT_FILE and TERN_TLS_KEY_FILE: mail listeners without STARTTLS, \
                 so without AUTH and LOGIN"
            );
            None
        }
    };
    let hostname = var("TERN_HOSTNAME").unwrap_or_else(|| node.name.clone());
    let mut listeners = MailListeners::default();
    if !plans.is_empty() {
        let mut options =
            BackendOptions::for_shard_timeout(shard_timeout, node.config.domains.first().cloned());
        options.queue_lifetime = crate::outbound::queue_lifetime(var)?;
        // SPF, DKIM and DMARC of mail from the internet (see crate::smtp::auth_results).
        let checks = crate::smtp::auth_results::InboundChecks::from_env(&hostname, var)?;
        let backend = Arc::new(
            MailBackend::new(host.clone(), options, stats.clone())
                .with_inbound_checks(Arc::new(checks)),
        );
        listeners.smtp =
            Some(Listeners::start(&plans, &hostname, tls.clone(), backend, stats).await?);
    }
    if !imap_plans.is_empty() {
        let store = StoreBackend::new(host.clone(), ImapOptions::for_shard_timeout(shard_timeout));
        let backend = Arc::new(RoutingBackend::new(store, Some(relay)));
        match ImapListeners::start(&imap_plans, &hostname, tls, backend, Some(handover)).await {
            Ok(imap) => listeners.imap = Some(imap),
            Err(e) => {
                listeners.shutdown().await;
                return Err(e);
            }
        }
    }
    Ok(listeners)
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn the_memory_limit_is_looked_for_under_the_process_cgroup_then_at_the_root() {
        // cgroup v2: one line, no controllers.
        assert_eq!(
            cgroup_limit_files("0::/kubepods/pod1/c1\n"),
            [
                "/sys/fs/cgroup/kubepods/pod1/c1/memory.max",
                "/sys/fs/cgroup/memory.max",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            ]
        );
        // A cgroup namespace: the process is at the root, its files are the root's.
        assert_eq!(
            cgroup_limit_files("0::/\n"),
            [
                "/sys/fs/cgroup/memory.max",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes"
            ]
        );
        // cgroup v1: the memory controller's line, alone or with others.
        let v1 = "9:name=systemd:/\n4:memory:/job/7\n3:cpu,cpuacct:/\n";
        assert_eq!(
            cgroup_limit_files(v1),
            [
                "/sys/fs/cgroup/memory.max",
                "/sys/fs/cgroup/memory/job/7/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            ]
        );
        assert_eq!(
            cgroup_limit_files("4:cpuset,memory:/j\n")[1],
            "/sys/fs/cgroup/memory/j/memory.limit_in_bytes"
        );
        // Unreadable: the roots only.
        assert_eq!(cgroup_limit_files("").len(), 2);
    }

    #[test]
    fn the_state_cache_follows_the_setting_else_the_memory_limit() {
        let dir = tern_raft::testing::TempDir::new("state-cache");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (v2, v1) = (
            file("memory.max", "2147483648\n"),
            file("v1", "536870912\n"),
        );
        let missing = dir.path().join("missing").display().to_string();
        let bytes = |setting: Option<&str>, files: &[&str]| state_cache(setting, files).unwrap().0;

        // The setting wins over any limit.
        assert_eq!(bytes(Some("100"), &[&v2]), Some(100 << 20));
        for bad in ["0", "-1", "1.5", "lots", "1048577"] {
            let refused = state_cache(Some(bad), &[&v2]).unwrap_err();
            assert!(refused.contains("TERN_STATE_CACHE_MB"), "{refused}");
        }
        // An eighth of the first limit file there is: 2 GiB gives 256 MiB.
        assert_eq!(bytes(None, &[&missing, &v2, &v1]), Some(256 << 20));
        assert_eq!(bytes(None, &[&missing, &v1]), Some(64 << 20));
        // Within 32 MiB and 1 GiB.
        let small = file("small", "67108864");
        assert_eq!(bytes(None, &[&small]), Some(32 << 20));
        let large = file("large", &(64u64 << 30).to_string());
        assert_eq!(bytes(None, &[&large]), Some(1 << 30));
        // No limit (v2's `max`, v1's huge number) or no file: the engine's default.
        let unlimited_v2 = file("max", "max\n");
        let unlimited_v1 = file("huge", "9223372036854771712\n");
        assert_eq!(bytes(None, &[&unlimited_v2, &v2]), None);
        assert_eq!(bytes(None, &[&unlimited_v1]), None);
        assert_eq!(bytes(None, &[&missing]), None);
        let (_, from) = state_cache(None, &[&v2]).unwrap();
        assert!(from.contains("2048 MiB"), "{from}");
    }

    #[test]
    fn a_new_directory_is_marked_and_old_or_foreign_ones_are_refused() {
        let dir = tern_raft::testing::TempDir::new("data-format");
        check_data_format(dir.path()).expect("a new directory is marked");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
            format!("{DATA_FORMAT}\n")
        );
        check_data_format(dir.path()).expect("its own format is accepted");

        for old in ["1", "2", "5"] {
            std::fs::write(dir.path().join("FORMAT"), format!("{old}\n")).unwrap();
            let refused = check_data_format(dir.path()).unwrap_err();
            assert!(refused.contains(&format!("format {old}")), "{refused}");
        }

        std::fs::write(dir.path().join("FORMAT"), "3\n").unwrap();
        assert_eq!(
            check_data_format(dir.path()),
            Ok(3),
            "format 3 is moved, not refused"
        );

        std::fs::write(dir.path().join("FORMAT"), "two").unwrap();
        assert!(check_data_format(dir.path()).is_err());

        // Data from before the marker existed.
        std::fs::remove_file(dir.path().join("FORMAT")).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let refused = check_data_format(dir.path()).unwrap_err();
        assert!(
            refused.contains("before data formats were recorded"),
            "{refused}"
        );
        assert!(
            !dir.path().join("FORMAT").exists(),
            "nothing marked on refusal"
        );
    }

    #[test]
    fn a_format_3_directory_has_its_idempotency_records_moved_beside_the_bodies() {
        use tern_mail::keys::{DIR, IDEM};
        use tern_store::{Batch, Durability};

        let dir = tern_raft::testing::TempDir::new("data-format-3");
        std::fs::write(dir.path().join("FORMAT"), "3\n").unwrap();
        {
            let state = tern_store::open(EngineKind::Redb, &dir.path().join("state")).unwrap();
            let mut batch = Batch::new();
            // More than one page of the move.
            for i in 0..5000u32 {
                batch.put(IDEM, i.to_be_bytes().to_vec(), vec![i as u8; 40]);
            }
            batch.put(DIR, b"d".to_vec(), b"domain".to_vec());
            state.write(batch, Durability::Immediate).unwrap();
            tern_store::open(EngineKind::Log, &dir.path().join("log")).unwrap();
        }

        let (log, state) =
            open_engines(dir.path(), EngineKind::Redb, EngineOptions::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
            format!("{DATA_FORMAT}\n")
        );
        for i in [0u32, 4095, 4096, 4999] {
            let want = Some(vec![i as u8; 40]);
            assert_eq!(state.get(IDEM, &i.to_be_bytes()).unwrap(), want);
            assert_eq!(log.get(IDEM, &i.to_be_bytes()).unwrap(), want);
        }
        assert_eq!(state.get(DIR, b"d").unwrap(), Some(b"domain".to_vec()));
        drop((log, state));

        let main = tern_store::open(EngineKind::Redb, &dir.path().join("state")).unwrap();
        let left = main
            .scan(
                IDEM,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                10,
                false,
            )
            .unwrap();
        assert!(left.is_empty(), "{} records left in the state", left.len());
        drop(main);
        // Opened again, in format 4: nothing to move, everything still there.
        let (_, state) =
            open_engines(dir.path(), EngineKind::Redb, EngineOptions::default()).unwrap();
        assert_eq!(
            state.get(IDEM, &77u32.to_be_bytes()).unwrap(),
            Some(vec![77; 40])
        );
    }
}
