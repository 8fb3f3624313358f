//! What the upstream login may do beyond what Portcullis needs: be a superuser, bypass row
//! security, own relations, or create objects in a schema. Each lets a statement that slips
//! past the rewriter do more than read and write rows; `portcullis serve` warns of each at
//! start-up (and refuses to start under `postgres.strict`).

/// What the login can do that a least-privilege role could not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoginRisks {
    pub role: String,
    pub superuser: bool,
    pub bypass_rls: bool,
    /// Relations (`schema.name`, quoted as needed) the login owns, or a role it is a member of.
    pub owned: Vec<String>,
    /// Schemas it may create objects in.
    pub create_in: Vec<String>,
}

impl LoginRisks {
    /// One line per risk, naming what to change.
    pub fn findings(&self) -> Vec<String> {
        let role = &self.role;
        let mut out = Vec::new();
        if self.superuser {
            out.push(format!(
                "the upstream login {role:?} is a superuser: it can read every file and role the server has; log in as a role with only the table privileges agents need"
            ));
        }
        if self.bypass_rls {
            out.push(format!(
                "the upstream login {role:?} has BYPASSRLS: row-level security in the database does not apply to it (ALTER ROLE … NOBYPASSRLS)"
            ));
        }
        if !self.owned.is_empty() {
            out.push(format!(
                "the upstream login {role:?} owns {}: an owner may alter, drop or disable security on them; let another role own them and GRANT what agents need",
                list(&self.owned)
            ));
        }
        if !self.create_in.is_empty() {
            out.push(format!(
                "the upstream login {role:?} may create objects in schema {}: a function or view it creates could run with other privileges or shadow a table (REVOKE CREATE ON SCHEMA …)",
                list(&self.create_in)
            ));
        }
        out
    }
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

const ROLE: &str = "SELECT current_user::text, r.rolsuper, r.rolbypassrls \
     FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

const OWNED: &str = "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' \
       AND pg_catalog.pg_has_role(c.relowner, 'USAGE') \
     ORDER BY 1";

const CREATE_IN: &str = "SELECT pg_catalog.format('%I', n.nspname) \
     FROM pg_catalog.pg_namespace n \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_%' \
       AND pg_catalog.has_schema_privilege(n.oid, 'CREATE') \
     ORDER BY 1";

/// Reads what `upstream`'s login may do, connecting with `config` (its
/// [`super::UpstreamConfig::tokio_config`], perhaps with a connect timeout).
pub async fn check(
    upstream: &super::UpstreamConfig,
    config: &tokio_postgres::Config,
) -> Result<LoginRisks, super::ClientError> {
    let client = upstream.client(config).await?;
    let role = client.query_one(ROLE, &[]).await?;
    let names = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect();
    let risks = LoginRisks {
        role: role.get(0),
        superuser: role.get(1),
        bypass_rls: role.get(2),
        owned: names(client.query(OWNED, &[]).await?),
        create_in: names(client.query(CREATE_IN, &[]).await?),
    };
    Ok(risks)
}
