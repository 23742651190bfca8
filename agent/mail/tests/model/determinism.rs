//! Random command sequences: two replicas that apply the same entries end byte-identical with
//! the same responses, and after every entry the state is consistent (counters match the
//! messages, every body's reference count matches the messages that use it, nothing is left
//! behind, UIDNEXT / HIGHESTMODSEQ never go back and UIDVALIDITY never changes).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tern_mail::{AppendMessage, BlobHash, Command, Flag, MailReader, SpecialUse, StoreOp, UidSet};

use crate::{HASH, Shard, T0};

const DOMAINS: &[&str] = &["x.test", "y.test"];
const ADDRESSES: &[&str] = &[
    "a@x.test",
    "b@x.test",
    "c@y.test",
    "al@x.test",
    "a+tag@x.test",
];
const MAILBOXES: &[&str] = &["INBOX", "INBOX", "INBOX", "A", "A", "A/B", "C", "inbox"];
const BODIES: &[&[u8]] = &[b"", b"one", b"two", b"three three three"];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn flags() -> impl Strategy<Value = Vec<Flag>> {
    proptest::sample::subsequence(
        vec![
            Flag::Seen,
            Flag::Deleted,
            Flag::Flagged,
            Flag::Keyword("k1".into()),
            Flag::Keyword("$Junk".into()),
        ],
        0..=3,
    )
}

fn uids() -> impl Strategy<Value = UidSet> {
    prop::collection::vec((0u32..6, 0u32..6), 1..3).prop_map(|ranges| {
        let mut set = UidSet::new();
        for (a, b) in ranges {
            set.push(a, b);
        }
        set
    })
}

/// Clock: mostly near T0, sometimes past the idempotency TTL.
pub fn now() -> impl Strategy<Value = i64> {
    prop_oneof![
        9 => (0i64..5_000).prop_map(|d| T0 + d * 1000),
        1 => Just(T0 + tern_mail::IDEMPOTENCY_TTL_MS + 10_000),
    ]
}

