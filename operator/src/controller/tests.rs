//! The controller's API calls against the fake API server: what a reconcile reads, applies,
//! creates, deletes and reports, and that every write follows the API conventions.

use std::sync::Arc;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tern_crds::fake_api::{Call, FakeApi};
use tern_crds::{Assignment, ClusterRole, MailCluster, UserGroup};

use super::{Context, cluster, orphans};
use crate::metrics::Metrics;
use crate::settings::Settings;

const NS: &str = "mail-ns";
const MC: &str = "/apis/mail.tern.dev/v1alpha1/namespaces/mail-ns/mailclusters/mail";

fn core(plural: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{plural}/{name}")
}
fn apps(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{name}")
}
fn ours(plural: &str, name: &str) -> String {
    format!("/apis/mail.tern.dev/v1alpha1/namespaces/{NS}/{plural}/{name}")
}

fn mail_cluster(spec: Value) -> Value {
    let mut s =
        json!({"domains": ["example.com"], "replicas": 3, "replicationFactor": 3, "shards": 2});
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    json!({"apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster", "metadata": {"name": "mail", "namespace": NS}, "spec": s})
}

fn setup(spec: Value) -> (FakeApi, Arc<Context>) {
    let (client, fake) = FakeApi::start();
    // One field manager for every write.
    fake.require_field_manager("tern-operator");
    fake.put(mail_cluster(spec));
    let settings = Settings::from_vars(|_| None).unwrap();
    (
        fake,
        Arc::new(Context::new(client, settings, Metrics::default())),
    )
}

async fn reconcile(fake: &FakeApi, ctx: &Arc<Context>) -> Action {
    let obj: MailCluster =
        serde_json::from_value(fake.get(MC).expect("the MailCluster exists")).unwrap();
    cluster::reconcile(Arc::new(obj), ctx.clone())
        .await
        .unwrap()
}

/// First reconcile adds the finalizer; the second builds everything.
async fn create(fake: &FakeApi, ctx: &Arc<Context>) {
    reconcile(fake, ctx).await;
    assert_eq!(
        fake.get(MC).unwrap()["metadata"]["finalizers"],
        json!([cluster::FINALIZER])
    );
    reconcile(fake, ctx).await;
}

fn assignment(fake: &FakeApi) -> Assignment {
    let cm = fake
        .get(&core("configmaps", "mail-assignment"))
        .expect("assignment ConfigMap");
    Assignment::from_json(cm["data"][Assignment::CONFIG_MAP_KEY].as_str().unwrap()).unwrap()
}

fn writes(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.method != Method::GET).collect()
}

fn cond<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {obj:#}"))
}

