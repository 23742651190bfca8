//! Every CEL rule (`x-kubernetes-validations`) in the CRDs compiles, admits valid objects and
//! refuses invalid ones with the message a person will read — evaluated offline with kube's
//! client-side CEL validator (Kubernetes' CEL libraries, schema defaults applied first, as the
//! API server does).

use kube::CustomResourceExt;
use kube::core::cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use serde_json::{Value, json};
use tern_crds::{ClusterRole, MailCluster, UserGroup};

fn schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// The messages of every rule the object breaks (empty: admitted).
fn check<K: CustomResourceExt>(obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema::<K>(), obj, old) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn assert_ok<K: CustomResourceExt>(obj: &Value) {
    let errs = check::<K>(obj, None);
    assert!(errs.is_empty(), "expected admitted, got {errs:?}\n{obj:#}");
}

fn assert_refused<K: CustomResourceExt>(obj: &Value, old: Option<&Value>, needle: &str) {
    let errs = check::<K>(obj, old);
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "expected a refusal mentioning {needle:?}, got {errs:?}\n{obj:#}"
    );
}

fn cluster(spec: Value) -> Value {
    let mut s = json!({"domains": ["example.com"]});
    merge(&mut s, spec);
    json!({"apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster", "metadata": {"name": "mail", "namespace": "ns"}, "spec": s})
}

fn role(name: &str, spec: Value) -> Value {
    let mut s = json!({"clusterRef": {"name": "mail"}, "replicas": 3});
    merge(&mut s, spec);
    json!({"apiVersion": "mail.tern.dev/v1alpha1", "kind": "ClusterRole", "metadata": {"name": name, "namespace": "ns"}, "spec": s})
}

