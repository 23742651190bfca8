//! The tokio server: accepts connections on one listener and runs a [`Session`] on each.
//!
//! Per connection: the PROXY header when the listener expects one (bounded in size and
//! time; without a valid one the connection is closed, and with one its source address is
//! the client's for logs, limits and throttling), the connection limits, the TLS handshake
//! on an implicit-TLS listener (993), the greeting, then commands framed by `imap-codec`'s fragmentizer. A literal
//! larger than [`Limits::max_literal`], or one that takes the command's literals past
//! [`Limits::max_command_bytes`] (a MULTIAPPEND announces one per message), is refused when
//! announced, before its bytes are read (a synchronising one with `NO [TOOBIG]`, a LITERAL+
//! one with `BYE`, since its bytes are already on the way). Every wait for the client is bounded: a short timeout before
//! login, a long one after, and the IDLE timeout while idling. On STARTTLS, bytes the client
//! sent after the command are dropped, so nothing pipelined in clear text runs under TLS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::{AuthenticateDataCodec, IdleDoneCodec};
use tern_listen::accept::{self, Admission, LoopConfig};
use tern_listen::tls::{HandshakeError, handshake};
use tern_listen::{ListenerStats, Prefixed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug};

use crate::backend::{Account, Backend, RelayStream};
use crate::limits::Limits;
use crate::session::{Outcome, Responses, STREAM_BUFFER, Session, SessionConfig};
use crate::throttle::Throttle;

/// A listener's configuration.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// This server's name (greeting).
    pub hostname: String,
    /// The TLS configuration: STARTTLS when `implicit_tls` is false, required when true.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte (993) instead of STARTTLS (143).
    pub implicit_tls: bool,
    /// Whether every connection starts with a PROXY v1/v2 header (behind a load balancer).
    pub proxy_protocol: bool,
    /// The limits.
    pub limits: Limits,
}

impl ListenerConfig {
    /// A STARTTLS listener without PROXY protocol, with default limits.
    pub fn new(hostname: impl Into<String>, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        ListenerConfig {
            hostname: hostname.into(),
            tls,
            implicit_tls: false,
            proxy_protocol: false,
            limits: Limits::default(),
        }
    }

    /// The listener's name in logs: `imaps` or `imap`.
    pub fn name(&self) -> &'static str {
        if self.implicit_tls { "imaps" } else { "imap" }
    }
}

/// Errors that stop a listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot work.
    #[error("invalid listener configuration: {0}")]
    Config(&'static str),
}

/// What a listener counted, for metrics (sessions, refused connections).
pub type ServerStats = ListenerStats;

/// One listener's server.
pub struct Server<B> {
    config: Arc<ListenerConfig>,
    backend: Arc<B>,
    throttle: Arc<Throttle>,
    acceptor: Option<TlsAcceptor>,
    stats: Arc<ServerStats>,
}

type Plain = Prefixed<TcpStream>;

