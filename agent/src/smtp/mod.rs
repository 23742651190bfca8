//! Where SMTP DATA becomes a Raft entry: the SMTP (25), submission (587, STARTTLS), smtps
//! (465, implicit TLS) and LMTP (24) listeners of `tern-agent run`, and the backend that
//! connects tern-smtp's protocol engine to the replicated store.
//!
//! - [`listeners`]: which listeners a node runs, from the agent configuration and the
//!   environment, their TLS, and starting and stopping them.
//! - [`backend`]: [`MailBackend`], tern-smtp's `Backend` over the [`ShardHost`]: directory
//!   lookups, password checks, storing messages.
//! - [`auth_results`]: the SPF, DKIM and DMARC checks of mail from unauthenticated SMTP
//!   sessions, recorded in an `Authentication-Results:` field on top of the stored message
//!   (below it, the `Received:` field tern-smtp adds to every message, RFC 5321 §4.4).
//! - [`delivery`]: what storing a message writes — one `Deliver` command per shard, its
//!   idempotency key — and what each recipient's outcome means in SMTP.
//!
//! # When a message is acknowledged
//!
//! `250` after DATA (or one `250` per recipient in LMTP) only once the message is committed
//! on a majority of the voters of every recipient's shard: the recipients are grouped by
//! shard (user → group → shard from the assignment), each shard gets one `Deliver` command
//! through [`ShardHost::write`], and a recipient is `Stored` only when that write returned
//! committed and applied. No quorum, no leader within the deadline, or any other temporary
//! failure of a shard: `451 4.3.0` for its recipients, and the client retries.
//!
//! A retry must not store the message twice. Each `Deliver` carries an idempotency key
//! derived from the message's digest (SHA-256 over the envelope and the content as the
//! client sent it, before Tern's `Received:` field) and the shard's recipient set, so the
//! same message to the same recipients has the same key however often it is sent: a write
//! that committed although its answer was lost (a leader killed after the commit, a timeout)
//! is found by the retry, which stores nothing and returns the first outcome. The shards
//! remember keys for [`tern_mail::IDEMPOTENCY_TTL_MS`] (7 days, longer than SMTP clients
//! retry). Within one attempt the backend itself retries a shard that answered "temporarily
//! unavailable" (an election under way) with the same key until the deadline.
//!
//! # Directory reads
//!
//! Recipient, sender-domain and account lookups are linearizable reads (ReadIndex through the
//! shard's leader, [`ShardHost::query`]), never a cache: a node cut off from its majority
//! answers `451 4.3.0` at RCPT rather than accept mail it cannot store, and an account
//! created a moment ago receives mail at once. The one thing remembered is, per session, the
//! shard each accepted recipient was found on (so DATA does not look it up again). A
//! recipient is looked for on its group's shard; an alias lives with its account, so an
//! address not found there is looked for on the other shards before it is unknown.
//!
//! AUTH PLAIN and LOGIN take the account's own address as the user name; the password is
//! checked (argon2) on a blocking thread, and an unknown user costs the same check as a wrong
//! password. The account may then send as its address and its aliases.
//!
//! # Relaying and senders
//!
//! - Remote recipients are refused from unauthenticated sessions and on LMTP by the engine
//!   (`554 5.7.1` relay denied, whatever the client's address). From authenticated
//!   submission sessions they are accepted and, at DATA, queued in the outbound queue of the
//!   account's shard (one `Enqueue` with an idempotency key from the digest and the remote
//!   recipient set) before the `250`; [`crate::outbound`] delivers them.
//! - On port 25, an unauthenticated client may not use a local domain in MAIL FROM
//!   (`550 5.7.1`): Tern's own users send through submission, so such a sender is forged.
//!   The cost: mail a third party forwards with the original envelope sender kept (some
//!   `.forward` setups) is refused when that sender is local. LMTP is trusted local delivery
//!   and is not checked; submission sessions are held to their account's addresses by the
//!   engine.
//!
//! Every backend call is bounded by [`BackendOptions::deadline`] (well below the minimum
//! timeouts of RFC 5321 4.5.3.2, 5 minutes for RCPT and 10 for the end of DATA): what does
//! not finish in time is a temporary failure, and a write that may still commit is found by
//! the client's retry through its key.

