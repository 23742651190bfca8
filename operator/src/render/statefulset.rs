//! One StatefulSet per pool: `<cluster>-<pool>`, pods `<cluster>-<pool>-<ordinal>`.
//!
//! Secrets reach the agent only as files (`*_FILE` variables name them), never as
//! environment values, which leak through `kubectl describe`, crash dumps and child
//! processes. The pod runs non-root with a read-only root file system and no capabilities.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Sysctl, Volume,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tern_crds::Assignment;
use tern_crds::common::{DeletionPolicy, Protocol, SecretKeyRef};

use super::config_map::CONFIG_KEY;
use super::{Context, GOSSIP_PORT, PoolView, RPC_PORT, Settings, labels, names};

/// Pod template annotation holding [`super::config_map::config_hash`].
pub const CONFIG_HASH_ANNOTATION: &str = "mail.tern.dev/config-hash";
/// The agent container's name.
pub const CONTAINER: &str = "agent";
/// Where the image puts the agent binary (see the Dockerfile).
pub const AGENT_BINARY: &str = "/usr/local/bin/tern-agent";
/// The (non-root) user and group the agent runs as; 65532 is distroless' `nonroot`.
pub const RUN_AS: i64 = 65532;
/// Secret files are readable by the owner and the pod's fsGroup only.
pub const SECRET_MODE: i32 = 0o440;

/// Where each volume is mounted in the agent container.
pub mod paths {
    pub const CONFIG_DIR: &str = "/etc/tern/config";
    pub const ASSIGNMENT_DIR: &str = "/etc/tern/assignment";
    pub const DATA_DIR: &str = "/var/lib/tern";
    pub const TMP_DIR: &str = "/tmp";
    pub const TLS_DIR: &str = "/etc/tern/tls";
    pub const AGENT_TLS_DIR: &str = "/etc/tern/agent-tls";
    pub const GOSSIP_DIR: &str = "/etc/tern/gossip";
    pub const ADMIN_DIR: &str = "/etc/tern/admin";
    pub const RELAY_DIR: &str = "/etc/tern/relay";
}

pub const LIVENESS_PATH: &str = "/healthz/live";
pub const READINESS_PATH: &str = "/healthz/ready";

/// A volume and where the agent container sees it.
struct Mount {
    volume: Volume,
    path: &'static str,
    read_only: bool,
}

fn secret_volume(name: &str, secret: String, items: &[(&str, &str)], path: &'static str) -> Mount {
    Mount {
        volume: Volume {
            name: name.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                default_mode: Some(SECRET_MODE),
                items: Some(
                    items
                        .iter()
                        .map(|(key, path)| KeyToPath {
                            key: (*key).to_owned(),
                            path: (*path).to_owned(),
                            mode: None,
                        })
                        .collect(),
                ),
                optional: None,
            }),
            ..Volume::default()
        },
        path,
        read_only: true,
    }
}

