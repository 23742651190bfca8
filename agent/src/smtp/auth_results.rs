//! Inbound checks on port 25: SPF (RFC 7208) for the HELO name and the MAIL FROM domain,
//! DKIM (RFC 6376) signatures and DMARC (RFC 7489) with mail-auth, recorded in an
//! `Authentication-Results:` field (RFC 8601) on top of the stored message.
//!
//! - Only unauthenticated SMTP sessions are checked: submission is authenticated and LMTP is
//!   trusted local delivery.
//! - The results are recorded, never acted on: a DMARC `p=reject` is written down as
//!   `policy.dmarc=reject` and the message is stored all the same.
//! - DNS that fails or does not answer within [`CHECK_BUDGET`] gives `temperror` for what it
//!   was needed for; the message is never refused or lost for it.
//! - Any `Authentication-Results:` field already in the message that names this server
//!   (its authserv-id, RFC 8601 §5) is removed first, so a sender cannot forge our verdicts.
//! - DMARC alignment compares domains exactly: without a public-suffix list the
//!   organizational domain is not known, so relaxed alignment of a subdomain counts as not
//!   aligned (a `fail` that should have been a `pass`, never the other way round).
//!
//! DNS goes through hickory (the system's resolv.conf, or `TERN_DNS_SERVERS`) behind
//! mail-auth's caches, which [`DnsCaches::seed_txt`] can fill (tests run without a network).

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::xfer::Protocol as DnsProtocol;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    MX, MessageAuthenticator, Parameters, ResolverCache, SpfOutput, SpfResult, Txt,
};

/// How long all the lookups for one message may take together.
pub const CHECK_BUDGET: Duration = Duration::from_secs(15);
/// Most entries of each DNS cache.
const CACHE_ENTRIES: usize = 10_000;

/// One of mail-auth's caches: answers until their TTL ends, bounded in size.
pub struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(name) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= CACHE_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (value, valid_until));
    }
}

/// The caches the checks look in before asking DNS.
#[derive(Default)]
pub struct DnsCaches {
    pub txt: TtlCache<String, Txt>,
    pub mx: TtlCache<String, Arc<Vec<MX>>>,
    pub ipv4: TtlCache<String, Arc<Vec<Ipv4Addr>>>,
    pub ipv6: TtlCache<String, Arc<Vec<Ipv6Addr>>>,
    pub ptr: TtlCache<IpAddr, Arc<Vec<String>>>,
}

impl DnsCaches {
    /// Answers TXT queries for `name` (fully qualified, with its final dot) with `record`
    /// for a year: a record parsed with mail-auth's `TxtRecordParser`, or `Txt::Error` for a
    /// name that does not exist or a lookup that fails.
    pub fn seed_txt(&self, name: &str, record: Txt) {
        self.txt.insert(
            name.to_ascii_lowercase(),
            record,
            Instant::now() + Duration::from_secs(365 * 24 * 3600),
        );
    }
}

/// mail-auth's parameters with this module's caches.
type Cached<'x, P> = Parameters<
    'x,
    P,
    TtlCache<String, Txt>,
    TtlCache<String, Arc<Vec<MX>>>,
    TtlCache<String, Arc<Vec<Ipv4Addr>>>,
    TtlCache<String, Arc<Vec<Ipv6Addr>>>,
    TtlCache<IpAddr, Arc<Vec<String>>>,
>;

/// What one message's checks found.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub spf_helo: SpfResult,
    pub spf_mail_from: SpfResult,
    /// One per signature; empty when there is none.
    pub dkim: Vec<DkimResult>,
    pub dmarc: DmarcResult,
    /// The `Authentication-Results:` field, ending in CRLF.
    pub header: String,
}

/// The SPF, DKIM and DMARC checks of this server (`hostname` is its authserv-id).
pub struct InboundChecks {
    dns: MessageAuthenticator,
    hostname: String,
    caches: DnsCaches,
    budget: Duration,
}

/// A resolver asking `servers` (UDP, then TCP for truncated answers), each query given up
/// after `timeout`.
pub fn resolver_for(servers: &[SocketAddr], timeout: Duration) -> MessageAuthenticator {
    let mut config = ResolverConfig::new();
    for server in servers {
        config.add_name_server(NameServerConfig::new(*server, DnsProtocol::Udp));
        config.add_name_server(NameServerConfig::new(*server, DnsProtocol::Tcp));
    }
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 1;
    MessageAuthenticator::new(config, options).expect("a resolver without TLS always builds")
}

