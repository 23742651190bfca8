//! tern-smtp: how mail enters Tern — inbound SMTP, submission and LMTP.
//!
//! The protocol is a sans-IO state machine, so it is tested on byte strings and fuzzed; a
//! tokio server runs it on real sockets; what it needs from the rest of the agent (the
//! directory, passwords, the replicated store) sits behind the [`Backend`] trait.
//!
//! - [`parser`]: command lines → typed commands (paths, ESMTP parameters, DSN, AUTH, BDAT).
//! - [`session`]: the state machine (EHLO/LHLO, STARTTLS, AUTH, MAIL/RCPT, DATA/BDAT,
//!   limits, the no-relay and sender-ownership rules); [`body`]: dot-unstuffing and the
//!   checks on message content; [`header`]: the header From addresses; [`auth`]: SASL
//!   PLAIN and LOGIN; [`reply`]: replies and their wire form.
//! - [`backend`]: the trait, its verdicts, and the rule for acknowledging a message;
//!   [`envelope`]: what is delivered, with its idempotency key and Received header.
//! - [`server`]: the tokio listener (implicit TLS and STARTTLS with rustls; the accept loop,
//!   the PROXY protocol and the connection, command and authentication limits come from
//!   `tern-listen`, re-exported as [`proxy`] and [`throttle`]; idle timeouts, graceful
//!   shutdown); [`limits`]: every limit and its default.
//! - [`harness`]: drives a session from arbitrary bytes for the fuzz target and the
//!   property tests.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod body;
pub mod envelope;
pub mod harness;
pub mod header;
pub mod limits;
pub mod parser;
pub mod reply;
pub mod server;
pub mod session;

pub use backend::{Account, AuthVerdict, Backend, DeliveryStatus, RcptVerdict, SenderVerdict};
pub use envelope::{Delivery, DeliveryKey, Envelope, Recipient, SessionId};
pub use limits::Limits;
pub use reply::{Reply, Status};
pub use server::{ListenerConfig, ListenerKind, Server, ServerError, ServerStats};
pub use session::{Action, Protocol, Session, SessionConfig, SessionInfo, TlsInfo};
pub use tern_listen::{proxy, throttle};
pub use throttle::Throttle;
