//! The `portcullis` command line as a user runs it: help, config checks, policy validation.

mod common;

use std::process::Command;

use common::copy_files;

fn portcullis(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn help_lists_every_subcommand() {
    let (ok, out, _) = portcullis(&["--help"]);
    assert!(ok);
    for cmd in [
        "serve",
        "demo",
        "check-config",
        "hash-secret",
        "policy",
        "schema",
        "explain",
    ] {
        assert!(out.contains(cmd), "{cmd} missing from:\n{out}");
    }
}

#[test]
fn policy_validate_accepts_the_examples_and_stores_versions() {
    let store = tempfile::tempdir().unwrap();
    for set in ["policies/examples/finance", "policies/examples/rag"] {
        let (ok, out, err) = portcullis(&[
            "policy",
            "validate",
            &repo(set),
            "--store",
            store.path().to_str().unwrap(),
        ]);
        assert!(ok, "{set}: {out}{err}");
        assert!(out.contains("valid") && out.contains("version "), "{out}");
        let version = out
            .split("version ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim();
        assert!(store.path().join(version).join("entities.json").is_file());
    }
}

#[test]
fn policy_validate_names_file_line_and_policy_of_an_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_files("policies/examples/finance", dir.path());
    let rows = dir.path().join("rows.cedar");
    let text = std::fs::read_to_string(&rows)
        .unwrap()
        .replace("principal.tenant_id }", "principal.tenantid }");
    std::fs::write(&rows, text).unwrap();
    let (ok, _, err) = portcullis(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("rows.cedar:6:"), "{err}");
    assert!(
        err.contains("support-reads-own-tenant") && err.contains("tenantid"),
        "{err}"
    );
}

#[test]
fn a_broken_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[postgres]\nlisten = \"127.0.0.1:1\"\nupstream = \"postgres://a@b/c\"\nmax_query_bytes = \"x\"\n").unwrap();
    let (ok, _, err) = portcullis(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("max_query_bytes") && err.contains("line 4"),
        "{err}"
    );
    std::fs::write(
        &path,
        "[postgres]\nlisten = \"127.0.0.1:1\"\nupstream = \"postgres://a@b/c\"\nlisten_port = 5\n",
    )
    .unwrap();
    let (ok, _, err) = portcullis(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!ok && err.contains("listen_port"), "{err}");
}

