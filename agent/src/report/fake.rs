//! The part of the Kubernetes API the reporter uses, in memory behind kube's tower-test mock
//! service (the operator's controller tests use a fuller one): Leases (get, create, replace
//! with the resourceVersion check) and server-side apply to `mailclusters/<name>/status`,
//! checked as the API server would (content type, field manager, a body naming the object
//! of the URL). Every request is recorded with the virtual time it arrived; a path can be
//! made to fail.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::time::Instant;

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    resource_version: u64,
    /// Path → (status code, how many more requests fail; `None`: all).
    failing: BTreeMap<String, (StatusCode, Option<u32>)>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
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

    fn next_rv(st: &mut State) -> String {
        st.resource_version += 1;
        st.resource_version.to_string()
    }

    /// Stores an object as if someone else had created it.
    pub fn put(&self, path: &str, mut obj: Value) {
        let mut st = self.state.lock().unwrap();
        obj["metadata"]["resourceVersion"] = json!(Self::next_rv(&mut st));
        st.objects.insert(path.into(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Edits a stored object as another client would.
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        let mut obj = st.objects.get(path).cloned().expect("object to edit");
        f(&mut obj);
        obj["metadata"]["resourceVersion"] = json!(Self::next_rv(&mut st));
        st.objects.insert(path.into(), obj);
    }

    /// The next `times` requests to `path` (every one with `None`) fail with `code`.
    pub fn fail(&self, path: &str, code: StatusCode, times: Option<u32>) {
        self.state
            .lock()
            .unwrap()
            .failing
            .insert(path.into(), (code, times));
    }

    pub fn heal(&self, path: &str) {
        self.state.lock().unwrap().failing.remove(path);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The status writes so far.
    pub fn patches(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == Method::PATCH)
            .collect()
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Option<Value> =
            (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("JSON bodies"));
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        let content_type = parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let mut st = self.state.lock().unwrap();
        st.calls.push(Call {
            at: Instant::now(),
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        if let Some((code, times)) = st.failing.get_mut(&path) {
            let code = *code;
            match times {
                Some(0) => {}
                Some(n) => {
                    *n -= 1;
                    return status(code, "InternalError", "injected failure");
                }
                None => return status(code, "InternalError", "injected failure"),
            }
        }
        match parts.method {
            Method::GET => match st.objects.get(&path) {
                Some(o) => ok(StatusCode::OK, o),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{path} not found"),
                ),
            },
            Method::POST => {
                let mut obj = body.expect("create has a body");
                let name = obj["metadata"]["name"]
                    .as_str()
                    .expect("a name")
                    .to_string();
                let key = format!("{path}/{name}");
                if st.objects.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", key);
                }
                obj["metadata"]["resourceVersion"] = json!(Self::next_rv(&mut st));
                st.objects.insert(key, obj.clone());
                ok(StatusCode::CREATED, &obj)
            }
            Method::PUT => {
                let mut obj = body.expect("replace has a body");
                let Some(current) = st.objects.get(&path) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", path);
                };
                if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    );
                }
                obj["metadata"]["resourceVersion"] = json!(Self::next_rv(&mut st));
                st.objects.insert(path, obj.clone());
                ok(StatusCode::OK, &obj)
            }
            Method::PATCH => {
                let Some(object_path) = path.strip_suffix("/status") else {
                    return status(StatusCode::FORBIDDEN, "Forbidden", "only status is patched");
                };
                if content_type.as_deref() != Some("application/apply-patch+yaml") {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        "server-side apply only",
                    );
                }
                if !query.split('&').any(|kv| kv.starts_with("fieldManager=")) {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "apply needs fieldManager",
                    );
                }
                let body = body.expect("apply has a body");
                let named = object_path.rsplit('/').next();
                if body["kind"] != "MailCluster" || body["metadata"]["name"].as_str() != named {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "body does not match the URL",
                    );
                }
                let rv = Self::next_rv(&mut st);
                let Some(stored) = st.objects.get_mut(object_path) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", object_path.to_string());
                };
                // One manager's view of its own fields: what it applies is what it owns.
                stored["status"] = body["status"].clone();
                stored["metadata"]["resourceVersion"] = json!(rv);
                let out = stored.clone();
                ok(StatusCode::OK, &out)
            }
            m => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                m.to_string(),
            ),
        }
    }
}
