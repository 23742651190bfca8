//! The tokio server: accepts connections on one listener and runs a [`Session`] on each,
//! doing the I/O the session asks for.
//!
//! Per connection, in order: the PROXY header when the listener expects one (bounded in
//! size and time; without a valid one the connection is closed), the per-address
//! connection limit, the TLS handshake on an implicit-TLS listener, then the session. Every
//! wait for the client is bounded by the idle timeout; a client that stalls mid-message is
//! cut off and its partial message never reaches the backend. Commands are charged to the
//! client's address (token bucket), password attempts are refused without a check after
//! too many failures per address or per account. On shutdown the listener stops
//! accepting; sessions between commands are told `421` at once, sessions in the middle of
//! a message may finish it within the grace period.

use std::future::Future;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::sync::Arc;

use tern_listen::accept::{self, Admission, LoopConfig, Refused, Stop};
use tern_listen::tls::handshake;
use tern_listen::{ListenerStats, Prefixed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, warn};

use crate::backend::{AuthVerdict, Backend, DeliveryStatus};
use crate::envelope::{SessionId, received_header};
use crate::limits::Limits;
use crate::reply::canned;
use crate::session::{Action, Protocol, Session, SessionConfig, SessionInfo, TlsInfo};
use crate::throttle::Throttle;

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Inbound SMTP (25), STARTTLS when TLS is configured.
    Smtp,
    /// Submission with STARTTLS (587).
    Submission,
    /// Submission over implicit TLS (465, RFC 8314).
    Smtps,
    /// LMTP (24), STARTTLS when TLS is configured.
    Lmtp,
}

impl ListenerKind {
    /// The protocol its sessions speak.
    pub fn protocol(self) -> Protocol {
        match self {
            ListenerKind::Smtp => Protocol::Smtp,
            ListenerKind::Submission | ListenerKind::Smtps => Protocol::Submission,
            ListenerKind::Lmtp => Protocol::Lmtp,
        }
    }

    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Smtp => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::Smtps => "smtps",
            ListenerKind::Lmtp => "lmtp",
        }
    }
}

/// A listener's configuration.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// What it serves.
    pub kind: ListenerKind,
    /// This server's name (greeting, EHLO, Received).
    pub hostname: String,
    /// The TLS configuration: STARTTLS on Smtp/Submission/Lmtp, required for Smtps.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether every connection starts with a PROXY v1/v2 header (behind a load balancer).
    pub proxy_protocol: bool,
    /// Whether AUTH is offered (always only under TLS). By default on for submission
    /// listeners, off for Smtp, never on Lmtp.
    pub auth: bool,
    /// The limits.
    pub limits: Limits,
}

impl ListenerConfig {
    /// Defaults for `kind`: no TLS, no PROXY, AUTH on submission listeners, default limits.
    pub fn new(kind: ListenerKind, hostname: impl Into<String>) -> Self {
        ListenerConfig {
            kind,
            hostname: hostname.into(),
            tls: None,
            proxy_protocol: false,
            auth: matches!(kind, ListenerKind::Submission | ListenerKind::Smtps),
            limits: Limits::default(),
        }
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

struct Shared<B> {
    config: ListenerConfig,
    backend: Arc<B>,
    throttle: Arc<Throttle>,
    acceptor: Option<TlsAcceptor>,
    stats: Arc<ServerStats>,
}

/// One listener's server.
pub struct Server<B> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend> Server<B> {
    /// A server for `config` storing through `backend`, with its own [`Throttle`].
    pub fn new(config: ListenerConfig, backend: Arc<B>) -> Result<Self, ServerError> {
        let throttle = Throttle::new(config.limits.throttle());
        Self::with_throttle(config, backend, throttle)
    }

    /// A server sharing `throttle` (per-address and per-account limits) with others, so
    /// that, e.g., password failures on 587 and 465 count together.
    pub fn with_throttle(
        config: ListenerConfig,
        backend: Arc<B>,
        throttle: Arc<Throttle>,
    ) -> Result<Self, ServerError> {
        if config.kind == ListenerKind::Smtps && config.tls.is_none() {
            return Err(ServerError::Config(
                "an smtps listener needs a TLS configuration",
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
        if config.limits.max_command_line < 512 || config.limits.max_auth_line < 512 {
            return Err(ServerError::Config(
                "command lines must be allowed at least 512 octets",
            ));
        }
        if config.limits.max_errors == 0 || config.limits.max_connections == 0 {
            return Err(ServerError::Config(
                "max_errors and max_connections must be at least 1",
            ));
        }
        let acceptor = config.tls.clone().map(TlsAcceptor::from);
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                backend,
                throttle,
                acceptor,
                stats: Arc::default(),
            }),
        })
    }

    /// What this listener counts (sessions, refused connections); read it for metrics.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Accepts connections on `listener` until `shutdown` completes, then shuts down
    /// gracefully and returns once every session has ended.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let config = &self.shared.config;
        let implicit_tls = config.kind == ListenerKind::Smtps;
        let busy = (!implicit_tls).then(|| canned::too_many_connections().to_bytes());
        let loop_config = LoopConfig {
            name: config.kind.as_str(),
            max_connections: config.limits.max_connections,
            full_reply: busy,
            shutdown_grace: config.limits.shutdown_grace,
        };
        let shared = &self.shared;
        accept::serve(
            listener,
            shutdown,
            &loop_config,
            &shared.stats,
            |tcp, peer, stop| connection(Arc::clone(shared), tcp, peer, stop),
        )
        .await;
    }
}

