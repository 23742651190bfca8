//! The command parser: one command line (CRLF already removed) in, a typed [`Command`] or a
//! [`ParseError`] that knows its reply out. No state, no I/O, so it is fuzzed on its own
//! (`fuzz/fuzz_targets/parser.rs`).
//!
//! Grammar: RFC 5321 section 4.1 (commands, paths, domains, address literals), RFC 6531
//! (UTF-8 in local parts and domains, the SMTPUTF8 parameter), RFC 1870 (SIZE), RFC 6152
//! (BODY=8BITMIME), RFC 3461 (RET, ENVID, NOTIFY, ORCPT and xtext), RFC 4954 (AUTH and the
//! AUTH= parameter), RFC 3030 (BDAT), RFC 2033 (LHLO).
//!
//! Deliberately strict where leniency has bitten mail servers: no control characters (NUL,
//! bare CR) anywhere in a command, paths only in angle brackets, every parameter known and
//! given once. Deliberately lenient where real clients differ harmlessly: verbs and
//! parameter names in any case, one space after `FROM:`/`TO:`, trailing spaces.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::reply::{Reply, Status};

/// Longest local part in octets (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain in octets (RFC 5321 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest ENVID value, decoded (RFC 3461 4.4).
pub const MAX_ENVID: usize = 100;
/// Longest ORCPT value, encoded (RFC 3461 4.2).
pub const MAX_ORCPT: usize = 500;

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `HELO domain`.
    Helo(String),
    /// `EHLO domain-or-literal`.
    Ehlo(String),
    /// `LHLO domain-or-literal` (LMTP).
    Lhlo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail(MailFrom),
    /// `RCPT TO:<path> [params]`.
    Rcpt(RcptTo),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]`.
    Bdat {
        /// Octets of the chunk that follows the command line.
        size: u64,
        /// The last chunk of the message.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn(String),
    /// `HELP [topic]`.
    Help(Option<String>),
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth {
        /// The SASL mechanism, upper case.
        mechanism: String,
        /// The initial response, still base64 (`=` stands for an empty response).
        initial: Option<String>,
    },
}

/// A mailbox `local-part@domain`. The local part is kept unquoted (its canonical value), the
/// domain as written (a name or an address literal such as `[192.0.2.1]`). The special
/// recipient `<Postmaster>` has an empty domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part, without quotes or quoting backslashes.
    pub local_part: String,
    /// The domain or address literal; empty only for `<Postmaster>`.
    pub domain: String,
}

impl Mailbox {
    /// The bare `<Postmaster>` recipient (RFC 5321 4.5.1), which needs no domain.
    pub fn is_postmaster(&self) -> bool {
        self.domain.is_empty() && self.local_part.eq_ignore_ascii_case("postmaster")
    }

    /// Whether local part and domain are ASCII (otherwise SMTPUTF8 is needed).
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }

    /// The address compared as mail systems do: domain case-insensitively, and (as nearly
    /// every system does) the local part too.
    pub fn same_address(&self, other: &Mailbox) -> bool {
        self.local_part.to_lowercase() == other.local_part.to_lowercase()
            && self.domain.to_lowercase() == other.domain.to_lowercase()
    }
}

impl fmt::Display for Mailbox {
    /// The address as it would be written in a path, re-quoting the local part if needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local_part) {
            f.write_str(&self.local_part)?;
        } else {
            f.write_str("\"")?;
            for ch in self.local_part.chars() {
                if ch == '"' || ch == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{ch}")?;
            }
            f.write_str("\"")?;
        }
        if !self.domain.is_empty() {
            write!(f, "@{}", self.domain)?;
        }
        Ok(())
    }
}

/// The reverse path of MAIL FROM: a mailbox or the null sender `<>` (bounces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`.
    Null,
    /// `<mailbox>`.
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// BODY= (RFC 6152). BINARYMIME is not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// RET= (RFC 3461 4.3): what a failure DSN should return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only the headers.
    Headers,
}

/// Parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE=: the size the client declares (RFC 1870).
    pub size: Option<u64>,
    /// BODY=.
    pub body: Option<BodyType>,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// RET= (RFC 3461).
    pub ret: Option<Ret>,
    /// ENVID=, xtext-decoded (RFC 3461).
    pub envid: Option<String>,
    /// AUTH=, xtext-decoded; `<>` is kept as `<>` (RFC 4954 5). Accepted and carried, never
    /// trusted: Tern does not let a client vouch for another's authentication.
    pub auth: Option<String>,
}

/// When to send DSNs for a recipient (RFC 3461 4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// NOTIFY=NEVER.
    pub never: bool,
    /// SUCCESS.
    pub success: bool,
    /// FAILURE.
    pub failure: bool,
    /// DELAY.
    pub delay: bool,
}

/// ORCPT= (RFC 3461 4.2): the original recipient as the first MTA saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orcpt {
    /// The address type, e.g. `rfc822` or `utf-8`, lower case.
    pub addr_type: String,
    /// The address: xtext-decoded for `rfc822`, as sent for other types.
    pub address: String,
}

/// Parameters of RCPT TO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// NOTIFY=.
    pub notify: Option<Notify>,
    /// ORCPT=.
    pub orcpt: Option<Orcpt>,
}

/// A parsed MAIL FROM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailFrom {
    /// The sender.
    pub path: ReversePath,
    /// Its parameters.
    pub params: MailParams,
}

/// A parsed RCPT TO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptTo {
    /// The recipient.
    pub mailbox: Mailbox,
    /// Its parameters.
    pub params: RcptParams,
}