enum Conn {
    Plain(Plain),
    Tls(Box<TlsStream<Plain>>),
    /// A session relayed here from another node (see [`crate::relay`]).
    Relayed(Box<dyn RelayStream>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Relayed(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Relayed(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
            Conn::Relayed(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Relayed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the framing produced.
pub(crate) enum Event {
    /// A complete message is in the fragmentizer.
    Message,
    /// Nothing complete yet: read more.
    NeedMore,
    /// A synchronising literal over the limit was refused; the message was skipped.
    Refused,
    /// A non-synchronising literal over the limit, or an unbounded line: close.
    Fatal(&'static str),
}

/// How a connection ended, for the logs.
#[derive(Debug)]
enum End {
    Closed,
    Timeout,
    Io(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

/// The server's framing of client input (also driven by [`crate::harness`]).
pub(crate) struct Framer {
    pub(crate) frag: Fragmentizer,
    limits: Limits,
    pending: usize,
    /// The literal bytes announced so far in the message being framed.
    literals: u64,
}

impl Framer {
    pub(crate) fn new(limits: &Limits) -> Self {
        Framer {
            frag: Fragmentizer::new(Self::bound(limits)),
            limits: limits.clone(),
            pending: 0,
            literals: 0,
        }
    }

    /// The longest message: its literals, and a line's worth of the rest.
    fn bound(limits: &Limits) -> u32 {
        limits
            .max_literal
            .max(limits.max_command_bytes)
            .saturating_add(limits.max_line)
    }

    /// Advances the fragmentizer; answers literal announcements into `out`.
    pub(crate) fn pump(&mut self, out: &mut Vec<u8>) -> Event {
        loop {
            let Some(info) = self.frag.progress() else {
                if self.pending > Self::bound(&self.limits) as usize {
                    return Event::Fatal("Line too long");
                }
                return Event::NeedMore;
            };
            self.pending = 0;
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                ..
            } = info
            {
                self.literals += u64::from(length);
                let refusal = if length > self.limits.max_literal {
                    Some("[TOOBIG] Literal too large")
                } else if self.literals > u64::from(self.limits.max_command_bytes) {
                    Some("[TOOBIG] The command's literals are too large together")
                } else {
                    None
                };
                if let Some(text) = refusal {
                    self.literals = 0;
                    if mode == LiteralMode::NonSync {
                        return Event::Fatal(text);
                    }
                    match self.frag.decode_tag() {
                        Some(tag) => out.extend_from_slice(
                            format!("{} NO {text}\r\n", tag.as_ref()).as_bytes(),
                        ),
                        None => out.extend_from_slice(format!("* BAD {text}\r\n").as_bytes()),
                    }
                    self.frag.skip_message();
                    return Event::Refused;
                }
                if mode == LiteralMode::Sync {
                    out.extend_from_slice(b"+ Ready for literal data\r\n");
                }
                continue;
            }
            if self.frag.is_message_complete() {
                self.literals = 0;
                return Event::Message;
            }
        }
    }

    pub(crate) fn enqueue(&mut self, bytes: &[u8]) {
        self.pending += bytes.len();
        self.frag.enqueue_bytes(bytes);
    }

    /// Everything the client sent after the message just handled, complete or not, as it
    /// arrived (a relayed session passes it on); the framer starts afresh.
    pub(crate) fn drain(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        loop {
            let progressed = self.frag.progress().is_some();
            if self.frag.is_message_complete() || !progressed {
                rest.extend_from_slice(self.frag.message_bytes());
                if !progressed {
                    break;
                }
            }
        }
        let limits = self.limits.clone();
        *self = Framer::new(&limits);
        rest
    }
}

impl<B: Backend> Server<B> {
    /// A server for `config` over `backend`, with its own [`Throttle`].
    pub fn new(config: ListenerConfig, backend: Arc<B>) -> Result<Self, ServerError> {
        let throttle = Throttle::new(config.limits.throttle());
        Self::with_throttle(config, backend, throttle)
    }

    /// A server sharing `throttle` with other listeners (143 and 993 count together).
    pub fn with_throttle(
        config: ListenerConfig,
        backend: Arc<B>,
        throttle: Arc<Throttle>,
    ) -> Result<Self, ServerError> {
        if config.implicit_tls && config.tls.is_none() {
            return Err(ServerError::Config(
                "an implicit-TLS listener needs a TLS configuration",
            ));
        }
        if config.hostname.is_empty()
            || config
                .hostname
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ServerError::Config(
                "hostname must be a non-empty name without spaces",
            ));
        }
        if config.limits.max_line < 1024
            || config.limits.max_errors == 0
            || config.limits.max_connections == 0
        {
            return Err(ServerError::Config(
                "max_line must be at least 1024, max_errors and max_connections at least 1",
            ));
        }
        let acceptor = config.tls.clone().map(TlsAcceptor::from);
        Ok(Server {
            config: Arc::new(config),
            backend,
            throttle,
            acceptor,
            stats: Arc::default(),
        })
    }

    /// Serves a session relayed here from another node over `stream`: `account` logged in
    /// there, from `client`, over TLS when `tls`. No greeting: the other node answered the
    /// login; what comes first is the client's next command. Returns when the session ends.
    pub async fn serve_relayed(
        &self,
        stream: Box<dyn RelayStream>,
        account: Account,
        client: SocketAddr,
        tls: bool,
    ) {
        self.stats.session();
        let session_config = SessionConfig {
            hostname: self.config.hostname.clone(),
            starttls: false,
            peer: client.ip(),
        };
        let session = Session::authenticated(
            self.backend.clone(),
            self.throttle.clone(),
            session_config,
            tls,
            account,
        );
        let end = serve_session(
            Conn::Relayed(stream),
            session,
            Vec::new(),
            client,
            &self.config,
            &self.backend,
            None,
        )
        .await;
        debug!(%client, ?end, "relayed session ended");
    }

    /// What this listener counts (sessions, refused connections); read it for metrics.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// Accepts connections on `listener` until `shutdown` completes; then stops accepting
    /// and ends the sessions (clients reconnect to another member).
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let busy = (!self.config.implicit_tls).then(|| b"* BYE Too many connections\r\n".to_vec());
        let loop_config = LoopConfig {
            name: self.config.name(),
            max_connections: self.config.limits.max_connections,
            full_reply: busy.clone(),
            shutdown_grace: Duration::ZERO,
        };
        let admission = Arc::new(Admission {
            proxy_protocol: self.config.proxy_protocol,
            proxy_header_timeout: self.config.limits.proxy_header_timeout,
            busy_reply: busy,
            reply_timeout: self.config.limits.unauthenticated_timeout,
        });
        accept::serve(
            listener,
            shutdown,
            &loop_config,
            &self.stats,
            |tcp, peer, _stop| {
                let config = Arc::clone(&self.config);
                let backend = Arc::clone(&self.backend);
                let throttle = Arc::clone(&self.throttle);
                let acceptor = self.acceptor.clone();
                let stats = Arc::clone(&self.stats);
                let admission = Arc::clone(&admission);
                let span = tracing::debug_span!(
                    "imap_connection",
                    listener = config.name(),
                    %peer,
                    client = tracing::field::Empty,
                );
                async move {
                    let admitted = match accept::admit(tcp, peer, &admission, &throttle).await {
                        Ok(admitted) => admitted,
                        Err(e) => {
                            debug!(error = %e, "connection refused");
                            stats.refused();
                            return;
                        }
                    };
                    let client = admitted.client;
                    tracing::Span::current().record("client", tracing::field::display(client));
                    let end = connection(
                        admitted.stream,
                        client,
                        config,
                        backend,
                        throttle,
                        acceptor,
                        &stats,
                    )
                    .await;
                    match end {
                        Err(End::Io(e)) => debug!(error = %e, "connection failed"),
                        end => debug!(?end, "connection ended"),
                    }
                    drop(admitted.slot);
                }
                .instrument(span)
            },
        )
        .await;
    }
}

/// Ends a connection the server gives up on: TLS's close_notify (so the client sees an
/// orderly close, not a truncation), bounded in case the client reads nothing.
async fn close(conn: &mut Conn) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.shutdown()).await;
}

async fn write(conn: &mut Conn, out: &mut Vec<u8>) -> Result<(), End> {
    if !out.is_empty() {
        conn.write_all(out).await?;
        conn.flush().await?;
        out.clear();
    }
    Ok(())
}

async fn read_more(
    conn: &mut Conn,
    framer: &mut Framer,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), End> {
    match timeout_at(deadline, conn.read(buf)).await {
        Err(_) => Err(End::Timeout),
        Ok(Ok(0)) => Err(End::Closed),
        Ok(Ok(n)) => {
            framer.enqueue(&buf[..n]);
            Ok(())
        }
        Ok(Err(e)) => Err(End::Io(e)),
    }
}

/// Reads until a complete message is framed (answering literal announcements).
async fn next_message(
    conn: &mut Conn,
    framer: &mut Framer,
    buf: &mut [u8],
    wait: Duration,
    out: &mut Vec<u8>,
) -> Result<bool, End> {
    let deadline = Instant::now() + wait;
    loop {
        match framer.pump(out) {
            Event::Message => return Ok(true),
            Event::Refused => {
                write(conn, out).await?;
                return Ok(false);
            }
            Event::Fatal(text) => {
                out.extend_from_slice(format!("* BYE {text}\r\n").as_bytes());
                write(conn, out).await?;
                return Err(End::Closed);
            }
            Event::NeedMore => {
                write(conn, out).await?;
                read_more(conn, framer, buf, deadline).await?;
            }
        }
    }
}

impl From<HandshakeError> for End {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Failed(e) => End::Io(e),
            HandshakeError::Timeout => End::Timeout,
        }
    }
}

