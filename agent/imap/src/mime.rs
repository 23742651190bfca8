//! The MIME structure of a stored message, as IMAP needs it: byte ranges into the
//! original message for every part's header and body (so `BODY[1.2]`, `BODY[1.2.MIME]`
//! and `BODY[1.2.HEADER]` return the exact stored bytes), ENVELOPE and BODYSTRUCTURE
//! rendering (RFC 3501 §7.4.2, RFC 9051 §7.5.2), and content-transfer decoding for
//! BINARY (RFC 3516).
//!
//! Tern parses here rather than with a general e-mail library because IMAP wants the
//! undecoded bytes: ENVELOPE keeps RFC 2047 encoded words as they are, BINARY decodes the
//! transfer encoding but never the charset, and sections address raw offsets. The parser
//! never fails: whatever the bytes, the result is a structure that renders within the
//! RFC 3501 grammar (a multipart without any delimiter gets one empty text/plain part,
//! since the grammar requires at least one), and nesting stops at [`MAX_DEPTH`].

use std::ops::Range;

use crate::wire;

/// Deepest multipart/message nesting parsed; deeper content is a leaf. Six levels keep
/// the rendered BODYSTRUCTURE within what imap-codec's parser (and the clients built on
/// it) accept; real mail rarely nests more than three.
pub const MAX_DEPTH: usize = 6;

/// One MIME entity: a message, a part of a multipart, or an encapsulated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The header, including the blank line that ends it.
    pub header: Range<usize>,
    /// The body.
    pub body: Range<usize>,
    /// Content-Type (type, subtype and parameters as written, or the default).
    pub content_type: ContentType,
    /// What the body contains.
    pub kind: Kind,
}

/// What a part's body holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A single body (text, image, application…).
    Leaf,
    /// The parts of a multipart, in order.
    Multipart(Vec<Part>),
    /// An encapsulated message (message/rfc822, message/global).
    Message(Box<Part>),
}

/// A parsed Content-Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// Media type, e.g. `text`.
    pub media_type: Vec<u8>,
    /// Subtype, e.g. `plain`.
    pub subtype: Vec<u8>,
    /// Parameters as `(attribute, value)`, values unquoted.
    pub params: Params,
}

/// MIME parameters as `(attribute, value)`.
pub type Params = Vec<(Vec<u8>, Vec<u8>)>;

impl ContentType {
    fn new(t: &str, s: &str, params: Params) -> Self {
        ContentType {
            media_type: t.as_bytes().to_vec(),
            subtype: s.as_bytes().to_vec(),
            params,
        }
    }

    fn is(&self, t: &str) -> bool {
        self.media_type.eq_ignore_ascii_case(t.as_bytes())
    }

    fn sub_is(&self, s: &str) -> bool {
        self.subtype.eq_ignore_ascii_case(s.as_bytes())
    }

    fn param(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }
}

/// Parses `msg` into its MIME structure. Never fails.
pub fn parse(msg: &[u8]) -> Part {
    parse_entity(msg, 0..msg.len(), Default::Text, 0)
}

#[derive(Clone, Copy)]
enum Default {
    Text,
    Message,
}

