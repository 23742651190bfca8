//! Command syntax that imap-codec does not parse, recognised on the complete message before
//! the codec sees it: ESEARCH's `SEARCH RETURN (…)` (RFC 4731), SEARCHRES's `$` (RFC 5182),
//! extended LIST (RFC 5258, RFC 5819, RFC 6154) and MULTIAPPEND's APPEND of several messages
//! (RFC 3502).
//!
//! A token-aware scan (atoms, quoted strings with escapes, `{n}`/`{n+}`/`~{n}` literals,
//! parentheses) finds these forms. For SEARCH and the commands taking a sequence set, the
//! extension parts come out as typed options and the rest goes to the codec (`$` becomes the
//! set [`SAVED`], which the session reads as "the saved result"); extended LIST is parsed
//! whole here. An APPEND of several messages is cut into its messages by the literals'
//! lengths (bodies may hold anything); each message's flags and date go through the codec
//! as a one-message APPEND would, so both forms accept the same syntax. An APPEND of one
//! message, and anything else, goes to the codec unchanged. Malformed extension syntax is an
//! error with a text for the client's `BAD`, never a panic.

use std::borrow::Cow;
use std::ops::Range;

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::Mailbox;

/// What `$` is replaced with inside SEARCH criteria: a sequence number no mailbox reaches.
/// Only meaningful when [`Extras::saved_set`] says a `$` was there.
pub const SAVED: u32 = u32::MAX;

/// A decoded client command.
#[derive(Debug)]
pub enum Request {
    /// A command the codec decoded, with what was taken out of it.
    Command {
        command: Command<'static>,
        extras: Extras,
    },
    /// An extended LIST, parsed here.
    List {
        tag: Tag<'static>,
        list: ListCommand,
    },
    /// An APPEND of more than one message (MULTIAPPEND), parsed here.
    Append {
        tag: Tag<'static>,
        append: AppendCommand,
    },
}

/// An APPEND of several messages (RFC 3502), in the client's order.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendCommand {
    pub mailbox: Mailbox<'static>,
    pub messages: Vec<AppendMessage>,
}

/// One message of a MULTIAPPEND.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendMessage {
    pub flags: Vec<Flag<'static>>,
    pub date: Option<DateTime>,
    pub message: Vec<u8>,
}

/// The extension parts taken out of a command before the codec decoded it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// `SEARCH RETURN (…)`.
    pub search_return: Option<SearchReturn>,
    /// A `$` stood for a sequence set: in FETCH/STORE/COPY/MOVE/UID EXPUNGE the set is `$`;
    /// in SEARCH each key `[`SAVED`]` (or `UID [`SAVED`]`) is.
    pub saved_set: bool,
}

/// ESEARCH return options (RFC 4731) and SAVE (RFC 5182). `RETURN ()` means ALL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    pub save: bool,
}

/// A STATUS data item (STATUS and LIST-STATUS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Size,
    HighestModSeq,
}

impl StatusItem {
    fn parse(atom: &str) -> Option<Self> {
        Some(match atom.to_ascii_uppercase().as_str() {
            "MESSAGES" => StatusItem::Messages,
            "RECENT" => StatusItem::Recent,
            "UIDNEXT" => StatusItem::UidNext,
            "UIDVALIDITY" => StatusItem::UidValidity,
            "UNSEEN" => StatusItem::Unseen,
            "DELETED" => StatusItem::Deleted,
            "SIZE" => StatusItem::Size,
            "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
            _ => return None,
        })
    }
}

/// LIST selection options (RFC 5258 §3.1, RFC 6154 §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListSelection {
    pub subscribed: bool,
    pub remote: bool,
    pub recursive_match: bool,
    pub special_use: bool,
}

/// LIST return options (RFC 5258 §3.2, RFC 5819, RFC 6154 §3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListReturn {
    pub subscribed: bool,
    pub children: bool,
    pub special_use: bool,
    pub status: Option<Vec<StatusItem>>,
}

/// An extended LIST command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListCommand {
    pub selection: ListSelection,
    /// The reference name, as sent.
    pub reference: Vec<u8>,
    /// One or more mailbox patterns, as sent.
    pub patterns: Vec<Vec<u8>>,
    pub returns: ListReturn,
}

