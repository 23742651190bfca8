//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator replicas are safe:
//! only the holder reconciles. The elector lives in `tern-crds` (feature `lease`) because
//! the agents elect their status reporter with the same code.

pub use tern_crds::lease::{Decision, LeaderElector, LeaseConfig, decide};