fn config_map_volume(name: &str, config_map: String, path: &'static str) -> Mount {
    Mount {
        volume: Volume {
            name: name.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map,
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        path,
        read_only: true,
    }
}

fn empty_dir(name: &str, path: &'static str) -> Mount {
    Mount {
        volume: Volume {
            name: name.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        path,
        read_only: false,
    }
}

/// A user-named Secret key, or the key of the Secret the operator generates.
fn key_ref(
    given: Option<&SecretKeyRef>,
    generated_name: String,
    generated_key: &str,
) -> (String, String) {
    match given {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (generated_name, generated_key.to_owned()),
    }
}

fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn port(name: &str, port: i32, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

/// The pod's labels: the common ones, the pool's selector, its storage, the client Service's
/// label when it serves every enabled public listener and the `<cluster>-lmtp` Service's label when
/// it serves LMTP.
fn pod_labels(ctx: &Context, pool: &PoolView) -> BTreeMap<String, String> {
    let mut labels = labels::common(ctx.name, "node");
    labels.extend(labels::pool_selector(ctx.name, pool.name));
    labels.insert(
        labels::STORAGE_LABEL.to_owned(),
        pool.storage.as_str().to_owned(),
    );
    if pool.client {
        labels.insert(labels::CLIENT_LABEL.to_owned(), "true".to_owned());
    }
    if pool.serves(Protocol::Lmtp) {
        labels.insert(labels::LMTP_LABEL.to_owned(), "true".to_owned());
    }
    labels
}

/// Every volume except `data`, with the environment variables naming the files in them.
fn mounts_and_file_env(ctx: &Context) -> (Vec<Mount>, Vec<EnvVar>) {
    let spec = ctx.spec;
    let cluster = ctx.name;
    let file = |dir: &str, name: &str| format!("{dir}/{name}");

    let tls_secret = spec
        .tls
        .as_ref()
        .and_then(|t| t.secret_name.clone())
        .unwrap_or_else(|| names::tls_secret(cluster));
    let (gossip_secret, gossip_key) = key_ref(
        spec.gossip.as_ref().and_then(|g| g.key_secret_ref.as_ref()),
        names::gossip_secret(cluster),
        super::secrets::GOSSIP_KEY,
    );
    let (admin_secret, admin_key) = key_ref(
        spec.admin_secret_ref.as_ref(),
        names::admin_secret(cluster),
        super::secrets::ADMIN_PASSWORD_KEY,
    );

    let mut mounts = vec![
        config_map_volume("config", names::config(cluster), paths::CONFIG_DIR),
        config_map_volume(
            "assignment",
            Assignment::config_map_name(cluster),
            paths::ASSIGNMENT_DIR,
        ),
        empty_dir("tmp", paths::TMP_DIR),
        secret_volume(
            "gossip",
            gossip_secret,
            &[(&gossip_key, "key")],
            paths::GOSSIP_DIR,
        ),
        secret_volume(
            "tls",
            tls_secret,
            &[("tls.crt", "tls.crt"), ("tls.key", "tls.key")],
            paths::TLS_DIR,
        ),
        // The agent certificate's Secret carries the CA certificate; the CA key stays in
        // `<cluster>-ca`, which no pod mounts.
        secret_volume(
            "agent-tls",
            names::agent_tls_secret(cluster),
            &[
                ("tls.crt", "tls.crt"),
                ("tls.key", "tls.key"),
                ("ca.crt", "ca.crt"),
            ],
            paths::AGENT_TLS_DIR,
        ),
        secret_volume(
            "admin",
            admin_secret,
            &[(&admin_key, "password")],
            paths::ADMIN_DIR,
        ),
    ];
    let mut env = vec![
        env_var("TERN_CONFIG_FILE", file(paths::CONFIG_DIR, CONFIG_KEY)),
        env_var(
            "TERN_ASSIGNMENT_FILE",
            file(paths::ASSIGNMENT_DIR, Assignment::CONFIG_MAP_KEY),
        ),
        env_var("TERN_DATA_DIR", paths::DATA_DIR),
        env_var("TERN_GOSSIP_KEY_FILE", file(paths::GOSSIP_DIR, "key")),
        env_var("TERN_TLS_CERT_FILE", file(paths::TLS_DIR, "tls.crt")),
        env_var("TERN_TLS_KEY_FILE", file(paths::TLS_DIR, "tls.key")),
        env_var("TERN_CLUSTER_CA_FILE", file(paths::AGENT_TLS_DIR, "ca.crt")),
        env_var(
            "TERN_AGENT_CERT_FILE",
            file(paths::AGENT_TLS_DIR, "tls.crt"),
        ),
        env_var("TERN_AGENT_KEY_FILE", file(paths::AGENT_TLS_DIR, "tls.key")),
        env_var(
            "TERN_ADMIN_PASSWORD_FILE",
            file(paths::ADMIN_DIR, "password"),
        ),
    ];
    if let Some(secret) = spec
        .relay
        .as_ref()
        .and_then(|r| r.credentials_secret_name.clone())
    {
        mounts.push(secret_volume(
            "relay",
            secret,
            &[("username", "username"), ("password", "password")],
            paths::RELAY_DIR,
        ));
        env.push(env_var("TERN_RELAY_CREDENTIALS_DIR", paths::RELAY_DIR));
    }
    (mounts, env)
}

/// Prefer spreading a pool's pods over nodes, so one node failure takes out at most one
/// replica of a shard wherever possible.
fn default_affinity(ctx: &Context, pool: &PoolView) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(labels::pool_selector(ctx.name, pool.name)),
                            match_expressions: None,
                        }),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn data_claim(ctx: &Context, pool: &PoolView) -> PersistentVolumeClaim {
    let storage = &ctx.spec.storage;
    // Labels only: the claim template is immutable, so nothing here may ever change.
    let mut labels = labels::common(ctx.name, "data");
    labels.insert(labels::POOL_LABEL.to_owned(), pool.name.to_owned());
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(storage.size.clone()),
                )])),
                limits: None,
            }),
            storage_class_name: storage.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// The StatefulSet of one pool.
