//! The gossip keyring file (`TERN_GOSSIP_KEY_FILE`) and its reloading.
//!
//! Three forms are accepted, told apart by their content:
//!
//! * the keyring text format of `tern_gossip::keyring` (`primary <id>` and `<id> <base64 key>`
//!   lines), which the operator writes and which rotation needs;
//! * exactly 32 bytes: a raw key, used as key id 1 (what earlier operators generated);
//! * one line of standard base64 of 32 bytes (e.g. `openssl rand -base64 32`): key id 1.
//!
//! The file is read again every few seconds and replaced only when its content changed and
//! parses; Kubernetes updates a mounted Secret by swapping a symlink, so a read sees the old
//! or the new content, never half of each. A file that does not parse keeps the keyring in use
//! and is logged and counted, so a rotation step done wrong stops at that step instead of
//! cutting the node off.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_gossip::keyring::{KEY_LEN, KeyId, Keyring, KeyringError, decode_base64};
use tokio::sync::watch;

use super::metrics::Metrics;

/// Why a keyring file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: neither a keyring (UTF-8 text) nor a raw {KEY_LEN}-byte key")]
    NotText { path: String },
    #[error("{path}: {source}")]
    Keyring { path: String, source: KeyringError },
}

/// Parses the content of the keyring file at `path` (any of the three forms).
pub fn parse_key_file(cluster: &str, path: &Path, bytes: &[u8]) -> Result<Keyring, KeyFileError> {
    let keyring_error = |source| KeyFileError::Keyring {
        path: path.display().to_string(),
        source,
    };
    if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Keyring::new(cluster, KeyId(1), [(KeyId(1), raw)]).map_err(keyring_error);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| KeyFileError::NotText {
        path: path.display().to_string(),
    })?;
    let trimmed = text.trim();
    if !trimmed.contains(char::is_whitespace)
        && let Some(key) = decode_base64(trimmed).and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
    {
        return Keyring::new(cluster, KeyId(1), [(KeyId(1), key)]).map_err(keyring_error);
    }
    Keyring::parse(cluster, text).map_err(keyring_error)
}

/// Reads and parses the keyring file; returns the keyring and the bytes it came from.
pub fn read_key_file(cluster: &str, path: &Path) -> Result<(Keyring, Vec<u8>), KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_key_file(cluster, path, &bytes).map(|keyring| (keyring, bytes))
}

/// Reads the file every `every` and publishes a new keyring when its content changed and
/// parses. `last` is the content of the keyring in use.
pub(super) async fn watch_key_file(
    cluster: String,
    path: std::path::PathBuf,
    mut last: Vec<u8>,
    keyring: watch::Sender<Arc<Keyring>>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(every).await;
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(&path)).await
        };
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                let error = format!("{}: {e}", path.display());
                if last_error.as_ref() != Some(&error) {
                    tracing::error!(%error, "cannot read the gossip keyring file; keeping the keys in use");
                    metrics.keyring_errors.fetch_add(1, Ordering::Relaxed);
                    last_error = Some(error);
                }
                continue;
            }
            Err(_) => continue,
        };
        if bytes == last {
            continue;
        }
        match parse_key_file(&cluster, &path, &bytes) {
            Ok(new) => {
                tracing::info!(
                    primary = %new.primary_id(),
                    keys = ?new.key_ids().map(|k| k.0).collect::<Vec<_>>(),
                    "gossip keyring reloaded"
                );
                keyring.send_replace(Arc::new(new));
                metrics.keyring_reloads.fetch_add(1, Ordering::Relaxed);
                last_error = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "the gossip keyring file changed but is not valid; keeping the keys in use");
                metrics.keyring_errors.fetch_add(1, Ordering::Relaxed);
                last_error = Some(e.to_string());
            }
        }
        // A bad file is reported once; the next change is looked at again.
        last = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_gossip::keyring::encode_base64;

    #[test]
    fn the_three_forms() {
        let raw = [7u8; KEY_LEN];
        let p = Path::new("keyring");
        let from_raw = parse_key_file("mail", p, &raw).unwrap();
        assert_eq!(from_raw.primary_id(), KeyId(1));
        assert_eq!(from_raw.cluster(), "mail");

        let b64 = format!("{}\n", encode_base64(&raw));
        let from_b64 = parse_key_file("mail", p, b64.as_bytes()).unwrap();
        assert_eq!(from_b64.key_ids().collect::<Vec<_>>(), [KeyId(1)]);
        // The same key either way.
        assert_eq!(from_b64.render_secret(), from_raw.render_secret());

        let text = format!(
            "primary 2\n1 {}\n2 {}\n",
            encode_base64(&raw),
            encode_base64(&[9; KEY_LEN])
        );
        let ring = parse_key_file("mail", p, text.as_bytes()).unwrap();
        assert_eq!(ring.primary_id(), KeyId(2));
        assert_eq!(ring.key_ids().count(), 2);
    }

    #[test]
    fn bad_files_say_why() {
        let p = Path::new("/etc/tern/gossip/key");
        let e = parse_key_file("mail", p, &[0xff; 31]).unwrap_err();
        assert!(matches!(e, KeyFileError::NotText { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "/etc/tern/gossip/key: neither a keyring (UTF-8 text) nor a raw 32-byte key"
        );
        let e = parse_key_file("mail", p, b"primary 1\n").unwrap_err();
        assert!(
            matches!(
                e,
                KeyFileError::Keyring {
                    source: KeyringError::PrimaryNotListed(KeyId(1)),
                    ..
                }
            ),
            "{e}"
        );
        // 31 bytes of base64 is neither a key nor a keyring line.
        let short = encode_base64(&[1; 31]);
        assert!(matches!(
            parse_key_file("mail", p, short.as_bytes()),
            Err(KeyFileError::Keyring {
                source: KeyringError::Malformed { line: 1 },
                ..
            })
        ));
        let dir = tern_raft::testing::TempDir::new("gossip-keys");
        let missing = dir.path().join("none");
        let e = read_key_file("mail", &missing).unwrap_err().to_string();
        assert!(e.starts_with("reading ") && e.contains("none"), "{e}");
        std::fs::write(dir.path().join("bin"), [0xfe; 40]).unwrap();
        let e = read_key_file("mail", &dir.path().join("bin"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a keyring"), "{e}");
    }

    #[tokio::test]
    async fn reloads_on_change_and_keeps_the_old_keys_on_a_bad_file() {
        let dir = tern_raft::testing::TempDir::new("gossip-key-watch");
        let path = dir.path().join("keyring");
        let first = format!("primary 1\n1 {}\n", encode_base64(&[1; KEY_LEN]));
        std::fs::write(&path, &first).unwrap();
        let (ring, bytes) = read_key_file("mail", &path).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(ring));
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(watch_key_file(
            "mail".into(),
            path.clone(),
            bytes,
            tx,
            metrics.clone(),
            Duration::from_millis(20),
        ));
        let second = format!(
            "primary 2\n1 {}\n2 {}\n",
            encode_base64(&[1; KEY_LEN]),
            encode_base64(&[2; KEY_LEN])
        );
        std::fs::write(&path, &second).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow_and_update().primary_id(), KeyId(2));

        std::fs::write(&path, "primary 3\n").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.keyring_errors.load(Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bad file was not noticed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rx.borrow().primary_id(), KeyId(2), "the keys in use stay");
        assert!(!rx.has_changed().unwrap());
        assert_eq!(
            metrics.keyring_errors.load(Ordering::Relaxed),
            1,
            "reported once"
        );
        assert_eq!(metrics.keyring_reloads.load(Ordering::Relaxed), 1);
        task.abort();
    }
}
