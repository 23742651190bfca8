//! SASL for AUTH (RFC 4954): the PLAIN (RFC 4616) and LOGIN mechanisms, and the base64
//! they travel in.

use std::fmt;

/// A SASL mechanism the server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// PLAIN: `authzid NUL authcid NUL password` in one response.
    Plain,
    /// LOGIN: user name, then password, each prompted for.
    Login,
}

impl Mechanism {
    /// The mechanism named by AUTH (already upper-cased by the parser).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }
}

/// What a client presented. The password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// How it was presented.
    pub mechanism: Mechanism,
    /// The user name (PLAIN's authcid).
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a SASL response was refused before any password check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Not base64.
    #[error("cannot decode response")]
    Base64,
    /// Not the mechanism's message format (or not UTF-8).
    #[error("malformed response")]
    Malformed,
    /// PLAIN asked to act as another user; Tern has no proxy authorisation.
    #[error("authorization identity differs from authentication identity")]
    Authzid,
}

/// Decodes a PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
pub fn decode_plain(response: &str) -> Result<Credentials, SaslError> {
    let raw = base64_decode(response).ok_or(SaslError::Base64)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| SaslError::Malformed)
    };
    let (authzid, username, password) = (text(authzid)?, text(authcid)?, text(password)?);
    if username.is_empty() || password.is_empty() || username.chars().any(char::is_control) {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != username {
        return Err(SaslError::Authzid);
    }
    Ok(Credentials {
        mechanism: Mechanism::Plain,
        username,
        password,
    })
}

/// Decodes one LOGIN step (a user name or a password).
pub fn decode_login_field(response: &str) -> Result<String, SaslError> {
    let raw = base64_decode(response).ok_or(SaslError::Base64)?;
    let s = String::from_utf8(raw).map_err(|_| SaslError::Malformed)?;
    if s.is_empty() || s.contains('\0') {
        return Err(SaslError::Malformed);
    }
    Ok(s)
}

/// The LOGIN prompt `Username:` in base64.
pub const LOGIN_USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
/// The LOGIN prompt `Password:` in base64.
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 4), strictly: no whitespace, no missing padding,
/// no non-zero bits in the padding. `=` alone is the empty string (RFC 4954's empty
/// initial response).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    if s == "=" {
        return Some(Vec::new());
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (n, quad) in bytes.chunks(4).enumerate() {
        let last = n + 1 == bytes.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &quad[..4 - pad] {
            acc = acc << 6 | value(c)?;
        }
        acc <<= 6 * pad as u32;
        let decoded = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        // Bits below the last full octet must be zero (canonical encoding).
        let kept = 3 - pad;
        if decoded[kept..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&decoded[..kept]);
    }
    Some(out)
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let acc = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(acc >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("Username:", LOGIN_USERNAME_PROMPT),
            ("Password:", LOGIN_PASSWORD_PROMPT),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_decode("="), Some(vec![]));
        for bad in [
            "Zg",
            "Zg=",
            "Zh==",
            "Z===",
            "Zg==Zg==",
            "Zm9v YmFy",
            "Zm9v\0",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_messages() {
        let c = decode_plain(&base64_encode(b"\0alice@example.org\0s3cret")).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice@example.org", "s3cret")
        );
        assert!(decode_plain(&base64_encode(b"alice\0alice\0pw")).is_ok());
        assert_eq!(
            decode_plain(&base64_encode(b"bob\0alice\0pw")),
            Err(SaslError::Authzid)
        );
        assert_eq!(
            decode_plain(&base64_encode(b"\0alice\0")),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            decode_plain(&base64_encode(b"alice\0pw")),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            decode_plain(&base64_encode(b"\0a\0b\0c")),
            Err(SaslError::Malformed)
        );
        assert_eq!(decode_plain("not base64!"), Err(SaslError::Base64));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    proptest::proptest! {
        #[test]
        fn base64_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            proptest::prop_assert_eq!(base64_decode(&base64_encode(&data)), Some(data));
        }

        #[test]
        fn base64_decode_never_panics(s in "[A-Za-z0-9+/=]{0,40}|\\PC{0,20}") {
            let _ = base64_decode(&s);
        }
    }
}