fn parse_entity(msg: &[u8], range: Range<usize>, default: Default, depth: usize) -> Part {
    let bytes = &msg[range.clone()];
    let header_len = header_length(bytes);
    let header = range.start..range.start + header_len;
    let body = header.end..range.end;
    let fields = header_fields(&msg[header.clone()]);
    let content_type = match field(&fields, "Content-Type").and_then(parse_content_type) {
        Some(ct) => ct,
        None => match default {
            Default::Text => ContentType::new(
                "text",
                "plain",
                vec![(b"charset".to_vec(), b"us-ascii".to_vec())],
            ),
            Default::Message => ContentType::new("message", "rfc822", Vec::new()),
        },
    };
    let identity = field(&fields, "Content-Transfer-Encoding")
        .map(token_value)
        .is_none_or(|e| {
            ["7bit", "8bit", "binary", ""]
                .iter()
                .any(|i| e.eq_ignore_ascii_case(i.as_bytes()))
        });
    let kind = if depth >= MAX_DEPTH || !identity {
        Kind::Leaf
    } else if content_type.is("multipart") {
        let child_default = if content_type.sub_is("digest") {
            Default::Message
        } else {
            Default::Text
        };
        let ranges = match content_type.param("boundary") {
            Some(b) if !b.is_empty() => split_multipart(msg, body.clone(), b),
            _ => Vec::new(),
        };
        let parts: Vec<Part> = if ranges.is_empty() {
            vec![Part {
                header: body.end..body.end,
                body: body.end..body.end,
                content_type: ContentType::new(
                    "text",
                    "plain",
                    vec![(b"charset".to_vec(), b"us-ascii".to_vec())],
                ),
                kind: Kind::Leaf,
            }]
        } else {
            ranges
                .into_iter()
                .map(|r| parse_entity(msg, r, child_default, depth + 1))
                .collect()
        };
        Kind::Multipart(parts)
    } else if content_type.is("message")
        && (content_type.sub_is("rfc822") || content_type.sub_is("global"))
    {
        Kind::Message(Box::new(parse_entity(
            msg,
            body.clone(),
            Default::Text,
            depth + 1,
        )))
    } else {
        Kind::Leaf
    };
    Part {
        header,
        body,
        content_type,
        kind,
    }
}

/// Length of the header of `bytes`, including the empty line that ends it; the whole
/// input when there is no empty line.
fn header_length(bytes: &[u8]) -> usize {
    let mut pos = 0;
    while pos < bytes.len() {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| pos + p + 1);
        let line = &bytes[pos..end];
        if line == b"\r\n" || line == b"\n" {
            return end;
        }
        pos = end;
    }
    bytes.len()
}

/// The body-part ranges of a multipart body: what lies between delimiter lines, the
/// line break before each delimiter belonging to the delimiter (RFC 2046 §5.1.1).
/// Without a close delimiter the last part runs to the end.
fn split_multipart(msg: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut parts = Vec::new();
    let mut open: Option<usize> = None;
    let mut pos = body.start;
    while pos < body.end {
        let end = msg[pos..body.end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.end, |p| pos + p + 1);
        let line = &msg[pos..end];
        if let Some(rest) = line
            .strip_prefix(b"--")
            .and_then(|l| l.strip_prefix(boundary))
        {
            let close = rest.starts_with(b"--");
            let tail = if close { &rest[2..] } else { rest };
            if tail.iter().all(|b| b.is_ascii_whitespace()) {
                if let Some(start) = open.take() {
                    // The CRLF (or LF) before the delimiter is not part of the body part.
                    let mut stop = pos;
                    if stop > start && msg[stop - 1] == b'\n' {
                        stop -= 1;
                        if stop > start && msg[stop - 1] == b'\r' {
                            stop -= 1;
                        }
                    }
                    parts.push(start..stop.max(start));
                }
                if close {
                    return parts;
                }
                open = Some(end);
            }
        }
        pos = end;
    }
    if let Some(start) = open {
        parts.push(start..body.end);
    }
    parts
}

/// The header fields of `header` (continuation lines included), as `(name, whole field)`.
pub fn header_fields(header: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header.len() {
        let end = header[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| i + p + 1);
        let next_continues = header.get(end).is_some_and(|b| *b == b' ' || *b == b'\t');
        if !next_continues {
            let field = &header[start..end];
            if let Some(colon) = field.iter().position(|&b| b == b':') {
                fields.push((&field[..colon], field));
            }
            start = end;
        }
        i = end;
    }
    fields
}

/// The value (after the colon) of the first field called `name`.
fn field<'a>(fields: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        .map(|(n, whole)| &whole[n.len() + 1..])
}

/// A field value unfolded (line breaks removed) and trimmed.
fn unfold(v: &[u8]) -> Vec<u8> {
    v.iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect::<Vec<u8>>()
        .trim_ascii()
        .to_vec()
}

