//! Catalog introspection with tokio-postgres: the columns of the tables (and views) in given
//! schemas, with their types and nullability, for `portcullis schema import`; and a
//! [`Snapshot`] of everything the rewriter resolves names against.

/// One column of a table, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub schema: String,
    pub table: String,
    pub name: String,
    /// `pg_type.typname`, e.g. `int4`, `_text`.
    pub type_name: String,
    /// For arrays, the element's `typname`.
    pub element_type: Option<String>,
    pub nullable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("cannot read the catalog: {0}")]
    Query(String),
}

const COLUMNS: &str = "
    SELECT n.nspname::text, c.relname::text, a.attname::text, t.typname::text,
           et.typname::text, NOT a.attnotnull
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_catalog.pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
    WHERE a.attnum > 0 AND NOT a.attisdropped
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname = ANY($1)
    ORDER BY n.nspname, c.relname, a.attnum";

/// Reads the columns of every table, view and materialized view in `schemas`.
pub async fn table_columns(
    url: &str,
    schemas: &[String],
) -> Result<Vec<CatalogColumn>, CatalogError> {
    let upstream =
        super::UpstreamConfig::from_url(url).map_err(|e| CatalogError::Connect(e.to_string()))?;
    let client = upstream
        .client(&upstream.tokio_config())
        .await
        .map_err(|e| CatalogError::Connect(e.to_string()))?;
    let rows = client
        .query(COLUMNS, &[&schemas])
        .await
        .map_err(|e| CatalogError::Query(e.to_string()))?;
    drop(client);
    Ok(rows
        .iter()
        .map(|r| CatalogColumn {
            schema: r.get(0),
            table: r.get(1),
            name: r.get(2),
            type_name: r.get(3),
            element_type: r.get(4),
            nullable: r.get(5),
        })
        .collect())
}

