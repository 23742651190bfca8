//! Where a recipient domain's mail goes next: the configured relay (smarthost), the domain's
//! MX hosts (RFC 5321 §5.1: by preference, the domain's own addresses when it has no MX, no
//! mail at all for a null MX, RFC 7505), or one fixed address. Behind [`NextHops`] so tests
//! point delivery at local ports without DNS.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use hickory_resolver::TokioResolver;

use super::client::{Credentials, TlsPolicy};

/// One host to try, with its addresses in order.
#[derive(Clone, Debug)]
pub struct Hop {
    /// The host's name (for TLS and logs).
    pub host: String,
    pub addrs: Vec<SocketAddr>,
    pub tls: TlsPolicy,
    pub credentials: Option<Credentials>,
}

/// Why no host could be found for a domain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The domain does not exist or accepts no mail: final for its recipients.
    #[error("{0}")]
    Permanent(String),
    /// DNS did not answer: try again later.
    #[error("{0}")]
    Temporary(String),
}

/// Finds the hosts that take mail for a domain, best first.
pub trait NextHops: Send + Sync {
    /// Whether every domain goes to the same hosts (a relay): then one transaction carries
    /// every recipient of a message.
    fn single(&self) -> bool;

    fn hops<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Hop>, RouteError>>;
}

/// A smarthost for every domain.
pub struct Relay {
    pub host: String,
    pub port: u16,
    pub tls: TlsPolicy,
    pub credentials: Option<Credentials>,
}

impl NextHops for Relay {
    fn single(&self) -> bool {
        true
    }

    fn hops<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, Result<Vec<Hop>, RouteError>> {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| RouteError::Temporary(format!("relay {}: {e}", self.host)))?
                .collect();
            Ok(vec![Hop {
                host: self.host.clone(),
                addrs,
                tls: self.tls.clone(),
                credentials: self.credentials.clone(),
            }])
        })
    }
}

/// Every domain to one address (opportunistic TLS): `TERN_OUTBOUND_NEXT_HOP`, and tests.
pub struct Fixed(pub SocketAddr);

impl NextHops for Fixed {
    fn single(&self) -> bool {
        false
    }

    fn hops<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Hop>, RouteError>> {
        Box::pin(async move {
            Ok(vec![Hop {
                host: domain.to_owned(),
                addrs: vec![self.0],
                tls: TlsPolicy::Opportunistic,
                credentials: None,
            }])
        })
    }
}

/// MX lookup with hickory's resolver (the system's resolv.conf), port 25, opportunistic TLS.
pub struct Mx {
    resolver: Arc<TokioResolver>,
    port: u16,
}

impl Mx {
    pub fn from_system() -> Result<Self, String> {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| format!("DNS resolver: {e}"))?
            .build();
        Ok(Self {
            resolver: Arc::new(resolver),
            port: 25,
        })
    }

    async fn addresses(&self, host: &str) -> Result<Vec<SocketAddr>, RouteError> {
        match self.resolver.lookup_ip(host).await {
            Ok(ips) => Ok(ips
                .iter()
                .map(|ip| SocketAddr::new(ip, self.port))
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(RouteError::Temporary(format!("{host}: {e}"))),
        }
    }
}

/// The MX hosts by preference, as names; `Ok(None)` for a null MX.
pub fn mx_order(records: &[(u16, String)]) -> Option<Vec<String>> {
    let null = |name: &str| name.is_empty() || name == ".";
    if records.iter().any(|(_, name)| null(name)) {
        return None;
    }
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|(preference, _)| *preference);
    Some(sorted.into_iter().map(|(_, name)| name).collect())
}

impl NextHops for Mx {
    fn single(&self) -> bool {
        false
    }

    fn hops<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Hop>, RouteError>> {
        Box::pin(async move {
            // Fully qualified: no search domains.
            let fqdn = format!("{}.", domain.trim_end_matches('.'));
            let names = match self.resolver.mx_lookup(fqdn.as_str()).await {
                Ok(mx) => {
                    let records: Vec<(u16, String)> = mx
                        .iter()
                        .map(|r| {
                            let name = r.exchange().to_ascii();
                            let name = if r.exchange().is_root() {
                                String::new()
                            } else {
                                name
                            };
                            (r.preference(), name)
                        })
                        .collect();
                    mx_order(&records).ok_or_else(|| {
                        RouteError::Permanent(format!(
                            "{domain} accepts no mail (null MX, RFC 7505)"
                        ))
                    })?
                }
                Err(e) if e.is_nx_domain() => {
                    return Err(RouteError::Permanent(format!("{domain}: no such domain")));
                }
                // No MX: the domain itself (RFC 5321 §5.1).
                Err(e) if e.is_no_records_found() => vec![fqdn.clone()],
                Err(e) => return Err(RouteError::Temporary(format!("MX of {domain}: {e}"))),
            };
            let mut hops = Vec::with_capacity(names.len());
            let mut last_error = None;
            for name in names {
                match self.addresses(&name).await {
                    Ok(addrs) if !addrs.is_empty() => hops.push(Hop {
                        host: name.trim_end_matches('.').to_owned(),
                        addrs,
                        tls: TlsPolicy::Opportunistic,
                        credentials: None,
                    }),
                    Ok(_) => {}
                    Err(e) => last_error = Some(e),
                }
            }
            match (hops.is_empty(), last_error) {
                (false, _) => Ok(hops),
                (true, Some(e)) => Err(e),
                (true, None) => Err(RouteError::Permanent(format!(
                    "{domain}: no address for any of its mail hosts"
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_hosts_go_by_preference_and_a_null_mx_takes_no_mail() {
        let records = vec![
            (20, "b.example.".to_owned()),
            (10, "a.example.".to_owned()),
            (30, "c.example.".to_owned()),
        ];
        assert_eq!(
            mx_order(&records).unwrap(),
            vec!["a.example.", "b.example.", "c.example."]
        );
        assert_eq!(mx_order(&[(0, String::new())]), None);
        assert_eq!(mx_order(&[(0, ".".to_owned())]), None);
        assert_eq!(mx_order(&[]), Some(vec![]));
    }

    #[tokio::test]
    async fn a_fixed_hop_serves_every_domain() {
        let addr: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        let hops = Fixed(addr).hops("anything.test").await.unwrap();
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].addrs, vec![addr]);
        assert!(matches!(hops[0].tls, TlsPolicy::Opportunistic));
        let relay = Relay {
            host: "127.0.0.1".into(),
            port: 2526,
            tls: TlsPolicy::Never,
            credentials: None,
        };
        assert!(relay.single());
        assert_eq!(
            relay.hops("x.test").await.unwrap()[0].addrs,
            vec!["127.0.0.1:2526".parse::<SocketAddr>().unwrap()]
        );
    }
}