/// A resolver whose every query fails at once (a closed local port): DNS failure in tests.
pub fn unreachable_resolver() -> MessageAuthenticator {
    resolver_for(
        &[SocketAddr::from(([127, 0, 0, 1], 9))],
        Duration::from_millis(300),
    )
}

impl InboundChecks {
    pub fn with_caches(dns: MessageAuthenticator, hostname: &str, caches: DnsCaches) -> Self {
        Self {
            dns,
            hostname: hostname.to_owned(),
            caches,
            budget: CHECK_BUDGET,
        }
    }

    /// With `TERN_DNS_SERVERS` (comma-separated `ip` or `ip:port`) when set, else the
    /// system's resolver configuration; a node without either still runs, and every check
    /// is then a `temperror`.
    pub fn from_env(hostname: &str, var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let dns = match var("TERN_DNS_SERVERS") {
            Some(list) => {
                let servers = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<SocketAddr>()
                            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                            .map_err(|_| format!("TERN_DNS_SERVERS={list}: {s:?} is no address"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if servers.is_empty() {
                    return Err(format!("TERN_DNS_SERVERS={list}: no server"));
                }
                resolver_for(&servers, Duration::from_secs(3))
            }
            None => match MessageAuthenticator::new_system_conf() {
                Ok(dns) => dns,
                Err(e) => {
                    tracing::warn!(error = %e, "no DNS configuration: SPF, DKIM and DMARC results will be temperror");
                    resolver_for(&[], Duration::from_secs(1))
                }
            },
        };
        Ok(Self::with_caches(dns, hostname, DnsCaches::default()))
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn caches(&self) -> &DnsCaches {
        &self.caches
    }

    fn parameters<P>(&self, params: P) -> Cached<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.caches.txt)
            .with_mx_cache(&self.caches.mx)
            .with_ipv4_cache(&self.caches.ipv4)
            .with_ipv6_cache(&self.caches.ipv6)
            .with_ptr_cache(&self.caches.ptr)
    }

    /// The first DKIM signature's result (`None` without one): for tests of signers.
    pub async fn verify_dkim(&self, message: &[u8]) -> DkimResult {
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            return DkimResult::None;
        };
        self.dns
            .verify_dkim(self.parameters(&parsed))
            .await
            .first()
            .map(|o| o.result().clone())
            .unwrap_or(DkimResult::None)
    }

