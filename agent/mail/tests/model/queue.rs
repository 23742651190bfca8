//! The outbound queue: idempotent enqueue, claims held by one node at a time, leases that end
//! by the claim's own clock, outcomes only from the current holder, removal once final, and
//! the same state on every replica.

use proptest::prelude::*;
use tern_mail::{
    BlobHash, Command, MailError, QueuedMessage, RecipientOutcome, RecipientState, Reply,
};

use crate::{Shard, T0};

const LEASE: u64 = 60_000;

fn enqueue(key: &str, recipients: &[&str], body: &[u8], now: i64) -> Command {
    Command::Enqueue {
        idempotency_key: key.as_bytes().to_vec(),
        sender: "a@x.test".into(),
        account: "a@x.test".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        body: body.to_vec(),
        expires_at: now + 5 * 24 * 3_600_000,
        now,
    }
}

fn claim(id: u64, node: u64, now: i64) -> Command {
    Command::ClaimOutbound {
        id,
        node,
        lease_ms: LEASE,
        now,
    }
}

fn queued(shard: &Shard, command: &Command) -> u64 {
    match shard.ok(command) {
        Reply::Queued { id } => id,
        other => panic!("not queued: {other:?}"),
    }
}

fn claimed(shard: &Shard, command: &Command) -> QueuedMessage {
    match shard.ok(command) {
        Reply::Outbound(message) => message,
        other => panic!("not claimed: {other:?}"),
    }
}

fn token(message: &QueuedMessage) -> u64 {
    message.claim.as_ref().expect("claimed").token
}

fn record(id: u64, token: u64, outcomes: Vec<(u32, RecipientOutcome)>, next: i64) -> Command {
    Command::RecordOutbound {
        id,
        token,
        outcomes,
        next_attempt: next,
        release: true,
        now: next,
    }
}

fn delivered() -> RecipientOutcome {
    RecipientOutcome::Delivered {
        reply: "250 2.0.0 Ok".into(),
    }
}

#[test]
fn a_retried_enqueue_queues_once_and_the_body_is_a_counted_blob() {
    let shard = Shard::new("queue-idem");
    let command = enqueue("k1", &["r@remote.test", "s@remote.test"], b"hello", T0);
    let id = queued(&shard, &command);
    assert_eq!(id, 1);
    let before = shard.dump();
    // The same key again: nothing written, the first answer again.
    assert_eq!(shard.ok(&command), Reply::Queued { id: 1 });
    assert_eq!(before, shard.dump());
    let message = shard.read().queued(1).unwrap().unwrap();
    assert_eq!(message.recipients.len(), 2);
    assert!(
        message
            .recipients
            .iter()
            .all(|r| r.state == RecipientState::Pending)
    );
    assert_eq!(message.blob, BlobHash::of(b"hello"));
    assert_eq!(shard.read().blob(&message.blob).unwrap().unwrap(), b"hello");
    assert_eq!(shard.read().blob_refs(&message.blob).unwrap(), 1);
    // Another key: another message, sharing the body.
    assert_eq!(
        queued(&shard, &enqueue("k2", &["r@remote.test"], b"hello", T0)),
        2
    );
    assert_eq!(shard.read().blob_refs(&message.blob).unwrap(), 2);
    assert_eq!(shard.read().queued_messages(0, 10).unwrap().len(), 2);
    assert_eq!(shard.read().queued_messages(1, 10).unwrap()[0].id, 2);
}

