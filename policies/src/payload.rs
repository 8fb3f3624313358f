//! Payload schemas of vector collections: the attributes the Cedar schema declares for a
//! collection's entity type (`qdrant::<collection>`), as the types a point's JSON payload must
//! have for the derived Qdrant filters to mean what Cedar means. Qdrant matches a scalar
//! condition against any element of an array and compares numbers as floats, so a payload
//! holding `["public", "restricted"]` where the schema says `String`, or `1.5` where it says
//! `Long`, would be judged differently by Qdrant and by Cedar. Writes are therefore checked
//! here first: a declared field has its declared type, a required field is present, and an
//! undeclared field is free (policies cannot mention it).

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::filter::{Row, RowValue, Value};
use crate::load::PolicyBundle;

/// The type of one declared payload field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    Long,
    String,
    Bool,
    /// A set of scalars: a JSON array without nulls.
    Set(Box<FieldType>),
    /// A nested object (Cedar record); its attributes become dotted paths.
    Record(BTreeMap<String, Field>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub ty: FieldType,
    pub required: bool,
}

/// The declared payload of one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadSchema {
    pub fields: BTreeMap<String, Field>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("the policy schema declares no entity type {0}")]
    UnknownType(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("payload field {path}: {problem}")]
    Invalid { path: String, problem: String },
}

impl PayloadSchema {
    /// The schema of `resource_type` (e.g. `qdrant::docs`) in `bundle`. Attribute types a
    /// payload cannot hold exactly (entities, decimals, datetimes, IP addresses) are refused,
    /// so that every policy on the collection translates.
    pub fn of(bundle: &PolicyBundle, resource_type: &str) -> Result<PayloadSchema, PayloadError> {
        let (namespace, name) = resource_type
            .rsplit_once("::")
            .unwrap_or(("", resource_type));
        for file in bundle
            .files
            .iter()
            .filter(|f| f.kind == crate::source::SourceKind::Schema)
        {
            let Ok((fragment, _)) = cedar_policy::SchemaFragment::from_cedarschema_str(&file.text)
            else {
                continue;
            };
            let Ok(json) = fragment.to_json_value() else {
                continue;
            };
            let Some(ns) = json.get(namespace) else {
                continue;
            };
            let Some(entity) = ns.pointer(&format!("/entityTypes/{name}")) else {
                continue;
            };
            let common = ns.get("commonTypes");
            let fields = match entity.pointer("/shape/attributes") {
                None => BTreeMap::new(),
                Some(attrs) => record(attrs, common, resource_type)?,
            };
            return Ok(PayloadSchema { fields });
        }
        Err(PayloadError::UnknownType(resource_type.to_string()))
    }

    /// Checks `payload` (a JSON object) and returns it as a [`Row`] (dotted paths for nested
    /// fields), the shape [`crate::Filter::eval`] reads.
    pub fn check(&self, payload: &Json) -> Result<Row, PayloadError> {
        let Json::Object(map) = payload else {
            return Err(invalid("", "a payload must be a JSON object"));
        };
        let mut row = Row::new();
        check_record(&self.fields, map, "", &mut row)?;
        Ok(row)
    }

    /// The row of a stored payload, for deciding per point (masks, vectors). Values of the
    /// wrong type are left out (a missing value never satisfies a filter).
    pub fn row(&self, payload: &serde_json::Map<String, Json>) -> Row {
        let mut row = Row::new();
        lenient_record(&self.fields, payload, "", &mut row);
        row
    }

