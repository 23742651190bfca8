//! The server over real TCP and real TLS (an rcgen certificate), against an in-memory
//! backend: deliveries, refusals, the open-relay matrix, TLS and AUTH, PROXY headers,
//! timeouts, limits and malformed input while other sessions carry on.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tern_smtp::auth::{Credentials, base64_encode};
use tern_smtp::parser::{Mailbox, ReversePath};
use tern_smtp::proxy::V2_SIGNATURE;
use tern_smtp::{
    Account, AuthVerdict, Backend, Delivery, DeliveryStatus, ListenerConfig, ListenerKind,
    RcptVerdict, SenderVerdict, Server, SessionInfo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LOCAL_DOMAIN: &str = "example.org";

/// Local mailboxes alice@, bob@ and postmaster@example.org; one account, alice / secret,
/// who may also send as anything@alias.example. Deliveries to recipients listed in
/// `temp_fail` fail temporarily (a shard without quorum).
#[derive(Default)]
struct Memory {
    stored: Mutex<Vec<(SessionInfo, Delivery)>>,
    recipient_clients: Mutex<Vec<SocketAddr>>,
    auth_calls: AtomicUsize,
    temp_fail: Mutex<HashSet<String>>,
}

impl Memory {
    fn stored(&self) -> Vec<(SessionInfo, Delivery)> {
        self.stored.lock().unwrap().clone()
    }

    fn stored_messages(&self) -> Vec<String> {
        self.stored()
            .into_iter()
            .map(|(_, d)| String::from_utf8(d.message).unwrap())
            .collect()
    }
}

impl Backend for Memory {
    async fn recipient(&self, session: &SessionInfo, address: &Mailbox) -> RcptVerdict {
        self.recipient_clients.lock().unwrap().push(session.client);
        if address.is_postmaster() || address.domain.eq_ignore_ascii_case(LOCAL_DOMAIN) {
            match address.local_part.to_lowercase().as_str() {
                "alice" | "bob" | "postmaster" => RcptVerdict::Local,
                _ => RcptVerdict::Unknown,
            }
        } else {
            // Whoever asks: the engine must refuse it unless the session is authenticated.
            RcptVerdict::Relay
        }
    }

    async fn authenticate(&self, _: &SessionInfo, credentials: &Credentials) -> AuthVerdict {
        self.auth_calls.fetch_add(1, Ordering::SeqCst);
        if credentials.username == "alice" && credentials.password == "secret" {
            AuthVerdict::Ok(Account {
                name: "alice".into(),
                addresses: vec!["alice@example.org".into(), "@alias.example".into()],
            })
        } else {
            AuthVerdict::Invalid
        }
    }

    async fn deliver(&self, session: &SessionInfo, delivery: &Delivery) -> Vec<DeliveryStatus> {
        let temp = self.temp_fail.lock().unwrap().clone();
        let results: Vec<DeliveryStatus> = delivery
            .envelope
            .recipients
            .iter()
            .map(|r| {
                if temp.contains(&r.mailbox.to_string()) {
                    DeliveryStatus::temp("shard has no quorum")
                } else {
                    DeliveryStatus::Stored
                }
            })
            .collect();
        if results.iter().all(|r| *r == DeliveryStatus::Stored) {
            self.stored
                .lock()
                .unwrap()
                .push((session.clone(), delivery.clone()));
        }
        results
    }

    async fn sender(&self, session: &SessionInfo, sender: &ReversePath) -> SenderVerdict {
        // Unauthenticated clients may not claim a local sender.
        match sender {
            ReversePath::Mailbox(m)
                if session.account.is_none() && m.domain.eq_ignore_ascii_case(LOCAL_DOMAIN) =>
            {
                SenderVerdict::Refuse
            }
            _ => SenderVerdict::Accept,
        }
    }
}

struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn tls() -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = issued.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

struct Running {
    addr: SocketAddr,
    stats: Arc<tern_smtp::ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server stops")
            .unwrap();
    }
}