#[tokio::test]
async fn create_applies_every_child_with_ssa_owner_and_labels() {
    let (fake, ctx) = setup(json!({}));
    create(&fake, &ctx).await;

    let mc = fake.get(MC).unwrap();
    let uid = mc["metadata"]["uid"].as_str().unwrap().to_string();
    for path in [
        apps("mail-default"),
        core("services", "mail-nodes"),
        core("services", "mail"),
        core("configmaps", "mail-config"),
        core("configmaps", "mail-assignment"),
        core("serviceaccounts", "mail-agent"),
        format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/mail-voters"),
        format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/mail-agent"),
        format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/mail-agent"),
    ] {
        let obj = fake
            .get(&path)
            .unwrap_or_else(|| panic!("{path} was applied"));
        let owner = &obj["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], uid, "{path} is owned by the MailCluster");
        assert_eq!(owner["controller"], true, "{path}");
        assert_eq!(owner["kind"], "MailCluster");
        assert_eq!(
            obj["metadata"]["labels"]["app.kubernetes.io/managed-by"], "tern-operator",
            "{path}"
        );
        assert_eq!(
            obj["metadata"]["labels"]["app.kubernetes.io/instance"], "mail",
            "{path}"
        );
    }
    assert_eq!(
        fake.get(&apps("mail-default")).unwrap()["spec"]["replicas"],
        3
    );

    // Every write is a server-side apply with the one field manager, forced, except the
    // generated Secrets (created once) and events.
    let calls = fake.calls();
    for c in writes(&calls) {
        if c.method == Method::PATCH && c.path != MC && !c.path.contains("/events") {
            assert_eq!(
                c.content_type.as_deref(),
                Some("application/apply-patch+yaml"),
                "{}",
                c.line()
            );
            assert!(
                c.query.contains("fieldManager=tern-operator"),
                "{}: {}",
                c.line(),
                c.query
            );
            assert!(c.query.contains("force=true"), "{}: {}", c.line(), c.query);
        }
    }
    let created: Vec<String> = writes(&calls)
        .iter()
        .filter(|c| c.method == Method::POST && c.path.ends_with("/secrets"))
        .map(|c| {
            c.body.as_ref().unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for s in [
        "mail-gossip",
        "mail-tls",
        "mail-ca",
        "mail-agent-tls",
        "mail-admin",
    ] {
        assert!(
            created.contains(&s.to_string()),
            "{s} generated; created {created:?}"
        );
    }
    assert!(
        calls.iter().any(|c| c.method == Method::POST
            && c.path
                .contains("/apis/events.k8s.io/v1/namespaces/mail-ns/events")),
        "events recorded"
    );

    // The assignment is published and the status tells the truth.
    let a = assignment(&fake);
    assert_eq!(a.epoch, 1);
    assert_eq!(a.shards.len(), 2);
    assert!(a.shards.iter().all(|s| s.voters.len() == 3));
    let status = &mc["status"];
    let mc = fake.get(MC).unwrap();
    let status = if status.is_null() {
        &mc["status"]
    } else {
        status
    };
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["assignmentEpoch"], 1);
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=mail,mail.tern.dev/cluster=mail,mail.tern.dev/pool=default"
    );
    assert_eq!(status["ready"], "0/3");
    let ready = cond(&mc, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ReplicasNotReady"))
    );
    assert_eq!(ready["observedGeneration"], 1);
    assert_eq!(cond(&mc, "Progressing")["status"], "True");
    assert_eq!(status["shards"].as_array().unwrap().len(), 2);
    assert!(
        calls
            .iter()
            .any(|c| c.method == Method::PATCH && c.path == format!("{MC}/status")),
        "status through the /status subresource"
    );
}

#[tokio::test]
async fn generated_secrets_are_created_once_and_never_rotated() {
    let (fake, ctx) = setup(json!({}));
    create(&fake, &ctx).await;
    let gossip = fake.get(&core("secrets", "mail-gossip")).unwrap();
    fake.clear_calls();
    reconcile(&fake, &ctx).await;
    let calls = fake.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("/secrets") && c.method != Method::GET),
        "no Secret written again: {:?}",
        calls.iter().map(Call::line).collect::<Vec<_>>()
    );
    assert_eq!(
        fake.get(&core("secrets", "mail-gossip")).unwrap()["data"],
        gossip["data"]
    );
    // A user-provided TLS Secret means none is generated.
    let (fake, ctx) = setup(json!({"tls": {"secretName": "my-cert"}}));
    create(&fake, &ctx).await;
    assert!(fake.get(&core("secrets", "mail-tls")).is_none());
}

#[tokio::test]
async fn replicas_edit_reaches_the_statefulset() {
    let (fake, ctx) = setup(json!({}));
    create(&fake, &ctx).await;
    fake.edit(MC, |mc| mc["spec"]["replicas"] = json!(5));
    reconcile(&fake, &ctx).await;
    assert_eq!(
        fake.get(&apps("mail-default")).unwrap()["spec"]["replicas"],
        5
    );
    let mc = fake.get(MC).unwrap();
    assert_eq!(mc["status"]["observedGeneration"], 2);
    assert_eq!(cond(&mc, "Ready")["observedGeneration"], 2);
    assert_eq!(mc["status"]["ready"], "0/5");
}

