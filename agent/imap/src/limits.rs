//! Every limit of an IMAP listener and its default.

use std::time::Duration;

/// Limits of one listener (or of several sharing a [`Throttle`](crate::Throttle)).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest literal (APPEND message) accepted; a larger announced literal is refused
    /// before its bytes are read.
    pub max_literal: u32,
    /// Largest total of one command's literals (a MULTIAPPEND's messages together): a
    /// literal that takes the total past it is refused when announced, as one over
    /// `max_literal` is. The messages of a MULTIAPPEND become one replicated entry, and
    /// replication carries entries in frames of at most 64 MiB.
    pub max_command_bytes: u32,
    /// Largest command line outside literals.
    pub max_line: u32,
    /// Idle time allowed before login.
    pub unauthenticated_timeout: Duration,
    /// Idle time allowed between commands after login (RFC 9051: at least 30 minutes).
    pub authenticated_timeout: Duration,
    /// How long IDLE may last before the server ends it (RFC 2177: 29 minutes at least).
    pub idle_timeout: Duration,
    /// Simultaneous connections per client address.
    pub max_connections_per_address: usize,
    /// Simultaneous connections on the listener.
    pub max_connections: usize,
    /// Failed password attempts per address, and per account, in the window.
    pub max_auth_failures: usize,
    /// The window for `max_auth_failures`.
    pub auth_failure_window: Duration,
    /// Protocol errors (BAD) before the connection is closed.
    pub max_errors: u32,
    /// Longest wait for the PROXY protocol header, on a listener that expects one.
    pub proxy_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_literal: 50 * 1024 * 1024,
            max_command_bytes: 50 * 1024 * 1024,
            max_line: 64 * 1024,
            unauthenticated_timeout: Duration::from_secs(60),
            authenticated_timeout: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(30 * 60),
            max_connections_per_address: 20,
            max_connections: 10_000,
            max_auth_failures: 10,
            auth_failure_window: Duration::from_secs(15 * 60),
            max_errors: 20,
            proxy_header_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The part of these limits a [`Throttle`](crate::Throttle) enforces. IMAP has no
    /// command rate of its own: the throttle's default applies, and the server does not
    /// charge commands.
    pub fn throttle(&self) -> tern_listen::ThrottleLimits {
        tern_listen::ThrottleLimits {
            max_connections_per_address: self.max_connections_per_address,
            max_auth_failures: u32::try_from(self.max_auth_failures).unwrap_or(u32::MAX),
            auth_failure_window: self.auth_failure_window,
            ..tern_listen::ThrottleLimits::default()
        }
    }
}

impl From<Limits> for tern_listen::ThrottleLimits {
    fn from(limits: Limits) -> Self {
        limits.throttle()
    }
}
