//! The adversarial suite, one test per attack family, through the real binary enforcing the
//! finance policy set in front of a real PostgreSQL. The agent is support-bot (tenant 1, SSNs
//! redacted, IBANs last four, transfers over 10,000 hidden). Each attack states its specific
//! safe outcome: refused with a given SQLSTATE, or answered with exactly the allowed rows.
//!
//! Families: lexing and comments; multi-statement; name resolution and search_path; CTE,
//! subquery and set-operation shapes; functions and code execution; leaky predicates and error
//! oracles; catalogs and statistics; write paths; COPY; cursors and prepared statements across
//! SQL and protocol; session and transaction state; protocol-level tricks.

mod common;

use common::*;
use tokio_postgres::SimpleQueryMessage;

/// What must happen to an attack.
enum Safe {
    /// Refused with this SQLSTATE.
    Refused(&'static str),
    /// Answered with exactly this first column, row by row (NULL as "NULL").
    Rows(&'static [&'static str]),
}
use Safe::*;

async fn first_column(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect())
}

/// Runs every attack and checks its outcome; then checks the session still works.
async fn attack(client: &tokio_postgres::Client, family: &str, cases: &[(&str, Safe)]) {
    for (sql, safe) in cases {
        let got = first_column(client, sql).await;
        match (safe, got) {
            (Refused(code), Err(e)) => {
                assert_eq!(sqlstate(&e), *code, "[{family}] {sql}: {}", message(&e))
            }
            (Refused(code), Ok(rows)) => {
                panic!("[{family}] {sql}: expected refusal {code}, got rows {rows:?}")
            }
            (Rows(want), Ok(rows)) => assert_eq!(rows, *want, "[{family}] {sql}"),
            (Rows(want), Err(e)) => {
                panic!("[{family}] {sql}: expected {want:?}, got {}", message(&e))
            }
        }
    }
    assert_eq!(
        first_column(client, "select 'still here'").await.unwrap(),
        ["still here"],
        "[{family}] the session survives"
    );
}

