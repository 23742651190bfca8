//! Domains, accounts, aliases, mailboxes, subscriptions.

use tern_mail::{
    BlobHash, Command, INBOX, MailError, Reply, SpecialUse, hash_password, verify_password,
};

use crate::{HASH, Shard, T0, append, appended_uid, deliver, with_alice};

#[test]
fn domains_are_created_listed_and_deleted_only_when_empty() {
    let s = Shard::new("domains");
    s.domain("Example.COM");
    s.domain("example.org");
    let names: Vec<String> = s
        .read()
        .domains()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["example.com", "example.org"]);
    assert_eq!(s.read().domain("EXAMPLE.com").unwrap().unwrap().created, T0);

    let create = |d: &str| Command::CreateDomain {
        domain: d.into(),
        now: T0,
    };
    let delete = |d: &str| Command::DeleteDomain { domain: d.into() };
    assert_eq!(
        s.err(&create("example.com")),
        MailError::DomainExists("example.com".into())
    );
    assert_eq!(
        s.err(&create("bad domain")),
        MailError::InvalidDomain("bad domain".into())
    );
    assert_eq!(
        s.err(&delete("nowhere.net")),
        MailError::NoSuchDomain("nowhere.net".into())
    );

    // An account keeps the domain.
    s.account("bob@example.com", None);
    assert_eq!(
        s.err(&delete("example.com")),
        MailError::DomainNotEmpty("example.com".into())
    );
    // So does an alias alone (pointing at an account elsewhere).
    s.account("carol@example.org", None);
    s.ok(&Command::AddAlias {
        alias: "info@example.com".into(),
        account: "carol@example.org".into(),
    });
    s.ok(&Command::DeleteAccount {
        address: "bob@example.com".into(),
    });
    assert_eq!(
        s.err(&delete("example.com")),
        MailError::DomainNotEmpty("example.com".into())
    );
    s.ok(&Command::RemoveAlias {
        alias: "info@example.com".into(),
    });
    assert_eq!(s.ok(&delete("example.com")), Reply::Done);
    let names: Vec<String> = s
        .read()
        .domains()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["example.org"]);
    // A domain that merely shares a prefix ("example.com" vs "example.co") is not in the way.
    s.domain("example.co");
    s.domain("example.com");
    s.account("x@example.com", None);
    assert_eq!(s.ok(&delete("example.co")), Reply::Done);
}

#[test]
fn accounts_are_created_with_an_inbox() {
    let s = Shard::new("accounts");
    s.domain("example.com");
    let reply = s.account("Alice@Example.com", Some(1000));
    let Reply::AccountCreated {
        account_id,
        inbox_id,
        inbox_uidvalidity,
    } = reply
    else {
        panic!("{reply:?}")
    };
    let account = s.read().account("alice@EXAMPLE.com").unwrap().unwrap();
    assert_eq!(account.id, account_id);
    assert_eq!(account.address, "alice@example.com");
    assert_eq!(account.password_hash, HASH);
    assert_eq!(account.quota_bytes, Some(1000));
    assert_eq!((account.used_bytes, account.messages), (0, 0));
    assert_eq!(account.created, T0);

    let inbox = s
        .read()
        .mailbox("alice@example.com", "inbox")
        .unwrap()
        .unwrap();
    assert_eq!(inbox.id, inbox_id);
    assert_eq!(inbox.name, INBOX);
    assert_eq!(inbox.uidvalidity, inbox_uidvalidity);
    assert_eq!(
        inbox.uidvalidity,
        (T0 / 1000) as u32,
        "UIDVALIDITY follows the clock"
    );
    assert_eq!(
        (inbox.uidnext, inbox.highestmodseq, inbox.messages),
        (1, 1, 0)
    );
    assert_eq!(
        s.read().list_mailboxes("alice@example.com").unwrap().len(),
        1
    );

    // A second account gets other ids and a greater UIDVALIDITY at the same clock.
    let Reply::AccountCreated {
        account_id: bob_id,
        inbox_id: bob_inbox,
        inbox_uidvalidity: bob_uidvalidity,
    } = s.account("bob@example.com", None)
    else {
        panic!()
    };
    assert!(bob_id > account_id && bob_inbox > inbox_id && bob_uidvalidity > inbox_uidvalidity);
    let accounts: Vec<String> = s
        .read()
        .accounts("example.com", None, 10)
        .unwrap()
        .into_iter()
        .map(|a| a.address)
        .collect();
    assert_eq!(accounts, ["alice@example.com", "bob@example.com"]);
    let page2 = s
        .read()
        .accounts("example.com", Some("alice@example.com"), 10)
        .unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].address, "bob@example.com");
}

