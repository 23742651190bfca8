//! The fake against kube's own client: what a real API server would answer.

use http::{Method, Request, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::client::Body;
use serde_json::{Value, json};

use super::{CLOCK, FakeApi, object_path};

const NS: &str = "mail-ns";
const MC: &str = "/apis/mail.tern.dev/v1alpha1/namespaces/mail-ns/mailclusters/mail";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/mail-ns/leases/l";

fn mail_cluster() -> Value {
    json!({
        "apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster",
        "metadata": {"name": "mail", "namespace": NS},
        "spec": {"domains": ["example.com"], "replicas": 3},
    })
}

fn status_body(status: Value) -> Value {
    json!({"apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster",
           "metadata": {"name": "mail"}, "status": status})
}

fn config_map(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels}, "data": {"k": name},
    }))
    .unwrap()
}

/// The API error a request ends in: (code, message).
async fn refused<T: std::fmt::Debug>(
    request: impl Future<Output = kube::Result<T>>,
) -> (u16, String) {
    match request.await {
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        other => panic!("not an API error: {other:?}"),
    }
}

/// Sends a raw request; returns the status code and the JSON body.
async fn raw(
    client: &kube::Client,
    method: Method,
    uri: &str,
    content_type: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
        .unwrap();
    let res = client.send(req).await.unwrap();
    let code = res.status();
    let bytes = res.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn two_appliers_share_a_list_map_by_key_and_each_removes_only_its_own_fields() {
    let (client, fake) = FakeApi::start();
    fake.put(mail_cluster());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client,
        NS,
        &kube::api::ApiResource {
            group: "mail.tern.dev".into(),
            version: "v1alpha1".into(),
            api_version: "mail.tern.dev/v1alpha1".into(),
            kind: "MailCluster".into(),
            plural: "mailclusters".into(),
        },
    );
    let operator = PatchParams::apply("tern-operator").force();
    let agent = PatchParams::apply("tern-agent").force();
    let conditions = json!([{"type": "Ready", "status": "True", "reason": "Ready",
        "message": "", "lastTransitionTime": CLOCK}]);
    api.patch_status(
        "mail",
        &operator,
        &Patch::Apply(status_body(json!({
            "conditions": conditions,
            "shards": [{"id": 1, "voters": [1, 2, 3]}, {"id": 2, "voters": [2, 3, 4]}],
        }))),
    )
    .await
    .unwrap();
    let generation = fake.get(MC).unwrap()["metadata"]["generation"].clone();
    api.patch_status(
        "mail",
        &agent,
        &Patch::Apply(status_body(json!({
            "members": [{"name": "mail-default-0", "nodeId": 1, "state": "Alive"},
                        {"name": "mail-default-1", "nodeId": 2, "state": "Alive"}],
            "shards": [{"id": 1, "leader": 2}, {"id": 2, "leader": 3}],
        }))),
    )
    .await
    .unwrap();
    let status = &fake.get(MC).unwrap()["status"];
    assert_eq!(
        status["shards"],
        json!([
            {"id": 1, "voters": [1, 2, 3], "leader": 2},
            {"id": 2, "voters": [2, 3, 4], "leader": 3},
        ]),
        "both appliers' fields of each entry"
    );
    assert_eq!(status["conditions"], conditions);

    // The operator drops shard 2 and changes shard 1: the agent's fields stay, and so does
    // shard 2's entry, which the agent still applies.
    api.patch_status(
        "mail",
        &operator,
        &Patch::Apply(status_body(json!({
            "conditions": conditions, "shards": [{"id": 1, "voters": [1, 2, 5]}],
        }))),
    )
    .await
    .unwrap();
    // The agent forgets a member and shard 2.
    api.patch_status(
        "mail",
        &agent,
        &Patch::Apply(status_body(json!({
            "members": [{"name": "mail-default-0", "nodeId": 1, "state": "Dead"}],
            "shards": [{"id": 1, "leader": 1}],
        }))),
    )
    .await
    .unwrap();
    let mc = fake.get(MC).unwrap();
    assert_eq!(
        mc["status"]["shards"],
        json!([{"id": 1, "voters": [1, 2, 5], "leader": 1}])
    );
    assert_eq!(
        mc["status"]["members"],
        json!([{"name": "mail-default-0", "nodeId": 1, "state": "Dead"}])
    );
    assert_eq!(mc["status"]["conditions"], conditions);
    assert_eq!(
        mc["metadata"]["generation"], generation,
        "status writes leave the generation alone"
    );

    // Both are listed as managers of the status subresource, owning the shared key.
    let managed = mc["metadata"]["managedFields"].as_array().unwrap();
    let entry = |who: &str| {
        managed
            .iter()
            .find(|m| m["manager"] == who)
            .unwrap_or_else(|| panic!("{who} in {managed:#?}"))
    };
    for who in ["tern-operator", "tern-agent"] {
        assert_eq!(entry(who)["operation"], "Apply");
        assert_eq!(entry(who)["subresource"], "status");
        assert!(
            entry(who)["fieldsV1"]["f:status"]["f:shards"]["k:{\"id\":1}"]["."].is_object(),
            "{who}: {:#}",
            entry(who)
        );
    }
    assert!(
        entry("tern-agent")["fieldsV1"]["f:status"]["f:shards"]["k:{\"id\":1}"]["f:leader"]
            .is_object()
    );
    assert!(entry("kubectl-create")["fieldsV1"]["f:spec"]["f:replicas"].is_object());
}

