//! [`MailBackend`]: tern-smtp's [`Backend`] over the replicated store. The policy it follows
//! (linearizable lookups, the acknowledgement rule, relaying and senders) is described in
//! [the module above](super).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tern_raft::ShardId;
use tern_smtp::auth::Credentials;
use tern_smtp::parser::{Mailbox, ReversePath};
use tern_smtp::{
    Account, AuthVerdict, Backend, Delivery, DeliveryStatus, Protocol, RcptVerdict, Reply,
    SenderVerdict, SessionInfo, Status,
};
use tokio::time::Instant;

use super::SmtpStats;
use super::auth_results::InboundChecks;
use super::delivery;
use crate::mailstore::{Unavailable, retrying, unix_ms, verify};
use crate::shards::ShardHost;

/// How long the shard a session's recipient was found on is remembered for its DATA.
const ROUTE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Most remembered routes; beyond it the expired ones go, and if that is not enough, all.
const MAX_ROUTES: usize = 100_000;

/// How the backend bounds its work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendOptions {
    /// The longest one backend call (a lookup, a password check, storing a message) may
    /// take; what does not finish in time is a temporary failure.
    pub deadline: Duration,
    /// The domain of the bare `<Postmaster>` recipient (RFC 5321 4.5.1): the cluster's
    /// first domain. Without one, `<Postmaster>` is an unknown user.
    pub postmaster_domain: Option<String>,
    /// How long a message to remote recipients stays in the outbound queue before it is
    /// given up and bounced.
    pub queue_lifetime: Duration,
}

impl BackendOptions {
    /// Twice the shard timeout (time for a second attempt after a leader change), at least
    /// 1 s and at most 60 s: far below the minimum timeouts of SMTP clients.
    pub fn for_shard_timeout(timeout: Duration, postmaster_domain: Option<String>) -> Self {
        Self {
            deadline: (timeout * 2).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            postmaster_domain,
            queue_lifetime: crate::outbound::DEFAULT_QUEUE_LIFETIME,
        }
    }
}

/// Where mail to an address goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// An account (or an alias of one) on this shard.
    Local(ShardId),
    /// A local domain, but no such user.
    Unknown,
    /// Not one of the cluster's domains.
    Remote,
}

/// The shard each accepted recipient of a session was found on, for the session's DATA.
#[derive(Default)]
struct Routes {
    map: HashMap<(u128, String), (ShardId, std::time::Instant)>,
}

impl Routes {
    fn remember(&mut self, session: u128, address: &str, shard: ShardId) {
        let now = std::time::Instant::now();
        if self.map.len() >= MAX_ROUTES {
            self.map
                .retain(|_, (_, at)| now.duration_since(*at) < ROUTE_MEMORY);
            if self.map.len() >= MAX_ROUTES {
                self.map.clear();
            }
        }
        self.map
            .insert((session, address.to_lowercase()), (shard, now));
    }

    fn get(&self, session: u128, address: &str) -> Option<ShardId> {
        self.map
            .get(&(session, address.to_lowercase()))
            .filter(|(_, at)| at.elapsed() < ROUTE_MEMORY)
            .map(|(shard, _)| *shard)
    }
}

/// tern-smtp's backend on this node's [`ShardHost`].
pub struct MailBackend {
    host: Arc<ShardHost>,
    options: BackendOptions,
    stats: Arc<SmtpStats>,
    routes: Mutex<Routes>,
    /// SPF, DKIM and DMARC on mail from unauthenticated SMTP sessions.
    checks: Option<Arc<InboundChecks>>,
}

impl MailBackend {
    pub fn new(host: Arc<ShardHost>, options: BackendOptions, stats: Arc<SmtpStats>) -> Self {
        Self {
            host,
            options,
            stats,
            routes: Mutex::default(),
            checks: None,
        }
    }

    /// Checks mail from unauthenticated SMTP sessions with `checks` and stores it with their
    /// `Authentication-Results:` field.
    pub fn with_inbound_checks(mut self, checks: Arc<InboundChecks>) -> Self {
        self.checks = Some(checks);
        self
    }

