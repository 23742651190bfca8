//! Real-world-shaped messages and their ENVELOPE / BODYSTRUCTURE strings as RFC 3501's
//! grammar requires them (laid out the way Dovecot answers for the same messages).

use super::*;
use imap_codec::ResponseCodec;
use imap_codec::decode::Decoder;
use proptest::prelude::*;

fn crlf(s: &str) -> Vec<u8> {
    s.replace('\n', "\r\n").into_bytes()
}

fn structure(msg: &[u8], extended: bool) -> String {
    let mut out = Vec::new();
    body_structure(&mut out, msg, &parse(msg), extended);
    String::from_utf8(out).unwrap()
}

fn env(msg: &[u8]) -> String {
    let mut out = Vec::new();
    envelope(&mut out, &msg[parse(msg).header]);
    String::from_utf8(out).unwrap()
}

fn section<'a>(msg: &'a [u8], path: &[u32]) -> (&'a [u8], &'a [u8]) {
    let p = part_at(&parse(msg), path).expect("part exists").clone();
    (&msg[p.header], &msg[p.body])
}

/// The codec parses the FETCH response we would send.
fn codec_parses(msg: &[u8]) {
    let mut line = b"* 1 FETCH (ENVELOPE ".to_vec();
    envelope(&mut line, &msg[parse(msg).header]);
    line.extend_from_slice(b" BODYSTRUCTURE ");
    body_structure(&mut line, msg, &parse(msg), true);
    line.extend_from_slice(b" BODY ");
    body_structure(&mut line, msg, &parse(msg), false);
    line.extend_from_slice(b")\r\n");
    assert!(!line.contains(&0), "NUL in a string");
    let res = ResponseCodec::default().decode(&line);
    assert!(
        matches!(res, Ok((rest, _)) if rest.is_empty()),
        "{res:?}\n{}",
        String::from_utf8_lossy(&line)
    );
}

const PLAIN: &str = "From: Bob <bob@example.org>
To: alice@example.org
Subject: Lunch plans
Date: Mon, 1 Jan 2024 10:00:00 +0000
Message-ID: <1@example.org>

Shall we meet at noon?
";

#[test]
fn plain_text() {
    let msg = crlf(PLAIN);
    assert_eq!(
        env(&msg),
        "(\"Mon, 1 Jan 2024 10:00:00 +0000\" \"Lunch plans\" \
         ((\"Bob\" NIL \"bob\" \"example.org\")) ((\"Bob\" NIL \"bob\" \"example.org\")) \
         ((\"Bob\" NIL \"bob\" \"example.org\")) ((NIL NIL \"alice\" \"example.org\")) \
         NIL NIL NIL \"<1@example.org>\")"
    );
    assert_eq!(
        structure(&msg, true),
        "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 24 1 NIL NIL NIL NIL)"
    );
    assert_eq!(
        structure(&msg, false),
        "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 24 1)"
    );
    // Part 1 of a single-part message is its body.
    assert_eq!(section(&msg, &[1]).1, b"Shall we meet at noon?\r\n");
    assert!(part_at(&parse(&msg), &[2]).is_none());
    assert!(part_at(&parse(&msg), &[1, 1]).is_none());
    codec_parses(&msg);
}

const ALTERNATIVE: &str = "From: =?UTF-8?Q?Ren=C3=A9?= <rene@example.org>
To: \"Smith, John\" <john@example.org>, undisclosed:;
Cc: team: ann@example.org, (comment) ben@example.org;
Reply-To: <@relay.example.net:rene@example.org>
Subject: =?UTF-8?B?Q2Fmw6k=?=
In-Reply-To: <0@example.org>
Content-Type: multipart/alternative; boundary=\"b1\"
MIME-Version: 1.0

preamble
--b1
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Caf=C3=A9 soon=
!
--b1
Content-Type: text/html; charset=\"utf-8\"

<p>Café</p>
--b1--
epilogue
";

