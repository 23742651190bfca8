//! The session state machine: ESMTP (RFC 5321), submission (RFC 6409) and LMTP (RFC 2033)
//! from the server's side, sans I/O.
//!
//! The server feeds it bytes ([`Session::receive`]) and asks it what to do next
//! ([`Session::poll`]); it answers with an [`Action`]: read more, start TLS, ask the backend
//! something, or close. Replies accumulate in an output buffer that the server writes out
//! whenever it is about to wait ([`Action::NeedInput`], [`Action::StartTls`],
//! [`Action::Close`]), which is exactly the flushing rule of PIPELINING (RFC 2920): replies
//! to a pipelined group go out together, and nothing is held back while the server waits.
//! Questions to the backend are answered with [`Session::sender_verdict`],
//! [`Session::recipient_verdict`], [`Session::auth_result`], [`Session::delivered`] and
//! [`Session::tls_established`].
//!
//! Security rules enforced here, whatever the backend or the network says:
//!
//! - No relaying without authentication: a recipient the backend calls
//!   [`RcptVerdict::Relay`] is accepted only from an authenticated session, and never on
//!   LMTP. The client's address plays no part.
//! - Submission needs authentication before MAIL; an authenticated session's MAIL FROM and
//!   header `From:` addresses must belong to its account ([`Account::may_send_as`]).
//! - AUTH is offered and accepted only under TLS and only where the listener allows it.
//! - STARTTLS: anything the client sent after the STARTTLS line, before the handshake, is
//!   a protocol error (`554 5.5.1`, connection closed) and is never executed; after the
//!   handshake every state is forgotten and EHLO must come again (RFC 3207 4.2).
//! - Command lines end only with CRLF. A bare LF ends nothing: a line terminated by one is
//!   refused whole with `500 5.5.2`. NUL and other control characters in a command are
//!   refused with `500 5.5.2`. See [`crate::body`] for the same rules inside messages.

use std::mem;
use std::net::SocketAddr;

use crate::auth::{self, Credentials, Mechanism, SaslError};
use crate::backend::{Account, AuthVerdict, DeliveryStatus, RcptVerdict, SenderVerdict};
use crate::body::{Body, DotDecoder};
use crate::envelope::{Delivery, DeliveryKey, Envelope, Recipient, SessionId};
use crate::header;
use crate::limits::Limits;
use crate::parser::{Command, MailFrom, Mailbox, ParseError, RcptTo, ReversePath, parse_command};
use crate::reply::{Reply, Status};

/// Which protocol a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Inbound mail exchange (port 25): anyone may send to local recipients.
    Smtp,
    /// Message submission (ports 587 and 465): authenticated users send anywhere.
    Submission,
    /// Local delivery from another mail system (port 24): local recipients only, one
    /// reply per recipient.
    Lmtp,
}

impl Protocol {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Submission => "submission",
            Protocol::Lmtp => "lmtp",
        }
    }
}

/// The negotiated TLS parameters of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// E.g. `TLSv1.3`.
    pub version: String,
    /// E.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// What the backend and the logs know about a session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Random id; the delivery keys derive from it.
    pub id: SessionId,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// The client's address: from the PROXY header when the listener uses one, otherwise
    /// the TCP peer. Used for logs and rate limits, never to grant relaying.
    pub client: SocketAddr,
    /// The TCP peer (the load balancer when a PROXY header was used).
    pub peer: SocketAddr,
    /// Set once TLS is up.
    pub tls: Option<TlsInfo>,
    /// The HELO/EHLO/LHLO argument, once given.
    pub helo: Option<String>,
    /// Whether the client greeted with EHLO or LHLO (rather than HELO).
    pub esmtp: bool,
    /// The authenticated account, once AUTH succeeded.
    pub account: Option<Account>,
}

impl SessionInfo {
    /// A session from `client` (as seen through `peer`), not yet greeted.
    pub fn new(id: SessionId, protocol: Protocol, client: SocketAddr, peer: SocketAddr) -> Self {
        SessionInfo {
            id,
            protocol,
            client,
            peer,
            tls: None,
            helo: None,
            esmtp: false,
            account: None,
        }
    }
}

/// Configuration of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// This server's name, in the greeting, EHLO and Received.
    pub hostname: String,
    /// Whether STARTTLS can be offered (a TLS configuration exists).
    pub starttls: bool,
    /// Whether AUTH is offered (once TLS is up). Never on LMTP.
    pub auth: bool,
    /// The limits.
    pub limits: Limits,
}

