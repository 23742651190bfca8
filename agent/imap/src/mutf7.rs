//! Modified UTF-7 (RFC 3501 §5.1.3), the form mailbox names take in IMAP4rev1 and in the
//! store. A session that enabled IMAP4rev2 speaks UTF-8 names instead (RFC 9051 §5.1); the
//! session converts at its edge so the store keeps one spelling per mailbox whichever
//! revision the client uses.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// `name` (UTF-8) in modified UTF-7: printable ASCII as is (`&` as `&-`), every other run of
/// characters as UTF-16BE in modified base64 between `&` and `-`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    let flush = |run: &mut Vec<u16>, out: &mut String| {
        if run.is_empty() {
            return;
        }
        let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let digits = chunk.len() + 1;
            for i in 0..digits {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out.push('-');
        run.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut run, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// `name` in modified UTF-7 as UTF-8; `None` when it is not valid modified UTF-7 (then the
/// name is shown as it is stored).
pub fn decode(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if !(0x20..0x7f).contains(&b) {
            return None;
        }
        if b != b'&' {
            out.push(b as char);
            rest = tail;
            continue;
        }
        let end = tail.iter().position(|&c| c == b'-')?;
        let (encoded, after) = (&tail[..end], &tail[end + 1..]);
        rest = after;
        if encoded.is_empty() {
            out.push('&');
            continue;
        }
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut bytes = Vec::with_capacity(encoded.len() * 3 / 4);
        for &c in encoded {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            bits = (bits << 6) | v;
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                bytes.push((bits >> nbits) as u8);
                bits &= (1 << nbits) - 1;
            }
        }
        // Leftover bits must be zero padding, and the bytes whole UTF-16 units.
        if bits != 0 || nbits >= 6 || bytes.len() % 2 != 0 {
            return None;
        }
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect();
        let text = String::from_utf16(&units).ok()?;
        // A run of printable ASCII must not be encoded (RFC 3501: the shortest form).
        if text.chars().any(|c| (' '..='~').contains(&c)) {
            return None;
        }
        out.push_str(&text);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_rfc_examples() {
        for (utf8, utf7) in [
            ("日本語", "&ZeVnLIqe-"),
            ("Entwürfe/Alt", "Entw&APw-rfe/Alt"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("A&B", "A&-B"),
            ("INBOX", "INBOX"),
            ("😀", "&2D3eAA-"),
        ] {
            assert_eq!(encode(utf8), utf7);
            assert_eq!(decode(utf7).as_deref(), Some(utf8));
        }
    }

    #[test]
    fn refuses_what_is_not_modified_utf7() {
        for bad in ["&ZeVnLIqe", "&Jjo!-", "&AGE-", "é", "&2D3-"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
