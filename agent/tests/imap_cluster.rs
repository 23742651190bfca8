//! Reading mail over IMAP from a real cluster of three `tern-agent run` processes (see
//! `common`), with third-party clients: Python's imaplib and smtplib, and curl. What must
//! hold: a message acknowledged by SMTP on one node is read over IMAP on another; a flag
//! stored through one node is seen through a third; an IDLE on one node wakes within seconds
//! when mail arrives through another; curl lists and fetches over implicit TLS; and a node
//! whose shard lost its quorum answers `NO [UNAVAILABLE]` and keeps the session.
//!
//! The clients come from Debian packages (`scripts/test.sh` installs them); without them the
//! test is skipped on a developer's machine and fails in CI.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Cluster, Options, PY_MAIL_CLIENT, create_account_retrying, create_domain_retrying, run,
    strings, tools,
};

const DOMAIN: &str = "example.test";
const ADDRESS: &str = "reader@example.test";
const PASSWORD: &str = "correct horse battery staple";
/// How long an IDLE may take to report a message delivered through another node: the
/// poller looks twice a second, a read barrier and the session's refresh add a little.
const IDLE_WAKE: Duration = Duration::from_secs(5);

/// The clients' side of every step, one mode per step; each prints `OK …` when what it
/// checked holds and exits non-zero with the reason otherwise.
const CLIENT_MODES: &str = r#"
if mode == "deliver":
    smtp, to, subject = sys.argv[3:6]
    deliver(smtp, to, subject)
    print("OK delivered", subject)

elif mode == "read-and-flag":
    # Read the message on one node and mark it \Seen.
    imap, user, password, subject = sys.argv[3:7]
    m = login(imap, user, password)
    typ, data = m.select("INBOX")
    if typ != "OK" or int(data[0]) < 1:
        fail(f"SELECT INBOX: {typ} {data}")
    typ, data = m.uid("SEARCH", "HEADER", "Subject", subject)
    uids = data[0].split()
    if typ != "OK" or len(uids) != 1:
        fail(f"SEARCH for {subject}: {typ} {data}")
    uid = uids[0]
    typ, data = m.uid("FETCH", uid, "(BODY.PEEK[] FLAGS)")
    body = data[0][1].decode()
    if f"Subject: {subject}" not in body or f"{subject} body" not in body:
        fail(f"FETCH {uid}: {data}")
    if b"\\Seen" in data[0][0]:
        fail(f"already \\Seen before STORE: {data[0][0]}")
    typ, data = m.uid("STORE", uid, "+FLAGS", "(\\Seen)")
    if typ != "OK" or b"\\Seen" not in data[0]:
        fail(f"STORE: {typ} {data}")
    m.logout()
    print("OK read and flagged uid", uid.decode())

elif mode == "sees-flag":
    imap, user, password, subject = sys.argv[3:7]
    m = login(imap, user, password)
    m.select("INBOX", readonly=True)
    typ, data = m.uid("SEARCH", "SEEN", "HEADER", "Subject", subject)
    if typ != "OK" or len(data[0].split()) != 1:
        fail(f"SEARCH SEEN for {subject}: {typ} {data}")
    m.logout()
    print("OK seen")

elif mode == "idle":
    # IDLE on one node, deliver through another, time the wake-up.
    imap, smtp, user, password, subject, limit = sys.argv[3:9]
    m = login(imap, user, password)
    typ, data = m.select("INBOX")
    before = int(data[0])
    tag = m._new_tag()
    m.send(tag + b" IDLE\r\n")
    line = m.readline()
    if not line.startswith(b"+"):
        fail(f"IDLE answered {line!r}")
    started = time.time()
    deliver(smtp, user, subject)
    delivered = time.time()
    m.sock.settimeout(float(limit))
    try:
        while True:
            line = m.readline()
            if not line:
                fail("connection closed while idling")
            parts = line.split()
            if len(parts) == 3 and parts[2] == b"EXISTS" and int(parts[1]) > before:
                break
    except socket.timeout:
        fail(f"no EXISTS within {limit} s of the delivery")
    woke = time.time()
    m.send(b"DONE\r\n")
    while True:
        line = m.readline()
        if line.startswith(tag):
            if b" OK " not in line:
                fail(f"IDLE ended with {line!r}")
            break
    m.logout()
    print(f"OK woke {woke - delivered:.2f} s after the delivery was acknowledged "
          f"(delivery took {delivered - started:.2f} s)")
elif mode == "unavailable":
    # Logged in and selected while the shard has its quorum; then the test kills the other
    # two nodes: reads and writes answer NO [UNAVAILABLE], the session keeps serving.
    imap, user, password = sys.argv[3:6]
    m = login(imap, user, password)
    typ, data = m.select("INBOX")
    if typ != "OK":
        fail(f"SELECT: {typ} {data}")
    print("READY", flush=True)
    sys.stdin.readline()
    started = time.time()
    typ, data = m.uid("FETCH", "1", "(FLAGS)")
    if typ != "NO" or b"[UNAVAILABLE]" not in data[0]:
        fail(f"FETCH without quorum: {typ} {data}")
    typ, data = m.append("INBOX", None, None, b"Subject: lost\r\n\r\nnever stored\r\n")
    if typ != "NO" or b"[UNAVAILABLE]" not in data[0]:
        fail(f"APPEND without quorum: {typ} {data}")
    # NOOP re-reads the mailbox, so it is refused too; what needs no store still works.
    typ, data = m.noop()
    if typ != "NO":
        fail(f"NOOP without quorum: {typ} {data}")
    typ, data = m.capability()
    if typ != "OK":
        fail(f"CAPABILITY after the failures: {typ} {data}")
    m.logout()
    print(f"OK unavailable within {time.time() - started:.1f} s")