#[test]
fn bad_enqueues_are_refused_and_write_nothing() {
    let shard = Shard::new("queue-bad");
    assert!(matches!(
        shard.err(&enqueue("k", &[], b"x", T0)),
        MailError::InvalidCommand(_)
    ));
    assert!(matches!(
        shard.err(&enqueue("k", &["no-at-sign"], b"x", T0)),
        MailError::InvalidAddress(_)
    ));
    assert!(matches!(
        shard.err(&enqueue("", &["r@remote.test"], b"x", T0)),
        MailError::InvalidCommand(_)
    ));
    let many: Vec<String> = (0..1001).map(|i| format!("r{i}@remote.test")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(matches!(
        shard.err(&enqueue("k", &refs, b"x", T0)),
        MailError::InvalidCommand(_)
    ));
    assert!(matches!(
        shard.err(&claim(7, 1, T0)),
        MailError::NoSuchQueuedMessage(7)
    ));
    let id = queued(&shard, &enqueue("k", &["r@remote.test"], b"x", T0));
    for lease_ms in [0, tern_mail::queue::MAX_LEASE_MS + 1] {
        assert!(matches!(
            shard.err(&Command::ClaimOutbound {
                id,
                node: 1,
                lease_ms,
                now: T0
            }),
            MailError::InvalidCommand(_)
        ));
    }
}

#[test]
fn one_claim_at_a_time_until_its_own_lease_ends() {
    let shard = Shard::new("queue-claim");
    let id = queued(&shard, &enqueue("k", &["r@remote.test"], b"x", T0));
    assert_eq!(shard.read().due_outbound(T0, 10).unwrap().len(), 1);
    let first = claimed(&shard, &claim(id, 1, T0));
    assert_eq!(first.claim.as_ref().unwrap().node, 1);
    // Claimed: not due, and nobody else gets it while the lease runs, whatever their clock
    // says short of the lease's end.
    assert!(shard.read().due_outbound(T0 + 1000, 10).unwrap().is_empty());
    assert_eq!(
        shard.err(&claim(id, 2, T0 + LEASE as i64 - 1)),
        MailError::ClaimHeld {
            node: 1,
            until: T0 + LEASE as i64
        }
    );
    // Even a clock behind the holder's does not make the claim look free.
    assert!(matches!(
        shard.err(&claim(id, 2, T0 - 10 * LEASE as i64)),
        MailError::ClaimHeld { .. }
    ));
    // The lease ends by the claim's own stamp: due again, and another node takes over.
    assert_eq!(
        shard
            .read()
            .due_outbound(T0 + LEASE as i64, 10)
            .unwrap()
            .len(),
        1
    );
    let second = claimed(&shard, &claim(id, 2, T0 + LEASE as i64));
    assert_ne!(token(&first), token(&second));
    assert_eq!(second.attempts, 2);
    // The first holder's word no longer counts.
    assert_eq!(
        shard.err(&record(id, token(&first), vec![(0, delivered())], T0)),
        MailError::NotClaimHolder(id)
    );
    assert_eq!(
        shard.err(&Command::RemoveOutbound {
            id,
            token: token(&first)
        }),
        MailError::NotClaimHolder(id)
    );
}

#[test]
fn deferred_recipients_wait_for_the_next_attempt_and_final_ones_stay_final() {
    let shard = Shard::new("queue-record");
    let id = queued(
        &shard,
        &enqueue(
            "k",
            &["a@remote.test", "b@remote.test", "c@remote.test"],
            b"x",
            T0,
        ),
    );
    let held = claimed(&shard, &claim(id, 1, T0));
    let next = T0 + 300_000;
    let Reply::Outbound(after) = shard.ok(&record(
        id,
        token(&held),
        vec![
            (0, delivered()),
            (
                1,
                RecipientOutcome::Failed {
                    reply: "550 5.1.1 no such user".into(),
                },
            ),
            (
                2,
                RecipientOutcome::Deferred {
                    reply: "451 4.3.0 try later".into(),
                },
            ),
        ],
        next,
    )) else {
        panic!("not recorded");
    };
    assert_eq!(after.claim, None);
    assert_eq!(
        after
            .recipients
            .iter()
            .map(|r| r.state.clone())
            .collect::<Vec<_>>(),
        vec![
            RecipientState::Delivered,
            RecipientState::Failed,
            RecipientState::Pending
        ]
    );
    assert_eq!(
        after.recipients[2].last_reply.as_deref(),
        Some("451 4.3.0 try later")
    );
    // Not due before the next attempt; due from then on.
    assert!(shard.read().due_outbound(next - 1, 10).unwrap().is_empty());
    assert_eq!(shard.read().due_outbound(next, 10).unwrap().len(), 1);
    // Not removable while c is pending.
    let held = claimed(&shard, &claim(id, 2, next));
    assert_eq!(
        shard.err(&Command::RemoveOutbound {
            id,
            token: token(&held)
        }),
        MailError::RecipientsPending(id)
    );
    // A report that would undo a final outcome changes nothing for it.
    let Reply::Outbound(after) = shard.ok(&Command::RecordOutbound {
        id,
        token: token(&held),
        outcomes: vec![
            (
                0,
                RecipientOutcome::Deferred {
                    reply: "421".into(),
                },
            ),
            (2, delivered()),
        ],
        next_attempt: next,
        release: false,
        now: next,
    }) else {
        panic!("not recorded");
    };
    assert_eq!(after.recipients[0].state, RecipientState::Delivered);
    assert!(after.is_final());
    assert!(after.claim.is_some(), "not released");
    assert!(matches!(
        shard.err(&record(id, token(&held), vec![(3, delivered())], next)),
        MailError::InvalidCommand(_)
    ));
    // Removal: the message, its due entry and its body go.
    let blob = after.blob;
    assert_eq!(
        shard.ok(&Command::RemoveOutbound {
            id,
            token: token(&held)
        }),
        Reply::Done
    );
    assert_eq!(shard.read().queued(id).unwrap(), None);
    assert_eq!(shard.read().blob(&blob).unwrap(), None);
    assert_eq!(shard.read().blob_refs(&blob).unwrap(), 0);
    let queue = shard
        .dump()
        .into_iter()
        .find(|(ks, _)| *ks == "mail_queue")
        .unwrap()
        .1;
    // Only the id counter is left.
    assert_eq!(queue.len(), 1, "{queue:02x?}");
}

/// Queue operations in any order, on any clocks.
#[derive(Clone, Debug)]
enum Op {
    Enqueue(u8, u8, i64),
    Claim(u8, u64, i64),
    /// (message, which claim token to use: the latest or a stale one, outcome kind)
    Record(u8, bool, u8, i64),
    Remove(u8, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let t = (0i64..300).prop_map(|s| T0 + s * 1000);
    prop_oneof![
        (0u8..4, 0u8..3, t.clone()).prop_map(|(k, b, t)| Op::Enqueue(k, b, t)),
        (1u8..5, 1u64..4, t.clone()).prop_map(|(m, n, t)| Op::Claim(m, n, t)),
        (1u8..5, any::<bool>(), 0u8..3, t).prop_map(|(m, s, o, t)| Op::Record(m, s, o, t)),
        (1u8..5, any::<bool>()).prop_map(|(m, s)| Op::Remove(m, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Two replicas applying the same commands end byte-identical with the same responses;
    /// at every step a message has at most one live claim, only the latest token works, and
    /// body reference counts match the queued messages.
    #[test]
    fn replicas_agree_and_claims_stay_exclusive(ops in prop::collection::vec(op(), 1..40)) {
        let a = Shard::new("queue-prop-a");
        let b = Shard::new("queue-prop-b");
        let mut tokens: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        let bodies: [&[u8]; 3] = [b"one", b"two", b""];
        for op in ops {
            let command = match op {
                Op::Enqueue(k, body, t) => enqueue(
                    &format!("k{k}"),
                    &["r@remote.test", "s@remote.test"],
                    bodies[body as usize],
                    t,
                ),
                Op::Claim(m, node, t) => claim(u64::from(m), node, t),
                Op::Record(m, stale, kind, t) => {
                    let id = u64::from(m);
                    let list = tokens.get(&id).cloned().unwrap_or_default();
                    let token = if stale { list.first() } else { list.last() }.copied().unwrap_or(0);
                    let outcome = match kind {
                        0 => delivered(),
                        1 => RecipientOutcome::Failed { reply: "550".into() },
                        _ => RecipientOutcome::Deferred { reply: "451".into() },
                    };
                    record(id, token, vec![(0, outcome.clone()), (1, outcome)], t + 1000)
                }
                Op::Remove(m, stale) => {
                    let id = u64::from(m);
                    let list = tokens.get(&id).cloned().unwrap_or_default();
                    let token = if stale { list.first() } else { list.last() }.copied().unwrap_or(0);
                    Command::RemoveOutbound { id, token }
                }
            };
            let ra = a.apply_bytes(&command.encode()).0;
            let rb = b.apply_bytes(&command.encode()).0;
            prop_assert_eq!(&ra, &rb);
            let outcome = tern_mail::decode_response(&ra);
            if let (Command::ClaimOutbound { id, .. }, Ok(Reply::Outbound(m))) = (&command, &outcome) {
                // Granted only over no claim or an ended one: the previous token is dead.
                tokens.entry(*id).or_default().push(token(m));
            }
            if let (Command::RecordOutbound { token: t, id, .. }, Ok(_)) = (&command, &outcome) {
                prop_assert_eq!(Some(t), tokens.get(id).and_then(|l| l.last()));
            }
            prop_assert_eq!(a.dump(), b.dump());
            let reader = a.read();
            let all = reader.queued_messages(0, 100).unwrap();
            for message in &all {
                let sharing = all.iter().filter(|m| m.blob == message.blob).count() as u64;
                prop_assert_eq!(reader.blob_refs(&message.blob).unwrap(), sharing);
                if let Some(claim) = &message.claim {
                    prop_assert_eq!(Some(&claim.token), tokens.get(&message.id).and_then(|l| l.last()));
                }
            }
        }
    }
}
