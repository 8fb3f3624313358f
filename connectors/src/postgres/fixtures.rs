//! Loading `fixtures/` into a local cluster: the demo database and a non-superuser upstream
//! login for Portcullis (not the tables' owner, no CREATE, no replication).

use std::path::Path;

use super::{ClusterError, LocalCluster};

/// The database the demo and the tests use.
pub const DEMO_DB: &str = "portcullis_demo";
/// The upstream login Portcullis uses in the demo and the tests.
pub const UPSTREAM_USER: &str = "portcullis_upstream";

/// Creates [`DEMO_DB`], loads `schema.sql` and `data.sql` from `dir`, and creates
/// [`UPSTREAM_USER`] with `upstream_password` via `roles.sql`.
pub fn load(
    cluster: &LocalCluster,
    dir: &Path,
    upstream_password: &str,
) -> Result<(), ClusterError> {
    cluster.psql("postgres", &format!("CREATE DATABASE {DEMO_DB}"), &[])?;
    for file in ["schema.sql", "data.sql"] {
        cluster.psql_file(DEMO_DB, &dir.join(file), &[])?;
    }
    cluster.psql_file(
        DEMO_DB,
        &dir.join("roles.sql"),
        &[
            ("upstream_user", UPSTREAM_USER),
            ("upstream_password", upstream_password),
        ],
    )
}
