//! Third-party IMAP clients against a real cluster of three `tern-agent run` processes (see
//! `common`), each over implicit TLS (imaps) with the certificate checked against the
//! cluster's CA:
//!
//! - **mbsync** (isync) syncs INBOX both ways with a local Maildir: mail delivered by SMTP
//!   appears in the Maildir; a message written into the Maildir, a flag set there, mail
//!   delivered later and a flag set on the server all reach the other side.
//! - **fetchmail** fetches into an MDA without `keep`: the messages arrive as files and are
//!   expunged on the server.
//! - **mutt** in batch mode (under `script`, which gives it the terminal it insists on)
//!   copies the mailbox into a local mbox and flags every message.
//!
//! Each client also runs once trusting another CA and must get nothing: proof that it
//! verifies the certificate. What is on the server is checked with Python's imaplib.
//!
//! The clients come from Debian packages (`scripts/test.sh` installs them); without them the
//! test is skipped on a developer's machine and fails in CI.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Cluster, Options, PY_MAIL_CLIENT, create_account_retrying, create_domain_retrying, run,
    strings, tools,
};
use tern_agent::pki::LocalPki;

const DOMAIN: &str = "example.test";
const PASSWORD: &str = "correct horse battery staple";

/// The Python side after [`PY_MAIL_CLIENT`]: delivery by SMTP, and the server's view of
/// INBOX over imaps.
const CLIENT_MODES: &str = r#"
import json, re

if mode == "deliver":
    smtp, to = sys.argv[3:5]
    for subject in sys.argv[5:]:
        deliver(smtp, to, subject)
    print("OK delivered")

elif mode == "list":
    # INBOX as JSON: [{"uid": 1, "flags": ["\\Seen"], "subject": "..."}].
    imap, user, password = sys.argv[3:6]
    m = login(imap, user, password, implicit_tls=True)
    typ, data = m.select("INBOX", readonly=True)
    assert typ == "OK", (typ, data)
    found = []
    if int(data[0]) > 0:
        typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", (typ, data)
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta = item[0].decode()
            uid = int(re.search(r"UID (\d+)", meta).group(1))
            flags = re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split()
            subject = re.search(rb"Subject: ([^\r\n]*)", item[1]).group(1).decode()
            found.append({"uid": uid, "flags": flags, "subject": subject})
    m.logout()
    print("OK", json.dumps(found))

elif mode == "flag":
    imap, user, password, subject, flag = sys.argv[3:8]
    m = login(imap, user, password, implicit_tls=True)
    m.select("INBOX")
    typ, data = m.uid("SEARCH", "HEADER", "Subject", subject)
    uids = data[0].split()
    assert typ == "OK" and len(uids) == 1, (typ, data)
    typ, data = m.uid("STORE", uids[0], "+FLAGS", f"({flag})")
    assert typ == "OK", (typ, data)
    m.logout()
    print("OK flagged")

else:
    print("FAIL unknown mode", mode)
    sys.exit(1)
"#;

/// The programs this test runs, with a shell check for each.
const TOOLS: [(&str, &str); 5] = [
    ("python3", "python3 -c 'import imaplib, smtplib, ssl'"),
    ("mbsync", "command -v mbsync"),
    ("fetchmail", "command -v fetchmail"),
    ("mutt", "command -v mutt"),
    ("script", "command -v script"),
];

/// A message in INBOX as the server reports it.
#[derive(Debug, serde::Deserialize)]
struct Listed {
    flags: Vec<String>,
    subject: String,
}

/// Runs one step of the client ([`PY_MAIL_CLIENT`] and [`CLIENT_MODES`]); returns what
/// followed `OK`.
async fn client(cluster: &Cluster, mode: &str, args: &[&str]) -> String {
    let script = format!("{PY_MAIL_CLIENT}{CLIENT_MODES}");
    cluster.python_step(&script, mode, args).await
}

