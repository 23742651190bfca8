//! tern-imap: how mail is read in Tern — IMAP4rev1 and IMAP4rev2 with the extensions clients
//! rely on.
//!
//! Commands are framed and parsed by `imap-codec` (its fragmentizer bounds lines and
//! literals before they are buffered); the session is a state machine over the typed
//! commands; what it needs from the agent (passwords, the replicated mail store) sits
//! behind the [`Backend`] trait.
//!
//! - [`session`]: states, sequence numbers, every command; [`wire`]: response fragments.
//! - [`backend`]: the trait and its types; [`memory`]: an in-memory backend for tests.
//! - [`extended`]: the command syntax the codec lacks (ESEARCH's `RETURN`, SEARCHRES's `$`,
//!   extended LIST, MULTIAPPEND's APPEND of several messages), taken out before the codec
//!   decodes the rest; [`mutf7`]: modified UTF-7
//!   mailbox names, converted to UTF-8 for IMAP4rev2 sessions.
//! - [`harness`]: drives a session from arbitrary bytes for the fuzz target and the
//!   corpus test.
//! - [`mime`]: MIME structure with raw offsets for ENVELOPE, BODYSTRUCTURE, BINARY.
//! - [`relay`]: a session relayed to the node that serves its account, after login.
//! - [`server`]: the tokio listener (STARTTLS and implicit TLS with rustls, PROXY protocol,
//!   idle timeouts, literal and connection limits, authentication failure limits from
//!   [`throttle`]; the accept loop and admission come from `tern-listen`); [`limits`]: every
//!   limit and its default.
#![forbid(unsafe_code)]

pub mod backend;
pub mod command_scope;
pub mod extended;
pub mod harness;
pub mod limits;
pub mod memory;
pub mod mime;
pub mod mutf7;
pub mod relay;
pub mod server;
pub mod session;
pub mod throttle;
pub mod wire;

pub use backend::{
    Account, AppendItem, AuthVerdict, Backend, BackendError, BackendResult, FlagOp, MailboxInfo,
    MailboxStatus, MessageMeta, Quota, RelayRequest, RelayStream, SpecialUse, StoreOutcome,
};
pub use limits::Limits;
pub use memory::MemoryBackend;
pub use server::{ListenerConfig, Server, ServerError};
pub use session::{Outcome, Session, SessionConfig};
pub use throttle::Throttle;
