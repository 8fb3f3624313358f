//! Real PostgreSQL clients through Portcullis, each as an agent: psql (with `\d`), pgbench in
//! all three query modes, psycopg2, psycopg 3, asyncpg, SQLAlchemy, node-postgres and pgjdbc;
//! under enforcement also LangChain, LlamaIndex, Django, Prisma, knex, Drizzle and the
//! reference MCP PostgreSQL server.
//! Each client script asserts its own results and prints `OK <client>`.
//! `bash tests/setup.sh` installs them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn assert_ok(out: &Output, marker: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(marker),
        "client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

fn python() -> PathBuf {
    venv_python(".venv")
}

fn venv_python(venv: &str) -> PathBuf {
    let venv = repo_root().join(venv).join("bin/python");
    assert!(
        venv.is_file(),
        "{} not found: run `bash tests/setup.sh` first",
        venv.display()
    );
    venv
}

fn run_python(script: &str, marker: &str) {
    let env = Env::start();
    let out = run(Command::new(python())
        .arg(repo_root().join("tests/clients/python").join(script))
        .env("PORTCULLIS_URL", env.agent_url()));
    assert_ok(&out, marker);
}

#[test]
fn psycopg2() {
    run_python("psycopg2_client.py", "OK psycopg2");
}

/// A script of tests/clients/python run against the enforced finance example: support-bot's
/// URL, the auditor's, and a ticket of another tenant (its id) in the environment.
fn python_enforced(e: &Enforced, script: &str) -> Command {
    python_enforced_in(python(), e, script)
}

fn python_enforced_in(python: PathBuf, e: &Enforced, script: &str) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(repo_root().join("tests/clients/python").join(script))
        .env("PORTCULLIS_URL", e.env.agent_url())
        .env("PORTCULLIS_AUDITOR_URL", e.env.url(AUDITOR, AUDITOR_SECRET))
        .env("HIDDEN_TICKET", hidden_ticket(e).to_string());
    cmd
}

/// psycopg2 against the enforced finance policy: named (server-side) cursors, parameterized
/// reads and writes, a policy violation as InsufficientPrivilege.
#[test]
fn psycopg2_under_enforcement() {
    let e = Env::start_enforcing();
    let out = run(&mut python_enforced(&e, "psycopg2_enforced.py"));
    assert_ok(&out, "OK psycopg2 enforced");
}

/// LangChain's SQLDatabase and SQL toolkit tools under enforcement, as two agents.
#[test]
fn langchain_under_enforcement() {
    let e = Env::start_enforcing();
    let out = run(&mut python_enforced(&e, "langchain_enforced.py"));
    assert_ok(&out, "OK langchain enforced");
}

/// The id of a ticket of another tenant, read directly.
fn hidden_ticket(e: &Enforced) -> i32 {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let direct = e.env.direct().await;
        direct
            .query_one("select min(id) from tickets where tenant_id = 2", &[])
            .await
            .unwrap()
            .get(0)
    })
}

/// Django's ORM under enforcement: inspectdb, then reads, joins, aggregates, server-side
/// cursors and policy-checked writes and upserts, with USE_TZ on and off, through psycopg 3
/// (client- and server-side parameter binding) and psycopg2.
#[test]
fn django_under_enforcement() {
    let e = Env::start_enforcing();
    for (use_tz, driver) in [
        ("on", "psycopg"),
        ("off", "psycopg"),
        ("on", "psycopg-bound"),
        ("off", "psycopg2"),
    ] {
        let out = run(python_enforced(&e, "django_enforced.py").args([use_tz, driver]));
        assert_ok(
            &out,
            &format!("OK django enforced (USE_TZ={use_tz}, {driver})"),
        );
    }
}

/// LlamaIndex's SQLDatabase and text-to-SQL query engine (a scripted LLM) under enforcement.
#[test]
fn llamaindex_under_enforcement() {
    let e = Env::start_enforcing();
    let out = run(&mut python_enforced(&e, "llamaindex_enforced.py"));
    assert_ok(&out, "OK llamaindex enforced");
}

