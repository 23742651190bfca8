//! Test support: an in-memory Kubernetes API server behind kube's tower-test mock service,
//! for testing a component's API calls without a cluster (the `fake-api` feature; enable it
//! from `[dev-dependencies]` only). The operator's controller tests and the agents' status
//! reporter tests run against it.
//!
//! It keeps objects, so a test can run several reconciles and inspect the result, and it
//! behaves as kube-apiserver does where a careless client would break:
//!
//! - **server-side apply** needs `application/apply-patch+yaml`, a `fieldManager`, and a
//!   body whose `apiVersion`, `kind` and `metadata.name` match the URL and that carries no
//!   `managedFields`. Fields are owned per manager (shown in `metadata.managedFields`): a
//!   manager's fields merge with other managers' (list maps item by item by their keys, as
//!   the CRDs declare), a field it stops sending is removed, and taking a field another
//!   manager set to another value is a 409 conflict unless the apply is forced;
//! - the **status subresource**: writes to `/status` change only `status`, other writes
//!   never change it, and `metadata.generation` grows only when something besides metadata
//!   and status changes;
//! - **optimistic concurrency**: a replace, patch or apply carrying a `resourceVersion`
//!   other than the stored one is a 409 conflict, a Lease or custom resource cannot be
//!   replaced without one, a write that changes nothing keeps the resourceVersion, and a
//!   `create` of an existing name is a 409;
//! - **deletion**: an object with finalizers only gets a `deletionTimestamp` and goes when
//!   its last finalizer is removed; no finalizer can be added while it is deleting;
//! - **lists** with label selectors (equality and set-based), `metadata.name` and
//!   `metadata.namespace` field selectors, `limit` and `continue`, in one namespace or all;
//! - JSON patches (a `test` for `null` passes on an absent field, as the API server's JSON
//!   patch does) and merge patches.
//!
//! Every request is recorded ([`FakeApi::calls`]) with the (possibly paused) Tokio time it
//! arrived. Errors can be injected per path ([`FakeApi::fail`], [`FakeApi::refuse_writes`]).
//! A request the fake cannot answer gets an API `Status` error that says why, never a panic.
//! Not served: watches (405), `dryRun`, strategic merge patches (415), the `scale`
//! subresource, and what controllers do besides the API server (garbage collection of
//! dependents, defaulting, admission, CRD validation).

mod request;
mod resources;
mod select;
mod ssa;
mod state;
#[cfg(test)]
mod tests;

use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::time::Instant;

use request::{ApiError, Incoming, json_response, parse_body, parse_query, strip_nulls};
use resources::Resource;
use state::{Fault, FaultOn, Key, State, all_scopes, keep_server_metadata};

/// Every timestamp the fake writes (creation, deletion, managed fields): fixed, so stored
/// objects are the same on every run.
pub const CLOCK: &str = "2026-01-01T00:00:00Z";

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Call {
    /// When it arrived (Tokio time, so virtual time in a paused test).
    pub at: Instant,
    pub method: Method,
    pub path: String,
    /// The query string, percent-decoded: `fieldManager=tern-operator&force=true`.
    pub query: String,
    pub content_type: Option<String>,
    /// The body as JSON (apply bodies given as YAML are parsed); `None` when empty or
    /// unreadable.
    pub body: Option<Value>,
}