/// Why a command line was refused; each maps to one reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not a command this server knows.
    #[error("command unrecognized")]
    UnknownCommand,
    /// A verb used by another protocol (HTTP, POP3): the client is not speaking SMTP.
    #[error("not an SMTP command")]
    ForeignProtocol,
    /// NUL, bare CR or another control character in the line.
    #[error("control character in command")]
    ControlCharacter,
    /// The line is not UTF-8.
    #[error("command is not valid UTF-8")]
    NotUtf8,
    /// Arguments missing, superfluous or malformed.
    #[error("{0}")]
    Syntax(&'static str),
    /// The MAIL FROM address is malformed.
    #[error("{0}")]
    BadSender(&'static str),
    /// The RCPT TO address is malformed.
    #[error("{0}")]
    BadRecipient(&'static str),
    /// A parameter this server does not offer.
    #[error("unsupported parameter {0}")]
    UnknownParameter(String),
    /// A known parameter with a bad value, or given twice.
    #[error("{0}")]
    BadParameter(&'static str),
}

impl ParseError {
    /// The reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::UnknownCommand => Reply::new(500, Status(5, 5, 1), "Command unrecognized"),
            ParseError::ForeignProtocol => Reply::new(
                421,
                Status(4, 7, 0),
                "This is an SMTP server, closing connection",
            ),
            ParseError::ControlCharacter => Reply::new(
                500,
                Status(5, 5, 2),
                "Syntax error: control characters are not allowed",
            ),
            ParseError::NotUtf8 => Reply::new(
                500,
                Status(5, 5, 2),
                "Syntax error: command is not valid UTF-8",
            ),
            ParseError::Syntax(text) => Reply::new(501, Status(5, 5, 4), *text),
            ParseError::BadSender(text) => Reply::new(501, Status(5, 1, 7), *text),
            ParseError::BadRecipient(text) => Reply::new(501, Status(5, 1, 3), *text),
            ParseError::UnknownParameter(name) => Reply::new(
                555,
                Status(5, 5, 4),
                format!("Unsupported parameter {}", truncate(name, 40)),
            ),
            ParseError::BadParameter(text) => Reply::new(501, Status(5, 5, 4), *text),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses one command line (without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(ParseError::ControlCharacter);
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let line = line.trim_end_matches(' ');
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    if verb.len() > 10 {
        return Err(ParseError::UnknownCommand);
    }
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "HELO" => Ok(Command::Helo(hello_argument(
            args,
            "Syntax: HELO hostname",
        )?)),
        "EHLO" => Ok(Command::Ehlo(hello_argument(
            args,
            "Syntax: EHLO hostname",
        )?)),
        "LHLO" => Ok(Command::Lhlo(hello_argument(
            args,
            "Syntax: LHLO hostname",
        )?)),
        "MAIL" => mail(args.unwrap_or("")).map(Command::Mail),
        "RCPT" => rcpt(args.unwrap_or("")).map(Command::Rcpt),
        "DATA" => no_argument(args, Command::Data, "Syntax: DATA (no arguments)"),
        "RSET" => no_argument(args, Command::Rset, "Syntax: RSET (no arguments)"),
        "QUIT" => no_argument(args, Command::Quit, "Syntax: QUIT (no arguments)"),
        "STARTTLS" => no_argument(args, Command::StartTls, "Syntax: STARTTLS (no arguments)"),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help(args.map(str::to_owned))),
        "VRFY" => match args {
            Some(a) if !a.trim().is_empty() => Ok(Command::Vrfy(a.to_owned())),
            _ => Err(ParseError::Syntax("Syntax: VRFY address")),
        },
        "EXPN" => match args {
            Some(a) if !a.trim().is_empty() => Ok(Command::Expn(a.to_owned())),
            _ => Err(ParseError::Syntax("Syntax: EXPN list")),
        },
        "BDAT" => bdat(args),
        "AUTH" => auth(args),
        // A browser or proxy talking HTTP to the port (cross-protocol attacks), or a
        // confused POP3 client: nothing good comes of answering line by line.
        "GET" | "POST" | "PUT" | "HEAD" | "CONNECT" | "OPTIONS" | "USER" | "PASS" => {
            Err(ParseError::ForeignProtocol)
        }
        _ => Err(ParseError::UnknownCommand),
    }
}

fn no_argument(
    args: Option<&str>,
    command: Command,
    syntax: &'static str,
) -> Result<Command, ParseError> {
    match args {
        None => Ok(command),
        Some(_) => Err(ParseError::Syntax(syntax)),
    }
}

/// HELO/EHLO/LHLO argument: one token of visible characters. RFC 5321 asks for a domain or
/// an address literal, but real clients send all sorts; what matters is that it cannot
/// break a header (it goes into Received) or a log line.
fn hello_argument(args: Option<&str>, syntax: &'static str) -> Result<String, ParseError> {
    let arg = args.map(|a| a.trim_start_matches(' ')).unwrap_or("");
    if arg.is_empty() || arg.contains(' ') || arg.len() > MAX_DOMAIN {
        return Err(ParseError::Syntax(syntax));
    }
    Ok(arg.to_owned())
}

fn bdat(args: Option<&str>) -> Result<Command, ParseError> {
    const SYNTAX: &str = "Syntax: BDAT size [LAST]";
    let args = args.ok_or(ParseError::Syntax(SYNTAX))?;
    let mut parts = args.split(' ');
    let size = parts.next().unwrap_or("");
    if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Syntax(SYNTAX));
    }
    let size: u64 = size.parse().map_err(|_| ParseError::Syntax(SYNTAX))?;
    let last = match parts.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::Syntax(SYNTAX)),
    };
    if parts.next().is_some() {
        return Err(ParseError::Syntax(SYNTAX));
    }
    Ok(Command::Bdat { size, last })
}

fn auth(args: Option<&str>) -> Result<Command, ParseError> {
    const SYNTAX: &str = "Syntax: AUTH mechanism [initial-response]";
    let args = args.ok_or(ParseError::Syntax(SYNTAX))?;
    let mut parts = args.split(' ');
    let mechanism = parts.next().unwrap_or("");
    if mechanism.is_empty()
        || mechanism.len() > 20
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ParseError::Syntax(SYNTAX));
    }
    let initial = parts.next().map(str::to_owned);
    if parts.next().is_some() || initial.as_deref() == Some("") {
        return Err(ParseError::Syntax(SYNTAX));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial,
    })
}

/// Strips `keyword:` (case-insensitive) and one optional space.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = &args[keyword.len()..];
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

