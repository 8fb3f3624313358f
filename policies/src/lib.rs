//! Policy as code: a policy set is a directory holding Cedar schema fragments (`*.cedarschema`), any
//! number of policy files (`*.cedar`, each policy named by its `@id("…")` annotation) and
//! `entities.json` (agents, roles, users). Loading validates everything strictly against the
//! schema and names the file, line and column of every problem. Each loaded set has a
//! [`Version`]: the content hash of its files, under which a [`VersionStore`] keeps it.
//!
//! [`derive`] turns a set and a request with the resource unknown into a [`Filter`];
//! [`derive_columns`] gives each column of a table a [`ColumnRule`].

mod cache;
pub mod collection_import;
mod columns;
mod derive;
mod diagnostics;
mod filter;
mod load;
mod payload;
pub mod policy_tests;
pub mod schema_import;
mod source;
mod store;
mod version;

pub use cache::DerivationCache;
pub use columns::{
    action_applies, derive_columns, derive_fields, has_column_rules, rule_depends_on_name,
    ColumnRule, ColumnRules, Mask, READ_COLUMN, READ_FIELD,
};
pub use derive::{civil_from_days, derive, Check, DeriveError, Derived};
pub use diagnostics::Diagnostic;
pub use filter::{CmpOp, Filter, Pattern, Row, RowValue, Value};
pub use load::{load_dir, load_sources, LoadError, PolicyBundle};
pub use payload::{Field, FieldType, PayloadError, PayloadSchema};
pub use source::{SourceFile, SourceKind};
pub use store::{StoreError, VersionStore};
pub use version::Version;
