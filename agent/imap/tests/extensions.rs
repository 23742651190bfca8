//! The extensions on top of IMAP4rev1, answer by answer, through `Session::handle_message`
//! (the server's own decoding, `tern_imap::extended`, then the codec) over the in-memory
//! backend: ESEARCH (RFC 4731), SEARCHRES (RFC 5182), LIST-EXTENDED and LIST-STATUS (RFC
//! 5258, 5819, 6154), QUOTA (RFC 9208), STATUS=SIZE (RFC 8438), the SENT* search keys, and
//! what changes after `ENABLE IMAP4rev2` (RFC 9051).

use std::sync::Arc;

use tern_imap::session::Responses;
use tern_imap::{Account, Backend, Limits, MemoryBackend, Session, SessionConfig, Throttle};

const MESSAGES: [&str; 5] = [
    "From: bob@example.org\r\nSubject: one\r\nDate: Mon, 1 Jan 2024 23:30:00 -0500\r\n\r\nfirst\r\n",
    "From: carol@example.org\r\nSubject: two\r\nDate: 2 Jan 2024 01:00:00 +1300\r\n\r\nsecond\r\n",
    "From: dave@example.org\r\nSubject: three\r\n\r\nno date\r\n",
    "From: erin@example.org\r\nSubject: four\r\nDate: Wed, 10 Jan 24 08:00 GMT\r\n\r\nfourth\r\n",
    "From: bob@example.org\r\nSubject: five\r\nDate: Thu, 32 Jan 2024 08:00:00 +0000\r\n\r\nbad date\r\n",
];

fn session(backend: &Arc<MemoryBackend>) -> Session<MemoryBackend> {
    let config = SessionConfig {
        hostname: "imap.test".into(),
        starttls: false,
        peer: "192.0.2.7".parse().unwrap(),
    };
    Session::new(
        Arc::clone(backend),
        Throttle::new(Limits::default().throttle()),
        config,
        true,
    )
}

/// alice with [`MESSAGES`] in INBOX, logged in, INBOX selected.
async fn selected() -> (Arc<MemoryBackend>, Session<MemoryBackend>) {
    let backend = Arc::new(MemoryBackend::new());
    backend.add_account("alice", "secret");
    for m in MESSAGES {
        backend.deliver("alice", "INBOX", m.as_bytes()).unwrap();
    }
    let mut s = session(&backend);
    ok(&mut s, "l LOGIN alice secret").await;
    ok(&mut s, "s SELECT INBOX").await;
    (backend, s)
}

async fn run(s: &mut Session<MemoryBackend>, line: &str) -> String {
    let mut buf = Vec::new();
    let mut line = line.as_bytes().to_vec();
    if !line.ends_with(b"\r\n") {
        line.extend_from_slice(b"\r\n");
    }
    s.handle_message(&line, &mut Responses::buffered(&mut buf))
        .await;
    String::from_utf8(buf).unwrap()
}

/// Runs `line` and asserts it ends `OK`; returns the whole answer.
async fn ok(s: &mut Session<MemoryBackend>, line: &str) -> String {
    let out = run(s, line).await;
    let tag = line.split(' ').next().unwrap();
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("{tag} OK")), "{line}: {out}");
    out
}

/// The untagged part of an OK answer.
async fn untagged(s: &mut Session<MemoryBackend>, line: &str) -> String {
    let out = ok(s, line).await;
    let cut = out[..out.len() - 2].rfind("\r\n").map_or(0, |i| i + 2);
    out[..cut].to_owned()
}

