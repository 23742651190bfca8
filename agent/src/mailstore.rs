//! What the mail protocols' backends (SMTP's and IMAP's) share about using the replicated
//! store: retrying a shard that is temporarily unavailable until a deadline, checking
//! passwords off the async threads (and remembering successful logins), sharing read
//! barriers between concurrent readers, and the proposer's clock.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use ring::hmac;
use ring::rand::SystemRandom;
use tern_raft::ShardId;
use tokio::time::Instant;

use crate::shards::ShardError;

/// The first pause before asking a shard again after "temporarily unavailable"; it doubles
/// up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A temporary failure of the store: the reason, for the logs.
#[derive(Debug)]
pub(crate) struct Unavailable(pub String);

/// Runs `op` until it succeeds, fails other than temporarily, or `deadline` passes. Only for
/// operations that are safe to repeat: reads, writes with an idempotency key, and writes
/// whose second application changes nothing.
pub(crate) async fn retrying<T, Fut>(
    deadline: Instant,
    mut op: impl FnMut() -> Fut,
) -> Result<T, Unavailable>
where
    Fut: Future<Output = Result<T, ShardError>>,
{
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        let error = match tokio::time::timeout_at(deadline, op()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => return Err(Unavailable("no answer within the deadline".into())),
        };
        match error {
            ShardError::Unavailable { .. } if Instant::now() + pause < deadline => {
                tracing::debug!(%error, "retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            other => return Err(Unavailable(other.to_string())),
        }
    }
}

/// How long a successful login is remembered ([`AuthCache`]).
const LOGIN_TTL: Duration = Duration::from_secs(5 * 60);
/// How many accounts' successful logins a node remembers at most.
const LOGIN_CAPACITY: usize = 10_000;

/// Checks `password` against the stored `account` (argon2 on a blocking thread, or the
/// node's [`AuthCache`] when this account logged in with this password recently). Without an
/// account (no such user) it checks against a hash of another password, so that an unknown
/// user takes as long to refuse as a wrong password.
pub(crate) async fn verify(account: Option<&tern_mail::Account>, password: &str) -> bool {
    static LOGINS: OnceLock<AuthCache> = OnceLock::new();
    LOGINS
        .get_or_init(|| AuthCache::new(LOGIN_TTL, LOGIN_CAPACITY))
        .verify(account, password)
        .await
}

/// Successful logins a node remembers, as Dovecot's `auth_cache` does, so that a client that
/// logs in again and again costs one argon2 verification per [`LOGIN_TTL`], not one per
/// login.
///
/// An entry holds the account's stored password hash (PHC string) and an HMAC-SHA-256 of the
/// password under a key drawn at random when the process starts (never stored, never sent);
/// never the password. The caller reads the account from the store on every login as
/// before, so a deleted account is refused at once, and an entry only answers while the
/// stored hash is still the one it was made with: a changed password misses. A password that
/// does not match an entry's digest runs argon2 as usual, so a wrong password always takes
/// argon2's time. Failures are never remembered.
pub(crate) struct AuthCache {
    /// `None` when the system gave no random key: nothing is remembered then.
    key: Option<hmac::Key>,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, Remembered>>,
    /// Argon2 verifications run (what the tests observe).
    argon2_runs: AtomicU64,
}

struct Remembered {
    password_hash: String,
    digest: hmac::Tag,
    expires: StdInstant,
}

impl AuthCache {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).ok();
        if key.is_none() {
            tracing::warn!("no random source for the login cache; every login runs argon2");
        }
        Self {
            key,
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
            argon2_runs: AtomicU64::new(0),
        }
    }

    /// Whether `password` is `account`'s; see [`verify`].
    pub(crate) async fn verify(
        &self,
        account: Option<&tern_mail::Account>,
        password: &str,
    ) -> bool {
        static ABSENT: OnceLock<String> = OnceLock::new();
        if let Some(account) = account
            && self.remembers(
                &account.address,
                &account.password_hash,
                password,
                StdInstant::now(),
            )
        {
            return true;
        }
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let hash = account.map(|a| a.password_hash.clone());
        let given = password.to_owned();
        let right = tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| {
                ABSENT
                    .get_or_init(|| tern_mail::hash_password("no account has this password"))
                    .clone()
            });
            tern_mail::verify_password(&hash, &given) && known
        })
        .await
        .unwrap_or(false);
        if right && let Some(account) = account {
            self.remember(
                &account.address,
                &account.password_hash,
                password,
                StdInstant::now(),
            );
        }
        right
    }

    /// Whether an unexpired entry for `address` was made with `password_hash` and `password`.
    fn remembers(
        &self,
        address: &str,
        password_hash: &str,
        password: &str,
        now: StdInstant,
    ) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        let digest = {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            match entries.get(address) {
                Some(e) if e.expires > now && e.password_hash == password_hash => e.digest,
                _ => return false,
            }
        };
        // Constant time: the comparison says nothing about how much of the digest matched.
        hmac::verify(key, password.as_bytes(), digest.as_ref()).is_ok()
    }

    /// Remembers a login that argon2 accepted, making room if the cache is full: expired
    /// entries go first, then the one closest to expiry (the oldest).
    fn remember(&self, address: &str, password_hash: &str, password: &str, now: StdInstant) {
        let Some(key) = &self.key else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        let entry = Remembered {
            password_hash: password_hash.to_owned(),
            digest: hmac::sign(key, password.as_bytes()),
            expires: now + self.ttl,
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if !entries.contains_key(address) && entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(a, _)| a.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(address.to_owned(), entry);
    }

    /// Argon2 verifications run so far.
    #[cfg(test)]
    fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(Ordering::Relaxed)
    }
}

