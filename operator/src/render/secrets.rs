//! Secrets the operator generates when the spec does not name its own: key material made
//! once with the system's secure random source and never rotated silently (delete a
//! generated Secret to have a new one issued).
//!
//! Pods mount them as files (see [`super::statefulset`]); the CA key in `<cluster>-ca` is
//! never mounted, only the operator reads it, to issue the agents' certificate.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tern_crds::MailCluster;

use super::{Context, DEFAULT_CLUSTER_DOMAIN, RenderError, names};

/// Key of the gossip keyring in its Secret: the keyring text format the agents read
/// (`primary 1` and `1 <base64 of 32 random bytes>`), so that rotation is an edit of this key.
pub const GOSSIP_KEY: &str = "key";
/// Key of the recovery administrator's password: URL-safe base64 text of 24 random bytes.
pub const ADMIN_PASSWORD_KEY: &str = "password";
/// CA certificate (PEM), in `<cluster>-ca` and in `<cluster>-agent-tls`.
pub const CA_CERT_KEY: &str = "ca.crt";
/// CA private key (PKCS#8 PEM), in `<cluster>-ca` only.
pub const CA_KEY_KEY: &str = "ca.key";
/// Certificate and key of a `kubernetes.io/tls` Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

const CA_YEARS: i16 = 10;
const LEAF_YEARS: i16 = 5;

/// A Secret the operator generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// `<cluster>-gossip`: the gossip keyring (`key`: one random key, id 1, primary; see
    /// [`gossip_keyring`]).
    GossipKey,
    /// `<cluster>-tls`: a self-signed certificate for the client listeners
    /// (`kubernetes.io/tls`), valid for every domain `d` and `mail.d`.
    ListenerTls,
    /// `<cluster>-ca`: the cluster CA (`ca.crt`, `ca.key`) for agent-to-agent TLS.
    ClusterCa,
    /// `<cluster>-agent-tls`: the agents' certificate (`kubernetes.io/tls` plus `ca.crt`),
    /// signed by the cluster CA, valid for `*.<cluster>-nodes.<ns>.svc` (and the name with
    /// the cluster domain) and `localhost`; for both server and client authentication.
    AgentTls,
    /// `<cluster>-admin`: the recovery administrator's password (`password`).
    Admin,
}

/// Secrets the cluster needs that the spec does not name: `(name, kind)`, in the order
/// they must be created (the CA before the agent certificate it signs).
pub fn generated_secrets(cluster: &MailCluster) -> Vec<(String, SecretKind)> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let spec = &cluster.spec;
    let mut secrets = vec![
        (names::ca_secret(name), SecretKind::ClusterCa),
        (names::agent_tls_secret(name), SecretKind::AgentTls),
    ];
    if spec
        .tls
        .as_ref()
        .and_then(|t| t.secret_name.as_ref())
        .is_none()
    {
        secrets.push((names::tls_secret(name), SecretKind::ListenerTls));
    }
    if spec
        .gossip
        .as_ref()
        .and_then(|g| g.key_secret_ref.as_ref())
        .is_none()
    {
        secrets.push((names::gossip_secret(name), SecretKind::GossipKey));
    }
    if spec.admin_secret_ref.is_none() {
        secrets.push((names::admin_secret(name), SecretKind::Admin));
    }
    secrets
}

/// Generates one Secret with fresh key material. Not pure: call it only when the Secret
/// does not exist yet. `ca` is the `<cluster>-ca` Secret, needed for [`SecretKind::AgentTls`].
///
/// The agent certificate names the cluster domain `cluster.local`; see
/// [`generate_secret_in_domain`] for another one. Agents should verify peers by the
/// domain-less name `<pod>.<cluster>-nodes.<ns>.svc`, which is valid whatever the domain.
pub fn generate_secret(
    cluster: &MailCluster,
    kind: SecretKind,
    ca: Option<&Secret>,
) -> Result<Secret, RenderError> {
    generate_secret_in_domain(cluster, kind, ca, DEFAULT_CLUSTER_DOMAIN)
}

