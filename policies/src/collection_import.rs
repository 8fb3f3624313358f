//! Cedar schema text for vector collections (`portcullis schema import --qdrant`): one entity
//! type per collection (`qdrant::<collection>`), its attributes inferred from the collection's
//! payload indexes and a sample of its points, and the vector actions over all of them.
//!
//! Inference, per payload field (nested objects become records): integers → `Long`, strings →
//! `String`, booleans → `Bool`, lists of one of those → `Set<…>`; a field present in every
//! sampled point (of its parent object) is required, else optional. Indexed fields not seen in
//! the sample are optional, typed by their index (`keyword`, `text`, `uuid` → `String`,
//! `integer` → `Long`, `bool` → `Bool`). Floats, nulls, mixed types, lists of objects, and keys
//! that are not plain names have no exact Cedar equivalent a Qdrant filter can express: the
//! field is left out, with a comment naming it, so no policy can depend on it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value as Json;

/// What was read of one collection.
#[derive(Debug, Clone, Default)]
pub struct CollectionSample {
    pub name: String,
    /// `payload_schema` of the collection info: path → index description (`data_type`).
    pub indexes: BTreeMap<String, Json>,
    /// Sampled payloads.
    pub payloads: Vec<Json>,
}

#[derive(Debug, Clone, PartialEq)]
enum Inferred {
    Long,
    String,
    Bool,
    Set(Option<Box<Inferred>>),
    Record(Record),
    Unrepresentable(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Record {
    fields: BTreeMap<String, Slot>,
    /// Objects this record was inferred from.
    count: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct Slot {
    ty: Inferred,
    seen: usize,
}

fn infer(v: &Json) -> Option<Inferred> {
    Some(match v {
        Json::Null => return None,
        Json::Bool(_) => Inferred::Bool,
        Json::Number(n) if n.is_i64() => Inferred::Long,
        Json::Number(_) => {
            Inferred::Unrepresentable("a number that is not a 64-bit integer".into())
        }
        Json::String(_) => Inferred::String,
        Json::Array(items) => {
            let mut element: Option<Inferred> = None;
            for item in items {
                let t = match infer(item) {
                    Some(t @ (Inferred::Long | Inferred::String | Inferred::Bool)) => t,
                    _ => {
                        return Some(Inferred::Unrepresentable(
                            "a list of nulls, objects, lists or floats".into(),
                        ))
                    }
                };
                match &element {
                    Some(e) if *e != t => {
                        return Some(Inferred::Unrepresentable("a list of mixed types".into()))
                    }
                    _ => element = Some(t),
                }
            }
            Inferred::Set(element.map(Box::new))
        }
        Json::Object(map) => Inferred::Record(record_of(map)),
    })
}

fn record_of(map: &serde_json::Map<String, Json>) -> Record {
    let mut r = Record {
        fields: BTreeMap::new(),
        count: 1,
    };
    for (k, v) in map {
        if let Some(ty) = infer(v) {
            r.fields.insert(k.clone(), Slot { ty, seen: 1 });
        }
    }
    r
}

fn merge(a: Inferred, b: Inferred) -> Inferred {
    match (a, b) {
        (Inferred::Unrepresentable(why), _) | (_, Inferred::Unrepresentable(why)) => {
            Inferred::Unrepresentable(why)
        }
        (Inferred::Set(None), Inferred::Set(x)) | (Inferred::Set(x), Inferred::Set(None)) => {
            Inferred::Set(x)
        }
        (Inferred::Record(a), Inferred::Record(b)) => Inferred::Record(merge_records(a, b)),
        (a, b) if a == b => a,
        _ => Inferred::Unrepresentable("values of different types".into()),
    }
}

fn merge_records(mut a: Record, b: Record) -> Record {
    a.count += b.count;
    for (k, slot) in b.fields {
        match a.fields.remove(&k) {
            Some(mine) => {
                a.fields.insert(
                    k,
                    Slot {
                        ty: merge(mine.ty, slot.ty),
                        seen: mine.seen + slot.seen,
                    },
                );
            }
            None => {
                a.fields.insert(k, slot);
            }
        }
    }
    a
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A key Qdrant reads as a plain path step (what the shim's filters and projections accept).
fn is_payload_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

fn index_type(index: &Json) -> Result<Inferred, String> {
    let data_type = index
        .get("data_type")
        .and_then(Json::as_str)
        .unwrap_or("unknown");
    match data_type {
        "keyword" | "text" | "uuid" => Ok(Inferred::String),
        "integer" => Ok(Inferred::Long),
        "bool" => Ok(Inferred::Bool),
        other => Err(format!("its index type is {other}")),
    }
}

fn render_type(
    ty: &Inferred,
    indent: usize,
    out: &mut String,
    path: &str,
    skipped: &mut Vec<String>,
) {
    match ty {
        Inferred::Long => out.push_str("Long"),
        Inferred::String => out.push_str("String"),
        Inferred::Bool => out.push_str("Bool"),
        Inferred::Set(Some(e)) => {
            out.push_str("Set<");
            render_type(e, indent, out, path, skipped);
            out.push('>');
        }
        Inferred::Set(None) => out.push_str("Set<String>"),
        Inferred::Record(r) => {
            out.push_str("{\n");
            render_fields(r, indent + 2, out, path, skipped);
            let _ = write!(out, "{}}}", " ".repeat(indent));
        }
        Inferred::Unrepresentable(_) => unreachable!("filtered out before rendering"),
    }
}

fn render_fields(
    r: &Record,
    indent: usize,
    out: &mut String,
    prefix: &str,
    skipped: &mut Vec<String>,
) {
    let pad = " ".repeat(indent);
    for (name, slot) in &r.fields {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if !is_payload_key(name) {
            skipped.push(format!("{path}: the key is not a plain name"));
            continue;
        }
        if let Inferred::Unrepresentable(why) = &slot.ty {
            skipped.push(format!("{path}: {why}"));
            continue;
        }
        let key = if is_identifier(name) {
            name.clone()
        } else {
            Json::String(name.clone()).to_string()
        };
        let optional = if slot.seen < r.count { "?" } else { "" };
        let _ = write!(out, "{pad}{key}{optional}: ");
        render_type(&slot.ty, indent, out, &path, skipped);
        out.push_str(",\n");
    }
}

/// The schema text for `collections`.
pub fn render(collections: &[CollectionSample]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = collections.iter().map(|c| c.name.as_str()).collect();
    let _ = writeln!(
        out,
        "// Generated by `portcullis schema import --qdrant` from collection(s) {}.\n\
         // Payload fields are attributes (nested objects records), inferred from payload indexes\n\
         // and sampled points; the principal types (Agent, User) are declared in a fragment of\n\
         // your own. If the set also declares SQL actions, declare `delete` once for both.\n",
        names.join(", ")
    );
    out.push_str("namespace qdrant {\n");
    let mut types = Vec::new();
    for c in collections {
        if !is_identifier(&c.name) {
            let _ = writeln!(
                out,
                "  // collection {:?} left out: its name is not a Cedar identifier\n",
                c.name
            );
            continue;
        }
        let mut record = Record::default();
        for p in &c.payloads {
            if let Json::Object(map) = p {
                record = merge_records(record, record_of(map));
            }
        }
        let mut skipped = Vec::new();
        for (path, index) in &c.indexes {
            let parts: Vec<&str> = path.split('.').collect();
            let ty = match index_type(index) {
                Ok(t) => t,
                Err(why) => {
                    if !record_has(&record, &parts) {
                        skipped.push(format!("{path}: {why}"));
                    }
                    continue;
                }
            };
            add_indexed(&mut record, &parts, ty);
        }
        let _ = writeln!(out, "  // {} sampled point(s).", c.payloads.len());
        let _ = writeln!(out, "  entity {} {{", c.name);
        let mut body = String::new();
        render_fields(&record, 4, &mut body, "", &mut skipped);
        out.push_str(&body);
        out.push_str("  };\n");
        for s in &skipped {
            let _ = writeln!(out, "  // left out: {s}");
        }
        out.push('\n');
        types.push(format!("qdrant::{}", c.name));
    }
    out.push_str("}\n\n");
    if !types.is_empty() {
        let resources = types.join(", ");
        let _ = writeln!(
            out,
            "// Every read (search), writes, collection management, and payload fields.\n\
             action search, upsert, delete, manage_collection appliesTo {{\n  \
             principal: [Agent],\n  resource: [{resources}],\n  context: {{ on_behalf_of?: User }},\n}};\n\n\
             action read_field appliesTo {{\n  principal: [Agent],\n  resource: [{resources}],\n  \
             context: {{ field: String, on_behalf_of?: User }},\n}};"
        );
    }
    out
}

fn record_has(r: &Record, parts: &[&str]) -> bool {
    match parts {
        [] => true,
        [first, rest @ ..] => match r.fields.get(*first) {
            Some(Slot {
                ty: Inferred::Record(inner),
                ..
            }) => record_has(inner, rest),
            Some(_) => rest.is_empty(),
            None => false,
        },
    }
}

/// An indexed field: its index type where the sample did not show it (then optional).
fn add_indexed(r: &mut Record, parts: &[&str], ty: Inferred) {
    match parts {
        [] => {}
        [last] => {
            r.fields
                .entry(last.to_string())
                .or_insert(Slot { ty, seen: 0 });
        }
        [first, rest @ ..] => {
            let slot = r.fields.entry(first.to_string()).or_insert(Slot {
                ty: Inferred::Record(Record::default()),
                seen: 0,
            });
            if let Inferred::Record(inner) = &mut slot.ty {
                add_indexed(inner, rest, ty);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_inferred_from_samples_and_indexes() {
        let text = render(&[CollectionSample {
            name: "kb".into(),
            indexes: [
                (
                    "metadata.tenant".to_string(),
                    json!({"data_type": "integer"}),
                ),
                ("rank".to_string(), json!({"data_type": "float"})),
                ("lang".to_string(), json!({"data_type": "keyword"})),
            ]
            .into(),
            payloads: vec![
                json!({"page_content": "a", "metadata": {"tenant": 1, "tags": ["x"], "score": 0.5}, "flag": true}),
                json!({"page_content": "b", "metadata": {"tenant": 2, "tags": []}, "odd": [1, "x"], "bad.key": 1}),
            ],
        }]);
        for line in [
            "entity kb {",
            "page_content: String,",
            "flag?: Bool,",
            "lang?: String,",
            "tenant: Long,",
            "tags: Set<String>,",
            "// left out: metadata.score: a number that is not a 64-bit integer",
            "// left out: odd: a list of mixed types",
            "// left out: rank: its index type is float",
            "// left out: bad.key: the key is not a plain name",
            "resource: [qdrant::kb],",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
