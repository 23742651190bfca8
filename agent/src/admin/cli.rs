//! `tern-agent admin …`: the recovery administrator's command line, a client of the admin API.
//!
//! Passwords never come from the command line (other users can read it in `ps`): the admin
//! password comes from a file, an account's from a file or standard input.

use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write as _};
use std::path::{Path, PathBuf};

use super::client::{AdminClient, ClientError};
use super::server::PASSWORD_FILE_VAR;
use super::{
    ADMIN_USER, AccountInfo, DomainInfo, MAX_MESSAGES, MessageInfo, NodeState, check_password,
    read_password_file,
};

/// The admin API's URL, e.g. `https://127.0.0.1:8443`.
pub const URL_VAR: &str = "TERN_ADMIN_URL";
/// The CA certificate (PEM) that signed the admin listener's certificate.
pub const CA_FILE_VAR: &str = "TERN_ADMIN_CA_FILE";

pub const USAGE: &str = "\
usage: tern-agent admin [--url URL] [--ca FILE | --insecure] [--password-file FILE]
                        [-o table|json] <command>

commands:
  domain add NAME
  domain list
  domain rm NAME
  account add ADDRESS [--quota BYTES] [--password-file FILE]
                          the account's password from FILE, else from standard input
  account list DOMAIN
  account rm ADDRESS
  account passwd ADDRESS [--password-file FILE]
                          the new password from FILE, else from standard input
  messages ADDRESS [--mailbox NAME] [--after UID] [--limit N]
                          the messages of a mailbox (default INBOX), by UID
  status                  this node's shards and their Raft state

options:
  --url URL               the admin API (default: $TERN_ADMIN_URL)
  --ca FILE               CA certificate (PEM) to verify the server (default: $TERN_ADMIN_CA_FILE)
  --insecure              do not verify the server's certificate
  --password-file FILE    the admin password (default: $TERN_ADMIN_PASSWORD_FILE)
  -o, --output FORMAT     table (default) or json

exit status: 0 done, 1 refused or failed (the reason is printed), 2 usage error
";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Verify the server against this CA certificate file.
    Ca(PathBuf),
    /// Accept any server certificate (`--insecure`).
    Insecure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    DomainAdd {
        name: String,
    },
    DomainList,
    DomainRm {
        name: String,
    },
    AccountAdd {
        address: String,
        quota_bytes: Option<u64>,
        /// The account's password; `None`: standard input.
        password_file: Option<PathBuf>,
    },
    AccountList {
        domain: String,
    },
    AccountRm {
        address: String,
    },
    AccountPasswd {
        address: String,
        /// The new password; `None`: standard input.
        password_file: Option<PathBuf>,
    },
    Messages {
        address: String,
        mailbox: String,
        after_uid: u32,
        /// `None`: every message, page by page.
        limit: Option<u32>,
    },
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub url: String,
    pub trust: Trust,
    /// The admin password's file.
    pub password_file: PathBuf,
    pub output: Output,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Help,
    Run(Invocation),
}

/// Runs `tern-agent admin ARGS`; returns the exit status.
pub fn main(args: &[&str]) -> i32 {
    let invocation = match parse(args, |k| std::env::var(k).ok()) {
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return 0;
        }
        Ok(Parsed::Run(invocation)) => invocation,
        Err(e) => {
            eprintln!("tern-agent admin: {e}\n\n{USAGE}");
            return 2;
        }
    };
    match run(invocation) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("tern-agent admin: {e}");
            1
        }
    }
}

