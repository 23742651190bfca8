//! The stored objects and how each request changes them.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::request::{Answer, ApiError, Incoming, strip_nulls};
use super::resources::{self, Resource, Target};
use super::select::{fields_match, labels_match, parse_fields, parse_labels};
use super::ssa::{self, Applier, ApplyError, Manager, Scope};
use super::{CLOCK, Call};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    /// Index into the resources the fake serves.
    pub(super) resource: usize,
    /// Empty for cluster-scoped objects.
    pub(super) namespace: String,
    pub(super) name: String,
}

impl Key {
    /// Whether the object is in the collection `target` names (in one namespace or all).
    pub(super) fn is_in(&self, target: &Target) -> bool {
        self.resource == target.resource
            && target
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == self.namespace)
    }

    pub(super) fn resource(&self) -> &'static Resource {
        &resources::all()[self.resource]
    }
}

pub(super) struct Stored {
    pub(super) object: Value,
    pub(super) managers: Vec<Manager>,
}

pub(super) enum FaultOn {
    /// Every request to exactly this path.
    Path(String),
    /// Every write to this object or its subresources.
    WritesTo(Key),
}

pub(super) struct Fault {
    pub(super) on: FaultOn,
    pub(super) code: StatusCode,
    pub(super) message: String,
    /// How many more requests fail; `None`: all.
    pub(super) remaining: Option<u32>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) objects: BTreeMap<Key, Stored>,
    pub(super) calls: Vec<Call>,
    pub(super) resource_version: u64,
    pub(super) uid: u64,
    pub(super) faults: Vec<Fault>,
    pub(super) field_manager: Option<String>,
}