#[tokio::test]
async fn taking_another_managers_field_is_a_conflict_unless_forced() {
    let (client, fake) = FakeApi::start();
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let body = |v: &str| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}, "data": {"k": v},
        })
    };
    api.patch("c", &PatchParams::apply("one"), &Patch::Apply(body("1")))
        .await
        .unwrap();
    // The same value is shared ownership, not a conflict.
    api.patch("c", &PatchParams::apply("two"), &Patch::Apply(body("1")))
        .await
        .unwrap();
    let (code, message) =
        refused(api.patch("c", &PatchParams::apply("two"), &Patch::Apply(body("2")))).await;
    assert_eq!(code, 409);
    assert!(
        message.contains("conflict with \"one\": .data.k"),
        "{message}"
    );
    assert_eq!(
        fake.get(&format!("/api/v1/namespaces/{NS}/configmaps/c"))
            .unwrap()["data"]["k"],
        "1"
    );

    api.patch(
        "c",
        &PatchParams::apply("two").force(),
        &Patch::Apply(body("2")),
    )
    .await
    .unwrap();
    // `one` lost the field: it may stop applying it without removing it.
    api.patch(
        "c",
        &PatchParams::apply("one"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})),
    )
    .await
    .unwrap();
    assert_eq!(api.get("c").await.unwrap().data.unwrap()["k"], "2");
    // Once `two` stops applying it too, it is gone.
    api.patch(
        "c",
        &PatchParams::apply("two"),
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"a": "b"}},
        })),
    )
    .await
    .unwrap();
    let cm = api.get("c").await.unwrap();
    assert!(cm.data.is_none(), "{:?}", cm.data);
}