#[tokio::test]
async fn scale_down_keeps_pods_until_their_replicas_have_moved() {
    let (fake, ctx) = setup(json!({"replicas": 5, "shards": 5}));
    create(&fake, &ctx).await;
    let a = assignment(&fake);
    // Agents report the Raft configuration they actually run.
    let report = |a: &Assignment| -> Value {
        let members: Vec<Value> = a
            .nodes
            .iter()
            .map(|(name, n)| {
                let shards: Vec<Value> =
                    a.shards.iter().filter(|s| s.voters.contains(&n.id)).map(|s| json!({"shard": s.id, "role": "Follower"})).collect();
                json!({"name": name, "nodeId": n.id, "pool": "default", "state": "Alive", "shards": shards})
            })
            .collect();
        json!(members)
    };
    let members = report(&a);
    fake.edit(MC, |mc| {
        mc["spec"]["replicas"] = json!(3);
        mc["status"]["members"] = members.clone();
    });
    reconcile(&fake, &ctx).await;
    // Nodes 3 and 4 still hold voters in the running configuration: their pods stay.
    assert_eq!(
        fake.get(&apps("mail-default")).unwrap()["spec"]["replicas"],
        5
    );
    let mc = fake.get(MC).unwrap();
    assert_eq!(cond(&mc, "Progressing")["reason"], "Draining");
    let next = assignment(&fake);
    assert!(
        next.epoch > a.epoch,
        "the assignment moves replicas off the leaving nodes"
    );

    // Once the agents report the new configuration, the pods go.
    let mut current = next.clone();
    for _ in 0..10 {
        let members = report(&current);
        fake.edit(MC, |mc| mc["status"]["members"] = members.clone());
        reconcile(&fake, &ctx).await;
        current = assignment(&fake);
        if fake.get(&apps("mail-default")).unwrap()["spec"]["replicas"] == 3 {
            break;
        }
    }
    assert_eq!(
        fake.get(&apps("mail-default")).unwrap()["spec"]["replicas"],
        3
    );
    for s in &current.shards {
        assert!(
            s.voters
                .iter()
                .all(|v| current.nodes.values().any(|n| n.id == *v)),
            "voters only on remaining nodes"
        );
    }
}

fn backend_role() -> Value {
    json!({
        "apiVersion": "mail.tern.dev/v1alpha1", "kind": "ClusterRole",
        "metadata": {"name": "backend", "namespace": NS},
        "spec": {"clusterRef": {"name": "mail"}, "replicas": 2, "storage": "voter", "listeners": ["lmtp"],
                 "tasks": [{"name": "push-notifications", "shards": 2}]}
    })
}

#[tokio::test]
async fn a_cluster_role_gets_its_statefulset_status_and_goes_with_it() {
    let (fake, ctx) = setup(json!({}));
    create(&fake, &ctx).await;
    fake.put(backend_role());
    reconcile(&fake, &ctx).await;
    let sts = fake
        .get(&apps("mail-backend"))
        .expect("the pool's StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 2);
    let role = fake.get(&ours("clusterroles", "backend")).unwrap();
    assert_eq!(
        role["status"]["selector"],
        "app.kubernetes.io/instance=mail,mail.tern.dev/cluster=mail,mail.tern.dev/pool=backend"
    );
    assert_eq!(role["status"]["observedGeneration"], 1);
    let tasks = role["status"]["taskAssignments"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "two push-notifications shards");
    let acting: Vec<_> = tasks.iter().map(|t| t["acting"].clone()).collect();
    assert_ne!(
        acting[0], acting[1],
        "one acting node per shard, never the same"
    );
    assert!(
        fake.get(&core("services", "mail-backend")).is_none(),
        "an LMTP-only pool is never behind a public Service"
    );
    let lmtp = fake
        .get(&core("services", "mail-lmtp"))
        .expect("the in-cluster LMTP Service");
    assert_eq!(lmtp["spec"]["type"], "ClusterIP");

    // Deleting the ClusterRole prunes what it had.
    fake.delete(&ours("clusterroles", "backend"));
    fake.clear_calls();
    reconcile(&fake, &ctx).await;
    assert!(fake.get(&apps("mail-backend")).is_none());
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.method == Method::DELETE && c.path == apps("mail-backend"))
    );
    assert!(
        fake.get(&apps("mail-default")).is_some(),
        "the default pool stays"
    );
}

