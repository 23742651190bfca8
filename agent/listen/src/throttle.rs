//! Per-address and per-account limits shared by the sessions of one or more listeners:
//! simultaneous connections, command rate (token bucket), and authentication failures
//! (sliding window). Addresses are the client's (after PROXY); IPv6 clients are counted
//! per /64, since one host commonly holds a whole /64.
//!
//! Tables are pruned as they are used, so memory follows the number of recently active
//! addresses and accounts, not of all ever seen.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The limits a [`Throttle`] enforces. Each engine's own limits convert into these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Most simultaneous connections from one client address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// Sustained commands per second allowed from one client address, summed over its
    /// connections.
    pub commands_per_second: u32,
    /// Commands one client address may send at once above the sustained rate.
    pub command_burst: u32,
    /// Failed authentications per client address, and per account, within
    /// `auth_failure_window`, after which further attempts are refused without a check.
    pub max_auth_failures: u32,
    /// The window for `max_auth_failures`.
    pub auth_failure_window: Duration,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        ThrottleLimits {
            max_connections_per_address: 64,
            commands_per_second: 5000,
            command_burst: 10000,
            max_auth_failures: 5,
            auth_failure_window: Duration::from_secs(60),
        }
    }
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by /64.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Tables {
    connections: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, Bucket>,
    auth_by_address: HashMap<IpAddr, VecDeque<Instant>>,
    auth_by_account: HashMap<String, VecDeque<Instant>>,
}

/// Shared limits; clone the `Arc` into every listener that should share them.
#[derive(Debug)]
pub struct Throttle {
    limits: ThrottleLimits,
    tables: Mutex<Tables>,
}

/// Holds one connection slot of an address; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    throttle: Arc<Throttle>,
    key: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut t = self.throttle.tables();
        if let Some(n) = t.connections.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                t.connections.remove(&self.key);
            }
        }
    }
}

/// Table sizes above which stale entries are swept.
const SWEEP_AT: usize = 4096;

