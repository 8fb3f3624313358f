//! Read protection, as an AST visitor: every table reference in a query — FROM, JOIN,
//! subqueries at any depth, CTE bodies, set operations, LATERAL — is resolved against the
//! catalog with the session's search_path and replaced by its fence (see [`crate::fence`]),
//! schema-qualified. CTE names shadow tables exactly where PostgreSQL says they do; system
//! catalogs pass only if allow-listed; functions only if allow-listed. A relation reference
//! the visitor did not expect (a position it does not rewrite) refuses the statement.
//!
//! A relation the agent reads whole (no row filter, every column visible) is not fenced: it is
//! named schema-qualified, and PostgreSQL plans it as it would without Portcullis. After a
//! SELECT's FROM is fenced, the conditions PostgreSQL would push into a `security_barrier` view
//! are copied into the fences (see [`crate::pushdown`]), so indexes still serve them.

use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, ObjectNamePart, Query,
    Select, SetExpr, TableAlias, TableFactor, TableFunctionArgs, TableSampleKind,
    TableSampleMethod, TableWithJoins, VisitMut, VisitorMut,
};

use policies::{ColumnRule, Filter};

use crate::catalog::{normalize, Relation, Resolved};
use crate::catalogs;
use crate::fence;
use crate::locking;
use crate::policy::TablePolicy;
use crate::pushdown::{self, FenceInfo, Frame, Item};
use crate::{Context, Refusal};

/// A relation the statement reads, with the rules applied to it.
#[derive(Debug, Clone)]
pub struct Read {
    /// `schema::table`
    pub entity_type: String,
    pub policy: Arc<TablePolicy>,
}

