//! The fuzz target's property (`tern_imap::harness`: no panic, no stall, whole responses,
//! one tagged answer per command) on a deterministic corpus: a few valid sessions that reach
//! every state and framing path, and thousands of mutations of them from a seeded PRNG, so a
//! failure replays exactly (the failing input is printed in the layout `cargo fuzz` takes).

use tern_imap::harness::{run, transcript};

/// Flag bits of the harness's first byte.
const TLS: u8 = 0x01;
const STARTTLS: u8 = 0x02;
const LOGGED_IN: u8 = 0x04;

/// Lays `text` out for the harness: `flags`, then pieces of `chunk` bytes (1..=64), each
/// after its length byte.
fn layout(flags: u8, chunk: usize, text: &[u8]) -> Vec<u8> {
    let chunk = chunk.clamp(1, 64);
    let mut data = vec![flags];
    for piece in text.chunks(chunk) {
        data.push((piece.len() - 1) as u8);
        data.extend_from_slice(piece);
    }
    data
}

/// Valid sessions, each with the answers it must get (checked on the unmutated input).
fn seeds() -> Vec<(Vec<u8>, Vec<&'static str>)> {
    vec![
        (
            layout(
                TLS,
                7,
                b"a CAPABILITY\r\nb LOGIN alice secret\r\nc SELECT INBOX\r\n\
                  d FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)\r\ne LOGOUT\r\nf NOOP\r\n",
            ),
            vec!["b OK", "* 3 EXISTS", "* 3 FETCH", "e OK"],
        ),
        (
            layout(
                LOGGED_IN,
                64,
                b"f UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY[]<0.10> \
                  BINARY.PEEK[2] RFC822.SIZE)\r\ng STORE 1,3 +FLAGS.SILENT (\\Seen $Later)\r\n\
                  h SEARCH OR SUBJECT lunch KEYWORD $Later\r\ni COPY 2:* Trash\r\n\
                  j STORE 1 +FLAGS (\\Deleted)\r\nk EXPUNGE\r\nl UID SEARCH ALL\r\n",
            ),
            vec![
                "h2 OK",
                "f OK",
                "* SEARCH 1 3",
                "i OK [COPYUID",
                "* 1 EXPUNGE",
                "* SEARCH 2 3",
            ],
        ),
        (
            layout(
                TLS,
                3,
                b"k APPEND INBOX (\\Flagged) {22}\r\nSubject: lit\r\n\r\nbody\r\n\r\n\
                  l APPEND INBOX {5+}\r\nhello\r\nm LOGIN {5}\r\nalice {6}\r\nsecret\r\n\
                  n APPEND INBOX {5}\r\nhello\r\n",
            ),
            vec![
                "+ Ready for literal data",
                "k BAD",
                "l BAD",
                "m OK",
                "n OK [APPENDUID",
            ],
        ),
        (
            layout(
                TLS,
                11,
                b"n AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\no SELECT INBOX\r\n\
                  p IDLE\r\nDONE\r\nq NOOP\r\nr UNSELECT\r\n",
            ),
            vec!["+ ", "n OK", "o OK", "p OK", "q OK", "r OK"],
        ),
        (
            layout(STARTTLS, 64, b"r STARTTLS\r\ns CAPABILITY\r\n"),
            vec!["r OK"],
        ),
        (
            layout(
                LOGGED_IN,
                13,
                b"t CREATE \"&ZeVnLIqe-\"\r\nu RENAME INBOX Old\r\nv LIST \"\" *\r\n\
                  w STATUS Old (MESSAGES UIDNEXT)\r\nx DELETE Old\r\ny EXAMINE Trash\r\n\
                  z UID EXPUNGE 1:*\r\n",
            ),
            vec!["t OK", "u OK", "&ZeVnLIqe-", "w OK", "x OK", "y OK", "z NO"],
        ),
        (
            layout(
                LOGGED_IN,
                64,
                b"a FETCH 1:* (FLAGS\r\n)\r\nb APPEND INBOX {99999999}\r\nc FETCH 0 FLAGS\r\n\
                  d NOOP\r\n",
            ),
            vec!["a BAD", "b NO [TOOBIG]", "c BAD", "d OK"],
        ),
        (
            // The forms `tern_imap::extended` takes out before the codec: ESEARCH return
            // options, SEARCHRES's `$`, extended LIST with STATUS, and IMAP4rev2.
            layout(
                LOGGED_IN,
                9,
                b"e SEARCH RETURN (MIN MAX COUNT SAVE) OR SUBJECT lunch KEYWORD $Later\r\n\
                  f UID FETCH $ (FLAGS)\r\ng SEARCH RETURN (BOGUS) ALL\r\n\
                  h LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (INBOX {1+}\r\n%) RETURN \
                  (CHILDREN STATUS (MESSAGES SIZE))\r\ni LIST (NOPE) \"\" *\r\n\
                  j ENABLE IMAP4rev2\r\nk SEARCH NOT $\r\nl GETQUOTAROOT INBOX\r\n",
            ),
            vec![
                "* ESEARCH (TAG \"e\") MIN 1 MAX 1 COUNT 1",
                "* 1 FETCH (UID 1 FLAGS ())",
                "g BAD Unknown SEARCH RETURN option BOGUS",
                "* STATUS \"INBOX\" (MESSAGES 3 SIZE",
                "i BAD Unknown LIST selection option NOPE",
                "* ENABLED IMAP4rev2",
                "* ESEARCH (TAG \"k\") ALL 2:3",
                "* QUOTAROOT \"INBOX\"\r\nl OK",
            ],
        ),
        (
            // MULTIAPPEND (RFC 3502): several literals in one command, each announced, then
            // LIST's `\NonExistent` for a subscription whose mailbox was deleted.
            layout(
                LOGGED_IN,
                6,
                b"m APPEND INBOX (\\Seen) \"01-Jan-2024 10:00:00 +0000\" {3}\r\nabc \
                  {2+}\r\nde ~{3}\r\nf\0g\r\nn APPEND INBOX {1}\r\nx \"bad\" {1}\r\ny\r\n\
                  o CREATE Gone\r\np DELETE Gone\r\nq LIST (SUBSCRIBED) \"\" G*\r\n",
            ),
            vec![
                "* 6 EXISTS",
                "m OK [APPENDUID 1 4:6]",
                "n BAD Malformed APPEND",
                "* LIST (\\NonExistent \\Subscribed) \"/\" \"Gone\"\r\nq OK",
            ],
        ),
    ]
}

