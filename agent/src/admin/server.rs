//! The admin API server: warp routes, served over TLS (tokio-rustls, ring) by hyper's HTTP/1
//! connection, behind HTTP Basic authentication and a limiter of failed attempts.
//!
//! ```text
//! GET    /admin/v1/domains                      → 200 [DomainInfo]
//! POST   /admin/v1/domains          {"name"}    → 201
//! DELETE /admin/v1/domains/{name}               → 204
//! GET    /admin/v1/domains/{domain}/accounts    → 200 [AccountInfo]
//! POST   /admin/v1/accounts  {"address","password","quotaBytes"?} → 201
//! DELETE /admin/v1/accounts/{address}           → 204
//! PUT    /admin/v1/accounts/{address}/password {"password"} → 204
//! GET    /admin/v1/node                         → 200 NodeState
//! GET    /admin/v1/accounts/{address}/messages?mailbox=INBOX&after=0&limit=100
//!                                               → 200 [MessageInfo]
//! ```
//!
//! Errors answer `{"error": "…", "reason": "…"}`; `reason` is the [`AdminError`] kind or one of
//! `Unauthorized`, `TooManyRequests`, `NoSuchRoute`, `MethodNotAllowed`, `PayloadTooLarge`,
//! `LengthRequired`, `BadRequest`.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use headers::authorization::Basic;
use headers::{Authorization, HeaderMapExt};
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reject::{LengthRequired, MethodNotAllowed, PayloadTooLarge, Rejection};
use warp::reply::{Reply, Response};

use super::auth::{Credential, FailureLimiter};
use super::{
    ADMIN_USER, AdminBackend, AdminError, ErrorBody, MAX_MESSAGES, NewAccount, NewDomain,
    NewPassword, check_password, normalize_address, normalize_domain,
};

/// The environment variable naming the admin password file (mounted from the Secret that
/// `spec.adminSecretRef` names).
pub const PASSWORD_FILE_VAR: &str = "TERN_ADMIN_PASSWORD_FILE";
/// The realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "tern-admin";
/// Largest request body accepted.
pub const MAX_BODY: u64 = 64 * 1024;
/// Failed authentications from one client within [`FAILURE_WINDOW`] before it is blocked.
pub const MAX_FAILURES: u32 = 5;
/// How long failures are counted, and how long a client stays blocked.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Clients remembered by the limiter; beyond it the oldest are forgotten.
const LIMITER_CAPACITY: usize = 4096;
/// Connections served at once; more are closed right after accepting them.
const MAX_CONNECTIONS: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An admin connection is short; this bounds one kept alive by a client that went quiet.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// `Retry-After` on 503: about an election's worth of time.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// Where and how the admin API listens.
#[derive(Clone)]
pub struct AdminServerConfig {
    pub addr: SocketAddr,
    /// The listener's certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
    /// The password of the user `admin`.
    pub password: String,
}

impl fmt::Debug for AdminServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServerConfig")
            .field("addr", &self.addr)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the admin password is empty")]
    EmptyPassword,
    #[error("admin API TLS: {0}")]
    Tls(String),
    #[error("admin API cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read the admin password file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the admin password file {0} is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("the admin password file {0} is empty")]
    Empty(PathBuf),
}

/// Reads the admin password from a file, without one trailing newline (`\n` or `\r\n`); an
/// empty password is an error, so the API never starts open.
pub fn read_password_file(path: &Path) -> Result<String, PasswordFileError> {
    let bytes = std::fs::read(path).map_err(|source| PasswordFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut password =
        String::from_utf8(bytes).map_err(|_| PasswordFileError::NotUtf8(path.to_owned()))?;
    if password.ends_with('\n') {
        password.pop();
        if password.ends_with('\r') {
            password.pop();
        }
    }
    if password.is_empty() {
        return Err(PasswordFileError::Empty(path.to_owned()));
    }
    Ok(password)
}

/// Binds `config.addr` and serves the admin API in a task; returns the bound address (so port
/// 0 works) and the task. Aborting the task closes the listener and every open connection.
pub async fn serve<B: AdminBackend>(
    config: AdminServerConfig,
    backend: Arc<B>,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    if config.password.is_empty() {
        return Err(ServeError::EmptyPassword);
    }
    let tls = server_tls(&config.cert_pem, &config.key_pem)?;
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.addr,
        source,
    })?;
    let gate = Arc::new(Gate {
        credential: Credential::new(ADMIN_USER, &config.password),
        limiter: FailureLimiter::new(MAX_FAILURES, FAILURE_WINDOW, LIMITER_CAPACITY),
    });
    let routes = routes(backend, gate);
    let task = tokio::spawn(accept(listener, TlsAcceptor::from(tls), routes));
    tracing::info!(%addr, "admin API listening");
    Ok((addr, task))
}

