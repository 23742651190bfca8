//! The Services: the headless `<cluster>-nodes` (pod DNS names, gossip seeds, per-pod
//! metrics), the client `<cluster>` and, for each ClusterRole that lists its protocols,
//! `<cluster>-<role>`, all of `spec.service.type`; and the ClusterIP `<cluster>-lmtp`.
//!
//! Only the public protocols ([`is_public`]) ever reach a client Service, which is normally
//! a LoadBalancer: LMTP delivers into mailboxes without authentication or relay checks, and
//! `http` carries metrics, the health endpoints and the plain-text admin API. LMTP gets the
//! in-cluster `<cluster>-lmtp`; `http` is reachable per pod through `<cluster>-nodes`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tern_crds::common::Protocol;
use tern_crds::mail_cluster::ServiceType;

use super::{Context, GOSSIP_PORT, PoolView, RPC_PORT, RenderError, labels, names};

/// Whether `protocol` may be offered on the client Services (LoadBalancer or NodePort).
/// Exhaustive on purpose: a new protocol must be classified before it can be exposed.
pub fn is_public(protocol: Protocol) -> bool {
    match protocol {
        Protocol::Smtp
        | Protocol::Submission
        | Protocol::Smtps
        | Protocol::Imap
        | Protocol::Imaps
        | Protocol::Https => true,
        // Unauthenticated delivery; metrics, health and admin.
        Protocol::Lmtp | Protocol::Http => false,
    }
}

fn public(listeners: &[(Protocol, i32)]) -> Vec<(Protocol, i32)> {
    listeners
        .iter()
        .copied()
        .filter(|(p, _)| is_public(*p))
        .collect()
}

fn service_port(name: &str, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.to_owned()),
        ..ServicePort::default()
    }
}

