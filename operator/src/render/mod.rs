//! Render: pure functions from a MailCluster, its ClusterRoles and the assignment to every
//! Kubernetes object the operator applies.
//!
//! [`build`] returns one [`Prepared`] struct holding every child object; the apply step
//! destructures it without `..`, so a new child kind cannot be forgotten there. Nothing here
//! does I/O. The only impure function is [`generate_secret`] (fresh key material), which the
//! controller calls once per missing Secret.
//!
//! One file per kind of object: [`statefulset`], [`service`], [`config_map`], [`pdb`],
//! [`rbac`], [`secrets`]; [`labels`] holds the labels, selectors and owner reference they
//! all share.

pub mod config_map;
pub mod labels;
pub mod pdb;
pub mod rbac;
pub mod secrets;
pub mod service;
pub mod statefulset;

#[cfg(test)]
mod testing;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use tern_crds::cluster_role::StorageRole;
use tern_crds::common::{PodScheduling, Protocol};
use tern_crds::{Assignment, ClusterRole, MailCluster, MailClusterSpec};

pub use secrets::{SecretKind, generate_secret, generate_secret_in_domain, generated_secrets};

/// UDP and TCP port of the gossip protocol (SWIM probes over UDP, state sync over TCP).
pub const GOSSIP_PORT: i32 = 7946;
/// TCP port of the agents' Raft and forwarding RPC (TLS with the cluster CA).
pub const RPC_PORT: i32 = 7947;
/// The Kubernetes cluster DNS domain when the operator is not told otherwise.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Operator-wide settings that are not part of any resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Agent image used when `spec.image` is absent.
    pub default_image: String,
    /// The cluster's DNS domain, normally `cluster.local`.
    pub cluster_domain: String,
}

/// One node pool: the MailCluster's own (`default`) or a ClusterRole's.
#[derive(Clone, Debug)]
pub struct Pool<'a> {
    /// `default` or the ClusterRole's name.
    pub name: String,
    /// The ClusterRole; `None` for the default pool.
    pub role: Option<&'a ClusterRole>,
    /// The replica count to set, decided by the controller (it may hold a scale-down back
    /// until the leaving nodes are drained).
    pub replicas: i32,
}

/// Everything [`build`] needs.
#[derive(Clone, Debug)]
pub struct RenderInput<'a> {
    /// The MailCluster; its metadata must have name, namespace and uid.
    pub cluster: &'a MailCluster,
    /// Every pool, the default one included (even with zero replicas).
    pub pools: Vec<Pool<'a>>,
    /// The assignment to publish in `<cluster>-assignment`.
    pub assignment: &'a Assignment,
    pub settings: &'a Settings,
}

/// Every child object of one MailCluster, before it is applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// One per pool, in the order of [`RenderInput::pools`].
    pub statefulsets: Vec<StatefulSet>,
    /// The headless `<cluster>-nodes`, the client `<cluster>` (when a public listener is
    /// enabled), the ClusterIP `<cluster>-lmtp` (when a pool serves LMTP), then
    /// `<cluster>-<role>` for each ClusterRole that lists a public listener.
    pub services: Vec<Service>,
    /// `<cluster>-config` and `<cluster>-assignment`.
    pub config_maps: Vec<ConfigMap>,
    /// `<cluster>-voters`.
    pub pdbs: Vec<PodDisruptionBudget>,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

