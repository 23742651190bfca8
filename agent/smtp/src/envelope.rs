//! What a finished transaction hands to the backend: the envelope, the message, and the
//! keys that make storing it idempotent.

use std::fmt;

use crate::parser::{MailParams, Mailbox, RcptParams, ReversePath};
use crate::session::{Protocol, SessionInfo};

/// A random 128-bit session id: with the transaction counter it makes the delivery key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub u128);

impl SessionId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> Self {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 16];
        // The system random source does not fail on a working system; if it ever does, a
        // clock-derived id still keeps keys apart within this process.
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes = nanos.to_be_bytes();
        }
        SessionId(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Identifies one delivery attempt: (session, transaction). The backend stores a message
/// at most once per key, so its own retries (a proposal resent after a leader change, a
/// forward retried after a timeout) never duplicate mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    /// The session.
    pub session: SessionId,
    /// The transaction within the session, counting from 1.
    pub transaction: u32,
}

impl fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.session, self.transaction)
    }
}

/// An accepted recipient with its DSN parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The address.
    pub mailbox: Mailbox,
    /// NOTIFY and ORCPT as given.
    pub params: RcptParams,
}

/// The envelope of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM.
    pub sender: ReversePath,
    /// MAIL FROM's parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH).
    pub params: MailParams,
    /// The accepted recipients, each once, in the order first given.
    pub recipients: Vec<Recipient>,
}

/// A message to store.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The idempotency key of this attempt.
    pub key: DeliveryKey,
    /// SHA-256 over the envelope (sender and recipients) and the message as the client sent
    /// it (before any header Tern adds). A client that got a temporary failure and sends the
    /// same message again produces the same digest: a backend can use it to recognise that
    /// retry and not store the message twice for recipients it already has.
    pub digest: [u8; 32],
    /// The envelope.
    pub envelope: Envelope,
    /// The message as stored: Tern's `Received:` header (added by the server) followed by
    /// the client's content, CRLF line endings.
    pub message: Vec<u8>,
    /// The addresses of the message's `From:` header fields.
    pub header_from: Vec<String>,
}

impl Delivery {
    pub(crate) fn new(
        key: DeliveryKey,
        envelope: Envelope,
        message: Vec<u8>,
        header_from: Vec<String>,
    ) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(envelope.sender.to_string().as_bytes());
        for r in &envelope.recipients {
            ctx.update(b"\0");
            ctx.update(r.mailbox.to_string().to_lowercase().as_bytes());
        }
        ctx.update(b"\0\0");
        ctx.update(&message);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ctx.finish().as_ref());
        Delivery {
            key,
            digest,
            envelope,
            message,
            header_from,
        }
    }

    /// Puts a header field (ending in CRLF) in front of the message.
    pub fn prepend_header(&mut self, field: &str) {
        self.message.splice(0..0, field.bytes());
    }
}

/// The `Received:` trace field (RFC 5321 4.4, protocol names from RFC 3848 and RFC 6531)
/// for `delivery`, received on `session` by `hostname` at `now`. It records the client
/// address (from the PROXY header when there was one, with the proxy's own address in a
/// comment), the TLS version and cipher, and the delivery key as the id. The recipient is
/// named only when there is one, so that Bcc recipients are not revealed to each other.
pub fn received_header(
    session: &SessionInfo,
    delivery: &Delivery,
    hostname: &str,
    now: jiff::Timestamp,
) -> String {
    let helo = session
        .helo
        .as_deref()
        .map(sanitise)
        .unwrap_or_else(|| "unknown".into());
    let mut out = format!("Received: from {helo} ([{}])", session.client.ip());
    if session.client != session.peer {
        out.push_str(&format!("\r\n\t(via proxy [{}])", session.peer.ip()));
    }
    let utf8 = delivery.envelope.params.smtputf8;
    let base = match (session.protocol, utf8) {
        (Protocol::Lmtp, false) => "LMTP",
        (Protocol::Lmtp, true) => "UTF8LMTP",
        (_, false) if session.esmtp => "ESMTP",
        (_, false) => "SMTP",
        (_, true) => "UTF8SMTP",
    };
    let tls = if session.tls.is_some() { "S" } else { "" };
    let auth = if session.account.is_some() { "A" } else { "" };
    out.push_str(&format!(
        "\r\n\tby {} (Tern) with {base}{tls}{auth} id {}",
        sanitise(hostname),
        delivery.key
    ));
    if let Some(tls) = &session.tls {
        out.push_str(&format!(
            "\r\n\t(version={} cipher={})",
            tls.version, tls.cipher
        ));
    }
    if let [only] = delivery.envelope.recipients.as_slice() {
        out.push_str(&format!(
            "\r\n\tfor <{}>",
            sanitise(&only.mailbox.to_string())
        ));
    }
    let date = jiff::fmt::rfc2822::to_string(&now.to_zoned(jiff::tz::TimeZone::UTC))
        .unwrap_or_else(|_| "Thu, 1 Jan 1970 00:00:00 +0000".into());
    out.push_str(&format!(";\r\n\t{date}\r\n"));
    out
}

/// Keeps client-chosen text (HELO name, addresses) from breaking the header's syntax.
fn sanitise(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '(' | ')' | ';' | '\\' | '"') {
                '_'
            } else {
                c
            }
        })
        .collect()
}