    /// The message as stored: with the inbound checks' results when the session is an
    /// unauthenticated SMTP one (the mail of the internet), as received otherwise.
    async fn checked<'a>(&self, session: &SessionInfo, delivery: &'a Delivery) -> Cow<'a, [u8]> {
        match &self.checks {
            Some(checks) if session.protocol == Protocol::Smtp && session.account.is_none() => {
                let sender = match &delivery.envelope.sender {
                    ReversePath::Mailbox(m) if !m.domain.is_empty() => {
                        format!("{}@{}", m.local_part, m.domain)
                    }
                    _ => String::new(),
                };
                let helo = session.helo.as_deref().unwrap_or("");
                Cow::Owned(
                    checks
                        .apply(session.client.ip(), helo, &sender, &delivery.message)
                        .await,
                )
            }
            _ => Cow::Borrowed(&delivery.message),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.options.deadline
    }

    /// The address a recipient names, `local@domain`; the bare `<Postmaster>` is the
    /// postmaster of the cluster's first domain.
    fn address_of(&self, mailbox: &Mailbox) -> Option<String> {
        if mailbox.is_postmaster() {
            let domain = self.options.postmaster_domain.as_deref()?;
            return Some(format!("postmaster@{domain}"));
        }
        Some(format!("{}@{}", mailbox.local_part, mailbox.domain))
    }

    /// Finds where mail to `address` goes: its group's shard (user → group → shard), else
    /// — for an alias, which lives with its account — the shard of `local@domain` for
    /// `local+tag@domain`, then every other shard. Each look is a linearizable read.
    async fn route(&self, address: &str, deadline: Instant) -> Result<Route, Unavailable> {
        let assignment = self
            .host
            .assignment()
            .ok_or_else(|| Unavailable("this node follows no assignment yet".into()))?;
        let primary = assignment
            .shard_of(address)
            .ok_or_else(|| Unavailable(format!("the assignment places no shard for {address}")))?;
        let (local_domain, account) =
            retrying(deadline, || self.host.recipient(primary, address)).await?;
        if !local_domain {
            return Ok(Route::Remote);
        }
        if account.is_some() {
            return Ok(Route::Local(primary));
        }
        let mut others: Vec<ShardId> = Vec::new();
        if let Some(base) = base_address(address)
            && let Some(shard) = assignment.shard_of(&base)
            && shard != primary
        {
            others.push(shard);
        }
        for shard in assignment.shards.iter().map(|s| s.id) {
            if shard != primary && !others.contains(&shard) {
                others.push(shard);
            }
        }
        for shard in others {
            let (_, account) = retrying(deadline, || self.host.recipient(shard, address)).await?;
            if account.is_some() {
                return Ok(Route::Local(shard));
            }
        }
        Ok(Route::Unknown)
    }

    fn unavailable(&self, what: &str, why: &Unavailable) {
        self.stats
            .lookups_unavailable
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(why = %why.0, "{what}: the directory is temporarily unavailable");
    }

    async fn check_password(&self, credentials: &Credentials, deadline: Instant) -> AuthVerdict {
        let Ok(address) = tern_mail::normalize_address(credentials.username.trim()) else {
            verify(None, &credentials.password).await;
            return AuthVerdict::Invalid;
        };
        let Some(shard) = self.host.assignment().and_then(|a| a.shard_of(&address)) else {
            return AuthVerdict::TempFail;
        };
        let account = match retrying(deadline, || self.host.account(shard, &address)).await {
            Ok(account) => account,
            Err(why) => {
                self.unavailable("authentication", &why);
                return AuthVerdict::TempFail;
            }
        };
        match (
            verify(account.as_ref(), &credentials.password).await,
            account,
        ) {
            (true, Some(account)) => AuthVerdict::Ok(Account {
                addresses: std::iter::once(account.address.clone())
                    .chain(account.aliases)
                    .collect(),
                name: account.address,
            }),
            _ => AuthVerdict::Invalid,
        }
    }

    async fn store(
        &self,
        session: &SessionInfo,
        delivery: &Delivery,
        message: &[u8],
        deadline: Instant,
    ) -> Vec<DeliveryStatus> {
        let recipients: Vec<Option<String>> = delivery
            .envelope
            .recipients
            .iter()
            .map(|r| self.address_of(&r.mailbox))
            .collect();
        let mut results: Vec<Option<DeliveryStatus>> = vec![None; recipients.len()];
        let mut by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        let mut remote: Vec<usize> = Vec::new();
        for (i, address) in recipients.iter().enumerate() {
            let Some(address) = address else {
                results[i] = Some(no_such_user("Postmaster"));
                continue;
            };
            let remembered = self
                .routes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(session.id.0, address);
            let route = match remembered {
                Some(shard) => Ok(Route::Local(shard)),
                None => self.route(address, deadline).await,
            };
            match route {
                Ok(Route::Local(shard)) => by_shard.entry(shard).or_default().push(i),
                Ok(Route::Unknown) => results[i] = Some(no_such_user(address)),
                // Only authenticated submission sessions get here with a remote recipient
                // (the engine refuses relaying to everyone else at RCPT); checked again.
                Ok(Route::Remote)
                    if session.account.is_some() && session.protocol != Protocol::Lmtp =>
                {
                    remote.push(i);
                }
                Ok(Route::Remote) => {
                    results[i] = Some(DeliveryStatus::PermFail(Reply::new(
                        550,
                        Status(5, 7, 1),
                        format!("<{address}>: Not a local recipient"),
                    )));
                }
                Err(why) => {
                    self.unavailable("delivery", &why);
                    results[i] = Some(not_stored());
                }
            }
        }
        let now = unix_ms();
        let writes = by_shard.into_iter().map(|(shard, indexes)| {
            let addresses: Vec<String> = indexes
                .iter()
                .filter_map(|&i| recipients[i].clone())
                .collect();
            let command = delivery::deliver_command(
                &delivery.digest,
                addresses.clone(),
                message,
                now,
            )
            .encode();
            async move {
                let outcome =
                    match retrying(deadline, || self.host.write(shard, command.clone())).await {
                        Ok(answer) => delivery::outcomes(&answer, &addresses),
                        Err(Unavailable(why)) => {
                            tracing::warn!(shard, %why, key = %delivery.key, "message not stored on the shard");
                            vec![not_stored(); addresses.len()]
                        }
                    };
                (indexes, outcome)
            }
        });
        let queued = async {
            if remote.is_empty() {
                return (Vec::new(), Vec::new());
            }
            let outcome = self
                .enqueue(
                    session,
                    delivery,
                    message,
                    (&recipients, &remote),
                    now,
                    deadline,
                )
                .await;
            (remote.clone(), outcome)
        };
        let (stored, queued) =
            futures::future::join(futures::future::join_all(writes), queued).await;
        for (indexes, outcome) in stored.into_iter().chain(std::iter::once(queued)) {
            for (i, status) in indexes.into_iter().zip(outcome) {
                results[i] = Some(status);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(not_stored))
            .collect()
    }
}