/// Read barriers shared by the callers that wait at the same time, one queue per shard.
///
/// A read is linearizable when it reflects every write acknowledged before the read was
/// asked for; a barrier that *started* after the caller arrived gives exactly that, whoever
/// started it. So each caller takes a ticket on arrival; a barrier, before it starts, notes
/// the last ticket handed out, and its outcome answers every caller up to that ticket.
/// Callers arriving while a barrier runs cannot use it (it may have named its read index
/// before their writes were acknowledged): they wait, and the first of them starts the next
/// barrier for all of them. A shard thus has at most one barrier in flight and every caller
/// waits for at most two — instead of one round trip to the leader per read.
#[derive(Default)]
pub(crate) struct Barriers {
    shards: Mutex<HashMap<ShardId, Arc<Lane>>>,
}

#[derive(Default)]
struct Lane {
    /// Tickets handed out.
    tickets: AtomicU64,
    /// Held while a barrier runs; holds the last finished barrier's last ticket and outcome.
    last: tokio::sync::Mutex<Option<(u64, Result<(), ShardError>)>>,
}

impl Barriers {
    /// Passes a read barrier of `shard`: `barrier` (this node's
    /// [`ShardHost::read_barrier`](crate::shards::ShardHost::read_barrier)) run now, or the
    /// outcome of one that started after this call. Cancel-safe: a caller dropped while its
    /// barrier runs leaves the next waiter to start another.
    pub(crate) async fn pass<Fut>(
        &self,
        shard: ShardId,
        barrier: impl FnOnce() -> Fut,
    ) -> Result<(), ShardError>
    where
        Fut: Future<Output = Result<(), ShardError>>,
    {
        let lane = self
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(shard)
            .or_default()
            .clone();
        let ticket = lane.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = lane.last.lock().await;
        if let Some((covered, outcome)) = &*last
            && *covered >= ticket
        {
            return outcome.clone();
        }
        // Every ticket up to here was taken before this barrier starts.
        let covered = lane.tickets.load(Ordering::SeqCst);
        let outcome = barrier().await;
        *last = Some((covered, outcome.clone()));
        outcome
    }
}

