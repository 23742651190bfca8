//! Limits shared by the sessions of one or more listeners: simultaneous connections per
//! client address (IPv6: per /64), and authentication failures per address and per account
//! in a sliding window (a client over the limit is refused without a password check). The
//! throttle is `tern-listen`'s, shared with the SMTP engine; [`Limits`](crate::Limits)
//! converts into its [`ThrottleLimits`].

pub use tern_listen::throttle::{ConnectionSlot, Throttle, ThrottleLimits};