/// Tenant 1's customers: 10 of 30.
const TEN: &[&str] = &["10"];
const ZERO: &[&str] = &["0"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_family_gets_its_safe_outcome() {
    let s = Env::start_enforcing();
    let bot = s.env.agent().await;
    // A row-level security policy whose expression names a secret (RLS is not enabled: it
    // only has to be listed in pg_policies).
    s.env
        .direct()
        .await
        .batch_execute("create policy secret_rule on customers using (ssn <> '123456789')")
        .await
        .unwrap();

    attack(
        &bot,
        "lexing and comments",
        &[
            (
                "select count(*) from customers -- where tenant_id = 2",
                Rows(TEN),
            ),
            (
                "select count(*) from customers /* ; select * from pg_authid */",
                Rows(TEN),
            ),
            (
                "select count(*) from customers /* nested /* ; drop table customers */ */",
                Rows(TEN),
            ),
            (
                "select $$; select ssn from public.customers; $$ is not null",
                Rows(&["t"]),
            ),
            ("select count(*) from \"customers\"", Rows(TEN)),
            ("select count(*) from \"public\".\"customers\"", Rows(TEN)),
            ("select count(*) from PUBLIC.CUSTOMERS", Rows(TEN)),
            // A differently-cased quoted name is another relation: unknown, refused.
            ("select count(*) from \"Customers\"", Refused("42501")),
            ("select count(*) from U&\"customers\"", Refused("0A000")),
            ("select U&\"customers\".id from customers", Refused("0A000")),
            (
                "select U&\"ssn\" from customers where id = 3",
                Refused("0A000"),
            ),
            ("select e'\\x27; select 1' ", Rows(&["'; select 1"])),
            ("select ssn from customers where id = 3", Rows(&["***"])),
        ],
    )
    .await;

    attack(
        &bot,
        "multi-statement",
        &[
            ("select 1; drop table customers", Refused("42501")),
            ("select 1; select * from pg_stats", Refused("42501")),
            (
                "select count(*) from customers; select count(*) from tickets where tenant_id = 2",
                Rows(&["10", "0"]),
            ),
        ],
    )
    .await;
    // The extended protocol takes one statement.
    let e = bot.prepare("select 1; select 2").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");

    attack(
        &bot,
        "name resolution and search_path",
        &[
            ("set search_path = pg_temp, public", Refused("42501")),
            ("set local search_path to evil", Refused("42501")),
            (
                "select set_config('search_path', 'evil', false)",
                Refused("42501"),
            ),
            ("create temp table customers (id int)", Refused("42501")),
            ("select count(*) from pg_temp.customers", Refused("42501")),
            (
                "select count(*) from pg_catalog.customers",
                Refused("42501"),
            ),
            (
                "select count(*) from oracle_schema.customers",
                Refused("42501"),
            ),
            ("select count(*) from only customers", Rows(TEN)),
            // Three-part names with the current database, as PostgreSQL reads them.
            ("select count(*) from portcullis_demo.public.customers", Rows(TEN)),
            ("select portcullis_demo.public.customers.tenant_id from portcullis_demo.public.customers where id = 3", Rows(&["1"])),
            ("select count(*) from other_db.public.customers", Refused("42501")),
            ("select count(*) from only (customers)", Rows(TEN)),
            (
                "select count(*) from only (public.customers) c where c.tenant_id <> 1",
                Rows(ZERO),
            ),
            ("show search_path", Rows(&["\"$user\", public"])),
        ],
    )
    .await;

    attack(
        &bot,
        "CTE, subquery and set-operation shapes",
        &[
            ("with c as (select * from customers) select count(*) from c", Rows(TEN)),
            ("with customers as (select * from public.customers) select count(*) from customers", Rows(TEN)),
            ("with customers as (select * from customers) select count(*) from customers", Refused("42501")),
            ("select count(*) from (select * from customers union all select * from customers) x", Rows(&["20"])),
            ("select count(*) from customers where id in (select customer_id from tickets)", Rows(&["10"])),
            ("select (select count(*) from customers c2 where c2.tenant_id <> c.tenant_id) from customers c limit 1", Rows(ZERO)),
            ("select count(*) from customers c, lateral (select * from transfers t where t.customer_id = c.id) l where l.tenant_id <> 1", Rows(ZERO)),
            ("with recursive r(n) as (select min(id) from customers union all select n + 1 from r where n < 40) select count(*) from r join customers c on c.id = r.n", Rows(TEN)),
            ("select count(*) from customers c full join tickets t on t.customer_id = c.id", Rows(&["40"])),
            ("select count(*) from (values (1)) v(x) left join customers on tenant_id = 2", Rows(&["1"])),
            ("table customers", Refused("42601")),
            // Sampled inside the fence: a full sample is still only the agent's rows.
            ("select count(*) from customers tablesample system (100)", Rows(TEN)),
            ("select count(*) from customers tablesample bernoulli (100) repeatable (1)", Rows(TEN)),
            ("with c as (select * from customers) select count(*) from c tablesample system (100)", Refused("0A000")),
            ("select count(*) from pg_catalog.pg_class tablesample system (100)", Refused("0A000")),
        ],
    )
    .await;

    attack(
        &bot,
        "functions and code execution",
        &[
            (
                "select query_to_xml('select * from public.customers', true, true, '')",
                Refused("42501"),
            ),
            (
                "select * from table_to_xml('public.customers'::regclass, true, true, '')",
                Refused("42501"),
            ),
            ("select pg_read_file('/etc/passwd')", Refused("42501")),
            // Built-ins are allow-listed by what they are: volatile ones that read server
            // state are outside it, and stable ones that show where the upstream is are denied.
            ("select currtid2('customers', '(0,1)'::tid)", Refused("42501")),
            ("select txid_current()", Refused("42501")),
            ("select pg_current_wal_lsn()", Refused("42501")),
            ("select pg_current_snapshot()", Refused("42501")),
            ("select inet_server_addr()", Refused("42501")),
            ("select current_setting('port')", Refused("42501")),
            ("select current_setting(name) from (select 'port' as name) s", Refused("42501")),
            ("show port", Refused("42501")),
            ("show all", Refused("42501")),
            ("select current_setting('TimeZone') = current_setting('timezone')", Rows(&["t"])),
            ("select setting from pg_settings where name = 'port'", Refused("42501")),
            ("select (random() >= 0 and now() <= clock_timestamp() and gen_random_uuid() is not null)::text", Rows(&["true"])),
            ("select lo_import('/etc/passwd')", Refused("42501")),
            (
                "select dblink('dbname=portcullis_demo', 'select ssn from customers')",
                Refused("42501"),
            ),
            ("select pg_catalog.pg_ls_dir('.')", Refused("42501")),
            ("select public.anything()", Refused("42501")),
            ("select 1 operator(public.=) 1", Refused("42501")),
            ("do $$ begin perform 1; end $$", Refused("42601")),
            ("select pg_relation_size('customers')", Refused("42501")),
            ("select nextval('tickets_id_seq')", Refused("42501")),
            (
                "select lower(name) from customers where id = 3",
                Rows(&["customer 3"]),
            ),
        ],
    )
    .await;

    attack(
        &bot,
        "leaky predicates and error oracles",
        &[
            // Each would divide by zero on a hidden row (tenant 2) if it ever saw one.
            ("select count(*) from customers where 1 / (tenant_id - 2) = -1", Rows(TEN)),
            ("select count(*) from customers where case when tenant_id = 2 then 1 / (tenant_id - 2) else 0 end = 0", Rows(TEN)),
            ("select count(*) from customers c join tickets t on 1 / (t.tenant_id - 2) = -1 and t.customer_id = c.id", Rows(&["40"])),
            ("select count(*) from transfers where 1 / (case when amount > 10000 then 0 else 1 end) = 1", Rows(&["42"])),
            // A masked value in an error or a sort reveals only the mask.
            ("select count(*) from customers where ssn::int > 0", Refused("22P02")),
            ("select count(distinct ssn) from customers", Rows(&["1"])),
            ("select min(ssn) from customers", Rows(&["***"])),
            ("select count(*) from customers where ssn like '1%'", Rows(ZERO)),
            ("select count(*) from transfers where iban like 'DE%'", Rows(ZERO)),
        ],
    )
    .await;

    // (42: tenant 1's transfers of at most 10,000, as PostgreSQL counts them directly.)
    let direct = s.env.direct().await;
    assert_eq!(
        first_column(
            &direct,
            "select count(*) from transfers where tenant_id = 1 and amount <= 10000"
        )
        .await
        .unwrap(),
        ["42"]
    );

    attack(
        &bot,
        "catalogs and statistics",
        &[
            ("select * from pg_stats", Refused("42501")),
            ("select * from pg_statistic", Refused("42501")),
            ("select * from pg_stat_user_tables", Refused("42501")),
            // Readable for names, with policy expressions and usage counters nulled.
            ("select coalesce(idx_scan::text, 'hidden') || coalesce(idx_tup_read::text, 'hidden') from pg_stat_user_indexes where indexrelname = 'customers_pkey'", Rows(&["hiddenhidden"])),
            ("select policyname from pg_policies", Rows(&["secret_rule"])),
            ("select count(*) from pg_policies where qual is not null or with_check is not null", Rows(ZERO)),
            ("select * from pg_stat_activity", Refused("42501")),
            ("select * from pg_authid", Refused("42501")),
            ("select prosrc from pg_proc", Refused("42501")),
            ("select definition from pg_views", Refused("42501")),
            (
                "select reltuples from pg_class where relname = 'customers'",
                Rows(&["NULL"]),
            ),
            (
                "select count(*) from pg_class where relname = 'customers'",
                Rows(&["1"]),
            ),
        ],
    )
    .await;

    attack(
        &bot,
        "write paths",
        &[
            ("update tickets set subject = 'x' where tenant_id = 2 returning id", Rows(&[])),
            ("delete from tickets where tenant_id = 2 returning id", Rows(&[])),
            ("insert into tickets (tenant_id, customer_id, subject, body, status, priority) values (2, 4, 's', 'b', 'open', 2)", Refused("42501")),
            ("update tickets set tenant_id = 2 where id = (select min(id) from tickets)", Refused("42501")),
            ("update customers set ssn = 'x'", Refused("42501")),
            // A masked column named in RETURNING comes back masked; computing on it is refused.
            ("update customers set tier = tier where id = 3 returning ssn", Rows(&["***"])),
            ("update customers set tier = tier where id = 3 returning ssn || ''", Refused("42501")),
            // A database-qualified whole row of an INSERT's target would carry every column.
            ("insert into tickets (tenant_id, customer_id, subject, body, status, priority) values (1, 3, 's', 'b', 'open', 2) returning to_jsonb(portcullis_demo.public.tickets.*)", Refused("42501")),
            ("insert into tickets (tenant_id, customer_id, subject, body, status, priority) values (1, 3, 's', 'b', 'open', 2) returning portcullis_demo.public.tickets.subject", Rows(&["s"])),
            // MERGE INSERT values are computed twice (check, insert): nothing that could differ.
            ("merge into tickets t using (select 1 as k) s on t.id = -1 when not matched then insert (tenant_id, customer_id, subject, body, status, priority) values (length(set_config('x.n', current_setting('x.n', true) || 'x', false)), 3, 's', 'b', 'open', 2)", Refused("0A000")),
            // A writing WITH query in front of a query is checked as that write alone.
            ("with d as (delete from tickets where tenant_id = 2 returning *) select count(*) from d", Rows(ZERO)),
            ("with u as (update tickets set priority = 1 returning id) select count(*) from u", Refused("42501")),
            ("with u as (update customers set ssn = 'x' returning id) select 1", Refused("42501")),
            ("with a as (delete from tickets where false returning id), b as (delete from tickets where id in (select id from a)) select 1", Refused("0A000")),
            // A read-only WITH in front of a write reads through the fence like any subquery.
            ("with c as (select id from customers where tenant_id = 2) update tickets set subject = 'x' where customer_id in (select id from c) returning id", Rows(&[])),
            ("with c as (select id, tenant_id from tickets) delete from tickets t using c where c.id = t.id and c.tenant_id = 2 returning t.id", Rows(&[])),
            ("with c as (select tenant_id, id from customers where tenant_id = 2) insert into tickets (tenant_id, customer_id, subject, body, status, priority) select tenant_id, id, 's', 'b', 'open', 2 from c", Rows(&[])),
            ("with c as (select 2 as t) insert into tickets (tenant_id, customer_id, subject, body, status, priority) select t, 4, 's', 'b', 'open', 2 from c", Refused("42501")),
            ("with d as (delete from tickets returning id) delete from tickets where id in (select id from d)", Refused("0A000")),
            ("insert into tickets (tenant_id, customer_id, subject, body, status, priority) select tenant_id, id, ssn, ssn, 'open', 2 from customers where tenant_id = 2", Rows(&[])),
            // MERGE: a matched row may not become priority 1 (aborts); hidden ones never match.
            ("merge into tickets t using customers c on c.id = t.customer_id when matched then update set priority = 1", Refused("42501")),
            ("merge into tickets t using (select 1 as id) s on t.id = s.id when matched then update set subject = 'x'", Rows(&[])),
            ("merge into tickets t using generate_series(1, 500) s(id) on t.id = s.id and 1 / (t.tenant_id - 2) > -100 when matched and t.priority = 0 then do nothing", Rows(&[])),
            ("insert into tickets (tenant_id, customer_id, subject, body, status, priority) values (1, 3, 'x', 'y', 'open', 2) on conflict do nothing", Rows(&[])),
            // Ticket 1 is tenant 2's: an upsert conflicting with it is refused, not applied.
            ("insert into tickets (id, tenant_id, customer_id, subject, body, status, priority) values (1, 1, 3, 'x', 'y', 'open', 2) on conflict (id) do update set subject = 'taken' returning subject", Refused("42501")),
            ("insert into tickets (id, tenant_id, customer_id, subject, body, status, priority) values (1, 1, 3, 'x', 'y', 'open', 2) on conflict (id) do nothing returning id", Rows(&[])),
            ("update pg_catalog.pg_class set relname = 'x'", Refused("42501")),
            // The target as a whole row carried the fence's row address (tableoid, ctid).
            ("update customers c set name = c::text where id = 3 returning name", Refused("42501")),
            ("update customers set name = customers::text where id = 3", Refused("42501")),
            ("update customers set name = row_to_json(customers.*)::text where id = 3", Refused("42501")),
            ("update customers c set name = (select to_jsonb(c))::text where id = 3", Refused("42501")),
            ("update customers set name = public.customers::text where id = 3", Refused("42501")),
            ("delete from tickets t where t::text like '%portcullis%'", Refused("42501")),
            ("update customers c set name = c.name where id = 3 returning name", Rows(&["Customer 3"])),
            ("truncate tickets", Refused("42501")),
            ("select count(*) from tickets where tenant_id <> 1", Rows(ZERO)),
        ],
    )
    .await;

    attack(
        &bot,
        "COPY",
        &[
            ("copy customers from stdin", Refused("0A000")),
            ("copy customers to '/tmp/portcullis-leak'", Refused("42501")),
            ("copy customers to program 'cat'", Refused("42501")),
            (
                "copy (select * from customers) to '/tmp/portcullis-leak'",
                Refused("42501"),
            ),
        ],
    )
    .await;
    // COPY … TO STDOUT is rewritten to the filtered, masked rows.
    let copied = {
        use futures_util::StreamExt;
        let stream = bot
            .copy_out("copy customers (id, tenant_id, ssn) to stdout")
            .await
            .unwrap();
        let chunks: Vec<_> = stream.collect().await;
        let text: String = chunks
            .into_iter()
            .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
            .collect();
        text
    };
    let lines: Vec<&str> = copied.lines().collect();
    assert_eq!(lines.len(), 10, "{copied}");
    assert!(
        lines
            .iter()
            .all(|l| l.split('\t').nth(1) == Some("1") && l.ends_with("\t***")),
        "{copied}"
    );

    attack(
        &bot,
        "cursors and prepared statements across SQL and protocol",
        &[
            // A cursor's query is rewritten at DECLARE: FETCH yields the filtered, masked rows.
            ("begin", Rows(&[])),
            ("declare c cursor for select ssn, tenant_id from customers where tenant_id <> 1 or ssn <> '***'", Rows(&[])),
            ("fetch all from c", Rows(&[])),
            ("close c", Rows(&[])),
            ("declare c2 no scroll cursor without hold for select tenant_id from customers", Rows(&[])),
            ("fetch forward 3 from c2", Rows(&["1", "1", "1"])),
            ("commit", Rows(&[])),
            ("declare d cursor with hold for select * from pg_stats", Refused("42501")),
            ("declare d cursor with hold for delete from tickets returning *", Refused("0A000")),
            (
                "prepare p as select ssn from public.customers",
                Refused("42501"),
            ),
            ("execute p", Refused("42501")),
            ("deallocate all", Rows(&[])),
        ],
    )
    .await;
    // A protocol-level statement is rewritten at Parse: its Describe already shows the
    // filtered view's columns, and it runs filtered, whatever its name.
    let stmt = bot
        .prepare("select count(*), max(tenant_id) from customers")
        .await
        .unwrap();
    let row = bot.query_one(&stmt, &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1)), (10, 1));

    attack(
        &bot,
        "session and transaction state",
        &[
            ("set role postgres", Refused("42501")),
            ("set session authorization postgres", Refused("42501")),
            ("reset session authorization", Refused("42501")),
            ("set standard_conforming_strings = off", Refused("42501")),
            ("set client_encoding = 'SQL_ASCII'", Refused("42501")),
            ("set portcullis.agent = 'auditor'", Refused("42501")),
            // set_config is checked as SET is: Django and asyncpg call it at connect.
            (
                "select set_config('TimeZone', 'UTC', false)",
                Rows(&["UTC"]),
            ),
            ("select set_config('jit', 'off', false)", Rows(&["off"])),
            (
                "select set_config('role', 'postgres', false)",
                Refused("42501"),
            ),
            // search_path may be set to what it is (LangChain sets it to its schema), and to
            // nothing else.
            (
                "select set_config('search_path', 'public, evil', false)",
                Refused("42501"),
            ),
            (
                "select set_config('search_path', 'public', false)",
                Rows(&["public"]),
            ),
            ("set search_path to 'public'", Rows(&[])),
            ("set search_path = pg_catalog, public", Rows(&[])),
            ("set search_path to public, pg_temp", Refused("42501")),
            ("set search_path to '$user', public", Refused("42501")),
            ("select count(*) from customers", Rows(TEN)),
            (
                "select set_config('standard_conforming_strings', 'off', false)",
                Refused("42501"),
            ),
            (
                "select set_config(name, 'x', false) from (select 'role' as name) s",
                Refused("42501"),
            ),
            // SQL's names for the session's role report the agent, not the upstream login.
            ("select current_user", Rows(&["support-bot"])),
            ("select session_user", Rows(&["support-bot"])),
            ("select user", Rows(&["support-bot"])),
            ("select current_role", Rows(&["support-bot"])),
            ("select pg_catalog.getpgusername()", Rows(&["support-bot"])),
            ("select \"current_user\"()", Rows(&["support-bot"])),
            (
                "select count(*) from customers where current_user = 'support-bot'",
                Rows(TEN),
            ),
            ("begin", Rows(&[])),
            ("savepoint s", Rows(&[])),
            ("select count(*) from customers", Rows(TEN)),
            ("rollback to savepoint s", Rows(&[])),
            ("set local enable_seqscan = off", Rows(&[])),
            ("select count(*) from customers where id = 4", Rows(ZERO)),
            ("commit", Rows(&[])),
            ("discard all", Rows(&[])),
            ("select count(*) from customers", Rows(TEN)),
        ],
    )
    .await;
}