/// Any command, on the addresses, mailboxes and bodies above, at clocks drawn from `now`.
pub fn command<S: Strategy<Value = i64> + 'static>(
    now: fn() -> S,
) -> impl Strategy<Value = Command> {
    let address = || pick(ADDRESSES).prop_map(String::from);
    // Mailbox commands mostly name an account that exists, so that most of them do something.
    let owner = || {
        prop_oneof![
            4 => Just("a@x.test".to_string()),
            2 => Just("b@x.test".to_string()),
            1 => address(),
        ]
    };
    let mailbox = || pick(MAILBOXES).prop_map(String::from);
    let quota = || prop::option::of(0u64..40);

    let create_domain = (pick(DOMAINS), now()).prop_map(|(d, now)| Command::CreateDomain {
        domain: d.into(),
        now,
    });
    let delete_domain = pick(DOMAINS).prop_map(|d| Command::DeleteDomain { domain: d.into() });
    let create_account = (address(), quota(), now()).prop_map(|(address, quota_bytes, now)| {
        Command::CreateAccount {
            address,
            password_hash: HASH.into(),
            quota_bytes,
            now,
        }
    });
    let delete_account = address().prop_map(|address| Command::DeleteAccount { address });
    let set_quota = (address(), quota()).prop_map(|(address, quota_bytes)| Command::SetQuota {
        address,
        quota_bytes,
    });
    let set_password = address().prop_map(|address| Command::SetPassword {
        address,
        password_hash: HASH.into(),
    });
    let add_alias =
        (address(), address()).prop_map(|(alias, account)| Command::AddAlias { alias, account });
    let remove_alias = address().prop_map(|alias| Command::RemoveAlias { alias });
    let special_use = prop::option::of(pick(&[SpecialUse::Trash, SpecialUse::Sent][..]));
    let create_mailbox =
        (owner(), mailbox(), special_use, now()).prop_map(|(account, name, special_use, now)| {
            Command::CreateMailbox {
                account,
                name,
                special_use,
                now,
            }
        });
    let delete_mailbox =
        (owner(), mailbox()).prop_map(|(account, name)| Command::DeleteMailbox { account, name });
    let rename_mailbox =
        (owner(), mailbox(), mailbox(), now()).prop_map(|(account, from, to, now)| {
            Command::RenameMailbox {
                account,
                from,
                to,
                now,
            }
        });
    let subscribe = (owner(), mailbox(), any::<bool>()).prop_map(|(account, name, on)| {
        if on {
            Command::Subscribe { account, name }
        } else {
            Command::Unsubscribe { account, name }
        }
    });
    let recipients = prop::collection::vec(address(), 1..4);
    let deliver = (
        0u8..40,
        recipients,
        prop::option::of(mailbox()),
        flags(),
        pick(BODIES),
        now(),
    )
        .prop_map(
            |(key, recipients, mailbox, flags, body, now)| Command::Deliver {
                idempotency_key: vec![b'k', key],
                recipients,
                mailbox,
                internal_date: now - 1,
                flags,
                body: body.to_vec(),
                now,
            },
        );
    let append = (
        owner(),
        mailbox(),
        flags(),
        pick(BODIES),
        prop::option::of(0u8..20),
        now(),
    )
        .prop_map(
            |(account, mailbox, flags, body, key, now)| Command::Append {
                account,
                mailbox,
                flags,
                internal_date: now,
                body: body.to_vec(),
                idempotency_key: key.map(|k| vec![b'a', k]),
                now,
            },
        );
    let append_many = (
        owner(),
        mailbox(),
        prop::collection::vec((flags(), pick(BODIES)), 0..4),
        prop::option::of(0u8..20),
        now(),
    )
        .prop_map(
            |(account, mailbox, messages, key, now)| Command::AppendMany {
                account,
                mailbox,
                messages: messages
                    .into_iter()
                    .map(|(flags, body)| AppendMessage {
                        flags,
                        internal_date: now,
                        body: body.to_vec(),
                    })
                    .collect(),
                idempotency_key: key.map(|k| vec![b'm', k]),
                now,
            },
        );
    let op = pick(&[StoreOp::Add, StoreOp::Remove, StoreOp::Replace][..]);
    let store = (
        owner(),
        mailbox(),
        uids(),
        op,
        flags(),
        prop::option::of(0u64..12),
    )
        .prop_map(
            |(account, mailbox, uids, op, flags, unchanged_since)| Command::Store {
                account,
                mailbox,
                uids,
                op,
                flags,
                unchanged_since,
            },
        );
    let expunge =
        (owner(), mailbox(), prop::option::of(uids())).prop_map(|(account, mailbox, uids)| {
            Command::Expunge {
                account,
                mailbox,
                uids,
            }
        });
    let copy = (owner(), mailbox(), mailbox(), uids(), any::<bool>()).prop_map(
        |(account, from, to, uids, remove)| {
            if remove {
                Command::Move {
                    account,
                    from,
                    to,
                    uids,
                }
            } else {
                Command::Copy {
                    account,
                    from,
                    to,
                    uids,
                }
            }
        },
    );
    prop_oneof![
        1 => create_domain,
        1 => delete_domain,
        3 => create_account,
        1 => delete_account,
        1 => set_quota,
        1 => set_password,
        1 => add_alias,
        1 => remove_alias,
        2 => create_mailbox,
        1 => delete_mailbox,
        1 => rename_mailbox,
        1 => subscribe,
        6 => deliver,
        4 => append,
        2 => append_many,
        4 => store,
        2 => expunge,
        2 => copy,
    ]
}

/// State every run starts from, so that most commands do something.
pub fn setup() -> Vec<Command> {
    let account = |address: &str, quota_bytes| Command::CreateAccount {
        address: address.into(),
        password_hash: HASH.into(),
        quota_bytes,
        now: T0,
    };
    vec![
        Command::CreateDomain {
            domain: "x.test".into(),
            now: T0,
        },
        account("a@x.test", Some(200)),
        account("b@x.test", None),
        Command::CreateMailbox {
            account: "a@x.test".into(),
            name: "A".into(),
            special_use: None,
            now: T0,
        },
    ]
}

/// What must never go back, per mailbox id: (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ).
type Seen = BTreeMap<u64, (u32, u32, u64)>;

