//! Certificates for local mode (no Kubernetes).
//!
//! In Kubernetes the operator issues the cluster CA and the agents' certificate (see the
//! operator's `render/secrets.rs`). Outside it, `tern-agent dev` makes them here: a cluster CA
//! (ECDSA P-256, kept on disk so a restarted local cluster keeps trusting the same root) and
//! leaf certificates it signs, good for both sides of the agents' mutual TLS.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

/// File names of the CA in its directory (the same keys as the operator's `<cluster>-ca`).
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

const CA_YEARS: i32 = 10;
const LEAF_YEARS: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists but {missing} does not; remove both to have a new CA made")]
    HalfCa { path: PathBuf, missing: PathBuf },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the stored CA is not usable: {0}")]
    InvalidCa(String),
    #[error("{0:?} is neither a DNS name nor an IP address")]
    InvalidName(String),
    #[error("a certificate needs at least one name")]
    NoNames,
}

/// A cluster CA that can issue the agents' and listeners' certificates.
pub struct LocalPki {
    /// The CA certificate (PEM): what every agent and client trusts.
    pub ca_cert_pem: String,
    /// Rebuilt from the CA key and the cluster name (see [`ca_params`]).
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LocalPki")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .finish_non_exhaustive()
    }
}

impl LocalPki {
    /// A new CA for `cluster`, in memory.
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        Ok(Self::generate_with_key(cluster)?.0)
    }

    fn generate_with_key(cluster: &str) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let cert = ca_params(cluster).self_signed(&key)?;
        let pki = Self {
            ca_cert_pem: cert.pem(),
            issuer: Issuer::new(ca_params(cluster), key),
        };
        Ok((pki, key_pem))
    }

    /// The CA stored in `dir` (`ca.crt`, `ca.key`), or a new one written there (the key with
    /// mode 0600) when there is none, so a restarted local cluster keeps the same CA.
    pub fn load_or_generate(dir: &Path, cluster: &str) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let ca_cert_pem = read(&cert_path)?;
                let key = KeyPair::from_pem(&read(&key_path)?)
                    .map_err(|e| PkiError::InvalidCa(format!("{}: {e}", key_path.display())))?;
                let pki = Self {
                    ca_cert_pem,
                    issuer: Issuer::new(ca_params(cluster), key),
                };
                // A key that does not belong to the certificate, or a CA made for another
                // cluster name, shows here rather than in the agents' handshakes.
                pki.issue(&["localhost".to_owned()])?;
                Ok(pki)
            }
            (false, false) => {
                let (pki, key_pem) = Self::generate_with_key(cluster)?;
                std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
                write_private(&key_path, &key_pem)?;
                write_file(&cert_path, &pki.ca_cert_pem, 0o644)?;
                Ok(pki)
            }
            (true, false) => Err(PkiError::HalfCa {
                path: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(PkiError::HalfCa {
                path: key_path,
                missing: cert_path,
            }),
        }
    }

    /// A certificate and its key (both PEM) for `names`: DNS names and IP literals (which
    /// become IP address SANs), valid for server and client authentication, signed by the CA.
    /// The chain is checked for the first name before it is returned.
    pub fn issue(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let first = names.first().ok_or(PkiError::NoNames)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tern");
        dn.push(DnType::CommonName, first.clone());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Agents are servers and clients of each other (mutual TLS).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_YEARS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        verify_chain(&self.ca_cert_pem, cert.der(), first)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The CA's parameters: its subject depends on the cluster name only, so the issuer can be
/// rebuilt from the stored key without parsing the certificate (rcgen parses certificates
/// only with its `x509-parser` feature, which Tern does not enable).
fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tern");
    dn.push(DnType::CommonName, format!("Tern local CA {cluster}"));
    params.distinguished_name = dn;
    // Path length 0: the CA signs leaf certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_YEARS);
    params
}

/// From yesterday (for clock skew) until `years` from today, in UTC.
fn validity(params: &mut CertificateParams, years: i32) {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(days - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(days);
    // 29 February plus some years is 28 February: never an invalid date.
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Checks that `leaf` chains to the CA for `name`, as a server and as a client certificate:
/// the checks the agents' TLS makes.
fn verify_chain(ca_cert_pem: &str, leaf: &CertificateDer<'_>, name: &str) -> Result<(), PkiError> {
    let invalid =
        |what: &str, e: &dyn std::fmt::Display| PkiError::InvalidCa(format!("{what}: {e}"));
    let ca = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| invalid(CA_CERT_FILE, &e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| invalid(CA_CERT_FILE, &e))?;
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|_| PkiError::InvalidName(name.to_owned()))?;
    let now = UnixTime::now();
    WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| invalid("verifier", &e))?
        .verify_server_cert(leaf, &[], &server_name, &[], now)
        .map_err(|e| invalid("the certificate does not chain to the CA", &e))?;
    WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| invalid("verifier", &e))?
        .verify_client_cert(leaf, &[], now)
        .map_err(|e| invalid("the client certificate does not chain to the CA", &e))?;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a private key (or any secret): mode 0600 from the start.
