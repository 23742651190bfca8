//! Leader election with a `coordination.k8s.io/v1` Lease, shared by the operator's replicas
//! (only the holder reconciles) and by the agents (only the holder writes the cluster's
//! membership view into `MailCluster.status`).
//!
//! Every write carries the Lease's resourceVersion, so two candidates racing for an expired
//! lease cannot both win. A holder that cannot renew steps down when its lease runs out, even
//! while a request hangs, so a new holder elected after the expiry never overlaps with it
//! (up to the clock skew between the nodes).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Which Lease, who we are, and its timing.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (its pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and a candidate retries); also the longest one round
    /// may take.
    pub retry: Duration,
}

/// What to do with the lease as it is now.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody has created it yet.
    Create,
    /// We hold it: renew.
    Renew,
    /// It is free or expired: take it over.
    Take,
    /// Someone else holds a valid lease.
    Wait,
}

/// Pure: what a candidate does given the lease it read.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .map_or(default_duration, |s| Duration::from_secs(s.max(1) as u64));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match renewed {
                Some(at)
                    if at + jiff::SignedDuration::try_from(duration).unwrap_or_default() > now =>
                {
                    Decision::Wait
                }
                _ => Decision::Take,
            }
        }
    }
}

/// Campaigns for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                self.cfg.duration.as_secs().clamp(1, i32::MAX as u64) as i32
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: returns whether this candidate holds the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let result = match self.api.get_opt(&self.cfg.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                let old = lease.spec.take().unwrap_or_default();
                lease.spec = match decide(Some(&old), &self.cfg.identity, now, self.cfg.duration) {
                    Decision::Wait => return Ok(false),
                    Decision::Renew => {
                        Some(self.spec(now, old.acquire_time, old.lease_transitions.unwrap_or(0)))
                    }
                    // A Lease object without a spec is free as well.
                    Decision::Take | Decision::Create => Some(self.spec(
                        now,
                        None,
                        old.lease_transitions.unwrap_or(0).saturating_add(1),
                    )),
                };
                // replace carries metadata.resourceVersion: a concurrent writer makes this 409.
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Someone else wrote first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so a standby takes over at once (on graceful shutdown).
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(&self.cfg.identity)
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            let _ = self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await;
        }
    }

    /// Campaigns and renews forever, publishing whether this candidate leads. A leader that
    /// has not renewed for a whole lease duration steps down at that moment, even while a
    /// round is still waiting for the API server.
    pub async fn run(&self, leading: watch::Sender<bool>) {
        // When the lease we last renewed runs out (counted from before the renewal was sent).
        let mut held_until: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let round = tokio::select! {
                r = tokio::time::timeout(self.cfg.retry, self.try_acquire_or_renew()) => Some(r),
                () = sleep_until_some(held_until) => None,
            };
            match round {
                Some(Ok(Ok(true))) => {
                    held_until = Some(started + self.cfg.duration);
                    if !*leading.borrow() {
                        tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "acquired the lease");
                    }
                    leading.send_replace(true);
                }
                Some(Ok(Ok(false))) => {
                    held_until = None;
                    if *leading.borrow() {
                        tracing::warn!(lease = %self.cfg.name, "lost the lease to another holder");
                    }
                    leading.send_replace(false);
                }
                Some(Ok(Err(e))) => {
                    tracing::warn!(lease = %self.cfg.name, error = %e, "lease round failed");
                    self.step_down_if_expired(&mut held_until, &leading);
                }
                Some(Err(_)) => {
                    tracing::warn!(lease = %self.cfg.name, timeout = ?self.cfg.retry, "lease round timed out");
                    self.step_down_if_expired(&mut held_until, &leading);
                }
                None => self.step_down_if_expired(&mut held_until, &leading),
            }
            tokio::select! {
                () = tokio::time::sleep_until(started + self.cfg.retry) => {}
                () = sleep_until_some(held_until) => {
                    self.step_down_if_expired(&mut held_until, &leading);
                }
            }
        }
    }

    fn step_down_if_expired(
        &self,
        held_until: &mut Option<Instant>,
        leading: &watch::Sender<bool>,
    ) {
        if held_until.is_none_or(|t| Instant::now() >= t) {
            if held_until.take().is_some() {
                tracing::warn!(lease = %self.cfg.name, "could not renew the lease before it ran out; stepping down");
            }
            leading.send_replace(false);
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(who: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(decide(None, "a", now, D), Decision::Create);
        assert_eq!(
            decide(Some(&held_by("a", now)), "a", now, D),
            Decision::Renew
        );
        let fresh = now - jiff::SignedDuration::from_secs(5);
        assert_eq!(
            decide(Some(&held_by("b", fresh)), "a", now, D),
            Decision::Wait
        );
        let stale = now - jiff::SignedDuration::from_secs(16);
        assert_eq!(
            decide(Some(&held_by("b", stale)), "a", now, D),
            Decision::Take
        );
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("b", now)
        };
        assert_eq!(decide(Some(&released), "a", now, D), Decision::Take);
    }

    #[test]
    fn the_lease_says_how_long_it_lasts() {
        let now = Timestamp::from_second(1_000).unwrap();
        // Renewed 20 s ago by a holder whose lease lasts 30 s: still valid, whatever our
        // own default says.
        let long = LeaseSpec {
            lease_duration_seconds: Some(30),
            ..held_by("b", now - jiff::SignedDuration::from_secs(20))
        };
        assert_eq!(decide(Some(&long), "a", now, D), Decision::Wait);
        // Never renewed, only acquired: the acquire time counts.
        let acquired = LeaseSpec {
            renew_time: None,
            acquire_time: Some(MicroTime(now - jiff::SignedDuration::from_secs(3))),
            ..held_by("b", now)
        };
        assert_eq!(decide(Some(&acquired), "a", now, D), Decision::Wait);
        // A holder with no time at all holds nothing.
        let timeless = LeaseSpec {
            renew_time: None,
            ..held_by("b", now)
        };
        assert_eq!(decide(Some(&timeless), "a", now, D), Decision::Take);
    }
}
