//! The status reporter: one agent at a time writes the cluster's membership view into its
//! MailCluster's status — `status.members`, and each `status.shards` entry's `leader` and
//! `lastAppliedLag` — so `kubectl get mc -o yaml` shows it and the operator's placement moves
//! work off dead nodes.
//!
//! **One writer.** Every agent campaigns for the Lease `<cluster>-reporter` in its namespace
//! (identity: its pod name) with the election the operator uses
//! ([`tern_crds::lease`]); only the holder writes, and it stops the moment it loses the lease
//! (it stops waiting for a write in flight and sends no other). A holder that cannot renew
//! steps down when its lease runs out, before another agent can take it over. A node whose
//! view source ends gives the lease up, so a node with a live view takes over.
//!
//! **O(1) writes per second, whatever the node count.** The holder writes at most once per
//! interval (default 1 s), only when the normalized view changed — phi is rounded and moves
//! only by whole steps, see [`plan::report`] — plus a rewrite of an unchanged view every
//! refresh period (default 60 s), so a lost or overwritten write heals. A failed write is
//! logged and retried with exponential backoff; the reporter never crashes the agent.
//!
//! **Why it never fights the operator.** Both write `status` by server-side apply, each under
//! its own field manager: the operator as `tern-operator`, the agents as
//! [`FIELD_MANAGER`]. The API server merges two appliers' fields and removes only the fields
//! a manager stops applying, so each owns exactly what it sends: the operator never sends
//! `members` (see its `cluster_status`), and the reporter sends nothing else but `members`
//! and, per shard, `id`, `leader` and `lastAppliedLag`. That works per entry because the CRD
//! declares both lists as list maps (`x-kubernetes-list-type: map`, keyed by `name` and by
//! `id`): an entry is identified by its key, the operator owns `voters`, `learners` and
//! `groups` of shard 3 and the reporter owns its `leader`, both own the key, and neither
//! apply removes the other's fields. (With an atomic list, each apply would replace the
//! whole list.) The reporter applies with `force`, so it takes over `members` from anyone
//! who edited them by hand; every agent uses the same manager name, so a new holder simply
//! continues what the previous one owned.

mod pace;
mod plan;

#[cfg(test)]
mod tests;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use tern_crds::MailCluster;
use tern_crds::lease::{LeaderElector, LeaseConfig};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use pace::{Pace, Pacing, When};
pub use plan::{ClusterView, PHI_CAP, Report, ShardReport, ShardView, apply_body, report};

/// The field manager of every status write by an agent.
pub const FIELD_MANAGER: &str = "tern-agent";

/// The Lease the agents of `cluster` elect their reporter with (the operator's RBAC for the
/// agents names exactly this Lease).
pub fn lease_name(cluster: &str) -> String {
    format!("{cluster}-reporter")
}

/// Whose status the reporter writes and who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The MailCluster's (and the Lease's) namespace.
    pub namespace: String,
    /// The MailCluster's name.
    pub cluster: String,
    /// This agent's pod name: its identity in the Lease.
    pub identity: String,
}

/// Timing of the reporter.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportConfig {
    pub pacing: Pacing,
    /// phi moves in steps of this size (see [`plan::report`]).
    pub phi_step: f64,
    /// The longest one status write may take before it counts as failed.
    pub write_timeout: Duration,
    /// How long the Lease lasts without renewal: how long the agents go without a reporter
    /// when the holder dies.
    pub lease_duration: Duration,
    /// How often the holder renews and the others try.
    pub lease_retry: Duration,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            pacing: Pacing::default(),
            phi_step: 1.0,
            write_timeout: Duration::from_secs(10),
            lease_duration: Duration::from_secs(15),
            lease_retry: Duration::from_secs(5),
        }
    }
}

/// A running reporter.
pub struct Reporter {
    stop: oneshot::Sender<()>,
    leading: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Reporter {
    /// Whether this agent holds the reporter lease now.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow() && !self.task.is_finished()
    }

    /// Whether the reporter has ended (its view source closed, or it was shut down).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops writing and gives the lease up, so another agent takes over at once (call it on
    /// graceful shutdown).
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "status reporter panicked");
        }
    }
}

/// Starts the reporter of `cluster` in `namespace` with the default timing.
pub fn spawn(
    client: kube::Client,
    namespace: &str,
    cluster: &str,
    identity: &str,
    view: watch::Receiver<ClusterView>,
) -> Reporter {
    let target = Target {
        namespace: namespace.into(),
        cluster: cluster.into(),
        identity: identity.into(),
    };
    spawn_with(client, target, ReportConfig::default(), view)
}

/// Starts a reporter with explicit timing.
pub fn spawn_with(
    client: kube::Client,
    target: Target,
    config: ReportConfig,
    view: watch::Receiver<ClusterView>,
) -> Reporter {
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            namespace: target.namespace.clone(),
            name: lease_name(&target.cluster),
            identity: target.identity.clone(),
            duration: config.lease_duration,
            retry: config.lease_retry,
        },
    );
    let api: Api<MailCluster> = Api::namespaced(client, &target.namespace);
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(elector, api, target, config, view, leading_tx, stopped));
    Reporter {
        stop,
        leading,
        task,
    }
}