/// `<cluster>-nodes`: every pod of every pool, ready or not, so that peers find each other
/// (and a shard can elect a leader) before any pod is ready. It also carries the health
/// port (`http`, bound by every pod whatever its listeners), so a scraper finds every pod's
/// `/metrics` through its endpoints without the port being on a public Service.
pub(crate) fn headless(ctx: &Context) -> Service {
    Service {
        metadata: ctx.meta(names::headless_service(ctx.name), "peers"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(
                labels::CLUSTER_LABEL.to_owned(),
                ctx.name.to_owned(),
            )])),
            ports: Some(vec![
                service_port("gossip", GOSSIP_PORT, "UDP"),
                service_port("gossip-tcp", GOSSIP_PORT, "TCP"),
                service_port("rpc", RPC_PORT, "TCP"),
                service_port(Protocol::Http.name(), ctx.health_port(), "TCP"),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// `<cluster>-lmtp`: in-cluster LMTP delivery (from other mail systems in the Kubernetes
/// cluster) to the pods of every pool that serves LMTP. Always ClusterIP, and none of
/// `spec.service`'s settings or annotations apply: those describe the public load balancer.
/// `None` when no pool serves LMTP (disabled, or no role lists it).
fn lmtp(ctx: &Context, pools: &[PoolView]) -> Option<Service> {
    let port = pools
        .iter()
        .flat_map(|pool| &pool.served)
        .find(|(p, _)| *p == Protocol::Lmtp)
        .map(|(_, port)| *port)?;
    Some(Service {
        metadata: ctx.meta(names::lmtp_service(ctx.name), "lmtp"),
        spec: Some(ServiceSpec {
            type_: Some(ServiceType::ClusterIP.as_str().to_owned()),
            selector: Some(BTreeMap::from([
                (labels::CLUSTER_LABEL.to_owned(), ctx.name.to_owned()),
                (labels::LMTP_LABEL.to_owned(), "true".to_owned()),
            ])),
            ports: Some(vec![service_port(Protocol::Lmtp.name(), port, "TCP")]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// A client Service of the type `spec.service` asks for, one port per listener; callers
/// pass public listeners only.
fn client(
    ctx: &Context,
    name: String,
    selector: BTreeMap<String, String>,
    listeners: &[(Protocol, i32)],
) -> Service {
    debug_assert!(listeners.iter().all(|(p, _)| is_public(*p)));
    let wanted = &ctx.spec.service;
    let external = matches!(
        wanted.type_,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );
    let load_balancer = wanted.type_ == ServiceType::LoadBalancer;
    let mut metadata = ctx.meta(name, "client");
    if !wanted.annotations.is_empty() {
        metadata.annotations = Some(wanted.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(wanted.type_.as_str().to_owned()),
            // Local keeps the client's address, which rate limits and anti-abuse checks
            // need. The API server refuses the field on ClusterIP Services.
            external_traffic_policy: external.then(|| {
                wanted
                    .external_traffic_policy
                    .unwrap_or_default()
                    .as_str()
                    .to_owned()
            }),
            // Also refused on anything but LoadBalancer.
            load_balancer_source_ranges: (load_balancer
                && !wanted.load_balancer_source_ranges.is_empty())
            .then(|| wanted.load_balancer_source_ranges.clone()),
            selector: Some(selector),
            ports: Some(
                listeners
                    .iter()
                    .map(|(protocol, port)| service_port(protocol.name(), *port, "TCP"))
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Every Service. A client Service with no port would be invalid, so none is rendered when
/// no public listener is enabled (or a role lists only disabled or non-public ones); the
/// controller then deletes an earlier one as an orphan.
pub(crate) fn build(ctx: &Context, pools: &[PoolView]) -> Result<Vec<Service>, RenderError> {
    let mut services = vec![headless(ctx)];
    let enabled = public(&ctx.enabled_listeners());
    if !enabled.is_empty() {
        // Pods of every pool that serves all enabled listeners carry the client label; if
        // none does, the Service selects nothing, which is what the spec asked for.
        let selector = BTreeMap::from([
            (labels::CLUSTER_LABEL.to_owned(), ctx.name.to_owned()),
            (labels::CLIENT_LABEL.to_owned(), "true".to_owned()),
        ]);
        services.push(client(
            ctx,
            names::client_service(ctx.name),
            selector,
            &enabled,
        ));
    }
    services.extend(lmtp(ctx, pools));
    for pool in pools.iter().filter(|p| p.explicit_listeners) {
        let served = public(&pool.served);
        if served.is_empty() {
            continue;
        }
        let selector = BTreeMap::from([
            (labels::CLUSTER_LABEL.to_owned(), ctx.name.to_owned()),
            (labels::POOL_LABEL.to_owned(), pool.name.to_owned()),
        ]);
        services.push(client(
            ctx,
            names::pool(ctx.name, pool.name),
            selector,
            &served,
        ));
    }
    let mut seen = BTreeSet::new();
    for service in &services {
        let name = service.metadata.name.clone().unwrap_or_default();
        if !seen.insert(name.clone()) {
            return Err(RenderError::NameClash {
                kind: "Service",
                name,
            });
        }
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testing;
    use tern_crds::mail_cluster::TrafficPolicy;

    fn spec(s: &Service) -> &ServiceSpec {
        s.spec.as_ref().unwrap()
    }

    fn port_names(s: &Service) -> Vec<String> {
        spec(s)
            .ports
            .iter()
            .flatten()
            .map(|p| p.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn headless_service_publishes_not_ready_peers() {
        let prepared = testing::render(&testing::cluster(), &[]);
        let headless = &prepared.services[0];
        assert_eq!(headless.metadata.name.as_deref(), Some("mail-nodes"));
        assert_eq!(spec(headless).cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec(headless).publish_not_ready_addresses, Some(true));
        assert_eq!(
            port_names(headless),
            ["gossip", "gossip-tcp", "rpc", "http"]
        );
        assert_eq!(
            spec(headless).ports.as_ref().unwrap()[0]
                .protocol
                .as_deref(),
            Some("UDP")
        );
    }

    #[test]
    fn client_service_defaults_to_a_local_load_balancer() {
        let mut cluster = testing::cluster();
        cluster
            .spec
            .service
            .annotations
            .insert("lb.example/kind".into(), "nlb".into());
        cluster.spec.service.load_balancer_source_ranges = vec!["10.0.0.0/8".into()];
        let prepared = testing::render(&cluster, &[]);
        let client = &prepared.services[1];
        assert_eq!(client.metadata.name.as_deref(), Some("mail"));
        assert_eq!(
            client.metadata.annotations.as_ref().unwrap()["lb.example/kind"],
            "nlb"
        );
        let s = spec(client);
        assert_eq!(s.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(s.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            s.load_balancer_source_ranges.clone().unwrap(),
            ["10.0.0.0/8"]
        );
        assert_eq!(s.selector.as_ref().unwrap()["mail.tern.dev/client"], "true");
        let smtp = &s.ports.as_ref().unwrap()[0];
        assert_eq!((smtp.name.as_deref(), smtp.port), (Some("smtp"), 25));
        assert_eq!(smtp.target_port, Some(IntOrString::Int(25)));
    }

    #[test]
    fn external_traffic_policy_absent_for_cluster_ip() {
        let mut cluster = testing::cluster();
        cluster.spec.service.type_ = ServiceType::ClusterIP;
        cluster.spec.service.load_balancer_source_ranges = vec!["10.0.0.0/8".into()];
        let prepared = testing::render(&cluster, &[]);
        let s = spec(&prepared.services[1]);
        assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
        assert!(s.external_traffic_policy.is_none());
        assert!(s.load_balancer_source_ranges.is_none());

        cluster.spec.service.type_ = ServiceType::NodePort;
        cluster.spec.service.external_traffic_policy = Some(TrafficPolicy::Cluster);
        let prepared = testing::render(&cluster, &[]);
        assert_eq!(
            spec(&prepared.services[1])
                .external_traffic_policy
                .as_deref(),
            Some("Cluster")
        );
    }

    #[test]
    fn ports_follow_disabled_listeners_and_roles_get_their_own_service() {
        let mut cluster = testing::cluster();
        cluster.spec.listeners.submission.enabled = false;
        cluster.spec.listeners.https.enabled = false;
        let frontend = testing::role("frontend", "none", Some(&["smtp", "submission", "imaps"]));
        let backend = testing::role("backend", "voter", Some(&["https"]));
        let everything = testing::role("everything", "learner", None);
        let prepared = testing::render(&cluster, &[frontend, backend, everything]);
        let names: Vec<_> = prepared
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        // backend lists only a disabled listener: no Service without ports.
        assert_eq!(names, ["mail-nodes", "mail", "mail-lmtp", "mail-frontend"]);
        assert_eq!(
            port_names(&prepared.services[1]),
            ["smtp", "smtps", "imap", "imaps"]
        );
        assert_eq!(port_names(&prepared.services[3]), ["smtp", "imaps"]);
        assert_eq!(
            spec(&prepared.services[3]).selector.as_ref().unwrap()["mail.tern.dev/pool"],
            "frontend"
        );
    }

    #[test]
    fn a_role_named_nodes_with_listeners_clashes_with_the_headless_service() {
        let cluster = testing::cluster();
        let nodes = testing::role("nodes", "none", Some(&["smtp"]));
        let settings = testing::settings();
        let assignment = testing::assignment();
        let input = crate::render::RenderInput {
            cluster: &cluster,
            pools: vec![crate::render::Pool {
                name: "nodes".into(),
                role: Some(&nodes),
                replicas: 1,
            }],
            assignment: &assignment,
            settings: &settings,
        };
        let err = crate::render::build(&input).unwrap_err();
        assert!(matches!(err, RenderError::NameClash { ref name, .. } if name == "mail-nodes"));
        assert!(err.is_permanent());
    }

    /// Every listener enabled, and roles with and without explicit lists, public and not.
    fn every_kind_of_role() -> Vec<tern_crds::ClusterRole> {
        vec![
            testing::role(
                "frontend",
                "none",
                Some(&["smtp", "submission", "imaps", "lmtp", "http"]),
            ),
            testing::role("backend", "voter", Some(&["lmtp"])),
            testing::role("web", "none", Some(&["http", "https"])),
            testing::role("metrics", "none", Some(&["http"])),
            testing::role("everything", "learner", None),
        ]
    }

    fn find<'a>(services: &'a [Service], name: &str) -> Option<&'a Service> {
        services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
    }

    #[test]
    fn no_external_service_ever_carries_lmtp_or_http() {
        let roles = every_kind_of_role();
        for type_ in [ServiceType::LoadBalancer, ServiceType::NodePort] {
            let mut cluster = testing::cluster();
            cluster.spec.service.type_ = type_;
            assert!(
                cluster.spec.listeners.all().iter().all(|(_, l)| l.enabled),
                "every listener is enabled by default"
            );
            let (lmtp, http) = (
                cluster.spec.listeners.lmtp.port,
                cluster.spec.listeners.http.port,
            );
            let prepared = testing::render(&cluster, &roles);
            let mut external = 0;
            for service in &prepared.services {
                let s = spec(service);
                if !matches!(s.type_.as_deref(), Some("LoadBalancer" | "NodePort")) {
                    continue;
                }
                external += 1;
                for port in s.ports.iter().flatten() {
                    let what = format!("{:?} port {port:?}", service.metadata.name);
                    assert!(
                        !matches!(port.name.as_deref(), Some("lmtp" | "http")),
                        "{what}"
                    );
                    assert!(port.port != lmtp && port.port != http, "{what}");
                    assert_ne!(port.target_port, Some(IntOrString::Int(lmtp)), "{what}");
                    assert_ne!(port.target_port, Some(IntOrString::Int(http)), "{what}");
                }
            }
            let names: Vec<_> = prepared
                .services
                .iter()
                .map(|s| s.metadata.name.clone().unwrap())
                .collect();
            // No public Service for backend (lmtp only) or metrics (http only).
            assert_eq!(
                names,
                [
                    "mail-nodes",
                    "mail",
                    "mail-lmtp",
                    "mail-frontend",
                    "mail-web"
                ]
            );
            assert_eq!(external, 3, "{type_:?}");
            assert_eq!(
                port_names(find(&prepared.services, "mail").unwrap()),
                ["smtp", "submission", "smtps", "imap", "imaps", "https"]
            );
            assert_eq!(
                port_names(find(&prepared.services, "mail-frontend").unwrap()),
                ["smtp", "submission", "imaps"]
            );
            assert_eq!(
                port_names(find(&prepared.services, "mail-web").unwrap()),
                ["https"]
            );
        }
    }

    #[test]
    fn a_role_serving_only_lmtp_gets_no_public_service() {
        let backend = testing::role("backend", "voter", Some(&["lmtp"]));
        let prepared = testing::render(&testing::cluster(), &[backend]);
        assert!(find(&prepared.services, "mail-backend").is_none());
        // Its pods are still reachable for delivery, inside the cluster only.
        let lmtp = find(&prepared.services, "mail-lmtp").unwrap();
        assert_eq!(spec(lmtp).type_.as_deref(), Some("ClusterIP"));
    }

    #[test]
    fn lmtp_service_is_cluster_ip_with_only_lmtp_and_ignores_spec_service() {
        let mut cluster = testing::cluster();
        cluster.spec.listeners.lmtp.port = 2424;
        cluster
            .spec
            .service
            .annotations
            .insert("lb.example/kind".into(), "nlb".into());
        cluster.spec.service.load_balancer_source_ranges = vec!["0.0.0.0/0".into()];
        cluster.spec.service.external_traffic_policy = Some(TrafficPolicy::Cluster);
        for type_ in [
            ServiceType::LoadBalancer,
            ServiceType::NodePort,
            ServiceType::ClusterIP,
        ] {
            cluster.spec.service.type_ = type_;
            let prepared = testing::render(&cluster, &every_kind_of_role());
            let service = find(&prepared.services, "mail-lmtp").unwrap();
            assert!(service.metadata.annotations.is_none());
            assert_eq!(
                service.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"],
                "lmtp"
            );
            let s = spec(service);
            assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
            assert!(s.external_traffic_policy.is_none());
            assert!(s.load_balancer_source_ranges.is_none());
            assert!(s.load_balancer_class.is_none() && s.load_balancer_ip.is_none());
            assert!(s.allocate_load_balancer_node_ports.is_none());
            assert!(s.cluster_ip.is_none(), "a normal virtual IP, not headless");
            assert!(s.publish_not_ready_addresses.is_none());
            assert_eq!(
                s.ports.clone().unwrap(),
                [ServicePort {
                    name: Some("lmtp".into()),
                    port: 2424,
                    target_port: Some(IntOrString::Int(2424)),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]
            );
            assert_eq!(
                s.selector.clone().unwrap(),
                BTreeMap::from([
                    ("mail.tern.dev/cluster".to_owned(), "mail".to_owned()),
                    (labels::LMTP_LABEL.to_owned(), "true".to_owned()),
                ])
            );
        }
    }

    #[test]
    fn lmtp_label_is_on_exactly_the_pools_that_serve_lmtp() {
        let prepared = testing::render(&testing::cluster(), &every_kind_of_role());
        let selector = spec(find(&prepared.services, "mail-lmtp").unwrap())
            .selector
            .clone()
            .unwrap();
        let mut selected = Vec::new();
        for sts in &prepared.statefulsets {
            let template = &sts.spec.as_ref().unwrap().template;
            let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
            let ports: Vec<_> = template.spec.as_ref().unwrap().containers[0]
                .ports
                .iter()
                .flatten()
                .filter_map(|p| p.name.clone())
                .collect();
            let serves = ports.iter().any(|p| p == "lmtp");
            assert_eq!(
                labels.get(labels::LMTP_LABEL).map(String::as_str),
                serves.then_some("true"),
                "{:?}",
                sts.metadata.name
            );
            if selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                selected.push(labels[labels::POOL_LABEL].clone());
            }
        }
        assert_eq!(selected, ["default", "frontend", "backend", "everything"]);
    }

    #[test]
    fn no_lmtp_service_when_nothing_serves_lmtp() {
        let mut cluster = testing::cluster();
        cluster.spec.listeners.lmtp.enabled = false;
        let prepared = testing::render(&cluster, &every_kind_of_role());
        assert!(find(&prepared.services, "mail-lmtp").is_none());
        for sts in &prepared.statefulsets {
            let template = &sts.spec.as_ref().unwrap().template;
            let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
            assert!(!labels.contains_key(labels::LMTP_LABEL));
        }

        // Enabled, but the only pool lists other protocols.
        let cluster = testing::cluster();
        let frontend = testing::role("frontend", "none", Some(&["smtp", "imaps"]));
        let settings = testing::settings();
        let assignment = testing::assignment();
        let input = crate::render::RenderInput {
            cluster: &cluster,
            pools: vec![crate::render::Pool {
                name: "frontend".into(),
                role: Some(&frontend),
                replicas: 1,
            }],
            assignment: &assignment,
            settings: &settings,
        };
        let prepared = crate::render::build(&input).unwrap();
        assert!(find(&prepared.services, "mail-lmtp").is_none());
    }

    #[test]
    fn headless_service_carries_the_health_port_for_scraping() {
        let mut cluster = testing::cluster();
        cluster.spec.listeners.http.port = 9090;
        let http = |prepared: &crate::render::Prepared| {
            spec(&prepared.services[0])
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some("http"))
                .cloned()
                .unwrap()
        };
        let port = http(&testing::render(&cluster, &[]));
        assert_eq!(
            (port.port, port.target_port, port.protocol.as_deref()),
            (9090, Some(IntOrString::Int(9090)), Some("TCP"))
        );
        // Bound by every pod even when the http listener is off, so still scrapable.
        cluster.spec.listeners.http.enabled = false;
        assert_eq!(http(&testing::render(&cluster, &[])).port, 9090);
    }

    #[test]
    fn only_non_public_listeners_means_no_client_service() {
        let mut cluster = testing::cluster();
        let l = &mut cluster.spec.listeners;
        for listener in [
            &mut l.smtp,
            &mut l.submission,
            &mut l.smtps,
            &mut l.imap,
            &mut l.imaps,
            &mut l.https,
        ] {
            listener.enabled = false;
        }
        let prepared = testing::render(&cluster, &[]);
        let names: Vec<_> = prepared
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["mail-nodes", "mail-lmtp"]);
    }

    #[test]
    fn public_protocols_are_the_client_ones() {
        let public: Vec<_> = tern_crds::common::Listeners::default()
            .all()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| is_public(*p))
            .map(Protocol::name)
            .collect();
        assert_eq!(
            public,
            ["smtp", "submission", "smtps", "imap", "imaps", "https"]
        );
    }
}
