//! Outbound delivery with a real Postfix as the remote MX: a message submitted (STARTTLS,
//! AUTH) to a remote address is queued majority-durably, survives a SIGKILL of the node that
//! accepted it, and arrives at the Postfix exactly once, delivered by another node; a 5xx
//! recipient and a recipient still refused with 4xx when the queue lifetime ends come back to
//! the sender as one RFC 3464 bounce in their INBOX; a 4xx recipient is tried again. The
//! message arrives DKIM-signed, and the signature verifies (mail-auth) against the public key.
//!
//! Inbound: a message from an unauthenticated client on port 25 is stored with an
//! `Authentication-Results:` field of the receiving node (its DNS unreachable, so
//! `temperror`, and stored all the same), a forged one naming the node is gone, and the
//! `Received:` field is there; read back over IMAP.
//!
//! The Postfix runs under a temp directory with its own configuration, queue and data
//! directories, on a 127.0.0.1 port; it stores mail for `remote.test` in a Maildir and relays
//! nothing off the machine.

mod common;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Options, create_domain_retrying, run, strings, tools};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{DkimResult, Txt};
use tern_agent::smtp::auth_results::{DnsCaches, InboundChecks, unreachable_resolver};

const DOMAIN: &str = "example.test";
const PASSWORD: &str = "correct horse battery staple";

const POSTFIX: (&str, &str) = ("postfix", "command -v postfix || test -x /usr/sbin/postfix");
const PYTHON: (&str, &str) = ("python3", "python3 -c 'import smtplib, ssl'");
const ROOT: (&str, &str) = ("root (to run a Postfix instance)", "test \"$(id -u)\" = 0");

/// A Postfix instance of the test's own.
struct Postfix {
    dir: PathBuf,
    port: u16,
    running: bool,
}

