//! Drives a [`Session`] from arbitrary bytes through the server's own framing and decoding
//! and checks what must always hold. Shared by the fuzz target (`fuzz/fuzz_targets/session.rs`)
//! and the corpus test (`tests/fuzz_corpus.rs`), so that what the fuzzer explores and what
//! `cargo test` checks are the same thing.
//!
//! Input layout: the first byte picks whether TLS is up from the start (implicit TLS),
//! whether STARTTLS is offered, and whether the session begins logged in with INBOX
//! selected (so that short inputs reach the selected state); the rest is cut into pieces
//! (each piece's length taken from the byte before it) fed to the framing one at a time, as a
//! network would. The account `alice` / `secret` exists and INBOX holds [`MESSAGES`].
//!
//! What must hold: nothing panics; no command makes the session wait forever; every
//! response is whole lines (literals counted out); every framed command gets exactly one
//! final answer that carries its tag (or `+` when the session waits for more input, or an
//! untagged `BAD`/`BYE` when the input had no tag).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::{AuthenticateDataCodec, IdleDoneCodec};

use crate::limits::Limits;
use crate::memory::MemoryBackend;
use crate::server::{Event, Framer};
use crate::session::{Outcome, Session, SessionConfig};
use crate::throttle::Throttle;

/// The messages in `alice`'s INBOX at the start of every run.
pub const MESSAGES: [&[u8]; 3] = [
    b"From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: Lunch\r\n\
      Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nAt noon?\r\n",
    b"From: carol@example.org\r\nSubject: =?utf-8?q?R=C3=A9sum=C3=A9?=\r\n\
      MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
      --b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
      --b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
      AAECAwQ=\r\n--b--\r\n",
    b"Subject: short\r\n\r\nx\r\n",
];

/// What a run's first command is when the layout asks for a logged-in start.
const LOGGED_IN: &[u8] = b"h1 LOGIN alice secret\r\nh2 SELECT INBOX\r\n";

/// Limits small enough for short inputs to reach them.
pub fn small_limits() -> Limits {
    Limits {
        max_literal: 2048,
        max_command_bytes: 4096,
        max_line: 1024,
        max_errors: 8,
        ..Limits::default()
    }
}

/// Longest a single command may take before the run counts as stalled.
const STALL: Duration = Duration::from_secs(5);

/// Runs one session over `data` laid out as described in the module doc; Err describes the
/// first broken invariant.
pub fn run(data: &[u8]) -> Result<(), String> {
    transcript(data).map(drop)
}

