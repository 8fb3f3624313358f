//! Read protection, as an AST visitor: every table reference in a query — FROM, JOIN,
//! subqueries at any depth, CTE bodies, set operations, LATERAL — is resolved against the
//! catalog with the session's search_path and replaced by its fence (see [`crate::fence`]),
//! schema-qualified. CTE names shadow tables exactly where PostgreSQL says they do; system
//! catalogs pass only if allow-listed; functions only if allow-listed. A relation reference
//! the visitor did not expect (a position it does not rewrite) refuses the statement.
//!
//! After a SELECT's FROM is fenced, its WHERE conjuncts that compare an unmasked column of one
//! fence with a constant or parameter through a leakproof operator are *copied* into that
//! fence, so the table's indexes still serve point lookups (as PostgreSQL does for
//! `security_barrier` views). A copied conjunct cannot raise, notify or sleep.

use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, ObjectNamePart, Query,
    Select, SetExpr, TableAlias, TableFactor, TableFunctionArgs, TableSampleKind,
    TableSampleMethod, UnaryOperator, Value, VisitMut, VisitorMut,
};

use crate::catalog::{normalize, Column, Relation, Resolved};
use crate::catalogs;
use crate::fence;
use crate::locking;
use crate::policy::TablePolicy;
use crate::{Context, Refusal};

/// A relation the statement reads, with the rules applied to it.
#[derive(Debug, Clone)]
pub struct Read {
    /// `schema::table`
    pub entity_type: String,
    pub policy: Arc<TablePolicy>,
}

/// A fence in a SELECT's FROM: its alias, and the columns it passes through unmasked.
pub(crate) struct FenceInfo {
    pub alias: String,
    pub clear: Vec<Column>,
}

struct Protector<'a> {
    ctx: &'a Context<'a>,
    ctes: Vec<Vec<String>>,
    selects: Vec<Vec<FenceInfo>>,
    /// Per SELECT, its fences with their relations (for row locks).
    fenced: Vec<Vec<locking::Fenced<'a>>>,
    /// Per query level, its row locks, if it has any.
    locking: Vec<Option<locking::Frame<'a>>>,
    expect_relation: bool,
    /// The table factor being visited was written `ONLY (t)` (see [`parenthesized_only`]).
    pending_only: bool,
    reads: Vec<Read>,
}

/// Protects every query inside `node` (a statement or a query).
pub(crate) fn protect<V: VisitMut>(node: &mut V, ctx: &Context<'_>) -> Result<Vec<Read>, Refusal> {
    let mut p = Protector {
        ctx,
        ctes: Vec::new(),
        selects: Vec::new(),
        fenced: Vec::new(),
        locking: Vec::new(),
        expect_relation: false,
        pending_only: false,
        reads: Vec::new(),
    };
    match node.visit(&mut p) {
        ControlFlow::Break(r) => Err(r),
        ControlFlow::Continue(()) => Ok(p.reads),
    }
}

fn unsupported(what: &str) -> ControlFlow<Refusal> {
    ControlFlow::Break(Refusal::Unsupported(what.to_string()))
}

fn forbidden(what: String) -> ControlFlow<Refusal> {
    ControlFlow::Break(Refusal::Forbidden(what))
}

fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// `ONLY (t)`, which sqlparser reads as a call of a table function `only` with the argument
/// `t` and PostgreSQL as ONLY t: the relation's name.
fn parenthesized_only(name: &ObjectName, args: &Option<TableFunctionArgs>) -> Option<ObjectName> {
    let i = single_name(name)?;
    if i.quote_style.is_some() || !i.value.eq_ignore_ascii_case("only") {
        return None;
    }
    let args = args.as_ref()?;
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = args.args.as_slice() else {
        return None;
    };
    if args.settings.is_some() {
        return None;
    }
    match arg {
        Expr::Identifier(t) => Some(ObjectName::from(vec![t.clone()])),
        Expr::CompoundIdentifier(parts) if parts.len() <= 3 => {
            Some(ObjectName::from(parts.clone()))
        }
        _ => None,
    }
}

