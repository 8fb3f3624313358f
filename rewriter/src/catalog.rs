//! The upstream's relations as the rewriter needs them: schema, name, kind, columns with their
//! types, and inheritance. Loaded by the proxy from the real catalog (see `connectors`); here
//! only data and name resolution with a search_path.

use std::collections::{HashMap, HashSet};

use sqlparser::ast::{Ident, ObjectName};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelKind {
    Table,
    PartitionedTable,
    View,
    MaterializedView,
    Foreign,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, usable as a cast target (`character varying(20)`).
    pub sql_type: String,
    /// `pg_type.typname` (`int4`, `text`, `_text` for arrays).
    pub type_name: String,
    /// `pg_type.typcategory` (`S` string, `N` numeric, `D` date/time, `A` array, …).
    pub category: char,
    /// Generated (`GENERATED ALWAYS AS (…) STORED`): its new value exists only after the write.
    pub generated: bool,
    /// What an INSERT that omits the column stores, as SQL from the catalog (`NULL` when the
    /// column has no default); `None` when unknown (identity columns, domain defaults).
    pub default: Option<String>,
}

impl Column {
    pub fn is_text(&self) -> bool {
        self.category == 'S'
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    pub kind: RelKind,
    pub columns: Vec<Column>,
    /// Whether other relations inherit from it (inheritance children or partitions).
    pub has_children: bool,
}

impl Relation {
    /// The Cedar entity type of the relation: `schema::name`.
    pub fn entity_type(&self) -> String {
        format!("{}::{}", self.schema, self.name)
    }

    /// `"schema"."name"`, always quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Schemas whose relations are PostgreSQL's own catalogs (not policy-protected; see
/// `catalogs.rs` for which of them an agent may read).
pub const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

/// Relations by (schema, name), protected and system ones apart, with their columns.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    relations: HashMap<(String, String), Relation>,
    system: HashMap<(String, String), Relation>,
    functions: HashSet<String>,
    /// Relations that are not tables or views (sequences, indexes, composite types) by
    /// (schema, name), with their `relkind`: never resolved, named in refusals.
    others: HashMap<(String, String), char>,
    /// The upstream database's name, which three-part names may begin with.
    database: Option<String>,
    /// User-defined functions and operators (outside the system schemas and not members of an
    /// extension), by (kind, name), with the schemas that define one.
    user_routines: HashMap<(RoutineKind, String), Vec<String>>,
    /// The upstream login's effective search_path (`current_schemas(false)`): every session's
    /// at start.
    search_path: Vec<String>,
    /// The schemas of `relations`.
    schemas: HashSet<String>,
    /// `pg_catalog` operators by (name, left type, right type) (`typname`s; `""` for a prefix
    /// operator's left side): what a copied condition may call (see `crate::pushdown`).
    operators: HashMap<(String, String, String), Operator>,
    /// `pg_catalog` functions none of whose overloads is volatile, returns a set or is an
    /// aggregate, and all of which return one type: that type's `typname`.
    stable_functions: HashMap<String, String>,
}

/// A `pg_catalog` operator, as `pg_operator` and its function's `pg_proc` row describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    /// `typname` of the left operand (`""`: a prefix operator).
    pub left: String,
    pub right: String,
    pub result: String,
    /// `pg_proc.proleakproof` of the operator's function: it reveals nothing about its
    /// arguments beyond its result (no error, notice or side channel depends on them).
    pub leakproof: bool,
}

/// A function or an operator: the two kinds of routine PostgreSQL chooses by overloading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutineKind {
    Function,
    Operator,
}

