//! Policy hot reload through the real binary: a broken edit is rejected and the previous version
//! stays active, a valid edit becomes the new version (and is stored), SIGHUP reloads at once,
//! and sessions keep working throughout.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn copy_finance(to: &Path) {
    copy_files("policies/examples/finance", to);
}

fn stored_versions(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store)
        .map(|it| {
            it.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.len() == 64)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}

fn start(set: &Path, store: &Path, interval_ms: u64) -> Env {
    Env::start_with(Options {
        postgres_extra: format!(
            "[policies]\ndir = {:?}\nstore = {:?}\nreload_interval_ms = {interval_ms}\n",
            set.display().to_string(),
            store.display().to_string()
        ),
    })
}

fn sighup(env: &Env) {
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(env.proxy_pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Hides closed tickets from every agent (appended to rows.cedar by the tests).
const NO_CLOSED_TICKETS: &str = "\n@id(\"no-closed-tickets\")\nforbid (principal, action == Action::\"select\", resource is public::tickets)\nwhen { resource.status == \"closed\" };\n";

/// What support-bot sees of tickets once [`NO_CLOSED_TICKETS`] is active, counted directly.
const OPEN_TICKETS: &str =
    "select count(*) from tickets where tenant_id = 1 and status <> 'closed'";

/// The single count `sql` returns.
async fn count_of(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn append(path: PathBuf, text: &str) {
    let old = std::fs::read_to_string(&path).unwrap();
    std::fs::write(path, old + text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_keeps_the_old_version_and_a_valid_one_replaces_it() {
    let set = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    copy_finance(set.path());
    let env = start(set.path(), store.path(), 200);
    let v1 = stored_versions(store.path());
    assert_eq!(v1.len(), 1, "the initial version is stored at start");
    assert!(env
        .proxy_log()
        .contains(&format!("policy version {} active", &v1[0][..12])));
    let session = env.agent().await;

    // A syntax error: rejected with its position; nothing new stored; sessions unaffected.
    append(
        set.path().join("rows.cedar"),
        "\npermit (principal, action, resource) when { resource.tenant_id === 1 };\n",
    );
    wait_until("the rejection is logged", || {
        env.proxy_log().contains("policy change rejected")
    });
    let log = env.proxy_log();
    assert!(
        log.contains("rows.cedar:") && log.contains(&v1[0][..12]),
        "{log}"
    );
    assert_eq!(stored_versions(store.path()), v1);
    let n: i64 = session
        .query_one("select count(*) from customers", &[])
        .await
        .unwrap()
        .get(0);
    // The policy is enforced: support-bot sees its tenant's 10 customers.
    assert_eq!(n, 10);
    let direct = env.direct().await;
    let count = |sql: &'static str| {
        let direct = &direct;
        async move {
            let n: i64 = direct.query_one(sql, &[]).await.unwrap().get(0);
            n
        }
    };
    let before: i64 = session
        .query_one("select count(*) from tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        before,
        count("select count(*) from tickets where tenant_id = 1").await
    );

    // Fixed (a valid change that hides closed tickets): the new version is stored and
    // activated.
    copy_finance(set.path());
    append(set.path().join("rows.cedar"), NO_CLOSED_TICKETS);
    wait_until("a second version is stored", || {
        stored_versions(store.path()).len() == 2
    });
    wait_until("activation is logged", || {
        env.proxy_log().contains("activated (was")
    });
    // The open session survived and uses the new version from its next statement.
    let n: i64 = session
        .query_one("select count(*) from tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n,
        count("select count(*) from tickets where tenant_id = 1 and status <> 'closed'").await
    );
    assert!(n < before);
    let _fresh = env.agent().await;
    let v2: Vec<String> = stored_versions(store.path())
        .into_iter()
        .filter(|v| !v1.contains(v))
        .collect();
    wait_until("the new session reports the new version", || {
        env.proxy_log()
            .contains(&format!("session uses policy version {}", &v2[0][..12]))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_at_once() {
    let set = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    copy_finance(set.path());
    // Polling every 10 minutes: only SIGHUP can explain a quick reload.
    let env = start(set.path(), store.path(), 600_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    append(set.path().join("delegation.cedar"), "\n// edited\n");
    sighup(&env);
    wait_until("SIGHUP stores the new version", || {
        stored_versions(store.path()).len() == 2
    });
    assert!(env.proxy_log().contains("SIGHUP: reloading policies"));
    let c = env.agent().await;
    c.simple_query("select 1").await.unwrap();
}

/// A protocol-level prepared statement made before a reload runs under the new version: it is
/// prepared again upstream at its next use (a revocation reaches it), or refused if the new
/// version refuses it; the session stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_a_reload() {
    let set = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    copy_finance(set.path());
    let env = start(set.path(), store.path(), 200);
    let session = env.agent().await;
    let direct = env.direct().await;
    let tickets = session
        .prepare("select count(*) from tickets where tenant_id = $1")
        .await
        .unwrap();
    let names = session
        .prepare("select name from customers order by id")
        .await
        .unwrap();
    let count = |s| {
        let session = &session;
        async move {
            let n: i64 = session.query_one(s, &[&1i32]).await.unwrap().get(0);
            n
        }
    };
    let all = count_of(&direct, "select count(*) from tickets where tenant_id = 1").await;
    assert_eq!(count(&tickets).await, all);
    assert_eq!(session.query(&names, &[]).await.unwrap().len(), 10);

    append(
        set.path().join("rows.cedar"),
        &format!(
            "{NO_CLOSED_TICKETS}@id(\"no-customer-columns\")\nforbid (principal, action == Action::\"read_column\", resource is public::customers);\n",
        ),
    );
    wait_until("activation is logged", || {
        env.proxy_log().contains("activated (was")
    });
    let open = count_of(&direct, OPEN_TICKETS).await;
    assert!(open < all);
    // The same statement object, never prepared again by the client.
    assert_eq!(count(&tickets).await, open, "the revocation reaches it");
    let e = session.query(&names, &[]).await.unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "42501", "{db}");
    assert!(db.message().contains("public::customers"), "{db}");
    // Refused again on every use, and the session goes on.
    assert!(session.query(&names, &[]).await.is_err());
    assert_eq!(count(&tickets).await, open);
    let n: i64 = session
        .query_one("select count(*) from tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, open);
}

/// SIGHUP also re-reads the upstream catalog: a column added since start becomes readable
/// (under the policy), and a prepared statement made before is rewritten against the new
/// catalog at its next use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refreshes_the_catalog() {
    let set = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    copy_finance(set.path());
    let env = start(set.path(), store.path(), 600_000);
    let session = env.agent().await;
    let star = session.prepare("select * from customers").await.unwrap();
    let direct = env.direct().await;
    direct
        .batch_execute("alter table customers add column nickname text; update customers set nickname = 'nick' || id")
        .await
        .unwrap();
    // Not yet known: the fence has no such column.
    let e = session
        .simple_query("select nickname from customers")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42703", "{}", message(&e));
    sighup(&env);
    wait_until("the catalog refresh is logged", || {
        env.proxy_log().contains("upstream catalog refreshed")
    });
    let rows = session
        .query("select nickname from customers order by id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 10, "still only tenant 1's rows");
    assert_eq!(rows[0].get::<_, String>(0), "nick3");
    // The statement prepared before the change would now return another column: it fails as
    // PostgreSQL fails a cached plan whose result type changed, and preparing again works.
    let e = session.query(&star, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{}", message(&e));
    assert!(message(&e).contains("cached plan must not change result type"));
    let star = session.prepare("select * from customers").await.unwrap();
    assert_eq!(star.columns().len(), 8);
    assert_eq!(session.query(&star, &[]).await.unwrap().len(), 10);
}

/// The review's attack on re-preparing: after a revocation, a batch whose first message fails
/// makes the backend skip the proxy's hidden re-prepare of statement "s", and a second batch,
/// pipelined behind it before any reply, binds "s" again. The old rewrite must never run: every
/// upstream Parse has a fresh name, so the skipped one leaves "s" pointing at nothing (an
/// error), and the next use prepares it again under the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_re_prepare_never_runs_the_old_rewrite() {
    use bytes::BytesMut;
    use postgres_protocol::message::{backend, frontend};
    use postgres_protocol::IsNull;

    let set = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    copy_finance(set.path());
    let env = start(set.path(), store.path(), 200);
    let mut raw = common::raw::Raw::login(&env).await;
    let no_params = |b: &mut BytesMut| {
        frontend::bind(
            "",
            "s",
            std::iter::empty::<i16>(),
            std::iter::empty::<i32>(),
            |_: i32, _: &mut BytesMut| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(IsNull::No)
            },
            std::iter::empty::<i16>(),
            b,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, b).unwrap();
    };
    // Counts the DataRows' first values and the errors until ReadyForQuery.
    async fn results(raw: &mut common::raw::Raw) -> (Vec<String>, Vec<String>) {
        let (mut values, mut codes) = (Vec::new(), Vec::new());
        while let Some(m) = raw.next().await {
            match m {
                backend::Message::DataRow(row) => {
                    use fallible_iterator::FallibleIterator;
                    let range = row.ranges().next().unwrap().unwrap().unwrap();
                    values.push(String::from_utf8_lossy(&row.buffer()[range]).into_owned());
                }
                backend::Message::ErrorResponse(body) => codes.push(common::raw::code_of(body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        (values, codes)
    }

    let mut b = BytesMut::new();
    frontend::parse(
        "s",
        "select count(*) from tickets",
        std::iter::empty(),
        &mut b,
    )
    .unwrap();
    no_params(&mut b);
    frontend::sync(&mut b);
    raw.send(&b).await;
    let (before, codes) = results(&mut raw).await;
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(before, ["40"], "tenant 1's tickets");

    // Revoke: tenant 1's tickets are all closed, and closed tickets become hidden.
    append(set.path().join("rows.cedar"), NO_CLOSED_TICKETS);
    wait_until("activation is logged", || {
        env.proxy_log().contains("activated (was")
    });

    // Batch 1 fails first (division by zero), so its hidden re-prepare of "s" is skipped;
    // batch 2 binds "s" again, sent before any reply.
    let mut b = BytesMut::new();
    frontend::parse("e", "select 1/0", std::iter::empty(), &mut b).unwrap();
    frontend::bind(
        "",
        "e",
        std::iter::empty::<i16>(),
        std::iter::empty::<i32>(),
        |_: i32, _: &mut BytesMut| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(IsNull::No),
        std::iter::empty::<i16>(),
        &mut b,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut b).unwrap();
    no_params(&mut b);
    frontend::sync(&mut b);
    no_params(&mut b);
    frontend::sync(&mut b);
    raw.send(&b).await;
    let (first, codes) = results(&mut raw).await;
    assert!(
        first.is_empty() && codes == ["22012"],
        "{first:?} {codes:?}"
    );
    let (second, _) = results(&mut raw).await;
    assert!(
        !second.contains(&"40".to_string()),
        "the old rewrite ran after the revocation: {second:?}"
    );
    // Its next use prepares it again under the new version.
    let mut b = BytesMut::new();
    no_params(&mut b);
    frontend::sync(&mut b);
    raw.send(&b).await;
    let (after, codes) = results(&mut raw).await;
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(after, ["0"]);
}

/// Drivers prepare the same statement for every execution (tokio-postgres: a new named
/// statement per `query`, closed after; `query_typed`: the unnamed one). Through Portcullis the
/// upstream statement prepared the first time serves the next ones (counted in /metrics), with
/// the right rows; declared parameter types keep statements apart; and after a policy reload the
/// statement prepared under the old version is not used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_parses_reuse_the_upstream_statement_until_the_policy_changes() {
    use tokio_postgres::types::Type;
    let set = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    copy_finance(set.path());
    let admin = free_port();
    let env = Env::start_with(Options {
        postgres_extra: format!(
            "[policies]\ndir = {:?}\nstore = {:?}\nreload_interval_ms = 200\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            set.path().display().to_string(),
            store.path().display().to_string()
        ),
    });
    let reused = || {
        metric(
            &http_get(admin, "/metrics").1,
            "portcullis_cache_lookups_total{cache=\"upstream_statement\",result=\"hit\"}",
        )
        .unwrap_or(0.0)
    };
    let session = env.agent().await;
    let direct = env.direct().await;
    let sql = "select count(*) from tickets where tenant_id = $1";
    let all = count_of(&direct, "select count(*) from tickets where tenant_id = 1").await;
    for _ in 0..10 {
        let n: i64 = session.query_one(sql, &[&1i32]).await.unwrap().get(0);
        assert_eq!(n, all);
    }
    for _ in 0..5 {
        let n: i64 = session
            .query_typed_one(sql, &[(&1i32, Type::INT4)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, all);
        // The same text with another declared type is another upstream statement (an int4
        // statement would refuse the 8-byte value).
        let n: i64 = session
            .query_typed_one(sql, &[(&1i64, Type::INT8)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, all);
    }
    let before = reused();
    assert!(before >= 15.0, "reused {before} times");

    append(set.path().join("rows.cedar"), NO_CLOSED_TICKETS);
    wait_until("activation is logged", || {
        env.proxy_log().contains("activated (was")
    });
    let open = count_of(&direct, OPEN_TICKETS).await;
    assert!(open < all);
    let n: i64 = session.query_one(sql, &[&1i32]).await.unwrap().get(0);
    assert_eq!(
        n, open,
        "the statement prepared before the reload is not reused"
    );
    let n: i64 = session
        .query_typed_one(sql, &[(&1i32, Type::INT4)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, open);
    // Under the new version, the new statement is reused in turn.
    let n: i64 = session.query_one(sql, &[&1i32]).await.unwrap().get(0);
    assert_eq!(n, open);
    assert!(reused() > before);
}
