//! The IMAP session: typed commands from `imap-codec` in, response bytes out, the mail
//! store behind [`Backend`]. No socket here: the [`server`](crate::server) reads and
//! frames commands, does TLS and timeouts, and acts on the [`Outcome`].
//!
//! States (RFC 9051 §3): not authenticated → authenticated → selected → logout. Sequence
//! numbers live here (the session's view of the selected mailbox, a list of UIDs); the
//! backend only knows UIDs. Untagged EXPUNGE/EXISTS/FETCH updates are sent on NOOP,
//! CHECK, IDLE and after the session's own EXPUNGE/MOVE/COPY/APPEND, never during
//! FETCH/STORE/SEARCH by sequence number.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::command::{FetchModifier, SelectParameter, StoreModifier};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::StatusDataItemName;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::backend::{
    Account, AppendItem, AuthVerdict, Backend, BackendError, FlagOp, MailboxInfo, MailboxStatus,
    MessageMeta,
};
use crate::extended::{
    self, AppendCommand, Extras, ListCommand, Request, SAVED, SearchReturn, StatusItem,
};
use crate::mime;
use crate::mutf7;
use crate::throttle::Throttle;
use crate::wire;

/// Messages read from the backend per call while a command walks a mailbox (FETCH,
/// SEARCH, SELECT, EXPUNGE, refresh): what bounds the metadata held at once.
pub const PAGE: usize = 1000;

/// Bodies read together by FETCH and SEARCH: at most this many messages…
const BODY_BATCH: usize = 64;
/// …and at most this many octets (one larger message is read alone).
const BODY_BATCH_BYTES: u64 = 1 << 20;

/// How much a streaming [`Responses`] buffers before writing to the connection.
pub const STREAM_BUFFER: usize = 256 * 1024;

/// Where a command's responses go: a buffer, and optionally the connection it drains into.
///
/// Without a connection ([`Responses::buffered`]) everything stays in the buffer, as tests
/// and the fuzz harness want. With one ([`Responses::streaming`]) a command that answers
/// with many responses (FETCH, SEARCH, the updates of a refresh) writes the buffer out
/// whenever it holds more than the limit, and waits for the connection to take it, so a
/// slow client slows the command down instead of growing the buffer: memory stays at the
/// limit plus one response whatever the mailbox's size. The buffer derefs to its `Vec`.
pub struct Responses<'a> {
    buf: &'a mut Vec<u8>,
    conn: Option<&'a mut (dyn AsyncWrite + Unpin + Send)>,
    limit: usize,
    peak: usize,
    failed: Option<io::Error>,
}

impl<'a> Responses<'a> {
    /// Everything into `buf`.
    pub fn buffered(buf: &'a mut Vec<u8>) -> Self {
        Responses {
            buf,
            conn: None,
            limit: usize::MAX,
            peak: 0,
            failed: None,
        }
    }

    /// Into `buf`, written to `conn` whenever it holds more than `limit` bytes. What is
    /// left when the command ends is the caller's to write.
    pub fn streaming(
        buf: &'a mut Vec<u8>,
        conn: &'a mut (dyn AsyncWrite + Unpin + Send),
        limit: usize,
    ) -> Self {
        Responses {
            buf,
            conn: Some(conn),
            limit,
            peak: 0,
            failed: None,
        }
    }

    /// The most the buffer held at once so far.
    pub fn peak(&self) -> usize {
        self.peak.max(self.buf.len())
    }

    /// Why writing to the connection failed, if it did (the command was then abandoned and
    /// the connection is to be closed).
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.failed.take()
    }

    /// Between two responses: writes the buffer out if it passed the limit.
    async fn spill(&mut self) -> Result<(), Fail> {
        if self.buf.len() <= self.limit {
            return Ok(());
        }
        self.peak = self.peak.max(self.buf.len());
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let written = async {
            conn.write_all(self.buf).await?;
            conn.flush().await
        }
        .await;
        match written {
            Ok(()) => {
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                self.buf.clear();
                self.failed = Some(e);
                Err(Fail::Closed)
            }
        }
    }
}

impl Deref for Responses<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        self.buf
    }
}

impl DerefMut for Responses<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        self.buf
    }
}

/// What the server does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Read the next command.
    Continue,
    /// Send the output, then do the TLS handshake (input buffered so far is discarded).
    StartTls,
    /// Send the output, then read one SASL response line for [`Session::auth_response`].
    AuthContinue,
    /// Send the output, then wait for changes or `DONE` ([`Session::idle_refresh`],
    /// [`Session::idle_done`]).
    Idle,
    /// Send the output and close the connection.
    Logout,
    /// The login succeeded but this node does not serve the account: relay the session
    /// ([`Session::take_relay`]); the login's tagged answer is not written yet.
    Relay,
}

/// Per-connection facts and settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The server's name in the greeting.
    pub hostname: String,
    /// Whether STARTTLS can be offered.
    pub starttls: bool,
    /// The client's address (for authentication limits).
    pub peer: IpAddr,
}

#[derive(Debug)]
struct Selected {
    name: String,
    read_only: bool,
    /// `(uid, modseq)` by sequence number − 1.
    messages: Vec<(u32, u64)>,
    /// The mailbox's HIGHESTMODSEQ and UIDNEXT when the view was last brought up to date:
    /// while the backend reports the same, nothing changed.
    highest_modseq: u64,
    uid_next: u32,
    /// The last `SEARCH RETURN (SAVE …)` result (RFC 5182 `$`), as sorted UIDs; messages
    /// expunged since drop out when it is used. A new selection starts it empty.
    saved: Vec<u32>,
}

#[derive(Debug)]
enum State {
    NotAuthenticated,
    Authenticated(Account),
    Selected(Account, Selected),
    Logout,
}

/// Why a command fails: tagged NO or BAD.
#[derive(Debug)]
enum Fail {
    No(String),
    Bad(String),
    /// The connection failed while responses were written out: no answer can be sent.
    Closed,
}

impl From<BackendError> for Fail {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(_) => {
                Fail::No("[UNAVAILABLE] Temporarily unavailable, try again later".into())
            }
            BackendError::NoMailbox => Fail::No("[NONEXISTENT] No such mailbox".into()),
            BackendError::AlreadyExists => Fail::No("[ALREADYEXISTS] Mailbox exists".into()),
            BackendError::Refused(r) => Fail::No(sanitize(&r)),
        }
    }
}

fn no<T>(text: &str) -> Result<T, Fail> {
    Err(Fail::No(text.into()))
}

fn bad<T>(text: &str) -> Result<T, Fail> {
    Err(Fail::Bad(text.into()))
}

/// Response text must not contain CR/LF (it comes partly from the backend).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

/// Most messages one MULTIAPPEND may carry; more is `NO [LIMIT]`. Their total size is
/// bounded when they arrive ([`crate::Limits::max_command_bytes`]).
pub const MAX_APPEND_MESSAGES: usize = 1000;