/// Checks that the state is consistent; panics with the reason otherwise.
fn check_invariants(s: &Shard, seen: &mut Seen) {
    let r: MailReader<'_> = s.read();
    let dump = s.dump();
    let rows = |ks: &str| dump.iter().find(|(k, _)| *k == ks).unwrap().1.clone();
    let mut blob_users: BTreeMap<BlobHash, u64> = BTreeMap::new();
    let mut mailbox_ids = BTreeSet::new();
    let mut uidvalidities = BTreeSet::new();
    let mut total_messages = 0u64;
    let mut aliases = 0usize;
    for domain in r.domains().unwrap() {
        for account in r.accounts(&domain.name, None, 100).unwrap() {
            let (mut messages, mut bytes) = (0u64, 0u64);
            for alias in &account.aliases {
                assert_eq!(r.alias(alias).unwrap().unwrap().account, account.address);
            }
            aliases += account.aliases.len();
            let mailboxes = r.list_mailboxes(&account.address).unwrap();
            assert!(
                mailboxes.iter().any(|m| m.name == "INBOX"),
                "every account has an INBOX"
            );
            let uses: Vec<SpecialUse> = mailboxes.iter().filter_map(|m| m.special_use).collect();
            assert_eq!(
                uses.len(),
                uses.iter().collect::<BTreeSet<_>>().len(),
                "special uses are unique"
            );
            for mailbox in mailboxes {
                assert_eq!(mailbox.account_id, account.id);
                assert!(mailbox_ids.insert(mailbox.id));
                assert!(
                    uidvalidities.insert(mailbox.uidvalidity),
                    "UIDVALIDITY is never repeated"
                );
                let list = r
                    .messages(mailbox.id, 0..=u32::MAX, 10_000)
                    .unwrap()
                    .messages;
                let count = list.len() as u32;
                assert_eq!(mailbox.messages, count);
                assert_eq!(mailbox.size, list.iter().map(|m| m.size).sum::<u64>());
                assert_eq!(
                    mailbox.unseen,
                    list.iter()
                        .filter(|m| !m.flags.contains(&Flag::Seen))
                        .count() as u32
                );
                assert_eq!(
                    mailbox.deleted,
                    list.iter()
                        .filter(|m| m.flags.contains(&Flag::Deleted))
                        .count() as u32
                );
                for m in &list {
                    assert!(m.uid < mailbox.uidnext && m.uid > 0);
                    assert!(m.modseq <= mailbox.highestmodseq && m.modseq > 1);
                    for flag in &m.flags {
                        if let Flag::Keyword(k) = flag {
                            assert!(mailbox.keywords.contains(k));
                        }
                    }
                    *blob_users.entry(m.blob).or_default() += 1;
                }
                messages += u64::from(count);
                bytes += mailbox.size;
                // The change index has exactly one live entry per message, at its MODSEQ.
                let changes = r.changed_since(mailbox.id, 0, 100_000).unwrap().changes;
                let live: Vec<(u32, u64)> = {
                    let mut v: Vec<(u32, u64)> = changes
                        .iter()
                        .filter(|c| !c.expunged)
                        .map(|c| (c.uid, c.modseq))
                        .collect();
                    v.sort();
                    v
                };
                let expected: Vec<(u32, u64)> = list.iter().map(|m| (m.uid, m.modseq)).collect();
                assert_eq!(live, expected);
                for c in changes.iter().filter(|c| c.expunged) {
                    assert!(c.modseq <= mailbox.highestmodseq && c.uid < mailbox.uidnext);
                    assert!(
                        !list.iter().any(|m| m.uid == c.uid),
                        "an expunged UID is not reused"
                    );
                }
                let now = (mailbox.uidvalidity, mailbox.uidnext, mailbox.highestmodseq);
                if let Some(before) = seen.insert(mailbox.id, now) {
                    assert_eq!(before.0, now.0, "UIDVALIDITY never changes");
                    assert!(
                        now.1 >= before.1 && now.2 >= before.2,
                        "{before:?} -> {now:?}"
                    );
                }
            }
            assert_eq!(account.messages, messages);
            assert_eq!(account.used_bytes, bytes);
            total_messages += messages;
        }
    }
    // Nothing left behind by deleted mailboxes and accounts.
    let alias_keys = rows("mail_dir")
        .iter()
        .filter(|(k, _)| k[4] == b'L')
        .count();
    assert_eq!(
        alias_keys, aliases,
        "every alias belongs to an account that lists it"
    );
    assert_eq!(rows("mail_msg").len() as u64, total_messages);
    for (key, _) in rows("mail_modseq") {
        let id = u64::from_be_bytes(key[4..12].try_into().unwrap());
        assert!(
            mailbox_ids.contains(&id),
            "change record of a deleted mailbox"
        );
    }
    // Every body is referenced exactly as often as messages use it, and stored only then.
    assert_eq!(rows("mail_blob").len(), blob_users.len());
    // Counts only for bodies that messages share.
    assert_eq!(
        rows("mail_blobref").len(),
        blob_users.values().filter(|users| **users >= 2).count()
    );
    for (hash, users) in blob_users {
        assert_eq!(r.blob_refs(&hash).unwrap(), users, "{hash}");
        assert_eq!(BlobHash::of(&r.blob(&hash).unwrap().unwrap()), hash);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn replicas_applying_the_same_entries_end_identical(
        commands in prop::collection::vec(command(now), 1..80),
    ) {
        let a = Shard::new("det-a");
        let b = Shard::new("det-b");
        let setup = setup();
        let mut seen = Seen::new();
        for command in setup.iter().chain(&commands) {
            let bytes = command.encode();
            let (ra, _) = a.apply_bytes(&bytes);
            let (rb, _) = b.apply_bytes(&bytes);
            prop_assert_eq!(&ra, &rb, "responses differ for {:?}", command);
            check_invariants(&a, &mut seen);
        }
        // Byte-identical state: every key and value of every keyspace.
        prop_assert!(a.dump() == b.dump(), "replica states differ");
    }
}