impl Prepared {
    /// Every object as one multi-document YAML stream in apply order (what
    /// `tern-operator render` prints and the golden tests compare).
    pub fn to_yaml(&self) -> Result<String, RenderError> {
        let Self {
            statefulsets,
            services,
            config_maps,
            pdbs,
            service_account,
            role,
            role_binding,
        } = self;
        fn push<T: serde::Serialize>(out: &mut String, object: &T) -> Result<(), RenderError> {
            out.push_str("---\n");
            out.push_str(
                &serde_saphyr::to_string(object).map_err(|e| RenderError::Yaml(e.to_string()))?,
            );
            Ok(())
        }
        let mut out = String::new();
        push(&mut out, service_account)?;
        push(&mut out, role)?;
        push(&mut out, role_binding)?;
        for object in config_maps {
            push(&mut out, object)?;
        }
        for object in services {
            push(&mut out, object)?;
        }
        for object in statefulsets {
            push(&mut out, object)?;
        }
        for object in pdbs {
            push(&mut out, object)?;
        }
        Ok(out)
    }
}

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The MailCluster lacks `metadata.name`, `.namespace` or `.uid` (never so for an object
    /// read from the API server).
    #[error("the MailCluster has no {0}")]
    MissingObjectKey(&'static str),
    /// Two things would listen on one port of the pod.
    #[error("port {port} is used by both {first} and {second}")]
    PortClash {
        port: i32,
        first: &'static str,
        second: &'static str,
    },
    /// Two objects of one kind would get the same name (e.g. a ClusterRole named `nodes`
    /// with its own listeners: its Service would be the headless `<cluster>-nodes`).
    #[error("two {kind} objects would be named {name}")]
    NameClash { kind: &'static str, name: String },
    /// Issuing the agent certificate needs the cluster CA Secret, which was not given.
    #[error("the cluster CA Secret is needed to issue the agent certificate")]
    MissingCa,
    /// The cluster CA Secret cannot be used (missing keys, unparsable, or the key does not
    /// belong to the certificate).
    #[error("the cluster CA Secret is unusable: {0}")]
    InvalidCa(String),
    #[error("issuing a certificate failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the system random source failed")]
    Random,
    #[error("serializing to JSON failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("serializing to YAML failed: {0}")]
    Yaml(String),
}

impl RenderError {
    /// A stable, low-cardinality name for metrics, events and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "MissingObjectKey",
            Self::PortClash { .. } => "PortClash",
            Self::NameClash { .. } => "NameClash",
            Self::MissingCa => "MissingCa",
            Self::InvalidCa(_) => "InvalidCa",
            Self::Certificate(_) => "Certificate",
            Self::Random => "Random",
            Self::Json(_) => "Json",
            Self::Yaml(_) => "Yaml",
        }
    }

    /// Whether retrying cannot help until someone changes a resource (wait for a spec
    /// change), as opposed to a transient failure worth a requeue with backoff.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::MissingObjectKey(_)
                | Self::PortClash { .. }
                | Self::NameClash { .. }
                | Self::InvalidCa(_)
        )
    }
}

/// Names of the child objects, in one place so the controller and the tests agree.
pub mod names {
    /// The headless Service that gives every pod a DNS name and seeds gossip.
    pub fn headless_service(cluster: &str) -> String {
        format!("{cluster}-nodes")
    }
    /// The client Service in front of the pools that serve every listener.
    pub fn client_service(cluster: &str) -> String {
        cluster.to_owned()
    }
    /// The ClusterIP Service for in-cluster LMTP delivery. A ClusterRole named `lmtp` that
    /// lists public listeners would clash with it ([`super::RenderError::NameClash`]).
    pub fn lmtp_service(cluster: &str) -> String {
        format!("{cluster}-lmtp")
    }
    /// A pool's StatefulSet, and the client Service of a ClusterRole with its own listeners.
    pub fn pool(cluster: &str, pool: &str) -> String {
        format!("{cluster}-{pool}")
    }
    /// The agent configuration ConfigMap.
    pub fn config(cluster: &str) -> String {
        format!("{cluster}-config")
    }
    /// The PodDisruptionBudget over every voter.
    pub fn voters_pdb(cluster: &str) -> String {
        format!("{cluster}-voters")
    }
    /// ServiceAccount, Role and RoleBinding of the agents.
    pub fn agent(cluster: &str) -> String {
        format!("{cluster}-agent")
    }
    /// The Lease the agents elect their one status reporter with.
    pub fn reporter_lease(cluster: &str) -> String {
        format!("{cluster}-reporter")
    }
    /// Generated gossip key.
    pub fn gossip_secret(cluster: &str) -> String {
        format!("{cluster}-gossip")
    }
    /// Generated self-signed listener certificate.
    pub fn tls_secret(cluster: &str) -> String {
        format!("{cluster}-tls")
    }
    /// The cluster CA (certificate and key). Never mounted into pods.
    pub fn ca_secret(cluster: &str) -> String {
        format!("{cluster}-ca")
    }
    /// The agents' certificate for agent-to-agent TLS, signed by the cluster CA.
    pub fn agent_tls_secret(cluster: &str) -> String {
        format!("{cluster}-agent-tls")
    }
    /// Generated recovery administrator password.
    pub fn admin_secret(cluster: &str) -> String {
        format!("{cluster}-admin")
    }
}

/// The checked identity of the MailCluster and what every child's metadata needs.
pub(crate) struct Context<'a> {
    pub spec: &'a MailClusterSpec,
    pub name: &'a str,
    pub namespace: &'a str,
    pub owner: OwnerReference,
}

