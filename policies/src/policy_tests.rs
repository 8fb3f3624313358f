//! The policy test runner (`portcullis policy test DIR`): `*.test.toml` files beside a policy
//! set state, for an agent (optionally acting for a human), an action and a table, sample rows
//! and whether each must be visible. Every row is checked twice — against the *derived filter*
//! (what Portcullis will enforce) and against Cedar's concrete authorization — and any
//! disagreement with the expectation fails.
//!
//! ```toml
//! [[case]]
//! name = "support sees its own tenant's transfers"
//! principal = "support-bot"        # Agent id
//! on_behalf_of = "alice"           # optional User id
//! action = "select"
//! table = "public::transfers"
//! [[case.row]]
//! visible = true
//! attrs = { id = 1, tenant_id = 1, amount = { decimal = "12.50" }, created_at = { datetime = "2026-03-01" } }
//! ```
//! Attribute values: integers, strings, booleans, arrays (sets), `{ decimal = "…" }`,
//! `{ datetime = "…" }`; an attribute left out is NULL (absent).
//!
//! Column expectations, for tables with column rules: a case may state each column's rule
//! (`columns = { email = "visible", ssn = "masked:redact", notes = "conditional:null",
//! iban = "denied" }`), and a row may list the columns hidden on it (`masked = ["ssn"]`).
//! For every stated column and every row, whether the value is shown is checked against the
//! derived rule and against Cedar's concrete `read_column` decision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entity, EntityUid, Request, RestrictedExpression,
};
use serde::Deserialize;

use crate::columns::{derive_columns, READ_COLUMN};
use crate::derive::{derive, parse_datetime, parse_decimal};
use crate::filter::{Row, RowValue, Value};
use crate::load::PolicyBundle;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: String,
    on_behalf_of: Option<String>,
    action: String,
    table: String,
    /// Expected column rules, by column name (`visible`, `denied`, `masked:<mask>`,
    /// `conditional:<mask>`).
    #[serde(default)]
    columns: BTreeMap<String, String>,
    #[serde(rename = "row", default)]
    rows: Vec<TestRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRow {
    visible: bool,
    attrs: BTreeMap<String, TestValue>,
    /// Columns (of the case's `columns`) whose value must be hidden on this row.
    masked: Option<Vec<String>>,
}

/// An attribute value in a test row.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TestValue {
    Bool(bool),
    Long(i64),
    String(String),
    Set(Vec<TestValue>),
    Decimal { decimal: String },
    Datetime { datetime: String },
}

impl TestValue {
    fn scalar(&self) -> Result<Value, String> {
        Ok(match self {
            TestValue::Bool(b) => Value::Bool(*b),
            TestValue::Long(n) => Value::Long(*n),
            TestValue::String(s) => Value::String(s.clone()),
            TestValue::Decimal { decimal } => Value::Decimal(
                parse_decimal(decimal).ok_or_else(|| format!("invalid decimal {decimal:?}"))?,
            ),
            TestValue::Datetime { datetime } => Value::Datetime(
                parse_datetime(datetime).ok_or_else(|| format!("invalid datetime {datetime:?}"))?,
            ),
            TestValue::Set(_) => return Err("sets cannot be nested".into()),
        })
    }

    /// The value as a filter row sees it.
    pub fn to_row_value(&self) -> Result<RowValue, String> {
        match self {
            TestValue::Set(items) => Ok(RowValue::Set(
                items.iter().map(|i| i.scalar()).collect::<Result<_, _>>()?,
            )),
            other => Ok(RowValue::Scalar(other.scalar()?)),
        }
    }

    /// The value as Cedar sees it (validated first, so the expression text is well-formed).
    pub fn to_cedar(&self) -> Result<RestrictedExpression, String> {
        Ok(match self {
            TestValue::Bool(b) => RestrictedExpression::new_bool(*b),
            TestValue::Long(n) => RestrictedExpression::new_long(*n),
            TestValue::String(s) => RestrictedExpression::new_string(s.clone()),
            TestValue::Set(items) => {
                RestrictedExpression::new_set(items.iter().map(|i| i.to_cedar()).collect::<Result<
                    Vec<_>,
                    _,
                >>(
                )?)
            }
            TestValue::Decimal { decimal } => {
                parse_decimal(decimal).ok_or_else(|| format!("invalid decimal {decimal:?}"))?;
                RestrictedExpression::from_str(&format!("decimal(\"{decimal}\")"))
                    .map_err(|e| e.to_string())?
            }
            TestValue::Datetime { datetime } => {
                parse_datetime(datetime).ok_or_else(|| format!("invalid datetime {datetime:?}"))?;
                RestrictedExpression::from_str(&format!("datetime(\"{datetime}\")"))
                    .map_err(|e| e.to_string())?
            }
        })
    }
}

/// The outcome of one test file.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    /// One line per failed row (or per case that could not run).
    pub failures: Vec<String>,
}

/// Runs every `*.test.toml` file in `dir` against `bundle`. `Err` if a file cannot be read or
/// parsed; row-level problems are failures in the report.
pub fn run_dir(bundle: &PolicyBundle, dir: &Path) -> Result<Report, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".test.toml")))
        .collect();
    files.sort();
    let mut report = Report::default();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        let file: TestFile = toml::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
        for case in &file.cases {
            run_case(bundle, &name, case, &mut report);
        }
    }
    Ok(report)
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    EntityUid::from_str(&format!(
        "{ty}::{}",
        serde_json::Value::String(id.to_string())
    ))
    .map_err(|e| e.to_string())
}

