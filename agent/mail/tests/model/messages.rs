//! Delivery, APPEND, STORE, EXPUNGE, COPY, MOVE; UIDs, MODSEQ, blobs, quota, shards.

use std::collections::BTreeSet;

use tern_mail::{
    AppendMessage, BlobHash, Command, Delivered, Flag, IDEMPOTENCY_TTL_MS, INBOX, MailError, Reply,
    StoreOp, StoredMessage, UidSet, decode_response,
};

use crate::{Shard, T0, append, appended_uid, deliver, with_alice};

fn delivered(reply: Reply) -> Vec<Result<Delivered, MailError>> {
    match reply {
        Reply::Delivered(results) => results,
        other => panic!("not a delivery: {other:?}"),
    }
}

fn uids_of(s: &Shard, mailbox_id: u64) -> Vec<u32> {
    s.read()
        .messages(mailbox_id, 0..=u32::MAX, 1000)
        .unwrap()
        .messages
        .iter()
        .map(|m| m.uid)
        .collect()
}

fn inbox(s: &Shard, account: &str) -> tern_mail::Mailbox {
    s.read().mailbox(account, INBOX).unwrap().unwrap()
}

fn store(
    mailbox: &str,
    uids: UidSet,
    op: StoreOp,
    flags: Vec<Flag>,
    since: Option<u64>,
) -> Command {
    Command::Store {
        account: "alice@example.com".into(),
        mailbox: mailbox.into(),
        uids,
        op,
        flags,
        unchanged_since: since,
    }
}

fn expunge(mailbox: &str, uids: Option<UidSet>) -> Command {
    Command::Expunge {
        account: "alice@example.com".into(),
        mailbox: mailbox.into(),
        uids,
    }
}

#[test]
fn a_delivery_stores_the_body_once_for_every_recipient() {
    let s = with_alice("deliver");
    s.account("bob@example.com", None);
    let body = b"Subject: hi\r\n\r\nhello\r\n";
    let results = delivered(s.ok(&Command::Deliver {
        idempotency_key: b"queue-1".to_vec(),
        recipients: vec!["alice@example.com".into(), "Bob@Example.com".into()],
        mailbox: None,
        internal_date: T0 - 5000,
        flags: vec![Flag::Keyword("$Forwarded".into())],
        body: body.to_vec(),
        now: T0,
    }));
    let alice_inbox = inbox(&s, "alice@example.com");
    let bob_inbox = inbox(&s, "bob@example.com");
    assert_eq!(
        results,
        vec![
            Ok(Delivered {
                account: "alice@example.com".into(),
                mailbox: INBOX.into(),
                mailbox_id: alice_inbox.id,
                uidvalidity: alice_inbox.uidvalidity,
                uid: 1,
            }),
            Ok(Delivered {
                account: "bob@example.com".into(),
                mailbox: INBOX.into(),
                mailbox_id: bob_inbox.id,
                uidvalidity: bob_inbox.uidvalidity,
                uid: 1,
            }),
        ]
    );
    let hash = BlobHash::of(body);
    let r = s.read();
    assert_eq!(r.blob(&hash).unwrap().as_deref(), Some(&body[..]));
    assert_eq!(r.blob_refs(&hash).unwrap(), 2);
    let blobs = s
        .dump()
        .into_iter()
        .find(|(ks, _)| *ks == "mail_blob")
        .unwrap()
        .1;
    assert_eq!(blobs.len(), 1, "one body for two recipients");

    let message = r.message(alice_inbox.id, 1).unwrap().unwrap();
    assert_eq!(message.blob, hash);
    assert_eq!(message.size, body.len() as u64);
    assert_eq!(message.internal_date, T0 - 5000);
    assert_eq!(message.flags, [Flag::Keyword("$Forwarded".into())].into());
    assert_eq!(message.modseq, 2);
    assert_eq!(alice_inbox.uidnext, 2);
    assert_eq!(alice_inbox.highestmodseq, 2);
    assert_eq!((alice_inbox.messages, alice_inbox.unseen), (1, 1));
    assert_eq!(alice_inbox.size, body.len() as u64);
    assert!(alice_inbox.keywords.contains("$Forwarded"));
    let alice = r.account("alice@example.com").unwrap().unwrap();
    assert_eq!((alice.messages, alice.used_bytes), (1, body.len() as u64));

    // The next delivery takes the next UID.
    let next = delivered(s.ok(&deliver("queue-2", &["alice@example.com"], b"second")));
    assert_eq!(next[0].as_ref().unwrap().uid, 2);
}

#[test]
fn a_retried_delivery_stores_nothing_and_answers_the_same() {
    let s = with_alice("idempotent");
    s.account("bob@example.com", None);
    let first = deliver(
        "smtp-42",
        &["alice@example.com", "bob@example.com"],
        b"body",
    );
    let (response, ops) = s.apply_bytes(&first.encode());
    assert!(ops > 0);
    let state = s.dump();

    // A retry, possibly through another leader with another clock.
    let Command::Deliver {
        idempotency_key,
        recipients,
        mailbox,
        internal_date,
        flags,
        body,
        ..
    } = first.clone()
    else {
        unreachable!()
    };
    let retry = Command::Deliver {
        idempotency_key,
        recipients,
        mailbox,
        internal_date,
        flags,
        body,
        now: T0 + 60_000,
    };
    for _ in 0..2 {
        let (again, ops) = s.apply_bytes(&retry.encode());
        assert_eq!(again, response, "same response bytes");
        assert_eq!(ops, 0, "nothing written");
        assert_eq!(s.dump(), state);
    }
    let results = delivered(decode_response(&response).unwrap());
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|d| d.uid == 1)));
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"body")).unwrap(), 2);
    assert_eq!(inbox(&s, "alice@example.com").messages, 1);

    // Another key is another delivery.
    let other = delivered(s.ok(&deliver("smtp-43", &["alice@example.com"], b"body")));
    assert_eq!(other[0].as_ref().unwrap().uid, 2);
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"body")).unwrap(), 3);
}