/// Decodes one complete client message (literals included). `Err` is the text of the
/// `BAD` to answer.
pub fn decode(message: &[u8]) -> Result<Request, String> {
    match scan(message) {
        Ok(Some(request)) => Ok(request),
        Ok(None) => codec(message, Extras::default()),
        Err(text) => Err(text),
    }
}

fn codec(message: &[u8], extras: Extras) -> Result<Request, String> {
    match CommandCodec::default().decode(message) {
        Ok((b"", command)) => Ok(Request::Command {
            command: command.into_static(),
            extras,
        }),
        _ => Err("Syntax error".into()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Atom,
    Quoted,
    Literal,
    Open,
    Close,
    Space,
    /// The final CRLF.
    End,
}

#[derive(Clone, Debug)]
struct Token<'m> {
    kind: Kind,
    /// The token's bytes on the wire.
    span: Range<usize>,
    /// Its value: an atom's bytes, a quoted string's unescaped bytes, a literal's data (the
    /// message's own bytes, not copied: an APPEND's literal is the whole message).
    value: Cow<'m, [u8]>,
}

/// Splits `msg` into tokens from `at` on, up to and including the final CRLF.
fn lex(msg: &[u8], mut at: usize) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    while at < msg.len() {
        let start = at;
        let (kind, value) = match msg[at] {
            b' ' => {
                at += 1;
                (Kind::Space, Cow::Borrowed(&[][..]))
            }
            b'(' => {
                at += 1;
                (Kind::Open, Cow::Borrowed(&[][..]))
            }
            b')' => {
                at += 1;
                (Kind::Close, Cow::Borrowed(&[][..]))
            }
            b'\r' if msg.get(at + 1) == Some(&b'\n') && at + 2 == msg.len() => {
                at += 2;
                (Kind::End, Cow::Borrowed(&[][..]))
            }
            b'"' => {
                let mut value = Vec::new();
                at += 1;
                loop {
                    match msg.get(at) {
                        None | Some(b'\r' | b'\n') => {
                            return Err("Unterminated quoted string".into());
                        }
                        Some(b'"') => {
                            at += 1;
                            break;
                        }
                        Some(b'\\') => match msg.get(at + 1) {
                            Some(&c @ (b'"' | b'\\')) => {
                                value.push(c);
                                at += 2;
                            }
                            _ => return Err("Invalid escape in quoted string".into()),
                        },
                        Some(&c) => {
                            value.push(c);
                            at += 1;
                        }
                    }
                }
                (Kind::Quoted, Cow::Owned(value))
            }
            b'{' | b'~' if msg[at] == b'{' || msg.get(at + 1) == Some(&b'{') => {
                let open = if msg[at] == b'~' { at + 2 } else { at + 1 };
                let close = msg[open..]
                    .iter()
                    .position(|&b| b == b'}')
                    .map(|p| open + p)
                    .ok_or("Malformed literal")?;
                let spec = &msg[open..close];
                let digits = spec.strip_suffix(b"+").unwrap_or(spec);
                let n: usize = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse().ok())
                    .ok_or("Malformed literal")?;
                if msg.get(close + 1..close + 3) != Some(b"\r\n") {
                    return Err("Malformed literal".into());
                }
                let data = close + 3;
                let end = data.checked_add(n).filter(|&e| e <= msg.len());
                let end = end.ok_or("Literal cut short")?;
                at = end;
                (Kind::Literal, Cow::Borrowed(&msg[data..end]))
            }
            c if c > b' ' && c < 0x7f => {
                while at < msg.len() && msg[at] > b' ' && msg[at] < 0x7f {
                    if matches!(msg[at], b'(' | b')' | b'"') {
                        break;
                    }
                    at += 1;
                }
                (Kind::Atom, Cow::Borrowed(&msg[start..at]))
            }
            _ => return Err("Invalid character in command".into()),
        };
        tokens.push(Token {
            kind,
            span: start..at,
            value,
        });
    }
    if tokens.last().map(|t| t.kind) != Some(Kind::End) {
        return Err("Command must end with CRLF".into());
    }
    Ok(tokens)
}

fn is_atom(t: Option<&Token<'_>>, word: &str) -> bool {
    t.is_some_and(|t| t.kind == Kind::Atom && t.value.eq_ignore_ascii_case(word.as_bytes()))
}