/// `schema import` against the real fixture database produces the finance example's
/// tables.cedarschema, and the example set validates with it.
/// `PORTCULLIS_UPDATE_SNAPSHOTS=1` rewrites the committed file from the database.
#[test]
fn schema_import_from_the_fixture_database_is_what_the_finance_set_validates_against() {
    use connectors::postgres::{fixtures, LocalCluster};
    let cluster = LocalCluster::start().unwrap();
    fixtures::load(&cluster, std::path::Path::new(&repo("fixtures")), "pw").unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let generated = out_dir.path().join("tables.cedarschema");
    // The upstream login (not superuser) can read the catalog too.
    let url = format!(
        "postgres://portcullis_upstream:pw@127.0.0.1:{}/portcullis_demo",
        cluster.port()
    );
    let (ok, _, err) = portcullis(&[
        "schema",
        "import",
        "--upstream",
        &url,
        "--schema",
        "public",
        "--out",
        generated.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&generated).unwrap();
    assert!(
        text.contains("entity transfers {") && text.contains("\"amount\": decimal,"),
        "{text}"
    );
    assert!(
        text.contains("\"ssn\"?: String,") && text.contains("\"metadata\"?: String,"),
        "{text}"
    );

    let committed = repo("policies/examples/finance/tables.cedarschema");
    if std::env::var_os("PORTCULLIS_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&committed, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&committed).unwrap_or_default(),
        text,
        "the finance example's tables.cedarschema is not what `schema import` generates from fixtures/"
    );

    // The example set with the freshly generated file validates.
    let set = tempfile::tempdir().unwrap();
    copy_files("policies/examples/finance", set.path());
    std::fs::copy(&generated, set.path().join("tables.cedarschema")).unwrap();
    let (ok, out, err) = portcullis(&["policy", "validate", set.path().to_str().unwrap()]);
    assert!(ok, "{out}{err}");
}

#[test]
fn policy_test_runs_the_examples_and_reports_a_wrong_expectation() {
    for set in ["policies/examples/finance", "policies/examples/rag"] {
        let (ok, out, err) = portcullis(&["policy", "test", &repo(set)]);
        assert!(ok, "{set}: {out}{err}");
        assert!(out.contains(" passed, 0 failed"), "{out}");
    }
    // Claim that support-bot sees a large transfer: both the filter and Cedar disagree.
    let dir = tempfile::tempdir().unwrap();
    copy_files("policies/examples/finance", dir.path());
    let tests = dir.path().join("finance.test.toml");
    let text = std::fs::read_to_string(&tests).unwrap().replacen(
        "visible = false\nattrs = { id = 3, tenant_id = 1",
        "visible = true\nattrs = { id = 3, tenant_id = 1",
        1,
    );
    std::fs::write(&tests, text).unwrap();
    let (ok, out, _) = portcullis(&["policy", "test", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("FAIL finance.test.toml: low clearance hides large transfers, even in its own tenant, row 3: expected visible, but the derived filter rejects it and Cedar denies it"),
        "{out}"
    );

    // Claim that support-bot reads IBANs in clear: the column rule and Cedar disagree.
    let text = std::fs::read_to_string(&tests)
        .unwrap()
        .replacen("iban = \"masked:last4\"", "iban = \"visible\"", 1)
        .replacen("masked = [\"iban\"]", "masked = []", 1);
    std::fs::write(&tests, text).unwrap();
    let (ok, out, _) = portcullis(&["policy", "test", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("column iban: expected visible, but the derived rule is masked:last4"),
        "{out}"
    );
    assert!(
        out.contains("row 1: column iban: expected shown, but the derived rule hides it and Cedar's read_column denies it"),
        "{out}"
    );
}

/// The README's first command: `portcullis demo` starts PostgreSQL with the fixtures and
/// enforces the finance example (support-bot: tenant 1, SSNs redacted; the auditor: every
/// tenant, emails as keyed hashes), serves the knowledge base over the Qdrant API under the
/// same policy set, and on Ctrl-C exits cleanly.
#[test]
fn demo_enforces_the_finance_example_and_stops_on_ctrl_c() {
    let port = common::free_port();
    let vector_port = common::free_port();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--vector-listen",
            &format!("127.0.0.1:{vector_port}"),
        ])
        .current_dir(repo(""))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not start"
        );
        assert!(matches!(demo.try_wait(), Ok(None)), "the demo exited");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let url = |user: &str, secret: &str| {
        format!("postgres://{user}:{secret}@127.0.0.1:{port}/portcullis_demo")
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let bot = common::connect(&url("support-bot", "support-secret"))
            .await
            .unwrap();
        let rows = bot
            .query(
                "select distinct tenant_id, ssn from customers where ssn is not null",
                &[],
            )
            .await
            .unwrap();
        let seen: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(seen, [(1, "***".to_string())]);
        let auditor = common::connect(&url("auditor", "auditor-secret"))
            .await
            .unwrap();
        let row = auditor
            .query_one("select count(*), min(email) from customers", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 30);
        let email: String = row.get(1);
        assert!(
            email.len() == 64 && email.bytes().all(|b| b.is_ascii_hexdigit()),
            "a keyed hash, not {email}"
        );
    });
    // The knowledge base, as the printed snippet queries it.
    let query =
        serde_json::json!({"query": [1, 0, 0, 0.3, 0, 0, 0, 0], "limit": 20, "with_payload": true});
    let path = "/collections/kb/points/query";
    let ids = |reply: &serde_json::Value| -> Vec<u64> {
        let mut ids: Vec<u64> = reply["result"]["points"]
            .as_array()
            .unwrap_or_else(|| panic!("{reply}"))
            .iter()
            .map(|p| p["id"].as_u64().unwrap())
            .collect();
        ids.sort();
        ids
    };
    let (status, bot) = common::http_json(
        vector_port,
        "POST",
        path,
        Some("support-bot:support-secret"),
        Some(&query),
    );
    assert_eq!(status, 200, "{bot}");
    assert_eq!(ids(&bot), [1, 2, 4], "tenant 1, clearance 1: {bot}");
    assert!(bot["result"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["payload"].get("internal_notes").is_none()));
    let (_, auditor) = common::http_json(
        vector_port,
        "POST",
        path,
        Some("auditor:auditor-secret"),
        Some(&query),
    );
    assert_eq!(ids(&auditor), (1..=8).collect::<Vec<_>>());
    assert!(auditor["result"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["payload"]["internal_notes"].is_string()));
    let status = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = demo.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("support-bot:support-secret@"), "{stdout}");
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{vector_port}")),
        "{stdout}"
    );
}

