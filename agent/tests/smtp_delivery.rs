//! Mail into a real cluster of `tern-agent run` processes (see `common`) through its SMTP,
//! submission, smtps and LMTP listeners, with third-party clients — swaks, curl, Python's
//! smtplib — and a small SMTP client of the test's own where the test needs every reply or
//! many messages at once. What must hold: a message acknowledged on one node is in its
//! mailbox exactly once as every node reads it; nobody relays without authentication, from
//! any address; and a message acknowledged while the shard's leader is killed is stored
//! exactly once, however often the client had to try.
//!
//! The clients come from Debian packages (`scripts/test.sh` installs them); without them a
//! test is skipped on a developer's machine and fails in CI.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    Cluster, Options, create_account_retrying, create_domain_retrying, run, skip_or_fail, strings,
    tools,
};
use tern_agent::admin::MessageInfo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const DOMAIN: &str = "example.test";
const PASSWORD: &str = "correct horse battery staple";
/// How long one client exchange may take before the test gives up on it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts the error of a transaction whose message was sent but not answered: the client
/// cannot know whether it was stored.
const UNANSWERED: &str = "message sent, no reply";

/// Clusters of this file run one at a time: two cores do not carry two of them and the
/// clients well.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------------------ tools

const SWAKS: (&str, &str) = ("swaks", "command -v swaks");
const SWAKS_TLS: (&str, &str) = (
    "swaks TLS (libnet-ssleay-perl, libio-socket-ssl-perl)",
    "perl -MNet::SSLeay -MIO::Socket::SSL -e 1",
);
const CURL: (&str, &str) = ("curl", "command -v curl");
const PYTHON: (&str, &str) = ("python3", "python3 -c 'import smtplib, ssl, json'");

// ------------------------------------------------------------------ cluster set-up

/// Creates the domain and one account per address, retrying while a shard elects.
async fn directory(cluster: &Cluster, accounts: &[String]) {
    let admin = cluster.admin(0);
    cluster.check(
        create_domain_retrying(&admin, DOMAIN, Duration::from_secs(30)).await,
        "creating the domain",
    );
    for address in accounts {
        cluster.check(
            create_account_retrying(&admin, address, PASSWORD, Duration::from_secs(30)).await,
            &format!("creating {address}"),
        );
    }
}

/// `count` addresses of the test domain whose mail lives on `shard`.
fn addresses_on(cluster: &Cluster, shard: u32, count: usize, prefix: &str) -> Vec<String> {
    (0..)
        .map(|n| format!("{prefix}{n}@{DOMAIN}"))
        .filter(|a| cluster.assignment().shard_of(a) == Some(shard))
        .take(count)
        .collect()
}

/// Every message of `address`'s INBOX as node `i` lists it.
async fn inbox(cluster: &Cluster, i: usize, address: &str) -> Vec<MessageInfo> {
    cluster.check(
        cluster.admin(i).all_messages(address, "INBOX").await,
        &format!("listing {address} through {}", cluster.name(i)),
    )
}

/// How often each Message-ID is in `address`'s INBOX, as node `i` lists it.
async fn message_ids(cluster: &Cluster, i: usize, address: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for m in inbox(cluster, i, address).await {
        *ids.entry(m.message_id.unwrap_or_default()).or_insert(0) += 1;
    }
    ids
}

/// Fails unless `address` has exactly one message `<id>` as each node in `nodes` lists it.
async fn listed_once(cluster: &Cluster, nodes: &[usize], address: &str, id: &str) {
    let id = format!("<{id}>");
    for &i in nodes {
        let ids = message_ids(cluster, i, address).await;
        let n = ids.get(&id).copied().unwrap_or(0);
        if n != 1 {
            cluster.fail(&format!(
                "{} lists {id} {n} times in {address}'s INBOX: {ids:?}",
                cluster.name(i)
            ));
        }
    }
}

fn message(from: &str, to: &str, id: &str, subject: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{id}>\r\n\r\n{subject}\r\n"
    )
}

// ------------------------------------------------------------------ an SMTP client