pub mod auth_results;
pub mod backend;
pub mod delivery;
pub mod listeners;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tern_smtp::{ListenerKind, ServerStats};

pub use backend::{BackendOptions, MailBackend};
pub use listeners::{ListenerPlan, Listeners};

#[cfg(doc)]
use crate::shards::ShardHost;

/// What mail intake counted, for `/metrics`.
#[derive(Debug, Default)]
pub struct SmtpStats {
    /// Per recipient and outcome of storing a message.
    pub stored: AtomicU64,
    pub temp_failed: AtomicU64,
    pub perm_failed: AtomicU64,
    /// Password checks that failed (wrong user or password).
    pub auth_failures: AtomicU64,
    /// Directory lookups answered with a temporary failure (no quorum, no answer in time).
    pub lookups_unavailable: AtomicU64,
    listeners: Mutex<Vec<(ListenerKind, Arc<ServerStats>)>>,
    /// What outbound delivery counted (`tern_outbound_*`).
    pub outbound: Arc<crate::outbound::OutboundStats>,
}

impl SmtpStats {
    /// Adds a running listener's own counters (sessions, refused connections).
    pub fn register(&self, kind: ListenerKind, stats: Arc<ServerStats>) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((kind, stats));
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        type Counter = (&'static str, &'static str, fn(&ServerStats) -> &AtomicU64);
        let per_listener: [Counter; 2] = [
            (
                "tern_smtp_sessions_total",
                "SMTP, submission and LMTP sessions begun, by listener.",
                |s| &s.sessions,
            ),
            (
                "tern_smtp_connections_refused_total",
                "Connections closed before a session (connection limits, PROXY header, TLS handshake), by listener.",
                |s| &s.refused,
            ),
        ];
        for (name, help, counter) in per_listener {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (kind, stats) in &listeners {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\"}} {}",
                    kind.as_str(),
                    counter(stats).load(Ordering::Relaxed)
                );
            }
        }
        let name = "tern_smtp_deliveries_total";
        let _ = writeln!(
            out,
            "# HELP {name} Recipients of messages, by outcome: stored (committed on a majority), tempfail (4xx), permfail (5xx).\n# TYPE {name} counter"
        );
        for (outcome, counter) in [
            ("stored", &self.stored),
            ("tempfail", &self.temp_failed),
            ("permfail", &self.perm_failed),
        ] {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        for (name, help, counter) in [
            (
                "tern_smtp_auth_failures_total",
                "Failed SMTP authentications (wrong user or password).",
                &self.auth_failures,
            ),
            (
                "tern_smtp_lookups_unavailable_total",
                "Directory lookups answered with a temporary failure.",
                &self.lookups_unavailable,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        self.outbound.render(out, crate::mailstore::unix_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_every_listener_and_outcome() {
        let stats = SmtpStats::default();
        let smtp = Arc::new(ServerStats::default());
        smtp.sessions.store(3, Ordering::Relaxed);
        stats.register(ListenerKind::Smtp, smtp);
        stats.register(ListenerKind::Lmtp, Arc::default());
        stats.stored.store(5, Ordering::Relaxed);
        stats.auth_failures.store(1, Ordering::Relaxed);
        let mut out = String::new();
        stats.render(&mut out);
        for line in [
            "tern_smtp_sessions_total{listener=\"smtp\"} 3",
            "tern_smtp_sessions_total{listener=\"lmtp\"} 0",
            "tern_smtp_connections_refused_total{listener=\"smtp\"} 0",
            "tern_smtp_deliveries_total{outcome=\"stored\"} 5",
            "tern_smtp_deliveries_total{outcome=\"permfail\"} 0",
            "tern_smtp_auth_failures_total 1",
            "tern_smtp_lookups_unavailable_total 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        // Five of intake, three of outbound delivery.
        assert_eq!(out.matches("# TYPE").count(), 8);
    }
}