#[test]
fn one_recipients_failure_does_not_affect_the_others() {
    let s = with_alice("partial");
    s.account("small@example.com", Some(10));
    s.ok(&Command::AddAlias {
        alias: "al@example.com".into(),
        account: "alice@example.com".into(),
    });
    let small_before = s.read().account("small@example.com").unwrap().unwrap();
    let small_inbox_before = inbox(&s, "small@example.com");
    let results = delivered(s.ok(&deliver(
        "k",
        &[
            "nobody@example.com",
            "small@example.com",
            "alice@example.com",
            "not an address",
            "al@example.com",
        ],
        b"this body is over ten bytes",
    )));
    assert_eq!(
        results[0],
        Err(MailError::NoSuchAccount("nobody@example.com".into()))
    );
    assert_eq!(
        results[1],
        Err(MailError::QuotaExceeded {
            account: "small@example.com".into(),
            quota_bytes: 10,
            used_bytes: 0,
            needed_bytes: 27,
        })
    );
    assert_eq!(results[2].as_ref().unwrap().uid, 1);
    assert_eq!(
        results[3],
        Err(MailError::InvalidAddress("not an address".into()))
    );
    assert_eq!(
        results[4], results[2],
        "an alias of a recipient gets no second copy"
    );
    assert_eq!(
        s.read().account("small@example.com").unwrap().unwrap(),
        small_before
    );
    assert_eq!(inbox(&s, "small@example.com"), small_inbox_before);
    assert_eq!(inbox(&s, "alice@example.com").messages, 1);
    assert_eq!(
        s.read()
            .blob_refs(&BlobHash::of(b"this body is over ten bytes"))
            .unwrap(),
        1
    );

    // A body that fits is accepted; the next one that would cross the quota is not.
    let ok = delivered(s.ok(&deliver("k2", &["small@example.com"], b"0123456789")));
    assert!(ok[0].is_ok());
    let over = delivered(s.ok(&deliver("k3", &["small@example.com"], b"x")));
    assert!(matches!(
        over[0],
        Err(MailError::QuotaExceeded { used_bytes: 10, .. })
    ));

    // A delivery where every recipient fails stores no body.
    let none = delivered(s.ok(&deliver("k4", &["nobody@example.com"], b"orphan")));
    assert!(none[0].is_err());
    assert!(s.read().blob(&BlobHash::of(b"orphan")).unwrap().is_none());
}

#[test]
fn delivery_into_a_named_mailbox_falls_back_to_inbox() {
    let s = with_alice("deliver-mailbox");
    s.account("bob@example.com", None);
    s.mailbox("alice@example.com", "Lists");
    let results = delivered(s.ok(&Command::Deliver {
        idempotency_key: b"k".to_vec(),
        recipients: vec!["alice@example.com".into(), "bob@example.com".into()],
        mailbox: Some("Lists".into()),
        internal_date: T0,
        flags: vec![Flag::Seen],
        body: b"list mail".to_vec(),
        now: T0,
    }));
    assert_eq!(results[0].as_ref().unwrap().mailbox, "Lists");
    assert_eq!(
        results[1].as_ref().unwrap().mailbox,
        INBOX,
        "bob has no Lists"
    );
    let lists = s
        .read()
        .mailbox("alice@example.com", "Lists")
        .unwrap()
        .unwrap();
    assert_eq!((lists.messages, lists.unseen), (1, 0));
}

#[test]
fn malformed_and_invalid_deliveries_are_refused_whole() {
    let s = with_alice("invalid");
    let (response, ops) = s.apply_bytes(&[0xde, 0xad, 0xbe, 0xef, 0xff]);
    assert!(matches!(
        decode_response(&response),
        Err(MailError::Malformed(_))
    ));
    assert_eq!(ops, 0);
    let (response, ops) = s.apply_bytes(&[]);
    assert!(matches!(
        decode_response(&response),
        Err(MailError::Malformed(_))
    ));
    assert_eq!(ops, 0);
    // A valid command with trailing garbage cut off.
    let bytes = deliver("k", &["alice@example.com"], b"body").encode();
    let (response, _) = s.apply_bytes(&bytes[..bytes.len() - 2]);
    assert!(matches!(
        decode_response(&response),
        Err(MailError::Malformed(_))
    ));

    assert!(matches!(
        s.err(&deliver("k", &[], b"body")),
        MailError::InvalidCommand(_)
    ));
    assert!(matches!(
        s.err(&deliver("", &["alice@example.com"], b"body")),
        MailError::InvalidCommand(_)
    ));
    let mut bad_flag = deliver("k", &["alice@example.com"], b"body");
    if let Command::Deliver { flags, .. } = &mut bad_flag {
        flags.push(Flag::Keyword("two words".into()));
    }
    assert_eq!(s.err(&bad_flag), MailError::InvalidFlag("two words".into()));
    // A refused command leaves no idempotency record: the key still works.
    let ok = delivered(s.ok(&deliver("k", &["alice@example.com"], b"body")));
    assert_eq!(ok[0].as_ref().unwrap().uid, 1);
}

#[test]
fn expired_idempotency_records_are_pruned_by_later_deliveries() {
    let s = with_alice("idem-ttl");
    let at = |key: &str, now: i64| {
        let mut command = deliver(key, &["alice@example.com"], key.as_bytes());
        if let Command::Deliver { now: n, .. } = &mut command {
            *n = now;
        }
        command
    };
    s.ok(&at("old", T0));
    s.ok(&at("recent", T0 + IDEMPOTENCY_TTL_MS - 1000));
    // Within the TTL both keys are remembered.
    let (_, ops) = s.apply_bytes(&at("old", T0 + IDEMPOTENCY_TTL_MS).encode());
    assert_eq!(ops, 0);
    // A delivery after the TTL prunes "old" but not "recent".
    s.ok(&at("trigger", T0 + IDEMPOTENCY_TTL_MS + 1));
    let (_, ops) = s.apply_bytes(&at("recent", T0 + IDEMPOTENCY_TTL_MS + 2).encode());
    assert_eq!(ops, 0, "recent is still remembered");
    let again = delivered(s.ok(&at("old", T0 + IDEMPOTENCY_TTL_MS + 3)));
    assert_eq!(
        again[0].as_ref().unwrap().uid,
        4,
        "old was forgotten: a new delivery"
    );
    let idem = s
        .dump()
        .into_iter()
        .find(|(ks, _)| *ks == "mail_idem")
        .unwrap()
        .1;
    // Records for recent, trigger, old (again), each with its expiry index entry.
    assert_eq!(idem.len(), 6);
}

