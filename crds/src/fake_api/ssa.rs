//! Field ownership as the API server keeps it in `metadata.managedFields`, and server-side
//! apply on top of it (the rules of Kubernetes' structured-merge-diff, for the shapes Tern's
//! objects have):
//!
//! - every field an applier sends is owned by it; a field another manager owns with a
//!   different value is a conflict, refused unless the apply is forced (which takes the
//!   field over);
//! - a field the applier owned and no longer sends is removed, unless another manager owns
//!   it too;
//! - objects merge field by field, `x-kubernetes-list-type: map` lists item by item (by their
//!   keys), `set` lists value by value, and every other list is atomic (replaced whole);
//! - any other write (create, replace, JSON or merge patch) makes its manager the owner of
//!   the fields it changed, and fields it removed are owned by nobody.
//!
//! A field is named by its path from the object's root, in the segments `managedFields`
//! uses: `f:name` for an object field, `k:{"id":1}` for a list-map item, `v:"x"` for a set
//! item.

use std::collections::BTreeSet;
use std::ops::Bound;

use serde_json::{Map, Value, json};

pub(super) type Path = Vec<String>;
pub(super) type FieldSet = BTreeSet<Path>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Operation {
    Apply,
    Update,
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
pub(super) struct Manager {
    pub name: String,
    pub operation: Operation,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

/// Which part of an object a write reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// The kind has no status subresource: the whole object.
    Whole,
    /// Everything but `status`.
    Main,
    /// Only `status` (the `/status` subresource).
    Status,
}

/// Metadata the API server sets itself; nobody owns it.
pub(super) const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The part of `obj` a write in `scope` owns and merges: without `apiVersion`, `kind` and
/// the server's metadata.
pub(super) fn content(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    for (k, v) in obj.as_object().into_iter().flatten() {
        let keep = match (k.as_str(), scope) {
            ("apiVersion" | "kind", _) | ("status", Scope::Main) => false,
            ("status", _) => true,
            (_, Scope::Status) => false,
            _ => true,
        };
        if !keep {
            continue;
        }
        if k == "metadata" {
            let mut meta = v.as_object().cloned().unwrap_or_default();
            meta.retain(|f, _| !SERVER_METADATA.contains(&f.as_str()));
            if !meta.is_empty() {
                out.insert(k.clone(), Value::Object(meta));
            }
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

fn list_type(schema: Option<&Value>) -> ListType {
    let Some(schema) = schema else {
        return ListType::Atomic;
    };
    match schema["x-kubernetes-list-type"].as_str() {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            schema["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        ),
        _ => ListType::Atomic,
    }
}

fn atomic_map(schema: Option<&Value>) -> bool {
    schema.is_some_and(|s| s["x-kubernetes-map-type"] == "atomic")
}

/// The schema of a field: a named property, else the schema of every value of a map.
/// Looks through `allOf`/`anyOf`/`oneOf` alternatives as well.
fn field_schema<'a>(schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    let schema = schema?;
    if let Some(s) = schema["properties"].get(field) {
        return Some(s);
    }
    if schema["additionalProperties"].is_object() {
        return Some(&schema["additionalProperties"]);
    }
    alternatives(schema).find_map(|alt| field_schema(Some(alt), field))
}

fn items_schema(schema: Option<&Value>) -> Option<&Value> {
    let schema = schema?;
    if schema["items"].is_object() {
        return Some(&schema["items"]);
    }
    alternatives(schema).find_map(|alt| items_schema(Some(alt)))
}

fn alternatives(schema: &Value) -> impl Iterator<Item = &Value> {
    ["allOf", "anyOf", "oneOf"]
        .into_iter()
        .filter_map(|k| schema[k].as_array())
        .flatten()
}

/// JSON with object keys sorted, so equal values give equal path segments.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// `.status.shards[id=1].leader`: a path as the API server prints it in conflict messages.
pub(super) fn display(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        let (kind, rest) = seg.split_at(2.min(seg.len()));
        match kind {
            "f:" => {
                out.push('.');
                out.push_str(rest);
            }
            "k:" => {
                let key: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                let terms: Vec<String> = key
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                out.push_str(&format!("[{}]", terms.join(",")));
            }
            _ => out.push_str(&format!("[={rest}]")),
        }
    }
    out
}

fn item_segment(item: &Value, keys: &[String], path: &[String]) -> Result<String, String> {
    let Some(obj) = item.as_object() else {
        return Err(format!(
            "{}: an item of a list keyed by {keys:?} is not an object",
            display(path)
        ));
    };
    let mut key = Map::new();
    for k in keys {
        match obj.get(k) {
            Some(v) => {
                key.insert(k.clone(), v.clone());
            }
            None => {
                return Err(format!(
                    "{}: an item lacks the key field {k:?}",
                    display(path)
                ));
            }
        }
    }
    Ok(format!("k:{}", canonical(&Value::Object(key))))
}

/// Every field `content` sets. `Err` for what the API server refuses: a list-map item
/// without its key, two items with the same key or value.
pub(super) fn field_set(content: &Value, schema: &Value) -> Result<FieldSet, String> {
    let mut out = FieldSet::new();
    if let Some(map) = content.as_object() {
        walk_fields(map, Some(schema), &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

fn walk_fields(
    map: &Map<String, Value>,
    schema: Option<&Value>,
    path: &mut Path,
    out: &mut FieldSet,
) -> Result<(), String> {
    for (k, v) in map {
        path.push(format!("f:{k}"));
        walk_value(v, field_schema(schema, k), path, out)?;
        path.pop();
    }
    Ok(())
}

fn walk_value(
    v: &Value,
    schema: Option<&Value>,
    path: &mut Path,
    out: &mut FieldSet,
) -> Result<(), String> {
    match v {
        Value::Object(map) if !map.is_empty() && !atomic_map(schema) => {
            walk_fields(map, schema, path, out)
        }
        Value::Array(items) if !items.is_empty() => match list_type(schema) {
            ListType::Atomic => {
                out.insert(path.clone());
                Ok(())
            }
            ListType::Set => {
                for item in items {
                    path.push(format!("v:{}", canonical(item)));
                    if !out.insert(path.clone()) {
                        return Err(format!("{}: duplicate entries", display(path)));
                    }
                    path.pop();
                }
                Ok(())
            }
            ListType::Map(keys) => {
                let item_schema = items_schema(schema);
                for item in items {
                    path.push(item_segment(item, &keys, path)?);
                    if !out.insert(path.clone()) {
                        return Err(format!("{}: duplicate entries", display(path)));
                    }
                    if let Some(fields) = item.as_object() {
                        walk_fields(fields, item_schema, path, out)?;
                    }
                    path.pop();
                }
                Ok(())
            }
        },
        _ => {
            out.insert(path.clone());
            Ok(())
        }
    }
}

fn is_item(path: &[String]) -> bool {
    path.last().is_some_and(|s| s.starts_with("k:"))
}

fn matches_segment(item: &Value, seg: &str) -> bool {
    let (kind, rest) = seg.split_at(2.min(seg.len()));
    let Ok(want) = serde_json::from_str::<Value>(rest) else {
        return false;
    };
    match kind {
        "k:" => want
            .as_object()
            .is_some_and(|key| key.iter().all(|(k, v)| item.get(k) == Some(v))),
        "v:" => *item == want,
        _ => false,
    }
}

fn child<'a>(v: &'a Value, seg: &str) -> Option<&'a Value> {
    match seg.strip_prefix("f:") {
        Some(field) => v.as_object()?.get(field),
        None => v.as_array()?.iter().find(|i| matches_segment(i, seg)),
    }
}

fn child_mut<'a>(v: &'a mut Value, seg: &str) -> Option<&'a mut Value> {
    match seg.strip_prefix("f:") {
        Some(field) => v.as_object_mut()?.get_mut(field),
        None => v
            .as_array_mut()?
            .iter_mut()
            .find(|i| matches_segment(i, seg)),
    }
}

/// The value at `path`, if `obj` has it.
pub(super) fn get<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, seg| child(v, seg))
}

fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let Some(parent) = parent.iter().try_fold(obj, |v, seg| child_mut(v, seg)) else {
        return;
    };
    match last.strip_prefix("f:") {
        Some(field) => {
            if let Some(m) = parent.as_object_mut() {
                m.remove(field);
            }
        }
        None => {
            if let Some(a) = parent.as_array_mut()
                && let Some(i) = a.iter().position(|i| matches_segment(i, last))
            {
                a.remove(i);
            }
        }
    }
}

fn is_empty_container(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

/// Removes `path`, then every object field above it left empty that nobody owns.
fn remove_and_prune(obj: &mut Value, path: &[String], owned: impl Fn(&[String]) -> bool) {
    remove(obj, path);
    for end in (1..path.len()).rev() {
        let ancestor = &path[..end];
        let field = ancestor.last().is_some_and(|s| s.starts_with("f:"));
        if !field || owned(ancestor) || !is_empty_container(get(obj, ancestor)) {
            break;
        }
        remove(obj, ancestor);
    }
}

/// Whether `path` is a key field of a list-map item that stays (another manager owns part
/// of it): the item keeps its key.
fn is_key_of_kept_item(obj: &Value, path: &[String]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let (Some(field), Some(item)) = (last.strip_prefix("f:"), parent.last()) else {
        return false;
    };
    let is_key = item
        .strip_prefix("k:")
        .and_then(|k| serde_json::from_str::<Value>(k).ok())
        .is_some_and(|k| k.get(field).is_some());
    is_key && get(obj, parent).is_some()
}

fn owns_under(set: &FieldSet, path: &Path) -> bool {
    set.range::<Path, _>((Bound::Excluded(path), Bound::Unbounded))
        .next()
        .is_some_and(|q| q.starts_with(path))
}

fn merge_value(target: &mut Value, applied: &Value, schema: Option<&Value>) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) if !atomic_map(schema) => {
            for (k, av) in a {
                let s = field_schema(schema, k);
                match t.get_mut(k) {
                    Some(tv) => merge_value(tv, av, s),
                    None => {
                        t.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(a)) => match list_type(schema) {
            ListType::Atomic => t.clone_from(a),
            ListType::Set => {
                for item in a {
                    if !t.contains(item) {
                        t.push(item.clone());
                    }
                }
            }
            ListType::Map(keys) => {
                let item_schema = items_schema(schema);
                for item in a {
                    let same = t.iter_mut().find(|x| {
                        keys.iter()
                            .all(|k| x.get(k).is_some() && x.get(k) == item.get(k))
                    });
                    match same {
                        Some(x) => merge_value(x, item, item_schema),
                        None => t.push(item.clone()),
                    }
                }
            }
        },
        (target, applied) => target.clone_from(applied),
    }
}

/// Why an apply was refused.
#[derive(Debug)]
pub(super) enum ApplyError {
    /// The body is malformed (422).
    Invalid(String),
    /// Fields other managers own with other values (409): (manager, field).
    Conflicts(Vec<(String, String)>),
}

/// What one apply request is.
pub(super) struct Applier<'a> {
    pub manager: &'a str,
    pub subresource: Option<&'a str>,
    pub scope: Scope,
    pub force: bool,
    pub schema: &'a Value,
}