async fn start(config: ListenerConfig, backend: Arc<Memory>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(config, backend).unwrap();
    let stats = server.stats();
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stats,
        stop: Some(tx),
        handle,
    }
}

fn config(kind: ListenerKind) -> ListenerConfig {
    ListenerConfig::new(kind, "mx.example.org")
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A deliberately simple client that lets tests send anything.
struct Client {
    stream: Stream,
    buf: Vec<u8>,
}

/// The length of the first complete reply in `buf`.
fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(i) = buf[start..].windows(2).position(|w| w == b"\r\n") {
        let line = &buf[start..start + i];
        start += i + 2;
        if line.len() < 4 || line[3] == b' ' {
            return Some(start);
        }
    }
    None
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).await.unwrap())
    }

    fn over(tcp: TcpStream) -> Client {
        Client {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects and reads the greeting.
    async fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220 mx.example.org "), "{greeting}");
        c
    }

    async fn implicit_tls(addr: SocketAddr, tls: &Tls) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client));
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Client {
            stream: Stream::Tls(Box::new(stream)),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, data: &[u8]) {
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(data).await.unwrap(),
            Stream::Tls(s) => {
                s.write_all(data).await.unwrap();
                s.flush().await.unwrap();
            }
        }
    }

    async fn read_some(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let read = match &mut self.stream {
            Stream::Plain(s) => timeout(Duration::from_secs(10), s.read(&mut chunk)).await,
            Stream::Tls(s) => timeout(Duration::from_secs(10), s.read(&mut chunk)).await,
        };
        let n = read.expect("server answers in time").unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next reply, all its lines; empty when the server closed the connection.
    async fn reply(&mut self) -> String {
        loop {
            if let Some(end) = complete_reply(&self.buf) {
                let reply: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8(reply).unwrap();
            }
            if self.read_some().await == 0 {
                return String::from_utf8(std::mem::take(&mut self.buf)).unwrap();
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Whether the server closed the connection (after any pending replies).
    async fn closed(&mut self) -> bool {
        self.buf.clear();
        self.read_some().await == 0
    }

    async fn starttls(&mut self, tls: &Tls) {
        assert_eq!(
            self.cmd("STARTTLS").await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Plain(dummy().await))
        else {
            panic!("already TLS");
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client));
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        self.stream = Stream::Tls(Box::new(stream));
    }

    /// MAIL, RCPTs and DATA; returns the reply to the end of data.
    async fn transaction(&mut self, from: &str, to: &[&str], message: &str) -> String {
        assert_eq!(
            self.cmd(&format!("MAIL FROM:<{from}>")).await,
            "250 2.1.0 Ok\r\n"
        );
        for rcpt in to {
            assert_eq!(
                self.cmd(&format!("RCPT TO:<{rcpt}>")).await,
                "250 2.1.5 Ok\r\n"
            );
        }
        assert!(self.cmd("DATA").await.starts_with("354 "));
        self.send(format!("{message}\r\n.\r\n").as_bytes()).await;
        self.reply().await
    }
}

/// A connected socket to park in a Client while its stream is being upgraded.
async fn dummy() -> TcpStream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    TcpStream::connect(addr).await.unwrap()
}

fn plain_auth(user: &str, password: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        base64_encode(format!("\0{user}\0{password}").as_bytes())
    )
}

