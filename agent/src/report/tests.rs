//! The reporter against the fake API server, on virtual time: who writes, what, how often,
//! and what happens when the API server fails or the lease moves.

use std::time::Duration;

use http::{Method, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde_json::{Value, json};
use tern_crds::fake_api::FakeApi;
use tern_crds::mail_cluster::{GossipState, MemberShard, MemberStatus, RaftRole};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::*;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/mail-ns/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/mail-ns/leases/mail-reporter";
const MC: &str = "/apis/mail.tern.dev/v1alpha1/namespaces/mail-ns/mailclusters/mail";
const STATUS: &str = "/apis/mail.tern.dev/v1alpha1/namespaces/mail-ns/mailclusters/mail/status";
const SECOND: Duration = Duration::from_secs(1);

fn setup() -> (kube::Client, FakeApi) {
    let (client, fake) = FakeApi::start();
    fake.put(json!({
        "apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster",
        "metadata": {"name": "mail", "namespace": "mail-ns"},
        "spec": {"domains": ["example.com"]},
    }));
    (client, fake)
}

fn start(client: &kube::Client, identity: &str, view: watch::Receiver<ClusterView>) -> Reporter {
    let target = Target {
        namespace: "mail-ns".into(),
        cluster: "mail".into(),
        identity: identity.into(),
    };
    spawn_with(client.clone(), target, ReportConfig::default(), view)
}

fn member(ordinal: i64, state: GossipState, phi: &str) -> MemberStatus {
    MemberStatus {
        name: format!("mail-default-{ordinal}"),
        node_id: ordinal + 1,
        pool: "default".into(),
        state,
        phi: Some(phi.into()),
        version: Some("0.1.0".into()),
        shards: vec![MemberShard {
            shard: 1,
            role: if ordinal == 0 {
                RaftRole::Leader
            } else {
                RaftRole::Follower
            },
        }],
    }
}

/// Three nodes; `third` is the state of the last one.
fn view(third: GossipState, phi: &str) -> ClusterView {
    ClusterView {
        members: vec![
            member(0, GossipState::Alive, "0"),
            member(1, GossipState::Alive, "0.4"),
            member(2, third, phi),
        ],
        shards: vec![ShardView {
            id: 1,
            leader: Some(1),
            last_applied_lag: Some(2),
        }],
    }
}

/// Advances virtual time in small steps until `done` holds (at most `limit`).
async fn until(limit: Duration, done: impl Fn() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "not within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

fn holder(fake: &FakeApi) -> Value {
    fake.get(LEASE).expect("the lease exists")["spec"]["holderIdentity"].clone()
}

fn lease_held_by(who: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "mail-reporter", "namespace": "mail-ns"},
        "spec": {
            "holderIdentity": who,
            "leaseDurationSeconds": 15,
            "renewTime": MicroTime(jiff::Timestamp::now()),
        },
    })
}

#[tokio::test(start_paused = true)]
async fn the_holder_takes_the_lease_and_applies_its_fields_of_status() {
    let (client, fake) = setup();
    let (_tx, rx) = watch::channel(view(GossipState::Alive, "0.2"));
    let reporter = start(&client, "mail-default-0", rx);
    until(10 * SECOND, || !fake.patches().is_empty()).await;
    assert!(reporter.is_leading());

    let calls = fake.calls();
    let lines: Vec<(Method, &str)> = calls
        .iter()
        .map(|c| (c.method.clone(), c.path.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (Method::GET, LEASE),
            (Method::POST, LEASES),
            (Method::PATCH, STATUS),
        ]
    );
    let lease = fake.get(LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "mail-default-0");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);

    let patch = &calls[2];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let query: Vec<&str> = patch.query.split('&').collect();
    assert!(query.contains(&"fieldManager=tern-agent"), "{query:?}");
    assert!(query.contains(&"force=true"), "{query:?}");
    let member_json = |i: i64, state: &str, phi: &str| {
        json!({
            "name": format!("mail-default-{i}"), "nodeId": i + 1, "pool": "default",
            "state": state, "phi": phi, "version": "0.1.0",
            "shards": [{"shard": 1, "role": if i == 0 { "Leader" } else { "Follower" }}],
        })
    };
    let expected = json!({
        "apiVersion": "mail.tern.dev/v1alpha1",
        "kind": "MailCluster",
        "metadata": {"name": "mail"},
        "status": {
            "members": [
                member_json(0, "Alive", "0"),
                member_json(1, "Alive", "0"),
                member_json(2, "Alive", "0"),
            ],
            "shards": [{"id": 1, "leader": 1, "lastAppliedLag": 2}],
        },
    });
    assert_eq!(patch.body.as_ref(), Some(&expected));
    assert_eq!(fake.get(MC).unwrap()["status"], expected["status"]);

    // Shutting down hands the lease over at once.
    reporter.shutdown().await;
    assert!(holder(&fake).is_null(), "released: {}", holder(&fake));
}