/// Everything of an object but its metadata and status: what `generation` counts.
pub(super) fn desired(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

pub(super) fn finalizers(obj: &Value) -> Vec<Value> {
    obj["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub(super) fn deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// Copies what only the API server sets from `old` to `new`.
pub(super) fn keep_server_metadata(new: &mut Value, old: &Value) {
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    for field in ssa::SERVER_METADATA {
        match old["metadata"].get(*field) {
            Some(v) if *field != "managedFields" => new["metadata"][*field] = v.clone(),
            _ => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(*field);
                }
            }
        }
    }
}

/// `new` as a write in `scope` may store it over `old`: status kept outside `/status`, all
/// but status kept in it, and the server's metadata kept always.
pub(super) fn confine(new: Value, old: &Value, scope: Scope) -> Value {
    let (mut out, status_from) = match scope {
        Scope::Whole => (new, None),
        Scope::Main => (new, Some(old)),
        Scope::Status => (old.clone(), Some(&new)),
    };
    if let Some(from) = status_from {
        let status = from.get("status").cloned();
        match (status, out.as_object_mut()) {
            (Some(status), Some(m)) => {
                m.insert("status".into(), status);
            }
            (None, Some(m)) => {
                m.remove("status");
            }
            _ => {}
        }
    }
    keep_server_metadata(&mut out, old);
    out
}

/// The scopes a write reaches: `subresource` is `None` or `status`.
pub(super) fn scope(resource: &Resource, subresource: Option<&str>) -> Scope {
    match (resource.status_subresource, subresource) {
        (false, _) => Scope::Whole,
        (true, Some(_)) => Scope::Status,
        (true, None) => Scope::Main,
    }
}

/// The scopes that together cover a whole object, with their subresource.
pub(super) fn all_scopes(resource: &Resource) -> Vec<(Option<&'static str>, Scope)> {
    if resource.status_subresource {
        vec![(None, Scope::Main), (Some("status"), Scope::Status)]
    } else {
        vec![(None, Scope::Whole)]
    }
}

impl State {
    pub(super) fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    pub(super) fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid)
    }

    /// Stores `new` (its managed fields from `managers`) in place of `old`: bumps the
    /// generation when the desired state changed, keeps the resourceVersion when nothing
    /// changed, and removes a deleting object whose last finalizer is gone.
    pub(super) fn store(
        &mut self,
        key: &Key,
        old: Option<&Value>,
        mut new: Value,
        managers: Vec<Manager>,
    ) -> Answer {
        let resource = key.resource();
        if let Some(old) = old
            && deleting(old)
        {
            let before = finalizers(old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the \
                     object is being deleted",
                ));
            }
        }
        if let Some(old) = old {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = if desired(old) != desired(&new) {
                json!(generation + 1)
            } else {
                json!(generation)
            };
        }
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        if !managers.is_empty() {
            new["metadata"]["managedFields"] =
                ssa::managed_fields(&managers, &resource.api_version(), CLOCK);
        }
        if let Some(old) = old {
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if new == *old {
                return Ok((StatusCode::OK, new));
            }
        }
        new["metadata"]["resourceVersion"] = json!(self.next_rv());
        if deleting(&new) && finalizers(&new).is_empty() {
            self.objects.remove(key);
        } else {
            self.objects.insert(
                key.clone(),
                Stored {
                    object: new.clone(),
                    managers,
                },
            );
        }
        let code = if old.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((code, new))
    }

    /// A write that is not an apply: `new` becomes the object at `key` (created when there
    /// is none), and `manager` owns what it changed in `scopes`.
    pub(super) fn write(
        &mut self,
        key: &Key,
        new: Value,
        manager: &str,
        scopes: &[(Option<&str>, Scope)],
    ) -> Answer {
        let schema = &key.resource().schema;
        let (old, mut managers) = match self.objects.get(key) {
            Some(s) => (Some(s.object.clone()), s.managers.clone()),
            None => (None, Vec::new()),
        };
        let before = old.clone().unwrap_or_else(|| json!({}));
        for (sub, scope) in scopes {
            ssa::update(&before, &new, &mut managers, manager, *sub, *scope, schema)
                .map_err(ApiError::invalid)?;
        }
        self.store(key, old.as_ref(), new, managers)
    }

    pub(super) fn check_faults(
        &mut self,
        req: &Incoming,
        target: Option<&Target>,
    ) -> Result<(), ApiError> {
        let key = target.and_then(|t| {
            Some(Key {
                resource: t.resource,
                namespace: t.namespace.clone().unwrap_or_default(),
                name: t.name.clone()?,
            })
        });
        for fault in &mut self.faults {
            let hit = match &fault.on {
                FaultOn::Path(p) => *p == req.path,
                FaultOn::WritesTo(k) => req.method != Method::GET && key.as_ref() == Some(k),
            };
            if !hit {
                continue;
            }
            match &mut fault.remaining {
                Some(0) => continue,
                Some(n) => *n -= 1,
                None => {}
            }
            return Err(ApiError::new(fault.code, fault.message.clone()));
        }
        Ok(())
    }

    pub(super) fn serve(&mut self, req: &Incoming) -> Answer {
        let target = resources::parse_path(&req.path);
        self.check_faults(req, target.as_ref().ok())?;
        let target = target.map_err(|m| ApiError::new(StatusCode::NOT_FOUND, m))?;
        let resource = target.resource();
        if req.method != Method::GET
            && let (Some(required), Some(manager)) =
                (self.field_manager.as_deref(), req.param("fieldManager"))
            && manager != required
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "field manager {manager:?} is not allowed: every write here is {required:?}'s"
                ),
            ));
        }
        if req.param("dryRun").is_some() {
            return Err(ApiError::bad_request(
                "dryRun is not served by the fake API server",
            ));
        }
        match target.subresource.as_deref() {
            None => {}
            Some("status") if resource.status_subresource => {}
            Some(sub) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{} has no subresource {sub:?} in the fake API server",
                        resource.qualified()
                    ),
                ));
            }
        }
        let key = target.name.clone().map(|name| Key {
            resource: target.resource,
            namespace: target.namespace.clone().unwrap_or_default(),
            name,
        });
        let sub = target.subresource.as_deref();
        match (&req.method, key) {
            (&Method::GET, None) => {
                if matches!(req.param("watch"), Some("true" | "1")) {
                    return Err(ApiError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "watch is not served by the fake API server",
                    ));
                }
                self.list(req, &target)
            }
            (&Method::GET, Some(key)) => match self.objects.get(&key) {
                Some(s) => Ok((StatusCode::OK, s.object.clone())),
                None => Err(ApiError::not_found(&key)),
            },
            (&Method::POST, None) => self.create(req, &target),
            (&Method::PUT, Some(key)) => self.replace(req, &key, sub),
            (&Method::PATCH, Some(key)) => match req.media_type() {
                "application/apply-patch+yaml" => self.apply(req, &key, sub),
                "application/json-patch+json" | "application/merge-patch+json" => {
                    self.patch(req, &key, sub)
                }
                "application/strategic-merge-patch+json" => Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "strategic merge patches are not served by the fake API server; use \
                     server-side apply, a JSON patch or a merge patch",
                )),
                other => Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("the server does not accept patches of type {other:?}"),
                )),
            },
            (&Method::DELETE, Some(key)) if sub.is_none() => {
                let preconditions = req.body.clone().ok().flatten();
                self.delete(&key, preconditions.as_ref())
                    .map(|o| (StatusCode::OK, o))
            }
            (&Method::DELETE, None) => self.delete_collection(req, &target),
            (m, _) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{m} is not allowed on {}", req.path),
            )),
        }
    }

    /// The keys of `target`'s collection that the request's selectors pick, in order.
    pub(super) fn select(&self, req: &Incoming, target: &Target) -> Result<Vec<Key>, ApiError> {
        let labels = parse_labels(req.param("labelSelector").unwrap_or(""))?;
        let fields = parse_fields(req.param("fieldSelector").unwrap_or(""))?;
        Ok(self
            .objects
            .iter()
            .filter(|(k, s)| {
                k.is_in(target)
                    && labels_match(&s.object, &labels)
                    && fields_match(&s.object, &fields)
            })
            .map(|(k, _)| k.clone())
            .collect())
    }

    pub(super) fn list(&self, req: &Incoming, target: &Target) -> Answer {
        let resource = target.resource();
        let mut keys = self.select(req, target)?;
        if let Some(token) = req.param("continue").filter(|t| !t.is_empty()) {
            let (ns, name) = token
                .strip_prefix("fake:")
                .and_then(|t| t.split_once('/'))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("invalid continue token {token:?}"))
                })?;
            keys.retain(|k| (k.namespace.as_str(), k.name.as_str()) > (ns, name));
        }
        let limit = match req.param("limit") {
            None | Some("" | "0") => None,
            Some(l) => Some(l.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!("limit must be a non-negative integer, not {l:?}"))
            })?),
        };
        let mut metadata = json!({"resourceVersion": self.resource_version.to_string()});
        if let Some(limit) = limit
            && keys.len() > limit
        {
            keys.truncate(limit);
            if let Some(last) = keys.last() {
                metadata["continue"] = json!(format!("fake:{}/{}", last.namespace, last.name));
            }
        }
        let items: Vec<Value> = keys
            .iter()
            .map(|k| self.objects[k].object.clone())
            .collect();
        Ok((
            StatusCode::OK,
            json!({
                "apiVersion": resource.api_version(),
                "kind": format!("{}List", resource.kind),
                "metadata": metadata,
                "items": items,
            }),
        ))
    }

    /// Checks that a body names the resource and object of the URL; fills in the
    /// namespace.
    pub(super) fn check_body(
        body: &mut Value,
        resource: &Resource,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), ApiError> {
        let (api_version, kind) = (body["apiVersion"].as_str(), body["kind"].as_str());
        if api_version != Some(resource.api_version().as_str()) || kind != Some(&resource.kind) {
            return Err(ApiError::bad_request(format!(
                "the body is {}/{}, the URL names {} {}",
                api_version.unwrap_or("(no apiVersion)"),
                kind.unwrap_or("(no kind)"),
                resource.api_version(),
                resource.kind
            )));
        }
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        if let Some(name) = name
            && body["metadata"]["name"].as_str() != Some(name)
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                body["metadata"]["name"].as_str().unwrap_or("")
            )));
        }
        match (resource.namespaced, namespace) {
            (true, Some(ns)) => match body["metadata"]["namespace"].as_str() {
                None | Some("") => body["metadata"]["namespace"] = json!(ns),
                Some(n) if n == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the \
                             namespace sent on the request",
                    ));
                }
            },
            (true, None) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "a namespaced object is written under /namespaces/<namespace>/",
                ));
            }
            (false, _) => {
                if let Some(m) = body["metadata"].as_object_mut() {
                    m.remove("namespace");
                }
            }
        }
        Ok(())
    }

    /// `resourceVersion` and `uid` in a body are preconditions.
    pub(super) fn check_preconditions(
        key: &Key,
        body: &Value,
        current: &Value,
    ) -> Result<(), ApiError> {
        if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && Some(rv) != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::modified(key));
        }
        if let Some(uid) = body["metadata"]["uid"].as_str()
            && !uid.is_empty()
            && Some(uid) != current["metadata"]["uid"].as_str()
        {
            return Err(ApiError::conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                current["metadata"]["uid"].as_str().unwrap_or("")
            )));
        }
        Ok(())
    }

    pub(super) fn create(&mut self, req: &Incoming, target: &Target) -> Answer {
        req.require_media(&["application/json", "application/yaml"])?;
        let resource = target.resource();
        let mut obj = req.object()?;
        Self::check_body(&mut obj, resource, target.namespace.as_deref(), None)?;
        let name = match (
            obj["metadata"]["name"].as_str(),
            obj["metadata"]["generateName"].as_str(),
        ) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => {
                format!("{prefix}{:05x}", self.uid + 1)
            }
            _ => {
                return Err(ApiError::invalid(
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        let key = Key {
            resource: target.resource,
            namespace: target.namespace.clone().unwrap_or_default(),
            name: name.clone(),
        };
        if self.objects.contains_key(&key) {
            return Err(ApiError::conflict(format!(
                "{} \"{name}\" already exists",
                resource.qualified()
            )));
        }
        if resource.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        keep_server_metadata(&mut obj, &json!({"metadata": {}}));
        obj["metadata"]["name"] = json!(name);
        if resource.namespaced {
            obj["metadata"]["namespace"] = json!(key.namespace);
        }
        obj["metadata"]["uid"] = json!(self.next_uid());
        obj["metadata"]["creationTimestamp"] = json!(CLOCK);
        obj["metadata"]["generation"] = json!(1);
        self.write(&key, obj, &req.manager(), &all_scopes(resource))
    }

    pub(super) fn replace(&mut self, req: &Incoming, key: &Key, sub: Option<&str>) -> Answer {
        req.require_media(&["application/json", "application/yaml"])?;
        let resource = key.resource();
        let mut body = req.object()?;
        let ns = resource.namespaced.then_some(key.namespace.as_str());
        Self::check_body(&mut body, resource, ns, Some(&key.name))?;
        let Some(current) = self.objects.get(key) else {
            return Err(ApiError::not_found(key));
        };
        let rv = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if rv.is_empty() && !resource.unconditional_update {
            return Err(ApiError::invalid(
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            ));
        }
        Self::check_preconditions(key, &body, &current.object)?;
        let scope = scope(resource, sub);
        let new = confine(body, &current.object, scope);
        self.write(key, new, &req.manager(), &[(sub, scope)])
    }

    pub(super) fn apply(&mut self, req: &Incoming, key: &Key, sub: Option<&str>) -> Answer {
        let Some(manager) = req.param("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::bad_request(
                "fieldManager is required for apply requests",
            ));
        };
        let resource = key.resource();
        let mut body = req.object()?;
        let ns = resource.namespaced.then_some(key.namespace.as_str());
        Self::check_body(&mut body, resource, ns, Some(&key.name))?;
        if body["metadata"].get("managedFields").is_some() {
            return Err(ApiError::bad_request(
                "metadata.managedFields must be nil in an apply request",
            ));
        }
        let scope = scope(resource, sub);
        let applier = Applier {
            manager,
            subresource: sub,
            scope,
            force: req.param("force") == Some("true"),
            schema: &resource.schema,
        };
        let (old, mut new, mut managers) = match self.objects.get(key) {
            Some(current) => {
                Self::check_preconditions(key, &body, &current.object)?;
                let old = current.object.clone();
                (Some(old.clone()), old, current.managers.clone())
            }
            None if sub.is_some() => return Err(ApiError::not_found(key)),
            None => {
                let mut obj = json!({
                    "apiVersion": resource.api_version(),
                    "kind": resource.kind,
                    "metadata": {
                        "name": key.name,
                        "uid": self.next_uid(),
                        "creationTimestamp": CLOCK,
                        "generation": 1,
                    },
                });
                if resource.namespaced {
                    obj["metadata"]["namespace"] = json!(key.namespace);
                }
                (None, obj, Vec::new())
            }
        };
        applier
            .apply(&mut new, &mut managers, &body)
            .map_err(|e| match e {
                ApplyError::Invalid(m) => ApiError::invalid(m),
                ApplyError::Conflicts(cs) => {
                    let list: Vec<String> = cs
                        .iter()
                        .map(|(m, f)| format!("conflict with {m:?}: {f}"))
                        .collect();
                    ApiError::conflict(format!(
                        "Apply failed with {} conflict{}: {}",
                        cs.len(),
                        if cs.len() == 1 { "" } else { "s" },
                        list.join(", ")
                    ))
                }
            })?;
        self.store(key, old.as_ref(), new, managers)
    }

    /// A JSON patch or a merge patch.
    pub(super) fn patch(&mut self, req: &Incoming, key: &Key, sub: Option<&str>) -> Answer {
        let resource = key.resource();
        let Some(current) = self.objects.get(key) else {
            return Err(ApiError::not_found(key));
        };
        let body = match &req.body {
            Ok(Some(b)) => b.clone(),
            Ok(None) => return Err(ApiError::bad_request("the patch has no body")),
            Err(e) => return Err(ApiError::bad_request(e.clone())),
        };
        let old = current.object.clone();
        let mut doc = old.clone();
        if req.media_type() == "application/json-patch+json" {
            let ops: json_patch::Patch = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("not a JSON patch: {e}")))?;
            for op in ops.iter() {
                if let json_patch::PatchOperation::Test(t) = op
                    && t.value.is_null()
                    && doc.pointer(t.path.as_str()).is_none()
                {
                    continue;
                }
                json_patch::patch(&mut doc, std::slice::from_ref(op))
                    .map_err(|e| ApiError::invalid(format!("the JSON patch failed: {e}")))?;
            }
        } else {
            json_patch::merge(&mut doc, &body);
        }
        for field in ["apiVersion", "kind"] {
            if doc[field] != old[field] {
                return Err(ApiError::invalid(format!(
                    "{field}: a patch cannot change it"
                )));
            }
        }
        for field in ["name", "namespace"] {
            if doc["metadata"][field] != old["metadata"][field] {
                return Err(ApiError::invalid(format!(
                    "metadata.{field}: Invalid value: field is immutable"
                )));
            }
        }
        Self::check_preconditions(key, &doc, &old)?;
        strip_nulls(&mut doc);
        let scope = scope(resource, sub);
        let new = confine(doc, &old, scope);
        self.write(key, new, &req.manager(), &[(sub, scope)])
    }

    /// Deletes like the API server: an object with finalizers only gets a
    /// `deletionTimestamp`. `options` may carry `preconditions` (`uid`, `resourceVersion`).
    pub(super) fn delete(&mut self, key: &Key, options: Option<&Value>) -> Result<Value, ApiError> {
        let Some(current) = self.objects.get(key) else {
            return Err(ApiError::not_found(key));
        };
        if let Some(pre) = options
            .map(|o| &o["preconditions"])
            .filter(|p| p.is_object())
        {
            Self::check_preconditions(key, &json!({"metadata": pre}), &current.object)?;
        }
        if finalizers(&current.object).is_empty() {
            self.resource_version += 1;
            return Ok(self
                .objects
                .remove(key)
                .map(|s| s.object)
                .unwrap_or_default());
        }
        if deleting(&current.object) {
            return Ok(current.object.clone());
        }
        let mut obj = current.object.clone();
        obj["metadata"]["deletionTimestamp"] = json!(CLOCK);
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        if let Some(s) = self.objects.get_mut(key) {
            s.object = obj.clone();
        }
        Ok(obj)
    }

    pub(super) fn delete_collection(&mut self, req: &Incoming, target: &Target) -> Answer {
        let resource = target.resource();
        let mut items = Vec::new();
        for key in self.select(req, target)? {
            items.push(self.delete(&key, None)?);
        }
        Ok((
            StatusCode::OK,
            json!({
                "apiVersion": resource.api_version(),
                "kind": format!("{}List", resource.kind),
                "metadata": {"resourceVersion": self.resource_version.to_string()},
                "items": items,
            }),
        ))
    }
}
