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

use sqlparser::ast::{ConflictTarget, OnConflict, OnConflictAction, OnInsert};

use super::{abort, assignments, column, named, refs, row_check, rules};
use crate::catalog::{normalize, quote_ident, Relation};
use crate::lexical::to_sql;
use crate::policy::WriteAction;
use crate::protect::{protect, Read};
use crate::{Context, Refusal};

/// The `ON CONFLICT …` clause of an INSERT into `rel` (known to the statement as `alias`), as
/// SQL to append after the INSERT's source; empty without one.
pub(super) fn on_conflict(
    on: Option<&mut OnInsert>,
    rel: &Relation,
    alias: &str,
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
    returning: bool,
) -> Result<String, Refusal> {
    let Some(on) = on else {
        return Ok(String::new());
    };
    let OnInsert::OnConflict(OnConflict {
        conflict_target,
        action,
    }) = on
    else {
        return Err(Refusal::Unsupported("ON DUPLICATE KEY UPDATE".into()));
    };
    let target = match conflict_target {
        None => String::new(),
        Some(ConflictTarget::Columns(columns)) => {
            let names: Vec<String> = columns
                .iter()
                .map(|c| Ok(quote_ident(&column(rel, &normalize(c))?.name)))
                .collect::<Result<_, Refusal>>()?;
            format!(" ({})", names.join(", "))
        }
        Some(ConflictTarget::OnConstraint(name)) => match name.0.as_slice() {
            [part] => {
                let ident = part.as_ident().ok_or_else(|| {
                    Refusal::Unsupported("this ON CONFLICT constraint name".into())
                })?;
                format!(" ON CONSTRAINT {}", quote_ident(&normalize(ident)))
            }
            _ => return Err(Refusal::Syntax("a qualified constraint name".into())),
        },
    };
    let update = match action {
        OnConflictAction::DoNothing => return Ok(format!(" ON CONFLICT{target} DO NOTHING")),
        OnConflictAction::DoUpdate(update) => update,
    };
    if target.is_empty() {
        return Err(Refusal::Syntax(
            "ON CONFLICT DO UPDATE requires inference specification or constraint name".into(),
        ));
    }
    let rules = rules(rel, WriteAction::Update, ctx)?;
    reads.push(rules.target_read(rel));
    let a = quote_ident(alias);
    let sets = assignments(&mut update.assignments, rel, &rules, ctx, reads)?;
    let cond = match update.selection.as_mut() {
        None => "true".to_string(),
        Some(e) => {
            reads.extend(protect(e, ctx)?);
            format!("({})", to_sql(e)?)
        }
    };
    // The agent's expressions read the conflicting row and EXCLUDED unfenced.
    let mut exprs: Vec<&str> = sets.iter().filter_map(|s| s.value.as_deref()).collect();
    exprs.push(&cond);
    let names = vec![alias.to_string(), rel.name.clone(), "excluded".to_string()];
    refs::Target::new(rel, &rules.read, names).check(
        &format!("SELECT {}", exprs.join(", ")),
        "ON CONFLICT DO UPDATE",
    )?;

    // The conflicting row: readable and updatable, or the statement aborts (without running
    // the agent's WHERE on it).
    let (existing_ok, hidden) =
        existing_row(rel, &a, &rules, "the row this INSERT conflicts with")?;
    let (items, then) = checked_set(&sets, &cond, rel, &a, &rules, returning)?;
    Ok(format!(
        " ON CONFLICT{target} DO UPDATE SET {items} WHERE CASE WHEN {existing_ok} THEN {then} ELSE {hidden} END"
    ))
}

/// For an existing row of `rel` (known as `a`, quoted) that a statement updates in place: the
/// condition that it is readable and updatable, and the abort naming it (`what`) otherwise.
pub(super) fn existing_row(
    rel: &Relation,
    a: &str,
    rules: &super::Rules,
    what: &str,
) -> Result<(String, String), Refusal> {
    let existing = policies::Filter::and(vec![rules.read.filter.clone(), rules.write.clone()]);
    let existing_ok = row_check(&existing, rel, |name| format!("{a}.{}", quote_ident(name)))?;
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

/// SET items for an in-place update of the row `a` (quoted) of `rel` when `cond` holds: the
/// agent's values computed once in a sub-SELECT whose WHERE checks the updated row (aborting
/// on a violation), then assigned. Returns the items and the condition to update under
/// (`cond`, with the new-row check when only DEFAULTs are set).
pub(super) fn checked_set(
    sets: &[super::Set<'_>],
    cond: &str,
    rel: &Relation,
    a: &str,
    rules: &super::Rules,
    returning: bool,
) -> Result<(String, String), Refusal> {
    // The updated row: the SET values computed once, checked, then assigned.
    let checked = super::new_row(WriteAction::Update, rel, rules, returning);
    let filter = checked.filter.clone();
    super::refuse_checked_generated(&filter, rel)?;
    super::refuse_checked_defaults(sets, &filter, rel)?;
    let value = |name: &str| match sets
        .iter()
        .position(|s| s.col.name == name && s.value.is_some())
    {
        Some(i) => format!("\"portcullis_new\".\"portcullis_set_{i}\""),
        None => format!("{a}.{}", quote_ident(name)),
    };
    let new_ok = checked.sql(|f| row_check(f, rel, value))?;
    let computed: Vec<(usize, &super::Set<'_>)> = sets
        .iter()
        .enumerate()
        .filter(|(_, s)| s.value.is_some())
        .collect();
    let mut items = Vec::new();
    let mut then = cond.to_string();
    if computed.is_empty() {
        // Only DEFAULTs: the check reads old values only, in the WHERE.
        then = format!("CASE WHEN {cond} THEN {new_ok} ELSE false END");
    } else {
        let columns: Vec<String> = computed
            .iter()
            .map(|(_, s)| quote_ident(&s.col.name))
            .collect();
        let outputs: Vec<String> = computed
            .iter()
            .map(|(i, _)| format!("\"portcullis_new\".\"portcullis_set_{i}\""))
            .collect();
        let values: Vec<String> = computed
            .iter()
            .map(|(i, s)| {
                format!(
                    "CAST(({}) AS {}) AS \"portcullis_set_{i}\"",
                    s.value.as_deref().unwrap_or_default(),
                    super::cast_type(s.col)
                )
            })
            .collect();
        items.push(format!(
            "({}) = (SELECT {} FROM (SELECT {} OFFSET 0) AS \"portcullis_new\" WHERE {new_ok})",
            columns.join(", "),
            outputs.join(", "),
            values.join(", ")
        ));
    }
    items.extend(
        sets.iter()
            .filter(|s| s.value.is_none())
            .map(|s| format!("{} = DEFAULT", quote_ident(&s.col.name))),
    );
    Ok((items.join(", "), then))
}