impl<'a> Context<'a> {
    pub fn new(cluster: &'a MailCluster) -> Result<Self, RenderError> {
        let meta = &cluster.metadata;
        let name = meta
            .name
            .as_deref()
            .ok_or(RenderError::MissingObjectKey("metadata.name"))?;
        let namespace = meta
            .namespace
            .as_deref()
            .ok_or(RenderError::MissingObjectKey("metadata.namespace"))?;
        meta.uid
            .as_deref()
            .ok_or(RenderError::MissingObjectKey("metadata.uid"))?;
        Ok(Self {
            spec: &cluster.spec,
            name,
            namespace,
            owner: labels::owner_reference(cluster),
        })
    }

    /// Metadata of a child: name, namespace, common labels, controller reference.
    pub fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(labels::common(self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The listener port the agent serves `/healthz` and `/metrics` on (the `http`
    /// listener's port), bound by every pod whatever its listeners, since kubelet probes it.
    pub fn health_port(&self) -> i32 {
        self.spec.listeners.http.port
    }

    /// Enabled listeners, in [`tern_crds::common::Listeners::all`] order.
    pub fn enabled_listeners(&self) -> Vec<(Protocol, i32)> {
        self.spec
            .listeners
            .all()
            .into_iter()
            .filter(|(_, l)| l.enabled)
            .map(|(p, l)| (p, l.port))
            .collect()
    }

    /// The DNS name gossip seeds from: the headless Service.
    pub fn gossip_seed(&self, cluster_domain: &str) -> String {
        format!(
            "{}.{}.svc.{cluster_domain}",
            names::headless_service(self.name),
            self.namespace
        )
    }
}

/// A pool as the builders see it.
pub(crate) struct PoolView<'a> {
    pub name: &'a str,
    pub replicas: i32,
    pub storage: StorageRole,
    /// Whether the ClusterRole lists its protocols (and so gets its own client Service).
    pub explicit_listeners: bool,
    /// Listeners this pool serves: enabled in the cluster and, if the role lists
    /// protocols, listed there.
    pub served: Vec<(Protocol, i32)>,
    /// Serves every enabled listener, so the client Service may send it any connection.
    pub client: bool,
    pub scheduling: &'a PodScheduling,
}

impl<'a> PoolView<'a> {
    pub fn new(ctx: &Context<'a>, pool: &'a Pool<'a>) -> Self {
        let enabled = ctx.enabled_listeners();
        let (storage, listed, scheduling) = match pool.role {
            None => (StorageRole::Voter, None, &ctx.spec.scheduling),
            Some(role) => (
                role.spec.storage,
                role.spec.listeners.as_ref(),
                &role.spec.scheduling,
            ),
        };
        let served: Vec<_> = enabled
            .iter()
            .copied()
            .filter(|(p, _)| listed.is_none_or(|l| l.contains(p)))
            .collect();
        Self {
            name: &pool.name,
            replicas: pool.replicas,
            storage,
            explicit_listeners: listed.is_some(),
            // Behind the client Service when it serves every public protocol the cluster
            // enables; LMTP and http never go through that Service, so they do not count.
            client: enabled
                .iter()
                .filter(|(p, _)| service::is_public(*p))
                .all(|e| served.contains(e)),
            served,
            scheduling,
        }
    }

    /// Whether this pool serves `protocol` (enabled in the cluster and allowed by its role).
    pub fn serves(&self, protocol: Protocol) -> bool {
        self.served.iter().any(|(p, _)| *p == protocol)
    }

    /// Ports this pool's pods bind: served listeners and the health port.
    pub fn bound_ports(&self, ctx: &Context) -> Vec<i32> {
        let mut ports: Vec<i32> = self.served.iter().map(|(_, port)| *port).collect();
        ports.push(ctx.health_port());
        ports
    }
}

/// Refuses listener ports that collide with each other, the health port or the fixed
/// gossip/RPC ports (the CRD's CEL rule only compares enabled listeners).
fn check_ports(ctx: &Context) -> Result<(), RenderError> {
    let mut used: BTreeMap<i32, &'static str> = BTreeMap::new();
    used.insert(GOSSIP_PORT, "gossip");
    used.insert(RPC_PORT, "rpc");
    let health = ctx.health_port();
    let mut claims: Vec<(i32, &'static str)> = vec![(health, "http")];
    claims.extend(
        ctx.enabled_listeners()
            .into_iter()
            .filter(|(p, _)| *p != Protocol::Http)
            .map(|(p, port)| (port, p.name())),
    );
    for (port, what) in claims {
        if let Some(first) = used.insert(port, what) {
            return Err(RenderError::PortClash {
                port,
                first,
                second: what,
            });
        }
    }
    Ok(())
}

/// Builds every child object of a MailCluster. Pure: the same input gives the same output.
pub fn build(input: &RenderInput) -> Result<Prepared, RenderError> {
    let ctx = Context::new(input.cluster)?;
    check_ports(&ctx)?;
    let pools: Vec<PoolView> = input.pools.iter().map(|p| PoolView::new(&ctx, p)).collect();

    let config = config_map::config(&ctx, input.settings)?;
    let config_hash = config_map::config_hash(&config);
    let assignment = config_map::assignment(&ctx, input.assignment);

    let statefulsets = pools
        .iter()
        .map(|pool| statefulset::build(&ctx, pool, input.settings, &config_hash))
        .collect();

    Ok(Prepared {
        statefulsets,
        services: service::build(&ctx, &pools)?,
        config_maps: vec![config, assignment],
        pdbs: vec![pdb::voters(&ctx)],
        service_account: rbac::service_account(&ctx),
        role: rbac::role(&ctx),
        role_binding: rbac::role_binding(&ctx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(
        cluster: &'a MailCluster,
        assignment: &'a Assignment,
        settings: &'a Settings,
    ) -> RenderInput<'a> {
        RenderInput {
            cluster,
            pools: vec![Pool {
                name: "default".into(),
                role: None,
                replicas: 3,
            }],
            assignment,
            settings,
        }
    }

    #[test]
    fn refuses_a_cluster_without_its_keys() {
        let (assignment, settings) = (testing::assignment(), testing::settings());
        for (field, clear) in [
            (
                "metadata.name",
                (|c: &mut MailCluster| c.metadata.name = None) as fn(&mut MailCluster),
            ),
            ("metadata.namespace", |c| c.metadata.namespace = None),
            ("metadata.uid", |c| c.metadata.uid = None),
        ] {
            let mut cluster = testing::cluster();
            clear(&mut cluster);
            let err = build(&input(&cluster, &assignment, &settings)).unwrap_err();
            assert!(
                matches!(err, RenderError::MissingObjectKey(f) if f == field),
                "{err}"
            );
        }
    }

    #[test]
    fn refuses_listener_ports_that_collide_with_fixed_ports() {
        let (assignment, settings) = (testing::assignment(), testing::settings());
        let mut cluster = testing::cluster();
        cluster.spec.listeners.imaps.port = RPC_PORT;
        let err = build(&input(&cluster, &assignment, &settings)).unwrap_err();
        assert!(
            matches!(
                err,
                RenderError::PortClash {
                    port: RPC_PORT,
                    first: "rpc",
                    second: "imaps"
                }
            ),
            "{err}"
        );
        assert!(err.is_permanent());
        assert_eq!(err.category(), "PortClash");

        // A disabled http listener still owns its port: the health endpoints live there.
        let mut cluster = testing::cluster();
        cluster.spec.listeners.http.enabled = false;
        cluster.spec.listeners.smtp.port = 8080;
        let err = build(&input(&cluster, &assignment, &settings)).unwrap_err();
        assert!(
            matches!(err, RenderError::PortClash { port: 8080, .. }),
            "{err}"
        );

        // A disabled listener's port is free for others.
        let mut cluster = testing::cluster();
        cluster.spec.listeners.smtps.enabled = false;
        cluster.spec.listeners.smtps.port = 25;
        build(&input(&cluster, &assignment, &settings)).unwrap();
    }

    #[test]
    fn every_object_names_its_namespace_labels_and_owner() {
        let prepared = testing::render(
            &testing::cluster(),
            &[testing::role("frontend", "none", Some(&["imaps"]))],
        );
        let yaml = prepared.to_yaml().unwrap();
        let documents: Vec<&str> = yaml.split("---\n").filter(|d| !d.is_empty()).collect();
        // SA, Role, RoleBinding, 2 ConfigMaps, 4 Services, 2 StatefulSets, 1 PDB.
        assert_eq!(documents.len(), 12);
        for doc in documents {
            let value: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
            assert!(
                value["apiVersion"].is_string() && value["kind"].is_string(),
                "{doc}"
            );
            assert_eq!(value["metadata"]["namespace"], "tern-test");
            assert_eq!(value["metadata"]["labels"]["mail.tern.dev/cluster"], "mail");
            assert_eq!(value["metadata"]["ownerReferences"][0]["uid"], testing::UID);
        }
    }

    #[test]
    fn build_is_deterministic() {
        let cluster = testing::cluster();
        let roles = [testing::role("frontend", "none", None)];
        assert_eq!(
            testing::render(&cluster, &roles),
            testing::render(&cluster, &roles)
        );
    }
}
