//! RFC 3501 / 9051 edge cases, scripted over a real TCP socket with implicit TLS against the
//! server and its in-memory backend: literals in every string position, sequence sets with
//! `*`, partial fetches, keywords, an EXPUNGE by another session during FETCH, RENAME of
//! INBOX, modified UTF-7 mailbox names, pipelined commands, malformed input and commands in
//! the wrong state (BAD/NO, and the session goes on), and stalled clients timed out while
//! another is served. (`server.rs` and `imaplib_client.py` cover the common paths.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_imap::{Limits, ListenerConfig, MemoryBackend, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A server certificate and a client configuration that trusts exactly it.
fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// A running implicit-TLS listener.
struct Imaps {
    port: u16,
    client: Arc<rustls::ClientConfig>,
    backend: Arc<MemoryBackend>,
}

const MESSAGES: [&str; 3] = [
    "From: bob@example.org\r\nSubject: one\r\n\r\nfirst body\r\n",
    "From: carol@example.org\r\nSubject: two\r\n\r\nsecond body\r\n",
    "From: dave@example.org\r\nSubject: three\r\n\r\nthird body\r\n",
];

async fn start(limits: Limits) -> Imaps {
    let (server_tls, client) = tls_pair();
    let backend = Arc::new(MemoryBackend::new());
    backend.add_account("alice", "secret");
    for m in MESSAGES {
        backend.deliver("alice", "INBOX", m.as_bytes()).unwrap();
    }
    let mut config = ListenerConfig::new("imap.test", Some(server_tls));
    config.implicit_tls = true;
    config.limits = limits;
    let server = Server::new(config, Arc::clone(&backend)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    Imaps {
        port,
        client,
        backend,
    }
}

struct Client {
    io: BufReader<TlsStream<TcpStream>>,
}

const WAIT: Duration = Duration::from_secs(10);

impl Imaps {
    async fn connect(&self) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = TlsConnector::from(Arc::clone(&self.client))
            .connect(name, tcp)
            .await
            .unwrap();
        let mut c = Client {
            io: BufReader::new(tls),
        };
        let greeting = c.line().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    /// Connected, logged in as alice, INBOX selected.
    async fn selected(&self) -> Client {
        let mut c = self.connect().await;
        c.ok("l", "LOGIN alice secret").await;
        c.ok("s", "SELECT INBOX").await;
        c
    }
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// One line (CRLF stripped); "" when the server closed the connection.
    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        tokio::time::timeout(WAIT, self.io.read_until(b'\n', &mut line))
            .await
            .expect("the server answers in time")
            .unwrap();
        String::from_utf8_lossy(&line).trim_end().to_owned()
    }

    /// One response: a line, with any literal it announces read into it.
    async fn response(&mut self) -> String {
        let mut text = self.line().await;
        while let Some(n) = literal_len(&text) {
            let mut body = vec![0u8; n];
            tokio::time::timeout(WAIT, self.io.read_exact(&mut body))
                .await
                .expect("the literal comes in time")
                .unwrap();
            text.push_str("\r\n");
            text.push_str(&String::from_utf8_lossy(&body));
            text.push_str(&self.line().await);
        }
        text
    }

    /// Responses up to and including the one tagged `tag`.
    async fn until(&mut self, tag: &str) -> Vec<String> {
        let mut all = vec![];
        loop {
            let r = self.response().await;
            assert!(!r.is_empty(), "closed before {tag}'s answer: {all:?}");
            let done = r.starts_with(&format!("{tag} "));
            all.push(r);
            if done {
                return all;
            }
        }
    }

    async fn cmd(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until(tag).await
    }

    /// Runs a command that must succeed; returns its untagged responses.
    async fn ok(&mut self, tag: &str, command: &str) -> Vec<String> {
        let mut all = self.cmd(tag, command).await;
        let last = all.pop().unwrap();
        assert!(
            last.starts_with(&format!("{tag} OK")),
            "{command}: {last} ({all:?})"
        );
        all
    }

    /// Runs a command whose tagged answer must start with `want` (`BAD`, `NO`, `NO [TOOBIG]`).
    async fn refused(&mut self, tag: &str, command: &str, want: &str) {
        let all = self.cmd(tag, command).await;
        let last = all.last().unwrap();
        assert!(
            last.starts_with(&format!("{tag} {want}")),
            "{command}: wanted {want}, got {all:?}"
        );
    }

    async fn still_serving(&mut self) {
        self.ok("alive", "NOOP").await;
    }
}

