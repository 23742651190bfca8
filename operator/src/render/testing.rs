//! Small inputs for the render unit tests (the golden tests use the YAML fixtures under
//! `operator/tests/fixtures/render/`).

use serde_json::json;
use tern_crds::{Assignment, ClusterRole, MailCluster};

use super::{Pool, Prepared, RenderInput, Settings, build};

pub const UID: &str = "0b7c3f5e-8a1d-4a53-9d3e-6f1f2a4b5c6d";

pub fn settings() -> Settings {
    Settings {
        default_image: "ghcr.io/tern-mail/tern:test".into(),
        cluster_domain: "cluster.local".into(),
    }
}

/// `mail` in `tern-test`: every default, domain `example.com`.
pub fn cluster() -> MailCluster {
    serde_json::from_value(json!({
        "apiVersion": "mail.tern.dev/v1alpha1",
        "kind": "MailCluster",
        "metadata": {"name": "mail", "namespace": "tern-test", "uid": UID},
        "spec": {"domains": ["example.com"]}
    }))
    .expect("a valid MailCluster")
}

pub fn role(name: &str, storage: &str, listeners: Option<&[&str]>) -> ClusterRole {
    let mut spec = json!({"clusterRef": {"name": "mail"}, "replicas": 2, "storage": storage});
    if let Some(listeners) = listeners {
        spec["listeners"] = json!(listeners);
    }
    serde_json::from_value(json!({
        "apiVersion": "mail.tern.dev/v1alpha1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "namespace": "tern-test", "uid": "role-uid"},
        "spec": spec
    }))
    .expect("a valid ClusterRole")
}

pub fn assignment() -> Assignment {
    Assignment {
        epoch: 1,
        cluster: "mail".into(),
        default_groups: 16,
        ..Assignment::default()
    }
}

/// Renders `cluster` with its default pool (3 replicas) and `roles` (2 replicas each).
pub fn render(cluster: &MailCluster, roles: &[ClusterRole]) -> Prepared {
    render_with(cluster, roles, &assignment())
}

pub fn render_with(
    cluster: &MailCluster,
    roles: &[ClusterRole],
    assignment: &Assignment,
) -> Prepared {
    let settings = settings();
    let mut pools = vec![Pool {
        name: "default".into(),
        role: None,
        replicas: cluster.spec.replicas,
    }];
    pools.extend(roles.iter().map(|role| Pool {
        name: role.metadata.name.clone().unwrap(),
        role: Some(role),
        replicas: role.spec.replicas,
    }));
    build(&RenderInput {
        cluster,
        pools,
        assignment,
        settings: &settings,
    })
    .expect("renders")
}
