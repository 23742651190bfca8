//! Every IMAP command Tern serves, driven by Python's imaplib against a real cluster of three
//! `tern-agent run` processes (see `common`): STARTTLS on the plain port, implicit TLS on
//! imaps with the certificate checked against the cluster's CA. The script checks each
//! answer's content — search results, fetched items, response codes (APPENDUID, COPYUID,
//! MODIFIED, OVERQUOTA, NOPERM), ESEARCH and SEARCHRES, extended LIST with STATUS, QUOTA, an
//! IMAP4rev2 session with UTF-8 mailbox names, MULTIAPPEND (one continuation per literal, all
//! messages or none) and `\NonExistent` subscriptions — and prints `OK` only when all hold.
//!
//! Needs `python3` (Debian's `python3`, which `scripts/test.sh` installs); without it the
//! test is skipped on a developer's machine and fails in CI.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Options, create_account_retrying, create_domain_retrying, run, tools};

const DOMAIN: &str = "example.test";
const PASSWORD: &str = "correct horse battery staple";
/// The quota of the account that checks QUOTA: 100 KiB.
const QUOTA: u64 = 100 * 1024;

const SCRIPT: &str = r#"
import base64, imaplib, re, socket, ssl, sys, time

imap_addr, imaps_addr, ca, user, password, quota_user = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
for name, states in [("ID", ("NONAUTH", "AUTH", "SELECTED")), ("ENABLE", ("AUTH",))]:
    imaplib.Commands.setdefault(name, states)

def hostport(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)

def text(data):
    """Everything imaplib returned for a command, literals included, as one string."""
    parts = []
    for item in data:
        if isinstance(item, tuple):
            parts.extend(x.decode("utf-8", "replace") for x in item)
        elif item is not None:
            parts.append(item.decode("utf-8", "replace"))
    return "\n".join(parts)

def check(result, what):
    typ, data = result
    assert typ == "OK", (what, typ, data)
    return data

def cmd(m, name, *args, resp=None):
    typ, data = m._simple_command(name, *args)
    assert typ == "OK", (name, args, typ, data)
    if resp is None:
        return data
    return m._untagged_response(typ, data, resp)[1]

def expect(got, want, what):
    assert got == want, (what, got, want)

def search(m, *criteria, uid=False):
    if uid:
        data = check(m.uid("SEARCH", *criteria), criteria)
    else:
        data = check(m.search(None, *criteria), criteria)
    return data[0].decode().split() if data[0] else []

def login_retrying(connect, user, password):
    deadline = time.time() + 20
    while True:
        m = connect()
        try:
            check(m.login(user, password), "LOGIN")
            return m
        except imaplib.IMAP4.error:
            # NO [UNAVAILABLE] while the account's shard settles.
            if time.time() > deadline:
                raise
            m.logout()
            time.sleep(0.3)

def imaps():
    return imaplib.IMAP4_SSL(*hostport(imaps_addr), ssl_context=ctx, timeout=30)

# --- STARTTLS, CAPABILITY, NOOP, LOGIN --------------------------------------------------
def plain():
    m = imaplib.IMAP4(*hostport(imap_addr), timeout=30)
    assert "STARTTLS" in m.capabilities and "LOGINDISABLED" in m.capabilities, m.capabilities
    check(m.starttls(ssl_context=ctx), "STARTTLS")
    return m
m = login_retrying(plain, user, password)
caps = text(check(m.capability(), "CAPABILITY")).split()
for cap in ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT",
            "MOVE", "UIDPLUS", "CONDSTORE", "SPECIAL-USE", "BINARY", "ESEARCH", "SEARCHRES",
            "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "QUOTA", "QUOTA=RES-STORAGE"]:
    assert cap in caps, (cap, caps)
check(m.noop(), "NOOP")
expect(text(cmd(m, "ID", '("name" "imaplib")', resp="ID")), '("name" "tern")', "ID")
expect(text(cmd(m, "NAMESPACE", resp="NAMESPACE")), '(("" "/")) NIL NIL', "NAMESPACE")

# --- CREATE, RENAME, DELETE, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS ------------------
for box in ["Archive", "Archive/2024", "Tmp"]:
    check(m.create(box), "CREATE " + box)
