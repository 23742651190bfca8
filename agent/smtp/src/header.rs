//! Reading the header `From:` of a message (RFC 5322 3.6.2), so that submission can hold an
//! authenticated user to the addresses they own in the header as well as in the envelope.
//!
//! Only what that check needs: the header section, unfolded, and the addr-specs of every
//! `From:` field (display names, comments, quoted strings, groups and obsolete routes are
//! understood and dropped). Non-UTF-8 octets are read lossily; they can only make an address
//! not match an account, never match one it should not.

/// The addresses of all `From:` fields of `message`, in order, as `local@domain` with the
/// local part unquoted when quoting was not needed.
pub fn from_addresses(message: &[u8]) -> Vec<String> {
    let header_end = find_header_end(message);
    let header = String::from_utf8_lossy(&message[..header_end]);
    let mut out = Vec::new();
    for field in unfold(&header) {
        if let Some((name, value)) = field.split_once(':')
            && name.trim_end().eq_ignore_ascii_case("from")
        {
            out.extend(mailbox_list(value));
        }
    }
    out
}

/// The length of the header section (up to the empty line, or the whole message).
fn find_header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 2)
}

/// Header fields with continuation lines joined.
fn unfold(header: &str) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for line in header.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push_str(line);
            }
        } else if !line.is_empty() {
            fields.push(line.to_owned());
        }
    }
    fields
}

#[derive(Debug, PartialEq)]
enum Token {
    /// An atom, dot or any other character outside the specials handled below.
    Text(String),
    /// A quoted string, unquoted.
    Quoted(String),
    /// `<...>` contents.
    Angle(String),
    Comma,
    Colon,
    Semicolon,
}

/// Splits a field value into tokens, dropping comments and whitespace.
fn tokens(value: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    let mut text = String::new();
    let flush = |text: &mut String, out: &mut Vec<Token>| {
        if !text.is_empty() {
            out.push(Token::Text(std::mem::take(text)));
        }
    };
    while let Some(ch) = chars.next() {
        match ch {
            '(' => {
                flush(&mut text, &mut out);
                let mut depth = 1;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '"' => {
                flush(&mut text, &mut out);
                let mut q = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                q.push(n);
                            }
                        }
                        '"' => break,
                        _ => q.push(c),
                    }
                }
                out.push(Token::Quoted(q));
            }
            '<' => {
                flush(&mut text, &mut out);
                let mut inner = String::new();
                let mut quoted = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' if quoted => {
                            inner.push(c);
                            if let Some(n) = chars.next() {
                                inner.push(n);
                            }
                        }
                        '"' => {
                            quoted = !quoted;
                            inner.push(c);
                        }
                        '>' if !quoted => break,
                        _ => inner.push(c),
                    }
                }
                out.push(Token::Angle(inner));
            }
            ',' => {
                flush(&mut text, &mut out);
                out.push(Token::Comma);
            }
            ':' => {
                flush(&mut text, &mut out);
                out.push(Token::Colon);
            }
            ';' => {
                flush(&mut text, &mut out);
                out.push(Token::Semicolon);
            }
            c if c.is_whitespace() => flush(&mut text, &mut out),
            c => text.push(c),
        }
    }
    flush(&mut text, &mut out);
    out
}

/// mailbox-list / group-list: each mailbox is `display-name <addr>` or a bare addr-spec;
/// a group `name: mailbox, ...;` contributes its members.
fn mailbox_list(value: &str) -> Vec<String> {
    let tokens = tokens(value);
    let mut out = Vec::new();
    let mut current: Vec<&Token> = Vec::new();
    let finish = |current: &mut Vec<&Token>, out: &mut Vec<String>| {
        if let Some(addr) = mailbox(current) {
            out.push(addr);
        }
        current.clear();
    };
    for token in &tokens {
        match token {
            Token::Comma | Token::Semicolon => finish(&mut current, &mut out),
            // A group's display name ends at the colon (an angle address never contains
            // one at this level: it is a single token).
            Token::Colon => current.clear(),
            t => current.push(t),
        }
    }
    finish(&mut current, &mut out);
    out
}

