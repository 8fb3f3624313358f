//! The forwarded text, read back by PostgreSQL's own parser (libpg_query, PostgreSQL 15's
//! `scan.l` and `gram.y`, through the `pg_query` crate) before it is cached and forwarded.
//!
//! Portcullis checked an AST; PostgreSQL will run text. This module proves the two are the
//! same where it matters for enforcement, and refuses otherwise:
//!
//! - lexically (PostgreSQL's scanner): no comments; the string, bit-string and quoted-identifier
//!   tokens are exactly the ones [`crate::lexical`] spelled, so no text the agent wrote as data
//!   became SQL and no SQL became data;
//! - syntactically (PostgreSQL's grammar): the same number of statements; every relation
//!   PostgreSQL reads is one the rewriter saw (and fenced); every function PostgreSQL calls is
//!   one the gate checked, or one PostgreSQL's grammar makes of SQL syntax (`EXTRACT`,
//!   `AT TIME ZONE`, …).
//!
//! The parse tree is read as libpg_query's JSON and walked generically, so no node type can
//! hide a relation or a call from the comparison. This runs on a rewrite-cache miss only.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::ops::ControlFlow;

use pg_query::protobuf::Token;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor as JsonVisitor};
use serde_json::Value as Json;
use sqlparser::ast::{
    CopySource, Expr, ObjectName, ObjectNamePart, Query, Statement, TableFactor, Visit, Visitor,
};

use crate::catalog::{normalize, RoutineKind};
use crate::lexical::Spelled;
use crate::Refusal;

/// What the forwarded text must hold, from the AST the gate checked.
#[derive(Debug, Default)]
pub(crate) struct Expected {
    pub statements: usize,
    pub spelled: Spelled,
    /// Relations, as `catalog.schema.name` parts that are present, normalized; `None`: not
    /// compared (gate-only mode, where no relation is fenced and utility statements name
    /// relations in places sqlparser does not visit as such).
    pub relations: Option<Vec<String>>,
    /// The last part of every function name called, normalized.
    pub functions: Vec<String>,
    /// User-defined routines an unqualified name would reach on the session's search_path, as
    /// (kind, name, schema): a statement that names one unqualified is refused.
    pub user_routines: Vec<(RoutineKind, String, String)>,
    /// Every user-defined function (name, schema), on the path or not: `x.f` naming one is
    /// refused.
    pub user_functions: Vec<(String, String)>,
}

/// Relations and function calls of `statements`, before they are spelled.
pub(crate) fn references(statements: &[Statement]) -> (Vec<String>, Vec<String>) {
    let mut refs = References::default();
    for statement in statements {
        let _ = statement.visit(&mut refs);
    }
    (refs.relations, refs.functions)
}

#[derive(Default)]
struct References {
    relations: Vec<String>,
    functions: Vec<String>,
}