#[tokio::test]
async fn esearch_answers_min_max_count_all() {
    let (_, mut s) = selected().await;
    ok(&mut s, "a STORE 2,4 +FLAGS (\\Flagged)").await;
    assert_eq!(
        untagged(&mut s, "b SEARCH RETURN (MIN MAX COUNT ALL) ALL").await,
        "* ESEARCH (TAG \"b\") MIN 1 MAX 5 COUNT 5 ALL 1:5\r\n"
    );
    assert_eq!(
        untagged(&mut s, "c UID SEARCH RETURN () NOT FLAGGED").await,
        "* ESEARCH (TAG \"c\") UID ALL 1,3,5\r\n"
    );
    assert_eq!(
        untagged(&mut s, "d SEARCH RETURN (COUNT MIN) FLAGGED").await,
        "* ESEARCH (TAG \"d\") MIN 2 COUNT 2\r\n"
    );
    // Nothing found: only the tag, and COUNT 0 when asked for.
    assert_eq!(
        untagged(&mut s, "e SEARCH RETURN (MIN MAX ALL COUNT) DELETED").await,
        "* ESEARCH (TAG \"e\") COUNT 0\r\n"
    );
    assert_eq!(
        untagged(&mut s, "f UID SEARCH RETURN (MIN MAX) DELETED").await,
        "* ESEARCH (TAG \"f\") UID\r\n"
    );
    // A plain SEARCH of an IMAP4rev1 session is unchanged.
    assert_eq!(
        untagged(&mut s, "g SEARCH FLAGGED").await,
        "* SEARCH 2 4\r\n"
    );
    // With CHARSET and a literal after the options.
    assert_eq!(
        untagged(
            &mut s,
            "h SEARCH RETURN (ALL) CHARSET UTF-8 SUBJECT {3+}\r\ntwo"
        )
        .await,
        "* ESEARCH (TAG \"h\") ALL 2\r\n"
    );
    for (line, answer) in [
        (
            "i SEARCH RETURN (BOGUS) ALL",
            "i BAD Unknown SEARCH RETURN option BOGUS\r\n",
        ),
        (
            "j SEARCH RETURN (MIN",
            "j BAD Malformed SEARCH RETURN options: expected RETURN (option ...)\r\n",
        ),
        (
            "k SEARCH RETURN MIN ALL",
            "k BAD Malformed SEARCH RETURN options: expected RETURN (option ...)\r\n",
        ),
        ("l SEARCH RETURN (ALL) BOGUSKEY", "l BAD Syntax error\r\n"),
    ] {
        assert_eq!(run(&mut s, line).await, answer, "{line}");
    }
}

