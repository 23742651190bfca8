//! A minimal IMAP client for the load generator: one command at a time, tagged responses,
//! literals in responses (read by their declared length, never by line), synchronizing
//! literals for APPEND, and IDLE. It tracks the selected mailbox's message count from the
//! untagged `EXISTS` and `EXPUNGE` responses, as a real client must to address messages.
//!
//! Every read is bounded: lines and literals have a size limit and every command a deadline, so
//! a misbehaving server produces an error, never a hang or an unbounded buffer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The longest response line accepted (literals excluded).
const MAX_LINE: usize = 1 << 20;
/// The largest literal accepted in a response.
const MAX_LITERAL: usize = 64 << 20;

/// Why a command did not get an answer.
#[derive(Debug)]
pub enum ClientError {
    /// The connection failed or was closed.
    Io(std::io::Error),
    /// No complete answer before the deadline.
    Timeout,
    /// The server sent something this client cannot read as IMAP.
    Protocol(String),
    /// TLS could not be set up (configuration, not the handshake).
    Tls(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "connection: {e}"),
            ClientError::Timeout => write!(f, "no answer before the deadline"),
            ClientError::Protocol(m) => write!(f, "protocol: {m}"),
            ClientError::Tls(m) => write!(f, "tls: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// The status of a tagged response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

/// One response line from the server with the literals it carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    /// The text of the response with each literal replaced by its `{N}` announcement.
    pub text: Vec<u8>,
    /// The literals' contents, in order.
    pub literals: Vec<Vec<u8>>,
}

impl Unit {
    /// The text as (lossy) UTF-8, for messages.
    pub fn text_lossy(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }

    fn contains(&self, needle: &[u8]) -> bool {
        let hay = self.text.to_ascii_uppercase();
        hay.windows(needle.len()).any(|w| w == needle)
    }
}

/// The answer to one command.
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    /// The tagged line after the status word.
    pub text: String,
    /// The untagged responses that came before it.
    pub untagged: Vec<Unit>,
}

impl Reply {
    /// Untagged `FETCH` responses that contain `item` (upper case, e.g. `BODY[HEADER.FIELDS`).
    pub fn fetches_with(&self, item: &[u8]) -> impl Iterator<Item = &Unit> {
        self.untagged
            .iter()
            .filter(move |u| u.contains(b" FETCH ") && u.contains(item))
    }

    /// `Err` with the server's words unless the status is OK.
    pub fn ok(self) -> Result<Reply, String> {
        match self.status {
            Status::Ok => Ok(self),
            Status::No => Err(format!("NO {}", self.text)),
            Status::Bad => Err(format!("BAD {}", self.text)),
        }
    }
}

