//! What storing a message writes, and what the outcome means in SMTP: the `Deliver` command
//! for one shard's recipients, its idempotency key, and the reply for each recipient.

use tern_mail::{Command, Delivered, MailError, Reply as MailReply};
use tern_smtp::{DeliveryStatus, Reply, Status};

/// Labels the key derivation, so keys of other proposers (IMAP APPEND, JMAP) never collide
/// with these; a new derivation gets a new label.
const KEY_LABEL: &[u8] = b"tern smtp deliver v1\0";

/// The idempotency key of one shard's `Deliver`: SHA-256 over the message's digest (which
/// covers the envelope and the content as the client sent it) and the shard's recipients,
/// compared as mail systems compare addresses (lower case), in sorted order, each once.
///
/// A client that sends the same message to the same recipients again — after a `451`, a
/// timeout or a lost connection — produces the same key, so the shard stores it once.
pub fn idempotency_key(digest: &[u8; 32], recipients: &[String]) -> Vec<u8> {
    let mut sorted: Vec<String> = recipients.iter().map(|r| r.to_lowercase()).collect();
    sorted.sort();
    sorted.dedup();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(KEY_LABEL);
    ctx.update(digest);
    for r in &sorted {
        ctx.update(r.as_bytes());
        ctx.update(b"\0");
    }
    ctx.finish().as_ref().to_vec()
}

/// Labels the outbound queue's key derivation (see [`KEY_LABEL`]).
const ENQUEUE_LABEL: &[u8] = b"tern smtp enqueue v1\0";

/// The idempotency key of an `Enqueue`: as [`idempotency_key`], under its own label, so a
/// message resent after a temporary failure is queued once.
pub fn enqueue_key(digest: &[u8; 32], recipients: &[String]) -> Vec<u8> {
    let mut sorted: Vec<String> = recipients.iter().map(|r| r.to_lowercase()).collect();
    sorted.sort();
    sorted.dedup();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(ENQUEUE_LABEL);
    ctx.update(digest);
    for r in &sorted {
        ctx.update(r.as_bytes());
        ctx.update(b"\0");
    }
    ctx.finish().as_ref().to_vec()
}

/// The command that queues `message` for the remote `recipients` in the shard of the
/// submitting `account`, to be given up at `expires_at`.
pub fn enqueue_command(
    digest: &[u8; 32],
    sender: String,
    account: String,
    recipients: Vec<String>,
    message: &[u8],
    now: i64,
    expires_at: i64,
) -> Command {
    Command::Enqueue {
        idempotency_key: enqueue_key(digest, &recipients),
        sender,
        account,
        recipients,
        body: message.to_vec(),
        expires_at,
        now,
    }
}

/// The SMTP outcome of each of `count` remote recipients from the sender's shard's answer to
/// their `Enqueue`: queued (majority-durable) is as good as stored.
pub fn enqueue_outcomes(answer: &[u8], count: usize) -> Vec<DeliveryStatus> {
    match tern_mail::decode_response(answer) {
        Ok(MailReply::Queued { .. }) => vec![DeliveryStatus::Stored; count],
        Ok(other) => {
            tracing::error!(answer = ?other, "the shard answered an enqueue with something else");
            vec![
                DeliveryStatus::temp("Unexpected answer from the mail store, try again later");
                count
            ]
        }
        Err(MailError::Malformed(why)) => {
            tracing::error!(%why, "the shard could not decode an enqueue");
            vec![
                DeliveryStatus::temp(
                    "The mail store cannot queue this message now, try again later"
                );
                count
            ]
        }
        Err(e) => {
            tracing::error!(error = %e, "the shard refused to queue a message");
            let reply = Reply::new(
                554,
                Status(5, 3, 0),
                format!("Message not queued: {}", e.category()),
            );
            vec![DeliveryStatus::PermFail(reply); count]
        }
    }
}

/// The command that stores `message` (as it will be kept, with Tern's `Received:` field) for
/// `recipients` of one shard, received at `now` (Unix milliseconds), into their INBOXes.
pub fn deliver_command(
    digest: &[u8; 32],
    recipients: Vec<String>,
    message: &[u8],
    now: i64,
) -> Command {
    Command::Deliver {
        idempotency_key: idempotency_key(digest, &recipients),
        recipients,
        mailbox: None,
        internal_date: now,
        flags: Vec::new(),
        body: message.to_vec(),
        now,
    }
}

