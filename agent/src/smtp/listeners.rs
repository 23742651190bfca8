//! Which mail listeners a node runs and where ([`plan`]), their TLS ([`tls_config`]), and
//! running them ([`Listeners`]).
//!
//! The rules are `tern_listen::plan`'s, shared with the IMAP listeners: a listener runs when
//! the agent configuration enables it (`listeners.<name>.enabled`, cluster-wide), the pool
//! serves it (`TERN_LISTENERS`, a comma-separated list; all when unset) and its address
//! variable is not `none`. It listens on `TERN_<NAME>_ADDR` or on every interface at the
//! configured port. The PROXY protocol follows the configuration's `proxyProtocol`, or
//! `TERN_PROXY_PROTOCOL` (`true`/`false`) for this node; never on LMTP, which is local
//! delivery from inside the cluster and never behind the load balancer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_crds::agent_config::AgentConfig;
use tern_listen::plan::{Candidate, Configured, Planned};
use tern_smtp::{Limits, ListenerConfig, ListenerKind, Server, Throttle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{MailBackend, SmtpStats};

/// The listeners' TLS configuration from a certificate chain and its key (PEM); the IMAP
/// listeners use the same.
pub use tern_listen::tls::server_config as tls_config;

/// How long sessions in the middle of a message may finish it once the agent stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Each mail listener: its kind, its name in the configuration and `TERN_LISTENERS`, its
/// address variable, and whether it may sit behind the load balancer.
pub const CANDIDATES: [Candidate<ListenerKind>; 4] = [
    candidate(ListenerKind::Smtp, "smtp", "TERN_SMTP_ADDR"),
    candidate(
        ListenerKind::Submission,
        "submission",
        "TERN_SUBMISSION_ADDR",
    ),
    candidate(ListenerKind::Smtps, "smtps", "TERN_SMTPS_ADDR"),
    candidate(ListenerKind::Lmtp, "lmtp", "TERN_LMTP_ADDR"),
];

const fn candidate(
    kind: ListenerKind,
    name: &'static str,
    addr_var: &'static str,
) -> Candidate<ListenerKind> {
    Candidate {
        kind,
        name,
        addr_var,
        proxied: !matches!(kind, ListenerKind::Lmtp),
    }
}

/// One listener to run.
pub type ListenerPlan = Planned<ListenerKind>;

/// Looks a listener up in the agent configuration, for `tern_listen::plan::plan`.
pub fn configured(config: &AgentConfig) -> impl Fn(&str) -> Option<Configured> + '_ {
    |name| {
        config.listeners.get(name).map(|l| Configured {
            enabled: l.enabled,
            port: i64::from(l.port),
        })
    }
}

