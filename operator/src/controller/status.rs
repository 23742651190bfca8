//! Pure status computation. The operator owns the replica counts, conditions and the shards'
//! placement; the agents' reporter owns `members` and each shard's `leader` and
//! `lastAppliedLag` (server-side apply keeps the two writers' fields apart).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use serde::Serialize;
use tern_crds::cluster_role::{ClusterRoleStatus, TaskAssignmentStatus};
use tern_crds::condition::{self, DEGRADED, PROGRESSING, READY, reason};
use tern_crds::mail_cluster::{DEFAULT_POOL, GossipState, MailClusterStatus, ShardStatus};
use tern_crds::user_group::UserGroupStatus;
use tern_crds::{Assignment, ClusterRole, MailCluster, UserGroup};

/// What one pool looks like after apply.
#[derive(Clone, Debug)]
pub struct PoolObservation {
    pub name: String,
    /// `spec.replicas` of the pool.
    pub desired: i32,
    /// Nodes being drained before their pods go.
    pub leaving: i32,
    /// The StatefulSet as the API server returned it.
    pub statefulset: Option<StatefulSet>,
    /// `status.selector` for the scale subresource.
    pub selector: String,
}

impl PoolObservation {
    fn sts_status(&self) -> (i32, i32, i32, bool) {
        let Some(sts) = &self.statefulset else {
            return (0, 0, 0, false);
        };
        let status = sts.status.clone().unwrap_or_default();
        let spec_replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let rolled = status.observed_generation >= sts.metadata.generation
            && status.current_revision == status.update_revision
            && status.updated_replicas.unwrap_or(0) >= spec_replicas;
        (
            status.replicas,
            status.ready_replicas.unwrap_or(0),
            spec_replicas,
            rolled,
        )
    }

    pub fn replicas(&self) -> i32 {
        self.sts_status().0
    }

    pub fn ready(&self) -> i32 {
        self.sts_status().1
    }

    fn is_ready(&self) -> bool {
        self.ready() >= self.desired
    }

    /// The Progressing condition of this pool, when it is progressing.
    fn progress(&self) -> Option<(&'static str, String)> {
        let (replicas, _, spec_replicas, rolled) = self.sts_status();
        if self.leaving > 0 {
            Some((
                reason::DRAINING,
                format!(
                    "pool {}: draining {} node(s) before their pods are removed",
                    self.name, self.leaving
                ),
            ))
        } else if replicas != spec_replicas || spec_replicas != self.desired {
            Some((
                reason::SCALING,
                format!("pool {}: {replicas} of {} pods", self.name, self.desired),
            ))
        } else if !rolled {
            Some((
                reason::ROLLING_UPDATE,
                format!("pool {}: replacing pods with the new template", self.name),
            ))
        } else {
            None
        }
    }
}

/// A reason the resource cannot be reconciled as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

fn ready_condition(
    pools: &[&PoolObservation],
    problem: Option<&Problem>,
    generation: Option<i64>,
) -> Condition {
    if let Some(p) = problem {
        return condition::new(READY, false, p.reason, p.message.clone(), generation);
    }
    let not_ready: Vec<String> = pools
        .iter()
        .filter(|p| !p.is_ready())
        .map(|p| format!("{} {}/{}", p.name, p.ready(), p.desired))
        .collect();
    if not_ready.is_empty() {
        condition::new(
            READY,
            true,
            reason::ALL_REPLICAS_READY,
            "every pod of every pool is ready",
            generation,
        )
    } else {
        condition::new(
            READY,
            false,
            reason::REPLICAS_NOT_READY,
            format!("pods not ready: {}", not_ready.join(", ")),
            generation,
        )
    }
}

fn progressing_condition(pools: &[&PoolObservation], generation: Option<i64>) -> Condition {
    match pools.iter().find_map(|p| p.progress()) {
        Some((reason, message)) => condition::new(PROGRESSING, true, reason, message, generation),
        None => condition::new(
            PROGRESSING,
            false,
            reason::RECONCILED,
            "every pool matches its spec",
            generation,
        ),
    }
}

