//! Which IMAP listeners a node runs and where ([`plan`]), and running them
//! ([`ImapListeners`]).
//!
//! As for the SMTP listeners: a listener runs when the agent configuration enables it
//! (`listeners.imap`, `listeners.imaps`), the pool serves it (`TERN_LISTENERS`; all when
//! unset) and its address variable (`TERN_IMAP_ADDR`, `TERN_IMAPS_ADDR`) is not `none`. It
//! listens there, or on every interface at the configured port. Their TLS is the SMTP
//! listeners' ([`crate::smtp::listeners::tls_config`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tern_crds::agent_config::AgentConfig;
use tern_imap::{Limits, ListenerConfig, Server, Throttle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::StoreBackend;

/// Each IMAP listener: its name in the configuration and `TERN_LISTENERS`, its address
/// variable, and whether TLS starts with the first byte.
pub const KINDS: [(&str, &str, bool); 2] = [
    ("imap", "TERN_IMAP_ADDR", false),
    ("imaps", "TERN_IMAPS_ADDR", true),
];

/// One IMAP listener to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImapPlan {
    /// `imap` or `imaps`.
    pub name: &'static str,
    pub addr: SocketAddr,
    pub implicit_tls: bool,
}

/// The IMAP listeners this node runs (see the module doc); `var` reads the environment.
pub fn plan(
    config: &AgentConfig,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ImapPlan>, String> {
    let served: Option<Vec<String>> = var("TERN_LISTENERS").map(|list| {
        list.split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let mut plans = Vec::new();
    for (name, addr_var, implicit_tls) in KINDS {
        let Some(listener) = config.listeners.get(name).filter(|l| l.enabled) else {
            continue;
        };
        if served
            .as_ref()
            .is_some_and(|s| !s.iter().any(|n| n == name))
        {
            continue;
        }
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
        plans.push(ImapPlan {
            name,
            addr,
            implicit_tls,
        });
    }
    Ok(plans)
}

/// The running IMAP listeners of this node.
pub struct ImapListeners {
    tasks: Vec<(&'static str, SocketAddr, JoinHandle<()>)>,
    stop: watch::Sender<bool>,
}

impl ImapListeners {
    /// Binds every planned listener (failing, naming the address, when one cannot be bound)
    /// and serves each in its own task, with one [`Throttle`] for both, so that a client's
    /// connections and failed logins count together on 143 and 993.
    pub async fn start(
        plans: &[ImapPlan],
        hostname: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        backend: Arc<StoreBackend>,
    ) -> Result<ImapListeners, String> {
        let limits = Limits::default();
        let throttle = Throttle::new(limits.clone());
        let mut bound = Vec::new();
        for plan in plans {
            if plan.implicit_tls && tls.is_none() {
                return Err(format!(
                    "imaps on {} needs a certificate (TERN_TLS_CERT_FILE, TERN_TLS_KEY_FILE)",
                    plan.addr
                ));
            }
            let config = ListenerConfig {
                hostname: hostname.to_owned(),
                tls: tls.clone(),
                implicit_tls: plan.implicit_tls,
                limits: limits.clone(),
            };
            let server = Server::with_throttle(config, backend.clone(), throttle.clone())
                .map_err(|e| format!("{} listener: {e}", plan.name))?;
            let listener = TcpListener::bind(plan.addr)
                .await
                .map_err(|e| format!("{} listener on {}: {e}", plan.name, plan.addr))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            bound.push((plan.name, server, listener, addr));
        }
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for (name, server, listener, addr) in bound {
            let mut stopped = stop.subscribe();
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tracing::info!(listener = name, %addr, tls = tls.is_some(), "serving IMAP");
            tasks.push((
                name,
                addr,
                tokio::spawn(async move { server.serve(listener, shutdown).await }),
            ));
        }
        Ok(ImapListeners { tasks, stop })
    }

    /// Where each listener listens.
    pub fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        self.tasks.iter().map(|(n, a, _)| (*n, *a)).collect()
    }

    /// Stops accepting, ends the sessions (clients reconnect to another node) and returns
    /// once every listener has stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for (name, _, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(listener = name, error = %e, "IMAP listener task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tern_crds::agent_config::ListenerConfig as Configured;

    use super::*;

    fn config(imap: bool, imaps: bool) -> AgentConfig {
        let mut c = crate::dev::agent_config(&crate::dev::Options::default());
        c.listeners = BTreeMap::from([
            (
                "smtp".to_owned(),
                Configured {
                    enabled: true,
                    port: 25,
                },
            ),
            (
                "imap".to_owned(),
                Configured {
                    enabled: imap,
                    port: 143,
                },
            ),
            (
                "imaps".to_owned(),
                Configured {
                    enabled: imaps,
                    port: 993,
                },
            ),
        ]);
        c
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn names(plans: &[ImapPlan]) -> Vec<&'static str> {
        plans.iter().map(|p| p.name).collect()
    }

    #[test]
    fn enabled_listeners_on_every_interface_by_default() {
        let plans = plan(&config(true, true), env(&[])).unwrap();
        assert_eq!(names(&plans), ["imap", "imaps"]);
        assert_eq!(plans[0].addr, "0.0.0.0:143".parse().unwrap());
        assert!(!plans[0].implicit_tls);
        assert_eq!(plans[1].addr, "0.0.0.0:993".parse().unwrap());
        assert!(plans[1].implicit_tls);
        assert!(plan(&config(false, false), env(&[])).unwrap().is_empty());
    }

    #[test]
    fn the_pool_and_the_address_variables_narrow_it() {
        let plans = plan(
            &config(true, true),
            env(&[
                ("TERN_LISTENERS", "smtp,imaps"),
                ("TERN_IMAPS_ADDR", "127.0.0.1:9993"),
            ]),
        )
        .unwrap();
        assert_eq!(names(&plans), ["imaps"]);
        assert_eq!(plans[0].addr, "127.0.0.1:9993".parse().unwrap());
        let plans = plan(&config(true, true), env(&[("TERN_IMAP_ADDR", "none")])).unwrap();
        assert_eq!(names(&plans), ["imaps"]);
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        let err = plan(
            &config(true, false),
            env(&[("TERN_IMAP_ADDR", "localhost")]),
        )
        .unwrap_err();
        assert!(err.starts_with("TERN_IMAP_ADDR=localhost"), "{err}");
        let mut c = config(true, false);
        c.listeners.get_mut("imap").unwrap().port = 0;
        let err = plan(&c, env(&[])).unwrap_err();
        assert!(err.contains("listeners.imap.port 0"), "{err}");
    }
}
