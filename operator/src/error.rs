//! The operator's errors, each with a stable category for metrics, events and logs, and a
//! verdict on whether retrying can help.

use crate::placement::PlacementError;
use crate::render::RenderError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request; usually worth retrying.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The resource cannot be reconciled as written; the condition says why.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A published assignment could not be read back.
    #[error("assignment ConfigMap {name} is unreadable: {source}")]
    Assignment {
        name: String,
        source: serde_json::Error,
    },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    /// An object from the API server lacks a field every stored object has.
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Stable, low-cardinality label for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Self::Kube(kube::Error::Api(s)) if s.code == 422 => "rejected",
            Self::Kube(_) => "kube",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Placement(_) => "placement",
            Self::Render(_) => "render",
            Self::Assignment { .. } => "assignment",
            Self::Serialize { .. } => "serialize",
            Self::MissingObjectKey(_) => "missing_key",
            Self::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "finalizer",
            },
        }
    }

    /// Permanent errors need a change to the resource, not a retry: the reconcile reports them
    /// in a condition and waits. Everything else is retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidSpec(_) | Self::Placement(_) | Self::Render(_) => true,
            // 422: the API server refused what we built; retrying the same object cannot help.
            Self::Kube(kube::Error::Api(s)) => s.code == 422,
            Self::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_permanent(),
                _ => false,
            },
            _ => false,
        }
    }
}