check(m.rename("Tmp", "Tmp2"), "RENAME")
check(m.delete("Tmp2"), "DELETE")
for box in ["INBOX", "Archive", "Archive/2024"]:
    check(m.subscribe(box), "SUBSCRIBE " + box)
check(m.unsubscribe("Archive"), "UNSUBSCRIBE")
listed = text(check(m.list('""', "*"), "LIST"))
for line in ['(\\HasChildren) "/" "Archive"', '"/" "Archive/2024"', '"/" "INBOX"']:
    assert line in listed, (line, listed)
assert "Tmp" not in listed, listed
lsub = text(check(m.lsub('""', "*"), "LSUB"))
assert '"Archive/2024"' in lsub and '"Archive"\n' not in lsub + "\n", lsub

# --- APPEND (literal, LITERAL+), APPENDUID -------------------------------------------------
M1 = ("From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nCc: carol@example.test\r\n"
      "Bcc: dave@example.test\r\nSubject: Lunch plans\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
      "Message-ID: <m1@example.test>\r\n\r\nAt noon?\r\n")
ATTACHMENT = bytes(range(256))
M2 = ("From: carol@example.test\r\nTo: alice@example.test\r\nSubject: Report\r\n"
      "Date: Tue, 2 Jan 2024 23:30:00 -0500\r\nMIME-Version: 1.0\r\n"
      "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
      "Please find the report attached.\r\n--b\r\nContent-Type: application/octet-stream\r\n"
      "Content-Transfer-Encoding: base64\r\n\r\n"
      + base64.encodebytes(ATTACHMENT).decode().replace("\n", "\r\n") + "--b--\r\n")
M3 = ("From: erin@example.test\r\nSubject: Greetings\r\nContent-Type: text/plain; charset=utf-8\r\n"
      "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Berlin\r\n").encode()
M4 = ("From: bob@example.test\r\nSubject: Big\r\nX-Tag: blue\r\n"
      "Date: Fri, 5 Jan 2024 09:00:00 +0100\r\n\r\n" + "x" * 3000 + "\r\n")
appended = []
for body, flags, day in [(M1, "(\\Seen \\Answered)", 1), (M2, "(\\Flagged $Work)", 2),
                         (M3, "(\\Draft)", 3), (M4, None, 4)]:
    date = '"0%d-Feb-2024 12:00:00 +0000"' % day
    data = check(m.append("INBOX", flags, date, body if isinstance(body, bytes) else body.encode()),
                 "APPEND")
    code = re.match(r"\[APPENDUID (\d+) (\d+)\]", text(data))
    assert code, data
    appended.append(int(code.group(2)))
expect(appended, [1, 2, 3, 4], "APPENDUID")
# LITERAL+ (no continuation request), raw on the connection.
m.send(b"L1 APPEND Archive {26+}\r\nSubject: plus\r\n\r\nliteral\r\n\r\n")
line = m.readline()
assert line.startswith(b"L1 OK [APPENDUID "), line

status = text(cmd(m, "STATUS", "INBOX", "(MESSAGES UIDNEXT UNSEEN SIZE DELETED)", resp="STATUS"))
size = len(M1) + len(M2) + len(M3) + len(M4)
expect(status, '"INBOX" (MESSAGES 4 UIDNEXT 5 UNSEEN 3 SIZE %d DELETED 0)' % size, "STATUS")

# --- LIST-EXTENDED, LIST-STATUS, SPECIAL-USE ----------------------------------------------
expect(text(cmd(m, "LIST", "(SUBSCRIBED)", '""', "*", resp="LIST")).split("\n"),
       ['(\\HasNoChildren \\Subscribed) "/" "Archive/2024"', '(\\HasNoChildren \\Subscribed) "/" "INBOX"'],
       "LIST (SUBSCRIBED)")
