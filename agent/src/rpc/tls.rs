//! Mutual TLS between agents: every agent presents a certificate of the cluster CA and
//! accepts only peers that present one too.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The ALPN protocol of agent-to-agent RPC, one request at a time per connection; both sides
/// insist on it or on [`ALPN_MUX`](super::mux::ALPN_MUX), so a TLS client of another kind (or
/// of another version of this protocol) fails the handshake.
pub(crate) const ALPN: &[u8] = b"tern-rpc/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} PEM: {source}")]
    Pem {
        what: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {0} PEM holds no certificate")]
    NoCertificate(&'static str),
    #[error("the CA certificate is not usable: {0}")]
    Ca(rustls::Error),
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS configurations of one agent: as a server (client certificates required, verified
/// against the cluster CA) and as a client (the server verified against the same CA, by the
/// host of the peer's `rpc_addr`), both presenting the agent's certificate.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl TlsConfig {
    /// From PEM: the cluster CA certificate(s), this agent's certificate chain and its
    /// private key; with ring's cryptography. Nothing process-wide is installed.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Self::from_pem_with_provider(
            ca_pem,
            cert_pem,
            key_pem,
            Arc::new(rustls::crypto::ring::default_provider()),
        )
    }

    /// As [`from_pem`](Self::from_pem), with the given cryptography.
    pub fn from_pem_with_provider(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let ca = certificates("CA", ca_pem)?;
        let chain = certificates("certificate", cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
            what: "key",
            source,
        })?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(TlsError::Ca)?;
        }
        let roots = Arc::new(roots);

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        // The server's order decides: multiplexed when the client offers it.
        server.alpn_protocols = vec![super::mux::ALPN_MUX.to_vec(), ALPN.to_vec()];

        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn certificates(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}
