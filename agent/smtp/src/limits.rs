//! Every limit of a listener, with defaults.

use std::time::Duration;

/// Limits of a listener and of each of its sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in octets, as stored (advertised with SIZE; refused with
    /// `552 5.3.4` when declared larger at MAIL or found larger during DATA/BDAT).
    pub max_message_size: u64,
    /// Most RCPT commands accepted per transaction (RFC 5321 asks for at least 100);
    /// more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Refused commands per session before the server says `421` and closes.
    pub max_errors: u32,
    /// Longest command line, CRLF included: RFC 5321's 512 plus the allowances its
    /// extensions add to MAIL and RCPT (SIZE, ENVID, ORCPT, AUTH=, UTF-8 addresses).
    pub max_command_line: usize,
    /// Longest AUTH command and SASL response line (RFC 4954 4: 12288).
    pub max_auth_line: usize,
    /// Longest wait for the client's next bytes, in commands and in the middle of a
    /// message alike (RFC 5321 4.5.3.2 suggests 5 minutes).
    pub idle_timeout: Duration,
    /// Longest TLS handshake (STARTTLS or implicit).
    pub tls_handshake_timeout: Duration,
    /// Longest wait for the PROXY protocol header.
    pub proxy_header_timeout: Duration,
    /// Most simultaneous sessions on the listener.
    pub max_connections: usize,
    /// Most simultaneous sessions from one client address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// Sustained commands per second allowed from one client address, summed over its
    /// sessions; beyond it (and the burst) the session gets `421 4.7.0` and is closed.
    pub commands_per_second: u32,
    /// Commands one client address may send at once above the sustained rate.
    pub command_burst: u32,
    /// Failed authentications per client address, and per account, within
    /// `auth_failure_window` after which further attempts get `454 4.7.0` without a check.
    pub max_auth_failures: u32,
    /// The window for `max_auth_failures`.
    pub auth_failure_window: Duration,
    /// How long sessions in the middle of a message may run on after shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            max_command_line: 2048,
            max_auth_line: 12288,
            idle_timeout: Duration::from_secs(300),
            tls_handshake_timeout: Duration::from_secs(30),
            proxy_header_timeout: Duration::from_secs(10),
            max_connections: 1000,
            max_connections_per_address: 64,
            // Generous: a relay or a load generator on one address legitimately sends
            // thousands of commands per second; this stops floods, not busy peers.
            commands_per_second: 5000,
            command_burst: 10000,
            max_auth_failures: 5,
            auth_failure_window: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// The part of these limits a [`Throttle`](crate::Throttle) enforces.
    pub fn throttle(&self) -> tern_listen::ThrottleLimits {
        tern_listen::ThrottleLimits {
            max_connections_per_address: self.max_connections_per_address,
            commands_per_second: self.commands_per_second,
            command_burst: self.command_burst,
            max_auth_failures: self.max_auth_failures,
            auth_failure_window: self.auth_failure_window,
        }
    }
}

impl From<Limits> for tern_listen::ThrottleLimits {
    fn from(limits: Limits) -> Self {
        limits.throttle()
    }
}
