//! The fenced view of one protected relation: `(SELECT <columns or masks> FROM "s"."t" WHERE
//! <row filter> OFFSET 0)`. `OFFSET 0` keeps PostgreSQL from flattening the subquery, so no
//! outer expression is evaluated on a row the filter excludes; denied columns are left out,
//! masked ones replaced by an expression of the same type.

use policies::{ColumnRule, Filter, Mask};

use crate::catalog::{quote_ident, Column, Relation};
use crate::policy::TablePolicy;
use crate::sql_filter::{quote_string, render};
use crate::Refusal;

/// The fence's SQL text.
pub struct Fence {
    pub sql: String,
}

pub fn build(relation: &Relation, policy: &TablePolicy) -> Result<Fence, Refusal> {
    let projection = projection(relation, policy)?;
    let sql = format!(
        "SELECT {} FROM {} WHERE {} OFFSET 0",
        projection.join(", "),
        relation.qualified(),
        render(&policy.filter, relation)?
    );
    Ok(Fence { sql })
}

/// The fence of a write's target: the rows both `policy` (reading) and `write` (the write
/// action) allow, masked, with the row's address as `portcullis_tableoid`/`portcullis_ctid`
/// (the write joins back to the table on it).
pub fn build_for_write(
    relation: &Relation,
    policy: &TablePolicy,
    write: &Filter,
) -> Result<Fence, Refusal> {
    let projection = projection(relation, policy)?;
    let filter = Filter::and(vec![policy.filter.clone(), write.clone()]);
    let sql = format!(
        "SELECT tableoid AS portcullis_tableoid, ctid AS portcullis_ctid, {} FROM {} WHERE {} OFFSET 0",
        projection.join(", "),
        relation.qualified(),
        render(&filter, relation)?
    );
    Ok(Fence { sql })
}

/// The readable columns of `relation` as select-list items over its columns (unqualified):
/// visible ones as they are, masked ones as their mask, denied ones left out.
pub fn projection(relation: &Relation, policy: &TablePolicy) -> Result<Vec<String>, Refusal> {
    let mut projection = Vec::new();
    for col in &relation.columns {
        let name = quote_ident(&col.name);
        match column_value(relation, policy, col)? {
            Some(value) if value == name => projection.push(name),
            Some(value) => projection.push(format!("{value} AS {name}")),
            None => {}
        }
    }
    if projection.is_empty() {
        return Err(Refusal::Forbidden(format!(
            "no column of {} is readable under the current policy",
            relation.entity_type()
        )));
    }
    Ok(projection)
}

/// What the agent reads of `col` (unqualified): the column itself when visible, its mask when
/// masked, nothing when denied.
pub fn column_value(
    relation: &Relation,
    policy: &TablePolicy,
    col: &Column,
) -> Result<Option<String>, Refusal> {
    let name = quote_ident(&col.name);
    Ok(match policy.column(&col.name) {
        ColumnRule::Visible => Some(name),
        ColumnRule::Denied => None,
        ColumnRule::Masked {
            mask,
            unless: Filter::False,
        } => Some(masked(col, mask)),
        ColumnRule::Masked { mask, unless } => Some(format!(
            "CASE WHEN {} THEN {name} ELSE {} END",
            render(&unless, relation)?,
            masked(col, mask)
        )),
    })
}

/// The masked value of `col`, typed as the column.
fn masked(col: &Column, mask: Mask) -> String {
    let name = quote_ident(&col.name);
    let ty = &col.sql_type;
    if !col.is_text() {
        return format!("NULL::{ty}");
    }
    match mask {
        Mask::Null => format!("NULL::{ty}"),
        Mask::Redact => format!("{}::{ty}", quote_string("***")),
        Mask::Last4 => format!(
            "(CASE WHEN pg_catalog.char_length({name}) > 4 \
             THEN pg_catalog.repeat('*', pg_catalog.char_length({name}) - 4) || pg_catalog.\"right\"({name}, 4) \
             ELSE pg_catalog.repeat('*', pg_catalog.char_length({name})) END)::{ty}"
        ),
        // HMAC-SHA256 keyed by the session's `portcullis.mask_key` setting (`key ⊕ ipad` then
        // `key ⊕ opad`, hex), which only Portcullis sets and agents cannot read.
        Mask::Hash => {
            let key = "pg_catalog.decode(pg_catalog.current_setting('portcullis.mask_key'), 'hex')";
            format!(
                "pg_catalog.encode(pg_catalog.sha256(pg_catalog.\"substr\"({key}, 65, 64) || \
                 pg_catalog.sha256(pg_catalog.\"substr\"({key}, 1, 64) || \
                 pg_catalog.convert_to({name}::text, 'UTF8'))), 'hex')::{ty}"
            )
        }
    }
}
