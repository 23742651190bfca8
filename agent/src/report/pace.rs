//! Whether to write now: at most one write per interval, only when the report changed, a
//! periodic rewrite so a lost or overwritten status heals, and exponential backoff after a
//! failed write. The state is plain data; [`Pace::when`] is a pure function of it.

use std::time::Duration;

use tokio::time::Instant;

use super::plan::Report;

/// Timing of the writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Pacing {
    /// At least this long between two writes (or attempts).
    pub interval: Duration,
    /// An unchanged report is written again after this long.
    pub refresh: Duration,
    /// Backoff after consecutive failures: `interval`, doubled each time, up to this.
    pub max_backoff: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            refresh: Duration::from_secs(60),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Write the report now.
    Now,
    /// Nothing before this instant (unless the view changes).
    At(Instant),
    /// Nothing to write until the view changes.
    Idle,
}

/// What this holder has written during its current term of the lease.
#[derive(Clone, Debug, Default)]
pub struct Pace {
    last_attempt: Option<Instant>,
    written: Option<(Instant, Report)>,
    retry_at: Option<Instant>,
    failures: u32,
}

impl Pace {
    /// Pure: when to write `desired` (`None`: nothing to write).
    pub fn when(&self, pacing: &Pacing, desired: Option<&Report>, now: Instant) -> When {
        let Some(desired) = desired else {
            return When::Idle;
        };
        let mut due = self.last_attempt.map_or(now, |t| t + pacing.interval);
        if let Some(retry) = self.retry_at {
            due = due.max(retry);
        } else if let Some((at, written)) = &self.written
            && written == desired
        {
            due = due.max(*at + pacing.refresh);
        }
        if now >= due { When::Now } else { When::At(due) }
    }

    /// The last report the API server accepted in this term.
    pub fn last_written(&self) -> Option<&Report> {
        self.written.as_ref().map(|(_, r)| r)
    }

    /// A write is sent at `now`.
    pub fn attempted(&mut self, now: Instant) {
        self.last_attempt = Some(now);
    }

    /// The write sent at `at` succeeded.
    pub fn succeeded(&mut self, at: Instant, report: Report) {
        self.written = Some((at, report));
        self.retry_at = None;
        self.failures = 0;
    }

    /// The write sent at `at` failed: returns the backoff before the next attempt.
    pub fn failed(&mut self, at: Instant, pacing: &Pacing) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let backoff = pacing
            .interval
            .saturating_mul(1u32 << (self.failures - 1).min(16))
            .min(pacing.max_backoff.max(pacing.interval));
        self.retry_at = Some(at + backoff);
        backoff
    }
}

#[cfg(test)]
mod tests {
    use tern_crds::mail_cluster::{GossipState, MemberStatus};

    use super::*;

    fn report(state: GossipState) -> Report {
        Report {
            members: vec![MemberStatus {
                name: "mail-default-0".into(),
                node_id: 1,
                pool: "default".into(),
                state,
                phi: None,
                version: None,
                shards: vec![],
            }],
            shards: vec![],
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn first_report_is_written_at_once_and_nothing_is_written_without_one() {
        let t0 = Instant::now();
        let pace = Pace::default();
        let p = Pacing::default();
        assert_eq!(
            pace.when(&p, Some(&report(GossipState::Alive)), t0),
            When::Now
        );
        assert_eq!(pace.when(&p, None, t0), When::Idle);
    }

    #[test]
    fn a_change_waits_for_the_interval_and_sameness_for_the_refresh() {
        let t0 = Instant::now();
        let p = Pacing::default();
        let mut pace = Pace::default();
        let alive = report(GossipState::Alive);
        let dead = report(GossipState::Dead);
        pace.attempted(t0);
        pace.succeeded(t0, alive.clone());
        // A change right after a write waits for the interval.
        let soon = t0 + S / 10;
        assert_eq!(pace.when(&p, Some(&dead), soon), When::At(t0 + S));
        assert_eq!(pace.when(&p, Some(&dead), t0 + S), When::Now);
        // The same report is written again only after the refresh period.
        assert_eq!(
            pace.when(&p, Some(&alive), t0 + S * 5),
            When::At(t0 + p.refresh)
        );
        assert_eq!(pace.when(&p, Some(&alive), t0 + p.refresh), When::Now);
        assert_eq!(pace.last_written(), Some(&alive));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_success_resets() {
        let t0 = Instant::now();
        let p = Pacing::default();
        let mut pace = Pace::default();
        let alive = report(GossipState::Alive);
        let mut at = t0;
        let mut backoffs = vec![];
        for _ in 0..8 {
            pace.attempted(at);
            let b = pace.failed(at, &p);
            backoffs.push(b.as_secs());
            // Not before the backoff, even though the report differs from anything written.
            assert_eq!(pace.when(&p, Some(&alive), at), When::At(at + b));
            at += b;
            assert_eq!(pace.when(&p, Some(&alive), at), When::Now);
        }
        assert_eq!(backoffs, [1, 2, 4, 8, 16, 30, 30, 30]);
        pace.attempted(at);
        pace.succeeded(at, alive.clone());
        pace.attempted(at + S);
        assert_eq!(pace.failed(at + S, &p), S, "success resets the backoff");
    }

    #[test]
    fn a_failed_refresh_is_retried_although_nothing_changed() {
        let t0 = Instant::now();
        let p = Pacing::default();
        let mut pace = Pace::default();
        let alive = report(GossipState::Alive);
        pace.attempted(t0);
        pace.succeeded(t0, alive.clone());
        let refresh = t0 + p.refresh;
        pace.attempted(refresh);
        let b = pace.failed(refresh, &p);
        assert_eq!(pace.when(&p, Some(&alive), refresh + b), When::Now);
    }
}