#[test]
fn multipart_alternative_with_quoted_printable() {
    let msg = crlf(ALTERNATIVE);
    assert_eq!(
        env(&msg),
        "(NIL \"=?UTF-8?B?Q2Fmw6k=?=\" \
         ((\"=?UTF-8?Q?Ren=C3=A9?=\" NIL \"rene\" \"example.org\")) \
         ((\"=?UTF-8?Q?Ren=C3=A9?=\" NIL \"rene\" \"example.org\")) \
         ((NIL \"@relay.example.net\" \"rene\" \"example.org\")) \
         ((\"Smith, John\" NIL \"john\" \"example.org\")(NIL NIL \"undisclosed\" NIL)(NIL NIL NIL NIL)) \
         ((NIL NIL \"team\" NIL)(NIL NIL \"ann\" \"example.org\")(NIL NIL \"ben\" \"example.org\")(NIL NIL NIL NIL)) \
         NIL \"<0@example.org>\" NIL)"
    );
    assert_eq!(
        structure(&msg, true),
        "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 18 2 NIL NIL NIL NIL)\
         (\"text\" \"html\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 12 1 NIL NIL NIL NIL) \
         \"alternative\" (\"boundary\" \"b1\") NIL NIL NIL)"
    );
    let (mime, body) = section(&msg, &[1]);
    assert_eq!(
        mime,
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    );
    assert_eq!(body, b"Caf=C3=A9 soon=\r\n!");
    let part = part_at(&parse(&msg), &[1]).unwrap().clone();
    assert_eq!(decoded_body(&msg, &part).unwrap(), "Café soon!".as_bytes());
    assert_eq!(section(&msg, &[2]).1, "<p>Café</p>".as_bytes());
    codec_parses(&msg);
}

pub(crate) const MIXED: &str = "From: alice@example.org
To: bob@example.org
Subject: report
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: text/plain

See attached.
--outer
Content-Type: application/octet-stream; name=\"data.bin\"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename=\"data.bin\"
Content-Language: en, de
Content-Location: http://example.org/data.bin
Content-ID: <data@example.org>
Content-Description: some data

AAEC
/w==
--outer
Content-Type: message/rfc822

From: carol@example.org
Subject: inner
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain

inner text
--inner
Content-Type: text/html

<b>inner</b>
--inner--
--outer--
";

#[test]
fn multipart_mixed_with_attachment_and_nested_message() {
    let msg = crlf(MIXED);
    let inner_env = "(NIL \"inner\" ((NIL NIL \"carol\" \"example.org\")) \
         ((NIL NIL \"carol\" \"example.org\")) ((NIL NIL \"carol\" \"example.org\")) \
         NIL NIL NIL NIL NIL)";
    assert_eq!(
        structure(&msg, true),
        format!(
            "((\"text\" \"plain\" NIL NIL NIL \"7bit\" 13 1 NIL NIL NIL NIL)\
             (\"application\" \"octet-stream\" (\"name\" \"data.bin\") \"<data@example.org>\" \
             \"some data\" \"base64\" 10 NIL (\"attachment\" (\"filename\" \"data.bin\")) \
             (\"en\" \"de\") \"http://example.org/data.bin\")\
             (\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 204 {inner_env} \
             ((\"text\" \"plain\" NIL NIL NIL \"7bit\" 10 1 NIL NIL NIL NIL)\
             (\"text\" \"html\" NIL NIL NIL \"7bit\" 12 1 NIL NIL NIL NIL) \
             \"alternative\" (\"boundary\" \"inner\") NIL NIL NIL) 13 NIL NIL NIL NIL) \
             \"mixed\" (\"boundary\" \"outer\") NIL NIL NIL)"
        )
    );
    let part = part_at(&parse(&msg), &[2]).unwrap().clone();
    assert_eq!(decoded_body(&msg, &part).unwrap(), [0, 1, 2, 0xff]);
    // Sections inside the encapsulated message.
    assert_eq!(section(&msg, &[3, 2]).1, b"<b>inner</b>");
    assert_eq!(section(&msg, &[3, 2]).0, b"Content-Type: text/html\r\n\r\n");
    let (mime, nested) = section(&msg, &[3]);
    assert_eq!(mime, b"Content-Type: message/rfc822\r\n\r\n");
    assert!(nested.starts_with(b"From: carol@example.org\r\n"));
    assert!(
        nested.ends_with(b"\r\n--inner--"),
        "{}",
        String::from_utf8_lossy(nested)
    );
    let root = parse(&msg);
    let Kind::Message(inner) = &part_at(&root, &[3]).unwrap().kind else {
        panic!("part 3 is a message");
    };
    assert!(msg[inner.header.clone()].ends_with(b"boundary=inner\r\n\r\n"));
    codec_parses(&msg);
}

