//! Following the published assignment. Epochs only grow: an assignment older than the one
//! followed is ignored, and so is a different document under the same epoch (an epoch names
//! exactly one content; two would mean two writers).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_crds::Assignment;

/// Why an assignment was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("epoch {offered} is older than the followed epoch {current}")]
    Older { offered: u64, current: u64 },
    #[error("epoch {0} was already followed with different content")]
    Conflicting(u64),
    #[error("assignment is for cluster {offered:?}, this node belongs to {ours:?}")]
    OtherCluster { offered: String, ours: String },
}

/// Decides whether to follow `offered`. `Ok(None)` means nothing new.
pub fn accept(
    cluster: &str,
    current: Option<&Assignment>,
    offered: Assignment,
) -> Result<Option<Assignment>, Refusal> {
    if offered.cluster != cluster {
        return Err(Refusal::OtherCluster {
            offered: offered.cluster,
            ours: cluster.into(),
        });
    }
    match current {
        None => Ok(Some(offered)),
        Some(cur) if offered.epoch < cur.epoch => Err(Refusal::Older {
            offered: offered.epoch,
            current: cur.epoch,
        }),
        Some(cur) if offered.epoch == cur.epoch && offered == *cur => Ok(None),
        Some(cur) if offered.epoch == cur.epoch => Err(Refusal::Conflicting(cur.epoch)),
        Some(_) => Ok(Some(offered)),
    }
}

/// The assignment this node follows, and counters for metrics.
#[derive(Default)]
pub struct Followed {
    pub current: Option<Assignment>,
    pub refused: u64,
    pub unreadable: u64,
}

pub type Shared = Arc<Mutex<Followed>>;

/// Reads the file once and applies [`accept`]. Unreadable or malformed files are counted and
/// leave the followed assignment as it was.
pub fn poll_once(cluster: &str, path: &Path, state: &Shared) {
    let offered = match std::fs::read_to_string(path).map(|t| Assignment::from_json(&t)) {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "assignment file is not a valid assignment");
            state.lock().unwrap_or_else(|e| e.into_inner()).unreadable += 1;
            return;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "reading the assignment file");
            state.lock().unwrap_or_else(|e| e.into_inner()).unreadable += 1;
            return;
        }
    };
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    match accept(cluster, st.current.as_ref(), offered) {
        Ok(Some(a)) => {
            tracing::info!(
                epoch = a.epoch,
                shards = a.shards.len(),
                "following assignment"
            );
            st.current = Some(a);
        }
        Ok(None) => {}
        Err(refusal) => {
            tracing::warn!(%refusal, "ignoring assignment");
            st.refused += 1;
        }
    }
}

/// Polls the file forever. (The ConfigMap volume is updated in place by the kubelet.)
pub async fn run(cluster: String, path: std::path::PathBuf, state: Shared, every: Duration) {
    loop {
        poll_once(&cluster, &path, &state);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(epoch: u64, shards: u32) -> Assignment {
        Assignment {
            epoch,
            cluster: "mail".into(),
            shards: (1..=shards)
                .map(|id| tern_crds::ShardAssignment {
                    id,
                    voters: vec![1],
                    learners: vec![],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn epochs_only_grow() {
        assert_eq!(accept("mail", None, a(3, 1)), Ok(Some(a(3, 1))));
        assert_eq!(accept("mail", Some(&a(3, 1)), a(4, 2)), Ok(Some(a(4, 2))));
        assert_eq!(accept("mail", Some(&a(3, 1)), a(3, 1)), Ok(None));
        assert_eq!(
            accept("mail", Some(&a(3, 1)), a(2, 5)),
            Err(Refusal::Older {
                offered: 2,
                current: 3
            })
        );
        assert_eq!(
            accept("mail", Some(&a(3, 1)), a(3, 2)),
            Err(Refusal::Conflicting(3))
        );
        assert!(matches!(
            accept(
                "other",
                None,
                Assignment {
                    cluster: "x".into(),
                    ..a(1, 1)
                }
            ),
            Err(Refusal::OtherCluster { .. })
        ));
    }

    #[test]
    fn files_are_followed_and_bad_ones_counted() {
        let dir = std::env::temp_dir().join(format!("tern-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("assignment.json");
        let state = Shared::default();
        poll_once("mail", &path, &state);
        assert!(
            state.lock().unwrap().current.is_none(),
            "a missing file is not an error yet"
        );
        std::fs::write(&path, a(2, 1).to_json()).unwrap();
        poll_once("mail", &path, &state);
        assert_eq!(state.lock().unwrap().current.as_ref().unwrap().epoch, 2);
        std::fs::write(&path, "{ not json").unwrap();
        poll_once("mail", &path, &state);
        std::fs::write(&path, a(1, 4).to_json()).unwrap();
        poll_once("mail", &path, &state);
        let st = state.lock().unwrap();
        assert_eq!(
            st.current.as_ref().unwrap().epoch,
            2,
            "neither garbage nor an older epoch replaces it"
        );
        assert_eq!((st.unreadable, st.refused), (1, 1));
        std::fs::remove_dir_all(&dir).ok();
    }
}
