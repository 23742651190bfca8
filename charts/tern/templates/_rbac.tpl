{{/*
The operator's permissions. Keep in step with config/rbac/role.yaml (scripts/check-packaging.sh
compares them when helm is installed).

Least privilege: only the verbs the operator's code uses. It writes its children with
server-side apply (patch; create for objects that do not exist yet), prunes the ones a
MailCluster no longer wants (delete), and never deletes Secrets, ServiceAccounts, Roles or
RoleBindings (garbage collection does, through owner references).

The operator creates, per MailCluster, a Role for its agents. Kubernetes lets it do so
without the `escalate` and `bind` verbs only because it holds every permission that Role
grants, in the MailCluster's namespace: configmaps get/list/watch, mailclusters
get/list/watch, mailclusters/status get/patch/update, leases create/get/update/patch. That is
why leases appear here as well as in the leader-election Role: remove them and no agent Role
can be created.
*/}}
{{- define "tern.namespacedRules" -}}
# The resources the operator reconciles, their status and the MailCluster finalizer.
- apiGroups: ["mail.tern.dev"]
  resources: ["mailclusters", "clusterroles", "usergroups"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["mail.tern.dev"]
  resources: ["mailclusters/status", "clusterroles/status", "usergroups/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["mail.tern.dev"]
  resources: ["mailclusters/finalizers"]
  verbs: ["update"]
# Children: one StatefulSet per pool, Services, ConfigMaps (config, assignment), PDBs.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Generated Secrets (cluster CA, gossip key, certificates): created once, never read in bulk,
# never changed.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
# Volumes are deleted only for a MailCluster with deletionPolicy: Delete.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "delete"]
# Pods, to learn which node (and zone) each agent runs on.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
# The agents' identity: ServiceAccount, Role and RoleBinding `<cluster>-agent`.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
# Leases: held so the agents' Role (status-reporter election) can be granted; see above.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Cluster-scoped: node labels give the zone of each agent's node. */}}
{{- define "tern.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get"]
{{- end }}