impl MailBackend {
    /// Queues the message for the remote recipients at `indexes` in the shard of the
    /// session's account (the outbound queue lives with the sender), majority-durable before
    /// it returns `Stored`.
    async fn enqueue(
        &self,
        session: &SessionInfo,
        delivery: &Delivery,
        message: &[u8],
        (recipients, indexes): (&[Option<String>], &[usize]),
        now: i64,
        deadline: Instant,
    ) -> Vec<DeliveryStatus> {
        let Some(account) = session.account.as_ref() else {
            return vec![not_stored(); indexes.len()];
        };
        let Some(shard) = self
            .host
            .assignment()
            .and_then(|a| a.shard_of(&account.name))
        else {
            return vec![not_stored(); indexes.len()];
        };
        let addresses: Vec<String> = indexes
            .iter()
            .filter_map(|&i| recipients[i].clone())
            .collect();
        let sender = match &delivery.envelope.sender {
            ReversePath::Mailbox(m) if !m.domain.is_empty() => {
                format!("{}@{}", m.local_part, m.domain)
            }
            _ => String::new(),
        };
        let lifetime = i64::try_from(self.options.queue_lifetime.as_millis()).unwrap_or(i64::MAX);
        let command = delivery::enqueue_command(
            &delivery.digest,
            sender,
            account.name.clone(),
            addresses,
            message,
            now,
            now.saturating_add(lifetime),
        )
        .encode();
        match retrying(deadline, || self.host.write(shard, command.clone())).await {
            Ok(answer) => delivery::enqueue_outcomes(&answer, indexes.len()),
            Err(Unavailable(why)) => {
                tracing::warn!(shard, %why, key = %delivery.key, "message not queued");
                vec![not_stored(); indexes.len()]
            }
        }
    }
}

impl Backend for MailBackend {
    async fn recipient(&self, session: &SessionInfo, mailbox: &Mailbox) -> RcptVerdict {
        let Some(address) = self.address_of(mailbox) else {
            return RcptVerdict::Unknown;
        };
        match self.route(&address, self.deadline()).await {
            Ok(Route::Local(shard)) => {
                self.routes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remember(session.id.0, &address, shard);
                RcptVerdict::Local
            }
            Ok(Route::Unknown) => RcptVerdict::Unknown,
            // The engine refuses relaying for every unauthenticated session and on LMTP; an
            // authenticated submission session's remote recipients are queued at DATA.
            Ok(Route::Remote) => RcptVerdict::Relay,
            Err(why) => {
                self.unavailable("recipient", &why);
                RcptVerdict::TempFail
            }
        }
    }

