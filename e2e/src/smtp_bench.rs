//! `tern-bench smtp`: mail intake end to end, Tern against a reference mail system, both
//! driven by Postfix's `smtp-source` on this machine.
//!
//! One run starts both targets and keeps them up while it measures, alternating between them
//! row by row so that whatever else the machine does weighs on both alike:
//!
//! - **tern**: a local cluster of three agents (`tern-agent dev --detach`, the release
//!   binaries next to this one; 3 shards, replication factor 3). `smtp-source` talks to the
//!   SMTP listener of node 0; each row sends to its own account, created through the admin
//!   API, all of them on one shard. Tern answers `250` only once a message is committed on a
//!   majority of the shard's voters and applied, so the time `smtp-source` takes is the
//!   end-to-end time; afterwards the admin API must list exactly the messages sent, each
//!   Message-ID once.
//! - **reference**: Postfix → LMTP → Dovecot (Maildir), installed and configured by the
//!   shared script `peer-stack.sh` (`TERN_PEER_STACK`, or `shared/reference/peer-stack.sh`
//!   in a directory above the working directory, this binary or the crate). Postfix answers
//!   `250` once the message is in its queue, so the clock stops only when the last message is
//!   a file in the recipient's Maildir (the queue drained through Dovecot's LMTP).
//!
//! For 8 and 32 sessions and 1 KiB and 64 KiB messages (`smtp-source -s S -m N -l SIZE`, a new
//! connection per message as `smtp-source` does by default) it prints messages per second for
//! both and Tern's ratio to the reference. `smtp-source` comes from Debian's `postfix` package,
//! installed when missing (as the reference script does).
//!
//! Usage: `tern-bench smtp [--dir DIR] [--base-port P] [--messages N] [--sessions 8,32]
//! [--sizes 1024,65536] [--targets tern,reference] [--keep]`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::{self, Host, Usage};
use crate::local::{LocalCluster, log_file};

const USAGE: &str = "usage: tern-bench smtp [--dir DIR] [--base-port P] [--messages N] [--sessions 8,32] [--sizes 1024,65536] [--targets tern,reference] [--keep]";
/// Tern's mail domain in the benchmark.
const TERN_DOMAIN: &str = "bench.test";
/// The reference stack's mail domain (fixed by `peer-stack.sh`).
const REFERENCE_DOMAIN: &str = "bench.local";
/// The reference stack's SMTP listener (fixed by `peer-stack.sh`).
const REFERENCE_SMTP: &str = "127.0.0.1:2525";
/// The envelope sender: a remote domain, as mail from the internet has.
const SENDER: &str = "load@sender.example";
/// `smtp-source`'s HELO name and Message-ID domain.
const CLIENT_NAME: &str = "load.example";
/// Messages sent to each target before the measured rows (1 KiB, 8 sessions).
const WARM_UP: usize = 100;
/// The longest one `smtp-source` run may take.
const SMTP_SOURCE_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Tern,
    Reference,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Tern => "tern",
            Target::Reference => "reference",
        }
    }
}

#[derive(Debug)]
struct Options {
    dir: PathBuf,
    base_port: u16,
    messages: usize,
    sessions: Vec<usize>,
    sizes: Vec<usize>,
    targets: Vec<Target>,
    keep: bool,
}

fn list<T: std::str::FromStr>(flag: &str, value: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    let items = value
        .split(',')
        .map(|v| v.trim().parse().map_err(|e| format!("{flag}: {v:?}: {e}")))
        .collect::<Result<Vec<T>, _>>()?;
    if items.is_empty() {
        return Err(format!("{flag} needs at least one value"));
    }
    Ok(items)
}

/// Parses the arguments after `smtp`.
fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        dir: std::env::temp_dir().join(format!("tern-bench-smtp-{}", std::process::id())),
        base_port: 19100,
        messages: 1000,
        sessions: vec![8, 32],
        sizes: vec![1024, 65536],
        targets: vec![Target::Tern, Target::Reference],
        keep: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dir" => o.dir = PathBuf::from(value()?),
            "--base-port" => {
                o.base_port = value()?.parse().map_err(|e| format!("--base-port: {e}"))?
            }
            "--messages" => {
                o.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--sessions" => o.sessions = list("--sessions", &value()?)?,
            "--sizes" => o.sizes = list("--sizes", &value()?)?,
            "--targets" => {
                o.targets = value()?
                    .split(',')
                    .map(|t| match t.trim() {
                        "tern" => Ok(Target::Tern),
                        "reference" => Ok(Target::Reference),
                        other => Err(format!(
                            "--targets: {other:?} is neither `tern` nor `reference`"
                        )),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--keep" => o.keep = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.messages == 0 || o.messages > 1_000_000 {
        return Err("--messages must be between 1 and 1000000".into());
    }
    if let Some(s) = o.sessions.iter().find(|s| !(1..=1000).contains(*s)) {
        return Err(format!("--sessions: {s} is not between 1 and 1000"));
    }
    // Tern refuses messages over 25 MiB; smtp-source's payload excludes its few header lines.
    if let Some(s) = o.sizes.iter().find(|s| !(1..=16 << 20).contains(*s)) {
        return Err(format!("--sizes: {s} is not between 1 and 16777216 bytes"));
    }
    o.targets.dedup();
    if o.targets.is_empty() || o.targets.len() > 2 {
        return Err("--targets takes `tern`, `reference` or both, once each".into());
    }
    Ok(o)
}

/// Runs `tern-bench smtp` with the arguments after `smtp`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let options = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tern-bench smtp: {e}\n{USAGE}");
            return 2;
        }
    };
    crate::local::run_benchmark("smtp", &options.dir, options.keep, run(&options))
}