/// `Ok(None)`: not an extended form, for the codec as it is.
fn scan(msg: &[u8]) -> Result<Option<Request>, String> {
    // `tag SP [UID SP] verb`: a line the head of which does not lex is the codec's to refuse.
    let head_end = msg
        .iter()
        .position(|&b| b == b'\r' || b == b'\n' || b == b'{' || b == b'"')
        .unwrap_or(msg.len());
    let head = &msg[..head_end];
    // The first three space-separated words, with where each ends.
    let mut words: Vec<(&[u8], usize)> = Vec::with_capacity(3);
    let mut start = 0;
    for (i, &b) in head.iter().enumerate().chain([(head.len(), &b' ')]) {
        if b == b' ' {
            words.push((&head[start..i], i));
            start = i + 1;
            if words.len() == 3 {
                break;
            }
        }
    }
    let Some(&(tag, _)) = words.first() else {
        return Ok(None);
    };
    let uid = words
        .get(1)
        .is_some_and(|w| w.0.eq_ignore_ascii_case(b"UID"));
    let Some(&(verb, verb_end)) = words.get(if uid { 2 } else { 1 }) else {
        return Ok(None);
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_slice() {
        b"FETCH" | b"STORE" | b"COPY" | b"MOVE" => saved_set(msg, verb_end),
        b"EXPUNGE" if uid => saved_set(msg, verb_end),
        b"SEARCH" => search(msg, verb_end),
        b"LIST" if !uid => list(msg, tag, verb_end),
        b"APPEND" if !uid => append(msg, tag, verb_end),
        _ => Ok(None),
    }
}

/// `… FETCH $ …`: the set is the saved result.
fn saved_set(msg: &[u8], verb_end: usize) -> Result<Option<Request>, String> {
    let rest = &msg[verb_end..];
    if !(rest.starts_with(b" $ ") || rest == b" $\r\n") {
        return Ok(None);
    }
    let mut rewritten = msg[..verb_end].to_vec();
    rewritten.extend_from_slice(b" 1");
    rewritten.extend_from_slice(&rest[2..]);
    codec(
        &rewritten,
        Extras {
            saved_set: true,
            ..Extras::default()
        },
    )
    .map(Some)
}

/// Search keys followed by this many arguments (RFC 9051 §6.4.4, RFC 5032).
fn key_args(key: &[u8]) -> usize {
    match key.to_ascii_uppercase().as_slice() {
        b"HEADER" => 2,
        b"BCC" | b"BODY" | b"CC" | b"FROM" | b"SUBJECT" | b"TEXT" | b"TO" | b"KEYWORD"
        | b"UNKEYWORD" | b"LARGER" | b"SMALLER" | b"BEFORE" | b"ON" | b"SINCE" | b"SENTBEFORE"
        | b"SENTON" | b"SENTSINCE" | b"OLDER" | b"YOUNGER" | b"CHARSET" => 1,
        _ => 0,
    }
}

fn search(msg: &[u8], verb_end: usize) -> Result<Option<Request>, String> {
    let Ok(tokens) = lex(msg, verb_end) else {
        return Ok(None);
    };
    let mut edits: Vec<(Range<usize>, &[u8])> = Vec::new();
    let mut returns = None;
    // Non-space tokens, with the index of the first criterion.
    let mut i = 0;
    if tokens.first().map(|t| t.kind) == Some(Kind::Space) && is_atom(tokens.get(1), "RETURN") {
        let (options, end) = search_return(&tokens)?;
        returns = Some(options);
        edits.push((tokens[0].span.start..tokens[end].span.start, b""));
        i = end;
    }
    let words: Vec<&Token<'_>> = tokens[i..]
        .iter()
        .filter(|t| t.kind != Kind::Space)
        .collect();
    let dollar = |t: &Token<'_>| t.kind == Kind::Atom && *t.value == *b"$";
    let sentinel = SAVED.to_string();
    let mut conflict = false;
    let mut k = 0;
    while k < words.len() {
        let t = words[k];
        k += 1;
        if t.kind != Kind::Atom {
            continue;
        }
        if t.value == sentinel.as_bytes() {
            conflict = true;
        }
        if dollar(t) {
            edits.push((t.span.clone(), sentinel.as_bytes()));
        } else if t.value.eq_ignore_ascii_case(b"UID") {
            if let Some(set) = words.get(k) {
                if dollar(set) {
                    edits.push((set.span.clone(), sentinel.as_bytes()));
                } else if set.value == sentinel.as_bytes() {
                    conflict = true;
                }
                k += 1;
            }
        } else if t.value.eq_ignore_ascii_case(b"MODSEQ") {
            k += match words.get(k) {
                Some(entry) if entry.kind == Kind::Quoted => 3,
                _ => 1,
            };
        } else {
            k += key_args(&t.value);
        }
    }
    let saved = edits.iter().any(|(_, r)| !r.is_empty());
    if saved && conflict {
        return Err(format!(
            "Sequence set {SAVED} cannot be used in a SEARCH that uses $"
        ));
    }
    if returns.is_none() && !saved {
        return Ok(None);
    }
    let mut rewritten = Vec::with_capacity(msg.len());
    let mut at = 0;
    for (range, replacement) in &edits {
        rewritten.extend_from_slice(&msg[at..range.start]);
        rewritten.extend_from_slice(replacement);
        at = range.end;
    }
    rewritten.extend_from_slice(&msg[at..]);
    codec(
        &rewritten,
        Extras {
            search_return: returns,
            saved_set: saved,
        },
    )
    .map(Some)
}

/// ` RETURN (…)` at the start of `tokens`: the options and the index of the token after
/// the closing parenthesis (a space before the criteria).
fn search_return(tokens: &[Token<'_>]) -> Result<(SearchReturn, usize), String> {
    const MALFORMED: &str = "Malformed SEARCH RETURN options: expected RETURN (option ...)";
    let mut r = SearchReturn::default();
    if tokens.get(2).map(|t| t.kind) != Some(Kind::Space)
        || tokens.get(3).map(|t| t.kind) != Some(Kind::Open)
    {
        return Err(MALFORMED.into());
    }
    let mut i = 4;
    let mut any = false;
    loop {
        let t = tokens.get(i).ok_or(MALFORMED)?;
        match t.kind {
            Kind::Close => break,
            Kind::Space if any => {}
            Kind::Atom => {
                let flag = match t.value.to_ascii_uppercase().as_slice() {
                    b"MIN" => &mut r.min,
                    b"MAX" => &mut r.max,
                    b"ALL" => &mut r.all,
                    b"COUNT" => &mut r.count,
                    b"SAVE" => &mut r.save,
                    other => {
                        return Err(format!(
                            "Unknown SEARCH RETURN option {}",
                            String::from_utf8_lossy(other)
                        ));
                    }
                };
                *flag = true;
                any = true;
            }
            _ => return Err(MALFORMED.into()),
        }
        i += 1;
    }
    if !any {
        r.all = true;
    }
    if tokens.get(i + 1).map(|t| t.kind) != Some(Kind::Space) {
        return Err(MALFORMED.into());
    }
    Ok((r, i + 1))
}

/// A cursor over LIST's tokens with strict single spaces.
struct Cursor<'t, 'm> {
    tokens: &'t [Token<'m>],
    at: usize,
}

impl<'t, 'm> Cursor<'t, 'm> {
    fn peek(&self) -> Option<&'t Token<'m>> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&'t Token<'m>> {
        let t = self.tokens.get(self.at);
        self.at += 1;
        t
    }

    fn expect(&mut self, kind: Kind, what: &str) -> Result<&'t Token<'m>, String> {
        match self.next() {
            Some(t) if t.kind == kind => Ok(t),
            _ => Err(format!("Malformed LIST: expected {what}")),
        }
    }

    /// `( word *(SP word) )`, or `()`, calling `f` for each atom (and `f` may read more).
    fn list_of(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Self, &'t Token<'m>) -> Result<(), String>,
    ) -> Result<(), String> {
        self.expect(Kind::Open, &format!("({what} ...)"))?;
        if self.peek().map(|t| t.kind) == Some(Kind::Close) {
            self.next();
            return Ok(());
        }
        loop {
            let t = self
                .next()
                .ok_or(format!("Malformed LIST: unclosed {what}"))?;
            f(self, t)?;
            match self.next().map(|t| t.kind) {
                Some(Kind::Space) => {}
                Some(Kind::Close) => return Ok(()),
                _ => return Err(format!("Malformed LIST: unclosed {what}")),
            }
        }
    }
}

