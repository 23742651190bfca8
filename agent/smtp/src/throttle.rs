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
use std::time::Instant;

use crate::limits::Limits;

/// The key an address is counted under.
fn key(ip: IpAddr) -> IpAddr {
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
    limits: Limits,
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
    /// Limits taken from `limits` (connections per address, command rate, authentication
    /// failures).
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Throttle {
            limits,
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

    /// Charges `n` commands to `ip`; false when the address is over its rate.
    pub fn commands(&self, ip: IpAddr, n: u64, now: Instant) -> bool {
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
    /// within the window for both).
    pub fn auth_allowed(&self, ip: IpAddr, account: &str, now: Instant) -> bool {
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

    /// Records a failed password for `ip` and `account`.
    pub fn auth_failed(&self, ip: IpAddr, account: &str, now: Instant) {
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
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections_per_address: 2,
            commands_per_second: 10,
            command_burst: 20,
            max_auth_failures: 3,
            auth_failure_window: Duration::from_secs(60),
            ..Limits::default()
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
        assert!(t.commands(ip, 20, start));
        assert!(!t.commands(ip, 1, start));
        // 10 per second: after one second ten more are fine (the debt of one included).
        assert!(t.commands(ip, 9, start + Duration::from_secs(1)));
        assert!(!t.commands(ip, 5, start + Duration::from_secs(1)));
        assert!(t.commands("192.0.2.2".parse().unwrap(), 20, start));
    }

    #[test]
    fn auth_failures_per_address_and_per_account_in_a_window() {
        let t = Throttle::new(limits());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.auth_allowed(ip, "alice", now));
            t.auth_failed(ip, "alice", now);
        }
        assert!(
            !t.auth_allowed(ip, "bob", now),
            "the address is blocked for every account"
        );
        assert!(
            !t.auth_allowed(other, "ALICE", now),
            "the account is blocked from every address"
        );
        assert!(t.auth_allowed(other, "bob", now));
        let later = now + Duration::from_secs(61);
        assert!(t.auth_allowed(ip, "alice", later), "failures expire");
    }
}