async fn run(
    elector: LeaderElector,
    api: Api<MailCluster>,
    target: Target,
    config: ReportConfig,
    view: watch::Receiver<ClusterView>,
    leading_tx: watch::Sender<bool>,
    stopped: oneshot::Receiver<()>,
) {
    let writer = Writer {
        api,
        target,
        config,
    };
    let leading = leading_tx.subscribe();
    tokio::select! {
        () = elector.run(leading_tx.clone()) => {}
        () = writer.run(view, leading) => {
            tracing::warn!(cluster = %writer.target.cluster, "the cluster view ended; the status reporter stops");
        }
        _ = stopped => {}
    }
    // Nothing writes after this point: the writer is gone with the select.
    leading_tx.send_replace(false);
    if tokio::time::timeout(writer.config.lease_retry, elector.release())
        .await
        .is_err()
    {
        tracing::warn!(lease = %elector.config().name, "could not release the reporter lease in time");
    }
}

struct Writer {
    api: Api<MailCluster>,
    target: Target,
    config: ReportConfig,
}

impl Writer {
    /// Writes whenever this agent leads; returns when the view source is closed.
    async fn run(
        &self,
        mut view: watch::Receiver<ClusterView>,
        mut leading: watch::Receiver<bool>,
    ) {
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                // The elector is gone; the task ends with it.
                return std::future::pending().await;
            }
            tracing::info!(cluster = %self.target.cluster, identity = %self.target.identity, "holding the reporter lease: writing cluster status");
            if self.lead(&mut view, &mut leading).await.is_err() {
                return;
            }
            tracing::info!(cluster = %self.target.cluster, "no longer the reporter: status writes stopped");
        }
    }

    /// One term as the holder: returns `Ok` when leadership is lost, `Err` when the view
    /// source is closed.
    async fn lead(
        &self,
        view: &mut watch::Receiver<ClusterView>,
        leading: &mut watch::Receiver<bool>,
    ) -> Result<(), ViewClosed> {
        let pacing = &self.config.pacing;
        let mut pace = Pace::default();
        loop {
            let desired = report(
                &view.borrow_and_update(),
                pace.last_written(),
                self.config.phi_step,
            );
            let now = Instant::now();
            let wake = match (pace.when(pacing, desired.as_ref(), now), desired) {
                (When::Now, Some(desired)) => {
                    pace.attempted(now);
                    let patch = Patch::Apply(apply_body(&self.target.cluster, &desired));
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    let write = tokio::time::timeout(
                        self.config.write_timeout,
                        self.api.patch_status(&self.target.cluster, &params, &patch),
                    );
                    tokio::select! {
                        biased;
                        _ = leading.wait_for(|l| !*l) => return Ok(()),
                        result = write => {
                            let error = match result {
                                Ok(Ok(_)) => {
                                    tracing::debug!(cluster = %self.target.cluster, members = desired.members.len(), "cluster status written");
                                    pace.succeeded(now, desired);
                                    continue;
                                }
                                Ok(Err(e)) => e.to_string(),
                                Err(_) => format!("no answer within {:?}", self.config.write_timeout),
                            };
                            let backoff = pace.failed(now, pacing);
                            tracing::warn!(cluster = %self.target.cluster, %error, retry_in = ?backoff, "writing cluster status failed");
                            continue;
                        }
                    }
                }
                (When::At(at), _) => Some(at),
                (When::Now | When::Idle, _) => None,
            };
            tokio::select! {
                biased;
                _ = leading.wait_for(|l| !*l) => return Ok(()),
                () = sleep_until_some(wake) => {}
                changed = view.changed() => changed.map_err(|_| ViewClosed)?,
            }
        }
    }
}

struct ViewClosed;

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why no Kubernetes client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the in-cluster Kubernetes configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A Kubernetes client from inside a pod, and the pod's namespace.
#[derive(Clone)]
pub struct InCluster {
    pub client: kube::Client,
    /// `POD_NAMESPACE`, else the service account's namespace.
    pub namespace: String,
}

/// Connects to the API server when running in Kubernetes (`KUBERNETES_SERVICE_HOST` set,
/// as the kubelet does for every pod); `Ok(None)` outside Kubernetes, where there is no
/// status to report to. Must be called inside the Tokio runtime.
pub async fn in_cluster_client() -> Result<Option<InCluster>, ClientError> {
    in_cluster_client_from(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

fn in_cluster_client_from(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<InCluster>, ClientError> {
    if var("KUBERNETES_SERVICE_HOST").is_none() {
        return Ok(None);
    }
    // kube builds its TLS client on the process's default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::incluster()?;
    // A request that gets no answer must not hold the reporter or the election forever.
    config.read_timeout = Some(Duration::from_secs(15));
    config.reset_reader_on_write = true;
    let namespace = var("POD_NAMESPACE").unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)?;
    Ok(Some(InCluster { client, namespace }))
}
