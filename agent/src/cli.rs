//! Command line: `tern-agent run` (the node agent), `tern-agent dev` (a local cluster),
//! `tern-agent version`.

use crate::node::Node;

const USAGE: &str = "\
tern-agent: the node agent of a Tern mail cluster

usage:
  tern-agent run        run the agent (identity and files from the environment)
  tern-agent version
  tern-agent dev [--nodes N] [--shards S] [--dir DIR] [--base-port P] [--json FILE] [--detach]
                        a local cluster of N agents on 127.0.0.1, no Kubernetes
                        (`tern-agent dev --help`); `tern-agent dev --stop [--dir DIR]`
                        stops a detached one
  tern-agent admin …    the recovery administrator's client of the admin API
                        (`tern-agent admin --help`)

environment: POD_NAME, TERN_ROLE, TERN_CLUSTER, TERN_CONFIG_FILE, TERN_ASSIGNMENT_FILE,
  TERN_HEALTH_ADDR (default 0.0.0.0:<healthPort from the configuration>), RUST_LOG;
  storage nodes: TERN_DATA_DIR, TERN_STORE_ENGINE, TERN_CLUSTER_CA_FILE, TERN_AGENT_CERT_FILE,
  TERN_AGENT_KEY_FILE, TERN_RPC_ADDR, TERN_PEERS_FILE, TERN_TIMEOUT_MS; admin API:
  TERN_ADMIN_ADDR, TERN_ADMIN_PASSWORD_FILE, TERN_TLS_CERT_FILE, TERN_TLS_KEY_FILE
";

pub fn main(args: Vec<String>) -> i32 {
    let args: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    // The admin command line has its own exit statuses (1: refused by the server).
    if let ["admin", rest @ ..] = args.as_slice() {
        return crate::admin::cli::main(rest);
    }
    let result = match args.as_slice() {
        ["run"] => run(),
        ["dev", rest @ ..] => crate::dev::main(rest),
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft reports every vote and replication step at info.
        .unwrap_or_else(|_| "info,openraft=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let node = Node::from_vars(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(crate::serve::run(node))
}