impl Visitor for References {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        // `COPY t TO STDOUT` (gate-only mode; enforcement rewrites it to `COPY (SELECT …)`):
        // sqlparser does not visit this name as a relation.
        if let Statement::Copy {
            source: CopySource::Table { table_name, .. },
            ..
        } = statement
        {
            self.relations.push(dotted(table_name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        // `FOR UPDATE OF t`: PostgreSQL's grammar reads `t` as a relation name.
        for lock in &query.locks {
            if let Some(of) = &lock.of {
                self.relations.push(dotted(of));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.relations.push(dotted(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        // A set-returning function in FROM: a relation to sqlparser, a call to PostgreSQL.
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = factor
        {
            self.functions.push(last(name));
        }
        if let TableFactor::Function { name, .. } = factor {
            self.functions.push(last(name));
        }
        // `FROM unnest(a[, b…]) [WITH ORDINALITY]`: one call of unnest to PostgreSQL's grammar.
        if let TableFactor::UNNEST { .. } = factor {
            self.functions.push("unnest".into());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.functions.push(last(&f.name));
        }
        ControlFlow::Continue(())
    }
}

fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => normalize(i),
            other => other.to_string(),
        })
        .collect()
}

fn dotted(name: &ObjectName) -> String {
    parts(name).join(".")
}

fn last(name: &ObjectName) -> String {
    parts(name).pop().unwrap_or_default()
}

/// Functions PostgreSQL's grammar calls for SQL syntax (`SystemFuncName`), which sqlparser
/// models as expressions of their own.
const GRAMMAR_FUNCTIONS: &[&str] = &[
    "extract",
    "date_part",
    "substring",
    "btrim",
    "ltrim",
    "rtrim",
    "position",
    "overlay",
    "timezone",
    "overlaps",
    "normalize",
    "is_normalized",
    "similar_to_escape",
    "similar_escape",
    "pg_collation_for",
    "xmlexists",
    "like_escape",
];

/// Checks `sql` (the text about to be forwarded) against what the gate checked.
pub(crate) fn verify(sql: &str, expected: &Expected) -> Result<(), Refusal> {
    if sql.is_empty() {
        return if expected.statements == 0 {
            Ok(())
        } else {
            Err(disagree("the statement is empty"))
        };
    }
    check_tokens(sql, &expected.spelled)?;
    let found = read(sql)?;
    let stmts = found.statements;
    if stmts != expected.statements {
        return Err(disagree(&format!(
            "PostgreSQL reads {stmts} statements where Portcullis checked {}",
            expected.statements
        )));
    }
    if let Some(expected) = &expected.relations {
        let mut relations = counts(expected);
        for relation in &found.relations {
            if !take(&mut relations, relation) {
                return Err(disagree(&format!(
                    "PostgreSQL reads a relation {relation:?} Portcullis did not check"
                )));
            }
        }
    }
    let mut functions = counts(&expected.functions);
    for (schema, name) in &found.functions {
        if take(&mut functions, name)
            || (schema.as_deref() == Some("pg_catalog") && GRAMMAR_FUNCTIONS.contains(&&**name))
        {
            continue;
        }
        return Err(disagree(&format!(
            "PostgreSQL calls a function {name:?} Portcullis did not check"
        )));
    }
    if expected.relations.is_none() {
        // Gate-only mode: no policy to bypass, and user-defined routines are the agent's own.
        return Ok(());
    }
    check_overloads(&found, &expected.user_routines, &expected.user_functions)
}

/// Refuses a statement in which PostgreSQL would choose among built-in and user-defined
/// routines of one name: operators (PostgreSQL's reading, so those implied by syntax count)
/// and functions named unqualified. Which one PostgreSQL calls depends on argument types,
/// which Portcullis does not know, and a user-defined one runs with Portcullis's database
/// rights. Operators qualified with another schema than `pg_catalog` are refused outright.
fn check_overloads(
    found: &Found,
    user_routines: &[(RoutineKind, String, String)],
    user_functions: &[(String, String)],
) -> Result<(), Refusal> {
    for (schema, name) in &found.operators {
        if let Some(schema) = schema.as_deref().filter(|s| *s != "pg_catalog") {
            return Err(Refusal::Forbidden(format!(
                "operator {schema}.{name} is not a PostgreSQL built-in (user-defined operators \
                 run user-defined functions)"
            )));
        }
    }
    // `t.f` is a call of f(t) to PostgreSQL when t has no column f (functional notation),
    // resolved with the path in force when PostgreSQL parses it: any user function counts.
    for parts in found.column_refs.iter().filter(|parts| parts.len() > 1) {
        let Some(Some(name)) = parts.last() else {
            continue;
        };
        if let Some((_, schema)) = user_functions.iter().find(|(n, _)| n == name) {
            return Err(Refusal::Forbidden(format!(
                "{} may call function {schema}.{name}() (PostgreSQL reads x.f as f(x) when x has \
                 no column f), which is user-defined and runs with Portcullis's database rights",
                parts
                    .iter()
                    .map(|p| p.as_deref().unwrap_or("*"))
                    .collect::<Vec<_>>()
                    .join(".")
            )));
        }
    }
    if user_routines.is_empty() {
        return Ok(());
    }
    let operators = found.operators.iter().filter(|(s, _)| s.is_none());
    let functions = found.functions.iter().filter(|(s, _)| s.is_none());
    let used = functions
        .map(|(_, n)| (RoutineKind::Function, n))
        .chain(operators.map(|(_, n)| (RoutineKind::Operator, n)));
    for (kind, name) in used {
        let Some((_, _, schema)) = user_routines
            .iter()
            .find(|(k, n, _)| *k == kind && n == name)
        else {
            continue;
        };
        return Err(Refusal::Forbidden(match kind {
            RoutineKind::Function => format!(
                "function {name}() is also defined in schema {schema}, which is on the \
                 search_path: PostgreSQL may call that one, with Portcullis's database rights. \
                 Write pg_catalog.{name}(…) for the built-in"
            ),
            RoutineKind::Operator => format!(
                "operator {name} is also defined in schema {schema}, which is on the \
                 search_path: PostgreSQL may call that one, with Portcullis's database rights, \
                 so statements using {name} are refused while it is there"
            ),
        }));
    }
    Ok(())
}

fn disagree(what: &str) -> Refusal {
    Refusal::Forbidden(format!(
        "the statement Portcullis would forward does not read the same in PostgreSQL ({what})"
    ))
}

fn counts(items: &[String]) -> HashMap<&str, usize> {
    let mut map = HashMap::new();
    for item in items {
        *map.entry(item.as_str()).or_insert(0) += 1;
    }
    map
}

fn take(counts: &mut HashMap<&str, usize>, item: &str) -> bool {
    match counts.get_mut(item) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// PostgreSQL's scanner over `sql`: no comments, and exactly the spelled literals and quoted
/// identifiers.
fn check_tokens(sql: &str, spelled: &Spelled) -> Result<(), Refusal> {
    let scan = pg_query::scan(sql).map_err(|e| Refusal::Syntax(format!("PostgreSQL: {e}")))?;
    let mut literals = Vec::new();
    let mut quoted = Vec::new();
    for token in &scan.tokens {
        let text = sql
            .get(token.start as usize..token.end as usize)
            .ok_or_else(|| disagree("a token outside the text"))?;
        match Token::from_i32(token.token) {
            Some(Token::SqlComment | Token::CComment) => {
                return Err(disagree("PostgreSQL reads a comment"))
            }
            Some(Token::Sconst | Token::Bconst | Token::Xconst) => literals.push(text),
            Some(Token::Ident) if text.starts_with('"') => quoted.push(text),
            Some(Token::Usconst | Token::Uident) => {
                return Err(disagree("PostgreSQL reads a U& token"))
            }
            _ => {}
        }
    }
    if !same_multiset(&literals, &spelled.literals) {
        return Err(disagree("PostgreSQL reads other string constants"));
    }
    if !same_multiset(&quoted, &spelled.quoted_idents) {
        return Err(disagree("PostgreSQL reads other quoted identifiers"));
    }
    Ok(())
}

fn same_multiset(found: &[&str], spelled: &[String]) -> bool {
    if found.len() != spelled.len() {
        return false;
    }
    let mut counts = counts(spelled);
    found.iter().all(|f| take(&mut counts, f))
}

#[derive(Default)]
struct Found {
    statements: usize,
    relations: Vec<String>,
    functions: Vec<(Option<String>, String)>,
    /// Every operator PostgreSQL will look up by name, explicit or implied by syntax.
    operators: Vec<(Option<String>, String)>,
    constants: Vec<String>,
    column_refs: Vec<Vec<Option<String>>>,
}

/// What PostgreSQL's parser reads in `sql`: for differential tests of the gate (what
/// PostgreSQL reads in the client's text against what it reads in the forwarded text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub statements: usize,
    /// `schema.name` of every relation read, sorted.
    pub relations: Vec<String>,
    /// `schema.name` (or `name`) of every function called, sorted.
    pub functions: Vec<String>,
    /// Every constant (`A_Const`, as libpg_query's JSON without its position), sorted.
    pub constants: Vec<String>,
}

/// PostgreSQL 15's reading of `sql`, or its syntax error.
pub fn postgres_reading(sql: &str) -> Result<Reading, String> {
    let mut found = read(sql).map_err(|e| e.to_string())?;
    let mut functions: Vec<String> = found
        .functions
        .into_iter()
        .map(|(schema, name)| match schema {
            Some(s) => format!("{s}.{name}"),
            None => name,
        })
        .collect();
    functions.sort();
    found.relations.sort();
    found.constants.sort();
    Ok(Reading {
        statements: found.statements,
        relations: found.relations,
        functions,
        constants: found.constants,
    })
}

/// Reads libpg_query's JSON parse tree of `sql` in one pass, collecting every RangeVar,
/// function call, constant and column reference at any depth, without building the tree.
///
/// A RangeVar stands as `{"RangeVar": {…}}` in a node list and bare in a field typed RangeVar
/// (INSERT's target, COPY's table…): it is recognized by its `relname`, which only a RangeVar
/// has; likewise a call by its `funcname`.
fn read(sql: &str) -> Result<Found, Refusal> {
    with_parse_tree(sql, |json| {
        let mut found = Found::default();
        let mut de = serde_json::Deserializer::from_str(json);
        Walk {
            found: &mut found,
            top: true,
            node: None,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| disagree(&format!("unreadable parse tree: {e}")))?;
        Ok(found)
    })
}

/// One JSON value of the tree, walked.
struct Walk<'f> {
    found: &'f mut Found,
    /// The root, whose `stmts` are counted.
    top: bool,
    /// This value is the body of a node that makes PostgreSQL look up operators by name (see
    /// [`operators`]): its operator fields are collected while the walk goes on.
    node: Option<&'static str>,
}

/// The nodes whose operators [`operators`] reads.
fn operator_node(key: &str) -> Option<&'static str> {
    ["A_Expr", "SubLink", "SortBy", "CaseExpr", "JoinExpr"]
        .into_iter()
        .find(|n| *n == key)
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> JsonVisitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("libpg_query's JSON parse tree")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut name: [Option<String>; 3] = Default::default();
        let mut operator_fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "catalogname" => name[0] = Some(map.next_value()?),
                "schemaname" => name[1] = Some(map.next_value()?),
                "relname" => name[2] = Some(map.next_value()?),
                "funcname" => {
                    let parts: Vec<Json> = map.next_value()?;
                    let mut name: Vec<String> = parts.iter().filter_map(string_node).collect();
                    let last = name.pop().unwrap_or_default();
                    self.found.functions.push((name.pop(), last));
                }
                "MultiAssignRef" => {
                    // `SET (a, b) = (SELECT …)`: PostgreSQL's grammar gives every column the
                    // same source node, which libpg_query prints once per column. Read once.
                    let value: Json = map.next_value()?;
                    if value.get("colno").and_then(Json::as_i64).unwrap_or(1) == 1 {
                        if let Some(source) = value.get("source") {
                            Walk {
                                found: &mut *self.found,
                                top: false,
                                node: None,
                            }
                            .deserialize(source)
                            .map_err(serde::de::Error::custom)?;
                        }
                    }
                }
                key if operator_node(key).is_some() => map.next_value_seed(Walk {
                    found: &mut *self.found,
                    top: false,
                    node: operator_node(key),
                })?,
                // An operator node's own fields: the small ones read, the subtrees walked.
                "name" | "operName" | "useOp" | "kind" | "subLinkType" | "isNatural"
                    if self.node.is_some() =>
                {
                    operator_fields.insert(key.to_string(), map.next_value()?);
                }
                "arg" | "usingClause" if self.node.is_some() => {
                    operator_fields.insert(key.to_string(), Json::Bool(true));
                    map.next_value_seed(Walk {
                        found: &mut *self.found,
                        top: false,
                        node: None,
                    })?;
                }
                "ColumnRef" => {
                    let value: Json = map.next_value()?;
                    let fields = value.get("fields").and_then(Json::as_array);
                    self.found
                        .column_refs
                        .push(fields.into_iter().flatten().map(string_node).collect());
                }
                "A_Const" => {
                    let mut constant: Json = map.next_value()?;
                    if let Some(map) = constant.as_object_mut() {
                        map.remove("location");
                    }
                    self.found.constants.push(constant.to_string());
                }
                "stmts" if self.top => {
                    self.found.statements = map.next_value_seed(Count {
                        found: &mut *self.found,
                    })?
                }
                _ => map.next_value_seed(Walk {
                    found: &mut *self.found,
                    top: false,
                    node: None,
                })?,
            }
        }
        if let Some(node) = self.node {
            let fields = Json::Object(operator_fields);
            self.found.operators.extend(operators(node, &fields));
        }
        if let [catalog, schema, Some(relname)] = name {
            let parts: Vec<String> = [catalog, schema, Some(relname)]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect();
            self.found.relations.push(parts.join("."));
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        walk_seq(seq, self.found).map(|_| ())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The statements of the root's `stmts`, walked and counted.
struct Count<'f> {
    found: &'f mut Found,
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> JsonVisitor<'de> for Count<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of statements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<usize, A::Error> {
        walk_seq(seq, self.found)
    }
}