#[tokio::test]
async fn delivers_a_message_with_a_received_header() {
    let backend = Arc::new(Memory::default());
    let server = start(config(ListenerKind::Smtp), Arc::clone(&backend)).await;
    let mut c = Client::greeted(server.addr).await;
    assert!(c.cmd("EHLO client.example").await.contains("250 DSN\r\n"));
    let reply = c
        .transaction(
            "sender@remote.example",
            &["alice@example.org"],
            "From: sender@remote.example\r\nSubject: hello\r\n\r\n..hi",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    assert!(c.cmd("QUIT").await.starts_with("221 2.0.0"));
    assert!(c.closed().await);
    let messages = backend.stored_messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert!(m.starts_with("Received: from client.example ([127.0.0.1])\r\n\tby mx.example.org (Tern) with ESMTP id "), "{m}");
    assert!(m.contains("\tfor <alice@example.org>;\r\n"), "{m}");
    assert!(
        m.ends_with("From: sender@remote.example\r\nSubject: hello\r\n\r\n.hi\r\n"),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_recipient_and_relay_from_loopback_are_refused() {
    let backend = Arc::new(Memory::default());
    let server = start(config(ListenerKind::Smtp), Arc::clone(&backend)).await;
    let mut c = Client::greeted(server.addr).await;
    c.cmd("EHLO client.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<sender@remote.example>").await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<nobody@example.org>").await,
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: no such user\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<victim@elsewhere.example>").await,
        "554 5.7.1 <victim@elsewhere.example>: Relay access denied\r\n"
    );
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 No valid recipients\r\n");
    // A forged local sender from outside is refused by the backend's sender policy.
    c.cmd("RSET").await;
    assert_eq!(
        c.cmd("MAIL FROM:<ceo@example.org>").await,
        "550 5.7.1 Sender address <ceo@example.org> rejected\r\n"
    );
    assert!(backend.stored().is_empty());
    server.stop().await;
}

fn proxy_v2_tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_header_sets_the_client_address_but_never_permits_relaying() {
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Smtp);
    cfg.proxy_protocol = true;
    let server = start(cfg, Arc::clone(&backend)).await;
    // v2 claiming an internal address.
    let mut c = Client::connect(server.addr).await;
    c.send(&proxy_v2_tcp4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 25))
        .await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO internal.example").await;
    c.cmd("MAIL FROM:<a@remote.example>").await;
    assert!(
        c.cmd("RCPT TO:<victim@elsewhere.example>")
            .await
            .starts_with("554 5.7.1")
    );
    assert_eq!(c.cmd("RCPT TO:<bob@example.org>").await, "250 2.1.5 Ok\r\n");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: via proxy\r\n\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 "));
    assert!(
        backend
            .recipient_clients
            .lock()
            .unwrap()
            .iter()
            .all(|a| a.to_string() == "10.0.0.1:40000")
    );
    let (info, delivery) = backend.stored().pop().unwrap();
    assert_eq!(info.client.to_string(), "10.0.0.1:40000");
    let m = String::from_utf8(delivery.message).unwrap();
    assert!(
        m.starts_with(
            "Received: from internal.example ([10.0.0.1])\r\n\t(via proxy [127.0.0.1])\r\n"
        ),
        "{m}"
    );
    // v1 claiming loopback.
    let mut c = Client::connect(server.addr).await;
    c.send(b"PROXY TCP4 127.0.0.1 127.0.0.1 1234 25\r\n").await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO localhost").await;
    c.cmd("MAIL FROM:<a@remote.example>").await;
    assert!(
        c.cmd("RCPT TO:<victim@elsewhere.example>")
            .await
            .starts_with("554 5.7.1")
    );
    // No header at all: refused without a greeting.
    let mut c = Client::connect(server.addr).await;
    c.send(b"EHLO sneaky.example\r\n").await;
    assert!(
        c.closed().await,
        "a connection without a PROXY header is closed"
    );
    // Two sessions, one connection refused before any.
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::SeqCst);
    assert_eq!(count(&server.stats.sessions), 2);
    assert_eq!(count(&server.stats.refused), 1);
    server.stop().await;
}