/// A reply: its code and text lines.
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    text: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// One plain-text SMTP or LMTP connection.
struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    /// Connects, sends `prefix` (a PROXY header) if any, and reads the greeting.
    async fn connect(addr: SocketAddr, prefix: &[u8]) -> Result<(Client, Reply), String> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("{addr}: connect timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let (read, write) = tcp.into_split();
        let mut client = Client {
            reader: BufReader::new(read),
            writer: write,
        };
        if !prefix.is_empty() {
            client.write(prefix).await?;
        }
        let greeting = client.reply().await?;
        Ok((client, greeting))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        tokio::time::timeout(IO_TIMEOUT, self.writer.write_all(bytes))
            .await
            .map_err(|_| "write timed out".to_owned())?
            .map_err(|e| format!("write: {e}"))
    }

    /// One reply, all its lines.
    async fn reply(&mut self) -> Result<Reply, String> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(IO_TIMEOUT, self.reader.read_line(&mut line))
                .await
                .map_err(|_| "no reply in time".to_owned())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("connection closed (after {text:?})"));
            }
            let line = line.trim_end();
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not a reply: {line:?}"))?;
            text.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.join(" / "),
                });
            }
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// One transaction: the replies to MAIL, each RCPT, and the message (one reply, or one
    /// per accepted recipient on LMTP), stopping at the first refusal before the message.
    async fn transaction(
        &mut self,
        from: &str,
        to: &[&str],
        content: &str,
        lmtp: bool,
    ) -> Result<Vec<Reply>, String> {
        let mut replies = vec![self.command(&format!("MAIL FROM:<{from}>")).await?];
        if replies[0].code != 250 {
            return Ok(replies);
        }
        let mut accepted = 0;
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>")).await?;
            accepted += usize::from(reply.code == 250);
            let refused = reply.code != 250;
            replies.push(reply);
            if refused {
                return Ok(replies);
            }
        }
        let data = self.command("DATA").await?;
        let go_on = data.code == 354;
        replies.push(data);
        if !go_on {
            return Ok(replies);
        }
        let mut body = content.replace("\r\n.", "\r\n..");
        body.push_str(".\r\n");
        self.write(body.as_bytes()).await?;
        for _ in 0..if lmtp { accepted } else { 1 } {
            let reply = self
                .reply()
                .await
                .map_err(|e| format!("{UNANSWERED}: {e}"))?;
            replies.push(reply);
        }
        Ok(replies)
    }
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_deliver_once_and_nobody_relays() {
    const TEST: &str = "clients_deliver_once_and_nobody_relays";
    if !tools(TEST, &[SWAKS, SWAKS_TLS, CURL, PYTHON]) {
        return;
    }
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    // Node 2's public listeners sit behind a (pretend) load balancer: PROXY protocol on.
    let cluster = Cluster::start(
        3,
        Options {
            shards: 3,
            node_env: vec![(2, "TERN_PROXY_PROTOCOL", "true".into())],
            ..Options::default()
        },
    )
    .await;
    let alice = addresses_on(&cluster, 1, 1, "alice")[0].clone();
    let bob = addresses_on(&cluster, 2, 1, "bob")[0].clone();
    let carol = addresses_on(&cluster, 3, 1, "carol")[0].clone();
    directory(&cluster, &[alice.clone(), bob.clone(), carol.clone()]).await;
    let ca = cluster.ca_file().display().to_string();
    let smtp = |i: usize| cluster.mail_addr(i, "smtp").to_string();

    // (a) swaks over STARTTLS (verifying the certificate) to node 0; listed once by 1 and 2.
    let (status, out) = run(
        "swaks",
        strings(&[
            "--server",
            &smtp(0),
            "--from",
            "sender@remote.example",
            "--to",
            &alice,
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            &ca,
            "--header",
            "Message-Id: <swaks-starttls@remote.example>",
            "--header",
            "Subject: swaks over STARTTLS",
        ]),
        None,
    )
    .await;
    if status != 0 || !out.contains("<~  250 2.0.0 Ok: queued as") {
        cluster.fail(&format!("swaks over STARTTLS: exit {status}\n{out}"));
    }
    listed_once(&cluster, &[1, 2], &alice, "swaks-starttls@remote.example").await;

    // (b) curl: smtp:// to node 1, and smtps:// (implicit TLS, submission with AUTH) to node 0.
    let file = cluster.dir().join("curl-message.eml");
    std::fs::write(
        &file,
        message(
            "sender@remote.example",
            &bob,
            "curl-smtp@remote.example",
            "curl smtp",
        ),
    )
    .unwrap();
    let (status, out) = run(
        "curl",
        strings(&[
            "-sS",
            "-v",
            &format!("smtp://{}", smtp(1)),
            "--mail-from",
            "sender@remote.example",
            "--mail-rcpt",
            &bob,
            "--upload-file",
            &file.display().to_string(),
        ]),
        None,
    )
    .await;
    if status != 0 || !out.contains("< 250 2.0.0 Ok: queued as") {
        cluster.fail(&format!("curl smtp://: exit {status}\n{out}"));
    }
    std::fs::write(
        &file,
        message(&bob, &carol, "curl-smtps@example.test", "curl smtps"),
    )
    .unwrap();
    let (status, out) = run(
        "curl",
        strings(&[
            "-sS",
            "-v",
            &format!("smtps://{}", cluster.mail_addr(0, "smtps")),
            "--cacert",
            &ca,
            "--user",
            &format!("{bob}:{PASSWORD}"),
            "--mail-from",
            &bob,
            "--mail-rcpt",
            &carol,
            "--upload-file",
            &file.display().to_string(),
        ]),
        None,
    )
    .await;
    if status != 0 || !out.contains("< 250 2.0.0 Ok: queued as") {
        cluster.fail(&format!("curl smtps://: exit {status}\n{out}"));
    }
    listed_once(&cluster, &[0, 2], &bob, "curl-smtp@remote.example").await;
    listed_once(&cluster, &[1, 2], &carol, "curl-smtps@example.test").await;

    // (c) smtplib on submission: STARTTLS and AUTH PLAIN; the account's own From is stored,
    // a forged one refused; AUTH before STARTTLS refused; a remote recipient queued for outbound delivery.
    let (status, out) = run(
        "python3",
        strings(&[
            "-",
            &cluster.mail_addr(1, "submission").ip().to_string(),
            &cluster.mail_addr(1, "submission").port().to_string(),
            &ca,
            &carol,
            PASSWORD,
            &alice,
        ]),
        Some(SMTPLIB_CLIENT.to_owned()),
    )
    .await;
    let results: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| cluster.fail(&format!("smtplib: exit {status}: {e}\n{out}")));
    let expect = |key: &str, code: u64, status: &str| {
        let got = &results[key];
        if got[0] != code || !got[1].as_str().unwrap_or("").starts_with(status) {
            cluster.fail(&format!(
                "smtplib {key}: expected {code} {status}, got {got}\n{results:#}"
            ));
        }
    };
    assert_eq!(results["auth_offered_before_tls"], false, "{results:#}");
    expect("auth_before_tls", 538, "5.7.11");
    expect("login", 235, "2.7.0");
    expect("own_from", 250, "");
    expect("forged_from_header", 550, "5.7.1");
    expect("forged_envelope_sender", 553, "5.7.1");
    expect("remote_recipient", 250, "accepted");
    expect("wrong_password", 535, "5.7.8");
    listed_once(&cluster, &[0, 2], &carol, "smtplib-own@example.test").await;
    let forged = message_ids(&cluster, 0, &carol).await;
    assert!(
        !forged.contains_key("<smtplib-forged@example.test>"),
        "a forged message was stored: {forged:?}"
    );

    // (d) The open-relay matrix: all refused.
    // Unauthenticated, from 127.0.0.1, to a remote domain.
    let (_, out) = run(
        "swaks",
        strings(&[
            "--server",
            &smtp(0),
            "--from",
            "sender@remote.example",
            "--to",
            "victim@remote.example",
        ]),
        None,
    )
    .await;
    if !out.contains("<** 554 5.7.1 <victim@remote.example>: Relay access denied") {
        cluster.fail(&format!("relay from loopback was not refused:\n{out}"));
    }
    // The same through a PROXY v2 header claiming an internal address, on node 2.
    let (_, out) = run(
        "swaks",
        strings(&[
            "--server",
            &smtp(2),
            "--proxy-version",
            "2",
            "--proxy-family",
            "AF_INET",
            "--proxy-source",
            "10.0.0.1",
            "--proxy-source-port",
            "40000",
            "--proxy-dest",
            "127.0.0.1",
            "--proxy-dest-port",
            "25",
            "--from",
            "sender@remote.example",
            "--to",
            "victim@remote.example",
        ]),
        None,
    )
    .await;
    if !out.contains("<** 554 5.7.1 <victim@remote.example>: Relay access denied") {
        cluster.fail(&format!(
            "relay through a PROXY header was not refused:\n{out}"
        ));
    }
    // Mail for a local user through the same header is taken, from the header's address.
    let (status, out) = run(
        "swaks",
        strings(&[
            "--server",
            &smtp(2),
            "--proxy-version",
            "2",
            "--proxy-family",
            "AF_INET",
            "--proxy-source",
            "10.0.0.1",
            "--proxy-source-port",
            "40000",
            "--proxy-dest",
            "127.0.0.1",
            "--proxy-dest-port",
            "25",
            "--from",
            "sender@remote.example",
            "--to",
            &carol,
            "--header",
            "Message-Id: <swaks-proxy@remote.example>",
        ]),
        None,
    )
    .await;
    if status != 0 || !out.contains("<-  250 2.0.0 Ok: queued as") {
        cluster.fail(&format!(
            "swaks through a PROXY header: exit {status}\n{out}"
        ));
    }
    listed_once(&cluster, &[0], &carol, "swaks-proxy@remote.example").await;
    let log = std::fs::read_to_string(cluster.dir().join(cluster.name(2)).join("agent.log"))
        .unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("client=10.0.0.1:40000") && l.contains("delivery")),
        "node 2 did not take the client address from the PROXY header"
    );
    // That listener takes no connection without the header.
    if let Ok((_, greeting)) = Client::connect(cluster.mail_addr(2, "smtp"), b"").await {
        cluster.fail(&format!(
            "a connection without a PROXY header was greeted: {greeting}"
        ));
    }
    // Unauthenticated, claiming a local sender.
    let (_, out) = run(
        "swaks",
        strings(&["--server", &smtp(1), "--from", &bob, "--to", &alice]),
        None,
    )
    .await;
    if !out.contains(&format!("<** 550 5.7.1 Sender address <{bob}> rejected")) {
        cluster.fail(&format!("a forged local sender was not refused:\n{out}"));
    }
    // An unknown local user, and LMTP, which never relays either.
    let (mut lmtp, _) = cluster.check(
        Client::connect(cluster.mail_addr(0, "lmtp"), b"").await,
        "LMTP",
    );
    cluster.check(lmtp.command("LHLO test.example").await, "LHLO");
    let replies = cluster.check(
        lmtp.transaction("", &["victim@remote.example"], "x: y\r\n\r\nz\r\n", true)
            .await,
        "LMTP relay",
    );
    assert_eq!(replies[1].code, 554, "{replies:?}");
    cluster.check(lmtp.command("RSET").await, "RSET");
    let replies = cluster.check(
        lmtp.transaction(
            "",
            &[&format!("nobody@{DOMAIN}")],
            "x: y\r\n\r\nz\r\n",
            true,
        )
        .await,
        "LMTP unknown user",
    );
    assert!(
        replies[1].to_string().starts_with("550 5.1.1"),
        "{replies:?}"
    );
    cluster.check(lmtp.command("RSET").await, "RSET");

    // (e) LMTP with two recipients on different shards: one reply for each.
    let content = message(
        "sender@remote.example",
        &alice,
        "lmtp-two-shards@remote.example",
        "lmtp",
    );
    let replies = cluster.check(
        lmtp.transaction("sender@remote.example", &[&alice, &bob], &content, true)
            .await,
        "LMTP to two shards",
    );
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 250, 250, 354, 250, 250], "{replies:?}");
    listed_once(&cluster, &[1, 2], &alice, "lmtp-two-shards@remote.example").await;
    listed_once(&cluster, &[1, 2], &bob, "lmtp-two-shards@remote.example").await;

    // The counters saw it.
    let stored = cluster.check(
        cluster
            .metric(0, "tern_smtp_deliveries_total{outcome=\"stored\"}")
            .await,
        "metrics",
    );
    assert!(stored >= 4, "node 0 counted {stored} stored recipients");
    let sessions = cluster.check(
        cluster
            .metric(0, "tern_smtp_sessions_total{listener=\"smtp\"}")
            .await,
        "metrics",
    );
    assert!(sessions >= 2, "node 0 counted {sessions} smtp sessions");
}