fn mail(args: &str) -> Result<MailFrom, ParseError> {
    let rest = strip_keyword(args, "FROM:").ok_or(ParseError::Syntax(
        "Syntax: MAIL FROM:<address> [parameters]",
    ))?;
    let (path, params) = split_path(rest).map_err(ParseError::BadSender)?;
    let path = if path.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(parse_path(path, false).map_err(ParseError::BadSender)?)
    };
    let params = mail_params(params)?;
    Ok(MailFrom { path, params })
}

fn rcpt(args: &str) -> Result<RcptTo, ParseError> {
    let rest = strip_keyword(args, "TO:")
        .ok_or(ParseError::Syntax("Syntax: RCPT TO:<address> [parameters]"))?;
    let (path, params) = split_path(rest).map_err(ParseError::BadRecipient)?;
    if path.is_empty() {
        return Err(ParseError::BadRecipient("Empty recipient address"));
    }
    let mailbox = parse_path(path, true).map_err(ParseError::BadRecipient)?;
    let params = rcpt_params(params)?;
    Ok(RcptTo { mailbox, params })
}

/// Splits `<path> params` into the text between the brackets and the parameter text. The
/// closing bracket is found by walking the path grammar, since a quoted local part may
/// itself contain `>`.
fn split_path(s: &str) -> Result<(&str, &str), &'static str> {
    let inner = s
        .strip_prefix('<')
        .ok_or("Address must be enclosed in <>")?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, ch) in inner.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted {
            match ch {
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
        } else {
            match ch {
                '"' => quoted = true,
                '>' => {
                    let path = &inner[..i];
                    let rest = &inner[i + 1..];
                    if !rest.is_empty() && !rest.starts_with(' ') {
                        return Err("Garbage after address");
                    }
                    return Ok((path, rest.trim_start_matches(' ')));
                }
                _ => {}
            }
        }
    }
    Err("Address must be enclosed in <>")
}

/// Parses the inside of `<...>`: an optional source route (accepted and ignored, RFC 5321
/// 4.1.1.3), then a mailbox. `<Postmaster>` is allowed for recipients.
fn parse_path(path: &str, recipient: bool) -> Result<Mailbox, &'static str> {
    let mut path = path;
    if path.starts_with('@') {
        let colon = path.find(':').ok_or("Bad source route")?;
        for hop in path[..colon].split(',') {
            let domain = hop.strip_prefix('@').ok_or("Bad source route")?;
            parse_domain(domain)?;
        }
        path = &path[colon + 1..];
    }
    if recipient && path.eq_ignore_ascii_case("postmaster") {
        return Ok(Mailbox {
            local_part: path.to_owned(),
            domain: String::new(),
        });
    }
    let (local_part, rest) = parse_local_part(path)?;
    let domain = rest.strip_prefix('@').ok_or("Address needs a domain")?;
    let domain = parse_domain(domain)?;
    Ok(Mailbox { local_part, domain })
}

fn is_atext(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(ch) || !ch.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Local-part = Dot-string / Quoted-string; returns it unquoted, and what follows.
fn parse_local_part(s: &str) -> Result<(String, &str), &'static str> {
    let (local, rest) = if let Some(inner) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.char_indices();
        loop {
            match chars.next() {
                None => return Err("Unterminated quoted local part"),
                Some((i, '"')) => break (out, &inner[i + 1..]),
                Some((_, '\\')) => match chars.next() {
                    Some((_, c)) if (' '..='~').contains(&c) => out.push(c),
                    _ => return Err("Bad quoted pair in local part"),
                },
                Some((_, c)) if c == ' ' || c == '!' || ('#'..='[').contains(&c) => out.push(c),
                Some((_, c)) if (']'..='~').contains(&c) || !c.is_ascii() => out.push(c),
                Some(_) => return Err("Bad character in quoted local part"),
            }
        }
    } else {
        let end = s.find('@').unwrap_or(s.len());
        let local = &s[..end];
        if !is_dot_string(local) {
            return Err("Bad local part syntax");
        }
        (local.to_owned(), &s[end..])
    };
    if local.len() > MAX_LOCAL_PART {
        return Err("Local part longer than 64 octets");
    }
    Ok((local, rest))
}