// ---- Tokens of structured fields (RFC 5322 §3.2, RFC 2045 §5.1) ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An atom or, for MIME fields, a token (may hold 8-bit bytes and encoded words).
    Atom(Vec<u8>),
    /// The content of a quoted string, escapes removed.
    Quoted(Vec<u8>),
    /// A special character.
    Special(u8),
}

/// Splits a structured field value into tokens, dropping whitespace and comments.
/// `specials` are the characters that stand alone.
fn tokenize(v: &[u8], specials: &[u8]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'(' {
            let mut depth = 0usize;
            while i < v.len() {
                match v[i] {
                    b'\\' => i += 1,
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else if c == b'"' {
            let mut s = Vec::new();
            i += 1;
            while i < v.len() && v[i] != b'"' {
                if v[i] == b'\\' && i + 1 < v.len() {
                    i += 1;
                }
                if v[i] != b'\r' && v[i] != b'\n' {
                    s.push(v[i]);
                }
                i += 1;
            }
            i += 1;
            out.push(Token::Quoted(s));
        } else if specials.contains(&c) {
            out.push(Token::Special(c));
            i += 1;
        } else {
            let start = i;
            while i < v.len()
                && !v[i].is_ascii_whitespace()
                && !specials.contains(&v[i])
                && v[i] != b'('
                && v[i] != b'"'
            {
                i += 1;
            }
            out.push(Token::Atom(v[start..i].to_vec()));
        }
    }
    out
}

const MIME_SPECIALS: &[u8] = b"()<>@,;:\\/[]?=";

fn parse_content_type(v: &[u8]) -> Option<ContentType> {
    let toks = tokenize(v, MIME_SPECIALS);
    let (t, s) = match toks.as_slice() {
        [Token::Atom(t), Token::Special(b'/'), Token::Atom(s), ..] => (t.clone(), s.clone()),
        _ => return None,
    };
    Some(ContentType {
        media_type: t,
        subtype: s,
        params: parse_params(&toks[3..]),
    })
}

/// `; attribute=value` pairs; malformed pairs are skipped.
fn parse_params(toks: &[Token]) -> Params {
    let mut params = Vec::new();
    for group in toks.split(|t| *t == Token::Special(b';')) {
        if let [Token::Atom(a), Token::Special(b'='), value, ..] = group {
            let value = match value {
                Token::Atom(v) | Token::Quoted(v) => v.clone(),
                Token::Special(c) => vec![*c],
            };
            params.push((a.clone(), value));
        }
    }
    params
}

/// The first token of a MIME field (`base64` of `Content-Transfer-Encoding: base64`).
fn token_value(v: &[u8]) -> Vec<u8> {
    match tokenize(v, MIME_SPECIALS).into_iter().next() {
        Some(Token::Atom(a) | Token::Quoted(a)) => a,
        _ => Vec::new(),
    }
}

/// A parsed Content-Disposition: `(type, params)`.
fn parse_disposition(v: &[u8]) -> Option<(Vec<u8>, Params)> {
    let toks = tokenize(v, MIME_SPECIALS);
    match toks.first() {
        Some(Token::Atom(t)) => Some((t.clone(), parse_params(&toks[1..]))),
        _ => None,
    }
}

// ---- Addresses (RFC 5322 §3.4) ----

/// One address of an ENVELOPE: `(name adl mailbox host)`; a group start has only
/// `mailbox` (the group name), a group end has nothing (RFC 3501 §7.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Display name, raw (encoded words stay encoded).
    pub name: Option<Vec<u8>>,
    /// Source route (`@a,@b`), obsolete but kept.
    pub adl: Option<Vec<u8>>,
    /// Local part, or group name.
    pub mailbox: Option<Vec<u8>>,
    /// Domain; `None` marks group syntax.
    pub host: Option<Vec<u8>>,
}

const ADDRESS_SPECIALS: &[u8] = b"()<>@,;:\\.[]";

/// Parses an address list; what cannot be understood is skipped.
pub fn parse_addresses(v: &[u8]) -> Vec<Address> {
    let toks = tokenize(&unfold(v), ADDRESS_SPECIALS);
    let mut out = Vec::new();
    let mut in_group = false;
    let mut i = 0;
    while i < toks.len() {
        // One entry: up to ',' (or ';' inside a group), or a group start at ':'.
        let start = i;
        let mut angle = false;
        while i < toks.len() {
            match toks[i] {
                Token::Special(b'<') => angle = true,
                Token::Special(b'>') => angle = false,
                Token::Special(b',') if !angle => break,
                Token::Special(b';') if !angle && in_group => break,
                Token::Special(b':') if !angle && !in_group => break,
                _ => {}
            }
            i += 1;
        }
        let entry = &toks[start..i];
        let sep = toks.get(i).cloned();
        i += 1;
        if sep == Some(Token::Special(b':')) {
            out.push(Address {
                name: None,
                adl: None,
                mailbox: Some(phrase(entry)),
                host: None,
            });
            in_group = true;
            // An empty group `name:;`.
            if toks.get(i) == Some(&Token::Special(b';')) {
                out.push(Address {
                    name: None,
                    adl: None,
                    mailbox: None,
                    host: None,
                });
                in_group = false;
                i += 1;
            }
            continue;
        }
        if let Some(a) = mailbox(entry) {
            out.push(a);
        }
        if sep == Some(Token::Special(b';')) {
            out.push(Address {
                name: None,
                adl: None,
                mailbox: None,
                host: None,
            });
            in_group = false;
        }
    }
    if in_group {
        out.push(Address {
            name: None,
            adl: None,
            mailbox: None,
            host: None,
        });
    }
    out
}

/// Words of a display name joined by single spaces (quoted strings unquoted).
fn phrase(toks: &[Token]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        let word: &[u8] = match t {
            Token::Atom(a) | Token::Quoted(a) => a,
            Token::Special(c) => std::slice::from_ref(c),
        };
        if !out.is_empty() && !matches!(t, Token::Special(b'.')) && !out.ends_with(b".") {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    out
}

/// Concatenation of the tokens of a local part or domain.
fn concat(toks: &[Token]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        match t {
            Token::Atom(a) => out.extend_from_slice(a),
            Token::Quoted(q) => {
                out.push(b'"');
                for &b in q {
                    if b == b'"' || b == b'\\' {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            Token::Special(c) => out.push(*c),
        }
    }
    out
}

fn mailbox(entry: &[Token]) -> Option<Address> {
    if entry.is_empty() {
        return None;
    }
    let lt = entry.iter().position(|t| *t == Token::Special(b'<'));
    let (name, spec) = match lt {
        Some(lt) => {
            let gt = entry[lt..]
                .iter()
                .position(|t| *t == Token::Special(b'>'))
                .map_or(entry.len(), |p| lt + p);
            let name = phrase(&entry[..lt]);
            (
                (!name.is_empty()).then_some(name),
                &entry[lt + 1..gt.max(lt + 1)],
            )
        }
        None => (None, entry),
    };
    // An obsolete source route `@a,@b:` before the addr-spec.
    let (adl, spec) = match spec.iter().position(|t| *t == Token::Special(b':')) {
        Some(colon) if spec.first() == Some(&Token::Special(b'@')) => {
            (Some(concat(&spec[..colon])), &spec[colon + 1..])
        }
        _ => (None, spec),
    };
    if spec.is_empty() && name.is_none() {
        return None;
    }
    let (local, host) = match spec.iter().rposition(|t| *t == Token::Special(b'@')) {
        Some(at) => (concat(&spec[..at]), concat(&spec[at + 1..])),
        None => (concat(spec), Vec::new()),
    };
    // Host NIL would read as group syntax; Dovecot's placeholders mark what is missing.
    Some(Address {
        name,
        adl,
        mailbox: Some(if local.is_empty() {
            b"MISSING_MAILBOX".to_vec()
        } else {
            local
        }),
        host: Some(if host.is_empty() {
            b"MISSING_DOMAIN".to_vec()
        } else {
            host
        }),
    })
}

// ---- Rendering ----

/// A string of ENVELOPE or BODYSTRUCTURE; NUL, which no IMAP string may carry, is dropped.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    if s.contains(&0) {
        let clean: Vec<u8> = s.iter().copied().filter(|&b| b != 0).collect();
        wire::string(out, &clean);
    } else {
        wire::string(out, s);
    }
}

fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

fn address_list(out: &mut Vec<u8>, addrs: &[Address]) {
    if addrs.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in addrs {
        out.push(b'(');
        nstring(out, a.name.as_deref());
        out.push(b' ');
        nstring(out, a.adl.as_deref());
        out.push(b' ');
        nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        nstring(out, a.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// Appends the ENVELOPE of the message whose header is `header`.
pub fn envelope(out: &mut Vec<u8>, header: &[u8]) {
    let fields = header_fields(header);
    let text = |name: &str| field(&fields, name).map(unfold);
    let addrs = |name: &str| field(&fields, name).map_or_else(Vec::new, parse_addresses);
    let from = addrs("From");
    let mut sender = addrs("Sender");
    if sender.is_empty() {
        sender.clone_from(&from);
    }
    let mut reply_to = addrs("Reply-To");
    if reply_to.is_empty() {
        reply_to.clone_from(&from);
    }
    out.push(b'(');
    nstring(out, text("Date").as_deref());
    out.push(b' ');
    nstring(out, text("Subject").as_deref());
    for list in [
        &from,
        &sender,
        &reply_to,
        &addrs("To"),
        &addrs("Cc"),
        &addrs("Bcc"),
    ] {
        out.push(b' ');
        address_list(out, list);
    }
    out.push(b' ');
    nstring(out, text("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, text("Message-ID").as_deref());
    out.push(b')');
}

fn params(out: &mut Vec<u8>, params: &[(Vec<u8>, Vec<u8>)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (a, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, a);
        out.push(b' ');
        string(out, v);
    }
    out.push(b')');
}

/// Number of text lines in `body` (a last line without a line break counts).
fn lines(body: &[u8]) -> usize {
    let n = body.iter().filter(|&&b| b == b'\n').count();
    n + usize::from(!body.is_empty() && !body.ends_with(b"\n"))
}

/// Appends disposition, language and location (the extension data every part shares).
fn extension_tail(out: &mut Vec<u8>, fields: &[(&[u8], &[u8])]) {
    out.push(b' ');
    match field(fields, "Content-Disposition").and_then(parse_disposition) {
        Some((t, p)) => {
            out.push(b'(');
            string(out, &t);
            out.push(b' ');
            params(out, &p);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    let langs: Vec<Vec<u8>> = field(fields, "Content-Language")
        .map(|v| {
            tokenize(v, MIME_SPECIALS)
                .into_iter()
                .filter_map(|t| match t {
                    Token::Atom(a) | Token::Quoted(a) => Some(a),
                    Token::Special(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match langs.as_slice() {
        [] => out.extend_from_slice(b"NIL"),
        [one] => string(out, one),
        many => {
            out.push(b'(');
            for (i, l) in many.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, l);
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    nstring(
        out,
        field(fields, "Content-Location").map(unfold).as_deref(),
    );
}

/// Appends the BODYSTRUCTURE (`extended`) or BODY of `part` of `msg`.
pub fn body_structure(out: &mut Vec<u8>, msg: &[u8], part: &Part, extended: bool) {
    let fields = header_fields(&msg[part.header.clone()]);
    let ct = &part.content_type;
    out.push(b'(');
    if let Kind::Multipart(children) = &part.kind {
        for c in children {
            body_structure(out, msg, c, extended);
        }
        out.push(b' ');
        string(out, &ct.subtype);
        if extended {
            out.push(b' ');
            params(out, &ct.params);
            extension_tail(out, &fields);
        }
        out.push(b')');
        return;
    }
    string(out, &ct.media_type);
    out.push(b' ');
    string(out, &ct.subtype);
    out.push(b' ');
    params(out, &ct.params);
    out.push(b' ');
    nstring(out, field(&fields, "Content-ID").map(unfold).as_deref());
    out.push(b' ');
    nstring(
        out,
        field(&fields, "Content-Description").map(unfold).as_deref(),
    );
    out.push(b' ');
    let encoding = field(&fields, "Content-Transfer-Encoding")
        .map(token_value)
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| b"7bit".to_vec());
    string(out, &encoding);
    let body = &msg[part.body.clone()];
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    match &part.kind {
        Kind::Message(inner) => {
            out.push(b' ');
            envelope(out, &msg[inner.header.clone()]);
            out.push(b' ');
            body_structure(out, msg, inner, extended);
            out.extend_from_slice(format!(" {}", lines(body)).as_bytes());
        }
        _ if ct.is("text") => out.extend_from_slice(format!(" {}", lines(body)).as_bytes()),
        _ => {}
    }
    if extended {
        out.push(b' ');
        nstring(out, field(&fields, "Content-MD5").map(unfold).as_deref());
        extension_tail(out, &fields);
    }
    out.push(b')');
}

// ---- Sections ----

/// The part at a numeric section path (RFC 3501 §6.4.5): part 1 of a message that is not
/// multipart is its body; parts of an encapsulated message are numbered inside it.
pub fn part_at<'p>(root: &'p Part, path: &[u32]) -> Option<&'p Part> {
    let mut cur: Option<&Part> = None;
    for &n in path {
        let index = usize::try_from(n).ok()?.checked_sub(1)?;
        // The message whose parts are numbered next.
        let container = match cur {
            None => root,
            Some(p) => match &p.kind {
                Kind::Message(inner) => inner,
                Kind::Multipart(children) => {
                    cur = Some(children.get(index)?);
                    continue;
                }
                Kind::Leaf => return None,
            },
        };
        cur = Some(match &container.kind {
            Kind::Multipart(children) => children.get(index)?,
            _ if index == 0 => container,
            _ => return None,
        });
    }
    cur.or(Some(root))
}

/// Why BINARY cannot serve a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCte(pub String);

/// The body of `part` with its content-transfer-encoding removed (RFC 3516); the charset
/// is left alone.
pub fn decoded_body(msg: &[u8], part: &Part) -> Result<Vec<u8>, UnknownCte> {
    let body = &msg[part.body.clone()];
    let fields = header_fields(&msg[part.header.clone()]);
    let cte = field(&fields, "Content-Transfer-Encoding")
        .map(token_value)
        .unwrap_or_default()
        .to_ascii_lowercase();
    match cte.as_slice() {
        b"" | b"7bit" | b"8bit" | b"binary" => Ok(body.to_vec()),
        b"base64" => Ok(base64_decode(body)),
        b"quoted-printable" => Ok(qp_decode(body)),
        other => Err(UnknownCte(String::from_utf8_lossy(other).into_owned())),
    }
}

/// Base64 decoding that skips what is not in the alphabet (line breaks, stray bytes) and
/// stops at padding, as mail readers do.
pub fn base64_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Quoted-printable decoding (RFC 2045 §6.7): soft line breaks removed, `=XX` decoded,
/// a malformed `=` kept as it is; trailing whitespace on lines is dropped.
pub fn qp_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for line in s.split_inclusive(|&b| b == b'\n') {
        let (content, eol): (&[u8], &[u8]) = if let Some(c) = line.strip_suffix(b"\r\n") {
            (c, b"\r\n")
        } else if let Some(c) = line.strip_suffix(b"\n") {
            (c, b"\n")
        } else {
            (line, b"")
        };
        let content = content.trim_ascii_end();
        let (content, soft) = match content.strip_suffix(b"=") {
            Some(c) => (c, true),
            None => (content, false),
        };
        let mut i = 0;
        while i < content.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if content[i] == b'='
                && let (Some(h), Some(l)) = (
                    content.get(i + 1).and_then(|&b| hex(b)),
                    content.get(i + 2).and_then(|&b| hex(b)),
                )
            {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
            out.push(content[i]);
            i += 1;
        }
        if !soft {
            out.extend_from_slice(eol);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
