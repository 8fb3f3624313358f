//! Filter derivation: with the principal, action and context known and the resource unknown,
//! Cedar's type-aware partial evaluation leaves residual policies; their conditions become a
//! [`Filter`]. Permits are ORed, forbids ANDed in negated.
//!
//! Soundness over convenience: a row passes the filter only if Cedar would allow it.
//! - A permit the translator does not understand grants nothing (it is dropped, and reported).
//! - A forbid it does not understand forbids everything (the filter is `False`, and reported).
//! - A residual error node (a subexpression Cedar knows would fail) inside a forbid is replaced
//!   by `True`: wherever Cedar's forbid is true it never evaluated that node, so the filter
//!   still excludes that row; inside a permit it drops the permit (an error never permits).
//! - Missing optional attributes are SQL NULL; strict validation makes policies guard them with
//!   `has`, which becomes `IS NOT NULL`, and NULL never satisfies a filter.

use cedar_policy::pst::{BinaryOp, Clause, Expr, Literal, PatternElem, UnaryOp, Var};
use cedar_policy::{
    Context, Effect, EntityTypeName, EntityUid, PartialEntities, PartialEntityUid, PartialRequest,
};

use crate::filter::{CmpOp, Filter, Pattern, Value};
use crate::load::PolicyBundle;

/// The filter for one (principal, action, table) and the policies behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub filter: Filter,
    /// Policies whose residual contributed (ids), for the audit record.
    pub determining: Vec<String>,
    /// Policies that could not be translated: (id, what was done about it).
    pub untranslated: Vec<(String, String)>,
    /// The filter's conjuncts, each with the reason a row failing it is refused (which
    /// policies decided it), so that a refused write names the policy that refused it.
    /// `filter` is their conjunction.
    pub checks: Vec<Check>,
}

/// One conjunct of a derived filter and why a row that fails it is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub ok: Filter,
    /// E.g. `policy no-agent-priority-one forbids it`.
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error("invalid request for derivation: {0}")]
    Request(String),
    #[error("partial evaluation failed: {0}")]
    Evaluation(String),
}

/// Derives the row filter for `principal` doing `action` (e.g. `"select"`) on `resource_type`
/// (e.g. `"public::tickets"`) with `context`.
pub fn derive(
    bundle: &PolicyBundle,
    principal: &EntityUid,
    action: &str,
    resource_type: &str,
    context: Context,
) -> Result<Derived, DeriveError> {
    let parts = residuals(bundle, principal, action, resource_type, context)?;
    let mut determining = Vec::new();
    let mut permits = Vec::new();
    for (id, f) in parts.permits {
        determining.push(id);
        permits.push(f);
    }
    let permitted = Filter::or(permits);
    let mut checks = vec![Check {
        reason: if determining.is_empty() {
            "no policy permits it".into()
        } else {
            format!(
                "no permitting policy holds for it (policies: {})",
                determining.join(", ")
            )
        },
        ok: permitted.clone(),
    }];
    let mut filters = vec![permitted];
    for (id, f) in parts.forbids {
        let reason = match &id {
            Some(id) => format!("policy {id} forbids it"),
            None => "a policy Portcullis cannot translate forbids it".into(),
        };
        if let Some(id) = id {
            determining.push(id);
        }
        let ok = Filter::negate(f);
        checks.push(Check {
            ok: ok.clone(),
            reason,
        });
        filters.push(ok);
    }
    checks.retain(|c| c.ok != Filter::True);
    Ok(Derived {
        filter: Filter::and(filters),
        determining,
        untranslated: parts.untranslated,
        checks,
    })
}

/// The translated residuals of one request, policy by policy.
pub(crate) struct Residuals {
    /// Permits that may apply: (id, condition). Never `False`.
    pub permits: Vec<(String, Filter)>,
    /// Forbids that may apply: (id, condition), not yet negated. Never `False`. A forbid the
    /// translator does not understand is here with condition `True` and no id.
    pub forbids: Vec<(Option<String>, Filter)>,
    pub untranslated: Vec<(String, String)>,
}

