//! DKIM signing (RFC 6376, and RFC 8463 for Ed25519) of outbound mail with mail-auth, just
//! before each attempt: the signature covers the exact bytes the next hop receives (line
//! endings made CRLF first, as DATA sends them), relaxed/relaxed canonicalization, SHA-256.
//!
//! Configuration (environment):
//!
//! | variable | meaning |
//! |---|---|
//! | `TERN_DKIM_KEY_FILE` | the private key, PEM: RSA (PKCS #1 or PKCS #8) or Ed25519 (PKCS #8) |
//! | `TERN_DKIM_SELECTOR` | the selector (`s=`): the key's TXT record is `<selector>._domainkey.<domain>` |
//! | `TERN_DKIM_DOMAIN` | the signing domain (`d=`) |
//!
//! All three or none. A message is signed when its `From:` domain is the signing domain or
//! one of its subdomains (so the signature aligns for DMARC); others leave unsigned, as do
//! messages without a parsable header.

use std::path::Path;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// The header fields signed when present (RFC 6376 §5.4.1's list, less the trace fields).
/// Only the ones the message has are named in `h=`: naming an absent one would forbid
/// adding it, and MTAs add a missing `Date:` or `Message-ID:` on the way.
pub const SIGNED_HEADERS: [&str; 14] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
];

/// The private key, kept as DER: a signer is built per message, naming the fields it has.
enum Key {
    /// PKCS #1 (`true`) or PKCS #8 DER.
    Rsa { pkcs1: bool, der: Vec<u8> },
    /// PKCS #8 DER.
    Ed25519(Vec<u8>),
}

/// Signs outbound mail for one domain.
pub struct Signer {
    domain: String,
    selector: String,
    key: Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.key {
            Key::Rsa { .. } => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        };
        write!(f, "Signer(d={}, s={}, {kind})", self.domain, self.selector)
    }
}

