//! Command line: `run` (the controller), `crd` (print or write the CRDs), `render` (print the
//! children a MailCluster would get, offline).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use tern_crds::{ClusterRole, MailCluster, UserGroup};

use crate::controller::{self, Context, plan};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::{http, placement, render};

const USAGE: &str = "\
tern-operator: runs Tern mail clusters on Kubernetes

usage:
  tern-operator run                     reconcile MailCluster, ClusterRole and UserGroup resources
  tern-operator crd [--write DIR]       print every CRD as YAML, or write one file per CRD into DIR
  tern-operator render -f FILE...       print the objects the operator would apply for the
                                        MailCluster (and ClusterRoles, UserGroups) in FILEs
  tern-operator version

environment (run): TERN_AGENT_IMAGE, TERN_WATCH_NAMESPACE, TERN_LEADER_ELECTION, POD_NAME,
  POD_NAMESPACE, TERN_HTTP_ADDR, TERN_CLUSTER_DOMAIN, TERN_LOG_FORMAT=json, RUST_LOG
";

/// Parses arguments and runs; returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    let args: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let result = match args.as_slice() {
        [] | ["run"] => run(),
        ["crd"] => {
            print!("{}", tern_crds::all_crds_yaml());
            Ok(())
        }
        ["crd", "--write", dir] => write_crds(dir.into()),
        ["render", rest @ ..] if !rest.is_empty() => render_files(rest),
        ["version" | "--version" | "-V"] => {
            println!("tern-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown arguments {args:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tern-operator: {e}");
            2
        }
    }
}

fn write_crds(dir: PathBuf) -> Result<(), String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (file, crd) in tern_crds::crds() {
        let path = dir.join(file);
        std::fs::write(&path, tern_crds::crd_yaml(&crd))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Renders offline: no API server, no previous assignment, no generated Secrets (those are
/// created at run time with fresh key material).
fn render_files(args: &[&str]) -> Result<(), String> {
    let mut files = vec![];
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "-f" => files.push(*it.next().ok_or("-f needs a file")?),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let mut clusters: Vec<MailCluster> = vec![];
    let mut roles: Vec<ClusterRole> = vec![];
    let mut groups: Vec<UserGroup> = vec![];
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| format!("{file}: {e}"))?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let parse_err = |e: serde_json::Error| format!("{file}: {kind}: {e}");
            match kind.as_str() {
                "MailCluster" => clusters.push(serde_json::from_value(doc).map_err(parse_err)?),
                "ClusterRole"
                    if doc["apiVersion"]
                        .as_str()
                        .is_some_and(|v| v.starts_with(tern_crds::GROUP)) =>
                {
                    roles.push(serde_json::from_value(doc).map_err(parse_err)?)
                }
                "UserGroup" => groups.push(serde_json::from_value(doc).map_err(parse_err)?),
                _ => {}
            }
        }
    }
    let settings = Settings::from_vars(|k| std::env::var(k).ok())?;
    let mut out = std::io::stdout().lock();
    for mut cluster in clusters {
        let name = cluster
            .metadata
            .name
            .clone()
            .ok_or("a MailCluster has no metadata.name")?;
        let ns = cluster
            .metadata
            .namespace
            .get_or_insert_with(|| "default".into())
            .clone();
        cluster
            .metadata
            .uid
            .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
        let in_cluster =
            |r: &str, n: &Option<String>| r == name && n.as_deref().unwrap_or("default") == ns;
        let roles: Vec<ClusterRole> = roles
            .iter()
            .filter(|r| in_cluster(&r.spec.cluster_ref.name, &r.metadata.namespace))
            .cloned()
            .collect();
        let groups: Vec<UserGroup> = groups
            .iter()
            .filter(|g| in_cluster(&g.spec.cluster_ref.name, &g.metadata.namespace))
            .cloned()
            .collect();
        let pools = plan::pools(&cluster, &roles, &[]);
        plan::validate(&cluster, &pools)?;
        let input = plan::placement_input(&cluster, &pools, &groups, &Default::default(), None);
        let assignment = placement::place(None, &input).map_err(|e| e.to_string())?;
        let prepared = render::build(&render::RenderInput {
            cluster: &cluster,
            pools: pools
                .iter()
                .map(|p| render::Pool {
                    name: p.name.clone(),
                    role: p.role,
                    replicas: p.desired,
                })
                .collect(),
            assignment: &assignment,
            settings: &settings.render,
        })
        .map_err(|e| e.to_string())?;
        let yaml = prepared.to_yaml().map_err(|e| e.to_string())?;
        out.write_all(yaml.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn run() -> Result<(), String> {
    let settings = Settings::from_vars(|k| std::env::var(k).ok())?;
    init_tracing(settings.log_json);
    // One crypto provider for every TLS connection the process makes (the API server's).
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| "a rustls crypto provider was already installed")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> Result<(), String> {
    let metrics = Metrics::default();
    let ready = http::Readiness::default();
    let addr = http::spawn(settings.http_addr, metrics.clone(), ready.clone())
        .await
        .map_err(|e| format!("{}: {e}", settings.http_addr))?;
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "tern-operator serving /metrics and /healthz");
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("connecting to the Kubernetes API: {e}"))?;

    let (leading_tx, mut leading) = tokio::sync::watch::channel(!settings.leader_election);
    let elector = settings.leader_election.then(|| {
        Arc::new(LeaderElector::new(
            client.clone(),
            LeaseConfig {
                namespace: settings.lease_namespace.clone(),
                name: settings.lease_name.clone(),
                identity: settings.identity.clone(),
                duration: settings.lease_duration,
                retry: settings.lease_duration / 3,
            },
        ))
    });
    // Without election the sender is kept here, so "leading" never ends.
    let _unelected = match &elector {
        Some(elector) => {
            let elector = Arc::clone(elector);
            tokio::spawn(async move { elector.run(leading_tx).await });
            tracing::info!("waiting for the leader lease");
            None
        }
        None => Some(leading_tx),
    };
    ready.set(true);
    leading
        .wait_for(|l| *l)
        .await
        .map_err(|_| "leader election stopped")?;
    metrics.leader.set(1);
    tracing::info!("leading: starting controllers");

    let ctx = Arc::new(Context::new(client, settings, metrics.clone()));
    // Stop reconciling the moment leadership is lost; the process then exits so that
    // Kubernetes restarts it as a fresh candidate.
    let mut lost = leading.clone();
    let stop = async move {
        tokio::select! {
            _ = lost.wait_for(|l| !*l) => {}
            _ = shutdown_signal() => tracing::info!("shutting down"),
        }
    };
    controller::run(ctx, stop).await;
    metrics.leader.set(0);
    if let Some(elector) = elector {
        elector.release().await;
    }
    if !*leading.borrow() {
        return Err("lost the leader lease".into());
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