#[tokio::test]
async fn a_user_group_grows_the_assignment_epoch_once() {
    let (fake, ctx) = setup(json!({}));
    create(&fake, &ctx).await;
    assert_eq!(assignment(&fake).epoch, 1);
    fake.put(json!({
        "apiVersion": "mail.tern.dev/v1alpha1", "kind": "UserGroup",
        "metadata": {"name": "vip", "namespace": NS},
        "spec": {"clusterRef": {"name": "mail"}, "members": ["CEO@example.com"], "shard": 2}
    }));
    reconcile(&fake, &ctx).await;
    let a = assignment(&fake);
    assert_eq!(a.epoch, 2);
    assert_eq!(a.groups.get("vip"), Some(&2));
    assert_eq!(a.group_of("ceo@example.com"), "vip");
    let g = fake.get(&ours("usergroups", "vip")).unwrap();
    assert_eq!(g["status"]["shard"], 2);
    assert_eq!(g["status"]["users"], 1);
    assert_eq!(cond(&g, "Ready")["reason"], "Placed");
    assert_eq!(fake.get(MC).unwrap()["status"]["assignmentEpoch"], 2);
    // Nothing changed: same epoch, no new event.
    fake.clear_calls();
    reconcile(&fake, &ctx).await;
    assert_eq!(assignment(&fake).epoch, 2);
    assert!(!fake.calls().iter().any(|c| {
        c.method == Method::POST
            && c.body
                .as_ref()
                .is_some_and(|b| b["reason"] == "AssignmentPublished")
    }));
}

async fn delete_with_policy(policy: &str) -> FakeApi {
    let (fake, ctx) = setup(json!({"deletionPolicy": policy}));
    create(&fake, &ctx).await;
    for i in 0..3 {
        fake.put(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("data-mail-default-{i}"), "namespace": NS,
                         "labels": {"mail.tern.dev/cluster": "mail", "mail.tern.dev/pool": "default", "app.kubernetes.io/instance": "mail"}},
            "spec": {}
        }));
    }
    fake.delete(MC);
    assert!(
        fake.get(MC).unwrap()["metadata"]["deletionTimestamp"].is_string(),
        "the finalizer holds the object"
    );
    reconcile(&fake, &ctx).await;
    assert!(
        fake.get(MC).is_none(),
        "the finalizer is removed once cleanup is done"
    );
    fake
}

