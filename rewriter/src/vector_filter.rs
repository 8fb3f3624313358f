//! The Filter IR as a Qdrant filter (REST JSON), with the IR's meaning kept exactly: a point is
//! admitted only where the IR evaluates to true, and an absent (or null) payload field is the
//! IR's NULL, so neither a condition nor its negation admits it.
//!
//! Qdrant's own `must_not` admits points whose field is missing, which is not the IR's NOT.
//! Negations are therefore pushed down to the leaves (De Morgan holds in three-valued logic),
//! and each negated leaf also requires its field to be present. Presence is "not `is_empty`":
//! in payloads an empty array counts as absent. What Qdrant's filter language cannot say
//! (`like` with wildcards, decimals, datetimes) is untranslatable, and the caller denies.

use policies::{CmpOp, Filter, Pattern, Value as IrValue};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VectorFilterError {
    #[error("{0} has no Qdrant filter equivalent")]
    Untranslatable(String),
}

/// The Qdrant filter admitting exactly the points `filter` admits.
pub fn qdrant_filter(filter: &Filter) -> Result<Value, VectorFilterError> {
    translate(filter, false)
}

fn all() -> Value {
    json!({ "must": [] })
}

fn none() -> Value {
    json!({ "must_not": [all()] })
}

/// All of `parts`. A part that is itself only a `must` is spliced in (conjunction is
/// associative), so the engine checks one flat list: nested filters cost it a recursion per
/// candidate point (about 5% of a filtered search in `bench/vector.sh`).
fn must(parts: Vec<Value>) -> Value {
    let mut flat = Vec::with_capacity(parts.len());
    for part in parts {
        match only_must(part) {
            Ok(inner) => flat.extend(inner),
            Err(part) => flat.push(part),
        }
    }
    json!({ "must": flat })
}

/// The list of a filter that has a `must` list and nothing else, or the filter unchanged.
pub(crate) fn only_must(filter: Value) -> Result<Vec<Value>, Value> {
    match filter {
        Value::Object(mut map)
            if map.len() == 1 && map.get("must").is_some_and(Value::is_array) =>
        {
            match map.remove("must") {
                Some(Value::Array(list)) => Ok(list),
                _ => unreachable!("checked above"),
            }
        }
        other => Err(other),
    }
}

fn should(parts: Vec<Value>) -> Value {
    if parts.is_empty() {
        return none();
    }
    json!({ "should": parts })
}

fn present(attr: &str) -> Result<Value, VectorFilterError> {
    Ok(json!({ "must_not": [{ "is_empty": { "key": key(attr)? } }] }))
}

fn absent(attr: &str) -> Result<Value, VectorFilterError> {
    Ok(json!({ "is_empty": { "key": key(attr)? } }))
}

fn scalar(value: &IrValue) -> Result<Value, VectorFilterError> {
    match value {
        IrValue::Bool(b) => Ok(json!(b)),
        IrValue::Long(n) => Ok(json!(n)),
        IrValue::String(s) => Ok(json!(s)),
        IrValue::Decimal(_) => Err(VectorFilterError::Untranslatable("a decimal".into())),
        IrValue::Datetime(_) => Err(VectorFilterError::Untranslatable("a datetime".into())),
    }
}

/// A payload key: dotted segments that are plain identifiers, so that Qdrant's path syntax
/// (`a.b`, `a[]`, `"quoted"`) reads it as the policy meant.
fn key(attr: &str) -> Result<&str, VectorFilterError> {
    let plain = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if attr.split('.').all(plain) {
        Ok(attr)
    } else {
        Err(VectorFilterError::Untranslatable(format!(
            "the payload field name {attr:?}"
        )))
    }
}

/// The field equals (or, for an array, holds) `value`.
fn matches(attr: &str, value: &IrValue) -> Result<Value, VectorFilterError> {
    let attr = key(attr)?;
    Ok(json!({ "key": attr, "match": { "value": scalar(value)? } }))
}

/// The field equals (or holds) one of `values`.
fn matches_any(attr: &str, values: &[IrValue]) -> Result<Value, VectorFilterError> {
    let parts: Vec<Value> = values
        .iter()
        .map(|v| matches(attr, v))
        .collect::<Result<_, _>>()?;
    Ok(should(parts))
}

fn range(attr: &str, op: CmpOp, value: &IrValue) -> Result<Value, VectorFilterError> {
    let IrValue::Long(n) = value else {
        return Err(VectorFilterError::Untranslatable(format!(
            "an ordering comparison with {value:?}"
        )));
    };
    let bound = match op {
        CmpOp::Lt => "lt",
        CmpOp::LtEq => "lte",
        CmpOp::Gt => "gt",
        CmpOp::GtEq => "gte",
        CmpOp::Eq | CmpOp::NotEq => unreachable!("equality is a match"),
    };
    // Qdrant compares ranges as f64: beyond 2^53 a bound would be rounded.
    if n.unsigned_abs() > 1 << 53 {
        return Err(VectorFilterError::Untranslatable(format!(
            "a range bound beyond 2^53 ({n})"
        )));
    }
    Ok(json!({ "key": key(attr)?, "range": { bound: n } }))
}

/// A `like` pattern without wildcards is an equality; with them, Qdrant has no equivalent.
fn literal(pattern: &[Pattern]) -> Option<String> {
    pattern
        .iter()
        .map(|p| match p {
            Pattern::Char(c) => Some(*c),
            Pattern::Wildcard => None,
        })
        .collect()
}