pub fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    write_file(path, text, 0o600)
}

/// Writes through a temporary file created with `mode` and a rename, so a reader never sees
/// half a file and a secret is never readable by others, not even briefly.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { path, source }
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use openraft::network::RPCOption;
    use openraft::raft::VoteRequest;
    use openraft::{Config, RaftNetwork, RaftNetworkFactory, Vote};
    use tern_raft::testing::{KvApp, TempDir};
    use tern_raft::{Node, Storage, new_raft};
    use tern_store::EngineKind;

    use super::*;
    use crate::rpc::{self, Network, RpcStats, Shards, TlsConfig};

    fn local_names() -> Vec<String> {
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn issued_certificates_build_the_rpc_tls_config_and_verify_by_ip_and_name() {
        let pki = LocalPki::generate("dev").unwrap();
        let a = pki.issue(&local_names()).unwrap();
        let b = pki.issue(&local_names()).unwrap();
        assert_ne!(a, b, "every certificate has its own key");
        for (cert, key) in [&a, &b] {
            TlsConfig::from_pem(pki.ca_cert_pem.as_bytes(), cert.as_bytes(), key.as_bytes())
                .unwrap();
            let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
            for name in local_names() {
                verify_chain(&pki.ca_cert_pem, &der, &name).unwrap();
            }
            assert!(verify_chain(&pki.ca_cert_pem, &der, "example.com").is_err());
        }
        // Another CA's certificate does not chain to this one.
        let other = LocalPki::generate("dev").unwrap();
        let (cert, _) = other.issue(&local_names()).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert!(verify_chain(&pki.ca_cert_pem, &der, "localhost").is_err());
        assert!(pki.issue(&[]).is_err());
        assert!(format!("{pki:?}").contains("ca_cert_pem"));
        assert!(!format!("{pki:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn the_ca_is_kept_on_disk_with_a_private_key_file() {
        let dir = TempDir::new("pki-store");
        let pki_dir = dir.path().join("pki");
        let first = LocalPki::load_or_generate(&pki_dir, "dev").unwrap();
        let mode = |name: &str| {
            std::fs::metadata(pki_dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE), 0o644);
        let again = LocalPki::load_or_generate(&pki_dir, "dev").unwrap();
        assert_eq!(first.ca_cert_pem, again.ca_cert_pem);
        // A certificate of the reloaded CA is trusted by what the first one handed out.
        let (cert, key) = again.issue(&local_names()).unwrap();
        TlsConfig::from_pem(
            first.ca_cert_pem.as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
        )
        .unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        verify_chain(&first.ca_cert_pem, &der, "127.0.0.1").unwrap();

        // The CA of another cluster name, or half a CA, is refused.
        assert!(matches!(
            LocalPki::load_or_generate(&pki_dir, "other"),
            Err(PkiError::InvalidCa(_))
        ));
        std::fs::remove_file(pki_dir.join(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            LocalPki::load_or_generate(&pki_dir, "dev"),
            Err(PkiError::HalfCa { .. })
        ));
    }

    /// A real Raft vote from one agent to another over the RPC port on 127.0.0.1, both sides
    /// presenting certificates this module issued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mutual_tls_rpc_over_loopback_with_issued_certificates() {
        let pki = LocalPki::generate("dev").unwrap();
        let tls = |(cert, key): (String, String)| {
            TlsConfig::from_pem(pki.ca_cert_pem.as_bytes(), cert.as_bytes(), key.as_bytes())
                .unwrap()
        };
        let server_tls = tls(pki.issue(&local_names()).unwrap());
        let client_tls = tls(pki.issue(&local_names()).unwrap());

        let dir = TempDir::new("pki-rpc");
        let storage = Storage::new(tern_store::open(EngineKind::Redb, dir.path()).unwrap());
        let config = Arc::new(Config::default().validate().unwrap());
        let raft = new_raft(
            1,
            1,
            config,
            &storage,
            Arc::new(KvApp),
            Network::new(server_tls.client.clone(), 1),
        )
        .await
        .unwrap();
        let shards = Shards::default();
        shards.write().unwrap().insert(1, raft.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stats = Arc::new(RpcStats::default());
        let server = tokio::spawn(rpc::serve_with_stats(
            listener,
            server_tls.server.clone(),
            shards,
            stats.clone(),
        ));

        let mut network = Network::new(client_tls.client.clone(), 1);
        let mut client = network.new_client(1, &Node { rpc_addr: addr }).await;
        let reply = client
            .vote(
                VoteRequest::new(Vote::new(1, 2), None),
                RPCOption::new(Duration::from_secs(5)),
            )
            .await
            .expect("the vote travels over mutual TLS");
        assert!(reply.vote_granted, "{reply:?}");
        assert_eq!(
            stats
                .handshake_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert_eq!(stats.requests.load(std::sync::atomic::Ordering::Relaxed), 1);

        drop(client);
        raft.shutdown().await.unwrap();
        server.abort();
    }
}