#[test]
fn append_returns_appenduid_and_is_checked() {
    let s = with_alice("append");
    s.ok(&Command::SetQuota {
        address: "alice@example.com".into(),
        quota_bytes: Some(8),
    });
    let inbox_before = inbox(&s, "alice@example.com");
    let reply = s.ok(&append(
        "alice@example.com",
        "inbox",
        vec![Flag::Seen, Flag::Draft],
        b"draft",
    ));
    assert_eq!(
        reply,
        Reply::Appended {
            mailbox_id: inbox_before.id,
            uidvalidity: inbox_before.uidvalidity,
            uid: 1,
            modseq: 2,
        }
    );
    let message = s.read().message(inbox_before.id, 1).unwrap().unwrap();
    assert_eq!(message.flags, [Flag::Seen, Flag::Draft].into());
    assert_eq!(message.internal_date, T0);
    assert_eq!(inbox(&s, "alice@example.com").unseen, 0);

    assert_eq!(
        s.err(&append("alice@example.com", "inbox", vec![], b"too long")),
        MailError::QuotaExceeded {
            account: "alice@example.com".into(),
            quota_bytes: 8,
            used_bytes: 5,
            needed_bytes: 8,
        }
    );
    assert_eq!(
        s.err(&append("alice@example.com", "Nope", vec![], b"x")),
        MailError::NoSuchMailbox("Nope".into())
    );
    assert_eq!(
        s.err(&append("bob@example.com", INBOX, vec![], b"x")),
        MailError::NoSuchAccount("bob@example.com".into())
    );
    assert_eq!(
        s.err(&append(
            "alice@example.com",
            INBOX,
            vec![Flag::Keyword("a(b".into())],
            b"x"
        )),
        MailError::InvalidFlag("a(b".into())
    );

    // With an idempotency key, a re-proposed APPEND is stored once.
    let keyed = Command::Append {
        account: "alice@example.com".into(),
        mailbox: INBOX.into(),
        flags: vec![],
        internal_date: T0,
        body: b"abc".to_vec(),
        idempotency_key: Some(b"imap-7".to_vec()),
        now: T0,
    };
    let (first, _) = s.apply_bytes(&keyed.encode());
    let (second, ops) = s.apply_bytes(&keyed.encode());
    assert_eq!(first, second);
    assert_eq!(ops, 0);
    assert_eq!(appended_uid(decode_response(&first).unwrap()), 2);
    assert_eq!(uids_of(&s, inbox_before.id), [1, 2]);
}

#[test]
fn store_changes_flags_and_modseq() {
    let s = with_alice("store");
    for body in [&b"a"[..], b"b", b"c"] {
        s.ok(&append("alice@example.com", INBOX, vec![], body));
    }
    let before = inbox(&s, "alice@example.com");
    assert_eq!((before.highestmodseq, before.unseen), (4, 3));

    let reply = s.ok(&store(
        INBOX,
        UidSet::range(1, 2),
        StoreOp::Add,
        vec![Flag::Seen, Flag::Keyword("$Work".into())],
        None,
    ));
    let work: BTreeSet<Flag> = [Flag::Seen, Flag::Keyword("$Work".into())].into();
    assert_eq!(
        reply,
        Reply::Stored {
            modified: vec![
                StoredMessage {
                    uid: 1,
                    modseq: 5,
                    flags: work.clone()
                },
                StoredMessage {
                    uid: 2,
                    modseq: 5,
                    flags: work.clone()
                },
            ],
            failed: vec![],
            highestmodseq: 5,
        }
    );
    let mailbox = inbox(&s, "alice@example.com");
    assert_eq!((mailbox.highestmodseq, mailbox.unseen), (5, 1));
    assert!(mailbox.keywords.contains("$Work"));
    assert_eq!(s.read().message(mailbox.id, 3).unwrap().unwrap().modseq, 4);

    // A STORE that changes nothing does not move MODSEQ.
    let reply = s.ok(&store(
        INBOX,
        UidSet::range(1, 2),
        StoreOp::Add,
        vec![Flag::Seen],
        None,
    ));
    assert_eq!(
        reply,
        Reply::Stored {
            modified: vec![],
            failed: vec![],
            highestmodseq: 5
        }
    );
    // Remove and replace.
    let reply = s.ok(&store(
        INBOX,
        UidSet::single(1),
        StoreOp::Remove,
        vec![Flag::Seen],
        None,
    ));
    let Reply::Stored { modified, .. } = reply else {
        panic!()
    };
    assert_eq!(modified[0].flags, [Flag::Keyword("$Work".into())].into());
    assert_eq!(modified[0].modseq, 6);
    let reply = s.ok(&store(
        INBOX,
        UidSet::all(),
        StoreOp::Replace,
        vec![Flag::Flagged],
        None,
    ));
    let Reply::Stored {
        modified,
        highestmodseq,
        ..
    } = reply
    else {
        panic!()
    };
    assert_eq!(
        modified.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(highestmodseq, 7);
    let mailbox = inbox(&s, "alice@example.com");
    assert_eq!(mailbox.unseen, 3);
    let changes = s.read().changed_since(mailbox.id, 6, 10).unwrap().changes;
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.uid, c.modseq, c.expunged))
            .collect::<Vec<_>>(),
        [(1, 7, false), (2, 7, false), (3, 7, false)]
    );
    assert!(
        s.read()
            .changed_since(mailbox.id, 7, 10)
            .unwrap()
            .changes
            .is_empty()
    );

    // Unknown UIDs are ignored; errors are refused whole.
    let reply = s.ok(&store(
        INBOX,
        UidSet::range(50, 60),
        StoreOp::Add,
        vec![Flag::Seen],
        None,
    ));
    assert_eq!(
        reply,
        Reply::Stored {
            modified: vec![],
            failed: vec![],
            highestmodseq: 7
        }
    );
    assert_eq!(
        s.err(&store(
            "Nope",
            UidSet::all(),
            StoreOp::Add,
            vec![Flag::Seen],
            None
        )),
        MailError::NoSuchMailbox("Nope".into())
    );
    assert_eq!(
        s.err(&store(
            INBOX,
            UidSet::all(),
            StoreOp::Add,
            vec![Flag::Keyword("\\Recent".into())],
            None
        )),
        MailError::InvalidFlag("\\Recent".into())
    );
}

