//! The local cluster the benchmark drivers run against: `tern-agent dev --nodes 3 --detach`
//! from the build this binary belongs to, with its endpoints, its assignment and an admin
//! client, stopped (`tern-agent dev --stop`) when dropped, also when a benchmark fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tern_agent::admin::AdminClient;
use tern_agent::dev::Endpoints;
use tern_crds::Assignment;

/// `tern-agent` from the same build as this binary.
pub fn agent_binary() -> PathBuf {
    std::env::current_exe()
        .map(|me| me.with_file_name("tern-agent"))
        .unwrap_or_else(|_| PathBuf::from("tern-agent"))
}

/// Reads and parses a JSON file; the error names the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `path` opened for appending (created when missing), for a child's output.
pub fn log_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A running local cluster of three agents.
pub struct LocalCluster {
    pub dir: PathBuf,
    pub endpoints: Endpoints,
    pub assignment: Assignment,
    /// The recovery administrator's client for the cluster's admin API.
    pub admin: AdminClient,
}

impl LocalCluster {
    /// Starts three agents in `dir` on ports from `base_port`, each with `env` added to its
    /// environment. `tern-agent dev` writes its output to `dir.log` (a file, not a pipe: the
    /// agents it leaves running inherit it).
    pub fn start(dir: &Path, base_port: u16, env: &[(&str, String)]) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log_path = dir.with_extension("log");
        let status = Command::new(agent_binary())
            .args(["dev", "--nodes", "3", "--detach", "--dir"])
            .arg(dir)
            .args(["--base-port", &base_port.to_string()])
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file(&log_path)?)
            .stderr(log_file(&log_path)?)
            .status()
            .map_err(|e| format!("starting {}: {e}", agent_binary().display()))?;
        // From here on agents may run: stop them whatever goes wrong next.
        let started = || -> Result<Self, String> {
            if !status.success() {
                return Err(format!(
                    "tern-agent dev did not start the cluster: {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .trim()
                ));
            }
            let endpoints: Endpoints = read_json(&dir.join("endpoints.json"))?;
            let assignment: Assignment = read_json(&dir.join("assignment.json"))?;
            let ca = std::fs::read(&endpoints.admin.ca_file)
                .map_err(|e| format!("{}: {e}", endpoints.admin.ca_file.display()))?;
            let admin = AdminClient::new(
                &endpoints.admin.url,
                &endpoints.admin.user,
                &endpoints.admin.password,
                Some(&ca),
            )
            .map_err(|e| e.to_string())?;
            Ok(Self {
                dir: dir.to_owned(),
                endpoints,
                assignment,
                admin,
            })
        };
        started().inspect_err(|_| stop(dir))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        stop(&self.dir);
    }
}

fn stop(dir: &Path) {
    let _ = Command::new(agent_binary())
        .args(["dev", "--stop", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .status();
}

/// Runs one benchmark, `run`, on a two-thread runtime, then removes `dir` unless `keep`.
/// Returns the exit code: 0, or 1 after printing the error as `tern-bench NAME: …`.
pub fn run_benchmark(
    name: &str,
    dir: &Path,
    keep: bool,
    run: impl std::future::Future<Output = Result<(), String>>,
) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern-bench {name}: a runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(run);
    if keep {
        eprintln!("tern-bench {name}: files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tern-bench {name}: {e}");
            1
        }
    }
}
