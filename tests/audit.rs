//! The audit log end to end: the real binary enforcing the finance example with `[audit]` in
//! `sync` mode. Every statement's decision record is durable before its result reaches the
//! client; the log verifies with the CLI, an entry is proven and the proof checked offline, and
//! an edited entry is named.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use connectors::postgres::fixtures::UPSTREAM_USER;
use serde_json::Value;

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The log's entries, parsed.
fn entries(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("entries"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Makes the node's log key with the CLI: `work/audit.key` (and `.pub`).
fn keygen(work: &Path, node: &str) -> std::path::PathBuf {
    let key = work.join("audit.key");
    ok(&portcullis(&[
        "audit",
        "keygen",
        "--node-id",
        node,
        "--out",
        key.to_str().unwrap(),
    ]));
    key
}

/// The proxy enforcing the finance example, with `[audit]` for `node` writing to `log`, plus
/// `extra` audit settings. The policy set's directory lives as long as the returned guard.
fn start_audited(node: &str, key: &Path, log: &Path, extra: &str) -> (Env, tempfile::TempDir) {
    let set = tempfile::tempdir().unwrap();
    copy_files("policies/examples/finance", set.path());
    let env = Env::start_with(Options {
        postgres_extra: format!(
            "[policies]\ndir = {:?}\n\n[audit]\ndir = {:?}\nkey_file = {:?}\nnode_id = {node:?}\n{extra}",
            set.path().display().to_string(),
            log.display().to_string(),
            key.display().to_string(),
        ),
    });
    (env, set)
}

/// `portcullis audit verify` of `log` with the public key made beside `key` must pass.
fn verify_with_cli(log: &Path, key: &Path) -> String {
    let public = format!("{}.pub", key.display());
    ok(&portcullis(&[
        "audit",
        "verify",
        log.to_str().unwrap(),
        "--key",
        &public,
    ]))
}

/// Sends the proxy `signal` (`INT`: a clean shutdown; `9`: a crash) and waits until it is gone.
fn stop(env: &mut Env, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &env.proxy_pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.proxy_alive() {
        assert!(Instant::now() < deadline, "the proxy did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn decision_of<'a>(entries: &'a [Value], statement: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["statement"] == statement)
        .unwrap_or_else(|| panic!("no record of {statement:?} in {entries:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_is_recorded_before_it_runs_and_the_log_proves_it() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "test-node");
    let public = work.path().join("audit.key.pub");
    let log = work.path().join("log");
    let (mut env, _set) = start_audited("test-node", &key, &log, "");
    let bot = env.agent().await;

    // A rewritten read: its record is in the log the moment its rows are.
    let rows = bot
        .simple_query("select count(*) from customers")
        .await
        .unwrap();
    assert!(!rows.is_empty());
    let e = entries(&log);
    let read = decision_of(&e, "select count(*) from customers");
    assert_eq!(read["decision"], "rewrite");
    assert_eq!(read["agent"], AGENT);
    assert_eq!(read["node"], "test-node");
    assert_eq!(read["protocol"], "simple");
    assert!(read["rewritten"]
        .as_str()
        .unwrap()
        .contains("\"tenant_id\" = 1"));
    let basis = &read["basis"];
    assert_eq!(basis["policy_version"].as_str().unwrap().len(), 64);
    assert_eq!(basis["relations"][0]["relation"], "public::customers");
    assert!(basis["relations"][0]["filter"]
        .as_str()
        .unwrap()
        .contains("tenant_id"));
    assert!(
        basis["relations"][0]["masked"]["ssn"].is_object(),
        "{basis}"
    );
    assert!(basis["relations"][0]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "support-reads-own-tenant"));

    // A refusal is recorded with its SQLSTATE; a prepared statement as extended protocol.
    let e = bot.simple_query("drop table customers").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    bot.query("select name from customers where id = $1", &[&3i32])
        .await
        .unwrap();
    let e = entries(&log);
    let refused = decision_of(&e, "drop table customers");
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["sqlstate"], "42501");
    let prepared = decision_of(&e, "select name from customers where id = $1");
    assert_eq!(prepared["protocol"], "extended");
    assert_eq!(prepared["session"], read["session"]);
    let ids: std::collections::HashSet<&str> = e.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids.len(), e.len(), "ids are unique");

    // Outcome records: what each statement returned, linked to its decision. The digest is
    // SHA-256 over the DataRow messages as forwarded: here one row, one text column 'abc'.
    bot.simple_query("select 'abc' as x; select 1/0; select 3")
        .await
        .unwrap_err();
    bot.simple_query("select 'abc' as x").await.unwrap();
    // Outcomes are written after the fact; a later statement's decision (written ahead of it,
    // in order) makes sure they are in.
    bot.simple_query("select 'after'").await.unwrap();
    let e = entries(&log);
    let outcomes_of = |decision: &Value| -> Vec<Value> {
        e.iter()
            .filter(|r| r["kind"] == "outcome" && r["decision"] == decision["id"])
            .cloned()
            .collect()
    };
    let count = outcomes_of(read);
    assert_eq!(count.len(), 1, "{count:?}");
    assert_eq!(
        (count[0]["tag"].as_str(), count[0]["rows"].as_u64()),
        (Some("SELECT 1"), Some(1))
    );
    assert!(
        outcomes_of(refused).is_empty(),
        "a refused statement never ran"
    );
    let prepared_outcome = outcomes_of(prepared);
    assert_eq!(prepared_outcome.len(), 1);
    assert_eq!(prepared_outcome[0]["rows"], 1);
    // Bind parameters are recorded as digests (tokio-postgres binds 3i32 in binary).
    let hex = |bytes: &[u8]| -> String {
        <sha2::Sha256 as sha2::Digest>::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(
        prepared_outcome[0]["parameters"][0],
        hex(&[0, 0, 0, 3]).as_str()
    );
    let mixed = outcomes_of(decision_of(&e, "select 'abc' as x; select 1/0; select 3"));
    assert_eq!(mixed.len(), 3, "{mixed:?}");
    let digest = hex(b"D\x00\x00\x00\x0d\x00\x01\x00\x00\x00\x03abc");
    assert_eq!(mixed[0]["statement_index"], 0);
    assert_eq!(mixed[0]["digest"], digest.as_str());
    assert_eq!(
        (
            mixed[1]["statement_index"].as_u64(),
            mixed[1]["error"].as_str()
        ),
        (Some(1), Some("22012"))
    );
    assert_eq!(
        (
            mixed[2]["statement_index"].as_u64(),
            mixed[2]["not_run"].as_bool()
        ),
        (Some(2), Some(true))
    );
    let alone = outcomes_of(decision_of(&e, "select 'abc' as x"));
    assert_eq!(
        alone[0]["digest"],
        digest.as_str(),
        "the same rows, the same digest"
    );

    // Shutdown publishes a checkpoint covering every entry.
    drop(bot);
    stop(&mut env, "INT");
    let (dir, key_pub) = (log.to_str().unwrap(), public.to_str().unwrap());
    let verified = ok(&portcullis(&["audit", "verify", dir, "--key", key_pub]));
    let count = entries(&log).len();
    assert!(
        verified.contains(&format!("{count} entries"))
            && verified.contains(&format!("latest covers {count}")),
        "{verified}"
    );

    // Search: the refusals of support-bot; what read customers under a given policy.
    let denied = ok(&portcullis(&[
        "audit",
        "search",
        dir,
        "--agent",
        AGENT,
        "--decision",
        "deny",
    ]));
    assert_eq!(denied.lines().count(), 1, "{denied}");
    assert!(
        denied.contains("drop table customers") && denied.contains("refused 42501"),
        "{denied}"
    );
    let reads = ok(&portcullis(&[
        "audit",
        "search",
        dir,
        "--relation",
        "public::customers",
        "--policy",
        "support-reads-own-tenant",
        "--json",
    ]));
    let reads: Vec<Value> = reads
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(reads.len() >= 2, "{reads:?}");
    assert!(reads.iter().all(|r| r["decision"] == "rewrite"));
    let count = reads
        .iter()
        .find(|r| r["statement"] == "select count(*) from customers")
        .unwrap();
    assert_eq!(count["outcomes"][0]["rows"], 1);
    let none = ok(&portcullis(&[
        "audit",
        "search",
        dir,
        "--since",
        "2999-01-01T00:00:00Z",
    ]));
    assert!(none.is_empty());

    // A proof of the refusal's record, checked offline with the public key alone.
    let id = refused["id"].as_str().unwrap();
    let entry = work.path().join("entry.json");
    let proof = ok(&portcullis(&[
        "audit",
        "prove",
        dir,
        id,
        "--entry-out",
        entry.to_str().unwrap(),
    ]));
    assert!(proof.starts_with("c2sp.org/tlog-proof@v1\n"), "{proof}");
    let proof_file = work.path().join("entry.tlog-proof");
    std::fs::write(&proof_file, &proof).unwrap();
    let checked = ok(&portcullis(&[
        "audit",
        "verify-proof",
        "--key",
        key_pub,
        entry.to_str().unwrap(),
        proof_file.to_str().unwrap(),
    ]));
    assert!(checked.starts_with("OK: entry"), "{checked}");

    // Editing the refusal's record (to hide it) is caught, naming the entry.
    let text = std::fs::read_to_string(log.join("entries")).unwrap();
    let index = text.lines().position(|l| l.contains(id)).unwrap();
    std::fs::write(log.join("entries"), text.replace("\"deny\"", "\"rewrite\"")).unwrap();
    let out = portcullis(&["audit", "verify", dir, "--key", key_pub]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("entry {index} ")), "{err}");
}

/// Mounts a tmpfs of `size` at `dir` (the tests run as root, as CI does); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs: run it as root"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The log on a full disk: statements are refused with 58030 (not a policy refusal), other
/// sessions keep their connections, and once space returns statements run again by themselves;
/// the log then holds a record of the outage, every statement that ran has its record, and
/// the log verifies.
/// `/metrics` counts what the log records: statements by agent and decision equal the decision
/// records, each durable append is in the fsync histogram, and sessions are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_log_records() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "metrics-node");
    let log = work.path().join("log");
    let admin = free_port();
    let (mut env, _set) = start_audited(
        "metrics-node",
        &key,
        &log,
        &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    let bot = env.agent().await;
    let auditor = env.url(AUDITOR, AUDITOR_SECRET);
    let auditor = connect(&auditor).await.unwrap();
    for i in 0..5 {
        bot.simple_query(&format!("select name from customers where id = {i}"))
            .await
            .unwrap();
    }
    bot.simple_query("select count(*) from customers")
        .await
        .unwrap();
    bot.simple_query("select count(*) from customers")
        .await
        .unwrap();
    bot.query("select id from customers where id = $1", &[&1i32])
        .await
        .unwrap();
    bot.simple_query("drop table customers").await.unwrap_err();
    bot.simple_query("truncate customers").await.unwrap_err();
    auditor
        .simple_query("select count(*) from customers")
        .await
        .unwrap();
    auditor
        .simple_query("delete from customers")
        .await
        .unwrap_err();

    let (status, text) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "portcullis_sessions"), Some(2.0), "{text}");
    let e = entries(&log);
    for agent in [AGENT, AUDITOR] {
        for decision in ["rewrite", "deny"] {
            let recorded = e
                .iter()
                .filter(|r| {
                    r["kind"] == "decision" && r["agent"] == agent && r["decision"] == decision
                })
                .count();
            assert!(recorded > 0, "{agent} {decision}");
            let sample =
                format!("portcullis_statements_total{{agent=\"{agent}\",decision=\"{decision}\"}}");
            assert_eq!(
                metric(&text, &sample),
                Some(recorded as f64),
                "{sample}\n{text}"
            );
        }
    }
    // The second identical count(*) was a rewrite cache hit; derivations are cached per agent
    // and table.
    let hits = metric(
        &text,
        "portcullis_cache_lookups_total{cache=\"rewrite\",result=\"hit\"}",
    );
    assert!(hits.unwrap() >= 1.0, "{text}");
    let derived = metric(
        &text,
        "portcullis_cache_lookups_total{cache=\"derivation\",result=\"hit\"}",
    );
    assert!(derived.unwrap() >= 1.0, "{text}");
    // The five lookups by id differ only in the id: the first is rewritten and its template
    // learnt, the other four are filled in.
    let filled = metric(
        &text,
        "portcullis_cache_lookups_total{cache=\"shape\",result=\"hit\"}",
    );
    assert!(filled.unwrap() >= 4.0, "{text}");
    let fsyncs = metric(&text, "portcullis_audit_fsync_seconds_count").unwrap();
    assert!(fsyncs >= 1.0 && fsyncs <= e.len() as f64, "{text}");
    assert_eq!(metric(&text, "portcullis_audit_writable"), Some(1.0));
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text");
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(admin, "/readyz"), (200, "ready\n".into()));
    // Metrics show agents and counts, never statements or data.
    assert!(!text.contains("customers"), "{text}");
    drop((bot, auditor));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&http_get(admin, "/metrics").1, "portcullis_sessions") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "closed sessions are no longer counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(&mut env, "INT");
}

