//! An SMTP client for one delivery attempt to one host (RFC 5321): EHLO (HELO when EHLO is
//! refused), STARTTLS (rustls), AUTH PLAIN or LOGIN, MAIL, one RCPT per recipient, DATA with
//! dot-stuffing, QUIT; each step bounded by its own timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest reply line read (RFC 5321 §4.5.3.1.5 allows 512 octets; be generous).
const MAX_LINE: usize = 4096;
/// Most lines of one reply.
const MAX_REPLY_LINES: usize = 128;

/// How long each step may take. RFC 5321 §4.5.3.2 gives the minimums a client should wait
/// (5 minutes for the greeting, MAIL and RCPT, 2 for DATA, 3 per data block, 10 for the end
/// of data); the defaults keep the data steps and shorten the others, which a server that
/// answers at all answers in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// The greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET and QUIT.
    pub command: Duration,
    /// DATA's `354`.
    pub data_start: Duration,
    /// Writing each block of the message.
    pub data_block: Duration,
    /// The reply after the final dot.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(120),
            data_start: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

/// Whether and how TLS is used with a host.
#[derive(Clone)]
pub enum TlsPolicy {
    /// No STARTTLS.
    Never,
    /// STARTTLS when offered, any certificate (RFC 7435 opportunistic security: protects
    /// against passive listeners, as MX delivery without DANE or MTA-STS can).
    Opportunistic,
    /// STARTTLS or no delivery, the certificate verified for `name` with these roots.
    Required {
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    },
}

impl std::fmt::Debug for TlsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsPolicy::Never => f.write_str("Never"),
            TlsPolicy::Opportunistic => f.write_str("Opportunistic"),
            TlsPolicy::Required { name, .. } => write!(f, "Required({name:?})"),
        }
    }
}

/// Credentials for AUTH at a relay; sent only over TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, ***)", self.username)
    }
}

/// A server's reply: the code and the text of every line, joined with spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    pub text: String,
}

impl std::fmt::Display for ServerReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl ServerReply {
    fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    fn permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

/// What one recipient's attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptResult {
    Delivered(String),
    /// 5xx.
    Failed(String),
    /// 4xx, or the attempt broke off.
    Deferred(String),
}

/// Why an attempt ended before any recipient's outcome was known: the whole transaction
/// failed on this host (the caller may try the next one).
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// A 5xx before RCPT (greeting, EHLO, MAIL): every recipient failed with it.
    #[error("{0}")]
    Permanent(String),
    /// No connection, a timeout, a 4xx, a broken TLS handshake, a malformed reply.
    #[error("{0}")]
    Temporary(String),
}

/// One message for one host.
#[derive(Clone, Debug)]
pub struct Transaction<'a> {
    /// The name said in EHLO.
    pub helo: &'a str,
    /// MAIL FROM's address; empty for `<>`.
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The message, CRLF line endings.
    pub message: &'a [u8],
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Conn {
    io: BufReader<Box<dyn Stream>>,
    timeouts: Timeouts,
}

impl Conn {
    async fn read_reply(&mut self, within: Duration) -> Result<ServerReply, AttemptError> {
        tokio::time::timeout(within, read_reply(&mut self.io))
            .await
            .map_err(|_| AttemptError::Temporary(format!("no reply within {within:?}")))?
    }

    async fn send(&mut self, line: &str) -> Result<(), AttemptError> {
        let within = self.timeouts.command;
        tokio::time::timeout(within, async {
            let io = self.io.get_mut();
            io.write_all(line.as_bytes()).await?;
            io.write_all(b"\r\n").await?;
            io.flush().await
        })
        .await
        .map_err(|_| AttemptError::Temporary(format!("sending took over {within:?}")))?
        .map_err(|e| AttemptError::Temporary(format!("sending: {e}")))
    }

    async fn command(&mut self, line: &str) -> Result<ServerReply, AttemptError> {
        self.send(line).await?;
        self.read_reply(self.timeouts.command).await
    }

