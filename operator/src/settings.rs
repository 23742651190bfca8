//! Operator settings, from the environment (set by the Helm chart / kustomize Deployment).

use std::net::SocketAddr;
use std::time::Duration;

use crate::render;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Image and cluster DNS domain for rendered children.
    pub render: render::Settings,
    /// Watch one namespace only (`TERN_WATCH_NAMESPACE`); all namespaces when absent.
    pub watch_namespace: Option<String>,
    /// Elect a leader with a Lease before reconciling (`TERN_LEADER_ELECTION`, default true).
    pub leader_election: bool,
    /// Namespace of the leader Lease (`POD_NAMESPACE`).
    pub lease_namespace: String,
    /// Lease name (`TERN_LEASE_NAME`).
    pub lease_name: String,
    /// This replica's identity (`POD_NAME`, else the host name).
    pub identity: String,
    pub lease_duration: Duration,
    /// `/metrics`, `/healthz`, `/readyz` (`TERN_HTTP_ADDR`, default 0.0.0.0:8080).
    pub http_addr: SocketAddr,
    /// Log as JSON lines (`TERN_LOG_FORMAT=json`) or text.
    pub log_json: bool,
}

/// Image of the agent when a MailCluster names none; the release sets it at build time.
pub const DEFAULT_AGENT_IMAGE: &str = concat!("ghcr.io/tern-mail/tern:", env!("CARGO_PKG_VERSION"));

impl Settings {
    /// Reads settings through `var` (the process environment in production).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let flag = |name: &str, default: bool| -> Result<bool, String> {
            match var(name).as_deref() {
                None | Some("") => Ok(default),
                Some("true" | "1" | "yes") => Ok(true),
                Some("false" | "0" | "no") => Ok(false),
                Some(other) => Err(format!("{name}={other:?}: expected true or false")),
            }
        };
        let http_addr = var("TERN_HTTP_ADDR").unwrap_or_else(|| "0.0.0.0:8080".into());
        let lease_secs: u64 = match var("TERN_LEASE_DURATION_SECONDS") {
            Some(s) => s.parse().map_err(|_| {
                format!("TERN_LEASE_DURATION_SECONDS={s:?}: expected whole seconds")
            })?,
            None => 15,
        };
        Ok(Self {
            render: render::Settings {
                default_image: var("TERN_AGENT_IMAGE")
                    .unwrap_or_else(|| DEFAULT_AGENT_IMAGE.into()),
                cluster_domain: var("TERN_CLUSTER_DOMAIN")
                    .unwrap_or_else(|| "cluster.local".into()),
            },
            watch_namespace: var("TERN_WATCH_NAMESPACE").filter(|s| !s.is_empty()),
            leader_election: flag("TERN_LEADER_ELECTION", true)?,
            lease_namespace: var("POD_NAMESPACE").unwrap_or_else(|| "tern-system".into()),
            lease_name: var("TERN_LEASE_NAME").unwrap_or_else(|| "tern-operator-leader".into()),
            identity: var("POD_NAME")
                .or_else(|| var("HOSTNAME"))
                .unwrap_or_else(|| "tern-operator".into()),
            lease_duration: Duration::from_secs(lease_secs.max(5)),
            http_addr: http_addr
                .parse()
                .map_err(|_| format!("TERN_HTTP_ADDR={http_addr:?}: expected host:port"))?,
            log_json: var("TERN_LOG_FORMAT").as_deref() == Some("json"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        let s = from(&[]).unwrap();
        assert!(s.leader_election);
        assert_eq!(s.render.cluster_domain, "cluster.local");
        assert_eq!(s.http_addr.port(), 8080);
        let s = from(&[
            ("TERN_LEADER_ELECTION", "false"),
            ("TERN_AGENT_IMAGE", "x/y:1"),
            ("POD_NAME", "op-0"),
        ])
        .unwrap();
        assert!(!s.leader_election);
        assert_eq!(s.render.default_image, "x/y:1");
        assert_eq!(s.identity, "op-0");
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            from(&[("TERN_LEADER_ELECTION", "maybe")])
                .unwrap_err()
                .contains("TERN_LEADER_ELECTION")
        );
        assert!(
            from(&[("TERN_HTTP_ADDR", "nope")])
                .unwrap_err()
                .contains("TERN_HTTP_ADDR")
        );
    }
}