/// Bytes that IMAP syntax gives meaning to, and the numbers at its edges.
const TOKENS: [&[u8]; 30] = [
    b"{",
    b"}",
    b"(",
    b")",
    b"[",
    b"]",
    b"<",
    b">",
    b"*",
    b":",
    b",",
    b"\r\n",
    b"\"",
    b"\\",
    b"\0",
    b"\xff",
    b"{0}\r\n",
    b"{4294967295}\r\n",
    b"{3+}\r\n",
    b"~{2}\r\n",
    b" 4294967296",
    b" BODY[1.2.MIME]<0.1>",
    b" (UNCHANGEDSINCE 1)",
    b"DONE\r\n",
    b" RETURN (MIN SAVE)",
    b" $",
    b" RETURN (STATUS (SIZE))",
    b"(SUBSCRIBED RECURSIVEMATCH)",
    b"{1-}\r\n",
    b" (\\Seen) {1}\r\nx {1}\r\n",
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = rng.next() as u8;
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            3 => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(32)).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let to = (from + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..to].iter().copied());
            }
            _ => data.truncate(at.max(1)),
        }
    }
    data
}

#[test]
fn seed_sessions_get_their_answers() {
    for (i, (data, wanted)) in seeds().iter().enumerate() {
        let out = transcript(data).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        let text = String::from_utf8_lossy(&out);
        for want in wanted {
            assert!(text.contains(want), "seed {i} lacks {want:?}:\n{text}");
        }
    }
    // STARTTLS drops what was pipelined after it in clear text.
    let out = transcript(&seeds()[4].0).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("s OK"));
    // LOGOUT ends the session: the NOOP after it is not answered.
    let out = transcript(&seeds()[0].0).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("f OK"));
}

#[test]
fn mutated_sessions_keep_the_invariants() {
    const INPUTS: usize = 4000;
    let seeds: Vec<Vec<u8>> = seeds().into_iter().map(|(d, _)| d).collect();
    let mut rng = Rng(0x7e51_0f1a_2b3c_4d5e);
    let started = std::time::Instant::now();
    for n in 0..INPUTS {
        let data = mutate(&mut rng, &seeds);
        if let Err(broken) = run(&data) {
            panic!(
                "input {n} breaks an invariant: {broken}\n\
                 replay: printf '{}' > crash && cargo +nightly fuzz run session crash",
                data.iter()
                    .map(|b| format!("\\x{b:02x}"))
                    .collect::<String>()
            );
        }
    }
    eprintln!("{INPUTS} mutated sessions in {:?}", started.elapsed());
}

#[test]
fn arbitrary_bytes_keep_the_invariants() {
    let mut rng = Rng(0x5eed);
    for n in 0..1000 {
        let len = rng.below(300);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Err(broken) = run(&data) {
            panic!("random input {n} ({data:?}): {broken}");
        }
    }
}