    /// EHLO, falling back to HELO when EHLO is refused; the extensions offered (upper case).
    async fn greet(&mut self, helo: &str) -> Result<Vec<String>, AttemptError> {
        let reply = self.command(&format!("EHLO {helo}")).await?;
        if reply.positive() {
            return Ok(reply_lines(&reply)
                .skip(1)
                .map(|l| l.to_ascii_uppercase())
                .collect());
        }
        let reply = self.command(&format!("HELO {helo}")).await?;
        expect_positive("HELO", reply)?;
        Ok(Vec::new())
    }
}

/// The extension lines were joined with `\n` in [`read_reply`]'s text.
fn reply_lines(reply: &ServerReply) -> impl Iterator<Item = &str> {
    reply.text.split('\n')
}

fn expect_positive(step: &str, reply: ServerReply) -> Result<ServerReply, AttemptError> {
    if reply.positive() {
        Ok(reply)
    } else if reply.permanent() {
        Err(AttemptError::Permanent(format!("{step}: {}", flat(&reply))))
    } else {
        Err(AttemptError::Temporary(format!("{step}: {}", flat(&reply))))
    }
}

/// The reply on one line, for logs, outcomes and DSNs.
fn flat(reply: &ServerReply) -> String {
    format!("{} {}", reply.code, reply.text.replace('\n', " "))
}

async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(
    io: &mut R,
) -> Result<ServerReply, AttemptError> {
    let mut code: Option<u16> = None;
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut *io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| AttemptError::Temporary(format!("reading a reply: {e}")))?;
        if n == 0 {
            return Err(AttemptError::Temporary(
                "the server closed the connection".into(),
            ));
        }
        if line.last() != Some(&b'\n') {
            return Err(AttemptError::Temporary("a reply line is too long".into()));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let malformed = || AttemptError::Temporary(format!("malformed reply line {text:?}"));
        let digits = text
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let this: u16 = digits.and_then(|d| d.parse().ok()).ok_or_else(malformed)?;
        if !(200..600).contains(&this) || code.is_some_and(|c| c != this) {
            return Err(malformed());
        }
        code = Some(this);
        let (more, rest) = match text.as_bytes().get(3) {
            None => (false, ""),
            Some(b' ') => (false, &text[4..]),
            Some(b'-') => (true, &text[4..]),
            Some(_) => return Err(malformed()),
        };
        lines.push(rest.to_owned());
        if !more {
            return Ok(ServerReply {
                code: this,
                text: lines.join("\n"),
            });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(AttemptError::Temporary("a reply has too many lines".into()));
        }
    }
}

/// The message as DATA sends it: every line that starts with `.` gets another one
/// (RFC 5321 §4.5.2), bare LF and CR become CRLF, and it ends with CRLF `.` CRLF.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
                at_line_start = true;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Accepts any certificate: opportunistic TLS, where the alternative is plain text.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn opportunistic_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// A client configuration that verifies servers against `roots`.