/// A refusal never ends a session: a refused Parse of the unnamed statement, after an unnamed
/// statement was prepared and synced, with the client waiting on a Flush before its Sync (as
/// drivers that describe before they bind do). The proxy's hidden Close of the old unnamed
/// statement used to go out inside the failed batch, and the session ended with 08P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_unnamed_parse_never_ends_the_session() {
    use bytes::BytesMut;
    use postgres_protocol::message::{backend, frontend};

    let s = Env::start_enforcing();
    let mut raw = common::raw::Raw::login(&s.env).await;
    for round in 0..3 {
        let mut b = BytesMut::new();
        frontend::parse("", "select 1", std::iter::empty(), &mut b).unwrap();
        frontend::sync(&mut b);
        raw.send(&b).await;
        assert_eq!(raw.until_ready().await, (vec![], true), "round {round}");

        let mut b = BytesMut::new();
        frontend::parse("", "select * from pg_authid", std::iter::empty(), &mut b).unwrap();
        frontend::describe(b'S', "", &mut b).unwrap();
        frontend::flush(&mut b);
        raw.send(&b).await;
        match raw.next().await {
            Some(backend::Message::ErrorResponse(body)) => {
                assert_eq!(common::raw::code_of(body), "42501", "round {round}")
            }
            other => panic!(
                "round {round}: expected the refusal, got {:?}",
                other.is_some()
            ),
        }
        let mut b = BytesMut::new();
        frontend::sync(&mut b);
        raw.send(&b).await;
        assert_eq!(raw.until_ready().await, (vec![], true), "round {round}");
    }
    raw.send(&common::raw::query("select 'alive'")).await;
    assert_eq!(raw.until_ready().await, (vec![], true));
}