impl Applier<'_> {
    fn is(&self, m: &Manager) -> bool {
        m.name == self.manager
            && m.operation == Operation::Apply
            && m.subresource.as_deref() == self.subresource
    }

    /// Server-side applies `applied` to `stored` and records who owns what in `managers`.
    pub fn apply(
        &self,
        stored: &mut Value,
        managers: &mut Vec<Manager>,
        applied: &Value,
    ) -> Result<(), ApplyError> {
        let applied = content(applied, self.scope);
        let applied_set = field_set(&applied, self.schema).map_err(ApplyError::Invalid)?;

        let mut conflicts = Vec::new();
        for (i, m) in managers.iter().enumerate() {
            if self.is(m) {
                continue;
            }
            for p in m.fields.intersection(&applied_set) {
                if !is_item(p) && get(stored, p) != get(&applied, p) {
                    conflicts.push((i, p.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !self.force {
                return Err(ApplyError::Conflicts(
                    conflicts
                        .into_iter()
                        .map(|(i, p)| (managers[i].name.clone(), display(&p)))
                        .collect(),
                ));
            }
            for (i, p) in &conflicts {
                managers[*i].fields.remove(p);
            }
        }

        let previous = managers
            .iter()
            .find(|m| self.is(m))
            .map(|m| m.fields.clone())
            .unwrap_or_default();
        let others: FieldSet = managers
            .iter()
            .filter(|m| !self.is(m))
            .flat_map(|m| m.fields.iter().cloned())
            .collect();
        let mut stale: Vec<&Path> = previous
            .difference(&applied_set)
            .filter(|p| !others.contains(*p) && !owns_under(&others, p))
            .collect();
        // Outermost first: an item goes whole, before its key fields could be missed.
        stale.sort_by_key(|p| p.len());
        for p in stale {
            if is_key_of_kept_item(stored, p) {
                continue;
            }
            remove_and_prune(stored, p, |q| {
                let q = q.to_vec();
                others.contains(&q) || applied_set.contains(&q)
            });
        }
        merge_value(stored, &applied, Some(self.schema));

        match managers.iter_mut().find(|m| self.is(m)) {
            Some(m) => m.fields = applied_set,
            None => managers.push(Manager {
                name: self.manager.to_string(),
                operation: Operation::Apply,
                subresource: self.subresource.map(str::to_string),
                fields: applied_set,
            }),
        }
        managers.retain(|m| !m.fields.is_empty());
        Ok(())
    }
}

/// Records a write that is not an apply: `manager` now owns what it changed between `old`
/// and `new` in `scope`, and nobody owns what it removed.
pub(super) fn update(
    old: &Value,
    new: &Value,
    managers: &mut Vec<Manager>,
    manager: &str,
    subresource: Option<&str>,
    scope: Scope,
    schema: &Value,
) -> Result<(), String> {
    let (old, new) = (content(old, scope), content(new, scope));
    // A stored object always parsed; should it not, its fields are simply not known.
    let old_set = field_set(&old, schema).unwrap_or_default();
    let new_set = field_set(&new, schema)?;
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| !old_set.contains(*p) || (!is_item(p) && get(&old, p) != get(&new, p)))
        .cloned()
        .collect();
    let in_scope = |p: &Path| match scope {
        Scope::Whole => true,
        Scope::Main => p.first().is_none_or(|s| s != "f:status"),
        Scope::Status => p.first().is_some_and(|s| s == "f:status"),
    };
    for m in managers.iter_mut() {
        m.fields
            .retain(|p| !in_scope(p) || (new_set.contains(p) && !changed.contains(p)));
    }
    if !changed.is_empty() {
        let is_me = |m: &Manager| {
            m.name == manager
                && m.operation == Operation::Update
                && m.subresource.as_deref() == subresource
        };
        match managers.iter_mut().find(|m| is_me(m)) {
            Some(m) => m.fields.extend(changed),
            None => managers.push(Manager {
                name: manager.to_string(),
                operation: Operation::Update,
                subresource: subresource.map(str::to_string),
                fields: changed,
            }),
        }
    }
    managers.retain(|m| !m.fields.is_empty());
    Ok(())
}

/// The `fieldsV1` tree of a field set.
fn fields_v1(set: &FieldSet) -> Value {
    let mut root = json!({});
    for p in set {
        let mut node = &mut root;
        for seg in p {
            node = &mut node[seg.as_str()];
            if node.is_null() {
                *node = json!({});
            }
        }
    }
    for p in set {
        let node = p.iter().fold(&mut root, |n, seg| &mut n[seg.as_str()]);
        if node.as_object().is_some_and(|m| !m.is_empty()) {
            node["."] = json!({});
        }
    }
    root
}

/// `metadata.managedFields` for `managers`.
pub(super) fn managed_fields(managers: &[Manager], api_version: &str, time: &str) -> Value {
    managers
        .iter()
        .map(|m| {
            let mut entry = json!({
                "manager": m.name,
                "operation": match m.operation {
                    Operation::Apply => "Apply",
                    Operation::Update => "Update",
                },
                "apiVersion": api_version,
                "time": time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(&m.fields),
            });
            if let Some(sub) = &m.subresource {
                entry["subresource"] = json!(sub);
            }
            entry
        })
        .collect()
}
