//! ClusterRoles and UserGroups are reconciled with their MailCluster. This controller covers
//! the one case that reconcile cannot see: a ClusterRole or UserGroup whose cluster does not
//! exist, which must say so in its status rather than sit silent.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_crds::condition::{self, READY, reason};
use tern_crds::{ClusterRole, MailCluster, UserGroup};

use super::Context;
use super::apply::apply_params;
use super::status::status_patch;
use crate::error::{Error, Result};

/// A resource that belongs to a MailCluster through `spec.clusterRef`.
pub trait Member:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
{
    fn cluster_name(&self) -> &str;
    fn conditions(&self) -> &[Condition];
}

impl Member for ClusterRole {
    fn cluster_name(&self) -> &str {
        &self.spec.cluster_ref.name
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl Member for UserGroup {
    fn cluster_name(&self) -> &str {
        &self.spec.cluster_ref.name
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OrphanStatus {
    observed_generation: Option<i64>,
    conditions: Vec<Condition>,
}

/// Reports `Ready=False, reason ClusterNotFound` when the referenced MailCluster is missing.
pub async fn reconcile<K: Member>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("member");
    let ns = obj
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let cluster = obj.cluster_name();
    if Api::<MailCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(cluster)
        .await?
        .is_some()
    {
        // The cluster's reconcile owns this resource's status.
        return Ok(Action::await_change());
    }
    let generation = obj.meta().generation;
    let missing = condition::new(
        READY,
        false,
        reason::CLUSTER_NOT_FOUND,
        format!(
            "MailCluster {cluster:?} does not exist in namespace {ns:?}; this {} waits for it",
            K::kind(&())
        ),
        generation,
    );
    let status = OrphanStatus {
        observed_generation: generation,
        conditions: condition::merge(obj.conditions(), vec![missing], jiff::Timestamp::now()),
    };
    let name = obj.name_any();
    Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &name,
            &apply_params(),
            &Patch::Apply(status_patch::<K>(&name, &status)),
        )
        .await?;
    // The MailCluster's creation reaches its own reconcile, which rewrites this status.
    Ok(Action::requeue(Duration::from_secs(300)))
}