    /// Checks a message received from `ip`, which greeted with `helo` and gave `mail_from`
    /// (`local@domain`, empty for `<>`).
    pub async fn check(&self, ip: IpAddr, helo: &str, mail_from: &str, message: &[u8]) -> Verdict {
        let started = tokio::time::Instant::now();
        let deadline = started + self.budget;
        let helo = sanitise(helo.trim_end_matches('.'));
        let helo = if helo.is_empty() {
            "unknown".to_owned()
        } else {
            helo
        };
        let mail_from = sanitise(mail_from);
        // RFC 7208 §2.4: the null sender is checked as postmaster@ the HELO name.
        let spf_sender = if mail_from.is_empty() {
            format!("postmaster@{helo}")
        } else {
            mail_from.clone()
        };
        let sender_domain = spf_sender
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let parsed = AuthenticatedMessage::parse(message);

        let spf_helo = async {
            let params = self.parameters(SpfParameters::verify_ehlo(
                ip,
                &helo,
                self.hostname.as_str(),
            ));
            tokio::time::timeout_at(deadline, self.dns.verify_spf(params))
                .await
                .unwrap_or_else(|_| SpfOutput::new(helo.clone()).with_result(SpfResult::TempError))
        };
        let spf_mail_from = async {
            let params = self.parameters(SpfParameters::verify_mail_from(
                ip,
                &helo,
                self.hostname.as_str(),
                &spf_sender,
            ));
            tokio::time::timeout_at(deadline, self.dns.verify_spf(params))
                .await
                .unwrap_or_else(|_| {
                    SpfOutput::new(sender_domain.clone()).with_result(SpfResult::TempError)
                })
        };
        let dkim = async {
            match &parsed {
                None => Vec::new(),
                Some(parsed) if parsed.dkim_headers.is_empty() => Vec::new(),
                Some(parsed) => {
                    match tokio::time::timeout_at(
                        deadline,
                        self.dns.verify_dkim(self.parameters(parsed)),
                    )
                    .await
                    {
                        Ok(outputs) => outputs,
                        Err(_) => vec![DkimOutput::temp_err(mail_auth::Error::DnsError(
                            "no answer in time".into(),
                        ))],
                    }
                }
            }
        };
        let (spf_helo, spf_mail_from, dkim) = tokio::join!(spf_helo, spf_mail_from, dkim);

        let dmarc = match &parsed {
            None => None,
            Some(parsed) => {
                let params = self.parameters(DmarcParameters {
                    message: parsed,
                    dkim_output: &dkim,
                    rfc5321_mail_from_domain: &sender_domain,
                    spf_output: &spf_mail_from,
                    domain_suffix_fn: |d: &str| d,
                });
                Some(
                    tokio::time::timeout_at(deadline, self.dns.verify_dmarc(params))
                        .await
                        .unwrap_or_else(|_| {
                            let e = DmarcResult::TempError(mail_auth::Error::DnsError(
                                "no answer in time".into(),
                            ));
                            DmarcOutput::new(String::new())
                                .with_domain(
                                    parsed
                                        .from
                                        .first()
                                        .and_then(|a| a.rsplit_once('@'))
                                        .map_or("", |(_, d)| d),
                                )
                                .with_spf_result(e.clone())
                                .with_dkim_result(e)
                        }),
                )
            }
        };

        let from = parsed
            .as_ref()
            .and_then(|p| p.from.first().cloned())
            .unwrap_or_default();
        let results = AuthenticationResults::new(&self.hostname)
            .with_spf_ehlo_result(&spf_helo, ip, &helo)
            .with_spf_mailfrom_result(&spf_mail_from, ip, &mail_from, &helo)
            .with_dkim_results(&dkim, &from);
        let dmarc_result = match &dmarc {
            Some(d) if !d.domain().is_empty() => dmarc_summary(d),
            _ => DmarcResult::None,
        };
        let mut header = results.to_header();
        let mut extra = String::new();
        if dkim.is_empty() {
            extra.push_str(";\r\n\tdkim=none (no signature)");
        }
        match &dmarc {
            Some(d) if !d.domain().is_empty() => {
                extra.push_str(";\r\n\tdmarc=");
                extra.push_str(match &dmarc_result {
                    DmarcResult::Pass => "pass",
                    DmarcResult::Fail(_) => "fail",
                    DmarcResult::TempError(_) => "temperror",
                    DmarcResult::PermError(_) => "permerror",
                    DmarcResult::None => "none",
                });
                extra.push_str(" header.from=");
                extra.push_str(&sanitise(d.domain()));
                if d.dmarc_record().is_some() {
                    extra.push_str(&format!(" policy.dmarc={}", d.policy()));
                }
            }
            _ => extra.push_str(";\r\n\tdmarc=none (no From: domain)"),
        }
        if !extra.is_empty() {
            let end = header.len() - 2;
            header.insert_str(end, &extra);
        }
        Verdict {
            spf_helo: spf_helo.result(),
            spf_mail_from: spf_mail_from.result(),
            dkim: dkim.iter().map(|o| o.result().clone()).collect(),
            dmarc: dmarc_result,
            header: well_formed(&header),
        }
    }

    /// The message as stored: any `Authentication-Results:` field naming this server
    /// removed, then the field with this message's results on top.
    pub async fn apply(&self, ip: IpAddr, helo: &str, mail_from: &str, message: &[u8]) -> Vec<u8> {
        let message = strip_ours(message, &self.hostname);
        let verdict = self.check(ip, helo, mail_from, &message).await;
        tracing::debug!(
            spf_helo = ?verdict.spf_helo,
            spf_mail_from = ?verdict.spf_mail_from,
            dkim = ?verdict.dkim,
            dmarc = ?verdict.dmarc,
            "inbound checks"
        );
        let mut out = Vec::with_capacity(verdict.header.len() + message.len());
        out.extend_from_slice(verdict.header.as_bytes());
        out.extend_from_slice(&message);
        out
    }
}