/// Walks every element of a list; returns how many there were.
fn walk_seq<'de, A: SeqAccess<'de>>(mut seq: A, found: &mut Found) -> Result<usize, A::Error> {
    let mut n = 0;
    while seq
        .next_element_seed(Walk {
            found: &mut *found,
            top: false,
            node: None,
        })?
        .is_some()
    {
        n += 1;
    }
    Ok(n)
}

/// The operators a node of PostgreSQL's raw parse tree makes PostgreSQL look up by name (and
/// so choose among by argument types on the search_path), as (schema, name): an operator
/// expression's own, `=` for `IN`, `IS DISTINCT FROM`, `NULLIF`, `CASE x WHEN`, `IN (SELECT …)`
/// and `JOIN … USING`/`NATURAL JOIN`, the comparisons of `BETWEEN`, and `ORDER BY … USING op`.
/// `value` holds the node's operator fields only (`name`, `operName`, `useOp`, `kind`,
/// `subLinkType`, `isNatural`, and `true` for an `arg` or `usingClause` present), collected
/// while the walk streams through the node.
fn operators(node: &str, value: &Json) -> Vec<(Option<String>, String)> {
    let named = |key: &str| -> Option<(Option<String>, String)> {
        let mut parts: Vec<String> = value
            .get(key)?
            .as_array()?
            .iter()
            .filter_map(string_node)
            .collect();
        let name = parts.pop()?;
        Some((parts.pop(), name))
    };
    let equals = || vec![(None, "=".to_string())];
    match node {
        "A_Expr" => {
            let kind = value.get("kind").and_then(Json::as_str).unwrap_or("");
            if kind.contains("BETWEEN") {
                [">=", "<=", "<", ">"]
                    .iter()
                    .map(|op| (None, op.to_string()))
                    .collect()
            } else {
                named("name").into_iter().collect()
            }
        }
        "SubLink" => match named("operName") {
            Some(op) => vec![op],
            None if value.get("subLinkType").and_then(Json::as_str) == Some("ANY_SUBLINK") => {
                equals()
            }
            None => Vec::new(),
        },
        "SortBy" => named("useOp").into_iter().collect(),
        "CaseExpr" if value.get("arg").is_some() => equals(),
        "JoinExpr"
            if value.get("usingClause").is_some()
                || value.get("isNatural").and_then(Json::as_bool) == Some(true) =>
        {
            equals()
        }
        _ => Vec::new(),
    }
}