/// postgres-mcp (Postgres MCP Pro) over stdio, driven by the MCP Python SDK's client: schema
/// tools, `execute_sql` in restricted and unrestricted mode, and its statistics tools refused.
#[test]
fn postgres_mcp_under_enforcement() {
    let e = Env::start_enforcing();
    let out = run(&mut python_enforced_in(
        venv_python(".venv-pgmcp"),
        &e,
        "pgmcp_enforced.py",
    ));
    assert_ok(&out, "OK postgres-mcp enforced");
}

/// Runs a script of tests/clients/node as support-bot (the auditor's URL and a hidden ticket
/// beside it) against the enforced finance example.
fn run_node_enforced(script: &str, marker: &str) {
    let node = require("node");
    let dir = repo_root().join("tests/clients/node");
    assert!(
        dir.join("node_modules/.prisma/client").is_dir(),
        "node_modules incomplete: run `bash tests/setup.sh` first"
    );
    let e = Env::start_enforcing();
    let out = run(Command::new(node)
        .arg(dir.join(script))
        .env("PORTCULLIS_URL", e.env.agent_url())
        .env("PORTCULLIS_AUDITOR_URL", e.env.url(AUDITOR, AUDITOR_SECRET))
        .env("HIDDEN_TICKET", hidden_ticket(&e).to_string()));
    assert_ok(&out, marker);
}

/// The reference MCP PostgreSQL server over stdio, driven by the MCP SDK's client.
#[test]
fn mcp_server_postgres_under_enforcement() {
    run_node_enforced("mcp_postgres.mjs", "OK mcp server-postgres enforced");
}

#[test]
fn knex_under_enforcement() {
    run_node_enforced("knex_enforced.js", "OK knex enforced");
}

#[test]
fn drizzle_under_enforcement() {
    run_node_enforced("drizzle_enforced.mjs", "OK drizzle enforced");
}

/// Prisma Client 7 (query compiler and the pg driver adapter; its client is generated by
/// tests/setup.sh from tests/clients/node/prisma/schema.prisma).
#[test]
fn prisma_under_enforcement() {
    run_node_enforced("prisma_enforced.mjs", "OK prisma enforced");
}