/// [`generate_secret`] for a Kubernetes cluster whose DNS domain is `cluster_domain`.
pub fn generate_secret_in_domain(
    cluster: &MailCluster,
    kind: SecretKind,
    ca: Option<&Secret>,
    cluster_domain: &str,
) -> Result<Secret, RenderError> {
    let ctx = Context::new(cluster)?;
    let cluster = ctx.name;
    let (name, component, type_, data) = match kind {
        SecretKind::GossipKey => (
            names::gossip_secret(cluster),
            "gossip",
            "Opaque",
            BTreeMap::from([(
                GOSSIP_KEY,
                gossip_keyring(&random_bytes::<32>()?).into_bytes(),
            )]),
        ),
        SecretKind::Admin => (
            names::admin_secret(cluster),
            "admin",
            "Opaque",
            BTreeMap::from([(
                ADMIN_PASSWORD_KEY,
                base64url(&random_bytes::<24>()?).into_bytes(),
            )]),
        ),
        SecretKind::ClusterCa => {
            let key = KeyPair::generate()?;
            let cert = ca_params(&ctx).self_signed(&key)?;
            (
                names::ca_secret(cluster),
                "ca",
                "Opaque",
                BTreeMap::from([
                    (CA_CERT_KEY, cert.pem().into_bytes()),
                    (CA_KEY_KEY, key.serialize_pem().into_bytes()),
                ]),
            )
        }
        SecretKind::ListenerTls => {
            let key = KeyPair::generate()?;
            let cert = listener_params(&ctx)?.self_signed(&key)?;
            (
                names::tls_secret(cluster),
                "tls",
                "kubernetes.io/tls",
                BTreeMap::from([
                    (TLS_CERT_KEY, cert.pem().into_bytes()),
                    (TLS_KEY_KEY, key.serialize_pem().into_bytes()),
                ]),
            )
        }
        SecretKind::AgentTls => {
            let ca = ca.ok_or(RenderError::MissingCa)?;
            let (ca_cert_pem, issuer) = ca_issuer(&ctx, ca)?;
            let key = KeyPair::generate()?;
            let cert = agent_params(&ctx, cluster_domain)?.signed_by(&key, &issuer)?;
            verify_agent_chain(&ctx, &ca_cert_pem, cert.der())?;
            (
                names::agent_tls_secret(cluster),
                "agent-tls",
                "kubernetes.io/tls",
                BTreeMap::from([
                    (TLS_CERT_KEY, cert.pem().into_bytes()),
                    (TLS_KEY_KEY, key.serialize_pem().into_bytes()),
                    (CA_CERT_KEY, ca_cert_pem.into_bytes()),
                ]),
            )
        }
    };
    Ok(Secret {
        metadata: ctx.meta(name, component),
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v)))
                .collect(),
        ),
        ..Secret::default()
    })
}

fn random_bytes<const N: usize>() -> Result<[u8; N], RenderError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RenderError::Random)?;
    Ok(bytes)
}

/// The gossip keyring file of a new cluster: one key, id 1, primary. The agents' format
/// (`tern_gossip::keyring`): rotation adds `2 <key>`, then makes it primary, then removes
/// line `1`, each step applied on every node before the next.
pub fn gossip_keyring(key: &[u8; 32]) -> String {
    format!(
        "# Tern gossip keyring\nprimary 1\n1 {}\n",
        base64(key, STANDARD, true)
    )
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// URL- and shell-safe base64 without padding (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    base64(bytes, URL_SAFE, false)
}

/// Base64 with `alphabet`, padded with `=` when `pad` (RFC 4648 §4 and §5).
fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

/// Today (minus a day, for clock skew) until `years` from now, in UTC.
fn validity(params: &mut CertificateParams, years: i16) {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let from = today.yesterday().unwrap_or(today);
    // Adding years to 29 February lands on 28 February; never an invalid date.
    let until = today
        .checked_add(jiff::Span::new().years(years))
        .unwrap_or(today);
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(from);
    params.not_after = ymd(until);
}

/// The CA's parameters. Its subject is a function of the cluster's namespace and name only,
/// so the issuer can be rebuilt from the stored key without parsing the certificate (rcgen
/// parses certificates only with its `x509-parser` feature, which Tern does not enable);
/// [`verify_agent_chain`] then proves the rebuilt issuer matches the stored certificate.
fn ca_params(ctx: &Context) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tern");
    dn.push(
        DnType::CommonName,
        format!("Tern cluster CA {}/{}", ctx.namespace, ctx.name),
    );
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