/// The DMARC result (RFC 7489 §6.6.2): a pass when SPF or DKIM passed aligned with the
/// `From:` domain; the lookup's error when the policy could not be read; a fail when there
/// is a policy and nothing aligned passed; none without a policy.
fn dmarc_summary(d: &DmarcOutput) -> DmarcResult {
    let (spf, dkim) = (d.spf_result(), d.dkim_result());
    if *spf == DmarcResult::Pass || *dkim == DmarcResult::Pass {
        DmarcResult::Pass
    } else if matches!(spf, DmarcResult::TempError(_) | DmarcResult::PermError(_)) {
        spf.clone()
    } else if d.dmarc_record().is_some() {
        DmarcResult::Fail(mail_auth::Error::NotAligned)
    } else {
        DmarcResult::None
    }
}

/// Client-chosen text (HELO name, sender) made harmless inside a header field.
fn sanitise(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| {
            if matches!(c, '(' | ')' | ';' | '\\' | '"') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// One header field whatever went into it: every line break is CRLF followed by a tab, no
/// stray CR, LF or other control character.
fn well_formed(header: &str) -> String {
    let body = header.strip_suffix("\r\n").unwrap_or(header);
    let lines: Vec<String> = body
        .split("\r\n")
        .map(|l| {
            l.trim_start_matches(['\t', ' '])
                .chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect()
        })
        .collect();
    let mut out = lines.join("\r\n\t");
    out.push_str("\r\n");
    out
}

/// `message` without the `Authentication-Results:` fields of its header whose authserv-id
/// is `hostname` (compared without case; any other server's fields stay).
pub fn strip_ours<'a>(message: &'a [u8], hostname: &str) -> Cow<'a, [u8]> {
    let header_end = find_header_end(message);
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at < header_end {
        let mut end = at;
        loop {
            match message[end..header_end].iter().position(|&b| b == b'\n') {
                Some(p) => end += p + 1,
                None => {
                    end = header_end;
                    break;
                }
            }
            if end >= header_end || !matches!(message[end], b' ' | b'\t') {
                break;
            }
        }
        fields.push((at, end));
        at = end;
    }
    let ours = |field: &[u8]| -> bool {
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            return false;
        };
        let name = String::from_utf8_lossy(&field[..colon]);
        if !name.trim().eq_ignore_ascii_case("authentication-results") {
            return false;
        }
        authserv_id(&String::from_utf8_lossy(&field[colon + 1..]))
            .is_some_and(|id| id.eq_ignore_ascii_case(hostname))
    };
    if !fields.iter().any(|&(s, e)| ours(&message[s..e])) {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len());
    for &(s, e) in &fields {
        if !ours(&message[s..e]) {
            out.extend_from_slice(&message[s..e]);
        }
    }
    out.extend_from_slice(&message[header_end..]);
    Cow::Owned(out)
}

/// Where the header section ends: the offset of the empty line (or the end).
fn find_header_end(message: &[u8]) -> usize {
    let mut at = 0;
    while at < message.len() {
        if message[at..].starts_with(b"\r\n") || message[at] == b'\n' {
            return at;
        }
        match message[at..].iter().position(|&b| b == b'\n') {
            Some(p) => at += p + 1,
            None => return message.len(),
        }
    }
    message.len()
}