impl Postfix {
    fn new(dir: &Path) -> Postfix {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = dir.join("postfix");
        for sub in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let id = |flag: &str| {
            let out = Command::new("id").args([flag, "postfix"]).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        for sub in ["data", "mail"] {
            let status = Command::new("chown")
                .arg("postfix")
                .arg(dir.join(sub))
                .status()
                .unwrap();
            assert!(status.success());
        }
        let d = dir.display();
        std::fs::write(
            dir.join("conf/main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {d}/queue\n\
                 data_directory = {d}/data\n\
                 mail_owner = postfix\n\
                 setgid_group = postdrop\n\
                 inet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\n\
                 myhostname = mx.remote.test\n\
                 mydestination =\n\
                 mynetworks = 127.0.0.0/8\n\
                 relay_domains =\n\
                 relayhost =\n\
                 alias_maps =\n\
                 alias_database =\n\
                 biff = no\n\
                 smtputf8_enable = no\n\
                 maillog_file_prefixes = /tmp, {d}\n\
                 maillog_file = {d}/maillog\n\
                 virtual_mailbox_domains = remote.test\n\
                 virtual_mailbox_base = {d}/mail\n\
                 virtual_mailbox_maps = static:box/\n\
                 virtual_uid_maps = static:{uid}\n\
                 virtual_gid_maps = static:{gid}\n\
                 virtual_minimum_uid = 1\n\
                 smtpd_recipient_restrictions = check_recipient_access inline:{{ \
                 {{bounce@remote.test=550 5.1.1 no such user}}, \
                 {{later@remote.test=450 4.2.0 try later}} }}, \
                 permit_mynetworks, reject_unauth_destination\n\
                 default_transport = error:no relaying off this machine\n"
            ),
        )
        .unwrap();
        let services = "\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
";
        std::fs::write(
            dir.join("conf/master.cf"),
            format!("127.0.0.1:{port} inet n - n - - smtpd\n{services}"),
        )
        .unwrap();
        Postfix {
            dir,
            port,
            running: false,
        }
    }

    fn postfix(&self, verb: &str) -> bool {
        Command::new("postfix")
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg(verb)
            .status()
            .is_ok_and(|s| s.success())
    }

    fn start(&mut self) {
        assert!(
            self.postfix("start"),
            "postfix start failed: {}",
            self.log()
        );
        self.running = true;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Every message in the Maildir.
    fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.join("mail/box").join(sub)) {
                for entry in entries.flatten() {
                    out.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.running {
            self.postfix("stop");
        }
    }
}

const SUBMIT: &str = r#"
import smtplib, ssl, sys
host, port, ca, user, password, mid = sys.argv[1:7]
rcpts = sys.argv[7:]
context = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP(host, int(port), timeout=30)
s.starttls(context=context)
s.login(user, password)
msg = (f"From: {user}\r\nTo: {', '.join(rcpts)}\r\nSubject: outbound\r\n"
       f"Message-ID: <{mid}>\r\n\r\n.a line that starts with a dot\r\nhello\r\n")
refused = s.sendmail(user, rcpts, msg)
print("refused", refused)
s.quit()
"#;

async fn wait_for<T>(
    cluster: &Cluster,
    within: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > within {
            cluster.fail(&format!("{what}: not within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_survives_its_node_and_bounces_come_home() {
    const TEST: &str = "queued_mail_survives_its_node_and_bounces_come_home";
    if !tools(TEST, &[POSTFIX, PYTHON, ROOT]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tern-outbound-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Not started yet: the first attempts find nobody listening and defer.
    let mut postfix = Postfix::new(&dir);
    let next_hop = format!("127.0.0.1:{}", postfix.port);
    // DKIM: an Ed25519 key in a file, its public half for the verifier below.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let key_file = dir.join("dkim.pem");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let dkim_record = format!("v=DKIM1; k=ed25519; p={}", base64(key.public_key_raw()));
    let mut node_env = Vec::new();
    for i in 0..3 {
        node_env.push((i, "TERN_DKIM_KEY_FILE", key_file.display().to_string()));
        node_env.push((i, "TERN_DKIM_SELECTOR", "tern".to_owned()));
        node_env.push((i, "TERN_DKIM_DOMAIN", DOMAIN.to_owned()));
        node_env.push((i, "TERN_OUTBOUND_NEXT_HOP", next_hop.clone()));
        node_env.push((i, "TERN_OUTBOUND_RETRY_SECONDS", "1".to_owned()));
        node_env.push((i, "TERN_OUTBOUND_POLL_MS", "300".to_owned()));
        node_env.push((i, "TERN_OUTBOUND_QUEUE_LIFETIME_SECONDS", "40".to_owned()));
    }
    let cluster = Cluster::start(
        3,
        Options {
            shards: 1,
            node_env,
            ..Options::default()
        },
    )
    .await;
    let alice = format!("alice@{DOMAIN}");
    let admin = cluster.admin(1);
    cluster.check(
        create_domain_retrying(&admin, DOMAIN, Duration::from_secs(30)).await,
        "creating the domain",
    );
    cluster.check(
        admin.create_account(&alice, PASSWORD, None).await,
        "creating the account",
    );

    // Submitted to node 0: three remote recipients, queued before the 250.
    let submission = cluster.mail_addr(0, "submission");
    let (status, out) = run(
        "python3",
        strings(&[
            "-",
            &submission.ip().to_string(),
            &submission.port().to_string(),
            &cluster.ca_file().display().to_string(),
            &alice,
            PASSWORD,
            "outbound-1@example.test",
            "x@remote.test",
            "bounce@remote.test",
            "later@remote.test",
        ]),
        Some(SUBMIT.to_owned()),
    )
    .await;
    if status != 0 || !out.contains("refused {}") {
        cluster.fail(&format!("submission: exit {status}\n{out}"));
    }
    // Node 0 (and maybe others) tried, found no server, deferred.
    wait_for(
        &cluster,
        Duration::from_secs(30),
        "a deferred attempt",
        async || {
            (0..3)
                .any(|i| cluster.log_since_restart(i).contains("Connection refused"))
                .then_some(())
        },
    )
    .await;
    assert!(postfix.messages().is_empty());
    // The node that accepted the message dies; the queue is on the others.
    cluster.kill(0);
    postfix.start();

    // Delivered once, by node 1 or 2.
    let delivered = wait_for(
        &cluster,
        Duration::from_secs(60),
        "delivery to Postfix",
        async || {
            let found: Vec<String> = postfix
                .messages()
                .into_iter()
                .filter(|m| m.contains("Message-ID: <outbound-1@example.test>"))
                .collect();
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    assert!(
        delivered[0].contains("\n.a line that starts with a dot"),
        "dot-stuffing undone: {}",
        delivered[0]
    );
    assert!(
        delivered[0].contains("Delivered-To: x@remote.test")
            || delivered[0].contains("x@remote.test")
    );
    // Signed by the node that delivered it; the Maildir keeps LF line endings.
    assert!(
        delivered[0].contains("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{}",
        delivered[0]
    );
    let wire = delivered[0].replace("\r\n", "\n").replace('\n', "\r\n");
    let caches = DnsCaches::default();
    caches.seed_txt(
        "tern._domainkey.example.test.",
        Txt::DomainKey(std::sync::Arc::new(
            DomainKey::parse(dkim_record.as_bytes()).unwrap(),
        )),
    );
    let verifier = InboundChecks::with_caches(unreachable_resolver(), "mx.remote.test", caches);
    assert_eq!(
        verifier.verify_dkim(wire.as_bytes()).await,
        DkimResult::Pass,
        "{wire}"
    );
    let forged = wire.replace("hello", "jello");
    assert_ne!(
        verifier.verify_dkim(forged.as_bytes()).await,
        DkimResult::Pass
    );

    // The 4xx recipient is tried again (several times, one second apart).
    wait_for(
        &cluster,
        Duration::from_secs(30),
        "retries of the 4xx recipient",
        async || {
            (postfix
                .log()
                .matches("<later@remote.test>: Recipient address rejected: try later")
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;

    // At the end of its 40 s lifetime the message gives up on `later`, and one bounce names
    // both failed recipients.
    let bounce = wait_for(
        &cluster,
        Duration::from_secs(90),
        "the bounce in alice's INBOX",
        async || {
            let messages = cluster.admin(1).all_messages(&alice, "INBOX").await.ok()?;
            let bounces: Vec<_> = messages
                .into_iter()
                .filter(|m| m.subject.as_deref() == Some("Undelivered Mail Returned to Sender"))
                .collect();
            (!bounces.is_empty()).then_some(bounces)
        },
    )
    .await;
    assert_eq!(bounce.len(), 1, "one bounce: {bounce:?}");
    // Delivered once in all, whatever node delivered it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copies = postfix
        .messages()
        .into_iter()
        .filter(|m| m.contains("Message-ID: <outbound-1@example.test>"))
        .count();
    assert_eq!(copies, 1, "{}", postfix.log());
    // The survivors' metrics: the recipients' outcomes and the bounce, and the (now empty)
    // queue of shard 1 as the acting workers read it.
    let mut sums = [0u64; 4];
    for i in 1..3 {
        for (sum, outcome) in sums
            .iter_mut()
            .zip(["delivered", "deferred", "failed", "bounced"])
        {
            let series = format!("tern_outbound_deliveries_total{{outcome=\"{outcome}\"}}");
            *sum += cluster.check(cluster.metric(i, &series).await, "outbound metrics");
        }
        let depth = cluster
            .metric(i, "tern_outbound_queue_messages{shard=\"1\"}")
            .await;
        assert_eq!(depth, Ok(0), "node {i}: the queue is empty");
    }
    let [delivered, deferred, failed, bounced] = sums;
    assert!(
        delivered >= 1 && deferred >= 2 && failed >= 2 && bounced == 1,
        "{sums:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Sends one message on port 25 (no TLS, no AUTH) with a forged `Authentication-Results:`
/// naming the node, then reads its header back over IMAP and prints it.
const INBOUND: &str = r#"
import imaplib, smtplib, ssl, sys, time
smtp_addr, imap_addr, ca, user, password, hostname = sys.argv[1:7]
msg = (f"Authentication-Results: {hostname}; spf=pass smtp.mailfrom=friend@elsewhere.test; dkim=pass\r\n"
       f"Authentication-Results: other.example; spf=fail\r\n"
       f"From: friend@elsewhere.test\r\nTo: {user}\r\nSubject: inbound checks\r\n"
       f"Message-ID: <inbound-1@elsewhere.test>\r\n\r\nhello\r\n")
host, port = smtp_addr.rsplit(":", 1)
deadline = time.time() + 30
while True:
    try:
        with smtplib.SMTP(host, int(port), timeout=60) as s:
            s.ehlo("mail.elsewhere.test")
            s.sendmail("friend@elsewhere.test", [user], msg)
        break
    except smtplib.SMTPException:
        if time.time() > deadline:
            raise
        time.sleep(0.3)
host, port = imap_addr.rsplit(":", 1)
m = imaplib.IMAP4(host, int(port), timeout=30)
m.starttls(ssl_context=ssl.create_default_context(cafile=ca))
m.login(user, password)
m.select("INBOX")
typ, data = m.search(None, "HEADER", "Message-ID", "inbound-1@elsewhere.test")
uid = data[0].split()[-1]
typ, data = m.fetch(uid, "(BODY.PEEK[HEADER])")
sys.stdout.write(data[0][1].decode())
m.logout()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_mail_records_its_authentication_results() {
    const TEST: &str = "inbound_mail_records_its_authentication_results";
    if !tools(TEST, &[PYTHON]) {
        return;
    }
    // DNS that does not answer (a closed local port): the checks give temperror and the
    // message is stored all the same.
    let node_env = vec![(0, "TERN_DNS_SERVERS", "127.0.0.1:9".to_owned())];
    let cluster = Cluster::start(
        1,
        Options {
            shards: 1,
            node_env,
            ..Options::default()
        },
    )
    .await;
    let bob = format!("bob@{DOMAIN}");
    let admin = cluster.admin(0);
    cluster.check(
        create_domain_retrying(&admin, DOMAIN, Duration::from_secs(30)).await,
        "creating the domain",
    );
    cluster.check(
        admin.create_account(&bob, PASSWORD, None).await,
        "creating the account",
    );
    let hostname = cluster.name(0).to_owned();
    let (status, header) = run(
        "python3",
        strings(&[
            "-",
            &cluster.mail_addr(0, "smtp").to_string(),
            &cluster.mail_addr(0, "imap").to_string(),
            &cluster.ca_file().display().to_string(),
            &bob,
            PASSWORD,
            &hostname,
        ]),
        Some(INBOUND.to_owned()),
    )
    .await;
    if status != 0 {
        cluster.fail(&format!("inbound: exit {status}\n{header}"));
    }
    let ours = format!("Authentication-Results: {hostname};");
    assert_eq!(
        header.matches(&ours).count(),
        1,
        "ours only, once: {header}"
    );
    assert!(header.starts_with(&ours), "on top: {header}");
    for part in [
        "spf=temperror",
        "smtp.helo=mail.elsewhere.test",
        "smtp.mailfrom=friend@elsewhere.test",
        "dkim=none",
        "dmarc=temperror",
        "header.from=elsewhere.test",
    ] {
        assert!(header.contains(part), "{part} in {header}");
    }
    assert!(
        !header.contains("dkim=pass"),
        "the forged verdict is gone: {header}"
    );
    assert!(header.contains("Authentication-Results: other.example; spf=fail"));
    assert!(
        header.contains("Received: from mail.elsewhere.test ([127.0.0.1])"),
        "{header}"
    );
    assert!(header.contains(&format!("by {hostname} (Tern) with ESMTP id")));
}