#[test]
fn eight_bit_headers_are_literals() {
    let msg = "From: José <jose@example.org>\r\nSubject: Café à midi\r\n\r\nsalut\r\n".as_bytes();
    assert_eq!(
        env(msg),
        "(NIL {13}\r\nCafé à midi ((\"José\" NIL \"jose\" \"example.org\")) \
         ((\"José\" NIL \"jose\" \"example.org\")) ((\"José\" NIL \"jose\" \"example.org\")) \
         NIL NIL NIL NIL NIL)"
            .replace("(\"José\"", "({5}\r\nJosé")
    );
    codec_parses(msg);
}

#[test]
fn malformed_boundary_yields_one_empty_part() {
    let msg = crlf(
        "Content-Type: multipart/mixed; boundary=missing\n\n--other\nContent-Type: text/plain\n\nx\n",
    );
    assert_eq!(
        structure(&msg, false),
        "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) \"mixed\")"
    );
    // An unterminated multipart keeps its last part up to the end.
    let msg = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\nfirst\n--b\n\nsecond\n");
    assert_eq!(section(&msg, &[2]).1, b"second\r\n");
    codec_parses(&msg);
}

#[test]
fn digest_parts_default_to_messages_and_unknown_cte_is_reported() {
    let msg =
        crlf("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\nbody\n--d--\n");
    assert_eq!(
        structure(&msg, false),
        "((\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 20 \
         (NIL \"one\" NIL NIL NIL NIL NIL NIL NIL NIL) \
         (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 4 1) 3) \"digest\")"
    );
    let msg = crlf("Content-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n");
    let root = parse(&msg);
    let part = part_at(&root, &[1]).unwrap();
    assert_eq!(
        decoded_body(&msg, part),
        Err(UnknownCte("x-uuencode".into()))
    );
}

#[test]
fn decoders() {
    assert_eq!(base64_decode(b"aGVs\r\nbG8=\r\n"), b"hello");
    assert_eq!(base64_decode(b"*a*GVsbG8"), b"hello");
    assert_eq!(qp_decode(b"a=3Db =\r\nc  \r\n=ZZ="), b"a=b c\r\n=ZZ");
}

#[test]
fn deep_nesting_stops_within_what_clients_parse() {
    // Encapsulated messages, then multiparts, nested far deeper than MAX_DEPTH.
    let mut msg = Vec::new();
    for _ in 0..200 {
        msg.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
    }
    msg.extend_from_slice(b"Subject: deep\r\n\r\nbody\r\n");
    codec_parses(&msg);
    let mut msg = Vec::new();
    for i in 0..200 {
        msg.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes(),
        );
    }
    msg.extend_from_slice(b"\r\nbody\r\n");
    codec_parses(&msg);
    let depth = |s: &str| {
        s.bytes()
            .scan(0i32, |d, b| {
                *d += i32::from(b == b'(') - i32::from(b == b')');
                Some(*d)
            })
            .max()
    };
    assert!(depth(&structure(&msg, false)) <= Some(MAX_DEPTH as i32 + 2));
}

fn mime_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"--b\r\n".to_vec()),
        Just(b"--b--\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"Content-Type: multipart/mixed; boundary=b\r\n".to_vec()),
        Just(b"Content-Type: message/rfc822\r\n".to_vec()),
        Just(b"Content-Transfer-Encoding: base64\r\n".to_vec()),
        Just(b"From: \"a\\\" <b@c>, g: x@y;\r\n".to_vec()),
        Just(b"To: <@a,@b:c@d> (x\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..20),
    ];
    proptest::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes_render_within_the_grammar(msg in proptest::collection::vec(any::<u8>(), 0..400)) {
        codec_parses(&msg);
    }

    #[test]
    fn mime_shaped_input_renders_within_the_grammar(msg in mime_like()) {
        codec_parses(&msg);
        let root = parse(&msg);
        for path in [&[1u32][..], &[1, 1], &[2, 1, 1], &[3]] {
            if let Some(p) = part_at(&root, path) {
                prop_assert!(p.header.start <= p.header.end && p.body.end <= msg.len());
                let _ = decoded_body(&msg, p);
            }
        }
    }
}
