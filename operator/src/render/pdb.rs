//! `<cluster>-voters`: the PodDisruptionBudget that keeps every shard's quorum through
//! voluntary evictions (node drains, cluster autoscaler).

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tern_crds::cluster_role::StorageRole;

use super::{Context, labels, names};

/// Voters that may be evicted at once: a shard of `replication_factor` voters keeps its
/// majority while at most `(rf - 1) / 2` are down. Since any voter pod may hold a replica of
/// any shard, the budget covers all voter pods of all pools together.
///
/// With one voter per shard (rf 1) this is 0: every eviction would make a shard unavailable,
/// so drains block until someone deletes the pod by hand (or raises the replication factor).
pub fn max_unavailable_voters(replication_factor: i32) -> i32 {
    ((replication_factor - 1) / 2).max(0)
}

pub(crate) fn voters(ctx: &Context) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(names::voters_pdb(ctx.name), "voters"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable_voters(
                ctx.spec.replication_factor,
            ))),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (labels::CLUSTER_LABEL.to_owned(), ctx.name.to_owned()),
                    (
                        labels::STORAGE_LABEL.to_owned(),
                        StorageRole::Voter.as_str().to_owned(),
                    ),
                ])),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testing;

    #[test]
    fn max_unavailable_keeps_a_majority() {
        assert_eq!(max_unavailable_voters(1), 0);
        assert_eq!(max_unavailable_voters(3), 1);
        assert_eq!(max_unavailable_voters(5), 2);
        assert_eq!(max_unavailable_voters(7), 3);
        assert_eq!(max_unavailable_voters(0), 0);
    }

    #[test]
    fn pdb_selects_voters_of_the_cluster() {
        for (rf, expected) in [(1, 0), (3, 1), (5, 2)] {
            let mut cluster = testing::cluster();
            cluster.spec.replication_factor = rf;
            cluster.spec.replicas = 5;
            let prepared = testing::render(&cluster, &[]);
            let pdb = &prepared.pdbs[0];
            assert_eq!(pdb.metadata.name.as_deref(), Some("mail-voters"));
            let spec = pdb.spec.as_ref().unwrap();
            assert_eq!(
                spec.max_unavailable,
                Some(IntOrString::Int(expected)),
                "rf {rf}"
            );
            assert!(spec.min_available.is_none());
            let selector = spec.selector.clone().unwrap().match_labels.unwrap();
            assert_eq!(selector["mail.tern.dev/storage"], "voter");
            assert_eq!(selector["mail.tern.dev/cluster"], "mail");
        }
    }
}