/// Whether `program` is on the PATH.
fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian's `postfix` package (which ships `smtp-source`) when `smtp-source` is
/// missing.
fn ensure_smtp_source() -> Result<(), String> {
    if installed("smtp-source") {
        return Ok(());
    }
    eprintln!("tern-bench smtp: installing smtp-source (Debian package postfix)");
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq >/dev/null && apt-get install -y -qq postfix >/dev/null",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("running apt-get: {e}"))?;
    if !status.success() || !installed("smtp-source") {
        return Err("smtp-source is missing and installing postfix failed (needs root and Debian's package archive)".into());
    }
    Ok(())
}

/// The reference stack's script: `TERN_PEER_STACK`, else `shared/reference/peer-stack.sh` in
/// the first directory above the working directory, this binary or this crate that has one.
fn peer_stack() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TERN_PEER_STACK") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("TERN_PEER_STACK={} is not a file", path.display()))
        };
    }
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    starts
        .iter()
        .flat_map(|start| start.ancestors())
        .map(|dir| dir.join("shared/reference/peer-stack.sh"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "cannot find shared/reference/peer-stack.sh above the working directory; set TERN_PEER_STACK".into()
        })
}

// ------------------------------------------------------------------ the targets

/// A local Tern cluster, stopped when dropped.
struct TernCluster {
    local: LocalCluster,
    /// Node 0's SMTP listener.
    smtp: String,
}

impl TernCluster {
    async fn start(
        dir: PathBuf,
        base_port: u16,
        dns: std::net::SocketAddr,
    ) -> Result<TernCluster, String> {
        let local = LocalCluster::start(&dir, base_port, &[("TERN_DNS_SERVERS", dns.to_string())])?;
        let smtp = local
            .endpoints
            .nodes
            .first()
            .map(|n| n.smtp.clone())
            .filter(|s| !s.is_empty())
            .ok_or("endpoints.json lists no SMTP listener")?;
        let cluster = TernCluster { local, smtp };
        retry("creating the domain", async || {
            match cluster.local.admin.create_domain(TERN_DOMAIN).await {
                Err(e) if e.status() == Some(409) => Ok(()),
                other => other,
            }
        })
        .await?;
        Ok(cluster)
    }

    /// A new account for `local`, on the same shard as every other the benchmark makes.
    async fn account(&self, local: &str) -> Result<String, String> {
        let shard = self
            .local
            .assignment
            .shard_of(&format!("bench@{TERN_DOMAIN}"));
        let address = (0..10_000)
            .map(|n| format!("{local}-{n}@{TERN_DOMAIN}"))
            .find(|a| self.local.assignment.shard_of(a) == shard)
            .ok_or("no address on the benchmark's shard")?;
        retry(&format!("creating {address}"), async || {
            match self
                .local
                .admin
                .create_account(&address, "bench-password", None)
                .await
            {
                Err(e) if e.status() == Some(409) => Ok(()),
                other => other,
            }
        })
        .await?;
        Ok(address)
    }

    /// Checks that `address`'s INBOX holds `expected` messages, each Message-ID once.
    async fn verify(&self, address: &str, expected: usize) -> Result<(), String> {
        let messages = self
            .local
            .admin
            .all_messages(address, "INBOX")
            .await
            .map_err(|e| format!("listing {address}: {e}"))?;
        let ids: std::collections::BTreeSet<_> =
            messages.iter().map(|m| m.message_id.clone()).collect();
        if messages.len() != expected || ids.len() != expected {
            return Err(format!(
                "{address} holds {} messages ({} distinct Message-IDs) after {expected} were acknowledged",
                messages.len(),
                ids.len()
            ));
        }
        Ok(())
    }
}

/// The reference stack, stopped (`peer-stack.sh stop DIR`) when dropped.
struct Reference {
    script: PathBuf,
    dir: PathBuf,
}

