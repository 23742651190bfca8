//! Groups of commands in one entry (`apply_many`): a group answers and leaves the state exactly
//! as its commands applied one by one, one entry each, would; each command sees the writes of
//! the group's earlier commands, and a refused one leaves no trace.

use proptest::prelude::*;
use tern_mail::{
    BlobHash, Command, Delivered, Flag, IDEMPOTENCY_TTL_MS, INBOX, MailError, Outcome, Reply,
    StoreOp, UidSet, decode_response,
};

use crate::determinism::{command, setup};
use crate::{HASH, Shard, T0, append, deliver};

/// Applies `prepare` one entry per command to two fresh shards, then `group` to one of them as
/// one entry and to the other one entry per command. Both must answer alike and end
/// byte-identical. Returns the shard that took the group, and the group's outcomes.
fn group_and_compare(name: &str, prepare: &[Command], group: &[Command]) -> (Shard, Vec<Outcome>) {
    let grouped = Shard::new(&format!("{name}-group"));
    let one_by_one = Shard::new(&format!("{name}-one"));
    for command in prepare {
        grouped.apply_bytes(&command.encode());
        one_by_one.apply_bytes(&command.encode());
    }
    let group: Vec<Vec<u8>> = group.iter().map(Command::encode).collect();
    let expected: Vec<Vec<u8>> = group.iter().map(|c| one_by_one.apply_bytes(c).0).collect();
    let (responses, _) = grouped.apply_group(&group);
    assert_eq!(
        responses, expected,
        "a group answers as its commands one by one"
    );
    assert!(
        untagged(grouped.dump()) == untagged(one_by_one.dump()),
        "a group leaves the state its commands one by one leave"
    );
    let outcomes = responses.iter().map(|r| decode_response(r)).collect();
    (grouped, outcomes)
}

/// A dump without the log index each body is stored at: one entry for the group, or one
/// per command, stores the same bodies at different indexes.
fn untagged(
    mut dump: Vec<(&'static str, Vec<tern_store::KeyValue>)>,
) -> Vec<(&'static str, Vec<tern_store::KeyValue>)> {
    for (keyspace, rows) in &mut dump {
        if *keyspace == "mail_blob" {
            for (_, value) in rows.iter_mut() {
                value.drain(..8);
            }
        }
    }
    dump
}

fn alice_setup() -> Vec<Command> {
    vec![
        Command::CreateDomain {
            domain: "example.com".into(),
            now: T0,
        },
        create_account("alice@example.com"),
    ]
}

fn create_account(address: &str) -> Command {
    Command::CreateAccount {
        address: address.into(),
        password_hash: HASH.into(),
        quota_bytes: None,
        now: T0,
    }
}

fn create_mailbox(name: &str) -> Command {
    Command::CreateMailbox {
        account: "alice@example.com".into(),
        name: name.into(),
        special_use: None,
        now: T0,
    }
}

/// The single recipient's result of a delivery.
#[track_caller]
fn delivered_to_one(outcome: &Outcome) -> Delivered {
    match outcome {
        Ok(Reply::Delivered(results)) if results.len() == 1 => results[0].clone().unwrap(),
        other => panic!("not a delivery to one recipient: {other:?}"),
    }
}

fn rows(s: &Shard, keyspace: &str) -> usize {
    s.dump()
        .into_iter()
        .find(|(ks, _)| *ks == keyspace)
        .map_or(0, |(_, rows)| rows.len())
}

#[test]
fn an_empty_group_answers_nothing_and_writes_nothing() {
    let s = Shard::new("group-empty");
    let (responses, ops) = s.apply_group(&[]);
    assert!(responses.is_empty());
    assert_eq!(ops, 0);
}

#[test]
fn a_command_sees_the_writes_of_the_commands_before_it_in_its_group() {
    let group = [
        Command::CreateDomain {
            domain: "example.com".into(),
            now: T0,
        },
        create_account("alice@example.com"),
        deliver("q1", &["alice@example.com"], b"first"),
        append("alice@example.com", INBOX, vec![], b"second"),
        Command::Store {
            account: "alice@example.com".into(),
            mailbox: INBOX.into(),
            uids: UidSet::range(1, 2),
            op: StoreOp::Add,
            flags: vec![Flag::Seen],
            unchanged_since: None,
        },
    ];
    let (s, outcomes) = group_and_compare("group-depends", &[], &group);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(delivered_to_one(&outcomes[2]).uid, 1);
    assert!(matches!(outcomes[3], Ok(Reply::Appended { uid: 2, .. })));
    match &outcomes[4] {
        Ok(Reply::Stored { modified, .. }) => {
            assert_eq!(modified.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2]);
        }
        other => panic!("not a store: {other:?}"),
    }
    let inbox = s
        .read()
        .mailbox("alice@example.com", INBOX)
        .unwrap()
        .unwrap();
    assert_eq!((inbox.messages, inbox.unseen), (2, 0));
}

