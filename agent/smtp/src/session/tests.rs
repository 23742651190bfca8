//! The state machine on byte strings: every command, every refusal, every limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;
use crate::auth::base64_encode;
use crate::harness;
use crate::parser::Notify;

const DOMAIN: &str = "example.org";

/// A session with a scripted backend; records what reached the backend.
struct Driver {
    session: Session,
    /// Results for the next deliveries (default: all stored).
    results: Vec<Vec<DeliveryStatus>>,
    deliveries: Vec<Delivery>,
    auth_calls: Vec<Credentials>,
    auth_answer: Option<AuthVerdict>,
    tls_starts: usize,
}

fn config(limits: Limits) -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.org".into(),
        starttls: true,
        auth: true,
        limits,
    }
}

fn addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000)
}

fn alice() -> Account {
    Account {
        name: "alice".into(),
        addresses: vec!["alice@example.org".into(), "@alias.example".into()],
    }
}

impl Driver {
    fn new(protocol: Protocol) -> Self {
        Self::with(protocol, config(Limits::default()), false)
    }

    fn with(protocol: Protocol, config: SessionConfig, tls: bool) -> Self {
        let mut info = SessionInfo::new(SessionId(7), protocol, addr(), addr());
        if tls {
            info.tls = Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "X".into(),
            });
        }
        let mut session = Session::new(config, info);
        let greeting = String::from_utf8(session.take_output()).unwrap();
        assert!(greeting.starts_with("220 mx.example.org "), "{greeting}");
        Driver {
            session,
            results: Vec::new(),
            deliveries: Vec::new(),
            auth_calls: Vec::new(),
            auth_answer: None,
            tls_starts: 0,
        }
    }

    /// Feeds `input`, answers every question like a small directory would, returns the
    /// replies written until the session wanted input again (or closed).
    fn send(&mut self, input: &str) -> String {
        self.send_bytes(input.as_bytes())
    }

    fn send_bytes(&mut self, input: &[u8]) -> String {
        self.session.receive(input);
        loop {
            match self.session.poll() {
                Action::NeedInput | Action::Close => break,
                Action::AwaitingAnswer => panic!("an answer was due"),
                Action::StartTls => {
                    self.tls_starts += 1;
                    self.session.tls_established(TlsInfo {
                        version: "TLSv1.3".into(),
                        cipher: "TLS13_AES_128_GCM_SHA256".into(),
                    });
                }
                Action::CheckSender(path) => {
                    let verdict = match &path {
                        ReversePath::Mailbox(m) if m.local_part == "refused" => {
                            SenderVerdict::Refuse
                        }
                        ReversePath::Mailbox(m) if m.local_part == "tempfail" => {
                            SenderVerdict::TempFail
                        }
                        _ => SenderVerdict::Accept,
                    };
                    self.session.sender_verdict(verdict);
                }
                Action::CheckRecipient(m) => {
                    let verdict = if m.is_postmaster() || m.domain.eq_ignore_ascii_case(DOMAIN) {
                        match m.local_part.to_lowercase().as_str() {
                            "alice" | "bob" | "carol" | "postmaster" | "用户" => {
                                RcptVerdict::Local
                            }
                            "busy" => RcptVerdict::TempFail,
                            "refused" => RcptVerdict::Refuse(Reply::new(
                                550,
                                Status(5, 7, 1),
                                "not delivered from here",
                            )),
                            "full" => RcptVerdict::Refuse(Reply::new(
                                452,
                                Status(4, 2, 2),
                                "mailbox full",
                            )),
                            "confused" => RcptVerdict::Refuse(Reply::plain(250, "fine")),
                            _ => RcptVerdict::Unknown,
                        }
                    } else {
                        RcptVerdict::Relay
                    };
                    self.session.recipient_verdict(verdict);
                }
                Action::Authenticate(c) => {
                    let verdict = self.auth_answer.clone().unwrap_or_else(|| {
                        if c.username == "alice" && c.password == "secret" {
                            AuthVerdict::Ok(alice())
                        } else {
                            AuthVerdict::Invalid
                        }
                    });
                    self.auth_calls.push(c);
                    self.session.auth_result(verdict);
                }
                Action::Deliver(d) => {
                    let results = if self.results.is_empty() {
                        vec![DeliveryStatus::Stored; d.envelope.recipients.len()]
                    } else {
                        self.results.remove(0)
                    };
                    self.deliveries.push(d);
                    self.session.delivered(results);
                }
            }
        }
        String::from_utf8(self.session.take_output()).unwrap()
    }

    /// An authenticated submission session (STARTTLS, EHLO, AUTH PLAIN).
    fn submission() -> Self {
        let mut d = Driver::new(Protocol::Submission);
        d.send("EHLO c\r\n");
        assert!(d.send("STARTTLS\r\n").starts_with("220 2.0.0"));
        d.send("EHLO c\r\n");
        let plain = base64_encode(b"\0alice\0secret");
        assert_eq!(
            d.send(&format!("AUTH PLAIN {plain}\r\n")),
            "235 2.7.0 Authentication successful\r\n"
        );
        d
    }
}