/// One IMAP session.
pub struct Session<B> {
    backend: Arc<B>,
    throttle: Arc<Throttle>,
    config: SessionConfig,
    tls: bool,
    state: State,
    condstore: bool,
    /// `ENABLE IMAP4rev2` (RFC 9051): ESEARCH answers, UTF-8 mailbox names, no `RECENT`.
    rev2: bool,
    pending: Option<(Tag<'static>, PendingKind)>,
    /// A login whose session is to be relayed: the account, then the login's tag.
    relay: Option<(Option<Tag<'static>>, Account)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingKind {
    Auth,
    Idle,
}

impl<B: Backend> Session<B> {
    /// A session; `tls` is whether the connection is already encrypted (implicit TLS).
    pub fn new(backend: Arc<B>, throttle: Arc<Throttle>, config: SessionConfig, tls: bool) -> Self {
        Session {
            backend,
            throttle,
            config,
            tls,
            state: State::NotAuthenticated,
            condstore: false,
            rev2: false,
            pending: None,
            relay: None,
        }
    }

    /// A session relayed from another node: `account` logged in there; no greeting is sent.
    pub fn authenticated(
        backend: Arc<B>,
        throttle: Arc<Throttle>,
        config: SessionConfig,
        tls: bool,
        account: Account,
    ) -> Self {
        let mut session = Self::new(backend, throttle, config, tls);
        session.state = State::Authenticated(account);
        session
    }

    /// After [`Outcome::Relay`]: the login command's tag and the account whose session is to
    /// be relayed. The session stays unauthenticated: if relaying fails, the server answers
    /// the login `NO` and the client may try again.
    pub fn take_relay(&mut self) -> Option<(Tag<'static>, Account)> {
        match self.relay.take() {
            Some((Some(tag), account)) => Some((tag, account)),
            _ => None,
        }
    }

    /// Turns a login that found the account served elsewhere into [`Outcome::Relay`].
    fn relay_after_login(&mut self, tag: &Tag<'static>) -> Option<Outcome> {
        let (slot, _) = self.relay.as_mut()?;
        *slot = Some(tag.clone());
        Some(Outcome::Relay)
    }

    /// The greeting line.
    pub fn greeting(&self) -> Vec<u8> {
        format!(
            "* OK [CAPABILITY {}] {} IMAP4rev1 ready\r\n",
            self.capabilities(),
            sanitize(&self.config.hostname)
        )
        .into_bytes()
    }

    /// Whether the session has logged in (decides the idle timeout).
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated(_) | State::Selected(..))
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server finished the STARTTLS handshake.
    pub fn tls_started(&mut self) {
        self.tls = true;
    }

    /// The capability list for the current state.
    pub fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "IMAP4rev2"];
        if matches!(self.state, State::NotAuthenticated) {
            if self.tls {
                caps.push("AUTH=PLAIN");
                caps.push("SASL-IR");
            } else {
                if self.config.starttls {
                    caps.push("STARTTLS");
                }
                caps.push("LOGINDISABLED");
            }
        }
        caps.extend([
            "LITERAL+",
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "MOVE",
            "UIDPLUS",
            "CONDSTORE",
            "SPECIAL-USE",
            "BINARY",
            "ESEARCH",
            "SEARCHRES",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "STATUS=SIZE",
            "QUOTA",
            "QUOTA=RES-STORAGE",
        ]);
        if self.backend.supports_append_many() {
            caps.push("MULTIAPPEND");
        }
        caps.join(" ")
    }

    fn account(&self) -> Option<&Account> {
        match &self.state {
            State::Authenticated(a) | State::Selected(a, _) => Some(a),
            _ => None,
        }
    }

    /// Handles one command, appending the responses to `out`.
    pub async fn handle(&mut self, command: Command<'_>, out: &mut Vec<u8>) -> Outcome {
        self.handle_streaming(command, &mut Responses::buffered(out))
            .await
    }

    /// Handles one command, its responses into `out` (written out as they come when `out`
    /// streams). When writing fails the command is abandoned with [`Outcome::Logout`] and
    /// [`Responses::take_error`] says why.
    pub async fn handle_streaming(
        &mut self,
        command: Command<'_>,
        out: &mut Responses<'_>,
    ) -> Outcome {
        let request = Request::Command {
            command: command.into_static(),
            extras: Extras::default(),
        };
        self.handle_request(request, out).await
    }

    /// Handles one complete client message (literals included) as the server frames it:
    /// decoded by [`extended::decode`], a syntax error answered `BAD`.
    pub async fn handle_message(&mut self, message: &[u8], out: &mut Responses<'_>) -> Outcome {
        match extended::decode(message) {
            Ok(request) => self.handle_request(request, out).await,
            Err(text) => {
                let tag = imap_codec::imap_types::core::Tag::try_from(
                    String::from_utf8_lossy(
                        message
                            .split(|&b| b == b' ' || b == b'\r')
                            .next()
                            .unwrap_or_default(),
                    )
                    .into_owned(),
                );
                let tag = tag.as_ref().map_or("*", |t| t.as_ref());
                out.extend_from_slice(format!("{tag} BAD {}\r\n", sanitize(&text)).as_bytes());
                Outcome::Continue
            }
        }
    }

    /// Handles one decoded request (a command and its extension parts, or an extended LIST).
    pub async fn handle_request(&mut self, request: Request, out: &mut Responses<'_>) -> Outcome {
        let tag = match &request {
            Request::Command { command, .. } => command.tag.clone(),
            Request::List { tag, .. } | Request::Append { tag, .. } => tag.clone(),
        };
        let mut text = String::from("completed");
        // One command: reads in it may share the freshness a barrier gave the first of them.
        let work = async {
            match request {
                Request::Command { command, extras } => {
                    self.dispatch(command, extras, out, &mut text).await
                }
                Request::List { list, .. } => self
                    .list_extended(&list, out)
                    .await
                    .map(|()| Outcome::Continue),
                Request::Append { append, .. } => self
                    .append_many(append, out, &mut text)
                    .await
                    .map(|()| Outcome::Continue),
            }
        };
        let result = crate::command_scope::in_command(work).await;
        match result {
            Ok(outcome) => {
                if outcome == Outcome::Continue
                    || outcome == Outcome::Logout
                    || outcome == Outcome::StartTls
                {
                    out.extend_from_slice(format!("{} OK {text}\r\n", tag.as_ref()).as_bytes());
                }
                outcome
            }
            Err(Fail::No(t)) => {
                out.extend_from_slice(format!("{} NO {t}\r\n", tag.as_ref()).as_bytes());
                Outcome::Continue
            }
            Err(Fail::Bad(t)) => {
                out.extend_from_slice(format!("{} BAD {t}\r\n", tag.as_ref()).as_bytes());
                Outcome::Continue
            }
            Err(Fail::Closed) => Outcome::Logout,
        }
    }

    async fn dispatch(
        &mut self,
        command: Command<'_>,
        extras: Extras,
        out: &mut Responses<'_>,
        text: &mut String,
    ) -> Result<Outcome, Fail> {
        let tag = command.tag.clone().into_static();
        match command.body {
            CommandBody::Capability => {
                out.extend_from_slice(
                    format!("* CAPABILITY {}\r\n", self.capabilities()).as_bytes(),
                );
            }
            CommandBody::Noop | CommandBody::Check => {
                self.refresh(out).await?;
            }
            CommandBody::Logout => {
                out.extend_from_slice(b"* BYE logging out\r\n");
                self.state = State::Logout;
                return Ok(Outcome::Logout);
            }
            CommandBody::StartTLS => {
                if self.tls || !self.config.starttls {
                    return bad("TLS is already active or not offered");
                }
                if !matches!(self.state, State::NotAuthenticated) {
                    return bad("STARTTLS only before login");
                }
                *text = "Begin TLS negotiation now".into();
                return Ok(Outcome::StartTls);
            }
            CommandBody::Login { username, password } => {
                self.require_login_allowed()?;
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.login(&user, &pass, out).await?;
                if let Some(relay) = self.relay_after_login(&tag) {
                    return Ok(relay);
                }
                *text = "Logged in".into();
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                self.require_login_allowed()?;
                if mechanism != AuthMechanism::Plain {
                    return no("Unsupported mechanism (PLAIN only)");
                }
                match initial_response {
                    Some(ir) => {
                        self.plain(ir.declassify(), out).await?;
                        if let Some(relay) = self.relay_after_login(&tag) {
                            return Ok(relay);
                        }
                        *text = "Logged in".into();
                    }
                    None => {
                        out.extend_from_slice(b"+ \r\n");
                        self.pending = Some((tag, PendingKind::Auth));
                        return Ok(Outcome::AuthContinue);
                    }
                }
            }
            CommandBody::Id { .. } => {
                out.extend_from_slice(b"* ID (\"name\" \"tern\")\r\n");
            }
            CommandBody::Enable { capabilities } => {
                self.account().ok_or(Fail::Bad("Log in first".into()))?;
                let mut enabled = Vec::new();
                for c in capabilities.as_ref() {
                    if matches!(c, CapabilityEnable::CondStore) {
                        self.condstore = true;
                        enabled.push("CONDSTORE");
                    } else if c.to_string().eq_ignore_ascii_case("IMAP4rev2") {
                        self.rev2 = true;
                        enabled.push("IMAP4rev2");
                    }
                }
                out.extend_from_slice(
                    format!(
                        "* ENABLED{}\r\n",
                        enabled.iter().map(|c| format!(" {c}")).collect::<String>()
                    )
                    .as_bytes(),
                );
            }
            CommandBody::Namespace => {
                self.account().ok_or(Fail::Bad("Log in first".into()))?;
                out.extend_from_slice(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
            }
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                let cs = parameters
                    .iter()
                    .any(|p| matches!(p, SelectParameter::CondStore));
                *text = self.select(&mailbox, false, cs, out).await?;
            }
            CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                let cs = parameters
                    .iter()
                    .any(|p| matches!(p, SelectParameter::CondStore));
                *text = self.select(&mailbox, true, cs, out).await?;
            }
            CommandBody::Create { mailbox } => {
                let account = self.logged_in()?;
                let name = self.mailbox_name(&mailbox)?;
                if name.eq_ignore_ascii_case("INBOX") {
                    return no("[ALREADYEXISTS] INBOX always exists");
                }
                self.backend
                    .create(&account, name.trim_end_matches('/'))
                    .await?;
            }
            CommandBody::Delete { mailbox } => {
                let account = self.logged_in()?;
                let name = self.mailbox_name(&mailbox)?;
                if name == "INBOX" {
                    return no("INBOX cannot be deleted");
                }
                if self.selected_name() == Some(name.as_str()) {
                    return no("Close the mailbox first");
                }
                self.backend.delete(&account, &name).await?;
            }
            CommandBody::Rename { from, to } => {
                let account = self.logged_in()?;
                let (from, to) = (self.mailbox_name(&from)?, self.mailbox_name(&to)?);
                if to == "INBOX" {
                    return no("[ALREADYEXISTS] INBOX always exists");
                }
                self.backend.rename(&account, &from, &to).await?;
            }
            CommandBody::Subscribe { mailbox } => {
                let account = self.logged_in()?;
                self.backend
                    .subscribe(&account, &self.mailbox_name(&mailbox)?, true)
                    .await?;
            }
            CommandBody::Unsubscribe { mailbox } => {
                let account = self.logged_in()?;
                self.backend
                    .subscribe(&account, &self.mailbox_name(&mailbox)?, false)
                    .await?;
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                self.list(&reference, &mailbox_wildcard, false, out).await?;
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                self.list(&reference, &mailbox_wildcard, true, out).await?;
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => {
                let account = self.logged_in()?;
                let name = self.mailbox_name(&mailbox)?;
                let mut items = Vec::new();
                for item in item_names.iter() {
                    items.push(match item {
                        StatusDataItemName::Messages => StatusItem::Messages,
                        StatusDataItemName::Recent => StatusItem::Recent,
                        StatusDataItemName::UidNext => StatusItem::UidNext,
                        StatusDataItemName::UidValidity => StatusItem::UidValidity,
                        StatusDataItemName::Unseen => StatusItem::Unseen,
                        StatusDataItemName::Deleted => StatusItem::Deleted,
                        StatusDataItemName::Size => StatusItem::Size,
                        StatusDataItemName::HighestModSeq => StatusItem::HighestModSeq,
                        _ => return bad("Unsupported STATUS item"),
                    });
                }
                self.status_line(&account, &name, &items, out).await?;
            }
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let account = self.logged_in()?;
                let name = self.mailbox_name(&mailbox)?;
                let data = match &message {
                    LiteralOrLiteral8::Literal(l) => l.data().to_vec(),
                    LiteralOrLiteral8::Literal8(l) => l.data.to_vec(),
                };
                let flags = storable_flags(&flags)?;
                let date = match date {
                    Some(d) => d.as_ref().timestamp(),
                    None => now_secs(),
                };
                let (validity, uid) = self
                    .backend
                    .append(&account, &name, flags, date, data)
                    .await
                    .map_err(trycreate)?;
                if self.selected_name() == Some(name.as_str()) {
                    self.refresh(out).await?;
                }
                *text = format!("[APPENDUID {validity} {uid}] APPEND completed");
            }
            CommandBody::Close => {
                let (account, sel) = self.selected()?;
                if !sel.read_only {
                    let name = sel.name.clone();
                    let deleted = self.deleted_uids(&account, &name, None).await?;
                    if !deleted.is_empty() {
                        self.backend.expunge(&account, &name, &deleted).await?;
                    }
                }
                self.state = State::Authenticated(account);
            }
            CommandBody::Unselect => {
                let (account, _) = self.selected()?;
                self.state = State::Authenticated(account);
            }
            CommandBody::Expunge => {
                self.expunge(None, out).await?;
            }
            CommandBody::ExpungeUid { sequence_set } => {
                let set = match extras.saved_set {
                    true => self.saved_set(true)?,
                    false => Some(sequence_set),
                };
                match set {
                    Some(set) => self.expunge(Some(set), out).await?,
                    None => self.refresh(out).await?,
                }
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                if let Some(c) = charset {
                    let c = c.as_ref().to_ascii_uppercase();
                    if c != "UTF-8" && c != "US-ASCII" {
                        return no("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
                    }
                }
                let returns = extras.search_return.or(self.rev2.then_some(SearchReturn {
                    all: true,
                    ..SearchReturn::default()
                }));
                let save = returns.is_some_and(|r| r.save);
                let result = self
                    .search(&tag, criteria.as_ref(), uid, returns, extras.saved_set, out)
                    .await;
                // A SEARCH with SAVE that fails leaves `$` empty (RFC 5182 §2.1).
                if result.is_err()
                    && save
                    && let State::Selected(_, sel) = &mut self.state
                {
                    sel.saved.clear();
                }
                result?;
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                let changed_since = modifiers.iter().find_map(|m| match m {
                    FetchModifier::ChangedSince(v) => Some(v.get()),
                    FetchModifier::Vanished => None,
                });
                if let Some(set) = self.set_or_saved(sequence_set, uid, extras)? {
                    self.fetch(&set, macro_or_item_names, uid, changed_since, out)
                        .await?;
                }
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let unchanged_since = modifiers
                    .iter()
                    .map(|StoreModifier::UnchangedSince(v)| *v)
                    .next();
                let op = match kind {
                    StoreType::Replace => FlagOp::Replace,
                    StoreType::Add => FlagOp::Add,
                    StoreType::Remove => FlagOp::Remove,
                };
                let silent = response == StoreResponse::Silent;
                if let Some(set) = self.set_or_saved(sequence_set, uid, extras)?
                    && let Some(t) = self
                        .store(&set, op, &flags, uid, silent, unchanged_since, out)
                        .await?
                {
                    *text = t;
                }
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => {
                *text = match self.set_or_saved(sequence_set, uid, extras)? {
                    Some(set) => self.transfer(&set, &mailbox, uid, false, out).await?,
                    None => "No messages".into(),
                };
            }
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => {
                *text = match self.set_or_saved(sequence_set, uid, extras)? {
                    Some(set) => self.transfer(&set, &mailbox, uid, true, out).await?,
                    None => "No messages".into(),
                };
            }
            CommandBody::GetQuotaRoot { mailbox } => {
                let account = self.logged_in()?;
                let name = self.mailbox_name(&mailbox)?;
                // The mailbox must exist; every mailbox of the account shares the root "".
                self.backend.status(&account, &name).await?;
                let quota = self.backend.quota(&account).await?;
                let limited = quota.storage.is_some() || quota.messages.is_some();
                out.extend_from_slice(b"* QUOTAROOT ");
                self.wire_name(out, &name);
                if limited {
                    out.extend_from_slice(b" \"\"\r\n");
                    quota_line(out, &quota);
                } else {
                    out.extend_from_slice(b"\r\n");
                }
            }
            CommandBody::GetQuota { root } => {
                let account = self.logged_in()?;
                let quota = self.backend.quota(&account).await?;
                let limited = quota.storage.is_some() || quota.messages.is_some();
                if !root.as_ref().is_empty() || !limited {
                    return no("[NONEXISTENT] No such quota root");
                }
                quota_line(out, &quota);
            }
            CommandBody::SetQuota { .. } => {
                self.logged_in()?;
                return no("[NOPERM] Quotas are set by the administrator");
            }
            CommandBody::Idle => {
                self.logged_in()?;
                out.extend_from_slice(b"+ idling\r\n");
                self.pending = Some((tag, PendingKind::Idle));
                return Ok(Outcome::Idle);
            }
            _ => return bad("Command not supported"),
        }
        Ok(Outcome::Continue)
    }

    fn require_login_allowed(&self) -> Result<(), Fail> {
        if !matches!(self.state, State::NotAuthenticated) {
            return bad("Already logged in");
        }
        if !self.tls {
            return no("[PRIVACYREQUIRED] LOGIN only after STARTTLS");
        }
        Ok(())
    }

    async fn login(&mut self, user: &str, password: &str, _out: &mut Vec<u8>) -> Result<(), Fail> {
        let peer = self.config.peer;
        if !self.throttle.auth_allowed(peer, user) {
            return no("[AUTHENTICATIONFAILED] Too many failures, try later");
        }
        match self.backend.authenticate(user, password).await {
            AuthVerdict::Ok(account) if !self.backend.serves(&account) => {
                self.relay = Some((None, account));
                Ok(())
            }
            AuthVerdict::Ok(account) => {
                self.state = State::Authenticated(account);
                Ok(())
            }
            AuthVerdict::Invalid => {
                self.throttle.auth_failed(peer, user);
                no("[AUTHENTICATIONFAILED] Invalid credentials")
            }
            AuthVerdict::TempFail => no("[UNAVAILABLE] Temporary failure, try later"),
        }
    }

    async fn plain(&mut self, response: &[u8], out: &mut Vec<u8>) -> Result<(), Fail> {
        let mut parts = response.split(|&b| b == 0);
        let (Some(authz), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return bad("Malformed PLAIN response");
        };
        let (Ok(authz), Ok(user), Ok(pass)) = (
            std::str::from_utf8(authz),
            std::str::from_utf8(user),
            std::str::from_utf8(pass),
        ) else {
            return bad("Malformed PLAIN response");
        };
        if !authz.is_empty() && authz != user {
            return no("[AUTHORIZATIONFAILED] Cannot act as another user");
        }
        self.login(user, pass, out).await
    }

    /// The client's SASL response to `AUTHENTICATE PLAIN` (`None`: it cancelled with `*`).
    /// [`Outcome::Relay`] when the account is served elsewhere, otherwise
    /// [`Outcome::Continue`].
    pub async fn auth_response(&mut self, response: Option<&[u8]>, out: &mut Vec<u8>) -> Outcome {
        let Some((tag, PendingKind::Auth)) = self.pending.take() else {
            return Outcome::Continue;
        };
        let result = match response {
            None => Err(Fail::Bad("Authentication cancelled".into())),
            Some(r) => self.plain(r, out).await,
        };
        if result.is_ok()
            && let Some(relay) = self.relay_after_login(&tag)
        {
            return relay;
        }
        let line = match result {
            Ok(()) => format!("{} OK Logged in\r\n", tag.as_ref()),
            Err(Fail::No(t)) => format!("{} NO {t}\r\n", tag.as_ref()),
            Err(Fail::Bad(t)) => format!("{} BAD {t}\r\n", tag.as_ref()),
            Err(Fail::Closed) => return Outcome::Logout,
        };
        out.extend_from_slice(line.as_bytes());
        Outcome::Continue
    }

    /// The change notification IDLE waits on.
    pub fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.account().map(|a| self.backend.changes(a))
    }

    /// During IDLE: the store changed; sends the updates.
    pub async fn idle_refresh(&mut self, out: &mut Vec<u8>) {
        self.idle_refresh_streaming(&mut Responses::buffered(out))
            .await
    }

    /// As [`Session::idle_refresh`], into a possibly streaming `out`.
    pub async fn idle_refresh_streaming(&mut self, out: &mut Responses<'_>) {
        if let Err(Fail::No(t) | Fail::Bad(t)) = self.refresh(out).await {
            out.extend_from_slice(format!("* NO {t}\r\n").as_bytes());
        }
    }

    /// The client ended IDLE (`ok`: with `DONE`; otherwise with something else).
    pub fn idle_done(&mut self, ok: bool, out: &mut Vec<u8>) {
        if let Some((tag, PendingKind::Idle)) = self.pending.take() {
            let line = if ok {
                format!("{} OK IDLE terminated\r\n", tag.as_ref())
            } else {
                format!("{} BAD Expected DONE\r\n", tag.as_ref())
            };
            out.extend_from_slice(line.as_bytes());
        }
    }

    fn logged_in(&self) -> Result<Account, Fail> {
        self.account()
            .cloned()
            .ok_or(Fail::Bad("Log in first".into()))
    }

    fn selected(&self) -> Result<(Account, &Selected), Fail> {
        match &self.state {
            State::Selected(a, s) => Ok((a.clone(), s)),
            _ => bad("No mailbox selected"),
        }
    }

    fn selected_name(&self) -> Option<&str> {
        match &self.state {
            State::Selected(_, s) => Some(&s.name),
            _ => None,
        }
    }

    /// The `(uid, modseq)` list of a whole mailbox, read a page at a time: UID ranges sized
    /// to hold about [`PAGE`] messages each, from 1 to `uid_next` and then whatever arrived
    /// since. Only the list is kept, never the pages' metadata.
    async fn read_view(
        &self,
        account: &Account,
        name: &str,
        status: &MailboxStatus,
    ) -> Result<Vec<(u32, u64)>, Fail> {
        let mut view = Vec::with_capacity((status.messages as usize).min(16 * PAGE));
        self.walk_mailbox(account, name, status, |page| {
            view.extend(page.iter().map(|m| (m.uid, m.modseq)));
        })
        .await?;
        Ok(view)
    }

    async fn select(
        &mut self,
        mailbox: &Mailbox<'_>,
        read_only: bool,
        condstore: bool,
        out: &mut Responses<'_>,
    ) -> Result<String, Fail> {
        let account = self.logged_in()?;
        let name = self.mailbox_name(mailbox)?;
        if matches!(self.state, State::Selected(..)) {
            self.state = State::Authenticated(account.clone());
            out.extend_from_slice(b"* OK [CLOSED] Previous mailbox closed\r\n");
        }
        // The counters first: a change made while the list is read is newer than them, so
        // the next refresh reports it.
        let status = self.backend.status(&account, &name).await?;
        let messages = self.read_view(&account, &name, &status).await?;
        self.condstore |= condstore;
        out.extend_from_slice(format!("* FLAGS ({SYSTEM_FLAGS})\r\n").as_bytes());
        if read_only {
            out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] Read-only\r\n");
        } else {
            out.extend_from_slice(
                format!("* OK [PERMANENTFLAGS ({SYSTEM_FLAGS} \\*)] Flags permitted\r\n")
                    .as_bytes(),
            );
        }
        out.extend_from_slice(format!("* {} EXISTS\r\n", messages.len()).as_bytes());
        if self.rev2 {
            // RFC 9051 §6.3.2: the mailbox's LIST response; no RECENT.
            out.extend_from_slice(b"* LIST () \"/\" ");
            self.wire_name(out, &name);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(b"* 0 RECENT\r\n");
        }
        out.extend_from_slice(
            format!("* OK [UIDVALIDITY {}] UIDs valid\r\n", status.uid_validity).as_bytes(),
        );
        out.extend_from_slice(
            format!("* OK [UIDNEXT {}] Predicted next UID\r\n", status.uid_next).as_bytes(),
        );
        out.extend_from_slice(
            format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", status.highest_modseq).as_bytes(),
        );
        self.state = State::Selected(
            account,
            Selected {
                name,
                read_only,
                messages,
                highest_modseq: status.highest_modseq,
                uid_next: status.uid_next,
                saved: Vec::new(),
            },
        );
        Ok(if read_only {
            "[READ-ONLY] EXAMINE completed".into()
        } else {
            "[READ-WRITE] SELECT completed".into()
        })
    }

    /// APPEND of several messages (RFC 3502): all stored, with consecutive UIDs, or none.
    async fn append_many(
        &mut self,
        append: AppendCommand,
        out: &mut Responses<'_>,
        text: &mut String,
    ) -> Result<(), Fail> {
        let account = self.logged_in()?;
        if !self.backend.supports_append_many() {
            return bad("One message per APPEND: this server does not offer MULTIAPPEND");
        }
        if append.messages.len() > MAX_APPEND_MESSAGES {
            return no(&format!(
                "[LIMIT] At most {MAX_APPEND_MESSAGES} messages in one APPEND"
            ));
        }
        let name = self.mailbox_name(&append.mailbox)?;
        let now = now_secs();
        let mut items = Vec::with_capacity(append.messages.len());
        for m in append.messages {
            items.push(AppendItem {
                flags: storable_flags(&m.flags)?,
                internal_date: m.date.map_or(now, |d| d.as_ref().timestamp()),
                message: m.message,
            });
        }
        let (validity, uids) = self
            .backend
            .append_many(&account, &name, items)
            .await
            .map_err(trycreate)?;
        if self.selected_name() == Some(name.as_str()) {
            self.refresh(out).await?;
        }
        *text = format!(
            "[APPENDUID {validity} {}] APPEND completed",
            compressed_set(&uids)
        );
        Ok(())
    }

    async fn list(
        &mut self,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
        out: &mut Responses<'_>,
    ) -> Result<(), Fail> {
        let account = self.logged_in()?;
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(o) => utf8(o.as_ref())?,
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => utf8(t.as_ref())?,
            ListMailbox::String(s) => utf8(s.as_ref())?,
        };
        let kind = if lsub { "LSUB" } else { "LIST" };
        if pattern.is_empty() && !lsub {
            out.extend_from_slice(b"* LIST (\\Noselect) \"/\" \"\"\r\n");
            return Ok(());
        }
        let full = format!("{reference}{pattern}");
        let boxes = self.backend.list(&account).await?;
        for b in &boxes {
            if lsub && !b.subscribed {
                continue;
            }
            if !pattern_matches(full.as_bytes(), self.shown_name(&b.name).as_bytes()) {
                continue;
            }
            let children = boxes.iter().any(|o| {
                o.name.len() > b.name.len()
                    && o.name.starts_with(&b.name)
                    && o.name.as_bytes()[b.name.len()] == b'/'
            });
            let mut attrs = vec![if children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            }];
            if let Some(su) = b.special_use {
                attrs.push(su.attribute());
            }
            if b.subscribed && !lsub {
                attrs.push("\\Subscribed");
            }
            out.extend_from_slice(format!("* {kind} ({}) \"/\" ", attrs.join(" ")).as_bytes());
            self.wire_name(out, &b.name);
            out.extend_from_slice(b"\r\n");
        }
        if lsub {
            // Subscriptions outlive their mailboxes (DELETE does not unsubscribe): LSUB
            // shows those as `\Noselect` (RFC 3501 §6.3.9).
            for name in self.missing_subscriptions(&account, &boxes).await? {
                if pattern_matches(full.as_bytes(), self.shown_name(&name).as_bytes()) {
                    out.extend_from_slice(b"* LSUB (\\Noselect) \"/\" ");
                    self.wire_name(out, &name);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        Ok(())
    }

    /// The subscribed names that are no mailbox of `boxes`, by name.
    async fn missing_subscriptions(
        &self,
        account: &Account,
        boxes: &[MailboxInfo],
    ) -> Result<Vec<String>, Fail> {
        let existing: HashSet<&str> = boxes.iter().map(|b| b.name.as_str()).collect();
        let mut missing: Vec<String> = self
            .backend
            .subscriptions(account)
            .await?
            .into_iter()
            .filter(|name| !existing.contains(name.as_str()))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        Ok(missing)
    }

    /// A mailbox name from the client as the store spells it: modified UTF-7 (RFC 3501
    /// §5.1.3). After `ENABLE IMAP4rev2` the client sends UTF-8, converted here; before, a
    /// name with 8-bit characters is not valid syntax.
    fn mailbox_name(&self, m: &Mailbox<'_>) -> Result<String, Fail> {
        let name = mailbox_name(m)?;
        if name.is_ascii() && !self.rev2 {
            return Ok(name);
        }
        if !self.rev2 {
            return bad(
                "Mailbox names are modified UTF-7 in IMAP4rev1 (ENABLE IMAP4rev2 for UTF-8)",
            );
        }
        Ok(mutf7::encode(&name))
    }

    /// A stored mailbox name as the client reads it: UTF-8 after `ENABLE IMAP4rev2`.
    fn shown_name(&self, name: &str) -> String {
        match self.rev2 {
            true => mutf7::decode(name).unwrap_or_else(|| name.to_owned()),
            false => name.to_owned(),
        }
    }

    /// Appends a stored mailbox name as a string in the client's form.
    fn wire_name(&self, out: &mut Vec<u8>, name: &str) {
        wire::string(out, self.shown_name(name).as_bytes());
    }

    /// `* STATUS name (items)` for the mailbox `name`. SIZE and DELETED read the mailbox's
    /// metadata a page at a time.
    async fn status_line(
        &self,
        account: &Account,
        name: &str,
        items: &[StatusItem],
        out: &mut Responses<'_>,
    ) -> Result<(), Fail> {
        let st = self.backend.status(account, name).await?;
        let (mut size, mut deleted) = (0u64, 0u32);
        if items
            .iter()
            .any(|i| matches!(i, StatusItem::Size | StatusItem::Deleted))
        {
            self.walk_mailbox(account, name, &st, |page| {
                for m in page {
                    size += u64::from(m.size);
                    deleted += u32::from(has_flag(m, "\\Deleted"));
                }
            })
            .await?;
        }
        let text: Vec<String> = items
            .iter()
            .map(|item| match item {
                StatusItem::Messages => format!("MESSAGES {}", st.messages),
                StatusItem::Recent => "RECENT 0".into(),
                StatusItem::UidNext => format!("UIDNEXT {}", st.uid_next),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", st.uid_validity),
                StatusItem::Unseen => format!("UNSEEN {}", st.unseen),
                StatusItem::Deleted => format!("DELETED {deleted}"),
                StatusItem::Size => format!("SIZE {size}"),
                StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", st.highest_modseq),
            })
            .collect();
        out.extend_from_slice(b"* STATUS ");
        self.wire_name(out, name);
        out.extend_from_slice(format!(" ({})\r\n", text.join(" ")).as_bytes());
        Ok(())
    }

    /// Extended LIST (RFC 5258) with LIST-STATUS (RFC 5819) and SPECIAL-USE (RFC 6154).
    async fn list_extended(
        &mut self,
        cmd: &ListCommand,
        out: &mut Responses<'_>,
    ) -> Result<(), Fail> {
        let account = self.logged_in()?;
        let reference = utf8(&cmd.reference)?;
        let sel = cmd.selection;
        let ret = &cmd.returns;
        let mut boxes = self.backend.list(&account).await?;
        // With the SUBSCRIBED selection, subscribed names whose mailbox is gone are listed
        // too, as `\NonExistent` (RFC 5258 §3.1); they come after the mailboxes.
        let existing = boxes.len();
        if sel.subscribed {
            for name in self.missing_subscriptions(&account, &boxes).await? {
                boxes.push(MailboxInfo {
                    name,
                    special_use: None,
                    subscribed: true,
                });
            }
        }
        let shown: Vec<String> = boxes.iter().map(|b| self.shown_name(&b.name)).collect();
        let mut patterns = Vec::new();
        for p in &cmd.patterns {
            let p = utf8(p)?;
            if p.is_empty() {
                out.extend_from_slice(b"* LIST (\\Noselect) \"/\" \"\"\r\n");
            } else {
                patterns.push(format!("{reference}{p}"));
            }
        }
        let matches = |name: &str| {
            patterns
                .iter()
                .any(|p| pattern_matches(p.as_bytes(), name.as_bytes()))
        };
        let descendants = |i: usize| {
            let prefix = format!("{}/", boxes[i].name);
            boxes.iter().filter(move |o| o.name.starts_with(&prefix))
        };
        for (i, b) in boxes.iter().enumerate() {
            if !matches(&shown[i]) {
                continue;
            }
            let subscribed_child = sel.recursive_match && descendants(i).any(|o| o.subscribed);
            let special_child =
                sel.recursive_match && descendants(i).any(|o| o.special_use.is_some());
            let selected = (!sel.subscribed || b.subscribed || subscribed_child)
                && (!sel.special_use || b.special_use.is_some() || special_child);
            if !selected {
                continue;
            }
            if i >= existing {
                out.extend_from_slice(b"* LIST (\\NonExistent \\Subscribed) \"/\" ");
                self.wire_name(out, &b.name);
                out.extend_from_slice(b"\r\n");
                continue;
            }
            // `\Has(No)Children` is always given (CHILDREN or not); `\Subscribed` when asked
            // for, as SUBSCRIBED selection implies; special-use attributes always (RFC 6154).
            let prefix = format!("{}/", b.name);
            let children = boxes[..existing]
                .iter()
                .any(|o| o.name.starts_with(&prefix));
            let mut attrs = vec![match children {
                true => "\\HasChildren",
                false => "\\HasNoChildren",
            }];
            if let Some(su) = b.special_use {
                attrs.push(su.attribute());
            }
            if b.subscribed && (ret.subscribed || sel.subscribed) {
                attrs.push("\\Subscribed");
            }
            out.extend_from_slice(format!("* LIST ({}) \"/\" ", attrs.join(" ")).as_bytes());
            self.wire_name(out, &b.name);
            let mut childinfo = Vec::new();
            if subscribed_child && sel.subscribed {
                childinfo.push("\"SUBSCRIBED\"");
            }
            if special_child && sel.special_use {
                childinfo.push("\"SPECIAL-USE\"");
            }
            if !childinfo.is_empty() {
                out.extend_from_slice(
                    format!(" (\"CHILDINFO\" ({}))", childinfo.join(" ")).as_bytes(),
                );
            }
            out.extend_from_slice(b"\r\n");
            if let Some(items) = &ret.status {
                match self.status_line(&account, &b.name, items, out).await {
                    // Deleted meanwhile: its LIST line stands, without STATUS.
                    Err(Fail::No(_)) => {}
                    other => other?,
                }
            }
            out.spill().await?;
        }
        Ok(())
    }

    /// The set a FETCH/STORE/COPY/MOVE acts on: as sent, or the saved result for `$`
    /// (`None`: `$` is empty, so the command acts on no message).
    fn set_or_saved(
        &self,
        set: SequenceSet,
        uid: bool,
        extras: Extras,
    ) -> Result<Option<SequenceSet>, Fail> {
        match extras.saved_set {
            true => self.saved_set(uid),
            false => Ok(Some(set)),
        }
    }

    /// The saved result (RFC 5182 `$`) as a set of UIDs (`uid`) or of sequence numbers in
    /// the current view, consecutive numbers as ranges; messages expunged since left out.
    fn saved_set(&self, uid: bool) -> Result<Option<SequenceSet>, Fail> {
        let (_, sel) = self.selected()?;
        let mut numbers: Vec<u32> = sel
            .saved
            .iter()
            .filter_map(|u| {
                sel.messages
                    .binary_search_by_key(u, |m| m.0)
                    .ok()
                    .map(|i| (i, *u))
            })
            .map(|(i, u)| {
                if uid {
                    u
                } else {
                    u32::try_from(i + 1).unwrap_or(u32::MAX)
                }
            })
            .collect();
        numbers.sort_unstable();
        if numbers.is_empty() {
            return Ok(None);
        }
        compressed_set(&numbers)
            .parse()
            .map(Some)
            .map_err(|_| Fail::No("[SERVERBUG] Invalid saved result".into()))
    }

    /// Walks the whole mailbox's metadata a page at a time: UID ranges sized to hold about
    /// [`PAGE`] messages each, from 1 to `uid_next` and then whatever arrived since.
    async fn walk_mailbox(
        &self,
        account: &Account,
        name: &str,
        status: &MailboxStatus,
        mut f: impl FnMut(&[MessageMeta]) + Send,
    ) -> Result<(), Fail> {
        let mut from = 1u32;
        let mut width = PAGE as u32;
        loop {
            let last = from >= status.uid_next.saturating_sub(1) || from == u32::MAX;
            let to = if last {
                u32::MAX
            } else {
                from.saturating_add(width - 1).min(status.uid_next - 1)
            };
            let page = self.backend.messages(account, name, from..=to).await?;
            f(&page);
            if last || to == u32::MAX {
                return Ok(());
            }
            // Sparse UIDs (many expunged) widen the range, dense ones narrow it.
            if page.len() < PAGE / 2 {
                width = width.saturating_mul(2);
            } else if page.len() > PAGE && width > 1 {
                width /= 2;
            }
            from = to + 1;
        }
    }

    /// Brings the selected mailbox's view up to date and reports expunges, new messages
    /// and flag changes. The counters first: while HIGHESTMODSEQ, UIDNEXT and the count
    /// are what the view last saw, nothing changed and nothing more is read. Otherwise the
    /// mailbox's change feed after the view's HIGHESTMODSEQ says what changed; a backend
    /// without one has the whole mailbox compared, a page at a time.
    async fn refresh(&mut self, out: &mut Responses<'_>) -> Result<(), Fail> {
        let State::Selected(account, sel) = &self.state else {
            return Ok(());
        };
        let (account, name) = (account.clone(), sel.name.clone());
        let status = self.backend.status(&account, &name).await?;
        if status.highest_modseq == sel.highest_modseq
            && status.uid_next == sel.uid_next
            && status.messages as usize == sel.messages.len()
        {
            return Ok(());
        }
        let delta = match self.delta_from_feed(&account, &name).await? {
            Some(delta) => delta,
            None => self.delta_by_comparing(&account, &name).await?,
        };
        self.apply_delta(&account, &name, delta, out).await?;
        if let State::Selected(_, sel) = &mut self.state {
            sel.highest_modseq = status.highest_modseq;
            sel.uid_next = status.uid_next;
        }
        Ok(())
    }

    /// What changed after the view's HIGHESTMODSEQ, from the backend's change feed.
    async fn delta_from_feed(&self, account: &Account, name: &str) -> Result<Option<Delta>, Fail> {
        let State::Selected(_, sel) = &self.state else {
            return Ok(None);
        };
        let known_max = sel.messages.last().map_or(0, |m| m.0);
        let mut after = (sel.highest_modseq, u32::MAX);
        let mut delta = Delta::default();
        loop {
            let Some(page) = self
                .backend
                .changes_after(account, name, after, PAGE)
                .await?
            else {
                return Ok(None);
            };
            for c in &page.changes {
                if c.expunged {
                    delta.new.remove(&c.uid);
                    delta.changed.remove(&c.uid);
                    if c.uid <= known_max {
                        delta.expunged.insert(c.uid);
                    }
                } else if c.uid > known_max {
                    delta.new.insert(c.uid, c.modseq);
                } else {
                    delta.changed.insert(c.uid);
                }
            }
            match page.next {
                Some(next) if next > after => after = next,
                _ => return Ok(Some(delta)),
            }
        }
    }

    /// What changed, by reading the whole mailbox a page at a time and comparing.
    async fn delta_by_comparing(&self, account: &Account, name: &str) -> Result<Delta, Fail> {
        let mut delta = Delta::default();
        let count = self.view_len();
        let mut start = 0;
        while start < count {
            let page = self.view_page(start, PAGE);
            start += page.len();
            let metas = self.page_metas(account, name, &page).await?;
            let mut found = metas.iter().peekable();
            for &(_, uid, modseq) in &page {
                match found.next_if(|(_, m)| m.uid == uid) {
                    Some((_, m)) if m.modseq != modseq => {
                        delta.changed.insert(uid);
                    }
                    Some(_) => {}
                    None => {
                        delta.expunged.insert(uid);
                    }
                }
            }
        }
        let known_max = self.view_last_uid();
        if known_max < u32::MAX {
            for m in self
                .backend
                .messages(account, name, known_max + 1..=u32::MAX)
                .await?
            {
                delta.new.insert(m.uid, m.modseq);
            }
        }
        Ok(delta)
    }

    /// Reports `delta` as RFC 9051 wants it: EXPUNGEs (highest sequence number first, each
    /// valid when sent), then EXISTS, then a FETCH FLAGS for each message whose MODSEQ moved.
    async fn apply_delta(
        &mut self,
        account: &Account,
        name: &str,
        delta: Delta,
        out: &mut Responses<'_>,
    ) -> Result<(), Fail> {
        let State::Selected(_, sel) = &mut self.state else {
            return Ok(());
        };
        if !delta.expunged.is_empty() {
            for i in (0..sel.messages.len()).rev() {
                if delta.expunged.contains(&sel.messages[i].0) {
                    out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                    out.spill().await?;
                }
            }
            sel.messages.retain(|m| !delta.expunged.contains(&m.0));
        }
        if !delta.new.is_empty() {
            sel.messages.extend(delta.new);
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.messages.len()).as_bytes());
        }
        // Sequence numbers of the changed messages still in the view, in order.
        let mut changed: Vec<(usize, u32, u64)> = delta
            .changed
            .iter()
            .filter_map(|uid| {
                let i = sel.messages.binary_search_by_key(uid, |m| m.0).ok()?;
                Some((i + 1, *uid, sel.messages[i].1))
            })
            .collect();
        changed.sort_unstable();
        for page in changed.chunks(PAGE) {
            let metas = self.page_metas(account, name, page).await?;
            for (seq, m) in &metas {
                let State::Selected(_, sel) = &mut self.state else {
                    return Ok(());
                };
                let Some(entry) = sel.messages.get_mut(seq - 1) else {
                    continue;
                };
                if entry.0 != m.uid || entry.1 == m.modseq {
                    continue;
                }
                entry.1 = m.modseq;
                self.fetch_flags_line(*seq, m, out);
                out.spill().await?;
            }
        }
        Ok(())
    }

    fn fetch_flags_line(&self, seq: usize, m: &MessageMeta, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("* {seq} FETCH (UID {} FLAGS ", m.uid).as_bytes());
        wire::flags(out, &m.flags);
        if self.condstore {
            out.extend_from_slice(format!(" MODSEQ ({})", m.modseq).as_bytes());
        }
        out.extend_from_slice(b")\r\n");
    }

    fn view_len(&self) -> usize {
        match &self.state {
            State::Selected(_, sel) => sel.messages.len(),
            _ => 0,
        }
    }

    fn view_last_uid(&self) -> u32 {
        match &self.state {
            State::Selected(_, sel) => sel.messages.last().map_or(0, |m| m.0),
            _ => 0,
        }
    }

    /// Up to `max` messages of the view from index `start` on.
    fn view_page(&self, start: usize, max: usize) -> Vec<Target> {
        let State::Selected(_, sel) = &self.state else {
            return Vec::new();
        };
        sel.messages
            .iter()
            .enumerate()
            .skip(start)
            .take(max)
            .map(|(i, m)| (i + 1, m.0, m.1))
            .collect()
    }

    /// Refuses sequence numbers beyond the view (`*` in an empty mailbox included).
    fn check_set(&self, set: &SequenceSet, uid: bool) -> Result<(), Fail> {
        let State::Selected(_, sel) = &self.state else {
            return bad("No mailbox selected");
        };
        if uid {
            return Ok(());
        }
        let count = u32::try_from(sel.messages.len()).unwrap_or(u32::MAX);
        for seq in set.0.as_ref() {
            let values = match seq {
                Sequence::Single(v) => vec![v],
                Sequence::Range(a, b) => vec![a, b],
            };
            for v in values {
                if let SeqOrUid::Value(n) = v {
                    if n.get() > count {
                        return bad("Invalid message sequence number");
                    }
                } else if count == 0 {
                    return bad("Invalid message sequence number (mailbox is empty)");
                }
            }
        }
        Ok(())
    }

    /// Up to `max` of the selected messages in `set`, from view index `start` on, and the
    /// index to continue from when there may be more.
    fn resolve_page(
        &self,
        set: &SequenceSet,
        uid: bool,
        start: usize,
        max: usize,
    ) -> (Vec<Target>, Option<usize>) {
        let State::Selected(_, sel) = &self.state else {
            return (Vec::new(), None);
        };
        let msgs = &sel.messages;
        let largest = if uid {
            msgs.last().map_or(0, |m| m.0)
        } else {
            u32::try_from(msgs.len()).unwrap_or(u32::MAX)
        };
        let mut page = Vec::new();
        for (i, m) in msgs.iter().enumerate().skip(start) {
            let value = if uid {
                m.0
            } else {
                u32::try_from(i + 1).unwrap_or(u32::MAX)
            };
            if set_contains(set, value, largest) {
                if page.len() == max {
                    return (page, Some(i));
                }
                page.push((i + 1, m.0, m.1));
            }
        }
        (page, None)
    }

    /// `(sequence number, uid)` of all the selected messages in `set`.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<(usize, u32)>, Fail> {
        self.check_set(set, uid)?;
        let (all, _) = self.resolve_page(set, uid, 0, usize::MAX);
        Ok(all.into_iter().map(|(seq, uid, _)| (seq, uid)).collect())
    }

    /// The metadata of the messages `page` (in view order; those expunged meanwhile left
    /// out). Targets close together in the view are read with one UID range: a range
    /// spans at most 2 × [`PAGE`] messages of the view, and messages that arrived after the
    /// view was read have higher UIDs than any of them, so no read returns more than that.
    async fn page_metas(
        &self,
        account: &Account,
        name: &str,
        page: &[Target],
    ) -> Result<Vec<(usize, MessageMeta)>, Fail> {
        let mut metas = Vec::with_capacity(page.len());
        let mut i = 0;
        while i < page.len() {
            let first = page[i].0;
            let mut j = i + 1;
            while j < page.len() && page[j].0 - first < 2 * PAGE {
                j += 1;
            }
            let group = &page[i..j];
            let found = self
                .backend
                .messages(account, name, group[0].1..=group[group.len() - 1].1)
                .await?;
            let mut found = found.into_iter().peekable();
            for &(seq, uid, _) in group {
                while found.next_if(|m| m.uid < uid).is_some() {}
                if let Some(m) = found.next_if(|m| m.uid == uid) {
                    metas.push((seq, m));
                }
            }
            i = j;
        }
        Ok(metas)
    }

    /// FETCH, streamed: the targets a page at a time, their metadata one backend read per
    /// page, bodies in small batches, each response written out as it is made.
    async fn fetch(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        changed_since: Option<u64>,
        out: &mut Responses<'_>,
    ) -> Result<(), Fail> {
        let (account, sel) = self.selected()?;
        let (name, read_only) = (sel.name.clone(), sel.read_only);
        self.check_set(set, uid)?;
        let mut names = match items {
            MacroOrMessageDataItemNames::Macro(m) => {
                m.expand().into_iter().map(|n| n.into_static()).collect()
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(n) => {
                n.into_iter().map(|n| n.into_static()).collect::<Vec<_>>()
            }
        };
        if changed_since.is_some()
            || names
                .iter()
                .any(|n| matches!(n, MessageDataItemName::ModSeq))
        {
            self.condstore = true;
        }
        if uid && !names.iter().any(|n| matches!(n, MessageDataItemName::Uid)) {
            names.insert(0, MessageDataItemName::Uid);
        }
        let sets_seen = !read_only
            && names.iter().any(|n| {
                matches!(
                    n,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Binary { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        let has_flags = names
            .iter()
            .any(|n| matches!(n, MessageDataItemName::Flags));
        if self.condstore
            && !names
                .iter()
                .any(|n| matches!(n, MessageDataItemName::ModSeq))
        {
            names.push(MessageDataItemName::ModSeq);
        }
        let needs_body = names.iter().any(|n| {
            !matches!(
                n,
                MessageDataItemName::Uid
                    | MessageDataItemName::Flags
                    | MessageDataItemName::InternalDate
                    | MessageDataItemName::Rfc822Size
                    | MessageDataItemName::ModSeq
            )
        });
        let flags_item = [MessageDataItemName::Flags];
        let mut start = 0;
        loop {
            let (page, next) = self.resolve_page(set, uid, start, PAGE);
            let mut metas = self.page_metas(&account, &name, &page).await?;
            drop(page);
            if let Some(since) = changed_since {
                metas.retain(|(_, m)| m.modseq > since);
            }
            let mut add_flags = false;
            if sets_seen {
                let unseen: Vec<u32> = metas
                    .iter()
                    .filter(|(_, m)| !has_flag(m, "\\Seen"))
                    .map(|(_, m)| m.uid)
                    .collect();
                if !unseen.is_empty() {
                    let outcome = self
                        .backend
                        .store(
                            &account,
                            &name,
                            &unseen,
                            FlagOp::Add,
                            &["\\Seen".to_string()],
                            None,
                        )
                        .await?;
                    let mut updated = outcome.updated.into_iter().peekable();
                    for (_, m) in metas.iter_mut() {
                        while updated.next_if(|u| u.uid < m.uid).is_some() {}
                        if let Some(u) = updated.next_if(|u| u.uid == m.uid) {
                            *m = u;
                        }
                    }
                    add_flags = !has_flags;
                }
            }
            // When \Seen was set here, FLAGS goes along (RFC 9051 §6.4.5).
            let extra: &[MessageDataItemName<'_>] = if add_flags { &flags_item } else { &[] };
            let mut at = 0;
            while at < metas.len() {
                let end = if needs_body {
                    body_batch_end(&metas, at)
                } else {
                    metas.len()
                };
                let bodies = if needs_body {
                    let uids: Vec<u32> = metas[at..end].iter().map(|(_, m)| m.uid).collect();
                    self.backend.bodies(&account, &name, &uids).await?
                } else {
                    Vec::new()
                };
                for (k, (seq, meta)) in metas[at..end].iter().enumerate() {
                    let body: &[u8] = if needs_body {
                        match bodies.get(k) {
                            Some(Some(b)) => b,
                            _ => continue,
                        }
                    } else {
                        &[]
                    };
                    let structure = OnceCell::new();
                    let mut line = format!("* {seq} FETCH (").into_bytes();
                    for (i, n) in names.iter().chain(extra).enumerate() {
                        if i > 0 {
                            line.push(b' ');
                        }
                        fetch_item(n, meta, body, &structure, &mut line)?;
                    }
                    line.extend_from_slice(b")\r\n");
                    out.extend_from_slice(&line);
                    out.spill().await?;
                }
                at = end;
            }
            match next {
                Some(n) => start = n,
                None => return Ok(()),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &mut self,
        set: &SequenceSet,
        op: FlagOp,
        flags: &[Flag<'_>],
        uid: bool,
        silent: bool,
        unchanged_since: Option<u64>,
        out: &mut Responses<'_>,
    ) -> Result<Option<String>, Fail> {
        let (account, sel) = self.selected()?;
        if sel.read_only {
            return no("[READ-ONLY] Mailbox is read-only");
        }
        let name = sel.name.clone();
        let targets = self.resolve(set, uid)?;
        if unchanged_since.is_some() {
            self.condstore = true;
        }
        let flags = storable_flags(flags)?;
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        if uids.is_empty() {
            return Ok(None);
        }
        let outcome = self
            .backend
            .store(&account, &name, &uids, op, &flags, unchanged_since)
            .await?;
        let State::Selected(_, sel) = &mut self.state else {
            return Ok(None);
        };
        for m in &outcome.updated {
            if let Some(seq) = targets.iter().find(|t| t.1 == m.uid).map(|t| t.0) {
                sel.messages[seq - 1].1 = m.modseq;
            }
        }
        if !silent || self.condstore {
            for m in &outcome.updated {
                if let Some(seq) = targets.iter().find(|t| t.1 == m.uid).map(|t| t.0) {
                    if silent {
                        out.extend_from_slice(
                            format!("* {seq} FETCH (UID {} MODSEQ ({}))\r\n", m.uid, m.modseq)
                                .as_bytes(),
                        );
                    } else {
                        self.fetch_flags_line(seq, m, out);
                    }
                }
            }
        }
        if outcome.modified.is_empty() {
            return Ok(None);
        }
        let modified: Vec<String> = if uid {
            outcome.modified.iter().map(u32::to_string).collect()
        } else {
            outcome
                .modified
                .iter()
                .filter_map(|u| targets.iter().find(|t| t.1 == *u))
                .map(|t| t.0.to_string())
                .collect()
        };
        Ok(Some(format!(
            "[MODIFIED {}] Conditional STORE failed for some messages",
            modified.join(",")
        )))
    }

    /// The UIDs of the mailbox's `\Deleted` messages (within `within`), read a page at a
    /// time: the view's messages, then those that arrived since.
    async fn deleted_uids(
        &self,
        account: &Account,
        name: &str,
        within: Option<&SequenceSet>,
    ) -> Result<Vec<u32>, Fail> {
        let known_max = self.view_last_uid();
        let tail = if known_max < u32::MAX {
            self.backend
                .messages(account, name, known_max + 1..=u32::MAX)
                .await?
        } else {
            Vec::new()
        };
        let largest = tail.last().map_or(known_max, |m| m.uid);
        let wanted = |m: &MessageMeta| {
            has_flag(m, "\\Deleted") && within.is_none_or(|s| set_contains(s, m.uid, largest))
        };
        let mut uids = Vec::new();
        let count = self.view_len();
        let mut start = 0;
        while start < count {
            let page = self.view_page(start, PAGE);
            start += page.len().max(1);
            for (_, m) in self.page_metas(account, name, &page).await? {
                if wanted(&m) {
                    uids.push(m.uid);
                }
            }
        }
        uids.extend(tail.iter().filter(|m| wanted(m)).map(|m| m.uid));
        Ok(uids)
    }

    async fn expunge(
        &mut self,
        within: Option<SequenceSet>,
        out: &mut Responses<'_>,
    ) -> Result<(), Fail> {
        let (account, sel) = self.selected()?;
        if sel.read_only {
            return no("[READ-ONLY] Mailbox is read-only");
        }
        let name = sel.name.clone();
        let uids = self.deleted_uids(&account, &name, within.as_ref()).await?;
        if !uids.is_empty() {
            self.backend.expunge(&account, &name, &uids).await?;
        }
        self.refresh(out).await
    }

    async fn transfer(
        &mut self,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        remove: bool,
        out: &mut Responses<'_>,
    ) -> Result<String, Fail> {
        let (account, sel) = self.selected()?;
        if remove && sel.read_only {
            return no("[READ-ONLY] Mailbox is read-only");
        }
        let from = sel.name.clone();
        let to = self.mailbox_name(mailbox)?;
        let targets = self.resolve(set, uid)?;
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        if uids.is_empty() {
            return Ok("No messages".into());
        }
        let (validity, pairs) = if remove {
            self.backend
                .move_messages(&account, &from, &uids, &to)
                .await
        } else {
            self.backend.copy(&account, &from, &uids, &to).await
        }
        .map_err(trycreate)?;
        let code = if pairs.is_empty() {
            String::new()
        } else {
            let (src, dst) = copyuid_sets(&pairs);
            format!("[COPYUID {validity} {src} {dst}] ")
        };
        if remove {
            out.extend_from_slice(format!("* OK {code}Moved\r\n").as_bytes());
        }
        self.refresh(out).await?;
        Ok(if remove {
            "MOVE completed".into()
        } else {
            format!("{code}COPY completed")
        })
    }

    /// SEARCH: the mailbox a page of metadata at a time, bodies (when a key needs them) in
    /// small batches. The hits are kept as numbers until the search is done, so a failure
    /// halfway never leaves half a response line; the line itself is streamed.
    ///
    /// With `returns` the answer is an ESEARCH (RFC 4731) and SAVE keeps the result for `$`
    /// (RFC 5182); `saved` says the criteria use `$` (the key [`SAVED`]).
    async fn search(
        &mut self,
        tag: &Tag<'_>,
        criteria: &[SearchKey<'_>],
        uid: bool,
        returns: Option<SearchReturn>,
        saved: bool,
        out: &mut Responses<'_>,
    ) -> Result<(), Fail> {
        let (account, sel) = self.selected()?;
        let name = sel.name.clone();
        let count = sel.messages.len();
        let largest_uid = sel.messages.last().map_or(0, |m| m.0);
        let mut ctx = SearchCtx {
            count: count as u32,
            largest_uid,
            body: None,
            saved: saved.then(|| sel.saved.clone()),
        };
        let save = returns.is_some_and(|r| r.save);
        let mut hit_uids: Vec<u32> = Vec::new();
        let needs_body = criteria.iter().any(needs_body);
        let uses_modseq = criteria.iter().any(uses_modseq);
        let mut hits: Vec<u32> = Vec::new();
        let mut max_modseq = 0;
        let mut start = 0;
        while start < count {
            let page = self.view_page(start, PAGE);
            start += page.len().max(1);
            let metas = self.page_metas(&account, &name, &page).await?;
            let mut at = 0;
            while at < metas.len() {
                let end = if needs_body {
                    body_batch_end(&metas, at)
                } else {
                    metas.len()
                };
                let mut bodies = if needs_body {
                    let uids: Vec<u32> = metas[at..end].iter().map(|(_, m)| m.uid).collect();
                    self.backend.bodies(&account, &name, &uids).await?
                } else {
                    Vec::new()
                };
                for (k, (seq, meta)) in metas[at..end].iter().enumerate() {
                    ctx.body = if needs_body {
                        Some(bodies.get_mut(k).and_then(Option::take).unwrap_or_default())
                    } else {
                        None
                    };
                    let mut all_match = true;
                    for key in criteria {
                        if !self
                            .matches(key, *seq, meta, &account, &name, &mut ctx)
                            .await?
                        {
                            all_match = false;
                            break;
                        }
                    }
                    if all_match {
                        hits.push(if uid {
                            meta.uid
                        } else {
                            u32::try_from(*seq).unwrap_or(u32::MAX)
                        });
                        if save {
                            hit_uids.push(meta.uid);
                        }
                        max_modseq = max_modseq.max(meta.modseq);
                    }
                }
                at = end;
            }
        }
        ctx.body = None;
        if let Some(r) = returns {
            return self
                .esearch(
                    tag,
                    uid,
                    r,
                    &hits,
                    hit_uids,
                    uses_modseq.then_some(max_modseq),
                    out,
                )
                .await;
        }
        out.extend_from_slice(b"* SEARCH");
        for h in &hits {
            out.extend_from_slice(format!(" {h}").as_bytes());
            out.spill().await?;
        }
        if uses_modseq && !hits.is_empty() {
            out.extend_from_slice(format!(" (MODSEQ {max_modseq})").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// The ESEARCH answer (RFC 4731) for `hits` (sequence numbers or UIDs, ascending), and
    /// the saved result when SAVE was asked: MIN and/or MAX alone save only those messages,
    /// otherwise all hits are saved (RFC 5182 §2.4).
    #[allow(clippy::too_many_arguments)]
    async fn esearch(
        &mut self,
        tag: &Tag<'_>,
        uid: bool,
        r: SearchReturn,
        hits: &[u32],
        hit_uids: Vec<u32>,
        modseq: Option<u64>,
        out: &mut Responses<'_>,
    ) -> Result<(), Fail> {
        if r.save
            && let State::Selected(_, sel) = &mut self.state
        {
            sel.saved = if (r.min || r.max) && !(r.all || r.count) {
                let mut keep = Vec::new();
                if r.min {
                    keep.extend(hit_uids.first());
                }
                if r.max {
                    keep.extend(hit_uids.last());
                }
                keep.dedup();
                keep
            } else {
                hit_uids
            };
        }
        // SAVE alone answers nothing but the tagged OK.
        if !(r.min || r.max || r.all || r.count) {
            return Ok(());
        }
        out.extend_from_slice(b"* ESEARCH (TAG ");
        wire::string(out, tag.as_ref().as_bytes());
        out.extend_from_slice(b")");
        if uid {
            out.extend_from_slice(b" UID");
        }
        if let (Some(first), Some(last)) = (hits.first(), hits.last()) {
            if r.min {
                out.extend_from_slice(format!(" MIN {first}").as_bytes());
            }
            if r.max {
                out.extend_from_slice(format!(" MAX {last}").as_bytes());
            }
        }
        if r.count {
            out.extend_from_slice(format!(" COUNT {}", hits.len()).as_bytes());
        }
        if r.all && !hits.is_empty() {
            out.extend_from_slice(b" ALL ");
            let mut i = 0;
            while i < hits.len() {
                let mut j = i;
                while j + 1 < hits.len() && hits[j + 1] == hits[j].wrapping_add(1) {
                    j += 1;
                }
                if i > 0 {
                    out.push(b',');
                }
                match i == j {
                    true => out.extend_from_slice(hits[i].to_string().as_bytes()),
                    false => out.extend_from_slice(format!("{}:{}", hits[i], hits[j]).as_bytes()),
                }
                out.spill().await?;
                i = j + 1;
            }
        }
        if let Some(m) = modseq.filter(|_| !hits.is_empty()) {
            out.extend_from_slice(format!(" MODSEQ {m}").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn matches<'s>(
        &'s self,
        key: &'s SearchKey<'_>,
        seq: usize,
        meta: &'s MessageMeta,
        account: &'s Account,
        name: &'s str,
        ctx: &'s mut SearchCtx,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<bool, Fail>> + Send + 's>> {
        Box::pin(async move {
            let flag = |f: &str| has_flag(meta, f);
            let day = meta.internal_date.div_euclid(86_400);
            Ok(match key {
                SearchKey::And(keys) => {
                    for k in keys.as_ref() {
                        if !self.matches(k, seq, meta, account, name, ctx).await? {
                            return Ok(false);
                        }
                    }
                    true
                }
                SearchKey::Not(k) => !self.matches(k, seq, meta, account, name, ctx).await?,
                SearchKey::Or(a, b) => {
                    self.matches(a, seq, meta, account, name, ctx).await?
                        || self.matches(b, seq, meta, account, name, ctx).await?
                }
                SearchKey::SequenceSet(s) | SearchKey::Uid(s)
                    if ctx.saved.is_some() && is_saved_marker(s) =>
                {
                    ctx.saved
                        .as_ref()
                        .is_some_and(|saved| saved.binary_search(&meta.uid).is_ok())
                }
                SearchKey::SequenceSet(s) => set_contains(s, seq as u32, ctx.count),
                SearchKey::Uid(s) => set_contains(s, meta.uid, ctx.largest_uid),
                SearchKey::All => true,
                SearchKey::Answered => flag("\\Answered"),
                SearchKey::Unanswered => !flag("\\Answered"),
                SearchKey::Deleted => flag("\\Deleted"),
                SearchKey::Undeleted => !flag("\\Deleted"),
                SearchKey::Draft => flag("\\Draft"),
                SearchKey::Undraft => !flag("\\Draft"),
                SearchKey::Flagged => flag("\\Flagged"),
                SearchKey::Unflagged => !flag("\\Flagged"),
                SearchKey::Seen => flag("\\Seen"),
                SearchKey::Unseen => !flag("\\Seen"),
                SearchKey::Keyword(k) => flag(k.as_ref()),
                SearchKey::Unkeyword(k) => !flag(k.as_ref()),
                SearchKey::Recent | SearchKey::New => false,
                SearchKey::Old => true,
                SearchKey::Larger(n) => meta.size > *n,
                SearchKey::Smaller(n) => meta.size < *n,
                SearchKey::Since(d) => day >= iso_days(&d.as_ref().to_string())?,
                SearchKey::Before(d) => day < iso_days(&d.as_ref().to_string())?,
                SearchKey::On(d) => day == iso_days(&d.as_ref().to_string())?,
                SearchKey::ModSequence { modseq, .. } => meta.modseq >= *modseq,
                SearchKey::Header(field, value) => {
                    let body = ctx.load(self, account, name, meta.uid).await?;
                    header_contains(body, &utf8(field.as_ref())?, value.as_ref())
                }
                SearchKey::Subject(v)
                | SearchKey::From(v)
                | SearchKey::To(v)
                | SearchKey::Cc(v)
                | SearchKey::Bcc(v) => {
                    let field = match key {
                        SearchKey::Subject(_) => "Subject",
                        SearchKey::From(_) => "From",
                        SearchKey::To(_) => "To",
                        SearchKey::Cc(_) => "Cc",
                        _ => "Bcc",
                    };
                    let body = ctx.load(self, account, name, meta.uid).await?;
                    header_contains(body, field, v.as_ref())
                }
                SearchKey::Body(v) => {
                    let body = ctx.load(self, account, name, meta.uid).await?;
                    let (_, text) = split_header(body);
                    contains_ci(text, v.as_ref())
                }
                SearchKey::Text(v) => {
                    let body = ctx.load(self, account, name, meta.uid).await?;
                    contains_ci(body, v.as_ref())
                }
                SearchKey::SentBefore(d) | SearchKey::SentOn(d) | SearchKey::SentSince(d) => {
                    let wanted = iso_days(&d.as_ref().to_string())?;
                    let body = ctx.load(self, account, name, meta.uid).await?;
                    // A message without a Date: it can read matches no SENT* key.
                    match sent_day(body) {
                        None => false,
                        Some(sent) => match key {
                            SearchKey::SentBefore(_) => sent < wanted,
                            SearchKey::SentOn(_) => sent == wanted,
                            _ => sent >= wanted,
                        },
                    }
                }
            })
        })
    }
}

use std::future::Future;

/// A message of the view: `(sequence number, uid, modseq)`.
type Target = (usize, u32, u64);

/// What a refresh found changed since the view was last brought up to date.
#[derive(Debug, Default)]
struct Delta {
    /// UIDs of the view that are gone.
    expunged: HashSet<u32>,
    /// UIDs of the view whose MODSEQ may have moved.
    changed: HashSet<u32>,
    /// Messages that arrived: UID → MODSEQ.
    new: BTreeMap<u32, u64>,
}

/// Where a batch of bodies starting at `at` ends: at most [`BODY_BATCH`] messages and
/// [`BODY_BATCH_BYTES`] octets, and at least one message.
fn body_batch_end(metas: &[(usize, MessageMeta)], at: usize) -> usize {
    let mut bytes = 0u64;
    let mut end = at;
    while end < metas.len() && end - at < BODY_BATCH {
        bytes += u64::from(metas[end].1.size);
        if bytes > BODY_BATCH_BYTES && end > at {
            break;
        }
        end += 1;
    }
    end
}

/// Whether a search key reads the message's content.
fn needs_body(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::Header(..)
        | SearchKey::Subject(_)
        | SearchKey::From(_)
        | SearchKey::To(_)
        | SearchKey::Cc(_)
        | SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Text(_)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_) => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_body),
        SearchKey::Not(k) => needs_body(k),
        SearchKey::Or(a, b) => needs_body(a) || needs_body(b),
        _ => false,
    }
}

struct SearchCtx {
    count: u32,
    largest_uid: u32,
    body: Option<Vec<u8>>,
    /// The saved result (sorted UIDs) when the criteria use `$`.
    saved: Option<Vec<u32>>,
}

/// Whether a set in SEARCH criteria is where `$` stood ([`SAVED`]).
fn is_saved_marker(set: &SequenceSet) -> bool {
    matches!(set.0.as_ref(), [Sequence::Single(SeqOrUid::Value(n))] if n.get() == SAVED)
}

/// `numbers` (ascending) as a sequence set, consecutive runs as ranges.
fn compressed_set(numbers: &[u32]) -> String {
    let mut set = String::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j].wrapping_add(1) {
            j += 1;
        }
        if !set.is_empty() {
            set.push(',');
        }
        match i == j {
            true => set.push_str(&numbers[i].to_string()),
            false => set.push_str(&format!("{}:{}", numbers[i], numbers[j])),
        }
        i = j + 1;
    }
    set
}

/// `* QUOTA "" (…)` with the resources that have a limit (RFC 9208 §5.1); STORAGE in
/// units of 1024 octets, usage rounded up.
fn quota_line(out: &mut Vec<u8>, quota: &crate::backend::Quota) {
    let mut resources = Vec::new();
    if let Some((used, limit)) = quota.storage {
        resources.push(format!("STORAGE {} {}", used.div_ceil(1024), limit / 1024));
    }
    if let Some((used, limit)) = quota.messages {
        resources.push(format!("MESSAGE {used} {limit}"));
    }
    out.extend_from_slice(format!("* QUOTA \"\" ({})\r\n", resources.join(" ")).as_bytes());
}

/// The calendar day (days since 1970-01-01) of the message's `Date:` in its own time zone
/// (RFC 3501 §6.4.4 SENT*): `[day-name ","] day month year time zone` (RFC 5322 §3.3, with
/// the obsolete two- and three-digit years); `None` without a date that parses.
fn sent_day(body: &[u8]) -> Option<i64> {
    let (header, _) = split_header(body);
    let (name, whole) = header_fields(header)
        .into_iter()
        .find(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"Date"))?;
    let value = String::from_utf8_lossy(&whole[name.len() + 1..]).into_owned();
    let value = value
        .split_once(',')
        .map_or(value.as_str(), |(_, rest)| rest);
    let mut words = value.split_ascii_whitespace();
    let day: u32 = words.next()?.parse().ok()?;
    let month = words.next()?;
    let month = wire::MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month))? as u32
        + 1;
    let year = words.next()?;
    if !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut year: i64 = year.parse().ok()?;
    year += match year {
        0..=49 => 2000,
        50..=999 => 1900,
        _ => 0,
    };
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > days_in_month {
        return None;
    }
    Some(wire::days_from_civil(year, month, day))
}

impl SearchCtx {
    async fn load<B: Backend>(
        &mut self,
        session: &Session<B>,
        account: &Account,
        name: &str,
        uid: u32,
    ) -> Result<&[u8], Fail> {
        if self.body.is_none() {
            self.body = Some(
                session
                    .backend
                    .message(account, name, uid)
                    .await?
                    .unwrap_or_default(),
            );
        }
        Ok(self.body.as_deref().unwrap_or_default())
    }
}

fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        _ => false,
    }
}

fn iso_days(s: &str) -> Result<i64, Fail> {
    wire::days_of_iso_date(s).ok_or(Fail::Bad("Invalid date".into()))
}

fn trycreate(e: BackendError) -> Fail {
    match e {
        BackendError::NoMailbox => Fail::No("[TRYCREATE] No such mailbox".into()),
        e => e.into(),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn utf8(b: &[u8]) -> Result<String, Fail> {
    String::from_utf8(b.to_vec()).map_err(|_| Fail::Bad("Invalid UTF-8".into()))
}

fn mailbox_name(m: &Mailbox<'_>) -> Result<String, Fail> {
    match m {
        Mailbox::Inbox => Ok("INBOX".into()),
        Mailbox::Other(o) => {
            let name = utf8(o.as_ref())?;
            if name.is_empty()
                || name.chars().any(char::is_control)
                || name.split('/').any(str::is_empty) && !name.ends_with('/')
            {
                return bad("Invalid mailbox name");
            }
            Ok(name)
        }
    }
}

/// The flags a client may store: the system flags and keywords. A `\Flag` that RFC 9051 does
/// not define (a flag extension) is refused: the server must not later send it back, and
/// PERMANENTFLAGS does not offer it.
fn storable_flags(flags: &[Flag<'_>]) -> Result<Vec<String>, Fail> {
    flags
        .iter()
        .map(|f| match f {
            Flag::Extension(_) => Err(Fail::Bad(format!(
                "Unknown system flag {}",
                sanitize(&f.to_string())
            ))),
            f => Ok(f.to_string()),
        })
        .collect()
}

fn has_flag(m: &MessageMeta, f: &str) -> bool {
    m.flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}

/// Whether `value` is in `set`, `*` standing for `largest`.
pub fn set_contains(set: &SequenceSet, value: u32, largest: u32) -> bool {
    let v = |s: &SeqOrUid| match s {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(x) => v(x) == value,
        Sequence::Range(a, b) => {
            let (lo, hi) = (v(a).min(v(b)), v(a).max(v(b)));
            (lo..=hi).contains(&value)
        }
    })
}

/// LIST pattern matching: `*` matches anything, `%` anything but the delimiter `/`.
pub fn pattern_matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| pattern_matches(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != b'/')
            .any(|i| pattern_matches(rest, &name[i..])),
        Some((c, rest)) => {
            name.first().is_some_and(|n| n == c) && pattern_matches(rest, &name[1..])
        }
    }
}

fn split_header(body: &[u8]) -> (&[u8], &[u8]) {
    match body.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => body.split_at(i + 4),
        None => match body.windows(2).position(|w| w == b"\n\n") {
            Some(i) => body.split_at(i + 2),
            None => (body, &[]),
        },
    }
}

use mime::header_fields;

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fn header_contains(body: &[u8], field: &str, value: &[u8]) -> bool {
    let (header, _) = split_header(body);
    header_fields(header).iter().any(|(name, whole)| {
        name.trim_ascii().eq_ignore_ascii_case(field.as_bytes())
            && contains_ci(&whole[name.len() + 1..], value)
    })
}

/// The numeric part path of a section (empty for the top-level message).
fn section_path(s: &Section<'_>) -> Option<Vec<u32>> {
    let part = match s {
        Section::Part(p) | Section::Mime(p) => Some(p),
        Section::Header(p)
        | Section::Text(p)
        | Section::HeaderFields(p, _)
        | Section::HeaderFieldsNot(p, _) => p.as_ref(),
    };
    Some(part.map_or_else(Vec::new, |p| p.0.as_ref().iter().map(|n| n.get()).collect()))
}

fn path_label(path: &[u32]) -> String {
    path.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The bytes a BODY[section] names, and the section's label; `None` when the message has
/// no such part (answered with NIL).
fn body_section(
    section: &Section<'_>,
    body: &[u8],
    root: &mime::Part,
) -> (String, Option<Vec<u8>>) {
    let path = section_path(section).unwrap_or_default();
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{}.", path_label(&path))
    };
    let part = mime::part_at(root, &path);
    // The message whose header HEADER*/TEXT refer to: the top level, or an encapsulated one.
    let message = if path.is_empty() {
        Some(root)
    } else {
        part.and_then(|p| match &p.kind {
            mime::Kind::Message(inner) => Some(&**inner),
            _ => None,
        })
    };
    match section {
        Section::Part(_) => (
            path_label(&path),
            part.map(|p| body[p.body.clone()].to_vec()),
        ),
        Section::Mime(_) => (
            format!("{prefix}MIME"),
            part.map(|p| body[p.header.clone()].to_vec()),
        ),
        Section::Header(_) => (
            format!("{prefix}HEADER"),
            message.map(|m| body[m.header.clone()].to_vec()),
        ),
        Section::Text(_) => (
            format!("{prefix}TEXT"),
            message.map(|m| body[m.body.clone()].to_vec()),
        ),
        Section::HeaderFields(_, names) | Section::HeaderFieldsNot(_, names) => {
            let not = matches!(section, Section::HeaderFieldsNot(..));
            let wanted: Vec<&[u8]> = names.as_ref().iter().map(|a| a.as_ref()).collect();
            let data = message.map(|m| {
                let mut data = Vec::new();
                for (name, whole) in header_fields(&body[m.header.clone()]) {
                    let hit = wanted
                        .iter()
                        .any(|w| w.eq_ignore_ascii_case(name.trim_ascii()));
                    if hit != not {
                        data.extend_from_slice(whole);
                    }
                }
                data.extend_from_slice(b"\r\n");
                data
            });
            let mut quoted = Vec::new();
            for (i, w) in wanted.iter().enumerate() {
                if i > 0 {
                    quoted.push(b' ');
                }
                wire::string(&mut quoted, w);
            }
            let kind = if not {
                "HEADER.FIELDS.NOT"
            } else {
                "HEADER.FIELDS"
            };
            (
                format!("{prefix}{kind} ({})", String::from_utf8_lossy(&quoted)),
                data,
            )
        }
    }
}

/// Appends `data` (or NIL) after its item label, cut to `partial`. Content with NUL
/// bytes goes as a literal8 (`~{n}`, RFC 3516), which only BINARY may use.
fn section_value(
    out: &mut Vec<u8>,
    label: &str,
    data: Option<&[u8]>,
    partial: Option<(u32, std::num::NonZeroU32)>,
    binary: bool,
) {
    out.extend_from_slice(label.as_bytes());
    let data = match (data, partial) {
        (None, _) => {
            out.extend_from_slice(b" NIL");
            return;
        }
        (Some(d), Some((origin, len))) => {
            out.extend_from_slice(format!("<{origin}>").as_bytes());
            let start = (origin as usize).min(d.len());
            let end = start.saturating_add(len.get() as usize).min(d.len());
            &d[start..end]
        }
        (Some(d), None) => d,
    };
    out.push(b' ');
    if binary && data.contains(&0) {
        out.push(b'~');
    }
    wire::literal(out, data);
}

/// The transfer-decoded content a BINARY[section] names; `Ok(None)` for no such part.
fn binary_section(path: &[u32], body: &[u8], root: &mime::Part) -> Result<Option<Vec<u8>>, Fail> {
    if path.is_empty() {
        return Ok(Some(body.to_vec()));
    }
    match mime::part_at(root, path) {
        None => Ok(None),
        Some(part) => mime::decoded_body(body, part).map(Some).map_err(|e| {
            Fail::No(format!(
                "[UNKNOWN-CTE] Cannot decode content-transfer-encoding {}",
                sanitize(&e.0)
            ))
        }),
    }
}

fn fetch_item(
    n: &MessageDataItemName<'_>,
    meta: &MessageMeta,
    body: &[u8],
    structure: &OnceCell<mime::Part>,
    out: &mut Vec<u8>,
) -> Result<(), Fail> {
    let root = || structure.get_or_init(|| mime::parse(body));
    match n {
        MessageDataItemName::Uid => out.extend_from_slice(format!("UID {}", meta.uid).as_bytes()),
        MessageDataItemName::Flags => {
            out.extend_from_slice(b"FLAGS ");
            wire::flags(out, &meta.flags);
        }
        MessageDataItemName::InternalDate => {
            out.extend_from_slice(
                format!("INTERNALDATE {}", wire::internal_date(meta.internal_date)).as_bytes(),
            );
        }
        MessageDataItemName::Rfc822Size => {
            out.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes())
        }
        MessageDataItemName::ModSeq => {
            out.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes())
        }
        MessageDataItemName::Rfc822 => {
            out.extend_from_slice(b"RFC822 ");
            wire::literal(out, body);
        }
        MessageDataItemName::Rfc822Header => {
            out.extend_from_slice(b"RFC822.HEADER ");
            wire::literal(out, split_header(body).0);
        }
        MessageDataItemName::Rfc822Text => {
            out.extend_from_slice(b"RFC822.TEXT ");
            wire::literal(out, split_header(body).1);
        }
        MessageDataItemName::Envelope => {
            out.extend_from_slice(b"ENVELOPE ");
            mime::envelope(out, &body[root().header.clone()]);
        }
        MessageDataItemName::BodyStructure => {
            out.extend_from_slice(b"BODYSTRUCTURE ");
            mime::body_structure(out, body, root(), true);
        }
        MessageDataItemName::Body => {
            out.extend_from_slice(b"BODY ");
            mime::body_structure(out, body, root(), false);
        }
        MessageDataItemName::BodyExt {
            section, partial, ..
        } => {
            let (label, data) = match section {
                None => (String::new(), Some(body.to_vec())),
                Some(s) => body_section(s, body, root()),
            };
            section_value(
                out,
                &format!("BODY[{label}]"),
                data.as_deref(),
                *partial,
                false,
            );
        }
        MessageDataItemName::Binary {
            section, partial, ..
        } => {
            let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
            let data = binary_section(&path, body, root())?;
            let label = format!("BINARY[{}]", path_label(&path));
            section_value(out, &label, data.as_deref(), *partial, true);
        }
        MessageDataItemName::BinarySize { section } => {
            let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
            let size = binary_section(&path, body, root())?.map_or(0, |d| d.len());
            out.extend_from_slice(format!("BINARY.SIZE[{}] {size}", path_label(&path)).as_bytes());
        }
    }
    Ok(())
}

/// COPYUID's source and destination UID sets (RFC 4315), pair by pair in the same order, with
/// every run that climbs by one on both sides written as one range: copying a whole mailbox of
/// 100,000 messages answers `1:100000 …` rather than a megabyte of single UIDs.
fn copyuid_sets(pairs: &[(u32, u32)]) -> (String, String) {
    let (mut src, mut dst) = (String::new(), String::new());
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len()
            && pairs[j + 1].0 == pairs[j].0.wrapping_add(1)
            && pairs[j + 1].1 == pairs[j].1.wrapping_add(1)
        {
            j += 1;
        }
        if !src.is_empty() {
            src.push(',');
            dst.push(',');
        }
        if i == j {
            src.push_str(&pairs[i].0.to_string());
            dst.push_str(&pairs[i].1.to_string());
        } else {
            src.push_str(&format!("{}:{}", pairs[i].0, pairs[j].0));
            dst.push_str(&format!("{}:{}", pairs[i].1, pairs[j].1));
        }
        i = j + 1;
    }
    (src, dst)
}

#[cfg(test)]
mod tests {
    #[test]
    fn copyuid_sets_write_runs_as_ranges() {
        let pairs = [(1, 10), (2, 11), (3, 12), (5, 13), (6, 20), (7, 21), (9, 8)];
        assert_eq!(
            copyuid_sets(&pairs),
            ("1:3,5,6:7,9".to_owned(), "10:12,13,20:21,8".to_owned())
        );
        let whole: Vec<(u32, u32)> = (1..=100_000).map(|u| (u, u + 100_000)).collect();
        assert_eq!(
            copyuid_sets(&whole),
            ("1:100000".to_owned(), "100001:200000".to_owned())
        );
        assert_eq!(copyuid_sets(&[(4, 4)]), ("4".to_owned(), "4".to_owned()));
    }

    use super::*;
    use crate::limits::Limits;
    use crate::memory::MemoryBackend;
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder;

    fn session(tls: bool) -> (Arc<MemoryBackend>, Session<MemoryBackend>) {
        let backend = Arc::new(MemoryBackend::new());
        backend.add_account("alice", "secret");
        let config = SessionConfig {
            hostname: "imap.test".into(),
            starttls: true,
            peer: "192.0.2.9".parse().unwrap(),
        };
        let s = Session::new(
            Arc::clone(&backend),
            Throttle::new(Limits::default()),
            config,
            tls,
        );
        (backend, s)
    }

    async fn run(s: &mut Session<MemoryBackend>, line: &str) -> String {
        let (_, command) = CommandCodec::default()
            .decode(line.as_bytes())
            .expect("parses");
        let mut out = Vec::new();
        s.handle(command, &mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn login_needs_tls_and_state_rules_hold() {
        let (_, mut s) = session(false);
        assert!(
            run(&mut s, "a LOGIN alice secret\r\n")
                .await
                .starts_with("a NO [PRIVACYREQUIRED]")
        );
        assert!(run(&mut s, "b SELECT INBOX\r\n").await.starts_with("b BAD"));
        let (_, mut s) = session(true);
        assert!(
            run(&mut s, "c AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n")
                .await
                .starts_with("c OK")
        );
        assert!(
            run(&mut s, "d FETCH 1 FLAGS\r\n")
                .await
                .starts_with("d BAD No mailbox selected")
        );
        assert!(
            run(&mut s, "e LOGIN alice secret\r\n")
                .await
                .starts_with("e BAD")
        );
    }

    #[tokio::test]
    async fn backend_unavailable_is_no_unavailable() {
        let (backend, mut s) = session(true);
        run(&mut s, "a LOGIN alice secret\r\n").await;
        backend.set_unavailable(true);
        assert!(
            run(&mut s, "b SELECT INBOX\r\n")
                .await
                .contains("b NO [UNAVAILABLE]")
        );
        backend.set_unavailable(false);
        assert!(
            run(&mut s, "c SELECT INBOX\r\n")
                .await
                .contains("c OK [READ-WRITE]")
        );
    }

    #[tokio::test]
    async fn fetch_store_search_expunge_by_sequence_and_uid() {
        let (backend, mut s) = session(true);
        run(&mut s, "a LOGIN alice secret\r\n").await;
        for body in [
            "Subject: one\r\n\r\nhello\r\n",
            "Subject: two\r\n\r\nworld\r\n",
            "Subject: three\r\n\r\n!\r\n",
        ] {
            backend.deliver("alice", "INBOX", body.as_bytes()).unwrap();
        }
        let out = run(&mut s, "b SELECT INBOX\r\n").await;
        assert!(
            out.contains("* 3 EXISTS") && out.contains("[UIDNEXT 4]"),
            "{out}"
        );
        let out = run(&mut s, "c UID FETCH 2:* (FLAGS BODY.PEEK[HEADER])\r\n").await;
        assert!(
            out.contains("* 2 FETCH (UID 2 FLAGS () BODY[HEADER] {16}\r\nSubject: two\r\n\r\n)"),
            "{out}"
        );
        assert!(out.contains("* 3 FETCH (UID 3"), "{out}");
        let out = run(&mut s, "d STORE 1:2 +FLAGS.SILENT (\\Deleted)\r\n").await;
        assert_eq!(out, "d OK completed\r\n");
        let out = run(&mut s, "e SEARCH DELETED\r\n").await;
        assert!(out.starts_with("* SEARCH 1 2\r\n"), "{out}");
        let out = run(&mut s, "f UID EXPUNGE 2\r\n").await;
        assert!(out.starts_with("* 2 EXPUNGE\r\nf OK"), "{out}");
        let out = run(&mut s, "g FETCH 2 UID\r\n").await;
        assert!(out.starts_with("* 2 FETCH (UID 3)"), "{out}");
        assert!(
            run(&mut s, "h FETCH 3 UID\r\n")
                .await
                .starts_with("h BAD Invalid message sequence number")
        );
        let out = run(&mut s, "i EXAMINE INBOX\r\n").await;
        assert!(
            out.contains("[CLOSED]") && out.contains("i OK [READ-ONLY]"),
            "{out}"
        );
        assert!(
            run(&mut s, "j STORE 1 +FLAGS (\\Seen)\r\n")
                .await
                .starts_with("j NO [READ-ONLY]")
        );
    }

    #[tokio::test]
    async fn fetch_envelope_structure_parts_and_binary() {
        let (backend, mut s) = session(true);
        run(&mut s, "a LOGIN alice secret\r\n").await;
        let mixed = crate::mime::tests::MIXED.replace('\n', "\r\n");
        backend.deliver("alice", "INBOX", mixed.as_bytes()).unwrap();
        backend
            .deliver(
                "alice",
                "INBOX",
                b"Subject: uu\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n",
            )
            .unwrap();
        run(&mut s, "b SELECT INBOX\r\n").await;
        let out = run(&mut s, "c FETCH 1 (ENVELOPE BODY)\r\n").await;
        assert!(
            out.starts_with(
                "* 1 FETCH (ENVELOPE (NIL \"report\" ((NIL NIL \"alice\" \"example.org\")) "
            ) && out.contains(" BODY ((\"text\" \"plain\" NIL NIL NIL \"7bit\" 13 1)(")
                && out.ends_with("\"mixed\"))\r\nc OK completed\r\n"),
            "{out}"
        );
        let out = run(&mut s, "d FETCH 1 (BODY.PEEK[3.2] BODY.PEEK[3.HEADER.FIELDS (Subject)] BODY.PEEK[2.MIME]<0.12> BODY.PEEK[9])\r\n").await;
        assert_eq!(
            out,
            "* 1 FETCH (BODY[3.2] {12}\r\n<b>inner</b> \
             BODY[3.HEADER.FIELDS (\"Subject\")] {18}\r\nSubject: inner\r\n\r\n \
             BODY[2.MIME]<0> {12}\r\nContent-Type BODY[9] NIL)\r\nd OK completed\r\n"
        );
        let out = run(
            &mut s,
            "e FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1]<4.4>)\r\n",
        )
        .await;
        assert_eq!(
            out,
            "* 1 FETCH (BINARY[2] ~{4}\r\n\0\x01\x02\u{ff} BINARY.SIZE[2] 4 BINARY[1]<4> {4}\r\natta)\r\ne OK completed\r\n"
                .replace('\u{ff}', "\u{fffd}"),
            "{out}"
        );
        let out = run(&mut s, "f FETCH 1 (FLAGS)\r\n").await;
        assert!(!out.contains("\\Seen"), "PEEK leaves \\Seen alone: {out}");
        let out = run(&mut s, "g FETCH 1 (BINARY[1])\r\n").await;
        assert!(out.contains("\\Seen"), "BINARY sets \\Seen: {out}");
        let out = run(&mut s, "h FETCH 2 (BINARY[1])\r\n").await;
        assert_eq!(
            out,
            "h NO [UNKNOWN-CTE] Cannot decode content-transfer-encoding x-uuencode\r\n"
        );
        assert!(
            run(&mut s, "i FETCH 1:2 BODYSTRUCTURE\r\n")
                .await
                .contains("* 2 FETCH (BODYSTRUCTURE (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"x-uuencode\" 7 1 NIL NIL NIL NIL))")
        );
    }

    /// Runs `line` with the responses streamed into `sink` through a buffer of `limit`
    /// bytes; returns everything written and the most the buffer held.
    async fn run_streaming(
        s: &mut Session<MemoryBackend>,
        line: &str,
        limit: usize,
    ) -> (String, usize) {
        let (_, command) = CommandCodec::default()
            .decode(line.as_bytes())
            .expect("parses");
        let (mut buf, mut sink) = (Vec::new(), Vec::new());
        let mut responses = Responses::streaming(&mut buf, &mut sink, limit);
        s.handle_streaming(command, &mut responses).await;
        let peak = responses.peak();
        assert!(responses.take_error().is_none());
        sink.extend_from_slice(&buf);
        (String::from_utf8_lossy(&sink).into_owned(), peak)
    }

    #[tokio::test]
    async fn fetch_and_search_stream_within_the_buffer_limit() {
        const MESSAGES: usize = 3000;
        const LIMIT: usize = 16 * 1024;
        let (backend, mut s) = session(true);
        run(&mut s, "a LOGIN alice secret\r\n").await;
        for i in 1..=MESSAGES {
            let needle = if i % 1000 == 7 { "needle" } else { "hay" };
            let body =
                format!("Subject: message {i}\r\nFrom: x@example.org\r\n\r\n{needle} {i}\r\n");
            backend.deliver("alice", "INBOX", body.as_bytes()).unwrap();
        }
        let out = run(&mut s, "b SELECT INBOX\r\n").await;
        assert!(out.contains(&format!("* {MESSAGES} EXISTS")), "{out}");
        let (out, peak) = run_streaming(
            &mut s,
            "c FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
            LIMIT,
        )
        .await;
        assert_eq!(out.matches(" FETCH (UID ").count(), MESSAGES);
        assert!(out.contains("* 2999 FETCH (UID 2999 FLAGS () RFC822.SIZE 56 BODY[HEADER.FIELDS (\"SUBJECT\")] {25}\r\nSubject: message 2999\r\n\r\n)\r\n"), "{}", &out[out.len() - 400..]);
        assert!(out.ends_with("c OK completed\r\n"));
        // The buffer never holds more than the limit and one response; the backend is
        // never asked for more than two pages of metadata at once.
        assert!(peak > LIMIT && peak < LIMIT + 200, "peak {peak}");
        assert!(
            backend.largest_read() <= 2 * PAGE,
            "{}",
            backend.largest_read()
        );
        // Streamed or buffered, the bytes are the same.
        let buffered = run(
            &mut s,
            "c FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
        )
        .await;
        assert_eq!(buffered, out);

        let (out, peak) = run_streaming(&mut s, "d UID SEARCH TEXT needle\r\n", 64).await;
        assert_eq!(out, "* SEARCH 7 1007 2007\r\nd OK completed\r\n");
        assert!(peak < 64 + 16, "peak {peak}");
        let (out, peak) = run_streaming(&mut s, "e SEARCH UNSEEN\r\n", 1024).await;
        assert_eq!(out.matches(' ').count(), MESSAGES + 1 + 2);
        assert!(peak < 1024 + 16, "peak {peak}");
        // A page boundary inside a sparse set and CHANGEDSINCE.
        let (out, _) = run_streaming(
            &mut s,
            "f FETCH 1,1000,1001,3000 (UID) (CHANGEDSINCE 1000)\r\n",
            LIMIT,
        )
        .await;
        assert_eq!(
            out,
            "* 1000 FETCH (UID 1000 MODSEQ (1001))\r\n* 1001 FETCH (UID 1001 MODSEQ (1002))\r\n\
             * 3000 FETCH (UID 3000 MODSEQ (3001))\r\nf OK completed\r\n"
        );
        assert!(
            backend.largest_read() <= 2 * PAGE,
            "{}",
            backend.largest_read()
        );
    }

    #[tokio::test]
    async fn a_failed_connection_abandons_the_command() {
        struct Broken;
        impl tokio::io::AsyncWrite for Broken {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &[u8],
            ) -> std::task::Poll<io::Result<usize>> {
                std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let (backend, mut s) = session(true);
        run(&mut s, "a LOGIN alice secret\r\n").await;
        for _ in 0..50 {
            backend
                .deliver("alice", "INBOX", b"Subject: x\r\n\r\nx\r\n")
                .unwrap();
        }
        run(&mut s, "b SELECT INBOX\r\n").await;
        let (_, command) = CommandCodec::default()
            .decode(b"c FETCH 1:* RFC822\r\n".as_slice())
            .unwrap();
        let mut buf = Vec::new();
        let mut broken = Broken;
        let mut responses = Responses::streaming(&mut buf, &mut broken, 100);
        assert_eq!(
            s.handle_streaming(command, &mut responses).await,
            Outcome::Logout
        );
        assert_eq!(
            responses.take_error().map(|e| e.kind()),
            Some(io::ErrorKind::BrokenPipe)
        );
    }

    #[tokio::test]
    async fn refresh_reports_expunges_arrivals_and_flag_changes_from_the_feed() {
        let (backend, mut s) = session(true);
        let account = Account {
            name: "alice".into(),
        };
        run(&mut s, "a LOGIN alice secret\r\n").await;
        for _ in 0..4 {
            backend
                .deliver("alice", "INBOX", b"Subject: x\r\n\r\nx\r\n")
                .unwrap();
        }
        run(&mut s, "b SELECT INBOX\r\n").await;
        assert_eq!(run(&mut s, "c NOOP\r\n").await, "c OK completed\r\n");
        // Another session: flags on 3, expunges 1 and 4, delivers two (one then expunged).
        let flag = ["\\Seen".to_string()];
        backend
            .store(&account, "INBOX", &[3], FlagOp::Add, &flag, None)
            .await
            .unwrap();
        backend.expunge(&account, "INBOX", &[1, 4]).await.unwrap();
        backend
            .deliver("alice", "INBOX", b"Subject: y\r\n\r\ny\r\n")
            .unwrap();
        backend
            .deliver("alice", "INBOX", b"Subject: z\r\n\r\nz\r\n")
            .unwrap();
        backend.expunge(&account, "INBOX", &[6]).await.unwrap();
        assert_eq!(
            run(&mut s, "d NOOP\r\n").await,
            "* 4 EXPUNGE\r\n* 1 EXPUNGE\r\n* 3 EXISTS\r\n* 2 FETCH (UID 3 FLAGS (\\Seen))\r\nd OK completed\r\n"
        );
        assert_eq!(run(&mut s, "e NOOP\r\n").await, "e OK completed\r\n");
        assert_eq!(
            run(&mut s, "f FETCH 1:* UID\r\n").await,
            "* 1 FETCH (UID 2)\r\n* 2 FETCH (UID 3)\r\n* 3 FETCH (UID 5)\r\nf OK completed\r\n"
        );
        // The session's own STORE is not reported again.
        run(&mut s, "g STORE 1 +FLAGS (\\Flagged)\r\n").await;
        assert_eq!(run(&mut s, "h NOOP\r\n").await, "h OK completed\r\n");
    }

    #[test]
    fn list_patterns_and_sets() {
        assert!(pattern_matches(b"*", b"a/b"));
        assert!(pattern_matches(b"%", b"INBOX"));
        assert!(!pattern_matches(b"%", b"a/b"));
        assert!(pattern_matches(b"a/%", b"a/b"));
        let set: SequenceSet = "2:4,7,9:*".parse().unwrap();
        assert!(
            set_contains(&set, 3, 20) && set_contains(&set, 7, 20) && set_contains(&set, 20, 20)
        );
        assert!(!set_contains(&set, 5, 20) && !set_contains(&set, 8, 20));
    }
}