impl Reference {
    fn start(script: PathBuf, dir: PathBuf) -> Result<Reference, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let reference = Reference { script, dir };
        // Into a file, not a pipe: the daemons it leaves running inherit it.
        let log_path = reference.dir.with_extension("log");
        let status = Command::new("bash")
            .arg(&reference.script)
            .arg("start")
            .arg(&reference.dir)
            .stdin(Stdio::null())
            .stdout(log_file(&log_path)?)
            .stderr(log_file(&log_path)?)
            .status()
            .map_err(|e| format!("running {}: {e}", reference.script.display()))?;
        if !status.success() {
            return Err(format!(
                "{} start failed: {}",
                reference.script.display(),
                std::fs::read_to_string(&log_path)
                    .unwrap_or_default()
                    .trim()
            ));
        }
        Ok(reference)
    }

    /// Messages delivered into any Maildir of the stack so far.
    fn delivered(&self) -> usize {
        let mut count = 0;
        let Ok(users) = std::fs::read_dir(self.dir.join("mail")) else {
            return 0;
        };
        for user in users.flatten() {
            for sub in ["new", "cur"] {
                if let Ok(files) = std::fs::read_dir(user.path().join("Maildir").join(sub)) {
                    count += files.count();
                }
            }
        }
        count
    }

    /// Waits until `target` messages are delivered, at most `within`.
    async fn wait_delivered(&self, target: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.delivered();
            if now >= target {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the reference delivered {now} of {target} messages within {:.0} s; see {}",
                    within.as_secs_f64(),
                    self.dir.join("postfix/maillog").display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

// ------------------------------------------------------------------ measuring

/// One `smtp-source` run: `sessions` parallel sessions, `messages` messages of `size` bytes of
/// payload, all to `recipient`, against `server`. Fails unless every message got `250`
/// (`smtp-source` exits with an error at the first other reply).
async fn smtp_source(
    server: &str,
    recipient: &str,
    sessions: usize,
    messages: usize,
    size: usize,
) -> Result<(), String> {
    let args: Vec<String> = [
        "-s",
        &sessions.to_string(),
        "-m",
        &messages.to_string(),
        "-l",
        &size.to_string(),
        "-M",
        CLIENT_NAME,
        "-f",
        SENDER,
        "-t",
        recipient,
        server,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let what = format!("smtp-source {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["--kill-after=5", &SMTP_SOURCE_TIMEOUT.as_secs().to_string()])
            .arg("smtp-source")
            .args(&args)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .map_err(|e| format!("{what}: {e}"))?
    .map_err(|e| format!("{what}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// One measured row.
struct Row {
    target: Target,
    sessions: usize,
    size: usize,
    messages: usize,
    seconds: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Sends to Tern and times it, with what the machine did meanwhile; checks what is stored.
async fn measure_tern(
    cluster: &TernCluster,
    host: &Host,
    sessions: usize,
    size: usize,
    messages: usize,
) -> Result<(f64, Option<Usage>), String> {
    let recipient = cluster
        .account(&format!(
            "s{sessions}-{}",
            size_label(size).replace(' ', "").to_lowercase()
        ))
        .await?;
    let (started, before) = (Instant::now(), host.sample());
    smtp_source(&cluster.smtp, &recipient, sessions, messages, size).await?;
    let seconds = started.elapsed().as_secs_f64();
    let usage = before.until(&host.sample());
    cluster.verify(&recipient, messages).await?;
    Ok((seconds, usage))
}

/// Sends to the reference and times it until the last message is in a Maildir, with what the
/// machine did meanwhile.
async fn measure_reference(
    reference: &Reference,
    host: &Host,
    sessions: usize,
    size: usize,
    messages: usize,
) -> Result<(f64, Option<Usage>), String> {
    let recipient = format!(
        "s{sessions}-{}@{REFERENCE_DOMAIN}",
        size_label(size).replace(' ', "").to_lowercase()
    );
    let before = reference.delivered();
    let (started, machine) = (Instant::now(), host.sample());
    smtp_source(REFERENCE_SMTP, &recipient, sessions, messages, size).await?;
    let within = Duration::from_secs(120) + Duration::from_millis(100 * messages as u64);
    reference.wait_delivered(before + messages, within).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((seconds, machine.until(&host.sample())))
}

async fn run(o: &Options) -> Result<(), String> {
    ensure_smtp_source()?;
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let mut tern = None;
    let mut reference = None;
    for target in &o.targets {
        match target {
            Target::Tern => {
                let dns = tern_agent::local_dns::start()?;
                let cluster = TernCluster::start(o.dir.join("tern"), o.base_port, dns).await?;
                let warm = cluster.account("warm-up").await?;
                smtp_source(&cluster.smtp, &warm, 8, WARM_UP, 1024).await?;
                tern = Some(cluster);
            }
            Target::Reference => {
                let r = Reference::start(peer_stack()?, o.dir.join("reference"))?;
                let before = r.delivered();
                smtp_source(
                    REFERENCE_SMTP,
                    &format!("warm-up@{REFERENCE_DOMAIN}"),
                    8,
                    WARM_UP,
                    1024,
                )
                .await?;
                r.wait_delivered(before + WARM_UP, Duration::from_secs(120))
                    .await?;
                reference = Some(r);
            }
        }
    }
    println!(
        "tern-bench smtp: smtp-source, a new connection per message, {} messages per row",
        o.messages
    );
    if let Some(t) = &tern {
        println!(
            "  tern:      3 agents, {} shards, replication factor 3; SMTP on node 0 ({}); 250 = committed on a majority;\n             SPF/DKIM/DMARC lookups answered NXDOMAIN by a local DNS responder",
            t.local.assignment.shards.len(),
            t.smtp
        );
    }
    if reference.is_some() {
        println!(
            "  reference: Postfix ({REFERENCE_SMTP}) -> LMTP -> Dovecot Maildir; timed until the last message is in the Maildir"
        );
    }
    println!();
    println!(
        "{:<10}  {:>8}  {:>7}  {:>8}  {:>8}  {:>10}  {:>8}  {:>7}  {:>12}",
        "TARGET",
        "SESSIONS",
        "SIZE",
        "MESSAGES",
        "SECONDS",
        "MESSAGES/S",
        "CPU BUSY",
        "IOWAIT",
        "DISK KIB/MSG"
    );
    let host = Host::for_dir(&o.dir);
    let mut rows = Vec::new();
    for &size in &o.sizes {
        for &sessions in &o.sessions {
            for target in &o.targets {
                let (seconds, usage) = match target {
                    Target::Tern => {
                        let cluster = tern.as_ref().expect("started above");
                        measure_tern(cluster, &host, sessions, size, o.messages).await?
                    }
                    Target::Reference => {
                        let r = reference.as_ref().expect("started above");
                        measure_reference(r, &host, sessions, size, o.messages).await?
                    }
                };
                let [busy, iowait, written] = host::columns(usage, o.messages as f64);
                let row = Row {
                    target: *target,
                    sessions,
                    size,
                    messages: o.messages,
                    seconds,
                };
                println!(
                    "{:<10}  {:>8}  {:>7}  {:>8}  {:>8.2}  {:>10.1}  {busy:>8}  {iowait:>7}  {written:>12}",
                    row.target.name(),
                    row.sessions,
                    size_label(row.size),
                    row.messages,
                    row.seconds,
                    row.rate()
                );
                rows.push(row);
            }
        }
    }
    if tern.is_some() && reference.is_some() {
        println!();
        println!(
            "{:>8}  {:>7}  {:>12}  {:>17}  {:>15}",
            "SESSIONS", "SIZE", "TERN MSG/S", "REFERENCE MSG/S", "TERN/REFERENCE"
        );
        for &size in &o.sizes {
            for &sessions in &o.sessions {
                let rate = |target: Target| {
                    rows.iter()
                        .find(|r| r.target == target && r.sessions == sessions && r.size == size)
                        .map(Row::rate)
                        .unwrap_or(0.0)
                };
                let (t, r) = (rate(Target::Tern), rate(Target::Reference));
                println!(
                    "{sessions:>8}  {:>7}  {t:>12.1}  {r:>17.1}  {:>14.2}x",
                    size_label(size),
                    t / r.max(1e-9)
                );
            }
        }
    }
    Ok(())
}

/// Runs `attempt` until it succeeds, retrying temporary errors (a shard electing) for 30 s.
async fn retry(
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<(), tern_agent::admin::ClientError>,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_temporary() && started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_are_parsed_and_bad_ones_refused() {
        let o = parse(&args(&[
            "--messages",
            "50",
            "--sessions",
            "1, 4",
            "--sizes",
            "2048",
            "--targets",
            "tern",
            "--base-port",
            "19300",
            "--keep",
        ]))
        .unwrap();
        assert_eq!(o.messages, 50);
        assert_eq!(o.sessions, vec![1, 4]);
        assert_eq!(o.sizes, vec![2048]);
        assert_eq!(o.targets, vec![Target::Tern]);
        assert_eq!(o.base_port, 19300);
        assert!(o.keep);
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.sessions, vec![8, 32]);
        assert_eq!(defaults.sizes, vec![1024, 65536]);
        assert_eq!(defaults.targets, vec![Target::Tern, Target::Reference]);
        for bad in [
            &["--messages"][..],
            &["--messages", "0"],
            &["--messages", "many"],
            &["--sessions", ""],
            &["--sessions", "0"],
            &["--sizes", "1,x"],
            &["--targets", "exim"],
            &["--frobnicate"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn sizes_are_labelled() {
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(65536), "64 KiB");
        assert_eq!(size_label(1000), "1000 B");
    }
}