/// Serves one admitted connection from `client` (the PROXY header's source, or the peer).
async fn connection<B: Backend>(
    plain: Plain,
    client: SocketAddr,
    config: Arc<ListenerConfig>,
    backend: Arc<B>,
    throttle: Arc<Throttle>,
    acceptor: Option<TlsAcceptor>,
    stats: &ServerStats,
) -> Result<(), End> {
    let limits = &config.limits;
    let conn = match (&acceptor, config.implicit_tls) {
        (Some(acceptor), true) => {
            match handshake(acceptor, plain, limits.unauthenticated_timeout).await {
                Ok(tls) => Conn::Tls(Box::new(tls)),
                Err(e) => {
                    stats.refused();
                    return Err(e.into());
                }
            }
        }
        _ => Conn::Plain(plain),
    };
    stats.session();
    let session_config = SessionConfig {
        hostname: config.hostname.clone(),
        starttls: acceptor.is_some() && !config.implicit_tls,
        peer: client.ip(),
    };
    let tls = matches!(conn, Conn::Tls(_));
    let session = Session::new(backend.clone(), throttle, session_config, tls);
    let greeting = session.greeting();
    serve_session(conn, session, greeting, client, &config, &backend, acceptor).await
}

/// Runs `session` on `conn` after sending `out` (the greeting, or nothing for a relayed
/// session) until it ends.
async fn serve_session<B: Backend>(
    mut conn: Conn,
    mut session: Session<B>,
    mut out: Vec<u8>,
    client: SocketAddr,
    config: &ListenerConfig,
    backend: &B,
    acceptor: Option<TlsAcceptor>,
) -> Result<(), End> {
    let limits = &config.limits;
    write(&mut conn, &mut out).await?;
    let mut framer = Framer::new(limits);
    let mut buf = vec![0u8; 16 * 1024];
    let mut errors = 0u32;
    let mut outcome = Outcome::Continue;
    loop {
        let wait = if session.is_authenticated() {
            limits.authenticated_timeout
        } else {
            limits.unauthenticated_timeout
        };
        if outcome == Outcome::Idle {
            outcome = idle(
                &mut conn,
                &mut session,
                &mut framer,
                &mut buf,
                limits,
                &mut out,
            )
            .await?;
            write(&mut conn, &mut out).await?;
            continue;
        }
        let complete = match next_message(&mut conn, &mut framer, &mut buf, wait, &mut out).await {
            Ok(c) => c,
            Err(End::Timeout) => {
                out.extend_from_slice(b"* BYE Autologout; idle for too long\r\n");
                let _ = write(&mut conn, &mut out).await;
                close(&mut conn).await;
                return Err(End::Timeout);
            }
            Err(e) => return Err(e),
        };
        if !complete {
            continue;
        }
        if outcome == Outcome::AuthContinue {
            let response = match framer
                .frag
                .decode_message(&AuthenticateDataCodec::default())
            {
                Ok(AuthenticateData::Continue(data)) => Some(data.declassify().to_vec()),
                _ => None,
            };
            outcome = session.auth_response(response.as_deref(), &mut out).await;
            write(&mut conn, &mut out).await?;
            if outcome == Outcome::Relay {
                if let Some(relayed) = relay(
                    &mut conn,
                    &mut framer,
                    &mut session,
                    backend,
                    client,
                    &mut out,
                )
                .await
                {
                    return relayed;
                }
                outcome = Outcome::Continue;
            }
            continue;
        }
        let request = if framer.frag.is_max_message_size_exceeded() {
            Err("[TOOBIG] Command too long".to_string())
        } else if framer.frag.is_message_poisoned() {
            Err("Syntax error".to_string())
        } else {
            crate::extended::decode(framer.frag.message_bytes())
        };
        match request {
            Ok(request) => {
                // Long answers (FETCH, SEARCH) go out as they are made.
                let mut responses = Responses::streaming(&mut out, &mut conn, STREAM_BUFFER);
                outcome = session.handle_request(request, &mut responses).await;
                if let Some(e) = responses.take_error() {
                    return Err(End::Io(e));
                }
                if out.windows(5).any(|w| w == b" BAD ") {
                    errors += 1;
                }
            }
            Err(text) => {
                errors += 1;
                match framer.frag.decode_tag() {
                    Some(tag) => {
                        out.extend_from_slice(format!("{} BAD {text}\r\n", tag.as_ref()).as_bytes())
                    }
                    None => out.extend_from_slice(format!("* BAD {text}\r\n").as_bytes()),
                }
            }
        }
        if errors >= limits.max_errors {
            out.extend_from_slice(b"* BYE Too many errors\r\n");
            write(&mut conn, &mut out).await?;
            return Err(End::Closed);
        }
        write(&mut conn, &mut out).await?;
        match outcome {
            Outcome::Logout => {
                let _ = conn.shutdown().await;
                return Ok(());
            }
            Outcome::Relay => {
                if let Some(relayed) = relay(
                    &mut conn,
                    &mut framer,
                    &mut session,
                    backend,
                    client,
                    &mut out,
                )
                .await
                {
                    return relayed;
                }
                outcome = Outcome::Continue;
            }
            Outcome::StartTls => {
                let (Conn::Plain(plain), Some(acceptor)) = (conn, &acceptor) else {
                    return Err(End::Closed);
                };
                conn = Conn::Tls(Box::new(
                    handshake(acceptor, plain, limits.unauthenticated_timeout).await?,
                ));
                // Anything pipelined after STARTTLS in clear text is dropped.
                framer = Framer::new(limits);
                session.tls_started();
                outcome = Outcome::Continue;
            }
            _ => {}
        }
    }
}

