//! The agent configuration (`config.json` in the `<cluster>-config` ConfigMap): the second
//! half of the operator–agent contract, next to the [`Assignment`](crate::Assignment).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Key of the agent configuration in `<cluster>-config`.
pub const CONFIG_KEY: &str = "config.json";

/// The agent configuration (`config.json`): what every node of the cluster shares. What
/// differs per pool (role, storage, listeners served) comes through environment variables
/// instead, so a change to one pool does not roll the others. Secrets are never in here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub cluster: String,
    pub namespace: String,
    pub domains: Vec<String>,
    pub shards: i32,
    pub replication_factor: i32,
    pub read_replicas: i32,
    pub default_groups: i32,
    /// Every listener by protocol name, enabled or not.
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// Port of `/healthz/live`, `/healthz/ready` and `/metrics`, served by every pod even
    /// when the `http` listener is disabled or not in its pool, because kubelet probes it.
    pub health_port: i32,
    /// Expect a PROXY protocol header on every listener.
    pub proxy_protocol: bool,
    /// Smarthost for outbound mail; direct MX delivery when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayConfig>,
    pub gossip: GossipConfig,
    pub rpc_port: i32,
    /// The headless Service: pod `P` is reachable at `P.<headlessService>.<namespace>.svc`.
    pub headless_service: String,
    /// The ConfigMap that carries the assignment (key `assignment.json`).
    pub assignment_config_map: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerConfig {
    pub enabled: bool,
    pub port: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayConfig {
    pub host: String,
    pub port: i32,
    pub starttls: bool,
    /// Credentials are mounted in `TERN_RELAY_CREDENTIALS_DIR` (`username`, `password`).
    pub has_credentials: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipConfig {
    pub port: i32,
    /// DNS names resolving to peers (the headless Service, which publishes not-ready pods).
    pub seeds: Vec<String>,
}

impl AgentConfig {
    /// Parses `config.json`.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}