expect(text(cmd(m, "LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""', "%", resp="LIST")).split("\n"),
       ['(\\HasChildren) "/" "Archive" ("CHILDINFO" ("SUBSCRIBED"))', '(\\HasNoChildren \\Subscribed) "/" "INBOX"'],
       "LIST RECURSIVEMATCH")
# New accounts have no special-use mailboxes: the selection finds none.
expect(cmd(m, "LIST", "(SPECIAL-USE)", '""', "*", resp="LIST"), [None], "LIST (SPECIAL-USE)")
data = cmd(m, "LIST", '""', "(INBOX Archive)", "RETURN", "(CHILDREN STATUS (MESSAGES UIDNEXT SIZE))")
expect(text(m._untagged_response("OK", data, "LIST")[1]).split("\n"),
       ['(\\HasChildren) "/" "Archive"', '(\\HasNoChildren) "/" "INBOX"'], "LIST-STATUS LIST")
expect(text(m._untagged_response("OK", data, "STATUS")[1]).split("\n"),
       ['"Archive" (MESSAGES 1 UIDNEXT 2 SIZE 26)', '"INBOX" (MESSAGES 4 UIDNEXT 5 SIZE %d)' % size],
       "LIST-STATUS STATUS")
try:
    m._simple_command("LIST", "(NOPE)", '""', "*")
    raise AssertionError("LIST (NOPE) was accepted")
except imaplib.IMAP4.error as e:
    assert "Unknown LIST selection option NOPE" in str(e), e

# --- EXAMINE, SELECT, SEARCH with every standard key --------------------------------------
typ, data = m.select("Archive", readonly=True)
assert typ == "OK" and data == [b"1"], (typ, data)
typ, data = m.select("INBOX")
assert typ == "OK" and data == [b"4"], (typ, data)
for criteria, want in [
    (["ALL"], "1 2 3 4"), (["ANSWERED"], "1"), (["UNANSWERED"], "2 3 4"), (["SEEN"], "1"),
    (["UNSEEN"], "2 3 4"), (["FLAGGED"], "2"), (["UNFLAGGED"], "1 3 4"), (["DRAFT"], "3"),
    (["UNDRAFT"], "1 2 4"), (["DELETED"], ""), (["UNDELETED"], "1 2 3 4"),
    (["KEYWORD", "$Work"], "2"), (["UNKEYWORD", "$Work"], "1 3 4"), (["NEW"], ""),
    (["OLD"], "1 2 3 4"), (["RECENT"], ""), (["FROM", "bob"], "1 4"), (["TO", "alice"], "1 2"),
    (["CC", "carol"], "1"), (["BCC", "dave"], "1"), (["SUBJECT", "report"], "2"),
    (["HEADER", "X-Tag", "blue"], "4"), (["BODY", "noon"], "1"), (["TEXT", "carol"], "1 2"),
    (["LARGER", "2000"], "4"), (["SMALLER", "2000"], "1 2 3"), (["ON", "02-Feb-2024"], "2"),
    (["SINCE", "03-Feb-2024"], "3 4"), (["BEFORE", "02-Feb-2024"], "1"),
    (["SENTON", "1-Jan-2024"], "1"), (["SENTON", "2-Jan-2024"], "2"),
    (["SENTBEFORE", "2-Jan-2024"], "1"), (["SENTSINCE", "2-Jan-2024"], "2 4"),
    (["NOT", "SEEN"], "2 3 4"), (["OR", "FLAGGED", "DRAFT"], "2 3"), (["2:3"], "2 3"),
    (["UID", "1,4"], "1 4"), (["(UNSEEN SMALLER 2000)"], "2 3"), (["(FLAGGED SEEN)"], ""),
]:
    expect(" ".join(search(m, *criteria)), want, criteria)
expect(search(m, "FLAGGED", uid=True), ["2"], "UID SEARCH")
m.literal = "Grüße".encode()
expect(text(cmd(m, "SEARCH", "CHARSET", "UTF-8", "BODY", resp="SEARCH")), "3", "CHARSET UTF-8")

# --- ESEARCH and SEARCHRES ----------------------------------------------------------------
data = text(cmd(m, "SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN", resp="ESEARCH"))
assert re.fullmatch(r'\(TAG "[^"]+"\) MIN 2 MAX 4 COUNT 3 ALL 2:4', data), data
data = text(cmd(m, "UID", "SEARCH", "RETURN", "(COUNT)", "DELETED", resp="ESEARCH"))
assert re.fullmatch(r'\(TAG "[^"]+"\) UID COUNT 0', data), data
expect(cmd(m, "SEARCH", "RETURN", "(SAVE)", "OR", "FLAGGED", "DRAFT", resp="ESEARCH"), [None],
       "SAVE alone")
data = text(check(m.fetch("$", "(UID)"), "FETCH $"))
expect(data, "2 (UID 2)\n3 (UID 3)", "FETCH $")
expect(search(m, "NOT", "$"), ["1", "4"], "SEARCH NOT $")

# --- FETCH ---------------------------------------------------------------------------------
data = text(check(m.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)"), "FETCH"))
for part in ["\\Seen", "\\Answered", 'INTERNALDATE "01-Feb-2024 12:00:00 +0000"',
             "RFC822.SIZE %d" % len(M1), '"Lunch plans"', '(("Bob" NIL "bob" "example.test"))']:
    assert part in data, (part, data)
data = text(check(m.fetch("2", "(BODYSTRUCTURE)"), "BODYSTRUCTURE"))
assert '("text" "plain"' in data and '"mixed"' in data and '"base64"' in data, data
data = text(check(m.fetch("2", "(BODY)"), "BODY"))
assert '"mixed"' in data, data
def literals(data):
    return [x[1] for x in data if isinstance(x, tuple)]
data = check(m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY[TEXT]<0.5>)"), "sections")
expect(literals(data), [b"Subject: Lunch plans\r\n\r\n", b"At no"], "BODY[section]<partial>")
data = check(m.fetch("2", "(BINARY.PEEK[2] BODY.PEEK[1])"), "BINARY")
expect(literals(data), [ATTACHMENT, b"Please find the report attached."], "BINARY[2]")
data = text(check(m.fetch("2", "(FLAGS)"), "FLAGS"))
assert "\\Seen" not in data, data

# --- STORE ---------------------------------------------------------------------------------
expect(text(check(m.store("4", "+FLAGS", "(\\Seen)"), "STORE +")), "4 (UID 4 FLAGS (\\Seen))",
       "+FLAGS")
expect(text(check(m.store("4", "-FLAGS", "(\\Seen)"), "STORE -")), "4 (UID 4 FLAGS ())", "-FLAGS")
expect(text(check(m.store("4", "FLAGS", "(\\Answered)"), "STORE")), "4 (UID 4 FLAGS (\\Answered))",
       "FLAGS")
expect(check(m.store("4", "+FLAGS.SILENT", "(\\Flagged)"), "SILENT"), [None], "FLAGS.SILENT")
expect(text(check(m.uid("STORE", "4", "-FLAGS", "(\\Flagged)"), "UID STORE")),
       "4 (UID 4 FLAGS (\\Answered))", "UID STORE")
data = text(check(m.uid("FETCH", "1:*", "(FLAGS)"), "UID FETCH"))
assert "4 (UID 4 FLAGS (\\Answered))" in data, data

# --- IDLE (raw: this imaplib has no idle()) -------------------------------------------------
other = login_retrying(imaps, user, password)
m.send(b"I1 IDLE\r\n")
assert m.readline().startswith(b"+"), "IDLE continuation"
check(other.append("INBOX", None, None, b"Subject: during idle\r\n\r\nhi\r\n"), "APPEND in IDLE")
line = m.readline()
expect(line, b"* 5 EXISTS\r\n", "IDLE update")
m.send(b"DONE\r\n")
line = m.readline()
assert line.startswith(b"I1 OK"), line

# --- COPY, MOVE, COPYUID, EXPUNGE, CHECK, CLOSE, UNSELECT -----------------------------------
data = text(check(m.copy("1:2", "Archive"), "COPY"))
assert re.match(r"\[COPYUID \d+ 1:2 2:3\]", data), data
data = text(cmd(m, "UID", "COPY", "4", "Archive"))
assert re.match(r"\[COPYUID \d+ 4 4\]", data), data
check(m._simple_command("MOVE", "5", "Archive"), "MOVE")
code = m._untagged_response("OK", [None], "COPYUID")[1]
assert re.match(rb"\d+ 5 5", code[-1]), code
expect(m._untagged_response("OK", [None], "EXPUNGE")[1], [b"5"], "MOVE EXPUNGE")
cmd(m, "UID", "MOVE", "3", "Archive")
expect(m._untagged_response("OK", [None], "EXPUNGE")[1], [b"3"], "UID MOVE EXPUNGE")
check(m.store("1", "+FLAGS.SILENT", "(\\Deleted)"), "STORE \\Deleted")
check(m.store("2", "+FLAGS.SILENT", "(\\Deleted)"), "STORE \\Deleted")
expect(cmd(m, "UID", "EXPUNGE", "2", resp="EXPUNGE"), [b"2"], "UID EXPUNGE")
expect(check(m.expunge(), "EXPUNGE"), [b"1"], "EXPUNGE")
check(m.check(), "CHECK")
expect(search(m, "ALL", uid=True), ["4"], "after EXPUNGE")
check(m.close(), "CLOSE")
m.select("Archive")
expect(search(m, "ALL", uid=True), ["1", "2", "3", "4", "5", "6"], "Archive")
check(m.unselect(), "UNSELECT")
bye = m.logout()
assert bye[0] == "BYE", bye

# --- AUTHENTICATE PLAIN, ENABLE IMAP4rev2, CONDSTORE ----------------------------------------
other.logout()
r2 = imaps()
check(r2.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (user, password)).encode()), "AUTHENTICATE")
expect(text(cmd(r2, "ENABLE", "IMAP4rev2", resp="ENABLED")), "IMAP4rev2", "ENABLE IMAP4rev2")
typ, data = r2._simple_command("SELECT", "INBOX", "(CONDSTORE)")
assert typ == "OK", (typ, data)
r2.state = "SELECTED"
assert r2._untagged_response("OK", [None], "RECENT")[1] == [None], "no RECENT in IMAP4rev2"
expect(text(r2._untagged_response("OK", [None], "LIST")[1]), '() "/" "INBOX"', "SELECT's LIST")
data = text(cmd(r2, "SEARCH", "ALL", resp="ESEARCH"))
assert re.fullmatch(r'\(TAG "[^"]+"\) ALL 1', data), data
data = text(cmd(r2, "FETCH", "1:*", "(UID FLAGS)", "(CHANGEDSINCE 1)", resp="FETCH"))
assert re.fullmatch(r"1 \(UID 4 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)", data), data
typ, data = r2._simple_command("STORE", "1", "(UNCHANGEDSINCE 1)", "+FLAGS", "(\\Flagged)")
assert typ == "OK" and text(data).startswith("[MODIFIED 1]"), (typ, data)
r2.literal = "Entwürfe".encode()
cmd(r2, "CREATE")
data = text(cmd(r2, "LIST", '""', '"Entw*"', resp="LIST"))
assert data.rstrip("\n").endswith('"/" {9}\nEntwürfe'), data
r2.logout()
m = login_retrying(imaps, user, password)
data = text(check(m.list('""', '"Entw*"'), "LIST rev1"))
assert data.endswith('"Entw&APw-rfe"'), data
m.logout()

# --- QUOTA ----------------------------------------------------------------------------------
q = login_retrying(imaps, quota_user, password)
roots = q.getquotaroot("INBOX")
check(roots, "GETQUOTAROOT")
expect([text(x) for x in roots[1]], ['"INBOX" ""', '"" (STORAGE 0 100)'], "GETQUOTAROOT")
expect(text(check(q.getquota('""'), "GETQUOTA")), '"" (STORAGE 0 100)', "GETQUOTA")
typ, data = q._simple_command("SETQUOTA", '""', "(STORAGE 1000)")
assert typ == "NO" and text(data).startswith("[NOPERM]"), (typ, data)
typ, data = q.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"y" * (150 * 1024))
assert typ == "NO" and text(data).startswith("[OVERQUOTA]"), (typ, data)
q.logout()