fn group(name: &str, spec: Value) -> Value {
    let mut s = json!({"clusterRef": {"name": "mail"}});
    merge(&mut s, spec);
    json!({"apiVersion": "mail.tern.dev/v1alpha1", "kind": "UserGroup", "metadata": {"name": name, "namespace": "ns"}, "spec": s})
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

#[test]
fn samples_shape_is_admitted() {
    assert_ok::<MailCluster>(&cluster(json!({})));
    assert_ok::<MailCluster>(&cluster(
        json!({"replicas": 5, "replicationFactor": 5, "shards": 4, "updateStrategy": {"maxUnavailable": 2}}),
    ));
    assert_ok::<ClusterRole>(&role(
        "backend",
        json!({"tasks": [{"name": "push-notifications", "shards": 2}, {"name": "purge-stores"}]}),
    ));
    assert_ok::<UserGroup>(&group("vip", json!({"members": ["ceo@example.com"]})));
    assert_ok::<UserGroup>(&group(
        "corp",
        json!({"domain": "corp.example", "shard": 2}),
    ));
}

#[test]
fn replication_factor_must_be_odd_and_positive() {
    for rf in [0, 2, 4, -1] {
        assert_refused::<MailCluster>(
            &cluster(json!({"replicationFactor": rf, "replicas": 5})),
            None,
            "replicationFactor must be odd and at least 1",
        );
    }
    for rf in [1, 3, 5] {
        assert_ok::<MailCluster>(&cluster(json!({"replicationFactor": rf, "replicas": 5})));
    }
}

#[test]
fn replication_factor_fits_the_storage_nodes() {
    assert_refused::<MailCluster>(
        &cluster(json!({"replicationFactor": 5, "replicas": 3})),
        None,
        "cannot exceed replicas",
    );
    // Every voter in ClusterRole pools: the operator checks the pools' total at reconcile time.
    assert_ok::<MailCluster>(&cluster(json!({"replicationFactor": 5, "replicas": 0})));
}

#[test]
fn at_least_one_shard() {
    assert_refused::<MailCluster>(
        &cluster(json!({"shards": 0})),
        None,
        "shards must be at least 1",
    );
}

#[test]
fn enabled_listeners_use_distinct_ports() {
    assert_refused::<MailCluster>(
        &cluster(json!({"listeners": {"imap": {"port": 25}}})),
        None,
        "distinct ports",
    );
    assert_refused::<MailCluster>(
        &cluster(json!({"listeners": {"https": {"port": 8080}}})),
        None,
        "distinct ports",
    );
    // A disabled listener's port does not count.
    assert_ok::<MailCluster>(&cluster(
        json!({"listeners": {"smtp": {"enabled": false}, "imap": {"port": 25}}}),
    ));
}

#[test]
fn max_unavailable_keeps_quorum() {
    assert_refused::<MailCluster>(
        &cluster(json!({"updateStrategy": {"maxUnavailable": 2}})),
        None,
        "maxUnavailable",
    );
    assert_ok::<MailCluster>(&cluster(
        json!({"replicas": 5, "replicationFactor": 5, "updateStrategy": {"maxUnavailable": 2}}),
    ));
}

#[test]
fn external_traffic_policy_only_for_external_services() {
    assert_refused::<MailCluster>(
        &cluster(json!({"service": {"type": "ClusterIP", "externalTrafficPolicy": "Local"}})),
        None,
        "externalTrafficPolicy applies only",
    );
    assert_ok::<MailCluster>(&cluster(json!({"service": {"type": "ClusterIP"}})));
    assert_ok::<MailCluster>(&cluster(
        json!({"service": {"type": "NodePort", "externalTrafficPolicy": "Cluster"}}),
    ));
}

#[test]
fn names_leave_room_for_pod_names() {
    assert_refused::<MailCluster>(
        &json!({"apiVersion": "mail.tern.dev/v1alpha1", "kind": "MailCluster", "metadata": {"name": "a".repeat(31)}, "spec": {"domains": ["example.com"]}}),
        None,
        "at most 30 characters",
    );
    assert_refused::<ClusterRole>(
        &role(&"r".repeat(22), json!({})),
        None,
        "at most 21 characters",
    );
    assert_refused::<ClusterRole>(&role("default", json!({})), None, "not 'default'");
    assert_refused::<UserGroup>(
        &group("default-3", json!({"domain": "x.org"})),
        None,
        "automatic user groups",
    );
}

#[test]
fn push_notifications_must_be_sharded() {
    assert_refused::<ClusterRole>(
        &role("r", json!({"tasks": [{"name": "push-notifications"}]})),
        None,
        "push-notifications must be sharded",
    );
    assert_ok::<ClusterRole>(&role(
        "r",
        json!({"tasks": [{"name": "push-notifications", "nodes": ["0", "1,2"]}]}),
    ));
    assert_refused::<ClusterRole>(
        &role(
            "r",
            json!({"tasks": [{"name": "push-notifications", "nodes": ["0,1", "1,2"]}]}),
        ),
        None,
        "must not share nodes",
    );
    // Other tasks may share standby nodes between shards.
    assert_ok::<ClusterRole>(&role(
        "r",
        json!({"tasks": [{"name": "fts-indexing", "nodes": ["0,1", "1,2"]}]}),
    ));
}

#[test]
fn explicit_node_lists_name_existing_ordinals() {
    assert_refused::<ClusterRole>(
        &role(
            "r",
            json!({"tasks": [{"name": "purge-stores", "nodes": ["0,3"]}]}),
        ),
        None,
        "pod ordinals of this pool",
    );
    assert_ok::<ClusterRole>(&role(
        "r",
        json!({"tasks": [{"name": "purge-stores", "nodes": ["0,2"]}]}),
    ));
    assert_refused::<ClusterRole>(
        &role(
            "r",
            json!({"tasks": [{"name": "purge-stores", "nodes": ["0"], "shards": 2}]}),
        ),
        None,
        "not both",
    );
    assert_refused::<ClusterRole>(
        &role(
            "r",
            json!({"tasks": [{"name": "purge-stores"}, {"name": "purge-stores", "shards": 2}]}),
        ),
        None,
        "listed once",
    );
}

#[test]
fn cluster_ref_is_immutable() {
    let old = role("r", json!({}));
    let new = role("r", json!({"clusterRef": {"name": "other"}}));
    assert_refused::<ClusterRole>(&new, Some(&old), "clusterRef is immutable");
    assert!(
        check::<ClusterRole>(&role("r", json!({"replicas": 5})), Some(&old)).is_empty(),
        "other fields stay editable"
    );

    let old = group("g", json!({"domain": "x.org"}));
    let new = group(
        "g",
        json!({"domain": "x.org", "clusterRef": {"name": "other"}}),
    );
    assert_refused::<UserGroup>(&new, Some(&old), "clusterRef is immutable");
}

#[test]
fn volumes_are_fixed_at_creation() {
    let old = cluster(json!({}));
    assert_refused::<MailCluster>(
        &cluster(json!({"storage": {"size": "20Gi"}})),
        Some(&old),
        "storage is immutable",
    );
    assert!(
        check::<MailCluster>(
            &cluster(json!({"replicas": 5, "replicationFactor": 3})),
            Some(&old)
        )
        .is_empty()
    );
    let old = role("r", json!({"storage": "none"}));
    assert_refused::<ClusterRole>(
        &role("r", json!({"storage": "voter"})),
        Some(&old),
        "storage is immutable",
    );
}

#[test]
fn user_group_has_members_or_domain() {
    assert_refused::<UserGroup>(&group("g", json!({})), None, "exactly one of members");
    assert_refused::<UserGroup>(
        &group("g", json!({"domain": "x.org", "members": ["a@x.org"]})),
        None,
        "exactly one of members",
    );
}

/// Walks a schema and returns every rule with the compiled schema node it applies to.
fn rules(schema: &Value, out: &mut Vec<(String, Value)>) {
    if let Some(vs) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for v in vs {
            out.push((v["rule"].as_str().unwrap().to_string(), schema.clone()));
        }
    }
    for key in ["properties"] {
        if let Some(props) = schema.get(key).and_then(Value::as_object) {
            for sub in props.values() {
                rules(sub, out);
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = schema.get(key).filter(|s| s.is_object()) {
            rules(sub, out);
        }
    }
}

/// Variables a rule binds itself in `all`, `exists`, `exists_one`, `map` and `filter`.
fn comprehension_vars(rule: &str) -> Vec<String> {
    let mut vars = vec![];
    for mac in ["all(", "exists(", "exists_one(", "map(", "filter("] {
        for (i, _) in rule.match_indices(mac) {
            let rest = &rule[i + mac.len()..];
            if let Some((var, _)) = rest.split_once(',') {
                vars.push(var.trim().to_string());
            }
        }
    }
    vars
}

#[test]
fn every_rule_compiles_uses_only_crd_variables_and_bounds_what_it_iterates() {
    let mut all = vec![];
    for s in [
        schema::<MailCluster>(),
        schema::<ClusterRole>(),
        schema::<UserGroup>(),
    ] {
        let compiled = compile_schema(&s);
        assert!(
            !compiled.has_errors(),
            "rules compile: {:?}",
            compiled.compilation_errors()
        );
        rules(&s, &mut all);
    }
    assert!(all.len() >= 15, "found {} rules", all.len());
    for (rule, node) in &all {
        let bound = comprehension_vars(rule);
        let warnings: Vec<_> =
            analyze_rule(rule, &compile_schema(node), ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| match w.kind {
                    // The analyzer does not see variables bound by comprehension macros.
                    WarningKind::WrongScope => {
                        !bound.iter().any(|v| w.message.contains(&format!("'{v}'")))
                    }
                    // Its cost figure does not tie a comprehension to the list it walks, so it is
                    // meaningless here; what the API server's estimator needs is that every list
                    // and string a rule walks has maxItems/maxLength, which MissingBounds checks.
                    WarningKind::CostExceeded => false,
                    _ => true,
                })
                .collect();
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
    }
}