/// Operator-owned part of a MailCluster's status.
/// What the agents' elected status reporter has been doing, read from its Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// No Lease: the agents have not started reporting (a new cluster).
    NotStarted,
    /// Renewed within twice its duration.
    Active,
    /// Not renewed for longer than twice its duration: nobody writes `members` and shard
    /// leaders any more, so they may be stale.
    Silent { since: jiff::Timestamp },
}

/// The reporter's state from its Lease, and for an active one how long until it would count
/// as silent (when the operator should look again: a silent reporter changes no object, so
/// no watch event would say so).
pub fn reporter(
    lease: Option<&LeaseSpec>,
    now: jiff::Timestamp,
) -> (Reporter, Option<std::time::Duration>) {
    let Some(spec) = lease else {
        return (Reporter::NotStarted, None);
    };
    let Some(renewed) = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0)
    else {
        return (Reporter::NotStarted, None);
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1));
    let silent_at = renewed + jiff::SignedDuration::from_secs(2 * duration);
    if now >= silent_at {
        (Reporter::Silent { since: renewed }, None)
    } else {
        let left = silent_at.duration_since(now).unsigned_abs();
        (
            Reporter::Active,
            Some(std::time::Duration::from_secs(left.as_secs() + 1)),
        )
    }
}

pub fn cluster_status(
    cluster: &MailCluster,
    pools: &[PoolObservation],
    assignment: Option<&Assignment>,
    problem: Option<&Problem>,
    reporter: Reporter,
    now: jiff::Timestamp,
) -> MailClusterStatus {
    let generation = cluster.meta().generation;
    let previous = cluster.status.clone().unwrap_or_default();
    let all: Vec<&PoolObservation> = pools.iter().collect();
    let default = pools.iter().find(|p| p.name == DEFAULT_POOL);

    let unhealthy: Vec<&str> = previous
        .members
        .iter()
        .filter(|m| matches!(m.state, GossipState::Suspect | GossipState::Dead))
        .map(|m| m.name.as_str())
        .collect();
    let shard_ids: Vec<u32> = assignment
        .map(|a| a.shards.iter().map(|s| s.id).collect())
        .unwrap_or_default();
    let with_leader = shard_ids
        .iter()
        .filter(|id| {
            previous
                .shards
                .iter()
                .any(|s| s.id == **id as i32 && s.leader.is_some())
        })
        .count();
    // Leaders are known only once agents report; before that, no shard is called leaderless.
    let agents_report = !previous.members.is_empty();

    let serving = pools.iter().any(|p| p.ready() > 0);
    let degraded = if let Some(p) = problem {
        condition::new(DEGRADED, true, p.reason, p.message.clone(), generation)
    } else if let (Reporter::Silent { since }, true) = (reporter, serving) {
        condition::new(
            DEGRADED,
            true,
            reason::HEALTH_NOT_REPORTED,
            format!(
                "no agent has reported the cluster's health since {since}; members and shard leaders may be stale"
            ),
            generation,
        )
    } else if !unhealthy.is_empty() {
        condition::new(
            DEGRADED,
            true,
            reason::MEMBERS_UNHEALTHY,
            format!("suspect or dead: {}", unhealthy.join(", ")),
            generation,
        )
    } else if agents_report && with_leader < shard_ids.len() {
        condition::new(
            DEGRADED,
            true,
            reason::SHARDS_WITHOUT_LEADER,
            format!(
                "{} of {} shards have no leader and refuse writes",
                shard_ids.len() - with_leader,
                shard_ids.len()
            ),
            generation,
        )
    } else {
        condition::new(
            DEGRADED,
            false,
            reason::HEALTHY,
            "no member is suspect or dead",
            generation,
        )
    };

    let computed = vec![
        ready_condition(&all, problem, generation),
        progressing_condition(&all, generation),
        degraded,
    ];
    let shards = assignment
        .map(|a| {
            a.shards
                .iter()
                .map(|s| ShardStatus {
                    id: s.id as i32,
                    voters: s.voters.iter().map(|&v| v as i64).collect(),
                    learners: s.learners.iter().map(|&v| v as i64).collect(),
                    groups: a
                        .groups
                        .iter()
                        .filter(|(_, shard)| **shard == s.id)
                        .map(|(g, _)| g.clone())
                        .collect(),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    let ready: i32 = pools.iter().map(|p| p.ready()).sum();
    let desired: i32 = pools.iter().map(|p| p.desired).sum();
    MailClusterStatus {
        observed_generation: generation,
        replicas: default.map_or(0, |p| p.replicas()),
        ready_replicas: default.map_or(0, |p| p.ready()),
        selector: default.map(|p| p.selector.clone()),
        ready: Some(format!("{ready}/{desired}")),
        leaders: Some(format!("{with_leader}/{}", shard_ids.len())),
        assignment_epoch: assignment.map(|a| a.epoch as i64),
        conditions: condition::merge(&previous.conditions, computed, now),
        members: vec![],
        shards,
    }
}

/// Status of a ClusterRole whose cluster was reconciled.
pub fn role_status(
    role: &ClusterRole,
    pool: &PoolObservation,
    assignment: Option<&Assignment>,
    problem: Option<&Problem>,
    now: jiff::Timestamp,
) -> ClusterRoleStatus {
    let generation = role.meta().generation;
    let previous = role.status.clone().unwrap_or_default();
    let degraded = match problem {
        Some(p) => condition::new(DEGRADED, true, p.reason, p.message.clone(), generation),
        None => condition::new(
            DEGRADED,
            false,
            reason::HEALTHY,
            "pool reconciled",
            generation,
        ),
    };
    let computed = vec![
        ready_condition(&[pool], problem, generation),
        progressing_condition(&[pool], generation),
        degraded,
    ];
    let task_assignments = assignment
        .map(|a| {
            a.tasks
                .iter()
                .filter(|t| t.pool == pool.name)
                .map(|t| TaskAssignmentStatus {
                    task: t.task.as_str().into(),
                    shard: t.shard as i32,
                    nodes: t.nodes.iter().map(|&n| n as i64).collect(),
                    acting: t.nodes.first().map(|&n| n as i64),
                })
                .collect()
        })
        .unwrap_or_default();
    ClusterRoleStatus {
        observed_generation: generation,
        replicas: pool.replicas(),
        ready_replicas: pool.ready(),
        selector: Some(pool.selector.clone()),
        conditions: condition::merge(&previous.conditions, computed, now),
        task_assignments,
    }
}

/// Status of a UserGroup whose cluster was reconciled.
pub fn group_status(
    group: &UserGroup,
    assignment: Option<&Assignment>,
    shards: u32,
    now: jiff::Timestamp,
) -> UserGroupStatus {
    let generation = group.meta().generation;
    let previous = group.status.clone().unwrap_or_default();
    let name = group.metadata.name.clone().unwrap_or_default();
    let shard = assignment.and_then(|a| a.groups.get(&name)).copied();
    let ready = match (group.spec.shard, shard) {
        (Some(pin), _) if pin < 1 || pin as u32 > shards => condition::new(
            READY,
            false,
            reason::PINNED_SHARD_MISSING,
            format!(
                "pinned to shard {pin}, but the cluster has shards 1 to {shards}; placed on shard {} meanwhile",
                shard.unwrap_or(0)
            ),
            generation,
        ),
        (_, Some(s)) => condition::new(
            READY,
            true,
            reason::PLACED,
            format!("placed on shard {s}"),
            generation,
        ),
        (_, None) => condition::new(
            READY,
            false,
            reason::REPLICAS_NOT_READY,
            "not placed yet",
            generation,
        ),
    };
    UserGroupStatus {
        observed_generation: generation,
        shard: shard.map(|s| s as i32),
        users: group.spec.members.as_ref().map(|m| m.len() as i64),
        bytes: previous.bytes,
        conditions: condition::merge(&previous.conditions, vec![ready], now),
        move_: previous.move_,
    }
}

/// The body of a server-side apply to a resource's `/status` subresource.
pub fn status_patch<K: Resource<DynamicType = ()>>(
    name: &str,
    status: &impl Serialize,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};

    fn sts(spec: i32, replicas: i32, ready: i32) -> StatefulSet {
        StatefulSet {
            metadata: kube::api::ObjectMeta {
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(spec),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                observed_generation: Some(1),
                replicas,
                ready_replicas: Some(ready),
                updated_replicas: Some(replicas),
                current_revision: Some("r1".into()),
                update_revision: Some("r1".into()),
                ..Default::default()
            }),
        }
    }

    fn pool(desired: i32, s: StatefulSet) -> PoolObservation {
        PoolObservation {
            name: "default".into(),
            desired,
            leaving: 0,
            statefulset: Some(s),
            selector: "a=b".into(),
        }
    }

    fn cluster() -> MailCluster {
        let mut c: MailCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster",
            "metadata": {"name": "mail", "namespace": "ns", "generation": 4},
            "spec": {"domains": ["example.com"]}
        }))
        .unwrap();
        c.status = None;
        c
    }

    #[test]
    fn ready_when_every_pod_is_ready() {
        let now = jiff::Timestamp::now();
        let s = cluster_status(
            &cluster(),
            &[pool(3, sts(3, 3, 3))],
            None,
            None,
            Reporter::Active,
            now,
        );
        assert_eq!(s.observed_generation, Some(4));
        assert!(condition::is_true(&s.conditions, READY));
        assert!(!condition::is_true(&s.conditions, PROGRESSING));
        assert!(!condition::is_true(&s.conditions, DEGRADED));
        assert_eq!(s.ready.as_deref(), Some("3/3"));
        assert_eq!(s.selector.as_deref(), Some("a=b"));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
    }

    #[test]
    fn scaling_is_progressing_and_not_ready() {
        let s = cluster_status(
            &cluster(),
            &[pool(5, sts(5, 3, 3))],
            None,
            None,
            Reporter::Active,
            jiff::Timestamp::now(),
        );
        let ready = condition::find(&s.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::REPLICAS_NOT_READY)
        );
        let progressing = condition::find(&s.conditions, PROGRESSING).unwrap();
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", reason::SCALING)
        );
    }

    #[test]
    fn a_problem_is_not_ready_and_degraded_with_its_reason() {
        let p = Problem {
            reason: reason::INSUFFICIENT_VOTERS,
            message: "need 3".into(),
        };
        let s = cluster_status(
            &cluster(),
            &[pool(3, sts(3, 3, 3))],
            None,
            Some(&p),
            Reporter::Active,
            jiff::Timestamp::now(),
        );
        for t in [READY, DEGRADED] {
            assert_eq!(
                condition::find(&s.conditions, t).unwrap().reason,
                reason::INSUFFICIENT_VOTERS
            );
        }
        assert!(condition::is_true(&s.conditions, DEGRADED));
    }

    /// Server-side apply removes the fields a manager stops sending, and the reporter's
    /// fields must survive the operator's apply: so the operator's body carries none of them,
    /// whatever the status it read holds.
    #[test]
    fn the_operators_patch_never_carries_the_reporters_fields() {
        let mut c = cluster();
        c.status = Some(
            serde_json::from_value(serde_json::json!({
                "members": [{"name": "mail-default-0", "nodeId": 1, "state": "Alive"}],
                "shards": [{"id": 1, "leader": 1, "lastAppliedLag": 7, "voters": [1]}]
            }))
            .unwrap(),
        );
        let assignment = Assignment {
            epoch: 3,
            cluster: "mail".into(),
            shards: vec![tern_crds::ShardAssignment {
                id: 1,
                voters: vec![1],
                learners: vec![],
            }],
            ..Default::default()
        };
        let s = cluster_status(
            &c,
            &[pool(1, sts(1, 1, 1))],
            Some(&assignment),
            None,
            Reporter::Active,
            jiff::Timestamp::now(),
        );
        assert_eq!(s.leaders.as_deref(), Some("1/1"), "it reads the leaders");
        let body = status_patch::<MailCluster>("mail", &s);
        let status = body["status"].as_object().unwrap();
        assert!(!status.contains_key("members"), "{body}");
        assert_eq!(
            body["status"]["shards"],
            serde_json::json!([{"id": 1, "voters": [1]}]),
            "placement only, never leader or lastAppliedLag"
        );
    }

    #[test]
    fn dead_member_degrades() {
        let mut c = cluster();
        c.status = Some(
            serde_json::from_value(serde_json::json!({
                "members": [{"name": "mail-default-1", "nodeId": 2, "state": "Dead"}]
            }))
            .unwrap(),
        );
        let s = cluster_status(
            &c,
            &[pool(3, sts(3, 3, 3))],
            None,
            None,
            Reporter::Active,
            jiff::Timestamp::now(),
        );
        let d = condition::find(&s.conditions, DEGRADED).unwrap();
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", reason::MEMBERS_UNHEALTHY)
        );
        assert!(d.message.contains("mail-default-1"));
        assert!(
            s.members.is_empty(),
            "members belong to the agents' reporter, never in the operator's patch"
        );
    }

    fn lease(renewed: jiff::Timestamp, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some("mail-default-0".into()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                renewed,
            )),
            ..Default::default()
        }
    }

    #[test]
    fn the_reporter_is_silent_after_twice_its_lease_duration() {
        let now = jiff::Timestamp::now();
        let ago = |s: i64| now - jiff::SignedDuration::from_secs(s);
        assert_eq!(reporter(None, now), (Reporter::NotStarted, None));
        let (state, recheck) = reporter(Some(&lease(ago(10), 15)), now);
        assert_eq!(state, Reporter::Active);
        assert_eq!(recheck, Some(std::time::Duration::from_secs(21)));
        assert_eq!(
            reporter(Some(&lease(ago(31), 15)), now),
            (Reporter::Silent { since: ago(31) }, None)
        );
    }

    #[test]
    fn a_silent_reporter_degrades_a_serving_cluster_but_not_a_starting_one() {
        let now = jiff::Timestamp::now();
        let since = now - jiff::SignedDuration::from_secs(120);
        let silent = Reporter::Silent { since };
        let s = cluster_status(
            &cluster(),
            &[pool(3, sts(3, 3, 3))],
            None,
            None,
            silent,
            now,
        );
        let d = condition::find(&s.conditions, DEGRADED).unwrap();
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", reason::HEALTH_NOT_REPORTED)
        );
        assert!(d.message.contains(&since.to_string()), "{}", d.message);
        // No pod ready yet: nothing could report; Ready already says so.
        let s = cluster_status(
            &cluster(),
            &[pool(3, sts(3, 3, 0))],
            None,
            None,
            silent,
            now,
        );
        let d = condition::find(&s.conditions, DEGRADED).unwrap();
        assert_ne!(d.reason, reason::HEALTH_NOT_REPORTED);
        for fine in [Reporter::Active, Reporter::NotStarted] {
            let s = cluster_status(&cluster(), &[pool(3, sts(3, 3, 3))], None, None, fine, now);
            assert!(!condition::is_true(&s.conditions, DEGRADED), "{fine:?}");
        }
    }
}
