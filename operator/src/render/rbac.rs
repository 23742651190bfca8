//! The agents' identity: ServiceAccount, Role and RoleBinding `<cluster>-agent`.
//!
//! Least privilege: every rule names the objects it applies to, except `create` on leases,
//! which Kubernetes cannot restrict by name (the name is not known when it authorizes).
//! `list` and `watch` restricted by `resourceNames` are granted only to requests with a
//! matching `metadata.name` field selector, so the agents watch their ConfigMaps and their
//! MailCluster one by one with `fieldSelector=metadata.name=<name>`.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use tern_crds::Assignment;

use super::{Context, names};

const COMPONENT: &str = "agent";

pub(crate) fn service_account(ctx: &Context) -> ServiceAccount {
    ServiceAccount {
        metadata: ctx.meta(names::agent(ctx.name), COMPONENT),
        ..ServiceAccount::default()
    }
}

fn rule(
    api_group: &str,
    resources: &[&str],
    verbs: &[&str],
    resource_names: Option<Vec<String>>,
) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![api_group.to_owned()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names,
        non_resource_urls: None,
    }
}

pub(crate) fn role(ctx: &Context) -> Role {
    let cluster = ctx.name;
    Role {
        metadata: ctx.meta(names::agent(cluster), COMPONENT),
        rules: Some(vec![
            // The configuration and the assignment, read and watched live.
            rule(
                "",
                &["configmaps"],
                &["get", "list", "watch"],
                Some(vec![
                    names::config(cluster),
                    Assignment::config_map_name(cluster),
                ]),
            ),
            // The cluster's spec, and its status, which the elected reporter writes.
            rule(
                tern_crds::GROUP,
                &["mailclusters"],
                &["get", "list", "watch"],
                Some(vec![cluster.to_owned()]),
            ),
            rule(
                tern_crds::GROUP,
                &["mailclusters/status"],
                &["get", "patch", "update"],
                Some(vec![cluster.to_owned()]),
            ),
            // Electing the one status reporter.
            rule("coordination.k8s.io", &["leases"], &["create"], None),
            rule(
                "coordination.k8s.io",
                &["leases"],
                &["get", "update", "patch"],
                Some(vec![names::reporter_lease(cluster)]),
            ),
        ]),
    }
}

pub(crate) fn role_binding(ctx: &Context) -> RoleBinding {
    let name = names::agent(ctx.name);
    RoleBinding {
        metadata: ctx.meta(name.clone(), COMPONENT),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".to_owned(),
            name,
            namespace: Some(ctx.namespace.to_owned()),
        }]),
    }
}

#[cfg(test)]
mod tests {
    use crate::render::testing;

    #[test]
    fn every_rule_but_lease_create_names_its_objects() {
        let prepared = testing::render(&testing::cluster(), &[]);
        let rules = prepared.role.rules.unwrap();
        for rule in &rules {
            assert!(
                !rule
                    .verbs
                    .iter()
                    .any(|v| v == "*" || v == "delete" || v == "deletecollection")
            );
            assert!(
                !rule
                    .resources
                    .iter()
                    .flatten()
                    .any(|r| r == "*" || r == "secrets")
            );
            if rule.verbs != ["create"] {
                assert!(rule.resource_names.is_some(), "{rule:?}");
            }
        }
        let configmaps = rules
            .iter()
            .find(|r| r.resources.as_deref() == Some(&["configmaps".to_owned()]))
            .unwrap();
        assert_eq!(
            configmaps.resource_names.clone().unwrap(),
            ["mail-config", "mail-assignment"]
        );
        let lease = rules
            .iter()
            .find(|r| {
                r.verbs.contains(&"update".to_owned())
                    && r.api_groups.as_deref() == Some(&["coordination.k8s.io".to_owned()])
            })
            .unwrap();
        assert_eq!(lease.resource_names.clone().unwrap(), ["mail-reporter"]);
    }

    #[test]
    fn binding_ties_the_service_account_to_the_role() {
        let prepared = testing::render(&testing::cluster(), &[]);
        assert_eq!(
            prepared.service_account.metadata.name.as_deref(),
            Some("mail-agent")
        );
        let binding = prepared.role_binding;
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.name, "mail-agent");
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(subject.kind, "ServiceAccount");
        assert_eq!(subject.name, "mail-agent");
        assert_eq!(subject.namespace.as_deref(), Some("tern-test"));
    }
}
