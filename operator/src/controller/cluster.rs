//! The MailCluster reconcile: fetch → validate → place → build → apply → status.
//!
//! Only the first and the last two steps do I/O. ClusterRoles and UserGroups are reconciled
//! here too, as part of their cluster: placement is cluster-wide, so is their status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, Event as Finalizing};
use kube::{Resource, ResourceExt};
use tern_crds::condition::reason;
use tern_crds::{Assignment, ClusterRole, MailCluster, UserGroup};
use tracing::{info, instrument};

use super::Context;
use super::apply::{self, apply_params};
use super::plan::{self, PoolPlan};
use super::status::{self, PoolObservation, Problem};
use crate::error::{Error, Result};
use crate::placement;
use crate::render::{self, Pool, RenderInput, labels};

/// Finalizer that lets the operator honour `deletionPolicy` before the cluster goes.
pub const FINALIZER: &str = "mail.tern.dev/cleanup";

/// How often a healthy cluster is looked at again even without a watch event.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a cluster that is progressing (rolling, scaling, draining) is looked at again.
const PROGRESS_RECHECK: Duration = Duration::from_secs(10);

/// What the API server says about a cluster and its kin, read once per reconcile.
pub struct Observed {
    pub roles: Vec<ClusterRole>,
    pub groups: Vec<UserGroup>,
    pub statefulsets: Vec<StatefulSet>,
    pub previous: Option<Assignment>,
    /// Pod name → topology zone of the node it runs on.
    pub zones: BTreeMap<String, String>,
    /// The Lease of the agents' status reporter, when they have created it.
    pub reporter_lease: Option<Lease>,
}