/// Python's smtplib against submission. Arguments: host, port, CA file, the account, its
/// password, another local address. Prints one JSON object: `[code, text]` per step.
const SMTPLIB_CLIENT: &str = r#"
import base64, json, smtplib, ssl, sys
host, port, ca, user, password, other = sys.argv[1:7]
port = int(port)
context = ssl.create_default_context(cafile=ca)
out = {}

def message(sender, mid):
    return (f"From: {sender}\r\nTo: {user}\r\nSubject: smtplib\r\n"
            f"Message-ID: <{mid}>\r\n\r\nhello\r\n")

def reply(code, text):
    return [code, text.decode() if isinstance(text, bytes) else str(text)]

s = smtplib.SMTP(host, port, timeout=30)
s.ehlo("client.example")
out["auth_offered_before_tls"] = s.has_extn("auth")
token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
out["auth_before_tls"] = reply(*s.docmd("AUTH", "PLAIN " + token))
s.quit()

s = smtplib.SMTP(host, port, timeout=30)
s.starttls(context=context)
s.ehlo("client.example")
s.user, s.password = user, password
out["login"] = reply(*s.auth("PLAIN", s.auth_plain))
refused = s.sendmail(user, [user], message(user, "smtplib-own@example.test"))
out["own_from"] = [250, ""] if refused == {} else [0, repr(refused)]
try:
    s.sendmail(user, [user], message(other, "smtplib-forged@example.test"))
    out["forged_from_header"] = [250, "accepted"]