#[test]
fn a_refused_command_in_a_group_leaves_no_trace() {
    let mut prepare = alice_setup();
    prepare.extend(["A", "A/B", "C/B"].map(create_mailbox));
    let group = [
        create_mailbox("X"),
        // Refused after it has removed the names "A" and "A/B" and written "C" in its own
        // view: "A/B" would become "C/B", which exists.
        Command::RenameMailbox {
            account: "alice@example.com".into(),
            from: "A".into(),
            to: "C".into(),
            now: T0,
        },
        create_mailbox("C"),
        append("alice@example.com", "A/B", vec![], b"still here"),
    ];
    let (s, outcomes) = group_and_compare("group-refused", &prepare, &group);
    assert!(outcomes[0].is_ok());
    assert_eq!(outcomes[1], Err(MailError::MailboxExists("C/B".into())));
    assert!(outcomes[2].is_ok(), "the refused rename did not create C");
    assert!(outcomes[3].is_ok(), "the refused rename did not remove A/B");
    let names: Vec<String> = s
        .read()
        .list_mailboxes("alice@example.com")
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["A", "A/B", "C", "C/B", INBOX, "X"]);
}

#[test]
fn the_same_body_delivered_twice_in_a_group_is_stored_once() {
    let mut prepare = alice_setup();
    prepare.push(create_account("bob@example.com"));
    let body = b"Subject: twice\r\n\r\nsame body\r\n";
    let group = [
        deliver("q1", &["alice@example.com"], body),
        deliver("q2", &["bob@example.com"], body),
    ];
    let (s, outcomes) = group_and_compare("group-blob", &prepare, &group);
    assert_eq!(delivered_to_one(&outcomes[0]).account, "alice@example.com");
    assert_eq!(delivered_to_one(&outcomes[1]).account, "bob@example.com");
    assert_eq!(s.read().blob_refs(&BlobHash::of(body)).unwrap(), 2);
    assert_eq!(rows(&s, "mail_blob"), 1);
    assert_eq!(rows(&s, "mail_blobref"), 1);
}

#[test]
fn a_delivery_retried_within_its_group_is_stored_once() {
    let body = b"Subject: retried\r\n\r\nbody\r\n";
    let group = [
        deliver("smtp-42", &["alice@example.com"], body),
        deliver("smtp-42", &["alice@example.com"], body),
    ];
    let (s, outcomes) = group_and_compare("group-retry", &alice_setup(), &group);
    assert_eq!(
        outcomes[0], outcomes[1],
        "the retry answers as the delivery"
    );
    assert_eq!(delivered_to_one(&outcomes[1]).uid, 1);
    let inbox = s
        .read()
        .mailbox("alice@example.com", INBOX)
        .unwrap()
        .unwrap();
    assert_eq!((inbox.messages, inbox.uidnext), (1, 2));
    assert_eq!(s.read().blob_refs(&BlobHash::of(body)).unwrap(), 1);
}

#[test]
fn pruning_in_a_group_sees_the_writes_and_deletions_of_the_group() {
    let at = |key: &str, now: i64| {
        let mut command = deliver(key, &["alice@example.com"], key.as_bytes());
        if let Command::Deliver { now: n, .. } = &mut command {
            *n = now;
        }
        command
    };
    let mut prepare = alice_setup();
    prepare.extend((0..6).map(|i| at(&format!("old{i}"), T0 + i)));
    let after_ttl = T0 + IDEMPOTENCY_TTL_MS;
    let group = [
        // Prunes old0..old3 (a full page).
        at("new0", after_ttl + 1000),
        // A proposer whose clock is behind: its record sorts before what was pruned.
        at("late", T0 - 5000),
        // Prunes late, old4 and old5, which the group's earlier prune left or wrote.
        at("new1", after_ttl + 2000),
        // old0's record is gone: a new delivery, not the remembered answer.
        at("old0", after_ttl + 3000),
        at("new2", after_ttl + 4000),
        at("late2", T0 - 1),
        // Prunes late2, written below where the group's last prune stopped.
        at("new3", after_ttl + IDEMPOTENCY_TTL_MS),
    ];
    let (s, outcomes) = group_and_compare("group-prune", &prepare, &group);
    assert_eq!(
        delivered_to_one(&outcomes[3]).uid,
        10,
        "old0 delivered anew"
    );
    // Records of new0, new1, old0, new2 and new3, each with its expiry index entry.
    assert_eq!(rows(&s, "mail_idem"), 10);
}

