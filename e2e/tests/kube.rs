//! Against a real Kubernetes cluster: installs the CRDs, runs the operator (in this process,
//! watching one fresh namespace), applies the samples and checks children, status, scaling,
//! refusal of invalid objects and deletion. Skipped unless `KUBECONFIG` is set.
//!
//! `TERN_E2E_OPERATOR=external` uses an operator already deployed (the Helm chart or
//! `kubectl apply -k config/`) instead of starting one here.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kubectl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .args(args)
        .current_dir(repo())
        .output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn get_json(ns: &str, what: &str) -> Option<Value> {
    kubectl(&["get", "-n", ns, what, "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// Polls until `check` returns Some, or fails after `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

#[test]
fn operator_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("skipped: KUBECONFIG is not set (this test needs a real Kubernetes cluster)");
        return;
    }
    let ns = Namespace(format!("tern-e2e-{}", std::process::id()));
    let ns_name = ns.0.clone();
    kubectl(&["create", "namespace", &ns.0]).unwrap();
    kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=tern-e2e",
        "-f",
        "crds/manifests/",
    ])
    .unwrap();
    for crd in ["mailclusters", "clusterroles", "usergroups"] {
        kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{crd}.mail.tern.dev"),
            "--timeout=60s",
        ])
        .unwrap();
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    if std::env::var("TERN_E2E_OPERATOR").as_deref() != Ok("external") {
        let ns = ns.0.clone();
        runtime.spawn(async move {
            let client = kube::Client::try_default()
                .await
                .expect("a client from KUBECONFIG");
            let mut settings =
                tern_operator::settings::Settings::from_vars(|k| std::env::var(k).ok()).unwrap();
            settings.watch_namespace = Some(ns);
            settings.leader_election = false;
            let ctx = Arc::new(tern_operator::controller::Context::new(
                client,
                settings,
                Default::default(),
            ));
            tern_operator::controller::run(ctx, std::future::pending()).await;
        });
    }

    // Invalid objects are refused by the API server with the CRD's own message.
    let bad = r#"{"apiVersion":"mail.tern.dev/v1alpha1","kind":"MailCluster","metadata":{"name":"bad"},"spec":{"domains":["example.com"],"replicationFactor":2}}"#;
    let path = std::env::temp_dir().join(format!("tern-bad-{}.json", std::process::id()));
    std::fs::write(&path, bad).unwrap();
    let refused = kubectl(&["apply", "-n", &ns.0, "-f", path.to_str().unwrap()]).unwrap_err();
    assert!(
        refused.contains("replicationFactor must be odd"),
        "{refused}"
    );

    // Every sample is accepted, and children appear.
    kubectl(&["apply", "-n", &ns.0, "-k", "config/samples"]).unwrap();
    for sts in ["mail-default", "mail-frontend", "mail-backend"] {
        eventually(
            &format!("StatefulSet {sts}"),
            Duration::from_secs(30),
            || get_json(&ns_name, &format!("statefulset/{sts}")),
        );
    }
    for obj in [
        "service/mail",
        "service/mail-nodes",
        "configmap/mail-config",
        "configmap/mail-assignment",
        "poddisruptionbudget/mail-voters",
        "secret/mail-ca",
        "secret/mail-gossip",
    ] {
        eventually(obj, Duration::from_secs(30), || get_json(&ns_name, obj));
    }
    let mc = eventually("MailCluster status", Duration::from_secs(30), || {
        let mc = get_json(&ns_name, "mailcluster/mail")?;
        (mc["status"]["observedGeneration"] == mc["metadata"]["generation"]).then_some(mc)
    });
    for t in ["Ready", "Progressing", "Degraded"] {
        assert!(
            mc["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == t),
            "{t} condition: {mc:#}"
        );
    }
    let cols = kubectl(&["get", "mc", "-n", &ns.0]).unwrap();
    for col in ["READY", "SHARDS", "LEADERS", "AGE"] {
        assert!(cols.contains(col), "{cols}");
    }
    assert!(
        kubectl(&["get", "mail", "-n", &ns.0])
            .unwrap()
            .contains("mail")
    );
    kubectl(&[
        "wait",
        "-n",
        &ns.0,
        "--for=condition=Progressing",
        "mailcluster/mail",
        "--timeout=30s",
    ])
    .unwrap();

    // kubectl scale reaches the StatefulSet.
    kubectl(&["scale", "-n", &ns.0, "mailcluster/mail", "--replicas=5"]).unwrap();
    eventually("scaled StatefulSet", Duration::from_secs(30), || {
        let sts = get_json(&ns_name, "statefulset/mail-default")?;
        (sts["spec"]["replicas"] == 5).then_some(())
    });

    // Deletion with the default Retain policy: the cluster goes, its volume claims stay.
    kubectl(&["delete", "-n", &ns.0, "mailcluster/mail", "--timeout=60s"]).unwrap();
    eventually("MailCluster gone", Duration::from_secs(60), || {
        get_json(&ns_name, "mailcluster/mail")
            .is_none()
            .then_some(())
    });
    drop(runtime);
}