/// `schema import --vector-store`: a collection's payload fields, as LangChain stores them, become
/// the attributes of `qdrant::<collection>`; what a filter cannot compare exactly is left out
/// with a comment; the output loads as a policy set and the vector shim can use it.
#[test]
fn schema_import_reads_a_vector_collection() {
    use connectors::vector::{embedded::Embedded, Request};
    let work = tempfile::tempdir().unwrap();
    let store_dir = work.path().join("store");
    {
        let store = Embedded::open(&store_dir).unwrap();
        store
            .call_blocking(Request::CreateCollection {
                collection: "kb".into(),
                body: serde_json::json!({"vectors": {"size": 2, "distance": "Dot"}}),
            })
            .unwrap();
        store
            .call_blocking(Request::CreateIndex {
                collection: "kb".into(),
                body: serde_json::json!({"field_name": "metadata.tenant_id", "field_schema": "integer"}),
            })
            .unwrap();
        store
            .call_blocking(Request::Upsert {
                collection: "kb".into(),
                body: serde_json::json!({"points": [
                    {"id": 1, "vector": [1.0, 0.0], "payload": {"page_content": "a", "metadata": {"tenant_id": 1, "acl_groups": ["x"], "score": 0.5}}},
                    {"id": 2, "vector": [0.0, 1.0], "payload": {"page_content": "b", "metadata": {"tenant_id": 2, "acl_groups": [], "author": "ann"}}},
                ]}),
            })
            .unwrap();
    }
    let set = work.path().join("set");
    std::fs::create_dir(&set).unwrap();
    let out = set.join("collections.cedarschema");
    let (ok, _, err) = portcullis(&[
        "schema",
        "import",
        "--vector-store",
        store_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    for line in [
        "entity kb {",
        "page_content: String,",
        "tenant_id: Long,",
        "acl_groups: Set<String>,",
        "author?: String,",
        "// left out: metadata.score: a number that is not a 64-bit integer",
        "action search, upsert, delete, manage_collection appliesTo {",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    std::fs::write(
        set.join("principals.cedarschema"),
        "entity User;\nentity Agent { tenant_id: Long };\n",
    )
    .unwrap();
    std::fs::write(
        set.join("kb.cedar"),
        "@id(\"own-tenant\")\npermit (principal, action == Action::\"search\", resource is qdrant::kb)\n\
         when { resource.metadata.tenant_id == principal.tenant_id };\n",
    )
    .unwrap();
    std::fs::write(set.join("entities.json"), "[]").unwrap();
    let bundle = policies::load_dir(&set).unwrap();
    let schema = policies::PayloadSchema::of(&bundle, "qdrant::kb").unwrap();
    assert!(schema.field("metadata.author").is_some_and(|f| !f.required));
}

/// `portcullis serve` with `upstream` (and `extra` in `[postgres]`) and one agent `a`/`s`,
/// once it listens; killed when dropped.
struct Served {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Ok once it listens; Err(what it logged) when it exits first.
    fn start(upstream: &str, extra: &str) -> Result<Served, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let config = dir.path().join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                "[postgres]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{upstream}\"\n{extra}\n\
                 [[agents]]\nid = \"a\"\nsecret = \"s\"\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Served {
                    child,
                    port,
                    log,
                    _dir: dir,
                });
            }
            if let Ok(Some(_)) = child.try_wait() {
                return Err(std::fs::read_to_string(&log).unwrap());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "neither started nor exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `portcullis serve` with `upstream` starts, and what it logged.
fn serve_with_upstream(upstream: &str, extra: &str) -> (bool, String) {
    match Served::start(upstream, extra) {
        Ok(served) => (true, served.log()),
        Err(log) => (false, log),
    }
}

/// At start-up Portcullis checks what its upstream login may do beyond reading and writing
/// rows: a superuser, a role with BYPASSRLS, an owner of relations or a role that may create
/// in a schema is named in a warning, and `postgres.strict` refuses to start with it. The
/// fixtures' least-privilege role starts under strict.
#[test]
fn serve_names_what_the_upstream_login_may_do_and_strict_refuses_it() {
    use connectors::postgres::fixtures::{DEMO_DB, UPSTREAM_USER};
    let env = common::Env::start();
    let least = format!(
        "postgres://{UPSTREAM_USER}:{}@127.0.0.1:{}/{DEMO_DB}",
        env.upstream_password,
        env.cluster.port()
    );
    let (started, log) = serve_with_upstream(&least, "strict = true");
    assert!(started, "{log}");
    assert!(!log.contains("upstream login"), "{log}");

    let superuser = env.cluster.superuser_url(DEMO_DB);
    let (started, log) = serve_with_upstream(&superuser, "strict = true");
    assert!(!started, "{log}");
    assert!(
        log.contains("postgres.strict") && log.contains("is a superuser"),
        "{log}"
    );
    let (started, log) = serve_with_upstream(&superuser, "");
    assert!(started, "{log}");
    assert!(
        log.contains("WARN") && log.contains("is a superuser"),
        "{log}"
    );

    env.cluster
        .psql(
            DEMO_DB,
            "CREATE ROLE careless LOGIN PASSWORD 'careless-pw' BYPASSRLS; \
             CREATE SCHEMA scratch; GRANT CREATE, USAGE ON SCHEMA scratch TO careless; \
             CREATE TABLE public.\"Owned things\" (id int); \
             ALTER TABLE public.\"Owned things\" OWNER TO careless",
            &[],
        )
        .unwrap();
    let careless = format!(
        "postgres://careless:careless-pw@127.0.0.1:{}/{DEMO_DB}",
        env.cluster.port()
    );
    let (started, log) = serve_with_upstream(&careless, "strict = true");
    assert!(!started, "{log}");
    for named in [
        "has BYPASSRLS",
        r#"owns public."Owned things""#,
        "may create objects in schema scratch",
    ] {
        assert!(log.contains(named), "{named} not in:\n{log}");
    }
    assert!(!log.contains("is a superuser"), "{log}");
}

/// Serves with `upstream` and, once listening, asks through the proxy whether the upstream
/// session is encrypted (`pg_stat_ssl`). Err: what the proxy logged when it did not start.
fn upstream_ssl_through(upstream: &str) -> Result<String, String> {
    let served = Served::start(upstream, "")?;
    let ssl = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let url = format!("postgres://a:s@127.0.0.1:{}/portcullis_demo", served.port);
        let client = common::connect(&url).await.map_err(|e| format!("{e}"))?;
        let row = client
            .query_one(
                "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| format!("{e}"))?;
        Ok::<String, String>(row.get(0))
    });
    ssl.map_err(|e| format!("{e}\n{}", served.log()))
}

/// TLS to the upstream with libpq's sslmode, against PostgreSQL with `ssl = on` and a test CA:
/// verify-full accepts the server under the name its certificate holds and refuses it under
/// another name or with another CA, at start-up; verify-ca checks the chain only; require
/// encrypts without verifying; disable does not encrypt; a verifying mode without a root
/// certificate is a configuration error.
#[test]
fn upstream_tls_follows_sslmode() {
    use connectors::postgres::fixtures::{DEMO_DB, UPSTREAM_USER};
    let env = common::Env::start();
    let certs = tempfile::tempdir().unwrap();
    common::test_certificates(certs.path());
    let data = env.cluster.data_dir();
    for (file, mode) in [("server.crt", 0o644), ("server.key", 0o600)] {
        install_for_postgres(&certs.path().join(file), &data, mode);
    }
    reconfigure(&env, "ALTER SYSTEM SET ssl = on");
    let root = |ca: &str| certs.path().join(format!("{ca}.crt")).display().to_string();
    let url = |host: &str, query: &str| {
        format!(
            "postgres://{UPSTREAM_USER}:{}@{host}:{}/{DEMO_DB}?{query}",
            env.upstream_password,
            env.cluster.port()
        )
    };

    let full = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", root("ca")),
    );
    assert_eq!(upstream_ssl_through(&full).as_deref(), Ok("true"));
    let wrong_name = url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", root("ca")),
    );
    let log = upstream_ssl_through(&wrong_name).unwrap_err();
    assert!(
        log.contains("over TLS") && log.contains("certificate"),
        "{log}"
    );
    let untrusted = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", root("other-ca")),
    );
    let log = upstream_ssl_through(&untrusted).unwrap_err();
    assert!(
        log.contains("over TLS") && log.contains("certificate"),
        "{log}"
    );
    let ca_only = url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", root("ca")),
    );
    assert_eq!(upstream_ssl_through(&ca_only).as_deref(), Ok("true"));
    let ca_untrusted = url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", root("other-ca")),
    );
    assert!(upstream_ssl_through(&ca_untrusted).is_err());
    assert_eq!(
        upstream_ssl_through(&url("127.0.0.1", "sslmode=require")).as_deref(),
        Ok("true")
    );
    assert_eq!(
        upstream_ssl_through(&url("127.0.0.1", "sslmode=disable")).as_deref(),
        Ok("false")
    );
    let log = upstream_ssl_through(&url("localhost", "sslmode=verify-full")).unwrap_err();
    assert!(log.contains("sslrootcert"), "{log}");

    // A server that asks for a client certificate: without one the login fails at start-up;
    // with sslcert/sslkey it succeeds.
    install_for_postgres(&certs.path().join("ca.crt"), &data, 0o644);
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n{rules}"),
    )
    .unwrap();
    reconfigure(&env, "ALTER SYSTEM SET ssl_ca_file = 'ca.crt'");
    let log = upstream_ssl_through(&full).unwrap_err();
    assert!(
        log.contains("over TLS") && log.contains("certificate"),
        "{log}"
    );
    let with_cert = format!(
        "{full}&sslcert={}&sslkey={}",
        certs.path().join("client.crt").display(),
        certs.path().join("client.key").display()
    );
    assert_eq!(upstream_ssl_through(&with_cert).as_deref(), Ok("true"));
}