/// Parses the arguments after `admin`; `env` looks up environment variables.
pub fn parse(args: &[&str], env: impl Fn(&str) -> Option<String>) -> Result<Parsed, String> {
    let mut url = None;
    let mut ca = None;
    let mut insecure = false;
    let mut admin_password_file = None;
    let mut output = Output::Table;
    let mut words = Vec::new();
    let mut quota_bytes = None;
    let mut password_file = None;
    let mut mailbox = None;
    let mut after_uid = None;
    let mut limit = None;

    let mut args = args.iter().copied();
    while let Some(arg) = args.next() {
        // `--name=value` or `--name value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline {
                Some(v) => Ok(v.to_owned()),
                None => args
                    .next()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{name} needs {what}")),
            }
        };
        let before_command = words.is_empty();
        match name {
            "-h" | "--help" | "help" if before_command => return Ok(Parsed::Help),
            "--password" | "-p" | "--new-password" | "--pass" => {
                return Err(format!(
                    "{name}: passwords are never taken from the command line; \
                     use --password-file FILE or standard input"
                ));
            }
            "--url" if before_command => url = Some(value("a URL")?),
            "--ca" if before_command => ca = Some(PathBuf::from(value("a file")?)),
            "--insecure" if before_command && inline.is_none() => insecure = true,
            "--password-file" if before_command => {
                admin_password_file = Some(PathBuf::from(value("a file")?));
            }
            "--password-file" => password_file = Some(PathBuf::from(value("a file")?)),
            "--quota" => {
                let v = value("a number of bytes")?;
                quota_bytes = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("--quota {v:?}: expected a number of bytes"))?,
                );
            }
            "--mailbox" => mailbox = Some(value("a mailbox name")?),
            "--after" => {
                let v = value("a UID")?;
                after_uid = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("--after {v:?}: expected a UID"))?,
                );
            }
            "--limit" => {
                let v = value("a number")?;
                limit = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_MESSAGES).contains(n))
                        .ok_or_else(|| {
                            format!("--limit {v:?}: expected a number from 1 to {MAX_MESSAGES}")
                        })?,
                );
            }
            "-o" | "--output" => {
                output = match value("a format")?.as_str() {
                    "json" => Output::Json,
                    "table" | "wide" => Output::Table,
                    other => return Err(format!("unknown output format {other:?}")),
                }
            }
            _ if arg.starts_with('-') && arg.len() > 1 => {
                return Err(format!("unknown option {arg}"));
            }
            _ => words.push(arg),
        }
    }

    let command = match words.as_slice() {
        ["domain", "add", name] => Command::DomainAdd {
            name: (*name).into(),
        },
        ["domain", "list" | "ls"] => Command::DomainList,
        ["domain", "rm" | "delete", name] => Command::DomainRm {
            name: (*name).into(),
        },
        ["account", "add", address] => Command::AccountAdd {
            address: (*address).into(),
            quota_bytes: quota_bytes.take(),
            password_file: password_file.take(),
        },
        ["account", "list" | "ls", domain] => Command::AccountList {
            domain: (*domain).into(),
        },
        ["account", "rm" | "delete", address] => Command::AccountRm {
            address: (*address).into(),
        },
        ["account", "passwd", address] => Command::AccountPasswd {
            address: (*address).into(),
            password_file: password_file.take(),
        },
        ["messages", address] => Command::Messages {
            address: (*address).into(),
            mailbox: mailbox.take().unwrap_or_else(|| "INBOX".into()),
            after_uid: after_uid.take().unwrap_or(0),
            limit: limit.take(),
        },
        ["status"] => Command::Status,
        [] => return Err("no command".into()),
        other => return Err(format!("unknown command {:?}", other.join(" "))),
    };
    if quota_bytes.is_some() {
        return Err("--quota belongs to `account add`".into());
    }
    if mailbox.is_some() || after_uid.is_some() || limit.is_some() {
        return Err("--mailbox, --after and --limit belong to `messages`".into());
    }
    if password_file.is_some() {
        return Err(
            "--password-file after the command is the account's password: only for \
             `account add` and `account passwd` (the admin password file goes before the command)"
                .into(),
        );
    }

    let url = url
        .or_else(|| env(URL_VAR))
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("no admin API URL: give --url or set {URL_VAR}"))?;
    let trust = match (insecure, ca) {
        (true, Some(_)) => return Err("--ca and --insecure exclude each other".into()),
        (true, None) => Trust::Insecure,
        (false, Some(ca)) => Trust::Ca(ca),
        (false, None) => match env(CA_FILE_VAR).filter(|f| !f.is_empty()) {
            Some(ca) => Trust::Ca(ca.into()),
            None => {
                return Err(format!(
                    "no CA to verify the server: give --ca FILE, set {CA_FILE_VAR}, or --insecure"
                ));
            }
        },
    };
    let password_file = admin_password_file
        .or_else(|| {
            env(PASSWORD_FILE_VAR)
                .filter(|f| !f.is_empty())
                .map(PathBuf::from)
        })
        .ok_or_else(|| {
            format!("no admin password: give --password-file FILE or set {PASSWORD_FILE_VAR}")
        })?;
    Ok(Parsed::Run(Invocation {
        url,
        trust,
        password_file,
        output,
        command,
    }))
}