pub(crate) fn build(
    ctx: &Context,
    pool: &PoolView,
    settings: &Settings,
    config_hash: &str,
) -> StatefulSet {
    let spec = ctx.spec;
    let scheduling = pool.scheduling;
    let health = ctx.health_port();

    let (mut mounts, file_env) = mounts_and_file_env(ctx);
    let claims = if pool.storage.holds_data() {
        Some(vec![data_claim(ctx, pool)])
    } else {
        mounts.push(empty_dir("data", paths::DATA_DIR));
        None
    };
    // The claim's volume comes from the template; it still needs a mount.
    let mut volume_mounts: Vec<VolumeMount> = Vec::new();
    if claims.is_some() {
        volume_mounts.push(VolumeMount {
            name: "data".to_owned(),
            mount_path: paths::DATA_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    volume_mounts.extend(mounts.iter().map(|m| VolumeMount {
        name: m.volume.name.clone(),
        mount_path: m.path.to_owned(),
        read_only: m.read_only.then_some(true),
        ..VolumeMount::default()
    }));
    volume_mounts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut volumes: Vec<Volume> = mounts.into_iter().map(|m| m.volume).collect();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));

    let mut env = vec![
        env_var("TERN_CLUSTER", ctx.name),
        env_var("TERN_ROLE", pool.name),
        env_var("TERN_STORAGE", pool.storage.as_str()),
        env_var(
            "TERN_LISTENERS",
            pool.served
                .iter()
                .map(|(p, _)| p.name())
                .collect::<Vec<_>>()
                .join(","),
        ),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
    ];
    env.extend(file_env);

    let mut ports: Vec<ContainerPort> = pool
        .served
        .iter()
        .map(|(p, n)| port(p.name(), *n, "TCP"))
        .collect();
    ports.extend([
        port("gossip", GOSSIP_PORT, "UDP"),
        port("gossip-tcp", GOSSIP_PORT, "TCP"),
        port("rpc", RPC_PORT, "TCP"),
    ]);

    // Lets the non-root agent bind 25, 143, 443, ... without NET_BIND_SERVICE; a namespaced,
    // "safe" sysctl since Kubernetes 1.22.
    let sysctls = pool.bound_ports(ctx).iter().any(|p| *p < 1024).then(|| {
        vec![Sysctl {
            name: "net.ipv4.ip_unprivileged_port_start".to_owned(),
            value: "0".to_owned(),
        }]
    });

    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        // The image holds both binaries and sets no entrypoint, so the command is explicit.
        command: Some(vec![AGENT_BINARY.to_owned()]),
        args: Some(vec!["run".to_owned()]),
        ports: Some(ports),
        env: Some(env),
        volume_mounts: Some(volume_mounts),
        resources: scheduling.resources.clone(),
        liveness_probe: Some(http_probe(LIVENESS_PATH, health, 10, 3)),
        readiness_probe: Some(http_probe(READINESS_PATH, health, 5, 3)),
        // Opening a large store and replaying the Raft log may take minutes.
        startup_probe: Some(http_probe(LIVENESS_PATH, health, 5, 30)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let mut annotations = BTreeMap::new();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), config_hash.to_owned());

    let pod = PodSpec {
        service_account_name: Some(names::agent(ctx.name)),
        // The agent reads its ConfigMaps and writes status through the API.
        automount_service_account_token: Some(true),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(60),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            fs_group_change_policy: Some("OnRootMismatch".to_owned()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            sysctls,
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: scheduling.node_selector.clone(),
        tolerations: scheduling.tolerations.clone(),
        affinity: Some(
            scheduling
                .affinity
                .clone()
                .unwrap_or_else(|| default_affinity(ctx, pool)),
        ),
        topology_spread_constraints: scheduling.topology_spread_constraints.clone(),
        ..PodSpec::default()
    };

    let mut meta = ctx.meta(names::pool(ctx.name, pool.name), "node");
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(labels::POOL_LABEL.to_owned(), pool.name.to_owned());
    }

    StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(pool.replicas),
            selector: LabelSelector {
                match_labels: Some(labels::pool_selector(ctx.name, pool.name)),
                match_expressions: None,
            },
            service_name: Some(names::headless_service(ctx.name)),
            // After a full outage every node of a shard must be up before any can elect a
            // leader and turn ready; ordered start-up would wait forever on pod 0.
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    // Honoured where the MaxUnavailableStatefulSet gate is on (alpha in
                    // 1.33); elsewhere pods are replaced one at a time, which is also safe.
                    max_unavailable: Some(IntOrString::Int(spec.update_strategy.max_unavailable)),
                    partition: Some(0),
                }),
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        match spec.deletion_policy {
                            DeletionPolicy::Retain => "Retain",
                            DeletionPolicy::Delete => "Delete",
                        }
                        .to_owned(),
                    ),
                    // Scaling down drains a node first; its volume is kept so scaling back up
                    // (or a mistaken scale-down) finds the data again.
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            volume_claim_templates: claims,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(ctx, pool)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testing;

    fn container(sts: &StatefulSet) -> &Container {
        &sts.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    fn pod(sts: &StatefulSet) -> &PodSpec {
        sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn port_names(sts: &StatefulSet) -> Vec<String> {
        container(sts)
            .ports
            .iter()
            .flatten()
            .map(|p| p.name.clone().unwrap())
            .collect()
    }

    fn hash(sts: &StatefulSet) -> String {
        sts.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    }

    fn with_own_secrets() -> tern_crds::MailCluster {
        let mut cluster = testing::cluster();
        cluster.spec.tls = Some(tern_crds::mail_cluster::TlsSpec {
            secret_name: Some("my-cert".into()),
        });
        cluster.spec.gossip = Some(tern_crds::mail_cluster::GossipSpec {
            key_secret_ref: Some(SecretKeyRef {
                name: "my-gossip".into(),
                key: "keyring".into(),
            }),
        });
        cluster.spec.admin_secret_ref = Some(SecretKeyRef {
            name: "my-admin".into(),
            key: "pw".into(),
        });
        cluster.spec.relay = Some(tern_crds::mail_cluster::RelaySpec {
            host: "smtp.relay.example".into(),
            port: 587,
            starttls: true,
            credentials_secret_name: Some("relay-creds".into()),
        });
        cluster
    }

    #[test]
    fn no_secret_value_in_env_only_file_paths() {
        for cluster in [testing::cluster(), with_own_secrets()] {
            let prepared = testing::render(&cluster, &[]);
            let c = container(&prepared.statefulsets[0]);
            for var in c.env.iter().flatten() {
                if let Some(from) = &var.value_from {
                    assert!(
                        from.secret_key_ref.is_none(),
                        "{} reads a Secret into env",
                        var.name
                    );
                    assert!(
                        from.field_ref.is_some(),
                        "{} has an unexpected source",
                        var.name
                    );
                }
                if var.name.ends_with("_FILE") || var.name.ends_with("_DIR") {
                    assert!(
                        var.value.as_deref().unwrap().starts_with('/'),
                        "{}",
                        var.name
                    );
                }
            }
            assert!(c.env_from.is_none());
            let names: Vec<_> = c.env.iter().flatten().map(|v| v.name.as_str()).collect();
            for expected in [
                "TERN_CLUSTER",
                "TERN_ROLE",
                "POD_NAME",
                "POD_NAMESPACE",
                "TERN_CONFIG_FILE",
                "TERN_ASSIGNMENT_FILE",
                "TERN_DATA_DIR",
                "TERN_GOSSIP_KEY_FILE",
                "TERN_TLS_CERT_FILE",
                "TERN_TLS_KEY_FILE",
                "TERN_CLUSTER_CA_FILE",
                "TERN_AGENT_CERT_FILE",
                "TERN_AGENT_KEY_FILE",
                "TERN_ADMIN_PASSWORD_FILE",
            ] {
                assert!(names.contains(&expected), "missing {expected}");
            }
            // Every secret volume is read-only with mode 0440; the CA key is never mounted.
            let pod = pod(&prepared.statefulsets[0]);
            for volume in pod.volumes.iter().flatten() {
                if let Some(secret) = &volume.secret {
                    assert_eq!(secret.default_mode, Some(0o440));
                    assert_ne!(secret.secret_name.as_deref(), Some("mail-ca"));
                    let mount = c
                        .volume_mounts
                        .iter()
                        .flatten()
                        .find(|m| m.name == volume.name)
                        .unwrap();
                    assert_eq!(mount.read_only, Some(true));
                }
            }
        }
    }

    #[test]
    fn user_named_secrets_are_mounted_by_key() {
        let prepared = testing::render(&with_own_secrets(), &[]);
        let c = container(&prepared.statefulsets[0]);
        let volumes = pod(&prepared.statefulsets[0]).volumes.clone().unwrap();
        let secret = |name: &str| {
            volumes
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .secret
                .clone()
                .unwrap()
        };
        assert_eq!(secret("tls").secret_name.as_deref(), Some("my-cert"));
        let gossip = secret("gossip");
        assert_eq!(gossip.secret_name.as_deref(), Some("my-gossip"));
        assert_eq!(
            gossip.items.unwrap()[0],
            KeyToPath {
                key: "keyring".into(),
                path: "key".into(),
                mode: None
            }
        );
        let admin = secret("admin");
        assert_eq!(admin.secret_name.as_deref(), Some("my-admin"));
        assert_eq!(admin.items.unwrap()[0].key, "pw");
        assert_eq!(secret("relay").secret_name.as_deref(), Some("relay-creds"));
        assert!(
            c.env
                .iter()
                .flatten()
                .any(|v| v.name == "TERN_RELAY_CREDENTIALS_DIR"
                    && v.value.as_deref() == Some("/etc/tern/relay"))
        );

        let generated = testing::render(&testing::cluster(), &[]);
        let volumes = pod(&generated.statefulsets[0]).volumes.clone().unwrap();
        let name_of = |v: &str| {
            volumes
                .iter()
                .find(|x| x.name == v)
                .unwrap()
                .secret
                .clone()
                .unwrap()
                .secret_name
                .unwrap()
        };
        assert_eq!(name_of("tls"), "mail-tls");
        assert_eq!(name_of("gossip"), "mail-gossip");
        assert_eq!(name_of("admin"), "mail-admin");
        assert_eq!(name_of("agent-tls"), "mail-agent-tls");
        assert!(!volumes.iter().any(|v| v.name == "relay"));
    }

    #[test]
    fn container_is_non_root_read_only_and_drops_all() {
        let prepared = testing::render(&testing::cluster(), &[]);
        let sts = &prepared.statefulsets[0];
        let sc = container(sts).security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert!(sc.privileged.is_none());
        let psc = pod(sts).security_context.clone().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(psc.fs_group, Some(65532));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        // Default listeners include port 25, so unprivileged binding is opened.
        assert_eq!(
            psc.sysctls.unwrap()[0].name,
            "net.ipv4.ip_unprivileged_port_start"
        );
    }

    #[test]
    fn no_sysctl_when_every_port_is_high() {
        let mut cluster = testing::cluster();
        let l = &mut cluster.spec.listeners;
        for listener in [
            &mut l.smtp,
            &mut l.submission,
            &mut l.smtps,
            &mut l.imap,
            &mut l.imaps,
            &mut l.lmtp,
            &mut l.https,
        ] {
            listener.port += 10000;
        }
        let prepared = testing::render(&cluster, &[]);
        assert!(
            pod(&prepared.statefulsets[0])
                .security_context
                .as_ref()
                .unwrap()
                .sysctls
                .is_none()
        );
    }

    #[test]
    fn probes_hit_the_health_paths_on_the_http_port() {
        // Even a pool that does not serve http is probed on the http port.
        let backend = testing::role("backend", "voter", Some(&["lmtp"]));
        let prepared = testing::render(&testing::cluster(), &[backend]);
        for sts in &prepared.statefulsets {
            let c = container(sts);
            let path_port = |p: &Option<Probe>| {
                let get = p.as_ref().unwrap().http_get.clone().unwrap();
                (get.path.unwrap(), get.port)
            };
            assert_eq!(
                path_port(&c.liveness_probe),
                ("/healthz/live".into(), IntOrString::Int(8080))
            );
            assert_eq!(
                path_port(&c.readiness_probe),
                ("/healthz/ready".into(), IntOrString::Int(8080))
            );
            assert_eq!(
                path_port(&c.startup_probe),
                ("/healthz/live".into(), IntOrString::Int(8080))
            );
            let startup = c.startup_probe.clone().unwrap();
            assert_eq!(
                (startup.failure_threshold, startup.period_seconds),
                (Some(30), Some(5))
            );
        }
    }

    #[test]
    fn ports_follow_enabled_and_role_listeners() {
        let mut cluster = testing::cluster();
        cluster.spec.listeners.smtps.enabled = false;
        cluster.spec.listeners.imap.enabled = false;
        let frontend = testing::role("frontend", "none", Some(&["smtp", "imap", "imaps"]));
        let backend = testing::role("backend", "voter", Some(&["lmtp"]));
        let prepared = testing::render(&cluster, &[frontend, backend]);
        assert_eq!(
            port_names(&prepared.statefulsets[0]),
            [
                "smtp",
                "submission",
                "imaps",
                "lmtp",
                "http",
                "https",
                "gossip",
                "gossip-tcp",
                "rpc"
            ]
        );
        assert_eq!(
            port_names(&prepared.statefulsets[1]),
            ["smtp", "imaps", "gossip", "gossip-tcp", "rpc"]
        );
        assert_eq!(
            port_names(&prepared.statefulsets[2]),
            ["lmtp", "gossip", "gossip-tcp", "rpc"]
        );
        let listeners = |sts: &StatefulSet| {
            container(sts)
                .env
                .iter()
                .flatten()
                .find(|v| v.name == "TERN_LISTENERS")
                .unwrap()
                .value
                .clone()
                .unwrap()
        };
        assert_eq!(listeners(&prepared.statefulsets[1]), "smtp,imaps");
    }

    #[test]
    fn claim_template_only_for_pools_that_hold_data() {
        let frontend = testing::role("frontend", "none", None);
        let learners = testing::role("archive", "learner", None);
        let prepared = testing::render(&testing::cluster(), &[frontend, learners]);
        let [default, frontend, archive] = &prepared.statefulsets[..] else {
            panic!("three pools");
        };
        let claims = default
            .spec
            .as_ref()
            .unwrap()
            .volume_claim_templates
            .clone()
            .unwrap();
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        assert_eq!(
            claims[0]
                .spec
                .as_ref()
                .unwrap()
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"],
            Quantity("10Gi".into())
        );
        assert!(
            archive
                .spec
                .as_ref()
                .unwrap()
                .volume_claim_templates
                .is_some()
        );
        assert!(
            frontend
                .spec
                .as_ref()
                .unwrap()
                .volume_claim_templates
                .is_none()
        );
        let data = pod(frontend)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "data")
            .unwrap();
        assert!(data.empty_dir.is_some());
        assert!(
            !pod(default)
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == "data")
        );
        for sts in &prepared.statefulsets {
            assert!(
                container(sts)
                    .volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == "data" && m.mount_path == "/var/lib/tern")
            );
        }
    }

    #[test]
    fn statefulset_shape() {
        let mut cluster = testing::cluster();
        cluster.spec.deletion_policy = DeletionPolicy::Delete;
        let prepared = testing::render(&cluster, &[testing::role("frontend", "none", None)]);
        let sts = &prepared.statefulsets[0];
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(sts.metadata.name.as_deref(), Some("mail-default"));
        assert_eq!(spec.service_name.as_deref(), Some("mail-nodes"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.replicas, Some(3));
        let retention = spec
            .persistent_volume_claim_retention_policy
            .clone()
            .unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        let rolling = spec
            .update_strategy
            .clone()
            .unwrap()
            .rolling_update
            .unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(rolling.partition, Some(0));
        // Every selector label is on the pod template.
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        for (k, v) in spec.selector.match_labels.clone().unwrap() {
            assert_eq!(pod_labels[&k], v);
        }
        assert_eq!(pod_labels["mail.tern.dev/storage"], "voter");
        assert_eq!(pod_labels["mail.tern.dev/client"], "true");
        // A pool without explicit listeners serves everything, so it is a client pool too.
        let frontend_labels = prepared.statefulsets[1]
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .clone()
            .unwrap();
        assert_eq!(
            frontend_labels.labels.unwrap()["mail.tern.dev/client"],
            "true"
        );
        let pod = pod(sts);
        assert_eq!(pod.service_account_name.as_deref(), Some("mail-agent"));
        assert_eq!(pod.enable_service_links, Some(false));
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        let anti = pod.affinity.clone().unwrap().pod_anti_affinity.unwrap();
        let term = &anti
            .preferred_during_scheduling_ignored_during_execution
            .unwrap()[0];
        assert_eq!(
            term.pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        assert_eq!(
            container(sts).image.as_deref(),
            Some("ghcr.io/tern-mail/tern:test")
        );
        assert_eq!(container(sts).command.clone().unwrap(), [AGENT_BINARY]);
        assert_eq!(container(sts).args.clone().unwrap(), ["run"]);
    }

    #[test]
    fn config_hash_follows_config_not_assignment() {
        let cluster = testing::cluster();
        let before = testing::render(&cluster, &[]);
        let mut newer = testing::assignment();
        newer.epoch = 7;
        newer.groups.insert("default-1".into(), 1);
        let after_assignment = testing::render_with(&cluster, &[], &newer);
        assert_eq!(
            hash(&before.statefulsets[0]),
            hash(&after_assignment.statefulsets[0])
        );
        assert_ne!(before.config_maps[1], after_assignment.config_maps[1]);

        let mut changed = testing::cluster();
        changed.spec.domains.push("example.org".into());
        let after_config = testing::render(&changed, &[]);
        assert_ne!(
            hash(&before.statefulsets[0]),
            hash(&after_config.statefulsets[0])
        );
        assert_eq!(
            hash(&before.statefulsets[0]),
            crate::render::config_map::config_hash(&before.config_maps[0])
        );
    }
}
