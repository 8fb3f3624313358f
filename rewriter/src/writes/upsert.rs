//! `INSERT … ON CONFLICT` under policy, by PostgreSQL's row-level security rules for upserts:
//!
//! - the proposed row passes the insert check (as any INSERT; done by the caller);
//! - `DO NOTHING` adds nothing: a conflict with any row, hidden or not, inserts nothing (as
//!   with RLS, a unique index tells whether a key exists; it never tells what the row holds);
//! - `DO UPDATE`: the conflicting row must be one the agent may read *and* update, or the whole
//!   statement aborts with 42501 before any of the agent's expressions run on it (its WHERE is
//!   guarded by the check); the updated row must pass the update check (and the read policy
//!   with RETURNING), computed once from the SET values in a sub-SELECT whose WHERE aborts on a
//!   violation. The agent's SET values and WHERE see the conflicting row unfenced, so they may
//!   name only columns it reads in clear (see [`super::refs`]).

use sqlparser::ast::{
    Assignment, AssignmentTarget, ConflictTarget, DoUpdate, Expr, OnConflict, OnConflictAction,
    OnInsert,
};

use super::{abort, assignments, column, column_name, named, refs, row_check, rules, set_value};
use crate::catalog::{normalize, Relation};
use crate::lexical::to_sql;
use crate::nodes::{self, boolean, case_when, ident, nested, qualified_column};
use crate::policy::WriteAction;
use crate::protect::{protect, Read};
use crate::{Context, Refusal};

/// The `ON CONFLICT …` clause of an INSERT into `rel` (known to the statement as `alias`),
/// rewritten.
pub(super) fn on_conflict(
    on: Option<OnInsert>,
    rel: &Relation,
    alias: &str,
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
    returning: bool,
) -> Result<Option<OnInsert>, Refusal> {
    let Some(on) = on else {
        return Ok(None);
    };
    let OnInsert::OnConflict(OnConflict {
        conflict_target,
        action,
    }) = on
    else {
        return Err(Refusal::Unsupported("ON DUPLICATE KEY UPDATE".into()));
    };
    let conflict_target = match conflict_target {
        None => None,
        Some(ConflictTarget::Columns(columns)) => Some(ConflictTarget::Columns(
            columns
                .iter()
                .map(|c| Ok(ident(&column(rel, &normalize(c))?.name)))
                .collect::<Result<_, Refusal>>()?,
        )),
        Some(ConflictTarget::OnConstraint(name)) => match name.0.as_slice() {
            [part] => {
                let constraint = part.as_ident().ok_or_else(|| {
                    Refusal::Unsupported("this ON CONFLICT constraint name".into())
                })?;
                Some(ConflictTarget::OnConstraint(column_name(&normalize(
                    constraint,
                ))))
            }
            _ => return Err(Refusal::Syntax("a qualified constraint name".into())),
        },
    };
    let mut update = match action {
        OnConflictAction::DoNothing => {
            return Ok(Some(OnInsert::OnConflict(OnConflict {
                conflict_target,
                action: OnConflictAction::DoNothing,
            })))
        }
        OnConflictAction::DoUpdate(update) => update,
    };
    if conflict_target.is_none() {
        return Err(Refusal::Syntax(
            "ON CONFLICT DO UPDATE requires inference specification or constraint name".into(),
        ));
    }
    let rules = rules(rel, WriteAction::Update, ctx)?;
    reads.push(rules.target_read(rel));
    let sets = assignments(&mut update.assignments, rel, &rules, ctx, reads)?;
    let cond = match update.selection.as_mut() {
        None => boolean(true),
        Some(e) => {
            reads.extend(protect(e, ctx)?);
            nested(super::take(e))
        }
    };
    // The agent's expressions read the conflicting row and EXCLUDED unfenced.
    let mut exprs: Vec<String> = sets
        .iter()
        .filter_map(|s| s.value.as_ref().map(to_sql))
        .collect::<Result<_, _>>()?;
    exprs.push(to_sql(&cond)?);
    let names = vec![alias.to_string(), rel.name.clone(), "excluded".to_string()];
    refs::Target::new(rel, &rules.read, names).check(
        &format!("SELECT {}", exprs.join(", ")),
        "ON CONFLICT DO UPDATE",
    )?;

    // The conflicting row: readable and updatable, or the statement aborts (without running
    // the agent's WHERE on it).
    let (existing_ok, hidden) =
        existing_row(rel, alias, &rules, "the row this INSERT conflicts with")?;
    let (assignments, then) = checked_set(sets, cond, rel, alias, &rules, returning)?;
    Ok(Some(OnInsert::OnConflict(OnConflict {
        conflict_target,
        action: OnConflictAction::DoUpdate(DoUpdate {
            assignments,
            selection: Some(case_when(existing_ok, then, hidden)),
        }),
    })))
}

