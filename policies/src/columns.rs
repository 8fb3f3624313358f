//! Column rules: for one (principal, context, table), what the agent sees of each column —
//! the value, a mask, the value on some rows and a mask on others, or nothing at all.
//!
//! Each column is one `Action::"read_column"` request with `context.column` set to its name;
//! its residuals are translated like row filters (see [`crate::derive`]). Then, with `P` the
//! permits ORed and `F₁…Fₙ` the forbids that may apply:
//! - no permit may apply (`P` is false), or a forbid without `@mask` applies on every row:
//!   **denied**;
//! - the value is readable on every row (`P ∧ ¬F₁ ∧ … ∧ ¬Fₙ` is true): **visible**;
//! - otherwise **masked**: the value where that filter holds (`unless`), the mask elsewhere
//!   (`unless` = `False` is an unconditional mask). The mask is the strongest one named by the
//!   forbids that may apply; a forbid without `@mask`, or a row no permit covers, hides as `null`.
//!
//! Column rules are in force for a table when the schema declares `read_column` for it; then
//! Cedar's default deny applies and a column no permit mentions is denied. A table the
//! `read_column` action does not apply to has no column rules: every column is visible.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Context, EntityTypeName, EntityUid, PolicyId, RestrictedExpression,
};

use crate::derive::{action_uid, residuals, DeriveError};
use crate::filter::Filter;
use crate::load::PolicyBundle;

/// The action whose requests decide column rules.
pub const READ_COLUMN: &str = "read_column";
/// The action whose requests decide payload field rules of vector collections.
pub const READ_FIELD: &str = "read_field";

/// How a hidden value is shown. Every mask keeps the column's type (see `docs/policies.md`
/// for what each produces per type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mask {
    /// The last four characters, the rest replaced by `*`; shorter values entirely `*`.
    Last4,
    /// A hex SHA-256 digest (equal values stay equal, so joins and counts still work).
    Hash,
    /// A fixed placeholder.
    Redact,
    /// SQL NULL.
    Null,
}

impl Mask {
    pub const ALL: [Mask; 4] = [Mask::Null, Mask::Redact, Mask::Hash, Mask::Last4];

    pub fn name(self) -> &'static str {
        match self {
            Mask::Null => "null",
            Mask::Redact => "redact",
            Mask::Hash => "hash",
            Mask::Last4 => "last4",
        }
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mask {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mask::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown mask {s:?}; known masks: {}",
                    Mask::ALL.map(Mask::name).join(", ")
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnRule {
    Visible,
    /// The value on rows where `unless` holds, `mask` on the others.
    Masked {
        mask: Mask,
        unless: Filter,
    },
    Denied,
}

impl ColumnRule {
    /// Whether the value is shown on a row (SQL semantics: NULL hides).
    pub fn shows(&self, row: &crate::filter::Row) -> bool {
        match self {
            ColumnRule::Visible => true,
            ColumnRule::Denied => false,
            ColumnRule::Masked { unless, .. } => unless.eval(row) == Some(true),
        }
    }
}

impl fmt::Display for ColumnRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnRule::Visible => f.write_str("visible"),
            ColumnRule::Denied => f.write_str("denied"),
            ColumnRule::Masked {
                mask,
                unless: Filter::False,
            } => write!(f, "masked:{mask}"),
            ColumnRule::Masked { mask, .. } => write!(f, "conditional:{mask}"),
        }
    }
}

/// The rules for one table's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnRules {
    pub columns: BTreeMap<String, ColumnRule>,
    /// Policies whose residual decided some column (ids).
    pub determining: Vec<String>,
    /// Policies that could not be translated: (id, what was done about it).
    pub untranslated: Vec<(String, String)>,
}

/// Whether column rules are in force for `resource_type` (the schema declares `read_column`
/// for it).
pub fn has_column_rules(bundle: &PolicyBundle, resource_type: &str) -> bool {
    action_applies(bundle, READ_COLUMN, resource_type)
}

/// The rules for `columns` of `resource_type`, or `None` when the table has no column rules
/// (every column visible). `context` is the session's; `column` is added to it per column.
pub fn derive_columns(
    bundle: &PolicyBundle,
    principal: &EntityUid,
    resource_type: &str,
    columns: &[&str],
    context: &Context,
) -> Result<Option<ColumnRules>, DeriveError> {
    derive_rules(
        bundle,
        principal,
        (READ_COLUMN, "column"),
        resource_type,
        columns,
        context,
    )
}

/// The rules for payload `fields` (dotted paths) of the vector collection `resource_type`,
/// decided by `Action::"read_field"` with `context.field`, as [`derive_columns`] decides
/// columns; `None` when the collection has no field rules (every field readable).
pub fn derive_fields(
    bundle: &PolicyBundle,
    principal: &EntityUid,
    resource_type: &str,
    fields: &[&str],
    context: &Context,
) -> Result<Option<ColumnRules>, DeriveError> {
    derive_rules(
        bundle,
        principal,
        (READ_FIELD, "field"),
        resource_type,
        fields,
        context,
    )
}