struct Protector<'a> {
    ctx: &'a Context<'a>,
    ctes: Vec<Vec<String>>,
    selects: Vec<Vec<FenceInfo>>,
    /// Name resolution's scopes, innermost last (see [`crate::pushdown`]).
    frames: Vec<Frame>,
    /// Per query, its body when that is a SELECT (whose scope the query's ORDER BY shares).
    bodies: Vec<Option<*const Select>>,
    /// The queries of `EXISTS` and `IN`/`= ANY` subqueries about to be visited: PostgreSQL may
    /// turn those into (semi- or anti-) joins, which a condition naming the enclosing query
    /// would prevent, so no copy inside them names it (as none is pushed into a view there).
    sublinks: Vec<*const Query>,
    /// Per query, whether it is such a subquery (a barrier frame sits under its scope).
    in_sublink: Vec<bool>,
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
        frames: Vec::new(),
        bodies: Vec::new(),
        sublinks: Vec::new(),
        in_sublink: Vec::new(),
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
    /// The FROM items of a SELECT as name resolution sees them, before they are rewritten.
    fn scope(&self, from: &[TableWithJoins]) -> Frame {
        let mut items = Vec::new();
        for twj in from {
            self.scope_item(&twj.relation, &mut items);
            for join in &twj.joins {
                self.scope_item(&join.relation, &mut items);
            }
        }
        Frame::Level(items)
    }

    fn scope_item(&self, factor: &TableFactor, items: &mut Vec<Item>) {
        let alias_of = |a: &Option<TableAlias>| a.as_ref().map(|a| normalize(&a.name));
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } if alias.as_ref().is_none_or(|a| a.columns.is_empty()) => {
                let opaque = |alias| Item::Opaque { alias };
                match single_name(name) {
                    // `FROM ONLY t`, as sqlparser reads it.
                    Some(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("only") => {
                        return items.push(opaque(None));
                    }
                    Some(i) if self.in_cte_scope(&normalize(i)) => {
                        return items.push(opaque(alias_of(alias).or(Some(normalize(i)))));
                    }
                    _ => {}
                }
                let item = match self.ctx.catalog.resolve(name, self.ctx.search_path) {
                    Some(Resolved::Protected(rel)) => match self.ctx.policies.read(rel) {
                        Ok(policy) => pushdown::item(
                            rel,
                            &policy,
                            alias_of(alias).unwrap_or_else(|| rel.name.clone()),
                        ),
                        Err(_) => opaque(None),
                    },
                    Some(Resolved::System(rel)) => {
                        opaque(Some(alias_of(alias).unwrap_or_else(|| rel.name.clone())))
                    }
                    None => opaque(None),
                };
                items.push(item);
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias: None,
            } => {
                self.scope_item(&table_with_joins.relation, items);
                for join in &table_with_joins.joins {
                    self.scope_item(&join.relation, items);
                }
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::Table { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::NestedJoin { alias, .. } => items.push(Item::Opaque {
                alias: alias_of(alias),
            }),
            _ => items.push(Item::Opaque { alias: None }),
        }
    }

    /// Whether `select` is the body of the innermost query (whose frame the query holds).
    fn is_body(&self, select: &Select) -> bool {
        self.bodies.last() == Some(&Some(select as *const Select))
    }

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
                let locked = matches!(self.locking.last(), Some(Some(_)));
                if !locked && seen_whole(rel, &policy) {
                    // Nothing to hide: no fence, which would protect nothing and keep
                    // PostgreSQL from pushing any condition in.
                    self.reads.push(Read {
                        entity_type: rel.entity_type(),
                        policy,
                    });
                    *factor = TableFactor::Table {
                        name: ObjectName::from(vec![quoted(&rel.schema), quoted(&rel.name)]),
                        alias: alias.map(|a| TableAlias {
                            explicit: true,
                            name: quoted(&normalize(&a.name)),
                            ..a
                        }),
                        args: None,
                        with_hints: vec![],
                        version: None,
                        partitions: vec![],
                        json_path: None,
                        // PostgreSQL's grammar: `t AS a TABLESAMPLE …`.
                        sample: sample.map(|kind| {
                            let (TableSampleKind::BeforeTableAlias(s)
                            | TableSampleKind::AfterTableAlias(s)) = kind;
                            TableSampleKind::AfterTableAlias(s)
                        }),
                        index_hints: vec![],
                        with_ordinality: false,
                    };
                    return ControlFlow::Continue(());
                }
                let mut subquery = match fence::build(rel, &policy) {
                    Ok(f) => f,
                    Err(e) => return ControlFlow::Break(e),
                };
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
                        relation: rel.name.clone(),
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

/// Whether `policy` shows every row and every column of `rel` as it is.
fn seen_whole(rel: &Relation, policy: &TablePolicy) -> bool {
    policy.filter == Filter::True
        && rel
            .columns
            .iter()
            .all(|c| matches!(policy.column(&c.name), ColumnRule::Visible))
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
        let this = &*query as *const Query;
        let sublink = match self.sublinks.iter().position(|q| *q == this) {
            Some(i) => {
                self.sublinks.swap_remove(i);
                true
            }
            None => false,
        };
        if sublink {
            self.frames.push(Frame::Barrier);
        }
        self.in_sublink.push(sublink);
        // A SELECT body's scope is also its query's ORDER BY's.
        let body = match &*query.body {
            SetExpr::Select(select) => {
                let scope = self.scope(&select.from);
                self.frames.push(scope);
                Some(&**select as *const Select)
            }
            _ => None,
        };
        self.bodies.push(body);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<Refusal> {
        if let Some(Some(_)) = self.bodies.pop() {
            self.frames.pop();
        }
        if self.in_sublink.pop() == Some(true) {
            self.frames.pop();
        }
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
        if !self.is_body(select) {
            let scope = self.scope(&select.from);
            self.frames.push(scope);
        }
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
            pushdown::pushdown(select, &fences, &self.frames, self.ctx.catalog);
        }
        if !self.is_body(select) {
            self.frames.pop();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        // Inside a FROM item, this level's other items are out of (non-lateral) reach.
        self.frames.push(Frame::Barrier);
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
        self.frames.pop();
        self.rewrite_table(factor)
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Refusal> {
        match &*expr {
            Expr::Exists { subquery, .. } | Expr::InSubquery { subquery, .. } => {
                self.sublinks.push(&**subquery as *const Query);
            }
            Expr::AnyOp { right, .. } => {
                if let Expr::Subquery(q) = &**right {
                    self.sublinks.push(&**q as *const Query);
                }
            }
            _ => {}
        }
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
