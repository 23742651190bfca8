//! The agent's HTTP endpoints for kubelet, Prometheus and people: `/healthz/live`,
//! `/healthz/ready`, `/metrics`, and `/cluster/members` (gossip's view of the cluster, JSON).

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::follow::Shared;
use crate::gossip::Gossip;
use crate::rpc::ShardStatus;
use crate::shards::ShardHost;

/// Per-shard gauges and the host's counters, in Prometheus text format.
fn shard_metrics(out: &mut String, host: &ShardHost) {
    let statuses = host.shard_statuses();
    type Gauge = (&'static str, &'static str, fn(&ShardStatus) -> u64);
    let gauges: [Gauge; 5] = [
        (
            "tern_shard_leader",
            "1 when this node leads the shard.",
            |s| u64::from(s.is_leader),
        ),
        (
            "tern_shard_term",
            "Raft term of the shard's replica.",
            |s| s.term,
        ),
        (
            "tern_shard_last_log_index",
            "Last log index of the shard's replica.",
            |s| s.last_log_index.unwrap_or(0),
        ),
        (
            "tern_shard_applied_index",
            "Log index applied by the shard's replica.",
            |s| s.applied.unwrap_or(0),
        ),
        (
            "tern_shard_abstaining",
            "1 while an empty replica catches up and abstains from votes.",
            |s| u64::from(s.abstaining),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (shard, status) in &statuses {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(status));
        }
    }
    type LogGauge = (
        &'static str,
        &'static str,
        fn(&tern_raft::typ::RaftMetrics) -> u64,
    );
    let log_gauges: [LogGauge; 2] = [
        (
            "tern_shard_snapshot_index",
            "Last log index covered by the replica's snapshot (0: none).",
            |m| m.snapshot.map_or(0, |l| l.index),
        ),
        (
            "tern_shard_purged_index",
            "Last log index purged from the replica's log (0: none).",
            |m| m.purged.map_or(0, |l| l.index),
        ),
    ];
    for (name, help, value) in log_gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (shard, _) in &statuses {
            if let Some(m) = host.metrics(*shard) {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(&m));
            }
        }
    }
    let s = &host.stats;
    let counters = [
        (
            "tern_store_writes_total",
            "Writes asked of the replicated store on this node.",
            &s.writes,
        ),
        (
            "tern_store_writes_forwarded_total",
            "Writes forwarded to another node's leader.",
            &s.writes_forwarded,
        ),
        (
            "tern_store_writes_unavailable_total",
            "Writes refused as temporarily unavailable.",
            &s.writes_unavailable,
        ),
        (
            "tern_store_reads_total",
            "Linearizable read barriers.",
            &s.reads,
        ),
        (
            "tern_store_reads_unavailable_total",
            "Read barriers refused as temporarily unavailable.",
            &s.reads_unavailable,
        ),
        (
            "tern_store_entries_proposed_total",
            "Raft entries this node proposed as a leader.",
            &s.entries,
        ),
        (
            "tern_store_commands_proposed_total",
            "Commands carried by those entries.",
            &s.commands,
        ),
        (
            "tern_store_membership_steps_total",
            "Membership changes started as a leader.",
            &s.membership_steps,
        ),
        (
            "tern_store_shards_initialized_total",
            "New shards this node initialised.",
            &s.shards_initialized,
        ),
        (
            "tern_store_shards_left_total",
            "Shards this node left (data deleted).",
            &s.shards_left,
        ),
    ];
    let r = &host.rpc_stats;
    let rpc = [
        (
            "tern_rpc_connections_total",
            "Agent RPC connections accepted.",
            &r.connections,
        ),
        (
            "tern_rpc_handshake_failures_total",
            "Agent RPC TLS handshakes that failed (e.g. no certificate of the cluster CA).",
            &r.handshake_failures,
        ),
        (
            "tern_rpc_malformed_frames_total",
            "Agent RPC connections closed for a malformed frame.",
            &r.malformed_frames,
        ),
        (
            "tern_rpc_unknown_shard_total",
            "Agent RPC requests for a shard this node does not run.",
            &r.unknown_shard,
        ),
        (
            "tern_rpc_requests_total",
            "Agent RPC requests answered.",
            &r.requests,
        ),
        (
            "tern_rpc_idle_closed_total",
            "Agent RPC connections closed after the idle timeout.",
            &r.idle_closed,
        ),
    ];
    for (name, help, counter) in counters.into_iter().chain(rpc) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
    }
}