except smtplib.SMTPDataError as e:
    out["forged_from_header"] = reply(e.smtp_code, e.smtp_error)
try:
    s.sendmail(other, [user], message(other, "smtplib-forged-2@example.test"))
    out["forged_envelope_sender"] = [250, "accepted"]
except smtplib.SMTPSenderRefused as e:
    out["forged_envelope_sender"] = reply(e.smtp_code, e.smtp_error)
try:
    s.sendmail(user, ["victim@remote.example"], message(user, "smtplib-remote@example.test"))
    out["remote_recipient"] = [250, "accepted"]
except smtplib.SMTPRecipientsRefused as e:
    out["remote_recipient"] = reply(*e.recipients["victim@remote.example"])
s.quit()

s = smtplib.SMTP(host, port, timeout=30)
s.starttls(context=context)
s.ehlo("client.example")
try:
    s.login(user, password + "x")
    out["wrong_password"] = [235, "accepted"]
except smtplib.SMTPAuthenticationError as e:
    out["wrong_password"] = reply(e.smtp_code, e.smtp_error)
s.quit()
print(json.dumps(out))
"#;

/// One message of the durability test.
#[derive(Clone)]
struct Numbered {
    n: usize,
    to: String,
}

impl Numbered {
    fn id(&self) -> String {
        format!("durable-{}@remote.example", self.n)
    }