/// What a relation name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<'c> {
    /// A relation Portcullis protects (user schemas).
    Protected(&'c Relation),
    /// A system catalog relation.
    System(&'c Relation),
}

impl Catalog {
    /// `relations`: every relation outside the system schemas; `system`: every relation in
    /// them; `functions`: the names of the functions in `pg_catalog`.
    pub fn new(relations: Vec<Relation>, system: Vec<Relation>, functions: Vec<String>) -> Self {
        let schemas = relations.iter().map(|r| r.schema.clone()).collect();
        Catalog {
            relations: relations
                .into_iter()
                .map(|r| ((r.schema.clone(), r.name.clone()), r))
                .collect(),
            system: system
                .into_iter()
                .map(|r| ((r.schema.clone(), r.name.clone()), r))
                .collect(),
            functions: functions.into_iter().collect(),
            others: HashMap::new(),
            database: None,
            user_routines: HashMap::new(),
            search_path: Vec::new(),
            schemas,
            operators: HashMap::new(),
            stable_functions: HashMap::new(),
        }
    }

    /// With the `pg_catalog` operators.
    pub fn with_operators(mut self, operators: Vec<Operator>) -> Self {
        self.operators = operators
            .into_iter()
            .map(|o| ((o.name.clone(), o.left.clone(), o.right.clone()), o))
            .collect();
        self
    }

    /// With the `pg_catalog` functions that are not volatile and return one type, as
    /// (name, result `typname`).
    pub fn with_stable_functions(mut self, functions: Vec<(String, String)>) -> Self {
        self.stable_functions = functions.into_iter().collect();
        self
    }

    /// The `pg_catalog` operator `name` taking exactly (`left`, `right`).
    pub fn operator(&self, name: &str, left: &str, right: &str) -> Option<&Operator> {
        self.operators
            .get(&(name.to_string(), left.to_string(), right.to_string()))
    }

    /// The result type of the `pg_catalog` function `name`, when no overload of it is volatile
    /// and all return that type.
    pub fn stable_function(&self, name: &str) -> Option<&str> {
        self.stable_functions.get(name).map(String::as_str)
    }

    /// With the upstream login's effective search_path.
    pub fn with_search_path(mut self, search_path: Vec<String>) -> Self {
        self.search_path = search_path;
        self
    }

    /// The upstream login's effective search_path, where every session starts.
    pub fn search_path(&self) -> &[String] {
        &self.search_path
    }

    /// Whether a table or view of `schema` is known.
    pub fn has_schema(&self, schema: &str) -> bool {
        self.schemas.contains(schema)
    }

    /// A user-defined routine of `schema` that PostgreSQL could call where a statement names
    /// a built-in: any operator, or a function with a built-in's name.
    pub fn shadowing_routine(&self, schema: &str) -> Option<(RoutineKind, &str)> {
        let mut found: Vec<(RoutineKind, &str)> = self
            .user_routines
            .iter()
            .filter(|((kind, name), schemas)| {
                schemas.iter().any(|s| s == schema)
                    && (*kind == RoutineKind::Operator || self.is_builtin_function(name))
            })
            .map(|((kind, name), _)| (*kind, name.as_str()))
            .collect();
        found.sort_by_key(|(kind, name)| (*kind == RoutineKind::Operator, *name));
        found.into_iter().next()
    }

    /// With the user-defined functions and operators, as (schema, name, kind): PostgreSQL
    /// chooses among every routine of a name on the search_path by argument types, so such a
    /// routine may be called where a statement names a built-in (`upper(x::varchar)` calls a
    /// `public.upper(varchar)`), and it runs with Portcullis's database rights.
    pub fn with_user_routines(mut self, routines: Vec<(String, String, RoutineKind)>) -> Self {
        for (schema, name, kind) in routines {
            self.user_routines
                .entry((kind, name))
                .or_default()
                .push(schema);
        }
        self
    }

    /// The first schema of `search_path` (other than `pg_catalog`) that defines a
    /// user-defined routine of this kind and name: an unqualified use of the name may call it.
    pub fn user_routine_on_path<'s>(
        &'s self,
        kind: RoutineKind,
        name: &str,
        search_path: &'s [String],
    ) -> Option<&'s str> {
        let schemas = self.user_routines.get(&(kind, name.to_string()))?;
        search_path
            .iter()
            .find(|s| s.as_str() != "pg_catalog" && schemas.contains(s))
            .map(String::as_str)
    }

    /// Every user-defined function, as (name, a schema defining it), wherever it is: the
    /// session's path may change within a batch before PostgreSQL parses a statement, so
    /// functional notation (`x.f`) is checked against all of them.
    pub fn user_functions(&self) -> Vec<(String, String)> {
        self.user_routines
            .iter()
            .filter(|((kind, _), _)| *kind == RoutineKind::Function)
            .filter_map(|((_, name), schemas)| Some((name.clone(), schemas.first()?.clone())))
            .collect()
    }

    /// The user-defined routines an unqualified name may call with `search_path`, as
    /// (kind, name, first schema on the path that defines one).
    pub fn user_routines_on_path(
        &self,
        search_path: &[String],
    ) -> Vec<(RoutineKind, String, String)> {
        self.user_routines
            .keys()
            .filter_map(|(kind, name)| {
                let schema = self.user_routine_on_path(*kind, name, search_path)?;
                Some((*kind, name.clone(), schema.to_string()))
            })
            .collect()
    }

    /// With the upstream database's name (`db.schema.table` names it).
    pub fn with_database(mut self, database: String) -> Self {
        self.database = Some(database);
        self
    }

    /// The upstream database's name, when known.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// With `others`, (schema, name, relkind) of the relations that are not tables or views,
    /// so that a refusal can say what a name is rather than that it may not exist.
    pub fn with_others(mut self, others: Vec<(String, String, char)>) -> Self {
        self.others = others
            .into_iter()
            .map(|(schema, name, kind)| ((schema, name), kind))
            .collect();
        self
    }

    /// Why `name`, which [`Catalog::resolve`] does not resolve, cannot be used: what the
    /// catalog says it is (a sequence, an index, a composite type), or that Portcullis does not
    /// know it.
    pub fn unresolved(&self, name: &ObjectName, search_path: &[String]) -> String {
        let parts: Option<Vec<String>> =
            name.0.iter().map(|p| p.as_ident().map(normalize)).collect();
        let found = match parts.as_deref() {
            Some([schema, rel]) => self
                .others
                .get(&(schema.clone(), rel.clone()))
                .map(|k| (schema.clone(), rel.clone(), *k)),
            Some([rel]) => search_path.iter().find_map(|schema| {
                self.others
                    .get(&(schema.clone(), rel.clone()))
                    .map(|k| (schema.clone(), rel.clone(), *k))
            }),
            _ => None,
        };
        match found {
            Some((schema, rel, 'S')) => format!(
                "{}.{} is a sequence; sequences are not readable through Portcullis (their \
                 values count rows, rows this agent cannot see among them)",
                quote_ident(&schema),
                quote_ident(&rel)
            ),
            Some((schema, rel, kind)) => format!(
                "{}.{} is {}, not a table or view",
                quote_ident(&schema),
                quote_ident(&rel),
                match kind {
                    'i' | 'I' => "an index",
                    'c' => "a composite type",
                    't' => "a TOAST table",
                    _ => "not readable",
                }
            ),
            None => format!(
                "relation {name} is not known to Portcullis (it may not exist; if it was just \
                 created, Portcullis learns of it when its catalog is refreshed)"
            ),
        }
    }

    /// Whether `pg_catalog` has a function named `name`.
    pub fn is_builtin_function(&self, name: &str) -> bool {
        self.functions.contains(name)
    }

    pub fn relations(&self) -> impl Iterator<Item = &Relation> {
        self.relations.values()
    }

    pub fn get(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.relations.get(&(schema.to_string(), name.to_string()))
    }

    /// Resolves a relation name the way PostgreSQL does for a session whose search_path is
    /// `search_path` (pg_catalog implicitly first). `None`: no such relation is known, which
    /// the rewriter refuses (it may exist upstream, but Portcullis cannot vouch for it).
    pub fn resolve(&self, name: &ObjectName, search_path: &[String]) -> Option<Resolved<'_>> {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.as_ident().map(normalize))
            .collect::<Option<_>>()?;
        match parts.as_slice() {
            [schema, rel] => self.lookup(schema, rel),
            [rel] => {
                // pg_catalog first unless the path places it explicitly; pg_temp is never
                // searched (the rewriter refuses creating temporary relations).
                let mut path: Vec<&str> = Vec::new();
                if !search_path.iter().any(|s| s == "pg_catalog") {
                    path.push("pg_catalog");
                }
                path.extend(search_path.iter().map(String::as_str));
                path.into_iter().find_map(|schema| self.lookup(schema, rel))
            }
            _ => None,
        }
    }

    fn lookup(&self, schema: &str, rel: &str) -> Option<Resolved<'_>> {
        if SYSTEM_SCHEMAS.contains(&schema) {
            // Whether a system relation may be read is decided by name (see `catalogs`).
            return self
                .system
                .get(&(schema.to_string(), rel.to_string()))
                .map(Resolved::System);
        }
        self.get(schema, rel).map(Resolved::Protected)
    }
}

/// An identifier as PostgreSQL stores it: unquoted names fold to lower case.
pub fn normalize(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