fn server_tls(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, ServeError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(ServeError::Tls(
            "the certificate PEM holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| ServeError::Tls(format!("key PEM: {e}")))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Routes = BoxedFilter<(Response,)>;

async fn accept(listener: TcpListener, acceptor: TlsAcceptor, routes: Routes) {
    let service = warp::service(routes);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Owned here, so aborting this task ends the connections too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "admin API: too many connections, closing");
                        continue;
                    };
                    connections.spawn(connection(tcp, peer, acceptor.clone(), service.clone(), slot));
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The client's address, put into each request for the authentication filter.
#[derive(Clone, Copy, Debug)]
struct ClientIp(IpAddr);

async fn connection<S>(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    service: S,
    _slot: OwnedSemaphorePermit,
) where
    // `warp::service(routes)`, whose type warp does not name.
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "admin API: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "admin API: TLS handshake timed out");
            return;
        }
    };
    let ip = ClientIp(peer.ip());
    let handler = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ip);
        let mut service = service.clone();
        service.call(request)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tls), handler);
    match tokio::time::timeout(CONNECTION_LIFETIME, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin API: connection failed"),
        Err(_) => tracing::debug!(%peer, "admin API: connection closed after its lifetime"),
    }
}

/// Authentication: the limiter first (a blocked client's password is not even checked),
/// then the credential.
struct Gate {
    credential: Credential,
    limiter: FailureLimiter,
}

impl Gate {
    fn check(&self, ip: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
        let now = Instant::now();
        if let Some(wait) = self.limiter.blocked(ip, now) {
            tracing::debug!(%ip, "admin API: client blocked after failed logins");
            return Err(Refusal::too_many_failures(wait));
        }
        let Some(Authorization(basic)) = headers.typed_get::<Authorization<Basic>>() else {
            if headers.contains_key(AUTHORIZATION) {
                self.failed(ip, now);
                return Err(Refusal::unauthorized(
                    "malformed credentials: expected HTTP Basic",
                ));
            }
            return Err(Refusal::unauthorized("authentication required"));
        };
        if self.credential.verify(basic.username(), basic.password()) {
            self.limiter.succeeded(ip);
            Ok(())
        } else {
            self.failed(ip, now);
            Err(Refusal::unauthorized("wrong user name or password"))
        }
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        if self.limiter.failed(ip, now) {
            tracing::warn!(%ip, window = ?FAILURE_WINDOW, "admin API: failed logins, blocking the client");
        } else {
            tracing::info!(%ip, "admin API: failed login");
        }
    }
}

/// A request turned away before any handler ran.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    retry_after: Option<u64>,
    challenge: bool,
}

impl warp::reject::Reject for Refusal {}

impl Refusal {
    fn unauthorized(message: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: message.into(),
            retry_after: None,
            challenge: true,
        }
    }

    fn too_many_failures(wait: Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            reason: "TooManyRequests",
            message: format!("too many failed logins from this address; retry in {secs} s"),
            retry_after: Some(secs.max(1)),
            challenge: false,
        }
    }

    fn response(&self) -> Response {
        let mut response = error_response(self.status, self.reason, &self.message);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.challenge {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tern-admin\""),
            );
        }
        response
    }
}

fn error_response(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: message.to_owned(),
        reason: reason.to_owned(),
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn admin_error(error: &AdminError) -> Response {
    match error {
        AdminError::Internal(message) => {
            tracing::error!(%message, "admin API: internal error");
        }
        AdminError::Unavailable(message) => {
            tracing::info!(%message, "admin API: temporarily unavailable");
        }
        _ => {}
    }
    let mut response = error_response(error.status(), error.reason(), &error.to_string());
    if matches!(error, AdminError::Unavailable(_)) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS));
    }
    response
}

fn reply<T: Serialize>(status: StatusCode, result: Result<T, AdminError>) -> Response {
    match result {
        Ok(value) => warp::reply::with_status(warp::reply::json(&value), status).into_response(),
        Err(e) => admin_error(&e),
    }
}

fn no_content(result: Result<(), AdminError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(&e),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body)
        .map_err(|e| AdminError::Invalid(format!("malformed JSON body: {e}")))
}

/// A path segment, percent-decoded (clients may encode `@` as `%40`).
fn segment(raw: &str) -> Result<String, AdminError> {
    let invalid = || AdminError::Invalid(format!("bad percent-encoding in the path: {raw:?}"));
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(invalid)?;
            let hex = std::str::from_utf8(hex).map_err(|_| invalid())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| invalid())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// The query string of `GET /admin/v1/accounts/{address}/messages`.
