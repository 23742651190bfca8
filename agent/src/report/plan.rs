//! What the reporter writes: the cluster view, normalized so that equal views compare equal
//! and phi noise is no change, as the body of one server-side apply to `/status`.

use std::collections::BTreeMap;

use serde::Serialize;
use tern_crds::MailCluster;
use tern_crds::mail_cluster::{GossipState, MemberStatus, RaftRole};

/// Written phi values stop here: beyond it a node is long dead, and a growing number would
/// only make every report a change.
pub const PHI_CAP: f64 = 100.0;

/// The cluster as this node's gossip and shards see it: what the reporter publishes.
///
/// Feed it only once gossip has joined the cluster: the holder writes the whole `members`
/// list, so a view that knows only part of the cluster would hide the other nodes (and
/// their Raft roles, which the operator reads before draining a node) until the next write.
/// An empty view is never written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// One entry per node (`phi` as a decimal string, as gossip computes it).
    pub members: Vec<MemberStatus>,
    /// Leader and apply lag of each shard this node knows about.
    pub shards: Vec<ShardView>,
}

impl ClusterView {
    /// A view from gossip's members alone: every shard some member holds, its leader being
    /// the one member not dead or gone that reports the `Leader` role in it (two such
    /// claims only overlap during a handover: the leader is then unknown until the next
    /// view); `last_applied_lag` unknown.
    pub fn from_members(members: Vec<MemberStatus>) -> Self {
        let mut claims: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for m in &members {
            let live = !matches!(m.state, GossipState::Dead | GossipState::Left);
            for s in &m.shards {
                let leaders = claims.entry(s.shard).or_default();
                if live && s.role == RaftRole::Leader && !leaders.contains(&m.node_id) {
                    leaders.push(m.node_id);
                }
            }
        }
        let shards = claims
            .into_iter()
            .map(|(id, leaders)| ShardView {
                id,
                leader: match leaders[..] {
                    [one] => Some(one),
                    _ => None,
                },
                last_applied_lag: None,
            })
            .collect();
        Self { members, shards }
    }
}

/// One shard's live figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardView {
    /// Shard id (1-based).
    pub id: i32,
    /// Node id of the current Raft leader, when one is known.
    pub leader: Option<i64>,
    /// Entries the slowest replica has yet to apply.
    pub last_applied_lag: Option<i64>,
}

/// The reporter's part of `MailCluster.status`, normalized.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub members: Vec<MemberStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardReport>,
}

/// The reporter's fields of one `status.shards` entry: the key and the live figures, never
/// the placement (voters, learners, groups), which the operator writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardReport {
    pub id: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied_lag: Option<i64>,
}

/// Pure: the report for `view`. Members are sorted by name and shards by id, duplicates of a
/// list key dropped (the API server refuses a list map with a repeated key), phi rounded to
/// `phi_step` and kept at its `previous` value while it stays within one step of it. `None`
/// while the view has no members: gossip has not seen the cluster yet, and writing an empty
/// list would erase what the last reporter wrote.
pub fn report(view: &ClusterView, previous: Option<&Report>, phi_step: f64) -> Option<Report> {
    let step = if phi_step.is_finite() && phi_step > 0.0 {
        phi_step
    } else {
        1.0
    };
    let mut members: Vec<MemberStatus> = view
        .members
        .iter()
        .filter(|m| !m.name.is_empty())
        .cloned()
        .collect();
    // Stable: of two entries for one name, the first in the view wins.
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members.dedup_by(|later, first| later.name == first.name);
    if members.is_empty() {
        return None;
    }
    for m in &mut members {
        m.shards.sort_by_key(|s| s.shard);
        m.shards.dedup_by_key(|s| s.shard);
        let before = previous
            .and_then(|p| p.members.iter().find(|o| o.name == m.name))
            .and_then(|o| o.phi.as_deref());
        m.phi = phi(m.phi.as_deref(), before, step);
    }
    let mut shards: Vec<ShardReport> = view
        .shards
        .iter()
        .filter(|s| s.id >= 1)
        .map(|s| ShardReport {
            id: s.id,
            leader: s.leader,
            last_applied_lag: s.last_applied_lag.filter(|lag| *lag >= 0),
        })
        .collect();
    shards.sort_by_key(|s| s.id);
    shards.dedup_by_key(|s| s.id);
    Some(Report { members, shards })
}