/// `n` when `line` ends with a literal announcement `{n}`.
fn literal_len(line: &str) -> Option<usize> {
    let body = line.strip_suffix('}')?;
    let open = body.rfind('{')?;
    body[open + 1..].parse().ok()
}

fn joined(responses: &[String]) -> String {
    responses.join("\n")
}

#[tokio::test]
async fn literals_in_every_string_position() {
    let imaps = start(Limits::default()).await;
    let mut c = imaps.connect().await;
    // Synchronising literals for both LOGIN arguments: each waits for the continuation.
    c.send(b"a LOGIN {5}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    c.send(b"alice {6}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    c.send(b"secret\r\n").await;
    assert!(c.until("a").await.last().unwrap().starts_with("a OK"));

    // A mailbox name as a literal with a space in it; LIST quotes it back.
    c.send(b"b CREATE {10}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    c.send(b"Two Words!\r\n").await;
    assert!(c.until("b").await.last().unwrap().starts_with("b OK"));
    let list = c.ok("c", "LIST \"\" \"Two*\"").await;
    assert!(joined(&list).contains("\"Two Words!\""), "{list:?}");

    // LITERAL+: no continuation; the message holds a bare "}" line and a "{3}" that is data.
    let message = b"Subject: braces\r\n\r\n{3}\r\n}\r\n";
    let mut append = format!("d APPEND \"Two Words!\" {{{}+}}\r\n", message.len()).into_bytes();
    append.extend_from_slice(message);
    append.extend_from_slice(b"\r\n");
    c.send(&append).await;
    let answer = c.until("d").await;
    assert!(
        answer.last().unwrap().starts_with("d OK [APPENDUID"),
        "{answer:?}"
    );
    c.ok("e", "SELECT \"Two Words!\"").await;
    let body = c.ok("f", "FETCH 1 BODY.PEEK[]").await;
    assert!(
        joined(&body).contains(&format!("{{{}}}\r\n{}", message.len(), "Subject: braces")),
        "{body:?}"
    );
    assert!(joined(&body).contains("{3}\r\n}\r\n"), "{body:?}");

    // A zero-length literal is an empty string: SUBJECT "" matches every message.
    c.send(b"g SEARCH SUBJECT {0}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    c.send(b"\r\n").await;
    let found = c.until("g").await;
    assert!(found.iter().any(|r| r == "* SEARCH 1"), "{found:?}");

    // A literal whose declared size cannot be a number, and one over the limit: refused,
    // nothing read as literal data, the session goes on.
    c.refused("h", "SEARCH SUBJECT {99999999999999999999}", "BAD")
        .await;
    c.send(b"i LOGIN {4294967295}\r\n").await;
    let answer = c.until("i").await;
    assert!(
        answer.last().unwrap().starts_with("i NO [TOOBIG]"),
        "{answer:?}"
    );
    c.still_serving().await;
}

#[tokio::test]
async fn sequence_sets_with_star() {
    let imaps = start(Limits::default()).await;
    let mut c = imaps.selected().await;
    let uids = |r: &[String]| -> Vec<String> {
        r.iter()
            .filter(|l| l.contains(" FETCH "))
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .collect()
    };
    assert_eq!(uids(&c.ok("a", "FETCH * (UID)").await), ["3"]);
    // `*:2` is `2:*`.
    assert_eq!(uids(&c.ok("b", "FETCH *:2 (UID)").await), ["2", "3"]);
    assert_eq!(uids(&c.ok("c", "FETCH 3,1 (UID)").await).len(), 2);
    // A UID range ending in `*` always holds the largest UID, even from above it.
    let high = c.ok("d", "UID FETCH 100:* (FLAGS)").await;
    assert_eq!(high.len(), 1, "{high:?}");
    assert!(high[0].contains("UID 3"), "{high:?}");
    // UIDs that do not exist are skipped, not an error.
    let some = c.ok("e", "UID FETCH 2:9 (FLAGS)").await;
    assert_eq!(some.len(), 2, "{some:?}");
    let found = c.ok("f", "UID SEARCH UID 2:*").await;
    assert_eq!(found, ["* SEARCH 2 3"]);
    let found = c.ok("g", "SEARCH 2:*").await;
    assert_eq!(found, ["* SEARCH 2 3"]);
    // A message number beyond the mailbox and a zero are refused.
    c.refused("h", "FETCH 4 (UID)", "BAD").await;
    c.refused("i", "FETCH 0 (UID)", "BAD").await;
    c.still_serving().await;
}

#[tokio::test]
async fn partial_fetch() {
    let imaps = start(Limits::default()).await;
    let mut c = imaps.selected().await;
    let whole = MESSAGES[0];
    let r = c.ok("a", "FETCH 1 (BODY.PEEK[]<0.4>)").await;
    assert!(joined(&r).contains("BODY[]<0> {4}\r\nFrom"), "{r:?}");
    let r = c.ok("b", "FETCH 1 (BODY.PEEK[]<6.3>)").await;
    assert!(
        joined(&r).contains(&format!("BODY[]<6> {{3}}\r\n{}", &whole[6..9])),
        "{r:?}"
    );
    // TEXT is the body after the blank line; the range counts within it.
    let r = c.ok("c", "FETCH 1 (BODY.PEEK[TEXT]<6.4>)").await;
    assert!(joined(&r).contains("BODY[TEXT]<6> {4}\r\nbody"), "{r:?}");
    // A range that runs past the end is cut; one that starts past it is empty.
    let r = c.ok("d", "FETCH 1 (BODY.PEEK[]<40.1000>)").await;
    assert!(
        joined(&r).contains(&format!(
            "BODY[]<40> {{{}}}\r\n{}",
            whole.len() - 40,
            &whole[40..]
        )),
        "{r:?}"
    );
    let r = c.ok("e", "FETCH 1 (BODY.PEEK[]<5000.10>)").await;
    let text = joined(&r);
    assert!(
        text.contains("BODY[]<5000> \"\"") || text.contains("BODY[]<5000> {0}"),
        "{r:?}"
    );
    // PEEK leaves \Seen alone; a partial BODY[] sets it.
    let r = c.ok("f", "FETCH 1 (FLAGS)").await;
    assert!(!joined(&r).contains("\\Seen"), "{r:?}");
    c.ok("g", "FETCH 1 (BODY[]<0.1>)").await;
    let r = c.ok("h", "FETCH 1 (FLAGS)").await;
    assert!(joined(&r).contains("\\Seen"), "{r:?}");
}

#[tokio::test]
async fn keywords() {
    let imaps = start(Limits::default()).await;
    let mut c = imaps.connect().await;
    c.ok("l", "LOGIN alice secret").await;
    let select = c.ok("s", "SELECT INBOX").await;
    assert!(
        select
            .iter()
            .any(|r| r.contains("PERMANENTFLAGS") && r.contains("\\*")),
        "new keywords may be created: {select:?}"
    );
    let r = c.ok("a", "STORE 1,3 +FLAGS ($Later Work)").await;
    assert!(
        r.iter().all(|l| l.contains("$Later") && l.contains("Work")),
        "{r:?}"
    );
    assert_eq!(c.ok("b", "SEARCH KEYWORD Work").await, ["* SEARCH 1 3"]);
    assert_eq!(c.ok("c", "SEARCH UNKEYWORD Work").await, ["* SEARCH 2"]);
    c.ok("d", "STORE 3 -FLAGS (Work)").await;
    assert_eq!(c.ok("e", "SEARCH KEYWORD Work").await, ["* SEARCH 1"]);
    // Keywords survive a new session.
    let mut other = imaps.selected().await;
    let r = other.ok("f", "FETCH 1 (FLAGS)").await;
    assert!(
        joined(&r).contains("$Later") && joined(&r).contains("Work"),
        "{r:?}"
    );
    // A flag that is not an atom is a syntax error.
    c.refused("g", "STORE 1 +FLAGS (a(b)", "BAD").await;
    c.refused("h", "STORE 1 +FLAGS (\\NotAFlag)", "BAD").await;
    c.still_serving().await;
}

#[tokio::test]
async fn expunge_by_another_session_waits_until_fetch_is_done() {
    let imaps = start(Limits::default()).await;
    let mut a = imaps.selected().await;
    let mut b = imaps.selected().await;
    b.ok("b1", "STORE 2 +FLAGS.SILENT (\\Deleted)").await;
    let r = b.ok("b2", "EXPUNGE").await;
    assert_eq!(r, ["* 2 EXPUNGE"]);
    // A still numbers the mailbox as before: no EXPUNGE while it fetches, stores or
    // searches by sequence number (RFC 9051 §7.5.1); the gone message is left out.
    let all = a.cmd("a1", "FETCH 1:3 (UID FLAGS)").await;
    assert!(!joined(&all).contains("EXPUNGE"), "{all:?}");
    assert!(
        all.iter().any(|r| r.starts_with("* 3 FETCH (UID 3")),
        "{all:?}"
    );
    assert!(!all.iter().any(|r| r.starts_with("* 2 FETCH")), "{all:?}");
    let last = all.last().unwrap();
    assert!(
        last.starts_with("a1 OK") || last.starts_with("a1 NO"),
        "{all:?}"
    );
    let all = a.cmd("a2", "SEARCH ALL").await;
    assert!(!joined(&all).contains("EXPUNGE"), "{all:?}");
    // NOOP reports it; from then on A numbers as B does.
    let r = a.ok("a3", "NOOP").await;
    assert!(r.iter().any(|l| l == "* 2 EXPUNGE"), "{r:?}");
    let r = a.ok("a4", "FETCH 2 (UID)").await;
    assert_eq!(r, ["* 2 FETCH (UID 3)"]);
    // And the other way round: a delivery while A fetches shows up on the next NOOP.
    imaps
        .backend
        .deliver("alice", "INBOX", b"Subject: late\r\n\r\nlate\r\n")
        .unwrap();
    let r = a.ok("a5", "FETCH 1:2 (UID)").await;
    assert!(!joined(&r).contains("EXISTS"), "{r:?}");
    let r = a.ok("a6", "NOOP").await;
    assert!(r.iter().any(|l| l == "* 3 EXISTS"), "{r:?}");
}

#[tokio::test]
async fn rename_inbox_moves_its_messages_and_keeps_inbox() {
    let imaps = start(Limits::default()).await;
    let mut c = imaps.connect().await;
    c.ok("l", "LOGIN alice secret").await;
    c.ok("a", "RENAME INBOX \"Old Mail\"").await;
    let r = c.ok("b", "STATUS \"Old Mail\" (MESSAGES UIDNEXT)").await;
    assert!(joined(&r).contains("MESSAGES 3"), "{r:?}");
    let r = c.ok("c", "STATUS INBOX (MESSAGES)").await;
    assert!(joined(&r).contains("MESSAGES 0"), "{r:?}");
    let r = c.ok("d", "SELECT INBOX").await;
    assert!(r.iter().any(|l| l == "* 0 EXISTS"), "{r:?}");
    // Renaming onto INBOX or onto an existing name is refused.
    c.refused("e", "RENAME Sent INBOX", "NO").await;
    c.refused("f", "RENAME Sent Trash", "NO").await;
    c.refused("g", "RENAME Missing Elsewhere", "NO").await;
    c.still_serving().await;
}

#[tokio::test]
async fn mailbox_names_in_modified_utf7() {
    let imaps = start(Limits::default()).await;
    let mut c = imaps.connect().await;
    c.ok("l", "LOGIN alice secret").await;
    // "日本語" and "Entwürfe" in modified UTF-7 (RFC 3501 §5.1.3).
    c.ok("a", "CREATE &ZeVnLIqe-").await;
    c.ok("b", "CREATE Entw&APw-rfe/Alt").await;
    let list = c.ok("c", "LIST \"\" *").await;
    let text = joined(&list);
    assert!(text.contains("&ZeVnLIqe-"), "{list:?}");
    assert!(text.contains("Entw&APw-rfe/Alt"), "{list:?}");
    c.ok("d", "SELECT &ZeVnLIqe-").await;
    let r = c.ok("e", "STATUS Entw&APw-rfe/Alt (MESSAGES)").await;
    assert!(joined(&r).contains("MESSAGES 0"), "{r:?}");
    // Raw 8-bit in a quoted name is not IMAP4rev1 syntax.
    c.send("f CREATE \"Entwürfe\"\r\n".as_bytes()).await;
    let r = c.until("f").await;
    assert!(r.last().unwrap().starts_with("f BAD"), "{r:?}");
    c.still_serving().await;
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let imaps = start(Limits::default()).await;
    let mut c = imaps.connect().await;
    c.send(
        b"p1 LOGIN alice secret\r\np2 SELECT INBOX\r\np3 FETCH 1:* (UID)\r\n\
          p4 STORE 1 +FLAGS (\\Flagged)\r\np5 SEARCH FLAGGED\r\np6 BOGUS\r\np7 NOOP\r\n\
          p8 LOGOUT\r\n",
    )
    .await;
    let mut tags = vec![];
    let mut all = vec![];
    loop {
        let r = c.response().await;
        if r.is_empty() {
            break;
        }
        if !r.starts_with('*') {
            tags.push(r.split(' ').next().unwrap().to_owned());
        }
        all.push(r);
    }
    assert_eq!(
        tags,
        ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"],
        "{all:?}"
    );
    assert!(all.iter().any(|r| r == "* SEARCH 1"), "{all:?}");
    assert!(all.iter().any(|r| r.starts_with("p6 BAD")), "{all:?}");
    assert!(all.iter().any(|r| r.starts_with("* BYE")), "{all:?}");
}

#[tokio::test]
async fn malformed_input_and_wrong_state_get_bad_or_no() {
    let imaps = start(Limits::default()).await;
    let mut c = imaps.connect().await;
    // Not authenticated.
    c.refused("a", "FETCH 1 (FLAGS)", "BAD").await;
    c.refused("b", "CREATE x", "BAD").await;
    c.refused("c", "STARTTLS", "BAD").await;
    c.ok("l", "LOGIN alice secret").await;
    // Authenticated, nothing selected.
    c.refused("d", "LOGIN alice secret", "BAD").await;
    c.refused("e", "FETCH 1 (FLAGS)", "BAD").await;
    c.refused("f", "EXPUNGE", "BAD").await;
    c.refused("g", "CLOSE", "BAD").await;
    c.refused("h", "APPEND Nowhere {1+}\r\nx", "NO [TRYCREATE]")
        .await;
    c.still_serving().await;
    c.ok("s", "SELECT INBOX").await;
    // Unbalanced parentheses.
    c.refused("i", "FETCH 1 (FLAGS", "BAD").await;
    c.refused("j", "FETCH 1 FLAGS)", "BAD").await;
    c.refused("k", "SEARCH (OR SEEN", "BAD").await;
    // Invalid sequence sets.
    for (tag, set) in [
        ("m", "1,,2"),
        ("n", "4294967296"),
        ("o", "1:"),
        ("p", "-1"),
        ("q", "1:x"),
    ] {
        c.refused(tag, &format!("FETCH {set} (FLAGS)"), "BAD").await;
    }
    c.still_serving().await;
    // The mailbox is unharmed.
    assert_eq!(c.ok("r", "SEARCH ALL").await, ["* SEARCH 1 2 3"]);
}

#[tokio::test]
async fn stalled_clients_are_timed_out_and_others_served() {
    let timeout = Duration::from_millis(600);
    let imaps = start(Limits {
        unauthenticated_timeout: timeout,
        authenticated_timeout: timeout,
        idle_timeout: timeout,
        ..Limits::default()
    })
    .await;
    // Four stalls: before login, after login, in the middle of a literal, and in IDLE.
    let mut before = imaps.connect().await;
    let mut after = imaps.selected().await;
    let mut literal = imaps.selected().await;
    literal.send(b"x APPEND INBOX {100}\r\n").await;
    assert!(literal.line().await.starts_with("+ "));
    literal.send(b"only ten b").await;
    let mut idle = imaps.selected().await;
    idle.send(b"i IDLE\r\n").await;
    assert!(idle.line().await.starts_with("+ "));

    // A busy client is served the whole time.
    let mut busy = imaps.selected().await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < timeout * 3 {
        busy.ok(&format!("n{n}"), "NOOP").await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, client, bye) in [
        ("before login", &mut before, "* BYE"),
        ("after login", &mut after, "* BYE"),
        ("mid-literal", &mut literal, "* BYE"),
        ("idle", &mut idle, "* BYE"),
    ] {
        let line = client.line().await;
        assert!(line.starts_with(bye), "{name}: {line:?}");
        assert_eq!(client.line().await, "", "{name}: closed after the BYE");
    }
    // Nothing of the half-sent APPEND was stored.
    let r = busy.ok("z", "STATUS INBOX (MESSAGES)").await;
    assert!(joined(&r).contains("MESSAGES 3"), "{r:?}");
}
