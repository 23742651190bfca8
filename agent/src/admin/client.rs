//! A client of the admin API, for `tern-agent admin` and the local-cluster launcher: one TLS
//! connection per request (hyper's HTTP/1 client connection over tokio-rustls).
//!
//! The server is verified against the CA given, never against the system's roots; skipping
//! verification needs the explicit [`AdminClient::insecure`].

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use headers::{Authorization, HeaderMapExt};
use http::header::{ACCEPT, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use super::{
    AccountInfo, DomainInfo, ErrorBody, MessageInfo, NewAccount, NewDomain, NewPassword, NodeState,
};

/// Largest answer read (a domain with many accounts is the big one).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad admin API URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error(
        "no CA certificate to verify the admin API with (give the CA that signed its certificate, or choose insecure explicitly)"
    )]
    NoTrust,
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake { addr: String, source: io::Error },
    #[error("HTTP exchange with {addr} failed: {message}")]
    Http { addr: String, message: String },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The server answered with an error status.
    #[error("{message} (HTTP {status}, {reason})")]
    Refused {
        status: u16,
        /// `NotFound`, `Conflict`, `Invalid`, `Unavailable`, `Unauthorized`, … (see the server).
        reason: String,
        message: String,
        /// Seconds, from `Retry-After`.
        retry_after: Option<u64>,
    },
    #[error("unexpected answer (HTTP {status}): {message}")]
    Decode { status: u16, message: String },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } | ClientError::Decode { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Worth retrying later: the server had no quorum or leader (503), asked to slow down
    /// (429), or could not be reached.
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => *status == 503 || *status == 429,
            ClientError::Connect { .. } | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// One answer, as read by [`AdminClient::send_raw`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// The JSON error body, if the answer has one.
    pub fn error(&self) -> Option<ErrorBody> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Clone)]
pub struct AdminClient {
    host: String,
    port: u16,
    /// `host:port` as in the URL, for `Host` and messages.
    authority: String,
    server_name: ServerName<'static>,
    /// The URL's path without its trailing `/`; routes are appended.
    prefix: String,
    tls: TlsConnector,
    authorization: HeaderValue,
    timeout: Duration,
    local_ip: Option<IpAddr>,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("authority", &self.authority)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client of the admin API at `base_url` (`https://host:port`), verifying the server
    /// against `ca_pem` (the CA that signed the listener's certificate). Without a CA this
    /// refuses ([`ClientError::NoTrust`]): the system's roots are never consulted, and skipping
    /// verification is [`insecure`](Self::insecure).
    pub fn new(
        base_url: &str,
        user: &str,
        password: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let ca_pem = ca_pem.ok_or(ClientError::NoTrust)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("CA PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Tls("the CA PEM holds no certificate".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
        }
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::with_tls(base_url, user, password, config)
    }

