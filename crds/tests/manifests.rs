//! The committed CRD manifests are exactly what the Rust types generate.
//!
//! After changing a type, regenerate with `UPDATE_CRDS=1 cargo test -p tern-crds --test manifests`
//! (or `tern-operator crd --write crds/manifests`) and commit the result.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

#[test]
fn committed_manifests_match_the_types() {
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let mut drifted = vec![];
    for (file, crd) in tern_crds::crds() {
        let path = manifests_dir().join(file);
        let generated = tern_crds::crd_yaml(&crd);
        if update {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            drifted.push(file);
        }
    }
    assert!(
        drifted.is_empty(),
        "CRD manifests drifted from the types: {drifted:?}; run `UPDATE_CRDS=1 cargo test -p tern-crds --test manifests` and commit"
    );
}

#[test]
fn committed_manifests_parse_back_into_the_same_crds() {
    if std::env::var_os("UPDATE_CRDS").is_some() {
        return; // the other test is rewriting the files right now
    }
    for (file, crd) in tern_crds::crds() {
        let text = std::fs::read_to_string(manifests_dir().join(file)).unwrap();
        let parsed: CustomResourceDefinition = serde_saphyr::from_str(
            text.trim_start_matches(|c| c != '\n')
                .trim_start_matches("\n---\n"),
        )
        .unwrap_or_else(|e| panic!("{file} does not parse: {e}"));
        assert_eq!(parsed, crd, "{file} parses to a different CRD");
    }
}

#[test]
fn printed_crds_are_the_committed_files_in_order() {
    let mut files: Vec<_> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let committed: String = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    if std::env::var_os("UPDATE_CRDS").is_none() {
        assert_eq!(
            tern_crds::all_crds_yaml(),
            committed,
            "`tern-operator crd` equals `cat crds/manifests/*.yaml`"
        );
    }
}

#[test]
fn every_crd_follows_the_conventions() {
    for (_, crd) in tern_crds::crds() {
        let name = &crd.metadata.name.clone().unwrap();
        assert_eq!(crd.spec.group, tern_crds::GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["mail".to_string()][..]),
            "{name}"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name} has a short name"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, tern_crds::VERSION);
        let sub = version.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some(), "{name} has the status subresource");
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let status = &schema["properties"]["status"]["properties"];
        assert!(
            status["observedGeneration"].is_object(),
            "{name} status.observedGeneration"
        );
        assert!(status.get("phase").is_none(), "{name} has no phase");
        let conds = &status["conditions"];
        assert_eq!(
            conds["x-kubernetes-list-type"], "map",
            "{name} conditions keyed by type"
        );
        assert_eq!(
            conds["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        let cond_props = &conds["items"]["properties"];
        for field in [
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        ] {
            assert!(
                cond_props[field].is_object(),
                "{name} condition has {field}"
            );
        }
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(columns.contains(&"Age"), "{name} shows Age");
        // Every documented field reaches `kubectl explain`.
        assert!(
            schema["properties"]["spec"]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        for (field, sub) in schema["properties"]["spec"]["properties"]
            .as_object()
            .unwrap()
        {
            assert!(
                sub["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{name} spec.{field} has a description"
            );
        }
    }
}

#[test]
fn scale_subresource_on_pools() {
    for (file, crd) in tern_crds::crds() {
        let scale = crd.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .scale
            .as_ref();
        if file == "usergroups.yaml" {
            assert!(scale.is_none());
            continue;
        }
        let scale = scale.unwrap_or_else(|| panic!("{file} has the scale subresource"));
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
    }
}
