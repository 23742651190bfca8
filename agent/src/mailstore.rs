//! What the mail protocols' backends (SMTP's and IMAP's) share about using the replicated
//! store: retrying a shard that is temporarily unavailable until a deadline, checking
//! passwords off the async threads, and the proposer's clock.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use crate::shards::ShardError;

/// The first pause before asking a shard again after "temporarily unavailable"; it doubles
/// up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A temporary failure of the store: the reason, for the logs.
#[derive(Debug)]
pub(crate) struct Unavailable(pub String);

/// Runs `op` until it succeeds, fails other than temporarily, or `deadline` passes. Only for
/// operations that are safe to repeat: reads, writes with an idempotency key, and writes
/// whose second application changes nothing.
pub(crate) async fn retrying<T, Fut>(
    deadline: Instant,
    mut op: impl FnMut() -> Fut,
) -> Result<T, Unavailable>
where
    Fut: Future<Output = Result<T, ShardError>>,
{
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        let error = match tokio::time::timeout_at(deadline, op()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => return Err(Unavailable("no answer within the deadline".into())),
        };
        match error {
            ShardError::Unavailable { .. } if Instant::now() + pause < deadline => {
                tracing::debug!(%error, "retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            other => return Err(Unavailable(other.to_string())),
        }
    }
}

/// Checks `password` against `hash` on a blocking thread (argon2 takes tens of
/// milliseconds). Without a hash (no such account) it checks against a hash of another
/// password, so that an unknown user takes as long to refuse as a wrong password.
pub(crate) async fn verify(hash: Option<String>, password: String) -> bool {
    static ABSENT: OnceLock<String> = OnceLock::new();
    let known = hash.is_some();
    tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| {
            ABSENT
                .get_or_init(|| tern_mail::hash_password("no account has this password"))
                .clone()
        });
        tern_mail::verify_password(&hash, &password) && known
    })
    .await
    .unwrap_or(false)
}

/// Unix milliseconds, as commands carry them (`now`, internal dates).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn temporary_failures_are_retried_until_the_deadline_and_others_are_not() {
        let calls = std::cell::Cell::new(0);
        let unavailable = || ShardError::Unavailable {
            shard: 1,
            why: "electing".into(),
        };
        // Succeeds on the third attempt.
        let result = retrying(Instant::now() + Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(unavailable()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
        // Never succeeds: gives up by the deadline.
        let started = Instant::now();
        let result: Result<(), _> = retrying(Instant::now() + Duration::from_secs(2), || async {
            Err(unavailable())
        })
        .await;
        assert!(result.is_err());
        assert!(started.elapsed() <= Duration::from_secs(2));
        // A failure that is not temporary is not retried.
        calls.set(0);
        let result: Result<(), _> = retrying(Instant::now() + Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            async { Err(ShardError::UnknownShard(9)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1);
        // An operation that hangs ends at the deadline.
        let result: Result<(), _> = retrying(Instant::now() + Duration::from_secs(1), || {
            std::future::pending()
        })
        .await;
        assert!(result.unwrap_err().0.contains("deadline"));
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused_like_a_wrong_password() {
        let hash = tern_mail::hash_password("right password");
        assert!(verify(Some(hash.clone()), "right password".into()).await);
        assert!(!verify(Some(hash), "wrong".into()).await);
        assert!(!verify(None, "no account has this password".into()).await);
    }
}