/// Every column reference (`ColumnRef`) in `sql` as PostgreSQL's grammar reads it: its
/// name parts, `None` for `*`.
pub(crate) fn column_refs(sql: &str) -> Result<Vec<Vec<Option<String>>>, Refusal> {
    Ok(read(sql)?.column_refs)
}

/// The text of a `String` node (`{"String": {"sval": "…"}}`).
fn string_node(node: &Json) -> Option<String> {
    let s = node.get("String")?;
    s.get("sval")
        .or_else(|| s.get("str"))
        .and_then(Json::as_str)
        .map(str::to_string)
}

/// Calls `f` with libpg_query's parse tree of `sql` as JSON (the crate exposes only the
/// protobuf form, whose walker skips node types), read in place.
fn with_parse_tree<T>(sql: &str, f: impl FnOnce(&str) -> Result<T, Refusal>) -> Result<T, Refusal> {
    #[repr(C)]
    struct PgQueryError {
        message: *mut c_char,
        funcname: *mut c_char,
        filename: *mut c_char,
        lineno: i32,
        cursorpos: i32,
        context: *mut c_char,
    }
    #[repr(C)]
    struct PgQueryParseResult {
        parse_tree: *mut c_char,
        stderr_buffer: *mut c_char,
        error: *mut PgQueryError,
    }
    extern "C" {
        fn pg_query_parse(input: *const c_char) -> PgQueryParseResult;
        fn pg_query_free_parse_result(result: PgQueryParseResult);
    }
    let input = CString::new(sql).map_err(|_| Refusal::Syntax("a NUL byte".into()))?;
    // SAFETY: `input` is a valid C string for the call; the result's pointers are read while
    // it is alive and freed exactly once by libpg_query's own free function.
    unsafe {
        let result = pg_query_parse(input.as_ptr());
        let out = if !result.error.is_null() {
            let message = CStr::from_ptr((*result.error).message).to_string_lossy();
            Err(Refusal::Syntax(format!("PostgreSQL: {message}")))
        } else {
            match CStr::from_ptr(result.parse_tree).to_str() {
                Ok(json) => f(json),
                Err(_) => Err(disagree("a parse tree that is not UTF-8")),
            }
        };
        pg_query_free_parse_result(result);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(statements: usize, literals: &[&str], relations: &[&str]) -> Expected {
        Expected {
            statements,
            spelled: Spelled {
                literals: literals.iter().map(|s| s.to_string()).collect(),
                quoted_idents: vec![],
            },
            relations: Some(relations.iter().map(|s| s.to_string()).collect()),
            functions: vec![],
            user_routines: vec![],
            user_functions: vec![],
        }
    }

    /// The unqualified operators PostgreSQL looks up for `sql`, sorted and deduplicated.
    fn operators_of(sql: &str) -> Vec<String> {
        let mut ops: Vec<String> = read(sql)
            .unwrap()
            .operators
            .into_iter()
            .map(|(schema, name)| match schema {
                Some(s) => format!("{s}.{name}"),
                None => name,
            })
            .collect();
        ops.sort();
        ops.dedup();
        ops
    }

    #[test]
    fn operators_implied_by_syntax_are_read() {
        let cases: &[(&str, &[&str])] = &[
            ("SELECT a + b FROM t WHERE c ~~ 'x'", &["+", "~~"]),
            ("SELECT 1 FROM t WHERE a IN (1, 2)", &["="]),
            ("SELECT 1 FROM t WHERE a NOT IN (1, 2)", &["<>"]),
            ("SELECT 1 FROM t WHERE a IN (SELECT b FROM u)", &["="]),
            ("SELECT 1 FROM t WHERE a < ALL (SELECT b FROM u)", &["<"]),
            ("SELECT 1 FROM t WHERE a = ANY ('{1}')", &["="]),
            (
                "SELECT 1 FROM t WHERE a BETWEEN 1 AND 2",
                &["<", "<=", ">", ">="],
            ),
            ("SELECT 1 FROM t WHERE a IS DISTINCT FROM b", &["="]),
            ("SELECT nullif(a, b) FROM t", &["="]),
            ("SELECT CASE a WHEN 1 THEN 2 END FROM t", &["="]),
            ("SELECT CASE WHEN a THEN 2 END FROM t", &[]),
            ("SELECT 1 FROM t JOIN u USING (id)", &["="]),
            ("SELECT 1 FROM t NATURAL JOIN u", &["="]),
            ("SELECT 1 FROM t JOIN u ON true", &[]),
            ("SELECT a FROM t ORDER BY a USING >", &[">"]),
            ("SELECT a FROM t ORDER BY a", &[]),
            ("SELECT a ILIKE 'x', a SIMILAR TO 'y' FROM t", &["~", "~~*"]),
            ("SELECT a OPERATOR(public.===) b FROM t", &["public.==="]),
            ("SELECT -a, |/ b FROM t", &["-", "|/"]),
        ];
        for (sql, ops) in cases {
            assert_eq!(operators_of(sql), *ops, "{sql}");
        }
    }

    #[test]
    fn user_routines_on_the_path_are_refused_by_name() {
        let routines = vec![
            (RoutineKind::Operator, "=".to_string(), "public".to_string()),
            (
                RoutineKind::Function,
                "upper".to_string(),
                "public".to_string(),
            ),
        ];
        let with = |sql: &str, functions: &[&str]| {
            verify(
                sql,
                &Expected {
                    statements: 1,
                    relations: Some(vec!["t".into()]),
                    functions: functions.iter().map(|f| f.to_string()).collect(),
                    user_routines: routines.clone(),
                    user_functions: vec![
                        ("upper".into(), "public".into()),
                        ("leak".into(), "archive".into()),
                    ],
                    ..Default::default()
                },
            )
        };
        let e = with("SELECT 1 FROM t WHERE a IN (1)", &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("operator = is also defined in schema public"),
            "{e}"
        );
        let e = with("SELECT upper(a) FROM t", &["upper"]).unwrap_err();
        assert!(e.to_string().contains("pg_catalog.upper"), "{e}");
        with("SELECT pg_catalog.upper(a) FROM t WHERE a > 1", &["upper"]).unwrap();
        with("SELECT a OPERATOR(pg_catalog.=) 1 FROM t", &[]).unwrap();
        let e = with("SELECT t.upper FROM t", &[]).unwrap_err();
        assert!(e.to_string().contains("reads x.f as f(x)"), "{e}");
        // A function off the path counts too: a SET earlier in the batch may put it there.
        let e = with("SELECT t.leak FROM t", &[]).unwrap_err();
        assert!(e.to_string().contains("archive.leak()"), "{e}");
        let e = with("SELECT a OPERATOR(public.=) 1 FROM t", &[]).unwrap_err();
        assert!(e.to_string().contains("not a PostgreSQL built-in"), "{e}");
    }

    #[test]
    fn sqlparsers_old_spelling_is_caught() {
        // What sqlparser 0.63 printed for `SELECT 'x\''; SELECT ssn FROM customers; -- '`.
        let e = verify(
            r"SELECT 'x\'; SELECT ssn FROM customers; -- '",
            &expected(1, &[r"'x\''; SELECT ssn FROM customers; -- '"], &[]),
        )
        .unwrap_err();
        assert_eq!(e.sqlstate(), "42501", "{e}");
    }

    #[test]
    fn the_canonical_spelling_passes() {
        verify(
            r"SELECT 'x\''; SELECT ssn FROM customers; -- ' FROM public.t",
            &expected(
                1,
                &[r"'x\''; SELECT ssn FROM customers; -- '"],
                &["public.t"],
            ),
        )
        .unwrap();
    }

    #[test]
    fn an_unchecked_relation_or_call_is_caught() {
        let e = verify("SELECT * FROM customers", &expected(1, &[], &[])).unwrap_err();
        assert!(e.to_string().contains("relation"), "{e}");
        let e = verify("SELECT pg_read_file('x')", &expected(1, &["'x'"], &[])).unwrap_err();
        assert!(e.to_string().contains("function"), "{e}");
        verify(
            "SELECT extract(year from now())",
            &Expected {
                statements: 1,
                functions: vec!["now".into()],
                ..Default::default()
            },
        )
        .unwrap();
    }

    #[test]
    fn a_write_target_is_a_relation_too() {
        for sql in [
            "INSERT INTO customers VALUES (1)",
            "UPDATE customers SET id = 1",
            "DELETE FROM customers",
            "COPY customers TO STDOUT",
        ] {
            let e = verify(sql, &expected(1, &[], &[])).unwrap_err();
            assert!(e.to_string().contains("relation"), "{sql}: {e}");
            verify(sql, &expected(1, &[], &["customers"])).unwrap();
        }
    }

    #[test]
    fn comments_and_statement_counts_are_caught() {
        assert!(verify("SELECT 1 -- x", &expected(1, &[], &[])).is_err());
        assert!(verify("SELECT 1 /* x */", &expected(1, &[], &[])).is_err());
        assert!(verify("SELECT 1; SELECT 2", &expected(1, &[], &[])).is_err());
    }
}
