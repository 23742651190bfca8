//! The outbound queue's commands (see [`crate::queue`] for the claim rules).

use super::messages::{blob_decref, blob_incref};
use super::{Fail, Step, clock};
use crate::command::Reply;
use crate::error::MailError;
use crate::keys;
use crate::names::normalize_address;
use crate::queue::{
    Claim, MAX_LEASE_MS, QueuedMessage, QueuedRecipient, RecipientOutcome, RecipientState,
};
use crate::records::BlobHash;
use crate::source::{Source, Txn};

/// The most recipients one queued message may have (RFC 5321 §4.5.3.1.8 asks servers to take
/// at least 100 per message).
pub const MAX_QUEUED_RECIPIENTS: usize = 1000;

/// Where the message sits in the due index: the end of its claim while it is claimed, its
/// next attempt otherwise.
fn due_at(message: &QueuedMessage) -> u64 {
    clock(match &message.claim {
        Some(claim) => claim.until(),
        None => message.next_attempt,
    })
}

fn load(txn: &Txn<'_>, id: u64) -> Step<QueuedMessage> {
    txn.load::<QueuedMessage>(keys::QUEUE, &keys::queued(txn.shard(), id))?
        .ok_or(Fail::Mail(MailError::NoSuchQueuedMessage(id)))
}

/// Saves `message`, moving its due-index entry from where `before` (its stored version)
/// had it.
fn save(txn: &mut Txn<'_>, before: Option<&QueuedMessage>, message: &QueuedMessage) {
    let shard = txn.shard();
    if let Some(before) = before {
        txn.delete(
            keys::QUEUE,
            keys::queue_due(shard, due_at(before), before.id),
        );
    }
    txn.put(
        keys::QUEUE,
        keys::queue_due(shard, due_at(message), message.id),
        Vec::new(),
    );
    txn.put_record(keys::QUEUE, keys::queued(shard, message.id), message);
}

fn holder(message: &QueuedMessage, token: u64) -> Result<(), MailError> {
    match &message.claim {
        Some(claim) if claim.token == token => Ok(()),
        _ => Err(MailError::NotClaimHolder(message.id)),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn enqueue(
    txn: &mut Txn<'_>,
    sender: &str,
    account: &str,
    recipients: &[String],
    body: &[u8],
    expires_at: i64,
    now: i64,
) -> Step<Reply> {
    if recipients.is_empty() {
        return Err(MailError::InvalidCommand("a queued message needs a recipient".into()).into());
    }
    if recipients.len() > MAX_QUEUED_RECIPIENTS {
        return Err(MailError::InvalidCommand(format!(
            "a queued message has at most {MAX_QUEUED_RECIPIENTS} recipients"
        ))
        .into());
    }
    let sender = if sender.is_empty() {
        String::new()
    } else {
        normalize_address(sender)?
    };
    let account = normalize_address(account)?;
    let mut queued = Vec::with_capacity(recipients.len());
    for address in recipients {
        // Checked, but kept as written: the remote side decides what its local parts mean.
        normalize_address(address)?;
        queued.push(QueuedRecipient {
            address: address.clone(),
            state: RecipientState::Pending,
            last_reply: None,
        });
    }
    let shard = txn.shard();
    let counter_key = keys::queue_counter(shard);
    let last = match txn.get(keys::QUEUE, &counter_key)? {
        Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
            Fail::Store(tern_store::StoreError::Corrupt(format!(
                "queue counter at {counter_key:02x?} is not 8 bytes"
            )))
        })?),
        None => 0,
    };
    let id = last + 1;
    txn.put(keys::QUEUE, counter_key, id.to_be_bytes().to_vec());
    let blob = BlobHash::of(body);
    blob_incref(txn, &blob, Some(body))?;
    let message = QueuedMessage {
        id,
        sender,
        account,
        recipients: queued,
        blob,
        size: body.len() as u64,
        queued_at: now,
        expires_at,
        next_attempt: now,
        attempts: 0,
        claim: None,
        next_token: 1,
    };
    save(txn, None, &message);
    Ok(Reply::Queued { id })
}

pub(super) fn claim(txn: &mut Txn<'_>, id: u64, node: u64, lease_ms: u64, now: i64) -> Step<Reply> {
    if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
        return Err(MailError::InvalidCommand(format!(
            "a lease is 1 to {MAX_LEASE_MS} milliseconds"
        ))
        .into());
    }
    let before = load(txn, id)?;
    if let Some(claim) = before.claim.as_ref().filter(|c| !c.expired(now)) {
        return Err(MailError::ClaimHeld {
            node: claim.node,
            until: claim.until(),
        }
        .into());
    }
    let mut message = before.clone();
    message.claim = Some(Claim {
        node,
        token: message.next_token,
        at: now,
        lease_ms,
    });
    message.next_token += 1;
    message.attempts = message.attempts.saturating_add(1);
    save(txn, Some(&before), &message);
    Ok(Reply::Outbound(message))
}

pub(super) fn record(
    txn: &mut Txn<'_>,
    id: u64,
    token: u64,
    outcomes: &[(u32, RecipientOutcome)],
    next_attempt: i64,
    release: bool,
) -> Step<Reply> {
    let before = load(txn, id)?;
    holder(&before, token)?;
    let mut message = before.clone();
    for (index, outcome) in outcomes {
        let recipient = usize::try_from(*index)
            .ok()
            .and_then(|i| message.recipients.get_mut(i))
            .ok_or_else(|| {
                MailError::InvalidCommand(format!("queued message {id} has no recipient {index}"))
            })?;
        // A final outcome stays: a late or repeated report cannot undo a delivery.
        if recipient.state.is_final() {
            continue;
        }
        let (state, reply) = match outcome {
            RecipientOutcome::Delivered { reply } => (RecipientState::Delivered, reply),
            RecipientOutcome::Failed { reply } => (RecipientState::Failed, reply),
            RecipientOutcome::Deferred { reply } => (RecipientState::Pending, reply),
        };
        recipient.state = state;
        recipient.last_reply = Some(reply.clone());
    }
    message.next_attempt = next_attempt;
    if release {
        message.claim = None;
    }
    save(txn, Some(&before), &message);
    Ok(Reply::Outbound(message))
}

pub(super) fn remove(txn: &mut Txn<'_>, id: u64, token: u64) -> Step<Reply> {
    let message = load(txn, id)?;
    holder(&message, token)?;
    if !message.is_final() {
        return Err(MailError::RecipientsPending(id).into());
    }
    let shard = txn.shard();
    txn.delete(keys::QUEUE, keys::queue_due(shard, due_at(&message), id));
    txn.delete(keys::QUEUE, keys::queued(shard, id));
    blob_decref(txn, &message.blob)?;
    Ok(Reply::Done)
}