else:
    fail(f"unknown mode {mode}")
"#;

/// `python3` (with imaplib, smtplib, ssl) and curl, the programs this test runs.
const TOOLS: [(&str, &str); 2] = [
    ("python3", "python3 -c 'import imaplib, smtplib, ssl'"),
    ("curl", "command -v curl"),
];

/// The whole client: [`PY_MAIL_CLIENT`] and its modes.
fn script() -> String {
    format!("{PY_MAIL_CLIENT}{CLIENT_MODES}")
}

/// Runs one step of the client, `args[0]` being the mode; returns what it printed after `OK`.
async fn client(cluster: &Cluster, args: &[String]) -> String {
    cluster.python_step(&script(), &args[0], &args[1..]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_reads_what_smtp_stored_from_any_node() {
    if !tools("imap_cluster", &TOOLS) {
        return;
    }
    // A short shard timeout: the quorum-less reads of the last step fail sooner.
    let cluster = Cluster::start(
        3,
        Options {
            timeout_ms: 1500,
            ..Options::default()
        },
    )
    .await;
    let admin = cluster.admin(0);
    cluster.check(
        create_domain_retrying(&admin, DOMAIN, Duration::from_secs(30)).await,
        "creating the domain",
    );
    cluster.check(
        create_account_retrying(&admin, ADDRESS, PASSWORD, Duration::from_secs(30)).await,
        &format!("creating {ADDRESS}"),
    );
    let addr = |i: usize, kind: &str| cluster.mail_addr(i, kind).to_string();

    // (a) Delivered on node 0, read and flagged on node 1, the flag seen on node 2.
    client(
        &cluster,
        &strings(&["deliver", &addr(0, "smtp"), ADDRESS, "first-message"]),
    )
    .await;
    client(
        &cluster,
        &strings(&[
            "read-and-flag",
            &addr(1, "imap"),
            ADDRESS,
            PASSWORD,
            "first-message",
        ]),
    )
    .await;
    client(
        &cluster,
        &strings(&[
            "sees-flag",
            &addr(2, "imap"),
            ADDRESS,
            PASSWORD,
            "first-message",
        ]),
    )
    .await;

    // (b) An IDLE on node 1 wakes when mail arrives by SMTP on node 0.
    let out = client(
        &cluster,
        &strings(&[
            "idle",
            &addr(1, "imap"),
            &addr(0, "smtp"),
            ADDRESS,
            PASSWORD,
            "second-message",
            &IDLE_WAKE.as_secs().to_string(),
        ]),
    )
    .await;
    eprintln!("IDLE: {}", out.trim());

    // (c) curl over implicit TLS on node 2: the mailbox list, a search, a message.
    let imaps = format!("imaps://{}", addr(2, "imaps"));
    let curl = |url: String| {
        let ca = cluster.ca_file().display().to_string();
        async move {
            run(
                "curl",
                strings(&[
                    "--silent",
                    "--show-error",
                    "--max-time",
                    "30",
                    "--ssl-reqd",
                    "--cacert",
                    &ca,
                    "--user",
                    &format!("{ADDRESS}:{PASSWORD}"),
                    &url,
                ]),
                None,
            )
            .await
        }
    };
    let (status, list) = curl(format!("{imaps}/")).await;
    if status != 0 || !list.contains("INBOX") {
        cluster.fail(&format!("curl LIST: exit {status}: {list}"));
    }
    let (status, search) = curl(format!("{imaps}/INBOX?ALL")).await;
    if status != 0 || search.trim() != "* SEARCH 1 2" {
        cluster.fail(&format!("curl SEARCH ALL: exit {status}: {search}"));
    }
    let (status, message) = curl(format!("{imaps}/INBOX;UID=2")).await;
    if status != 0 || !message.contains("Subject: second-message") {
        cluster.fail(&format!("curl FETCH UID 2: exit {status}: {message}"));
    }
    // A wrong password is refused, not crashed on.
    let (status, refused) = run(
        "curl",
        strings(&[
            "--silent",
            "--max-time",
            "30",
            "--cacert",
            &cluster.ca_file().display().to_string(),
            "--user",
            &format!("{ADDRESS}:wrong"),
            &format!("{imaps}/"),
        ]),
        None,
    )
    .await;
    if status != 67 {
        cluster.fail(&format!(
            "curl with a wrong password: exit {status} (67: login denied): {refused}"
        ));
    }

    // (d) Node 1 alone: no quorum, so `NO [UNAVAILABLE]`, never a stale answer or a crash.
    let mut child = Command::new("timeout")
        .args(["60", "python3", "-c", &script(), "unavailable"])
        .arg(cluster.ca_file())
        .args([addr(1, "imap"), ADDRESS.to_owned(), PASSWORD.to_owned()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting python3");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).map(|_| (line, stdout))
    })
    .await
    .unwrap();
    let (line, mut stdout) = match ready {
        Ok((line, stdout)) if line.trim() == "READY" => (line, stdout),
        other => cluster.fail(&format!("the client did not log in: {other:?}")),
    };
    drop(line);
    cluster.kill(0);
    cluster.kill(2);
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            rest,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    if !out.0.success() || !out.1.starts_with("OK") {
        cluster.fail(&format!(
            "client unavailable: {:?}: {}{}",
            out.0, out.1, out.2
        ));
    }
    eprintln!("quorum lost: {}", out.1.trim());
}
