//! Which IMAP listeners a node runs and where ([`plan`]), and running them
//! ([`ImapListeners`]).
//!
//! The rules are the SMTP listeners' (`tern_listen::plan`, see [`crate::smtp::listeners`]):
//! a listener runs when the agent configuration enables it (`listeners.imap`,
//! `listeners.imaps`), the pool serves it (`TERN_LISTENERS`; all when unset) and its
//! address variable (`TERN_IMAP_ADDR`, `TERN_IMAPS_ADDR`) is not `none`; it listens there,
//! or on every interface at the configured port. Both follow the PROXY protocol setting
//! (`proxyProtocol`, or `TERN_PROXY_PROTOCOL` for this node). Their TLS is the SMTP
//! listeners' ([`crate::smtp::listeners::tls_config`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tern_crds::agent_config::AgentConfig;
use tern_imap::{Limits, ListenerConfig, Server, Throttle};
use tern_listen::plan::Candidate;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::RoutingBackend;
use super::proxy::RelayTarget;
use crate::rpc::Handover;
use crate::smtp::listeners::configured;

/// Each IMAP listener: whether TLS starts with the first byte (the kind), its name in the
/// configuration and `TERN_LISTENERS`, its address variable.
pub const CANDIDATES: [Candidate<bool>; 2] = [
    Candidate {
        kind: false,
        name: "imap",
        addr_var: "TERN_IMAP_ADDR",
        proxied: true,
    },
    Candidate {
        kind: true,
        name: "imaps",
        addr_var: "TERN_IMAPS_ADDR",
        proxied: true,
    },
];

/// One IMAP listener to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImapPlan {
    /// `imap` or `imaps`.
    pub name: &'static str,
    pub addr: SocketAddr,
    pub implicit_tls: bool,
    /// Whether every connection starts with a PROXY header.
    pub proxy_protocol: bool,
}

/// The IMAP listeners this node runs (see the module doc); `var` reads the environment.
pub fn plan(
    config: &AgentConfig,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ImapPlan>, String> {
    let plans =
        tern_listen::plan::plan(&CANDIDATES, configured(config), config.proxy_protocol, var)?;
    Ok(plans
        .into_iter()
        .map(|p| ImapPlan {
            name: p.name,
            addr: p.addr,
            implicit_tls: p.kind,
            proxy_protocol: p.proxy_protocol,
        })
        .collect())
}

/// The running IMAP listeners of this node.
pub struct ImapListeners {
    tasks: Vec<(&'static str, SocketAddr, JoinHandle<()>)>,
    stop: watch::Sender<bool>,
}

impl ImapListeners {
    /// Binds every planned listener (failing, naming the address, when one cannot be bound)
    /// and serves each in its own task, with one [`Throttle`] for both, so that a client's
    /// connections and failed logins count together on 143 and 993. With `handover` (and a
    /// backend that relays), the sessions other nodes relay here are served too (see
    /// [`super::proxy`]): the RPC server hands them over through it.
    pub async fn start(
        plans: &[ImapPlan],
        hostname: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        backend: Arc<RoutingBackend>,
        handover: Option<&Handover>,
    ) -> Result<ImapListeners, String> {
        let limits = Limits::default();
        let throttle = Throttle::new(limits.clone());
        if let (Some(handover), Some(relay)) = (handover, backend.relaying()) {
            // No listener of its own: the connection arrives through the RPC server, and the
            // client's TLS (or not) was the relaying node's listener's.
            let config = ListenerConfig {
                hostname: hostname.to_owned(),
                tls: None,
                implicit_tls: false,
                proxy_protocol: false,
                limits: limits.clone(),
            };
            let server = Server::with_throttle(config, backend.clone(), throttle.clone())
                .map_err(|e| format!("relayed IMAP sessions: {e}"))?;
            let target = RelayTarget::new(server, relay.host().clone(), relay.stats().clone());
            if handover.set(Arc::new(target)).is_err() {
                return Err("relayed IMAP sessions are served already".into());
            }
        }
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
                proxy_protocol: plan.proxy_protocol,
                limits: limits.clone(),
            };
            let server = Server::with_throttle(config, backend.clone(), throttle.clone())
                .map_err(|e| format!("{} listener: {e}", plan.name))?;
            let listener = TcpListener::bind(plan.addr)
                .await
                .map_err(|e| format!("{} listener on {}: {e}", plan.name, plan.addr))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            bound.push((plan, server, listener, addr));
        }
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for (plan, server, listener, addr) in bound {
            let mut stopped = stop.subscribe();
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tracing::info!(listener = plan.name, %addr, proxy_protocol = plan.proxy_protocol, tls = tls.is_some(), "serving IMAP");
            tasks.push((
                plan.name,
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
    use crate::smtp::listeners::tests::env;

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
        assert!(plans.iter().all(|p| !p.proxy_protocol));
    }

    #[test]
    fn proxy_protocol_from_the_configuration_or_the_node() {
        let mut c = config(true, true);
        c.proxy_protocol = true;
        let plans = plan(&c, env(&[])).unwrap();
        assert!(plans.iter().all(|p| p.proxy_protocol));
        let plans = plan(&c, env(&[("TERN_PROXY_PROTOCOL", "false")])).unwrap();
        assert!(plans.iter().all(|p| !p.proxy_protocol));
        let plans = plan(&config(true, true), env(&[("TERN_PROXY_PROTOCOL", "true")])).unwrap();
        assert!(plans.iter().all(|p| p.proxy_protocol));
        let err = plan(&c, env(&[("TERN_PROXY_PROTOCOL", "maybe")])).unwrap_err();
        assert!(err.contains("TERN_PROXY_PROTOCOL"), "{err}");
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