#[test]
fn store_unchanged_since_refuses_messages_changed_later() {
    let s = with_alice("condstore");
    for body in [&b"a"[..], b"b", b"c"] {
        s.ok(&append("alice@example.com", INBOX, vec![], body));
    }
    // Messages have MODSEQ 2, 3, 4. Someone flags message 2 (MODSEQ 5).
    s.ok(&store(
        INBOX,
        UidSet::single(2),
        StoreOp::Add,
        vec![Flag::Flagged],
        None,
    ));
    // A client that saw MODSEQ 4 sets \Seen on everything, unless changed since.
    let reply = s.ok(&store(
        INBOX,
        UidSet::all(),
        StoreOp::Add,
        vec![Flag::Seen],
        Some(4),
    ));
    let Reply::Stored {
        modified,
        failed,
        highestmodseq,
    } = reply
    else {
        panic!()
    };
    assert_eq!(failed, [2]);
    assert_eq!(modified.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(highestmodseq, 6);
    let id = inbox(&s, "alice@example.com").id;
    assert!(
        !s.read()
            .message(id, 2)
            .unwrap()
            .unwrap()
            .flags
            .contains(&Flag::Seen)
    );
    assert!(
        s.read()
            .message(id, 3)
            .unwrap()
            .unwrap()
            .flags
            .contains(&Flag::Seen)
    );
    // UNCHANGEDSINCE 0 refuses every message (RFC 7162 §3.1.3).
    let reply = s.ok(&store(
        INBOX,
        UidSet::all(),
        StoreOp::Add,
        vec![Flag::Draft],
        Some(0),
    ));
    let Reply::Stored {
        modified,
        failed,
        highestmodseq,
    } = reply
    else {
        panic!()
    };
    assert_eq!(
        (modified.len(), failed, highestmodseq),
        (0, vec![1, 2, 3], 6)
    );
    // Exactly at the message's MODSEQ passes.
    let reply = s.ok(&store(
        INBOX,
        UidSet::single(2),
        StoreOp::Add,
        vec![Flag::Seen],
        Some(5),
    ));
    let Reply::Stored {
        modified, failed, ..
    } = reply
    else {
        panic!()
    };
    assert_eq!((modified.len(), failed.len()), (1, 0));
}

#[test]
fn expunge_removes_only_deleted_messages_and_uids_are_never_reused() {
    let s = with_alice("expunge");
    for body in [&b"one"[..], b"two", b"three", b"four"] {
        s.ok(&append("alice@example.com", INBOX, vec![], body));
    }
    s.ok(&append("alice@example.com", INBOX, vec![], b"one"));
    let id = inbox(&s, "alice@example.com").id;
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"one")).unwrap(), 2);
    s.ok(&store(
        INBOX,
        [1, 2, 4, 5].into_iter().collect(),
        StoreOp::Add,
        vec![Flag::Deleted],
        None,
    ));
    assert_eq!(inbox(&s, "alice@example.com").deleted, 4);

    // Only within the given UIDs (UID EXPUNGE).
    let reply = s.ok(&expunge(INBOX, Some(UidSet::range(1, 3))));
    assert_eq!(
        reply,
        Reply::Expunged {
            uids: vec![1, 2],
            highestmodseq: 8
        }
    );
    assert_eq!(uids_of(&s, id), [3, 4, 5]);
    assert!(
        s.read().blob(&BlobHash::of(b"two")).unwrap().is_none(),
        "last reference gone"
    );
    assert_eq!(
        s.read().blob_refs(&BlobHash::of(b"one")).unwrap(),
        1,
        "uid 5 shares it"
    );
    let reply = s.ok(&expunge(INBOX, None));
    assert_eq!(
        reply,
        Reply::Expunged {
            uids: vec![4, 5],
            highestmodseq: 9
        }
    );
    assert!(s.read().blob(&BlobHash::of(b"one")).unwrap().is_none());
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"one")).unwrap(), 0);
    // Nothing left to expunge: no change, no MODSEQ.
    assert_eq!(
        s.ok(&expunge(INBOX, None)),
        Reply::Expunged {
            uids: vec![],
            highestmodseq: 9
        }
    );

    let mailbox = inbox(&s, "alice@example.com");
    assert_eq!(
        (
            mailbox.messages,
            mailbox.deleted,
            mailbox.size,
            mailbox.uidnext
        ),
        (1, 0, 5, 6)
    );
    let account = s.read().account("alice@example.com").unwrap().unwrap();
    assert_eq!((account.messages, account.used_bytes), (1, 5));
    // The next message gets UID 6, not a freed one.
    assert_eq!(
        appended_uid(s.ok(&append("alice@example.com", INBOX, vec![], b"new"))),
        6
    );

    // The change log shows the expunges as tombstones at their MODSEQ.
    let changes = s.read().changed_since(id, 7, 10).unwrap().changes;
    let seen: Vec<(u32, u64, bool)> = changes
        .iter()
        .map(|c| (c.uid, c.modseq, c.expunged))
        .collect();
    assert_eq!(
        seen,
        [
            (1, 8, true),
            (2, 8, true),
            (4, 9, true),
            (5, 9, true),
            (6, 10, false)
        ]
    );
    assert_eq!(
        s.err(&expunge("Nope", None)),
        MailError::NoSuchMailbox("Nope".into())
    );
}