    fn content(&self) -> String {
        message(
            "sender@remote.example",
            &self.to,
            &self.id(),
            &format!("message {}", self.n),
        )
    }
}

#[derive(Default)]
struct Tally {
    acknowledged: AtomicUsize,
    temporary: AtomicUsize,
    broken: AtomicUsize,
    /// Of the broken ones, those cut off after the whole message was sent.
    unanswered: AtomicUsize,
    /// Messages sent once without waiting for the reply before being sent properly.
    abandoned: AtomicUsize,
}

/// Sends `message` to `addr` and hangs up right after its last line, without waiting for the
/// reply: a client whose timeout ran out, which will send the same message again.
async fn abandon(addr: SocketAddr, message: &Numbered) -> Result<(), String> {
    let (mut client, _) = Client::connect(addr, b"").await?;
    client.command("EHLO impatient.example").await?;
    for line in [
        "MAIL FROM:<sender@remote.example>".to_owned(),
        format!("RCPT TO:<{}>", message.to),
    ] {
        let reply = client.command(&line).await?;
        if reply.code != 250 {
            return Err(format!("{line}: {reply}"));
        }
    }
    let data = client.command("DATA").await?;
    if data.code != 354 {
        return Err(format!("DATA: {data}"));
    }
    client
        .write(format!("{}.\r\n", message.content()).as_bytes())
        .await
}