#[derive(Debug, Default)]
struct MessagesQuery {
    /// Default `INBOX`.
    mailbox: Option<String>,
    /// List UIDs above this one (default 0: from the first).
    after: Option<u32>,
    /// Default 100, at most [`MAX_MESSAGES`].
    limit: Option<u32>,
}

impl MessagesQuery {
    /// Parses the raw query string (percent-decoded; `+` is a space).
    fn parse(raw: &str) -> Result<Self, AdminError> {
        let mut q = MessagesQuery::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = segment(&value.replace('+', " "))?;
            let number = |what: &str| {
                value.parse::<u32>().map_err(|_| {
                    AdminError::Invalid(format!("{what}={value:?}: expected a number"))
                })
            };
            match key {
                "mailbox" => q.mailbox = Some(value.clone()),
                "after" => q.after = Some(number("after")?),
                "limit" => q.limit = Some(number("limit")?),
                other => {
                    return Err(AdminError::Invalid(format!(
                        "unknown query parameter {other:?} (mailbox, after, limit)"
                    )));
                }
            }
        }
        if q.limit == Some(0) || q.limit.is_some_and(|l| l > MAX_MESSAGES) {
            return Err(AdminError::Invalid(format!(
                "limit must be 1 to {MAX_MESSAGES}"
            )));
        }
        Ok(q)
    }
}

fn routes<B: AdminBackend>(backend: Arc<B>, gate: Arc<Gate>) -> Routes {
    let authenticated = warp::ext::get::<ClientIp>()
        .and(warp::header::headers_cloned())
        .and_then(move |ClientIp(ip), headers: HeaderMap| {
            let gate = gate.clone();
            async move { gate.check(ip, &headers).map_err(warp::reject::custom) }
        })
        .untuple_one();
    let backend = warp::any().map(move || backend.clone());
    let body = warp::body::content_length_limit(MAX_BODY).and(warp::body::bytes());

    let list_domains = warp::path!("admin" / "v1" / "domains")
        .and(warp::get())
        .and(backend.clone())
        .then(|b: Arc<B>| async move { reply(StatusCode::OK, b.list_domains().await) });
    let create_domain = warp::path!("admin" / "v1" / "domains")
        .and(warp::post())
        .and(body)
        .and(backend.clone())
        .then(|body: Bytes, b: Arc<B>| async move {
            let result = async {
                let request: NewDomain = parse(&body)?;
                let name = normalize_domain(&request.name)?;
                b.create_domain(name.clone()).await?;
                Ok(NewDomain { name })
            };
            reply(StatusCode::CREATED, result.await)
        });
    let delete_domain = warp::path!("admin" / "v1" / "domains" / String)
        .and(warp::delete())
        .and(backend.clone())
        .then(|name: String, b: Arc<B>| async move {
            let result = async {
                let name = normalize_domain(&segment(&name)?)?;
                b.delete_domain(name).await
            };
            no_content(result.await)
        });
    let list_accounts = warp::path!("admin" / "v1" / "domains" / String / "accounts")
        .and(warp::get())
        .and(backend.clone())
        .then(|domain: String, b: Arc<B>| async move {
            let result = async {
                let domain = normalize_domain(&segment(&domain)?)?;
                b.list_accounts(domain).await
            };
            reply(StatusCode::OK, result.await)
        });
    let create_account = warp::path!("admin" / "v1" / "accounts")
        .and(warp::post())
        .and(body)
        .and(backend.clone())
        .then(|body: Bytes, b: Arc<B>| async move {
            #[derive(Serialize)]
            struct Created {
                address: String,
            }
            let result = async {
                let request: NewAccount = parse(&body)?;
                let address = normalize_address(&request.address)?;
                check_password(&request.password)?;
                b.create_account(address.clone(), request.password, request.quota_bytes)
                    .await?;
                Ok(Created { address })
            };
            reply(StatusCode::CREATED, result.await)
        });
    let delete_account = warp::path!("admin" / "v1" / "accounts" / String)
        .and(warp::delete())
        .and(backend.clone())
        .then(|address: String, b: Arc<B>| async move {
            let result = async {
                let address = normalize_address(&segment(&address)?)?;
                b.delete_account(address).await
            };
            no_content(result.await)
        });
    let set_password = warp::path!("admin" / "v1" / "accounts" / String / "password")
        .and(warp::put())
        .and(body)
        .and(backend.clone())
        .then(|address: String, body: Bytes, b: Arc<B>| async move {
            let result = async {
                let address = normalize_address(&segment(&address)?)?;
                let request: NewPassword = parse(&body)?;
                check_password(&request.password)?;
                b.set_password(address, request.password).await
            };
            no_content(result.await)
        });
    let list_messages = warp::path!("admin" / "v1" / "accounts" / String / "messages")
        .and(warp::get())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(backend.clone())
        .then(|address: String, raw: String, b: Arc<B>| async move {
            let result = async {
                let address = normalize_address(&segment(&address)?)?;
                let q = MessagesQuery::parse(&raw)?;
                b.list_messages(
                    address,
                    q.mailbox.unwrap_or_else(|| "INBOX".to_owned()),
                    q.after.unwrap_or(0),
                    q.limit.unwrap_or(100),
                )
                .await
            };
            reply(StatusCode::OK, result.await)
        });
    let node = warp::path!("admin" / "v1" / "node")
        .and(warp::get())
        .and(backend)
        .then(|b: Arc<B>| async move { reply(StatusCode::OK, b.node_state().await) });

    let api = list_domains
        .or(create_domain)
        .unify()
        .or(delete_domain)
        .unify()
        .or(list_accounts)
        .unify()
        .or(create_account)
        .unify()
        .or(delete_account)
        .unify()
        .or(set_password)
        .unify()
        .or(list_messages)
        .unify()
        .or(node)
        .unify();
    authenticated.and(api).recover(recover).unify().boxed()
}

