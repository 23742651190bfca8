//! Validation and normalization of domains, addresses and mailbox names.
//!
//! Only ASCII case folding, and no Unicode property but the general category Cc (fixed by
//! Unicode's stability policy): Unicode tables change between Rust versions, and replicas on
//! different versions must normalize alike.

use crate::error::MailError;

/// The mailbox every account has; its name is case-insensitive.
pub const INBOX: &str = "INBOX";

/// Separates the levels of mailbox names (`Archive/2024`).
pub const HIERARCHY_DELIMITER: char = '/';

/// Lower-cased domain in A-label form (the proposer converts internationalized names).
pub(crate) fn normalize_domain(domain: &str) -> Result<String, MailError> {
    let d = domain.to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if (1..=253).contains(&d.len()) && d.split('.').all(label_ok) {
        Ok(d)
    } else {
        Err(MailError::InvalidDomain(domain.to_owned()))
    }
}

/// `local@domain`, lower-cased (ASCII). The local part is 1 to 64 bytes of UTF-8 without
/// control characters, spaces or `@`.
pub fn normalize_address(address: &str) -> Result<String, MailError> {
    let invalid = || MailError::InvalidAddress(address.to_owned());
    let (local, domain) = address.split_once('@').ok_or_else(invalid)?;
    let local_ok = (1..=64).contains(&local.len())
        && local
            .chars()
            .all(|c| !c.is_control() && c != ' ' && c != '@');
    if !local_ok {
        return Err(invalid());
    }
    let domain = normalize_domain(domain).map_err(|_| invalid())?;
    Ok(format!("{}@{domain}", local.to_ascii_lowercase()))
}

pub(crate) fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Checks a mailbox name and spells INBOX (as the first level, in any case) as `INBOX`.
/// Names are UTF-8 (the IMAP layer decodes modified UTF-7), 1 to 512 bytes, with non-empty
/// levels and no control characters or LIST wildcards (`*`, `%`).
pub fn normalize_mailbox_name(name: &str) -> Result<String, MailError> {
    let invalid = |reason: &str| MailError::InvalidMailboxName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > 512 {
        return Err(invalid("must be 1 to 512 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == '*' || c == '%') {
        return Err(invalid("control characters, '*' and '%' are not allowed"));
    }
    if name.split(HIERARCHY_DELIMITER).any(str::is_empty) {
        return Err(invalid("empty hierarchy level"));
    }
    let first = name.split(HIERARCHY_DELIMITER).next().unwrap_or(name);
    if first.eq_ignore_ascii_case(INBOX) {
        Ok(format!("{INBOX}{}", &name[first.len()..]))
    } else {
        Ok(name.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_fold_ascii_case_and_reject_garbage() {
        assert_eq!(
            normalize_address("Bob.Smith@Example.COM").as_deref(),
            Ok("bob.smith@example.com")
        );
        assert_eq!(normalize_address("Jörg@x.de").as_deref(), Ok("jörg@x.de"));
        for bad in [
            "",
            "bob",
            "@example.com",
            "bob@",
            "a b@example.com",
            "a@b@c.com",
            "bob@exa_mple.com",
            "bob@-x.com",
            "bob@x..com",
            "nul\0@x.com",
        ] {
            assert!(normalize_address(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_address(&format!("{}@x.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn domains_are_ldh_labels() {
        assert_eq!(
            normalize_domain("Mail.Example.org").as_deref(),
            Ok("mail.example.org")
        );
        assert_eq!(
            normalize_domain("xn--bcher-kva.de").as_deref(),
            Ok("xn--bcher-kva.de")
        );
        for bad in ["", ".", "a.", "bücher.de", "a b", &"a".repeat(64)] {
            assert!(normalize_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mailbox_names_normalize_inbox_only() {
        assert_eq!(normalize_mailbox_name("inbox").as_deref(), Ok("INBOX"));
        assert_eq!(
            normalize_mailbox_name("InBoX/Sub").as_deref(),
            Ok("INBOX/Sub")
        );
        assert_eq!(normalize_mailbox_name("Inboxes").as_deref(), Ok("Inboxes"));
        assert_eq!(normalize_mailbox_name("Sent").as_deref(), Ok("Sent"));
        assert_eq!(
            normalize_mailbox_name("Entwürfe").as_deref(),
            Ok("Entwürfe")
        );
        for bad in ["", "/a", "a/", "a//b", "a*", "50%", "tab\there", "nul\0"] {
            assert!(normalize_mailbox_name(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_mailbox_name(&"x".repeat(513)).is_err());
    }
}
