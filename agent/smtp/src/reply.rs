//! SMTP replies: a three-digit code, an enhanced status code (RFC 2034/3463) and text lines.
//!
//! Every reply the engine writes goes through [`Reply::write_to`], which is the one place
//! that guarantees the wire form: `ddd-text` for all but the last line, `ddd text` for the
//! last, CRLF endings, no control characters, no line over 512 octets (RFC 5321 4.5.3.1.5).

use std::borrow::Cow;
use std::fmt;

/// An enhanced mail system status code `class.subject.detail` (RFC 3463).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u8, pub u16, pub u16);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The reply code, 200..=599.
    pub code: u16,
    /// The enhanced status code; absent on the greeting, EHLO/LHLO/HELO answers and 3xx.
    pub status: Option<Status>,
    /// The text lines; at least one (an empty text is written as an empty line).
    pub lines: Vec<Cow<'static, str>>,
}

/// Longest reply line on the wire, CRLF included (RFC 5321 4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: Status, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A one-line reply without an enhanced status code (greeting, HELO, 354, 334).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status: None,
            lines: vec![text.into()],
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Keeps a reply that came from outside the engine (a backend) within the class it
    /// claims: a code outside `range` or a status of another class is replaced by `fallback`.
    pub(crate) fn within(self, range: std::ops::Range<u16>, fallback: Reply) -> Reply {
        let class_ok = self
            .status
            .is_none_or(|s| u16::from(s.0) == self.code / 100);
        if range.contains(&self.code) && class_ok {
            self
        } else {
            fallback
        }
    }

    /// Appends the wire form of this reply to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code.clamp(200, 599);
        let empty = [Cow::Borrowed("")];
        let lines: &[Cow<'static, str>] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let start = out.len();
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{code}{sep}").as_bytes());
            if let Some(status) = self.status {
                out.extend_from_slice(format!("{status} ").as_bytes());
            }
            // Text may echo client input (an address, a domain): never let it break the
            // framing. Cut on a character boundary so the line stays valid UTF-8.
            let budget = MAX_REPLY_LINE - 2 - (out.len() - start);
            let mut used = 0;
            for ch in line.chars() {
                let ch = if ch.is_control() { '?' } else { ch };
                let len = ch.len_utf8();
                if used + len > budget {
                    break;
                }
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                used += len;
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(String::from_utf8_lossy(&self.to_bytes()).trim_end())
    }
}

/// Replies the server (outside the session) writes on its own.
pub mod canned {
    use super::{Reply, Status};

    /// The connection limit for the client's address (or the listener's) is reached.
    pub fn too_many_connections() -> Reply {
        Reply::new(
            421,
            Status(4, 7, 0),
            "Too many connections, try again later",
        )
    }

    /// The client sends commands faster than its address is allowed to.
    pub fn too_many_commands() -> Reply {
        Reply::new(
            421,
            Status(4, 7, 0),
            "Too many commands from your address, slow down",
        )
    }

    /// No input within the idle timeout.
    pub fn idle_timeout() -> Reply {
        Reply::new(421, Status(4, 4, 2), "Idle timeout, closing connection")
    }

    /// The server is shutting down.
    pub fn shutting_down() -> Reply {
        Reply::new(
            421,
            Status(4, 3, 2),
            "Service shutting down, try again later",
        )
    }
}

/// Checks that `out` is a sequence of complete, well-formed replies (used by the property
/// tests and the fuzz target): every line `ddd[ -]text\r\n` with a 2xx..5xx code, no
/// control characters, at most 512 octets, and the lines of a multi-line reply share one code.
pub fn check_wire_form(out: &[u8]) -> Result<(), String> {
    let mut rest = out;
    let mut open: Option<&[u8]> = None;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| format!("reply without CRLF: {:?}", String::from_utf8_lossy(rest)))?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line.len() + 2 > MAX_REPLY_LINE {
            return Err(format!("reply line of {} octets", line.len() + 2));
        }
        if line.len() < 4
            || !line[..3].iter().all(u8::is_ascii_digit)
            || !(b'2'..=b'5').contains(&line[0])
            || (line[3] != b' ' && line[3] != b'-')
        {
            return Err(format!(
                "malformed reply line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let text = std::str::from_utf8(&line[4..]).map_err(|_| "reply text is not UTF-8")?;
        if text.chars().any(char::is_control) {
            return Err(format!("control character in reply {text:?}"));
        }
        if let Some(code) = open
            && code != &line[..3]
        {
            return Err("multi-line reply changes its code".into());
        }
        open = if line[3] == b'-' {
            Some(&line[..3])
        } else {
            None
        };
    }
    if open.is_some() {
        return Err("multi-line reply not finished".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_forms() {
        assert_eq!(
            Reply::new(250, Status(2, 1, 0), "Ok").to_bytes(),
            b"250 2.1.0 Ok\r\n"
        );
        let r = Reply {
            code: 250,
            status: None,
            lines: vec!["mx.example".into(), "PIPELINING".into(), "CHUNKING".into()],
        };
        assert_eq!(
            r.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
        );
        check_wire_form(&r.to_bytes()).unwrap();
    }

    #[test]
    fn control_characters_and_overlong_text_cannot_break_framing() {
        let r = Reply::new(
            550,
            Status(5, 1, 1),
            format!("<a\r\nb> {}", "é".repeat(400)),
        );
        let bytes = r.to_bytes();
        check_wire_form(&bytes).unwrap();
        assert!(bytes.starts_with(b"550 5.1.1 <a??b> "));
        assert!(bytes.len() <= MAX_REPLY_LINE);
    }

    #[test]
    fn backend_replies_are_kept_in_their_class() {
        let fallback = Reply::new(451, Status(4, 3, 0), "x");
        let good = Reply::new(452, Status(4, 2, 2), "over quota");
        assert_eq!(good.clone().within(400..500, fallback.clone()), good);
        let wrong_code = Reply::new(250, Status(2, 0, 0), "ok");
        assert_eq!(wrong_code.within(400..500, fallback.clone()), fallback);
        let wrong_status = Reply::new(450, Status(5, 0, 0), "mixed");
        assert_eq!(wrong_status.within(400..500, fallback.clone()), fallback);
    }

    #[test]
    fn wire_form_checker_refuses_bad_output() {
        assert!(check_wire_form(b"250 ok\r\n").is_ok());
        assert!(check_wire_form(b"250 ok").is_err());
        assert!(check_wire_form(b"25 ok\r\n").is_err());
        assert!(check_wire_form(b"650 ok\r\n").is_err());
        assert!(check_wire_form(b"250-a\r\n251 b\r\n").is_err());
        assert!(check_wire_form(b"250-a\r\n").is_err());
        assert!(check_wire_form(b"250 a\x00b\r\n").is_err());
    }
}