async fn observe(ctx: &Context, cluster: &MailCluster, ns: &str) -> Result<Observed> {
    let name = cluster.name_any();
    let client = &ctx.client;
    let belongs = |r: &str| r == name;
    let roles: Vec<ClusterRole> = Api::<ClusterRole>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|r| belongs(&r.spec.cluster_ref.name) && r.meta().deletion_timestamp.is_none())
        .collect();
    let groups: Vec<UserGroup> = Api::<UserGroup>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|g| belongs(&g.spec.cluster_ref.name) && g.meta().deletion_timestamp.is_none())
        .collect();
    let selector = format!("{}={name}", labels::CLUSTER_LABEL);
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let cm_name = Assignment::config_map_name(&name);
    let previous = match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&cm_name)
        .await?
    {
        Some(cm) => match cm
            .data
            .as_ref()
            .and_then(|d| d.get(Assignment::CONFIG_MAP_KEY))
        {
            Some(json) => {
                Some(
                    Assignment::from_json(json).map_err(|source| Error::Assignment {
                        name: cm_name.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        },
        None => None,
    };
    let zones = observe_zones(ctx, ns, &selector).await?;
    let reporter_lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(&render::names::reporter_lease(&name))
        .await?;
    Ok(Observed {
        roles,
        groups,
        statefulsets,
        previous,
        zones,
        reporter_lease,
    })
}

/// Zones of the nodes the cluster's pods run on, so shard replicas can spread over them.
async fn observe_zones(
    ctx: &Context,
    ns: &str,
    selector: &str,
) -> Result<BTreeMap<String, String>> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut node_zone: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut zones = BTreeMap::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if !node_zone.contains_key(&node) {
            let zone = nodes
                .get_opt(&node)
                .await?
                .and_then(|n| n.labels().get("topology.kubernetes.io/zone").cloned());
            node_zone.insert(node.clone(), zone);
        }
        if let Some(Some(zone)) = node_zone.get(&node) {
            zones.insert(pod.name_any(), zone.clone());
        }
    }
    Ok(zones)
}

/// Entry point from the controller: the finalizer decides between apply and cleanup.
pub async fn reconcile(cluster: Arc<MailCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("MailCluster");
    let ns = cluster
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<MailCluster> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer::finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            Finalizing::Apply(c) => apply_cluster(&c, &ctx, &ns).await,
            Finalizing::Cleanup(c) => cleanup_cluster(&c, &ctx, &ns).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

#[instrument(skip_all, fields(cluster = %cluster.name_any(), namespace = %ns))]
async fn apply_cluster(cluster: &MailCluster, ctx: &Context, ns: &str) -> Result<Action> {
    let name = cluster.name_any();
    let observed = observe(ctx, cluster, ns).await?;
    let pools = plan::pools(cluster, &observed.roles, &observed.statefulsets);

    // Validate and place (pure). A spec that cannot be served is reported, then we wait for
    // a change; what is already running keeps running on the last good assignment.
    let placed = plan::validate(cluster, &pools)
        .map_err(|m| Problem {
            reason: reason::INSUFFICIENT_VOTERS,
            message: m,
        })
        .and_then(|()| {
            let input = plan::placement_input(
                cluster,
                &pools,
                &observed.groups,
                &observed.zones,
                observed.previous.as_ref(),
            );
            placement::place(observed.previous.as_ref(), &input)
                .map(|a| (a, input))
                .map_err(|e| Problem {
                    reason: reason::INSUFFICIENT_VOTERS,
                    message: e.to_string(),
                })
        });
    let (assignment, input) = match placed {
        Ok(ok) => ok,
        Err(problem) => return report_problem(cluster, ctx, ns, &observed, &pools, problem).await,
    };
    let drained = placement::drained(&assignment, &input);
    let replicas: Vec<i32> = pools
        .iter()
        .map(|p| plan::replicas_to_set(&name, p, &drained))
        .collect();

    // Build every child (pure).
    let render_pools = pools
        .iter()
        .zip(&replicas)
        .map(|(p, &r)| Pool {
            name: p.name.clone(),
            role: p.role,
            replicas: r,
        })
        .collect();
    let built = render::build(&RenderInput {
        cluster,
        pools: render_pools,
        assignment: &assignment,
        settings: &ctx.settings.render,
    });
    let prepared = match built {
        Ok(p) => p,
        // The spec names something that cannot be built (a listener on the gossip port, say).
        Err(e) if e.is_permanent() => {
            let problem = Problem {
                reason: reason::INVALID_SPEC,
                message: e.to_string(),
            };
            return report_problem(cluster, ctx, ns, &observed, &pools, problem).await;
        }
        Err(e) => return Err(e.into()),
    };

    // Apply.
    for secret in apply::create_missing_secrets(&ctx.client, cluster).await? {
        ctx.event(
            cluster,
            EventType::Normal,
            "SecretGenerated",
            "Create",
            format!("generated Secret {secret}"),
        )
        .await;
    }
    let applied = match apply::apply(&ctx.client, ns, prepared).await {
        Ok(a) => a,
        // The API server refused an object (an immutable StatefulSet field, an admission
        // policy): retrying the same object cannot help, so say why and wait for a change.
        Err(e) if e.is_permanent() => {
            let problem = Problem {
                reason: reason::APPLY_REFUSED,
                message: e.to_string(),
            };
            return report_problem(cluster, ctx, ns, &observed, &pools, problem).await;
        }
        Err(e) => return Err(e),
    };
    let published = observed.previous.as_ref().map(|a| a.epoch);
    if published != Some(assignment.epoch) {
        info!(epoch = assignment.epoch, "published assignment");
        ctx.event(
            cluster,
            EventType::Normal,
            "AssignmentPublished",
            "Publish",
            format!("assignment epoch {} published", assignment.epoch),
        )
        .await;
    }
    ctx.metrics
        .assignment_epoch
        .get_or_create(&crate::metrics::ClusterLabels {
            namespace: ns.into(),
            cluster: name.clone(),
        })
        .set(assignment.epoch as i64);
    for deleted in apply::prune(&ctx.client, ns, cluster, &applied).await? {
        ctx.event(
            cluster,
            EventType::Normal,
            "Pruned",
            "Delete",
            format!("deleted {deleted}, no longer wanted"),
        )
        .await;
    }
    for (pool, &set) in pools.iter().zip(&replicas) {
        if set != pool.current && pool.current != 0 {
            ctx.event(
                cluster,
                EventType::Normal,
                "Scaled",
                "Scale",
                format!("pool {} scaled from {} to {set}", pool.name, pool.current),
            )
            .await;
        }
    }

    // Status, computed only from what was applied.
    let observations = observations(&name, &pools, &replicas, &applied.statefulsets);
    let (progressing, reporter_recheck) = write_statuses(
        cluster,
        ctx,
        ns,
        &observed,
        &observations,
        Some(&assignment),
        None,
    )
    .await?;
    let next = if progressing {
        PROGRESS_RECHECK
    } else {
        RESYNC
    };
    // A reporter that falls silent changes no object; look again when it would count as
    // silent, so `Degraded` says so within seconds rather than at the next resync.
    Ok(Action::requeue(
        reporter_recheck.map_or(next, |r| next.min(r.max(PROGRESS_RECHECK))),
    ))
}

fn observations(
    cluster: &str,
    pools: &[PoolPlan],
    replicas: &[i32],
    statefulsets: &[StatefulSet],
) -> Vec<PoolObservation> {
    pools
        .iter()
        .zip(replicas)
        .map(|(p, &set)| {
            let sts_name = plan::statefulset_name(cluster, &p.name);
            PoolObservation {
                name: p.name.clone(),
                desired: p.desired,
                leaving: (set - p.desired).max(0),
                statefulset: statefulsets
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(&sts_name))
                    .cloned(),
                selector: labels::pool_selector_string(cluster, &p.name),
            }
        })
        .collect()
}

/// Writes the status of the cluster, its ClusterRoles and its UserGroups. Returns whether
/// any pool is still progressing.
async fn write_statuses(
    cluster: &MailCluster,
    ctx: &Context,
    ns: &str,
    observed: &Observed,
    pools: &[PoolObservation],
    assignment: Option<&Assignment>,
    problem: Option<&Problem>,
) -> Result<(bool, Option<Duration>)> {
    let now = jiff::Timestamp::now();
    let name = cluster.name_any();
    let (reporter, reporter_recheck) = status::reporter(
        observed
            .reporter_lease
            .as_ref()
            .and_then(|l| l.spec.as_ref()),
        now,
    );
    let status = status::cluster_status(cluster, pools, assignment, problem, reporter, now);
    let progressing =
        tern_crds::condition::is_true(&status.conditions, tern_crds::condition::PROGRESSING);
    Api::<MailCluster>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &name,
            &apply_params(),
            &Patch::Apply(status::status_patch::<MailCluster>(&name, &status)),
        )
        .await?;
    let roles: Api<ClusterRole> = Api::namespaced(ctx.client.clone(), ns);
    for role in &observed.roles {
        let role_name = role.name_any();
        let Some(pool) = pools.iter().find(|p| p.name == role_name) else {
            continue;
        };
        let s = status::role_status(role, pool, assignment, problem, now);
        roles
            .patch_status(
                &role_name,
                &apply_params(),
                &Patch::Apply(status::status_patch::<ClusterRole>(&role_name, &s)),
            )
            .await?;
    }
    let groups: Api<UserGroup> = Api::namespaced(ctx.client.clone(), ns);
    for group in &observed.groups {
        let group_name = group.name_any();
        let s = status::group_status(group, assignment, cluster.spec.shards.max(1) as u32, now);
        groups
            .patch_status(
                &group_name,
                &apply_params(),
                &Patch::Apply(status::status_patch::<UserGroup>(&group_name, &s)),
            )
            .await?;
    }
    Ok((progressing, reporter_recheck))
}