#[tokio::test]
async fn proxy_header_in_front_of_implicit_tls() {
    let tls = tls();
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Smtps);
    cfg.tls = Some(Arc::clone(&tls.server));
    cfg.proxy_protocol = true;
    let server = start(cfg, Arc::clone(&backend)).await;
    // The ClientHello follows the header at once; the server must hand it to TLS intact.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 465\r\n")
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client));
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut c = Client {
        stream: Stream::Tls(Box::new(stream)),
        buf: Vec::new(),
    };
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO laptop").await;
    assert!(
        c.cmd(&plain_auth("alice", "secret"))
            .await
            .starts_with("235")
    );
    let reply = c
        .transaction(
            "alice@example.org",
            &["bob@example.org"],
            "From: alice@example.org\r\n\r\nhi",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let (info, delivery) = backend.stored().pop().unwrap();
    assert_eq!(info.client.to_string(), "[2001:db8::7]:50000");
    let m = String::from_utf8(delivery.message).unwrap();
    assert!(
        m.starts_with("Received: from laptop ([2001:db8::7])\r\n\t(via proxy [127.0.0.1])"),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn submission_starttls_then_auth_then_relay_with_owned_addresses() {
    let tls = tls();
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Submission);
    cfg.tls = Some(Arc::clone(&tls.server));
    let server = start(cfg, Arc::clone(&backend)).await;
    let mut c = Client::greeted(server.addr).await;
    let ehlo = c.cmd("EHLO laptop").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd(&plain_auth("alice", "secret")).await,
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.org>").await,
        "530 5.7.0 Authentication required\r\n"
    );
    assert_eq!(
        backend.auth_calls.load(Ordering::SeqCst),
        0,
        "no password checked in clear text"
    );
    c.starttls(&tls).await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.org>").await,
        "503 5.5.1 Send EHLO or HELO first\r\n"
    );
    let ehlo = c.cmd("EHLO laptop").await;
    assert!(
        ehlo.ends_with("250 AUTH PLAIN LOGIN\r\n") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd(&plain_auth("alice", "secret")).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<ceo@example.org>").await,
        "553 5.7.1 Sender address <ceo@example.org> not owned by authenticated account\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.org>").await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<friend@elsewhere.example>").await,
        "250 2.1.5 Ok\r\n"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"From: The CEO <ceo@example.org>\r\n\r\nwire the money\r\n.\r\n")
        .await;
    assert_eq!(
        c.reply().await,
        "550 5.7.1 From header address <ceo@example.org> not owned by authenticated account\r\n"
    );
    let reply = c
        .transaction(
            "alice@example.org",
            &["friend@elsewhere.example", "bob@example.org"],
            "From: Alice <alice@example.org>\r\n\r\nhello",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let (info, delivery) = backend.stored().pop().unwrap();
    assert_eq!(info.account.unwrap().name, "alice");
    assert_eq!(delivery.header_from, vec!["alice@example.org"]);
    let m = String::from_utf8(delivery.message).unwrap();
    assert!(
        m.contains(" with ESMTPSA id ") && m.contains("(version=TLSv1.3 cipher=TLS13_"),
        "{m}"
    );
    assert!(!m.contains("\tfor <"), "several recipients are not listed");
    server.stop().await;
}

#[tokio::test]
async fn auth_login_over_implicit_tls() {
    let tls = tls();
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Smtps);
    cfg.tls = Some(Arc::clone(&tls.server));
    let server = start(cfg, Arc::clone(&backend)).await;
    let mut c = Client::implicit_tls(server.addr, &tls).await;
    assert!(c.reply().await.starts_with("220 mx.example.org ESMTP"));
    let ehlo = c.cmd("EHLO laptop").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        c.cmd(&base64_encode(b"alice")).await,
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        c.cmd(&base64_encode(b"secret")).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    let reply = c
        .transaction(
            "x@alias.example",
            &["bob@example.org"],
            "From: x@alias.example\r\n\r\nhi",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn starttls_injection_is_refused_over_the_wire() {
    let tls = tls();
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Smtp);
    cfg.tls = Some(Arc::clone(&tls.server));
    let server = start(cfg, Arc::clone(&backend)).await;
    let mut c = Client::greeted(server.addr).await;
    c.cmd("EHLO c").await;
    c.send(b"STARTTLS\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.org>\r\n")
        .await;
    assert_eq!(
        c.reply().await,
        "554 5.5.1 Commands pipelined after STARTTLS are not allowed\r\n"
    );
    assert!(c.closed().await);
    assert!(
        backend.recipient_clients.lock().unwrap().is_empty(),
        "the injected commands never ran"
    );
    server.stop().await;
}