#[tokio::test]
async fn searchres_saves_and_dollar_reuses() {
    let (backend, mut s) = selected().await;
    // `$` before any SAVE is empty, not an error.
    assert_eq!(untagged(&mut s, "a SEARCH $").await, "* SEARCH\r\n");
    assert_eq!(run(&mut s, "b FETCH $ FLAGS").await, "b OK completed\r\n");
    assert_eq!(run(&mut s, "c COPY $ Trash").await, "c OK No messages\r\n");
    // SAVE alone answers nothing but OK.
    assert_eq!(
        run(&mut s, "d SEARCH RETURN (SAVE) OR SUBJECT two SUBJECT four").await,
        "d OK completed\r\n"
    );
    assert_eq!(
        untagged(&mut s, "e FETCH $ (UID)").await,
        "* 2 FETCH (UID 2)\r\n* 4 FETCH (UID 4)\r\n"
    );
    assert_eq!(
        untagged(&mut s, "f UID STORE $ +FLAGS (\\Flagged)").await,
        "* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n* 4 FETCH (UID 4 FLAGS (\\Flagged))\r\n"
    );
    assert_eq!(
        untagged(&mut s, "g SEARCH OR $ 1").await,
        "* SEARCH 1 2 4\r\n"
    );
    assert_eq!(
        untagged(&mut s, "h UID SEARCH NOT UID $").await,
        "* SEARCH 1 3 5\r\n"
    );
    let copied = run(&mut s, "i UID COPY $ Trash").await;
    assert_eq!(copied, "i OK [COPYUID 3 2,4 1,2] COPY completed\r\n");
    // SAVE with ALL and MIN saves everything found; `$` within the SAVE is the old result.
    assert_eq!(
        untagged(&mut s, "j SEARCH RETURN (SAVE MIN ALL) OR $ 5").await,
        "* ESEARCH (TAG \"j\") MIN 2 ALL 2,4:5\r\n"
    );
    // Another session expunges message 4: it drops out of `$`.
    let account = Account {
        name: "alice".into(),
    };
    backend.expunge(&account, "INBOX", &[4]).await.unwrap();
    assert_eq!(untagged(&mut s, "k NOOP").await, "* 4 EXPUNGE\r\n");
    assert_eq!(
        untagged(&mut s, "l FETCH $ (UID)").await,
        "* 2 FETCH (UID 2)\r\n* 4 FETCH (UID 5)\r\n"
    );
    // MIN (or MAX) alone saves just that message.
    ok(&mut s, "m SEARCH RETURN (SAVE MAX) ALL").await;
    assert_eq!(
        untagged(&mut s, "n UID SEARCH UID $").await,
        "* SEARCH 5\r\n"
    );
    ok(&mut s, "o STORE $ +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(untagged(&mut s, "p UID EXPUNGE $").await, "* 4 EXPUNGE\r\n");
    // A SEARCH with SAVE that fails leaves `$` empty.
    ok(&mut s, "q SEARCH RETURN (SAVE) ALL").await;
    backend.set_unavailable(true);
    assert!(
        run(&mut s, "r SEARCH RETURN (SAVE) SUBJECT one")
            .await
            .starts_with("r NO [UNAVAILABLE]")
    );
    backend.set_unavailable(false);
    assert_eq!(untagged(&mut s, "t SEARCH $").await, "* SEARCH\r\n");
    // A new selection starts with `$` empty.
    ok(&mut s, "u SEARCH RETURN (SAVE) ALL").await;
    ok(&mut s, "v EXAMINE INBOX").await;
    assert_eq!(untagged(&mut s, "w SEARCH $").await, "* SEARCH\r\n");
    ok(&mut s, "x SEARCH RETURN (SAVE) ALL").await;
    ok(&mut s, "y UNSELECT").await;
    ok(&mut s, "z SELECT INBOX").await;
    assert_eq!(untagged(&mut s, "z1 SEARCH $").await, "* SEARCH\r\n");
    // `$` is a whole set, not part of one.
    assert_eq!(
        run(&mut s, "z2 FETCH 1,$ FLAGS").await,
        "z2 BAD Syntax error\r\n"
    );
}

#[tokio::test]
async fn sent_keys_compare_the_date_header_in_its_own_zone() {
    let (_, mut s) = selected().await;
    // Message 1 was sent on 1 Jan at 23:30 -0500 (2 Jan in UTC), message 2 on 2 Jan at
    // 01:00 +1300 (1 Jan in UTC); message 3 has no Date:, message 5 an impossible one.
    for (line, answer) in [
        ("a SEARCH SENTON 1-Jan-2024", "* SEARCH 1\r\n"),
        ("b SEARCH SENTON 2-Jan-2024", "* SEARCH 2\r\n"),
        ("c SEARCH SENTBEFORE 2-Jan-2024", "* SEARCH 1\r\n"),
        ("d SEARCH SENTSINCE 2-Jan-2024", "* SEARCH 2 4\r\n"),
        ("e SEARCH SENTSINCE 10-Jan-2024", "* SEARCH 4\r\n"),
        ("f SEARCH NOT SENTBEFORE 1-Jan-2030", "* SEARCH 3 5\r\n"),
        (
            "g UID SEARCH OR SENTON 10-Jan-2024 SENTON 1-Jan-2024",
            "* SEARCH 1 4\r\n",
        ),
    ] {
        assert_eq!(untagged(&mut s, line).await, answer, "{line}");
    }
}

#[tokio::test]
async fn extended_list_selects_and_returns() {
    let backend = Arc::new(MemoryBackend::new());
    backend.add_account("alice", "secret");
    backend
        .deliver("alice", "Sent", b"Subject: s\r\n\r\nsent\r\n")
        .unwrap();
    let mut s = session(&backend);
    ok(&mut s, "a LOGIN alice secret").await;
    ok(&mut s, "b0 CREATE Archive").await;
    ok(&mut s, "b CREATE Archive/2024").await;
    ok(&mut s, "c UNSUBSCRIBE Archive").await;
    ok(&mut s, "d UNSUBSCRIBE Trash").await;
    assert_eq!(
        untagged(&mut s, "e LIST (SUBSCRIBED) \"\" *").await,
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"Archive/2024\"\r\n\
         * LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\r\n\
         * LIST (\\HasNoChildren \\Sent \\Subscribed) \"/\" \"Sent\"\r\n"
    );
    assert_eq!(
        untagged(&mut s, "f LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %").await,
        "* LIST (\\HasChildren) \"/\" \"Archive\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n\
         * LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\r\n\
         * LIST (\\HasNoChildren \\Sent \\Subscribed) \"/\" \"Sent\"\r\n"
    );
    assert_eq!(
        untagged(&mut s, "g LIST (SPECIAL-USE) \"\" * RETURN (SUBSCRIBED)").await,
        "* LIST (\\HasNoChildren \\Sent \\Subscribed) \"/\" \"Sent\"\r\n\
         * LIST (\\HasNoChildren \\Trash) \"/\" \"Trash\"\r\n"
    );
    assert_eq!(
        untagged(
            &mut s,
            "h LIST \"\" (INBOX Sent) RETURN (CHILDREN STATUS (MESSAGES UIDNEXT SIZE DELETED))"
        )
        .await,
        "* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n\
         * STATUS \"INBOX\" (MESSAGES 0 UIDNEXT 1 SIZE 0 DELETED 0)\r\n\
         * LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n\
         * STATUS \"Sent\" (MESSAGES 1 UIDNEXT 2 SIZE 20 DELETED 0)\r\n"
    );
    assert_eq!(
        untagged(&mut s, "i LIST \"\" \"Arch*\" RETURN (SPECIAL-USE)").await,
        "* LIST (\\HasChildren) \"/\" \"Archive\"\r\n\
         * LIST (\\HasNoChildren) \"/\" \"Archive/2024\"\r\n"
    );
    for (line, answer) in [
        (
            "j LIST (NOPE) \"\" *",
            "j BAD Unknown LIST selection option NOPE\r\n",
        ),
        (
            "k LIST \"\" * RETURN (STATUS (MESSAGES BOGUS))",
            "k BAD Unknown STATUS item BOGUS\r\n",
        ),
        (
            "l LIST (RECURSIVEMATCH) \"\" *",
            "l BAD RECURSIVEMATCH needs another selection option\r\n",
        ),
        (
            "m LIST \"\" (INBOX",
            "m BAD Malformed LIST: unclosed patterns\r\n",
        ),
    ] {
        assert_eq!(run(&mut s, line).await, answer, "{line}");
    }
}

#[tokio::test]
async fn status_size_and_deleted() {
    let (_, mut s) = selected().await;
    ok(&mut s, "a STORE 1:2 +FLAGS (\\Deleted)").await;
    let size: usize = MESSAGES.iter().map(|m| m.len()).sum();
    assert_eq!(
        untagged(&mut s, "b STATUS INBOX (MESSAGES SIZE DELETED UNSEEN)").await,
        format!("* STATUS \"INBOX\" (MESSAGES 5 SIZE {size} DELETED 2 UNSEEN 5)\r\n")
    );
}

#[tokio::test]
async fn quota_roots_resources_and_overquota() {
    let (backend, mut s) = selected().await;
    assert_eq!(
        untagged(&mut s, "a GETQUOTAROOT INBOX").await,
        "* QUOTAROOT \"INBOX\"\r\n"
    );
    assert_eq!(
        run(&mut s, "b GETQUOTA \"\"").await,
        "b NO [NONEXISTENT] No such quota root\r\n"
    );
    let used: usize = MESSAGES.iter().map(|m| m.len()).sum();
    backend.set_quota("alice", 10 * 1024);
    assert_eq!(
        untagged(&mut s, "c GETQUOTAROOT Sent").await,
        format!(
            "* QUOTAROOT \"Sent\" \"\"\r\n* QUOTA \"\" (STORAGE {} 10)\r\n",
            used.div_ceil(1024)
        )
    );
    assert_eq!(
        untagged(&mut s, "d GETQUOTA \"\"").await,
        "* QUOTA \"\" (STORAGE 1 10)\r\n"
    );
    assert_eq!(
        run(&mut s, "e GETQUOTA \"other\"").await,
        "e NO [NONEXISTENT] No such quota root\r\n"
    );
    assert_eq!(
        run(&mut s, "f SETQUOTA \"\" (STORAGE 1)").await,
        "f NO [NOPERM] Quotas are set by the administrator\r\n"
    );
    assert!(
        run(&mut s, "g GETQUOTAROOT Nowhere")
            .await
            .starts_with("g NO [NONEXISTENT]")
    );
    let big = "x".repeat(11 * 1024);
    assert_eq!(
        run(
            &mut s,
            &format!("h APPEND INBOX {{{}+}}\r\n{big}", big.len())
        )
        .await,
        "h NO [OVERQUOTA] The account is over its quota\r\n"
    );
    let caps = untagged(&mut s, "i CAPABILITY").await;
    assert!(
        caps.contains(" QUOTA QUOTA=RES-STORAGE") && !caps.contains("RES-MESSAGE"),
        "{caps}"
    );
}

#[tokio::test]
async fn imap4rev2_switches_answers_and_names() {
    let (backend, mut rev1) = selected().await;
    let caps = untagged(&mut rev1, "a CAPABILITY").await;
    for cap in [
        "IMAP4rev1 IMAP4rev2",
        "ESEARCH",
        "SEARCHRES",
        "LIST-EXTENDED",
        "LIST-STATUS",
        "STATUS=SIZE",
        "LITERAL+",
        "ENABLE",
        "NAMESPACE",
        "UIDPLUS",
        "MOVE",
        "BINARY",
        "SPECIAL-USE",
        "IDLE",
        "UNSELECT",
    ] {
        assert!(caps.contains(cap), "{cap}: {caps}");
    }
    let mut rev2 = session(&backend);
    ok(&mut rev2, "a LOGIN alice secret").await;
    assert_eq!(
        untagged(&mut rev2, "b ENABLE IMAP4rev2 CONDSTORE").await,
        "* ENABLED IMAP4rev2 CONDSTORE\r\n"
    );
    let select = untagged(&mut rev2, "c SELECT INBOX").await;
    assert!(
        select.contains("* 5 EXISTS\r\n* LIST () \"/\" \"INBOX\"\r\n")
            && !select.contains("RECENT"),
        "{select}"
    );
    // A plain SEARCH is answered as RETURN (ALL).
    assert_eq!(
        untagged(&mut rev2, "d SEARCH SUBJECT t").await,
        "* ESEARCH (TAG \"d\") ALL 2:3\r\n"
    );
    assert_eq!(
        untagged(&mut rev2, "e UID SEARCH DELETED").await,
        "* ESEARCH (TAG \"e\") UID\r\n"
    );
    // UTF-8 names in both directions; the store keeps modified UTF-7, so a rev1 session
    // sees the same mailbox.
    ok(&mut rev2, "f CREATE \"Entwürfe\"").await;
    ok(&mut rev2, "g CREATE {9+}\r\n日本語").await;
    assert_eq!(
        untagged(&mut rev2, "h LIST \"\" \"Entw*\"").await,
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" {9}\r\nEntwürfe\r\n"
    );
    assert_eq!(
        untagged(&mut rev2, "i STATUS \"日本語\" (MESSAGES)").await,
        "* STATUS {9}\r\n日本語 (MESSAGES 0)\r\n"
    );
    assert_eq!(
        untagged(&mut rev1, "j LIST \"\" \"Entw*\"").await,
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"Entw&APw-rfe\"\r\n"
    );
    ok(&mut rev1, "k STATUS &ZeVnLIqe- (MESSAGES)").await;
    // In IMAP4rev1, 8-bit names are not valid: BAD, and nothing was created.
    assert_eq!(
        run(&mut rev1, "l CREATE \"Résumé\"").await,
        "l BAD Mailbox names are modified UTF-7 in IMAP4rev1 (ENABLE IMAP4rev2 for UTF-8)\r\n"
    );
    assert_eq!(
        untagged(&mut rev1, "m SEARCH SUBJECT t").await,
        "* SEARCH 2 3\r\n"
    );
    assert!(
        untagged(&mut rev1, "n SELECT INBOX")
            .await
            .contains("* 0 RECENT")
    );
}

/// Three messages with mixed flags and dates, the second over LITERAL+ and without a date.
const MULTIAPPEND: &str = "t APPEND INBOX (\\Seen) \"07-Feb-2024 10:00:00 +0100\" {12}\r\n\
                           Subject: a\r\n {12+}\r\nSubject: b\r\n \
                           (\\Flagged $Work) \" 1-Jan-2000 00:00:00 +0000\" {12}\r\n\
                           Subject: c\r\n\r\n";

#[tokio::test]
async fn multiappend_stores_all_with_consecutive_uids() {
    let (_, mut s) = selected().await;
    assert!(
        ok(&mut s, "c CAPABILITY").await.contains(" MULTIAPPEND"),
        "MULTIAPPEND is offered"
    );
    // INBOX is selected: the new messages are announced before the tagged answer.
    assert_eq!(
        run(&mut s, MULTIAPPEND).await,
        "* 8 EXISTS\r\nt OK [APPENDUID 1 6:8] APPEND completed\r\n"
    );
    let fetched = untagged(&mut s, "f UID FETCH 6:* (FLAGS INTERNALDATE BODY.PEEK[])").await;
    let lines: Vec<&str> = fetched.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "* 6 FETCH (UID 6 FLAGS (\\Seen) INTERNALDATE \"07-Feb-2024 09:00:00 +0000\" \
         BODY[] {12}"
    );
    assert_eq!(lines[1], "Subject: a");
    assert!(
        lines[3].starts_with("* 7 FETCH (UID 7 FLAGS () INTERNALDATE \"")
            && lines[3].ends_with(" +0000\" BODY[] {12}"),
        "{fetched}"
    );
    assert_eq!(lines[4], "Subject: b");
    assert_eq!(
        lines[6],
        "* 8 FETCH (UID 8 FLAGS (\\Flagged $Work) INTERNALDATE \"01-Jan-2000 00:00:00 +0000\" \
         BODY[] {12}"
    );
    assert_eq!(lines[7], "Subject: c");
    // Into another mailbox than the selected one, with a literal mailbox name.
    assert_eq!(
        run(&mut s, "u APPEND {4}\r\nSent {1}\r\nx {1}\r\ny\r\n").await,
        "u OK [APPENDUID 2 1:2] APPEND completed\r\n"
    );
    assert_eq!(
        run(&mut s, "v APPEND Nowhere {1}\r\nx {1}\r\ny\r\n").await,
        "v NO [TRYCREATE] No such mailbox\r\n"
    );
}