/// A spec that cannot be placed: say why in every status, emit a warning, and wait for a
/// change. Nothing already running is touched.
async fn report_problem(
    cluster: &MailCluster,
    ctx: &Context,
    ns: &str,
    observed: &Observed,
    pools: &[PoolPlan<'_>],
    problem: Problem,
) -> Result<Action> {
    let name = cluster.name_any();
    let current: Vec<i32> = pools.iter().map(|p| p.current).collect();
    let observations = observations(&name, pools, &current, &observed.statefulsets);
    ctx.metrics.error("MailCluster", "invalid_spec");
    ctx.event(
        cluster,
        EventType::Warning,
        problem.reason,
        "Validate",
        problem.message.clone(),
    )
    .await;
    write_statuses(
        cluster,
        ctx,
        ns,
        observed,
        &observations,
        observed.previous.as_ref(),
        Some(&problem),
    )
    .await?;
    Ok(Action::await_change())
}

/// The cluster is being deleted: honour `deletionPolicy`. Children go by garbage collection
/// (they carry the cluster's ownerReference); volumes only when the policy says so.
#[instrument(skip_all, fields(cluster = %cluster.name_any(), namespace = %ns))]
async fn cleanup_cluster(cluster: &MailCluster, ctx: &Context, ns: &str) -> Result<Action> {
    use tern_crds::common::DeletionPolicy;
    let name = cluster.name_any();
    match cluster.spec.deletion_policy {
        DeletionPolicy::Retain => {
            info!("deletionPolicy Retain: keeping the cluster's volumes");
            ctx.event(
                cluster,
                EventType::Normal,
                "VolumesRetained",
                "Delete",
                "deletionPolicy is Retain: volumes and mail are kept".into(),
            )
            .await;
        }
        DeletionPolicy::Delete => {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
            let selector = format!("{}={name}", labels::CLUSTER_LABEL);
            let mut deleted = 0;
            for pvc in pvcs.list(&ListParams::default().labels(&selector)).await? {
                match pvcs
                    .delete(&pvc.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            info!(
                deleted,
                "deletionPolicy Delete: deleted the cluster's volumes"
            );
            ctx.event(
                cluster,
                EventType::Normal,
                "VolumesDeleted",
                "Delete",
                format!("deletionPolicy is Delete: deleted {deleted} volume claim(s)"),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

impl Context {
    /// Publishes a Kubernetes Event about the cluster; failing to do so is logged, not fatal.
    pub async fn event(
        &self,
        cluster: &MailCluster,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &cluster.object_ref(&()))
            .await
        {
            tracing::warn!(error = %e, reason, "publishing an event");
        }
    }
}