fn astring(t: Option<&Token<'_>>, what: &str) -> Result<Vec<u8>, String> {
    match t {
        Some(t) if matches!(t.kind, Kind::Atom | Kind::Quoted | Kind::Literal) => {
            Ok(t.value.to_vec())
        }
        _ => Err(format!("Malformed LIST: expected {what}")),
    }
}

fn word(t: &Token<'_>, what: &str) -> Result<String, String> {
    if t.kind != Kind::Atom {
        return Err(format!("Malformed LIST: expected {what}"));
    }
    Ok(String::from_utf8_lossy(&t.value).to_ascii_uppercase())
}

fn list(msg: &[u8], tag: &[u8], verb_end: usize) -> Result<Option<Request>, String> {
    let Ok(tokens) = lex(msg, verb_end) else {
        return Ok(None);
    };
    let mut c = Cursor {
        tokens: &tokens,
        at: 0,
    };
    let mut cmd = ListCommand::default();
    let mut extended = false;
    c.expect(Kind::Space, "a space after LIST")?;
    if c.peek().map(|t| t.kind) == Some(Kind::Open) {
        extended = true;
        let sel = &mut cmd.selection;
        c.list_of("selection options", |_, t| {
            match word(t, "a selection option")?.as_str() {
                "SUBSCRIBED" => sel.subscribed = true,
                "REMOTE" => sel.remote = true,
                "RECURSIVEMATCH" => sel.recursive_match = true,
                "SPECIAL-USE" => sel.special_use = true,
                other => return Err(format!("Unknown LIST selection option {other}")),
            }
            Ok(())
        })?;
        c.expect(Kind::Space, "a space after the selection options")?;
    }
    cmd.reference = astring(c.next(), "a reference name")?;
    c.expect(Kind::Space, "a mailbox pattern")?;
    if c.peek().map(|t| t.kind) == Some(Kind::Open) {
        extended = true;
        let patterns = &mut cmd.patterns;
        c.list_of("patterns", |_, t| {
            patterns.push(astring(Some(t), "a mailbox pattern")?);
            Ok(())
        })?;
        if patterns.is_empty() {
            return Err("Malformed LIST: expected at least one pattern".into());
        }
    } else {
        cmd.patterns.push(astring(c.next(), "a mailbox pattern")?);
    }
    if c.peek().map(|t| t.kind) == Some(Kind::Space) {
        extended = true;
        c.next();
        if !is_atom(c.next(), "RETURN") {
            return Err("Malformed LIST: expected RETURN (options)".into());
        }
        c.expect(Kind::Space, "a space after RETURN")?;
        let returns = &mut cmd.returns;
        c.list_of("return options", |c, t| {
            match word(t, "a return option")?.as_str() {
                "SUBSCRIBED" => returns.subscribed = true,
                "CHILDREN" => returns.children = true,
                "SPECIAL-USE" => returns.special_use = true,
                "STATUS" => {
                    c.expect(Kind::Space, "STATUS (items)")?;
                    let mut items = Vec::new();
                    c.list_of("status items", |_, t| {
                        let name = word(t, "a status item")?;
                        items.push(
                            StatusItem::parse(&name)
                                .ok_or(format!("Unknown STATUS item {name}"))?,
                        );
                        Ok(())
                    })?;
                    if items.is_empty() {
                        return Err("Malformed LIST: RETURN STATUS needs items".into());
                    }
                    returns.status = Some(items);
                }
                other => return Err(format!("Unknown LIST return option {other}")),
            }
            Ok(())
        })?;
    }
    c.expect(Kind::End, "the end of the command")?;
    if !extended {
        return Ok(None);
    }
    if cmd.selection.recursive_match && !cmd.selection.subscribed && !cmd.selection.special_use {
        return Err("RECURSIVEMATCH needs another selection option".into());
    }
    let tag = std::str::from_utf8(tag)
        .ok()
        .and_then(|t| Tag::try_from(t).ok())
        .ok_or("Invalid tag")?
        .into_static();
    Ok(Some(Request::List { tag, list: cmd }))
}

