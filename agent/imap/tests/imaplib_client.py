"""Drives tern-imap with Python's imaplib: argv = STARTTLS port, implicit-TLS port.
Exits non-zero (AssertionError) on the first unexpected answer."""
import email
import email.policy
import imaplib
import socket
import ssl
import sys

port, tls_port = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl._create_unverified_context()  # the test certificate is self-signed
MSG = (b"From: Bob <bob@example.org>\r\nTo: alice@example.org\r\n"
       b"Subject: Lunch plans\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
       b"Shall we meet at noon?\r\n")


def ok(res):
    typ, data = res
    assert typ == "OK", (typ, data)
    return data


def expect_bad(*args):
    try:
        typ, data = m._simple_command(*args)
    except imaplib.IMAP4.error as e:  # imaplib raises on BAD
        assert "BAD" in str(e), e
        return
    raise AssertionError((args, typ, data))


# Before TLS: no login, STARTTLS offered.
m = imaplib.IMAP4("127.0.0.1", port)
assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities, m.capabilities
typ, _ = m._simple_command("LOGIN", "alice", "secret")
assert typ == "NO", typ
m.starttls(ssl_context=ctx)
assert "AUTH=PLAIN" in m.capabilities, m.capabilities

# Wrong password, then the right one.
try:
    m.login("alice", "wrong")
    raise AssertionError("wrong password accepted")
except imaplib.IMAP4.error:
    pass
ok(m.login("alice", "secret"))

# Mailboxes.
ok(m.create("Archive"))
names = ok(m.list())
assert any(b"\\Sent" in n and b'"Sent"' in n for n in names), names
assert any(b'"Archive"' in n for n in names), names
st = ok(m.status("INBOX", "(MESSAGES UIDNEXT UNSEEN)"))
assert b"MESSAGES 0" in st[0], st

# Append, select, fetch.
data = ok(m.append("INBOX", "(\\Flagged)", None, MSG))
ok(m.append("INBOX", None, None, b"Subject: second\r\n\r\nbig " + b"x" * 5000 + b"\r\n"))
data = ok(m.select("INBOX"))
assert data == [b"2"], data
data = ok(m.fetch("1", "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])"))
assert data[0][1] == MSG, data
assert b"\\Flagged" in data[0][0] and b"RFC822.SIZE %d" % len(MSG) in data[0][0], data
data = ok(m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
assert data[0][1].strip() == b"Subject: Lunch plans", data
data = ok(m.fetch("1", "(BODY[]<0.4>)"))
assert data[0][1] == b"From", data
data = ok(m.fetch("1", "(FLAGS)"))
assert b"\\Seen" in data[0], data  # BODY[] (not PEEK) set \Seen

# Search.
assert ok(m.search(None, "ALL")) == [b"1 2"]
assert ok(m.search(None, "SUBJECT", "lunch")) == [b"1"]
assert ok(m.search(None, "LARGER", "1000")) == [b"2"]
assert ok(m.search(None, "UNSEEN")) == [b"2"]
assert ok(m.search(None, "FROM", "bob", "FLAGGED")) == [b"1"]
assert ok(m.search(None, "BODY", "noon")) == [b"1"]
assert ok(m.uid("SEARCH", None, "SINCE", "1-Jan-2000")) == [b"1 2"]

# Store with UNCHANGEDSINCE: the second store with the old modseq fails.
data = ok(m.fetch("2", "(MODSEQ)"))
modseq = int(data[0].split(b"MODSEQ (")[1].split(b")")[0])
ok(m.store("2", "+FLAGS", "(\\Answered)"))
typ, data = m._simple_command("STORE", "2", "(UNCHANGEDSINCE %d)" % modseq, "+FLAGS", "(\\Draft)")
assert typ == "OK" and b"[MODIFIED 2]" in data[0], (typ, data)

# Copy, move, expunge.
data = ok(m.copy("1", "Archive"))
ok(m.uid("MOVE", "2", "Archive"))
ok(m.store("1", "+FLAGS", "(\\Deleted)"))
ok(m.expunge())
assert ok(m.search(None, "ALL")) == [b""]
assert ok(m.status("Archive", "(MESSAGES)"))[0].endswith(b"(MESSAGES 2)")

# Malformed and out-of-range input: BAD, and the session goes on.
expect_bad("FETCH", "0:x", "FLAGS")
ok(m.select("Archive"))
expect_bad("FETCH", "99", "FLAGS")
expect_bad("FETCH", "1", "(FLAGS")
ok(m.noop())

# IDLE: a delivery by another session (implicit TLS) wakes it.
ok(m.select("INBOX"))
tag = m._new_tag()
m.send(tag + b" IDLE\r\n")
assert m.readline().startswith(b"+"), "no continuation"
other = imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=ctx)
ok(other.login("alice", "secret"))
ok(other.append("INBOX", None, None, MSG))
line = m.readline()
assert line == b"* 1 EXISTS\r\n", line
m.send(b"DONE\r\n")
line = m.readline()
assert line.startswith(tag + b" OK"), line
other.logout()

