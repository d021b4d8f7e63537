//! JSON Schemas that tools declare, checked before they are compiled.
//!
//! A declared schema is guest-controlled, and a validator recurses into it:
//! a `$ref` that leads back to the schema it came from without descending
//! into the value (`{"$ref": "#", "unevaluatedProperties": false}`, or two
//! `$defs` that refer to each other) recursed without end and overflowed
//! the host's stack, which aborts the whole process. So before a schema
//! reaches the validator, [`compile`] walks every subschema reachable from
//! its root and refuses one whose subschemas form a cycle at the same value,
//! one whose same-value subschemas multiply past a bound (a `$ref`
//! diamond repeated thirty times is 2^30 checks per value), and one too
//! large or with a `$ref` it cannot follow inside the document. What
//! remains costs at most [`MAX_EXPANSION`] subschema checks per value, and
//! its recursion depth is bounded by the value's depth (serde_json's 128)
//! times [`MAX_CHAIN`].
//!
//! Patterns are compiled with the linear-time `regex` engine, so a
//! guest's pattern cannot backtrack without end either.

use serde_json::Value;
use std::collections::HashMap;

/// Most subschemas one schema may hold.
pub const MAX_NODES: usize = 10_000;
/// Most subschemas that may apply to one value (counting repeats through
/// `$ref`, `allOf` and the like).
pub const MAX_EXPANSION: u64 = 10_000;
/// Longest chain of subschemas applying to one value.
pub const MAX_CHAIN: usize = 64;

/// Why a declared schema was refused; the message says where in it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError(m.into()))
}

/// Checks `schema` as described in the module docs and compiles it.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, SchemaError> {
    check(schema)?;
    jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|e| SchemaError(format!("not a valid JSON Schema: {e}")))
}

/// Only the static check (no compilation), for tests and the fuzzer.
pub fn check(schema: &Value) -> Result<(), SchemaError> {
    let doc = Document::index(schema)?;
    let mut graph = Graph {
        doc: &doc,
        nodes: HashMap::new(),
        order: Vec::new(),
    };
    graph.explore()?;
    graph.check_cycles_and_expansion()
}

/// Where each resource (`$id`) and anchor of a document is.
struct Document<'a> {
    root: &'a Value,
    /// Resource URI (no fragment) -> JSON pointer of its root.
    resources: HashMap<String, String>,
    /// (resource URI, anchor name) -> pointer; `$anchor` and `$dynamicAnchor`.
    anchors: HashMap<(String, String), String>,
    /// `$dynamicAnchor` name -> every pointer declaring it.
    dynamic: HashMap<String, Vec<String>>,
    /// Pointers of schemas with `"$recursiveAnchor": true`.
    recursive: Vec<String>,
    /// Pointer -> the resource URI it belongs to, for objects with `$id`.
    base_of: HashMap<String, String>,
}

const ROOT_URI: &str = "json-schema:///";

/// URIs of the bundled meta-schemas: a reference to one is a leaf here
/// (they are well-formed and the validator has them built in).
fn is_meta_schema(uri: &str) -> bool {
    uri.starts_with("https://json-schema.org/") || uri.starts_with("http://json-schema.org/")
}

fn join(base: &str, reference: &str) -> Option<String> {
    let base = url::Url::parse(base).ok()?;
    let mut joined = base.join(reference).ok()?;
    joined.set_fragment(None);
    Some(joined.to_string())
}

fn escape_token(t: &str) -> String {
    t.replace('~', "~0").replace('/', "~1")
}