pub(crate) fn residuals(
    bundle: &PolicyBundle,
    principal: &EntityUid,
    action: &str,
    resource_type: &str,
    context: Context,
) -> Result<Residuals, DeriveError> {
    let action = action_uid(action)?;
    let resource_type: EntityTypeName = resource_type
        .parse()
        .map_err(|e| DeriveError::Request(format!("resource type: {e}")))?;
    let request = PartialRequest::new(
        PartialEntityUid::from_concrete(principal.clone()),
        action,
        PartialEntityUid::new(resource_type.clone(), None),
        Some(context),
        &bundle.schema,
    )
    .map_err(|e| DeriveError::Request(e.to_string()))?;
    let entities = PartialEntities::from_concrete(bundle.entities.clone(), &bundle.schema)
        .map_err(|e| DeriveError::Evaluation(e.to_string()))?;
    let response = bundle
        .policies
        .tpe(&request, &entities, &bundle.schema)
        .map_err(|e| DeriveError::Evaluation(e.to_string()))?;

    // Nested attribute paths are vector payload fields: a table has flat columns (and a path
    // through an entity is not a column either), so there they stay untranslatable.
    let nested = resource_type.namespace() == "qdrant";
    let mut out = Residuals {
        permits: Vec::new(),
        forbids: Vec::new(),
        untranslated: Vec::new(),
    };
    // Policy id order, so the same set always derives the same filter (and the same SQL).
    let mut residual: Vec<_> = response.policies().collect();
    residual.sort_by_key(|p| p.id().to_string());
    for policy in residual {
        let id = policy.id().to_string();
        let pst = match policy.to_pst() {
            Ok(p) => p,
            Err(e) => {
                out.untranslated.push((id.clone(), format!("no PST: {e}")));
                if policy.effect() == Effect::Forbid {
                    out.forbids.push((None, Filter::True));
                }
                continue;
            }
        };
        let clauses = pst.body().clauses();
        if clauses
            .iter()
            .all(|c| matches!(c, Clause::When(e) if matches!(**e, Expr::ResidualError)))
            && !clauses.is_empty()
        {
            // The whole condition errors for every row: the policy never applies.
            continue;
        }
        let condition = |clauses, on_error| {
            condition(clauses, on_error).and_then(|f: Filter| {
                if !nested && mentions_path(&f) {
                    Err("a nested attribute of a table".to_string())
                } else {
                    Ok(f)
                }
            })
        };
        match policy.effect() {
            Effect::Permit => match condition(clauses, None) {
                Ok(Filter::False) => {}
                Ok(f) => out.permits.push((id, f)),
                Err(why) => out
                    .untranslated
                    .push((id, format!("permit ignored (grants nothing): {why}"))),
            },
            Effect::Forbid => match condition(clauses, Some(Filter::True)) {
                Ok(Filter::False) => {}
                Ok(f) => out.forbids.push((Some(id), f)),
                Err(why) => {
                    out.untranslated.push((
                        id,
                        format!("forbid not understood (denies everything): {why}"),
                    ));
                    out.forbids.push((None, Filter::True));
                }
            },
        }
    }
    Ok(out)
}

