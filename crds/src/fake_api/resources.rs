//! The resources the fake API server knows: their URLs, scope, subresources and the schema
//! that server-side apply merges by. Tern's own CRDs are read from [`crate::crds`], so a new
//! CRD or a changed list type is served as the real API server would serve the generated
//! manifest.

use std::sync::OnceLock;

use serde_json::{Value, json};

/// One kind of object the fake serves.
#[derive(Debug)]
pub(super) struct Resource {
    /// Empty for the core group (`/api/v1`).
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Writes to the object leave `status` alone and writes to `/status` touch only `status`.
    pub status_subresource: bool,
    /// A replace without `metadata.resourceVersion` is accepted (last write wins); otherwise
    /// it is refused, as for Leases and custom resources.
    pub unconditional_update: bool,
    /// The OpenAPI schema server-side apply merges by: `x-kubernetes-list-type`,
    /// `x-kubernetes-list-map-keys` and `x-kubernetes-map-type`. Built-in kinds get only
    /// `metadata`'s rules: their lists are atomic here (the real API server merges some of
    /// them, such as containers by name, by their strategic-merge keys).
    pub schema: Value,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps`, `leases.coordination.k8s.io`: how the API server names the resource in
    /// its messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The URL of the collection in `namespace`, or across all namespaces with `None`.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => {
                format!("{}/namespaces/{ns}/{}", self.prefix(), self.plural)
            }
            _ => format!("{}/{}", self.prefix(), self.plural),
        }
    }

    pub fn object_path(&self, namespace: &str, name: &str) -> String {
        let ns = self.namespaced.then_some(namespace);
        format!("{}/{name}", self.collection_path(ns))
    }
}

/// `metadata` as server-side apply sees it: labels and annotations are merged key by key,
/// owner references by `uid`, finalizers as a set.
fn metadata_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "ownerReferences": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["uid"],
                "items": {"type": "object"},
            },
            "finalizers": {
                "type": "array",
                "x-kubernetes-list-type": "set",
                "items": {"type": "string"},
            },
        },
    })
}

/// A built-in kind: (group, version, plural, kind, namespaced, status subresource,
/// replace without a resourceVersion).
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
    bool,
);

#[rustfmt::skip]
const BUILTIN: &[Builtin] = &[
    ("", "v1", "configmaps", "ConfigMap", true, false, true),
    ("", "v1", "secrets", "Secret", true, false, true),
    ("", "v1", "services", "Service", true, true, true),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, false, true),
    ("", "v1", "pods", "Pod", true, true, true),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, true, true),
    ("", "v1", "events", "Event", true, false, true),
    ("", "v1", "endpoints", "Endpoints", true, false, true),
    ("", "v1", "nodes", "Node", false, true, true),
    ("", "v1", "namespaces", "Namespace", false, true, true),
    ("apps", "v1", "statefulsets", "StatefulSet", true, true, true),
    ("apps", "v1", "deployments", "Deployment", true, true, true),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, true, true),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", true, false, true),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, false, true),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, false, true),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false, false,
        true),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, false, false),
    ("events.k8s.io", "v1", "events", "Event", true, false, true),
    ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, false, true),
];

fn build() -> Vec<Resource> {
    let mut all: Vec<Resource> = BUILTIN
        .iter()
        .map(
            |&(group, version, plural, kind, namespaced, status, unconditional)| Resource {
                group: group.into(),
                version: version.into(),
                plural: plural.into(),
                kind: kind.into(),
                namespaced,
                status_subresource: status,
                unconditional_update: unconditional,
                schema: json!({"type": "object", "properties": {"metadata": metadata_schema()}}),
            },
        )
        .collect();
    for (_, crd) in crate::crds() {
        let crd = serde_json::to_value(&crd).expect("a CRD serializes to JSON");
        let spec = &crd["spec"];
        for version in spec["versions"].as_array().into_iter().flatten() {
            let mut schema = version["schema"]["openAPIV3Schema"].clone();
            if !schema.is_object() {
                schema = json!({"type": "object"});
            }
            schema["properties"]["metadata"] = metadata_schema();
            all.push(Resource {
                group: spec["group"].as_str().unwrap_or_default().into(),
                version: version["name"].as_str().unwrap_or_default().into(),
                plural: spec["names"]["plural"].as_str().unwrap_or_default().into(),
                kind: spec["names"]["kind"].as_str().unwrap_or_default().into(),
                namespaced: spec["scope"] == "Namespaced",
                status_subresource: version["subresources"]["status"].is_object(),
                unconditional_update: false,
                schema,
            });
        }
    }
    all
}

/// Every resource the fake serves.
pub(super) fn all() -> &'static [Resource] {
    static ALL: OnceLock<Vec<Resource>> = OnceLock::new();
    ALL.get_or_init(build)
}

/// Index into [`all`] of the resource with this `apiVersion` and `kind`.
pub(super) fn by_kind(api_version: &str, kind: &str) -> Option<usize> {
    all()
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

fn by_plural(group: &str, version: &str, plural: &str) -> Option<usize> {
    all()
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// What a request URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Target {
    /// Index into [`all`].
    pub resource: usize,
    /// `None` for cluster-scoped resources and for lists across all namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn resource(&self) -> &'static Resource {
        &all()[self.resource]
    }
}

/// Parses `/api/v1/namespaces/ns/configmaps/name`, `/apis/group/version/plural`, … into a
/// [`Target`]; `Err` carries the API server's message for a URL it does not serve.
pub(super) fn parse_path(path: &str) -> Result<Target, String> {
    let unknown = || format!("the server could not find the requested resource ({path})");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(unknown()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(unknown()),
    };
    let resource = by_plural(group, version, plural).ok_or_else(unknown)?;
    let namespaced = all()[resource].namespaced;
    if namespace.is_some() && !namespaced
        || namespace.is_none() && namespaced && name.is_some()
        || name.as_deref().is_some_and(str::is_empty)
    {
        return Err(unknown());
    }
    Ok(Target {
        resource,
        namespace,
        name,
        subresource,
    })
}