fn mailbox(tokens: &[&Token]) -> Option<String> {
    if let Some(Token::Angle(inner)) = tokens.iter().find(|t| matches!(t, Token::Angle(_))) {
        // Obsolete route `@a,@b:addr`.
        let addr = match inner.rfind(':') {
            Some(i) if inner.starts_with('@') => &inner[i + 1..],
            _ => inner.as_str(),
        };
        return normalise(addr.trim());
    }
    // A bare addr-spec: local-part "@" domain, the local part possibly quoted.
    let mut addr = String::new();
    for t in tokens {
        match t {
            Token::Text(s) => addr.push_str(s),
            Token::Quoted(q) => {
                addr.push('"');
                addr.push_str(q);
                addr.push('"');
            }
            _ => return None,
        }
    }
    normalise(&addr)
}

/// `"john"@example.org` → `john@example.org`; anything without exactly one `@` outside
/// quotes is not an address.
fn normalise(addr: &str) -> Option<String> {
    let at = addr.rfind('@')?;
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    if domain.is_empty() || local.is_empty() || domain.contains(['"', '@', ' ']) {
        return None;
    }
    let local = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => inner
            .replace("\\\\", "\u{0}")
            .replace('\\', "")
            .replace('\u{0}', "\\"),
        None => local.to_owned(),
    };
    Some(format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_forms() {
        let msg = b"Subject: hi\r\nFrom: \"Alice, A.\" <alice@example.org> (work)\r\nTo: b@x\r\n\r\nFrom: mallory@evil.example\r\n";
        assert_eq!(from_addresses(msg), vec!["alice@example.org"]);
        assert_eq!(
            from_addresses(b"from:bob@example.org\r\n\r\n"),
            vec!["bob@example.org"]
        );
        assert_eq!(
            from_addresses(b"From: a@x.org, Bee <b@y.org>,\r\n\t\"c d\"@z.org\r\n\r\nbody"),
            vec!["a@x.org", "b@y.org", "c d@z.org"]
        );
        assert_eq!(
            from_addresses(b"From: Team: a@x.org, b@x.org;\r\n\r\n"),
            vec!["a@x.org", "b@x.org"]
        );
        assert_eq!(
            from_addresses(b"From: <@relay.example:a@x.org>\r\n\r\n"),
            vec!["a@x.org"]
        );
        assert_eq!(
            from_addresses(b"From: \"john\"@x.org\r\n\r\n"),
            vec!["john@x.org"]
        );
    }

    #[test]
    fn every_from_field_counts_and_the_body_does_not() {
        let msg = b"From: a@x.org\r\nFrom: b@y.org\r\n\r\nFrom: c@z.org\r\n";
        assert_eq!(from_addresses(msg), vec!["a@x.org", "b@y.org"]);
        assert!(from_addresses(b"\r\nFrom: a@x.org\r\n").is_empty());
        assert!(from_addresses(b"Subject: none\r\n\r\n").is_empty());
        assert!(from_addresses(b"From: undisclosed\r\n\r\n").is_empty());
        assert_eq!(
            from_addresses(b"Fromage: a@x.org\r\nFrom : b@y.org\r\n"),
            vec!["b@y.org"]
        );
    }

    #[test]
    fn tricks_with_comments_and_quotes_do_not_hide_the_address() {
        let msg = b"From: \"<ceo@example.org>\" <mallory@evil.example>\r\n\r\n";
        assert_eq!(from_addresses(msg), vec!["mallory@evil.example"]);
        let msg = b"From: (<ceo@example.org>) mallory@evil.example\r\n\r\n";
        assert_eq!(from_addresses(msg), vec!["mallory@evil.example"]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(msg in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut m = b"From: ".to_vec();
            m.extend(msg);
            let _ = from_addresses(&m);
        }
    }
}
