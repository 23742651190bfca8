//! Status conditions in the metav1.Condition shape, kept as a list keyed by `type`.
//!
//! Types are adjectives (`Ready`, `Progressing`, `Degraded`); reasons are CamelCase
//! constants; messages are for people. `lastTransitionTime` changes only when `status` does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The resource serves what its spec asks for.
pub const READY: &str = "Ready";
/// The operator is moving the resource towards its spec (rolling, scaling, moving data).
pub const PROGRESSING: &str = "Progressing";
/// Something is wrong that the operator cannot fix by itself, or capacity is reduced.
pub const DEGRADED: &str = "Degraded";

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// Stable CamelCase reasons, also used as the `reason` label of events and metrics.
pub mod reason {
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    pub const SCALING: &str = "Scaling";
    pub const DRAINING: &str = "Draining";
    pub const RECONCILED: &str = "Reconciled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const INSUFFICIENT_VOTERS: &str = "InsufficientVoters";
    pub const CLUSTER_NOT_FOUND: &str = "ClusterNotFound";
    pub const MEMBERS_UNHEALTHY: &str = "MembersUnhealthy";
    pub const SHARDS_WITHOUT_LEADER: &str = "ShardsWithoutLeader";
    pub const HEALTH_NOT_REPORTED: &str = "HealthNotReported";
    pub const HEALTHY: &str = "Healthy";
    pub const PLACED: &str = "Placed";
    pub const PINNED_SHARD_MISSING: &str = "PinnedShardMissing";
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    pub const APPLY_REFUSED: &str = "ApplyRefused";
    pub const DELETING: &str = "Deleting";
}

/// Builds a condition; `last_transition_time` is filled by [`set`].
pub fn new(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { TRUE } else { FALSE }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Puts `cond` into `conditions`, replacing the one of the same type. The transition time is
/// kept when the status did not change and set to `now` when it did (or is new).
pub fn set(conditions: &mut Vec<Condition>, mut cond: Condition, now: jiff::Timestamp) {
    match conditions.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(old) => {
            cond.last_transition_time = if old.status == cond.status {
                old.last_transition_time.clone()
            } else {
                Time(now)
            };
            *old = cond;
        }
        None => {
            cond.last_transition_time = Time(now);
            conditions.push(cond);
        }
    }
}

/// Merges freshly computed conditions into the previous list: transition times carried over
/// where the status is unchanged; types no longer computed are dropped. Sorted by type so
/// status patches are stable.
pub fn merge(
    previous: &[Condition],
    computed: Vec<Condition>,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|p| computed.iter().any(|c| c.type_ == p.type_))
        .cloned()
        .collect();
    for c in computed {
        set(&mut out, c, now);
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of a type is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut conds = vec![];
        set(&mut conds, new(READY, false, "A", "x", Some(1)), at(10));
        set(&mut conds, new(READY, false, "B", "y", Some(2)), at(20));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(at(10)));
        assert_eq!(conds[0].reason, "B");
        assert_eq!(conds[0].observed_generation, Some(2));
        set(&mut conds, new(READY, true, "C", "z", Some(2)), at(30));
        assert_eq!(conds[0].last_transition_time, Time(at(30)));
        assert!(is_true(&conds, READY));
    }

    #[test]
    fn merge_drops_stale_types_and_sorts() {
        let prev = merge(
            &[],
            vec![
                new(READY, true, "A", "", None),
                new("Old", true, "A", "", None),
            ],
            at(1),
        );
        let next = merge(
            &prev,
            vec![
                new(PROGRESSING, false, "B", "", None),
                new(READY, true, "A", "", None),
            ],
            at(5),
        );
        let types: Vec<_> = next.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [PROGRESSING, READY]);
        assert_eq!(
            find(&next, READY).unwrap().last_transition_time,
            Time(at(1))
        );
        assert_eq!(
            find(&next, PROGRESSING).unwrap().last_transition_time,
            Time(at(5))
        );
    }
}