fn run_case(bundle: &PolicyBundle, file: &str, case: &Case, report: &mut Report) {
    let label = format!("{file}: {}", case.name);
    let setup = || -> Result<_, String> {
        let principal = uid("Agent", &case.principal)?;
        let context = match &case.on_behalf_of {
            None => Context::empty(),
            Some(user) => Context::from_pairs([(
                "on_behalf_of".to_string(),
                RestrictedExpression::new_entity_uid(uid("User", user)?),
            )])
            .map_err(|e| e.to_string())?,
        };
        let derived = derive(
            bundle,
            &principal,
            &case.action,
            &case.table,
            context.clone(),
        )
        .map_err(|e| e.to_string())?;
        let columns: Vec<&str> = case.columns.keys().map(String::as_str).collect();
        let rules = if columns.is_empty() {
            None
        } else {
            Some(
                derive_columns(bundle, &principal, &case.table, &columns, &context)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!(
                            "the case states columns, but the schema declares no `{READ_COLUMN}` \
                             action for {}",
                            case.table
                        )
                    })?,
            )
        };
        Ok((principal, context, derived, rules))
    };
    let (principal, context, derived, rules) = match setup() {
        Ok(s) => s,
        Err(e) => {
            report.failures.push(format!("{label}: cannot run: {e}"));
            return;
        }
    };
    if let Some(rules) = &rules {
        for (column, expected) in &case.columns {
            let actual = rules.columns[column].to_string();
            if actual == *expected {
                report.passed += 1;
            } else {
                report.failures.push(format!(
                    "{label}: column {column}: expected {expected}, but the derived rule is {actual}"
                ));
            }
        }
    }
    let cedar = Cedar {
        bundle,
        principal: &principal,
        context: &context,
    };
    for (n, row) in case.rows.iter().enumerate() {
        let row_label = format!("{label}, row {}", n + 1);
        let check = || -> Result<Vec<String>, String> {
            let resource = uid(&case.table, &format!("test-row-{}", n + 1))?;
            let attrs: HashMap<String, RestrictedExpression> = row
                .attrs
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.to_cedar()?)))
                .collect::<Result<_, String>>()?;
            let entity =
                Entity::new(resource.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
            let entities = bundle
                .entities
                .clone()
                .add_entities([entity], Some(&bundle.schema))
                .map_err(|e| e.to_string())?;
            let filter_row: Row = row
                .attrs
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.to_row_value()?)))
                .collect::<Result<_, String>>()?;

            let mut problems = Vec::new();
            let filter = derived.filter.eval(&filter_row) == Some(true);
            let allowed = cedar.allows(&entities, &resource, &case.action, None)?;
            if filter != row.visible || allowed != row.visible {
                problems.push(format!(
                    "expected {}, but the derived filter {} it and Cedar {} it",
                    if row.visible { "visible" } else { "hidden" },
                    if filter { "admits" } else { "rejects" },
                    if allowed { "allows" } else { "denies" },
                ));
            }
            if let Some(masked) = &row.masked {
                if let Some(unknown) = masked.iter().find(|c| !case.columns.contains_key(*c)) {
                    return Err(format!(
                        "masked column {unknown:?} is not among the case's columns"
                    ));
                }
            }
            if let Some(rules) = &rules {
                for (column, rule) in &rules.columns {
                    let shown = rule.shows(&filter_row);
                    let allowed = cedar.allows(&entities, &resource, READ_COLUMN, Some(column))?;
                    let expected = row
                        .masked
                        .as_ref()
                        .map(|m| !m.contains(column))
                        .unwrap_or(allowed);
                    if shown != allowed || shown != expected {
                        problems.push(format!(
                            "column {column}: expected {}, but the derived rule {} it and \
                             Cedar's read_column {} it",
                            if expected { "shown" } else { "hidden" },
                            if shown { "shows" } else { "hides" },
                            if allowed { "allows" } else { "denies" },
                        ));
                    }
                }
            }
            Ok(problems)
        };
        match check() {
            Err(e) => report
                .failures
                .push(format!("{row_label}: invalid row: {e}")),
            Ok(problems) if problems.is_empty() => report.passed += 1,
            Ok(problems) => report
                .failures
                .extend(problems.into_iter().map(|p| format!("{row_label}: {p}"))),
        }
    }
}

/// Cedar's concrete decision for one request of a case.
struct Cedar<'a> {
    bundle: &'a PolicyBundle,
    principal: &'a EntityUid,
    context: &'a Context,
}

impl Cedar<'_> {
    fn allows(
        &self,
        entities: &cedar_policy::Entities,
        resource: &EntityUid,
        action: &str,
        column: Option<&str>,
    ) -> Result<bool, String> {
        let context = match column {
            None => self.context.clone(),
            Some(c) => self
                .context
                .clone()
                .merge([(
                    "column".to_string(),
                    RestrictedExpression::new_string(c.to_string()),
                )])
                .map_err(|e| e.to_string())?,
        };
        let request = Request::new(
            self.principal.clone(),
            uid("Action", action)?,
            resource.clone(),
            context,
            Some(&self.bundle.schema),
        )
        .map_err(|e| e.to_string())?;
        Ok(Authorizer::new()
            .is_authorized(&request, &self.bundle.policies, entities)
            .decision()
            == Decision::Allow)
    }
}