/// INBOX of `user` through node `node`.
async fn inbox(cluster: &Cluster, node: usize, user: &str) -> Vec<Listed> {
    let imaps = cluster.mail_addr(node, "imaps").to_string();
    let json = client(cluster, "list", &[&imaps, user, PASSWORD]).await;
    serde_json::from_str(&json).unwrap_or_else(|e| cluster.fail(&format!("list: {e}: {json}")))
}

async fn deliver(cluster: &Cluster, node: usize, to: &str, subjects: &[&str]) {
    let smtp = cluster.mail_addr(node, "smtp").to_string();
    let mut args = vec![smtp.as_str(), to];
    args.extend_from_slice(subjects);
    client(cluster, "deliver", &args).await;
}

fn subjects(listed: &[Listed]) -> BTreeSet<String> {
    listed.iter().map(|m| m.subject.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The `Subject:` of a stored message.
fn subject_of(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .map(|s| s.trim().to_owned())
}

/// A Maildir folder's messages: `(file path, subject, flags after ":2,")`.
fn maildir(folder: &Path) -> Vec<(PathBuf, String, String)> {
    let mut found = vec![];
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(folder.join(sub)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let flags = name
                .split_once(":2,")
                .map(|(_, f)| f.to_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path).unwrap();
            let subject = subject_of(&text).unwrap_or_default();
            found.push((path, subject, flags));
        }
    }
    found
}

/// A CA that did not sign the cluster's certificates: a client trusting only it must refuse
/// the listener.
fn other_ca(dir: &Path) -> PathBuf {
    let path = dir.join("other-ca.crt");
    write(&path, &LocalPki::generate("elsewhere").unwrap().ca_cert_pem);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbsync_fetchmail_and_mutt_over_imaps() {
    if !tools("imap_clients", &TOOLS) {
        return;
    }
    let cluster = Cluster::start(3, Options::default()).await;
    let admin = cluster.admin(0);
    cluster.check(
        create_domain_retrying(&admin, DOMAIN, Duration::from_secs(30)).await,
        "creating the domain",
    );
    for user in ["sync", "fetch", "mutt"] {
        let address = format!("{user}@{DOMAIN}");
        cluster.check(
            create_account_retrying(&admin, &address, PASSWORD, Duration::from_secs(30)).await,
            &format!("creating {address}"),
        );
    }
    let work = cluster.dir().join("clients");
    std::fs::create_dir_all(&work).unwrap();
    let other = other_ca(&work);

    mbsync_both_ways(&cluster, &work, &other).await;
    fetchmail_fetches_and_expunges(&cluster, &work, &other).await;
    mutt_copies_and_flags(&cluster, &work, &other).await;
}

fn mbsync_config(cluster: &Cluster, node: usize, ca: &Path, maildir: &Path) -> String {
    let imaps = cluster.mail_addr(node, "imaps");
    format!(
        "IMAPAccount tern\n\
         Host {ip}\n\
         Port {port}\n\
         User sync@{DOMAIN}\n\
         Pass \"{PASSWORD}\"\n\
         SSLType IMAPS\n\
         SystemCertificates no\n\
         CertificateFile {ca}\n\
         \n\
         IMAPStore remote\n\
         Account tern\n\
         \n\
         MaildirStore local\n\
         Path {root}/\n\
         Inbox {root}/INBOX\n\
         \n\
         Channel inbox\n\
         Far :remote:INBOX\n\
         Near :local:INBOX\n\
         Create Both\n\
         Expunge Both\n\
         SyncState {root}/.state/\n",
        ip = imaps.ip(),
        port = imaps.port(),
        ca = ca.display(),
        root = maildir.display(),
    )
}

async fn mbsync(config: &Path) -> (i32, String) {
    run(
        "mbsync",
        strings(&["-c", &config.display().to_string(), "-V", "inbox"]),
        None,
    )
    .await
}

/// mbsync between a Maildir and node 1: both directions, messages and flags.
async fn mbsync_both_ways(cluster: &Cluster, work: &Path, other: &Path) {
    let user = format!("sync@{DOMAIN}");
    deliver(cluster, 0, &user, &["sync-1", "sync-2"]).await;

    // Trusting another CA: refused, nothing synced.
    let root = work.join("maildir");
    std::fs::create_dir_all(root.join(".state")).unwrap();
    let bad = work.join("mbsyncrc-other-ca");
    write(&bad, &mbsync_config(cluster, 1, other, &root));
    let (status, out) = mbsync(&bad).await;
    if status == 0 || !maildir(&root.join("INBOX")).is_empty() {
        cluster.fail(&format!(
            "mbsync trusting another CA: exit {status}, synced anyway: {out}"
        ));
    }

    // Server → Maildir.
    let config = work.join("mbsyncrc");
    write(
        &config,
        &mbsync_config(cluster, 1, &cluster.ca_file(), &root),
    );
    let (status, out) = mbsync(&config).await;
    let local = maildir(&root.join("INBOX"));
    let names: Vec<&String> = local.iter().map(|(_, s, _)| s).collect();
    if status != 0 || local.len() != 2 {
        cluster.fail(&format!(
            "mbsync, first run: exit {status}, Maildir holds {names:?}: {out}"
        ));
    }
    assert_eq!(
        local
            .iter()
            .map(|(_, s, _)| s.clone())
            .collect::<BTreeSet<_>>(),
        set(&["sync-1", "sync-2"])
    );

    // Maildir → server: a new message, and \Flagged on sync-1 (Maildir flag `F`, flags kept
    // in ASCII order).
    write(
        &root.join("INBOX/new/written-locally"),
        "From: me@local.test\r\nTo: sync@example.test\r\nSubject: from-maildir\r\n\
         Message-ID: <from-maildir@local.test>\r\n\r\nwritten into the Maildir\r\n",
    );
    let (path, _, flags) = local.iter().find(|(_, s, _)| s == "sync-1").unwrap();
    let mut flags: Vec<char> = flags.chars().chain(['F']).collect();
    flags.sort_unstable();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let base = name.split_once(":2,").map_or(name.as_str(), |(b, _)| b);
    let flagged = root
        .join("INBOX/cur")
        .join(format!("{base}:2,{}", flags.iter().collect::<String>()));
    std::fs::rename(path, &flagged).unwrap();
    // Server side, through other nodes: new mail, and \Answered on sync-2.
    deliver(cluster, 2, &user, &["sync-3"]).await;
    let imaps2 = cluster.mail_addr(2, "imaps").to_string();
    client(
        cluster,
        "flag",
        &[&imaps2, &user, PASSWORD, "sync-2", "\\Answered"],
    )
    .await;

    let (status, out) = mbsync(&config).await;
    if status != 0 {
        cluster.fail(&format!("mbsync, second run: exit {status}: {out}"));
    }
    let server = inbox(cluster, 2, &user).await;
    assert_eq!(
        subjects(&server),
        set(&["sync-1", "sync-2", "sync-3", "from-maildir"]),
        "{server:?}"
    );
    let on_server = |s: &str| server.iter().find(|m| m.subject == s).unwrap();
    assert!(
        on_server("sync-1").flags.iter().any(|f| f == "\\Flagged"),
        "the Maildir's F reached the server: {server:?}"
    );
    let local = maildir(&root.join("INBOX"));
    assert_eq!(
        local
            .iter()
            .map(|(_, s, _)| s.clone())
            .collect::<BTreeSet<_>>(),
        set(&["sync-1", "sync-2", "sync-3", "from-maildir"]),
        "{local:?}"
    );
    let (_, _, flags) = local.iter().find(|(_, s, _)| s == "sync-2").unwrap();
    assert!(
        flags.contains('R'),
        "the server's \\Answered reached the Maildir as R: {local:?}"
    );
    // Each message once on each side: nothing duplicated by the two runs.
    assert_eq!((local.len(), server.len()), (4, 4), "{local:?} {server:?}");
    eprintln!(
        "mbsync: {} messages in step both ways ({} on the server)",
        local.len(),
        server.len()
    );
}

fn fetchmail_config(cluster: &Cluster, ca: &Path, mda: &Path) -> String {
    let imaps = cluster.mail_addr(2, "imaps");
    // fetchmail matches the certificate's DNS names only (not IP-address SANs), so the
    // name it expects is given; the chain is still checked against `sslcertfile`.
    format!(
        "set no bouncemail\n\
         poll {ip} protocol IMAP port {port}\n  \
           user \"fetch@{DOMAIN}\" password \"{PASSWORD}\"\n  \
           ssl sslcertck sslcommonname \"localhost\" sslcertfile \"{ca}\"\n  \
           fetchall nokeep\n  \
           mda \"{mda}\"\n",
        ip = imaps.ip(),
        port = imaps.port(),
        ca = ca.display(),
        mda = mda.display(),
    )
}

async fn fetchmail(work: &Path, config: &Path) -> (i32, String) {
    let home = format!("HOME={}", work.display());
    run(
        "env",
        strings(&[
            &home,
            "fetchmail",
            "--nosyslog",
            "-v",
            "-f",
            &config.display().to_string(),
            "-i",
            &work.join("fetchids").display().to_string(),
        ]),
        None,
    )
    .await
}

/// fetchmail from node 2 into files, without keep: delivered, then gone from the server.
async fn fetchmail_fetches_and_expunges(cluster: &Cluster, work: &Path, other: &Path) {
    let user = format!("fetch@{DOMAIN}");
    deliver(cluster, 0, &user, &["fetch-1", "fetch-2"]).await;
    let out_dir = work.join("fetched");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mda = work.join("mda.sh");
    write(
        &mda,
        &format!(
            "#!/bin/sh\nf=$(mktemp -p '{}' msg.XXXXXX) && cat > \"$f\"\n",
            out_dir.display()
        ),
    );
    std::fs::set_permissions(&mda, std::fs::Permissions::from_mode(0o755)).unwrap();
    // fetchmail refuses a run control file that others can read.
    let private = |path: &Path, text: &str| {
        write(path, text);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };

    let bad = work.join("fetchmailrc-other-ca");
    private(&bad, &fetchmail_config(cluster, other, &mda));
    let (status, out) = fetchmail(work, &bad).await;
    let fetched = std::fs::read_dir(&out_dir).unwrap().count();
    if status == 0 || fetched != 0 {
        cluster.fail(&format!(
            "fetchmail trusting another CA: exit {status}, {fetched} fetched: {out}"
        ));
    }

    let config = work.join("fetchmailrc");
    private(
        &config,
        &fetchmail_config(cluster, &cluster.ca_file(), &mda),
    );
    let (status, out) = fetchmail(work, &config).await;
    if status != 0 {
        cluster.fail(&format!("fetchmail: exit {status}: {out}"));
    }
    let mut got = BTreeSet::new();
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let subject = subject_of(&text).unwrap_or_default();
        assert!(
            text.contains(&format!("{subject} body")),
            "the body came with the header: {text}"
        );
        got.insert(subject);
    }
    assert_eq!(got, set(&["fetch-1", "fetch-2"]), "{out}");
    let left = inbox(cluster, 1, &user).await;
    assert!(
        left.is_empty(),
        "fetched without keep, so expunged: {left:?}"
    );
    // Nothing left, so a second poll finds nothing (fetchmail's exit 1: no mail).
    let (status, out) = fetchmail(work, &config).await;
    if status != 1 {
        cluster.fail(&format!("fetchmail, second poll: exit {status}: {out}"));
    }
    eprintln!("fetchmail: {} messages fetched and expunged", got.len());
}

fn muttrc(ca: &Path, work: &Path) -> String {
    format!(
        "set imap_user=\"mutt@{DOMAIN}\"\n\
         set imap_pass=\"{PASSWORD}\"\n\
         set ssl_force_tls=yes\n\
         set ssl_verify_host=yes\n\
         set ssl_ca_certificates_file=\"{ca}\"\n\
         set certificate_file=\"{work}/mutt-accepted-certificates\"\n\
         set header_cache=\"\"\n\
         set message_cachedir=\"\"\n\
         set mbox_type=mbox\n\
         set confirmcreate=no\n\
         set confirmappend=no\n\
         set quit=yes\n\
         set move=no\n\
         set mark_old=no\n\
         set wait_key=no\n\
         set beep=no\n",
        ca = ca.display(),
        work = work.display(),
    )
}

/// Runs mutt on node 0's INBOX under `script` (mutt needs a terminal even when every key
/// comes from `push`), killed after `limit` seconds.
async fn mutt(cluster: &Cluster, work: &Path, rc: &Path, mbox: &Path, limit: u32) -> (i32, String) {
    let imaps = cluster.mail_addr(0, "imaps");
    let keys = format!(
        "<tag-pattern>all<enter><tag-prefix><copy-message>{}<enter><tag-prefix><set-flag>!<quit>",
        mbox.display()
    );
    let command = work.join(format!("{}.sh", rc.file_name().unwrap().to_string_lossy()));
    write(
        &command,
        &format!(
            "exec mutt -n -F '{}' -f 'imaps://{imaps}/INBOX' -e 'push \"{keys}\"'\n",
            rc.display()
        ),
    );
    run(
        "env",
        strings(&[
            "TERM=vt100",
            &format!("HOME={}", work.display()),
            "timeout",
            &limit.to_string(),
            "script",
            "-qec",
            &format!("sh '{}'", command.display()),
            "/dev/null",
        ]),
        None,
    )
    .await
}

/// mutt copies node 0's INBOX into a local mbox and flags every message.
async fn mutt_copies_and_flags(cluster: &Cluster, work: &Path, other: &Path) {
    let user = format!("mutt@{DOMAIN}");
    deliver(cluster, 1, &user, &["mutt-1", "mutt-2"]).await;

    // Trusting another CA, mutt stops at its certificate question and copies nothing.
    let bad = work.join("muttrc-other-ca");
    write(&bad, &muttrc(other, work));
    let refused = work.join("refused.mbox");
    let (status, out) = mutt(cluster, work, &bad, &refused, 8).await;
    if refused.exists() {
        cluster.fail(&format!(
            "mutt trusting another CA copied the mailbox (exit {status}): {out}"
        ));
    }

    let rc = work.join("muttrc");
    write(&rc, &muttrc(&cluster.ca_file(), work));
    let mbox = work.join("saved.mbox");
    let (status, out) = mutt(cluster, work, &rc, &mbox, 50).await;
    let saved = std::fs::read_to_string(&mbox).unwrap_or_default();
    if status != 0 || saved.is_empty() {
        cluster.fail(&format!(
            "mutt: exit {status}, nothing saved: {}",
            out.escape_debug()
        ));
    }
    let messages: Vec<&str> = saved
        .split("\nFrom ")
        .filter(|m| !m.trim().is_empty())
        .collect();
    assert!(saved.starts_with("From "), "an mbox: {saved}");
    assert_eq!(messages.len(), 2, "{saved}");
    let got: BTreeSet<String> = messages.iter().filter_map(|m| subject_of(m)).collect();
    assert_eq!(got, set(&["mutt-1", "mutt-2"]), "{saved}");
    for subject in &got {
        assert!(saved.contains(&format!("{subject} body")), "{saved}");
    }
    let server = inbox(cluster, 2, &user).await;
    assert_eq!(subjects(&server), got, "copied, not moved: {server:?}");
    assert!(
        server
            .iter()
            .all(|m| m.flags.iter().any(|f| f == "\\Flagged")),
        "mutt's flags reached the server: {server:?}"
    );
    eprintln!("mutt: {} messages copied to an mbox and flagged", got.len());
}