/// The SMTP outcome of each of `count` recipients from a shard's answer to their `Deliver`
/// (the bytes [`ShardHost::write`](crate::shards::ShardHost::write) returned once the
/// command was committed and applied).
pub fn outcomes(answer: &[u8], recipients: &[String]) -> Vec<DeliveryStatus> {
    match tern_mail::decode_response(answer) {
        Ok(MailReply::Delivered(results)) if results.len() == recipients.len() => results
            .iter()
            .zip(recipients)
            .map(|(result, address)| recipient_outcome(result, address))
            .collect(),
        Ok(other) => {
            tracing::error!(answer = ?other, "the shard answered a delivery with something else");
            vec![
                DeliveryStatus::temp("Unexpected answer from the mail store, try again later");
                recipients.len()
            ]
        }
        // The command as a whole was refused. A newer replica's command that an older one
        // cannot decode (a rolling upgrade) is temporary; anything else is deterministic.
        Err(MailError::Malformed(why)) => {
            tracing::error!(%why, "the shard could not decode a delivery");
            vec![
                DeliveryStatus::temp("The mail store cannot take this message now, try again later");
                recipients.len()
            ]
        }
        Err(e) => {
            tracing::error!(error = %e, "the shard refused a delivery");
            let reply = Reply::new(
                554,
                Status(5, 3, 0),
                format!("Message refused by the mail store: {}", e.category()),
            );
            vec![DeliveryStatus::PermFail(reply); recipients.len()]
        }
    }
}