# --- MULTIAPPEND (raw: imaplib appends one message per command) -----------------------------
m = login_retrying(imaps, user, password)
assert "MULTIAPPEND" in text(check(m.capability(), "CAPABILITY")).split(), "MULTIAPPEND"
check(m.create("Multi"), "CREATE Multi")
BODIES = [b"Subject: multi 1\r\n\r\none\r\n", b"Subject: multi 2\r\n\r\ntwo\r\n",
          b"Subject: multi 3\r\n\r\nthree\r\n"]
HEADS = [b'(\\Seen) "10-Mar-2024 08:00:00 +0000" ', b"", b"(\\Flagged $Multi) "]
m.send(b"MA1 APPEND Multi " + HEADS[0] + b"{%d}\r\n" % len(BODIES[0]))
for i, body in enumerate(BODIES):
    # Each synchronising literal of the command gets its own continuation.
    line = m.readline()
    assert line.startswith(b"+ "), (i, line)
    m.send(body)
    if i + 1 < len(BODIES):
        m.send(b" " + HEADS[i + 1] + b"{%d}\r\n" % len(BODIES[i + 1]))
m.send(b"\r\n")
line = m.readline()
code = re.match(rb"MA1 OK \[APPENDUID \d+ (\d+):(\d+)\]", line)
assert code and (int(code.group(1)), int(code.group(2))) == (1, 3), line
typ, data = m.select("Multi")
assert typ == "OK" and data == [b"3"], (typ, data)
data = check(m.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])"), "FETCH multi")
expect(literals(data), BODIES, "MULTIAPPEND bodies")
heads = [x[0].decode() for x in data if isinstance(x, tuple)]
assert "FLAGS (\\Seen)" in heads[0] and '"10-Mar-2024 08:00:00 +0000"' in heads[0], heads
assert "FLAGS ()" in heads[1], heads
assert "\\Flagged" in heads[2] and "$Multi" in heads[2], heads
# All or nothing: a missing mailbox, a bad date in the second message.
m.send(b"MA2 APPEND Nowhere {1+}\r\nx {1+}\r\ny\r\n")
line = m.readline()
assert line.startswith(b"MA2 NO [TRYCREATE]"), line
m.send(b'MA3 APPEND Multi {1+}\r\nx "31-Feb-2024 00:00:00 +0000" {1+}\r\ny\r\n')
line = m.readline()
assert line.startswith(b"MA3 BAD Malformed APPEND"), line
check(m.noop(), "NOOP after BAD")
expect(search(m, "ALL", uid=True), ["1", "2", "3"], "nothing more appended")
check(m.close(), "CLOSE Multi")

