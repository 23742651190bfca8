#!/usr/bin/env python3
"""Times FETCH 1:* and SEARCH on a large mailbox of a running local cluster, with the serving
agent's memory before and after each command.

    target/release/tern-bench store --dir /tmp/scale --keep --clients 256 --seconds 60 --trials 0
    target/release/tern-agent dev --dir /tmp/scale --base-port 19000 --detach
    python3 e2e/scripts/imap-scale.py /tmp/scale user3@bench.test --double 1

`tern-bench store` leaves ~50k 4 KiB messages in each benchmark account (user<i>@bench.test,
password bench-password); `--double N` then doubles the INBOX N times with `COPY 1:* INBOX`.
The commands go to node 1 over IMAPS, checked against the cluster CA.
"""
import argparse
import imaplib
import json
import os
import re
import ssl
import time

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("account")
p.add_argument("--password", default="bench-password")
p.add_argument("--node", type=int, default=1)
p.add_argument("--double", type=int, default=0)
a = p.parse_args()

node = json.load(open(os.path.join(a.dir, "endpoints.json")))["nodes"][a.node]
host, port = node["imaps"].rsplit(":", 1)
ctx = ssl.create_default_context(cafile=os.path.join(a.dir, "pki", "ca.crt"))
ctx.check_hostname = False


def memory():
    status = open(f"/proc/{node['pid']}/status").read()
    return "RSS %d MiB, peak %d MiB" % tuple(
        int(re.search(k + r":\s+(\d+)", status).group(1)) // 1024 for k in ("VmRSS", "VmHWM"))


m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
m.login(a.account, a.password)
for _ in range(a.double):
    m.select("INBOX")
    started = time.monotonic()
    typ, _ = m.copy("1:*", "INBOX")
    print(f"COPY 1:* INBOX: {typ} in {time.monotonic() - started:.2f} s")
typ, data = m.select("INBOX")
print(f"{a.account}: {int(data[0])} messages; {node['name']} before: {memory()}")


def timed(label, run):
    started = time.monotonic()
    typ, data = run()
    took = time.monotonic() - started
    size = sum(len(x if isinstance(x, bytes) else b"".join(x)) for x in data if x is not None)
    assert typ == "OK", (label, typ, data)
    print(f"{label:48s} {took:6.2f} s {size / 1e6:7.1f} MB   {memory()}")


timed("SELECT INBOX", lambda: m.select("INBOX"))
timed("FETCH 1:* (UID FLAGS RFC822.SIZE)", lambda: m.fetch("1:*", "(UID FLAGS RFC822.SIZE)"))
timed("FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]",
      lambda: m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
timed('UID SEARCH TEXT "needle"', lambda: m.uid("SEARCH", None, "TEXT", '"needle"'))
timed("SEARCH SUBJECT bench", lambda: m.search(None, "SUBJECT", "bench"))
timed("SEARCH UNSEEN", lambda: m.search(None, "UNSEEN"))
m.logout()
