//! `MERGE` under policy, by PostgreSQL's row-level security rules for MERGE, action by action:
//!
//! - Only target rows the agent may read can match: the join condition is guarded so that the
//!   agent's `ON` condition never runs on a hidden row, and a hidden row is "not matched" (an
//!   INSERT that then collides with it fails on the unique key, as a plain INSERT would).
//! - `WHEN MATCHED … THEN UPDATE`: the matched row must be one the agent may update, or the
//!   statement aborts with 42501 (as RLS raises for MERGE); the updated row is computed once
//!   and checked against the update policy, as for `ON CONFLICT DO UPDATE` (see [`super::upsert`]).
//! - `WHEN MATCHED … THEN DELETE`: the matched row must be one the agent may delete, or the
//!   statement aborts.
//! - `WHEN NOT MATCHED … THEN INSERT`: the new row is checked against the insert policy (with
//!   constant defaults for checked columns it leaves out); since the check and the insert each
//!   compute the values, they may hold only constants, parameters, source columns, operators
//!   and casts (no function calls or subqueries, which could differ between the two).
//! - The agent's expressions (ON, the WHEN conditions, SET and VALUES) see the target's rows
//!   unfenced, so they may name only target columns the agent reads in clear (see
//!   [`super::refs`]); the source is fenced like any FROM item.
//!
//! Refused: `WHEN NOT MATCHED BY SOURCE`, `UPDATE SET *` / `INSERT *` / `INSERT ROW`, INSERT
//! values with function calls or subqueries, and bare names that are not target columns (the
//! source's columns are named qualified).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, Expr, Merge, MergeAction, MergeClauseKind, MergeInsertKind, MergeUpdateKind,
};

use super::{
    assignments, checked_defaults, column_name, insert_columns, is_default, leading_columns,
    named_target, refuse_unclear_columns, row_check, rules, take, target_table, upsert, Built,
};
use crate::lexical::to_sql;
use crate::nodes::{
    self, boolean, case, case_when, cast_as, is_not_true, nested, qualified_column,
};
use crate::policy::WriteAction;
use crate::protect::{protect, Read};
use crate::{Context, Refusal};