impl Signer {
    /// A signer from a PEM private key.
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<Self, String> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let selector = selector.trim().to_owned();
        if domain.is_empty() || !domain.contains('.') || domain.contains(char::is_whitespace) {
            return Err(format!("{domain:?} is not a domain name"));
        }
        if selector.is_empty()
            || !selector
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(format!("{selector:?} is not a DKIM selector"));
        }
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("no private key in the PEM: {e}"))?;
        let key = match &der {
            PrivateKeyDer::Pkcs1(k) => {
                let der = k.secret_pkcs1_der().to_vec();
                RsaKey::<Sha256>::from_der(&der)
                    .map_err(|e| format!("not a usable RSA key: {e}"))?;
                Key::Rsa { pkcs1: true, der }
            }
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der().to_vec();
                if Ed25519Key::from_pkcs8_maybe_unchecked_der(&der).is_ok() {
                    Key::Ed25519(der)
                } else if RsaKey::<Sha256>::from_pkcs8_der(&der).is_ok() {
                    Key::Rsa { pkcs1: false, der }
                } else {
                    return Err(
                        "neither an RSA nor an Ed25519 key: DKIM signs with RSA or Ed25519 only"
                            .into(),
                    );
                }
            }
            PrivateKeyDer::Sec1(_) => {
                return Err("an EC (SEC1) key: DKIM signs with RSA or Ed25519 only".into());
            }
            _ => return Err("an unsupported kind of private key".into()),
        };
        Ok(Signer {
            domain,
            selector,
            key,
        })
    }

    /// From `TERN_DKIM_KEY_FILE`, `TERN_DKIM_SELECTOR` and `TERN_DKIM_DOMAIN`; `None` when
    /// none is set, an error when only some are or the key cannot be used.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let (file, selector, domain) = (
            var("TERN_DKIM_KEY_FILE"),
            var("TERN_DKIM_SELECTOR"),
            var("TERN_DKIM_DOMAIN"),
        );
        match (file, selector, domain) {
            (None, None, None) => Ok(None),
            (Some(file), Some(selector), Some(domain)) => {
                let pem = std::fs::read(Path::new(&file))
                    .map_err(|e| format!("TERN_DKIM_KEY_FILE={file}: {e}"))?;
                Signer::from_pem(&domain, &selector, &pem)
                    .map(Some)
                    .map_err(|e| format!("TERN_DKIM_KEY_FILE={file}: {e}"))
            }
            _ => Err(
                "DKIM signing needs all of TERN_DKIM_KEY_FILE, TERN_DKIM_SELECTOR and \
                 TERN_DKIM_DOMAIN"
                    .into(),
            ),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Whether mail from `from_domain` is signed: the signing domain or a subdomain of it.
    pub fn covers(&self, from_domain: &str) -> bool {
        let d = from_domain.trim_end_matches('.').to_ascii_lowercase();
        d == self.domain
            || d.strip_suffix(&self.domain)
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// The `DKIM-Signature:` field (ending in CRLF) for `message` (CRLF line endings),
    /// over those of [`SIGNED_HEADERS`] the message has.
    pub fn signature(&self, message: &[u8]) -> Result<String, String> {
        let present: Vec<&str> = match mail_auth::AuthenticatedMessage::parse(message) {
            Some(parsed) => SIGNED_HEADERS
                .into_iter()
                .filter(|name| {
                    parsed
                        .headers
                        .iter()
                        .any(|(n, _)| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
                })
                .collect(),
            None => Vec::new(),
        };
        if !present.contains(&"From") {
            return Err("no From: field".into());
        }
        let crypto = |e: mail_auth::Error| format!("signing: {e}");
        let signature = match &self.key {
            Key::Rsa { pkcs1, der } => {
                let key = if *pkcs1 {
                    RsaKey::<Sha256>::from_der(der)
                } else {
                    RsaKey::<Sha256>::from_pkcs8_der(der)
                }
                .map_err(crypto)?;
                configure(
                    DkimSigner::from_key(key),
                    &self.domain,
                    &self.selector,
                    present,
                )
                .sign(message)
            }
            Key::Ed25519(der) => {
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der).map_err(crypto)?;
                configure(
                    DkimSigner::from_key(key),
                    &self.domain,
                    &self.selector,
                    present,
                )
                .sign(message)
            }
        }
        .map_err(crypto)?;
        Ok(signature.to_header())
    }

    /// `message` as it is sent: line endings made CRLF, then, when its `From:` domain is
    /// covered, with a `DKIM-Signature:` field on top. Unsigned (and why) otherwise.
    pub fn sign(&self, message: &[u8]) -> (Vec<u8>, Result<(), String>) {
        let message = crlf(message);
        let Some(from) = from_domain(&message) else {
            return (message, Err("no From: address with a domain".into()));
        };
        if !self.covers(&from) {
            return (
                message,
                Err(format!(
                    "the From: domain {from} is not {} or under it",
                    self.domain
                )),
            );
        }
        match self.signature(&message) {
            Ok(field) => {
                let mut out = Vec::with_capacity(field.len() + message.len());
                out.extend_from_slice(field.as_bytes());
                out.extend_from_slice(&message);
                (out, Ok(()))
            }
            Err(why) => (message, Err(why)),
        }
    }
}

fn configure<T: mail_auth::common::crypto::SigningKey>(
    signer: DkimSigner<T>,
    domain: &str,
    selector: &str,
    headers: Vec<&str>,
) -> DkimSigner<T, Done> {
    signer
        .domain(domain)
        .selector(selector)
        .headers(headers)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// Bare LF and bare CR become CRLF, as [`super::client::dot_stuff`] sends them.
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The domain of the first address of the message's `From:` field, lower case.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_auth::AuthenticatedMessage::parse(message)?;
    parsed
        .from
        .first()
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{DkimResult, Txt};

    const RSA_PKCS8: &str = include_str!("testdata/dkim-rsa.pem");
    const RSA_PKCS1: &str = include_str!("testdata/dkim-rsa-pkcs1.pem");
    const RSA_PUBLIC: &str = include_str!("testdata/dkim-rsa.pub.b64");

    const MESSAGE: &[u8] = b"From: Alice <alice@example.test>\nTo: bob@remote.test\n\
        Subject: signed\nDate: Sun, 22 Nov 2026 10:00:00 +0000\nMessage-ID: <m1@example.test>\n\
        MIME-Version: 1.0\nContent-Type: text/plain\n\nhello\n.dot line\n";

    /// Verifies the signed message with mail-auth against `record` for the selector.
    pub(crate) async fn verify(signed: &[u8], selector_domain: &str, record: &str) -> DkimResult {
        let cache = crate::smtp::auth_results::DnsCaches::default();
        cache.seed_txt(
            selector_domain,
            Txt::DomainKey(Arc::new(DomainKey::parse(record.as_bytes()).unwrap())),
        );
        let checks = crate::smtp::auth_results::InboundChecks::with_caches(
            crate::smtp::auth_results::unreachable_resolver(),
            "mx.test",
            cache,
        );
        checks.verify_dkim(signed).await
    }

    fn ed25519_pem() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let public = key.public_key_raw().to_vec();
        (key.serialize_pem(), base64(&public))
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..4 {
                out.push(if i <= chunk.len() {
                    A[((n >> (18 - 6 * i)) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        out
    }

    #[tokio::test]
    async fn rsa_signatures_verify_and_tampering_fails() {
        let record = format!("v=DKIM1; k=rsa; p={}", RSA_PUBLIC.trim());
        for pem in [RSA_PKCS8, RSA_PKCS1] {
            let signer = Signer::from_pem("example.test", "tern1", pem.as_bytes()).unwrap();
            let (signed, outcome) = signer.sign(MESSAGE);
            outcome.unwrap();
            let text = String::from_utf8(signed.clone()).unwrap();
            assert!(
                text.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"),
                "{text}"
            );
            assert!(text.contains("d=example.test") && text.contains("s=tern1"));
            assert!(
                !text.contains("Reply-To") && !text.contains(":Cc"),
                "absent fields are not named: {text}"
            );
            assert!(!text.replace("\r\n", "").contains('\n'), "CRLF only");
            assert_eq!(
                verify(&signed, "tern1._domainkey.example.test.", &record).await,
                DkimResult::Pass
            );
            // The body changed in transit: the body hash no longer matches.
            let tampered = text.replace("hello", "HELLO");
            assert!(matches!(
                verify(
                    tampered.as_bytes(),
                    "tern1._domainkey.example.test.",
                    &record
                )
                .await,
                DkimResult::Fail(_) | DkimResult::Neutral(_)
            ));
            // A signed field changed.
            let tampered = text.replace("Subject: signed", "Subject: forged");
            assert!(matches!(
                verify(
                    tampered.as_bytes(),
                    "tern1._domainkey.example.test.",
                    &record
                )
                .await,
                DkimResult::Fail(_) | DkimResult::Neutral(_)
            ));
        }
    }

    #[tokio::test]
    async fn fields_added_on_the_way_keep_the_signature() {
        let (pem, public) = ed25519_pem();
        let signer = Signer::from_pem("example.test", "ed", pem.as_bytes()).unwrap();
        // No Date: and no Message-ID: the next hop may add them.
        let message = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: s\r\n\r\nbody\r\n";
        let (signed, outcome) = signer.sign(message);
        outcome.unwrap();
        let text = String::from_utf8(signed).unwrap();
        let added = text.replace(
            "Subject: s\r\n",
            "Subject: s\r\nDate: Sun, 22 Nov 2026 23:35:53 +0000\r\nMessage-ID: <x@remote.test>\r\n",
        );
        let record = format!("v=DKIM1; k=ed25519; p={public}");
        assert_eq!(
            verify(added.as_bytes(), "ed._domainkey.example.test.", &record).await,
            DkimResult::Pass
        );
    }

    #[tokio::test]
    async fn ed25519_signatures_verify() {
        let (pem, public) = ed25519_pem();
        let signer = Signer::from_pem("Example.Test.", "ed", pem.as_bytes()).unwrap();
        assert_eq!(signer.domain(), "example.test");
        let (signed, outcome) = signer.sign(MESSAGE);
        outcome.unwrap();
        assert!(signed.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256;"));
        let record = format!("v=DKIM1; k=ed25519; p={public}");
        assert_eq!(
            verify(&signed, "ed._domainkey.example.test.", &record).await,
            DkimResult::Pass
        );
        // Another key under the same selector: the signature fails.
        let (_, other) = ed25519_pem();
        let record = format!("v=DKIM1; k=ed25519; p={other}");
        assert!(matches!(
            verify(&signed, "ed._domainkey.example.test.", &record).await,
            DkimResult::Fail(_) | DkimResult::Neutral(_)
        ));
    }

    #[test]
    fn only_covered_from_domains_are_signed() {
        let signer = Signer::from_pem("example.test", "s", RSA_PKCS8.as_bytes()).unwrap();
        assert!(signer.covers("example.test"));
        assert!(signer.covers("News.Example.Test"));
        assert!(!signer.covers("badexample.test"));
        assert!(!signer.covers("other.test"));
        let (out, outcome) = signer.sign(b"From: x@other.test\r\nSubject: s\r\n\r\nbody\r\n");
        assert!(outcome.is_err());
        assert!(out.starts_with(b"From: x@other.test"), "sent unsigned");
        let (out, outcome) = signer.sign(b"no header at all");
        assert!(outcome.is_err());
        assert_eq!(out, b"no header at all");
    }

    #[test]
    fn bad_configuration_is_refused_clearly() {
        for (domain, selector, pem, expect) in [
            ("example.test", "s", "not pem", "no private key"),
            ("example.test", "s", "", "no private key"),
            ("nodots", "s", RSA_PKCS8, "not a domain"),
            ("example.test", "", RSA_PKCS8, "not a DKIM selector"),
            ("example.test", "a b", RSA_PKCS8, "not a DKIM selector"),
        ] {
            let e = Signer::from_pem(domain, selector, pem.as_bytes()).unwrap_err();
            assert!(e.contains(expect), "{domain} {selector}: {e}");
        }
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let e = Signer::from_pem("example.test", "s", ec.serialize_pem().as_bytes()).unwrap_err();
        assert!(e.contains("RSA or Ed25519"), "{e}");

        let env = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        assert!(Signer::from_env(env(vec![])).unwrap().is_none());
        let e = Signer::from_env(env(vec![("TERN_DKIM_DOMAIN", "x.test".into())])).unwrap_err();
        assert!(e.contains("all of"), "{e}");
        let e = Signer::from_env(env(vec![
            ("TERN_DKIM_DOMAIN", "x.test".into()),
            ("TERN_DKIM_SELECTOR", "s".into()),
            ("TERN_DKIM_KEY_FILE", "/nonexistent/key.pem".into()),
        ]))
        .unwrap_err();
        assert!(e.contains("/nonexistent/key.pem"), "{e}");
    }

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(crlf(b""), b"");
    }
}
