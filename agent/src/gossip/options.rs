//! How a node's gossip is configured: addresses, seeds and the keyring file, from the agent
//! configuration and the environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tern_gossip::swim;

use crate::node::Node;

/// One seed: a DNS name or an IP address, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Seed {
    /// Parses `host`, `host:port`, `IPv4:port`, `[IPv6]:port` or a bare IPv6 address;
    /// without a port, `default_port`.
    pub fn parse(text: &str, default_port: u16) -> Result<Seed, String> {
        let text = text.trim();
        let bad = |why: &str| format!("gossip seed {text:?}: {why}");
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("the port must be a number from 1 to 65535")),
            Ok(p) => Ok(p),
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("no closing `]`"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address inside `[]`"));
            }
            match after {
                "" => (host, default_port),
                _ => (
                    host,
                    port(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("expected `:port` after `]`"))?,
                    )?,
                ),
            }
        } else if text.parse::<IpAddr>().is_ok() {
            (text, default_port)
        } else if let Some((host, p)) = text.rsplit_once(':') {
            (host, port(p)?)
        } else {
            (text, default_port)
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let ipv6 = host.parse::<std::net::Ipv6Addr>().is_ok();
        if host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'/' || (b == b':' && !ipv6))
        {
            return Err(bad("not a host name or IP address"));
        }
        Ok(Seed {
            host: host.to_owned(),
            port,
        })
    }

    /// Parses a comma-separated list (empty entries are skipped).
    pub fn parse_list(text: &str, default_port: u16) -> Result<Vec<Seed>, String> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| Seed::parse(s, default_port))
            .collect()
    }
}

/// Everything the gossip runtime needs to start.
#[derive(Clone, Debug)]
pub struct GossipOptions {
    /// The cluster name, bound into every packet.
    pub cluster: String,
    /// This node's pod name (its name in the assignment) and pool.
    pub node_name: String,
    pub pool: String,
    /// Where the UDP socket and the TCP listener bind (the same port for both; port 0 picks
    /// one free for both).
    pub listen: SocketAddr,
    /// The gossip address peers are told; `None`: the listen address when it names one
    /// interface, else unknown (peers then learn it from where packets come from).
    pub advertise: Option<SocketAddr>,
    /// This node's agent RPC address, gossiped in its metadata.
    pub rpc: Option<SocketAddr>,
    pub seeds: Vec<Seed>,
    /// The keyring file (see [`super::keys`]).
    pub key_file: PathBuf,
    pub swim: swim::Config,
    /// How often the keyring file is read again.
    pub key_poll: Duration,
    /// How often seed names are resolved again.
    pub seed_refresh: Duration,
    /// How often this node's metadata (shard roles) is rebuilt and, if it changed, announced.
    pub meta_refresh: Duration,
}

/// The address peers reach a listener at: itself, or `pod_ip` with its port when it listens on
/// every interface.
pub fn advertised(listen: SocketAddr, pod_ip: Option<IpAddr>) -> Option<SocketAddr> {
    if listen.ip().is_unspecified() {
        pod_ip.map(|ip| SocketAddr::new(ip, listen.port()))
    } else {
        Some(listen)
    }
}

impl GossipOptions {
    /// Defaults for `cluster` and `node_name`, listening on `listen`, with the keyring in
    /// `key_file`, no seeds.
    pub fn new(
        cluster: &str,
        node_name: &str,
        pool: &str,
        listen: SocketAddr,
        key_file: PathBuf,
    ) -> Self {
        Self {
            cluster: cluster.to_owned(),
            node_name: node_name.to_owned(),
            pool: pool.to_owned(),
            listen,
            advertise: None,
            rpc: None,
            seeds: vec![],
            key_file,
            swim: swim::Config::default(),
            key_poll: Duration::from_secs(5),
            seed_refresh: Duration::from_secs(30),
            meta_refresh: Duration::from_secs(1),
        }
    }

