//! The I/O end of the pipeline: server-side apply of every prepared child, creation of
//! generated Secrets (once, never rotated), and deletion of children no longer wanted.

use std::collections::BTreeSet;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_crds::MailCluster;

use crate::error::{Error, Result};
use crate::render::{self, Prepared, SecretKind, labels};

/// What the API server holds after apply. Status is computed only from this.
pub struct Applied {
    pub statefulsets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub config_maps: Vec<ConfigMap>,
    pub pdbs: Vec<PodDisruptionBudget>,
}

/// Server-side apply with the operator's one field manager. `force` takes over fields another
/// manager (a person with kubectl) set on objects the operator owns.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(labels::FIELD_MANAGER).force()
}

async fn apply_one<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .patch(&name, &apply_params(), &Patch::Apply(obj))
        .await?)
}

async fn apply_all<K>(client: &Client, ns: &str, objs: Vec<K>) -> Result<Vec<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let mut out = Vec::with_capacity(objs.len());
    for obj in &objs {
        out.push(apply_one(client, ns, obj).await?);
    }
    Ok(out)
}

/// Applies every prepared child. RBAC and configuration go first so pods never start without
/// their service account, config or assignment.
pub async fn apply(client: &Client, ns: &str, prepared: Prepared) -> Result<Applied> {
    // Destructured without `..`: a new kind of child cannot be forgotten here.
    let Prepared {
        statefulsets,
        services,
        config_maps,
        pdbs,
        service_account,
        role,
        role_binding,
    } = prepared;
    apply_one::<ServiceAccount>(client, ns, &service_account).await?;
    apply_one::<Role>(client, ns, &role).await?;
    apply_one::<RoleBinding>(client, ns, &role_binding).await?;
    let config_maps = apply_all(client, ns, config_maps).await?;
    let services = apply_all(client, ns, services).await?;
    let statefulsets = apply_all(client, ns, statefulsets).await?;
    let pdbs = apply_all(client, ns, pdbs).await?;
    Ok(Applied {
        statefulsets,
        services,
        config_maps,
        pdbs,
    })
}

/// Creates the generated Secrets that do not exist yet and returns their names. Existing
/// ones are never touched: rotating a CA or gossip key silently would cut nodes off.
pub async fn create_missing_secrets(client: &Client, cluster: &MailCluster) -> Result<Vec<String>> {
    let ns = cluster
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut wanted = render::generated_secrets(cluster);
    // The agent certificate is signed by the CA, so the CA comes first.
    wanted.sort_by_key(|(_, kind)| !matches!(kind, SecretKind::ClusterCa));
    let mut created = vec![];
    let mut ca: Option<Secret> = None;
    for (name, kind) in wanted {
        let existing = api.get_opt(&name).await?;
        if let Some(secret) = existing {
            if matches!(kind, SecretKind::ClusterCa) {
                ca = Some(secret);
            }
            continue;
        }
        let secret = render::generate_secret(cluster, kind, ca.as_ref())?;
        match api.create(&PostParams::default(), &secret).await {
            Ok(s) => {
                created.push(name);
                if matches!(kind, SecretKind::ClusterCa) {
                    ca = Some(s);
                }
            }
            // Another writer created it between our read and our create: theirs stands.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                if matches!(kind, SecretKind::ClusterCa) {
                    ca = api.get_opt(&name).await?;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(created)
}

fn owned_by(obj: &impl Resource, cluster: &MailCluster) -> bool {
    let uid = cluster.meta().uid.as_deref();
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

async fn prune_kind<K>(
    client: &Client,
    ns: &str,
    cluster: &MailCluster,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = cluster.name_any();
    let selector = format!(
        "{}={name},app.kubernetes.io/managed-by={}",
        labels::CLUSTER_LABEL,
        labels::FIELD_MANAGER
    );
    let mut deleted = vec![];
    for obj in api.list(&ListParams::default().labels(&selector)).await? {
        let obj_name = obj.name_any();
        if keep.contains(&obj_name) || !owned_by(&obj, cluster) {
            continue;
        }
        match api.delete(&obj_name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(format!("{}/{obj_name}", K::kind(&()))),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

fn names<K: Resource>(objs: &[K]) -> BTreeSet<String> {
    objs.iter().filter_map(|o| o.meta().name.clone()).collect()
}

/// Deletes children this cluster owns that the latest build no longer contains (a removed
/// ClusterRole's StatefulSet and Service, say). Found by label, confirmed by owner.
pub async fn prune(
    client: &Client,
    ns: &str,
    cluster: &MailCluster,
    applied: &Applied,
) -> Result<Vec<String>> {
    let mut deleted =
        prune_kind::<StatefulSet>(client, ns, cluster, &names(&applied.statefulsets)).await?;
    deleted.extend(prune_kind::<Service>(client, ns, cluster, &names(&applied.services)).await?);
    deleted
        .extend(prune_kind::<ConfigMap>(client, ns, cluster, &names(&applied.config_maps)).await?);
    deleted.extend(
        prune_kind::<PodDisruptionBudget>(client, ns, cluster, &names(&applied.pdbs)).await?,
    );
    Ok(deleted)
}