    async fn authenticate(&self, _session: &SessionInfo, credentials: &Credentials) -> AuthVerdict {
        let deadline = self.deadline();
        let verdict =
            match tokio::time::timeout_at(deadline, self.check_password(credentials, deadline))
                .await
            {
                Ok(verdict) => verdict,
                Err(_) => AuthVerdict::TempFail,
            };
        if verdict == AuthVerdict::Invalid {
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    async fn deliver(&self, session: &SessionInfo, delivery: &Delivery) -> Vec<DeliveryStatus> {
        // The checks have their own bound (their DNS lookups), before the store's deadline.
        let message = self.checked(session, delivery).await;
        let deadline = self.deadline();
        let count = delivery.envelope.recipients.len();
        // Every wait inside is bounded by the deadline; this bounds the rest.
        let results = match tokio::time::timeout_at(
            deadline + Duration::from_millis(500),
            self.store(session, delivery, &message, deadline),
        )
        .await
        {
            Ok(results) => results,
            Err(_) => vec![not_stored(); count],
        };
        for status in &results {
            let counter = match status {
                DeliveryStatus::Stored => &self.stats.stored,
                DeliveryStatus::TempFail(_) => &self.stats.temp_failed,
                DeliveryStatus::PermFail(_) => &self.stats.perm_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        results
    }

    async fn sender(&self, session: &SessionInfo, sender: &ReversePath) -> SenderVerdict {
        if session.protocol != Protocol::Smtp || session.account.is_some() {
            return SenderVerdict::Accept;
        }
        let ReversePath::Mailbox(mailbox) = sender else {
            return SenderVerdict::Accept;
        };
        if mailbox.domain.is_empty() {
            return SenderVerdict::Accept;
        }
        let address = format!("{}@{}", mailbox.local_part, mailbox.domain);
        let Some(shard) = self.host.assignment().and_then(|a| a.shard_of(&address)) else {
            return SenderVerdict::TempFail;
        };
        match retrying(self.deadline(), || self.host.recipient(shard, &address)).await {
            Ok((true, _)) => {
                tracing::info!(%address, client = %session.client, "refused a local sender from an unauthenticated client");
                SenderVerdict::Refuse
            }
            Ok((false, _)) => SenderVerdict::Accept,
            Err(why) => {
                self.unavailable("sender", &why);
                SenderVerdict::TempFail
            }
        }
    }
}

/// `local@domain` for `local+tag@domain`.
fn base_address(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    let (base, _) = local.split_once('+')?;
    (!base.is_empty()).then(|| format!("{base}@{domain}"))
}

fn no_such_user(address: &str) -> DeliveryStatus {
    DeliveryStatus::PermFail(Reply::new(
        550,
        Status(5, 1, 1),
        format!("<{address}>: Recipient address rejected: no such user"),
    ))
}

fn not_stored() -> DeliveryStatus {
    DeliveryStatus::temp(
        "Message not stored: the mail store is temporarily unavailable, try again later",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_addresses_have_a_base() {
        assert_eq!(base_address("a+tag@x.test").as_deref(), Some("a@x.test"));
        assert_eq!(base_address("a+b+c@x.test").as_deref(), Some("a@x.test"));
        assert_eq!(base_address("a@x.test"), None);
        assert_eq!(base_address("+tag@x.test"), None);
        assert_eq!(base_address("nodomain"), None);
    }

    #[test]
    fn the_deadline_follows_the_shard_timeout_within_bounds() {
        let at = |ms| BackendOptions::for_shard_timeout(Duration::from_millis(ms), None).deadline;
        assert_eq!(at(5000), Duration::from_secs(10));
        assert_eq!(at(100), Duration::from_secs(1));
        assert_eq!(at(600_000), Duration::from_secs(60));
    }

    #[test]
    fn routes_are_per_session_and_case_blind() {
        let mut routes = Routes::default();
        routes.remember(1, "A@x.test", 3);
        assert_eq!(routes.get(1, "a@X.TEST"), Some(3));
        assert_eq!(routes.get(2, "a@x.test"), None);
        for n in 0..MAX_ROUTES as u128 {
            routes.remember(n + 10, "b@x.test", 1);
        }
        assert!(routes.map.len() <= MAX_ROUTES);
    }
}