fn codes(output: &str) -> Vec<&str> {
    output.lines().map(|l| &l[..3]).collect()
}

#[test]
fn ehlo_lists_extensions_starttls_before_tls_and_auth_only_after() {
    let mut d = Driver::new(Protocol::Submission);
    let ehlo = d.send("EHLO client.example\r\n");
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
        "STARTTLS",
    ] {
        assert!(
            ehlo.contains(&format!("250-{ext}\r\n")) || ehlo.contains(&format!("250 {ext}\r\n")),
            "{ext} in {ehlo}"
        );
    }
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    d.send("STARTTLS\r\n");
    let ehlo = d.send("EHLO client.example\r\n");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(d.send("HELO x\r\n"), "250 mx.example.org\r\n");
}

#[test]
fn smtp_listener_without_auth_never_offers_it() {
    let mut cfg = config(Limits::default());
    cfg.auth = false;
    let mut d = Driver::with(Protocol::Smtp, cfg, true);
    assert!(!d.send("EHLO c\r\n").contains("AUTH"));
    assert!(
        d.send("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
            .starts_with("502 5.5.1")
    );
    assert!(d.auth_calls.is_empty());
}

#[test]
fn a_whole_transaction_pipelined_in_one_write() {
    let mut d = Driver::new(Protocol::Smtp);
    let out = d.send(
        "EHLO c\r\nMAIL FROM:<sender@remote.example> BODY=8BITMIME\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<BOB@example.org>\r\nDATA\r\n",
    );
    assert_eq!(
        codes(&out).iter().filter(|c| **c == "250").count(),
        12,
        "{out}"
    );
    assert!(
        out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{out}"
    );
    let out =
        d.send("From: s@remote.example\r\nSubject: hi\r\n\r\n..dot line\r\nbody\r\n.\r\nQUIT\r\n");
    assert!(
        out.starts_with("250 2.0.0 Ok: queued as 00000000000000000000000000000007.1\r\n"),
        "{out}"
    );
    assert!(out.ends_with("221 2.0.0 mx.example.org closing connection\r\n"));
    assert!(d.session.is_closed());
    let delivery = &d.deliveries[0];
    assert_eq!(
        delivery.message,
        b"From: s@remote.example\r\nSubject: hi\r\n\r\n.dot line\r\nbody\r\n"
    );
    assert_eq!(delivery.header_from, vec!["s@remote.example"]);
    let rcpts: Vec<String> = delivery
        .envelope
        .recipients
        .iter()
        .map(|r| r.mailbox.to_string())
        .collect();
    assert_eq!(rcpts, vec!["alice@example.org", "BOB@example.org"]);
    assert_eq!(
        delivery.envelope.sender.to_string(),
        "<sender@remote.example>"
    );
}

#[test]
fn transaction_counter_gives_each_message_its_own_key() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\n");
    for n in 1..=3 {
        let out = d.send("MAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n");
        assert!(out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
        let out = d.send("x: y\r\n\r\nbody\r\n.\r\n");
        assert!(out.contains(&format!(".{n}\r\n")), "{out}");
    }
    let keys: Vec<u32> = d.deliveries.iter().map(|d| d.key.transaction).collect();
    assert_eq!(keys, vec![1, 2, 3]);
    assert_eq!(
        d.deliveries[0].digest, d.deliveries[1].digest,
        "same envelope and content, same digest"
    );
}

#[test]
fn duplicate_recipients_are_stored_once() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<ALICE@EXAMPLE.ORG>\r\nDATA\r\n");
    assert!(d.send("a: b\r\n\r\n.\r\n").starts_with("250 "));
    assert_eq!(d.deliveries[0].envelope.recipients.len(), 1);
}