type Plain = Prefixed<TcpStream>;

enum Conn {
    Plain(Plain),
    Tls(Box<tokio_rustls::server::TlsStream<Plain>>),
    Gone,
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Gone => Ok(()),
        };
    }
}

fn tls_info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_owned(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".to_owned(), |s| format!("{:?}", s.suite()));
    TlsInfo { version, cipher }
}

async fn connection<B: Backend>(
    shared: Arc<Shared<B>>,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: Stop,
) {
    let id = SessionId::random();
    let span = tracing::info_span!(
        "smtp_session",
        session = %id,
        listener = shared.config.kind.as_str(),
        %peer,
        client = tracing::field::Empty,
    );
    run_connection(shared, tcp, peer, stop, id)
        .instrument(span)
        .await;
}

async fn run_connection<B: Backend>(
    shared: Arc<Shared<B>>,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: Stop,
    id: SessionId,
) {
    let config = &shared.config;
    let limits = &config.limits;
    let implicit_tls = config.kind == ListenerKind::Smtps;
    let admission = Admission {
        proxy_protocol: config.proxy_protocol,
        proxy_header_timeout: limits.proxy_header_timeout,
        busy_reply: (!implicit_tls).then(|| canned::too_many_connections().to_bytes()),
        reply_timeout: limits.idle_timeout,
    };
    let admitted = match accept::admit(tcp, peer, &admission, &shared.throttle).await {
        Ok(admitted) => admitted,
        Err(e) => {
            match &e {
                Refused::Proxy(_) => warn!(error = %e, "connection refused"),
                Refused::TooManyFromAddress(_) => {
                    warn!("too many connections from this address")
                }
            }
            shared.stats.refused();
            return;
        }
    };
    let client = admitted.client;
    let _slot = admitted.slot;
    let plain = admitted.stream;
    tracing::Span::current().record("client", tracing::field::display(client));
    let mut info = SessionInfo::new(id, config.kind.protocol(), client, peer);
    let conn = match (&shared.acceptor, config.kind) {
        (Some(acceptor), ListenerKind::Smtps) => {
            match handshake(acceptor, plain, limits.tls_handshake_timeout).await {
                Ok(tls) => {
                    info.tls = Some(tls_info(tls.get_ref().1));
                    Conn::Tls(Box::new(tls))
                }
                Err(e) => {
                    debug!(error = %e, "implicit TLS");
                    shared.stats.refused();
                    return;
                }
            }
        }
        _ => Conn::Plain(plain),
    };
    debug!("session started");
    shared.stats.session();
    let session_config = SessionConfig {
        hostname: config.hostname.clone(),
        starttls: shared.acceptor.is_some() && config.kind != ListenerKind::Smtps,
        auth: config.auth,
        limits: limits.clone(),
    };
    let session = Session::new(session_config, info);
    drive(&shared, session, conn, stop).await;
    debug!("session ended");
}

/// Writes what the session has to say; false when the client cannot be written to.
async fn flush(conn: &mut Conn, session: &mut Session, limits: &Limits) -> bool {
    let out = session.take_output();
    if out.is_empty() {
        return true;
    }
    matches!(
        timeout(limits.idle_timeout, conn.write_all(&out)).await,
        Ok(Ok(()))
    )
}

