//! IMAP session proxying on a real cluster of four `tern-agent run` processes (see
//! `common`): one shard on three voters (nodes 0, 1, 2), so node 3 holds no replica of the
//! account's shard and relays its sessions to a node that does. What must hold, with
//! Python's imaplib and smtplib as the clients, all IMAP on node 3:
//!
//! - a whole session works as on a replica: the capabilities after login are those of a
//!   session on a replica; SELECT, APPEND, FETCH, STORE, an IDLE woken by mail delivered
//!   by SMTP through another node, LOGOUT;
//! - SIGKILL the replica the sessions were relayed to: a session open on node 3 gets
//!   `* BYE [UNAVAILABLE]` and its connection closes; a new session on node 3 works, on
//!   another replica, and sees the mail stored before;
//! - node 3 counts the relayed sessions in `/metrics`, the serving replica those it served.
//!
//! The clients come from Debian packages (`scripts/test.sh` installs them); without them the
//! test is skipped on a developer's machine and fails in CI.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Cluster, Options, PY_MAIL_CLIENT, create_account_retrying, create_domain_retrying, strings,
    tools,
};

const DOMAIN: &str = "example.test";
const ADDRESS: &str = "proxied@example.test";
const PASSWORD: &str = "correct horse battery staple";
/// The node without a replica, and the replicas.
const FRONT: usize = 3;
const REPLICAS: [usize; 3] = [0, 1, 2];

/// The clients' side of every step, one mode per step; each prints `OK …` when what it
/// checked holds and exits non-zero with the reason otherwise.
const CLIENT_MODES: &str = r#"
def capabilities(m):
    typ, data = m.capability()
    if typ != "OK":
        fail(f"CAPABILITY: {typ} {data}")
    return data[0].decode()

if mode == "capability":
    imap, user, password = sys.argv[3:6]
    m = login(imap, user, password)
    caps = capabilities(m)
    m.logout()
    print("OK", caps)

elif mode == "session":
    imap, smtp, user, password, direct_caps = sys.argv[3:8]
    m = login(imap, user, password)
    caps = capabilities(m)
    if caps != direct_caps:
        fail(f"capabilities after login differ: relayed {caps!r}, direct {direct_caps!r}")
    typ, data = m.select("INBOX")
    if typ != "OK":
        fail(f"SELECT INBOX: {typ} {data}")
    before = int(data[0])
    # APPEND with a literal that holds bytes a proxy might mangle.
    body = (b"From: me@example.test\r\nSubject: appended\r\n\r\n"
            b"line one\r\n* BYE not a response\r\n" + bytes(range(32, 127)) + b"\r\n")
    typ, data = m.append("INBOX", "(\\Flagged)", None, body)
    if typ != "OK" or b"APPENDUID" not in data[0]:
        fail(f"APPEND: {typ} {data}")
    uid = data[0].split(b"APPENDUID ")[1].split(b"]")[0].split()[1]
    typ, data = m.uid("FETCH", uid, "(FLAGS RFC822.SIZE BODY.PEEK[])")
    if typ != "OK" or not isinstance(data[0], tuple) or data[0][1] != body:
        fail(f"FETCH {uid}: {typ} {data}")
    items = data[0][0] + b"".join(d for d in data[1:] if isinstance(d, bytes))
    if b"\\Flagged" not in items or f"RFC822.SIZE {len(body)}".encode() not in items:
        fail(f"FETCH {uid} items: {items}")
    typ, data = m.uid("STORE", uid, "+FLAGS", "(\\Seen $Proxied)")
    if typ != "OK" or b"\\Seen" not in data[0] or b"$Proxied" not in data[0]:
        fail(f"STORE: {typ} {data}")
    typ, data = m.noop()
    typ, data = m.select("INBOX")
    count = int(data[0])
    if count != before + 1:
        fail(f"SELECT after APPEND: {count} messages, expected {before + 1}")
    # IDLE through the relay, woken by mail delivered by SMTP on another node.
    tag = m._new_tag()
    m.send(tag + b" IDLE\r\n")
    line = m.readline()
    if not line.startswith(b"+"):
        fail(f"IDLE answered {line!r}")
    deliver(smtp, user, "while-idling")
    delivered = time.time()
    m.sock.settimeout(10)
    try:
        while True:
            line = m.readline()
            if not line:
                fail("connection closed while idling")
            parts = line.split()
            if len(parts) == 3 and parts[2] == b"EXISTS" and int(parts[1]) > count:
                break
    except socket.timeout:
        fail("no EXISTS within 10 s of the delivery")
    woke = time.time() - delivered
    m.send(b"DONE\r\n")
    while True:
        line = m.readline()
        if line.startswith(tag):
            if b" OK " not in line:
                fail(f"IDLE ended with {line!r}")
            break
    typ, data = m.uid("SEARCH", "HEADER", "Subject", "while-idling")
    if typ != "OK" or len(data[0].split()) != 1:
        fail(f"SEARCH for the delivered message: {typ} {data}")
    typ, data = m.logout()
    if typ != "BYE":
        fail(f"LOGOUT: {typ} {data}")
    print(f"OK session relayed; IDLE woke {woke:.2f} s after the delivery")

elif mode == "hold":
    # A session left open while the test kills the node it is relayed to: it must get
    # BYE [UNAVAILABLE] and then the end of the connection.
    imap, user, password = sys.argv[3:6]
    m = login(imap, user, password)
    typ, data = m.select("INBOX")
    if typ != "OK":
        fail(f"SELECT: {typ} {data}")
    print("READY", flush=True)
    sys.stdin.readline()
    m.sock.settimeout(20)
    lines = []
    try:
        while True:
            line = m.readline()
            if not line:
                break
            lines.append(line)
    except socket.timeout:
        fail(f"the connection stayed open after the node was killed: {lines}")
    except (ConnectionError, ssl.SSLError) as e:
        lines.append(repr(e).encode())
    if not any(l.startswith(b"* BYE [UNAVAILABLE]") for l in lines):
        fail(f"no BYE [UNAVAILABLE] before the close: {lines}")
    print("OK", lines[-1].decode().strip())

