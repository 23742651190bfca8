//! Message content as it arrives: the DATA decoder (dot-unstuffing and end detection) and
//! the checks every message passes, whether it came by DATA or by BDAT chunks.
//!
//! Decisions, with SMTP smuggling in mind (an end-of-data sequence one server honours and
//! another does not lets an attacker hide a second message inside the first):
//!
//! - DATA ends only at `<CRLF>.<CRLF>`. `<LF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>` and the like
//!   are content, never an end.
//! - A line begins only after CRLF, so dot-unstuffing happens only there.
//! - A message containing a bare LF or a bare CR is refused whole (`550 5.6.2`) after its
//!   end, rather than normalised: normalising would turn `<LF>.<CRLF>` into
//!   `<CRLF>.<CRLF>` in the stored copy, which a later hop relaying it with DATA would read
//!   as the end of the message. Modern clients never send bare line endings; the ones that
//!   do are the ones this rule is for.
//! - NUL octets are refused (`550 5.6.0`): 8BITMIME forbids them and they break C-string
//!   consumers downstream. Lines longer than 998 octets are refused the same way
//!   (RFC 5322 2.1.1; RFC 5321 4.5.3.1.6).
//! - The size limit counts the message as stored (after unstuffing). Past the limit the
//!   rest is read and thrown away, so the session stays in step, and the message is refused
//!   with `552 5.3.4` at its end. Memory never holds more than the limit.

use crate::reply::{Reply, Status};

/// Longest text line without its CRLF (RFC 5322 2.1.1).
pub const MAX_TEXT_LINE: usize = 998;

/// Why a received message is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the message size limit.
    #[error("message exceeds the size limit")]
    TooLarge,
    /// Contains NUL octets.
    #[error("message contains NUL octets")]
    Nul,
    /// Contains a CR or LF that is not part of a CRLF pair.
    #[error("message contains a bare CR or LF")]
    BareLineEnding,
    /// Has a line over 998 octets.
    #[error("message has a line longer than 998 octets")]
    LineTooLong,
}

impl BodyError {
    /// The reply for this refusal.
    pub fn reply(self) -> Reply {
        match self {
            BodyError::TooLarge => Reply::new(
                552,
                Status(5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ),
            BodyError::Nul => Reply::new(
                550,
                Status(5, 6, 0),
                "Message refused: NUL characters are not allowed",
            ),
            BodyError::BareLineEnding => Reply::new(
                550,
                Status(5, 6, 2),
                "Message refused: bare CR or LF; lines must end with CRLF",
            ),
            BodyError::LineTooLong => Reply::new(
                550,
                Status(5, 6, 0),
                "Message refused: a line is longer than 998 characters",
            ),
        }
    }
}

/// Collects message content up to a size limit and checks it as it goes.
#[derive(Debug)]
pub struct Body {
    bytes: Vec<u8>,
    max: u64,
    size: u64,
    prev_cr: bool,
    line_len: usize,
    too_large: bool,
    nul: bool,
    bare: bool,
    long_line: bool,
}

impl Body {
    /// An empty body that accepts at most `max` octets.
    pub fn new(max: u64) -> Self {
        Body {
            bytes: Vec::new(),
            max,
            size: 0,
            prev_cr: false,
            line_len: 0,
            too_large: false,
            nul: false,
            bare: false,
            long_line: false,
        }
    }

    /// Octets received so far (counting those thrown away past the limit).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the size limit has been passed.
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// Appends content.
    pub fn push(&mut self, data: &[u8]) {
        self.size = self.size.saturating_add(data.len() as u64);
        if self.size > self.max {
            self.too_large = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(data);
        }
        if self.nul && self.bare && self.long_line {
            return;
        }
        for &b in data {
            if b == b'\n' {
                if !self.prev_cr {
                    self.bare = true;
                }
                self.prev_cr = false;
                self.line_len = 0;
                continue;
            }
            if self.prev_cr {
                // A CR not followed by LF.
                self.bare = true;
            }
            self.prev_cr = b == b'\r';
            if self.prev_cr {
                continue;
            }
            if b == 0 {
                self.nul = true;
            }
            self.line_len += 1;
            if self.line_len > MAX_TEXT_LINE {
                self.long_line = true;
            }
        }
    }

