//! Which listeners a node runs and where, by the agent's conventions.
//!
//! A listener runs when the configuration enables it (`listeners.<name>.enabled`,
//! cluster-wide), the pool serves it (`TERN_LISTENERS`, a comma-separated list of names; all
//! when unset) and its address variable (`TERN_<NAME>_ADDR`) is not `none`. It listens at
//! that address, or on every interface at the configured port. The PROXY protocol follows
//! the configuration's `proxyProtocol`, or `TERN_PROXY_PROTOCOL` (`true`/`false`) for this
//! node, on every listener that may sit behind the load balancer.

use std::net::SocketAddr;

/// A listener a node may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<K> {
    /// What the engine calls it.
    pub kind: K,
    /// Its name in the configuration and in `TERN_LISTENERS`.
    pub name: &'static str,
    /// The variable that sets its address (`none`: not on this node).
    pub addr_var: &'static str,
    /// Whether it follows the PROXY protocol setting; false for a listener never reached
    /// through the load balancer.
    pub proxied: bool,
}

/// A listener's entry in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Configured {
    /// Whether it runs at all.
    pub enabled: bool,
    /// Its port on every interface, unless its address variable says otherwise.
    pub port: i64,
}

/// One listener to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned<K> {
    /// What the engine calls it.
    pub kind: K,
    /// Its name in the configuration.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether every connection must start with a PROXY header.
    pub proxy_protocol: bool,
}

/// The node's PROXY protocol setting: `TERN_PROXY_PROTOCOL` when set, else `configured`.
pub fn proxy_protocol(
    configured: bool,
    var: impl Fn(&str) -> Option<String>,
) -> Result<bool, String> {
    match var("TERN_PROXY_PROTOCOL").as_deref() {
        None => Ok(configured),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(format!(
            "TERN_PROXY_PROTOCOL={other}: expected true or false"
        )),
    }
}

/// The `candidates` this node runs, in their order (see the module doc). `configured` looks
/// a listener up in the configuration, `proxy_configured` is the configuration's PROXY
/// protocol setting, `var` reads the environment. Errors name the variable or the
/// configuration field at fault.
pub fn plan<K: Copy>(
    candidates: &[Candidate<K>],
    configured: impl Fn(&str) -> Option<Configured>,
    proxy_configured: bool,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Planned<K>>, String> {
    let served: Option<Vec<String>> = var("TERN_LISTENERS").map(|list| {
        list.split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let proxy = proxy_protocol(proxy_configured, &var)?;
    let mut plans = Vec::new();
    for candidate in candidates {
        let name = candidate.name;
        let Some(listener) = configured(name).filter(|l| l.enabled) else {
            continue;
        };
        if served
            .as_ref()
            .is_some_and(|s| !s.iter().any(|n| n == name))
        {
            continue;
        }
        let addr_var = candidate.addr_var;
        let addr = match var(addr_var) {
            Some(v) if v == "none" => continue,
            Some(v) => v.parse().map_err(|e| format!("{addr_var}={v}: {e}"))?,
            None => {
                let port = u16::try_from(listener.port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        format!(
                            "listeners.{name}.port {} in the configuration is not a port",
                            listener.port
                        )
                    })?;
                SocketAddr::from(([0, 0, 0, 0], port))
            }
        };
        plans.push(Planned {
            kind: candidate.kind,
            name,
            addr,
            proxy_protocol: proxy && candidate.proxied,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANDIDATES: [Candidate<u8>; 3] = [
        Candidate {
            kind: 1,
            name: "imap",
            addr_var: "TERN_IMAP_ADDR",
            proxied: true,
        },
        Candidate {
            kind: 2,
            name: "imaps",
            addr_var: "TERN_IMAPS_ADDR",
            proxied: true,
        },
        Candidate {
            kind: 3,
            name: "lmtp",
            addr_var: "TERN_LMTP_ADDR",
            proxied: false,
        },
    ];

    fn configured(name: &str) -> Option<Configured> {
        let (enabled, port) = match name {
            "imap" => (true, 143),
            "imaps" => (true, 993),
            "lmtp" => (true, 24),
            _ => return None,
        };
        Some(Configured { enabled, port })
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn every_enabled_listener_at_its_port_proxied_where_it_may_be() {
        let plans = plan(&CANDIDATES, configured, true, env(&[])).unwrap();
        let got: Vec<_> = plans
            .iter()
            .map(|p| (p.kind, p.addr.to_string(), p.proxy_protocol))
            .collect();
        assert_eq!(
            got,
            [
                (1, "0.0.0.0:143".to_owned(), true),
                (2, "0.0.0.0:993".to_owned(), true),
                (3, "0.0.0.0:24".to_owned(), false),
            ]
        );
    }

    #[test]
    fn pool_address_variables_and_node_setting_narrow_it() {
        let plans = plan(
            &CANDIDATES,
            configured,
            false,
            env(&[
                ("TERN_LISTENERS", " IMAPS,lmtp ,"),
                ("TERN_LMTP_ADDR", "none"),
                ("TERN_IMAPS_ADDR", "127.0.0.1:9993"),
                ("TERN_PROXY_PROTOCOL", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].name, "imaps");
        assert_eq!(plans[0].addr, "127.0.0.1:9993".parse().unwrap());
        assert!(plans[0].proxy_protocol);
    }

    #[test]
    fn bad_values_name_what_is_at_fault() {
        let err = plan(
            &CANDIDATES,
            configured,
            false,
            env(&[("TERN_PROXY_PROTOCOL", "on")]),
        )
        .unwrap_err();
        assert!(err.starts_with("TERN_PROXY_PROTOCOL=on"), "{err}");
        let err = plan(
            &CANDIDATES,
            configured,
            false,
            env(&[("TERN_IMAP_ADDR", "host")]),
        )
        .unwrap_err();
        assert!(err.starts_with("TERN_IMAP_ADDR=host"), "{err}");
        let negative = |name: &str| configured(name).map(|c| Configured { port: -1, ..c });
        let err = plan(&CANDIDATES, negative, false, env(&[])).unwrap_err();
        assert!(err.contains("listeners.imap.port -1"), "{err}");
    }
}