#[test]
fn account_errors() {
    let s = with_alice("account-errors");
    let create = |address: &str, hash: &str| Command::CreateAccount {
        address: address.into(),
        password_hash: hash.into(),
        quota_bytes: None,
        now: T0,
    };
    assert_eq!(
        s.err(&create("ALICE@example.com", HASH)),
        MailError::AccountExists("alice@example.com".into())
    );
    assert_eq!(
        s.err(&create("bob@nowhere.net", HASH)),
        MailError::NoSuchDomain("nowhere.net".into())
    );
    assert_eq!(
        s.err(&create("not an address", HASH)),
        MailError::InvalidAddress("not an address".into())
    );
    assert_eq!(
        s.err(&create("bob@example.com", "hunter2")),
        MailError::InvalidPasswordHash
    );
    s.ok(&Command::AddAlias {
        alias: "postmaster@example.com".into(),
        account: "alice@example.com".into(),
    });
    assert_eq!(
        s.err(&create("postmaster@example.com", HASH)),
        MailError::AddressInUse("postmaster@example.com".into())
    );
    for command in [
        Command::DeleteAccount {
            address: "bob@example.com".into(),
        },
        Command::SetPassword {
            address: "bob@example.com".into(),
            password_hash: HASH.into(),
        },
        Command::SetQuota {
            address: "bob@example.com".into(),
            quota_bytes: None,
        },
    ] {
        assert_eq!(
            s.err(&command),
            MailError::NoSuchAccount("bob@example.com".into())
        );
    }
}

#[test]
fn passwords_and_quotas_change() {
    let s = with_alice("password");
    let hash = hash_password("new secret");
    s.ok(&Command::SetPassword {
        address: "alice@example.com".into(),
        password_hash: hash.clone(),
    });
    let account = s.read().account("alice@example.com").unwrap().unwrap();
    assert_eq!(account.password_hash, hash);
    assert!(verify_password(&account.password_hash, "new secret"));
    assert!(!verify_password(&account.password_hash, "old secret"));
    assert_eq!(
        s.err(&Command::SetPassword {
            address: "alice@example.com".into(),
            password_hash: "new secret".into(),
        }),
        MailError::InvalidPasswordHash
    );
    s.ok(&Command::SetQuota {
        address: "alice@example.com".into(),
        quota_bytes: Some(42),
    });
    assert_eq!(
        s.read()
            .account("alice@example.com")
            .unwrap()
            .unwrap()
            .quota_bytes,
        Some(42)
    );
}

