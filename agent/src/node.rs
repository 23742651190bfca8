//! Who this node is: identity from the environment, cluster configuration from a file.

use std::net::SocketAddr;
use std::path::PathBuf;

use tern_crds::agent_config::AgentConfig;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{var}={value:?}: {why}")]
    Invalid {
        var: &'static str,
        value: String,
        why: String,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent configuration: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Everything the agent knows about itself at start.
#[derive(Clone, Debug)]
pub struct Node {
    /// Pod name `<cluster>-<pool>-<ordinal>`: the node's name in the assignment.
    pub name: String,
    /// Pool (`TERN_ROLE`).
    pub pool: String,
    pub config: AgentConfig,
    pub assignment_file: PathBuf,
    /// Where `/healthz/*` and `/metrics` are served.
    pub health_addr: SocketAddr,
}

impl Node {
    /// Reads `POD_NAME`, `TERN_ROLE`, `TERN_CLUSTER`, `TERN_CONFIG_FILE`,
    /// `TERN_ASSIGNMENT_FILE` and optionally `TERN_HEALTH_ADDR` through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, NodeError> {
        let need = |name: &'static str| {
            var(name)
                .filter(|v| !v.is_empty())
                .ok_or(NodeError::Missing(name))
        };
        let name = need("POD_NAME")?;
        let pool = need("TERN_ROLE")?;
        let cluster = need("TERN_CLUSTER")?;
        let config_path = PathBuf::from(need("TERN_CONFIG_FILE")?);
        let text = std::fs::read_to_string(&config_path).map_err(|source| NodeError::Read {
            path: config_path.clone(),
            source,
        })?;
        let config = AgentConfig::from_json(&text).map_err(|source| NodeError::Config {
            path: config_path.clone(),
            source,
        })?;
        if config.cluster != cluster {
            return Err(NodeError::Invalid {
                var: "TERN_CLUSTER",
                value: cluster,
                why: format!(
                    "the configuration in {} is for cluster {:?}",
                    config_path.display(),
                    config.cluster
                ),
            });
        }
        let prefix = format!("{cluster}-{pool}-");
        if !name
            .strip_prefix(&prefix)
            .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(NodeError::Invalid {
                var: "POD_NAME",
                value: name,
                why: format!("expected {prefix}<ordinal>"),
            });
        }
        let health_addr = match var("TERN_HEALTH_ADDR") {
            Some(a) => a
                .parse()
                .map_err(|e: std::net::AddrParseError| NodeError::Invalid {
                    var: "TERN_HEALTH_ADDR",
                    value: a,
                    why: e.to_string(),
                })?,
            None => SocketAddr::from(([0, 0, 0, 0], config.health_port as u16)),
        };
        Ok(Self {
            name,
            pool,
            config,
            assignment_file: PathBuf::from(need("TERN_ASSIGNMENT_FILE")?),
            health_addr,
        })
    }
}
