//! Password hashing for the proposer and the authenticating side. Hashing uses a random salt,
//! so it happens before a command is proposed; commands carry the resulting PHC string.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::rand::{SecureRandom, SystemRandom};

/// Argon2id (the crate's default parameters, OWASP's minimum) with a random 16-byte salt, as
/// a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
///
/// # Panics
/// When the operating system's random source fails, which leaves no safe way to continue.
pub fn hash_password(plain: &str) -> String {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .expect("the system random source works");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    Argon2::default()
        .hash_password(plain.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// True when `plain` matches `hash` (a PHC string). A malformed hash matches nothing.
pub fn verify_password(hash: &str, plain: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(plain.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// True when `hash` parses as a PHC string (any algorithm); a pure function, so apply can
/// use it.
pub(crate) fn is_phc_string(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash_password("correct horse");
        let b = hash_password("correct horse");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_password(&a, "correct horse"));
        assert!(verify_password(&b, "correct horse"));
        assert!(!verify_password(&a, "wrong horse"));
        assert!(!verify_password("not a hash", "correct horse"));
        assert!(is_phc_string(&a));
        assert!(!is_phc_string("plaintext"));
    }
}