/// Rounds `raw` to `step`, or keeps `previous` while `raw` is within one step of it. Values
/// that are not a non-negative number are left out.
fn phi(raw: Option<&str>, previous: Option<&str>, step: f64) -> Option<String> {
    let value = raw?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| !v.is_nan() && *v >= 0.0)?
        .min(PHI_CAP);
    if let Some(prev) = previous
        && let Ok(p) = prev.parse::<f64>()
        && (value - p).abs() < step
    {
        return Some(prev.to_string());
    }
    let rounded = ((value / step).round() * step).min(PHI_CAP);
    // As many decimals as the step has, so 0.1 steps print `0.3`, not `0.30000000000000004`.
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 6.0) as usize
    };
    Some(format!("{rounded:.decimals$}"))
}

/// The body of the server-side apply to `mailclusters/<cluster>/status`: `members`, and of
/// `shards` only each entry's key and live figures.
pub fn apply_body(cluster: &str, report: &Report) -> serde_json::Value {
    use kube::Resource;
    serde_json::json!({
        "apiVersion": MailCluster::api_version(&()),
        "kind": MailCluster::kind(&()),
        "metadata": { "name": cluster },
        "status": report,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tern_crds::mail_cluster::MemberShard;

    use super::*;

    fn member(name: &str, id: i64, phi: Option<&str>) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            node_id: id,
            pool: "default".into(),
            state: GossipState::Alive,
            phi: phi.map(str::to_string),
            version: Some("0.1.0".into()),
            shards: vec![],
        }
    }

    fn view(members: Vec<MemberStatus>) -> ClusterView {
        ClusterView {
            members,
            shards: vec![],
        }
    }

    #[test]
    fn nothing_to_write_before_gossip_sees_anyone() {
        assert_eq!(report(&ClusterView::default(), None, 1.0), None);
        let nameless = view(vec![member("", 1, None)]);
        assert_eq!(report(&nameless, None, 1.0), None);
    }

    #[test]
    fn order_does_not_matter_and_list_keys_are_unique() {
        let mut a = member("mail-default-1", 2, Some("0"));
        a.shards = vec![
            MemberShard {
                shard: 2,
                role: RaftRole::Follower,
            },
            MemberShard {
                shard: 1,
                role: RaftRole::Leader,
            },
            MemberShard {
                shard: 2,
                role: RaftRole::Leader,
            },
        ];
        let b = member("mail-default-0", 1, Some("0"));
        let dup = member("mail-default-1", 9, Some("0"));
        let one = ClusterView {
            members: vec![a.clone(), b.clone(), dup],
            shards: vec![
                ShardView {
                    id: 2,
                    leader: Some(1),
                    last_applied_lag: Some(3),
                },
                ShardView {
                    id: 1,
                    leader: None,
                    last_applied_lag: Some(-4),
                },
                ShardView {
                    id: 2,
                    leader: Some(7),
                    last_applied_lag: None,
                },
                ShardView {
                    id: 0,
                    leader: Some(1),
                    last_applied_lag: None,
                },
            ],
        };
        let r = report(&one, None, 1.0).unwrap();
        let names: Vec<(&str, i64)> = r
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.node_id))
            .collect();
        assert_eq!(names, [("mail-default-0", 1), ("mail-default-1", 2)]);
        assert_eq!(
            r.members[1].shards,
            [
                MemberShard {
                    shard: 1,
                    role: RaftRole::Leader
                },
                MemberShard {
                    shard: 2,
                    role: RaftRole::Follower
                }
            ]
        );
        assert_eq!(
            r.shards,
            [
                ShardReport {
                    id: 1,
                    leader: None,
                    last_applied_lag: None
                },
                ShardReport {
                    id: 2,
                    leader: Some(1),
                    last_applied_lag: Some(3)
                },
            ],
            "sorted, first of a repeated id kept, id 0 and a negative lag dropped"
        );

        let mut reordered = one.clone();
        reordered.members.swap(0, 1);
        assert_eq!(report(&reordered, None, 1.0).unwrap().members, r.members);
    }

    #[test]
    fn phi_is_rounded_and_noise_within_a_step_is_no_change() {
        let at = |phi: &str, prev: Option<&Report>| {
            report(&view(vec![member("n", 1, Some(phi))]), prev, 1.0).unwrap()
        };
        let first = at("0.37", None);
        assert_eq!(first.members[0].phi.as_deref(), Some("0"));
        for noise in ["0.9", "0.12", "0.99"] {
            assert_eq!(at(noise, Some(&first)), first, "{noise} is noise");
        }
        let rising = at("2.6", Some(&first));
        assert_eq!(rising.members[0].phi.as_deref(), Some("3"));
        assert_ne!(rising, first);
        assert_eq!(
            at("inf", None).members[0].phi.as_deref(),
            Some("100"),
            "capped"
        );
        for bad in ["NaN", "-1", "high", ""] {
            assert_eq!(at(bad, None).members[0].phi, None, "{bad:?}");
        }
        let fine = report(&view(vec![member("n", 1, Some("2.26"))]), None, 0.1).unwrap();
        assert_eq!(fine.members[0].phi.as_deref(), Some("2.3"));
        let nonsense_step = report(&view(vec![member("n", 1, Some("2.6"))]), None, -3.0).unwrap();
        assert_eq!(nonsense_step.members[0].phi.as_deref(), Some("3"));
    }

    #[test]
    fn the_body_holds_members_and_the_shards_live_figures_only() {
        let mut m = member("mail-default-0", 1, Some("0.2"));
        m.shards = vec![MemberShard {
            shard: 1,
            role: RaftRole::Leader,
        }];
        let v = ClusterView {
            members: vec![m],
            shards: vec![
                ShardView {
                    id: 1,
                    leader: Some(1),
                    last_applied_lag: Some(0),
                },
                ShardView {
                    id: 2,
                    leader: None,
                    last_applied_lag: None,
                },
            ],
        };
        let body = apply_body("mail", &report(&v, None, 1.0).unwrap());
        assert_eq!(
            body,
            json!({
                "apiVersion": "mail.tern.dev/v1alpha1",
                "kind": "MailCluster",
                "metadata": {"name": "mail"},
                "status": {
                    "members": [{
                        "name": "mail-default-0", "nodeId": 1, "pool": "default",
                        "state": "Alive", "phi": "0", "version": "0.1.0",
                        "shards": [{"shard": 1, "role": "Leader"}]
                    }],
                    "shards": [
                        {"id": 1, "leader": 1, "lastAppliedLag": 0},
                        {"id": 2}
                    ]
                }
            })
        );
        let without_shards = apply_body(
            "mail",
            &report(&view(vec![member("a", 1, None)]), None, 1.0).unwrap(),
        );
        assert!(
            without_shards["status"].get("shards").is_none(),
            "no claim on the shards list when there is nothing to say: {without_shards}"
        );
    }

    #[test]
    fn leaders_come_from_the_live_members_roles() {
        let holding = |ordinal: i64, state: GossipState, roles: &[(i32, RaftRole)]| {
            let mut m = member(&format!("mail-default-{ordinal}"), ordinal + 1, None);
            m.state = state;
            m.shards = roles
                .iter()
                .map(|&(shard, role)| MemberShard { shard, role })
                .collect();
            m
        };
        use GossipState::*;
        use RaftRole::*;
        let v = ClusterView::from_members(vec![
            holding(0, Alive, &[(1, Leader), (2, Follower), (3, Leader)]),
            holding(1, Suspect, &[(1, Follower), (2, Leader), (3, Leader)]),
            holding(2, Dead, &[(1, Leader), (4, Leader)]),
        ]);
        let leaders: Vec<(i32, Option<i64>)> = v.shards.iter().map(|s| (s.id, s.leader)).collect();
        assert_eq!(
            leaders,
            [(1, Some(1)), (2, Some(2)), (3, None), (4, None)],
            "a dead node leads nothing; two live claims are no answer"
        );
        assert!(v.shards.iter().all(|s| s.last_applied_lag.is_none()));
        assert_eq!(v.members.len(), 3);
    }
}
