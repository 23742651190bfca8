//! Drives a [`Session`] from arbitrary bytes and checks what must always hold. Shared by the
//! fuzz target (`fuzz/fuzz_targets/session.rs`) and the property tests, so that what the
//! fuzzer explores and what `cargo test` checks are the same thing.
//!
//! Input layout: the first byte picks the protocol, whether TLS is already up (implicit
//! TLS), whether STARTTLS and AUTH are offered; the second seeds the answers the pretend
//! backend gives; the rest is cut into pieces (each piece's length taken from the byte
//! before it) fed to the session one at a time, as a network would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::backend::{Account, AuthVerdict, DeliveryStatus, RcptVerdict, SenderVerdict};
use crate::envelope::SessionId;
use crate::limits::Limits;
use crate::reply::{Reply, Status, check_wire_form};
use crate::session::{Action, Protocol, Session, SessionConfig, SessionInfo, TlsInfo};

/// Limits small enough for short inputs to reach them.
pub fn small_limits() -> Limits {
    Limits {
        max_message_size: 300,
        max_recipients: 4,
        max_errors: 6,
        max_command_line: 128,
        max_auth_line: 256,
        ..Limits::default()
    }
}

struct Answers(u64);

impl Answers {
    fn next(&mut self, n: u64) -> u64 {
        // xorshift64*: deterministic, so a failing input replays exactly.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Runs one session over `data` laid out as described above; Err describes the first
/// broken invariant.
pub fn run(data: &[u8]) -> Result<(), String> {
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&seed, mut rest) = rest.split_first().unwrap_or((&0, &[]));
    let mut pieces = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = (usize::from(len) % 64 + 1).min(tail.len());
        pieces.push(&tail[..len]);
        rest = &tail[len..];
    }
    drive(flags, seed, pieces)
}

/// Runs one session configured by `flags` with answers seeded by `seed`, feeding it
/// `pieces` one after the other, then the end of the connection.
pub fn drive<'a>(
    flags: u8,
    seed: u8,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), String> {
    let mut pieces = pieces.into_iter();
    let protocol = match flags % 3 {
        0 => Protocol::Smtp,
        1 => Protocol::Submission,
        _ => Protocol::Lmtp,
    };
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2525);
    let mut info = SessionInfo::new(SessionId(u128::from(seed)), protocol, addr, addr);
    if flags & 0x04 != 0 {
        info.tls = Some(tls_info());
    }
    let config = SessionConfig {
        hostname: "mx.test".into(),
        starttls: flags & 0x08 != 0,
        auth: flags & 0x10 != 0,
        limits: small_limits(),
    };
    let max_size = config.limits.max_message_size;
    let mut session = Session::new(config, info);
    let mut answers = Answers(u64::from(seed) | 0x9E37_79B9_0000_0000);
    let mut output = session.take_output();
    check_wire_form(&output)?;
    loop {
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > 10_000 {
                return Err("session makes no progress".into());
            }
            match session.poll() {
                Action::NeedInput | Action::Close => break,
                Action::AwaitingAnswer => {
                    return Err("poll asked for an answer it did not request".into());
                }
                Action::StartTls => session.tls_established(tls_info()),
                Action::CheckSender(_) => session.sender_verdict(match answers.next(4) {
                    0 => SenderVerdict::Refuse,
                    1 => SenderVerdict::TempFail,
                    _ => SenderVerdict::Accept,
                }),
                Action::CheckRecipient(_) => session.recipient_verdict(match answers.next(6) {
                    0 => RcptVerdict::Relay,
                    1 => RcptVerdict::Unknown,
                    2 => RcptVerdict::TempFail,
                    3 => RcptVerdict::Refuse(crate::reply::Reply::plain(250, "not a refusal")),
                    _ => RcptVerdict::Local,
                }),
                Action::Authenticate(c) => session.auth_result(match answers.next(4) {
                    0 => AuthVerdict::Invalid,
                    1 => AuthVerdict::TempFail,
                    2 => AuthVerdict::Throttled,
                    _ => AuthVerdict::Ok(Account {
                        name: c.username.clone(),
                        addresses: vec![c.username],
                    }),
                }),
                Action::Deliver(delivery) => {
                    let n = delivery.envelope.recipients.len();
                    if n == 0 {
                        return Err("delivery without recipients".into());
                    }
                    if delivery.message.len() as u64 > max_size {
                        return Err("delivery over the size limit".into());
                    }
                    if session.info().protocol == Protocol::Submission
                        && session.info().account.is_none()
                    {
                        return Err("unauthenticated submission delivered".into());
                    }
                    let results = (0..n + usize::from(answers.next(8) == 0))
                        .map(|_| match answers.next(4) {
                            0 => DeliveryStatus::TempFail(Reply::new(452, Status(4, 2, 2), "full")),
                            1 => DeliveryStatus::PermFail(Reply::new(250, Status(2, 0, 0), "liar")),
                            _ => DeliveryStatus::Stored,
                        })
                        .collect();
                    session.delivered(results);
                }
            }
        }
        output.extend(session.take_output());
        check_wire_form(&output)?;
        if session.is_closed() {
            return Ok(());
        }
        let Some(piece) = pieces.next() else {
            session.eof();
            return Ok(());
        };
        session.receive(piece);
    }
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}