/// Reads the secrets, sends the request, and returns what to print.
pub fn run(invocation: Invocation) -> Result<String, String> {
    let admin_password =
        read_password_file(&invocation.password_file).map_err(|e| e.to_string())?;
    let client = match &invocation.trust {
        Trust::Ca(file) => {
            let ca = std::fs::read(file)
                .map_err(|e| format!("cannot read the CA file {}: {e}", file.display()))?;
            AdminClient::new(&invocation.url, ADMIN_USER, &admin_password, Some(&ca))
        }
        Trust::Insecure => AdminClient::insecure(&invocation.url, ADMIN_USER, &admin_password),
    }
    .map_err(|e| e.to_string())?;
    // Read before connecting, so a slow typist does not hold a connection open.
    let new_password = match &invocation.command {
        Command::AccountAdd {
            address,
            password_file,
            ..
        }
        | Command::AccountPasswd {
            address,
            password_file,
        } => Some(account_password(address, password_file.as_deref())?),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(execute(
            &client,
            &invocation.command,
            invocation.output,
            new_password.as_deref(),
        ))
        .map_err(|e| describe(&e))
}

fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Refused {
            retry_after: Some(secs),
            ..
        } if e.is_temporary() => format!("{e}; temporary, retry in {secs} s"),
        _ if e.is_temporary() => format!("{e}; temporary, retry later"),
        _ => e.to_string(),
    }
}

fn account_password(address: &str, file: Option<&Path>) -> Result<String, String> {
    let password = match file {
        Some(file) => read_password_file(file).map_err(|e| {
            // The error names "admin password file"; say whose it is.
            format!("account password: {e}")
        })?,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("password for {address} (shown as typed): ");
                let _ = std::io::stderr().flush();
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
            strip_newline(line)
        }
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    check_password(&password).map_err(|e| e.to_string())?;
    Ok(password)
}

fn strip_newline(mut line: String) -> String {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    line
}