impl Call {
    /// `PATCH /apis/apps/v1/namespaces/ns/statefulsets/name`, for assertion messages.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// A query parameter, decoded.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The in-memory API server. Clones share one state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// The URL path of an object given as JSON (`apiVersion`, `kind`, `metadata.name`,
/// `metadata.namespace`, `default` when absent).
///
/// # Panics
/// When the object does not say what it is, or is of a kind the fake does not serve: a
/// mistake in the test.
pub fn object_path(obj: &Value) -> String {
    let (resource, namespace, name) = identify(obj);
    resource.object_path(&namespace, &name)
}

fn identify(obj: &Value) -> (&'static Resource, String, String) {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    let index = resources::by_kind(api_version, kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve {api_version:?} {kind:?}"));
    let resource = &resources::all()[index];
    let name = obj["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| panic!("the object has no metadata.name: {obj}"));
    let namespace = if resource.namespaced {
        obj["metadata"]["namespace"].as_str().unwrap_or("default")
    } else {
        ""
    };
    (resource, namespace.to_string(), name.to_string())
}

fn key_of(path: &str) -> Key {
    let target = resources::parse_path(path)
        .unwrap_or_else(|e| panic!("not a path the fake API server serves: {e}"));
    let name = target
        .name
        .unwrap_or_else(|| panic!("{path} names a collection, not an object"));
    Key {
        resource: target.resource,
        namespace: target.namespace.unwrap_or_default(),
        name,
    }
}

impl FakeApi {
    /// A kube client whose every request this fake answers (`default` is its default
    /// namespace). Call it inside a Tokio runtime: the fake serves from a task.
    pub fn start() -> (Client, FakeApi) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi::default();
        let server = fake.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((req, send)) = handle.next_request().await {
                send.send_response(server.handle(req).await);
            }
        });
        (Client::new(service, "default"), fake)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = match body.collect_bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                return ApiError::bad_request(format!("reading the request body: {e}")).response();
            }
        };
        let header = |name: http::header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(http::header::CONTENT_TYPE);
        let media_type = content_type
            .as_deref()
            .and_then(|c| c.split(';').next())
            .unwrap_or("")
            .trim()
            .to_string();
        let params = parse_query(parts.uri.query().unwrap_or(""));
        let req = Incoming {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            params,
            content_type,
            user_agent: header(http::header::USER_AGENT),
            body: parse_body(&bytes, &media_type),
        };
        let mut st = self.lock();
        st.calls.push(Call {
            at: Instant::now(),
            method: req.method.clone(),
            path: req.path.clone(),
            query: req
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
            content_type: req.content_type.clone(),
            body: req.body.clone().ok().flatten(),
        });
        match st.serve(&req) {
            Ok((code, body)) => json_response(code, &body),
            Err(e) => e.response(),
        }
    }

    /// Stores an object as someone else would create it (`kubectl-create`), or replace it
    /// when it exists (`kubectl-replace`), status included; returns it as stored.
    ///
    /// # Panics
    /// When the object does not say what it is (see [`object_path`]).
    pub fn put(&self, obj: Value) -> Value {
        let (resource, namespace, name) = identify(&obj);
        let key = key_of(&resource.object_path(&namespace, &name));
        let mut st = self.lock();
        let mut new = obj;
        strip_nulls(&mut new);
        if resource.namespaced {
            new["metadata"]["namespace"] = json!(namespace);
        }
        let manager = match st.objects.get(&key) {
            Some(old) => {
                keep_server_metadata(&mut new, &old.object);
                "kubectl-replace"
            }
            None => {
                let uid = st.next_uid();
                let meta = new["metadata"]
                    .as_object_mut()
                    .expect("checked by identify");
                meta.entry("uid").or_insert(json!(uid));
                meta.entry("generation").or_insert(json!(1));
                meta.entry("creationTimestamp").or_insert(json!(CLOCK));
                meta.remove("managedFields");
                "kubectl-create"
            }
        };
        st.write(&key, new, manager, &all_scopes(resource))
            .unwrap_or_else(|e| panic!("the fake API server refuses the object: {}", e.message))
            .1
    }

    /// The object at `path` (`/api/v1/namespaces/ns/configmaps/name`), if it exists.
    ///
    /// # Panics
    /// When `path` is not an object's path in a resource the fake serves.
    pub fn get(&self, path: &str) -> Option<Value> {
        let key = key_of(path);
        self.lock().objects.get(&key).map(|s| s.object.clone())
    }

    /// The objects of a collection (`/apis/apps/v1/namespaces/ns/statefulsets`, or
    /// `/apis/apps/v1/statefulsets` for all namespaces).
    ///
    /// # Panics
    /// When `collection` is not a collection the fake serves.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let target = resources::parse_path(collection)
            .ok()
            .filter(|t| t.name.is_none())
            .unwrap_or_else(|| panic!("{collection} is not a collection the fake serves"));
        let st = self.lock();
        st.objects
            .iter()
            .filter(|(k, _)| k.is_in(&target))
            .map(|(_, s)| s.object.clone())
            .collect()
    }

    /// Edits a stored object as a user would (`kubectl-edit`), status included: the
    /// generation grows when the desired state changes, the resourceVersion when anything
    /// does.
    ///
    /// # Panics
    /// When there is no object at `path`, or the edited object is one the API server would
    /// refuse.
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let key = key_of(path);
        let mut st = self.lock();
        let old = st
            .objects
            .get(&key)
            .map(|s| s.object.clone())
            .unwrap_or_else(|| panic!("no object at {path}"));
        let mut new = old.clone();
        f(&mut new);
        strip_nulls(&mut new);
        keep_server_metadata(&mut new, &old);
        st.write(&key, new, "kubectl-edit", &all_scopes(key.resource()))
            .unwrap_or_else(|e| panic!("the fake API server refuses the edit: {}", e.message));
    }

    /// Deletes an object as a user would; objects with finalizers only get a
    /// `deletionTimestamp`. Nothing happens when there is no such object.
    pub fn delete(&self, path: &str) {
        let key = key_of(path);
        let _ = self.lock().delete(&key, None);
    }

    /// Makes every write to the object at `path` (and its subresources) fail with 422
    /// Invalid and `message`, as an admission check or an immutable field would.
    pub fn refuse_writes(&self, path: &str, message: &str) {
        let key = key_of(path);
        self.lock().faults.push(Fault {
            on: FaultOn::WritesTo(key),
            code: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.to_string(),
            remaining: None,
        });
    }

    /// Makes the next `times` requests to exactly `path` (every one with `None`), whatever
    /// their method, fail with `code`.
    pub fn fail(&self, path: &str, code: StatusCode, times: Option<u32>) {
        self.lock().faults.push(Fault {
            on: FaultOn::Path(path.to_string()),
            code,
            message: format!("injected failure: {code}"),
            remaining: times,
        });
    }

    /// Ends the failures [`FakeApi::fail`] and [`FakeApi::refuse_writes`] set up for `path`.
    pub fn heal(&self, path: &str) {
        let key = resources::parse_path(path).ok().and_then(|t| {
            Some(Key {
                resource: t.resource,
                namespace: t.namespace.unwrap_or_default(),
                name: t.name?,
            })
        });
        self.lock().faults.retain(|f| match &f.on {
            FaultOn::Path(p) => p != path,
            FaultOn::WritesTo(k) => Some(k) != key.as_ref(),
        });
    }

    /// Refuses (403) every write that names a field manager other than `manager`, so a test
    /// proves that a component writes as one manager.
    pub fn require_field_manager(&self, manager: &str) {
        self.lock().field_manager = Some(manager.to_string());
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The PATCH requests so far.
    pub fn patches(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == Method::PATCH)
            .collect()
    }

    /// Forgets the requests so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }
}