/// As [`run`], returning everything the server wrote (the greeting first).
pub fn transcript(data: &[u8]) -> Result<Vec<u8>, String> {
    let (&flags, mut rest) = data.split_first().unwrap_or((&0, &[]));
    let logged_in = flags & 0x04 != 0;
    let mut pieces: Vec<&[u8]> = Vec::new();
    if logged_in {
        pieces.push(LOGGED_IN);
    }
    while let Some((&len, tail)) = rest.split_first() {
        let len = (usize::from(len) % 64 + 1).min(tail.len());
        pieces.push(&tail[..len]);
        rest = &tail[len..];
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(drive(
        flags & 0x01 != 0 || logged_in,
        flags & 0x02 != 0,
        pieces,
    ))
}

async fn drive(tls: bool, starttls: bool, pieces: Vec<&[u8]>) -> Result<Vec<u8>, String> {
    let backend = Arc::new(MemoryBackend::new());
    backend.add_account("alice", "secret");
    for message in MESSAGES {
        backend
            .deliver("alice", "INBOX", message)
            .map_err(|e| format!("deliver: {e:?}"))?;
    }
    let limits = small_limits();
    let config = SessionConfig {
        hostname: "imap.test".into(),
        starttls,
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let mut session = Session::new(backend, Throttle::new(limits.throttle()), config, tls);
    let mut transcript = Vec::new();
    let mut out = session.greeting();
    check_lines(&out)?;
    transcript.append(&mut out);
    let mut framer = Framer::new(&limits);
    let mut outcome = Outcome::Continue;
    let mut errors = 0u32;
    let mut tag: Option<String> = None;
    for piece in pieces {
        framer.enqueue(piece);
        loop {
            let event = framer.pump(&mut out);
            check_lines(&out)?;
            transcript.append(&mut out);
            match event {
                Event::NeedMore => break,
                Event::Fatal(_) => return Ok(transcript),
                Event::Refused => {
                    if outcome == Outcome::Idle {
                        session.idle_done(false, &mut out);
                        outcome = Outcome::Continue;
                    }
                }
                Event::Message => {
                    // The answer carries this message's tag, or, for the line that ends
                    // an IDLE or answers an AUTHENTICATE, the tag of that command.
                    if !matches!(outcome, Outcome::Idle | Outcome::AuthContinue) {
                        tag = framer.frag.decode_tag().map(|t| t.as_ref().to_owned());
                    }
                    outcome = step(&mut session, &mut framer, outcome, &mut out).await?;
                    check_lines(&out)?;
                    check_final(&out, outcome, tag.as_deref())?;
                    if out.windows(5).any(|w| w == b" BAD ") {
                        errors += 1;
                    }
                    transcript.append(&mut out);
                    match outcome {
                        // The server closes here: nothing after it is read.
                        Outcome::Logout => return Ok(transcript),
                        _ if errors >= limits.max_errors => return Ok(transcript),
                        // The handshake happens outside; what was pipelined is dropped.
                        Outcome::StartTls => {
                            framer = Framer::new(&limits);
                            session.tls_started();
                            outcome = Outcome::Continue;
                            break;
                        }
                        Outcome::Idle => {
                            bounded("IDLE refresh", session.idle_refresh(&mut out)).await?;
                            check_lines(&out)?;
                            transcript.append(&mut out);
                        }
                        // The in-memory backend serves every account, so nothing is relayed.
                        Outcome::Relay => {
                            return Err("a login was relayed by a backend that serves all".into());
                        }
                        Outcome::Continue | Outcome::AuthContinue => {}
                    }
                }
            }
        }
    }
    Ok(transcript)
}

/// Decodes and handles the framed message as the server does in the state `outcome` left.
async fn step(
    session: &mut Session<MemoryBackend>,
    framer: &mut Framer,
    outcome: Outcome,
    out: &mut Vec<u8>,
) -> Result<Outcome, String> {
    match outcome {
        Outcome::Idle => {
            let ok = framer
                .frag
                .decode_message(&IdleDoneCodec::default())
                .is_ok();
            session.idle_done(ok, out);
            Ok(Outcome::Continue)
        }
        Outcome::AuthContinue => {
            let response = match framer
                .frag
                .decode_message(&AuthenticateDataCodec::default())
            {
                Ok(AuthenticateData::Continue(data)) => Some(data.declassify().to_vec()),
                _ => None,
            };
            bounded(
                "AUTHENTICATE response",
                session.auth_response(response.as_deref(), out),
            )
            .await
        }
        _ => {
            // As the server decides: too long or poisoned first, then the decoding.
            let decoded = if framer.frag.is_max_message_size_exceeded() {
                Err("[TOOBIG] Command too long".to_string())
            } else if framer.frag.is_message_poisoned() {
                Err("Syntax error".to_string())
            } else {
                crate::extended::decode(framer.frag.message_bytes())
            };
            match decoded {
                Ok(request) => {
                    let mut responses = crate::session::Responses::buffered(out);
                    bounded("a command", session.handle_request(request, &mut responses)).await
                }
                Err(text) => {
                    match framer.frag.decode_tag() {
                        Some(tag) => out.extend_from_slice(
                            format!("{} BAD {text}\r\n", tag.as_ref()).as_bytes(),
                        ),
                        None => out.extend_from_slice(format!("* BAD {text}\r\n").as_bytes()),
                    }
                    Ok(Outcome::Continue)
                }
            }
        }
    }
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STALL, f)
        .await
        .map_err(|_| format!("{what} stalled for {STALL:?}"))
}

/// Splits a server's output into logical responses (a literal's bytes belong to the line
/// that announced it); Err when the output does not end on a response boundary.
pub fn responses(out: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut found = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < out.len() {
        let Some(lf) = out[at..].iter().position(|&b| b == b'\n') else {
            return Err(format!(
                "unterminated output: {:?}",
                String::from_utf8_lossy(&out[start..])
            ));
        };
        let end = at + lf;
        if end == at || out[end - 1] != b'\r' {
            return Err(format!(
                "bare LF in output: {:?}",
                String::from_utf8_lossy(&out[start..=end])
            ));
        }
        let line = &out[at..end - 1];
        at = end + 1;
        // `{n}` (or `~{n}`) at the end of a line: n bytes of literal follow.
        if let Some(body) = line.strip_suffix(b"}")
            && let Some(open) = body.iter().rposition(|&b| b == b'{')
            && let Ok(n) = std::str::from_utf8(&body[open + 1..])
                .map_err(drop)
                .and_then(|d| d.parse::<usize>().map_err(drop))
        {
            if out.len() - at < n {
                return Err(format!("literal of {n} cut short"));
            }
            at += n;
            continue;
        }
        found.push(&out[start..at]);
        start = at;
    }
    Ok(found)
}

fn check_lines(out: &[u8]) -> Result<(), String> {
    responses(out).map(drop)
}

/// The output of one command ends with its final answer, tagged with `tag` when the input
/// had one.
fn check_final(out: &[u8], outcome: Outcome, tag: Option<&str>) -> Result<(), String> {
    let all = responses(out)?;
    let Some(last) = all.last() else {
        return Err("a command got no answer".into());
    };
    let text = String::from_utf8_lossy(last);
    let ok = match outcome {
        Outcome::AuthContinue | Outcome::Idle => text.starts_with("+"),
        _ => {
            let mut words = text.split(' ');
            let first = words.next().unwrap_or("");
            let status = words.next().unwrap_or("");
            match tag {
                Some(tag) => first == tag && matches!(status, "OK" | "NO" | "BAD"),
                None => first == "*" && matches!(status, "BAD" | "BYE"),
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("no final answer ({outcome:?}): {text:?}"))
    }
}