/// Domain = sub-domain *("." sub-domain) (with U-labels allowed), or an address literal.
/// Returned as written.
pub fn parse_domain(s: &str) -> Result<String, &'static str> {
    if s.len() > MAX_DOMAIN {
        return Err("Domain longer than 255 octets");
    }
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("Bad address literal")?;
        let valid = if let Some(v6) = strip_ci_prefix(inner, "IPv6:") {
            v6.parse::<Ipv6Addr>().is_ok()
        } else if inner.parse::<Ipv4Addr>().is_ok() {
            true
        } else if let Some((tag, content)) = inner.split_once(':') {
            // General-address-literal: Standardized-tag ":" 1*dcontent.
            is_ldh(tag)
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b))
        } else {
            false
        };
        return if valid {
            Ok(s.to_owned())
        } else {
            Err("Bad address literal")
        };
    }
    if s.is_empty() || !s.split('.').all(is_label) {
        return Err("Bad domain syntax");
    }
    Ok(s.to_owned())
}

fn strip_ci_prefix<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn is_ldh(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.ends_with('-')
        && !s.starts_with('-')
}

/// A label: Let-dig [Ldh-str], or a U-label (non-ASCII letters allowed; IDNA validity is
/// the DNS's business, not the parser's).
fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
}

/// esmtp-param = esmtp-keyword ["=" esmtp-value], separated by single spaces.
fn params(s: &str) -> Result<Vec<(String, Option<&str>)>, ParseError> {
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for param in s.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        if key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || key.starts_with('-')
        {
            return Err(ParseError::BadParameter("Bad parameter syntax"));
        }
        if let Some(v) = value
            && (v.is_empty() || v.contains('='))
        {
            return Err(ParseError::BadParameter("Bad parameter value syntax"));
        }
        let key = key.to_ascii_uppercase();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(ParseError::BadParameter("Parameter given twice"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn mail_params(s: &str) -> Result<MailParams, ParseError> {
    let mut p = MailParams::default();
    for (key, value) in params(s)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::BadParameter("Bad SIZE value"));
                }
                p.size = Some(
                    v.parse()
                        .map_err(|_| ParseError::BadParameter("Bad SIZE value"))?,
                );
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                p.body = Some(BodyType::SevenBit)
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                p.body = Some(BodyType::EightBitMime)
            }
            ("BODY", _) => return Err(ParseError::BadParameter("Unsupported BODY type")),
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => p.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => p.ret = Some(Ret::Headers),
            ("RET", _) => return Err(ParseError::BadParameter("RET must be FULL or HDRS")),
            ("ENVID", Some(v)) => {
                let id = xtext_decode(v).ok_or(ParseError::BadParameter("Bad ENVID xtext"))?;
                if id.len() > MAX_ENVID || id.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
                    return Err(ParseError::BadParameter("Bad ENVID value"));
                }
                p.envid = Some(id);
            }
            ("AUTH", Some("<>")) => p.auth = Some("<>".to_owned()),
            ("AUTH", Some(v)) => {
                p.auth = Some(xtext_decode(v).ok_or(ParseError::BadParameter("Bad AUTH xtext"))?)
            }
            ("SIZE" | "ENVID" | "AUTH", None) => {
                return Err(ParseError::BadParameter("Parameter needs a value"));
            }
            ("SMTPUTF8", Some(_)) => {
                return Err(ParseError::BadParameter("SMTPUTF8 takes no value"));
            }
            (other, _) => return Err(ParseError::UnknownParameter(other.to_owned())),
        }
    }
    Ok(p)
}

fn rcpt_params(s: &str) -> Result<RcptParams, ParseError> {
    let mut p = RcptParams::default();
    for (key, value) in params(s)? {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => p.notify = Some(parse_notify(v)?),
            ("ORCPT", Some(v)) => p.orcpt = Some(parse_orcpt(v)?),
            ("NOTIFY" | "ORCPT", None) => {
                return Err(ParseError::BadParameter("Parameter needs a value"));
            }
            (other, _) => return Err(ParseError::UnknownParameter(other.to_owned())),
        }
    }
    Ok(p)
}

