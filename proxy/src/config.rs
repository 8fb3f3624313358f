//! Configuration file (TOML): where to listen, the upstream database, TLS, limits and agents.
//! Unknown keys and bad values are start-up errors that name the key. Secrets never reach logs.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use connectors::postgres::UpstreamConfig;
use serde::Deserialize;

use crate::identity::{Credential, TokenVerifier};
use crate::limits::Limits;
use crate::pg::scram::Verifier;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub postgres: PostgresConfig,
    /// The Cedar policy set (optional until enforcement lands).
    pub policies: Option<PoliciesConfig>,
    /// Agent tokens (JWT): how agents with `token = true` are checked.
    pub jwt: Option<JwtConfig>,
    /// The audit log (see `audit_log`).
    pub audit: Option<crate::audit_log::AuditConfig>,
    /// The admin listener (see `admin`).
    pub admin: Option<AdminConfig>,
    /// The Qdrant API for RAG pipelines (see `vector`).
    pub vector: Option<crate::vector::VectorConfig>,
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
}

/// `[admin]`: where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// HS256: the shared key.
    pub secret: Option<Secret>,
    /// HS256: an environment variable holding the shared key.
    pub secret_env: Option<String>,
    /// RS256/ES256: the issuer's public key (PEM file).
    pub public_key: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Accept tokens from agents not using TLS (tokens are sent as cleartext passwords; for
    /// tests and local development only).
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directory of the policy set (schema fragments, *.cedar, entities.json).
    pub dir: PathBuf,
    /// Version store: every activated version is kept here under its content hash.
    pub store: Option<PathBuf>,
    /// How often the directory is checked for changes (SIGHUP checks at once).
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// A file holding the secret that keys `@mask("hash")` (HMAC-SHA256), so equal values hash
    /// alike across sessions and restarts but cannot be reversed by guessing. Without it a
    /// random key is made at start (hashes then change at each restart).
    pub hash_key_file: Option<PathBuf>,
}

fn default_reload_interval_ms() -> u64 {
    2000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Address agents connect to.
    pub listen: SocketAddr,
    /// The real database, e.g. `postgres://portcullis:pass@127.0.0.1:5432/app`.
    pub upstream: Secret,
    /// Name of an environment variable holding the upstream password (overrides the URL's).
    pub upstream_password_env: Option<String>,
    /// TLS toward clients; when absent, SSLRequest is answered 'N'.
    pub tls: Option<TlsConfig>,
    /// Refuse clients that do not use TLS (needs `tls`).
    #[serde(default)]
    pub require_tls: bool,
    /// Largest protocol message accepted from a client, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Largest SQL text (Query or Parse) accepted, in bytes; longer statements are refused.
    #[serde(default = "default_max_query_bytes")]
    pub max_query_bytes: usize,
    /// Longest a statement may run before Portcullis cancels it, in ms (0: no cap). Agents
    /// may lower it with `SET statement_timeout`, not raise it.
    #[serde(default = "default_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Longest a session may sit idle inside a transaction before Portcullis ends it, in ms
    /// (0: no cap).
    #[serde(default = "default_timeout_ms")]
    pub idle_in_transaction_timeout_ms: u64,
    /// On SIGTERM or SIGINT: how long sessions may take to finish their running statements
    /// and open transactions before they are ended (`57P01`), in ms.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Longest a session may sit idle outside a transaction before Portcullis ends it
    /// (`57P05`), in ms (0, the default: no cap); each holds an upstream connection.
    #[serde(default)]
    pub client_idle_timeout_ms: u64,
    /// Most agent sessions at once (each holds an upstream connection); a client beyond it is
    /// refused at once with `53300`. 0: no cap.
    #[serde(default)]
    pub max_connections: usize,
    /// Refuse to start when the upstream login may do more than agents need (superuser,
    /// BYPASSRLS, owner of relations, CREATE on a schema) or cannot be checked; without it,
    /// each is a warning.
    #[serde(default)]
    pub strict: bool,
}