#[test]
fn sequence_errors() {
    let mut d = Driver::new(Protocol::Smtp);
    assert_eq!(
        d.send("MAIL FROM:<a@b.example>\r\n"),
        "503 5.5.1 Send EHLO or HELO first\r\n"
    );
    d.send("EHLO c\r\n");
    assert_eq!(
        d.send("RCPT TO:<alice@example.org>\r\n"),
        "503 5.5.1 Need MAIL command\r\n"
    );
    assert_eq!(d.send("DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
    assert_eq!(d.send("MAIL FROM:<a@b.example>\r\n"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        d.send("MAIL FROM:<a@b.example>\r\n"),
        "503 5.5.1 Nested MAIL command\r\n"
    );
    assert_eq!(d.send("DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
    assert_eq!(d.send("RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        d.send("RCPT TO:<alice@example.org>\r\n"),
        "503 5.5.1 Need MAIL command\r\n"
    );
    // EHLO ends a transaction too (RFC 5321 4.1.4).
    d.send("MAIL FROM:<a@b.example>\r\nEHLO again\r\n");
    assert_eq!(
        d.send("RCPT TO:<alice@example.org>\r\n"),
        "503 5.5.1 Need MAIL command\r\n"
    );
}

#[test]
fn simple_commands() {
    let mut d = Driver::new(Protocol::Smtp);
    assert_eq!(d.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    assert!(d.send("VRFY alice\r\n").starts_with("252 2.5.0 "));
    assert!(d.send("EXPN staff\r\n").starts_with("502 5.5.1 "));
    assert!(
        d.send("HELP\r\n")
            .starts_with("214 2.0.0 Commands: EHLO HELO MAIL")
    );
    assert_eq!(d.send("FROB\r\n"), "500 5.5.1 Command unrecognized\r\n");
    assert!(d.send("RSET now\r\n").starts_with("501 5.5.4 "));
    assert!(d.send("LHLO c\r\n").starts_with("500 5.5.1"));
}

#[test]
fn unknown_recipient_temp_failure_and_relay_refused_without_auth() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\nMAIL FROM:<a@remote.example>\r\n");
    assert_eq!(
        d.send("RCPT TO:<nobody@example.org>\r\n"),
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: no such user\r\n"
    );
    assert!(
        d.send("RCPT TO:<busy@example.org>\r\n")
            .starts_with("451 4.3.0 ")
    );
    assert_eq!(
        d.send("RCPT TO:<victim@elsewhere.example>\r\n"),
        "554 5.7.1 <victim@elsewhere.example>: Relay access denied\r\n"
    );
    assert_eq!(d.send("RCPT TO:<Postmaster>\r\n"), "250 2.1.5 Ok\r\n");
    assert!(d.send("DATA\r\n").starts_with("354"));
    d.send("a: b\r\n\r\n.\r\n");
    assert_eq!(
        d.deliveries[0].envelope.recipients.len(),
        1,
        "only the postmaster"
    );
}

#[test]
fn relay_refused_even_with_tls_unless_authenticated_and_never_on_lmtp() {
    // TLS alone grants nothing.
    let mut d = Driver::with(Protocol::Smtp, config(Limits::default()), true);
    d.send("EHLO c\r\nMAIL FROM:<a@remote.example>\r\n");
    assert!(
        d.send("RCPT TO:<x@elsewhere.example>\r\n")
            .starts_with("554 5.7.1")
    );
    // Authenticated submission relays.
    let mut d = Driver::submission();
    d.send("MAIL FROM:<alice@example.org>\r\n");
    assert_eq!(
        d.send("RCPT TO:<x@elsewhere.example>\r\n"),
        "250 2.1.5 Ok\r\n"
    );
    // LMTP never relays.
    let mut d = Driver::new(Protocol::Lmtp);
    d.send("LHLO c\r\nMAIL FROM:<a@remote.example>\r\n");
    assert!(
        d.send("RCPT TO:<x@elsewhere.example>\r\n")
            .starts_with("554 5.7.1")
    );
}

#[test]
fn a_backend_refusal_keeps_its_reply_within_its_class() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\nMAIL FROM:<s@remote.example>\r\n");
    assert_eq!(
        d.send("RCPT TO:<refused@example.org>\r\n"),
        "550 5.7.1 not delivered from here\r\n"
    );
    assert_eq!(
        d.send("RCPT TO:<full@example.org>\r\n"),
        "452 4.2.2 mailbox full\r\n"
    );
    // A positive reply is no refusal: it becomes a permanent one, never an acceptance.
    assert_eq!(
        d.send("RCPT TO:<confused@example.org>\r\n"),
        "550 5.0.0 <confused@example.org>: Recipient refused\r\n"
    );
    assert!(d.send("DATA\r\n").starts_with("554 5.5.1"));
    assert!(d.deliveries.is_empty());
}

#[test]
fn sender_verdicts() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\n");
    assert_eq!(
        d.send("MAIL FROM:<refused@example.org>\r\n"),
        "550 5.7.1 Sender address <refused@example.org> rejected\r\n"
    );
    assert!(
        d.send("MAIL FROM:<tempfail@x.example>\r\n")
            .starts_with("451 4.3.0")
    );
    assert_eq!(d.send("MAIL FROM:<ok@x.example>\r\n"), "250 2.1.0 Ok\r\n");
}

#[test]
fn starttls_resets_the_session_and_needs_a_new_ehlo() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\n");
    assert_eq!(d.send("STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(d.tls_starts, 1);
    assert_eq!(
        d.send("MAIL FROM:<a@b.example>\r\n"),
        "503 5.5.1 Send EHLO or HELO first\r\n"
    );
    assert!(!d.send("EHLO c\r\n").contains("STARTTLS"));
    assert_eq!(d.send("STARTTLS\r\n"), "503 5.5.1 TLS already active\r\n");
    assert_eq!(d.tls_starts, 1);
}

#[test]
fn commands_pipelined_after_starttls_are_refused_and_never_run() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\n");
    let out = d.send("STARTTLS\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<alice@example.org>\r\n");
    assert_eq!(
        out,
        "554 5.5.1 Commands pipelined after STARTTLS are not allowed\r\n"
    );
    assert_eq!(d.tls_starts, 0, "no handshake");
    assert!(d.session.is_closed());
    assert!(matches!(d.session.poll(), Action::Close));
}

#[test]
fn starttls_refusals() {
    let mut cfg = config(Limits::default());
    cfg.starttls = false;
    let mut d = Driver::with(Protocol::Smtp, cfg, false);
    d.send("EHLO c\r\n");
    assert_eq!(
        d.send("STARTTLS\r\n"),
        "502 5.5.1 STARTTLS not available\r\n"
    );
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    assert!(d.send("STARTTLS\r\n").starts_with("503 5.5.1"));
}

#[test]
fn auth_is_refused_before_tls() {
    let mut d = Driver::new(Protocol::Submission);
    d.send("EHLO c\r\n");
    let plain = base64_encode(b"\0alice\0secret");
    assert_eq!(
        d.send(&format!("AUTH PLAIN {plain}\r\n")),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    assert!(
        d.auth_calls.is_empty(),
        "the password never reached the backend"
    );
    assert_eq!(
        d.send("MAIL FROM:<alice@example.org>\r\n"),
        "530 5.7.0 Authentication required\r\n"
    );
}

#[test]
fn auth_plain_and_login_in_every_form() {
    let enc = |s: &str| base64_encode(s.as_bytes());
    // PLAIN with the response on the next line.
    let mut d = Driver::with(Protocol::Submission, config(Limits::default()), true);
    d.send("EHLO c\r\n");
    assert_eq!(d.send("AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(
        d.send(&format!("{}\r\n", enc("\0alice\0secret"))),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(d.session.info().account, Some(alice()));
    assert!(
        d.send("AUTH PLAIN\r\n")
            .starts_with("503 5.5.1 Already authenticated")
    );
    // LOGIN, prompted twice.
    let mut d = Driver::with(Protocol::Submission, config(Limits::default()), true);
    d.send("EHLO c\r\n");
    assert_eq!(d.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        d.send(&format!("{}\r\n", enc("alice"))),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        d.send(&format!("{}\r\n", enc("secret"))),
        "235 2.7.0 Authentication successful\r\n"
    );
    // LOGIN with the user name as initial response.
    let mut d = Driver::with(Protocol::Submission, config(Limits::default()), true);
    d.send("EHLO c\r\n");
    assert_eq!(
        d.send(&format!("AUTH LOGIN {}\r\n", enc("alice"))),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        d.send(&format!("{}\r\n", enc("wrong"))),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(d.auth_calls.len(), 1);
    assert_eq!(d.session.info().account, None);
}

#[test]
fn auth_cancel_bad_base64_unknown_mechanism_and_backend_answers() {
    let mut d = Driver::with(Protocol::Submission, config(Limits::default()), true);
    d.send("EHLO c\r\n");
    d.send("AUTH PLAIN\r\n");
    assert_eq!(d.send("*\r\n"), "501 5.0.0 Authentication cancelled\r\n");
    assert!(d.send("AUTH PLAIN !!!\r\n").starts_with("501 5.5.2"));
    assert!(d.send("AUTH CRAM-MD5\r\n").starts_with("504 5.5.4"));
    let other = base64_encode(b"bob\0alice\0secret");
    assert!(
        d.send(&format!("AUTH PLAIN {other}\r\n"))
            .starts_with("535 5.7.8")
    );
    assert!(d.auth_calls.is_empty());
    d.auth_answer = Some(AuthVerdict::Throttled);
    let plain = base64_encode(b"\0alice\0secret");
    assert!(
        d.send(&format!("AUTH PLAIN {plain}\r\n"))
            .starts_with("454 4.7.0 Too many authentication failures")
    );
    d.auth_answer = Some(AuthVerdict::TempFail);
    assert!(
        d.send(&format!("AUTH PLAIN {plain}\r\n"))
            .starts_with("454 4.7.0 Temporary")
    );
    assert_eq!(d.session.info().account, None);
}

#[test]
fn auth_lines_may_be_longer_than_commands_but_not_endless() {
    let limits = Limits {
        max_command_line: 100,
        max_auth_line: 400,
        ..Limits::default()
    };
    let mut d = Driver::with(Protocol::Submission, config(limits), true);
    d.send("EHLO c\r\n");
    let long_password = "p".repeat(200);
    let plain = base64_encode(format!("\0alice\0{long_password}").as_bytes());
    assert!(plain.len() > 100);
    assert!(
        d.send(&format!("AUTH PLAIN {plain}\r\n"))
            .starts_with("535")
    );
    d.send("AUTH PLAIN\r\n");
    assert!(
        d.send(&format!("{}\r\n", "A".repeat(500)))
            .starts_with("500 5.5.6")
    );
    assert_eq!(d.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

#[test]
fn submission_sender_must_belong_to_the_account() {
    let mut d = Driver::submission();
    assert_eq!(
        d.send("MAIL FROM:<ceo@example.org>\r\n"),
        "553 5.7.1 Sender address <ceo@example.org> not owned by authenticated account\r\n"
    );
    assert!(d.send("MAIL FROM:<>\r\n").starts_with("553 5.7.1"));
    assert_eq!(
        d.send("MAIL FROM:<Anything@Alias.example>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    d.send("RSET\r\n");
    assert_eq!(
        d.send("MAIL FROM:<ALICE@example.org>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
}

#[test]
fn submission_header_from_must_belong_to_the_account() {
    let mut d = Driver::submission();
    d.send("MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n");
    assert_eq!(
        d.send("From: The CEO <ceo@example.org>\r\n\r\nPay now\r\n.\r\n"),
        "550 5.7.1 From header address <ceo@example.org> not owned by authenticated account\r\n"
    );
    d.send("MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n");
    assert_eq!(
        d.send("Subject: no from\r\n\r\nx\r\n.\r\n"),
        "550 5.6.0 Message must have a From header\r\n"
    );
    d.send("MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n");
    assert!(
        d.send("From: Alice <alice@example.org>\r\n\r\nhi\r\n.\r\n")
            .starts_with("250 2.0.0")
    );
    assert_eq!(d.deliveries.len(), 1);
    assert_eq!(d.deliveries[0].header_from, vec!["alice@example.org"]);
}

#[test]
fn declared_and_actual_size_limits() {
    let limits = Limits {
        max_message_size: 100,
        ..Limits::default()
    };
    let mut d = Driver::with(Protocol::Smtp, config(limits), false);
    assert!(d.send("EHLO c\r\n").contains("250-SIZE 100\r\n"));
    assert_eq!(
        d.send("MAIL FROM:<a@b.example> SIZE=101\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    d.send("MAIL FROM:<a@b.example> SIZE=50\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n");
    let big = format!("{}\r\n", "x".repeat(80)).repeat(3);
    let out = d.send(&format!("{big}.\r\nNOOP\r\n"));
    assert_eq!(
        out,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 Ok\r\n"
    );
    assert!(d.deliveries.is_empty());
    // The limit is inclusive.
    d.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n");
    let exact = format!("{}\r\n", "x".repeat(98));
    assert!(d.send(&format!("{exact}.\r\n")).starts_with("250 2.0.0"));
}

#[test]
fn bdat_chunks_last_and_empty_last() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\n");
    // A chunk may hold anything, including what looks like commands and a lone dot.
    assert_eq!(d.send("BDAT 23\r\nSubject: x\r\n\r\n.\r\nQUIT"), "");
    assert_eq!(d.send("\r\n"), "250 2.0.0 23 octets received\r\n");
    assert!(
        d.send("BDAT 6 LAST\r\nbody\r\n")
            .starts_with("250 2.0.0 Ok: queued as")
    );
    assert_eq!(
        d.deliveries[0].message,
        b"Subject: x\r\n\r\n.\r\nQUIT\r\nbody\r\n"
    );
    assert!(!d.session.is_closed());
    d.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nBDAT 8\r\nA: b\r\n\r\n");
    assert!(d.send("BDAT 0 LAST\r\n").starts_with("250 2.0.0 Ok"));
    assert_eq!(d.deliveries[1].message, b"A: b\r\n\r\n");
    assert_eq!(d.deliveries.len(), 2);
}

#[test]
fn bdat_out_of_sequence_is_refused_after_its_chunk_is_skipped() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\n");
    // Without MAIL: the chunk's bytes are skipped, not executed as commands.
    assert_eq!(
        d.send("BDAT 6\r\nQUIT\r\n"),
        "503 5.5.1 Need MAIL command\r\n"
    );
    assert!(!d.session.is_closed());
    d.send("MAIL FROM:<a@b.example>\r\n");
    assert_eq!(
        d.send("BDAT 4 LAST\r\nabcd"),
        "554 5.5.1 No valid recipients\r\n"
    );
    d.send("RCPT TO:<alice@example.org>\r\nBDAT 3\r\na\r\n");
    assert_eq!(
        d.send("DATA\r\n"),
        "503 5.5.1 DATA not allowed after BDAT\r\n"
    );
    assert!(
        d.send("RCPT TO:<bob@example.org>\r\n")
            .starts_with("503 5.5.1")
    );
}

#[test]
fn bdat_over_the_size_limit_fails_the_transaction() {
    let limits = Limits {
        max_message_size: 10,
        ..Limits::default()
    };
    let mut d = Driver::with(Protocol::Smtp, config(limits), false);
    d.send("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\n");
    assert_eq!(
        d.send("BDAT 8\r\n12345678"),
        "250 2.0.0 8 octets received\r\n"
    );
    assert_eq!(
        d.send("BDAT 8\r\n12345678"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(
        d.send("BDAT 2 LAST\r\n\r\n"),
        "503 5.5.1 Need MAIL command\r\n"
    );
    assert!(d.deliveries.is_empty());
    // Over the limit in the last chunk.
    d.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\n");
    assert!(
        d.send(&format!("BDAT 20 LAST\r\n{}", "x".repeat(20)))
            .starts_with("552 5.3.4")
    );
    assert!(d.deliveries.is_empty());
}

#[test]
fn dsn_parameters_are_carried_in_the_envelope() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\nMAIL FROM:<a@b.example> RET=HDRS ENVID=QQ314159\r\n");
    assert_eq!(
        d.send(
            "RCPT TO:<alice@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;Alice+40example.org\r\n"
        ),
        "250 2.1.5 Ok\r\n"
    );
    d.send("DATA\r\n");
    d.send("a: b\r\n\r\n.\r\n");
    let env = &d.deliveries[0].envelope;
    assert_eq!(env.params.ret, Some(crate::parser::Ret::Headers));
    assert_eq!(env.params.envid.as_deref(), Some("QQ314159"));
    let r = &env.recipients[0];
    assert_eq!(
        r.params.notify,
        Some(Notify {
            failure: true,
            delay: true,
            ..Notify::default()
        })
    );
    assert_eq!(
        r.params.orcpt.as_ref().unwrap().address,
        "Alice@example.org"
    );
    assert!(
        d.send("MAIL FROM:<a@b.example> RET=ALL\r\n")
            .starts_with("501 5.5.4")
    );
    assert!(
        d.send("MAIL FROM:<a@b.example> FOO=BAR\r\n")
            .starts_with("555 5.5.4")
    );
}

#[test]
fn recipient_limit() {
    let limits = Limits {
        max_recipients: 2,
        ..Limits::default()
    };
    let mut d = Driver::with(Protocol::Smtp, config(limits), false);
    let out = d.send(
        "EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\n",
    );
    assert!(
        out.ends_with("250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n"),
        "{out}"
    );
    d.send("DATA\r\n");
    d.send("a: b\r\n\r\n.\r\n");
    assert_eq!(d.deliveries[0].envelope.recipients.len(), 2);
}

#[test]
fn error_limit_closes_the_session() {
    let limits = Limits {
        max_errors: 3,
        ..Limits::default()
    };
    let mut d = Driver::with(Protocol::Smtp, config(limits), false);
    let out = d.send("FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n");
    assert_eq!(
        out,
        "500 5.5.1 Command unrecognized\r\n500 5.5.1 Command unrecognized\r\n500 5.5.1 Command unrecognized\r\n421 4.7.0 Too many errors, closing connection\r\n"
    );
    assert!(d.session.is_closed());
}

#[test]
fn overlong_command_lines_are_refused_and_the_session_continues() {
    let limits = Limits {
        max_command_line: 64,
        ..Limits::default()
    };
    let mut d = Driver::with(Protocol::Smtp, config(limits), false);
    // In one piece.
    assert_eq!(
        d.send(&format!("NOOP {}\r\nNOOP\r\n", "x".repeat(100))),
        "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"
    );
    // Arriving in pieces without an end: refused once, the rest skipped until the LF.
    assert_eq!(d.send(&"y".repeat(100)), "500 5.5.2 Line too long\r\n");
    assert_eq!(d.send(&"y".repeat(100)), "");
    assert_eq!(d.send("yyy\r\nNOOP\r\n"), "250 2.0.0 Ok\r\n");
    // Exactly at the limit (CRLF included) is fine.
    assert_eq!(
        d.send(&format!("NOOP {}\r\n", "z".repeat(57))),
        "250 2.0.0 Ok\r\n"
    );
    assert_eq!(
        d.send(&format!("NOOP {}\r\n", "z".repeat(58))),
        "500 5.5.2 Line too long\r\n"
    );
}

#[test]
fn bare_lf_nul_and_control_characters_in_commands() {
    let mut d = Driver::new(Protocol::Smtp);
    assert_eq!(
        d.send("EHLO c\n"),
        "500 5.5.2 Syntax error: bare LF; commands must end with CRLF\r\n"
    );
    assert_eq!(
        d.session.info().helo,
        None,
        "the bare-LF line was not executed"
    );
    assert_eq!(
        d.send_bytes(b"EHLO c\0x\r\n"),
        "500 5.5.2 Syntax error: control characters are not allowed\r\n"
    );
    assert!(
        d.send("EHLO c\rMAIL FROM:<a@b.example>\r\n")
            .starts_with("500 5.5.2")
    );
    assert!(d.send_bytes(b"EHLO \xc3\x28\r\n").starts_with("500 5.5.2"));
    assert!(d.send("EHLO c\r\n").starts_with("250-"));
}

#[test]
fn content_refusals_bare_lf_nul_long_lines() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\n");
    let transaction = |d: &mut Driver, body: &[u8]| {
        d.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n");
        d.send_bytes(body)
    };
    assert_eq!(
        transaction(&mut d, b"a: b\r\n\r\nline\nline\r\n.\r\n"),
        "550 5.6.2 Message refused: bare CR or LF; lines must end with CRLF\r\n"
    );
    assert_eq!(
        transaction(&mut d, b"a: b\r\n\r\nx\0y\r\n.\r\n"),
        "550 5.6.0 Message refused: NUL characters are not allowed\r\n"
    );
    let long = [
        b"a: b\r\n\r\n".to_vec(),
        vec![b'x'; 999],
        b"\r\n.\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(
        transaction(&mut d, &long),
        "550 5.6.0 Message refused: a line is longer than 998 characters\r\n"
    );
    assert!(d.deliveries.is_empty());
    assert_eq!(d.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

#[test]
fn smuggled_end_of_data_is_content_not_a_new_transaction() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n");
    let out = d.send("a: b\r\n\r\nhi\n.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nforged\r\n.\r\n");
    assert_eq!(
        out,
        "550 5.6.2 Message refused: bare CR or LF; lines must end with CRLF\r\n"
    );
    assert!(
        d.deliveries.is_empty(),
        "neither the message nor the smuggled one was delivered"
    );
}

#[test]
fn smtputf8_is_needed_for_non_ascii_addresses() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\n");
    assert!(
        d.send("MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή>\r\n")
            .starts_with("553 5.6.7")
    );
    d.send("MAIL FROM:<a@b.example>\r\n");
    assert!(
        d.send("RCPT TO:<用户@example.org>\r\n")
            .starts_with("553 5.6.7")
    );
    d.send("RSET\r\n");
    assert_eq!(
        d.send("MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(d.send("RCPT TO:<用户@example.org>\r\n"), "250 2.1.5 Ok\r\n");
}

#[test]
fn lmtp_replies_once_per_recipient_in_order() {
    let mut d = Driver::new(Protocol::Lmtp);
    assert!(d.send("EHLO c\r\n").starts_with("500 5.5.1 This is LMTP"));
    assert!(d.send("LHLO c\r\n").starts_with("250-mx.example.org"));
    d.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<nobody@example.org>\r\nRCPT TO:<carol@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n");
    d.results.push(vec![
        DeliveryStatus::Stored,
        DeliveryStatus::temp("shard has no quorum"),
        DeliveryStatus::PermFail(Reply::new(552, Status(5, 2, 2), "mailbox full")),
    ]);
    let out = d.send("a: b\r\n\r\n.\r\n");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("250 2.0.0 Ok: delivered as"));
    assert_eq!(lines[1], "451 4.3.0 shard has no quorum");
    assert_eq!(lines[2], "552 5.2.2 mailbox full");
    assert!(lines[3].starts_with("250 2.0.0"), "alice again");
    // A refused message also gets one reply per recipient.
    d.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n");
    assert_eq!(
        codes(&d.send("a: b\r\n\r\nx\0\r\n.\r\n")),
        vec!["550", "550"]
    );
    // No recipients: 503 to DATA (RFC 2033 4.2).
    d.send("MAIL FROM:<a@b.example>\r\n");
    assert!(d.send("DATA\r\n").starts_with("503 5.5.1"));
}

#[test]
fn smtp_acknowledges_only_when_every_recipient_is_stored() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\n");
    let two = "MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n";
    let body = "a: b\r\n\r\n.\r\n";
    d.results.push(vec![
        DeliveryStatus::Stored,
        DeliveryStatus::temp("no quorum"),
    ]);
    d.send(two);
    assert_eq!(
        d.send(body),
        "451 4.3.0 Message not stored for every recipient, try again later\r\n"
    );
    d.results.push(vec![
        DeliveryStatus::perm("gone"),
        DeliveryStatus::temp("no quorum"),
    ]);
    d.send(two);
    assert!(
        d.send(body).starts_with("451 4.3.0"),
        "temporary wins: the client retries"
    );
    d.results.push(vec![
        DeliveryStatus::Stored,
        DeliveryStatus::perm("mailbox disabled"),
    ]);
    d.send(two);
    assert_eq!(d.send(body), "554 5.0.0 mailbox disabled\r\n");
    d.results.push(vec![DeliveryStatus::Stored]);
    d.send(two);
    assert!(
        d.send(body).starts_with("451 4.3.0"),
        "a wrong number of results is not a success"
    );
    // One recipient: its own reply; a backend reply of the wrong class is replaced.
    let one = "MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n";
    d.results.push(vec![DeliveryStatus::TempFail(Reply::new(
        452,
        Status(4, 2, 2),
        "over quota",
    ))]);
    d.send(one);
    assert_eq!(d.send(body), "452 4.2.2 over quota\r\n");
    d.results.push(vec![DeliveryStatus::TempFail(Reply::new(
        250,
        Status(2, 0, 0),
        "oops",
    ))]);
    d.send(one);
    assert_eq!(
        d.send(body),
        "451 4.3.0 Temporary failure storing the message\r\n"
    );
    d.send(two);
    assert!(d.send(body).starts_with("250 2.0.0"));
}

#[test]
fn foreign_protocols_are_cut_off() {
    let mut d = Driver::new(Protocol::Smtp);
    assert_eq!(
        d.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "421 4.7.0 This is an SMTP server, closing connection\r\n"
    );
    assert!(d.session.is_closed());
}

#[test]
fn closing_drops_the_message_in_progress() {
    let mut d = Driver::new(Protocol::Smtp);
    d.send("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nhalf a message\r\n");
    assert!(d.session.in_message());
    d.session.close_with(crate::reply::canned::idle_timeout());
    assert_eq!(
        String::from_utf8(d.session.take_output()).unwrap(),
        "421 4.4.2 Idle timeout, closing connection\r\n"
    );
    assert_eq!(d.send(".\r\n"), "");
    assert!(d.deliveries.is_empty());
    assert!(!d.session.in_message());
}

#[test]
fn answers_out_of_turn_are_ignored() {
    let mut d = Driver::new(Protocol::Smtp);
    d.session.recipient_verdict(RcptVerdict::Local);
    d.session.delivered(vec![DeliveryStatus::Stored]);
    d.session.auth_result(AuthVerdict::Ok(alice()));
    d.session.tls_established(TlsInfo {
        version: "x".into(),
        cipher: "y".into(),
    });
    assert_eq!(d.session.info().account, None);
    assert_eq!(d.session.info().tls, None);
    assert_eq!(d.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

#[test]
fn received_header_records_client_proxy_and_tls() {
    let mut d = Driver::submission();
    d.send("MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n");
    d.send("From: alice@example.org\r\n\r\nhi\r\n.\r\n");
    let mut info = d.session.info().clone();
    info.client = "192.0.2.9:5000".parse().unwrap();
    let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
    let header = crate::envelope::received_header(&info, &d.deliveries[0], "mx.example.org", now);
    assert_eq!(
        header,
        "Received: from c ([192.0.2.9])\r\n\t(via proxy [127.0.0.1])\r\n\tby mx.example.org (Tern) with ESMTPSA id 00000000000000000000000000000007.1\r\n\t(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)\r\n\tfor <bob@example.org>;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
    );
}

#[test]
fn the_property_harness_accepts_a_real_conversation() {
    let conversation: &[&[u8]] = &[
        b"EHLO c\r\nSTARTTLS\r\n",
        b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        b"MAIL FROM:<alice> \r\nMAIL FROM:<alice@x.example>\r\nRCPT TO:<a@b.example>\r\nDATA\r\n",
        b"From: alice@x.example\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    ];
    for flags in 0..=255u8 {
        for seed in [0u8, 1, 77, 255] {
            harness::drive(flags, seed, conversation.iter().copied()).unwrap();
        }
    }
}

mod properties {
    use proptest::prelude::*;

    use crate::harness;

    /// Fragments that reach deep states: real commands, DATA and BDAT bodies, SASL
    /// responses, and the classic trouble makers.
    fn fragment() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"EHLO c\r\n".to_vec()),
            Just(b"LHLO c\r\n".to_vec()),
            Just(b"HELO c\r\n".to_vec()),
            Just(b"STARTTLS\r\n".to_vec()),
            Just(b"AUTH PLAIN AGFAeC5leGFtcGxlAHB3\r\n".to_vec()),
            Just(b"AUTH LOGIN\r\nYUB4LmV4YW1wbGU=\r\ncHc=\r\n".to_vec()),
            Just(b"AUTH PLAIN\r\n*\r\n".to_vec()),
            Just(b"MAIL FROM:<a@x.example> SIZE=100 SMTPUTF8\r\n".to_vec()),
            Just(b"MAIL FROM:<>\r\n".to_vec()),
            Just(b"RCPT TO:<b@y.example> NOTIFY=SUCCESS ORCPT=rfc822;b+40y.example\r\n".to_vec()),
            Just(b"RCPT TO:<Postmaster>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"From: a@x.example\r\n\r\nbody\r\n.\r\n".to_vec()),
            Just(b"..stuffed\r\n.\r\n".to_vec()),
            Just(b"bare\nlf\r\n.\r\n".to_vec()),
            Just(b"BDAT 5\r\nab\r\nc".to_vec()),
            Just(b"BDAT 0 LAST\r\n".to_vec()),
            Just(b"BDAT 12 LAST\r\nFrom: a@x\r\n".to_vec()),
            Just(b"RSET\r\nNOOP\r\nQUIT\r\n".to_vec()),
            Just(b"\0\r\n".to_vec()),
            Just(vec![b'x'; 200]),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Arbitrary bytes, in arbitrary pieces: no panic, no stall, well-formed replies.
        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            harness::run(&data).map_err(TestCaseError::fail)?;
        }

        /// Plausible conversations with garbage mixed in, cut at arbitrary points.
        #[test]
        fn command_soup(
            flags in any::<u8>(),
            seed in any::<u8>(),
            fragments in proptest::collection::vec(fragment(), 0..30),
            cut in 1usize..50,
        ) {
            let stream: Vec<u8> = fragments.concat();
            harness::drive(flags, seed, stream.chunks(cut)).map_err(TestCaseError::fail)?;
        }
    }
}