/// After a login for an account served elsewhere: connects the session to the node that
/// serves it and relays it there until it ends (`Some`), or, when no node can take it,
/// answers the login `NO [UNAVAILABLE]` and the session goes on unauthenticated (`None`).
async fn relay<B: Backend>(
    conn: &mut Conn,
    framer: &mut Framer,
    session: &mut Session<B>,
    backend: &B,
    client: SocketAddr,
    out: &mut Vec<u8>,
) -> Option<Result<(), End>> {
    let (tag, account) = session.take_relay()?;
    let request = crate::backend::RelayRequest {
        account,
        client,
        tls: session.is_tls(),
    };
    match backend.relay(&request).await {
        Ok(mut upstream) => {
            out.extend_from_slice(format!("{} OK Logged in\r\n", tag.as_ref()).as_bytes());
            if let Err(e) = write(conn, out).await {
                return Some(Err(e));
            }
            let pending = framer.drain();
            let end = crate::relay::pipe(conn, &mut upstream, &pending).await;
            debug!(account = %request.account.name, ?end, "relayed session ended");
            Some(Ok(()))
        }
        Err(e) => {
            debug!(account = %request.account.name, error = %e, "relaying the session failed");
            out.extend_from_slice(
                format!(
                    "{} NO [UNAVAILABLE] The mailbox server cannot be reached, try again later\r\n",
                    tag.as_ref()
                )
                .as_bytes(),
            );
            write(conn, out).await.err().map(Err)
        }
    }
}

