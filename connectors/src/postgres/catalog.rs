//! Catalog introspection with tokio-postgres: the columns of the tables (and views) in given
//! schemas, with their types and nullability, for `portcullis schema import`.

use tokio_postgres::NoTls;

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
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| CatalogError::Connect(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let rows = client
        .query(COLUMNS, &[&schemas])
        .await
        .map_err(|e| CatalogError::Query(e.to_string()))?;
    drop(client);
    let _ = driver.await;
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