/// Whether the rule a per-name action (`read_field`, `read_column`) gives can differ from name
/// to name: the name is in the request's context, so it cannot when no policy that may apply
/// to the action reads the context. Then one derivation holds for every name. Conservative:
/// a policy scoped to the action through a group, or one that cannot be read as JSON, counts
/// as reading the context.
pub fn rule_depends_on_name(bundle: &PolicyBundle, action: &str) -> bool {
    let Ok(action) = action_uid(action) else {
        return true;
    };
    bundle.policies.policies().any(|policy| {
        let may_apply = match policy.action_constraint() {
            ActionConstraint::Eq(only) => only == action,
            ActionConstraint::Any | ActionConstraint::In(_) => true,
        };
        may_apply && policy.to_json().map_or(true, |est| reads_context(&est))
    })
}

/// Whether a policy's JSON form (EST) mentions the variable `context` anywhere.
fn reads_context(est: &serde_json::Value) -> bool {
    match est {
        serde_json::Value::Object(map) => {
            map.get("Var").is_some_and(|v| v == "context") || map.values().any(reads_context)
        }
        serde_json::Value::Array(items) => items.iter().any(reads_context),
        _ => false,
    }
}

/// Whether `action` applies to `resource_type` in the schema.
pub fn action_applies(bundle: &PolicyBundle, action: &str, resource_type: &str) -> bool {
    let (Ok(action), Ok(ty)) = (action_uid(action), resource_type.parse::<EntityTypeName>()) else {
        return false;
    };
    bundle
        .schema
        .resources_for_action(&action)
        .is_some_and(|mut r| r.any(|t| *t == ty))
}

/// Column or field rules: `(action, context key)` names the per-name request.
fn derive_rules(
    bundle: &PolicyBundle,
    principal: &EntityUid,
    (action, context_key): (&str, &str),
    resource_type: &str,
    columns: &[&str],
    context: &Context,
) -> Result<Option<ColumnRules>, DeriveError> {
    if !action_applies(bundle, action, resource_type) {
        return Ok(None);
    }
    let mut rules = ColumnRules {
        columns: BTreeMap::new(),
        determining: Vec::new(),
        untranslated: Vec::new(),
    };
    for &column in columns {
        let context = context
            .clone()
            .merge([(
                context_key.to_string(),
                RestrictedExpression::new_string(column.to_string()),
            )])
            .map_err(|e| DeriveError::Request(format!("context: {e}")))?;
        let parts = residuals(bundle, principal, action, resource_type, context)?;
        let permit = Filter::or(parts.permits.iter().map(|(_, f)| f.clone()).collect());
        let readable = Filter::and(
            std::iter::once(permit.clone())
                .chain(parts.forbids.iter().map(|(_, f)| Filter::negate(f.clone())))
                .collect(),
        );
        let mask_of = |id: &Option<String>| {
            id.as_ref()
                .and_then(|id| bundle.policies.annotation(&PolicyId::new(id), "mask"))
                .and_then(|m| m.parse::<Mask>().ok())
        };
        let rule = if permit == Filter::False
            || parts
                .forbids
                .iter()
                .any(|(id, f)| *f == Filter::True && mask_of(id).is_none())
        {
            ColumnRule::Denied
        } else if readable == Filter::True {
            ColumnRule::Visible
        } else {
            let mut mask = parts
                .forbids
                .iter()
                .map(|(id, _)| mask_of(id).unwrap_or(Mask::Null))
                .max()
                .unwrap_or(Mask::Null);
            if permit != Filter::True {
                mask = Mask::Null;
            }
            ColumnRule::Masked {
                mask,
                unless: readable,
            }
        };
        for id in parts
            .permits
            .iter()
            .map(|(id, _)| id)
            .chain(parts.forbids.iter().filter_map(|(id, _)| id.as_ref()))
        {
            if !rules.determining.contains(id) {
                rules.determining.push(id.clone());
            }
        }
        for u in parts.untranslated {
            if !rules.untranslated.contains(&u) {
                rules.untranslated.push(u);
            }
        }
        rules.columns.insert(column.to_string(), rule);
    }
    Ok(Some(rules))
}

/// Why a policy's `@mask` annotation is invalid, if it is: masks name a known mask and sit on
/// `forbid` policies about `read_column` only.
pub(crate) fn check_mask_annotation(policy: &cedar_policy::Policy) -> Option<String> {
    let mask = policy.annotation("mask")?;
    if let Err(e) = mask.parse::<Mask>() {
        return Some(format!("@mask: {e}"));
    }
    if policy.effect() != cedar_policy::Effect::Forbid {
        return Some(
            "@mask belongs on a forbid policy (it names how a forbidden value is shown)".into(),
        );
    }
    let readers = [action_uid(READ_COLUMN).ok()?, action_uid(READ_FIELD).ok()?];
    let about_values = match policy.action_constraint() {
        cedar_policy::ActionConstraint::Eq(a) => readers.contains(&a),
        cedar_policy::ActionConstraint::In(list) => list.iter().all(|a| readers.contains(a)),
        cedar_policy::ActionConstraint::Any => false,
    };
    (!about_values).then(|| {
        "@mask belongs on a policy whose action is only Action::\"read_column\" or Action::\"read_field\"".to_string()
    })
}