/// For an existing row of `rel` (known as `alias`) that a statement updates in place: the
/// condition that it is readable and updatable, and the abort naming it (`what`) otherwise.
pub(super) fn existing_row(
    rel: &Relation,
    alias: &str,
    rules: &super::Rules,
    what: &str,
) -> Result<(Expr, Expr), Refusal> {
    let existing = policies::Filter::and(vec![rules.read.filter.clone(), rules.write.clone()]);
    let existing_ok = row_check(&existing, rel, |name| qualified_column(alias, name))?;
    let mut ids = rules.determining.clone();
    ids.extend(
        rules
            .read
            .determining
            .iter()
            .filter(|id| !rules.determining.contains(id))
            .cloned(),
    );
    let hidden = abort(&format!(
        "{what} is not one this agent may update under the update policy on {}{}",
        rel.entity_type(),
        named(&ids)
    ));
    Ok((existing_ok, hidden))
}

/// SET items for an in-place update of the row `alias` of `rel` when `cond` holds: the agent's
/// values computed once in a sub-SELECT whose WHERE checks the updated row (aborting on a
/// violation), then assigned. Returns the items and the condition to update under (`cond`,
/// with the new-row check when only DEFAULTs are set).
pub(super) fn checked_set(
    sets: Vec<super::Set<'_>>,
    cond: Expr,
    rel: &Relation,
    alias: &str,
    rules: &super::Rules,
    returning: bool,
) -> Result<(Vec<Assignment>, Expr), Refusal> {
    // The updated row: the SET values computed once, checked, then assigned.
    let checked = super::new_row(WriteAction::Update, rel, rules, returning);
    let filter = checked.filter.clone();
    super::refuse_checked_generated(&filter, rel)?;
    super::refuse_checked_defaults(&sets, &filter, rel)?;
    let value = |name: &str| match sets
        .iter()
        .position(|s| s.col.name == name && s.value.is_some())
    {
        Some(i) => set_value(i),
        None => qualified_column(alias, name),
    };
    let new_ok = checked.expr(|f| row_check(f, rel, value))?;
    let mut columns = Vec::new();
    let mut outputs = Vec::new();
    let mut values = Vec::new();
    let mut defaults = Vec::new();
    for (i, s) in sets.into_iter().enumerate() {
        match s.value {
            Some(v) => {
                columns.push(column_name(&s.col.name));
                outputs.push(sqlparser::ast::SelectItem::UnnamedExpr(set_value(i)));
                values.push(super::set_item(i, v, s.col)?);
            }
            None => defaults.push(Assignment {
                target: AssignmentTarget::ColumnName(column_name(&s.col.name)),
                value: nodes::default(),
            }),
        }
    }
    let mut items = Vec::new();
    let then = if columns.is_empty() {
        // Only DEFAULTs: the check reads old values only, in the WHERE.
        case_when(cond, new_ok, boolean(false))
    } else {
        // (<columns>) = (SELECT <outputs> FROM (SELECT <values> OFFSET 0) AS "portcullis_new"
        // WHERE <new_ok>)
        let computed = nodes::derived(
            nodes::select(values, vec![], None, true),
            "portcullis_new",
            &[],
        );
        items.push(Assignment {
            target: AssignmentTarget::Tuple(columns),
            value: Expr::Subquery(Box::new(nodes::select(
                outputs,
                vec![computed],
                Some(new_ok),
                false,
            ))),
        });
        cond
    };
    items.extend(defaults);
    Ok((items, then))
}