    /// A client that accepts whatever certificate the server shows (`--insecure`): the
    /// connection is encrypted but anyone in the path can read the admin password.
    pub fn insecure(base_url: &str, user: &str, password: &str) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate(provider)))
            .with_no_client_auth();
        Self::with_tls(base_url, user, password, config)
    }

    fn with_tls(
        base_url: &str,
        user: &str,
        password: &str,
        mut config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Url {
            url: base_url.to_owned(),
            why: why.to_owned(),
        };
        let uri: Uri = base_url.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the admin API is served over https://"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials do not belong in the URL"));
        }
        if uri.query().is_some() {
            return Err(bad("no query string expected"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| bad(&format!("host {host:?}: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut headers = HeaderMap::new();
        headers.typed_insert(Authorization::basic(user, password));
        let authorization = headers
            .remove(http::header::AUTHORIZATION)
            .ok_or_else(|| ClientError::Tls("cannot encode the credentials".into()))?;
        Ok(Self {
            host,
            port,
            authority: authority.as_str().to_owned(),
            server_name,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            tls: TlsConnector::from(Arc::new(config)),
            authorization,
            timeout: DEFAULT_TIMEOUT,
            local_ip: None,
        })
    }

    /// How long one request may take, connection included (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect from this local address (a host with several, or tests on 127.0.0.0/8).
    pub fn with_local_ip(mut self, ip: IpAddr) -> Self {
        self.local_ip = Some(ip);
        self
    }

    pub async fn create_domain(&self, name: &str) -> Result<(), ClientError> {
        let body = NewDomain { name: name.into() };
        self.call(Method::POST, "/admin/v1/domains", Some(&body))
            .await
            .map(drop)
    }

    pub async fn list_domains(&self) -> Result<Vec<DomainInfo>, ClientError> {
        let response = self
            .call(Method::GET, "/admin/v1/domains", None::<&()>)
            .await?;
        decode(&response)
    }

    pub async fn delete_domain(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/admin/v1/domains/{}", encode_segment(name));
        self.call(Method::DELETE, &path, None::<&()>)
            .await
            .map(drop)
    }

    pub async fn create_account(
        &self,
        address: &str,
        password: &str,
        quota_bytes: Option<u64>,
    ) -> Result<(), ClientError> {
        let body = NewAccount {
            address: address.into(),
            password: password.into(),
            quota_bytes,
        };
        self.call(Method::POST, "/admin/v1/accounts", Some(&body))
            .await
            .map(drop)
    }

    pub async fn list_accounts(&self, domain: &str) -> Result<Vec<AccountInfo>, ClientError> {
        let path = format!("/admin/v1/domains/{}/accounts", encode_segment(domain));
        let response = self.call(Method::GET, &path, None::<&()>).await?;
        decode(&response)
    }

    pub async fn delete_account(&self, address: &str) -> Result<(), ClientError> {
        let path = format!("/admin/v1/accounts/{}", encode_segment(address));
        self.call(Method::DELETE, &path, None::<&()>)
            .await
            .map(drop)
    }

    pub async fn set_password(&self, address: &str, password: &str) -> Result<(), ClientError> {
        let path = format!("/admin/v1/accounts/{}/password", encode_segment(address));
        let body = NewPassword {
            password: password.into(),
        };
        self.call(Method::PUT, &path, Some(&body)).await.map(drop)
    }

    /// The messages of `address`'s `mailbox` with UIDs above `after_uid`, at most `limit`
    /// (1 to [`MAX_MESSAGES`](super::MAX_MESSAGES)), by UID.
    pub async fn list_messages(
        &self,
        address: &str,
        mailbox: &str,
        after_uid: u32,
        limit: u32,
    ) -> Result<Vec<MessageInfo>, ClientError> {
        let path = format!(
            "/admin/v1/accounts/{}/messages?mailbox={}&after={after_uid}&limit={limit}",
            encode_segment(address),
            encode_segment(mailbox)
        );
        let response = self.call(Method::GET, &path, None::<&()>).await?;
        decode(&response)
    }

    /// Every message of `address`'s `mailbox`, page by page.
    pub async fn all_messages(
        &self,
        address: &str,
        mailbox: &str,
    ) -> Result<Vec<MessageInfo>, ClientError> {
        let mut all: Vec<MessageInfo> = Vec::new();
        loop {
            let after = all.last().map_or(0, |m| m.uid);
            let page = self
                .list_messages(address, mailbox, after, super::MAX_MESSAGES)
                .await?;
            let full = page.len() >= super::MAX_MESSAGES as usize;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    pub async fn node_state(&self) -> Result<NodeState, ClientError> {
        let response = self
            .call(Method::GET, "/admin/v1/node", None::<&()>)
            .await?;
        decode(&response)
    }

    /// Sends one request as given (`path` is appended to the URL's path) and returns the
    /// answer whatever its status: for probing and tests.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let addr = self.authority.clone();
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout { addr, timeout })?
    }

    /// A request whose answer must be a success.
    async fn call<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<RawResponse, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Http {
                addr: self.authority.clone(),
                message: format!("cannot encode the request: {e}"),
            })?;
        let response = self.send_raw(method, path, body).await?;
        if response.status.is_success() {
            Ok(response)
        } else {
            Err(refused(&response))
        }
    }

    async fn connect(&self) -> Result<TcpStream, ClientError> {
        let connect_error = |source| ClientError::Connect {
            addr: self.authority.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(connect_error)?
            .filter(|a| self.local_ip.is_none_or(|ip| ip.is_ipv4() == a.is_ipv4()))
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
        for addr in addrs {
            let attempt = match self.local_ip {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let socket = if ip.is_ipv4() {
                        TcpSocket::new_v4()
                    } else {
                        TcpSocket::new_v6()
                    };
                    match socket.and_then(|s| s.bind(SocketAddr::new(ip, 0)).map(|()| s)) {
                        Ok(socket) => socket.connect(addr).await,
                        Err(e) => Err(e),
                    }
                }
            };
            match attempt {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(connect_error(last))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let http_error = |e: &dyn fmt::Display| ClientError::Http {
            addr: self.authority.clone(),
            message: e.to_string(),
        };
        let tcp = self.connect().await?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| ClientError::Handshake {
                addr: self.authority.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| http_error(&e))?;
        // Drives the connection; it ends when `sender` is dropped after the answer.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin client: connection ended");
            }
        });

        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.prefix, path))
            .header(HOST, &self.authority)
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("tern-agent/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http_error(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_error(&e))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| http_error(&e))?
            .to_bytes();
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

fn decode<T: DeserializeOwned>(response: &RawResponse) -> Result<T, ClientError> {
    serde_json::from_slice(&response.body).map_err(|e| ClientError::Decode {
        status: response.status.as_u16(),
        message: e.to_string(),
    })
}

fn refused(response: &RawResponse) -> ClientError {
    let status = response.status;
    let retry_after = response
        .headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let (reason, message) = match response.error() {
        Some(ErrorBody { error, reason }) => (reason, error),
        None => {
            let canonical = status.canonical_reason().unwrap_or("error").to_owned();
            let text = String::from_utf8_lossy(&response.body);
            let text = text.trim();
            let message = if text.is_empty() {
                canonical.clone()
            } else {
                text.chars().take(200).collect()
            };
            (canonical.replace(' ', ""), message)
        }
    };
    ClientError::Refused {
        status: status.as_u16(),
        reason,
        message,
        retry_after,
    }
}

/// Percent-encodes a path segment: everything but unreserved characters and `@`.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `--insecure` verifier: any certificate, any name. Handshake signatures are still
/// checked, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_must_be_https_with_a_host() {
        for bad in [
            "http://127.0.0.1:8443",
            "127.0.0.1:8443",
            "https://",
            "https://user:pw@127.0.0.1",
            "https://127.0.0.1/?q=1",
        ] {
            assert!(
                matches!(
                    AdminClient::insecure(bad, "admin", "pw"),
                    Err(ClientError::Url { .. })
                ),
                "{bad}"
            );
        }
        let c = AdminClient::insecure("https://[::1]:9443/base/", "admin", "pw").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 9443));
        assert_eq!(c.prefix, "/base");
        let c = AdminClient::insecure("https://admin.example", "admin", "pw").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("admin.example", 443, "")
        );
    }

    #[test]
    fn a_ca_is_required_unless_insecure() {
        assert!(matches!(
            AdminClient::new("https://127.0.0.1:1", "admin", "pw", None),
            Err(ClientError::NoTrust)
        ));
        assert!(matches!(
            AdminClient::new("https://127.0.0.1:1", "admin", "pw", Some(b"not pem")),
            Err(ClientError::Tls(_))
        ));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("a.b+c@example.org"), "a.b%2Bc@example.org");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("ü"), "%C3%BC");
    }

    #[test]
    fn debug_does_not_show_the_credentials() {
        let c = AdminClient::insecure("https://127.0.0.1:1", "admin", "hunter2-secret").unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("Basic"),
            "{shown}"
        );
    }

    #[test]
    fn temporary_errors() {
        let refused = |status| ClientError::Refused {
            status,
            reason: String::new(),
            message: String::new(),
            retry_after: None,
        };
        assert!(refused(503).is_temporary());
        assert!(refused(429).is_temporary());
        assert!(!refused(401).is_temporary());
        assert!(!refused(409).is_temporary());
    }
}