#[tokio::test]
async fn multiappend_over_quota_appends_none() {
    let (backend, mut s) = selected().await;
    let used: usize = MESSAGES.iter().map(|m| m.len()).sum();
    // Room for two of the three 12-octet messages.
    backend.set_quota("alice", used as u64 + 30);
    let before = untagged(&mut s, "a STATUS INBOX (MESSAGES UIDNEXT SIZE)").await;
    assert_eq!(
        run(&mut s, MULTIAPPEND).await,
        "t NO [OVERQUOTA] The account is over its quota\r\n"
    );
    assert_eq!(
        untagged(&mut s, "b STATUS INBOX (MESSAGES UIDNEXT SIZE)").await,
        before
    );
    assert_eq!(
        untagged(&mut s, "c UID SEARCH UID 6:*").await,
        "* SEARCH 5\r\n",
        "no new message"
    );
}

#[tokio::test]
async fn malformed_multiappend_is_bad_and_the_session_goes_on() {
    let (_, mut s) = selected().await;
    for (line, answer) in [
        (
            "a APPEND INBOX {1}\r\nx (\\Seen)\r\n",
            "a BAD Malformed APPEND: expected a message literal in message 2\r\n",
        ),
        (
            "b APPEND INBOX {1}\r\nx \"31-Feb-2024 00:00:00 +0000\" {1}\r\ny\r\n",
            "b BAD Malformed APPEND: invalid flags or date-time in message 2\r\n",
        ),
        (
            "c APPEND INBOX {1}\r\nx (\\Seen {1}\r\ny\r\n",
            "c BAD Malformed APPEND: expected a flag list in message 2\r\n",
        ),
        (
            "d APPEND INBOX {1}\r\nx (\\Bogus) {1}\r\ny\r\n",
            "d BAD Unknown system flag \\Bogus\r\n",
        ),
        (
            "e APPEND \"\" {1}\r\nx {1}\r\ny\r\n",
            "e BAD Invalid mailbox name\r\n",
        ),
    ] {
        assert_eq!(run(&mut s, line).await, answer, "{line}");
    }
    let mut many = "h APPEND INBOX".to_string();
    for _ in 0..=tern_imap::session::MAX_APPEND_MESSAGES {
        many.push_str(" {1+}\r\nx");
    }
    many.push_str("\r\n");
    assert_eq!(
        run(&mut s, &many).await,
        "h NO [LIMIT] At most 1000 messages in one APPEND\r\n"
    );
    assert_eq!(run(&mut s, "f NOOP").await, "f OK completed\r\n");
    assert_eq!(
        untagged(&mut s, "g STATUS INBOX (MESSAGES UIDNEXT)").await,
        "* STATUS \"INBOX\" (MESSAGES 5 UIDNEXT 6)\r\n"
    );
}