/// Unix milliseconds, as commands carry them (`now`, internal dates).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn temporary_failures_are_retried_until_the_deadline_and_others_are_not() {
        let calls = std::cell::Cell::new(0);
        let unavailable = || ShardError::Unavailable {
            shard: 1,
            why: "electing".into(),
        };
        // Succeeds on the third attempt.
        let result = retrying(Instant::now() + Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(unavailable()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
        // Never succeeds: gives up by the deadline.
        let started = Instant::now();
        let result: Result<(), _> = retrying(Instant::now() + Duration::from_secs(2), || async {
            Err(unavailable())
        })
        .await;
        assert!(result.is_err());
        assert!(started.elapsed() <= Duration::from_secs(2));
        // A failure that is not temporary is not retried.
        calls.set(0);
        let result: Result<(), _> = retrying(Instant::now() + Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            async { Err(ShardError::UnknownShard(9)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1);
        // An operation that hangs ends at the deadline.
        let result: Result<(), _> = retrying(Instant::now() + Duration::from_secs(1), || {
            std::future::pending()
        })
        .await;
        assert!(result.unwrap_err().0.contains("deadline"));
    }

    fn account(address: &str, password: &str) -> tern_mail::Account {
        tern_mail::Account {
            id: 1,
            address: address.into(),
            password_hash: tern_mail::hash_password(password),
            quota_bytes: None,
            used_bytes: 0,
            messages: 0,
            aliases: Default::default(),
            created: 0,
        }
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused_like_a_wrong_password() {
        let cache = AuthCache::new(LOGIN_TTL, 10);
        let alice = account("alice@example.com", "right password");
        assert!(!cache.verify(Some(&alice), "wrong").await);
        assert!(!cache.verify(None, "no account has this password").await);
        assert_eq!(cache.argon2_runs(), 2);
        assert!(cache.verify(Some(&alice), "right password").await);
        assert!(verify(Some(&alice), "right password").await);
        assert!(!verify(None, "right password").await);
    }

    #[tokio::test]
    async fn a_repeated_login_skips_argon2_until_the_hash_changes() {
        let cache = AuthCache::new(LOGIN_TTL, 10);
        let mut alice = account("alice@example.com", "secret");
        assert!(cache.verify(Some(&alice), "secret").await);
        assert_eq!(cache.argon2_runs(), 1);
        for _ in 0..3 {
            assert!(cache.verify(Some(&alice), "secret").await);
        }
        assert_eq!(cache.argon2_runs(), 1, "hits do not run argon2");
        // A wrong password never matches the entry: argon2 runs and refuses it, and the
        // entry still serves the right password afterwards.
        assert!(!cache.verify(Some(&alice), "Secret").await);
        assert!(!cache.verify(Some(&alice), "").await);
        assert_eq!(cache.argon2_runs(), 3);
        assert!(cache.verify(Some(&alice), "secret").await);
        assert_eq!(cache.argon2_runs(), 3);
        // Another account with the same password and hash string has no entry of its own.
        let bob = tern_mail::Account {
            address: "bob@example.com".into(),
            ..alice.clone()
        };
        assert!(cache.verify(Some(&bob), "secret").await);
        assert_eq!(cache.argon2_runs(), 4);
        // The password changed in the store: the old password misses and is refused, the
        // new one is checked by argon2 once, then remembered.
        alice.password_hash = tern_mail::hash_password("new secret");
        assert!(!cache.verify(Some(&alice), "secret").await);
        assert_eq!(cache.argon2_runs(), 5);
        assert!(cache.verify(Some(&alice), "new secret").await);
        assert!(cache.verify(Some(&alice), "new secret").await);
        assert_eq!(cache.argon2_runs(), 6);
        // An account gone from the store is refused whatever was remembered.
        assert!(!cache.verify(None, "new secret").await);
    }

    #[test]
    fn remembered_logins_expire_and_the_cache_stays_bounded() {
        let cache = AuthCache::new(Duration::from_secs(300), 2);
        let t0 = StdInstant::now();
        cache.remember("a@x", "hash-a", "pa", t0);
        assert!(cache.remembers("a@x", "hash-a", "pa", t0 + Duration::from_secs(299)));
        assert!(!cache.remembers("a@x", "hash-a", "pa", t0 + Duration::from_secs(300)));
        assert!(!cache.remembers("a@x", "hash-b", "pa", t0));
        assert!(!cache.remembers("a@x", "hash-a", "pb", t0));
        assert!(!cache.remembers("b@x", "hash-a", "pa", t0));
        // Full: the oldest entry makes room.
        let t1 = t0 + Duration::from_secs(1);
        let t2 = t0 + Duration::from_secs(2);
        cache.remember("b@x", "hash-b", "pb", t1);
        cache.remember("c@x", "hash-c", "pc", t2);
        assert!(!cache.remembers("a@x", "hash-a", "pa", t2));
        assert!(cache.remembers("b@x", "hash-b", "pb", t2));
        assert!(cache.remembers("c@x", "hash-c", "pc", t2));
        // Expired entries go before live ones.
        let late = t0 + Duration::from_secs(301);
        cache.remember("d@x", "hash-d", "pd", late);
        assert!(cache.remembers("c@x", "hash-c", "pc", late));
        assert!(cache.remembers("d@x", "hash-d", "pd", late));
        assert_eq!(cache.entries.lock().unwrap().len(), 2);
    }

    /// A fake barrier: counts its starts and waits for `gate` to let it finish.
    async fn gated(starts: &AtomicU64, gate: &tokio::sync::Semaphore) -> Result<(), ShardError> {
        starts.fetch_add(1, Ordering::SeqCst);
        gate.acquire().await.expect("open").forget();
        Ok(())
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn readers_arriving_during_a_barrier_share_the_next_one() {
        let barriers = Arc::new(Barriers::default());
        let starts = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let reader = || {
            let (barriers, starts, gate) = (barriers.clone(), starts.clone(), gate.clone());
            tokio::spawn(async move { barriers.pass(7, || gated(&starts, &gate)).await })
        };
        let first = reader();
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        // These arrive while the first barrier runs: it cannot answer them.
        let later: Vec<_> = (0..5).map(|_| reader()).collect();
        settle().await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            1,
            "one barrier in flight per shard"
        );
        gate.add_permits(1);
        first.await.unwrap().unwrap();
        settle().await;
        assert!(
            later.iter().all(|r| !r.is_finished()),
            "answered by an older barrier"
        );
        assert_eq!(
            starts.load(Ordering::SeqCst),
            2,
            "the waiters started one more"
        );
        gate.add_permits(1);
        for r in later {
            r.await.unwrap().unwrap();
        }
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        // Another shard has its own queue; a reader alone runs its own barrier.
        let other = {
            let (barriers, starts, gate) = (barriers.clone(), starts.clone(), gate.clone());
            tokio::spawn(async move { barriers.pass(8, || gated(&starts, &gate)).await })
        };
        let alone = reader();
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        gate.add_permits(2);
        other.await.unwrap().unwrap();
        alone.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_barrier_fails_its_waiters_and_a_dropped_one_is_replaced() {
        let barriers = Arc::new(Barriers::default());
        let starts = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        // The running barrier is abandoned (its caller timed out): a waiter starts its own.
        let first = {
            let (barriers, starts, gate) = (barriers.clone(), starts.clone(), gate.clone());
            tokio::spawn(async move { barriers.pass(1, || gated(&starts, &gate)).await })
        };
        settle().await;
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let barriers = barriers.clone();
                let starts = starts.clone();
                tokio::spawn(async move {
                    barriers
                        .pass(1, || async {
                            starts.fetch_add(1, Ordering::SeqCst);
                            Err(ShardError::Unavailable {
                                shard: 1,
                                why: "no quorum".into(),
                            })
                        })
                        .await
                })
            })
            .collect();
        settle().await;
        first.abort();
        settle().await;
        // One failing barrier answered all three waiters.
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        for w in waiters {
            assert!(matches!(
                w.await.unwrap(),
                Err(ShardError::Unavailable { .. })
            ));
        }
        // The next reader does not inherit the failure.
        assert!(barriers.pass(1, || async { Ok(()) }).await.is_ok());
    }
}