/// Whether `node` reads a relation by one of `names`, unqualified.
pub(crate) fn names_any<V: sqlparser::ast::Visit>(node: &V, names: &[String]) -> bool {
    sqlparser::ast::visit_relations(node, |r| match single_name(r).map(normalize) {
        Some(n) if names.contains(&n) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// Without RECURSIVE a WITH query sees only the earlier ones; a name that refers to itself or
/// a later one is a table to PostgreSQL. The ambiguity is refused.
pub(crate) fn refuse_forward_references(with: &sqlparser::ast::With) -> Result<(), Refusal> {
    if with.recursive {
        return Ok(());
    }
    let names: Vec<String> = with
        .cte_tables
        .iter()
        .map(|c| normalize(&c.alias.name))
        .collect();
    for (i, cte) in with.cte_tables.iter().enumerate() {
        if names_any(&*cte.query, &names[i..]) {
            return Err(Refusal::Forbidden(format!(
                "WITH query {:?} refers to itself or a later WITH query without RECURSIVE; \
                 schema-qualify the table name",
                names[i]
            )));
        }
    }
    Ok(())
}

fn single_name(name: &ObjectName) -> Option<&Ident> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => Some(i),
        _ => None,
    }
}

impl<'a> Protector<'a> {
    fn in_cte_scope(&self, name: &str) -> bool {
        self.ctes
            .iter()
            .any(|frame| frame.iter().any(|n| n == name))
    }

    fn check_function(&self, name: &ObjectName) -> ControlFlow<Refusal> {
        let parts: Option<Vec<String>> =
            name.0.iter().map(|p| p.as_ident().map(normalize)).collect();
        let Some(parts) = parts else {
            return unsupported("this function name form");
        };
        let fname = match parts.as_slice() {
            [f] => f,
            [schema, f] if schema == "pg_catalog" => f,
            // information_schema's own helpers (pgjdbc's getPrimaryKeys calls
            // _pg_expandarray): SQL functions over their arguments and the catalogs.
            [schema, f]
                if schema == "information_schema"
                    && catalogs::INFORMATION_SCHEMA_FUNCTIONS.contains(&f.as_str()) =>
            {
                return ControlFlow::Continue(());
            }
            _ => {
                return forbidden(format!(
                    "function {}() is not a PostgreSQL built-in; only built-ins are allowed",
                    parts.join(".")
                ))
            }
        };
        match catalogs::function_refusal(fname, self.ctx.catalog.is_builtin_function(fname)) {
            Some(why) => forbidden(why),
            None => ControlFlow::Continue(()),
        }
    }

    /// Replaces a table reference by its fence, or qualifies it (CTE, system catalog).
    fn rewrite_table(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        let TableFactor::Table {
            name,
            alias,
            args,
            with_hints,
            version,
            partitions,
            json_path,
            sample,
            index_hints,
            with_ordinality,
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        if args.is_some() {
            // A set-returning function in FROM; its name was checked on the way in.
            return ControlFlow::Continue(());
        }
        if !with_hints.is_empty()
            || version.is_some()
            || !partitions.is_empty()
            || json_path.is_some()
            || !index_hints.is_empty()
            || *with_ordinality
        {
            return unsupported("table modifiers (hints, versions) on a protected relation");
        }
        // TABLESAMPLE SYSTEM | BERNOULLI: moved into the fence, so the sample is drawn from the
        // table and the filter applies to the sampled rows (as with PostgreSQL's RLS).
        let sample = match sample.take() {
            None => None,
            Some(kind) => {
                let (TableSampleKind::BeforeTableAlias(s) | TableSampleKind::AfterTableAlias(s)) =
                    &kind;
                if !matches!(
                    s.name,
                    Some(TableSampleMethod::System | TableSampleMethod::Bernoulli)
                ) || s.bucket.is_some()
                    || s.offset.is_some()
                {
                    return unsupported("TABLESAMPLE other than SYSTEM or BERNOULLI");
                }
                Some(TableSampleKind::BeforeTableAlias(s.clone()))
            }
        };
        // sqlparser reads `FROM ONLY t` as table `only` aliased `t`; PostgreSQL reads ONLY.
        // (`ONLY (t)` was recognized on the way in.)
        let mut only = std::mem::take(&mut self.pending_only);
        let mut target = name.clone();
        let mut alias = alias.clone();
        if let Some(i) = single_name(name) {
            if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("only") {
                match alias.take() {
                    Some(a) if a.columns.is_empty() => {
                        only = true;
                        target = ObjectName::from(vec![a.name]);
                    }
                    _ => return unsupported("this use of ONLY"),
                }
            }
        }
        if let Some(i) = single_name(&target) {
            let n = normalize(i);
            if self.in_cte_scope(&n) && sample.is_some() {
                return unsupported("TABLESAMPLE on a WITH query");
            }
            if self.in_cte_scope(&n) {
                if only {
                    return unsupported("ONLY on a WITH query");
                }
                *name = ObjectName::from(vec![quoted(&n)]);
                return ControlFlow::Continue(());
            }
        }
        let resolved = self.ctx.catalog.resolve(&target, self.ctx.search_path);
        match resolved {
            None => forbidden(self.ctx.catalog.unresolved(&target, self.ctx.search_path)),
            Some(Resolved::System(_)) if sample.is_some() => {
                unsupported("TABLESAMPLE on a system catalog")
            }
            Some(Resolved::System(rel)) => {
                if !catalogs::readable(&rel.schema, &rel.name) {
                    return forbidden(format!(
                        "the system catalog {}.{} is not readable through Portcullis",
                        rel.schema, rel.name
                    ));
                }
                let qualified = ObjectName::from(vec![quoted(&rel.schema), quoted(&rel.name)]);
                if let Some(sql) = catalogs::system_view(rel) {
                    let subquery = parse_query(&sql, rel)?;
                    *factor = TableFactor::Derived {
                        lateral: false,
                        subquery,
                        alias: Some(alias.unwrap_or_else(|| TableAlias {
                            explicit: true,
                            name: quoted(&rel.name),
                            columns: vec![],
                            at: None,
                        })),
                        sample: None,
                    };
                } else if only {
                    // `only` was read as the relation name and the relation as its alias.
                    *factor = TableFactor::Table {
                        name: qualified,
                        alias: None,
                        args: None,
                        with_hints: vec![],
                        version: None,
                        partitions: vec![],
                        json_path: None,
                        sample: None,
                        index_hints: vec![],
                        with_ordinality: false,
                    };
                } else {
                    *name = qualified;
                }
                ControlFlow::Continue(())
            }
            Some(Resolved::Protected(rel)) => {
                if only && rel.has_children {
                    return unsupported(
                        "ONLY on a relation with inheritance children or partitions",
                    );
                }
                let policy = match self.ctx.policies.read(rel) {
                    Ok(p) => p,
                    Err(e) => return ControlFlow::Break(e),
                };
                let fence = match fence::build(rel, &policy) {
                    Ok(f) => f,
                    Err(e) => return ControlFlow::Break(e),
                };
                let mut subquery = parse_query(&fence.sql, rel)?;
                if let (Some(sample), SetExpr::Select(inner)) = (sample, &mut *subquery.body) {
                    if let Some(TableFactor::Table { sample: s, .. }) =
                        inner.from.first_mut().map(|t| &mut t.relation)
                    {
                        *s = Some(sample);
                    }
                }
                // The alias as PostgreSQL would fold it, quoted, so no keyword or case can be
                // read differently upstream.
                let alias = match alias {
                    Some(a) => TableAlias {
                        explicit: true,
                        name: quoted(&normalize(&a.name)),
                        ..a
                    },
                    None => TableAlias {
                        explicit: true,
                        name: quoted(&rel.name),
                        columns: vec![],
                        at: None,
                    },
                };
                if let Some(frame) = self.selects.last_mut() {
                    frame.push(FenceInfo {
                        alias: normalize(&alias.name),
                        clear: if alias.columns.is_empty() {
                            fence.clear_columns
                        } else {
                            // Renamed columns: no pushdown (names no longer match).
                            Vec::new()
                        },
                    });
                }
                if let Some(frame) = self.fenced.last_mut() {
                    frame.push(locking::Fenced {
                        alias: normalize(&alias.name),
                        rel,
                        policy: policy.clone(),
                    });
                }
                self.reads.push(Read {
                    entity_type: rel.entity_type(),
                    policy,
                });
                *factor = TableFactor::Derived {
                    lateral: false,
                    subquery,
                    alias: Some(alias),
                    sample: None,
                };
                ControlFlow::Continue(())
            }
        }
    }
}

/// Parses SQL the rewriter built for `rel`.
fn parse_query(sql: &str, rel: &Relation) -> ControlFlow<Refusal, Box<Query>> {
    match parse_fence(sql, rel) {
        Ok(q) => ControlFlow::Continue(q),
        Err(e) => ControlFlow::Break(e),
    }
}

/// Parses an expression the rewriter built for `rel`.
pub(crate) fn parse_expr(sql: &str, rel: &Relation) -> Result<Expr, Refusal> {
    let what = format!("the protected view of {}", rel.entity_type());
    crate::parse::built(sql, &what, |p| p.parse_expr())
}

/// Parses a fence's SQL, built for `rel`.
pub(crate) fn parse_fence(sql: &str, rel: &Relation) -> Result<Box<Query>, Refusal> {
    let what = format!("the protected view of {}", rel.entity_type());
    crate::parse::built(sql, &what, |p| p.parse_query())
}

impl<'a> VisitorMut for Protector<'a> {
    type Break = Refusal;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<Refusal> {
        if query.for_clause.is_some() || query.settings.is_some() || query.format_clause.is_some() {
            return unsupported("this query clause");
        }
        if !query.pipe_operators.is_empty() {
            return unsupported("pipe operators");
        }
        let mut frame = Vec::new();
        if let Some(with) = &query.with {
            if let Err(e) = refuse_forward_references(with) {
                return ControlFlow::Break(e);
            }
            frame = with
                .cte_tables
                .iter()
                .map(|c| normalize(&c.alias.name))
                .collect();
        }
        match &*query.body {
            // Expanded right after parsing (see `table_shorthand`); never reached otherwise.
            SetExpr::Table(_) => return unsupported("TABLE t (write SELECT * FROM t)"),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                return unsupported("data-modifying WITH queries");
            }
            _ => {}
        }
        match locking::Frame::new(query) {
            Ok(locks) => self.locking.push(locks),
            Err(e) => return ControlFlow::Break(e),
        }
        self.ctes.push(frame);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<Refusal> {
        self.ctes.pop();
        if let Some(Some(frame)) = self.locking.pop() {
            if let Err(e) = locking::finish(frame, query) {
                return ControlFlow::Break(e);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<Refusal> {
        if select.into.is_some() {
            return forbidden("SELECT … INTO creates a table".into());
        }
        self.selects.push(Vec::new());
        self.fenced.push(Vec::new());
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, select: &mut Select) -> ControlFlow<Refusal> {
        let fenced = self.fenced.pop().unwrap_or_default();
        if let Some(Some(frame)) = self.locking.last_mut() {
            if let Err(e) = locking::lock_fences(frame, select, fenced, self.ctx) {
                return ControlFlow::Break(e);
            }
        }
        let fences = self.selects.pop().unwrap_or_default();
        if !fences.is_empty() {
            pushdown(select, &fences);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        match factor {
            TableFactor::Table { name, args, .. } => {
                if let Some(table) = parenthesized_only(name, args) {
                    *name = table;
                    *args = None;
                    self.pending_only = true;
                } else if args.is_some() {
                    let name = name.clone();
                    self.check_function(&name)?;
                }
                self.expect_relation = true;
                ControlFlow::Continue(())
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => {
                ControlFlow::Continue(())
            }
            // `FROM unnest(…) [WITH ORDINALITY]`: a call of the built-in unnest.
            TableFactor::UNNEST { .. } => {
                self.check_function(&ObjectName::from(vec![sqlparser::ast::Ident::new(
                    "unnest",
                )]))
            }
            TableFactor::Function { name, .. } => {
                let name = name.clone();
                self.check_function(&name)
            }
            _ => unsupported("this kind of FROM item"),
        }
    }

    fn pre_visit_relation(&mut self, _relation: &mut ObjectName) -> ControlFlow<Refusal> {
        if !std::mem::take(&mut self.expect_relation) {
            return unsupported("a table reference in this position");
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        self.rewrite_table(factor)
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Refusal> {
        match expr {
            Expr::Function(f) => {
                let name = f.name.clone();
                self.check_function(&name)?;
            }
            // `OPERATOR(schema.op)`: a user-defined operator runs a user function.
            Expr::BinaryOp {
                op: BinaryOperator::PGCustomBinaryOperator(parts),
                ..
            } if !(parts.len() == 2 && parts[0] == "pg_catalog") => {
                return forbidden(
                    "operators outside pg_catalog (they run user-defined functions)".into(),
                );
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Types whose comparison operators PostgreSQL marks leakproof (`pg_proc.proleakproof`).
const LEAKPROOF_TYPES: &[&str] = &[
    "int2",
    "int4",
    "int8",
    "text",
    "varchar",
    "bpchar",
    "name",
    "uuid",
    "bool",
    "date",
    "timestamp",
    "timestamptz",
];

/// Copies `WHERE` conjuncts of the form `<unmasked column of a fence> <op> <constant>` into
/// that fence.
pub(crate) fn pushdown(select: &mut Select, fences: &[FenceInfo]) {
    let Some(selection) = &select.selection else {
        return;
    };
    let mut conjuncts = Vec::new();
    split_and(selection, &mut conjuncts);
    let single = select.from.len() == 1 && select.from[0].joins.is_empty() && fences.len() == 1;
    let mut copies: Vec<(String, Expr)> = Vec::new();
    for c in conjuncts {
        let Expr::BinaryOp { left, op, right } = c else {
            continue;
        };
        if !matches!(
            op,
            BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
        ) {
            continue;
        }
        let (col, value, flipped) = match (column_ref(left), column_ref(right)) {
            (Some(c), None) => (c, &**right, false),
            (None, Some(c)) => (c, &**left, true),
            _ => continue,
        };
        let fence = match &col.0 {
            Some(alias) => fences.iter().find(|f| &f.alias == alias),
            None if single => fences.first(),
            None => None,
        };
        let Some(fence) = fence else { continue };
        let Some(column) = fence.clear.iter().find(|c| c.name == col.1) else {
            continue;
        };
        if !LEAKPROOF_TYPES.contains(&column.type_name.as_str()) || !constant_for(column, value) {
            continue;
        }
        let column_expr = Expr::Identifier(quoted(&column.name));
        let (l, r) = if flipped {
            (value.clone(), column_expr)
        } else {
            (column_expr, value.clone())
        };
        copies.push((
            fence.alias.clone(),
            Expr::BinaryOp {
                left: Box::new(l),
                op: op.clone(),
                right: Box::new(r),
            },
        ));
    }
    for (alias, expr) in copies {
        for twj in select.from.iter_mut() {
            let factors = std::iter::once(&mut twj.relation)
                .chain(twj.joins.iter_mut().map(|j| &mut j.relation));
            for factor in factors {
                if let TableFactor::Derived {
                    subquery,
                    alias: Some(a),
                    ..
                } = factor
                {
                    if normalize(&a.name) == alias {
                        if let SetExpr::Select(inner) = &mut *subquery.body {
                            let existing = inner.selection.take();
                            inner.selection = Some(match existing {
                                Some(e) => Expr::BinaryOp {
                                    left: Box::new(Expr::Nested(Box::new(e))),
                                    op: BinaryOperator::And,
                                    right: Box::new(expr.clone()),
                                },
                                None => expr.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
}

fn split_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other),
    }
}

/// `(alias, column)` of a column reference (`col` or `alias.col`).
fn column_ref(e: &Expr) -> Option<(Option<String>, String)> {
    match e {
        Expr::Identifier(i) => Some((None, normalize(i))),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            Some((Some(normalize(&parts[0])), normalize(&parts[1])))
        }
        _ => None,
    }
}

/// Whether `value` is a constant whose comparison with `column` uses the column type's own
/// (leakproof) operator: a parameter, or a literal of the column's kind.
fn constant_for(column: &Column, value: &Expr) -> bool {
    let integer = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match value {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(_) => true,
            Value::Number(n, _) => {
                matches!(column.type_name.as_str(), "int2" | "int4" | "int8") && integer(n)
            }
            Value::SingleQuotedString(_) => {
                !matches!(column.type_name.as_str(), "int2" | "int4" | "int8" | "bool")
            }
            Value::Boolean(_) => column.type_name == "bool",
            _ => false,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => {
            matches!(&**expr, Expr::Value(v) if matches!(&v.value, Value::Number(n, _) if integer(n)))
                && matches!(column.type_name.as_str(), "int2" | "int4" | "int8")
        }
        _ => false,
    }
}