fn recipient_outcome(result: &Result<Delivered, MailError>, address: &str) -> DeliveryStatus {
    let refuse =
        |code, status, text: String| DeliveryStatus::PermFail(Reply::new(code, status, text));
    match result {
        Ok(_) => DeliveryStatus::Stored,
        Err(MailError::NoSuchAccount(_) | MailError::InvalidAddress(_)) => refuse(
            550,
            Status(5, 1, 1),
            format!("<{address}>: Recipient address rejected: no such user"),
        ),
        Err(MailError::QuotaExceeded { .. }) => {
            refuse(552, Status(5, 2, 2), format!("<{address}>: Mailbox full"))
        }
        Err(MailError::NoSuchMailbox(_) | MailError::UidsExhausted(_)) => refuse(
            550,
            Status(5, 2, 1),
            format!("<{address}>: Mailbox unavailable"),
        ),
        Err(e) => refuse(
            554,
            Status(5, 0, 0),
            format!("<{address}>: Delivery failed: {}", e.category()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_key_depends_on_the_digest_and_the_recipient_set_only() {
        let d1 = [1u8; 32];
        let d2 = [2u8; 32];
        let ab = idempotency_key(&d1, &addresses(&["a@x.test", "b@x.test"]));
        assert_eq!(ab.len(), 32);
        // Order, case and repetition do not matter: the set does.
        assert_eq!(
            ab,
            idempotency_key(&d1, &addresses(&["B@X.test", "a@x.test", "a@x.test"]))
        );
        assert_ne!(
            ab,
            idempotency_key(&d2, &addresses(&["a@x.test", "b@x.test"]))
        );
        assert_ne!(ab, idempotency_key(&d1, &addresses(&["a@x.test"])));
        // Addresses are delimited: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            idempotency_key(&d1, &addresses(&["ab@x", "c@x"])),
            idempotency_key(&d1, &addresses(&["a", "b@xc@x"]))
        );
    }

    #[test]
    fn the_command_carries_the_message_and_the_key() {
        let digest = [7u8; 32];
        let rcpts = addresses(&["a@x.test"]);
        let Command::Deliver {
            idempotency_key: key,
            recipients,
            mailbox,
            internal_date,
            body,
            now,
            ..
        } = deliver_command(&digest, rcpts.clone(), b"Subject: x\r\n\r\nhi\r\n", 1234)
        else {
            panic!("not a Deliver");
        };
        assert_eq!(key, idempotency_key(&digest, &rcpts));
        assert_eq!(recipients, rcpts);
        assert_eq!((mailbox, internal_date, now), (None, 1234, 1234));
        assert_eq!(body, b"Subject: x\r\n\r\nhi\r\n");
    }

    fn encoded(outcome: &tern_mail::Outcome) -> Vec<u8> {
        postcard::to_allocvec(outcome).unwrap()
    }

    fn code(status: &DeliveryStatus) -> Option<u16> {
        match status {
            DeliveryStatus::Stored => None,
            DeliveryStatus::TempFail(r) | DeliveryStatus::PermFail(r) => Some(r.code),
        }
    }

    #[test]
    fn each_recipient_gets_its_own_outcome() {
        let delivered = Delivered {
            account: "a@x.test".into(),
            mailbox: "INBOX".into(),
            mailbox_id: 1,
            uidvalidity: 1,
            uid: 1,
        };
        let answer = encoded(&Ok(MailReply::Delivered(vec![
            Ok(delivered),
            Err(MailError::QuotaExceeded {
                account: "b@x.test".into(),
                quota_bytes: 1,
                used_bytes: 1,
                needed_bytes: 10,
            }),
            Err(MailError::NoSuchAccount("c@x.test".into())),
        ])));
        let out = outcomes(&answer, &addresses(&["a@x.test", "b@x.test", "c@x.test"]));
        assert_eq!(out[0], DeliveryStatus::Stored);
        assert!(
            matches!(&out[1], DeliveryStatus::PermFail(r) if r.code == 552 && r.status == Some(Status(5, 2, 2)))
        );
        assert!(
            matches!(&out[2], DeliveryStatus::PermFail(r) if r.code == 550 && r.status == Some(Status(5, 1, 1)))
        );
    }

    #[test]
    fn enqueue_keys_are_their_own_and_queued_means_stored() {
        let d = [3u8; 32];
        let rcpts = addresses(&["r@remote.test"]);
        assert_ne!(enqueue_key(&d, &rcpts), idempotency_key(&d, &rcpts));
        assert_eq!(
            enqueue_key(&d, &rcpts),
            enqueue_key(&d, &addresses(&["R@Remote.test"]))
        );
        let Command::Enqueue {
            idempotency_key: key,
            expires_at,
            now,
            ..
        } = enqueue_command(
            &d,
            "a@x.test".into(),
            "a@x.test".into(),
            rcpts.clone(),
            b"m",
            5,
            9,
        )
        else {
            panic!("not an Enqueue");
        };
        assert_eq!((key, now, expires_at), (enqueue_key(&d, &rcpts), 5, 9));
        let queued = encoded(&Ok(MailReply::Queued { id: 4 }));
        assert_eq!(
            enqueue_outcomes(&queued, 2),
            vec![DeliveryStatus::Stored; 2]
        );
        assert!(
            enqueue_outcomes(&encoded(&Ok(MailReply::Done)), 1)
                .iter()
                .all(|s| code(s) == Some(451))
        );
        assert!(
            enqueue_outcomes(&[0xff], 1)
                .iter()
                .all(|s| code(s) == Some(451))
        );
        let refused = encoded(&Err(MailError::InvalidCommand("no".into())));
        assert!(
            enqueue_outcomes(&refused, 1)
                .iter()
                .all(|s| code(s) == Some(554))
        );
    }

    #[test]
    fn answers_that_do_not_fit_are_never_success() {
        let two = addresses(&["a@x.test", "b@x.test"]);
        // Fewer results than recipients.
        let short = encoded(&Ok(MailReply::Delivered(vec![Err(
            MailError::NoSuchAccount("a".into()),
        )])));
        assert!(outcomes(&short, &two).iter().all(|s| code(s) == Some(451)));
        // Another reply, garbage, a refused command.
        assert!(
            outcomes(&encoded(&Ok(MailReply::Done)), &two)
                .iter()
                .all(|s| code(s) == Some(451))
        );
        assert!(
            outcomes(&[0xff, 0x00], &two)
                .iter()
                .all(|s| code(s) == Some(451))
        );
        let refused = encoded(&Err(MailError::InvalidCommand("no".into())));
        assert!(
            outcomes(&refused, &two)
                .iter()
                .all(|s| code(s) == Some(554))
        );
    }
}