/// What the session needs from the server next.
#[derive(Debug)]
pub enum Action {
    /// Write the output, then read and [`Session::receive`] more input.
    NeedInput,
    /// Write the output (it ends with `220`), run the TLS handshake, then call
    /// [`Session::tls_established`] (or close the connection if the handshake fails).
    StartTls,
    /// Ask [`Backend::sender`](crate::backend::Backend::sender), then call
    /// [`Session::sender_verdict`].
    CheckSender(ReversePath),
    /// Ask [`Backend::recipient`](crate::backend::Backend::recipient), then call
    /// [`Session::recipient_verdict`].
    CheckRecipient(Mailbox),
    /// Check the credentials (after rate limiting), then call [`Session::auth_result`].
    Authenticate(Credentials),
    /// Prepend the Received header, store the message with
    /// [`Backend::deliver`](crate::backend::Backend::deliver), then call
    /// [`Session::delivered`].
    Deliver(Delivery),
    /// Write the output and close the connection.
    Close,
    /// An answer to the previous action is still due; polling again changes nothing.
    AwaitingAnswer,
}

#[derive(Debug)]
enum Waiting {
    Sender(MailFrom),
    Recipient(RcptTo),
    Auth,
    Delivery {
        key: DeliveryKey,
        recipients: usize,
        order: Vec<usize>,
    },
    Tls,
}

#[derive(Debug)]
enum Sasl {
    PlainResponse,
    LoginUsername,
    LoginPassword { username: String },
}

#[derive(Debug)]
enum Phase {
    Command,
    Sasl(Sasl),
    Data(DotDecoder),
    /// Reading a BDAT chunk; `refusal` is the reply owed once it is read, when the chunk
    /// cannot be part of a transaction.
    Chunk {
        size: u64,
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    Waiting(Waiting),
    Closed,
}

#[derive(Debug)]
struct Transaction {
    mail: MailFrom,
    /// Each address once.
    recipients: Vec<Recipient>,
    /// Per accepted RCPT command, the index of its recipient (LMTP replies per RCPT).
    order: Vec<usize>,
    body: Option<Body>,
    chunked: bool,
}

enum Line {
    Complete(Vec<u8>),
    BareLf,
    TooLong,
    Incomplete,
}

/// One SMTP, submission or LMTP session.
pub struct Session {
    config: SessionConfig,
    info: SessionInfo,
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
    phase: Phase,
    txn: Option<Transaction>,
    errors: u32,
    commands: u64,
    transactions: u32,
    /// Discarding the rest of an overlong line.
    skipping_line: bool,
}

impl std::fmt::Debug for Session {
    /// Without the input buffer, which may hold an AUTH line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("info", &self.info)
            .field("in_message", &self.in_message())
            .field("errors", &self.errors)
            .field("commands", &self.commands)
            .field("transactions", &self.transactions)
            .finish_non_exhaustive()
    }
}

fn ok(status: Status, text: &'static str) -> Reply {
    Reply::new(250, status, text)
}

impl Session {
    /// A new session; the greeting is already in the output.
    pub fn new(config: SessionConfig, info: SessionInfo) -> Self {
        let kind = if info.protocol == Protocol::Lmtp {
            "LMTP"
        } else {
            "ESMTP"
        };
        let greeting = Reply::plain(220, format!("{} {kind} Tern ready", config.hostname));
        let mut session = Session {
            config,
            info,
            input: Vec::new(),
            pos: 0,
            output: Vec::new(),
            phase: Phase::Command,
            txn: None,
            errors: 0,
            commands: 0,
            transactions: 0,
            skipping_line: false,
        };
        session.reply(greeting);
        session
    }