impl<'a> Document<'a> {
    fn index(root: &'a Value) -> Result<Document<'a>, SchemaError> {
        let mut doc = Document {
            root,
            resources: HashMap::new(),
            anchors: HashMap::new(),
            dynamic: HashMap::new(),
            recursive: Vec::new(),
            base_of: HashMap::new(),
        };
        doc.resources.insert(ROOT_URI.into(), String::new());
        doc.base_of.insert(String::new(), ROOT_URI.into());
        let mut count = 0usize;
        doc.walk(root, String::new(), ROOT_URI.to_owned(), &mut count)?;
        Ok(doc)
    }

    /// Indexes every object of the document (not only schema positions: a
    /// `$ref` may point anywhere, and over-indexing only makes the check
    /// stricter).
    fn walk(
        &mut self,
        v: &Value,
        ptr: String,
        mut base: String,
        count: &mut usize,
    ) -> Result<(), SchemaError> {
        *count += 1;
        if *count > MAX_NODES * 10 {
            return err(format!(
                "has more than {} JSON values; a declared schema may hold at most that many",
                MAX_NODES * 10
            ));
        }
        match v {
            Value::Object(map) => {
                let id = map
                    .get("$id")
                    .or_else(|| map.get("id").filter(|i| i.is_string()));
                if let Some(Value::String(id)) = id {
                    if let Some(fragment) = id.strip_prefix('#') {
                        // Old drafts: `"id": "#name"` is an anchor.
                        self.anchors
                            .insert((base.clone(), fragment.to_owned()), ptr.clone());
                    } else if let Some(uri) = join(&base, id) {
                        base = uri;
                        self.resources.insert(base.clone(), ptr.clone());
                        self.base_of.insert(ptr.clone(), base.clone());
                    }
                }
                if let Some(Value::String(a)) = map.get("$anchor") {
                    self.anchors.insert((base.clone(), a.clone()), ptr.clone());
                }
                if let Some(Value::String(a)) = map.get("$dynamicAnchor") {
                    self.anchors.insert((base.clone(), a.clone()), ptr.clone());
                    self.dynamic.entry(a.clone()).or_default().push(ptr.clone());
                }
                if map.get("$recursiveAnchor") == Some(&Value::Bool(true)) {
                    self.recursive.push(ptr.clone());
                }
                for (k, child) in map {
                    self.walk(
                        child,
                        format!("{ptr}/{}", escape_token(k)),
                        base.clone(),
                        count,
                    )?;
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    self.walk(child, format!("{ptr}/{i}"), base.clone(), count)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The resource URI `ptr` belongs to: the nearest enclosing `$id`.
    fn base(&self, ptr: &str) -> &str {
        let mut p = ptr;
        loop {
            if let Some(b) = self.base_of.get(p) {
                return b;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return ROOT_URI,
            }
        }
    }

    /// The pointers `reference` (a `$ref` at `from`) may lead to; `None`
    /// when it leads to a meta-schema.
    fn resolve(&self, from: &str, reference: &str) -> Result<Option<String>, SchemaError> {
        let base = self.base(from);
        let (resource, fragment) = match reference.split_once('#') {
            Some((r, f)) => (r, f),
            None => (reference, ""),
        };
        let uri = if resource.is_empty() {
            base.to_owned()
        } else {
            match join(base, resource) {
                Some(u) => u,
                None => {
                    return err(format!(
                        "`$ref` {reference:?} at {} is not a URI reference",
                        at(from)
                    ))
                }
            }
        };
        let Some(root) = self.resources.get(&uri) else {
            if is_meta_schema(&uri) {
                return Ok(None);
            }
            return err(format!(
                "`$ref` {reference:?} at {} leads outside the schema; only references within it \
                    are allowed",
                at(from)
            ));
        };
        let fragment = percent_decode(fragment);
        let target = if fragment.is_empty() {
            root.clone()
        } else if fragment.starts_with('/') {
            format!("{root}{fragment}")
        } else {
            match self.anchors.get(&(uri.clone(), fragment.clone())) {
                Some(p) => p.clone(),
                None => {
                    return err(format!(
                        "`$ref` {reference:?} at {} names an anchor the schema does not declare",
                        at(from)
                    ))
                }
            }
        };
        if self.root.pointer(&target).is_none() {
            return err(format!(
                "`$ref` {reference:?} at {} points at nothing",
                at(from)
            ));
        }
        Ok(Some(target))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn at(ptr: &str) -> String {
    if ptr.is_empty() {
        "the root".to_owned()
    } else {
        format!("#{ptr}")
    }
}

/// Keywords whose subschemas apply to the same value as their parent.
const SAME_ONE: &[&str] = &["not", "if", "then", "else"];
const SAME_MANY: &[&str] = &["allOf", "anyOf", "oneOf"];
const SAME_MAP: &[&str] = &["dependentSchemas", "dependencies"];
/// Keywords whose subschemas apply to parts of the value.
const DOWN_ONE: &[&str] = &[
    "items",
    "additionalItems",
    "contains",
    "additionalProperties",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
];
const DOWN_MANY: &[&str] = &["prefixItems", "items"];
const DOWN_MAP: &[&str] = &["properties", "patternProperties"];

#[derive(Default)]
struct Node {
    /// Subschemas applying to the same value.
    same: Vec<String>,
}

struct Graph<'d, 'a> {
    doc: &'d Document<'a>,
    nodes: HashMap<String, Node>,
    order: Vec<String>,
}

impl Graph<'_, '_> {
    /// Visits every subschema reachable from the root.
    fn explore(&mut self) -> Result<(), SchemaError> {
        let mut todo = vec![String::new()];
        while let Some(ptr) = todo.pop() {
            if self.nodes.contains_key(&ptr) {
                continue;
            }
            if self.nodes.len() >= MAX_NODES {
                return err(format!(
                    "has more than {MAX_NODES} subschemas; a declared schema may hold at most that \
                        many"
                ));
            }
            let (same, down) = self.edges(&ptr)?;
            todo.extend(same.iter().cloned());
            todo.extend(down);
            self.nodes.insert(ptr.clone(), Node { same });
            self.order.push(ptr);
        }
        Ok(())
    }

    fn edges(&self, ptr: &str) -> Result<(Vec<String>, Vec<String>), SchemaError> {
        let mut same = Vec::new();
        let mut down = Vec::new();
        let Some(Value::Object(map)) = self.doc.root.pointer(ptr) else {
            // `true`, `false` or not a schema: no subschemas.
            return Ok((same, down));
        };
        let child = |k: &str| format!("{ptr}/{}", escape_token(k));
        for (k, v) in map {
            let here = child(k);
            let kw = k.as_str();
            match (kw, v) {
                ("$ref" | "$dynamicRef", Value::String(r)) => {
                    if let Some(t) = self.doc.resolve(ptr, r)? {
                        same.push(t);
                    }
                    if kw == "$dynamicRef" {
                        if let Some((_, name)) = r.split_once('#') {
                            same.extend(self.doc.dynamic.get(name).into_iter().flatten().cloned());
                        }
                    }
                }
                ("$recursiveRef", Value::String(r)) => {
                    if let Some(t) = self.doc.resolve(ptr, r)? {
                        same.push(t);
                    }
                    same.extend(self.doc.recursive.iter().cloned());
                }
                _ if SAME_ONE.contains(&kw) && v.is_object() => same.push(here),
                _ if SAME_MANY.contains(&kw) => {
                    if let Value::Array(items) = v {
                        same.extend((0..items.len()).map(|i| format!("{here}/{i}")));
                    }
                }
                _ if SAME_MAP.contains(&kw) => {
                    if let Value::Object(m) = v {
                        same.extend(
                            m.iter()
                                .filter(|(_, s)| s.is_object())
                                .map(|(name, _)| format!("{here}/{}", escape_token(name))),
                        );
                    }
                }
                _ if DOWN_MANY.contains(&kw) && v.is_array() => {
                    let n = v.as_array().map_or(0, Vec::len);
                    down.extend((0..n).map(|i| format!("{here}/{i}")));
                }
                _ if DOWN_ONE.contains(&kw) && v.is_object() => down.push(here),
                _ if DOWN_MAP.contains(&kw) => {
                    if let Value::Object(m) = v {
                        down.extend(
                            m.keys()
                                .map(|name| format!("{here}/{}", escape_token(name))),
                        );
                    }
                }
                ("$defs" | "definitions", Value::Object(m)) => {
                    // Not applied by themselves, but checked: a `$ref` may
                    // reach them, and so may a later version of the tool.
                    down.extend(
                        m.keys()
                            .map(|name| format!("{here}/{}", escape_token(name))),
                    );
                }
                _ => {}
            }
        }
        Ok((same, down))
    }

    /// Refuses a cycle of same-value subschemas, a chain of them longer
    /// than [`MAX_CHAIN`], and a schema whose same-value subschemas
    /// multiply past [`MAX_EXPANSION`].
    fn check_cycles_and_expansion(&self) -> Result<(), SchemaError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done { count: u64, depth: usize },
        }
        let mut marks: HashMap<&str, Mark> = HashMap::new();
        for start in &self.order {
            if marks.contains_key(start.as_str()) {
                continue;
            }
            // Iterative depth-first search: a guest's schema must not be
            // able to overflow this walk either.
            let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
            marks.insert(start, Mark::Open);
            while let Some(&mut (ptr, ref mut next)) = stack.last_mut() {
                let node = &self.nodes[ptr];
                if let Some(child) = node.same.get(*next) {
                    *next += 1;
                    match marks.get(child.as_str()) {
                        Some(Mark::Open) => {
                            let from = stack.iter().position(|(p, _)| *p == child.as_str());
                            let mut path: Vec<String> = stack[from.unwrap_or(0)..]
                                .iter()
                                .map(|(p, _)| at(p))
                                .collect();
                            path.push(at(child));
                            return err(format!(
                                "is circular: {} apply to the same value without descending into \
                                    it, so checking a value would never end",
                                path.join(" -> ")
                            ));
                        }
                        Some(Mark::Done { .. }) => {}
                        None => {
                            if stack.len() >= MAX_CHAIN {
                                return err(format!(
                                    "chains more than {MAX_CHAIN} subschemas on one value (at {})",
                                    at(child)
                                ));
                            }
                            marks.insert(child, Mark::Open);
                            stack.push((child.as_str(), 0));
                        }
                    }
                    continue;
                }
                let (mut count, mut depth) = (1u64, 0usize);
                for c in &node.same {
                    if let Some(Mark::Done { count: n, depth: d }) = marks.get(c.as_str()) {
                        count = count.saturating_add(*n);
                        depth = depth.max(d + 1);
                    }
                }
                if count > MAX_EXPANSION {
                    return err(format!(
                        "applies more than {MAX_EXPANSION} subschemas to one value (at {}, through \
                            repeated references)",
                        at(ptr)
                    ));
                }
                if depth >= MAX_CHAIN {
                    return err(format!(
                        "chains more than {MAX_CHAIN} subschemas on one value (at {})",
                        at(ptr)
                    ));
                }
                marks.insert(ptr, Mark::Done { count, depth });
                stack.pop();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(s: Value) -> String {
        check(&s).expect_err("should be refused").0
    }

    #[test]
    fn circular_schemas_are_refused() {
        let m = refused(json!({"$ref": "#", "unevaluatedProperties": false}));
        assert!(m.contains("circular"), "{m}");
        let m = refused(json!({
            "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
            "$ref": "#/$defs/a"
        }));
        assert!(m.contains("#/$defs/a -> #/$defs/b -> #/$defs/a"), "{m}");
        // Unreferenced, but declared: still refused.
        refused(json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}}));
        refused(json!({"anyOf": [{"not": {"$ref": "#"}}]}));
        refused(json!({"$defs": {"x": {"$anchor": "x", "$ref": "#x"}}}));
        refused(json!({"$dynamicAnchor": "n", "$dynamicRef": "#n"}));
        refused(json!({"properties": {"a": {"$ref": "#/properties/a"}}}));
        refused(json!({"definitions": {"a": {"$ref": "#/definitions/a"}}}));
    }

    #[test]
    fn recursion_through_the_value_is_allowed() {
        let tree = json!({
            "$defs": {"node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
            "$ref": "#/$defs/node"
        });
        check(&tree).unwrap();
        let v = compile(&tree).unwrap();
        assert!(v.is_valid(&json!({"children": [{"children": []}]})));
        check(&json!({"type": "object", "additionalProperties": {"$ref": "#"}})).unwrap();
        check(&json!({"$id": "https://example.com/s", "$ref": "#/$defs/a",
                      "$defs": {"a": {"type": "string"}}}))
        .unwrap();
    }

    #[test]
    fn exponential_expansion_is_refused() {
        let mut defs = serde_json::Map::new();
        defs.insert("d0".into(), json!({"type": "string"}));
        for i in 1..30 {
            let prev = format!("#/$defs/d{}", i - 1);
            defs.insert(
                format!("d{i}"),
                json!({"allOf": [{"$ref": prev}, {"$ref": prev}]}),
            );
        }
        let m = refused(json!({"$defs": defs, "$ref": "#/$defs/d29"}));
        assert!(m.contains("more than"), "{m}");
    }

    #[test]
    fn references_outside_the_schema_are_refused() {
        let m = refused(json!({"$ref": "https://example.com/other.json"}));
        assert!(m.contains("outside"), "{m}");
        let m = refused(json!({"$ref": "#/$defs/missing"}));
        assert!(m.contains("points at nothing"), "{m}");
        // The built-in meta-schemas are fine.
        check(&json!({"$ref": "https://json-schema.org/draft/2020-12/schema"})).unwrap();
    }

    #[test]
    fn a_long_chain_is_refused_without_deep_recursion() {
        let mut defs = serde_json::Map::new();
        for i in 0..5000 {
            defs.insert(
                format!("d{i}"),
                json!({"$ref": format!("#/$defs/d{}", i + 1)}),
            );
        }
        defs.insert("d5000".into(), json!({}));
        let m = refused(json!({"$defs": defs}));
        assert!(m.contains("chains more than"), "{m}");
    }
}