impl Throttle {
    /// A throttle enforcing `limits` (an engine's limits convert into [`ThrottleLimits`]).
    pub fn new(limits: impl Into<ThrottleLimits>) -> Arc<Self> {
        Arc::new(Throttle {
            limits: limits.into(),
            tables: Mutex::new(Tables::default()),
        })
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the counters unusable: recover them.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection slot for `ip`, or None when the address has too many.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let key = key(ip);
        let mut t = self.tables();
        let n = t.connections.entry(key).or_insert(0);
        if *n >= self.limits.max_connections_per_address {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            throttle: Arc::clone(self),
            key,
        })
    }

    /// The limits enforced.
    pub fn limits(&self) -> &ThrottleLimits {
        &self.limits
    }

    /// Charges `n` commands to `ip` now; false when the address is over its rate.
    pub fn commands(&self, ip: IpAddr, n: u64) -> bool {
        self.commands_at(ip, n, Instant::now())
    }

    /// Charges `n` commands to `ip` at `now`; false when the address is over its rate.
    pub fn commands_at(&self, ip: IpAddr, n: u64, now: Instant) -> bool {
        if n == 0 {
            return true;
        }
        let rate = f64::from(self.limits.commands_per_second);
        let burst = f64::from(self.limits.command_burst.max(1));
        let mut t = self.tables();
        if t.buckets.len() > SWEEP_AT {
            // A bucket idle long enough to be full again carries no information.
            let full_after = burst / rate.max(1.0);
            t.buckets
                .retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() < full_after);
        }
        let bucket = t.buckets.entry(key(ip)).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        bucket.tokens -= n as f64;
        bucket.tokens >= 0.0
    }

    /// Whether `ip` and `account` may try a password now (fewer than the allowed failures
    /// within the window for both). Accounts compare without case.
    pub fn auth_allowed(&self, ip: IpAddr, account: &str) -> bool {
        self.auth_allowed_at(ip, account, Instant::now())
    }

    /// [`Throttle::auth_allowed`] at `now`.
    pub fn auth_allowed_at(&self, ip: IpAddr, account: &str, now: Instant) -> bool {
        let window = self.limits.auth_failure_window;
        let max = self.limits.max_auth_failures as usize;
        let mut t = self.tables();
        let recent = |q: Option<&mut VecDeque<Instant>>| match q {
            Some(q) => {
                while q
                    .front()
                    .is_some_and(|&at| now.saturating_duration_since(at) >= window)
                {
                    q.pop_front();
                }
                q.len()
            }
            None => 0,
        };
        let by_address = recent(t.auth_by_address.get_mut(&key(ip)));
        let by_account = recent(t.auth_by_account.get_mut(&account.to_lowercase()));
        by_address < max && by_account < max
    }

    /// Records a failed password for `ip` and `account` now.
    pub fn auth_failed(&self, ip: IpAddr, account: &str) {
        self.auth_failed_at(ip, account, Instant::now());
    }

    /// [`Throttle::auth_failed`] at `now`.
    pub fn auth_failed_at(&self, ip: IpAddr, account: &str, now: Instant) {
        let window = self.limits.auth_failure_window;
        let mut t = self.tables();
        if t.auth_by_address.len() > SWEEP_AT {
            t.auth_by_address.retain(|_, q| {
                q.back()
                    .is_some_and(|&at| now.saturating_duration_since(at) < window)
            });
        }
        if t.auth_by_account.len() > SWEEP_AT {
            t.auth_by_account.retain(|_, q| {
                q.back()
                    .is_some_and(|&at| now.saturating_duration_since(at) < window)
            });
        }
        // Bounded: beyond the limit, more entries change nothing.
        let cap = self.limits.max_auth_failures as usize + 1;
        let push = |q: &mut VecDeque<Instant>| {
            q.push_back(now);
            while q.len() > cap {
                q.pop_front();
            }
        };
        push(t.auth_by_address.entry(key(ip)).or_default());
        push(t.auth_by_account.entry(account.to_lowercase()).or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Throttle {
        fn table_sizes(&self) -> (usize, usize, usize, usize) {
            let t = self.tables();
            (
                t.connections.len(),
                t.buckets.len(),
                t.auth_by_address.len(),
                t.auth_by_account.len(),
            )
        }
    }

    #[test]
    fn stale_entries_are_swept_once_tables_grow() {
        let t = Throttle::new(limits());
        let start = Instant::now();
        for i in 0..=SWEEP_AT as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.auth_failed_at(ip, &format!("user{i}"), start);
            assert!(t.commands_at(ip, 1, start));
        }
        let (_, buckets, by_address, by_account) = t.table_sizes();
        assert_eq!(
            (buckets, by_address, by_account),
            (SWEEP_AT + 1, SWEEP_AT + 1, SWEEP_AT + 1)
        );
        // Past the window (and past the time a bucket takes to refill), one more use sweeps.
        let later = start + Duration::from_secs(61);
        let fresh: IpAddr = "192.0.2.99".parse().unwrap();
        t.auth_failed_at(fresh, "fresh", later);
        assert!(t.commands_at(fresh, 1, later));
        assert_eq!(t.table_sizes(), (0, 1, 1, 1));
    }

    fn limits() -> ThrottleLimits {
        ThrottleLimits {
            max_connections_per_address: 2,
            commands_per_second: 10,
            command_burst: 20,
            max_auth_failures: 3,
            auth_failure_window: Duration::from_secs(60),
        }
    }

    #[test]
    fn connection_slots_per_address_are_released_on_drop() {
        let t = Throttle::new(limits());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = t.connect(a).unwrap();
        let _s2 = t.connect(a).unwrap();
        assert!(t.connect(a).is_none());
        assert!(t.connect(b).is_some());
        drop(s1);
        assert!(t.connect(a).is_some());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t = Throttle::new(limits());
        let _a = t.connect("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _b = t.connect("2001:db8:1:2::ffff".parse().unwrap()).unwrap();
        assert!(t.connect("2001:db8:1:2:abcd::9".parse().unwrap()).is_none());
        assert!(t.connect("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _c = t.connect("192.0.2.7".parse().unwrap()).unwrap();
        let _d = t.connect("::ffff:192.0.2.7".parse().unwrap()).unwrap();
        assert!(t.connect("192.0.2.7".parse().unwrap()).is_none());
    }

    #[test]
    fn command_rate_has_a_burst_and_refills() {
        let t = Throttle::new(limits());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();
        assert!(t.commands_at(ip, 20, start));
        assert!(!t.commands_at(ip, 1, start));
        // 10 per second: after one second ten more are fine (the debt of one included).
        assert!(t.commands_at(ip, 9, start + Duration::from_secs(1)));
        assert!(!t.commands_at(ip, 5, start + Duration::from_secs(1)));
        assert!(t.commands_at("192.0.2.2".parse().unwrap(), 20, start));
    }

    #[test]
    fn auth_failures_per_address_and_per_account_in_a_window() {
        let t = Throttle::new(limits());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.auth_allowed_at(ip, "alice", now));
            t.auth_failed_at(ip, "alice", now);
        }
        assert!(
            !t.auth_allowed_at(ip, "bob", now),
            "the address is blocked for every account"
        );
        assert!(
            !t.auth_allowed_at(other, "ALICE", now),
            "the account is blocked from every address"
        );
        assert!(t.auth_allowed_at(other, "bob", now));
        let later = now + Duration::from_secs(61);
        assert!(t.auth_allowed_at(ip, "alice", later), "failures expire");
    }
}
