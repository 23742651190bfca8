//! HTTP Basic authentication of the admin API: the credential check (constant time) and the
//! limiter that stops password guessing from one client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};

/// The admin user name and password, kept as SHA-256 digests so that comparing them takes
/// the same time whatever the input's length and wherever it first differs.
pub struct Credential {
    user: [u8; SHA256_OUTPUT_LEN],
    password: [u8; SHA256_OUTPUT_LEN],
}

impl Credential {
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            user: sha256(user),
            password: sha256(password),
        }
    }

    /// Both parts are always compared, so a wrong user name costs as much as a wrong password.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let user_ok = equal(&self.user, &sha256(user));
        let password_ok = equal(&self.password, &sha256(password));
        user_ok & password_ok
    }
}

fn sha256(s: &str) -> [u8; SHA256_OUTPUT_LEN] {
    let mut out = [0; SHA256_OUTPUT_LEN];
    out.copy_from_slice(digest(&SHA256, s.as_bytes()).as_ref());
    out
}

/// Constant-time equality of two digests: fold the differences, branch once at the end.
fn equal(a: &[u8; SHA256_OUTPUT_LEN], b: &[u8; SHA256_OUTPUT_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Counts failed authentications per client and blocks a client for `window` once it has
/// failed `max_failures` times within `window`. A blocked client is answered without its
/// password being checked, so guessing gets nowhere.
///
/// IPv6 clients are counted per /64, the block one host usually owns. The table holds at most
/// `capacity` clients; when it is full, expired entries go first, then the oldest.
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    clients: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    since: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn expired(&self, now: Instant, window: Duration) -> bool {
        match self.blocked_until {
            Some(until) => now >= until,
            None => now.duration_since(self.since) >= window,
        }
    }
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            capacity: capacity.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must still wait, if it is blocked.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = client_key(ip);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = clients.get(&key)?;
        if entry.expired(now, self.window) {
            clients.remove(&key);
            return None;
        }
        entry.blocked_until.map(|until| until - now)
    }

    /// Counts one failure of `ip`; true when this one blocks it.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let key = client_key(ip);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = clients.get(&key)
            && entry.expired(now, self.window)
        {
            clients.remove(&key);
        }
        if !clients.contains_key(&key) && clients.len() >= self.capacity {
            let window = self.window;
            clients.retain(|_, f| !f.expired(now, window));
            if clients.len() >= self.capacity
                && let Some(oldest) = clients.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| *k)
            {
                clients.remove(&oldest);
            }
        }
        let entry = clients.entry(key).or_insert(Failures {
            since: now,
            count: 0,
            blocked_until: None,
        });
        entry.count = entry.count.saturating_add(1);
        if entry.count >= self.max_failures && entry.blocked_until.is_none() {
            entry.blocked_until = Some(now + self.window);
            return true;
        }
        false
    }

    /// A successful login forgets the client's earlier failures.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.remove(&client_key(ip));
    }

    /// Clients currently in the table.
    pub fn len(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// IPv4 as is (also when mapped into IPv6); IPv6 by its /64, as the mail listeners count.
fn client_key(ip: IpAddr) -> IpAddr {
    tern_listen::throttle::key(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_needs_both_parts() {
        let c = Credential::new("admin", "s3cret-pass");
        assert!(c.verify("admin", "s3cret-pass"));
        assert!(!c.verify("admin", "s3cret-pasS"));
        assert!(!c.verify("admin", "s3cret-pass "));
        assert!(!c.verify("root", "s3cret-pass"));
        assert!(!c.verify("admin", ""));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_after_max_failures_until_the_window_passes() {
        let limiter = FailureLimiter::new(5, Duration::from_secs(60), 16);
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(!limiter.failed(ip("10.0.0.1"), t0 + Duration::from_secs(i)));
            assert_eq!(
                limiter.blocked(ip("10.0.0.1"), t0 + Duration::from_secs(i)),
                None
            );
        }
        let t5 = t0 + Duration::from_secs(10);
        assert!(limiter.failed(ip("10.0.0.1"), t5));
        assert_eq!(
            limiter.blocked(ip("10.0.0.1"), t5),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            limiter.blocked(ip("10.0.0.1"), t5 + Duration::from_secs(59)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            limiter.blocked(ip("10.0.0.2"), t5),
            None,
            "other clients are not blocked"
        );
        assert_eq!(
            limiter.blocked(ip("10.0.0.1"), t5 + Duration::from_secs(60)),
            None
        );
        assert!(limiter.is_empty());
    }

    #[test]
    fn failures_spread_over_more_than_a_window_do_not_block() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60), 16);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(!limiter.failed(ip("10.0.0.1"), t0 + Duration::from_secs(31 * i)));
        }
        assert_eq!(
            limiter.blocked(ip("10.0.0.1"), t0 + Duration::from_secs(310)),
            None
        );
    }

    #[test]
    fn success_forgets_failures() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60), 16);
        let t0 = Instant::now();
        assert!(!limiter.failed(ip("10.0.0.1"), t0));
        limiter.succeeded(ip("10.0.0.1"));
        assert!(!limiter.failed(ip("10.0.0.1"), t0));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60), 16);
        let t0 = Instant::now();
        assert!(!limiter.failed(ip("2001:db8:1:2::1"), t0));
        assert!(limiter.failed(ip("2001:db8:1:2:ffff::9"), t0));
        assert!(limiter.blocked(ip("2001:db8:1:2::77"), t0).is_some());
        assert!(limiter.blocked(ip("2001:db8:1:3::1"), t0).is_none());
        assert!(!limiter.failed(ip("::ffff:10.0.0.1"), t0));
        assert!(limiter.failed(ip("10.0.0.1"), t0));
    }

    #[test]
    fn table_is_bounded_and_evicts_the_oldest() {
        let limiter = FailureLimiter::new(5, Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for (i, a) in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
            .iter()
            .enumerate()
        {
            limiter.failed(ip(a), t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(limiter.len(), 3);
        // 10.0.0.1 was the oldest and went; 10.0.0.2 (one failure) still counts.
        for i in 0..3 {
            assert!(!limiter.failed(ip("10.0.0.2"), t0 + Duration::from_secs(5 + i)));
        }
        assert!(limiter.failed(ip("10.0.0.2"), t0 + Duration::from_secs(9)));
        // Expired entries make room before anything young is evicted.
        let later = t0 + Duration::from_secs(200);
        limiter.failed(ip("10.0.0.9"), later);
        assert_eq!(limiter.len(), 1);
    }
}
