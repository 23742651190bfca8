//! What a backend may remember for the length of one IMAP command.
//!
//! A replicated backend makes each read linearizable with a read barrier (the replica learns
//! how far the shard's log is committed and applies that far before it reads). One command
//! often reads several times: a FETCH looks at the mailbox's counters, then a page of
//! metadata, then bodies. The promise IMAP needs is that a command sees every change
//! acknowledged before **the command** began; a barrier passed after the command began gives
//! that for every read after it in the same command, so those reads need no barrier of their
//! own.
//!
//! The session runs each command inside [`in_command`]. A backend that passed a barrier for
//! some key of its own (a shard) calls [`mark_fresh`]; a later read in the same command asks
//! [`is_fresh`] and may skip its barrier. A write through the backend must call
//! [`forget`] for its key first, so that the command's next read waits for the state that
//! includes the write again. Outside a command (an IDLE wake, a poller) nothing is fresh.
//! The scope belongs to the task running the command: work spawned onto other tasks sees
//! nothing fresh, which is always safe.

use std::future::Future;
use std::sync::Mutex;

tokio::task_local! {
    static COMMAND: Scope;
}

#[derive(Default)]
struct Scope {
    fresh: Mutex<Vec<u64>>,
}

/// Runs `command` as one command: what it marks fresh is forgotten when it ends.
pub async fn in_command<F: Future>(command: F) -> F::Output {
    COMMAND.scope(Scope::default(), command).await
}

/// Whether `key` was marked fresh in the command this task is running (false outside one).
pub fn is_fresh(key: u64) -> bool {
    COMMAND
        .try_with(|scope| {
            scope
                .fresh
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key)
        })
        .unwrap_or(false)
}

/// Marks `key` fresh for the rest of the current command: a barrier for it passed after the
/// command began. Does nothing outside a command.
pub fn mark_fresh(key: u64) {
    let _ = COMMAND.try_with(|scope| {
        let mut fresh = scope.fresh.lock().unwrap_or_else(|p| p.into_inner());
        if !fresh.contains(&key) {
            fresh.push(key);
        }
    });
}

/// Forgets that `key` was fresh: the command is about to change what lies behind it.
pub fn forget(key: u64) {
    let _ = COMMAND.try_with(|scope| {
        scope
            .fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| *k != key);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn freshness_lasts_one_command_and_a_write_ends_it() {
        assert!(!is_fresh(1), "nothing is fresh outside a command");
        mark_fresh(1);
        assert!(!is_fresh(1), "marking outside a command does nothing");
        in_command(async {
            assert!(!is_fresh(1));
            mark_fresh(1);
            assert!(is_fresh(1));
            assert!(!is_fresh(2), "keys are separate");
            forget(1);
            assert!(!is_fresh(1), "a write makes the next read wait again");
            mark_fresh(1);
        })
        .await;
        in_command(async {
            assert!(!is_fresh(1), "the next command starts with nothing fresh");
        })
        .await;
        in_command(async {
            mark_fresh(3);
            let spawned = tokio::spawn(async { is_fresh(3) }).await.unwrap();
            assert!(!spawned, "another task sees nothing fresh");
        })
        .await;
    }
}
