//! Which mail listeners a node runs and where ([`plan`]), their TLS ([`tls_config`]), and
//! running them ([`Listeners`]).
//!
//! A listener runs when the agent configuration enables it (`listeners.<name>.enabled`,
//! cluster-wide), the pool serves it (`TERN_LISTENERS`, a comma-separated list; all when
//! unset) and its address variable is not `none`. It listens on `TERN_<NAME>_ADDR` or on
//! every interface at the configured port. The PROXY protocol follows the configuration's
//! `proxyProtocol`, or `TERN_PROXY_PROTOCOL` (`true`/`false`) for this node; never on LMTP,
//! which is local delivery from inside the cluster and never behind the load balancer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_crds::agent_config::AgentConfig;
use tern_smtp::{Limits, ListenerConfig, ListenerKind, Server, Throttle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{MailBackend, SmtpStats};

/// How long sessions in the middle of a message may finish it once the agent stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Each mail listener: its kind, its name in the configuration and `TERN_LISTENERS`, and
/// its address variable.
pub const KINDS: [(ListenerKind, &str, &str); 4] = [
    (ListenerKind::Smtp, "smtp", "TERN_SMTP_ADDR"),
    (
        ListenerKind::Submission,
        "submission",
        "TERN_SUBMISSION_ADDR",
    ),
    (ListenerKind::Smtps, "smtps", "TERN_SMTPS_ADDR"),
    (ListenerKind::Lmtp, "lmtp", "TERN_LMTP_ADDR"),
];

/// One listener to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerPlan {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    pub proxy_protocol: bool,
}

/// The listeners this node runs (see the module doc); `var` reads the environment.
pub fn plan(
    config: &AgentConfig,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ListenerPlan>, String> {
    let served: Option<Vec<String>> = var("TERN_LISTENERS").map(|list| {
        list.split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let proxy_protocol = match var("TERN_PROXY_PROTOCOL").as_deref() {
        None => config.proxy_protocol,
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(format!(
                "TERN_PROXY_PROTOCOL={other}: expected true or false"
            ));
        }
    };
    let mut plans = Vec::new();
    for (kind, name, addr_var) in KINDS {
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
        plans.push(ListenerPlan {
            kind,
            addr,
            proxy_protocol: proxy_protocol && kind != ListenerKind::Lmtp,
        });
    }
    Ok(plans)
}

/// The listeners' TLS configuration from a certificate chain and its key (PEM): TLS 1.2 and
/// 1.3 with ring's safe defaults; mail clients do not use ALPN.
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate PEM holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key PEM: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
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
mod tests {
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

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
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

    #[test]
    fn tls_needs_a_certificate_and_a_matching_key() {
        let ca = crate::pki::LocalPki::generate("tls-test").unwrap();
        let (cert, key) = ca.issue(&["mx.example.test".to_owned()]).unwrap();
        assert!(tls_config(cert.as_bytes(), key.as_bytes()).is_ok());
        assert!(tls_config(b"", key.as_bytes()).is_err());
        assert!(tls_config(cert.as_bytes(), b"not a key").is_err());
    }
}