async fn drive<B: Backend>(
    shared: &Shared<B>,
    mut session: Session,
    mut conn: Conn,
    mut stop: Stop,
) {
    let limits = &shared.config.limits;
    let client_ip = session.info().client.ip();
    let mut buf = vec![0u8; 16 * 1024];
    let mut charged = 0u64;
    loop {
        match session.poll() {
            Action::NeedInput => {
                let new = session.commands() - charged;
                charged = session.commands();
                if !shared.throttle.commands(client_ip, new) {
                    warn!("command rate exceeded");
                    session.close_with(canned::too_many_commands());
                    continue;
                }
                if !flush(&mut conn, &mut session, limits).await {
                    break;
                }
                if stop.is_stopping() && !session.in_message() {
                    session.close_with(canned::shutting_down());
                    continue;
                }
                let in_message = session.in_message();
                let read = tokio::select! {
                    r = timeout(limits.idle_timeout, conn.read(&mut buf)) => r,
                    () = stop.stopping(), if !in_message => {
                        session.close_with(canned::shutting_down());
                        continue;
                    }
                };
                match read {
                    Err(_) => {
                        info!(in_message, "idle timeout");
                        session.close_with(canned::idle_timeout());
                    }
                    Ok(Ok(0)) => {
                        debug!(in_message, "client closed the connection");
                        session.eof();
                        break;
                    }
                    Ok(Ok(n)) => session.receive(&buf[..n]),
                    Ok(Err(e)) => {
                        debug!(error = %e, "read failed");
                        break;
                    }
                }
            }
            Action::StartTls => {
                if !flush(&mut conn, &mut session, limits).await {
                    break;
                }
                let (Conn::Plain(plain), Some(acceptor)) =
                    (mem::replace(&mut conn, Conn::Gone), &shared.acceptor)
                else {
                    break;
                };
                match handshake(acceptor, plain, limits.tls_handshake_timeout).await {
                    Ok(tls) => {
                        let tls_info = tls_info(tls.get_ref().1);
                        debug!(version = %tls_info.version, cipher = %tls_info.cipher, "STARTTLS");
                        conn = Conn::Tls(Box::new(tls));
                        session.tls_established(tls_info);
                    }
                    Err(e) => {
                        debug!(error = %e, "STARTTLS");
                        break;
                    }
                }
            }
            Action::CheckSender(sender) => {
                let verdict = shared.backend.sender(session.info(), &sender).await;
                session.sender_verdict(verdict);
            }
            Action::CheckRecipient(mailbox) => {
                let verdict = shared.backend.recipient(session.info(), &mailbox).await;
                debug!(recipient = %mailbox, ?verdict, "recipient");
                session.recipient_verdict(verdict);
            }
            Action::Authenticate(credentials) => {
                let user = credentials.username.clone();
                let verdict = if !shared.throttle.auth_allowed(client_ip, &user) {
                    AuthVerdict::Throttled
                } else {
                    let verdict = shared
                        .backend
                        .authenticate(session.info(), &credentials)
                        .await;
                    if verdict == AuthVerdict::Invalid {
                        shared.throttle.auth_failed(client_ip, &user);
                    }
                    verdict
                };
                match &verdict {
                    AuthVerdict::Ok(account) => info!(account = %account.name, "authenticated"),
                    other => warn!(%user, outcome = ?other, "authentication refused"),
                }
                session.auth_result(verdict);
            }
            Action::Deliver(mut delivery) => {
                let header = received_header(
                    session.info(),
                    &delivery,
                    &shared.config.hostname,
                    jiff::Timestamp::now(),
                );
                delivery.prepend_header(&header);
                let results = shared.backend.deliver(session.info(), &delivery).await;
                let stored = results
                    .iter()
                    .filter(|r| **r == DeliveryStatus::Stored)
                    .count();
                info!(
                    key = %delivery.key,
                    sender = %delivery.envelope.sender,
                    recipients = delivery.envelope.recipients.len(),
                    stored,
                    size = delivery.message.len(),
                    "delivery"
                );
                session.delivered(results);
            }
            Action::Close => {
                flush(&mut conn, &mut session, limits).await;
                let _ = timeout(limits.idle_timeout, conn.shutdown()).await;
                break;
            }
            Action::AwaitingAnswer => {
                warn!("session waits for an answer the server did not give");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked() {
        struct Nothing;
        impl Backend for Nothing {
            async fn recipient(
                &self,
                _: &SessionInfo,
                _: &crate::parser::Mailbox,
            ) -> crate::RcptVerdict {
                crate::RcptVerdict::Unknown
            }
            async fn authenticate(
                &self,
                _: &SessionInfo,
                _: &crate::auth::Credentials,
            ) -> AuthVerdict {
                AuthVerdict::Invalid
            }
            async fn deliver(&self, _: &SessionInfo, _: &crate::Delivery) -> Vec<DeliveryStatus> {
                Vec::new()
            }
        }
        let backend = Arc::new(Nothing);
        let smtps = ListenerConfig::new(ListenerKind::Smtps, "mx.example");
        assert!(Server::new(smtps, Arc::clone(&backend)).is_err());
        let no_name = ListenerConfig::new(ListenerKind::Smtp, "bad name");
        assert!(Server::new(no_name, Arc::clone(&backend)).is_err());
        let mut tiny = ListenerConfig::new(ListenerKind::Smtp, "mx.example");
        tiny.limits.max_command_line = 100;
        assert!(Server::new(tiny, Arc::clone(&backend)).is_err());
        assert!(
            Server::new(
                ListenerConfig::new(ListenerKind::Lmtp, "mx.example"),
                backend
            )
            .is_ok()
        );
        assert!(!ListenerConfig::new(ListenerKind::Smtp, "x").auth);
        assert!(ListenerConfig::new(ListenerKind::Submission, "x").auth);
    }
}
