//! Command line: `tern-agent run` (the node agent), `tern-agent version`.

use std::time::Duration;

use crate::follow::{self, Shared};
use crate::http::{self, View};
use crate::node::Node;

const USAGE: &str = "\
tern-agent: the node agent of a Tern mail cluster

usage:
  tern-agent run        run the agent (identity and files from the environment)
  tern-agent version

environment: POD_NAME, TERN_ROLE, TERN_CLUSTER, TERN_CONFIG_FILE, TERN_ASSIGNMENT_FILE,
  TERN_HEALTH_ADDR (default 0.0.0.0:<healthPort from the configuration>), RUST_LOG
";

pub fn main(args: Vec<String>) -> i32 {
    let args: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let result = match args.as_slice() {
        ["run"] => run(),
        ["version" | "--version" | "-V"] => {
            println!("tern-agent {}", env!("CARGO_PKG_VERSION"));
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
            eprintln!("tern-agent: {e}");
            2
        }
    }
}

fn run() -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let node = Node::from_vars(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let followed = Shared::default();
        let view = View { node: node.name.clone(), pool: node.pool.clone(), followed: followed.clone() };
        let addr = http::spawn(node.health_addr, view).await.map_err(|e| format!("{}: {e}", node.health_addr))?;
        tracing::info!(node = %node.name, pool = %node.pool, %addr, "tern-agent serving health and metrics");
        tokio::spawn(follow::run(node.config.cluster.clone(), node.assignment_file.clone(), followed, Duration::from_secs(1)));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        Ok(())
    })
}