#[tokio::test]
async fn the_status_subresource_and_generation_and_no_op_writes() {
    let (client, fake) = FakeApi::start();
    let api: Api<crate::MailCluster> = Api::namespaced(client, NS);
    let pp = PatchParams::apply("me");
    let mut mc = mail_cluster();
    mc["status"] = json!({"replicas": 7});
    let created = api
        .patch("mail", &pp, &Patch::Apply(mc.clone()))
        .await
        .unwrap();
    assert!(created.status.is_none(), "an object write ignores status");
    assert_eq!(created.metadata.generation, Some(1));
    let rv = created.metadata.resource_version.clone();

    // The same apply again changes nothing: same resourceVersion.
    let again = api
        .patch("mail", &pp, &Patch::Apply(mc.clone()))
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, rv);

    // A status write touches only status.
    let mut both = status_body(json!({"replicas": 2}));
    both["spec"] = json!({"domains": ["other.org"], "replicas": 9});
    let written = api
        .patch_status("mail", &pp, &Patch::Apply(both))
        .await
        .unwrap();
    assert_eq!(written.spec.replicas, 3);
    assert_eq!(written.status.unwrap().replicas, 2);
    assert_eq!(written.metadata.generation, Some(1));

    // A spec change grows the generation.
    mc["spec"]["replicas"] = json!(5);
    let scaled = api.patch("mail", &pp, &Patch::Apply(mc)).await.unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    assert_eq!(fake.get(MC).unwrap()["status"]["replicas"], 2);

    // `/status` of something that does not exist is not created.
    let (code, _) = refused(api.patch_status(
        "nope",
        &pp,
        &Patch::Apply(json!({
            "apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster",
            "metadata": {"name": "nope"}, "status": {},
        })),
    ))
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn replace_needs_the_current_resource_version() {
    let (client, _fake) = FakeApi::start();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"},
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let (code, _) = refused(leases.create(&PostParams::default(), &lease)).await;
    assert_eq!(code, 409, "create of an existing name");

    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("l", &PostParams::default(), &mine)
        .await
        .unwrap();
    // `created` is stale now.
    let (code, message) = refused(leases.replace("l", &PostParams::default(), &created)).await;
    assert_eq!(code, 409);
    assert!(message.contains("has been modified"), "{message}");
    // A Lease is never replaced without a resourceVersion.
    mine.metadata.resource_version = None;
    let (code, _) = refused(leases.replace("l", &PostParams::default(), &mine)).await;
    assert_eq!(code, 422);

    // A ConfigMap is (last write wins).
    let cms: Api<ConfigMap> = Api::namespaced(client, NS);
    cms.create(&PostParams::default(), &config_map("c", json!({})))
        .await
        .unwrap();
    let replaced = cms
        .replace(
            "c",
            &PostParams::default(),
            &config_map("c", json!({"x": "y"})),
        )
        .await
        .unwrap();
    assert_eq!(replaced.metadata.labels.unwrap()["x"], "y");
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_the_last_goes() {
    let (client, fake) = FakeApi::start();
    fake.put(mail_cluster());
    let api: Api<crate::MailCluster> = Api::namespaced(client, NS);
    // As kube's finalizer helper adds the first finalizer: a `test` for null on an absent
    // field passes.
    let add = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["a", "b"]},
    ]);
    api.patch(
        "mail",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(add.clone()).unwrap()),
    )
    .await
    .unwrap();
    let (code, _) = refused(api.patch(
        "mail",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(add).unwrap()),
    ))
    .await;
    assert_eq!(code, 422, "the test fails once finalizers exist");

    api.delete("mail", &DeleteParams::default()).await.unwrap();
    let held = fake.get(MC).expect("held by its finalizers");
    assert_eq!(held["metadata"]["deletionTimestamp"], CLOCK);
    let (code, message) = refused(api.patch(
        "mail",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["a", "b", "c"]}})),
    ))
    .await;
    assert_eq!(code, 422);
    assert!(message.contains("no new finalizers"), "{message}");

    api.patch(
        "mail",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["b"]}})),
    )
    .await
    .unwrap();
    assert!(fake.get(MC).is_some());
    api.patch(
        "mail",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(fake.get(MC).is_none(), "gone with its last finalizer");

    // Preconditions of a delete are checked.
    fake.put(mail_cluster());
    let (code, _) = refused(api.delete(
        "mail",
        &DeleteParams::default().preconditions(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
    ))
    .await;
    assert_eq!(code, 409);
}

#[tokio::test]
async fn lists_select_by_label_field_and_page() {
    let (client, _fake) = FakeApi::start();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    for (name, labels) in [
        ("a", json!({"pool": "default", "tier": "1"})),
        ("b", json!({"pool": "backend"})),
        ("c", json!({"pool": "default"})),
        ("d", json!({})),
    ] {
        api.create(&PostParams::default(), &config_map(name, labels))
            .await
            .unwrap();
    }
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "elsewhere");
    other
        .create(
            &PostParams::default(),
            &config_map("e", json!({"pool": "default"})),
        )
        .await
        .unwrap();
    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    let select = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(api.list(&select("pool=default")).await.unwrap()),
        ["a", "c"]
    );
    assert_eq!(
        names(api.list(&select("pool!=default")).await.unwrap()),
        ["b", "d"]
    );
    assert_eq!(
        names(
            api.list(&select("pool in (backend,default),!tier"))
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(api.list(&select("pool notin (default)")).await.unwrap()),
        ["b", "d"]
    );
    assert_eq!(names(api.list(&select("tier")).await.unwrap()), ["a"]);
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let all: Api<ConfigMap> = Api::all(client);
    assert_eq!(
        names(all.list(&select("pool=default")).await.unwrap()),
        ["e", "a", "c"]
    );

    let first = api.list(&ListParams::default().limit(3)).await.unwrap();
    let token = first.metadata.continue_.clone().expect("more to come");
    assert_eq!(names(first), ["a", "b", "c"]);
    let rest = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert!(rest.metadata.continue_.is_none());
    assert_eq!(names(rest), ["d"]);

    let (code, _) = refused(api.list(&select("pool in default"))).await;
    assert_eq!(code, 400, "a malformed selector");
    let (code, _) = refused(api.list(&ListParams::default().fields("data.k=a"))).await;
    assert_eq!(code, 400, "an unsupported field selector");
}

