//! Labels, selectors and the owner reference every child object carries.
//!
//! The StatefulSet selector ([`pool_selector`]) is immutable once created, so it holds only
//! labels that never change for a pool. No `app.kubernetes.io/version` label is set: it would
//! change every pod template on an operator upgrade and roll every mail node for nothing.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use tern_crds::MailCluster;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "tern-operator";
/// Names the MailCluster an object belongs to; the operator finds its children by it.
pub const CLUSTER_LABEL: &str = "mail.tern.dev/cluster";
/// The pool (`default` or a ClusterRole name) of a StatefulSet and its pods.
pub const POOL_LABEL: &str = "mail.tern.dev/pool";
/// What a pod's pool holds: `voter`, `learner` or `none`.
pub const STORAGE_LABEL: &str = "mail.tern.dev/storage";
/// `"true"` on pods whose pool serves every enabled listener: the client Service's selector.
pub const CLIENT_LABEL: &str = "mail.tern.dev/client";
/// `"true"` on pods whose pool serves LMTP: the selector of the ClusterIP `<cluster>-lmtp`
/// Service. LMTP delivers into mailboxes without authentication, so it never shares the
/// public client Services and needs a label of its own to select its pods.
pub const LMTP_LABEL: &str = "mail.tern.dev/lmtp";

const NAME: &str = "app.kubernetes.io/name";
const INSTANCE: &str = "app.kubernetes.io/instance";
const COMPONENT: &str = "app.kubernetes.io/component";
const PART_OF: &str = "app.kubernetes.io/part-of";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The labels of every object made for `cluster`; `component` says which part it is.
pub fn common(cluster: &str, component: &str) -> BTreeMap<String, String> {
    [
        (NAME, "tern"),
        (INSTANCE, cluster),
        (COMPONENT, component),
        (PART_OF, "tern"),
        (MANAGED_BY, FIELD_MANAGER),
        (CLUSTER_LABEL, cluster),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Label selector (string form) of every object the operator made for `cluster`.
pub fn selector_for_cluster(cluster: &str) -> String {
    format!("{CLUSTER_LABEL}={cluster}")
}

/// The selector of a pool's StatefulSet. Immutable after creation: never add to it.
pub fn pool_selector(cluster: &str, pool: &str) -> BTreeMap<String, String> {
    [
        (INSTANCE, cluster),
        (CLUSTER_LABEL, cluster),
        (POOL_LABEL, pool),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// [`pool_selector`] as `k=v,k=v` (sorted), for `status.selector` and the scale subresource.
pub fn pool_selector_string(cluster: &str, pool: &str) -> String {
    pool_selector(cluster, pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The controller reference to `cluster` that every child carries, so children are garbage
/// collected with it and the API server blocks the owner's deletion until they are gone.
///
/// [`super::build`] refuses a cluster without name or uid first; called on such a cluster
/// this returns a reference with empty fields, which the API server rejects.
pub fn owner_reference(cluster: &MailCluster) -> OwnerReference {
    let reference = cluster
        .controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: MailCluster::api_version(&()).into_owned(),
            kind: MailCluster::kind(&()).into_owned(),
            name: cluster.metadata.name.clone().unwrap_or_default(),
            uid: cluster.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            ..OwnerReference::default()
        });
    OwnerReference {
        block_owner_deletion: Some(true),
        ..reference
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testing;

    #[test]
    fn selector_string_is_sorted_and_matches_the_map() {
        assert_eq!(
            pool_selector_string("mail", "frontend"),
            "app.kubernetes.io/instance=mail,mail.tern.dev/cluster=mail,mail.tern.dev/pool=frontend"
        );
        assert_eq!(selector_for_cluster("mail"), "mail.tern.dev/cluster=mail");
    }

    #[test]
    fn common_labels_include_the_cluster_label_and_pool_selector_fits_pods() {
        let labels = common("mail", "node");
        assert_eq!(labels[CLUSTER_LABEL], "mail");
        assert_eq!(labels[MANAGED_BY], "tern-operator");
        assert!(!labels.contains_key("app.kubernetes.io/version"));
        for (k, v) in pool_selector("mail", "default") {
            if k != POOL_LABEL {
                assert_eq!(labels[&k], v);
            }
        }
    }

    #[test]
    fn owner_reference_is_a_blocking_controller_reference() {
        let cluster = testing::cluster();
        let owner = owner_reference(&cluster);
        assert_eq!(owner.api_version, "mail.tern.dev/v1alpha1");
        assert_eq!(owner.kind, "MailCluster");
        assert_eq!(owner.name, "mail");
        assert_eq!(owner.uid, testing::UID);
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
    }
}
