//! Where a node's RPC server is reached, by pod name.
//!
//! In Kubernetes every pod has a stable DNS name through the headless Service:
//! `<pod>.<headless>.<namespace>.svc:<rpcPort>` (the agent certificate names it). Outside
//! Kubernetes a JSON file maps pod names to `host:port` (`TERN_PEERS_FILE`), re-read as the
//! assignment is followed, so nodes may be added while the cluster runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};

/// The address book of the cluster's RPC servers.
#[derive(Debug)]
pub struct Peers(Source);

#[derive(Debug)]
enum Source {
    Dns {
        headless: String,
        namespace: String,
        port: u16,
    },
    File {
        path: PathBuf,
        known: RwLock<BTreeMap<String, String>>,
    },
    Fixed(BTreeMap<String, String>),
}

impl Peers {
    /// Names through the headless Service.
    pub fn dns(headless: &str, namespace: &str, port: u16) -> Self {
        Self(Source::Dns {
            headless: headless.to_owned(),
            namespace: namespace.to_owned(),
            port,
        })
    }

    /// Addresses from a JSON object `{"<pod name>": "host:port", …}`, read now and at
    /// every [`refresh`](Self::refresh).
    pub fn file(path: PathBuf) -> Self {
        let peers = Self(Source::File {
            path,
            known: RwLock::default(),
        });
        peers.refresh();
        peers
    }

    /// A fixed map (tests).
    pub fn fixed(map: BTreeMap<String, String>) -> Self {
        Self(Source::Fixed(map))
    }

    /// Re-reads the file, if addresses come from one. A file that cannot be read or parsed
    /// leaves the known addresses as they were.
    pub fn refresh(&self) {
        let Source::File { path, known } = &self.0 else {
            return;
        };
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                serde_json::from_str::<BTreeMap<String, String>>(&text).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(map) => *known.write().unwrap_or_else(PoisonError::into_inner) = map,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the peers file")
            }
        }
    }

    /// The RPC address of the node named `name`.
    pub fn address(&self, name: &str) -> Option<String> {
        match &self.0 {
            Source::Dns {
                headless,
                namespace,
                port,
            } => Some(format!("{name}.{headless}.{namespace}.svc:{port}")),
            Source::File { known, .. } => known
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(name)
                .cloned(),
            Source::Fixed(map) => map.get(name).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_through_dns_or_a_file_that_may_change() {
        let dns = Peers::dns("mail-nodes", "tern", 7400);
        assert_eq!(
            dns.address("mail-default-0").as_deref(),
            Some("mail-default-0.mail-nodes.tern.svc:7400")
        );
        let dir = std::env::temp_dir().join(format!("tern-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("peers.json");
        std::fs::write(&path, r#"{"a-default-0":"127.0.0.1:1"}"#).unwrap();
        let file = Peers::file(path.clone());
        assert_eq!(file.address("a-default-0").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(file.address("a-default-1"), None);
        std::fs::write(&path, "{ broken").unwrap();
        file.refresh();
        assert_eq!(
            file.address("a-default-0").as_deref(),
            Some("127.0.0.1:1"),
            "a broken file keeps what was known"
        );
        std::fs::write(
            &path,
            r#"{"a-default-0":"127.0.0.1:1","a-default-1":"127.0.0.1:2"}"#,
        )
        .unwrap();
        file.refresh();
        assert_eq!(file.address("a-default-1").as_deref(), Some("127.0.0.1:2"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