pub(crate) fn action_uid(action: &str) -> Result<EntityUid, DeriveError> {
    format!("Action::{}", quote(action))
        .parse()
        .map_err(|e| DeriveError::Request(format!("action: {e}")))
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether a filter names a dotted attribute path.
fn mentions_path(f: &Filter) -> bool {
    match f {
        Filter::True | Filter::False => false,
        Filter::And(parts) | Filter::Or(parts) => parts.iter().any(mentions_path),
        Filter::Not(inner) => mentions_path(inner),
        Filter::Compare { attr, .. }
        | Filter::InSet { attr, .. }
        | Filter::Present(attr)
        | Filter::SetContains { attr, .. }
        | Filter::SetContainsAny { attr, .. }
        | Filter::SetContainsAll { attr, .. }
        | Filter::Like { attr, .. } => attr.contains('.'),
    }
}

/// The conjunction of a policy's clauses.
fn condition(clauses: &[Clause], on_error: Option<Filter>) -> Result<Filter, String> {
    let mut parts = Vec::new();
    for c in clauses {
        match c {
            Clause::When(e) => parts.push(translate(e, &on_error)?),
            // As with `!`, the stand-in needs no flipping under negation (see the module docs).
            Clause::Unless(e) => parts.push(Filter::negate(translate(e, &on_error)?)),
        }
    }
    Ok(Filter::and(parts))
}

fn translate(e: &Expr, on_error: &Option<Filter>) -> Result<Filter, String> {
    match e {
        Expr::Literal(Literal::Bool(b)) => Ok(if *b { Filter::True } else { Filter::False }),
        Expr::ResidualError => on_error
            .clone()
            .ok_or_else(|| "a subexpression always errors".to_string()),
        Expr::UnaryOp {
            op: UnaryOp::Not,
            expr,
        } => {
            // Soundness for the stand-in does not depend on polarity (see the module docs).
            Ok(Filter::negate(translate(expr, on_error)?))
        }
        Expr::BinaryOp { op, left, right } => binary(*op, left, right, on_error),
        // A Bool attribute used as a condition (strict validation guarantees the type).
        Expr::GetAttr { .. } if resource_attr(e).is_some() => Ok(Filter::Compare {
            attr: resource_attr(e).expect("checked"),
            op: CmpOp::Eq,
            value: Value::Bool(true),
        }),
        // `resource has a`, `resource has a.b`, `resource.a has b`: nested record fields (vector
        // payloads) are dotted paths.
        Expr::HasAttr { expr, attrs } if is_resource(expr) || resource_attr(expr).is_some() => {
            if attrs.iter().any(|a| a.contains('.')) {
                return Err("an attribute name with a dot in it".into());
            }
            let mut path: Vec<String> = resource_attr(expr).into_iter().collect();
            path.extend(attrs.iter().map(|a| a.to_string()));
            Ok(Filter::Present(path.join(".")))
        }
        Expr::Like { expr, pattern } => {
            let attr =
                resource_attr(expr).ok_or("`like` on something other than a resource attribute")?;
            Ok(Filter::Like {
                attr,
                pattern: pattern
                    .iter()
                    .map(|p| match p {
                        PatternElem::Char(c) => Pattern::Char(*c),
                        PatternElem::Wildcard => Pattern::Wildcard,
                    })
                    .collect(),
            })
        }
        Expr::IfThenElse {
            cond,
            then_expr,
            else_expr,
        } => {
            let c = translate(cond, on_error)?;
            let t = translate(then_expr, on_error)?;
            let f = translate(else_expr, on_error)?;
            Ok(Filter::or(vec![
                Filter::and(vec![c.clone(), t]),
                Filter::and(vec![Filter::negate(c), f]),
            ]))
        }
        other => Err(format!("unsupported expression `{}`", describe(other))),
    }
}

fn binary(
    op: BinaryOp,
    left: &Expr,
    right: &Expr,
    on_error: &Option<Filter>,
) -> Result<Filter, String> {
    let cmp = match op {
        BinaryOp::And => {
            return Ok(Filter::and(vec![
                translate(left, on_error)?,
                translate(right, on_error)?,
            ]));
        }
        BinaryOp::Or => {
            return Ok(Filter::or(vec![
                translate(left, on_error)?,
                translate(right, on_error)?,
            ]));
        }
        BinaryOp::Eq => Some(CmpOp::Eq),
        BinaryOp::NotEq => Some(CmpOp::NotEq),
        BinaryOp::Less | BinaryOp::DecimalLessThan => Some(CmpOp::Lt),
        BinaryOp::LessEq | BinaryOp::DecimalLessEq => Some(CmpOp::LtEq),
        BinaryOp::Greater | BinaryOp::DecimalGreater => Some(CmpOp::Gt),
        BinaryOp::GreaterEq | BinaryOp::DecimalGreaterEq => Some(CmpOp::GtEq),
        _ => None,
    };
    if let Some(cmp) = cmp {
        return match (
            resource_attr(left),
            constant(right),
            constant(left),
            resource_attr(right),
        ) {
            (Some(attr), Some(value), _, _) => Ok(Filter::Compare {
                attr,
                op: cmp,
                value,
            }),
            (_, _, Some(value), Some(attr)) => Ok(Filter::Compare {
                attr,
                op: cmp.flipped(),
                value,
            }),
            _ => Err(format!(
                "comparison `{}` is not between a resource attribute and a constant",
                describe(&Expr::BinaryOp {
                    op,
                    left: left.clone().into(),
                    right: right.clone().into()
                })
            )),
        };
    }
    match op {
        BinaryOp::Contains => match (
            constant_set(left),
            resource_attr(right),
            resource_attr(left),
            constant(right),
        ) {
            (Some(values), Some(attr), _, _) => Ok(Filter::InSet { attr, values }),
            (_, _, Some(attr), Some(value)) => Ok(Filter::SetContains { attr, value }),
            _ => Err("`contains` needs a constant set and a resource attribute".into()),
        },
        BinaryOp::ContainsAny => match (
            resource_attr(left),
            constant_set(right),
            constant_set(left),
            resource_attr(right),
        ) {
            (Some(attr), Some(values), _, _) | (_, _, Some(values), Some(attr)) => {
                Ok(Filter::SetContainsAny { attr, values })
            }
            _ => Err("`containsAny` needs a constant set and a resource attribute".into()),
        },
        BinaryOp::ContainsAll => match (resource_attr(left), constant_set(right)) {
            (Some(attr), Some(values)) => Ok(Filter::SetContainsAll { attr, values }),
            _ => Err("`containsAll` needs a resource attribute and a constant set".into()),
        },
        other => Err(format!("unsupported operator {other:?}")),
    }
}

fn is_resource(e: &Expr) -> bool {
    matches!(e, Expr::Var(Var::Resource))
}

/// The resource attribute `e` reads: `resource.a` is `a`, and a field of a record attribute,
/// `resource.metadata.tenant`, is the dotted path `metadata.tenant`.
fn resource_attr(e: &Expr) -> Option<String> {
    match e {
        // A name with a dot in it would read as a path: not translatable.
        Expr::GetAttr { attr, .. } if attr.contains('.') => None,
        Expr::GetAttr { expr, attr } if is_resource(expr) => Some(attr.to_string()),
        Expr::GetAttr { expr, attr } => resource_attr(expr).map(|path| format!("{path}.{attr}")),
        _ => None,
    }
}

fn constant(e: &Expr) -> Option<Value> {
    match e {
        Expr::Literal(Literal::Bool(b)) => Some(Value::Bool(*b)),
        Expr::Literal(Literal::Long(n)) => Some(Value::Long(*n)),
        Expr::Literal(Literal::String(s)) => Some(Value::String(s.to_string())),
        Expr::UnaryOp {
            op: UnaryOp::Decimal,
            expr,
        } => match &**expr {
            Expr::Literal(Literal::String(s)) => parse_decimal(s).map(Value::Decimal),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOp::Datetime,
            expr,
        } => match &**expr {
            Expr::Literal(Literal::String(s)) => parse_datetime(s).map(Value::Datetime),
            _ => None,
        },
        // A datetime value after partial evaluation: `datetime("…").offset(duration("…ms"))`.
        Expr::BinaryOp {
            op: BinaryOp::Offset,
            left,
            right,
        } => match (constant(left)?, &**right) {
            (
                Value::Datetime(base),
                Expr::UnaryOp {
                    op: UnaryOp::Duration,
                    expr,
                },
            ) => match &**expr {
                Expr::Literal(Literal::String(d)) => {
                    parse_duration(d).and_then(|ms| base.checked_add(ms).map(Value::Datetime))
                }
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Cedar duration text (`-1d2h3m4s5ms`: optional sign, then units d, h, m, s, ms in that order)
/// in milliseconds.
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    if rest.is_empty() {
        return None;
    }
    let units: [(&str, i64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("ms", 1),
        ("m", 60_000),
        ("s", 1000),
    ];
    let mut total: i64 = 0;
    let mut last_rank = 0usize;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, scale) = units.iter().find(|(u, _)| rest.starts_with(u))?;
        // Order d, h, m, s, ms; each unit at most once.
        let rank = match *unit {
            "d" => 1,
            "h" => 2,
            "m" => 3,
            "s" => 4,
            _ => 5,
        };
        if rank <= last_rank {
            return None;
        }
        last_rank = rank;
        rest = &rest[unit.len()..];
        total = total.checked_add(n.checked_mul(*scale)?)?;
    }
    Some(if neg { -total } else { total })
}

fn constant_set(e: &Expr) -> Option<Vec<Value>> {
    match e {
        Expr::Set(items) => items.iter().map(|i| constant(i)).collect(),
        _ => None,
    }
}

/// Cedar decimal text (`-12.3456`, 1 to 4 fractional digits) scaled by 10⁴.
pub(crate) fn parse_decimal(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.')?;
    if int.is_empty()
        || frac.is_empty()
        || frac.len() > 4
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scaled = int.parse::<i64>().ok()?.checked_mul(10_000)?;
    let frac_val = format!("{frac:0<4}").parse::<i64>().ok()?;
    let v = scaled.checked_add(frac_val)?;
    Some(if neg { -v } else { v })
}

/// Cedar datetime text, in the forms `YYYY-MM-DD` and `YYYY-MM-DDThh:mm:ss[.SSS]Z`, as
/// milliseconds since the epoch. Other forms (offsets) are not translated.
pub(crate) fn parse_datetime(s: &str) -> Option<i64> {
    let num = |t: &str| -> Option<i64> {
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || date.len() != 10 || !(1..=12).contains(&m) || !(1..=31).contains(&day)
    {
        return None;
    }
    let mut ms = days_from_civil(y, m, day) * 86_400_000;
    if let Some(t) = time {
        let t = t.strip_suffix('Z')?;
        let (hms, frac) = match t.split_once('.') {
            Some((a, b)) if b.len() == 3 => (a, num(b)?),
            Some(_) => return None,
            None => (t, 0),
        };
        let mut p = hms.split(':');
        let (h, mi, sec) = (num(p.next()?)?, num(p.next()?)?, num(p.next()?)?);
        if p.next().is_some() || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        ms += ((h * 60 + mi) * 60 + sec) * 1000 + frac;
    }
    Some(ms)
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01: the inverse of
/// the day count datetimes are built from (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn describe(e: &Expr) -> String {
    let s = format!("{e:?}");
    if s.len() > 120 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(120).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_scale_by_ten_thousand() {
        assert_eq!(parse_decimal("10000.00"), Some(100_000_000));
        assert_eq!(parse_decimal("-1.5"), Some(-15_000));
        assert_eq!(parse_decimal("0.0001"), Some(1));
        assert_eq!(parse_decimal("1"), None);
        assert_eq!(parse_decimal("1.23456"), None);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 59, 20_454, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn durations_are_millis() {
        assert_eq!(parse_duration("86400000ms"), Some(86_400_000));
        assert_eq!(parse_duration("1d2h3m4s5ms"), Some(93_784_005));
        assert_eq!(parse_duration("-1s"), Some(-1000));
        assert_eq!(parse_duration("1s1d"), None);
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration(""), None);
    }

    /// Record attributes are payload paths for vector collections only: on a table the same
    /// policy is not translated (its permit grants nothing), as before nested paths existed.
    #[test]
    fn nested_paths_only_for_vector_collections() {
        use crate::source::{SourceFile, SourceKind};
        let schema = "entity Agent;\n\
            namespace public { entity t { meta: { x: Long } }; }\n\
            namespace qdrant { entity t { meta: { x: Long } }; }\n\
            action search appliesTo { principal: [Agent], resource: [public::t, qdrant::t] };\n";
        let policy =
            "@id(\"p\")\npermit (principal, action, resource) when { resource.meta.x == 1 };\n";
        let bundle = crate::load::load_sources(vec![
            SourceFile {
                kind: SourceKind::Schema,
                name: "s.cedarschema".into(),
                text: schema.into(),
            },
            SourceFile {
                kind: SourceKind::Policies,
                name: "p.cedar".into(),
                text: policy.into(),
            },
            SourceFile {
                kind: SourceKind::Entities,
                name: "entities.json".into(),
                text: "[]".into(),
            },
        ])
        .unwrap();
        let agent: EntityUid = "Agent::\"a\"".parse().unwrap();
        let derive = |ty| derive(&bundle, &agent, "search", ty, Context::empty()).unwrap();
        assert_eq!(
            derive("qdrant::t").filter,
            Filter::Compare {
                attr: "meta.x".into(),
                op: CmpOp::Eq,
                value: Value::Long(1)
            }
        );
        assert_eq!(derive("public::t").filter, Filter::False);
    }

    #[test]
    fn datetimes_are_epoch_millis() {
        assert_eq!(parse_datetime("1970-01-01"), Some(0));
        assert_eq!(
            parse_datetime("2026-01-02T03:04:05Z"),
            Some(1_767_323_045_000)
        );
        assert_eq!(
            parse_datetime("2026-01-02T03:04:05.250Z"),
            Some(1_767_323_045_250)
        );
        assert_eq!(parse_datetime("2026-01-02T03:04:05+0100"), None);
    }
}
