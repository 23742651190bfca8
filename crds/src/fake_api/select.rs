//! Label and field selectors of lists.

use serde_json::Value;

use super::request::ApiError;

/// A label selector: equality (`a=b`, `a==b`, `a!=b`), set-based (`a in (b,c)`,
/// `a notin (b)`), existence (`a`, `!a`).
pub(super) enum LabelTerm {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

pub(super) fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

pub(super) fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

pub(super) fn parse_labels(selector: &str) -> Result<Vec<LabelTerm>, ApiError> {
    let bad = |t: &str| ApiError::bad_request(format!("unable to parse requirement: {t:?}"));
    let mut terms = Vec::new();
    for t in split_terms(selector) {
        let term = if let Some(k) = t.strip_prefix('!') {
            LabelTerm::Absent(k.trim().to_string())
        } else if let Some((k, v)) = t.split_once("!=") {
            LabelTerm::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            LabelTerm::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, rest)) = t.split_once(char::is_whitespace) {
            let rest = rest.trim();
            let (op, values) = rest.split_once('(').ok_or_else(|| bad(t))?;
            let values = values.strip_suffix(')').ok_or_else(|| bad(t))?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
            match op.trim() {
                "in" => LabelTerm::In(k.into(), values),
                "notin" => LabelTerm::NotIn(k.into(), values),
                _ => return Err(bad(t)),
            }
        } else {
            LabelTerm::Exists(t.to_string())
        };
        let key = match &term {
            LabelTerm::Eq(k, _)
            | LabelTerm::Ne(k, _)
            | LabelTerm::In(k, _)
            | LabelTerm::NotIn(k, _)
            | LabelTerm::Exists(k)
            | LabelTerm::Absent(k) => k,
        };
        if !valid_key(key) {
            return Err(bad(t));
        }
        terms.push(term);
    }
    Ok(terms)
}

pub(super) fn labels_match(obj: &Value, terms: &[LabelTerm]) -> bool {
    let label = |k: &str| obj["metadata"]["labels"][k].as_str();
    terms.iter().all(|t| match t {
        LabelTerm::Eq(k, v) => label(k) == Some(v),
        LabelTerm::Ne(k, v) => label(k) != Some(v),
        LabelTerm::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        LabelTerm::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        LabelTerm::Exists(k) => label(k).is_some(),
        LabelTerm::Absent(k) => label(k).is_none(),
    })
}

/// `metadata.name=x,metadata.namespace!=y`: (field, value, equal).
pub(super) fn parse_fields(selector: &str) -> Result<Vec<(String, String, bool)>, ApiError> {
    let mut terms = Vec::new();
    for t in split_terms(selector) {
        let (field, value, equal) = if let Some((f, v)) = t.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            (f, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector {t:?}"
            )));
        };
        let field = field.trim();
        if field != "metadata.name" && field != "metadata.namespace" {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field} (the fake API server selects by \
                 metadata.name and metadata.namespace)"
            )));
        }
        terms.push((field.to_string(), value.trim().to_string(), equal));
    }
    Ok(terms)
}

pub(super) fn fields_match(obj: &Value, terms: &[(String, String, bool)]) -> bool {
    terms.iter().all(|(field, value, equal)| {
        let actual = match field.as_str() {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            _ => obj["metadata"]["namespace"].as_str(),
        };
        (actual.unwrap_or("") == value) == *equal
    })
}