fn listener_names(ctx: &Context) -> Vec<String> {
    let mut sans: Vec<String> = Vec::new();
    for domain in &ctx.spec.domains {
        for name in [domain.clone(), format!("mail.{domain}")] {
            if !sans.contains(&name) {
                sans.push(name);
            }
        }
    }
    if sans.is_empty() {
        sans.push(format!(
            "{}.{}.svc",
            names::client_service(ctx.name),
            ctx.namespace
        ));
    }
    sans
}

fn listener_params(ctx: &Context) -> Result<CertificateParams, RenderError> {
    let sans = listener_names(ctx);
    let mut params = CertificateParams::new(sans.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tern");
    dn.push(DnType::CommonName, sans[0].clone());
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, LEAF_YEARS);
    Ok(params)
}

/// DNS names of the agent certificate.
fn agent_names(ctx: &Context, cluster_domain: &str) -> Vec<String> {
    let service = format!(
        "{}.{}.svc",
        names::headless_service(ctx.name),
        ctx.namespace
    );
    vec![
        format!("*.{service}"),
        format!("*.{service}.{cluster_domain}"),
        service,
        "localhost".to_owned(),
    ]
}

fn agent_params(ctx: &Context, cluster_domain: &str) -> Result<CertificateParams, RenderError> {
    let sans = agent_names(ctx, cluster_domain);
    let mut params = CertificateParams::new(sans.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tern");
    dn.push(DnType::CommonName, sans[2].clone());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Agents are servers and clients of each other (mutual TLS).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_YEARS);
    Ok(params)
}

fn secret_text(secret: &Secret, key: &str) -> Result<String, RenderError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| RenderError::InvalidCa(format!("no {key}")))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| RenderError::InvalidCa(format!("{key} is not PEM text")))
}

/// The CA certificate (PEM) and an issuer built from the CA Secret.
fn ca_issuer(
    ctx: &Context,
    ca: &Secret,
) -> Result<(String, Issuer<'static, KeyPair>), RenderError> {
    let cert_pem = secret_text(ca, CA_CERT_KEY)?;
    let key = KeyPair::from_pem(&secret_text(ca, CA_KEY_KEY)?)
        .map_err(|e| RenderError::InvalidCa(format!("{CA_KEY_KEY}: {e}")))?;
    Ok((cert_pem, Issuer::new(ca_params(ctx), key)))
}