/// Rejections become JSON errors; the most specific wins (a matched path with the wrong method
/// is 405, not 404).
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let response = if let Some(refusal) = rejection.find::<Refusal>() {
        refusal.response()
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            &format!("the request body is larger than {MAX_BODY} bytes"),
        )
    } else if rejection.find::<LengthRequired>().is_some() {
        error_response(
            StatusCode::LENGTH_REQUIRED,
            "LengthRequired",
            "a Content-Length header is required",
        )
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed on this route",
        )
    } else if rejection.is_not_found() {
        error_response(StatusCode::NOT_FOUND, "NoSuchRoute", "no such route")
    } else if rejection.find::<warp::ext::MissingExtension>().is_some() {
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            "request without a client address",
        )
    } else {
        tracing::debug!(?rejection, "admin API: bad request");
        error_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("{rejection:?}"),
        )
    };
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_loses_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("tern-admin-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        for (content, want) in [
            ("secret\n", "secret"),
            ("secret\r\n", "secret"),
            ("secret", "secret"),
            ("secret\n\n", "secret\n"),
            (" secret \n", " secret "),
        ] {
            std::fs::write(&file, content).unwrap();
            assert_eq!(read_password_file(&file).unwrap(), want, "{content:?}");
        }
        for empty in ["", "\n", "\r\n"] {
            std::fs::write(&file, empty).unwrap();
            assert!(matches!(
                read_password_file(&file),
                Err(PasswordFileError::Empty(_))
            ));
        }
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_password_file(&file),
            Err(PasswordFileError::NotUtf8(_))
        ));
        assert!(matches!(
            read_password_file(&dir.join("missing")),
            Err(PasswordFileError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(segment("a%40example.org").unwrap(), "a@example.org");
        assert_eq!(segment("a@example.org").unwrap(), "a@example.org");
        assert_eq!(segment("%C3%BC").unwrap(), "ü");
        for bad in ["%", "%4", "%zz", "%ff"] {
            assert!(segment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn message_list_queries_are_checked() {
        let q = MessagesQuery::parse("mailbox=Archive%2F2024&after=5&limit=10").unwrap();
        assert_eq!(q.mailbox.as_deref(), Some("Archive/2024"));
        assert_eq!((q.after, q.limit), (Some(5), Some(10)));
        let q = MessagesQuery::parse("").unwrap();
        assert_eq!((q.mailbox, q.after, q.limit), (None, None, None));
        assert_eq!(
            MessagesQuery::parse("mailbox=Sent+Items")
                .unwrap()
                .mailbox
                .as_deref(),
            Some("Sent Items")
        );
        for bad in [
            "after=x",
            "limit=0",
            "limit=1001",
            "colour=red",
            "mailbox=%zz",
        ] {
            assert!(
                matches!(MessagesQuery::parse(bad), Err(AdminError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn realm_constant_matches_the_challenge() {
        let r = Refusal::unauthorized("x").response();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            format!("Basic realm=\"{REALM}\"")
        );
        let r = Refusal::too_many_failures(Duration::from_millis(1500)).response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
    }
}