/// Planner costs are a row-count oracle: with `cpu_tuple_cost = 1` and the other costs 0, a
/// sequential scan's cost is its table's row count, hidden rows included. Under enforcement
/// EXPLAIN runs with COSTS OFF (whatever the agent asks), and shows the plan's shape only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_no_costs_under_enforcement() {
    let s = Env::start_enforcing();
    let bot = s.env.agent().await;
    bot.batch_execute(
        "set cpu_tuple_cost = 1; set cpu_operator_cost = 0; set seq_page_cost = 0; \
         set random_page_cost = 0; set enable_indexscan = off; set enable_bitmapscan = off",
    )
    .await
    .unwrap();
    for sql in [
        "explain select * from customers",
        "explain (costs on) select * from customers",
        "explain (costs true, verbose) select id from customers",
        "explain verbose select id from customers",
        "explain (format json) select * from customers",
    ] {
        let plan: String = first_column(&bot, sql).await.unwrap().join("\n");
        assert!(plan.contains("Seq Scan"), "{sql}: {plan}");
        for leak in ["cost=", "rows=", "Total Cost", "Plan Rows"] {
            assert!(!plan.contains(leak), "{sql} shows {leak}: {plan}");
        }
    }
}

/// A function or operator that a DBA (not an extension) defined in a schema on the search_path
/// takes part in PostgreSQL's overload resolution, and wins where it matches the argument
/// types better than the built-in: `upper(x::varchar)` calls `public.upper(varchar)`, and
/// `varchar = varchar` calls `public.=(varchar, varchar)`, each with Portcullis's database
/// rights. Here both read another tenant's SSNs. Statements that could reach them are refused,
/// the built-ins stay callable qualified, and an extension's operators (citext's `=`) do not
/// count as user-defined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_defined_overloads_of_builtins_are_never_called() {
    let s = Env::start_enforcing();
    s.env
        .direct()
        .await
        .batch_execute(
            "create function public.upper(varchar) returns text language sql as \
               $$ select string_agg(ssn, ',') from public.customers where tenant_id = 2 $$; \
             create function public.leak_eq(varchar, varchar) returns bool language sql as \
               $$ select exists (select from public.customers where tenant_id = 2 \
                                 and ssn like '0000%') $$; \
             create operator public.= (leftarg = varchar, rightarg = varchar, \
                                       function = public.leak_eq); \
             create function public.leak(anyelement) returns text language sql as \
               $$ select string_agg(ssn, ',') from public.customers where tenant_id = 2 $$; \
             create extension citext",
        )
        .await
        .unwrap();
    refresh_catalog(&s.env);
    assert!(
        s.env
            .proxy_log()
            .contains("user-defined functions or operators are on the search_path"),
        "the DBA is told at refresh"
    );
    let bot = s.env.agent().await;
    let refused = |e: tokio_postgres::Error, what: &str| {
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        assert!(message(&e).contains(what), "{}", message(&e));
        assert!(!message(&e).contains("0000"), "{}", message(&e));
    };
    // Called unqualified, the user's upper(varchar) would return tenant 2's SSNs.
    let e = first_column(&bot, "select upper(name::varchar) from customers limit 1")
        .await
        .unwrap_err();
    refused(e, "function upper() is also defined in schema public");
    // The user's `=` would make this count every row (a bit about tenant 2 per query), and
    // so would IN, NULLIF, CASE and USING, which PostgreSQL resolves as `=`.
    for sql in [
        "select count(*) from customers where name::varchar = 'x'::varchar",
        "select count(*) from customers where name::varchar in ('x'::varchar)",
        "select count(*) from customers where nullif(name::varchar, 'x'::varchar) is null",
        "select count(*) from customers where case name::varchar when 'x'::varchar then true end",
        "select count(*) from customers a join customers b using (id)",
        // The fence itself compares tenant_id with `=`: while the operator is there, every
        // statement on a filtered table is refused (the check does not know argument types).
        "select count(*) from customers",
    ] {
        let e = first_column(&bot, sql).await.unwrap_err();
        refused(e, "operator = is also defined in schema public");
    }
    let e = first_column(
        &bot,
        "select count(*) from customers where name operator(public.=) 'x'",
    )
    .await
    .unwrap_err();
    refused(e, "operators outside pg_catalog");

    // Once the DBA drops the operator, statements run again (the fence compares with `=`),
    // and citext's own operators do not count as user-defined.
    s.env
        .direct()
        .await
        .batch_execute("drop operator public.= (varchar, varchar)")
        .await
        .unwrap();
    refresh_catalog(&s.env);
    let bot = s.env.agent().await;
    assert_eq!(
        first_column(
            &bot,
            "select count(*) from customers where name::varchar = 'x'::varchar"
        )
        .await
        .unwrap(),
        ZERO
    );
    assert_eq!(
        first_column(
            &bot,
            "select count(*) from customers where email::citext = 'X'::citext"
        )
        .await
        .unwrap(),
        ZERO
    );
    // PostgreSQL reads c.leak as leak(c) (functional notation) when c has no column leak.
    let e = first_column(&bot, "select c.leak from customers c limit 1")
        .await
        .unwrap_err();
    refused(e, "reads x.f as f(x)");
    // upper() is still refused unqualified (whatever the argument's type); qualified, the
    // built-in runs.
    let e = first_column(
        &bot,
        "select count(*) from customers where upper(name) <> ''",
    )
    .await
    .unwrap_err();
    refused(e, "Write pg_catalog.upper");
    assert_eq!(
        first_column(
            &bot,
            "select count(*) from customers where pg_catalog.upper(name::varchar) <> ''"
        )
        .await
        .unwrap(),
        TEN
    );
}