/// `APPEND mailbox 1*(SP [flag-list SP] [date-time SP] literal)`: `Ok(None)` for one message
/// (the codec's), the messages for more. The mailbox and each message's flags and date are
/// checked by decoding `tag APPEND mailbox [flags] [date] {0}` with the codec.
fn append(msg: &[u8], tag: &[u8], verb_end: usize) -> Result<Option<Request>, String> {
    let Ok(mut tokens) = lex(msg, verb_end) else {
        return Ok(None);
    };
    let mailbox = match tokens.get(1) {
        Some(t)
            if tokens[0].kind == Kind::Space
                && matches!(t.kind, Kind::Atom | Kind::Quoted | Kind::Literal) =>
        {
            t.span.clone()
        }
        _ => return Ok(None),
    };
    // Every literal after the mailbox is a message: only flags (atoms) and a date-time (a
    // quoted string) may come between them. One literal that ends the command is an
    // ordinary APPEND; one followed by more is a MULTIAPPEND missing a message.
    let rest = &tokens[2..];
    let count = rest.iter().filter(|t| t.kind == Kind::Literal).count();
    let first = rest.iter().position(|t| t.kind == Kind::Literal);
    let single = first.is_some_and(|i| rest.get(i + 1).map(|t| t.kind) == Some(Kind::End));
    if count == 0 || count == 1 && single {
        return Ok(None);
    }
    let tag = std::str::from_utf8(tag)
        .ok()
        .and_then(|t| Tag::try_from(t).ok())
        .ok_or("Invalid tag")?
        .into_static();
    let mut messages = Vec::with_capacity(count);
    let mut decoded_mailbox = None;
    let mut c = Cursor {
        tokens: rest,
        at: 0,
    };
    loop {
        let n = messages.len() + 1;
        let malformed = |what: &str| format!("Malformed APPEND: expected {what} in message {n}");
        if c.next().map(|t| t.kind) != Some(Kind::Space) {
            return Err(malformed("a space"));
        }
        // `[flag-list SP] [date-time SP] literal`, the optional parts kept as sent.
        let start = c.peek().map_or(0, |t| t.span.start);
        if c.peek().map(|t| t.kind) == Some(Kind::Open) {
            c.next();
            loop {
                match c.next().map(|t| t.kind) {
                    Some(Kind::Close) => break,
                    Some(Kind::Space | Kind::Atom) => {}
                    _ => return Err(malformed("a flag list")),
                }
            }
            match c.next().map(|t| t.kind) {
                Some(Kind::Space) => {}
                Some(Kind::End) => return Err(malformed("a message literal")),
                _ => return Err(malformed("a space after the flags")),
            }
        }
        if c.peek().map(|t| t.kind) == Some(Kind::Quoted) {
            c.next();
            match c.next().map(|t| t.kind) {
                Some(Kind::Space) => {}
                Some(Kind::End) => return Err(malformed("a message literal")),
                _ => return Err(malformed("a space after the date-time")),
            }
        }
        let literal = match c.next() {
            Some(t) if t.kind == Kind::Literal => t,
            _ => return Err(malformed("a message literal")),
        };
        let binary = msg[literal.span.start] == b'~';
        if !binary && literal.value.contains(&0) {
            return Err(format!(
                "Message {n} contains NUL: send it as a literal8 (~{{n}}, BINARY)"
            ));
        }
        let mut single = tag.as_ref().as_bytes().to_vec();
        single.extend_from_slice(b" APPEND ");
        single.extend_from_slice(&msg[mailbox.clone()]);
        single.push(b' ');
        single.extend_from_slice(&msg[start..literal.span.start]);
        single.extend_from_slice(b"{0}\r\n\r\n");
        let (flags, date) = match CommandCodec::default().decode(&single) {
            Ok((
                b"",
                Command {
                    body:
                        CommandBody::Append {
                            mailbox: name,
                            flags,
                            date,
                            ..
                        },
                    ..
                },
            )) => {
                decoded_mailbox.get_or_insert_with(|| name.into_static());
                (flags.into_static(), date)
            }
            _ => {
                return Err(format!(
                    "Malformed APPEND: invalid flags or date-time in message {n}"
                ));
            }
        };
        // The body is taken out of its token below, not copied.
        messages.push((flags, date, 2 + c.at - 1));
        if c.peek().map(|t| t.kind) == Some(Kind::End) {
            break;
        }
    }
    let messages = messages
        .into_iter()
        .map(|(flags, date, at)| AppendMessage {
            flags,
            date,
            message: std::mem::take(&mut tokens[at].value).into_owned(),
        })
        .collect();
    let mailbox = decoded_mailbox.ok_or("Malformed APPEND: invalid mailbox name")?;
    Ok(Some(Request::Append {
        tag,
        append: AppendCommand { mailbox, messages },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extras(line: &str) -> Extras {
        match decode(line.as_bytes()) {
            Ok(Request::Command { extras, .. }) => extras,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn list(line: &str) -> ListCommand {
        match decode(line.as_bytes()) {
            Ok(Request::List { list, .. }) => list,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn search_return_options_come_out() {
        let e = extras("a SEARCH RETURN (MIN max COUNT) UNSEEN\r\n");
        assert_eq!(
            e.search_return,
            Some(SearchReturn {
                min: true,
                max: true,
                count: true,
                ..SearchReturn::default()
            })
        );
        let e = extras("a UID SEARCH RETURN () CHARSET UTF-8 TEXT {3+}\r\nabc\r\n");
        assert_eq!(e.search_return.map(|r| r.all), Some(true));
        assert_eq!(extras("a SEARCH ALL\r\n"), Extras::default());
        for (line, text) in [
            (
                "a SEARCH RETURN (BOGUS) ALL\r\n",
                "Unknown SEARCH RETURN option BOGUS",
            ),
            ("a SEARCH RETURN (MIN\r\n", "Malformed SEARCH RETURN"),
            ("a SEARCH RETURN MIN ALL\r\n", "Malformed SEARCH RETURN"),
            ("a SEARCH RETURN (MIN)ALL\r\n", "Malformed SEARCH RETURN"),
            ("a SEARCH RETURN ((MIN)) ALL\r\n", "Malformed SEARCH RETURN"),
        ] {
            let e = decode(line.as_bytes()).unwrap_err();
            assert!(e.starts_with(text), "{line}: {e}");
        }
    }

    #[test]
    fn dollar_is_replaced_only_where_a_set_goes() {
        assert!(extras("a FETCH $ (FLAGS)\r\n").saved_set);
        assert!(extras("a UID MOVE $ Trash\r\n").saved_set);
        assert!(extras("a UID EXPUNGE $\r\n").saved_set);
        assert!(!extras("a FETCH 1:3 FLAGS\r\n").saved_set);
        assert!(decode(b"a FETCH 1:$x FLAGS\r\n").is_err());
        assert!(extras("a SEARCH OR $ UID $ NOT $\r\n").saved_set);
        // `$` as a keyword or a header value is data, not the saved result.
        assert!(!extras("a SEARCH KEYWORD $ HEADER $ $\r\n").saved_set);
        assert!(extras("a SEARCH SUBJECT $ $\r\n").saved_set);
        assert!(decode(b"a SEARCH $ 4294967295\r\n").is_err());
        assert!(decode(b"a SEARCH 1,$\r\n").is_err());
    }

    #[test]
    fn extended_list_is_parsed_whole() {
        let l = list(
            "a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (INBOX {4+}\r\nSent %) RETURN (CHILDREN STATUS (MESSAGES SIZE))\r\n",
        );
        assert!(l.selection.subscribed && l.selection.recursive_match);
        assert_eq!(l.patterns, [&b"INBOX"[..], b"Sent", b"%"]);
        assert!(l.returns.children);
        assert_eq!(
            l.returns.status,
            Some(vec![StatusItem::Messages, StatusItem::Size])
        );
        let l = list("a LIST \"\" * RETURN (SPECIAL-USE)\r\n");
        assert!(l.returns.special_use && l.patterns == [b"*".to_vec()]);
        assert!(matches!(
            decode(b"a LIST \"\" *\r\n"),
            Ok(Request::Command { .. })
        ));
        for (line, text) in [
            (
                "a LIST (NOPE) \"\" *\r\n",
                "Unknown LIST selection option NOPE",
            ),
            ("a LIST (RECURSIVEMATCH) \"\" *\r\n", "RECURSIVEMATCH needs"),
            (
                "a LIST \"\" * RETURN (STATUS (BOGUS))\r\n",
                "Unknown STATUS item",
            ),
            ("a LIST \"\" * RETURN (STATUS ())\r\n", "Malformed LIST"),
            (
                "a LIST \"\" * RETURN (FOO)\r\n",
                "Unknown LIST return option FOO",
            ),
            ("a LIST \"\" () \r\n", "Malformed LIST"),
            ("a LIST (SUBSCRIBED \"\" *\r\n", "Malformed LIST"),
            ("a LIST \"\" * RETURN\r\n", "Malformed LIST"),
        ] {
            let e = decode(line.as_bytes()).unwrap_err();
            assert!(e.starts_with(text), "{line}: {e}");
        }
    }

    fn appended(line: &[u8]) -> AppendCommand {
        match decode(line) {
            Ok(Request::Append { append, .. }) => append,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
        }
    }

    #[test]
    fn multiappend_is_cut_by_literal_lengths() {
        let a = appended(
            b"a APPEND \"Sent Items\" (\\Seen $Work) \" 7-Feb-2024 10:00:00 +0100\" {5}\r\n\
              a {}\" {2+}\r\nxy ~{3}\r\n\0\r\n \"01-Jan-2000 00:00:00 +0000\" {0}\r\n\r\n",
        );
        assert_eq!(a.mailbox, Mailbox::try_from("Sent Items").unwrap());
        let got: Vec<(Vec<String>, Option<i64>, &[u8])> = a
            .messages
            .iter()
            .map(|m| {
                (
                    m.flags.iter().map(ToString::to_string).collect(),
                    m.date.as_ref().map(|d| d.as_ref().timestamp()),
                    m.message.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    vec!["\\Seen".to_string(), "$Work".to_string()],
                    Some(1_707_296_400),
                    &b"a {}\""[..]
                ),
                (vec![], None, b"xy"),
                (vec![], None, b"\0\r\n"),
                (vec![], Some(946_684_800), b""),
            ]
        );
        // The mailbox as a literal.
        let a = appended(b"b APPEND {5}\r\nINBOX {1}\r\nx {1}\r\ny\r\n");
        assert_eq!((a.mailbox, a.messages.len()), (Mailbox::Inbox, 2));
        // One message, or no literal at all: the codec's.
        for line in [
            &b"c APPEND INBOX (\\Seen) {3}\r\nabc\r\n"[..],
            b"c APPEND INBOX (\\Seen) \"01-Jan-2000 00:00:00 +0000\" {3+}\r\nabc\r\n",
            b"c APPEND {5}\r\nINBOX {3}\r\nabc\r\n",
            b"c APPEND INBOX\r\n",
        ] {
            assert!(
                !matches!(decode(line), Ok(Request::Append { .. })),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        for (line, text) in [
            (
                &b"d APPEND INBOX {1}\r\nx \"32-Jan-2024 00:00:00 +0000\" {1}\r\ny\r\n"[..],
                "Malformed APPEND: invalid flags or date-time in message 2",
            ),
            (
                b"d APPEND INBOX {1}\r\nx (\\Seen {1}\r\ny\r\n",
                "Malformed APPEND: expected a flag list in message 2",
            ),
            (
                b"d APPEND INBOX {1}\r\nx (\\Seen) {1}\r\ny \r\n",
                "Malformed APPEND: expected a message literal in message 3",
            ),
            (
                b"d APPEND INBOX {1}\r\nx (\\Seen)\r\n",
                "Malformed APPEND: expected a message literal in message 2",
            ),
            (
                b"d APPEND INBOX {1}\r\nx{1}\r\ny\r\n",
                "Malformed APPEND: expected a space in message 2",
            ),
            (
                b"d APPEND INBOX {1}\r\n\0 {1}\r\ny\r\n",
                "Message 1 contains NUL",
            ),
        ] {
            let e = decode(line).unwrap_err();
            assert!(
                e.starts_with(text),
                "{}: {e}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"a LIST SEARCH RETURN UID FETCH APPEND ()$\"\\{}+~0123456789 \r\n*%";
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut msg = b"a ".to_vec();
            let mut s = seed;
            for _ in 0..len {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                msg.push(alphabet[(s >> 33) as usize % alphabet.len()]);
            }
            msg.extend_from_slice(b"\r\n");
            let _ = decode(&msg);
        }
    }
}