    /// The dotted paths of every declared scalar or set field, sorted.
    pub fn leaf_paths(&self) -> Vec<String> {
        fn walk(fields: &BTreeMap<String, Field>, prefix: &str, out: &mut Vec<String>) {
            for (name, field) in fields {
                let path = join(prefix, name);
                match &field.ty {
                    FieldType::Record(inner) => walk(inner, &path, out),
                    _ => out.push(path),
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.fields, "", &mut out);
        out
    }

    /// Checks the declared fields `payload` holds (a partial payload, as `set_payload`
    /// sends), leaving absent ones alone.
    pub fn check_present(&self, payload: &Json) -> Result<(), PayloadError> {
        let Json::Object(map) = payload else {
            return Err(invalid("", "a payload must be a JSON object"));
        };
        let present: BTreeMap<String, Field> = self
            .fields
            .iter()
            .filter(|(name, _)| map.contains_key(*name))
            .map(|(name, field)| (name.clone(), field.clone()))
            .collect();
        check_record(&present, map, "", &mut Row::new())
    }

    /// The declared field at a dotted path.
    pub fn field(&self, path: &str) -> Option<&Field> {
        let mut fields = &self.fields;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let field = fields.get(part)?;
            if parts.peek().is_none() {
                return Some(field);
            }
            match &field.ty {
                FieldType::Record(inner) => fields = inner,
                _ => return None,
            }
        }
        None
    }
}

fn invalid(path: &str, problem: impl Into<String>) -> PayloadError {
    PayloadError::Invalid {
        path: path.to_string(),
        problem: problem.into(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn record(
    attrs: &Json,
    common: Option<&Json>,
    owner: &str,
) -> Result<BTreeMap<String, Field>, PayloadError> {
    let Json::Object(attrs) = attrs else {
        return Err(PayloadError::Unsupported(format!(
            "{owner}: attributes are not a record"
        )));
    };
    let mut out = BTreeMap::new();
    for (name, spec) in attrs {
        if name.contains('.') || name.is_empty() {
            return Err(PayloadError::Unsupported(format!(
                "{owner}: attribute {name:?} cannot be a payload path"
            )));
        }
        let ty = field_type(spec, common, &join(owner, name), 0)?;
        let required = spec.get("required").and_then(Json::as_bool).unwrap_or(true);
        out.insert(name.clone(), Field { ty, required });
    }
    Ok(out)
}

fn field_type(
    spec: &Json,
    common: Option<&Json>,
    path: &str,
    depth: usize,
) -> Result<FieldType, PayloadError> {
    let unsupported = |what: &str| {
        PayloadError::Unsupported(format!(
            "{path}: a vector payload field cannot have type {what}"
        ))
    };
    if depth > 16 {
        return Err(unsupported("nested this deep"));
    }
    let kind = spec.get("type").and_then(Json::as_str).unwrap_or("");
    let name = spec.get("name").and_then(Json::as_str).unwrap_or("");
    let named = |n: &str| -> Result<FieldType, PayloadError> {
        match n.trim_start_matches("__cedar::") {
            "Long" => Ok(FieldType::Long),
            "String" => Ok(FieldType::String),
            "Bool" | "Boolean" => Ok(FieldType::Bool),
            other => match common.and_then(|c| c.get(other.rsplit("::").next().unwrap_or(other))) {
                Some(def) => field_type(def, common, path, depth + 1),
                None => Err(unsupported(other)),
            },
        }
    };
    match kind {
        "Long" | "String" | "Boolean" | "Bool" => named(kind),
        "EntityOrCommon" => named(name),
        "Set" => {
            let element = spec
                .get("element")
                .ok_or_else(|| unsupported("Set without an element type"))?;
            match field_type(element, common, path, depth + 1)? {
                scalar @ (FieldType::Long | FieldType::String | FieldType::Bool) => {
                    Ok(FieldType::Set(Box::new(scalar)))
                }
                _ => Err(unsupported("a set of sets or records")),
            }
        }
        "Record" => {
            let attrs = spec.get("attributes").cloned().unwrap_or(Json::Null);
            Ok(FieldType::Record(record(&attrs, common, path)?))
        }
        other => Err(unsupported(if other.is_empty() { name } else { other })),
    }
}

fn scalar(ty: &FieldType, value: &Json) -> Option<Value> {
    match (ty, value) {
        (FieldType::Long, Json::Number(n)) => n.as_i64().map(Value::Long),
        (FieldType::String, Json::String(s)) => Some(Value::String(s.clone())),
        (FieldType::Bool, Json::Bool(b)) => Some(Value::Bool(*b)),
        _ => None,
    }
}

fn type_name(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::Long => "an integer (Long)",
        FieldType::String => "a string",
        FieldType::Bool => "a boolean",
        FieldType::Set(_) => "a list (Set)",
        FieldType::Record(_) => "an object (record)",
    }
}

fn check_record(
    fields: &BTreeMap<String, Field>,
    map: &serde_json::Map<String, Json>,
    prefix: &str,
    row: &mut Row,
) -> Result<(), PayloadError> {
    for (name, field) in fields {
        let path = join(prefix, name);
        let value = match map.get(name) {
            None if field.required => return Err(invalid(&path, "is required by the schema")),
            None => continue,
            Some(Json::Null) => {
                return Err(invalid(
                    &path,
                    "is null; leave an optional field out instead",
                ))
            }
            Some(v) => v,
        };
        let wrong = || {
            invalid(
                &path,
                format!("must be {}, not {value}", type_name(&field.ty)),
            )
        };
        match &field.ty {
            FieldType::Record(inner) => {
                let Json::Object(inner_map) = value else {
                    return Err(wrong());
                };
                check_record(inner, inner_map, &path, row)?;
            }
            FieldType::Set(element) => {
                let Json::Array(items) = value else {
                    return Err(wrong());
                };
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    values.push(scalar(element, item).ok_or_else(|| {
                        invalid(
                            &path,
                            format!("every element must be {}, not {item}", type_name(element)),
                        )
                    })?);
                }
                row.insert(path, RowValue::Set(values));
            }
            ty => {
                let value = scalar(ty, value).ok_or_else(wrong)?;
                row.insert(path, RowValue::Scalar(value));
            }
        }
    }
    Ok(())
}

fn lenient_record(
    fields: &BTreeMap<String, Field>,
    map: &serde_json::Map<String, Json>,
    prefix: &str,
    row: &mut Row,
) {
    for (name, field) in fields {
        let path = join(prefix, name);
        match (&field.ty, map.get(name)) {
            (FieldType::Record(inner), Some(Json::Object(m))) => {
                lenient_record(inner, m, &path, row)
            }
            (FieldType::Set(element), Some(Json::Array(items))) => {
                if let Some(values) = items.iter().map(|i| scalar(element, i)).collect() {
                    row.insert(path, RowValue::Set(values));
                }
            }
            (ty, Some(v)) => {
                if let Some(s) = scalar(ty, v) {
                    row.insert(path, RowValue::Scalar(s));
                }
            }
            (_, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{SourceFile, SourceKind};
    use serde_json::json;

    fn bundle(schema: &str) -> PolicyBundle {
        let file = |name: &str, kind, text: &str| SourceFile {
            name: name.into(),
            kind,
            text: text.into(),
        };
        crate::load_sources(vec![
            file("s.cedarschema", SourceKind::Schema, schema),
            file(
                "p.cedar",
                SourceKind::Policies,
                "@id(\"p\") permit (principal, action, resource);",
            ),
            file("entities.json", SourceKind::Entities, "[]"),
        ])
        .unwrap()
    }

    const SCHEMA: &str = "entity Agent;\n\
        namespace qdrant { type Meta = { tenant: Long, tags?: Set<String> };\n\
          entity docs { title: String, public: Bool, metadata: Meta, note?: String }; }\n\
        action search appliesTo { principal: [Agent], resource: [qdrant::docs] };\n";

    #[test]
    fn declared_fields_have_their_types_and_required_ones_are_present() {
        let s = PayloadSchema::of(&bundle(SCHEMA), "qdrant::docs").unwrap();
        let good = json!({"title": "t", "public": true, "metadata": {"tenant": 1, "tags": ["a"]}, "page_content": "free"});
        let row = s.check(&good).unwrap();
        assert_eq!(row["metadata.tenant"], RowValue::Scalar(Value::Long(1)));
        assert_eq!(
            row["metadata.tags"],
            RowValue::Set(vec![Value::String("a".into())])
        );
        for (bad, path) in [
            (
                json!({"title": ["t"], "public": true, "metadata": {"tenant": 1}}),
                "title",
            ),
            (
                json!({"title": "t", "public": true, "metadata": {"tenant": 1.5}}),
                "metadata.tenant",
            ),
            (
                json!({"title": "t", "public": true, "metadata": {"tenant": 1, "tags": ["a", null]}}),
                "metadata.tags",
            ),
            (
                json!({"title": "t", "public": true, "metadata": {"tenant": 1, "tags": "a"}}),
                "metadata.tags",
            ),
            (json!({"title": "t", "public": true}), "metadata"),
            (
                json!({"title": "t", "public": true, "metadata": {"tenant": 1}, "note": null}),
                "note",
            ),
            (
                json!({"title": "t", "public": "yes", "metadata": {"tenant": 1}}),
                "public",
            ),
        ] {
            match s.check(&bad) {
                Err(PayloadError::Invalid { path: p, .. }) => assert_eq!(p, path, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(s.field("metadata.tags").is_some_and(|f| !f.required));
    }

    #[test]
    fn types_a_payload_cannot_hold_exactly_are_refused() {
        let b = bundle(
            "entity Agent;\nnamespace qdrant { entity docs { owner: Agent }; entity d2 { price: decimal }; }\n\
             action search appliesTo { principal: [Agent], resource: [qdrant::docs, qdrant::d2] };\n",
        );
        assert!(matches!(
            PayloadSchema::of(&b, "qdrant::docs"),
            Err(PayloadError::Unsupported(_))
        ));
        assert!(matches!(
            PayloadSchema::of(&b, "qdrant::d2"),
            Err(PayloadError::Unsupported(_))
        ));
        assert!(matches!(
            PayloadSchema::of(&b, "qdrant::nope"),
            Err(PayloadError::UnknownType(_))
        ));
    }
}