/// The finance example with a second schema: `archive.customers`, read by the same row
/// policy (support-bot: tenant 1).
fn finance_with_archive(dir: &std::path::Path) {
    copy_files("policies/examples/finance", dir);
    let path = dir.join("tables.cedarschema");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("public::transfers]"));
    let text = text.replace(
        "public::transfers]",
        "public::transfers, archive::customers]",
    ) + "\nnamespace archive {\n  entity customers {\n    \"id\": Long,\n    \
           \"tenant_id\": Long,\n    \"note\": String,\n  };\n}\n";
    std::fs::write(&path, text).unwrap();
}

/// `SET search_path` to known schemas: unqualified names resolve as PostgreSQL resolves them
/// for the session, through transactions, savepoints, errors, `set_config`, `RESET` and
/// `DISCARD ALL`, in the simple and the extended protocol, pipelined or not; paths that could
/// reach user-defined look-alikes of built-ins, or put `pg_catalog` after another schema, are
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_follows_the_session() {
    let dir = tempfile::tempdir().unwrap();
    finance_with_archive(dir.path());
    let env = Env::start_with_policies(dir.path());
    env.direct()
        .await
        .batch_execute(&format!(
            "create schema archive; \
             create table archive.customers (id int primary key, tenant_id int not null, \
                                             note text not null); \
             insert into archive.customers values (1, 1, 'a'), (2, 1, 'b'), (3, 1, 'c'), \
                                                  (4, 2, 'd'), (5, 2, 'e'); \
             grant usage on schema archive to {UPSTREAM}; \
             grant select on archive.customers to {UPSTREAM}; \
             create schema tools; \
             create table tools.notes (id int); \
             create function tools.upper(varchar) returns text language sql \
               as $$ select 'x' $$; \
             create function archive.leak(anyelement) returns text language sql \
               as $$ select string_agg(ssn, ',') from public.customers $$; \
             grant execute on function archive.leak(anyelement) to {UPSTREAM};",
            UPSTREAM = connectors::postgres::fixtures::UPSTREAM_USER,
        ))
        .await
        .unwrap();
    refresh_catalog(&env);
    let bot = env.agent().await;
    let three: &[&str] = &["3"];
    attack(
        &bot,
        "search_path",
        &[
            ("select count(*) from customers", Rows(TEN)),
            ("set search_path to archive, public", Rows(&[])),
            ("show search_path", Rows(&["archive, public"])),
            ("select count(*) from customers", Rows(three)),
            ("select count(*) from tickets", Rows(&["40"])),
            ("select count(*) from public.customers", Rows(TEN)),
            // A SET applies to the statements after it in the same query.
            (
                "reset search_path; select count(*) from customers",
                Rows(TEN),
            ),
            (
                "set search_path to archive, public; select count(*) from customers",
                Rows(three),
            ),
            // A rolled-back change is undone, a committed one kept, SET LOCAL ends with its
            // transaction, ROLLBACK TO SAVEPOINT undoes what followed the savepoint.
            ("begin", Rows(&[])),
            ("set search_path to public", Rows(&[])),
            ("select count(*) from customers", Rows(TEN)),
            ("rollback", Rows(&[])),
            ("select count(*) from customers", Rows(three)),
            ("begin", Rows(&[])),
            ("set local search_path to public", Rows(&[])),
            ("select count(*) from customers", Rows(TEN)),
            ("commit", Rows(&[])),
            ("select count(*) from customers", Rows(three)),
            ("begin", Rows(&[])),
            ("savepoint s", Rows(&[])),
            ("set search_path to public", Rows(&[])),
            ("select count(*) from customers", Rows(TEN)),
            ("rollback to savepoint s", Rows(&[])),
            ("select count(*) from customers", Rows(three)),
            ("commit", Rows(&[])),
            ("select count(*) from customers", Rows(three)),
            ("begin", Rows(&[])),
            ("set search_path to public", Rows(&[])),
            ("commit", Rows(&[])),
            ("select count(*) from customers", Rows(TEN)),
            // A failed transaction takes its change with it.
            ("begin", Rows(&[])),
            ("set search_path to archive, public", Rows(&[])),
            ("select 1/0", Refused("22012")),
            ("rollback", Rows(&[])),
            ("select count(*) from customers", Rows(TEN)),
            // set_config and DISCARD ALL.
            (
                "select set_config('search_path', 'archive, public', false)",
                Rows(&["archive, public"]),
            ),
            ("select count(*) from customers", Rows(three)),
            ("discard all", Rows(&[])),
            ("select count(*) from customers", Rows(TEN)),
            // Refused paths leave the path as it was.
            ("set search_path to tools, public", Refused("42501")),
            ("set search_path to public, pg_catalog", Refused("42501")),
            ("set search_path to nosuch, public", Refused("42501")),
            ("set search_path to pg_temp, public", Refused("42501")),
            ("set search_path to \"$user\", archive", Refused("42501")),
            (
                "select set_config('search_path', 'archive', false); select 1",
                Refused("0A000"),
            ),
            ("select count(*) from customers", Rows(TEN)),
        ],
    )
    .await;
    let e = first_column(&bot, "set search_path to tools, public")
        .await
        .unwrap_err();
    assert!(
        message(&e).contains("tools.upper()"),
        "the refusal names the look-alike: {}",
        message(&e)
    );

    // Functional notation reaching a user function is refused whatever the path: in an
    // extended batch, a SET before it may change the path before PostgreSQL parses it.
    for sql in [
        "select c.leak from customers c",
        "set search_path to archive, public; select c.leak from customers c",
    ] {
        let e = first_column(&bot, sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
        assert!(message(&e).contains("archive.leak()"), "{}", message(&e));
    }
    bot.batch_execute("reset search_path").await.unwrap();

    // The extended protocol: SET, then queries, each a Parse/Bind/Execute/Sync.
    let count = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i64>(0);
    bot.execute("set search_path to archive, public", &[])
        .await
        .unwrap();
    let rows = bot
        .query("select count(*) from customers", &[])
        .await
        .unwrap();
    assert_eq!(count(rows), 3);
    bot.execute("set search_path to public", &[]).await.unwrap();
    let rows = bot
        .query("select count(*) from customers", &[])
        .await
        .unwrap();
    assert_eq!(count(rows), 10);
    // Pipelined: both Query messages are sent before any reply; the second is held until the
    // path is read back.
    let (set, rows) = tokio::join!(
        first_column(&bot, "set search_path to archive, public"),
        first_column(&bot, "select count(*) from customers"),
    );
    set.unwrap();
    assert_eq!(rows.unwrap(), three);
    bot.batch_execute("reset search_path").await.unwrap();
    // A statement prepared under one path and run under another is rewritten again, as
    // PostgreSQL re-plans it; here its fenced columns differ, so it fails as PostgreSQL fails
    // a cached plan whose result changed, rather than answer from the old table.
    let statement = bot.prepare("select count(*) from customers").await.unwrap();
    assert_eq!(count(bot.query(&statement, &[]).await.unwrap()), 10);
    bot.batch_execute("set search_path to archive, public")
        .await
        .unwrap();
    match bot.query(&statement, &[]).await {
        Ok(rows) => assert_eq!(count(rows), 3),
        Err(e) => assert_eq!(sqlstate(&e), "0A000", "{}", message(&e)),
    }
}
