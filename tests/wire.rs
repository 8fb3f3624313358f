//! Wire-protocol behaviour through Portcullis with tokio-postgres as the agent: both query
//! protocols, transactions, binary results, COPY, refusals, authentication and cancel.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{future::join_all, pin_mut, StreamExt, TryStreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_return_what_postgres_returns() {
    let env = Env::start();
    let agent = env.agent().await;
    let direct = env.direct().await;

    let rows = agent
        .simple_query("select 1 as a; select 'two' as b")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);

    let sql = "select id, name, email from customers where tenant_id = $1 and id > $2 order by id";
    let via: Vec<(i32, String, String)> = agent
        .query(sql, &[&2i32, &5i32])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(i32, String, String)> = direct
        .query(sql, &[&2i32, &5i32])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(via, want);

    // A named prepared statement executed many times.
    let stmt = agent
        .prepare("select name from customers where id = $1")
        .await
        .unwrap();
    for id in 1..=30i32 {
        let name: String = agent.query_one(&stmt, &[&id]).await.unwrap().get(0);
        assert_eq!(name, format!("Customer {id}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_are_forwarded_intact() {
    let env = Env::start();
    let agent = env.agent().await;
    let direct = env.direct().await;
    // tokio-postgres asks for every result column in binary format.
    let (a, b) = (
        fetch_transfers(&agent).await,
        fetch_transfers(&direct).await,
    );
    assert_eq!(a.len(), 200);
    assert_eq!(a, b);
}

type TransferRow = (i64, String, std::time::SystemTime, bool, Vec<u8>);

async fn fetch_transfers(c: &tokio_postgres::Client) -> Vec<TransferRow> {
    let sql = "select id, amount::text, amount, created_at, metadata, approved, iban::bytea \
               from transfers order by id";
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(3), r.get(5), r.get(6)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_savepoints_behave_as_in_postgres() {
    let env = Env::start();
    let mut agent = env.agent().await;
    let direct = env.direct().await;

    let mut tx = agent.transaction().await.unwrap();
    tx.execute(
        "insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 3, 'kept', 'b', 'open')",
        &[],
    )
    .await
    .unwrap();
    let sp = tx.savepoint("sp").await.unwrap();
    sp.execute(
        "insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 3, 'undone', 'b', 'open')",
        &[],
    )
    .await
    .unwrap();
    let err = sp.execute("select 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    sp.rollback().await.unwrap();
    tx.commit().await.unwrap();

    let subjects: Vec<String> = direct
        .query(
            "select subject from tickets where subject in ('kept', 'undone')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(subjects, ["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_then_a_good_query_and_refusals_leave_the_session_usable() {
    let env = Env::start();
    let agent = env.agent().await;

    // Unparseable: refused by the gate, never forwarded.
    let e = agent
        .simple_query("SELEC name FROM customers")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    assert!(
        message(&e).contains("Portcullis could not parse"),
        "{}",
        message(&e)
    );
    assert_eq!(one(&agent, "select 41 + 1").await, "42");

    // The same in the extended protocol.
    let e = agent.prepare("SELEC $1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    assert_eq!(one(&agent, "select 'still here'").await, "still here");

    // An upstream error (not the gate's) passes through unchanged.
    let e = agent
        .simple_query("select * from no_such_table")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");

    // Identity and lexing changes are refused, in both protocols.
    for sql in [
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "RESET ROLE",
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'SQL_ASCII'",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT * FROM set_config('standard_conforming_strings', 'off', false)",
        "CREATE FUNCTION pg_temp.f() RETURNS text LANGUAGE sql \
         AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$",
        "COPY customers FROM STDIN",
        "COPY customers TO '/tmp/leak'",
    ] {
        let e = agent.simple_query(sql).await.unwrap_err();
        assert!(
            ["42501", "0A000"].contains(&sqlstate(&e).as_str()),
            "{sql}: {e}"
        );
        let e = agent.prepare(sql).await.unwrap_err();
        assert!(
            ["42501", "0A000"].contains(&sqlstate(&e).as_str()),
            "{sql}: {e}"
        );
    }
    assert_eq!(one(&agent, "show standard_conforming_strings").await, "on");
    assert_eq!(one(&agent, "show client_encoding").await, "UTF8");
    assert_eq!(
        one(&agent, "select current_user").await,
        "portcullis_upstream"
    );

    // Several statements in one message: one refusal refuses the whole message, none runs.
    let e = agent
        .simple_query("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'multi', 'b', 'open'); set role postgres")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(
        one(
            &agent,
            "select count(*) from tickets where subject = 'multi'"
        )
        .await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_a_transaction_aborts_it_like_any_error() {
    let env = Env::start();
    let agent = env.agent().await;
    agent.simple_query("begin").await.unwrap();
    agent
        .simple_query("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'in-tx', 'b', 'open')")
        .await
        .unwrap();
    let e = agent.simple_query("set role postgres").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = agent.simple_query("select 1").await.unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "25P02",
        "the transaction is aborted, as PostgreSQL would have it"
    );
    agent.simple_query("commit").await.unwrap();
    assert_eq!(
        one(
            &agent,
            "select count(*) from tickets where subject = 'in-tx'"
        )
        .await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_queries_keep_their_order_around_a_refusal() {
    let env = Env::start();
    let agent = env.agent().await;
    // tokio-postgres pipelines concurrent requests on one connection, one Sync each.
    let sqls = [
        "select 1::text",
        "select 2::text",
        "set role postgres",
        "select 4::text",
        "select (1/0)::text",
        "select 6::text",
    ];
    let futures = sqls.iter().map(|sql| agent.query(*sql, &[]));
    let results = join_all(futures).await;
    let summary: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(rows) => rows
                .first()
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default(),
            Err(e) => format!("E{}", sqlstate(e)),
        })
        .collect();
    assert_eq!(summary, ["1", "2", "E42501", "4", "E22012", "6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_streams_rows() {
    let env = Env::start();
    let agent = env.agent().await;
    let stream = agent
        .copy_out("COPY (select id, email from customers order by id) TO STDOUT WITH (FORMAT csv)")
        .await
        .unwrap();
    pin_mut!(stream);
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(data).unwrap();
    assert_eq!(text.lines().count(), 30);
    assert_eq!(text.lines().next(), Some("1,customer1@example.com"));
    // Whole table too.
    let rows: Vec<_> = agent
        .copy_out("COPY transfers TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let total: usize = rows
        .iter()
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .sum();
    assert_eq!(total, 200);
    assert_eq!(one(&agent, "select 'after copy'").await, "after copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_refuses_wrong_secrets_and_unknown_agents_alike() {
    let env = Env::start();
    // Plaintext-configured agent and verifier-configured agent both log in.
    connect(&env.agent_url()).await.unwrap();
    connect(&env.url(AUDITOR, AUDITOR_SECRET)).await.unwrap();

    let wrong = connect(&env.url(AGENT, "guess")).await.unwrap_err();
    let unknown = connect(&env.url("nobody", "guess")).await.unwrap_err();
    assert_eq!(sqlstate(&wrong), "28P01");
    assert_eq!(sqlstate(&unknown), "28P01");
    assert_eq!(
        message(&wrong),
        format!("password authentication failed for user \"{AGENT}\"")
    );
    assert_eq!(
        message(&unknown),
        "password authentication failed for user \"nobody\""
    );

    // The upstream credentials are not agent credentials.
    let e = connect(&env.url("portcullis_upstream", &env.upstream_password))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    let e = connect(&env.url("postgres", env.cluster.superuser_password()))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_outside_the_allow_list_are_refused() {
    let env = Env::start();
    let base = env.agent_url();
    for (extra, code) in [("options=-c%20role%3Dpostgres", "42704")] {
        let e = connect(&format!("{base}?{extra}")).await.unwrap_err();
        assert_eq!(sqlstate(&e), code, "{extra}: {e}");
    }
    let other_db = base.replace("/portcullis_demo", "/postgres");
    assert_eq!(sqlstate(&connect(&other_db).await.unwrap_err()), "3D000");
    // Before authentication, a wrong database name and the right one fail alike: an
    // unauthenticated client cannot confirm the upstream database's name.
    for db in ["/portcullis_demo", "/postgres"] {
        let url = env
            .url(AGENT, "wrong-secret")
            .replace("/portcullis_demo", db);
        let e = connect(&url).await.unwrap_err();
        assert_eq!(sqlstate(&e), "28P01", "{db}: {e}");
        assert_eq!(
            message(&e),
            format!("password authentication failed for user \"{AGENT}\""),
            "{db}"
        );
    }
    // Allowed parameters reach the upstream session.
    let c = connect(&format!("{base}?application_name=agent-x"))
        .await
        .unwrap();
    assert_eq!(one(&c, "show application_name").await, "agent-x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_reach_the_right_backend() {
    let env = Env::start();
    let agent = env.agent().await;
    let other = env.agent().await;
    let token = agent.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { agent.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The other session was not cancelled.
    assert_eq!(one(&other, "select 'unaffected'").await, "unaffected");
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    for m in c.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("").to_string();
        }
    }
    panic!("{sql} returned no row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lexing_setting_changed_behind_the_gates_back_ends_the_session() {
    let env = Env::start();
    // A function the gate cannot see into (created by the DBA, directly).
    env.direct()
        .await
        .batch_execute(
            "CREATE FUNCTION public.sneaky() RETURNS text LANGUAGE sql \
             AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$; \
             GRANT EXECUTE ON FUNCTION public.sneaky() TO portcullis_upstream",
        )
        .await
        .unwrap();
    let agent = env.agent().await;
    let result = agent.simple_query("select public.sneaky()").await;
    // Whether or not the row arrives first, the session must not survive to run another
    // statement with backslash escapes enabled.
    let _ = result;
    let next = agent.simple_query("select 'a\\', 'b'").await;
    assert!(next.is_err(), "the session must have ended: {next:?}");
    assert!(agent.is_closed());
    // Other sessions are unaffected.
    assert_eq!(
        one(&env.agent().await, "show standard_conforming_strings").await,
        "on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_executing_functions_are_refused() {
    let env = Env::start();
    let agent = env.agent().await;
    for sql in [
        "select query_to_xml('select set_config(''standard_conforming_strings'', ''off'', false)', true, true, '')",
        "select * from ts_stat('select to_tsvector(body) from tickets')",
    ] {
        let e = agent.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}");
    }
    assert_eq!(one(&agent, "show standard_conforming_strings").await, "on");
}

/// Time limits Portcullis enforces itself: a statement past `statement_timeout_ms` is
/// cancelled upstream even when the agent set `statement_timeout = 0`; an agent may lower the
/// limit; a session idle in a transaction past `idle_in_transaction_timeout_ms` is ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limits_can_be_lowered_but_not_raised() {
    let env = Env::start_with(Options {
        postgres_extra: "statement_timeout_ms = 1000\nidle_in_transaction_timeout_ms = 1500\n"
            .into(),
    });
    let agent = env.agent().await;
    assert_eq!(one(&agent, "show statement_timeout").await, "1s");
    assert_eq!(
        one(&agent, "show idle_in_transaction_session_timeout").await,
        "1500ms"
    );

    // Raised (even disabled) by SET: Portcullis cancels at its own limit all the same.
    agent
        .batch_execute("set statement_timeout = 0; set idle_in_transaction_session_timeout = 0")
        .await
        .unwrap();
    let started = Instant::now();
    let e = agent.simple_query("select pg_sleep(30)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert_eq!(message(&e), "canceling statement due to user request");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(one(&agent, "select 'still here'").await, "still here");

    // Lowered: PostgreSQL applies the lower limit itself.
    agent
        .batch_execute("set statement_timeout = 100")
        .await
        .unwrap();
    let e = agent.simple_query("select pg_sleep(5)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert_eq!(message(&e), "canceling statement due to statement timeout");

    // Idle in a transaction past the limit (which SET turned off upstream): the session ends.
    agent.batch_execute("begin; select 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(agent.simple_query("select 1").await.is_err());
    assert!(agent.is_closed());
    // Other sessions are unaffected, and the idle one's transaction was rolled back.
    let other = env.agent().await;
    assert_eq!(one(&other, "select 'fine'").await, "fine");
}

/// How a raw session ends: the SQLSTATE of the FATAL error before the close, read within
/// `within` (also what the session had to say first, for the failure message).
async fn fatal_then_close(raw: &mut common::raw::Raw, within: Duration) -> String {
    use postgres_protocol::message::backend::Message;
    let read = async {
        let mut seen = Vec::new();
        loop {
            match raw.next().await {
                Some(Message::ErrorResponse(body)) => {
                    let code = common::raw::code_of(body);
                    let closed = raw.next().await.is_none();
                    return if closed {
                        code
                    } else {
                        format!("{code} without a close")
                    };
                }
                Some(_) => seen.push("a message"),
                None => return format!("closed without an error after {seen:?}"),
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| "still open".into())
}

/// The first DataRow's first column of a raw session's next result, up to ReadyForQuery.
async fn first_value(raw: &mut common::raw::Raw) -> Option<String> {
    use postgres_protocol::message::backend::Message;
    let mut value = None;
    while let Some(m) = raw.next().await {
        match m {
            Message::DataRow(row) if value.is_none() => {
                let buf = row.buffer();
                let mut ranges = row.ranges();
                use fallible_iterator::FallibleIterator;
                if let Some(Some(r)) = ranges.next().unwrap() {
                    value = Some(String::from_utf8_lossy(&buf[r]).into_owned());
                }
            }
            Message::ReadyForQuery(_) => return value,
            _ => {}
        }
    }
    value
}

/// SIGTERM: the proxy stops accepting at once; an idle session is ended (57P01, as PostgreSQL
/// ends sessions on shutdown); a running statement completes and returns its rows, and an open
/// transaction may go on to commit, each session ending once at rest; a transaction still open
/// at the drain timeout is ended; the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_statements_and_transactions_finish() {
    use common::raw::{query, Raw};
    let mut env = Env::start_with(Options {
        postgres_extra: "drain_timeout_ms = 3000\n".into(),
    });
    let mut idle = Raw::login(&env).await;
    let mut busy = Raw::login(&env).await;
    let mut in_tx = Raw::login(&env).await;
    let mut stuck = Raw::login(&env).await;
    for tx in [&mut in_tx, &mut stuck] {
        tx.send(&query("begin; select 1")).await;
        assert_eq!(tx.until_ready().await, (vec![], true));
    }
    busy.send(&query("select 42 from pg_sleep(1.5)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &env.proxy_pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    assert_eq!(
        fatal_then_close(&mut idle, Duration::from_secs(2)).await,
        "57P01",
        "{}",
        env.proxy_log()
    );
    assert!(
        connect(&env.agent_url()).await.is_err(),
        "a new connection was accepted while shutting down"
    );
    // The open transaction goes on and commits; then its session ends.
    in_tx.send(&query("select 2")).await;
    assert_eq!(first_value(&mut in_tx).await.as_deref(), Some("2"));
    in_tx.send(&query("commit")).await;
    assert_eq!(in_tx.until_ready().await, (vec![], true));
    assert_eq!(
        fatal_then_close(&mut in_tx, Duration::from_secs(2)).await,
        "57P01"
    );
    // The running statement completes with its rows; then its session ends.
    assert_eq!(first_value(&mut busy).await.as_deref(), Some("42"));
    assert_eq!(
        fatal_then_close(&mut busy, Duration::from_secs(2)).await,
        "57P01"
    );
    // The transaction left open is ended at the drain timeout, not before.
    assert_eq!(
        fatal_then_close(&mut stuck, Duration::from_secs(5)).await,
        "57P01"
    );
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "the open transaction was ended after {waited:?}, before the drain timeout"
    );
    let exit = env.proxy_exit(Duration::from_secs(5));
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit {exit:?}\n{}",
        env.proxy_log()
    );
}

/// `postgres.max_connections` caps sessions (each holds an upstream connection) and an agent's
/// own `max_connections` caps its sessions: a client beyond either is refused at once with
/// 53300, never left waiting, and a place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_at_once_with_53300() {
    let env = Env::start_with(Options {
        postgres_extra: "max_connections = 3\n\n[[agents]]\nid = \"looper\"\nsecret = \"looper-secret\"\nmax_connections = 1\n".into(),
    });
    let looper_url = env.url("looper", "looper-secret");
    let refused = |url: String| async move {
        let started = Instant::now();
        let Err(e) = connect(&url).await else {
            panic!("a session beyond the cap was accepted");
        };
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(2), "refused after {waited:?}");
        (sqlstate(&e), message(&e))
    };

    let looper = connect(&looper_url).await.unwrap();
    assert_eq!(
        refused(looper_url.clone()).await,
        (
            "53300".into(),
            "too many connections for agent \"looper\"".into()
        )
    );
    let first = env.agent().await;
    let second = env.agent().await;
    assert_eq!(
        refused(env.agent_url()).await,
        ("53300".into(), "sorry, too many clients already".into())
    );
    // The sessions within the caps work; a place freed is taken again.
    assert_eq!(one(&looper, "select 'looping'").await, "looping");
    drop(second);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = connect(&env.agent_url()).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = again.expect("the freed place was never given out again");
    assert_eq!(one(&again, "select 'again'").await, "again");
    assert_eq!(one(&first, "select 'first'").await, "first");
}

/// A client that writes megabytes of pipelined queries before reading any result: PostgreSQL
/// takes them all (the results are small enough to wait in the client's socket), and so must
/// the session, reading on while results queue toward a client that is not reading yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_pipelined_queries_before_reading_do_not_stall() {
    use common::raw::{query, Raw};
    let env = Env::start();
    let padding = "x".repeat(500);
    let count = 20_000;
    let mut batch = bytes::BytesMut::new();
    for i in 0..count {
        batch.extend_from_slice(&query(&format!("select {i} /* {padding} */")));
    }
    assert!(batch.len() > 10 << 20, "{} bytes", batch.len());
    let run = |mut raw: Raw, batch: bytes::BytesMut| async move {
        let sent = tokio::time::timeout(Duration::from_secs(60), raw.send(&batch)).await;
        if sent.is_err() {
            return "stopped reading the pipelined queries".to_string();
        }
        for done in 0..count {
            match tokio::time::timeout(Duration::from_secs(60), raw.until_ready()).await {
                Ok((codes, true)) if codes.is_empty() => {}
                other => return format!("after {done} results: {other:?}"),
            }
        }
        "all results".to_string()
    };
    // Directly, as the baseline the proxy must match.
    let direct = Raw::login_direct(&env).await;
    assert_eq!(run(direct, batch.clone()).await, "all results");
    let through = Raw::login(&env).await;
    assert_eq!(run(through, batch).await, "all results");
}

/// `client_idle_timeout_ms`: a session idle outside a transaction past it is ended (57P05, as
/// PostgreSQL's idle_session_timeout ends it), freeing its upstream connection; a session that
/// keeps working, or sits in a transaction (the idle-in-transaction limit's business), is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_ended_after_the_client_idle_timeout() {
    use common::raw::{query, Raw};
    let env = Env::start_with(Options {
        postgres_extra: "client_idle_timeout_ms = 1000\n".into(),
    });
    let started = Instant::now();
    let mut idle = Raw::login(&env).await;
    let mut working = Raw::login(&env).await;
    let mut in_tx = Raw::login(&env).await;
    in_tx.send(&query("begin; select 1")).await;
    assert_eq!(in_tx.until_ready().await, (vec![], true));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        working.send(&query("select 1")).await;
        assert_eq!(working.until_ready().await, (vec![], true));
    }
    assert!(started.elapsed() >= Duration::from_millis(2000));
    assert_eq!(
        fatal_then_close(&mut idle, Duration::from_secs(1)).await,
        "57P05"
    );
    in_tx.send(&query("commit")).await;
    assert_eq!(in_tx.until_ready().await, (vec![], true));
    // Once they stop, they are idle sessions like any other.
    let stopped = Instant::now();
    for session in [&mut working, &mut in_tx] {
        assert_eq!(
            fatal_then_close(session, Duration::from_secs(3)).await,
            "57P05"
        );
    }
    assert!(stopped.elapsed() >= Duration::from_millis(900));
}