#[test]
fn uids_survive_recreating_a_mailbox_under_a_new_uidvalidity() {
    let s = with_alice("recreate");
    let Reply::Mailbox {
        mailbox_id: first_id,
        uidvalidity: first_validity,
    } = s.mailbox("alice@example.com", "Box")
    else {
        panic!()
    };
    for body in [&b"a"[..], b"b"] {
        s.ok(&append("alice@example.com", "Box", vec![], body));
    }
    s.ok(&Command::DeleteMailbox {
        account: "alice@example.com".into(),
        name: "Box".into(),
    });
    // Recreated at the same clock (even an earlier one): a new mailbox, new UIDVALIDITY.
    let again = s.ok(&Command::CreateMailbox {
        account: "alice@example.com".into(),
        name: "Box".into(),
        special_use: None,
        now: T0 - 86_400_000,
    });
    let Reply::Mailbox {
        mailbox_id,
        uidvalidity,
    } = again
    else {
        panic!()
    };
    assert_ne!(mailbox_id, first_id);
    assert!(
        uidvalidity > first_validity,
        "{uidvalidity} > {first_validity}"
    );
    assert_eq!(
        appended_uid(s.ok(&append("alice@example.com", "Box", vec![], b"c"))),
        1
    );
    assert!(
        s.read()
            .messages(first_id, 0..=u32::MAX, 10)
            .unwrap()
            .messages
            .is_empty()
    );
    // UIDVALIDITY follows a clock that moves forward.
    let later = s.ok(&Command::CreateMailbox {
        account: "alice@example.com".into(),
        name: "Later".into(),
        special_use: None,
        now: T0 + 3_600_000,
    });
    let Reply::Mailbox {
        uidvalidity: later_validity,
        ..
    } = later
    else {
        panic!()
    };
    assert_eq!(later_validity, ((T0 + 3_600_000) / 1000) as u32);
}

#[test]
fn copy_shares_bodies_and_reports_copyuid() {
    let s = with_alice("copy");
    s.mailbox("alice@example.com", "Archive");
    for body in [&b"one"[..], b"two", b"three"] {
        s.ok(&append("alice@example.com", INBOX, vec![Flag::Seen], body));
    }
    s.ok(&append("alice@example.com", "Archive", vec![], b"zero"));
    let archive = s
        .read()
        .mailbox("alice@example.com", "Archive")
        .unwrap()
        .unwrap();
    let reply = s.ok(&Command::Copy {
        account: "alice@example.com".into(),
        from: INBOX.into(),
        to: "Archive".into(),
        uids: [3, 1, 99].into_iter().collect(),
    });
    assert_eq!(
        reply,
        Reply::Copied {
            uidvalidity: archive.uidvalidity,
            mapping: vec![(1, 2), (3, 3)]
        }
    );
    let copied = s.read().message(archive.id, 3).unwrap().unwrap();
    assert_eq!(copied.blob, BlobHash::of(b"three"));
    assert_eq!(copied.flags, [Flag::Seen].into());
    assert_eq!(copied.internal_date, T0);
    assert_eq!(copied.modseq, 3);
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"three")).unwrap(), 2);
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"two")).unwrap(), 1);
    let after = s
        .read()
        .mailbox("alice@example.com", "Archive")
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.messages, after.uidnext, after.highestmodseq),
        (3, 4, 3)
    );
    assert_eq!(
        s.read()
            .account("alice@example.com")
            .unwrap()
            .unwrap()
            .used_bytes,
        3 + 3 + 5 + 4 + 3 + 5
    );
    assert_eq!(
        uids_of(&s, inbox(&s, "alice@example.com").id),
        [1, 2, 3],
        "source untouched"
    );

    // Copying into the same mailbox duplicates.
    let reply = s.ok(&Command::Copy {
        account: "alice@example.com".into(),
        from: "Archive".into(),
        to: "Archive".into(),
        uids: UidSet::all(),
    });
    let Reply::Copied { mapping, .. } = reply else {
        panic!()
    };
    assert_eq!(mapping, [(1, 4), (2, 5), (3, 6)]);

    for (from, to, missing) in [("Nope", "Archive", "Nope"), (INBOX, "Nope", "Nope")] {
        assert_eq!(
            s.err(&Command::Copy {
                account: "alice@example.com".into(),
                from: from.into(),
                to: to.into(),
                uids: UidSet::all(),
            }),
            MailError::NoSuchMailbox(missing.into())
        );
    }
    // A copy over quota is refused whole.
    let used = s
        .read()
        .account("alice@example.com")
        .unwrap()
        .unwrap()
        .used_bytes;
    s.ok(&Command::SetQuota {
        address: "alice@example.com".into(),
        quota_bytes: Some(used + 5),
    });
    assert!(matches!(
        s.err(&Command::Copy {
            account: "alice@example.com".into(),
            from: INBOX.into(),
            to: "Archive".into(),
            uids: UidSet::all(),
        }),
        MailError::QuotaExceeded {
            needed_bytes: 11,
            ..
        }
    ));
}