    /// Reads `TERN_GOSSIP_ADDR`, `TERN_GOSSIP_ADVERTISE_ADDR`, `POD_IP`, `TERN_GOSSIP_SEEDS`
    /// and `TERN_GOSSIP_KEY_FILE` through `var`, next to the configuration's gossip port and
    /// seeds. `rpc` is where this node's RPC server listens, if it runs one.
    pub fn from_vars(
        node: &Node,
        rpc: Option<SocketAddr>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let port = u16::try_from(node.config.gossip.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                format!(
                    "gossip.port {} in the configuration is not a port",
                    node.config.gossip.port
                )
            })?;
        let addr = |name: &str| -> Result<Option<SocketAddr>, String> {
            var(name)
                .map(|a| a.trim().parse().map_err(|e| format!("{name}={a}: {e}")))
                .transpose()
        };
        let listen = addr("TERN_GOSSIP_ADDR")?.unwrap_or(SocketAddr::from(([0, 0, 0, 0], port)));
        let pod_ip = match var("POD_IP") {
            Some(ip) => Some(
                ip.trim()
                    .parse::<IpAddr>()
                    .map_err(|e| format!("POD_IP={ip}: {e}"))?,
            ),
            None => None,
        };
        let advertise = match addr("TERN_GOSSIP_ADVERTISE_ADDR")? {
            Some(a) => Some(a),
            None => advertised(listen, pod_ip),
        };
        let key_file = var("TERN_GOSSIP_KEY_FILE")
            .map(PathBuf::from)
            .ok_or("TERN_GOSSIP_KEY_FILE is not set: gossip is always encrypted, it needs the cluster's keyring")?;
        let mut seeds = node
            .config
            .gossip
            .seeds
            .iter()
            .map(|s| Seed::parse(s, port))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the configuration's {e}"))?;
        if let Some(list) = var("TERN_GOSSIP_SEEDS") {
            seeds.extend(
                Seed::parse_list(&list, port).map_err(|e| format!("TERN_GOSSIP_SEEDS: {e}"))?,
            );
        }
        seeds.dedup();
        let mut options = Self::new(
            &node.config.cluster,
            &node.name,
            &node.pool,
            listen,
            key_file,
        );
        options.advertise = advertise;
        options.rpc = rpc.and_then(|r| advertised(r, pod_ip));
        options.seeds = seeds;
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_every_form() {
        let s = |host: &str, port| Seed {
            host: host.into(),
            port,
        };
        let cases = [
            (
                "mail-nodes.mail.svc.cluster.local",
                s("mail-nodes.mail.svc.cluster.local", 7946),
            ),
            ("mail-nodes:8000", s("mail-nodes", 8000)),
            (" 10.0.0.1:7000 ", s("10.0.0.1", 7000)),
            ("10.0.0.1", s("10.0.0.1", 7946)),
            ("[fd00::1]:7001", s("fd00::1", 7001)),
            ("[fd00::1]", s("fd00::1", 7946)),
            ("fd00::1", s("fd00::1", 7946)),
            ("localhost", s("localhost", 7946)),
        ];
        for (text, want) in cases {
            assert_eq!(Seed::parse(text, 7946), Ok(want.clone()), "{text}");
            assert_eq!(Seed::parse(&want.to_string(), 1), Ok(want), "{text}");
        }
        for bad in [
            "",
            ":7000",
            "host:0",
            "host:99999",
            "host:x",
            "[fd00::1",
            "[nope]:1",
            "[fd00::1]x",
            "a b",
            "http://x",
        ] {
            let e = Seed::parse(bad, 7946).unwrap_err();
            assert!(e.starts_with("gossip seed"), "{bad}: {e}");
        }
        assert_eq!(
            Seed::parse_list("a:1, b ,,", 2).unwrap(),
            [s("a", 1), s("b", 2)]
        );
        assert!(Seed::parse_list("a:1,b:x", 2).is_err());
    }

    #[test]
    fn advertised_uses_the_pod_ip_for_wildcard_listeners() {
        let any: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        let one: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let pod: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(advertised(any, None), None);
        assert_eq!(
            advertised(any, Some(pod)),
            Some("10.1.2.3:7946".parse().unwrap())
        );
        assert_eq!(advertised(one, Some(pod)), Some(one));
    }
}