pub(super) fn rewrite_merge(merge: &mut Merge, ctx: &Context<'_>) -> Result<Built, Refusal> {
    if !merge.optimizer_hints.is_empty() || merge.output.is_some() {
        return Err(Refusal::Unsupported("this MERGE form".into()));
    }
    let (rel, alias) = named_target(&merge.table, ctx)?;
    let read = ctx.policies.read(rel)?;
    let mut reads = vec![Read {
        entity_type: rel.entity_type(),
        policy: read.clone(),
    }];

    // The agent's expressions read target rows unfenced: clear columns only.
    let mut exprs = vec![to_sql(&*merge.on)?];
    for clause in &merge.clauses {
        if let Some(p) = &clause.predicate {
            exprs.push(to_sql(p)?);
        }
        match &clause.action {
            MergeAction::Update(update) => match &update.kind {
                MergeUpdateKind::Set(items) => {
                    for item in items {
                        exprs.push(to_sql(&item.value)?);
                    }
                }
                _ => return Err(Refusal::Unsupported("MERGE … UPDATE SET *".into())),
            },
            MergeAction::Insert(insert) => match &insert.kind {
                MergeInsertKind::Values(values) => {
                    for row in &values.rows {
                        for e in row.iter() {
                            exprs.push(to_sql(e)?);
                        }
                    }
                }
                _ => {
                    return Err(Refusal::Unsupported(
                        "MERGE … INSERT other than VALUES".into(),
                    ))
                }
            },
            _ => {}
        }
    }
    // A bare name must be a target column (the catalog may be older than the table, and the
    // source's columns are not known here): the source's columns are named qualified.
    super::refs::Target::new(rel, &read, vec![alias.clone(), rel.name.clone()])
        .check(&format!("SELECT {}", exprs.join(", ")), "MERGE")?;

    reads.extend(protect(&mut merge.source, ctx)?);
    reads.extend(protect(&mut *merge.on, ctx)?);
    let target_row = |n: &str| qualified_column(&alias, n);
    let visible = row_check(&read.filter, rel, target_row)?;
    // ON CASE WHEN <visible> THEN (<on>) ELSE false END
    let on = case_when(visible, nested(take(&mut merge.on)), boolean(false));
    *merge.on = on;

    for clause in &mut merge.clauses {
        clause.clause_kind = match clause.clause_kind {
            MergeClauseKind::Matched => MergeClauseKind::Matched,
            MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget => {
                MergeClauseKind::NotMatched
            }
            MergeClauseKind::NotMatchedBySource => {
                return Err(Refusal::Unsupported("WHEN NOT MATCHED BY SOURCE".into()))
            }
        };
        let p = match clause.predicate.as_mut() {
            None => boolean(true),
            Some(e) => {
                reads.extend(protect(e, ctx)?);
                nested(take(e))
            }
        };
        let predicate = match &mut clause.action {
            // WHEN <kind> AND <p> THEN DO NOTHING
            MergeAction::DoNothing { .. } => p,
            MergeAction::Delete { .. } => {
                let rules = rules(rel, WriteAction::Delete, ctx)?;
                let ok = row_check(&rules.write, rel, target_row)?;
                let hidden = super::abort(&format!(
                    "the row this MERGE matched is not one this agent may delete under the \
                     delete policy on {}{}",
                    rel.entity_type(),
                    super::named(&rules.determining)
                ));
                // WHEN MATCHED AND CASE WHEN <p> IS NOT TRUE THEN false WHEN <ok> THEN true
                // ELSE <hidden> END THEN DELETE
                case(
                    vec![(is_not_true(p), boolean(false)), (ok, boolean(true))],
                    hidden,
                )
            }
            MergeAction::Update(update) => {
                if update.update_predicate.is_some() || update.delete_predicate.is_some() {
                    return Err(Refusal::Unsupported("this MERGE … UPDATE form".into()));
                }
                let MergeUpdateKind::Set(items) = &mut update.kind else {
                    return Err(Refusal::Unsupported("MERGE … UPDATE SET *".into()));
                };
                let rules = rules(rel, WriteAction::Update, ctx)?;
                reads.push(rules.target_read(rel));
                let sets = assignments(items, rel, &rules, ctx, &mut reads)?;
                let (existing_ok, hidden) =
                    upsert::existing_row(rel, &alias, &rules, "the row this MERGE matched")?;
                let (checked, then) =
                    upsert::checked_set(sets, boolean(true), rel, &alias, &rules, false)?;
                *items = checked;
                // WHEN MATCHED AND CASE WHEN <p> IS NOT TRUE THEN false WHEN <existing_ok>
                // THEN <then> ELSE <hidden> END THEN UPDATE SET <items>
                case(
                    vec![(is_not_true(p), boolean(false)), (existing_ok, then)],
                    hidden,
                )
            }
            MergeAction::Insert(insert) => {
                if insert.insert_predicate.is_some() {
                    return Err(Refusal::Unsupported("this MERGE … INSERT form".into()));
                }
                let rules = rules(rel, WriteAction::Insert, ctx)?;
                let MergeInsertKind::Values(values) = &mut insert.kind else {
                    return Err(Refusal::Unsupported(
                        "MERGE … INSERT other than VALUES".into(),
                    ));
                };
                let [row] = values.rows.as_mut_slice() else {
                    return Err(Refusal::Syntax(
                        "MERGE … INSERT takes one VALUES row".into(),
                    ));
                };
                let mut columns = insert_columns(rel, &insert.columns)?;
                if columns.is_empty() {
                    columns = leading_columns(rel, row.len())?;
                }
                if row.len() != columns.len() {
                    return Err(Refusal::Syntax(
                        "the VALUES row must have one value per target column".into(),
                    ));
                }
                refuse_unclear_columns(&columns, &rules, rel)?;
                refuse_computed(row.as_slice())?;
                reads.extend(protect(&mut row.content, ctx)?);
                // DEFAULT in VALUES: the column is left to its default (as if not listed).
                let mut supplied: Vec<(&crate::catalog::Column, Expr)> = Vec::new();
                for (c, e) in columns.iter().zip(row.content.iter_mut()) {
                    if !is_default(e) {
                        supplied.push((c, take(e)));
                    }
                }
                let checked = super::new_row(WriteAction::Insert, rel, &rules, false);
                let names: BTreeSet<&str> = supplied.iter().map(|(c, _)| c.name.as_str()).collect();
                let defaulted = checked_defaults(&checked.filter, &names, rel)?;
                let mut targets = Vec::new();
                let mut typed = Vec::new();
                for (c, v) in supplied.into_iter().chain(defaulted) {
                    targets.push(c.name.as_str());
                    typed.push(cast_as(nested(v), super::cast_type(c)?));
                }
                let value = |n: &str| {
                    targets
                        .iter()
                        .position(|t| *t == n)
                        .map(|i| typed[i].clone())
                        .unwrap_or_else(nodes::null)
                };
                let ok = checked.expr(|f| row_check(f, rel, value))?;
                insert.columns = targets.iter().map(|t| column_name(t)).collect();
                row.content = typed;
                // WHEN NOT MATCHED AND CASE WHEN <p> IS NOT TRUE THEN false ELSE <ok> END
                // THEN INSERT (<targets>) VALUES (<typed>)
                case_when(is_not_true(p), boolean(false), ok)
            }
        };
        clause.predicate = Some(predicate);
    }
    merge.into = true;
    merge.table = target_table(rel, &alias).relation;
    Ok(Built {
        reads,
        target_fence: None,
    })
}

/// The check and the insert each compute the VALUES: both must give the same row. Values may
/// therefore be built only from constants, parameters, the source's columns, operators and
/// casts: no function call (`set_config` could change what a second `current_setting` reads;
/// `random()` differs) and no subquery (a sampled one differs).
fn refuse_computed(exprs: &[Expr]) -> Result<(), Refusal> {
    for e in exprs {
        let flow = visit_expressions(e, |x| match x {
            Expr::Function(_) => ControlFlow::Break("function calls"),
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                ControlFlow::Break("subqueries")
            }
            _ => ControlFlow::Continue(()),
        });
        if let ControlFlow::Break(what) = flow {
            return Err(Refusal::Unsupported(format!(
                "{what} in MERGE … INSERT values (the check and the insert each compute them, \
                 and must see the same row; compute them in the source query instead)"
            )));
        }
    }
    Ok(())
}