#[tokio::test]
async fn injected_failures_and_a_required_field_manager() {
    let (client, fake) = FakeApi::start();
    fake.put(mail_cluster());
    let api: Api<crate::MailCluster> = Api::namespaced(client, NS);
    fake.fail(MC, StatusCode::SERVICE_UNAVAILABLE, Some(2));
    for _ in 0..2 {
        let (code, _) = refused(api.get("mail")).await;
        assert_eq!(code, 503);
    }
    api.get("mail").await.unwrap();

    fake.refuse_writes(MC, "spec.shards: Forbidden: shards cannot shrink");
    api.get("mail").await.expect("reads pass");
    let (code, message) = refused(api.patch_status(
        "mail",
        &PatchParams::apply("me"),
        &Patch::Apply(status_body(json!({}))),
    ))
    .await;
    assert_eq!(
        (code, message.as_str()),
        (422, "spec.shards: Forbidden: shards cannot shrink")
    );
    fake.heal(MC);

    fake.require_field_manager("tern-operator");
    let (code, _) = refused(api.patch_status(
        "mail",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(status_body(json!({}))),
    ))
    .await;
    assert_eq!(code, 403);
    api.patch_status(
        "mail",
        &PatchParams::apply("tern-operator"),
        &Patch::Apply(status_body(json!({"replicas": 1}))),
    )
    .await
    .unwrap();

    let calls = fake.calls();
    let last = calls.last().unwrap();
    assert_eq!(last.line(), format!("PATCH {MC}/status"));
    assert_eq!(last.param("fieldManager"), Some("tern-operator"));
    assert_eq!(
        last.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(fake.patches().len(), 3);
}

/// A request the fake refuses, and how.
struct BadRequest<'a> {
    method: Method,
    uri: String,
    content_type: &'a str,
    body: String,
    code: u16,
    /// Part of the message.
    says: &'a str,
}

impl<'a> BadRequest<'a> {
    fn get(uri: &str, code: u16, says: &'a str) -> Self {
        Self {
            method: Method::GET,
            uri: uri.into(),
            content_type: "",
            body: String::new(),
            code,
            says,
        }
    }