/// CPU time (clock ticks, user + system) of the proxy's `audit-writer` thread so far.
fn writer_ticks(pid: u32) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == "audit-writer" {
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            // Fields after the parenthesized name: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        }
    }
    panic!("the proxy has no audit-writer thread");
}

/// With nothing to write and nothing to checkpoint, the log's writer sleeps: over a second of
/// idleness after a checkpoint was due, it uses almost no CPU. (It once waited zero seconds
/// for the next message whenever a checkpoint was overdue with nothing new, spinning a core
/// for as long as the proxy was idle, which also skewed every benchmark run beside it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_log_writer_sleeps() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "idle-node");
    let log = work.path().join("log");
    let (mut env, _set) = start_audited(
        "idle-node",
        &key,
        &log,
        "mode = \"batch\"\ncheckpoint_ms = 20\n",
    );
    let bot = env.agent().await;
    bot.simple_query("select count(*) from customers")
        .await
        .unwrap();
    // The record is written and checkpointed; from here on the log has nothing to do.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = writer_ticks(env.proxy_pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = writer_ticks(env.proxy_pid()) - before;
    // A spinning writer uses most of the second (tens of ticks at 100 per second, even on a
    // busy machine); a sleeping one wakes 50 times, for well under a tick in all.
    assert!(
        used <= 5,
        "the idle audit writer used {used} clock ticks of CPU in one second"
    );
    assert!(entries(&log)
        .iter()
        .any(|e| e["statement"] == "select count(*) from customers"));
    drop(bot);
    stop(&mut env, "INT");
}