/// Copies `file` into the cluster's data directory as PostgreSQL's own, with `mode`.
fn install_for_postgres(file: &std::path::Path, data: &std::path::Path, mode: u32) {
    let to = data.join(file.file_name().unwrap());
    std::fs::copy(file, &to).unwrap();
    if running_as_root() {
        assert!(Command::new("chown")
            .args(["postgres:", to.to_str().unwrap()])
            .status()
            .unwrap()
            .success());
    }
    std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Runs `setting` (an ALTER SYSTEM) as the superuser and reloads the configuration.
fn reconfigure(env: &common::Env, setting: &str) {
    use connectors::postgres::fixtures::DEMO_DB;
    env.cluster.psql(DEMO_DB, setting, &[]).unwrap();
    env.cluster
        .psql(DEMO_DB, "SELECT pg_reload_conf()", &[])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The README's "Deploying" config passes `portcullis check-config` once its files exist.
#[test]
fn the_deploying_example_config_checks() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = readme
        .split("## Deploying")
        .nth(1)
        .expect("a Deploying section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a TOML block");
    let dir = tempfile::tempdir().unwrap();
    common::test_certificates(dir.path());
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("policies")).unwrap();
    copy_files("policies/examples/finance", &etc.join("policies"));
    for (from, to) in [
        ("ca.crt", "rds-ca.pem"),
        ("server.crt", "server.crt"),
        ("server.key", "server.key"),
    ] {
        std::fs::copy(dir.path().join(from), etc.join(to)).unwrap();
    }
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        toml.replace("/etc/portcullis/", &format!("{}/", etc.display())),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .env("PORTCULLIS_UPSTREAM_PASSWORD", "upstream-secret")
        .env("SUPPORT_BOT_SECRET", "agent-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The container path (no Docker engine runs here): docker-compose.yml parses, every file it
/// mounts exists, the Portcullis config it mounts passes `portcullis check-config` with the
/// mounts in place (the named volume prepared as its `init` service does), its upstream login
/// is the least-privilege role, and the Dockerfile builds in one stage and runs the binary
/// unprivileged in another.
#[test]
fn the_compose_stack_names_real_files_and_a_config_that_checks() {
    let root = std::path::PathBuf::from(repo(""));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "run bash tests/setup.sh first");
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(root.join("docker-compose.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = compose["services"].as_object().expect("services");
    for name in ["postgres", "init", "portcullis"] {
        assert!(services.contains_key(name), "no {name} service");
    }
    // Every bind mount names a file of the repository; named volumes are declared.
    let data = tempfile::tempdir().unwrap();
    let mut mounts = Vec::new();
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            let mut parts = spec.split(':');
            let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
            let host = if let Some(rel) = source.strip_prefix("./") {
                let path = root.join(rel);
                assert!(
                    path.exists(),
                    "{name} mounts {source}, which does not exist"
                );
                path
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name} mounts undeclared volume {source}"
                );
                data.path().to_path_buf()
            };
            if name == "portcullis" {
                mounts.push((target.to_string(), host));
            }
        }
        if service.get("build").is_some() {
            assert_eq!(service["build"], ".", "{name} builds elsewhere");
        }
    }
    // The config as the container reads it, with each mount's target mapped to its source.
    let (_, config) = mounts
        .iter()
        .find(|(target, _)| target == "/etc/portcullis/portcullis.toml")
        .expect("the config is mounted");
    let mut text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains("upstream = \"postgres://portcullis@"),
        "{text}"
    );
    assert!(text.contains("strict = true"), "{text}");
    for (target, host) in mounts.iter().filter(|(t, _)| !t.ends_with(".toml")) {
        text = text.replace(target.as_str(), host.to_str().unwrap());
    }
    // What the init service writes into the volume.
    let (ok, _, err) = portcullis(&[
        "audit",
        "keygen",
        "--node-id",
        "compose",
        "--out",
        data.path().join("audit.key").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    std::fs::write(
        data.path().join("hash.key"),
        "00112233445566778899aabbccddeeff",
    )
    .unwrap();
    let checked = data.path().join("portcullis.toml");
    std::fs::write(&checked, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check-config", "--config", checked.to_str().unwrap()])
        .env("PORTCULLIS_UPSTREAM_PASSWORD", "change-me")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The role script the postgres service runs is the fixtures' least-privilege role.
    let init = std::fs::read_to_string(root.join("docker/initdb/03-portcullis-role.sh")).unwrap();
    assert!(init.contains("/fixtures/roles.sql") && init.contains("upstream_user=portcullis"));

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    let runtime = dockerfile.split(stages[1]).nth(1).unwrap();
    assert!(runtime.contains("COPY --from=build") && runtime.contains("/usr/local/bin/portcullis"));
    assert!(
        runtime.contains("USER portcullis"),
        "the runtime stage runs as root"
    );
    assert!(
        !runtime.contains("cargo"),
        "the runtime stage holds the toolchain"
    );
}