/// The listeners this node runs (see the module doc); `var` reads the environment.
pub fn plan(
    config: &AgentConfig,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ListenerPlan>, String> {
    tern_listen::plan::plan(&CANDIDATES, configured(config), config.proxy_protocol, var)
}

/// The running mail listeners of this node.
pub struct Listeners {
    tasks: Vec<(ListenerKind, SocketAddr, JoinHandle<()>)>,
    stop: watch::Sender<bool>,
}

impl Listeners {
    /// Binds every planned listener (failing, naming the address, when one cannot be bound)
    /// and serves each in its own task. One [`Throttle`] for all, so that one client's
    /// connections and failed passwords count together on every port.
    pub async fn start(
        plans: &[ListenerPlan],
        hostname: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        backend: Arc<MailBackend>,
        stats: &SmtpStats,
    ) -> Result<Listeners, String> {
        let limits = Limits {
            shutdown_grace: SHUTDOWN_GRACE,
            ..Limits::default()
        };
        let throttle = Throttle::new(limits.clone());
        let mut bound = Vec::new();
        for plan in plans {
            if plan.kind == ListenerKind::Smtps && tls.is_none() {
                return Err(format!(
                    "smtps on {} needs a certificate (TERN_TLS_CERT_FILE, TERN_TLS_KEY_FILE)",
                    plan.addr
                ));
            }
            let mut config = ListenerConfig::new(plan.kind, hostname);
            config.tls = tls.clone();
            config.proxy_protocol = plan.proxy_protocol;
            config.limits = limits.clone();
            let server = Server::with_throttle(config, backend.clone(), throttle.clone())
                .map_err(|e| format!("{} listener: {e}", plan.kind.as_str()))?;
            let listener = TcpListener::bind(plan.addr)
                .await
                .map_err(|e| format!("{} listener on {}: {e}", plan.kind.as_str(), plan.addr))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            bound.push((plan, server, listener, addr));
        }
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for (plan, server, listener, addr) in bound {
            stats.register(plan.kind, server.stats());
            let mut stopped = stop.subscribe();
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tracing::info!(listener = plan.kind.as_str(), %addr, proxy_protocol = plan.proxy_protocol, tls = tls.is_some(), "serving mail");
            tasks.push((
                plan.kind,
                addr,
                tokio::spawn(server.serve(listener, shutdown)),
            ));
        }
        Ok(Listeners { tasks, stop })
    }

    /// Where each listener listens.
    pub fn addresses(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.tasks.iter().map(|(k, a, _)| (*k, *a)).collect()
    }

    /// Stops accepting, tells idle sessions `421`, lets sessions in the middle of a message
    /// finish within [`SHUTDOWN_GRACE`], and returns once every listener has stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for (kind, _, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(listener = kind.as_str(), error = %e, "mail listener task failed");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use tern_crds::agent_config::ListenerConfig as Configured;

    use super::*;

    fn config(proxy_protocol: bool) -> AgentConfig {
        let listener = |enabled, port| Configured { enabled, port };
        AgentConfig {
            cluster: "mail".into(),
            namespace: "ns".into(),
            domains: vec!["example.test".into()],
            shards: 1,
            replication_factor: 1,
            read_replicas: 0,
            default_groups: 1,
            listeners: BTreeMap::from([
                ("smtp".to_owned(), listener(true, 25)),
                ("submission".to_owned(), listener(true, 587)),
                ("smtps".to_owned(), listener(true, 465)),
                ("lmtp".to_owned(), listener(false, 24)),
                ("imap".to_owned(), listener(true, 143)),
            ]),
            health_port: 8080,
            proxy_protocol,
            relay: None,
            gossip: tern_crds::agent_config::GossipConfig {
                port: 7946,
                seeds: vec![],
            },
            rpc_port: 7947,
            headless_service: "mail-nodes".into(),
            assignment_config_map: "mail-assignment".into(),
        }
    }

    pub(crate) fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn kinds(plans: &[ListenerPlan]) -> Vec<&'static str> {
        plans.iter().map(|p| p.kind.as_str()).collect()
    }

    #[test]
    fn enabled_listeners_on_every_interface_by_default() {
        let plans = plan(&config(false), env(&[])).unwrap();
        assert_eq!(kinds(&plans), ["smtp", "submission", "smtps"]);
        assert_eq!(plans[0].addr, "0.0.0.0:25".parse().unwrap());
        assert!(plans.iter().all(|p| !p.proxy_protocol));
    }

    #[test]
    fn the_pool_and_the_address_variables_narrow_it() {
        let plans = plan(
            &config(false),
            env(&[
                ("TERN_LISTENERS", "smtp, lmtp,imap"),
                ("TERN_SMTP_ADDR", "127.0.0.1:2525"),
            ]),
        )
        .unwrap();
        // lmtp is disabled cluster-wide: the pool cannot turn it on.
        assert_eq!(kinds(&plans), ["smtp"]);
        assert_eq!(plans[0].addr, "127.0.0.1:2525".parse().unwrap());
        let plans = plan(
            &config(false),
            env(&[
                ("TERN_SUBMISSION_ADDR", "none"),
                ("TERN_SMTPS_ADDR", "none"),
            ]),
        )
        .unwrap();
        assert_eq!(kinds(&plans), ["smtp"]);
    }

    #[test]
    fn proxy_protocol_from_the_configuration_or_the_node_never_on_lmtp() {
        let mut c = config(true);
        c.listeners.get_mut("lmtp").unwrap().enabled = true;
        let plans = plan(&c, env(&[])).unwrap();
        let proxied: Vec<(&str, bool)> = plans
            .iter()
            .map(|p| (p.kind.as_str(), p.proxy_protocol))
            .collect();
        assert_eq!(
            proxied,
            [
                ("smtp", true),
                ("submission", true),
                ("smtps", true),
                ("lmtp", false)
            ]
        );
        let plans = plan(&c, env(&[("TERN_PROXY_PROTOCOL", "false")])).unwrap();
        assert!(plans.iter().all(|p| !p.proxy_protocol));
        let plans = plan(&config(false), env(&[("TERN_PROXY_PROTOCOL", "true")])).unwrap();
        assert!(plans[0].proxy_protocol);
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        let err = plan(&config(false), env(&[("TERN_SMTP_ADDR", "localhost")])).unwrap_err();
        assert!(err.starts_with("TERN_SMTP_ADDR=localhost"), "{err}");
        let err = plan(&config(false), env(&[("TERN_PROXY_PROTOCOL", "yes")])).unwrap_err();
        assert!(err.contains("TERN_PROXY_PROTOCOL"), "{err}");
        let mut c = config(false);
        c.listeners.get_mut("smtp").unwrap().port = 70000;
        let err = plan(&c, env(&[])).unwrap_err();
        assert!(err.contains("listeners.smtp.port 70000"), "{err}");
    }
}