async fn execute(
    client: &AdminClient,
    command: &Command,
    output: Output,
    new_password: Option<&str>,
) -> Result<String, ClientError> {
    let password = || new_password.unwrap_or_default();
    Ok(match command {
        Command::DomainAdd { name } => {
            client.create_domain(name).await?;
            format!("domain {name} added\n")
        }
        Command::DomainList => {
            let domains = client.list_domains().await?;
            match output {
                Output::Json => json(&domains),
                Output::Table => domains_table(&domains),
            }
        }
        Command::DomainRm { name } => {
            client.delete_domain(name).await?;
            format!("domain {name} removed\n")
        }
        Command::AccountAdd {
            address,
            quota_bytes,
            ..
        } => {
            client
                .create_account(address, password(), *quota_bytes)
                .await?;
            format!("account {address} added\n")
        }
        Command::AccountList { domain } => {
            let accounts = client.list_accounts(domain).await?;
            match output {
                Output::Json => json(&accounts),
                Output::Table => accounts_table(&accounts),
            }
        }
        Command::AccountRm { address } => {
            client.delete_account(address).await?;
            format!("account {address} removed\n")
        }
        Command::AccountPasswd { address, .. } => {
            client.set_password(address, password()).await?;
            format!("password of {address} changed\n")
        }
        Command::Messages {
            address,
            mailbox,
            after_uid,
            limit,
        } => {
            let messages = match limit {
                Some(limit) => {
                    client
                        .list_messages(address, mailbox, *after_uid, *limit)
                        .await?
                }
                None if *after_uid == 0 => client.all_messages(address, mailbox).await?,
                None => {
                    client
                        .list_messages(address, mailbox, *after_uid, MAX_MESSAGES)
                        .await?
                }
            };
            match output {
                Output::Json => json(&messages),
                Output::Table => messages_table(&messages),
            }
        }
        Command::Status => {
            let node = client.node_state().await?;
            match output {
                Output::Json => json(&node),
                Output::Table => node_table(&node),
            }
        }
    })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
    s.push('\n');
    s
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{cell:<w$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn ids(v: &[u64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn domains_table(domains: &[DomainInfo]) -> String {
    let rows: Vec<Vec<String>> = domains
        .iter()
        .map(|d| {
            let created = jiff::Timestamp::from_second(d.created)
                .map_or_else(|_| d.created.to_string(), |t| t.to_string());
            vec![d.name.clone(), created]
        })
        .collect();
    table(&["NAME", "CREATED"], &rows)
}

fn accounts_table(accounts: &[AccountInfo]) -> String {
    let rows: Vec<Vec<String>> = accounts
        .iter()
        .map(|a| {
            vec![
                a.address.clone(),
                opt(a.quota_bytes),
                a.used_bytes.to_string(),
                if a.aliases.is_empty() {
                    "-".into()
                } else {
                    a.aliases.join(",")
                },
            ]
        })
        .collect();
    table(&["ADDRESS", "QUOTA", "USED", "ALIASES"], &rows)
}

fn messages_table(messages: &[MessageInfo]) -> String {
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|m| {
            let date = jiff::Timestamp::from_millisecond(m.internal_date).map_or_else(
                |_| m.internal_date.to_string(),
                |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            );
            let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            vec![
                m.uid.to_string(),
                date,
                m.size.to_string(),
                text(&m.message_id),
                text(&m.from),
                text(&m.subject),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no messages\n".into();
    }
    table(
        &["UID", "RECEIVED", "SIZE", "MESSAGE-ID", "FROM", "SUBJECT"],
        &rows,
    )
}

fn node_table(node: &NodeState) -> String {
    let rows: Vec<Vec<String>> = node
        .shards
        .iter()
        .map(|s| {
            vec![
                s.shard.to_string(),
                s.role.clone(),
                s.term.to_string(),
                opt(s.leader),
                opt(s.last_log_index),
                opt(s.committed),
                opt(s.applied),
                ids(&s.voters),
                ids(&s.learners),
            ]
        })
        .collect();
    let mut out = format!("node {} ({})\n", node.node_id, node.name);
    if rows.is_empty() {
        out.push_str("no shards\n");
        return out;
    }
    out.push_str(&table(
        &[
            "SHARD",
            "ROLE",
            "TERM",
            "LEADER",
            "LAST-LOG",
            "COMMITTED",
            "APPLIED",
            "VOTERS",
            "LEARNERS",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::super::ShardState;
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn run_of(args: &[&str], vars: &[(&str, &str)]) -> Result<Invocation, String> {
        match parse(args, env(vars))? {
            Parsed::Run(i) => Ok(i),
            Parsed::Help => Err("help".into()),
        }
    }

    const GLOBALS: &[&str] = &[
        "--url",
        "https://127.0.0.1:8443",
        "--ca",
        "/ca.pem",
        "--password-file",
        "/admin",
    ];

    fn with_globals(rest: &[&'static str]) -> Vec<&'static str> {
        GLOBALS.iter().chain(rest).copied().collect()
    }

    #[test]
    fn every_command_parses() {
        let cases: Vec<(Vec<&str>, Command)> = vec![
            (
                vec!["domain", "add", "example.org"],
                Command::DomainAdd {
                    name: "example.org".into(),
                },
            ),
            (vec!["domain", "list"], Command::DomainList),
            (
                vec!["domain", "rm", "example.org"],
                Command::DomainRm {
                    name: "example.org".into(),
                },
            ),
            (
                vec!["account", "add", "a@example.org", "--quota", "1000"],
                Command::AccountAdd {
                    address: "a@example.org".into(),
                    quota_bytes: Some(1000),
                    password_file: None,
                },
            ),
            (
                vec!["account", "add", "--password-file=/pw", "a@example.org"],
                Command::AccountAdd {
                    address: "a@example.org".into(),
                    quota_bytes: None,
                    password_file: Some("/pw".into()),
                },
            ),
            (
                vec!["account", "list", "example.org"],
                Command::AccountList {
                    domain: "example.org".into(),
                },
            ),
            (
                vec!["account", "rm", "a@example.org"],
                Command::AccountRm {
                    address: "a@example.org".into(),
                },
            ),
            (
                vec!["account", "passwd", "a@example.org"],
                Command::AccountPasswd {
                    address: "a@example.org".into(),
                    password_file: None,
                },
            ),
            (vec!["status"], Command::Status),
            (
                vec!["messages", "a@example.org"],
                Command::Messages {
                    address: "a@example.org".into(),
                    mailbox: "INBOX".into(),
                    after_uid: 0,
                    limit: None,
                },
            ),
            (
                vec![
                    "messages",
                    "a@example.org",
                    "--mailbox",
                    "Sent",
                    "--after=7",
                    "--limit",
                    "20",
                ],
                Command::Messages {
                    address: "a@example.org".into(),
                    mailbox: "Sent".into(),
                    after_uid: 7,
                    limit: Some(20),
                },
            ),
        ];
        for (args, want) in cases {
            let inv = run_of(&with_globals(&args), &[]).unwrap();
            assert_eq!(inv.command, want, "{args:?}");
            assert_eq!(inv.url, "https://127.0.0.1:8443");
            assert_eq!(inv.trust, Trust::Ca("/ca.pem".into()));
            assert_eq!(inv.password_file, PathBuf::from("/admin"));
            assert_eq!(inv.output, Output::Table);
        }
    }

    #[test]
    fn defaults_come_from_the_environment() {
        let vars = [
            (URL_VAR, "https://10.0.0.1:8443"),
            (CA_FILE_VAR, "/etc/tern/ca.pem"),
            (PASSWORD_FILE_VAR, "/etc/tern/admin/password"),
        ];
        let inv = run_of(&["status", "-o", "json"], &vars).unwrap();
        assert_eq!(inv.url, "https://10.0.0.1:8443");
        assert_eq!(inv.trust, Trust::Ca("/etc/tern/ca.pem".into()));
        assert_eq!(inv.password_file, PathBuf::from("/etc/tern/admin/password"));
        assert_eq!(inv.output, Output::Json);
        // Flags win over the environment; --insecure overrides an inherited CA file.
        let inv = run_of(
            &[
                "--url=https://h:1",
                "--insecure",
                "-o",
                "json",
                "domain",
                "list",
            ],
            &vars,
        )
        .unwrap();
        assert_eq!(inv.url, "https://h:1");
        assert_eq!(inv.trust, Trust::Insecure);
        assert_eq!(inv.output, Output::Json);
    }

    #[test]
    fn passwords_are_never_taken_from_argv() {
        for args in [
            with_globals(&["account", "add", "a@example.org", "--password", "hunter22"]),
            with_globals(&["account", "add", "a@example.org", "--password=hunter22"]),
            with_globals(&["account", "passwd", "a@example.org", "-p", "hunter22"]),
            vec!["--password", "hunter22", "status"],
        ] {
            let err = run_of(&args, &[]).unwrap_err();
            assert!(
                err.contains("never taken from the command line"),
                "{args:?}: {err}"
            );
        }
        // An extra word is not a password either.
        let err = run_of(
            &with_globals(&["account", "add", "a@example.org", "hunter22"]),
            &[],
        )
        .unwrap_err();
        assert!(err.contains("unknown command"), "{err}");
        // No parsed command has a field that could hold a password.
        let inv = run_of(&with_globals(&["account", "passwd", "a@example.org"]), &[]).unwrap();
        assert!(!format!("{inv:?}").contains("hunter"));
    }

    #[test]
    fn usage_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["status"], "no admin API URL"),
            (&["--url", "https://h:1", "status"], "no CA"),
            (
                &["--url", "https://h:1", "--insecure", "status"],
                "no admin password",
            ),
            (
                &[
                    "--url",
                    "u",
                    "--ca",
                    "c",
                    "--insecure",
                    "--password-file",
                    "p",
                    "status",
                ],
                "exclude each other",
            ),
            (&["--url"], "--url needs a URL"),
            (&["--frobnicate", "status"], "unknown option"),
            (&["domain", "explode"], "unknown command"),
            (
                &[
                    "--url",
                    "u",
                    "--insecure",
                    "--password-file",
                    "p",
                    "status",
                    "--limit",
                    "5",
                ],
                "belong to `messages`",
            ),
            (&["messages", "a@b", "--limit", "0"], "1 to 1000"),
            (&["messages", "a@b", "--after", "x"], "expected a UID"),
            (&[], "no command"),
            (
                &[
                    "--url",
                    "u",
                    "--insecure",
                    "--password-file",
                    "p",
                    "domain",
                    "add",
                    "x",
                    "--quota",
                    "5",
                ],
                "--quota belongs",
            ),
            (
                &[
                    "--url",
                    "u",
                    "--insecure",
                    "--password-file",
                    "p",
                    "account",
                    "add",
                    "a@b",
                    "--quota",
                    "lots",
                ],
                "expected a number",
            ),
            (
                &[
                    "--url",
                    "u",
                    "--insecure",
                    "--password-file",
                    "p",
                    "status",
                    "--password-file",
                    "q",
                ],
                "account's password",
            ),
            (&["-o", "yaml", "status"], "unknown output format"),
        ];
        for (args, want) in cases {
            let err = run_of(args, &[]).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        assert_eq!(parse(&["--help"], env(&[])), Ok(Parsed::Help));
        assert_eq!(parse(&[], env(&[])), Err("no command".into()));
    }

    #[test]
    fn exit_status_two_on_usage_error() {
        assert_eq!(main(&["domain", "explode"]), 2);
    }

    #[test]
    fn status_table_has_one_row_per_shard() {
        let node = NodeState {
            node_id: 2,
            name: "mail-default-1".into(),
            shards: vec![
                ShardState {
                    shard: 0,
                    role: "leader".into(),
                    term: 7,
                    leader: Some(2),
                    last_log_index: Some(1200),
                    committed: Some(1200),
                    applied: Some(1199),
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                },
                ShardState {
                    shard: 1,
                    role: "candidate".into(),
                    term: 12,
                    leader: None,
                    last_log_index: None,
                    committed: None,
                    applied: None,
                    voters: vec![2, 3, 5],
                    learners: vec![],
                },
            ],
        };
        let out = node_table(&node);
        let want = "\
node 2 (mail-default-1)
SHARD  ROLE       TERM  LEADER  LAST-LOG  COMMITTED  APPLIED  VOTERS  LEARNERS
0      leader     7     2       1200      1200       1199     1,2,3   4
1      candidate  12    -       -         -          -        2,3,5   -
";
        assert_eq!(out, want);
    }

    #[test]
    fn domain_table_shows_times() {
        let out = domains_table(&[DomainInfo {
            name: "example.org".into(),
            created: 1_700_000_000,
        }]);
        assert_eq!(
            out,
            "NAME         CREATED\nexample.org  2023-11-14T22:13:20Z\n"
        );
    }

    #[test]
    fn message_table_shows_ids_and_dashes_for_missing_fields() {
        let out = messages_table(&[MessageInfo {
            uid: 3,
            size: 512,
            internal_date: 1_700_000_000_123,
            flags: vec![],
            message_id: Some("<m1@example.test>".into()),
            from: None,
            subject: Some("hello".into()),
        }]);
        assert_eq!(
            out,
            "UID  RECEIVED              SIZE  MESSAGE-ID         FROM  SUBJECT\n\
             3    2023-11-14T22:13:20Z  512   <m1@example.test>  -     hello\n"
        );
        assert_eq!(messages_table(&[]), "no messages\n");
    }

    #[test]
    fn newline_stripping() {
        assert_eq!(strip_newline("pw\n".into()), "pw");
        assert_eq!(strip_newline("pw\r\n".into()), "pw");
        assert_eq!(strip_newline("pw".into()), "pw");
    }
}
