//! Errors of Raft storage, and their mapping onto openraft's `StorageError`.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use tern_store::StoreError;

use crate::NodeId;
use crate::typ::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
    #[error("{0}")]
    Config(String),
    #[error("blocking storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Boxed: openraft's error is large, and every storage call returns this type.
    #[error(transparent)]
    Raft(Box<openraft::error::Fatal<NodeId>>),
}

impl From<openraft::error::Fatal<NodeId>> for Error {
    fn from(fatal: openraft::error::Fatal<NodeId>) -> Self {
        Error::Raft(Box::new(fatal))
    }
}

impl Error {
    /// A stable, low-cardinality name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Store(e) => e.category(),
            Error::Decode { .. } => "decode",
            Error::Snapshot(_) => "snapshot",
            Error::Config(_) => "config",
            Error::Task(_) => "task",
            Error::Raft(_) => "raft",
        }
    }

    /// The error as openraft wants it from storage; openraft shuts the Raft group down on it.
    pub(crate) fn storage(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// Encodes a value with postcard, into a `Vec` allocated once at its exact size (a log entry
/// carries many commands' bodies; growing the `Vec` by doubling would copy them again);
/// encoding fails only for types postcard cannot express, which none of ours is.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::experimental::serialized_size(value)
        .and_then(|size| postcard::to_extend(value, Vec::with_capacity(size)))
        .expect("postcard encodes every Raft type")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|source| Error::Decode { what, source })
}