#[tokio::test(start_paused = true)]
async fn a_candidate_never_writes_while_another_agent_holds_the_lease() {
    let (client, fake) = setup();
    fake.put(lease_held_by("mail-default-1"));
    let (_tx, rx) = watch::channel(view(GossipState::Alive, "0"));
    let reporter = start(&client, "mail-default-0", rx);
    sleep(60 * SECOND).await;
    assert!(!reporter.is_leading());
    assert!(fake.patches().is_empty(), "{:?}", fake.patches());
    assert!(
        fake.calls()
            .iter()
            .all(|c| c.method == Method::GET && c.path == LEASE),
        "a candidate only reads the lease"
    );
    assert_eq!(holder(&fake), "mail-default-1");

    // The holder stops renewing: after its lease runs out the candidate takes over.
    fake.edit(LEASE, |l| {
        l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z")
    });
    until(10 * SECOND, || fake.patches().len() == 1).await;
    assert_eq!(holder(&fake), "mail-default-0");
    assert_eq!(
        fake.get(LEASE).unwrap()["spec"]["leaseTransitions"],
        1,
        "a takeover counts as a transition"
    );
    reporter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn of_two_agents_only_the_holder_writes() {
    let (client, fake) = setup();
    let (_a_tx, a_rx) = watch::channel(view(GossipState::Alive, "0"));
    // The other agent sees the third node differently: its writes would show.
    let (_b_tx, b_rx) = watch::channel(view(GossipState::Suspect, "9"));
    let a = start(&client, "mail-default-0", a_rx);
    let b = start(&client, "mail-default-1", b_rx);
    sleep(90 * SECOND).await;
    assert!(a.is_leading() != b.is_leading(), "exactly one holder");
    let holder_view = if a.is_leading() {
        view(GossipState::Alive, "0")
    } else {
        view(GossipState::Suspect, "9")
    };
    let expected = apply_body("mail", &report(&holder_view, None, 1.0).unwrap());
    let patches = fake.patches();
    assert!(!patches.is_empty());
    for p in &patches {
        assert_eq!(p.body.as_ref(), Some(&expected), "only the holder writes");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn many_changes_within_an_interval_make_one_write_and_noise_makes_none() {
    let (client, fake) = setup();
    let (tx, rx) = watch::channel(view(GossipState::Alive, "0"));
    let reporter = start(&client, "mail-default-0", rx);
    until(10 * SECOND, || fake.patches().len() == 1).await;
    let first = fake.patches()[0].at;

    // A change every 100 ms within the interval: the third node flapping, its phi climbing.
    for i in 0..9 {
        let state = if i % 2 == 0 {
            GossipState::Suspect
        } else {
            GossipState::Alive
        };
        tx.send_replace(view(state, &i.to_string()));
        sleep(SECOND / 10).await;
    }
    tx.send_replace(view(GossipState::Dead, "12.2"));
    assert!(Instant::now() < first + SECOND);
    sleep(5 * SECOND).await;
    let patches = fake.patches();
    assert_eq!(patches.len(), 2, "one write for ten changes");
    assert!(patches[1].at >= first + SECOND, "not within the interval");
    let last = &patches[1].body.as_ref().unwrap()["status"]["members"][2];
    assert_eq!(
        (last["state"].as_str(), last["phi"].as_str()),
        (Some("Dead"), Some("12")),
        "the latest view is what gets written"
    );

    // phi wobbling within a step is no change.
    for phi in ["11.5", "12.9", "12.4", "11.3"] {
        tx.send_replace(view(GossipState::Dead, phi));
        sleep(SECOND).await;
    }
    sleep(30 * SECOND).await;
    assert_eq!(fake.patches().len(), 2, "noise is not written");

    // An unchanged view is rewritten once per refresh period, so a lost write heals.
    fake.edit(MC, |mc| mc["status"] = json!({}));
    let second = patches[1].at;
    until(2 * Pacing::default().refresh, || fake.patches().len() == 3).await;
    let patches = fake.patches();
    assert!(patches[2].at >= second + Pacing::default().refresh);
    assert_eq!(patches[2].body, patches[1].body);
    assert_eq!(
        fake.get(MC).unwrap()["status"],
        patches[1].body.as_ref().unwrap()["status"]
    );
    reporter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn api_errors_are_retried_with_backoff() {
    let (client, fake) = setup();
    fake.fail(STATUS, StatusCode::INTERNAL_SERVER_ERROR, Some(3));
    let (_tx, rx) = watch::channel(view(GossipState::Alive, "0"));
    let reporter = start(&client, "mail-default-0", rx);
    until(60 * SECOND, || fake.patches().len() == 4).await;
    let at: Vec<Instant> = fake.patches().iter().map(|c| c.at).collect();
    let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, [1, 2, 4], "exponential backoff");
    assert!(
        fake.get(MC).unwrap()["status"]["members"].is_array(),
        "the fourth attempt got through"
    );
    sleep(30 * SECOND).await;
    assert_eq!(fake.patches().len(), 4, "nothing left to retry");
    assert!(
        !reporter.is_finished(),
        "an API error never ends the reporter"
    );
    assert!(reporter.is_leading());
    reporter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_to_another_holder_stops_writes() {
    let (client, fake) = setup();
    let (tx, rx) = watch::channel(view(GossipState::Alive, "0"));
    let reporter = start(&client, "mail-default-0", rx);
    until(10 * SECOND, || fake.patches().len() == 1).await;
    fake.put(lease_held_by("mail-default-1"));
    until(10 * SECOND, || !reporter.is_leading()).await;
    for i in 0..30 {
        tx.send_replace(view(GossipState::Suspect, &i.to_string()));
        sleep(SECOND).await;
    }
    assert_eq!(fake.patches().len(), 1, "no writes after the lease is lost");
    reporter.shutdown().await;
    assert_eq!(
        holder(&fake),
        "mail-default-1",
        "someone else's lease is left alone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_cannot_renew_stops_writing_when_its_lease_runs_out() {
    let (client, fake) = setup();
    let (tx, rx) = watch::channel(view(GossipState::Alive, "0"));
    let reporter = start(&client, "mail-default-0", rx);
    until(10 * SECOND, || fake.patches().len() == 1).await;
    let cut = Instant::now();
    fake.fail(LEASE, StatusCode::SERVICE_UNAVAILABLE, None);
    for i in 0..40 {
        tx.send_replace(view(GossipState::Suspect, &i.to_string()));
        sleep(SECOND).await;
    }
    assert!(!reporter.is_leading());
    let lease_duration = ReportConfig::default().lease_duration;
    let writes_after_cut: Vec<Instant> = fake
        .patches()
        .iter()
        .map(|c| c.at)
        .filter(|at| *at > cut)
        .collect();
    assert!(
        !writes_after_cut.is_empty(),
        "it writes while its lease lasts"
    );
    assert!(
        writes_after_cut.iter().all(|at| *at < cut + lease_duration),
        "no write once the lease has run out"
    );

    // The API server comes back: the same agent renews and reports again.
    fake.heal(LEASE);
    let before = fake.patches().len();
    until(10 * SECOND, || fake.patches().len() > before).await;
    assert!(reporter.is_leading());
    reporter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_view_ends_the_reporter_and_frees_the_lease() {
    let (client, fake) = setup();
    let (tx, rx) = watch::channel(view(GossipState::Alive, "0"));
    let reporter = start(&client, "mail-default-0", rx);
    until(10 * SECOND, || fake.patches().len() == 1).await;
    drop(tx);
    until(10 * SECOND, || reporter.is_finished()).await;
    assert!(holder(&fake).is_null(), "released: {}", holder(&fake));
    assert_eq!(fake.patches().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_written_before_gossip_knows_a_member() {
    let (client, fake) = setup();
    let (tx, rx) = watch::channel(ClusterView::default());
    let reporter = start(&client, "mail-default-0", rx);
    sleep(30 * SECOND).await;
    assert!(reporter.is_leading());
    assert!(
        fake.patches().is_empty(),
        "an empty view would erase members"
    );
    tx.send_replace(view(GossipState::Alive, "0"));
    until(2 * SECOND, || fake.patches().len() == 1).await;
    reporter.shutdown().await;
}

#[test]
fn the_lease_is_the_one_the_agents_rbac_names() {
    assert_eq!(lease_name("mail"), "mail-reporter");
}

#[test]
fn outside_kubernetes_there_is_no_client() {
    assert!(in_cluster_client_from(|_| None).unwrap().is_none());
}

#[test]
fn both_lists_are_list_maps_so_two_appliers_share_them_by_key() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(tern_crds::MailCluster::crd()).unwrap();
    let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    for (list, key) in [("members", "name"), ("shards", "id")] {
        assert_eq!(status[list]["x-kubernetes-list-type"], "map", "{list}");
        assert_eq!(
            status[list]["x-kubernetes-list-map-keys"],
            json!([key]),
            "{list}"
        );
    }
}