pub fn verifying_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Delivers `tx` to the server at `addr` (named `host`). Returns one result per recipient,
/// in order, or why the whole attempt failed on this host.
pub async fn deliver(
    addr: SocketAddr,
    host: &str,
    tls: &TlsPolicy,
    credentials: Option<&Credentials>,
    tx: &Transaction<'_>,
    timeouts: Timeouts,
) -> Result<Vec<RcptResult>, AttemptError> {
    let tcp = tokio::time::timeout(timeouts.connect, TcpStream::connect(addr))
        .await
        .map_err(|_| AttemptError::Temporary(format!("connecting to {addr}: timed out")))?
        .map_err(|e| AttemptError::Temporary(format!("connecting to {addr}: {e}")))?;
    let mut conn = Conn {
        io: BufReader::new(Box::new(tcp) as Box<dyn Stream>),
        timeouts,
    };
    let greeting = conn.read_reply(timeouts.command).await?;
    expect_positive("greeting", greeting)?;
    let mut extensions = conn.greet(tx.helo).await?;
    let offers = |extensions: &[String], name: &str| {
        extensions
            .iter()
            .any(|e| e.split_whitespace().next() == Some(name))
    };
    let starttls = match tls {
        TlsPolicy::Never => None,
        TlsPolicy::Opportunistic if offers(&extensions, "STARTTLS") => Some((
            opportunistic_config(),
            ServerName::try_from(host.to_owned())
                .unwrap_or_else(|_| ServerName::try_from("invalid").expect("a valid name")),
        )),
        TlsPolicy::Opportunistic => None,
        TlsPolicy::Required { config, name } => {
            if !offers(&extensions, "STARTTLS") {
                let _ = conn.command("QUIT").await;
                return Err(AttemptError::Temporary(format!(
                    "{host} does not offer STARTTLS, which is required"
                )));
            }
            Some((config.clone(), name.clone()))
        }
    };
    let mut encrypted = false;
    if let Some((config, name)) = starttls {
        expect_positive("STARTTLS", conn.command("STARTTLS").await?)?;
        // Nothing may be buffered after the 220 (RFC 3207 §4.2 / STARTTLS injection).
        if !conn.io.buffer().is_empty() {
            return Err(AttemptError::Temporary(
                "the server sent data after its STARTTLS reply".into(),
            ));
        }
        let plain = conn.io.into_inner();
        let stream = tokio::time::timeout(
            timeouts.command,
            TlsConnector::from(config).connect(name, plain),
        )
        .await
        .map_err(|_| AttemptError::Temporary("TLS handshake timed out".into()))?
        .map_err(|e| AttemptError::Temporary(format!("TLS handshake: {e}")))?;
        conn.io = BufReader::new(Box::new(stream) as Box<dyn Stream>);
        extensions = conn.greet(tx.helo).await?;
        encrypted = true;
    }
    if let Some(credentials) = credentials {
        if !encrypted {
            return Err(AttemptError::Temporary(
                "refusing to send credentials without TLS".into(),
            ));
        }
        authenticate(&mut conn, &extensions, credentials).await?;
    }
    let mut mail = format!("MAIL FROM:<{}>", tx.sender);
    if offers(&extensions, "SIZE") {
        mail.push_str(&format!(" SIZE={}", tx.message.len()));
    }
    if offers(&extensions, "8BITMIME") && tx.message.iter().any(|b| *b >= 0x80) {
        mail.push_str(" BODY=8BITMIME");
    }
    expect_positive("MAIL", conn.command(&mail).await?)?;
    let mut results: Vec<Option<RcptResult>> = Vec::with_capacity(tx.recipients.len());
    for recipient in tx.recipients {
        let reply = conn.command(&format!("RCPT TO:<{recipient}>")).await?;
        results.push(if reply.positive() {
            None
        } else if reply.permanent() {
            Some(RcptResult::Failed(flat(&reply)))
        } else {
            Some(RcptResult::Deferred(flat(&reply)))
        });
    }
    if results.iter().all(Option::is_some) {
        let _ = conn.command("QUIT").await;
        return Ok(results.into_iter().flatten().collect());
    }
    let start = conn.command("DATA").await?;
    let outcome = if start.code == 354 {
        let data = dot_stuff(tx.message);
        for block in data.chunks(64 * 1024) {
            tokio::time::timeout(timeouts.data_block, conn.io.get_mut().write_all(block))
                .await
                .map_err(|_| AttemptError::Temporary("sending the message timed out".into()))?
                .map_err(|e| AttemptError::Temporary(format!("sending the message: {e}")))?;
        }
        conn.io
            .get_mut()
            .flush()
            .await
            .map_err(|e| AttemptError::Temporary(format!("sending the message: {e}")))?;
        conn.read_reply(timeouts.data_end).await?
    } else {
        start
    };
    let _ = conn.command("QUIT").await;
    let text = flat(&outcome);
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                if outcome.positive() {
                    RcptResult::Delivered(text.clone())
                } else if outcome.permanent() {
                    RcptResult::Failed(text.clone())
                } else {
                    RcptResult::Deferred(text.clone())
                }
            })
        })
        .collect())
}

