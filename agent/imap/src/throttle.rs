//! Limits shared by the sessions of one or more listeners: simultaneous connections per
//! address and in total, and authentication failures per address and per account in a
//! sliding window (a client over the limit is refused without a password check).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::limits::Limits;

#[derive(Debug, Default)]
struct Tables {
    total: usize,
    connections: HashMap<IpAddr, usize>,
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
    by_account: HashMap<String, VecDeque<Instant>>,
}

/// Shared limits; clone the `Arc` into every listener that should share them.
#[derive(Debug)]
pub struct Throttle {
    limits: Limits,
    tables: Mutex<Tables>,
}

/// One connection slot; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    throttle: Arc<Throttle>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut t = self.throttle.tables();
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.connections.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.connections.remove(&self.ip);
            }
        }
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) > window) {
        q.pop_front();
    }
}

impl Throttle {
    /// Limits from `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Throttle {
            limits,
            tables: Mutex::new(Tables::default()),
        })
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection slot for `ip`, or `None` when the address or the listener is full.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut t = self.tables();
        let n = t.connections.get(&ip).copied().unwrap_or(0);
        if n >= self.limits.max_connections_per_address || t.total >= self.limits.max_connections {
            return None;
        }
        t.total += 1;
        t.connections.insert(ip, n + 1);
        Some(ConnectionSlot {
            throttle: Arc::clone(self),
            ip,
        })
    }

    /// Whether a password attempt from `ip` for `user` may be checked now.
    pub fn auth_allowed(&self, ip: IpAddr, user: &str) -> bool {
        let now = Instant::now();
        let window = self.limits.auth_failure_window;
        let mut t = self.tables();
        let max = self.limits.max_auth_failures;
        let by_address = t.by_address.get_mut(&ip).map_or(0, |q| {
            prune(q, now, window);
            q.len()
        });
        let by_account = t.by_account.get_mut(&user.to_lowercase()).map_or(0, |q| {
            prune(q, now, window);
            q.len()
        });
        by_address < max && by_account < max
    }

    /// Counts a failed password attempt.
    pub fn auth_failed(&self, ip: IpAddr, user: &str) {
        let now = Instant::now();
        let mut t = self.tables();
        if t.by_address.len() > 4096 {
            let window = self.limits.auth_failure_window;
            t.by_address.retain(|_, q| {
                prune(q, now, window);
                !q.is_empty()
            });
            t.by_account.retain(|_, q| {
                prune(q, now, window);
                !q.is_empty()
            });
        }
        t.by_address.entry(ip).or_default().push_back(now);
        t.by_account
            .entry(user.to_lowercase())
            .or_default()
            .push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_address_and_account() {
        let t = Throttle::new(Limits {
            max_auth_failures: 2,
            ..Limits::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(t.auth_allowed(a, "alice"));
        t.auth_failed(a, "alice");
        t.auth_failed(a, "Alice");
        assert!(!t.auth_allowed(a, "bob"), "address blocked");
        assert!(!t.auth_allowed(b, "alice"), "account blocked");
        assert!(t.auth_allowed(b, "bob"));
    }

    #[test]
    fn connection_slots_are_released() {
        let t = Throttle::new(Limits {
            max_connections_per_address: 1,
            ..Limits::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let slot = t.connect(a).unwrap();
        assert!(t.connect(a).is_none());
        drop(slot);
        assert!(t.connect(a).is_some());
    }
}
