//! A small in-memory Kubernetes API server behind kube's tower-test mock service, for testing
//! the controller's API calls. It keeps objects, so a test can run several reconciles and
//! inspect the result, and it enforces the conventions a real API server does and a careless
//! client breaks: server-side apply needs `application/apply-patch+yaml`, a `fieldManager`
//! and `apiVersion`/`kind`/`metadata.name` matching the URL; `/status` writes touch only
//! status and spec writes never touch status; `replace` needs the current resourceVersion;
//! `create` of an existing name is a 409. Every call is recorded.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl Call {
    /// `PATCH /apis/…/statefulsets/mail-default` style summary for assertion messages.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    resource_version: u64,
    uid: u64,
    /// Paths whose writes are refused with 422, as an admission check or an immutable field
    /// would.
    refused: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// (api prefix, plural, namespaced) of each kind the operator touches.
fn kind_info(api_version: &str, kind: &str) -> (String, &'static str, bool) {
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let (plural, namespaced) = match kind {
        "MailCluster" => ("mailclusters", true),
        "ClusterRole" => ("clusterroles", true),
        "UserGroup" => ("usergroups", true),
        "StatefulSet" => ("statefulsets", true),
        "Service" => ("services", true),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "ServiceAccount" => ("serviceaccounts", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "PodDisruptionBudget" => ("poddisruptionbudgets", true),
        "PersistentVolumeClaim" => ("persistentvolumeclaims", true),
        "Pod" => ("pods", true),
        "Lease" => ("leases", true),
        "Event" => ("events", true),
        "Node" => ("nodes", false),
        other => panic!("fake API server does not know kind {other}"),
    };
    (prefix, plural, namespaced)
}

/// The URL path of an object.
pub fn object_path(obj: &Value) -> String {
    let (prefix, plural, namespaced) = kind_info(
        obj["apiVersion"].as_str().unwrap(),
        obj["kind"].as_str().unwrap(),
    );
    let name = obj["metadata"]["name"].as_str().unwrap();
    if namespaced {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        format!("{prefix}/namespaces/{ns}/{plural}/{name}")
    } else {
        format!("{prefix}/{plural}/{name}")
    }
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    let body = json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Splits `/apis/g/v/namespaces/ns/plural/name/sub` into (collection path, name, subresource).
fn split(path: &str) -> (String, Option<String>, Option<String>) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let base = if segs[0] == "api" { 2 } else { 3 };
    let rest = &segs[base..];
    let (coll_len, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (base + 3, &rest[3..])
    } else {
        (base + 1, &rest[1..])
    };
    let collection = format!("/{}", segs[..coll_len].join("/"));
    (
        collection,
        rest.first().map(|s| s.to_string()),
        rest.get(1).map(|s| s.to_string()),
    )
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn decode(s: &str) -> String {
    // Enough percent-decoding for label selectors and field managers.
    s.replace("%3D", "=")
        .replace("%2C", ",")
        .replace("%2F", "/")
        .replace("%2D", "-")
        .replace('+', " ")
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').expect("equality selectors only");
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// Strategic-merge-free SSA approximation: the applied object's top-level sections replace the
/// stored ones (labels and annotations merged), which is what a single field manager sees.
fn apply_sections(stored: &mut Value, applied: &Value, status_only: bool) {
    let stored_obj = stored.as_object_mut().unwrap();
    for (k, v) in applied.as_object().unwrap() {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" if !status_only => {
                for field in ["labels", "annotations"] {
                    if let Some(m) = v.get(field).and_then(Value::as_object) {
                        let target = stored_obj
                            .get_mut("metadata")
                            .unwrap()
                            .as_object_mut()
                            .unwrap()
                            .entry(field)
                            .or_insert(json!({}));
                        for (lk, lv) in m {
                            target[lk] = lv.clone();
                        }
                    }
                }
                for field in ["ownerReferences", "finalizers"] {
                    if let Some(x) = v.get(field) {
                        stored_obj.get_mut("metadata").unwrap()[field] = x.clone();
                    }
                }
            }
            "status" if status_only => {
                // Fields of other managers (the agents' `members`) survive.
                let target = stored_obj.entry("status").or_insert(json!({}));
                for (sk, sv) in v.as_object().unwrap() {
                    target[sk] = sv.clone();
                }
            }
            "status" | "metadata" => {}
            _ if !status_only => {
                stored_obj.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

impl FakeApi {
    /// A client whose every request this fake answers.
    pub fn start() -> (Client, FakeApi) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi::default();
        let server = fake.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((req, send)) = handle.next_request().await {
                let resp = server.handle(req).await;
                send.send_response(resp);
            }
        });
        (Client::new(service, "default"), fake)
    }

    fn next_rv(state: &mut State) -> String {
        state.resource_version += 1;
        state.resource_version.to_string()
    }

    /// Stores an object as if created by someone else.
    pub fn put(&self, mut obj: Value) -> Value {
        let mut st = self.state.lock().unwrap();
        let path = object_path(&obj);
        st.uid += 1;
        let uid = format!("uid-{}", st.uid);
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.entry("uid").or_insert(json!(uid));
        meta.entry("generation").or_insert(json!(1));
        meta.entry("creationTimestamp")
            .or_insert(json!("2026-01-01T00:00:00Z"));
        let rv = Self::next_rv(&mut st);
        obj["metadata"]["resourceVersion"] = json!(rv);
        st.objects.insert(path, obj.clone());
        obj
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Objects whose path starts with `collection` (e.g. `/apis/apps/v1/namespaces/ns/statefulsets`).
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let prefix = format!("{collection}/");
        self.state
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Makes every write to `path` fail with 422 Invalid and `message`.
    pub fn refuse_writes(&self, path: &str, message: &str) {
        self.state
            .lock()
            .unwrap()
            .refused
            .insert(path.to_string(), message.to_string());
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    /// Edits a stored object (as a user would with kubectl); bumps generation when the spec changes.
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        let mut obj = st
            .objects
            .get(path)
            .cloned()
            .unwrap_or_else(|| panic!("no object at {path}"));
        let before = obj["spec"].clone();
        f(&mut obj);
        if obj["spec"] != before {
            let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        obj["metadata"]["resourceVersion"] = json!(Self::next_rv(&mut st));
        st.objects.insert(path.to_string(), obj);
    }

    /// Deletes like the API server: objects with finalizers only get a deletionTimestamp.
    fn delete_path(st: &mut State, path: &str) -> Option<Value> {
        let obj = st.objects.get(path)?.clone();
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            let o = st.objects.get_mut(path).unwrap();
            o["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            Some(o.clone())
        } else {
            st.objects.remove(path)
        }
    }

    /// A user deletes an object.
    pub fn delete(&self, path: &str) {
        let mut st = self.state.lock().unwrap();
        Self::delete_path(&mut st, path);
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&bytes).expect("request bodies are JSON"))
        };
        let path = parts.uri.path().to_string();
        let query = decode(parts.uri.query().unwrap_or(""));
        let content_type = parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let mut st = self.state.lock().unwrap();
        st.calls.push(Call {
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        let (collection, name, sub) = split(&path);
        let key = name.as_ref().map(|n| format!("{collection}/{n}"));
        if parts.method != Method::GET
            && let Some(message) = key.as_ref().and_then(|k| st.refused.get(k))
        {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message.clone());
        }
        match (parts.method.clone(), key) {
            (Method::GET, None) => {
                if query_param(&query, "watch") == Some("true") {
                    return status(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotAllowed",
                        "watch is not served by the fake",
                    );
                }
                let selector = query_param(&query, "labelSelector").unwrap_or("");
                let prefix = format!("{collection}/");
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(k, v)| {
                        k.starts_with(&prefix)
                            && !k[prefix.len()..].contains('/')
                            && labels_match(v, selector)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                ok(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": st.resource_version.to_string()}, "items": items}),
                )
            }
            (Method::GET, Some(key)) => match st.objects.get(&key) {
                Some(o) => ok(StatusCode::OK, o),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{key} not found"),
                ),
            },
            (Method::POST, None) => {
                let mut obj = body.expect("create has a body");
                if content_type.as_deref() != Some("application/json") {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        "create needs application/json",
                    );
                }
                let name = obj["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        st.uid += 1;
                        format!(
                            "{}{}",
                            obj["metadata"]["generateName"].as_str().unwrap_or("gen-"),
                            st.uid
                        )
                    });
                obj["metadata"]["name"] = json!(name);
                let key = format!("{collection}/{name}");
                if st.objects.contains_key(&key) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{key} already exists"),
                    );
                }
                st.uid += 1;
                obj["metadata"]["uid"] = json!(format!("uid-{}", st.uid));
                obj["metadata"]["resourceVersion"] = json!(Self::next_rv(&mut st));
                obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                st.objects.insert(key, obj.clone());
                ok(StatusCode::CREATED, &obj)
            }
            (Method::PUT, Some(key)) => {
                let obj = body.expect("replace has a body");
                let Some(current) = st.objects.get(&key) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", key);
                };
                if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version",
                    );
                }
                let mut obj = obj;
                obj["metadata"]["resourceVersion"] = json!(Self::next_rv(&mut st));
                st.objects.insert(key, obj.clone());
                ok(StatusCode::OK, &obj)
            }
            (Method::PATCH, Some(key)) => {
                let body = body.expect("patch has a body");
                match content_type.as_deref() {
                    Some("application/apply-patch+yaml") => {
                        let Some(manager) = query_param(&query, "fieldManager") else {
                            return status(
                                StatusCode::BAD_REQUEST,
                                "BadRequest",
                                "PATCH with apply requires fieldManager",
                            );
                        };
                        assert_eq!(
                            manager, "tern-operator",
                            "one field manager for every write"
                        );
                        let (prefix, plural, _) = kind_info(
                            body["apiVersion"].as_str().unwrap_or("v1"),
                            body["kind"].as_str().unwrap_or("missing"),
                        );
                        if !collection.starts_with(&prefix) || !collection.ends_with(plural) {
                            return status(
                                StatusCode::BAD_REQUEST,
                                "BadRequest",
                                "apiVersion/kind of the body do not match the URL",
                            );
                        }
                        if body["metadata"]["name"].as_str() != name.as_deref() {
                            return status(
                                StatusCode::BAD_REQUEST,
                                "BadRequest",
                                "metadata.name of the body does not match the URL",
                            );
                        }
                        let status_only = sub.as_deref() == Some("status");
                        let created = !st.objects.contains_key(&key);
                        if created && status_only {
                            return status(
                                StatusCode::NOT_FOUND,
                                "NotFound",
                                format!("{key} not found"),
                            );
                        }
                        let rv = Self::next_rv(&mut st);
                        st.uid += 1;
                        let uid = format!("uid-{}", st.uid);
                        let stored = st.objects.entry(key.clone()).or_insert_with(|| {
                            let mut o = json!({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": body["metadata"].clone()});
                            o["metadata"]["uid"] = json!(uid);
                            o["metadata"]["generation"] = json!(1);
                            o["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                            o
                        });
                        let before = stored["spec"].clone();
                        apply_sections(stored, &body, status_only);
                        if !created && stored["spec"] != before {
                            let g = stored["metadata"]["generation"].as_i64().unwrap_or(1);
                            stored["metadata"]["generation"] = json!(g + 1);
                        }
                        stored["metadata"]["resourceVersion"] = json!(rv);
                        let out = stored.clone();
                        ok(
                            if created {
                                StatusCode::CREATED
                            } else {
                                StatusCode::OK
                            },
                            &out,
                        )
                    }
                    Some("application/json-patch+json") => {
                        let Some(current) = st.objects.get(&key).cloned() else {
                            return status(StatusCode::NOT_FOUND, "NotFound", key);
                        };
                        let patch: json_patch::Patch =
                            serde_json::from_value(body).expect("a JSON patch");
                        let mut doc = current;
                        // Like the API server's JSON patch, a `test` for null passes on an
                        // absent field.
                        let meta = doc["metadata"].as_object_mut().unwrap();
                        meta.entry("finalizers").or_insert(Value::Null);
                        if let Err(e) = json_patch::patch(&mut doc, &patch) {
                            return status(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "Invalid",
                                e.to_string(),
                            );
                        }
                        doc["metadata"]["resourceVersion"] = json!(Self::next_rv(&mut st));
                        // Removing the last finalizer of a deleting object deletes it.
                        let deleting = !doc["metadata"]["deletionTimestamp"].is_null();
                        let finalizers_left = doc["metadata"]["finalizers"]
                            .as_array()
                            .is_some_and(|f| !f.is_empty());
                        if deleting && !finalizers_left {
                            st.objects.remove(&key);
                        } else {
                            st.objects.insert(key, doc.clone());
                        }
                        ok(StatusCode::OK, &doc)
                    }
                    other => status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("fake does not serve {other:?}"),
                    ),
                }
            }
            (Method::DELETE, Some(key)) => match Self::delete_path(&mut st, &key) {
                Some(o) => ok(StatusCode::OK, &o),
                None => status(StatusCode::NOT_FOUND, "NotFound", key),
            },
            (m, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} {path}"),
            ),
        }
    }
}