#[tokio::test]
async fn backend_temporary_failure_is_451_and_nothing_is_acknowledged() {
    let backend = Arc::new(Memory::default());
    backend
        .temp_fail
        .lock()
        .unwrap()
        .insert("bob@example.org".into());
    let server = start(config(ListenerKind::Smtp), Arc::clone(&backend)).await;
    let mut c = Client::greeted(server.addr).await;
    c.cmd("EHLO c").await;
    let reply = c
        .transaction(
            "a@remote.example",
            &["alice@example.org", "bob@example.org"],
            "Subject: x\r\n\r\ny",
        )
        .await;
    assert_eq!(
        reply,
        "451 4.3.0 Message not stored for every recipient, try again later\r\n"
    );
    let reply = c
        .transaction(
            "a@remote.example",
            &["bob@example.org"],
            "Subject: x\r\n\r\ny",
        )
        .await;
    assert_eq!(reply, "451 4.3.0 shard has no quorum\r\n");
    assert!(backend.stored().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn lmtp_answers_per_recipient() {
    let backend = Arc::new(Memory::default());
    backend
        .temp_fail
        .lock()
        .unwrap()
        .insert("bob@example.org".into());
    let server = start(config(ListenerKind::Lmtp), Arc::clone(&backend)).await;
    let mut c = Client::connect(server.addr).await;
    assert!(c.reply().await.starts_with("220 mx.example.org LMTP"));
    assert!(c.cmd("EHLO c").await.starts_with("500"));
    assert!(c.cmd("LHLO c").await.starts_with("250-mx.example.org"));
    c.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n").await;
    for expected in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354 "] {
        assert!(c.reply().await.starts_with(expected));
    }
    c.send(b"Subject: x\r\n\r\ny\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: delivered as "));
    assert_eq!(c.reply().await, "451 4.3.0 shard has no quorum\r\n");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_mid_data_times_out_while_another_is_served() {
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Smtp);
    cfg.limits.idle_timeout = Duration::from_secs(1);
    let server = start(cfg, Arc::clone(&backend)).await;
    let mut stalled = Client::greeted(server.addr).await;
    stalled.cmd("EHLO slow").await;
    stalled.cmd("MAIL FROM:<slow@remote.example>").await;
    stalled.cmd("RCPT TO:<alice@example.org>").await;
    assert!(stalled.cmd("DATA").await.starts_with("354"));
    stalled
        .send(b"Subject: half\r\n\r\nthe first half of a mess")
        .await;
    let started = std::time::Instant::now();
    let mut other = Client::greeted(server.addr).await;
    other.cmd("EHLO fast").await;
    let reply = other
        .transaction(
            "fast@remote.example",
            &["bob@example.org"],
            "Subject: whole\r\n\r\nall of it",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(
        stalled.reply().await,
        "421 4.4.2 Idle timeout, closing connection\r\n"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(stalled.closed().await);
    let messages = backend.stored_messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("Subject: whole"));
    server.stop().await;
}

#[tokio::test]
async fn oversize_messages_get_552() {
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Smtp);
    cfg.limits.max_message_size = 1000;
    let server = start(cfg, Arc::clone(&backend)).await;
    let mut c = Client::greeted(server.addr).await;
    assert!(c.cmd("EHLO c").await.contains("250-SIZE 1000\r\n"));
    assert_eq!(
        c.cmd("MAIL FROM:<a@remote.example> SIZE=5000").await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    let big = "x".repeat(70) + "\r\n";
    let reply = c
        .transaction(
            "a@remote.example",
            &["alice@example.org"],
            &format!("Subject: big\r\n\r\n{}", big.repeat(40)),
        )
        .await;
    assert_eq!(
        reply,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(
        c.cmd("NOOP").await,
        "250 2.0.0 Ok\r\n",
        "the session is still in step"
    );
    assert!(backend.stored().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_answered_while_another_session_keeps_working() {
    let backend = Arc::new(Memory::default());
    let server = start(config(ListenerKind::Smtp), Arc::clone(&backend)).await;
    let mut good = Client::greeted(server.addr).await;
    good.cmd("EHLO good").await;
    let mut bad = Client::greeted(server.addr).await;
    bad.send(b"EHLO bad\n").await;
    assert_eq!(
        bad.reply().await,
        "500 5.5.2 Syntax error: bare LF; commands must end with CRLF\r\n"
    );
    bad.send(format!("NOOP {}\r\n", "x".repeat(5000)).as_bytes())
        .await;
    assert_eq!(bad.reply().await, "500 5.5.2 Line too long\r\n");
    bad.send(b"EHLO a\0b\r\n").await;
    assert_eq!(
        bad.reply().await,
        "500 5.5.2 Syntax error: control characters are not allowed\r\n"
    );
    assert_eq!(bad.cmd("EHLO bad").await.lines().last(), Some("250 DSN"));
    // A message with a bare LF is refused whole.
    bad.cmd("MAIL FROM:<a@remote.example>").await;
    bad.cmd("RCPT TO:<alice@example.org>").await;
    bad.cmd("DATA").await;
    bad.send(b"Subject: x\r\n\r\nline\n.\r\nmore\r\n.\r\n")
        .await;
    assert_eq!(
        bad.reply().await,
        "550 5.6.2 Message refused: bare CR or LF; lines must end with CRLF\r\n"
    );
    // Meanwhile the other session delivers.
    let reply = good
        .transaction(
            "g@remote.example",
            &["bob@example.org"],
            "Subject: fine\r\n\r\nok",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    // Pipelined garbage: answered line by line until the error limit closes the session.
    bad.send(b"FOO\r\nBAR\r\n\xff\xfe\r\nMAIL\r\nRCPT TO:<>\r\nDATA\r\nXYZZY\r\n")
        .await;
    let mut replies = Vec::new();
    loop {
        let r = bad.reply().await;
        if r.is_empty() {
            break;
        }
        replies.push(r[..3].to_owned());
    }
    assert_eq!(
        replies,
        ["500", "500", "500", "501", "501", "503", "500", "421"],
        "10 errors in all, then 421"
    );
    let reply = good
        .transaction(
            "g@remote.example",
            &["alice@example.org"],
            "Subject: still fine\r\n\r\nok",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(backend.stored().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn auth_failures_are_rate_limited_per_address_without_checking_the_password() {
    let tls = tls();
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Smtps);
    cfg.tls = Some(Arc::clone(&tls.server));
    cfg.limits.max_errors = 50;
    let server = start(cfg, Arc::clone(&backend)).await;
    let mut c = Client::implicit_tls(server.addr, &tls).await;
    c.reply().await;
    c.cmd("EHLO guesser").await;
    for guess in 0..5 {
        assert!(
            c.cmd(&plain_auth("alice", &format!("guess{guess}")))
                .await
                .starts_with("535 5.7.8")
        );
    }
    assert_eq!(
        c.cmd(&plain_auth("alice", "secret")).await,
        "454 4.7.0 Too many authentication failures, try again later\r\n"
    );
    assert_eq!(
        backend.auth_calls.load(Ordering::SeqCst),
        5,
        "the sixth password was not checked"
    );
    // A new connection from the same address is refused too, for any account.
    let mut c = Client::implicit_tls(server.addr, &tls).await;
    c.reply().await;
    c.cmd("EHLO guesser").await;
    assert!(
        c.cmd(&plain_auth("bob", "x"))
            .await
            .starts_with("454 4.7.0")
    );
    assert_eq!(backend.auth_calls.load(Ordering::SeqCst), 5);
    server.stop().await;
}

#[tokio::test]
async fn connection_and_command_rate_limits_per_address() {
    let backend = Arc::new(Memory::default());
    let mut cfg = config(ListenerKind::Smtp);
    cfg.limits.max_connections_per_address = 2;
    cfg.limits.commands_per_second = 1;
    cfg.limits.command_burst = 5;
    let server = start(cfg, Arc::clone(&backend)).await;
    let mut a = Client::greeted(server.addr).await;
    let _b = Client::greeted(server.addr).await;
    let mut c = Client::connect(server.addr).await;
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    assert!(c.closed().await);
    a.send(b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
        .await;
    let mut last = String::new();
    loop {
        let r = a.reply().await;
        if r.is_empty() {
            break;
        }
        last = r;
    }
    assert_eq!(
        last,
        "421 4.7.0 Too many commands from your address, slow down\r\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_says_421_to_idle_sessions_and_returns() {
    let backend = Arc::new(Memory::default());
    let server = start(config(ListenerKind::Smtp), Arc::clone(&backend)).await;
    let mut c = Client::greeted(server.addr).await;
    c.cmd("EHLO c").await;
    let addr = server.addr;
    server.stop().await;
    assert_eq!(
        c.reply().await,
        "421 4.3.2 Service shutting down, try again later\r\n"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn shutdown_lets_a_message_in_progress_finish() {
    let backend = Arc::new(Memory::default());
    let server = start(config(ListenerKind::Smtp), Arc::clone(&backend)).await;
    let mut c = Client::greeted(server.addr).await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@remote.example>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: in flight\r\n\r\n").await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(b"rest of it\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("421 4.3.2"));
    timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backend.stored().len(), 1);
}

/// swaks, a real third-party client, through STARTTLS on the inbound port and with AUTH on
/// submission. Skipped with a note when swaks is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_sends_through_starttls() {
    if std::process::Command::new("swaks")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: swaks is not installed; skipping the swaks test");
        return;
    }
    let tls = tls();
    let backend = Arc::new(Memory::default());
    let mut smtp = config(ListenerKind::Smtp);
    smtp.tls = Some(Arc::clone(&tls.server));
    let inbound = start(smtp, Arc::clone(&backend)).await;
    let mut sub = config(ListenerKind::Submission);
    sub.tls = Some(Arc::clone(&tls.server));
    let submission = start(sub, Arc::clone(&backend)).await;
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("swaks")
                .args(args)
                .output()
                .unwrap()
        })
    };
    let inbound_args: Vec<String> = [
        "--server",
        &inbound.addr.ip().to_string(),
        "--port",
        &inbound.addr.port().to_string(),
        "--tls",
        "--ehlo",
        "swaks.test",
        "--from",
        "someone@remote.example",
        "--to",
        "alice@example.org",
        "--header",
        "Subject: from swaks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(inbound_args).await.unwrap();
    assert!(
        out.status.success(),
        "swaks failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let submission_args: Vec<String> = [
        "--server",
        &submission.addr.ip().to_string(),
        "--port",
        &submission.addr.port().to_string(),
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "secret",
        "--from",
        "alice@example.org",
        "--to",
        "friend@elsewhere.example",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(submission_args).await.unwrap();
    assert!(
        out.status.success(),
        "swaks failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let messages = backend.stored_messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("Subject: from swaks") && messages[0].contains(" with ESMTPS id ")
    );
    assert!(messages[1].contains(" with ESMTPSA id "));
    inbound.stop().await;
    submission.stop().await;
}

#[tokio::test]
async fn concurrent_sessions_get_distinct_delivery_keys() {
    let backend = Arc::new(Memory::default());
    let server = start(config(ListenerKind::Smtp), Arc::clone(&backend)).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::greeted(addr).await;
            c.cmd("EHLO c").await;
            for _ in 0..3 {
                let r = c
                    .transaction(
                        "a@remote.example",
                        &["alice@example.org"],
                        &format!("Subject: {i}\r\n\r\nx"),
                    )
                    .await;
                assert!(r.starts_with("250 2.0.0"), "{r}");
            }
            c.cmd("QUIT").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let keys: HashSet<String> = backend
        .stored()
        .iter()
        .map(|(_, d)| d.key.to_string())
        .collect();
    assert_eq!(keys.len(), 24);
    let per_session: HashMap<u128, usize> =
        backend
            .stored()
            .iter()
            .fold(HashMap::new(), |mut m, (_, d)| {
                *m.entry(d.key.session.0).or_default() += 1;
                m
            });
    assert!(per_session.values().all(|&n| n == 3));
    server.stop().await;
}
