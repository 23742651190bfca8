//! Tern's end-to-end tests (under `tests/`, driving `tern-agent dev` for local clusters) and
//! the benchmark driver (`src/bin/`).
#![forbid(unsafe_code)]

/// CPU and disk figures of the machine while a benchmark runs.
pub mod host;
/// `tern-bench imap`: the IMAP load generator and the Tern/Dovecot comparison.
pub mod imap_bench;
/// The local cluster every benchmark runs against.
pub mod local;
/// `tern-bench smtp`: smtp-source against Tern and against Postfix → Dovecot.
pub mod smtp_bench;