fn default_timeout_ms() -> u64 {
    300_000
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's id: the PostgreSQL user name it connects with.
    pub id: String,
    /// Plaintext secret, or a `SCRAM-SHA-256$…` verifier (see `portcullis hash-secret`).
    pub secret: Option<Secret>,
    /// Name of an environment variable holding the secret (or verifier).
    pub secret_env: Option<String>,
    /// The agent logs in with a JWT as its password (see `[jwt]`) instead of a secret.
    #[serde(default)]
    pub token: bool,
    /// This agent's `postgres.statement_timeout_ms`, if it differs.
    pub statement_timeout_ms: Option<u64>,
    /// This agent's `postgres.idle_in_transaction_timeout_ms`, if it differs.
    pub idle_in_transaction_timeout_ms: Option<u64>,
    /// Most sessions of this agent at once (beyond it: `53300`). None: only the global cap.
    pub max_connections: Option<usize>,
    /// This agent's `postgres.client_idle_timeout_ms`, if it differs.
    pub client_idle_timeout_ms: Option<u64>,
}

fn default_max_message_bytes() -> usize {
    64 << 20
}

fn default_max_query_bytes() -> usize {
    1 << 20
}

/// A string that is never printed by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The configuration after validation: everything resolved that can be resolved at start-up.
pub struct Resolved {
    pub listen: SocketAddr,
    pub upstream: UpstreamConfig,
    pub tls: Option<TlsConfig>,
    pub require_tls: bool,
    pub max_message_bytes: usize,
    pub max_query_bytes: usize,
    pub agents: Vec<(String, Credential)>,
    /// Each agent's time limits.
    pub limits: HashMap<String, Limits>,
    pub policies: Option<PoliciesConfig>,
    pub audit: Option<crate::audit_log::AuditConfig>,
    pub admin: Option<AdminConfig>,
    pub vector: Option<crate::vector::VectorConfig>,
    pub tokens: Option<TokenVerifier>,
    /// Token logins are accepted without TLS (`jwt.allow_plaintext`).
    pub tokens_without_tls: bool,
    /// How long sessions may take to finish on shutdown (`postgres.drain_timeout_ms`).
    pub drain_timeout: std::time::Duration,
    /// `postgres.max_connections` (0: no cap).
    pub max_connections: usize,
    /// `postgres.strict`: start only with a least-privilege upstream login.
    pub strict: bool,
    /// Each agent's own `max_connections`, for those that have one.
    pub agent_max_connections: HashMap<String, usize>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value and resolves environment variables and verifiers.
    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        if let Some(p) = &self.policies {
            if !p.dir.is_dir() {
                return Err(invalid(
                    "policies.dir",
                    format!("{} is not a directory", p.dir.display()),
                ));
            }
            if p.reload_interval_ms < 100 {
                return Err(invalid(
                    "policies.reload_interval_ms",
                    "must be at least 100",
                ));
            }
        }
        if let Some(a) = &self.audit {
            check_audit(a)?;
        }
        if let Some(v) = &self.vector {
            if self.policies.is_none() {
                return Err(invalid(
                    "vector",
                    "needs [policies]: the vector shim always enforces policy",
                ));
            }
            if v.store.is_some() == v.remote.is_some() {
                return Err(invalid(
                    "vector",
                    "set exactly one of `store` (the embedded store's directory) and `remote` (a Qdrant URL)",
                ));
            }
            if let Some(var) = &v.remote_api_key_env {
                if std::env::var(var).is_err() {
                    return Err(invalid(
                        "vector.remote_api_key_env",
                        format!("environment variable {var} is not set"),
                    ));
                }
            }
            if v.max_body_bytes < 1024 {
                return Err(invalid("vector.max_body_bytes", "must be at least 1024"));
            }
        }
        let pg = self.postgres;
        let mut upstream = UpstreamConfig::from_url(&pg.upstream.0)
            .map_err(|e| invalid("postgres.upstream", e.to_string()))?;
        if let Some(var) = &pg.upstream_password_env {
            let pw = std::env::var(var).map_err(|_| {
                invalid(
                    "postgres.upstream_password_env",
                    format!("environment variable {var} is not set"),
                )
            })?;
            upstream.password = Some(pw);
        }
        if pg.require_tls && pg.tls.is_none() {
            return Err(invalid("postgres.require_tls", "needs [postgres.tls]"));
        }
        if pg.max_message_bytes < 1024 {
            return Err(invalid(
                "postgres.max_message_bytes",
                "must be at least 1024",
            ));
        }
        if pg.max_query_bytes == 0 || pg.max_query_bytes > pg.max_message_bytes {
            return Err(invalid(
                "postgres.max_query_bytes",
                "must be between 1 and postgres.max_message_bytes",
            ));
        }
        let mut seen = HashSet::new();
        let mut agents = Vec::new();
        let mut limits = HashMap::new();
        let mut agent_max_connections = HashMap::new();
        for (i, a) in self.agents.into_iter().enumerate() {
            let key = format!("agents[{i}]");
            if a.id.is_empty() || a.id.len() > 63 || a.id.contains('\0') {
                return Err(invalid(
                    format!("{key}.id"),
                    "must be 1 to 63 bytes, no NUL",
                ));
            }
            if !seen.insert(a.id.clone()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("duplicate agent id {:?}", a.id),
                ));
            }
            if let Some(n) = a.max_connections {
                agent_max_connections.insert(a.id.clone(), n);
            }
            limits.insert(
                a.id.clone(),
                Limits::from_ms(
                    a.statement_timeout_ms.unwrap_or(pg.statement_timeout_ms),
                    a.idle_in_transaction_timeout_ms
                        .unwrap_or(pg.idle_in_transaction_timeout_ms),
                )
                .with_idle_session_ms(
                    a.client_idle_timeout_ms
                        .unwrap_or(pg.client_idle_timeout_ms),
                ),
            );
            if a.token {
                if a.secret.is_some() || a.secret_env.is_some() {
                    return Err(invalid(
                        key,
                        "an agent with `token = true` has no `secret` or `secret_env`",
                    ));
                }
                if self.jwt.is_none() {
                    return Err(invalid(format!("{key}.token"), "needs a [jwt] section"));
                }
                agents.push((a.id, Credential::Token));
                continue;
            }
            let secret = match (a.secret, &a.secret_env) {
                (Some(s), None) => s.0,
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    invalid(
                        format!("{key}.secret_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?,
                _ => {
                    return Err(invalid(key, "set exactly one of `secret` or `secret_env`"));
                }
            };
            if secret.is_empty() {
                return Err(invalid(format!("{key}.secret"), "must not be empty"));
            }
            let verifier = if secret.starts_with("SCRAM-SHA-256$") {
                Verifier::parse(&secret)
                    .map_err(|e| invalid(format!("{key}.secret"), e.to_string()))?
            } else {
                Verifier::from_secret(&secret)
            };
            agents.push((a.id, Credential::Secret(verifier)));
        }
        let tokens_without_tls = self.jwt.as_ref().is_some_and(|j| j.allow_plaintext);
        let tokens = self.jwt.map(resolve_jwt).transpose()?;
        Ok(Resolved {
            listen: pg.listen,
            upstream,
            tls: pg.tls,
            require_tls: pg.require_tls,
            max_message_bytes: pg.max_message_bytes,
            max_query_bytes: pg.max_query_bytes,
            agents,
            limits,
            policies: self.policies,
            audit: self.audit,
            admin: self.admin,
            vector: self.vector,
            tokens,
            tokens_without_tls,
            drain_timeout: std::time::Duration::from_millis(pg.drain_timeout_ms),
            max_connections: pg.max_connections,
            strict: pg.strict,
            agent_max_connections,
        })
    }
}

