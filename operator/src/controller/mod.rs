//! The controllers: MailCluster (which reconciles its ClusterRoles and UserGroups with it) and
//! a small one that tells a ClusterRole or UserGroup when its cluster does not exist.

pub mod apply;
pub mod cluster;
pub mod orphans;
pub mod plan;
pub mod status;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tern_crds::{ClusterRole, MailCluster, UserGroup};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::render::labels;
use crate::settings::Settings;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: labels::FIELD_MANAGER.into(),
            instance: Some(settings.identity.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            failures: Mutex::default(),
        }
    }

    /// Backoff after a transient failure: 1 s, 2 s, 4 s … capped at 5 minutes.
    fn backoff(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = (*n + 1).min(16);
        Duration::from_secs((1u64 << (*n - 1)).min(300))
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

fn key<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Permanent errors wait for a change to the resource; transient ones retry with backoff.
pub fn error_policy<K: kube::Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let kind: &'static str = if K::kind(&()) == "MailCluster" {
        "MailCluster"
    } else {
        "member"
    };
    ctx.metrics.error(kind, error.category());
    if error.is_permanent() {
        tracing::warn!(object = %key(&*obj), category = error.category(), %error, "reconcile failed; waiting for a change");
        Action::await_change()
    } else {
        let delay = ctx.backoff(key(&*obj));
        tracing::warn!(object = %key(&*obj), category = error.category(), %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    }
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The cluster a ClusterRole or UserGroup points at.
fn cluster_of(ns: Option<String>, cluster: &str) -> Option<ObjectRef<MailCluster>> {
    Some(ObjectRef::new(cluster).within(&ns?))
}

/// Runs the controllers until shutdown (SIGTERM/SIGINT) or until `stop` resolves.
pub async fn run(
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = ctx.settings.watch_namespace.clone();
    let ns = ns.as_deref();
    let managed = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        labels::FIELD_MANAGER
    ));
    let stop = futures::FutureExt::shared(Box::pin(stop));

    // Every change to a MailCluster reconciles it, status included: no generation predicate,
    // because the agents' reporter changes only `status.members` and placement must see a
    // dead node at once to move its task shards. The operator's own status apply is a no-op
    // when nothing changed, so it does not feed itself.
    let clusters = Controller::new(api::<MailCluster>(&client, ns), watcher::Config::default())
        .owns(api::<StatefulSet>(&client, ns), managed.clone())
        .owns(api::<Service>(&client, ns), managed.clone())
        .owns(api::<ConfigMap>(&client, ns), managed.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), managed)
        .watches(
            api::<ClusterRole>(&client, ns),
            watcher::Config::default(),
            |r: ClusterRole| cluster_of(r.namespace(), &r.spec.cluster_ref.name),
        )
        .watches(
            api::<UserGroup>(&client, ns),
            watcher::Config::default(),
            |g: UserGroup| cluster_of(g.namespace(), &g.spec.cluster_ref.name),
        )
        .graceful_shutdown_on(stop.clone())
        .run(
            |obj, ctx: Arc<Context>| async move {
                let k = key(&*obj);
                let out = cluster::reconcile(obj, ctx.clone()).await;
                if out.is_ok() {
                    ctx.succeeded(&k);
                }
                out
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "MailCluster controller event");
            }
        });

    let roles = Controller::new(api::<ClusterRole>(&client, ns), watcher::Config::default())
        .graceful_shutdown_on(stop.clone())
        .run(orphans::reconcile::<ClusterRole>, error_policy, ctx.clone())
        .for_each(|_| async {});
    let groups = Controller::new(api::<UserGroup>(&client, ns), watcher::Config::default())
        .graceful_shutdown_on(stop)
        .run(orphans::reconcile::<UserGroup>, error_policy, ctx.clone())
        .for_each(|_| async {});
    futures::join!(clusters, roles, groups);
}
