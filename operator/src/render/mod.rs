//! Render: pure functions from a MailCluster, its ClusterRoles and the assignment to every
//! Kubernetes object the operator applies.