/// The audit key must be readable, a signing key, and for this node's log.
fn check_audit(a: &crate::audit_log::AuditConfig) -> Result<(), ConfigError> {
    let origin = format!("portcullis/{}", a.node_id);
    if a.node_id.is_empty() || a.node_id.contains(|c: char| c.is_whitespace() || c == '+') {
        return Err(invalid(
            "audit.node_id",
            "must be non-empty, without spaces or '+'",
        ));
    }
    let key = std::fs::read_to_string(&a.key_file).map_err(|e| {
        invalid(
            "audit.key_file",
            format!(
                "{}: {e} (make one with `portcullis audit keygen`)",
                a.key_file.display()
            ),
        )
    })?;
    let public =
        audit::verifier_key_of(&key).map_err(|e| invalid("audit.key_file", e.to_string()))?;
    if !public.starts_with(&format!("{origin}+")) {
        return Err(invalid(
            "audit.key_file",
            format!("the key is not for log {origin} (audit.node_id)"),
        ));
    }
    if a.batch_ms == 0 || a.checkpoint_ms < 10 {
        return Err(invalid(
            "audit.batch_ms",
            "batch_ms must be at least 1 and checkpoint_ms at least 10",
        ));
    }
    if let Some(export) = &a.export {
        export
            .check()
            .map_err(|e| invalid("audit.export", e.to_string()))?;
    }
    Ok(())
}