/// Sends `message` until some node acknowledges it with 250, trying the nodes in turn from
/// `first` after a 4xx or a lost connection (a client's retry: the same message again).
async fn until_acknowledged(
    nodes: &[SocketAddr],
    first: usize,
    message: &Numbered,
    tally: &Tally,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let content = message.content();
    for attempt in 0.. {
        let addr = nodes[(first + attempt) % nodes.len()];
        let outcome = async {
            let (mut client, greeting) = Client::connect(addr, b"").await?;
            if greeting.code != 220 {
                return Ok(vec![greeting]);
            }
            client.command("EHLO durability.example").await?;
            let replies = client
                .transaction("sender@remote.example", &[&message.to], &content, false)
                .await?;
            let _ = client.command("QUIT").await;
            Ok::<_, String>(replies)
        }
        .await;
        match outcome {
            Ok(replies) => {
                let last = replies.last().expect("at least one reply");
                match last.code {
                    250 if replies.len() == 4 => {
                        tally.acknowledged.fetch_add(1, Ordering::SeqCst);
                        return Ok(());
                    }
                    400..=499 => {
                        tally.temporary.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return Err(format!("message {}: {replies:?}", message.n)),
                }
            }
            Err(e) => {
                tally.broken.fetch_add(1, Ordering::SeqCst);
                if e.starts_with(UNANSWERED) {
                    tally.unanswered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("message {} never acknowledged", message.n));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_mail_survives_a_leader_kill_exactly_once() {
    const MESSAGES: usize = 200;
    const SENDERS: usize = 4;
    const SHARD: u32 = 1;
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(
        3,
        Options {
            shards: 2,
            ..Options::default()
        },
    )
    .await;
    let accounts = addresses_on(&cluster, SHARD, 4, "user");
    directory(&cluster, &accounts).await;
    let leader = cluster
        .wait_leader(SHARD, &[0, 1, 2], Duration::from_secs(20))
        .await;
    let nodes: Vec<SocketAddr> = (0..3).map(|i| cluster.mail_addr(i, "smtp")).collect();
    let tally = Arc::new(Tally::default());
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..SENDERS {
        let nodes = nodes.clone();
        let tally = tally.clone();
        let mine: Vec<Numbered> = (0..MESSAGES)
            .filter(|n| n % SENDERS == s)
            .map(|n| Numbered {
                n,
                to: accounts[n % accounts.len()].clone(),
            })
            .collect();
        senders.spawn(async move {
            for m in &mine {
                // Every seventh message is sent twice: first by a client that gives up before
                // the reply, then again until acknowledged.
                if m.n % 7 == 0 && abandon(nodes[m.n % nodes.len()], m).await.is_ok() {
                    tally.abandoned.fetch_add(1, Ordering::SeqCst);
                }
                until_acknowledged(&nodes, s + m.n, m, &tally).await?;
            }
            Ok::<_, String>(())
        });
    }
    // SIGKILL the shard's leader a third of the way in, restart it two thirds in.
    let acknowledged = || tally.acknowledged.load(Ordering::SeqCst);
    cluster
        .wait_until(
            Duration::from_secs(60),
            "a third acknowledged",
            async || {
                (acknowledged() >= MESSAGES / 3)
                    .then_some(())
                    .ok_or_else(|| format!("{} acknowledged", acknowledged()))
            },
        )
        .await;
    cluster.kill(leader);
    let killed_at = acknowledged();
    cluster
        .wait_until(
            Duration::from_secs(60),
            "two thirds acknowledged",
            async || {
                (acknowledged() >= 2 * MESSAGES / 3)
                    .then_some(())
                    .ok_or_else(|| format!("{} acknowledged", acknowledged()))
            },
        )
        .await;
    cluster.restart(leader);
    while let Some(done) = senders.join_next().await {
        cluster.check(done.unwrap(), "a sender");
    }
    cluster.wait_ready(leader).await;
    eprintln!(
        "{MESSAGES} acknowledged ({killed_at} before the kill of {}); retried: {} temporary \
         failures, {} broken connections ({} after the whole message was sent), {} sent again \
         after hanging up before the reply",
        cluster.name(leader),
        tally.temporary.load(Ordering::SeqCst),
        tally.broken.load(Ordering::SeqCst),
        tally.unanswered.load(Ordering::SeqCst),
        tally.abandoned.load(Ordering::SeqCst)
    );
    assert!(
        tally.abandoned.load(Ordering::SeqCst) >= MESSAGES / 7 / 2,
        "too few messages were sent twice to test anything"
    );
    assert_eq!(acknowledged(), MESSAGES);
    // Every acknowledged message exactly once, in every node's view.
    let want: BTreeSet<String> = (0..MESSAGES)
        .map(|n| format!("<durable-{n}@remote.example>"))
        .collect();
    for i in 0..3 {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for account in &accounts {
            for (id, count) in message_ids(&cluster, i, account).await {
                *seen.entry(id).or_insert(0) += count;
            }
        }
        let twice: Vec<&String> = seen
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(id, _)| id)
            .collect();
        let missing: Vec<&String> = want.iter().filter(|id| !seen.contains_key(*id)).collect();
        if !twice.is_empty() || !missing.is_empty() || seen.len() != MESSAGES {
            cluster.fail(&format!(
                "{} lists {} messages; more than once: {twice:?}; missing: {missing:?}",
                cluster.name(i),
                seen.values().sum::<usize>()
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_its_majority_answers_451() {
    const TEST: &str = "a_node_cut_off_from_its_majority_answers_451";
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cut = 2;
    let options = Options {
        timeout_ms: 1500,
        ..Options::default()
    };
    let cluster = match Cluster::start_with_netns(3, options, cut).await {
        Ok(cluster) => cluster,
        Err(why) => return skip_or_fail(TEST, &why),
    };
    let alice = format!("alice@{DOMAIN}");
    directory(&cluster, std::slice::from_ref(&alice)).await;
    let content = message(
        "sender@remote.example",
        &alice,
        "cut-off@remote.example",
        "cut off",
    );
    // A transaction under way when the link goes down: its recipient was accepted, the
    // message cannot be stored.
    let (mut client, _) = cluster.check(
        Client::connect(cluster.mail_addr(cut, "smtp"), b"").await,
        "connecting to the node that will be cut off",
    );
    cluster.check(client.command("EHLO c.example").await, "EHLO");
    let mail = cluster.check(
        client.command("MAIL FROM:<sender@remote.example>").await,
        "MAIL",
    );
    let rcpt = cluster.check(client.command(&format!("RCPT TO:<{alice}>")).await, "RCPT");
    assert_eq!((mail.code, rcpt.code), (250, 250), "{mail} / {rcpt}");
    cluster.partition();
    let data = cluster.check(client.command("DATA").await, "DATA");
    assert_eq!(data.code, 354, "{data}");
    cluster.check(
        client.write(format!("{content}.\r\n").as_bytes()).await,
        "the message",
    );
    let started = Instant::now();
    let reply = cluster.check(client.reply().await, "the reply to the message");
    assert!(
        reply.to_string().starts_with("451 4.3.0"),
        "a cut-off node answered {reply}"
    );
    // The deadline is twice the shard timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A new recipient cannot be looked up either.
    let replies = cluster.check(
        client
            .transaction("sender@remote.example", &[&alice], &content, false)
            .await,
        "a second transaction",
    );
    assert!(
        replies.last().unwrap().to_string().starts_with("451 4.3.0"),
        "{replies:?}"
    );
    let _ = client.command("QUIT").await;
    // The majority never saw it; once the link is back, the client's retry is stored once.
    let ids = message_ids(&cluster, 0, &alice).await;
    assert!(ids.is_empty(), "half-stored mail is visible: {ids:?}");
    cluster.heal();
    let cut_addr = cluster.mail_addr(cut, "smtp");
    let mut stored = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stored && Instant::now() < deadline {
        if let Ok((mut client, _)) = Client::connect(cut_addr, b"").await
            && client.command("EHLO c.example").await.is_ok()
            && let Ok(replies) = client
                .transaction("sender@remote.example", &[&alice], &content, false)
                .await
        {
            stored = replies.len() == 4 && replies[3].code == 250;
        }
        if !stored {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(stored, "the healed node never stored the message");
    listed_once(&cluster, &[0, 1, 2], &alice, "cut-off@remote.example").await;
}