    /// The finished message, or why it is refused. The size check comes first: it is the
    /// one a client can act on (RFC 1870).
    pub fn finish(self) -> Result<Vec<u8>, BodyError> {
        if self.too_large {
            Err(BodyError::TooLarge)
        } else if self.nul {
            Err(BodyError::Nul)
        } else if self.bare || self.prev_cr {
            Err(BodyError::BareLineEnding)
        } else if self.long_line {
            Err(BodyError::LineTooLong)
        } else {
            Ok(self.bytes)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DotState {
    /// At the start of a line (after CRLF, or at the start of DATA).
    LineStart,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.<CR>` at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw `<CR>` inside a line (not yet written).
    Cr,
}

/// Decodes the DATA stream: removes dot-stuffing and finds `<CRLF>.<CRLF>`.
#[derive(Debug)]
pub struct DotDecoder {
    state: DotState,
}

impl Default for DotDecoder {
    fn default() -> Self {
        DotDecoder {
            state: DotState::LineStart,
        }
    }
}

impl DotDecoder {
    /// Feeds wire bytes, writing the unstuffed content into `body`. Returns how many input
    /// bytes were consumed when the end of data was found (the `.<CRLF>` included), or None
    /// when all of `input` was consumed without reaching it.
    pub fn decode(&mut self, input: &[u8], body: &mut Body) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                DotState::Mid => {
                    // Fast path: copy the run up to the next CR in one go.
                    let run = input[i..].iter().position(|&b| b == b'\r');
                    let end = run.map_or(input.len(), |p| i + p);
                    body.push(&input[i..end]);
                    i = end;
                    if run.is_some() {
                        self.state = DotState::Cr;
                        i += 1;
                    }
                }
                DotState::LineStart => match input[i] {
                    b'.' => {
                        self.state = DotState::Dot;
                        i += 1;
                    }
                    _ => self.state = DotState::Mid,
                },
                DotState::Dot => match input[i] {
                    b'\r' => {
                        self.state = DotState::DotCr;
                        i += 1;
                    }
                    // The stuffed dot is dropped; the byte is content.
                    _ => self.state = DotState::Mid,
                },
                DotState::DotCr => {
                    if input[i] == b'\n' {
                        self.state = DotState::LineStart;
                        return Some(i + 1);
                    }
                    // `.<CR>x` at a line start: the dot goes, the bare CR is content (and
                    // will get the message refused).
                    body.push(b"\r");
                    self.state = DotState::Mid;
                }
                DotState::Cr => {
                    if input[i] == b'\n' {
                        body.push(b"\r\n");
                        self.state = DotState::LineStart;
                        i += 1;
                    } else {
                        body.push(b"\r");
                        self.state = DotState::Mid;
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` in pieces of `step` bytes; returns (content or error, leftover).
    fn decode(wire: &[u8], step: usize, max: u64) -> (Option<Result<Vec<u8>, BodyError>>, Vec<u8>) {
        let mut dec = DotDecoder::default();
        let mut body = Body::new(max);
        let mut pos = 0;
        while pos < wire.len() {
            let end = (pos + step).min(wire.len());
            if let Some(used) = dec.decode(&wire[pos..end], &mut body) {
                return (Some(body.finish()), wire[pos + used..].to_vec());
            }
            pos = end;
        }
        (None, Vec::new())
    }

    #[test]
    fn unstuffs_and_stops_at_the_end_marker_in_any_split() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nNEXT";
        for step in 1..wire.len() {
            let (msg, rest) = decode(wire, step, 1000);
            assert_eq!(
                msg.unwrap().unwrap(),
                b"Subject: x\r\n\r\n.leading dot\r\n",
                "step {step}"
            );
            assert_eq!(rest, b"NEXT");
        }
    }

    #[test]
    fn empty_message_and_lone_dot_lines() {
        assert_eq!(decode(b".\r\n", 1, 10).0.unwrap().unwrap(), b"");
        assert_eq!(decode(b".x\r\n.\r\n", 2, 10).0.unwrap().unwrap(), b"x\r\n");
    }

    #[test]
    fn smuggling_sequences_are_not_an_end() {
        for wire in [
            &b"a\n.\nb\r\n.\r\n"[..],
            b"a\n.\r\nb\r\n.\r\n",
            b"a\r.\r\nb\r\n.\r\n",
            b"a\r\n.\nb\r\n.\r\n",
            b"a\r\n.\rb\r\n.\r\n",
        ] {
            let (msg, rest) = decode(wire, 3, 1000);
            assert_eq!(
                msg,
                Some(Err(BodyError::BareLineEnding)),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn nul_long_lines_and_size() {
        assert_eq!(
            decode(b"a\0b\r\n.\r\n", 4, 100).0,
            Some(Err(BodyError::Nul))
        );
        let long = [vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(
            decode(&long, 100, 10_000).0,
            Some(Err(BodyError::LineTooLong))
        );
        let ok = [vec![b'x'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert!(decode(&ok, 100, 10_000).0.unwrap().is_ok());
        let big = [vec![b'x'; 500], b"\r\n".to_vec()].concat().repeat(10);
        let wire = [big, b".\r\nQUIT\r\n".to_vec()].concat();
        let (msg, rest) = decode(&wire, 333, 1000);
        assert_eq!(msg, Some(Err(BodyError::TooLarge)));
        assert_eq!(
            rest, b"QUIT\r\n",
            "the rest of the message is skipped, the stream stays in step"
        );
    }

    #[test]
    fn trailing_cr_in_a_chunked_body_is_bare() {
        let mut body = Body::new(100);
        body.push(b"abc\r");
        assert_eq!(body.finish(), Err(BodyError::BareLineEnding));
        let mut body = Body::new(100);
        body.push(b"abc\r");
        body.push(b"\ndef");
        assert_eq!(body.finish().unwrap(), b"abc\r\ndef");
    }

    proptest::proptest! {
        /// Dot-stuffing any CRLF text and decoding it gives the text back, in any split.
        #[test]
        fn stuffing_round_trips(
            lines in proptest::collection::vec("[.a-z ]{0,12}", 0..12),
            step in 1usize..20,
        ) {
            let text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
            let mut wire = String::new();
            for l in &lines {
                if l.starts_with('.') { wire.push('.'); }
                wire.push_str(l);
                wire.push_str("\r\n");
            }
            wire.push_str(".\r\n");
            let (msg, rest) = decode(wire.as_bytes(), step, 10_000);
            proptest::prop_assert_eq!(msg.unwrap().unwrap(), text.into_bytes());
            proptest::prop_assert!(rest.is_empty());
        }
    }
}
