//! Reading a request and answering with the API server's `Status` errors.

use http::{Method, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::state::Key;

/// An API error: the `Status` the API server answers with.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) code: StatusCode,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub(super) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub(super) fn not_found(key: &Key) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("{} \"{}\" not found", key.resource().qualified(), key.name),
        )
    }

    pub(super) fn modified(key: &Key) -> Self {
        Self::conflict(format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please \
             apply your changes to the latest version and try again",
            key.resource().qualified(),
            key.name
        ))
    }

    pub(super) fn response(&self) -> Response<Body> {
        let body = json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": reason(self.code), "code": self.code.as_u16(),
        });
        json_response(self.code, &body)
    }
}

/// The `reason` kube-apiserver gives with a status code.
pub(super) fn reason(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

pub(super) fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) type Answer = Result<(StatusCode, Value), ApiError>;

/// A request, read.
pub(super) struct Incoming {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) params: Vec<(String, String)>,
    pub(super) content_type: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) body: Result<Option<Value>, String>,
}

impl Incoming {
    pub(super) fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The media type without parameters.
    pub(super) fn media_type(&self) -> &str {
        let ct = self.content_type.as_deref().unwrap_or("");
        ct.split(';').next().unwrap_or("").trim()
    }

    /// The field manager of a write: the parameter, else the client's name from its
    /// User-Agent, as the API server derives it.
    pub(super) fn manager(&self) -> String {
        if let Some(m) = self.param("fieldManager") {
            return m.to_string();
        }
        match self
            .user_agent
            .as_deref()
            .and_then(|ua| ua.split('/').next())
        {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => "unknown".into(),
        }
    }

    /// The body, which must be a JSON (or YAML) object.
    pub(super) fn object(&self) -> Result<Value, ApiError> {
        match &self.body {
            Ok(Some(v @ Value::Object(_))) => {
                let mut v = v.clone();
                strip_nulls(&mut v);
                Ok(v)
            }
            Ok(Some(_)) => Err(ApiError::bad_request("the request body is not an object")),
            Ok(None) => Err(ApiError::bad_request("the request has no body")),
            Err(e) => Err(ApiError::bad_request(e.clone())),
        }
    }

    pub(super) fn require_media(&self, accepted: &[&str]) -> Result<(), ApiError> {
        if accepted.contains(&self.media_type()) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the body of a {} must be one of {accepted:?}, not {:?}",
                self.method,
                self.media_type()
            ),
        ))
    }
}

pub(super) fn decode(s: &str) -> String {
    let hex = |i: usize| s.as_bytes().get(i).and_then(|b| (*b as char).to_digit(16));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make one byte (at most 0xff).
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub(super) fn parse_body(bytes: &[u8], media_type: &str) -> Result<Option<Value>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(Some(v)),
        Err(json_error) if media_type.ends_with("yaml") => {
            let text = std::str::from_utf8(bytes).map_err(|e| format!("the body: {e}"))?;
            serde_saphyr::from_str(text)
                .map(Some)
                .map_err(|e| format!("the body is neither JSON ({json_error}) nor YAML ({e})"))
        }
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// Drops `null` object fields, as decoding into the API types does.
pub(super) fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}
