//! Response fragments on the wire: strings (atom, quoted or literal as the content
//! requires), flag lists, and dates, so no response carries unescaped client data.

/// Appends `s` as an IMAP string: quoted when it is printable ASCII without CR/LF, a
/// literal otherwise.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() < 1024 && s.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Appends `s` as a synchronising-literal-form string (`{n}\r\n` then the bytes).
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// Appends a parenthesised flag list. Flags come from the backend and were validated as
/// atoms when stored; anything else is dropped rather than breaking the response.
pub fn flags(out: &mut Vec<u8>, flags: &[String]) {
    out.push(b'(');
    let mut first = true;
    for f in flags.iter().filter(|f| is_flag(f)) {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(f.as_bytes());
    }
    out.push(b')');
}

/// Whether `s` is a flag (`\Atom`) or keyword (atom) that can be written unquoted.
pub fn is_flag(s: &str) -> bool {
    let atom = s.strip_prefix('\\').unwrap_or(s);
    !atom.is_empty()
        && atom.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
        })
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Month names as dates on the wire spell them.
pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// An INTERNALDATE (`"02-Jan-2024 10:00:00 +0000"`), quoted, in UTC.
pub fn internal_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "\"{d:02}-{}-{y:04} {:02}:{:02}:{:02} +0000\"",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The day number of a `YYYY-MM-DD` date (how the codec's dates display).
pub fn days_of_iso_date(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    let d = it.next()?.parse().ok()?;
    Some(days_from_civil(y, m, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        string(&mut out, b"a \"b\" \\c");
        assert_eq!(out, b"\"a \\\"b\\\" \\\\c\"");
        out.clear();
        string(&mut out, "é\r\n".as_bytes());
        assert_eq!(out, b"{4}\r\n\xc3\xa9\r\n");
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        for z in [-800_000, -1, 0, 59, 60, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(
            internal_date(1_704_190_000),
            "\"02-Jan-2024 10:06:40 +0000\""
        );
        assert_eq!(days_of_iso_date("2024-01-01"), Some(19_723));
        assert_eq!(days_of_iso_date("2024-x-01"), None);
    }

    #[test]
    fn flags_drop_what_cannot_be_an_atom() {
        let mut out = Vec::new();
        flags(
            &mut out,
            &["\\Seen".into(), "$Fwd".into(), "a b".into(), "x)".into()],
        );
        assert_eq!(out, b"(\\Seen $Fwd)");
    }
}