fn parse_notify(v: &str) -> Result<Notify, ParseError> {
    let mut n = Notify::default();
    for word in v.split(',') {
        match word.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => {
                return Err(ParseError::BadParameter(
                    "NOTIFY must be NEVER or SUCCESS,FAILURE,DELAY",
                ));
            }
        }
    }
    if n.never && (n.success || n.failure || n.delay) {
        return Err(ParseError::BadParameter("NOTIFY=NEVER cannot be combined"));
    }
    Ok(n)
}

fn parse_orcpt(v: &str) -> Result<Orcpt, ParseError> {
    const BAD: ParseError = ParseError::BadParameter("ORCPT must be addr-type;address");
    if v.len() > MAX_ORCPT {
        return Err(ParseError::BadParameter("ORCPT longer than 500 octets"));
    }
    let (addr_type, address) = v.split_once(';').ok_or(BAD)?;
    if addr_type.is_empty()
        || !addr_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(BAD);
    }
    let addr_type = addr_type.to_ascii_lowercase();
    let address = if addr_type == "rfc822" {
        xtext_decode(address).ok_or(ParseError::BadParameter("Bad ORCPT xtext"))?
    } else {
        address.to_owned()
    };
    if address.is_empty() || address.chars().any(char::is_control) {
        return Err(BAD);
    }
    Ok(Orcpt { addr_type, address })
}