#[test]
fn a_group_writes_each_key_once() {
    let n: usize = 256;
    let group: Vec<Command> = (0..n)
        .map(|i| {
            let mut body = vec![b'x'; 4096];
            body[..8].copy_from_slice(&(i as u64).to_be_bytes());
            deliver(&format!("q{i}"), &["alice@example.com"], &body)
        })
        .collect();
    let s = Shard::new("group-big");
    for command in alice_setup() {
        s.ok(&command);
    }
    let encoded: Vec<Vec<u8>> = group.iter().map(Command::encode).collect();
    let (responses, ops) = s.apply_group(&encoded);
    let uids: Vec<u32> = responses
        .iter()
        .map(|r| delivered_to_one(&decode_response(r)).uid)
        .collect();
    assert_eq!(uids, (1..=n as u32).collect::<Vec<_>>());
    // Per message a blob (a body used once has no reference count), the message, its change
    // record and the idempotency record with its expiry entry; the account and the mailbox
    // once.
    assert_eq!(ops, 5 * n + 2);
}

/// Clocks that make groups prune: bursts near T0 and past the TTL for them, out of order
/// within a group (proposers' clocks differ).
fn pruning_now() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => (0i64..20).prop_map(|d| T0 + d * 1000),
        3 => (0i64..25).prop_map(|d| T0 + IDEMPOTENCY_TTL_MS + d * 1000),
        1 => (0i64..10).prop_map(|d| T0 + 2 * IDEMPOTENCY_TTL_MS + d * 1000),
    ]
}

/// Deliveries with few keys and bodies, so that groups hold retries and shared bodies.
fn delivery() -> impl Strategy<Value = Command> {
    (
        0u8..8,
        prop::sample::subsequence(vec!["a@x.test", "b@x.test", "al@x.test"], 1..=2),
        0u8..3,
        pruning_now(),
    )
        .prop_map(|(key, recipients, body, now)| Command::Deliver {
            idempotency_key: vec![b'g', key],
            recipients: recipients.into_iter().map(String::from).collect(),
            mailbox: None,
            internal_date: now,
            flags: vec![],
            body: vec![b'b', body],
            now,
        })
}

/// Commands, each with whether its group ends after it. The chance of a cut is drawn per run,
/// from always (every command its own entry) to seldom (groups of dozens).
fn grouped_commands() -> impl Strategy<Value = Vec<(Command, bool)>> {
    prop::sample::select(vec![0.02, 0.1, 0.3, 1.0]).prop_flat_map(|cut| {
        let command = prop_oneof![3 => command(pruning_now), 2 => delivery()];
        prop::collection::vec((command, prop::bool::weighted(cut)), 1..120)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn groups_answer_and_write_as_their_commands_one_by_one(commands in grouped_commands()) {
        let grouped = Shard::new("groups-many");
        let one_by_one = Shard::new("groups-one");
        let setup: Vec<Vec<u8>> = setup().iter().map(Command::encode).collect();
        grouped.apply_group(&setup);
        for command in &setup {
            one_by_one.apply_bytes(command);
        }
        prop_assert!(untagged(grouped.dump()) == untagged(one_by_one.dump()), "setup as a group differs");
        let mut group: Vec<Vec<u8>> = Vec::new();
        let last = commands.len() - 1;
        for (i, (command, cut)) in commands.iter().enumerate() {
            group.push(command.encode());
            if !cut && i != last {
                continue;
            }
            let expected: Vec<Vec<u8>> =
                group.iter().map(|c| one_by_one.apply_bytes(c).0).collect();
            let (responses, _) = grouped.apply_group(&group);
            for (k, (got, want)) in responses.iter().zip(&expected).enumerate() {
                prop_assert_eq!(
                    decode_response(got),
                    decode_response(want),
                    "command {} of the group ending at {}",
                    k,
                    i
                );
                prop_assert_eq!(got, want);
            }
            prop_assert_eq!(responses.len(), group.len());
            prop_assert!(
                untagged(grouped.dump()) == untagged(one_by_one.dump()),
                "states differ after command {}",
                i
            );
            group.clear();
        }
    }
}