# MIME: ENVELOPE, BODYSTRUCTURE, numeric sections and BINARY on a message built by the
# email module: mixed(alternative(plain, html), attachment with NUL bytes in base64).
from email.message import EmailMessage
mime = EmailMessage()
mime["From"] = "=?utf-8?q?Ren=C3=A9?= <rene@example.org>"
mime["To"] = "team: ann@example.org, ben@example.org;"
mime["Subject"] = "Report"
mime["Message-ID"] = "<report@example.org>"
mime.set_content("See the figures.\n")
mime.add_alternative("<p>See the figures.</p>\n", subtype="html")
blob = bytes([0, 1, 2, 255]) * 40
mime.add_attachment(blob, maintype="application", subtype="octet-stream", filename="data.bin")
raw = mime.as_bytes(policy=email.policy.SMTP)
ok(m.append("INBOX", None, None, raw))
ok(m.select("INBOX"))
data = ok(m.fetch("2", "(ENVELOPE BODYSTRUCTURE)"))
line = data[0] if isinstance(data[0], bytes) else b"".join(
    x if isinstance(x, bytes) else x[0] + x[1] for x in data)
assert (b'ENVELOPE (NIL "Report" (("=?utf-8?q?Ren=C3=A9?=" NIL "rene" "example.org")) '
        in line), line
assert b'((NIL NIL "team" NIL)(NIL NIL "ann" "example.org")(NIL NIL "ben" "example.org")(NIL NIL NIL NIL))' in line, line
assert b'"<report@example.org>")' in line, line
assert b'"alternative" ("boundary" ' in line and b'"mixed" ("boundary" ' in line, line
assert (b'("application" "octet-stream" NIL NIL NIL "base64" ' in line
        and b'("attachment" ("filename" "data.bin"))' in line), line
data = ok(m.fetch("2", "(BODY.PEEK[1.2.MIME] BODY.PEEK[1.2] BINARY.PEEK[2] BINARY.SIZE[2])"))
header, html, binary = data[0][1], data[1][1], data[2][1]
part = email.message_from_bytes(header + html)
assert part.get_content_type() == "text/html", header
assert part.get_payload(decode=True) == b"<p>See the figures.</p>\r\n", html
expected = email.message_from_bytes(raw).get_payload(0).get_payload(1).get_payload()
assert html == expected.encode() == b"<p>See the figures.</p>\r\n", (html, expected)
assert binary == blob, binary
assert b"BINARY.SIZE[2] %d" % len(blob) in data[-1], data
data = ok(m.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BINARY.PEEK[1.1])"))
assert data[0][1].strip() == b"Subject: Report", data
assert data[1][1] == b"See the figures.\r\n", data
m.logout()

# Raw socket: wrong state, huge literal, unbalanced parentheses; still serving.
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
assert f.readline().startswith(b"* OK")
for cmd, want in [
    (b"a1 SELECT INBOX\r\n", b"a1 BAD"),
    (b"a2 APPEND INBOX {999999999}\r\n", b"a2 NO [TOOBIG]"),
    (b"a3 LOGIN (alice secret\r\n", b"a3 BAD"),
    (b"garbage\r\n", b"* BAD"),
    (b"a4 NOOP\r\n", b"a4 OK"),
]:
    s.sendall(cmd)
    line = f.readline()
    assert line.startswith(want), (cmd, line)
s.close()
print("imaplib checks passed")