/// A few reads and a refusal by support-bot.
async fn export_workload(env: &Env) {
    let bot = env.agent().await;
    for id in [1, 2, 3] {
        bot.query("select id, name from customers where id = $1", &[&id])
            .await
            .unwrap();
    }
    bot.simple_query("drop table customers").await.unwrap_err();
}

/// The export table's rows of node `export-node`: index, entry as logged, checkpoint, kind.
async fn exported(sink_db: &tokio_postgres::Client) -> Vec<tokio_postgres::Row> {
    sink_db
        .query(
            "select log_index, entry_text, checkpoint, entry->>'kind' from fleet.decisions \
             where origin = 'portcullis/export-node' order by log_index",
            &[],
        )
        .await
        .unwrap()
}

/// `[audit.export]`: every checkpointed entry lands once in a PostgreSQL table of another
/// database, exactly as logged and with the signed checkpoint that covers it; after a restart
/// the export resumes with nothing duplicated, and `audit search --export-url` answers as the
/// search of the directory does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_exports_to_a_table_that_search_reads() {
    let sink = connectors::postgres::LocalCluster::start().expect("start the sink PostgreSQL");
    for sql in [
        "CREATE ROLE audit_writer LOGIN PASSWORD 'writer-pw'",
        "CREATE DATABASE audit OWNER audit_writer",
    ] {
        sink.psql("postgres", sql, &[]).unwrap();
    }
    let sink_url = format!("postgres://audit_writer@127.0.0.1:{}/audit", sink.port());
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "export-node");
    let log = work.path().join("log");
    let export = format!(
        "checkpoint_ms = 100\n\n[audit.export]\nurl = {sink_url:?}\npassword_env = \"SINK_PW\"\ntable = \"fleet.decisions\"\ninterval_ms = 100\n"
    );
    sink.psql(
        "audit",
        "CREATE SCHEMA fleet AUTHORIZATION audit_writer",
        &[],
    )
    .unwrap();
    std::env::set_var("SINK_PW", "writer-pw");
    let (mut env, set) = start_audited("export-node", &key, &log, &export);
    let sink_db = connect(&format!(
        "postgres://audit_writer:writer-pw@127.0.0.1:{}/audit",
        sink.port()
    ))
    .await
    .unwrap();
    export_workload(&env).await;
    // Everything logged so far is in the table once the export caught up with a checkpoint.
    let wait_for = |want: usize| {
        let sink_db = &sink_db;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let rows = exported(sink_db).await;
                if rows.len() >= want {
                    return rows;
                }
                assert!(
                    Instant::now() < deadline,
                    "only {} of {want} entries exported",
                    rows.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let logged = entries(&log).len();
    wait_for(logged).await;
    stop(&mut env, "INT");
    drop(env);
    drop(set);

    // A second run on the same log: the export resumes after what the table holds.
    let (mut env, _set) = start_audited("export-node", &key, &log, &export);
    export_workload(&env).await;
    let written = std::fs::read_to_string(log.join("entries"))
        .unwrap()
        .lines()
        .count();
    let rows = wait_for(written).await;
    // Outcomes are written after the fact: read the log again, as long as the table or longer.
    let logged = std::fs::read_to_string(log.join("entries")).unwrap();
    let logged: Vec<&str> = logged.lines().collect();
    assert!(rows.len() <= logged.len());
    // Index by index, each entry once, exactly as logged.
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<_, i64>(0), i as i64);
        assert_eq!(
            row.get::<_, String>(1),
            logged[i],
            "entry {i} exactly as logged"
        );
        let checkpoint: String = row.get(2);
        let size: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
        assert!(checkpoint.starts_with("portcullis/export-node\n") && size > i as u64);
        assert!(
            checkpoint.contains("\u{2014} portcullis/export-node "),
            "signed: {checkpoint}"
        );
    }
    // The fleet's table answers as the node's directory does.
    let search = |source: &[&str], filter: &[&str]| {
        let mut args = vec!["audit", "search"];
        args.extend_from_slice(source);
        args.extend_from_slice(filter);
        args.push("--json");
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .env("SINK_PW", "writer-pw")
            .output()
            .unwrap();
        ok(&out)
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("origin");
                v
            })
            .collect::<Vec<_>>()
    };
    let dir = [log.to_str().unwrap()];
    let table = [
        "--export-url",
        sink_url.as_str(),
        "--password-env",
        "SINK_PW",
        "--export-table",
        "fleet.decisions",
    ];
    for filter in [
        &[][..],
        &["--agent", AGENT][..],
        &["--decision", "deny"][..],
        &["--relation", "public::customers"][..],
    ] {
        let from_dir = search(&dir, filter);
        assert!(!from_dir.is_empty(), "{filter:?}");
        assert_eq!(search(&table, filter), from_dir, "{filter:?}");
    }
    assert_eq!(search(&table, &["--decision", "deny"]).len(), 2);
    // A row the log does not hold at an index still to come (another node with this
    // node_id): the export stops there and says why, rather than skip it, and the batch that
    // met it leaves nothing behind.
    let forged = std::fs::read_to_string(log.join("entries"))
        .unwrap()
        .lines()
        .count() as i64
        + 3;
    sink_db
        .execute(
            "insert into fleet.decisions (origin, log_index, entry, entry_text, checkpoint) \
             values ('portcullis/export-node', $1, '{}', '{}', 'forged')",
            &[&forged],
        )
        .await
        .unwrap();
    let bot = env.agent().await;
    for i in 0..4 {
        bot.simple_query(&format!("select {i}")).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let stopped =
        format!("holds other entries for portcullis/export-node than its log, at index {forged}");
    while !env.proxy_log().contains(&stopped) {
        assert!(Instant::now() < deadline, "{}", env.proxy_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = exported(&sink_db).await;
    let last = rows.last().unwrap();
    assert_eq!(last.get::<_, i64>(0), forged, "nothing exported past it");
    assert_eq!(
        last.get::<_, String>(2),
        "forged",
        "the foreign row is left for an operator"
    );
    let below: Vec<i64> = rows
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .filter(|i| *i < forged)
        .collect();
    assert_eq!(
        below,
        (0..below.len() as i64).collect::<Vec<_>>(),
        "no gap left by a partial batch"
    );
    stop(&mut env, "INT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_statements_until_space_returns() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "full-node");
    let mount = work.path().join("disk");
    std::fs::create_dir(&mount).unwrap();
    let _tmpfs = Tmpfs::mount(&mount, "1m");
    let log = mount.join("log");
    let admin = free_port();
    let (mut env, _set) = start_audited(
        "full-node",
        &key,
        &log,
        &format!("checkpoint_ms = 100\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    assert_eq!(http_get(admin, "/readyz"), (200, "ready\n".into()));
    let idle = env.agent().await;
    let bot = env.agent().await;
    bot.simple_query("select 1").await.unwrap();
    // Fill the disk.
    let filler = mount.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    // Statements fail once the log cannot take their records; none runs unrecorded.
    let mut ran = vec!["select 1".to_string()];
    let mut failed = None;
    for i in 0..2000 {
        let sql = format!("select {i} as n, count(*) from customers");
        match bot.simple_query(&sql).await {
            Ok(_) => ran.push(sql),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("the disk filled up");
    assert_eq!(sqlstate(&e), "58030", "{}", message(&e));
    // Other sessions are refused with the same operator error and keep their connection.
    let e = idle.simple_query("select 2").await.unwrap_err();
    assert_eq!(sqlstate(&e), "58030", "{}", message(&e));
    let e = idle.simple_query("select 3").await.unwrap_err();
    assert_eq!(sqlstate(&e), "58030");
    // A load balancer stops sending agents here; the process is alive.
    let (status, body) = http_get(admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("audit log cannot be written"), "{body}");
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let (_, metrics) = http_get(admin, "/metrics");
    assert_eq!(metric(&metrics, "portcullis_audit_writable"), Some(0.0));
    // Space returns: statements run again by themselves.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match idle.simple_query("select 'back'").await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(sqlstate(&e), "58030");
                assert!(Instant::now() < deadline, "statements did not resume");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    ran.push("select 'back'".into());
    assert_eq!(http_get(admin, "/readyz").0, 200);
    drop((idle, bot));
    stop(&mut env, "INT");
    let e = entries(&log);
    for sql in &ran {
        let n = e.iter().filter(|r| r["statement"] == sql.as_str()).count();
        assert_eq!(n, 1, "{sql} ran, so it has exactly one record");
    }
    let outage: Vec<&Value> = e.iter().filter(|r| r["kind"] == "audit_outage").collect();
    assert_eq!(outage.len(), 1, "{outage:?}");
    assert_eq!(outage[0]["fail_open"], false);
    assert!(
        outage[0]["error"].as_str().unwrap().contains("space"),
        "{}",
        outage[0]
    );
    verify_with_cli(&log, &key);
}

/// `kill -9` under concurrent load: every statement whose result reached a client has its
/// decision record in the log; the log verifies, and a restarted writer takes it up (a torn
/// last line, never acknowledged, is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_record_of_a_statement_that_ran() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "crash-node");
    let log = work.path().join("log");
    let (mut env, _set) = start_audited("crash-node", &key, &log, "checkpoint_ms = 50\n");
    let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let client = env.agent().await;
        let ran = ran.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let sql = format!("select {t} as task, {i} as n, count(*) from tickets");
                match client.simple_query(&sql).await {
                    Ok(_) => ran.lock().unwrap().push(sql),
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop(&mut env, "9");
    for task in tasks {
        task.await.unwrap();
    }
    let ran = ran.lock().unwrap().clone();
    assert!(ran.len() > 20, "the load ran ({} statements)", ran.len());
    let recorded: std::collections::HashSet<String> = entries(&log)
        .iter()
        .filter_map(|r| r["statement"].as_str().map(str::to_string))
        .collect();
    for sql in &ran {
        assert!(recorded.contains(sql), "{sql} ran but has no record");
    }
    verify_with_cli(&log, &key);
    // A restarted writer opens the log as it was left and goes on.
    let private = std::fs::read_to_string(&key).unwrap();
    let mut reopened = audit::Log::open(&log, "portcullis/crash-node", &private).unwrap();
    reopened.checkpoint().unwrap();
    verify_with_cli(&log, &key);
}

/// `capture_keys`: the outcome records hold the primary keys of exactly the rows each
/// statement returned (simple and extended protocol, through joins; none where the key column
/// was not returned), so `audit search --key` answers "which statements returned customer N,
/// for whom" exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_keys_say_exactly_who_saw_a_row() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "keys-node");
    let log = work.path().join("log");
    let (mut env, _set) = start_audited(
        "keys-node",
        &key,
        &log,
        "capture_keys = [\"public.customers\"]\n",
    );
    let bot = env.agent().await;
    let auditor = connect(&env.url(AUDITOR, AUDITOR_SECRET)).await.unwrap();
    // What each statement really returned, as the client saw it.
    let ids = |rows: Vec<tokio_postgres::SimpleQueryMessage>, column: usize| -> Vec<String> {
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(column).map(str::to_string),
                _ => None,
            })
            .collect()
    };
    let mut returned: Vec<(&str, Vec<String>)> = Vec::new();
    let sql = "select * from customers where id in (1, 2, 3, 11, 12, 21) order by id";
    returned.push((sql, ids(bot.simple_query(sql).await.unwrap(), 0)));
    let sql = "select t.subject, c.id from tickets t join customers c on c.id = t.customer_id \
               order by t.id limit 3";
    returned.push((sql, ids(bot.simple_query(sql).await.unwrap(), 1)));
    let sql = "select id from customers order by id";
    returned.push((sql, ids(auditor.simple_query(sql).await.unwrap(), 0)));
    // Rows far larger than any buffer, the key after the large value: read as they pass.
    let sql = "select repeat(name, 40000) as big, id from customers where id in (1, 2, 3, 11) \
               order by id";
    let big = bot.simple_query(sql).await.unwrap();
    assert!(big
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
        if r.get(0).is_some_and(|v| v.len() > 100_000))));
    returned.push((sql, ids(big, 1)));
    let prepared = "select name, id from customers where id = $1";
    let visible: i32 = returned[0].1[0].parse().unwrap();
    let rows = bot.query(prepared, &[&visible]).await.unwrap();
    assert_eq!(rows.len(), 1);
    bot.simple_query("select ssn from customers").await.unwrap();
    // Two portals in one batch, the second described, the first executed first: each
    // Execute's rows are read by its own portal's columns (b's description put on a's rows
    // would record a's tenant_id as a customer id).
    {
        use bytes::BytesMut;
        use postgres_protocol::message::{backend, frontend};
        use postgres_protocol::IsNull;
        let mut raw = common::raw::Raw::login(&env).await;
        let mut b = BytesMut::new();
        frontend::parse(
            "sa",
            "select id, tenant_id from customers where id = 3",
            [],
            &mut b,
        )
        .unwrap();
        frontend::parse(
            "sb",
            "select tenant_id, id from customers where id = 6",
            [],
            &mut b,
        )
        .unwrap();
        for (portal, statement) in [("a", "sa"), ("b", "sb")] {
            frontend::bind(
                portal,
                statement,
                std::iter::empty::<i16>(),
                std::iter::empty::<i32>(),
                |_: i32, _: &mut BytesMut| {
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(IsNull::No)
                },
                std::iter::empty::<i16>(),
                &mut b,
            )
            .map_err(|_| ())
            .unwrap();
        }
        frontend::describe(b'P', "b", &mut b).unwrap();
        frontend::execute("a", 0, &mut b).unwrap();
        frontend::execute("b", 0, &mut b).unwrap();
        frontend::sync(&mut b);
        raw.send(&b).await;
        let mut rows = 0;
        while let Some(m) = raw.next().await {
            match m {
                backend::Message::DataRow(_) => rows += 1,
                backend::Message::ErrorResponse(body) => panic!("{}", common::raw::code_of(body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        assert_eq!(rows, 2);
    }
    // COPY output names no column's table: its outcome says its keys were not captured, and
    // digests the CopyData as forwarded.
    let copy = "copy (select id from customers where id in (3, 6)) to stdout";
    let stream = bot.copy_out(copy).await.unwrap();
    let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(stream)
        .await
        .unwrap();
    let mut forwarded = Vec::new();
    for chunk in &chunks {
        forwarded.push(b'd');
        forwarded.extend_from_slice(&(chunk.len() as i32 + 4).to_be_bytes());
        forwarded.extend_from_slice(chunk);
    }
    // The table made anew (a new OID under the same name): after the catalog refresh its keys
    // are captured again.
    env.direct()
        .await
        .batch_execute(&format!(
            "alter table customers rename to customers_before; \
             create table customers (like customers_before including all); \
             insert into customers select * from customers_before; \
             grant select on customers to \"{UPSTREAM_USER}\""
        ))
        .await
        .unwrap();
    refresh_catalog(&env);
    let bot = env.agent().await;
    let sql = "select id, 'anew' from customers where id in (3, 6) order by id";
    returned.push((sql, ids(bot.simple_query(sql).await.unwrap(), 0)));
    bot.simple_query("select 'flush'").await.unwrap();
    drop((bot, auditor));
    stop(&mut env, "INT");

    let e = entries(&log);
    let keys_of = |statement: &str| -> Vec<String> {
        let decision = decision_of(&e, statement);
        e.iter()
            .filter(|r| r["kind"] == "outcome" && r["decision"] == decision["id"])
            .flat_map(|o| {
                o["keys"]["public.customers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|k| k[0].as_str().unwrap().to_string())
            .collect()
    };
    for (sql, got) in &returned {
        assert!(!got.is_empty(), "{sql} returned rows");
        assert_eq!(&keys_of(sql), got, "{sql}");
    }
    assert_eq!(keys_of(prepared), vec![visible.to_string()]);
    assert!(
        keys_of("select ssn from customers").is_empty(),
        "no key column returned"
    );
    assert!(
        keys_of("select id, tenant_id from customers where id = 3")
            .iter()
            .all(|k| k == "3"),
        "a's rows read by b's columns"
    );
    assert_eq!(
        keys_of("select tenant_id, id from customers where id = 6"),
        vec!["6".to_string()]
    );
    let copied = e
        .iter()
        .find(|r| r["kind"] == "outcome" && r["decision"] == decision_of(&e, copy)["id"])
        .unwrap();
    assert_eq!(copied["copy"], true);
    assert_eq!(copied["keys_captured"], false);
    assert_eq!(copied["rows"], 2);
    assert_eq!(copied["digest"], audit::sha256_hex(&forwarded).as_str());

    // Who saw customer `visible`: support-bot five times, the auditor once.
    let dir = log.to_str().unwrap();
    let who = ok(&portcullis(&[
        "audit",
        "search",
        dir,
        "--key",
        &format!("public.customers={visible}"),
    ]));
    let agents: Vec<&str> = who.lines().map(|l| l.split('\t').nth(2).unwrap()).collect();
    assert_eq!(visible, 3);
    assert_eq!(agents.iter().filter(|a| **a == AGENT).count(), 5, "{who}");
    assert_eq!(agents.iter().filter(|a| **a == AUDITOR).count(), 1, "{who}");
    // A customer no statement of support-bot returned: support-bot has no record of it.
    let hidden = returned[2]
        .1
        .iter()
        .find(|id| !returned[0].1.contains(id) && !returned[1].1.contains(id))
        .unwrap();
    let who = ok(&portcullis(&[
        "audit",
        "search",
        dir,
        "--key",
        &format!("public.customers={hidden}"),
        "--agent",
        AGENT,
    ]));
    assert!(who.trim().is_empty(), "{who}");
}

/// `audit replay` decides a recorded statement again from what the record names: the policy
/// version (from the version store) and the catalog snapshot (by hash), with no live database.
/// Records made before a policy reload and before a catalog refresh replay under their own
/// versions and match; a tampered snapshot is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_matches_across_a_policy_reload_and_a_catalog_refresh() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "replay-node");
    let log = work.path().join("log");
    let (mut env, set) = start_audited("replay-node", &key, &log, "");
    let bot = env.agent().await;
    let count = "select count(*) from customers";
    let first = bot.simple_query(count).await.unwrap();
    // A statement prepared before the reload and executed on both sides of it.
    let held = env.agent().await;
    let prepared_sql = "select name from customers where id = $1";
    let prepared = held.prepare(prepared_sql).await.unwrap();
    assert_eq!(held.query(&prepared, &[&3i32]).await.unwrap().len(), 1);
    bot.simple_query("drop table customers").await.unwrap_err();
    bot.simple_query("set search_path to public").await.unwrap();
    bot.simple_query("select id from customers where id = 3")
        .await
        .unwrap();

    // A new policy version: customer 3 is hidden from every agent.
    std::fs::write(
        set.path().join("extra.cedar"),
        "@id(\"hide-customer-one\")\nforbid (principal, action == Action::\"select\", resource is public::customers)\nwhen { resource.id == 3 };\n",
    )
    .unwrap();
    let activations = || env.proxy_log().matches(" activated (was ").count();
    let before = activations();
    Command::new("kill")
        .args(["-HUP", &env.proxy_pid().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while activations() == before {
        assert!(
            Instant::now() < deadline,
            "the new policy version did not activate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let bot = env.agent().await;
    let second = bot.simple_query(count).await.unwrap();
    assert_eq!(
        held.query(&prepared, &[&3i32]).await.unwrap().len(),
        0,
        "the prepared statement runs under the new version"
    );
    drop(held);
    assert_ne!(
        format!("{:?}", first.get(1)),
        format!("{:?}", second.get(1)),
        "the new version hides a row"
    );
    // A catalog refresh: a column added.
    env.direct()
        .await
        .batch_execute("alter table customers add column nickname text")
        .await
        .unwrap();
    refresh_catalog(&env);
    let bot = env.agent().await;
    bot.simple_query("select * from customers where id = 2")
        .await
        .unwrap();
    drop(bot);
    stop(&mut env, "INT");

    let e = entries(&log);
    let decisions: Vec<&Value> = e.iter().filter(|r| r["kind"] == "decision").collect();
    let version = |d: &Value| {
        d.pointer("/basis/policy_version")
            .or_else(|| d.get("policy_version"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let catalog = |d: &Value| {
        d.pointer("/basis/catalog")
            .or_else(|| d.get("catalog"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let counts: Vec<&&Value> = decisions
        .iter()
        .filter(|d| d["statement"] == count)
        .collect();
    assert_eq!(counts.len(), 2);
    assert_ne!(
        version(counts[0]),
        version(counts[1]),
        "two policy versions"
    );
    // Each execution of the prepared statement is an outcome of the decision it ran under:
    // the second, of a decision made again under the new version.
    let runs: Vec<&Value> = e
        .iter()
        .filter(|r| r["kind"] == "outcome")
        .filter(|r| {
            decisions
                .iter()
                .any(|d| d["id"] == r["decision"] && d["statement"] == prepared_sql)
        })
        .collect();
    assert_eq!(runs.len(), 2, "two executions of the prepared statement");
    let ran_under = |o: &Value| {
        let d = decisions.iter().find(|d| d["id"] == o["decision"]).unwrap();
        version(d)
    };
    assert_eq!(ran_under(runs[0]), version(counts[0]));
    assert_eq!(ran_under(runs[1]), version(counts[1]));
    assert_eq!(runs[1]["rows"], 0);
    let last = decision_of(&e, "select * from customers where id = 2");
    assert_ne!(catalog(counts[1]), catalog(last), "two catalog snapshots");
    assert_eq!(
        decision_of(&e, "select id from customers where id = 3")["search_path"],
        serde_json::json!(["public"])
    );
    let dir = log.to_str().unwrap();
    for d in &decisions {
        let id = d["id"].as_str().unwrap();
        let out = ok(&portcullis(&["audit", "replay", dir, id]));
        assert!(
            out.trim_end().ends_with("match"),
            "{}: {out}",
            d["statement"]
        );
    }
    // A snapshot that is not what its name says is refused.
    let snapshot = log
        .join("catalogs")
        .join(format!("{}.json", catalog(last).unwrap()));
    let text = std::fs::read_to_string(&snapshot).unwrap();
    std::fs::write(&snapshot, text.replace("\"customers\"", "\"clients\"")).unwrap();
    let out = portcullis(&["audit", "replay", dir, last["id"].as_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not hold the catalog snapshot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `redact_literals`: records hold statements with their literals withheld (and the digest of
/// the text as received); `parameters = "clear"`: Bind parameters are recorded as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_can_be_withheld_and_parameters_kept_in_clear() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "redact-node");
    let log = work.path().join("log");
    let (mut env, _set) = start_audited(
        "redact-node",
        &key,
        &log,
        "redact_literals = true\nparameters = \"clear\"\n",
    );
    let bot = env.agent().await;
    let secret = "select id from customers where email = 'secret-address@example.com'";
    bot.simple_query(secret).await.unwrap();
    let prepared = "select id from customers where email = $1";
    bot.query(prepared, &[&"asked-about@example.com"])
        .await
        .unwrap();
    bot.simple_query("selec nonsense").await.unwrap_err();
    bot.simple_query("select 'flush'").await.unwrap();
    drop(bot);
    stop(&mut env, "INT");

    let text = std::fs::read_to_string(log.join("entries")).unwrap();
    assert!(
        !text.contains("secret-address"),
        "a literal reached the log"
    );
    let e = entries(&log);
    let by_digest = |sql: &str| -> &Value {
        let digest: String = <sha2::Sha256 as sha2::Digest>::digest(sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        e.iter()
            .find(|r| r["statement_sha256"] == digest.as_str())
            .expect("a statement is found by its digest")
    };
    let record = by_digest(secret);
    assert_eq!(record["redacted"], true);
    assert!(
        record["statement"].as_str().unwrap().contains("'?'"),
        "{record}"
    );
    assert!(
        record["rewritten"].as_str().unwrap().contains("'?'"),
        "{record}"
    );
    let decision = by_digest(prepared);
    let outcome = e
        .iter()
        .find(|r| r["kind"] == "outcome" && r["decision"] == decision["id"])
        .unwrap();
    assert_eq!(outcome["parameters"][0], "asked-about@example.com");
    assert!(e.iter().any(|r| r["statement"]
        .as_str()
        .is_some_and(|s| s.starts_with("[withheld"))));
    verify_with_cli(&log, &key);
}

/// `fail_open = true`: on a full disk statements keep running, unrecorded, and the outage's
/// record says so and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_lets_statements_through_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "open-node");
    let mount = work.path().join("disk");
    std::fs::create_dir(&mount).unwrap();
    let _tmpfs = Tmpfs::mount(&mount, "1m");
    let log = mount.join("log");
    let (mut env, _set) = start_audited(
        "open-node",
        &key,
        &log,
        "checkpoint_ms = 100\nfail_open = true\n",
    );
    let bot = env.agent().await;
    bot.simple_query("select 1").await.unwrap();
    let filler = mount.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    // Every statement runs, on the same session, while nothing can be recorded.
    for i in 0..50 {
        let rows = bot
            .simple_query(&format!("select {i} as n, count(*) from customers"))
            .await
            .unwrap();
        assert!(!rows.is_empty());
    }
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let outage = loop {
        bot.simple_query("select 'after'").await.unwrap();
        if let Some(o) = entries(&log)
            .into_iter()
            .find(|r| r["kind"] == "audit_outage")
        {
            break o;
        }
        assert!(Instant::now() < deadline, "the log did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(outage["fail_open"], true);
    assert!(
        outage["unrecorded_statements"].as_u64().unwrap() > 0,
        "{outage}"
    );
    drop(bot);
    stop(&mut env, "INT");
    verify_with_cli(&log, &key);
}