/// A relation, with its columns in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelationInfo {
    pub schema: String,
    pub name: String,
    /// `pg_class.relkind`: `r`, `p`, `v`, `m` or `f`.
    pub kind: char,
    pub has_children: bool,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`
    pub sql_type: String,
    /// `pg_type.typname`
    pub type_name: String,
    /// `pg_type.typcategory`
    pub category: char,
    /// A generated column (`GENERATED ALWAYS AS (…) STORED`): computed after any check.
    pub generated: bool,
    /// What an INSERT that omits the column stores, as SQL (`pg_get_expr` of its default;
    /// `NULL` when it has none); `None` where that is not known from the column alone (identity
    /// and generated columns, a domain type's own default).
    pub default: Option<String>,
}

/// What the rewriter needs of the catalog, read in one go (serializable: the audit log keeps
/// each snapshot a rewrite used, by content hash, so that it can be replayed).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub relations: Vec<RelationInfo>,
    /// Every relation in `pg_catalog` and `information_schema`.
    pub system: Vec<RelationInfo>,
    /// Names of the functions in `pg_catalog`, each with whether all of its functions are
    /// volatile (not aggregates or window functions).
    pub functions: Vec<(String, bool)>,
    /// The login's effective search_path (`current_schemas(false)`).
    pub search_path: Vec<String>,
    /// The login's search_path setting as `SHOW search_path` prints it (`"$user", public`).
    pub search_path_setting: String,
    /// Tables with a primary key: (schema, name, table OID, the key's column numbers in order),
    /// to find key columns in a RowDescription (which names a column by table OID and number).
    pub primary_keys: Vec<(String, String, u32, Vec<i16>)>,
    /// Relations outside the system schemas that are not tables or views: (schema, name,
    /// relkind) of sequences, indexes and composite types, named in refusals.
    pub others: Vec<(String, String, char)>,
    /// `current_database()`: the name three-part names may begin with.
    pub database: String,
    /// User-defined functions (`'f'`) and operators (`'o'`) as (schema, name, kind): those
    /// outside the system schemas that no extension installed.
    pub user_routines: Vec<(String, String, char)>,
    /// `pg_catalog` operators: (name, left, right, result `typname`, whether the operator's
    /// function is leakproof); the left type is `""` for a prefix operator.
    #[serde(default)]
    pub operators: Vec<(String, String, String, String, bool)>,
    /// `pg_catalog` functions no overload of which is volatile, an aggregate or set-returning,
    /// all returning one type: (name, result `typname`).
    #[serde(default)]
    pub stable_functions: Vec<(String, String)>,
}

const RELATIONS: &str = "
    SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relhassubclass,
           a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), t.typname::text,
           t.typcategory::text, a.attgenerated <> '',
           CASE WHEN a.attgenerated <> '' OR a.attidentity <> '' THEN NULL
                WHEN d.adbin IS NOT NULL THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid)
                WHEN t.typtype = 'd' THEN NULL
                ELSE 'NULL' END
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_attribute a
      ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
    ORDER BY n.nspname, c.relname, a.attnum";

const OTHERS: &str = "
    SELECT n.nspname::text, c.relname::text, c.relkind::text
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('S', 'i', 'I', 'c')
      AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Schemas whose relations are PostgreSQL's own catalogs.
const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

/// Each `pg_catalog` function name, and whether every function of that name is volatile and
/// neither an aggregate nor a window function (such functions may read or change state beyond
/// their arguments: the transaction id, WAL position, a table's pages).
const FUNCTIONS: &str = "
    SELECT proname::text, bool_and(prokind NOT IN ('a', 'w') AND provolatile = 'v')
    FROM pg_catalog.pg_proc
    WHERE pronamespace = 'pg_catalog'::regnamespace
    GROUP BY proname";

/// Functions and operators outside the system schemas that are not members of an extension
/// (an extension's are installed software, like the built-ins; citext's `=` is one).
const USER_ROUTINES: &str = "
    SELECT n.nspname::text, p.proname::text, 'f'
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                        AND d.objid = p.oid AND d.deptype = 'e')
    UNION
    SELECT n.nspname::text, o.oprname::text, 'o'
    FROM pg_catalog.pg_operator o
    JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass
                        AND d.objid = o.oid AND d.deptype = 'e')";

/// Operators of `pg_catalog`, with their operand and result types and whether their function
/// is leakproof (which conditions may be copied into a fence, as PostgreSQL decides which it
/// may push into a `security_barrier` view).
const OPERATORS: &str = "
    SELECT o.oprname::text, COALESCE(l.typname::text, ''), COALESCE(r.typname::text, ''),
           res.typname::text, p.proleakproof
    FROM pg_catalog.pg_operator o
    JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
    LEFT JOIN pg_catalog.pg_type l ON l.oid = o.oprleft
    LEFT JOIN pg_catalog.pg_type r ON r.oid = o.oprright
    JOIN pg_catalog.pg_type res ON res.oid = o.oprresult
    WHERE o.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace
    ORDER BY 1, 2, 3";

/// `pg_catalog` functions whose every overload is a plain, non-volatile, single-valued function
/// returning the same type: a call of one over constants is a constant of that type.
const STABLE_FUNCTIONS: &str = "
    SELECT p.proname::text, min(t.typname::text)
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_type t ON t.oid = p.prorettype
    WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
    GROUP BY p.proname
    HAVING bool_and(p.prokind = 'f' AND p.provolatile <> 'v' AND NOT p.proretset)
       AND count(DISTINCT p.prorettype) = 1
    ORDER BY 1";

/// Primary keys, their columns in key order.
const PRIMARY_KEYS: &str = "
    SELECT n.nspname::text, c.relname::text, c.oid,
           (SELECT array_agg(k.attnum ORDER BY k.ord)
            FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord))
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE i.indisprimary
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Reads a [`Snapshot`] with `config`'s credentials.
pub async fn snapshot(upstream: &super::UpstreamConfig) -> Result<Snapshot, CatalogError> {
    let client = upstream
        .client(&upstream.tokio_config())
        .await
        .map_err(|e| CatalogError::Connect(e.to_string()))?;
    let q = |e: tokio_postgres::Error| CatalogError::Query(e.to_string());
    let mut snap = Snapshot::default();
    for row in client.query(RELATIONS, &[]).await.map_err(q)? {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let first = |s: String| s.chars().next().unwrap_or('?');
        let is_new = snap
            .relations
            .last()
            .is_none_or(|r| r.schema != schema || r.name != name);
        if is_new {
            snap.relations.push(RelationInfo {
                schema,
                name,
                kind: first(row.get(2)),
                has_children: row.get(3),
                columns: Vec::new(),
            });
        }
        if let Some(col) = row.get::<_, Option<String>>(4) {
            let rel = snap.relations.last_mut().expect("pushed above");
            rel.columns.push(ColumnInfo {
                name: col,
                sql_type: row.get(5),
                type_name: row.get(6),
                category: first(row.get(7)),
                generated: row.get(8),
                default: row.get(9),
            });
        }
    }
    let (system, user) = std::mem::take(&mut snap.relations)
        .into_iter()
        .partition(|r| SYSTEM_SCHEMAS.contains(&r.schema.as_str()));
    snap.relations = user;
    snap.system = system;
    snap.functions = client
        .query(FUNCTIONS, &[])
        .await
        .map_err(q)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // (schema, name, kind) rows, the kind a one-letter code.
    let named_kinds = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, char)> {
        rows.iter()
            .map(|r| {
                let kind: String = r.get(2);
                (r.get(0), r.get(1), kind.chars().next().unwrap_or('?'))
            })
            .collect()
    };
    snap.others = named_kinds(client.query(OTHERS, &[]).await.map_err(q)?);
    snap.user_routines = named_kinds(client.query(USER_ROUTINES, &[]).await.map_err(q)?);
    snap.primary_keys = client
        .query(PRIMARY_KEYS, &[])
        .await
        .map_err(q)?
        .iter()
        .map(|r| {
            let oid: u32 = r.get(2);
            let columns: Vec<i16> = r.get(3);
            (r.get(0), r.get(1), oid, columns)
        })
        .collect();
    snap.operators = client
        .query(OPERATORS, &[])
        .await
        .map_err(q)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    snap.stable_functions = client
        .query(STABLE_FUNCTIONS, &[])
        .await
        .map_err(q)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    snap.database = client
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await
        .map_err(q)?
        .get(0);
    let path = client
        .query_one(
            "SELECT pg_catalog.current_schemas(false)::text[], \
                    pg_catalog.current_setting('search_path')",
            &[],
        )
        .await
        .map_err(q)?;
    snap.search_path = path.get(0);
    snap.search_path_setting = path.get(1);
    drop(client);
    Ok(snap)
}