/// `filter`, or its negation when `negated`, as a Qdrant filter.
fn translate(filter: &Filter, negated: bool) -> Result<Value, VectorFilterError> {
    Ok(match (filter, negated) {
        (Filter::True, false) | (Filter::False, true) => all(),
        (Filter::False, false) | (Filter::True, true) => none(),
        (Filter::Not(inner), _) => translate(inner, !negated)?,
        (Filter::And(parts), false) | (Filter::Or(parts), true) => must(
            parts
                .iter()
                .map(|p| translate(p, negated))
                .collect::<Result<_, _>>()?,
        ),
        (Filter::Or(parts), false) | (Filter::And(parts), true) => should(
            parts
                .iter()
                .map(|p| translate(p, negated))
                .collect::<Result<_, _>>()?,
        ),
        (Filter::Compare { attr, op, value }, _) => {
            let op = if negated { op.negated() } else { *op };
            match op {
                CmpOp::Eq => must(vec![matches(attr, value)?]),
                CmpOp::NotEq => json!({
                    "must": [present(attr)?],
                    "must_not": [matches(attr, value)?],
                }),
                _ => must(vec![range(attr, op, value)?]),
            }
        }
        (Filter::InSet { attr, values }, false) => matches_any(attr, values)?,
        (Filter::InSet { attr, values }, true) => json!({
            "must": [present(attr)?],
            "must_not": [matches_any(attr, values)?],
        }),
        (Filter::Present(attr), false) => present(attr)?,
        (Filter::Present(attr), true) => must(vec![absent(attr)?]),
        (Filter::SetContains { attr, value }, false) => must(vec![matches(attr, value)?]),
        (Filter::SetContains { attr, value }, true) => json!({
            "must": [present(attr)?],
            "must_not": [matches(attr, value)?],
        }),
        (Filter::SetContainsAny { attr, values }, false) => matches_any(attr, values)?,
        (Filter::SetContainsAny { attr, values }, true) => json!({
            "must": [present(attr)?],
            "must_not": [matches_any(attr, values)?],
        }),
        (Filter::SetContainsAll { attr, values }, false) => must(
            std::iter::once(present(attr))
                .chain(values.iter().map(|v| matches(attr, v)))
                .collect::<Result<_, _>>()?,
        ),
        (Filter::SetContainsAll { attr, values }, true) => must(vec![
            present(attr)?,
            should(
                values
                    .iter()
                    .map(|v| Ok(json!({ "must_not": [matches(attr, v)?] })))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        ]),
        (Filter::Like { attr, pattern }, _) => {
            let Some(text) = literal(pattern) else {
                return Err(VectorFilterError::Untranslatable(format!(
                    "a `like` pattern with wildcards on {attr}"
                )));
            };
            let op = if negated { CmpOp::NotEq } else { CmpOp::Eq };
            translate(
                &Filter::Compare {
                    attr: attr.clone(),
                    op,
                    value: IrValue::String(text),
                },
                false,
            )?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negation_requires_the_field() {
        let f = Filter::Not(Box::new(Filter::Compare {
            attr: "metadata.tenant".into(),
            op: CmpOp::Eq,
            value: IrValue::String("a".into()),
        }));
        assert_eq!(
            qdrant_filter(&f).unwrap(),
            json!({
                "must": [{"must_not": [{"is_empty": {"key": "metadata.tenant"}}]}],
                "must_not": [{"key": "metadata.tenant", "match": {"value": "a"}}],
            })
        );
    }

    #[test]
    fn only_plain_field_paths_are_keys() {
        let eq = |attr: &str| Filter::Compare {
            attr: attr.into(),
            op: CmpOp::Eq,
            value: IrValue::Long(1),
        };
        assert!(qdrant_filter(&eq("metadata.tenant_id")).is_ok());
        for attr in ["a b", "a[]", "\"a\"", "a..b", "", "1a"] {
            assert!(qdrant_filter(&eq(attr)).is_err(), "{attr}");
        }
    }

    #[test]
    fn what_qdrant_cannot_say_is_refused() {
        let like = Filter::Like {
            attr: "title".into(),
            pattern: vec![Pattern::Char('a'), Pattern::Wildcard],
        };
        assert!(qdrant_filter(&like).is_err());
        let decimal = Filter::Compare {
            attr: "price".into(),
            op: CmpOp::Lt,
            value: IrValue::Decimal(10_000),
        };
        assert!(qdrant_filter(&decimal).is_err());
        // SetContainsAll of nothing holds for any set present, and for no absent one.
        let empty = Filter::SetContainsAll {
            attr: "tags".into(),
            values: vec![],
        };
        assert_eq!(
            qdrant_filter(&empty).unwrap(),
            json!({"must": [{"must_not": [{"is_empty": {"key": "tags"}}]}]})
        );
    }

    #[test]
    fn conjunctions_are_one_flat_list() {
        let eq = |attr: &str, n: i64| Filter::Compare {
            attr: attr.into(),
            op: CmpOp::Eq,
            value: IrValue::Long(n),
        };
        let f = Filter::And(vec![
            eq("a", 1),
            Filter::And(vec![eq("b", 2), Filter::True, eq("c", 3)]),
            Filter::Or(vec![eq("d", 4), eq("e", 5)]),
        ]);
        let m = |k: &str, n: i64| json!({ "key": k, "match": { "value": n } });
        assert_eq!(
            qdrant_filter(&f).unwrap(),
            json!({ "must": [
                m("a", 1),
                m("b", 2),
                m("c", 3),
                { "should": [{ "must": [m("d", 4)] }, { "must": [m("e", 5)] }] },
            ] })
        );
    }
}