#[test]
fn move_is_copy_and_expunge_in_one_step() {
    let s = with_alice("move");
    s.mailbox("alice@example.com", "Trash");
    for body in [&b"one"[..], b"two", b"three"] {
        s.ok(&append("alice@example.com", INBOX, vec![], body));
    }
    let inbox_before = inbox(&s, "alice@example.com");
    let account_before = s.read().account("alice@example.com").unwrap().unwrap();
    let trash = s
        .read()
        .mailbox("alice@example.com", "Trash")
        .unwrap()
        .unwrap();
    // A full quota does not stop a move: usage does not change.
    s.ok(&Command::SetQuota {
        address: "alice@example.com".into(),
        quota_bytes: Some(account_before.used_bytes),
    });

    let move_ = |to: &str| Command::Move {
        account: "alice@example.com".into(),
        from: INBOX.into(),
        to: to.into(),
        uids: UidSet::range(1, 2),
    };
    // A failing move changes nothing.
    assert_eq!(
        s.err(&move_("Nope")),
        MailError::NoSuchMailbox("Nope".into())
    );
    assert_eq!(inbox(&s, "alice@example.com"), inbox_before);

    let (response, _) = s.apply_bytes(&move_("Trash").encode());
    assert_eq!(
        decode_response(&response).unwrap(),
        Reply::Copied {
            uidvalidity: trash.uidvalidity,
            mapping: vec![(1, 1), (2, 2)]
        }
    );
    assert_eq!(uids_of(&s, inbox_before.id), [3]);
    assert_eq!(uids_of(&s, trash.id), [1, 2]);
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"one")).unwrap(), 1);
    assert_eq!(
        s.read().blob(&BlobHash::of(b"one")).unwrap().as_deref(),
        Some(&b"one"[..])
    );
    let account = s.read().account("alice@example.com").unwrap().unwrap();
    assert_eq!(
        (account.messages, account.used_bytes),
        (account_before.messages, account_before.used_bytes)
    );
    let source = inbox(&s, "alice@example.com");
    assert_eq!(
        (source.messages, source.size, source.highestmodseq),
        (1, 5, inbox_before.highestmodseq + 1)
    );
    let vanished: Vec<u32> = s
        .read()
        .changed_since(source.id, inbox_before.highestmodseq, 10)
        .unwrap()
        .changes
        .iter()
        .filter(|c| c.expunged)
        .map(|c| c.uid)
        .collect();
    assert_eq!(vanished, [1, 2]);

    // Moving within one mailbox renumbers the messages.
    let reply = s.ok(&Command::Move {
        account: "alice@example.com".into(),
        from: "Trash".into(),
        to: "Trash".into(),
        uids: UidSet::all(),
    });
    let Reply::Copied { mapping, .. } = reply else {
        panic!()
    };
    assert_eq!(mapping, [(1, 3), (2, 4)]);
    assert_eq!(uids_of(&s, trash.id), [3, 4]);
    let trash = s
        .read()
        .mailbox("alice@example.com", "Trash")
        .unwrap()
        .unwrap();
    assert_eq!((trash.messages, trash.size), (2, 6));
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"two")).unwrap(), 1);
}

