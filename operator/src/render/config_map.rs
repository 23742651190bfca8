//! The ConfigMaps: `<cluster>-config` (the agent's configuration, `config.json`) and
//! `<cluster>-assignment` (the published [`Assignment`]).
//!
//! A change to the configuration rolls the pods (its hash is a pod template annotation); a
//! new assignment does not: agents watch it and apply it live.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use tern_crds::{Assignment, MailCluster};

use super::{Context, GOSSIP_PORT, RPC_PORT, RenderError, Settings, names};

pub use tern_crds::agent_config::{
    AgentConfig, CONFIG_KEY, GossipConfig, ListenerConfig, RelayConfig,
};

/// The configuration every agent of the cluster reads.
pub(crate) fn agent_config(ctx: &Context, settings: &Settings) -> AgentConfig {
    let spec = ctx.spec;
    AgentConfig {
        cluster: ctx.name.to_owned(),
        namespace: ctx.namespace.to_owned(),
        domains: spec.domains.clone(),
        shards: spec.shards,
        replication_factor: spec.replication_factor,
        read_replicas: spec.read_replicas,
        default_groups: spec.default_groups,
        listeners: spec
            .listeners
            .all()
            .into_iter()
            .map(|(protocol, l)| {
                (
                    protocol.name().to_owned(),
                    ListenerConfig {
                        enabled: l.enabled,
                        port: l.port,
                    },
                )
            })
            .collect(),
        health_port: ctx.health_port(),
        proxy_protocol: spec.service.proxy_protocol,
        relay: spec.relay.as_ref().map(|r| RelayConfig {
            host: r.host.clone(),
            port: r.port,
            starttls: r.starttls,
            has_credentials: r.credentials_secret_name.is_some(),
        }),
        gossip: GossipConfig {
            port: GOSSIP_PORT,
            seeds: vec![ctx.gossip_seed(&settings.cluster_domain)],
        },
        rpc_port: RPC_PORT,
        headless_service: names::headless_service(ctx.name),
        assignment_config_map: Assignment::config_map_name(ctx.name),
    }
}

/// The configuration the agents of `cluster` read (what `<cluster>-config` carries); also
/// used by the local cluster launcher, which writes it to a file instead.
pub fn agent_config_for(
    cluster: &MailCluster,
    settings: &Settings,
) -> Result<AgentConfig, RenderError> {
    Ok(agent_config(&Context::new(cluster)?, settings))
}

/// `<cluster>-config`.
pub(crate) fn config(ctx: &Context, settings: &Settings) -> Result<ConfigMap, RenderError> {
    let json = serde_json::to_string_pretty(&agent_config(ctx, settings))?;
    Ok(ConfigMap {
        metadata: ctx.meta(names::config(ctx.name), "config"),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), json)])),
        ..ConfigMap::default()
    })
}

/// `<cluster>-assignment`.
pub(crate) fn assignment(ctx: &Context, assignment: &Assignment) -> ConfigMap {
    ConfigMap {
        metadata: ctx.meta(Assignment::config_map_name(ctx.name), "assignment"),
        data: Some(BTreeMap::from([(
            Assignment::CONFIG_MAP_KEY.to_owned(),
            assignment.to_json(),
        )])),
        ..ConfigMap::default()
    }
}

/// Hex SHA-256 of a ConfigMap's data (keys in order), for the pod template annotation that
/// rolls the pods when their configuration changes.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut input = Vec::new();
    for (key, value) in config_map.data.iter().flatten() {
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        for part in [key, value] {
            input.extend_from_slice(&(part.len() as u64).to_be_bytes());
            input.extend_from_slice(part.as_bytes());
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testing;

    #[test]
    fn config_json_round_trips_and_names_the_seeds() {
        let cluster = testing::cluster();
        let ctx = Context::new(&cluster).unwrap();
        let cm = config(&ctx, &testing::settings()).unwrap();
        let json = &cm.data.as_ref().unwrap()[CONFIG_KEY];
        let parsed: AgentConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, agent_config(&ctx, &testing::settings()));
        assert_eq!(
            parsed.gossip.seeds,
            ["mail-nodes.tern-test.svc.cluster.local"]
        );
        assert_eq!(
            parsed.listeners["smtp"],
            ListenerConfig {
                enabled: true,
                port: 25
            }
        );
        assert_eq!(parsed.health_port, 8080);
        assert_eq!(parsed.rpc_port, 7947);
    }

    #[test]
    fn config_hash_is_hex_sha256_and_sensitive_to_content() {
        let cluster = testing::cluster();
        let ctx = Context::new(&cluster).unwrap();
        let cm = config(&ctx, &testing::settings()).unwrap();
        let hash = config_hash(&cm);
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hash, config_hash(&cm.clone()));

        let mut other = testing::cluster();
        other.spec.shards += 1;
        let ctx = Context::new(&other).unwrap();
        assert_ne!(
            hash,
            config_hash(&config(&ctx, &testing::settings()).unwrap())
        );
    }

    #[test]
    fn assignment_config_map_carries_the_json() {
        let cluster = testing::cluster();
        let ctx = Context::new(&cluster).unwrap();
        let a = testing::assignment();
        let cm = assignment(&ctx, &a);
        assert_eq!(cm.metadata.name.as_deref(), Some("mail-assignment"));
        let data = cm.data.unwrap();
        assert_eq!(Assignment::from_json(&data["assignment.json"]).unwrap(), a);
    }
}