/// Checks that the new agent certificate chains to the stored CA certificate, for a peer
/// name, as both a server and a client certificate: the same check the agents' TLS does.
fn verify_agent_chain(
    ctx: &Context,
    ca_cert_pem: &str,
    agent_der: &CertificateDer<'_>,
) -> Result<(), RenderError> {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;

    let invalid =
        |what: &str, e: &dyn std::fmt::Display| RenderError::InvalidCa(format!("{what}: {e}"));
    let ca_der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| invalid(CA_CERT_KEY, &e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).map_err(|e| invalid(CA_CERT_KEY, &e))?;
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let peer = format!(
        "{}-default-0.{}.{}.svc",
        ctx.name,
        names::headless_service(ctx.name),
        ctx.namespace
    );
    let server_name = ServerName::try_from(peer).map_err(|e| invalid("peer name", &e))?;
    let now = UnixTime::now();
    WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| invalid("verifier", &e))?
        .verify_server_cert(agent_der, &[], &server_name, &[], now)
        .map_err(|e| invalid("agent certificate does not chain to the CA", &e))?;
    WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| invalid("verifier", &e))?
        .verify_client_cert(agent_der, &[], now)
        .map_err(|e| invalid("agent client certificate does not chain to the CA", &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::testing;
    use tern_crds::common::SecretKeyRef;
    use tern_crds::mail_cluster::{GossipSpec, TlsSpec};

    fn data(secret: &Secret, key: &str) -> Vec<u8> {
        secret.data.as_ref().unwrap()[key].0.clone()
    }

    fn text(secret: &Secret, key: &str) -> String {
        String::from_utf8(data(secret, key)).unwrap()
    }

    #[test]
    fn every_secret_is_generated_by_default_ca_first() {
        let kinds: Vec<_> = generated_secrets(&testing::cluster());
        assert_eq!(
            kinds,
            [
                ("mail-ca".to_owned(), SecretKind::ClusterCa),
                ("mail-agent-tls".to_owned(), SecretKind::AgentTls),
                ("mail-tls".to_owned(), SecretKind::ListenerTls),
                ("mail-gossip".to_owned(), SecretKind::GossipKey),
                ("mail-admin".to_owned(), SecretKind::Admin),
            ]
        );
    }

    #[test]
    fn secrets_the_spec_names_are_not_generated() {
        let key_ref = |name: &str| SecretKeyRef {
            name: name.into(),
            key: "k".into(),
        };
        let kinds = |c: &MailCluster| {
            generated_secrets(c)
                .into_iter()
                .map(|(_, k)| k)
                .collect::<Vec<_>>()
        };

        let mut cluster = testing::cluster();
        cluster.spec.tls = Some(TlsSpec {
            secret_name: Some("cert".into()),
        });
        assert!(!kinds(&cluster).contains(&SecretKind::ListenerTls));
        assert_eq!(kinds(&cluster).len(), 4);

        let mut cluster = testing::cluster();
        cluster.spec.gossip = Some(GossipSpec {
            key_secret_ref: Some(key_ref("gossip")),
        });
        assert!(!kinds(&cluster).contains(&SecretKind::GossipKey));
        assert_eq!(kinds(&cluster).len(), 4);

        let mut cluster = testing::cluster();
        cluster.spec.admin_secret_ref = Some(key_ref("admin"));
        assert!(!kinds(&cluster).contains(&SecretKind::Admin));
        assert_eq!(kinds(&cluster).len(), 4);

        // An empty `tls: {}` or `gossip: {}` still asks for generated ones.
        let mut cluster = testing::cluster();
        cluster.spec.tls = Some(TlsSpec::default());
        cluster.spec.gossip = Some(GossipSpec::default());
        assert_eq!(kinds(&cluster).len(), 5);
    }

    #[test]
    fn gossip_key_and_admin_password_are_random() {
        let cluster = testing::cluster();
        let a = generate_secret(&cluster, SecretKind::GossipKey, None).unwrap();
        let b = generate_secret(&cluster, SecretKind::GossipKey, None).unwrap();
        assert_eq!(a.metadata.name.as_deref(), Some("mail-gossip"));
        assert_eq!(a.type_.as_deref(), Some("Opaque"));
        // The keyring text format: a comment, `primary 1`, and key 1 in standard base64.
        let keyring = text(&a, "key");
        let lines: Vec<&str> = keyring.lines().collect();
        assert_eq!(lines.len(), 3, "{keyring}");
        assert!(lines[0].starts_with('#'));
        assert_eq!(lines[1], "primary 1");
        let key = lines[2].strip_prefix("1 ").unwrap();
        assert_eq!(key.len(), 44, "32 bytes in padded base64");
        assert!(key.ends_with('='));
        assert!(
            key[..43]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
        );
        assert_ne!(text(&a, "key"), text(&b, "key"));

        let admin = generate_secret(&cluster, SecretKind::Admin, None).unwrap();
        let password = text(&admin, "password");
        assert_eq!(password.len(), 32);
        assert!(
            password
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(
            admin.metadata.owner_references.as_ref().unwrap()[0].uid,
            testing::UID
        );
        assert_eq!(
            admin.metadata.labels.as_ref().unwrap()["mail.tern.dev/cluster"],
            "mail"
        );
    }

    #[test]
    fn gossip_keyring_encodes_the_key_in_standard_base64() {
        let mut key = [0u8; 32];
        key[0] = 0xfb;
        key[1] = 0xff;
        key[31] = 0x01;
        assert_eq!(
            gossip_keyring(&key),
            "# Tern gossip keyring\nprimary 1\n1 +/8AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE=\n"
        );
        // RFC 4648 §10 vectors, padded.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes(), STANDARD, true), encoded);
        }
    }

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(b"fooba"), "Zm9vYmE");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    /// The DER encoding of `basicConstraints` (2.5.29.19) with `cA TRUE`.
    fn has_ca_basic_constraints(der: &[u8]) -> bool {
        let oid = [0x06, 0x03, 0x55, 0x1d, 0x13];
        der.windows(oid.len())
            .position(|w| w == oid)
            .is_some_and(|at| {
                der[at..(at + 20).min(der.len())]
                    .windows(3)
                    .any(|w| w == [0x01, 0x01, 0xff])
            })
    }

    #[test]
    fn cluster_ca_is_a_ca_and_signs_an_agent_certificate_that_chains() {
        let cluster = testing::cluster();
        let ca = generate_secret(&cluster, SecretKind::ClusterCa, None).unwrap();
        assert_eq!(ca.metadata.name.as_deref(), Some("mail-ca"));
        let ca_pem = text(&ca, "ca.crt");
        assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(text(&ca, "ca.key").starts_with("-----BEGIN PRIVATE KEY-----"));
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        assert!(has_ca_basic_constraints(&ca_der));
        // The key re-parses and belongs to the certificate.
        let key = KeyPair::from_pem(&text(&ca, "ca.key")).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert!(ca_der.windows(spki.len()).any(|w| w == spki.as_slice()));

        assert!(matches!(
            generate_secret(&cluster, SecretKind::AgentTls, None),
            Err(RenderError::MissingCa)
        ));
        let agent = generate_secret(&cluster, SecretKind::AgentTls, Some(&ca)).unwrap();
        assert_eq!(agent.metadata.name.as_deref(), Some("mail-agent-tls"));
        assert_eq!(agent.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(text(&agent, "ca.crt"), ca_pem);
        assert!(text(&agent, "tls.key").starts_with("-----BEGIN PRIVATE KEY-----"));
        KeyPair::from_pem(&text(&agent, "tls.key")).unwrap();
        let agent_der = CertificateDer::from_pem_slice(text(&agent, "tls.crt").as_bytes()).unwrap();
        assert!(!has_ca_basic_constraints(&agent_der));
        verify_agent_chain(&Context::new(&cluster).unwrap(), &ca_pem, &agent_der).unwrap();
        let contains = |needle: &str| {
            agent_der
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        for san in [
            "*.mail-nodes.tern-test.svc",
            "*.mail-nodes.tern-test.svc.cluster.local",
            "localhost",
        ] {
            assert!(contains(san), "SAN {san}");
        }

        // The agent certificate does not chain to another cluster's CA.
        let other = generate_secret(&cluster, SecretKind::ClusterCa, None).unwrap();
        assert!(
            verify_agent_chain(
                &Context::new(&cluster).unwrap(),
                &text(&other, "ca.crt"),
                &agent_der
            )
            .is_err()
        );
        // And a CA Secret whose key belongs to another certificate is refused.
        let mut mixed = ca.clone();
        mixed.data.as_mut().unwrap().insert(
            "ca.key".into(),
            other.data.as_ref().unwrap()["ca.key"].clone(),
        );
        assert!(matches!(
            generate_secret(&cluster, SecretKind::AgentTls, Some(&mixed)),
            Err(RenderError::InvalidCa(_))
        ));
        let mut empty = ca.clone();
        empty.data = None;
        assert!(matches!(
            generate_secret(&cluster, SecretKind::AgentTls, Some(&empty)),
            Err(RenderError::InvalidCa(_))
        ));
    }

    #[test]
    fn listener_certificate_names_the_domains() {
        let mut cluster = testing::cluster();
        cluster.spec.domains.push("example.org".into());
        let tls = generate_secret(&cluster, SecretKind::ListenerTls, None).unwrap();
        assert_eq!(tls.metadata.name.as_deref(), Some("mail-tls"));
        assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
        let pem = text(&tls, "tls.crt");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert!(!has_ca_basic_constraints(&der));
        let ctx = Context::new(&cluster).unwrap();
        assert_eq!(
            listener_names(&ctx),
            [
                "example.com",
                "mail.example.com",
                "example.org",
                "mail.example.org"
            ]
        );
        // A client that trusts this certificate accepts it for every name.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        for name in listener_names(&ctx) {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                verifier.as_ref(),
                &der,
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        }
    }

    #[test]
    fn generating_needs_the_object_keys() {
        let mut cluster = testing::cluster();
        cluster.metadata.uid = None;
        assert!(matches!(
            generate_secret(&cluster, SecretKind::GossipKey, None),
            Err(RenderError::MissingObjectKey("metadata.uid"))
        ));
    }
}