/// IDLE: sends updates when the store changes, until `DONE`, a timeout or a close.
async fn idle<B: Backend>(
    conn: &mut Conn,
    session: &mut Session<B>,
    framer: &mut Framer,
    buf: &mut [u8],
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<Outcome, End> {
    let Some(mut changes) = session.changes() else {
        session.idle_done(false, out);
        return Ok(Outcome::Continue);
    };
    changes.borrow_and_update();
    let deadline = Instant::now() + limits.idle_timeout;
    // Changes made between SELECT and IDLE are reported at once.
    idle_refresh(conn, session, out).await?;
    loop {
        match framer.pump(out) {
            Event::Message => {
                let ok = framer
                    .frag
                    .decode_message(&IdleDoneCodec::default())
                    .is_ok();
                session.idle_done(ok, out);
                return Ok(Outcome::Continue);
            }
            Event::Refused => {
                session.idle_done(false, out);
                return Ok(Outcome::Continue);
            }
            Event::Fatal(text) => {
                out.extend_from_slice(format!("* BYE {text}\r\n").as_bytes());
                write(conn, out).await?;
                return Err(End::Closed);
            }
            Event::NeedMore => {}
        }
        tokio::select! {
            read = read_more(conn, framer, buf, deadline) => {
                if let Err(End::Timeout) = read {
                    out.extend_from_slice(b"* BYE IDLE timed out\r\n");
                    let _ = write(conn, out).await;
                    close(conn).await;
                }
                read?;
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    out.extend_from_slice(b"* BYE Server shutting down\r\n");
                    let _ = write(conn, out).await;
                    return Err(End::Closed);
                }
                idle_refresh(conn, session, out).await?;
            }
        }
    }
}

/// Sends the updates of the selected mailbox during IDLE, streamed like a command's.
async fn idle_refresh<B: Backend>(
    conn: &mut Conn,
    session: &mut Session<B>,
    out: &mut Vec<u8>,
) -> Result<(), End> {
    let mut responses = Responses::streaming(out, conn, STREAM_BUFFER);
    session.idle_refresh_streaming(&mut responses).await;
    if let Some(e) = responses.take_error() {
        return Err(End::Io(e));
    }
    write(conn, out).await
}