    /// What the backend knows about this session.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Command lines processed so far (for the server's command-rate limit).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// Whether a message is being received (DATA, or a BDAT transaction under way): the
    /// server lets such a session finish during a graceful shutdown.
    pub fn in_message(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Chunk { .. })
            || self.txn.as_ref().is_some_and(|t| t.body.is_some())
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Takes the replies written so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        mem::take(&mut self.output)
    }

    /// Bytes from the client.
    pub fn receive(&mut self, data: &[u8]) {
        if self.is_closed() {
            return;
        }
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(data);
    }

    /// The client closed its side: the session ends, a message in progress is dropped.
    pub fn eof(&mut self) {
        self.phase = Phase::Closed;
        self.txn = None;
    }

    /// Ends the session with `reply` (a 421 from the server: idle timeout, rate limit,
    /// shutdown); a message in progress is dropped and never reaches the backend.
    pub fn close_with(&mut self, reply: Reply) {
        if !self.is_closed() {
            self.reply(reply);
            self.phase = Phase::Closed;
            self.txn = None;
        }
    }

    /// Runs the machine until it needs something from the server.
    pub fn poll(&mut self) -> Action {
        loop {
            let step = match self.phase {
                Phase::Closed => return Action::Close,
                Phase::Waiting(_) => return Action::AwaitingAnswer,
                Phase::Command => self.step_command(),
                Phase::Sasl(_) => self.step_sasl(),
                Phase::Data(_) => self.step_data(),
                Phase::Chunk { .. } => self.step_chunk(),
            };
            if let Some(action) = step {
                return action;
            }
        }
    }

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
    }

    /// A refusal that counts towards the session's error limit.
    fn fail(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.config.limits.max_errors {
            self.reply(Reply::new(
                421,
                Status(4, 7, 0),
                "Too many errors, closing connection",
            ));
            self.phase = Phase::Closed;
            self.txn = None;
        }
    }

    fn need_helo(&self) -> Reply {
        let text = if self.info.protocol == Protocol::Lmtp {
            "Send LHLO first"
        } else {
            "Send EHLO or HELO first"
        };
        Reply::new(503, Status(5, 5, 1), text)
    }

    fn next_line(&mut self, limit: usize) -> Line {
        if self.skipping_line {
            match self.input[self.pos..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pos += i + 1;
                    self.skipping_line = false;
                }
                None => {
                    self.pos = self.input.len();
                    return Line::Incomplete;
                }
            }
        }
        let buf = &self.input[self.pos..];
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                if i + 1 > limit {
                    Line::TooLong
                } else if i == 0 || buf[i - 1] != b'\r' {
                    Line::BareLf
                } else {
                    Line::Complete(buf[..i - 1].to_vec())
                }
            }
            None if buf.len() >= limit => {
                self.pos = self.input.len();
                self.skipping_line = true;
                Line::TooLong
            }
            None => Line::Incomplete,
        }
    }

    fn command_limit(&self) -> usize {
        let buf = &self.input[self.pos..];
        if buf.len() >= 5 && buf[..5].eq_ignore_ascii_case(b"AUTH ") {
            self.config.limits.max_auth_line
        } else {
            self.config.limits.max_command_line
        }
    }

    fn step_command(&mut self) -> Option<Action> {
        let limit = self.command_limit();
        match self.next_line(limit) {
            Line::Incomplete => Some(Action::NeedInput),
            Line::TooLong => {
                self.commands += 1;
                self.fail(Reply::new(500, Status(5, 5, 2), "Line too long"));
                None
            }
            Line::BareLf => {
                self.commands += 1;
                self.fail(Reply::new(
                    500,
                    Status(5, 5, 2),
                    "Syntax error: bare LF; commands must end with CRLF",
                ));
                None
            }
            Line::Complete(line) => {
                self.commands += 1;
                self.command(&line)
            }
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<Action> {
        let command = match parse_command(line) {
            Ok(c) => c,
            Err(e @ ParseError::ForeignProtocol) => {
                self.close_with(e.reply());
                return None;
            }
            Err(e) => {
                self.fail(e.reply());
                return None;
            }
        };
        let lmtp = self.info.protocol == Protocol::Lmtp;
        match command {
            Command::Ehlo(_) | Command::Helo(_) if lmtp => {
                self.fail(Reply::new(500, Status(5, 5, 1), "This is LMTP: use LHLO"));
            }
            Command::Lhlo(_) if !lmtp => {
                self.fail(Reply::new(500, Status(5, 5, 1), "Command unrecognized"));
            }
            Command::Ehlo(name) | Command::Lhlo(name) => self.ehlo(name),
            Command::Helo(name) => {
                self.txn = None;
                self.info.helo = Some(name);
                self.info.esmtp = false;
                self.reply(Reply::plain(250, self.config.hostname.clone()));
            }
            Command::Mail(mail) => return self.mail(mail),
            Command::Rcpt(rcpt) => return self.rcpt(rcpt),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.txn = None;
                self.reply(ok(Status(2, 0, 0), "Ok"));
            }
            Command::Noop => self.reply(ok(Status(2, 0, 0), "Ok")),
            Command::Quit => {
                let text = format!("{} closing connection", self.config.hostname);
                self.close_with(Reply::new(221, Status(2, 0, 0), text));
            }
            Command::Vrfy(_) => self.reply(Reply::new(
                252,
                Status(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => self.reply(Reply::new(502, Status(5, 5, 1), "EXPN not available")),
            Command::Help(_) => {
                let hello = if lmtp { "LHLO" } else { "EHLO HELO" };
                let text = format!(
                    "Commands: {hello} MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP{}{}",
                    if self.config.starttls {
                        " STARTTLS"
                    } else {
                        ""
                    },
                    if self.auth_offered_in_principle() {
                        " AUTH"
                    } else {
                        ""
                    }
                );
                self.reply(Reply::new(214, Status(2, 0, 0), text));
            }
            Command::StartTls => return self.starttls(),
            Command::Auth { mechanism, initial } => return self.auth(&mechanism, initial),
        }
        None
    }

    fn auth_offered_in_principle(&self) -> bool {
        self.config.auth && self.info.protocol != Protocol::Lmtp
    }

    fn ehlo(&mut self, name: String) {
        self.txn = None;
        self.info.helo = Some(name);
        self.info.esmtp = true;
        let mut lines: Vec<std::borrow::Cow<'static, str>> = vec![
            self.config.hostname.clone().into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.limits.max_message_size).into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.config.starttls && self.info.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered_in_principle()
            && self.info.tls.is_some()
            && self.info.account.is_none()
        {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.reply(Reply {
            code: 250,
            status: None,
            lines,
        });
    }

    fn mail(&mut self, mail: MailFrom) -> Option<Action> {
        if self.info.helo.is_none() {
            self.fail(self.need_helo());
            return None;
        }
        if self.txn.is_some() {
            self.fail(Reply::new(503, Status(5, 5, 1), "Nested MAIL command"));
            return None;
        }
        if self.info.protocol == Protocol::Submission && self.info.account.is_none() {
            self.fail(Reply::new(530, Status(5, 7, 0), "Authentication required"));
            return None;
        }
        if mail
            .params
            .size
            .is_some_and(|s| s > self.config.limits.max_message_size)
        {
            self.reply(Reply::new(
                552,
                Status(5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
            return None;
        }
        if let ReversePath::Mailbox(m) = &mail.path
            && !m.is_ascii()
            && !mail.params.smtputf8
        {
            self.fail(Reply::new(
                553,
                Status(5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
            return None;
        }
        if let Some(account) = &self.info.account {
            let owned = match &mail.path {
                ReversePath::Null => false,
                ReversePath::Mailbox(m) => account.may_send_as_mailbox(m),
            };
            if !owned {
                let text = format!(
                    "Sender address {} not owned by authenticated account",
                    mail.path
                );
                self.fail(Reply::new(553, Status(5, 7, 1), text));
                return None;
            }
        }
        let path = mail.path.clone();
        self.phase = Phase::Waiting(Waiting::Sender(mail));
        Some(Action::CheckSender(path))
    }

    /// The backend's answer to [`Action::CheckSender`].
    pub fn sender_verdict(&mut self, verdict: SenderVerdict) {
        let Phase::Waiting(Waiting::Sender(_)) = &self.phase else {
            tracing::warn!("sender verdict while not waiting for one");
            return;
        };
        let Phase::Waiting(Waiting::Sender(mail)) = mem::replace(&mut self.phase, Phase::Command)
        else {
            return;
        };
        match verdict {
            SenderVerdict::Accept => {
                self.txn = Some(Transaction {
                    mail,
                    recipients: Vec::new(),
                    order: Vec::new(),
                    body: None,
                    chunked: false,
                });
                self.reply(ok(Status(2, 1, 0), "Ok"));
            }
            SenderVerdict::Refuse => {
                let text = format!("Sender address {} rejected", mail.path);
                self.fail(Reply::new(550, Status(5, 7, 1), text));
            }
            SenderVerdict::TempFail => self.reply(Reply::new(
                451,
                Status(4, 3, 0),
                "Temporary failure checking the sender, try again later",
            )),
        }
    }

    fn rcpt(&mut self, rcpt: RcptTo) -> Option<Action> {
        let Some(txn) = &self.txn else {
            self.fail(Reply::new(503, Status(5, 5, 1), "Need MAIL command"));
            return None;
        };
        if txn.body.is_some() {
            self.fail(Reply::new(
                503,
                Status(5, 5, 1),
                "RCPT not allowed during BDAT",
            ));
            return None;
        }
        if txn.order.len() >= self.config.limits.max_recipients {
            self.reply(Reply::new(452, Status(4, 5, 3), "Too many recipients"));
            return None;
        }
        if !rcpt.mailbox.is_ascii() && !txn.mail.params.smtputf8 {
            self.fail(Reply::new(
                553,
                Status(5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
            return None;
        }
        let mailbox = rcpt.mailbox.clone();
        self.phase = Phase::Waiting(Waiting::Recipient(rcpt));
        Some(Action::CheckRecipient(mailbox))
    }

    /// The backend's answer to [`Action::CheckRecipient`].
    pub fn recipient_verdict(&mut self, verdict: RcptVerdict) {
        let Phase::Waiting(Waiting::Recipient(_)) = &self.phase else {
            tracing::warn!("recipient verdict while not waiting for one");
            return;
        };
        let Phase::Waiting(Waiting::Recipient(rcpt)) =
            mem::replace(&mut self.phase, Phase::Command)
        else {
            return;
        };
        let may_relay = self.info.account.is_some() && self.info.protocol != Protocol::Lmtp;
        match verdict {
            RcptVerdict::Local => self.accept_recipient(rcpt),
            RcptVerdict::Relay if may_relay => self.accept_recipient(rcpt),
            RcptVerdict::Relay => {
                let text = format!("<{}>: Relay access denied", rcpt.mailbox);
                self.fail(Reply::new(554, Status(5, 7, 1), text));
            }
            RcptVerdict::Unknown => {
                let text = format!(
                    "<{}>: Recipient address rejected: no such user",
                    rcpt.mailbox
                );
                self.fail(Reply::new(550, Status(5, 1, 1), text));
            }
            RcptVerdict::TempFail => {
                let text = format!("<{}>: Temporary failure looking up recipient", rcpt.mailbox);
                self.reply(Reply::new(451, Status(4, 3, 0), text));
            }
            RcptVerdict::Refuse(reply) => {
                let fallback = Reply::new(
                    550,
                    Status(5, 0, 0),
                    format!("<{}>: Recipient refused", rcpt.mailbox),
                );
                let reply = reply.within(400..600, fallback);
                if reply.is_transient() {
                    self.reply(reply);
                } else {
                    self.fail(reply);
                }
            }
        }
    }

    fn accept_recipient(&mut self, rcpt: RcptTo) {
        let Some(txn) = &mut self.txn else { return };
        let index = match txn
            .recipients
            .iter()
            .position(|r| r.mailbox.same_address(&rcpt.mailbox))
        {
            Some(i) => i,
            None => {
                txn.recipients.push(Recipient {
                    mailbox: rcpt.mailbox,
                    params: rcpt.params,
                });
                txn.recipients.len() - 1
            }
        };
        txn.order.push(index);
        self.reply(ok(Status(2, 1, 5), "Ok"));
    }

    /// The refusal for DATA/BDAT when the transaction cannot take a message, if any.
    fn message_refusal(&self, bdat: bool) -> Option<Reply> {
        let Some(txn) = &self.txn else {
            return Some(Reply::new(503, Status(5, 5, 1), "Need MAIL command"));
        };
        if txn.order.is_empty() {
            // RFC 2033 4.2 wants 503 from LMTP; SMTP says 554 (RFC 5321 3.3).
            let code = if self.info.protocol == Protocol::Lmtp {
                503
            } else {
                554
            };
            return Some(Reply::new(code, Status(5, 5, 1), "No valid recipients"));
        }
        if !bdat && txn.chunked {
            return Some(Reply::new(
                503,
                Status(5, 5, 1),
                "DATA not allowed after BDAT",
            ));
        }
        None
    }

    fn data(&mut self) {
        if let Some(refusal) = self.message_refusal(false) {
            self.fail(refusal);
            return;
        }
        let max = self.config.limits.max_message_size;
        if let Some(txn) = &mut self.txn {
            txn.body = Some(Body::new(max));
        }
        self.phase = Phase::Data(DotDecoder::default());
        self.reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
    }

    fn bdat(&mut self, size: u64, last: bool) {
        let refusal = self.message_refusal(true);
        if refusal.is_none() {
            let max = self.config.limits.max_message_size;
            if let Some(txn) = &mut self.txn
                && txn.body.is_none()
            {
                txn.body = Some(Body::new(max));
                txn.chunked = true;
            }
        }
        self.phase = Phase::Chunk {
            size,
            remaining: size,
            last,
            refusal,
        };
    }

    fn step_data(&mut self) -> Option<Action> {
        let (
            Phase::Data(decoder),
            Some(Transaction {
                body: Some(body), ..
            }),
        ) = (&mut self.phase, &mut self.txn)
        else {
            self.phase = Phase::Command;
            return None;
        };
        let available = &self.input[self.pos..];
        if available.is_empty() {
            return Some(Action::NeedInput);
        }
        match decoder.decode(available, body) {
            None => {
                self.pos = self.input.len();
                Some(Action::NeedInput)
            }
            Some(used) => {
                self.pos += used;
                self.finish_message()
            }
        }
    }

    fn step_chunk(&mut self) -> Option<Action> {
        let Phase::Chunk { remaining, .. } = &mut self.phase else {
            return None;
        };
        if *remaining > 0 {
            let available = self.input.len() - self.pos;
            if available == 0 {
                return Some(Action::NeedInput);
            }
            let n = (*remaining).min(available as u64) as usize;
            *remaining -= n as u64;
            let data = &self.input[self.pos..self.pos + n];
            self.pos += n;
            if let Some(Transaction {
                body: Some(body), ..
            }) = &mut self.txn
                && matches!(self.phase, Phase::Chunk { refusal: None, .. })
            {
                body.push(data);
            }
            if matches!(self.phase, Phase::Chunk { remaining: 1.., .. }) {
                return Some(Action::NeedInput);
            }
        }
        let Phase::Chunk {
            size,
            last,
            refusal,
            ..
        } = mem::replace(&mut self.phase, Phase::Command)
        else {
            return None;
        };
        if let Some(refusal) = refusal {
            self.fail(refusal);
            return None;
        }
        let too_large = self
            .txn
            .as_ref()
            .and_then(|t| t.body.as_ref())
            .is_some_and(Body::too_large);
        if last {
            return self.finish_message();
        }
        if too_large {
            // RFC 3030: after an error reply the client sends no more chunks; any that
            // come are refused for want of a transaction.
            self.txn = None;
            self.reply(crate::body::BodyError::TooLarge.reply());
        } else {
            self.reply(Reply::new(
                250,
                Status(2, 0, 0),
                format!("{size} octets received"),
            ));
        }
        None
    }

    /// One reply for SMTP, one per accepted RCPT for LMTP.
    fn reply_for_message(&mut self, order: &[usize], reply: Reply) {
        if self.info.protocol == Protocol::Lmtp {
            for _ in order {
                self.reply(reply.clone());
            }
        } else {
            self.reply(reply);
        }
    }

    fn finish_message(&mut self) -> Option<Action> {
        self.phase = Phase::Command;
        let mut txn = self.txn.take()?;
        let body = txn.body.take()?;
        let message = match body.finish() {
            Ok(m) => m,
            Err(e) => {
                self.reply_for_message(&txn.order, e.reply());
                return None;
            }
        };
        let header_from = header::from_addresses(&message);
        if let Some(account) = &self.info.account {
            let refusal = if header_from.is_empty() {
                Some(Reply::new(
                    550,
                    Status(5, 6, 0),
                    "Message must have a From header",
                ))
            } else {
                header_from
                    .iter()
                    .find(|a| !account.may_send_as(a))
                    .map(|a| {
                        let text =
                            format!("From header address <{a}> not owned by authenticated account");
                        Reply::new(550, Status(5, 7, 1), text)
                    })
            };
            if let Some(refusal) = refusal {
                self.reply_for_message(&txn.order, refusal);
                return None;
            }
        }
        self.transactions += 1;
        let key = DeliveryKey {
            session: self.info.id,
            transaction: self.transactions,
        };
        let envelope = Envelope {
            sender: txn.mail.path,
            params: txn.mail.params,
            recipients: txn.recipients,
        };
        self.phase = Phase::Waiting(Waiting::Delivery {
            key,
            recipients: envelope.recipients.len(),
            order: txn.order,
        });
        Some(Action::Deliver(Delivery::new(
            key,
            envelope,
            message,
            header_from,
        )))
    }

    /// The backend's answer to [`Action::Deliver`]: one status per envelope recipient.
    pub fn delivered(&mut self, results: Vec<DeliveryStatus>) {
        let Phase::Waiting(Waiting::Delivery { .. }) = &self.phase else {
            tracing::warn!("delivery result while not waiting for one");
            return;
        };
        let Phase::Waiting(Waiting::Delivery {
            key,
            recipients,
            order,
        }) = mem::replace(&mut self.phase, Phase::Command)
        else {
            return;
        };
        let temp_default = Reply::new(
            451,
            Status(4, 3, 0),
            "Temporary failure storing the message",
        );
        let results: Vec<Result<(), Reply>> = if results.len() == recipients {
            results
                .into_iter()
                .map(|s| match s {
                    DeliveryStatus::Stored => Ok(()),
                    DeliveryStatus::TempFail(r) => Err(r.within(400..500, temp_default.clone())),
                    DeliveryStatus::PermFail(r) => Err(r.within(
                        500..600,
                        Reply::new(554, Status(5, 0, 0), "Delivery failed"),
                    )),
                })
                .collect()
        } else {
            tracing::error!(
                got = results.len(),
                recipients,
                "backend returned a wrong number of results"
            );
            vec![Err(temp_default.clone()); recipients]
        };
        if self.info.protocol == Protocol::Lmtp {
            for &i in &order {
                let reply = match &results[i] {
                    Ok(()) => Reply::new(250, Status(2, 0, 0), format!("Ok: delivered as {key}")),
                    Err(r) => r.clone(),
                };
                self.reply(reply);
            }
            return;
        }
        let reply = if results.iter().all(Result::is_ok) {
            Reply::new(250, Status(2, 0, 0), format!("Ok: queued as {key}"))
        } else if let Some(temp) = results
            .iter()
            .find_map(|r| r.as_ref().err().filter(|r| r.is_transient()))
        {
            if recipients == 1 {
                temp.clone()
            } else {
                Reply::new(
                    451,
                    Status(4, 3, 0),
                    "Message not stored for every recipient, try again later",
                )
            }
        } else {
            results
                .iter()
                .find_map(|r| r.as_ref().err())
                .cloned()
                .unwrap_or(temp_default)
        };
        self.reply(reply);
    }

    fn starttls(&mut self) -> Option<Action> {
        if self.info.tls.is_some() {
            self.fail(Reply::new(503, Status(5, 5, 1), "TLS already active"));
            return None;
        }
        if !self.config.starttls {
            self.fail(Reply::new(502, Status(5, 5, 1), "STARTTLS not available"));
            return None;
        }
        if self.txn.is_some() {
            self.fail(Reply::new(
                503,
                Status(5, 5, 1),
                "STARTTLS not allowed during a mail transaction",
            ));
            return None;
        }
        if self.pos < self.input.len() {
            // Plaintext sent after STARTTLS would otherwise be executed as if it had come
            // over TLS (CVE-2011-0411 and its many relatives).
            self.close_with(Reply::new(
                554,
                Status(5, 5, 1),
                "Commands pipelined after STARTTLS are not allowed",
            ));
            return None;
        }
        self.reply(Reply::new(220, Status(2, 0, 0), "Ready to start TLS"));
        self.phase = Phase::Waiting(Waiting::Tls);
        Some(Action::StartTls)
    }

    /// The TLS handshake after [`Action::StartTls`] succeeded: the session starts over
    /// (RFC 3207 4.2), and nothing received before the handshake survives.
    pub fn tls_established(&mut self, tls: TlsInfo) {
        if !matches!(self.phase, Phase::Waiting(Waiting::Tls)) {
            tracing::warn!("TLS established while not waiting for it");
            return;
        }
        self.info.tls = Some(tls);
        self.info.helo = None;
        self.info.esmtp = false;
        self.info.account = None;
        self.txn = None;
        self.input.clear();
        self.pos = 0;
        self.skipping_line = false;
        self.phase = Phase::Command;
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Option<Action> {
        if !self.auth_offered_in_principle() {
            self.fail(Reply::new(502, Status(5, 5, 1), "AUTH not available"));
            return None;
        }
        if self.info.helo.is_none() {
            self.fail(self.need_helo());
            return None;
        }
        if self.info.tls.is_none() {
            self.fail(Reply::new(
                538,
                Status(5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
            return None;
        }
        if self.info.account.is_some() {
            self.fail(Reply::new(503, Status(5, 5, 1), "Already authenticated"));
            return None;
        }
        if self.txn.is_some() {
            self.fail(Reply::new(
                503,
                Status(5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
            return None;
        }
        let Some(mechanism) = Mechanism::from_name(mechanism) else {
            self.fail(Reply::new(
                504,
                Status(5, 5, 4),
                "Unrecognized authentication type",
            ));
            return None;
        };
        match (mechanism, initial) {
            (Mechanism::Plain, None) => {
                self.reply(Reply::plain(334, ""));
                self.phase = Phase::Sasl(Sasl::PlainResponse);
                None
            }
            (Mechanism::Plain, Some(response)) => self.sasl_plain(&response),
            (Mechanism::Login, None) => {
                self.reply(Reply::plain(334, auth::LOGIN_USERNAME_PROMPT));
                self.phase = Phase::Sasl(Sasl::LoginUsername);
                None
            }
            (Mechanism::Login, Some(response)) => {
                self.sasl_login_username(&response);
                None
            }
        }
    }

    fn sasl_error(&mut self, error: SaslError) {
        self.phase = Phase::Command;
        let reply = match error {
            SaslError::Base64 | SaslError::Malformed => Reply::new(
                501,
                Status(5, 5, 2),
                "Cannot decode authentication response",
            ),
            SaslError::Authzid => {
                Reply::new(535, Status(5, 7, 8), "Authentication credentials invalid")
            }
        };
        self.fail(reply);
    }

    fn sasl_plain(&mut self, response: &str) -> Option<Action> {
        match auth::decode_plain(response) {
            Ok(credentials) => {
                self.phase = Phase::Waiting(Waiting::Auth);
                Some(Action::Authenticate(credentials))
            }
            Err(e) => {
                self.sasl_error(e);
                None
            }
        }
    }

    fn sasl_login_username(&mut self, response: &str) {
        match auth::decode_login_field(response) {
            Ok(username) => {
                self.reply(Reply::plain(334, auth::LOGIN_PASSWORD_PROMPT));
                self.phase = Phase::Sasl(Sasl::LoginPassword { username });
            }
            Err(e) => self.sasl_error(e),
        }
    }

    fn step_sasl(&mut self) -> Option<Action> {
        let limit = self.config.limits.max_auth_line;
        let line = match self.next_line(limit) {
            Line::Incomplete => return Some(Action::NeedInput),
            Line::TooLong => {
                self.phase = Phase::Command;
                self.fail(Reply::new(
                    500,
                    Status(5, 5, 6),
                    "Authentication exchange line is too long",
                ));
                return None;
            }
            Line::BareLf => {
                self.phase = Phase::Command;
                self.fail(Reply::new(500, Status(5, 5, 2), "Syntax error: bare LF"));
                return None;
            }
            Line::Complete(line) => line,
        };
        self.commands += 1;
        if line == b"*" {
            self.phase = Phase::Command;
            self.fail(Reply::new(501, Status(5, 0, 0), "Authentication cancelled"));
            return None;
        }
        let Ok(response) = std::str::from_utf8(&line) else {
            self.sasl_error(SaslError::Base64);
            return None;
        };
        let response = response.to_owned();
        match mem::replace(&mut self.phase, Phase::Command) {
            Phase::Sasl(Sasl::PlainResponse) => self.sasl_plain(&response),
            Phase::Sasl(Sasl::LoginUsername) => {
                self.sasl_login_username(&response);
                None
            }
            Phase::Sasl(Sasl::LoginPassword { username }) => {
                match auth::decode_login_field(&response) {
                    Ok(password) => {
                        self.phase = Phase::Waiting(Waiting::Auth);
                        Some(Action::Authenticate(Credentials {
                            mechanism: Mechanism::Login,
                            username,
                            password,
                        }))
                    }
                    Err(e) => {
                        self.sasl_error(e);
                        None
                    }
                }
            }
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// The answer to [`Action::Authenticate`].
    pub fn auth_result(&mut self, verdict: AuthVerdict) {
        if !matches!(self.phase, Phase::Waiting(Waiting::Auth)) {
            tracing::warn!("authentication result while not waiting for one");
            return;
        }
        self.phase = Phase::Command;
        match verdict {
            AuthVerdict::Ok(account) => {
                self.info.account = Some(account);
                self.reply(Reply::new(
                    235,
                    Status(2, 7, 0),
                    "Authentication successful",
                ));
            }
            AuthVerdict::Invalid => self.fail(Reply::new(
                535,
                Status(5, 7, 8),
                "Authentication credentials invalid",
            )),
            AuthVerdict::TempFail => self.reply(Reply::new(
                454,
                Status(4, 7, 0),
                "Temporary authentication failure",
            )),
            AuthVerdict::Throttled => self.fail(Reply::new(
                454,
                Status(4, 7, 0),
                "Too many authentication failures, try again later",
            )),
        }
    }
}

#[cfg(test)]
mod tests;
