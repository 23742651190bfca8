//! tern-listen: what Tern's mail listeners (SMTP, submission, LMTP, IMAP) share.
//!
//! - [`accept`]: the accept loop of one listener (its connection limit, graceful shutdown)
//!   and the admission of each connection (PROXY header, per-address slot).
//! - [`proxy`]: the PROXY protocol v1 and v2, parsed sans-IO and read bounded and timed.
//! - [`throttle`]: per-address connection limits, command rate and authentication-failure
//!   windows, shared by the listeners of one engine.
//! - [`tls`]: the server configuration from PEM files and a timed handshake.
//! - [`stream`]: a stream with bytes already read put back in front.
//! - [`plan`]: which listeners a node runs and where, by the agent's conventions.
#![forbid(unsafe_code)]

pub mod accept;
pub mod plan;
pub mod proxy;
pub mod stream;
pub mod throttle;
pub mod tls;

pub use accept::{Admission, Admitted, ListenerStats, LoopConfig, Refused, Stop, admit, serve};
pub use proxy::ProxyHeader;
pub use stream::Prefixed;
pub use throttle::{ConnectionSlot, Throttle, ThrottleLimits};