async fn authenticate(
    conn: &mut Conn,
    extensions: &[String],
    credentials: &Credentials,
) -> Result<(), AttemptError> {
    let mechanisms: Vec<&str> = extensions
        .iter()
        .filter_map(|e| e.strip_prefix("AUTH"))
        .filter(|rest| rest.starts_with([' ', '=']))
        .flat_map(|rest| rest[1..].split_whitespace())
        .collect();
    let reply = if mechanisms.contains(&"PLAIN") {
        let token =
            base64(format!("\0{}\0{}", credentials.username, credentials.password).as_bytes());
        conn.command(&format!("AUTH PLAIN {token}")).await?
    } else if mechanisms.contains(&"LOGIN") {
        let reply = conn.command("AUTH LOGIN").await?;
        if reply.code != 334 {
            return expect_positive("AUTH LOGIN", reply).map(drop);
        }
        let reply = conn
            .command(&base64(credentials.username.as_bytes()))
            .await?;
        if reply.code != 334 {
            return expect_positive("AUTH LOGIN", reply).map(drop);
        }
        conn.command(&base64(credentials.password.as_bytes()))
            .await?
    } else {
        return Err(AttemptError::Temporary(
            "the relay offers neither AUTH PLAIN nor AUTH LOGIN".into(),
        ));
    };
    // A refused login is the configuration's problem, not the message's: try again later.
    if reply.code == 235 {
        Ok(())
    } else {
        Err(AttemptError::Temporary(format!(
            "authentication refused: {}",
            flat(&reply)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_ends_the_data() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b"bare\nlf\n.x"), b"bare\r\nlf\r\n..x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("\0u\0p", "AHUAcA=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[tokio::test]
    async fn replies_parse_and_garbage_is_an_error() {
        let mut io: &[u8] = b"250-first\r\n250-SIZE 10\r\n250 last\r\n";
        let reply = read_reply(&mut io).await.unwrap();
        assert_eq!(
            (reply.code, reply.text.as_str()),
            (250, "first\nSIZE 10\nlast")
        );
        for bad in [
            &b"25 short\r\n"[..],
            b"250-a\r\n251 b\r\n",
            b"abc x\r\n",
            b"250xno\r\n",
            b"250-never ends",
            b"",
            b"999 out of range\r\n",
        ] {
            let mut io = bad;
            assert!(read_reply(&mut io).await.is_err(), "{bad:?}");
        }
        let long = [b"250 ".as_slice(), &[b'x'; MAX_LINE], b"\r\n"].concat();
        assert!(read_reply(&mut long.as_slice()).await.is_err());
    }

    /// A scripted server: answers each command it reads with the next reply of `script`
    /// (by the command's first word), records what it was sent.
    async fn scripted(
        script: Vec<(&'static str, &'static str)>,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut io = BufReader::new(stream);
            io.get_mut()
                .write_all(b"220 scripted ESMTP\r\n")
                .await
                .unwrap();
            let mut seen = String::new();
            let mut script = script.into_iter();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                seen.push_str(&line);
                if in_data {
                    if line == ".\r\n" {
                        in_data = false;
                    } else {
                        continue;
                    }
                }
                let Some((expect, reply)) = script.next() else {
                    break;
                };
                assert!(
                    line.to_ascii_uppercase().starts_with(expect),
                    "expected {expect}, got {line:?}"
                );
                if expect == "DATA" && reply.starts_with("354") {
                    in_data = true;
                }
                io.get_mut().write_all(reply.as_bytes()).await.unwrap();
            }
            let mut rest = Vec::new();
            let _ = io.read_to_end(&mut rest).await;
            seen
        });
        (addr, task)
    }

    fn tx<'a>(recipients: &'a [String], message: &'a [u8]) -> Transaction<'a> {
        Transaction {
            helo: "tern.test",
            sender: "a@x.test",
            recipients,
            message,
        }
    }

    fn fast() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            command: Duration::from_secs(5),
            data_start: Duration::from_secs(5),
            data_block: Duration::from_secs(5),
            data_end: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn each_recipient_gets_its_own_outcome() {
        let (addr, server) = scripted(vec![
            (
                "EHLO",
                "250-scripted\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n",
            ),
            ("MAIL FROM:<A@X.TEST> SIZE=", "250 2.1.0 ok\r\n"),
            ("RCPT", "250 2.1.5 ok\r\n"),
            ("RCPT", "550 5.1.1 no such user\r\n"),
            ("RCPT", "450 4.2.1 try later\r\n"),
            ("DATA", "354 go on\r\n"),
            (".", "250 2.0.0 queued as X\r\n"),
            ("QUIT", "221 bye\r\n"),
        ])
        .await;
        let recipients: Vec<String> = ["ok@r.test", "no@r.test", "later@r.test"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let results = deliver(
            addr,
            "r.test",
            &TlsPolicy::Opportunistic,
            None,
            &tx(&recipients, b"Subject: x\r\n\r\n.dot\r\n"),
            fast(),
        )
        .await
        .unwrap();
        assert_eq!(
            results,
            vec![
                RcptResult::Delivered("250 2.0.0 queued as X".into()),
                RcptResult::Failed("550 5.1.1 no such user".into()),
                RcptResult::Deferred("450 4.2.1 try later".into()),
            ]
        );
        let seen = server.await.unwrap();
        assert!(seen.contains("\r\n..dot\r\n.\r\n"), "dot-stuffed: {seen}");
        assert!(!seen.contains("STARTTLS"), "not offered, not used");
    }

    #[tokio::test]
    async fn a_refused_transaction_fails_or_defers_everyone() {
        let (addr, _server) = scripted(vec![
            ("EHLO", "250 scripted\r\n"),
            ("MAIL", "553 5.7.1 sender refused\r\n"),
            ("QUIT", "221 bye\r\n"),
        ])
        .await;
        let one = vec!["x@r.test".to_owned()];
        let e = deliver(
            addr,
            "r",
            &TlsPolicy::Never,
            None,
            &tx(&one, b"m\r\n"),
            fast(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, AttemptError::Permanent(ref m) if m.contains("553")),
            "{e}"
        );
        let (addr, _server) = scripted(vec![
            ("EHLO", "250 scripted\r\n"),
            ("MAIL", "250 ok\r\n"),
            ("RCPT", "250 ok\r\n"),
            ("DATA", "354 go\r\n"),
            (".", "451 4.3.0 disk full\r\n"),
            ("QUIT", "221 bye\r\n"),
        ])
        .await;
        let results = deliver(
            addr,
            "r",
            &TlsPolicy::Never,
            None,
            &tx(&one, b"m\r\n"),
            fast(),
        )
        .await
        .unwrap();
        assert_eq!(
            results,
            vec![RcptResult::Deferred("451 4.3.0 disk full".into())]
        );
    }

    #[tokio::test]
    async fn credentials_never_go_in_clear_and_tls_when_required() {
        let credentials = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let (addr, server) = scripted(vec![
            ("EHLO", "250-scripted\r\n250 AUTH PLAIN LOGIN\r\n"),
            ("QUIT", "221 bye\r\n"),
        ])
        .await;
        let one = vec!["x@r.test".to_owned()];
        let e = deliver(
            addr,
            "r",
            &TlsPolicy::Never,
            Some(&credentials),
            &tx(&one, b"m\r\n"),
            fast(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AttemptError::Temporary(ref m) if m.contains("without TLS")));
        drop(server);
        let (addr, _server) =
            scripted(vec![("EHLO", "250 scripted\r\n"), ("QUIT", "221 bye\r\n")]).await;
        let required = TlsPolicy::Required {
            config: verifying_config(rustls::RootCertStore::empty()),
            name: ServerName::try_from("r.test").unwrap(),
        };
        let e = deliver(addr, "r", &required, None, &tx(&one, b"m\r\n"), fast())
            .await
            .unwrap_err();
        assert!(
            matches!(e, AttemptError::Temporary(ref m) if m.contains("STARTTLS")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_server_that_stalls_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let one = vec!["x@r.test".to_owned()];
        let mut timeouts = fast();
        timeouts.command = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let e = deliver(
            addr,
            "r",
            &TlsPolicy::Never,
            None,
            &tx(&one, b"m\r\n"),
            timeouts,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AttemptError::Temporary(_)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