/// The authserv-id of an `Authentication-Results:` value: its first token, comments and
/// folding skipped (RFC 8601 §2.2).
fn authserv_id(value: &str) -> Option<String> {
    let mut depth = 0u32;
    let mut id = String::new();
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            c if c.is_whitespace() => {
                if !id.is_empty() {
                    break;
                }
            }
            ';' => break,
            c => id.push(c),
        }
    }
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::dmarc::Dmarc;
    use mail_auth::hickory_resolver::proto::op::ResponseCode;
    use mail_auth::spf::Spf;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    fn nxdomain() -> Txt {
        Txt::Error(mail_auth::Error::DnsRecordNotFound(ResponseCode::NXDomain))
    }

    /// Checks with only `records` in DNS (every other name used here does not exist; any
    /// name not listed at all goes to a dead server and fails).
    fn checks(records: &[(&str, Option<&str>)]) -> InboundChecks {
        let caches = DnsCaches::default();
        for (name, record) in records {
            let value = match record {
                None => nxdomain(),
                Some(r) if r.starts_with("v=spf1") => {
                    Txt::Spf(Arc::new(Spf::parse(r.as_bytes()).unwrap()))
                }
                Some(r) if r.starts_with("v=DMARC1") => {
                    Txt::Dmarc(Arc::new(Dmarc::parse(r.as_bytes()).unwrap()))
                }
                Some(r) => Txt::DomainKey(Arc::new(
                    mail_auth::common::verify::DomainKey::parse(r.as_bytes()).unwrap(),
                )),
            };
            caches.seed_txt(name, value);
        }
        InboundChecks::with_caches(unreachable_resolver(), "mx.tern.test", caches)
    }

    const MESSAGE: &[u8] = b"From: a@sender.test\r\nTo: b@tern.test\r\nSubject: hi\r\n\r\nbody\r\n";

    #[tokio::test]
    async fn spf_pass_and_fail_and_dmarc_follows() {
        let zone = [
            ("sender.test.", Some("v=spf1 ip4:192.0.2.0/24 -all")),
            ("mail.sender.test.", Some("v=spf1 ip4:192.0.2.10 -all")),
            ("_dmarc.sender.test.", Some("v=DMARC1; p=reject")),
        ];
        let c = checks(&zone);
        let v = c
            .check(CLIENT, "mail.sender.test", "a@sender.test", MESSAGE)
            .await;
        assert_eq!(
            (v.spf_helo, v.spf_mail_from),
            (SpfResult::Pass, SpfResult::Pass)
        );
        assert!(v.dkim.is_empty());
        assert_eq!(v.dmarc, DmarcResult::Pass, "{}", v.header);
        assert!(
            v.header
                .starts_with("Authentication-Results: mx.tern.test;\r\n\t"),
            "{}",
            v.header
        );
        for part in [
            "spf=pass",
            "smtp.helo=mail.sender.test",
            "smtp.mailfrom=a@sender.test",
            "dkim=none",
            "dmarc=pass",
            "header.from=sender.test",
            "policy.dmarc=reject",
        ] {
            assert!(v.header.contains(part), "{part} in {}", v.header);
        }

        // From an address the record excludes: SPF fails, so does DMARC (recorded only).
        let elsewhere = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
        let v = c
            .check(elsewhere, "mail.sender.test", "a@sender.test", MESSAGE)
            .await;
        assert_eq!(
            (v.spf_helo, v.spf_mail_from),
            (SpfResult::Fail, SpfResult::Fail)
        );
        assert!(matches!(v.dmarc, DmarcResult::Fail(_)), "{:?}", v.dmarc);
        assert!(
            v.header.contains("spf=fail") && v.header.contains("dmarc=fail"),
            "{}",
            v.header
        );
    }

    #[tokio::test]
    async fn no_records_is_none() {
        let c = checks(&[
            ("helo.none.test.", None),
            ("none.test.", None),
            ("_dmarc.none.test.", None),
            ("_dmarc.test.", None),
        ]);
        let message = b"From: x@none.test\r\nSubject: s\r\n\r\nb\r\n";
        let v = c
            .check(CLIENT, "helo.none.test", "x@none.test", message)
            .await;
        assert_eq!(
            (v.spf_helo, v.spf_mail_from),
            (SpfResult::None, SpfResult::None)
        );
        assert_eq!(v.dmarc, DmarcResult::None);
        assert!(
            v.header.contains("spf=none") && v.header.contains("dmarc=none"),
            "{}",
            v.header
        );
    }

    #[tokio::test]
    async fn dns_failure_is_temperror_and_quick() {
        // Nothing seeded: every lookup goes to a server that is not there.
        let c = checks(&[]);
        let started = Instant::now();
        let v = c
            .check(
                CLIENT,
                "mail.down.test",
                "a@down.test",
                b"From: a@down.test\r\n\r\nb\r\n",
            )
            .await;
        assert!(started.elapsed() < CHECK_BUDGET, "{:?}", started.elapsed());
        assert_eq!(
            (v.spf_helo, v.spf_mail_from),
            (SpfResult::TempError, SpfResult::TempError)
        );
        assert!(
            matches!(v.dmarc, DmarcResult::TempError(_)),
            "{:?}",
            v.dmarc
        );
        assert!(
            v.header.contains("spf=temperror") && v.header.contains("dmarc=temperror"),
            "{}",
            v.header
        );

        // A lookup that never answers is cut off by the budget.
        let mut c = checks(&[]);
        c.dns = resolver_for(
            &[SocketAddr::from(([192, 0, 2, 1], 53))],
            Duration::from_secs(30),
        );
        c.budget = Duration::from_millis(500);
        let started = Instant::now();
        let v = c.check(CLIENT, "h.test", "a@down.test", MESSAGE).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(v.spf_mail_from, SpfResult::TempError);
    }

    #[tokio::test]
    async fn dkim_signatures_are_verified() {
        let pem = include_str!("../outbound/testdata/dkim-rsa.pem");
        let public = include_str!("../outbound/testdata/dkim-rsa.pub.b64").trim();
        let signer =
            crate::outbound::dkim::Signer::from_pem("sender.test", "s1", pem.as_bytes()).unwrap();
        let (signed, outcome) = signer.sign(MESSAGE);
        outcome.unwrap();
        let record = format!("v=DKIM1; k=rsa; p={public}");
        let zone = [
            ("mail.sender.test.", Some("v=spf1 -all")),
            ("sender.test.", Some("v=spf1 -all")),
            ("_dmarc.sender.test.", Some("v=DMARC1; p=quarantine")),
            ("s1._domainkey.sender.test.", Some(record.as_str())),
        ];
        let c = checks(&zone);
        let v = c
            .check(CLIENT, "mail.sender.test", "a@sender.test", &signed)
            .await;
        assert_eq!(v.dkim, vec![DkimResult::Pass]);
        assert_eq!(v.spf_mail_from, SpfResult::Fail);
        // DKIM aligned with From: DMARC passes although SPF failed.
        assert_eq!(v.dmarc, DmarcResult::Pass);
        assert!(
            v.header
                .contains("dkim=pass header.d=sender.test header.s=s1"),
            "{}",
            v.header
        );

        let forged = String::from_utf8(signed)
            .unwrap()
            .replace("body", "changed");
        let v = c
            .check(
                CLIENT,
                "mail.sender.test",
                "a@sender.test",
                forged.as_bytes(),
            )
            .await;
        assert!(
            matches!(v.dkim[..], [DkimResult::Fail(_)] | [DkimResult::Neutral(_)]),
            "{:?}",
            v.dkim
        );
        assert!(matches!(v.dmarc, DmarcResult::Fail(_)), "{:?}", v.dmarc);
    }

    #[tokio::test]
    async fn forged_results_naming_us_are_removed() {
        let c = checks(&[
            ("h.test.", None),
            ("x.test.", None),
            ("_dmarc.x.test.", None),
            ("_dmarc.test.", None),
        ]);
        let message = b"Received: from h.test\r\n\tby mx.tern.test; date\r\n\
            Authentication-Results: MX.Tern.Test;\r\n\tspf=pass smtp.mailfrom=x.test\r\n\
            Authentication-Results: (comment) mx.tern.test; dkim=pass\r\n\
            Authentication-Results: other.example; spf=fail\r\n\
            From: a@x.test\r\n\r\nAuthentication-Results: mx.tern.test; in the body\r\n";
        let stored = c.apply(CLIENT, "h.test", "a@x.test", message).await;
        let text = String::from_utf8(stored).unwrap();
        assert!(
            text.starts_with("Authentication-Results: mx.tern.test;\r\n\tspf=none"),
            "{text}"
        );
        assert_eq!(
            text.matches("Authentication-Results: mx.tern.test").count(),
            2,
            "ours and the body's: {text}"
        );
        assert!(
            !text.contains("MX.Tern.Test") && !text.contains("(comment)"),
            "{text}"
        );
        assert!(text.contains("Authentication-Results: other.example; spf=fail\r\n"));
        assert!(text.contains("Received: from h.test\r\n\tby mx.tern.test; date\r\n"));
        assert!(text.ends_with("\r\n\r\nAuthentication-Results: mx.tern.test; in the body\r\n"));
    }

    #[test]
    fn authserv_ids_and_header_hygiene() {
        assert_eq!(authserv_id(" mx.a; spf=pass").as_deref(), Some("mx.a"));
        assert_eq!(
            authserv_id(" (c (nested)) mx.a 1; none").as_deref(),
            Some("mx.a")
        );
        assert_eq!(authserv_id("\r\n\tmx.a;").as_deref(), Some("mx.a"));
        assert_eq!(authserv_id(" ; x"), None);
        assert_eq!(
            strip_ours(b"no header", "h"),
            Cow::Borrowed(&b"no header"[..])
        );
        assert_eq!(
            well_formed("A: x;\r\n\tb=\nc\r\n  d\r\n"),
            "A: x;\r\n\tb=c\r\n\td\r\n"
        );
        assert_eq!(sanitise("ev(il);\r\nX: y"), "ev_il__X: y");
    }
}