/// How the server's certificate is trusted.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Verified against these CA certificates, for the address connected to (WebPKI rules).
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly this certificate (a self-signed server certificate such as Dovecot's); the
    /// handshake signature is still verified with it.
    Pinned(CertificateDer<'static>),
}

impl Trust {
    /// CA certificates from a PEM file.
    pub fn ca_pem(pem: &[u8]) -> Result<Trust, ClientError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("CA PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Tls("no certificate in the CA PEM".into()));
        }
        Ok(Trust::Ca(certs))
    }

    /// The one certificate of a PEM file, pinned.
    pub fn pinned_pem(pem: &[u8]) -> Result<Trust, ClientError> {
        let cert = CertificateDer::from_pem_slice(pem)
            .map_err(|e| ClientError::Tls(format!("certificate PEM: {e}")))?;
        Ok(Trust::Pinned(cert))
    }

    /// The rustls client configuration (ring, TLS 1.2 and 1.3, no client certificate).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let config = match self {
            Trust::Ca(certs) => {
                let mut roots = RootCertStore::empty();
                for c in certs {
                    roots
                        .add(c.clone())
                        .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Pinned(cert) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    cert: cert.clone(),
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// Accepts exactly one certificate and verifies the handshake signatures made with it.
#[derive(Debug)]
struct PinnedVerifier {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Where and how to connect: implicit TLS (IMAPS) to `addr`.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: String,
    pub tls: Arc<ClientConfig>,
    /// The name the certificate must carry (`127.0.0.1` for the local cluster's listeners).
    pub server_name: ServerName<'static>,
}

impl Endpoint {
    pub fn new(addr: &str, trust: &Trust) -> Result<Endpoint, ClientError> {
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .ok_or_else(|| ClientError::Tls(format!("address {addr} has no port")))?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::Tls(format!("server name {host}: {e}")))?;
        Ok(Endpoint {
            addr: addr.to_owned(),
            tls: trust.client_config()?,
            server_name,
        })
    }

    /// The address user `index` connects from: its own loopback address (`127.1.x.y`) when
    /// the server is on loopback, as if every user were on its own machine (servers limit
    /// connections per client address); the system's choice otherwise.
    pub fn source_for(&self, index: usize) -> Option<IpAddr> {
        let server: SocketAddr = self.addr.parse().ok()?;
        if !server.ip().is_loopback() || !server.is_ipv4() || index >= 250 * 250 {
            return None;
        }
        Some(IpAddr::V4(Ipv4Addr::new(
            127,
            1,
            (index / 250) as u8,
            (index % 250 + 1) as u8,
        )))
    }

    /// Connects (from `source` when given), completes the TLS handshake and reads the
    /// greeting.
    pub async fn connect(
        &self,
        timeout: Duration,
        source: Option<IpAddr>,
    ) -> Result<Connection<TlsStream<TcpStream>>, ClientError> {
        let work = async {
            let tcp = match source {
                None => TcpStream::connect(&self.addr).await?,
                Some(ip) => {
                    let server: SocketAddr = self
                        .addr
                        .parse()
                        .map_err(|e| ClientError::Tls(format!("address {}: {e}", self.addr)))?;
                    let socket = TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(server).await?
                }
            };
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await?;
            Connection::open(tls, timeout).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

/// One IMAP connection.
pub struct Connection<S> {
    stream: S,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    next_tag: u64,
    timeout: Duration,
    /// The selected mailbox's message count as the server announced it.
    pub exists: u32,
    /// Literal bytes received so far (message data read).
    pub literal_bytes: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads the greeting from a fresh stream; it must be `* OK`.
    pub async fn open(stream: S, timeout: Duration) -> Result<Self, ClientError> {
        let mut c = Connection {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            next_tag: 1,
            timeout,
            exists: 0,
            literal_bytes: 0,
        };
        let greeting = tokio::time::timeout(timeout, c.read_unit())
            .await
            .map_err(|_| ClientError::Timeout)??;
        if !greeting.text.starts_with(b"* OK") {
            return Err(ClientError::Protocol(format!(
                "greeting: {}",
                greeting.text_lossy()
            )));
        }
        Ok(c)
    }

    /// Sends `command` (without tag and CRLF) and reads through its tagged response.
    pub async fn command(&mut self, command: &str) -> Result<Reply, ClientError> {
        let tag = self.tag();
        let timeout = self.timeout;
        let work = async {
            self.send(format!("{tag} {command}\r\n").as_bytes()).await?;
            self.read_reply(&tag).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// `APPEND mailbox (flags) {N}` with a synchronizing literal: the message is sent only
    /// after the server's continuation request.
    pub async fn append(
        &mut self,
        mailbox: &str,
        flags: &str,
        message: &[u8],
    ) -> Result<Reply, ClientError> {
        let tag = self.tag();
        let timeout = self.timeout;
        let work = async {
            self.send(
                format!(
                    "{tag} APPEND {} ({flags}) {{{}}}\r\n",
                    quoted(mailbox),
                    message.len()
                )
                .as_bytes(),
            )
            .await?;
            match self.read_until_continuation(&tag).await? {
                Some(refused) => Ok(refused),
                None => {
                    let mut data = Vec::with_capacity(message.len() + 2);
                    data.extend_from_slice(message);
                    data.extend_from_slice(b"\r\n");
                    self.send(&data).await?;
                    self.read_reply(&tag).await
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// `IDLE`, waits `hold` once the server accepted it, then `DONE`.
    pub async fn idle(&mut self, hold: Duration) -> Result<Reply, ClientError> {
        let tag = self.tag();
        let timeout = self.timeout;
        let work = async {
            self.send(format!("{tag} IDLE\r\n").as_bytes()).await?;
            if let Some(refused) = self.read_until_continuation(&tag).await? {
                return Ok(refused);
            }
            // Updates that arrive while idling are read after DONE, with the reply.
            tokio::time::sleep(hold).await;
            self.send(b"DONE\r\n").await?;
            self.read_reply(&tag).await
        };
        tokio::time::timeout(timeout + hold, work)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    fn tag(&mut self) -> String {
        let t = format!("b{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads untagged responses until a continuation request (`None`) or the tagged answer
    /// (`Some`, the command was refused before its continuation).
    async fn read_until_continuation(&mut self, tag: &str) -> Result<Option<Reply>, ClientError> {
        let mut untagged = Vec::new();
        loop {
            let unit = self.read_unit().await?;
            if unit.text.starts_with(b"+") {
                return Ok(None);
            }
            if let Some(reply) = self.tagged(tag, &unit, &mut untagged)? {
                return Ok(Some(reply));
            }
        }
    }

    async fn read_reply(&mut self, tag: &str) -> Result<Reply, ClientError> {
        let mut list = Vec::new();
        loop {
            let unit = self.read_unit().await?;
            if unit.text.starts_with(b"+") {
                return Err(ClientError::Protocol(format!(
                    "unexpected continuation request: {}",
                    unit.text_lossy()
                )));
            }
            if let Some(reply) = self.tagged(tag, &unit, &mut list)? {
                return Ok(reply);
            }
        }
    }

    /// The reply when `unit` is the tagged line for `tag`; otherwise records it as untagged.
    fn tagged(
        &mut self,
        tag: &str,
        unit: &Unit,
        untagged: &mut Vec<Unit>,
    ) -> Result<Option<Reply>, ClientError> {
        if let Some(rest) = unit
            .text
            .strip_prefix(tag.as_bytes())
            .and_then(|r| r.strip_prefix(b" "))
        {
            let rest = String::from_utf8_lossy(rest);
            let (word, text) = rest.split_once(' ').unwrap_or((&rest, ""));
            let status = match word.to_ascii_uppercase().as_str() {
                "OK" => Status::Ok,
                "NO" => Status::No,
                "BAD" => Status::Bad,
                _ => {
                    return Err(ClientError::Protocol(format!(
                        "tagged response without status: {}",
                        unit.text_lossy()
                    )));
                }
            };
            return Ok(Some(Reply {
                status,
                text: text.to_owned(),
                untagged: std::mem::take(untagged),
            }));
        }
        if !unit.text.starts_with(b"* ") {
            return Err(ClientError::Protocol(format!(
                "neither tagged nor untagged: {}",
                unit.text_lossy()
            )));
        }
        self.track(&unit.text[2..]);
        untagged.push(unit.clone());
        Ok(None)
    }

    /// Follows `N EXISTS` and `N EXPUNGE`.
    fn track(&mut self, rest: &[u8]) {
        let text = String::from_utf8_lossy(rest);
        let mut words = text.split(' ');
        let (Some(n), Some(kind)) = (words.next(), words.next()) else {
            return;
        };
        let Ok(n) = n.parse::<u32>() else { return };
        match kind.to_ascii_uppercase().as_str() {
            "EXISTS" => self.exists = n,
            "EXPUNGE" => self.exists = self.exists.saturating_sub(1),
            _ => {}
        }
    }

    /// One response: a line, and when it ends with a literal announcement `{N}`, the literal and
    /// the rest of the response after it.
    async fn read_unit(&mut self) -> Result<Unit, ClientError> {
        let mut unit = Unit::default();
        loop {
            let line = self.read_line().await?;
            unit.text.extend_from_slice(&line);
            match literal_length(&line)? {
                None => return Ok(unit),
                Some(n) => {
                    let literal = self.read_exact(n).await?;
                    self.literal_bytes += n as u64;
                    unit.literals.push(literal);
                }
            }
        }
    }

    /// The next line without its CRLF.
    async fn read_line(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut scanned = self.pos;
        loop {
            if let Some(i) = self.buf[scanned..].windows(2).position(|w| w == b"\r\n") {
                let end = scanned + i;
                let line = self.buf[self.pos..end].to_vec();
                self.pos = end + 2;
                return Ok(line);
            }
            scanned = self.buf.len().saturating_sub(1).max(self.pos);
            if self.buf.len() - self.pos > MAX_LINE {
                return Err(ClientError::Protocol(format!(
                    "a response line longer than {MAX_LINE} bytes"
                )));
            }
            let before = self.pos;
            self.fill().await?;
            scanned -= before - self.pos;
        }
    }

    async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ClientError> {
        while self.buf.len() - self.pos < n {
            self.fill().await?;
        }
        let data = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(data)
    }

    /// Reads more bytes, first dropping what was consumed (so `pos` may move to 0).
    async fn fill(&mut self) -> Result<(), ClientError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// The length announced by a line ending in `{N}` (or `{N+}`), if any.
fn literal_length(line: &[u8]) -> Result<Option<usize>, ClientError> {
    let Some(inner) = line.strip_suffix(b"}") else {
        return Ok(None);
    };
    let Some(open) = inner.iter().rposition(|&b| b == b'{') else {
        return Ok(None);
    };
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let n: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| ClientError::Protocol("literal length out of range".into()))?;
    if n > MAX_LITERAL {
        return Err(ClientError::Protocol(format!(
            "a literal of {n} bytes (limit {MAX_LITERAL})"
        )));
    }
    Ok(Some(n))
}

/// An IMAP quoted string.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// A client over an in-memory pipe whose server side writes `script` and records what the
    /// client sent.
    async fn scripted(script: &'static [u8]) -> Connection<tokio::io::DuplexStream> {
        let (client, mut server) = duplex(1 << 20);
        tokio::spawn(async move {
            server.write_all(script).await.unwrap();
            let mut sink = vec![0u8; 4096];
            while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        Connection::open(client, Duration::from_secs(2))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn literals_are_read_by_length_even_when_they_contain_tags_and_crlf() {
        let mut c = scripted(
            b"* OK ready\r\n* 3 EXISTS\r\n* 1 FETCH (UID 5 BODY[] {22}\r\nb1 OK fake\r\n* 9 EXISTS)\r\n* 2 FETCH (UID 6 BODY[HEADER.FIELDS (SUBJECT)] {0}\r\n)\r\nb1 OK done\r\n",
        )
        .await;
        let reply = c.command("FETCH 1 BODY[]").await.unwrap();
        assert_eq!(reply.status, Status::Ok);
        assert_eq!(reply.text, "done");
        assert_eq!(reply.untagged.len(), 3);
        assert_eq!(
            reply.untagged[1].literals,
            vec![b"b1 OK fake\r\n* 9 EXISTS".to_vec()]
        );
        assert_eq!(reply.untagged[1].text, b"* 1 FETCH (UID 5 BODY[] {22})");
        assert_eq!(reply.fetches_with(b"BODY[]").count(), 1);
        assert_eq!(reply.fetches_with(b"BODY[HEADER.FIELDS").count(), 1);
        // The EXISTS inside the literal is message data, not a response.
        assert_eq!(c.exists, 3);
        assert_eq!(c.literal_bytes, 22);
    }

    #[tokio::test]
    async fn exists_and_expunge_are_tracked_and_no_and_bad_are_statuses() {
        let mut c = scripted(
            b"* OK hi\r\n* 10 EXISTS\r\n* 4 EXPUNGE\r\n* 4 EXPUNGE\r\nb1 NO [TRYCREATE] nope\r\nb2 BAD what\r\n",
        )
        .await;
        let r = c.command("SELECT x").await.unwrap();
        assert_eq!(r.status, Status::No);
        assert_eq!(c.exists, 8);
        assert!(r.ok().unwrap_err().starts_with("NO [TRYCREATE]"));
        let r = c.command("NOOP").await.unwrap();
        assert_eq!(r.status, Status::Bad);
    }

    #[tokio::test]
    async fn append_waits_for_the_continuation_and_stops_at_a_refusal() {
        let (client, mut server) = duplex(1 << 16);
        let server = tokio::spawn(async move {
            server.write_all(b"* OK hi\r\n").await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            // The command line only: the message must wait for the continuation request.
            while !got.ends_with(b"{5}\r\n") {
                let n = server.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got, b"b1 APPEND \"INBOX\" (\\Seen) {5}\r\n");
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.write_all(b"+ go\r\n").await.unwrap();
            got.clear();
            while !got.ends_with(b"hello\r\n") {
                let n = server.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            server
                .write_all(b"* 1 EXISTS\r\nb1 OK [APPENDUID 7 1] APPEND completed\r\nb2 NO [OVERQUOTA] full\r\n")
                .await
                .unwrap();
            let mut rest = Vec::new();
            let _ = server.read_to_end(&mut rest).await;
            rest
        });
        let mut c = Connection::open(client, Duration::from_secs(2))
            .await
            .unwrap();
        let r = c.append("INBOX", "\\Seen", b"hello").await.unwrap();
        assert_eq!(r.status, Status::Ok);
        assert_eq!(c.exists, 1);
        let r = c.append("INBOX", "", b"world").await.unwrap();
        assert_eq!(r.status, Status::No, "refused before the literal");
        drop(c);
        let rest = server.await.unwrap();
        assert_eq!(
            rest, b"b2 APPEND \"INBOX\" () {5}\r\n",
            "the refused literal was never sent"
        );
    }

    #[tokio::test]
    async fn bad_input_is_an_error_not_a_hang() {
        let mut c = scripted(b"* OK hi\r\nwhat is this\r\n").await;
        assert!(matches!(
            c.command("NOOP").await,
            Err(ClientError::Protocol(_))
        ));
        let mut c = scripted(b"* OK hi\r\n* 1 FETCH (BODY[] {999999999999}\r\n").await;
        assert!(matches!(
            c.command("NOOP").await,
            Err(ClientError::Protocol(_))
        ));
        // A server that stops answering: the deadline, not a hang.
        let (client, mut server) = duplex(1024);
        server.write_all(b"* OK hi\r\n").await.unwrap();
        let mut c = Connection::open(client, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(matches!(c.command("NOOP").await, Err(ClientError::Timeout)));
        drop(server);
        // A greeting that is not OK.
        let (client, mut server) = duplex(1024);
        server.write_all(b"* BYE busy\r\n").await.unwrap();
        assert!(
            Connection::open(client, Duration::from_secs(1))
                .await
                .is_err()
        );
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_length(b"* 1 FETCH (BODY[] {12}").unwrap(), Some(12));
        assert_eq!(literal_length(b"x {3+}").unwrap(), Some(3));
        assert_eq!(literal_length(b"* OK {not a literal}").unwrap(), None);
        assert_eq!(literal_length(b"* OK {}").unwrap(), None);
        assert_eq!(literal_length(b"* OK done").unwrap(), None);
        assert!(literal_length(b"{99999999999999999999999}").is_err());
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
