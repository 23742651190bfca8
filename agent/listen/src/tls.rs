//! TLS for the mail listeners: the server configuration from a certificate chain and its
//! key ([`server_config`]), and a handshake bounded in time ([`handshake`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The listeners' TLS configuration from a certificate chain and its key (PEM): TLS 1.2 and
/// 1.3 with ring's safe defaults; mail clients do not use ALPN.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate PEM holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key PEM: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The handshake failed (bad client hello, no common cipher, the client left).
    #[error("TLS handshake failed: {0}")]
    Failed(#[from] io::Error),
    /// The client did not finish within the time allowed.
    #[error("TLS handshake timed out")]
    Timeout,
}

/// The server side of a TLS handshake on `stream`, within `limit`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
    limit: Duration,
) -> Result<TlsStream<S>, HandshakeError> {
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn certificate() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["mx.example.test".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_configuration_needs_a_certificate_and_a_matching_key() {
        let (cert, key) = certificate();
        assert!(server_config(cert.as_bytes(), key.as_bytes()).is_ok());
        assert!(server_config(b"", key.as_bytes()).is_err());
        assert!(server_config(cert.as_bytes(), b"not a key").is_err());
        let (_, other_key) = certificate();
        assert!(server_config(cert.as_bytes(), other_key.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn a_handshake_fails_on_garbage_and_times_out_on_silence() {
        let (cert, key) = certificate();
        let acceptor = TlsAcceptor::from(server_config(cert.as_bytes(), key.as_bytes()).unwrap());
        let (server, mut client) = tokio::io::duplex(4096);
        client.write_all(b"EHLO not tls\r\n").await.unwrap();
        let err = handshake(&acceptor, server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Failed(_)), "{err}");
        let (server, _client) = tokio::io::duplex(4096);
        let err = handshake(&acceptor, server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout), "{err}");
    }
}