elif mode == "again":
    # A new session after the kill: relayed to another replica, the mail is all there.
    imap, user, password, expected = sys.argv[3:7]
    m = login(imap, user, password)
    typ, data = m.select("INBOX")
    if typ != "OK" or int(data[0]) != int(expected):
        fail(f"SELECT INBOX: {typ} {data}, expected {expected} messages")
    typ, data = m.uid("SEARCH", "KEYWORD", "$Proxied")
    if typ != "OK" or len(data[0].split()) != 1:
        fail(f"SEARCH KEYWORD $Proxied: {typ} {data}")
    typ, data = m.append("INBOX", None, None, b"Subject: after the kill\r\n\r\nstill here\r\n")
    if typ != "OK":
        fail(f"APPEND after the kill: {typ} {data}")
    m.logout()
    print("OK new session served")
else:
    fail(f"unknown mode {mode}")
"#;

const TOOLS: [(&str, &str); 1] = [("python3", "python3 -c 'import imaplib, smtplib, ssl'")];

/// The whole client: [`PY_MAIL_CLIENT`] and its modes.
fn script() -> String {
    format!("{PY_MAIL_CLIENT}{CLIENT_MODES}")
}

/// Runs one step of the client, `args[0]` being the mode; returns what it printed after `OK`.
async fn client(cluster: &Cluster, args: &[String]) -> String {
    cluster.python_step(&script(), &args[0], &args[1..]).await
}

async fn metric(cluster: &Cluster, i: usize, series: &str) -> u64 {
    cluster.check(cluster.metric(i, series).await, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_shard_relays_sessions_to_a_live_replica() {
    if !tools("imap_proxy", &TOOLS) {
        return;
    }
    let cluster = Cluster::start(4, Options::default()).await;
    let shard = &cluster.assignment().shards[0];
    assert_eq!(cluster.assignment().shards.len(), 1);
    let front_id = cluster.node_id(FRONT);
    assert!(
        !shard.voters.contains(&front_id) && !shard.learners.contains(&front_id),
        "node {FRONT} must hold no replica: {shard:?}"
    );
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

    // (a) One whole session on node 3, against the capabilities of one on a replica.
    let direct = client(
        &cluster,
        &strings(&["capability", &addr(0, "imap"), ADDRESS, PASSWORD]),
    )
    .await;
    let out = client(
        &cluster,
        &strings(&[
            "session",
            &addr(FRONT, "imap"),
            &addr(0, "smtp"),
            ADDRESS,
            PASSWORD,
            &direct,
        ]),
    )
    .await;
    eprintln!("relayed session: {out}");
    assert_eq!(
        metric(&cluster, FRONT, "tern_imap_relayed_sessions_total").await,
        1
    );

    // (b) A session held open on node 3; find the replica serving it and SIGKILL it.
    let mut hold = Command::new("timeout")
        .args(["90", "python3", "-c", &script(), "hold"])
        .arg(cluster.ca_file())
        .args([addr(FRONT, "imap"), ADDRESS.to_owned(), PASSWORD.to_owned()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting python3");
    let mut stdout = BufReader::new(hold.stdout.take().unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).map(|_| (line, stdout))
    })
    .await
    .unwrap();
    let mut stdout = match ready {
        Ok((line, stdout)) if line.trim() == "READY" => stdout,
        other => cluster.fail(&format!("the held session did not start: {other:?}")),
    };
    let mut serving = Vec::new();
    for i in REPLICAS {
        let served = metric(&cluster, i, "tern_imap_relays_served_total").await;
        if served > 0 {
            serving.push((i, served));
        }
    }
    // Both sessions of the account went to the same replica (the account picks it).
    let target = match serving.as_slice() {
        [(i, 2)] => *i,
        other => cluster.fail(&format!(
            "expected one replica serving both relayed sessions, got {other:?}"
        )),
    };
    eprintln!("sessions relayed to node {target}; killing it");
    cluster.kill(target);
    hold.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let (status, rest, stderr) = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let output = hold.wait_with_output().unwrap();
        (
            output.status,
            rest,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    if !status.success() || !rest.starts_with("OK") {
        cluster.fail(&format!("held session: {status:?}: {rest}{stderr}"));
    }
    eprintln!("held session after the kill: {}", rest.trim());

    // (c) A new session on node 3 lands on another replica, which has everything.
    let failures_before = metric(&cluster, FRONT, "tern_imap_relay_connect_failures_total").await;
    client(
        &cluster,
        &strings(&["again", &addr(FRONT, "imap"), ADDRESS, PASSWORD, "2"]),
    )
    .await;
    let failures = metric(&cluster, FRONT, "tern_imap_relay_connect_failures_total").await;
    assert_eq!(
        metric(&cluster, FRONT, "tern_imap_relayed_sessions_total").await,
        3
    );
    let mut served_after = 0;
    for i in REPLICAS.into_iter().filter(|i| *i != target) {
        served_after += metric(&cluster, i, "tern_imap_relays_served_total").await;
    }
    assert_eq!(
        served_after, 1,
        "the new session went to a surviving replica"
    );
    eprintln!(
        "new session served by a surviving replica; connect failures on the way: {}",
        failures - failures_before
    );
}