/// Decodes xtext (RFC 3461 4): `+XX` with upper-case hex stands for one octet, every other
/// character must be a printable ASCII other than `+` and `=`. None when malformed or when
/// the decoded octets are not UTF-8.
pub fn xtext_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let digit = |b: u8| match b {
                    b'0'..=b'9' => Some(b - b'0'),
                    b'A'..=b'F' => Some(b - b'A' + 10),
                    _ => None,
                };
                out.push(digit(hex[0])? << 4 | digit(hex[1])?);
                i += 3;
            }
            b'=' => return None,
            b @ 33..=126 => {
                out.push(b);
                i += 1;
            }
            // UTF-8 beyond ASCII: RFC 6533's utf-8-addr-xtext carries it as-is.
            b if b >= 0x80 => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local_part: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn simple_commands_in_any_case() {
        assert_eq!(
            parse_command(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            parse_command(b"HELO [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(parse_command(b"LhLo x"), Ok(Command::Lhlo("x".into())));
        assert_eq!(parse_command(b"DATA"), Ok(Command::Data));
        assert_eq!(parse_command(b"rset "), Ok(Command::Rset));
        assert_eq!(parse_command(b"NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(parse_command(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse_command(b"HELP"), Ok(Command::Help(None)));
        assert_eq!(parse_command(b"VRFY bob"), Ok(Command::Vrfy("bob".into())));
        assert_eq!(parse_command(b"STARTTLS"), Ok(Command::StartTls));
    }

    #[test]
    fn argument_errors() {
        assert!(matches!(parse_command(b"EHLO"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            parse_command(b"EHLO a b"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"DATA now"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"STARTTLS x"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(parse_command(b"VRFY"), Err(ParseError::Syntax(_))));
        assert_eq!(parse_command(b"FROB x"), Err(ParseError::UnknownCommand));
        assert_eq!(parse_command(b""), Err(ParseError::UnknownCommand));
        assert_eq!(
            parse_command(b"GET / HTTP/1.1"),
            Err(ParseError::ForeignProtocol)
        );
        assert_eq!(
            parse_command(b"EHLO a\0b"),
            Err(ParseError::ControlCharacter)
        );
        assert_eq!(
            parse_command(b"EHLO a\rb"),
            Err(ParseError::ControlCharacter)
        );
        assert_eq!(parse_command(b"EHLO \xff"), Err(ParseError::NotUtf8));
        assert_eq!(parse_command(b"EHLO a").map(|_| ()), Ok(()));
        assert_eq!(ParseError::UnknownCommand.reply().code, 500);
        assert_eq!(
            ParseError::ControlCharacter.reply().status,
            Some(Status(5, 5, 2))
        );
    }

    #[test]
    fn mail_from_paths_and_parameters() {
        let Command::Mail(m) = parse_command(
            b"MAIL FROM:<Alice@Example.org> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1",
        )
        .unwrap() else {
            panic!("not MAIL");
        };
        assert_eq!(m.path, ReversePath::Mailbox(mb("Alice", "Example.org")));
        assert_eq!(m.params.size, Some(1000));
        assert_eq!(m.params.body, Some(BodyType::EightBitMime));
        assert_eq!(m.params.ret, Some(Ret::Headers));
        assert_eq!(m.params.envid.as_deref(), Some("QQ+1"));
        let Command::Mail(m) = parse_command(b"mail from: <> smtputf8 auth=<>").unwrap() else {
            panic!("not MAIL");
        };
        assert_eq!(m.path, ReversePath::Null);
        assert!(m.params.smtputf8);
        assert_eq!(m.params.auth.as_deref(), Some("<>"));
    }

    #[test]
    fn mail_from_errors() {
        let err = |l: &[u8]| parse_command(l).unwrap_err();
        assert!(matches!(
            err(b"MAIL alice@example.org"),
            ParseError::Syntax(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:alice@example.org"),
            ParseError::BadSender(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<alice>"),
            ParseError::BadSender(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a..b@example.org>"),
            ParseError::BadSender(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a@-x.org>"),
            ParseError::BadSender(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a@x.org>junk"),
            ParseError::BadSender(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a@x.org"),
            ParseError::BadSender(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a@x.org> SIZE=12x"),
            ParseError::BadParameter(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a@x.org> SIZE=1 SIZE=2"),
            ParseError::BadParameter(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a@x.org> BODY=BINARYMIME"),
            ParseError::BadParameter(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a@x.org> ENVID=a=b"),
            ParseError::BadParameter(_)
        ));
        assert!(matches!(
            err(b"MAIL FROM:<a@x.org> ENVID=+zz"),
            ParseError::BadParameter(_)
        ));
        assert!(
            matches!(err(b"MAIL FROM:<a@x.org> XFOO=1"), ParseError::UnknownParameter(k) if k == "XFOO")
        );
        assert!(matches!(
            err(b"MAIL FROM:<a@x.org> NOTIFY=NEVER"),
            ParseError::UnknownParameter(_)
        ));
        let long = format!("MAIL FROM:<{}@x.org>", "a".repeat(65));
        assert!(matches!(err(long.as_bytes()), ParseError::BadSender(_)));
        assert_eq!(
            ParseError::BadSender("x").reply().status,
            Some(Status(5, 1, 7))
        );
        assert_eq!(ParseError::UnknownParameter("X".into()).reply().code, 555);
    }

    #[test]
    fn rcpt_to_paths_and_dsn_parameters() {
        let Command::Rcpt(r) = parse_command(
            b"RCPT TO:<\"john q\\\"x\"@example.org> NOTIFY=SUCCESS,failure ORCPT=rfc822;j+40example.org",
        )
        .unwrap() else {
            panic!("not RCPT");
        };
        assert_eq!(r.mailbox, mb("john q\"x", "example.org"));
        assert_eq!(r.mailbox.to_string(), "\"john q\\\"x\"@example.org");
        let notify = r.params.notify.unwrap();
        assert!(notify.success && notify.failure && !notify.delay && !notify.never);
        assert_eq!(
            r.params.orcpt,
            Some(Orcpt {
                addr_type: "rfc822".into(),
                address: "j@example.org".into()
            })
        );
        let Command::Rcpt(r) = parse_command(b"RCPT TO:<Postmaster>").unwrap() else {
            panic!()
        };
        assert!(r.mailbox.is_postmaster());
        let Command::Rcpt(r) =
            parse_command(b"RCPT TO:<@relay.example,@b.example:bob@example.org>").unwrap()
        else {
            panic!()
        };
        assert_eq!(r.mailbox, mb("bob", "example.org"));
        let Command::Rcpt(r) = parse_command("RCPT TO:<用户@例子.广告>".as_bytes()).unwrap()
        else {
            panic!()
        };
        assert!(!r.mailbox.is_ascii());
        let Command::Rcpt(r) = parse_command(b"RCPT TO:<a@[IPv6:2001:db8::1]>").unwrap() else {
            panic!()
        };
        assert_eq!(r.mailbox.domain, "[IPv6:2001:db8::1]");
    }

    #[test]
    fn rcpt_to_errors() {
        let err = |l: &[u8]| parse_command(l).unwrap_err();
        assert!(matches!(err(b"RCPT TO:<>"), ParseError::BadRecipient(_)));
        assert!(matches!(
            err(b"RCPT TO:<a@[300.1.1.1]>"),
            ParseError::BadRecipient(_)
        ));
        assert!(matches!(
            err(b"RCPT TO:<a@[IPv6:zz]>"),
            ParseError::BadRecipient(_)
        ));
        assert!(matches!(
            err(b"RCPT TO:<postmaster> NOTIFY=NEVER,DELAY"),
            ParseError::BadParameter(_)
        ));
        assert!(matches!(
            err(b"RCPT TO:<a@b.c> NOTIFY=SOMETIMES"),
            ParseError::BadParameter(_)
        ));
        assert!(matches!(
            err(b"RCPT TO:<a@b.c> ORCPT=nosemicolon"),
            ParseError::BadParameter(_)
        ));
        assert!(matches!(
            err(b"RCPT TO:<a@b.c> SIZE=10"),
            ParseError::UnknownParameter(_)
        ));
        assert!(matches!(
            err(b"RCPT TO:<\"unterminated@b.c>"),
            ParseError::BadRecipient(_)
        ));
        let long = format!("RCPT TO:<a@{}.org>", "b".repeat(64));
        assert!(matches!(err(long.as_bytes()), ParseError::BadRecipient(_)));
        assert_eq!(
            ParseError::BadRecipient("x").reply().status,
            Some(Status(5, 1, 3))
        );
    }

    #[test]
    fn bdat_and_auth() {
        assert_eq!(
            parse_command(b"BDAT 1000"),
            Ok(Command::Bdat {
                size: 1000,
                last: false
            })
        );
        assert_eq!(
            parse_command(b"BDAT 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert!(parse_command(b"BDAT").is_err());
        assert!(parse_command(b"BDAT -1").is_err());
        assert!(parse_command(b"BDAT 1 FIRST").is_err());
        assert!(parse_command(b"BDAT 99999999999999999999999").is_err());
        assert_eq!(
            parse_command(b"AUTH plain AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHNlY3JldA==".into())
            })
        );
        assert_eq!(
            parse_command(b"AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert!(parse_command(b"AUTH").is_err());
        assert!(parse_command(b"AUTH PL@IN").is_err());
        assert!(parse_command(b"AUTH PLAIN a b").is_err());
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode("a+2Bb+3D"), Some("a+b=".into()));
        assert_eq!(xtext_decode("a+2b"), None);
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("+FF"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_lines(line in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            match parse_command(&line) {
                // The same round trip the fuzz target checks.
                Ok(Command::Mail(mail)) => {
                    let again = format!("MAIL FROM:{}", mail.path);
                    let Ok(Command::Mail(m2)) = parse_command(again.as_bytes()) else {
                        panic!("{again:?} does not parse back");
                    };
                    proptest::prop_assert_eq!(m2.path, mail.path);
                }
                Ok(_) => {}
                Err(e) => crate::reply::check_wire_form(&e.reply().to_bytes()).unwrap(),
            }
        }

        #[test]
        fn parsed_mailboxes_print_back_to_themselves(
            local in "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-z0-9]{1,5}){0,2}|\"[ a-z\\\\\"@<>]{0,20}\"",
            domain in "[a-z0-9]{1,10}(\\.[a-z]{2,6}){1,2}",
        ) {
            let line = format!("RCPT TO:<{local}@{domain}>");
            if let Ok(Command::Rcpt(r)) = parse_command(line.as_bytes()) {
                let again = format!("RCPT TO:<{}>", r.mailbox);
                let Ok(Command::Rcpt(r2)) = parse_command(again.as_bytes()) else {
                    panic!("printed form {again:?} does not parse");
                };
                proptest::prop_assert_eq!(r.mailbox, r2.mailbox);
            }
        }
    }
}
