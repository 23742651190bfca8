//! tern-operator: reconciles `MailCluster`, `ClusterRole` and `UserGroup` into StatefulSets,
//! Services, ConfigMaps, Secrets, PodDisruptionBudgets and the published shard assignment.
//!
//! The reconcile is a pipeline with I/O only at its ends: fetch → validate (pure) →
//! place (pure, [`placement`]) → build every child (pure, [`render`]) → apply → status.
#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod render;
pub mod settings;