# --- A subscription outlives its mailbox: \NonExistent, LSUB's \Noselect --------------------
check(m.create("Gone"), "CREATE Gone")
check(m.subscribe("Gone"), "SUBSCRIBE Gone")
other = login_retrying(imaps, user, password)
check(other.delete("Gone"), "DELETE Gone by another client")
other.logout()
listed = text(cmd(m, "LIST", "(SUBSCRIBED)", '""', "*", resp="LIST")).split("\n")
assert '(\\NonExistent \\Subscribed) "/" "Gone"' in listed, listed
assert '(\\HasNoChildren \\Subscribed) "/" "INBOX"' in listed, listed
lsub = text(check(m.lsub('""', "*"), "LSUB")).split("\n")
assert '(\\Noselect) "/" "Gone"' in lsub, lsub
assert "Gone" not in text(check(m.list('""', "*"), "LIST")), "only existing mailboxes"
check(m.unsubscribe("Gone"), "UNSUBSCRIBE Gone")
assert "Gone" not in text(cmd(m, "LIST", "(SUBSCRIBED)", '""', "*", resp="LIST")), "unsubscribed"
m.logout()
print("OK every command answered as expected")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaplib_drives_every_command() {
    if !tools(
        "imap_commands",
        &[("python3", "python3 -c 'import imaplib, ssl'")],
    ) {
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::start(3, Options::default()).await;
    let admin = cluster.admin(0);
    cluster.check(
        create_domain_retrying(&admin, DOMAIN, Duration::from_secs(30)).await,
        "creating the domain",
    );
    let user = format!("all@{DOMAIN}");
    cluster.check(
        create_account_retrying(&admin, &user, PASSWORD, Duration::from_secs(30)).await,
        "creating the account",
    );
    let quota_user = format!("quota@{DOMAIN}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin
            .create_account(&quota_user, PASSWORD, Some(QUOTA))
            .await
        {
            Ok(()) => break,
            Err(e) if e.status() == Some(409) => break,
            Err(e) if e.is_temporary() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => cluster.fail(&format!("creating {quota_user}: {e}")),
        }
    }
    // Through node 0, which relays the session when another node serves the account.
    let args = vec![
        "-c".to_owned(),
        SCRIPT.to_owned(),
        cluster.mail_addr(0, "imap").to_string(),
        cluster.mail_addr(0, "imaps").to_string(),
        cluster.ca_file().display().to_string(),
        user,
        PASSWORD.to_owned(),
        quota_user,
    ];
    let (status, out) = run("python3", args, None).await;
    if status != 0 || !out.starts_with("OK") {
        cluster.fail(&format!("imaplib: exit {status}: {out}"));
    }
    eprintln!("imaplib drove every command in {:?}", started.elapsed());
}