#[test]
fn aliases_resolve_and_are_checked() {
    let s = with_alice("aliases");
    s.domain("example.org");
    let add = |alias: &str, account: &str| Command::AddAlias {
        alias: alias.into(),
        account: account.into(),
    };
    s.ok(&add("Info@Example.org", "alice@example.com"));
    let alias = s.read().alias("info@example.org").unwrap().unwrap();
    assert_eq!(alias.account, "alice@example.com");
    let resolve = |a: &str| s.read().resolve(a).unwrap().map(|a| a.address);
    assert_eq!(
        resolve("INFO@example.org").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        resolve("alice@example.com").as_deref(),
        Some("alice@example.com")
    );
    // Subaddresses reach the base address, also through an alias.
    assert_eq!(
        resolve("alice+lists@example.com").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        resolve("info+x@example.org").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(resolve("bob@example.com"), None);
    assert_eq!(resolve("+x@example.com"), None);
    assert_eq!(resolve("garbage"), None);
    assert!(
        s.read()
            .account("alice@example.com")
            .unwrap()
            .unwrap()
            .aliases
            .contains("info@example.org")
    );

    assert_eq!(
        s.err(&add("info@example.org", "alice@example.com")),
        MailError::AddressInUse("info@example.org".into())
    );
    assert_eq!(
        s.err(&add("alice@example.com", "alice@example.com")),
        MailError::AddressInUse("alice@example.com".into())
    );
    assert_eq!(
        s.err(&add("x@nowhere.net", "alice@example.com")),
        MailError::NoSuchDomain("nowhere.net".into())
    );
    assert_eq!(
        s.err(&add("x@example.org", "bob@example.com")),
        MailError::NoSuchAccount("bob@example.com".into())
    );
    // An alias of an alias is refused: the target must be an account.
    assert_eq!(
        s.err(&add("x@example.org", "info@example.org")),
        MailError::NoSuchAccount("info@example.org".into())
    );

    s.ok(&Command::RemoveAlias {
        alias: "info@example.org".into(),
    });
    assert_eq!(resolve("info@example.org"), None);
    assert!(
        s.read()
            .account("alice@example.com")
            .unwrap()
            .unwrap()
            .aliases
            .is_empty()
    );
    assert_eq!(
        s.err(&Command::RemoveAlias {
            alias: "info@example.org".into()
        }),
        MailError::NoSuchAlias("info@example.org".into())
    );
}

#[test]
fn deleting_an_account_removes_everything_it_had() {
    let s = with_alice("delete-account");
    s.account("bob@example.com", None);
    s.ok(&Command::AddAlias {
        alias: "a@example.com".into(),
        account: "alice@example.com".into(),
    });
    s.mailbox("alice@example.com", "Archive");
    s.ok(&Command::Subscribe {
        account: "alice@example.com".into(),
        name: "Archive".into(),
    });
    let old = s.read().account("alice@example.com").unwrap().unwrap();
    let old_inbox = s
        .read()
        .mailbox("alice@example.com", INBOX)
        .unwrap()
        .unwrap();
    // One body only alice has, one shared with bob.
    s.ok(&deliver("k1", &["alice@example.com"], b"only alice"));
    s.ok(&deliver(
        "k2",
        &["alice@example.com", "bob@example.com"],
        b"both",
    ));
    s.ok(&Command::Copy {
        account: "alice@example.com".into(),
        from: INBOX.into(),
        to: "Archive".into(),
        uids: tern_mail::UidSet::all(),
    });
    let only = BlobHash::of(b"only alice");
    let both = BlobHash::of(b"both");
    assert_eq!(s.read().blob_refs(&only).unwrap(), 2);
    assert_eq!(s.read().blob_refs(&both).unwrap(), 3);

    s.ok(&Command::DeleteAccount {
        address: "alice@example.com".into(),
    });
    let r = s.read();
    assert!(r.account("alice@example.com").unwrap().is_none());
    assert!(r.resolve("a@example.com").unwrap().is_none());
    assert!(
        r.alias("a@example.com").unwrap().is_none(),
        "its aliases go too"
    );
    assert!(r.list_mailboxes("alice@example.com").unwrap().is_empty());
    assert!(r.mailbox_by_id(old_inbox.id).unwrap().is_none());
    assert!(
        r.messages(old_inbox.id, 0..=u32::MAX, 10)
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(
        r.changed_since(old_inbox.id, 0, 10)
            .unwrap()
            .changes
            .is_empty()
    );
    assert!(r.blob(&only).unwrap().is_none());
    assert_eq!(r.blob_refs(&only).unwrap(), 0);
    assert_eq!(r.blob_refs(&both).unwrap(), 1, "bob's copy keeps the body");
    assert_eq!(r.blob(&both).unwrap().as_deref(), Some(&b"both"[..]));

    // The same address again is a new account: new id, new INBOX, greater UIDVALIDITY.
    s.account("alice@example.com", None);
    let new = s.read().account("alice@example.com").unwrap().unwrap();
    let new_inbox = s
        .read()
        .mailbox("alice@example.com", INBOX)
        .unwrap()
        .unwrap();
    assert!(new.id > old.id);
    assert!(new_inbox.id > old_inbox.id);
    assert!(new_inbox.uidvalidity > old_inbox.uidvalidity);
    assert!(new.aliases.is_empty());
    assert!(
        s.read()
            .subscriptions("alice@example.com")
            .unwrap()
            .is_empty()
    );
    assert_eq!((new_inbox.messages, new_inbox.uidnext), (0, 1));
}

#[test]
fn mailboxes_are_created_with_special_use_and_checked() {
    let s = with_alice("mailboxes");
    let create = |name: &str, special_use: Option<SpecialUse>| Command::CreateMailbox {
        account: "alice@example.com".into(),
        name: name.into(),
        special_use,
        now: T0,
    };
    let Reply::Mailbox {
        mailbox_id,
        uidvalidity,
    } = s.ok(&create("Sent", Some(SpecialUse::Sent)))
    else {
        panic!()
    };
    let sent = s
        .read()
        .mailbox("alice@example.com", "Sent")
        .unwrap()
        .unwrap();
    assert_eq!((sent.id, sent.uidvalidity), (mailbox_id, uidvalidity));
    assert_eq!(sent.special_use, Some(SpecialUse::Sent));
    assert_eq!(s.read().mailbox_by_id(mailbox_id).unwrap().unwrap(), sent);

    assert_eq!(
        s.err(&create("Sent", None)),
        MailError::MailboxExists("Sent".into())
    );
    assert_eq!(
        s.err(&create("inbox", None)),
        MailError::MailboxExists("INBOX".into())
    );
    assert_eq!(
        s.err(&create("Sent Items", Some(SpecialUse::Sent))),
        MailError::SpecialUseInUse {
            special_use: SpecialUse::Sent,
            mailbox: "Sent".into()
        }
    );
    assert!(matches!(
        s.err(&create("a//b", None)),
        MailError::InvalidMailboxName { .. }
    ));
    assert_eq!(
        s.err(&Command::CreateMailbox {
            account: "bob@example.com".into(),
            name: "x".into(),
            special_use: None,
            now: T0
        }),
        MailError::NoSuchAccount("bob@example.com".into())
    );
    // Names are case-sensitive except INBOX.
    s.ok(&create("sent", None));
    s.ok(&create("Sent/2024", None));
    let names: Vec<String> = s
        .read()
        .list_mailboxes("alice@example.com")
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["INBOX", "Sent", "Sent/2024", "sent"]);
}

#[test]
fn deleting_a_mailbox_frees_its_messages_and_keeps_inferiors() {
    let s = with_alice("delete-mailbox");
    s.mailbox("alice@example.com", "Work");
    s.mailbox("alice@example.com", "Work/Old");
    s.ok(&append("alice@example.com", "Work", vec![], b"12345"));
    s.ok(&append("alice@example.com", "Work/Old", vec![], b"678"));
    assert_eq!(
        s.read()
            .account("alice@example.com")
            .unwrap()
            .unwrap()
            .used_bytes,
        8
    );
    let delete = |name: &str| Command::DeleteMailbox {
        account: "alice@example.com".into(),
        name: name.into(),
    };
    s.ok(&delete("Work"));
    let r = s.read();
    assert!(r.mailbox("alice@example.com", "Work").unwrap().is_none());
    assert!(
        r.mailbox("alice@example.com", "Work/Old")
            .unwrap()
            .is_some()
    );
    let account = r.account("alice@example.com").unwrap().unwrap();
    assert_eq!((account.used_bytes, account.messages), (3, 1));
    assert!(r.blob(&BlobHash::of(b"12345")).unwrap().is_none());

    assert_eq!(s.err(&delete("INBOX")), MailError::InboxNotDeletable);
    assert_eq!(s.err(&delete("inbox")), MailError::InboxNotDeletable);
    assert_eq!(
        s.err(&delete("Work")),
        MailError::NoSuchMailbox("Work".into())
    );
}

#[test]
fn renaming_moves_the_hierarchy_and_keeps_uids() {
    let s = with_alice("rename");
    for name in ["Work", "Work/2024", "Work/2024/Q1", "Workshop"] {
        s.mailbox("alice@example.com", name);
    }
    let uid = appended_uid(s.ok(&append("alice@example.com", "Work/2024", vec![], b"m")));
    let before = s
        .read()
        .mailbox("alice@example.com", "Work/2024")
        .unwrap()
        .unwrap();
    let work = s
        .read()
        .mailbox("alice@example.com", "Work")
        .unwrap()
        .unwrap();

    let rename = |from: &str, to: &str| Command::RenameMailbox {
        account: "alice@example.com".into(),
        from: from.into(),
        to: to.into(),
        now: T0,
    };
    assert_eq!(
        s.ok(&rename("Work", "Jobs")),
        Reply::Mailbox {
            mailbox_id: work.id,
            uidvalidity: work.uidvalidity
        }
    );
    let names: Vec<String> = s
        .read()
        .list_mailboxes("alice@example.com")
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(
        names,
        ["INBOX", "Jobs", "Jobs/2024", "Jobs/2024/Q1", "Workshop"],
        "inferiors move, a sibling sharing the prefix does not"
    );
    let after = s
        .read()
        .mailbox("alice@example.com", "Jobs/2024")
        .unwrap()
        .unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(after.uidvalidity, before.uidvalidity);
    assert_eq!(after.uidnext, before.uidnext);
    assert!(s.read().message(after.id, uid).unwrap().is_some());

    assert_eq!(
        s.err(&rename("Work", "X")),
        MailError::NoSuchMailbox("Work".into())
    );
    assert_eq!(
        s.err(&rename("Jobs", "Workshop")),
        MailError::MailboxExists("Workshop".into())
    );
    assert_eq!(
        s.err(&rename("Jobs", "inbox")),
        MailError::MailboxExists("INBOX".into())
    );
    assert!(matches!(
        s.err(&rename("Jobs", "Jobs/Sub")),
        MailError::InvalidMailboxName { .. }
    ));
    // A new name for an inferior that exists already refuses the whole rename.
    s.mailbox("alice@example.com", "New/2024");
    assert_eq!(
        s.err(&rename("Jobs", "New")),
        MailError::MailboxExists("New/2024".into())
    );
}

#[test]
fn renaming_inbox_moves_its_messages_and_inbox_stays() {
    let s = with_alice("rename-inbox");
    s.mailbox("alice@example.com", "INBOX/Child");
    let u1 = appended_uid(s.ok(&append(
        "alice@example.com",
        INBOX,
        vec![tern_mail::Flag::Seen],
        b"one",
    )));
    let u2 = appended_uid(s.ok(&append("alice@example.com", INBOX, vec![], b"two")));
    let inbox = s
        .read()
        .mailbox("alice@example.com", INBOX)
        .unwrap()
        .unwrap();

    let reply = s.ok(&Command::RenameMailbox {
        account: "alice@example.com".into(),
        from: "inbox".into(),
        to: "Old Mail".into(),
        now: T0 + 1000,
    });
    let old_mail = s
        .read()
        .mailbox("alice@example.com", "Old Mail")
        .unwrap()
        .unwrap();
    assert_eq!(
        reply,
        Reply::Mailbox {
            mailbox_id: old_mail.id,
            uidvalidity: old_mail.uidvalidity
        }
    );
    assert_ne!(old_mail.id, inbox.id);
    assert!(old_mail.uidvalidity > inbox.uidvalidity);
    let moved = s
        .read()
        .messages(old_mail.id, 1..=u32::MAX, 10)
        .unwrap()
        .messages;
    assert_eq!(moved.len(), 2);
    assert_eq!(moved[0].flags, [tern_mail::Flag::Seen].into());
    assert_eq!(moved[0].blob, BlobHash::of(b"one"));
    assert_eq!(moved[1].blob, BlobHash::of(b"two"));
    assert_eq!(
        (old_mail.messages, old_mail.unseen, old_mail.size),
        (2, 1, 6)
    );

    let after = s
        .read()
        .mailbox("alice@example.com", INBOX)
        .unwrap()
        .unwrap();
    assert_eq!(after.id, inbox.id);
    assert_eq!(
        after.uidvalidity, inbox.uidvalidity,
        "INBOX keeps its UIDVALIDITY"
    );
    assert_eq!(after.uidnext, inbox.uidnext, "and its UIDNEXT");
    assert!(after.highestmodseq > inbox.highestmodseq);
    assert_eq!((after.messages, after.size), (0, 0));
    let vanished: Vec<u32> = s
        .read()
        .changed_since(inbox.id, inbox.highestmodseq, 10)
        .unwrap()
        .changes
        .iter()
        .filter(|c| c.expunged)
        .map(|c| c.uid)
        .collect();
    assert_eq!(vanished, [u1, u2]);
    // Inferiors of INBOX are not renamed; usage is unchanged; bodies are not duplicated.
    assert!(
        s.read()
            .mailbox("alice@example.com", "INBOX/Child")
            .unwrap()
            .is_some()
    );
    let account = s.read().account("alice@example.com").unwrap().unwrap();
    assert_eq!((account.messages, account.used_bytes), (2, 6));
    assert_eq!(s.read().blob_refs(&BlobHash::of(b"one")).unwrap(), 1);
    // The next message in INBOX continues its UIDs.
    let u3 = appended_uid(s.ok(&append("alice@example.com", INBOX, vec![], b"three")));
    assert_eq!(u3, u2 + 1);
}

#[test]
fn subscriptions_are_idempotent_and_outlive_mailboxes() {
    let s = with_alice("subscriptions");
    s.mailbox("alice@example.com", "News");
    let sub = |name: &str| Command::Subscribe {
        account: "alice@example.com".into(),
        name: name.into(),
    };
    let unsub = |name: &str| Command::Unsubscribe {
        account: "alice@example.com".into(),
        name: name.into(),
    };
    s.ok(&sub("News"));
    s.ok(&sub("News"));
    s.ok(&sub("inbox"));
    assert_eq!(
        s.read().subscriptions("alice@example.com").unwrap(),
        ["INBOX", "News"]
    );
    assert_eq!(s.err(&sub("Nope")), MailError::NoSuchMailbox("Nope".into()));
    assert_eq!(
        s.err(&Command::Subscribe {
            account: "bob@example.com".into(),
            name: "INBOX".into()
        }),
        MailError::NoSuchAccount("bob@example.com".into())
    );
    s.ok(&Command::DeleteMailbox {
        account: "alice@example.com".into(),
        name: "News".into(),
    });
    assert_eq!(
        s.read().subscriptions("alice@example.com").unwrap(),
        ["INBOX", "News"],
        "RFC 9051: a subscription stays when its mailbox goes"
    );
    s.ok(&unsub("News"));
    s.ok(&unsub("News"));
    assert_eq!(
        s.read().subscriptions("alice@example.com").unwrap(),
        ["INBOX"]
    );
}