/// What the endpoints report on.
#[derive(Clone)]
pub struct View {
    pub node: String,
    pub pool: String,
    pub followed: Shared,
    /// Whether this node holds data (then it is ready only once its shards run).
    pub stores: bool,
    /// The node's shards, once it runs them (storage nodes).
    pub host: Arc<OnceLock<Arc<ShardHost>>>,
    /// Membership: served at `/cluster/members`, in `/metrics`, and required by readiness.
    pub gossip: Gossip,
    /// What the SMTP, submission and LMTP listeners counted (`tern_smtp_*`).
    pub smtp: Arc<crate::smtp::SmtpStats>,
    /// What IMAP session proxying counted (`tern_imap_*`).
    pub imap: Arc<crate::imap::ImapStats>,
}

impl View {
    /// Ready once the followed assignment names this node (only then does it know its part),
    /// once its gossip has joined the cluster (or the assignment lists only this node) and,
    /// on a storage node, once it runs a settled replica of every shard assigned to it.
    pub fn ready(&self) -> Result<u64, String> {
        // Before taking the assignment's lock, which `joined` takes too.
        let joined = self.gossip.joined();
        let st = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        let (epoch, id) = match &st.current {
            None => return Err("no assignment yet".into()),
            Some(a) => match a.node_id(&self.node) {
                None => {
                    return Err(format!(
                        "assignment epoch {} does not name {}",
                        a.epoch, self.node
                    ));
                }
                Some(id) => (a.epoch, id),
            },
        };
        if !joined {
            return Err("gossip has not joined the cluster yet (no member answered)".into());
        }
        let Some(host) = self.host.get() else {
            if self.stores {
                return Err("the store is not running yet".into());
            }
            return Ok(epoch);
        };
        let running: BTreeMap<u32, ShardStatus> = host.shard_statuses().into_iter().collect();
        let assigned = st
            .current
            .iter()
            .flat_map(|a| &a.shards)
            .filter(|s| s.voters.contains(&id) || s.learners.contains(&id));
        for shard in assigned {
            match running.get(&shard.id) {
                None => return Err(format!("shard {} is not running yet", shard.id)),
                Some(s) if s.abstaining => {
                    return Err(format!("shard {} is catching up", shard.id));
                }
                Some(_) => {}
            }
        }
        Ok(epoch)
    }

    pub fn metrics(&self) -> String {
        let st = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tern_agent_info Agent version and pool.\n# TYPE tern_agent_info gauge"
        );
        let _ = writeln!(
            out,
            "tern_agent_info{{version=\"{}\",pool=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.pool
        );
        let _ = writeln!(
            out,
            "# HELP tern_agent_assignment_epoch Epoch of the assignment this node follows.\n# TYPE tern_agent_assignment_epoch gauge"
        );
        let _ = writeln!(
            out,
            "tern_agent_assignment_epoch {}",
            st.current.as_ref().map_or(0, |a| a.epoch)
        );
        let _ = writeln!(
            out,
            "# HELP tern_agent_assignment_refused_total Assignments ignored (older epoch, conflicting content, other cluster).\n# TYPE tern_agent_assignment_refused_total counter"
        );
        let _ = writeln!(out, "tern_agent_assignment_refused_total {}", st.refused);
        let _ = writeln!(
            out,
            "# HELP tern_agent_assignment_unreadable_total Assignment files that could not be read or parsed.\n# TYPE tern_agent_assignment_unreadable_total counter"
        );
        let _ = writeln!(
            out,
            "tern_agent_assignment_unreadable_total {}",
            st.unreadable
        );
        drop(st);
        self.gossip.render_metrics(&mut out);
        if let Some(host) = self.host.get() {
            shard_metrics(&mut out, host);
        }
        self.smtp.render(&mut out);
        self.imap.render(&mut out);
        out
    }
}

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

fn respond(req: &Request<Incoming>, view: &View) -> Response<Full<Bytes>> {
    let mut content_type = TEXT;
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz/live") => (StatusCode::OK, "ok\n".to_string()),
        (&Method::GET, "/healthz/ready") => match view.ready() {
            Ok(epoch) => (StatusCode::OK, format!("ready, assignment epoch {epoch}\n")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => (StatusCode::OK, view.metrics()),
        (&Method::GET, "/cluster/members") => {
            content_type = JSON;
            match serde_json::to_string_pretty(&view.gossip.cluster_members()) {
                Ok(json) => (StatusCode::OK, json + "\n"),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Binds and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr, view: View) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let view = view.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let resp = respond(&req, &view);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = conn.await;
            });
        }
    });
    Ok(local)
}