/// The finance example extended with LangGraph's `store` table: support agents keep items under
/// the namespace `tenant1.*`. (The example's tenant rules read `tenant_id`, which the store has
/// not: they are guarded with `has`.)
fn finance_with_langgraph_store(dir: &std::path::Path) {
    copy_files("policies/examples/finance", dir);
    let edit = |file: &str, from: &str, to: &str| {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file}: {from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    edit(
        "tables.cedarschema",
        "    \"metadata\"?: String,\n  };\n}",
        "    \"metadata\"?: String,\n  };\n\n  entity store {\n    \"prefix\": String,\n    \"key\": String,\n    \"value\": String,\n    \"created_at\"?: datetime,\n    \"updated_at\"?: datetime,\n    \"expires_at\"?: datetime,\n    \"ttl_minutes\"?: Long,\n  };\n}",
    );
    edit(
        "tables.cedarschema",
        "public::transfers]",
        "public::transfers, public::store]",
    );
    edit(
        "rows.cedar",
        "when { resource.tenant_id == principal.tenant_id };",
        "when { resource has tenant_id && resource.tenant_id == principal.tenant_id };",
    );
    edit(
        "delegation.cedar",
        "context.on_behalf_of.tenant_id != resource.tenant_id",
        "(!(resource has tenant_id) || context.on_behalf_of.tenant_id != resource.tenant_id)",
    );
    std::fs::write(
        dir.join("store.cedar"),
        r#"@id("support-store-own-namespace")
permit (
  principal in Role::"support",
  action in [Action::"select", Action::"insert", Action::"update", Action::"delete"],
  resource is public::store
)
when { resource.prefix like "tenant1.*" };
"#,
    )
    .unwrap();
}

/// LangGraph's Postgres store (agent memory) under enforcement: its upserts, its reads that
/// refresh TTLs from a writing WITH query, search and namespace listing see only the agent's
/// namespace. The DBA creates the store's tables; Portcullis learns of them on SIGHUP.
#[test]
fn langgraph_store_under_enforcement() {
    let set = tempfile::tempdir().unwrap();
    finance_with_langgraph_store(set.path());
    let env = Env::start_with_policies(set.path());
    let script = repo_root().join("tests/clients/python/langgraph_enforced.py");
    let out = run(Command::new(python())
        .arg(&script)
        .arg("setup")
        .env("PORTCULLIS_DIRECT_URL", env.direct_url())
        .env(
            "UPSTREAM_USER",
            connectors::postgres::fixtures::UPSTREAM_USER,
        ));
    assert_ok(&out, "OK langgraph setup");
    refresh_catalog(&env);
    let out = run(Command::new(python())
        .arg(&script)
        .arg("agent")
        .env("PORTCULLIS_URL", env.agent_url()));
    assert_ok(&out, "OK langgraph enforced");
}

#[test]
fn psycopg3() {
    run_python("psycopg3_client.py", "OK psycopg3");
}

/// The same psycopg 3 calls as support-bot under the finance example.
#[test]
fn psycopg3_under_enforcement() {
    let e = Env::start_enforcing();
    let out = run(python_enforced(&e, "psycopg3_client.py").env("PORTCULLIS_ENFORCED", "1"));
    assert_ok(&out, "OK psycopg3");
}

#[test]
fn asyncpg() {
    run_python("asyncpg_client.py", "OK asyncpg");
}

/// The same asyncpg calls as support-bot under the finance example.
#[test]
fn asyncpg_under_enforcement() {
    let e = Env::start_enforcing();
    let out = run(python_enforced(&e, "asyncpg_client.py").env("PORTCULLIS_ENFORCED", "1"));
    assert_ok(&out, "OK asyncpg");
}

#[test]
fn sqlalchemy() {
    run_python("sqlalchemy_client.py", "OK sqlalchemy");
}

#[test]
fn node_pg() {
    let node = require("node");
    let dir = repo_root().join("tests/clients/node");
    assert!(
        dir.join("node_modules/pg").is_dir(),
        "node_modules missing: run `bash tests/setup.sh` first"
    );
    let env = Env::start();
    let out = run(Command::new(&node)
        .arg(dir.join("pg_client.js"))
        .env("PORTCULLIS_URL", env.agent_url()));
    assert_ok(&out, "OK node-pg");
    drop(env);
    // The same calls as support-bot under the finance example.
    let e = Env::start_enforcing();
    let out = run(Command::new(&node)
        .arg(dir.join("pg_client.js"))
        .env("PORTCULLIS_URL", e.env.agent_url())
        .env("PORTCULLIS_ENFORCED", "1"));
    assert_ok(&out, "OK node-pg");
}

#[test]
fn jdbc() {
    let java = require("java");
    let jar = PathBuf::from("/usr/share/java/postgresql.jar");
    assert!(
        jar.is_file(),
        "pgjdbc not found: run `bash tests/setup.sh` first"
    );
    let jdbc = |env: &Env, enforced: bool| {
        run(Command::new(&java)
            .arg("-cp")
            .arg(&jar)
            .arg(repo_root().join("tests/clients/jdbc/JdbcClient.java"))
            .arg(format!(
                "jdbc:postgresql://127.0.0.1:{}/portcullis_demo?sslmode=disable",
                env.port
            ))
            .arg(AGENT)
            .arg(AGENT_SECRET)
            .env("PORTCULLIS_ENFORCED", if enforced { "1" } else { "0" }))
    };
    assert_ok(&jdbc(&Env::start(), false), "OK jdbc");
    // The same calls as support-bot under the finance example.
    assert_ok(&jdbc(&Env::start_enforcing().env, true), "OK jdbc");
}

fn psql(env: &Env) -> Command {
    let mut cmd = Command::new(env.cluster.bindir().join("psql"));
    cmd.arg("-X")
        .arg("-v")
        .arg("ON_ERROR_STOP=0")
        .arg(env.agent_url());
    cmd
}

#[test]
fn psql_works_including_describe_and_copy() {
    let env = Env::start();
    let script = r#"
\set id 7
select name from customers where id = :id;
begin;
insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'psql-kept', 'b', 'open');
savepoint sp;
insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'psql-undone', 'b', 'open');
rollback to savepoint sp;
commit;
select string_agg(subject, ',') from tickets where subject like 'psql-%';
select 1/0;
select 'after-error';
set role postgres;
select 'after-refusal';
\copy (select id from customers where id <= 3 order by id) to stdout
\d customers
\dt
\conninfo
"#;
    let out = run(psql(&env)
        .arg("-At")
        .arg("-c")
        .arg("select 1")
        .arg("-f")
        .arg("-")
        .stdin_script(script));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "Customer 7",
        "psql-kept\n",
        "after-error",
        "after-refusal",
        "1\n2\n3\n",
        "ssn|text",
        "public|customers|table|postgres",
    ] {
        assert!(
            stdout.contains(want),
            "missing {want:?} in psql output:\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(
        stderr.contains("Portcullis refused this statement"),
        "{stderr}"
    );
}