fn resolve_jwt(j: JwtConfig) -> Result<TokenVerifier, ConfigError> {
    let key = match (j.algorithm.as_str(), j.secret, &j.secret_env, &j.public_key) {
        ("HS256", Some(s), None, None) => s.0.into_bytes(),
        ("HS256", None, Some(var), None) => std::env::var(var)
            .map_err(|_| {
                invalid(
                    "jwt.secret_env",
                    format!("environment variable {var} is not set"),
                )
            })?
            .into_bytes(),
        ("HS256", ..) => {
            return Err(invalid(
                "jwt",
                "HS256 takes exactly one of `secret` or `secret_env`",
            ))
        }
        (_, None, None, Some(path)) => std::fs::read(path)
            .map_err(|e| invalid("jwt.public_key", format!("{}: {e}", path.display())))?,
        _ => {
            return Err(invalid(
                "jwt",
                "RS256 and ES256 take `public_key` (a PEM file) and no secret",
            ))
        }
    };
    if key.len() < 32 && j.algorithm == "HS256" {
        return Err(invalid(
            "jwt.secret",
            "an HS256 key must be at least 32 bytes",
        ));
    }
    TokenVerifier::new(
        &j.algorithm,
        &key,
        j.issuer.as_deref(),
        j.audience.as_deref(),
    )
    .map_err(|e| invalid("jwt", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [postgres]
        listen = "127.0.0.1:6432"
        upstream = "postgres://u:p@127.0.0.1:5432/app"
        [[agents]]
        id = "bot"
        secret = "s"
    "#;

    #[test]
    fn a_good_config_resolves() {
        let r = Config::parse(GOOD).unwrap().resolve().unwrap();
        assert_eq!(r.upstream.dbname, "app");
        assert_eq!(r.agents.len(), 1);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse(&GOOD.replace("listen", "listne")).unwrap_err();
        assert!(e.contains("listne"), "{e}");
        let e = Config::parse(&format!("{GOOD}\nfoo = 1")).unwrap_err();
        assert!(e.contains("foo"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse(&GOOD.replace("127.0.0.1:6432", "nowhere")).unwrap_err();
        assert!(e.contains("listen"), "{e}");
        let e = Config::parse(&GOOD.replace(
            "postgres://u:p@127.0.0.1:5432/app",
            "postgres://u:p@h:notaport/app",
        ))
        .unwrap()
        .resolve()
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("postgres.upstream"), "{e}");
        assert!(
            !e.contains(":p@"),
            "the error must not echo the password: {e}"
        );
    }

    #[test]
    fn duplicate_agents_and_missing_secrets_are_errors() {
        let dup = format!("{GOOD}\n[[agents]]\nid = \"bot\"\nsecret = \"t\"\n");
        let e = Config::parse(&dup)
            .unwrap()
            .resolve()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("agents[1].id"), "{e}");
        let none = GOOD.replace("secret = \"s\"", "");
        let e = Config::parse(&none)
            .unwrap()
            .resolve()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("agents[0]"), "{e}");
    }

    #[test]
    fn token_agents_need_a_jwt_section_and_a_real_key() {
        let token_agent = format!("{GOOD}\n[[agents]]\nid = \"t\"\ntoken = true\n");
        let e = Config::parse(&token_agent)
            .unwrap()
            .resolve()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("agents[1].token") && e.contains("[jwt]"), "{e}");
        let weak = format!("{token_agent}\n[jwt]\nalgorithm = \"HS256\"\nsecret = \"short\"\n");
        let e = Config::parse(&weak)
            .unwrap()
            .resolve()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("jwt.secret") && e.contains("32 bytes"), "{e}");
        let both = format!("{GOOD}\n[[agents]]\nid = \"t\"\ntoken = true\nsecret = \"x\"\n[jwt]\nalgorithm = \"HS256\"\nsecret = \"{}\"\n", "k".repeat(32));
        let e = Config::parse(&both)
            .unwrap()
            .resolve()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("agents[1]"), "{e}");
        let ok = format!(
            "{token_agent}\n[jwt]\nalgorithm = \"HS256\"\nsecret = \"{}\"\n",
            "k".repeat(32)
        );
        let r = Config::parse(&ok).unwrap().resolve().unwrap();
        assert!(r.tokens.is_some());
        let rs = format!(
            "{token_agent}\n[jwt]\nalgorithm = \"RS256\"\npublic_key = \"/nonexistent.pem\"\n"
        );
        let e = Config::parse(&rs)
            .unwrap()
            .resolve()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("jwt.public_key"), "{e}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = Config::parse(GOOD).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("u:p@"), "{dbg}");
        assert!(!dbg.contains("\"s\""), "{dbg}");
    }
}