#[test]
fn reads_page_through_messages_and_changes() {
    let s = with_alice("paging");
    for i in 0..25u32 {
        s.ok(&append(
            "alice@example.com",
            INBOX,
            vec![],
            format!("m{i}").as_bytes(),
        ));
    }
    let id = inbox(&s, "alice@example.com").id;
    let (mut all, mut from, mut pages) = (Vec::new(), 1u32, 0);
    loop {
        let page = s.read().messages(id, from..=20, 6).unwrap();
        assert!(page.messages.len() <= 6);
        all.extend(page.messages.iter().map(|m| m.uid));
        pages += 1;
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(all, (1..=20).collect::<Vec<_>>());
    assert_eq!(pages, 4);

    let mut changes = Vec::new();
    let mut page = s.read().changed_since(id, 10, 4).unwrap();
    loop {
        changes.extend(page.changes.iter().map(|c| c.uid));
        match page.next {
            Some(cursor) => page = s.read().changes_after(id, cursor, 4).unwrap(),
            None => break,
        }
    }
    // Message n has MODSEQ n + 1.
    assert_eq!(changes, (10..=25).collect::<Vec<_>>());
    assert!(
        s.read()
            .changed_since(id, u64::MAX, 4)
            .unwrap()
            .changes
            .is_empty()
    );
}

#[test]
fn two_shards_on_one_engine_are_isolated() {
    let a = Shard::new("shards");
    let b = a.sibling(1);
    for s in [&a, &b] {
        s.domain("example.com");
        s.account("alice@example.com", None);
    }
    let body = b"same body in both shards";
    a.ok(&deliver("k", &["alice@example.com"], body));
    // The same idempotency key on the other shard is another delivery.
    let results = delivered(b.ok(&deliver("k", &["alice@example.com"], body)));
    assert_eq!(results[0].as_ref().unwrap().uid, 1);
    b.ok(&deliver("k2", &["alice@example.com"], body));
    assert_eq!(a.read().blob_refs(&BlobHash::of(body)).unwrap(), 1);
    assert_eq!(b.read().blob_refs(&BlobHash::of(body)).unwrap(), 2);

    // Deleting everything in shard 0 leaves shard 1 alone.
    let b_before = rows_of_shard(&b, 1);
    a.ok(&Command::DeleteAccount {
        address: "alice@example.com".into(),
    });
    a.ok(&Command::DeleteDomain {
        domain: "example.com".into(),
    });
    assert!(a.read().domains().unwrap().is_empty());
    assert!(a.read().account("alice@example.com").unwrap().is_none());
    assert!(a.read().blob(&BlobHash::of(body)).unwrap().is_none());
    assert!(b.read().blob(&BlobHash::of(body)).unwrap().is_some());
    assert_eq!(b.read().domains().unwrap().len(), 1);
    assert_eq!(inbox(&b, "alice@example.com").messages, 2);
    assert_eq!(rows_of_shard(&b, 1), b_before);
    // Of shard 0 only its counters (ids are never handed out twice) and the delivery's
    // idempotency record (until it expires) remain.
    let left: Vec<(&str, u8)> = rows_of_shard(&a, 0)
        .into_iter()
        .flat_map(|(ks, rows)| rows.into_iter().map(move |(k, _)| (ks, k[4])))
        .collect();
    assert_eq!(
        left,
        [("mail_dir", b'C'), ("mail_idem", b'K'), ("mail_idem", b'T')]
    );
}

fn rows_of_shard(s: &Shard, shard: u32) -> Vec<(&'static str, Vec<tern_store::KeyValue>)> {
    s.dump()
        .into_iter()
        .map(|(ks, rows)| {
            let rows = rows
                .into_iter()
                .filter(|(k, _)| k.starts_with(&shard.to_be_bytes()))
                .collect();
            (ks, rows)
        })
        .collect()
}

fn append_many(key: Option<&str>, mailbox: &str, bodies: &[(&[u8], Vec<Flag>)]) -> Command {
    Command::AppendMany {
        account: "alice@example.com".into(),
        mailbox: mailbox.into(),
        messages: bodies
            .iter()
            .enumerate()
            .map(|(i, (body, flags))| AppendMessage {
                flags: flags.clone(),
                internal_date: T0 + i as i64 * 1000,
                body: body.to_vec(),
            })
            .collect(),
        idempotency_key: key.map(|k| k.as_bytes().to_vec()),
        now: T0,
    }
}

#[test]
fn append_many_gives_consecutive_uids_in_order() {
    let s = with_alice("append-many");
    s.ok(&append("alice@example.com", INBOX, vec![], b"first"));
    let before = inbox(&s, "alice@example.com");
    let reply = s.ok(&append_many(
        None,
        INBOX,
        &[
            (b"one", vec![Flag::Seen]),
            (b"two", vec![]),
            // The same body twice is stored once.
            (b"one", vec![Flag::Keyword("$Work".into()), Flag::Flagged]),
        ],
    ));
    assert_eq!(
        reply,
        Reply::AppendedMany {
            mailbox_id: before.id,
            uidvalidity: before.uidvalidity,
            first_uid: 2,
            last_uid: 4,
            modseq: before.highestmodseq + 1,
        }
    );
    let messages = s.read().messages(before.id, 2..=4, 10).unwrap().messages;
    let got: Vec<(u32, i64, u64, BTreeSet<Flag>)> = messages
        .iter()
        .map(|m| (m.uid, m.internal_date, m.modseq, m.flags.clone()))
        .collect();
    let modseq = before.highestmodseq + 1;
    assert_eq!(
        got,
        [
            (2, T0, modseq, [Flag::Seen].into()),
            (3, T0 + 1000, modseq, BTreeSet::new()),
            (
                4,
                T0 + 2000,
                modseq,
                [Flag::Flagged, Flag::Keyword("$Work".into())].into()
            ),
        ]
    );
    assert_eq!(messages[0].blob, messages[2].blob);
    assert_eq!(
        s.read().blob(&messages[1].blob).unwrap().as_deref(),
        Some(&b"two"[..])
    );
    let after = inbox(&s, "alice@example.com");
    assert_eq!(
        (after.uidnext, after.messages, after.unseen, after.size),
        (5, 4, 3, 5 + 3 + 3 + 3)
    );
    let account = s.read().account("alice@example.com").unwrap().unwrap();
    assert_eq!((account.messages, account.used_bytes), (4, 14));
}

#[test]
fn append_many_is_refused_whole() {
    let s = Shard::new("append-many-refused");
    s.domain("example.com");
    s.account("alice@example.com", Some(10));
    s.ok(&append("alice@example.com", INBOX, vec![], b"1234"));
    // 4 used + 3 + 3 = 10 fits; 4 + 3 + 3 + 1 does not, so none of the four is stored.
    let refused = s.err(&append_many(
        Some("k1"),
        INBOX,
        &[(b"abc", vec![]), (b"def", vec![]), (b"g", vec![])],
    ));
    assert!(
        matches!(
            refused,
            MailError::QuotaExceeded {
                used_bytes: 4,
                needed_bytes: 7,
                ..
            }
        ),
        "{refused:?}"
    );
    // An invalid flag on the last message refuses the first ones too.
    assert_eq!(
        s.err(&append_many(
            None,
            INBOX,
            &[(b"a", vec![]), (b"b", vec![Flag::Keyword("x y".into())])],
        )),
        MailError::InvalidFlag("x y".into())
    );
    assert_eq!(
        s.err(&append_many(None, "Nowhere", &[(b"a", vec![])])),
        MailError::NoSuchMailbox("Nowhere".into())
    );
    assert!(matches!(
        s.err(&append_many(None, INBOX, &[])),
        MailError::InvalidCommand(_)
    ));
    let body: &[u8] = b"";
    let too_many: Vec<(&[u8], Vec<Flag>)> = (0..=tern_mail::MAX_APPEND_MESSAGES)
        .map(|_| (body, vec![]))
        .collect();
    assert!(matches!(
        s.err(&append_many(None, INBOX, &too_many)),
        MailError::InvalidCommand(_)
    ));
    // The refused key was not remembered: the command that fits goes through with it.
    let reply = s.ok(&append_many(
        Some("k1"),
        INBOX,
        &[(b"abc", vec![]), (b"def", vec![])],
    ));
    assert!(
        matches!(
            reply,
            Reply::AppendedMany {
                first_uid: 2,
                last_uid: 3,
                ..
            }
        ),
        "{reply:?}"
    );
}

#[test]
fn append_many_retried_with_its_key_is_stored_once() {
    let s = with_alice("append-many-idem");
    let command = append_many(
        Some("imap-multi-1"),
        INBOX,
        &[(b"x", vec![]), (b"y", vec![Flag::Draft])],
    );
    let (first, _) = s.apply_bytes(&command.encode());
    let (second, ops) = s.apply_bytes(&command.encode());
    assert_eq!(first, second);
    assert_eq!(ops, 0, "the retry writes nothing");
    let inbox = inbox(&s, "alice@example.com");
    assert_eq!(uids_of(&s, inbox.id), [1, 2]);
    // In one group (a re-proposal landing in the same entry) as well.
    let again = append_many(Some("imap-multi-2"), INBOX, &[(b"z", vec![])]);
    let (responses, _) = s.apply_group(&[again.encode(), again.encode()]);
    assert_eq!(responses[0], responses[1]);
    assert_eq!(uids_of(&s, inbox.id), [1, 2, 3]);
}

fn rows(s: &Shard, keyspace: &str) -> usize {
    s.dump()
        .into_iter()
        .find(|(ks, _)| *ks == keyspace)
        .map_or(0, |(_, rows)| rows.len())
}

/// What a crash can leave: a body written to disk ahead of the state that refers to it, for
/// the entry with log index `index`.
fn leave_body(s: &Shard, index: u64, body: &[u8]) {
    let key = [&s.shard.to_be_bytes()[..], &BlobHash::of(body).0].concat();
    let mut batch = tern_store::Batch::new();
    batch.put("mail_blob", key, [&index.to_be_bytes()[..], body].concat());
    s.engine
        .write(batch, tern_store::Durability::Immediate)
        .unwrap();
}

#[test]
fn bodies_count_their_references_and_shared_ones_alone_have_a_count() {
    let s = with_alice("blob-refs");
    let body = b"Subject: shared\r\n\r\nsame bytes\r\n";
    let hash = BlobHash::of(body);
    s.ok(&deliver("one", &["alice@example.com"], body));
    assert_eq!(s.read().blob_refs(&hash).unwrap(), 1);
    assert_eq!(rows(&s, "mail_blobref"), 0, "a body used once has no count");
    s.ok(&deliver("two", &["alice@example.com"], body));
    s.ok(&deliver("three", &["alice@example.com"], body));
    assert_eq!(s.read().blob_refs(&hash).unwrap(), 3);
    assert_eq!(rows(&s, "mail_blobref"), 1);
    assert_eq!(rows(&s, "mail_blob"), 1);
    s.ok(&store(
        "INBOX",
        UidSet::range(1, 2),
        StoreOp::Add,
        vec![Flag::Deleted],
        None,
    ));
    s.ok(&expunge("INBOX", None));
    assert_eq!(s.read().blob_refs(&hash).unwrap(), 1);
    assert_eq!(
        rows(&s, "mail_blobref"),
        0,
        "back to one reference: no count"
    );
    assert_eq!(s.read().blob(&hash).unwrap().as_deref(), Some(&body[..]));
    s.ok(&store(
        "INBOX",
        UidSet::single(3),
        StoreOp::Add,
        vec![Flag::Deleted],
        None,
    ));
    s.ok(&expunge("INBOX", None));
    assert_eq!(s.read().blob_refs(&hash).unwrap(), 0);
    assert_eq!(
        rows(&s, "mail_blob"),
        0,
        "the last reference takes the body"
    );
}

#[test]
fn a_body_left_by_an_interrupted_apply_is_not_counted_as_a_reference() {
    let s = with_alice("blob-leftover");
    let body = b"Subject: replayed\r\n\r\nwritten twice\r\n";
    let hash = BlobHash::of(body);
    // The entry about to be applied wrote its body, then the node crashed before the state
    // referring to it was durable; Raft applies that entry again.
    let next = s.index.load(std::sync::atomic::Ordering::Relaxed) + 1;
    leave_body(&s, next, body);
    s.ok(&deliver("replayed", &["alice@example.com"], body));
    assert_eq!(s.read().blob_refs(&hash).unwrap(), 1);
    assert_eq!(rows(&s, "mail_blobref"), 0);
    s.ok(&store(
        "INBOX",
        UidSet::single(1),
        StoreOp::Add,
        vec![Flag::Deleted],
        None,
    ));
    s.ok(&expunge("INBOX", None));
    assert_eq!(
        rows(&s, "mail_blob"),
        0,
        "expunging the one message frees the body"
    );

    // A body stored by an earlier entry is a reference, even when it is not in the staged
    // writes of the group.
    s.ok(&deliver("first", &["alice@example.com"], body));
    s.ok(&deliver("second", &["alice@example.com"], body));
    assert_eq!(s.read().blob_refs(&hash).unwrap(), 2);
}

/// Applies `commands` as one entry, each held by the log where `stored` says; returns the
/// batch.
fn apply_entry(s: &Shard, commands: &[Vec<u8>], stored: &[tern_store::Link]) -> tern_store::Batch {
    let mut batch = tern_store::Batch::new();
    let slices: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
    tern_mail::MailStateMachine::new()
        .apply_many(
            s.shard,
            s.next_index(),
            &*s.engine,
            &mut batch,
            &slices,
            stored,
        )
        .unwrap();
    batch
}

/// Where a log holding `commands` one after another at offset 100 of `raft_log` key `entry`
/// holds each.
fn stored_links(commands: &[Vec<u8>]) -> Vec<tern_store::Link> {
    let mut offset = 100;
    commands
        .iter()
        .map(|command| {
            let link = tern_store::Link {
                keyspace: "raft_log",
                key: b"entry".to_vec(),
                offset,
                head: 0,
            };
            offset += command.len() as u64;
            link
        })
        .collect()
}

/// The `mail_blob` puts of a batch: value and link.
fn blob_puts(batch: &tern_store::Batch) -> Vec<(Vec<u8>, Option<tern_store::Link>)> {
    batch
        .ops()
        .iter()
        .filter_map(|op| match op {
            tern_store::Op::Put {
                keyspace: "mail_blob",
                value,
                link,
                ..
            } => Some((value.clone(), link.as_deref().cloned())),
            _ => None,
        })
        .collect()
}

#[test]
fn bodies_are_linked_to_where_the_log_holds_the_command() {
    let s = with_alice("linked");
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut keyed = append(
        "alice@example.com",
        INBOX,
        vec![],
        &[&body[..], b"!"].concat(),
    );
    if let Command::Append {
        idempotency_key, ..
    } = &mut keyed
    {
        *idempotency_key = Some(vec![b'k'; 512]);
    }
    let commands = vec![
        deliver("d1", &["alice@example.com"], b"short body").encode(),
        deliver("d2", &["alice@example.com"], &body).encode(),
        keyed.encode(),
    ];
    let stored = stored_links(&commands);
    let batch = apply_entry(&s, &commands, &stored);
    let puts = blob_puts(&batch);
    assert_eq!(puts.len(), 3);
    let index = s.index.load(std::sync::atomic::Ordering::Relaxed);
    let mut linked = 0;
    for (value, link) in puts {
        assert_eq!(
            value[..8],
            index.to_be_bytes(),
            "the header is the entry's index"
        );
        let stored_body = &value[8..];
        let Some(link) = link else {
            assert_eq!(stored_body, b"short body", "only short bodies are copied");
            continue;
        };
        linked += 1;
        assert_eq!(
            (link.keyspace, &link.key[..], link.head),
            ("raft_log", &b"entry"[..], 8)
        );
        // The link points at the body inside the command that carried it.
        let (k, base) = stored
            .iter()
            .enumerate()
            .filter(|(_, l)| l.offset <= link.offset)
            .map(|(k, l)| (k, l.offset))
            .next_back()
            .unwrap();
        let at = (link.offset - base) as usize;
        assert_eq!(&commands[k][at..at + stored_body.len()], stored_body);
    }
    assert_eq!(linked, 2);
    // Without a place in the log, nothing is linked.
    let again = [deliver("d3", &["alice@example.com"], &body[1..]).encode()];
    let batch = apply_entry(&s, &again, &[]);
    assert_eq!(blob_puts(&batch).len(), 1);
    assert!(blob_puts(&batch).iter().all(|(_, link)| link.is_none()));
}