/// Lets a Command take a script on stdin.
trait StdinScript {
    fn stdin_script(&mut self, script: &str) -> &mut Self;
}

impl StdinScript for Command {
    fn stdin_script(&mut self, script: &str) -> &mut Self {
        let path = std::env::temp_dir().join(format!("portcullis-psql-{}.sql", std::process::id()));
        std::fs::write(&path, script).unwrap();
        self.stdin(std::fs::File::open(&path).unwrap())
    }
}

#[test]
fn pgbench_in_every_query_mode() {
    let env = Env::start();
    let pgbench = env.cluster.bindir().join("pgbench");
    // Tables are created directly by the superuser; the agent only runs transactions.
    let init = run(Command::new(&pgbench)
        .args(["-i", "-s", "1", "-q"])
        .arg(env.direct_url()));
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    env.cluster
        .psql(
            "portcullis_demo",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON pgbench_accounts, pgbench_branches, \
             pgbench_tellers, pgbench_history TO portcullis_upstream",
            &[],
        )
        .unwrap();
    for mode in ["simple", "extended", "prepared"] {
        for builtin in [&["-S"][..], &["-b", "tpcb-like"][..]] {
            let out = run(Command::new(&pgbench)
                .args(["-n", "-c", "4", "-j", "2", "-t", "100", "-M", mode])
                .args(builtin)
                .arg(env.agent_url()));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("number of failed transactions: 0"),
                "pgbench -M {mode} {builtin:?}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("number of transactions actually processed: 400/400"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn tls_is_offered_and_can_be_required() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let gen = run(Command::new(require("openssl"))
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let env = Env::start_with(Options {
        postgres_extra: format!(
            "require_tls = true\n[postgres.tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    });
    let url = env.agent_url();
    let out = run(Command::new(env.cluster.bindir().join("psql"))
        .arg("-X")
        .arg("-At")
        .arg(format!("{url}?sslmode=require"))
        .arg("-c")
        .arg("select 'over tls'")
        .arg("-c")
        .arg("\\conninfo"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("over tls") && stdout.contains("SSL connection"),
        "{stdout}"
    );

    let out = run(Command::new(env.cluster.bindir().join("psql"))
        .arg("-X")
        .arg(format!("{url}?sslmode=disable"))
        .arg("-c")
        .arg("select 1"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires TLS"));
}