#[tokio::test]
async fn deletion_retain_keeps_volumes() {
    let fake = delete_with_policy("Retain").await;
    assert_eq!(
        fake.list(&format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"))
            .len(),
        3
    );
}

#[tokio::test]
async fn deletion_delete_removes_volumes() {
    let fake = delete_with_policy("Delete").await;
    assert_eq!(
        fake.list(&format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"))
            .len(),
        0
    );
}

#[tokio::test]
async fn too_few_voters_is_reported_and_waits_for_a_change() {
    // CEL admits replicas 0 (voters may live in ClusterRoles); the operator counts them.
    let (fake, ctx) = setup(json!({"replicas": 0}));
    let mut role = backend_role();
    role["spec"]["replicas"] = json!(1);
    fake.put(role);
    reconcile(&fake, &ctx).await;
    let action = reconcile(&fake, &ctx).await;
    assert_eq!(action, Action::await_change());
    let mc = fake.get(MC).unwrap();
    let ready = cond(&mc, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("InsufficientVoters"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("replicationFactor is 3"),
        "{ready}"
    );
    assert_eq!(cond(&mc, "Degraded")["status"], "True");
    assert!(
        fake.get(&apps("mail-default")).is_none(),
        "nothing is built from an unplaceable spec"
    );
    let role = fake.get(&ours("clusterroles", "backend")).unwrap();
    assert_eq!(cond(&role, "Ready")["reason"], "InsufficientVoters");
    // Fixing the spec recovers.
    fake.edit(MC, |mc| mc["spec"]["replicas"] = json!(3));
    reconcile(&fake, &ctx).await;
    assert!(fake.get(&apps("mail-default")).is_some());
    assert_eq!(cond(&fake.get(MC).unwrap(), "Degraded")["status"], "False");
}

#[tokio::test]
async fn status_writes_keep_the_agents_fields_and_transition_times() {
    let (fake, ctx) = setup(json!({}));
    create(&fake, &ctx).await;
    let first = cond(&fake.get(MC).unwrap(), "Ready")["lastTransitionTime"].clone();
    fake.edit(MC, |mc| {
        mc["status"]["members"] =
            json!([{"name": "mail-default-0", "nodeId": 1, "state": "Alive"}]);
    });
    reconcile(&fake, &ctx).await;
    let mc = fake.get(MC).unwrap();
    assert_eq!(
        mc["status"]["members"][0]["name"], "mail-default-0",
        "the operator never writes members"
    );
    assert_eq!(
        cond(&mc, "Ready")["lastTransitionTime"],
        first,
        "unchanged status keeps its transition time"
    );
}

/// The agents' reporter marks a node dead in `status.members` (a status-only change: the
/// controller watches MailClusters without a generation predicate, so it reconciles): the
/// next reconcile moves the node's task shards to live nodes of its pool.
#[tokio::test]
async fn a_node_the_agents_report_dead_loses_its_task_shards() {
    let (fake, ctx) = setup(json!({}));
    create(&fake, &ctx).await;
    let mut role = backend_role();
    role["spec"]["replicas"] = json!(3);
    role["spec"]["tasks"] = json!([{"name": "purge-stores", "shards": 2, "nodesPerShard": 1}]);
    fake.put(role);
    reconcile(&fake, &ctx).await;
    let before = assignment(&fake);
    let acting = |a: &Assignment| -> Vec<u64> {
        a.tasks
            .iter()
            .filter(|t| t.pool == "backend")
            .map(|t| t.nodes[0])
            .collect()
    };
    let victim = acting(&before)[0];
    let (victim_name, _) = before.nodes.iter().find(|(_, n)| n.id == victim).unwrap();
    let members: Vec<Value> = before
        .nodes
        .iter()
        .map(|(name, n)| {
            let state = if n.id == victim { "Dead" } else { "Alive" };
            json!({"name": name, "nodeId": n.id, "pool": n.pool, "state": state})
        })
        .collect();
    let generation = fake.get(MC).unwrap()["metadata"]["generation"].clone();
    fake.edit(MC, |mc| mc["status"]["members"] = json!(members));
    assert_eq!(
        fake.get(MC).unwrap()["metadata"]["generation"],
        generation,
        "a status change leaves the generation alone"
    );

    reconcile(&fake, &ctx).await;
    let after = assignment(&fake);
    assert!(after.epoch > before.epoch);
    let now_acting = acting(&after);
    assert_eq!(now_acting.len(), 2);
    assert!(
        !now_acting.contains(&victim),
        "{victim_name} is dead: {now_acting:?}"
    );
    assert!(
        after
            .tasks
            .iter()
            .all(|t| t.nodes.iter().all(|n| *n != victim)),
        "the dead node stands by for nothing either"
    );
    let mc = fake.get(MC).unwrap();
    let degraded = cond(&mc, "Degraded");
    assert_eq!(degraded["reason"], "MembersUnhealthy");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains(victim_name.as_str()),
        "{degraded}"
    );
    assert_eq!(
        mc["status"]["members"],
        json!(members),
        "the operator leaves the reporter's members alone"
    );
}

#[tokio::test]
async fn a_role_without_its_cluster_says_so() {
    let (client, fake) = FakeApi::start();
    let ctx = Arc::new(Context::new(
        client,
        Settings::from_vars(|_| None).unwrap(),
        Metrics::default(),
    ));
    fake.put(backend_role());
    let role: ClusterRole =
        serde_json::from_value(fake.get(&ours("clusterroles", "backend")).unwrap()).unwrap();
    orphans::reconcile(Arc::new(role), ctx.clone())
        .await
        .unwrap();
    let role = fake.get(&ours("clusterroles", "backend")).unwrap();
    let ready = cond(&role, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ClusterNotFound"))
    );
    assert!(ready["message"].as_str().unwrap().contains("\"mail\""));

    // With the cluster present it leaves the status to the cluster's reconcile.
    fake.put(mail_cluster(json!({})));
    fake.clear_calls();
    let group: UserGroup = serde_json::from_value(json!({
        "apiVersion": "mail.tern.dev/v1alpha1", "kind": "UserGroup",
        "metadata": {"name": "g", "namespace": NS, "generation": 1},
        "spec": {"clusterRef": {"name": "mail"}, "domain": "x.org"}
    }))
    .unwrap();
    orphans::reconcile(Arc::new(group), ctx).await.unwrap();
    assert!(writes(&fake.calls()).is_empty());
}

#[tokio::test]
async fn a_listener_on_the_gossip_port_is_reported_not_retried() {
    let (fake, ctx) = setup(json!({"listeners": {"imap": {"port": 7946}}}));
    reconcile(&fake, &ctx).await;
    let action = reconcile(&fake, &ctx).await;
    assert_eq!(action, Action::await_change());
    let mc = fake.get(MC).unwrap();
    let ready = cond(&mc, "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"].as_str().unwrap().contains("7946"),
        "{ready}"
    );
    assert!(fake.get(&apps("mail-default")).is_none());
}

#[tokio::test]
async fn an_object_the_api_server_refuses_is_reported_not_retried() {
    let (fake, ctx) = setup(json!({}));
    fake.refuse_writes(
        &apps("mail-default"),
        "spec: Forbidden: updates to statefulset spec for fields other than ... are forbidden",
    );
    reconcile(&fake, &ctx).await;
    let action = reconcile(&fake, &ctx).await;
    assert_eq!(action, Action::await_change());
    let mc = fake.get(MC).unwrap();
    let degraded = cond(&mc, "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("ApplyRefused"))
    );
    assert!(
        degraded["message"].as_str().unwrap().contains("Forbidden"),
        "{degraded}"
    );
}

mod leader_election {
    use std::time::Duration;

    use serde_json::json;
    use tern_crds::fake_api::FakeApi;

    use crate::leader::{LeaderElector, LeaseConfig};

    const LEASE: &str =
        "/apis/coordination.k8s.io/v1/namespaces/tern-system/leases/tern-operator-leader";

    fn elector(client: &kube::Client, who: &str) -> LeaderElector {
        LeaderElector::new(
            client.clone(),
            LeaseConfig {
                namespace: "tern-system".into(),
                name: "tern-operator-leader".into(),
                identity: who.into(),
                duration: Duration::from_secs(15),
                retry: Duration::from_secs(5),
            },
        )
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_takeover_after_expiry() {
        let (client, fake) = FakeApi::start();
        let (a, b) = (elector(&client, "op-a"), elector(&client, "op-b"));
        assert!(
            a.try_acquire_or_renew().await.unwrap(),
            "first candidate creates the lease"
        );
        assert!(
            !b.try_acquire_or_renew().await.unwrap(),
            "a held lease is respected"
        );
        assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
        assert_eq!(fake.get(LEASE).unwrap()["spec"]["holderIdentity"], "op-a");

        // The holder stops renewing: after the lease duration the other takes over.
        fake.edit(LEASE, |l| {
            l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z")
        });
        assert!(b.try_acquire_or_renew().await.unwrap());
        let lease = fake.get(LEASE).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "op-b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        assert!(
            !a.try_acquire_or_renew().await.unwrap(),
            "the old holder sees it lost"
        );

        // A graceful release hands over at once.
        b.release().await;
        assert!(a.try_acquire_or_renew().await.unwrap());
    }

    #[tokio::test]
    async fn two_candidates_racing_for_an_expired_lease_cannot_both_win() {
        let (client, fake) = FakeApi::start();
        let old = elector(&client, "op-old");
        assert!(old.try_acquire_or_renew().await.unwrap());
        fake.edit(LEASE, |l| {
            l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z")
        });
        let (a, b) = (elector(&client, "op-a"), elector(&client, "op-b"));
        let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
        let winners = [ra.unwrap(), rb.unwrap()].iter().filter(|w| **w).count();
        assert_eq!(
            winners, 1,
            "resourceVersion makes the second replace a conflict"
        );
    }
}