    fn patch(uri: &str, content_type: &'a str, body: &str, code: u16, says: &'a str) -> Self {
        Self {
            method: Method::PATCH,
            uri: uri.into(),
            content_type,
            body: body.into(),
            code,
            says,
        }
    }
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let (client, fake) = FakeApi::start();
    fake.put(mail_cluster());
    let apply = "application/apply-patch+yaml";
    let status_apply = format!("{MC}/status?fieldManager=x");
    let body = |api_version: &str, kind: &str, name: &str| {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}).to_string()
    };
    let ours = |name: &str| body("mail.tern.dev/v1alpha1", "MailCluster", name);
    let lists = format!("/apis/mail.tern.dev/v1alpha1/namespaces/{NS}/mailclusters?watch=true");
    let cases = [
        BadRequest::get("/apis/nowhere.example/v1/things", 404, "could not find"),
        BadRequest::patch(&status_apply, apply, "{\"status\":", 400, "neither JSON"),
        BadRequest::patch(&status_apply, apply, "[1]", 400, "not an object"),
        BadRequest::patch(
            &format!("{MC}/status"),
            apply,
            &ours("mail"),
            400,
            "fieldManager is required",
        ),
        BadRequest::patch(
            &status_apply,
            apply,
            &body("v1", "ConfigMap", "mail"),
            400,
            "the URL names",
        ),
        BadRequest::patch(
            &status_apply,
            apply,
            &ours("other"),
            400,
            "does not match the name",
        ),
        BadRequest::patch(
            &format!("{MC}?fieldManager=x"),
            "application/strategic-merge-patch+json",
            "{}",
            415,
            "strategic",
        ),
        BadRequest::get(&lists, 405, "watch"),
        BadRequest::patch(
            &format!("{MC}/scale?fieldManager=x"),
            apply,
            "{}",
            404,
            "scale",
        ),
    ];
    for case in cases {
        let (got, status) = raw(
            &client,
            case.method.clone(),
            &case.uri,
            case.content_type,
            case.body.as_bytes(),
        )
        .await;
        let what = format!("{} {}: {status}", case.method, case.uri);
        assert_eq!(got.as_u16(), case.code, "{what}");
        assert_eq!(status["kind"], "Status", "{what}");
        assert!(
            status["message"].as_str().unwrap().contains(case.says),
            "{what}"
        );
    }
    // Still serving, and the YAML form of an apply is understood.
    let yaml = b"apiVersion: mail.tern.dev/v1alpha1\nkind: MailCluster\n\
                 metadata:\n  name: mail\nstatus:\n  replicas: 4\n";
    let (code, obj) = raw(
        &client,
        Method::PATCH,
        &format!("{MC}/status?fieldManager=x"),
        apply,
        yaml,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{obj}");
    assert_eq!(fake.get(MC).unwrap()["status"]["replicas"], 4);
}

#[test]
fn paths_and_resources_agree_with_the_crds() {
    assert_eq!(object_path(&mail_cluster()), MC);
    assert_eq!(
        object_path(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}})),
        "/api/v1/nodes/n"
    );
    assert_eq!(
        object_path(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "r"},
        })),
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/r"
    );
    for (_, crd) in crate::crds() {
        let index = super::resources::by_kind(
            &format!("{}/{}", crd.spec.group, crd.spec.versions[0].name),
            &crd.spec.names.kind,
        )
        .expect("every CRD is served");
        let served = &super::resources::all()[index];
        assert!(served.status_subresource, "{} has /status", served.kind);
        assert_eq!(served.plural, crd.spec.names.plural);
    }
    assert!(super::resources::parse_path("/api/v1/namespaces/ns/nodes/n").is_err());
    assert!(super::resources::parse_path("/api/v1/namespaces/ns").is_ok());
    assert_eq!(
        super::request::decode("a%3Db%2Cc+d%zz%e2%9c%93"),
        "a=b,c d%zz✓"
    );
}

#[tokio::test]
async fn put_and_edit_act_as_other_clients() {
    let (_client, fake) = FakeApi::start();
    let stored = fake.put(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "l", "namespace": NS}, "spec": {"holderIdentity": "a"},
    }));
    assert_eq!(object_path(&stored), LEASE);
    let uid = stored["metadata"]["uid"].clone();
    let replaced = fake.put(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "l", "namespace": NS}, "spec": {"holderIdentity": "b"},
    }));
    assert_eq!(
        replaced["metadata"]["uid"], uid,
        "a replace keeps the identity"
    );
    assert_eq!(replaced["metadata"]["generation"], 2);
    fake.edit(LEASE, |l| l["spec"]["holderIdentity"] = json!("c"));
    let edited = fake.get(LEASE).unwrap();
    assert_eq!(edited["spec"]["holderIdentity"], "c");
    assert_ne!(
        edited["metadata"]["resourceVersion"],
        replaced["metadata"]["resourceVersion"]
    );
    let managers: Vec<&str> = edited["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(
        managers,
        ["kubectl-edit"],
        "the edit took the one field everyone set"
    );
    assert_eq!(fake.list("/apis/coordination.k8s.io/v1/leases").len(), 1);
    fake.delete(LEASE);
    assert!(fake.get(LEASE).is_none());
}