#[test]
fn multiappend_literals_get_continuations_and_a_total_limit() {
    // Through the server's framing (`harness`, logged in with INBOX selected, 3 messages):
    // each synchronising literal of the command gets its own `+`.
    let mut data = vec![0x04];
    let text = b"t APPEND INBOX {3}\r\nabc (\\Seen) {3}\r\ndef {3+}\r\nghi {2}\r\njk\r\n\
                 u NOOP\r\n";
    for piece in text.chunks(5) {
        data.push((piece.len() - 1) as u8);
        data.extend_from_slice(piece);
    }
    let out = String::from_utf8(tern_imap::harness::transcript(&data).unwrap()).unwrap();
    let after_select = &out[out.find("h2 OK").unwrap()..];
    let answer = after_select.split_once("\r\n").unwrap().1;
    assert_eq!(
        answer,
        "+ Ready for literal data\r\n+ Ready for literal data\r\n+ Ready for literal data\r\n\
         * 7 EXISTS\r\nt OK [APPENDUID 1 4:7] APPEND completed\r\nu OK completed\r\n"
    );
    // The harness allows 4096 literal octets per command: the literal that goes past it is
    // refused when announced, and nothing of the command is stored.
    let mut data = vec![0x04];
    let mut text = b"v APPEND INBOX {2000}\r\n".to_vec();
    text.extend_from_slice(&[b'a'; 2000]);
    text.extend_from_slice(b" {2000}\r\n");
    text.extend_from_slice(&[b'b'; 2000]);
    text.extend_from_slice(b" {97}\r\nw STATUS INBOX (MESSAGES)\r\n");
    for piece in text.chunks(60) {
        data.push((piece.len() - 1) as u8);
        data.extend_from_slice(piece);
    }
    let out = String::from_utf8(tern_imap::harness::transcript(&data).unwrap()).unwrap();
    assert!(
        out.ends_with(
            "+ Ready for literal data\r\n+ Ready for literal data\r\n\
             v NO [TOOBIG] The command's literals are too large together\r\n\
             * STATUS \"INBOX\" (MESSAGES 3)\r\nw OK completed\r\n"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn subscriptions_of_deleted_mailboxes_are_listed_nonexistent() {
    let backend = Arc::new(MemoryBackend::new());
    backend.add_account("alice", "secret");
    let mut s = session(&backend);
    ok(&mut s, "a LOGIN alice secret").await;
    ok(&mut s, "b CREATE Projects").await;
    ok(&mut s, "c SUBSCRIBE Projects").await;
    ok(&mut s, "d UNSUBSCRIBE Trash").await;
    // Deleted by another session: the subscription stays (RFC 3501 §6.3.4).
    let mut other = session(&backend);
    ok(&mut other, "a LOGIN alice secret").await;
    ok(&mut other, "b DELETE Projects").await;
    assert_eq!(
        untagged(&mut s, "e LIST (SUBSCRIBED) \"\" *").await,
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\r\n\
         * LIST (\\HasNoChildren \\Sent \\Subscribed) \"/\" \"Sent\"\r\n\
         * LIST (\\NonExistent \\Subscribed) \"/\" \"Projects\"\r\n"
    );
    assert_eq!(
        untagged(
            &mut s,
            "f LIST (SUBSCRIBED) \"\" P* RETURN (SUBSCRIBED CHILDREN)"
        )
        .await,
        "* LIST (\\NonExistent \\Subscribed) \"/\" \"Projects\"\r\n"
    );
    assert_eq!(
        untagged(&mut s, "g LSUB \"\" *").await,
        "* LSUB (\\HasNoChildren) \"/\" \"INBOX\"\r\n\
         * LSUB (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n\
         * LSUB (\\Noselect) \"/\" \"Projects\"\r\n"
    );
    // Without the SUBSCRIBED selection only mailboxes that exist are listed.
    let all = untagged(&mut s, "h LIST \"\" * RETURN (SUBSCRIBED)").await;
    assert!(!all.contains("Projects"), "{all}");
    let all = untagged(&mut s, "i LIST \"\" *").await;
    assert!(!all.contains("Projects"), "{all}");
    // Unsubscribing the missing mailbox removes it from both.
    ok(&mut s, "j UNSUBSCRIBE Projects").await;
    assert!(
        !ok(&mut s, "k LIST (SUBSCRIBED) \"\" *")
            .await
            .contains("Projects")
    );
    assert!(!ok(&mut s, "l LSUB \"\" *").await.contains("Projects"));
}
