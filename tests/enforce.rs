//! Policy enforcement end to end: the real binary with the finance policy set in front of a
//! real PostgreSQL. Agents get exactly the rows and columns the policy allows, leaky predicates
//! never see filtered rows, point lookups keep their index, and what cannot be made safe is
//! refused. The oracle test compares ~250 queries through Portcullis with the same queries run
//! directly over views that implement the same policy.

mod common;

use common::*;
use tokio_postgres::SimpleQueryMessage;

/// Rows as text (NULL as None), via the simple protocol.
async fn rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok(out)
}

async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    rows(client, sql).await.unwrap()[0][0]
        .clone()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_see_exactly_their_rows_and_columns() {
    let e = Env::start_enforcing();
    let bot = e.env.agent().await;
    let direct = e.env.direct().await;

    // Rows: support-bot sees tenant 1 only, and no transfer over 10,000.00.
    assert_eq!(
        one(&bot, "select count(*) from customers").await,
        one(
            &direct,
            "select count(*) from customers where tenant_id = 1"
        )
        .await
    );
    assert_eq!(
        one(&bot, "select count(distinct tenant_id) from tickets").await,
        "1"
    );
    assert_eq!(
        one(&bot, "select count(*) from transfers").await,
        one(
            &direct,
            "select count(*) from transfers where tenant_id = 1 and amount <= 10000"
        )
        .await
    );
    assert_eq!(
        one(&bot, "select count(*) from transfers where amount > 10000").await,
        "0"
    );

    // Columns: same names and types as the table; ssn redacted on every row (NULLs too), IBAN
    // last four, metadata of large transfers NULL.
    let stmt = bot.prepare("select * from customers").await.unwrap();
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "id",
            "tenant_id",
            "name",
            "email",
            "ssn",
            "tier",
            "created_at"
        ]
    );
    let direct_stmt = direct.prepare("select * from customers").await.unwrap();
    let types = |s: &tokio_postgres::Statement| {
        s.columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(types(&stmt), types(&direct_stmt));
    assert_eq!(
        rows(&bot, "select distinct ssn from customers")
            .await
            .unwrap(),
        vec![vec![Some("***".to_string())]]
    );
    let ibans = rows(&bot, "select iban from transfers").await.unwrap();
    assert!(!ibans.is_empty());
    for r in &ibans {
        let v = r[0].as_deref().unwrap();
        assert!(
            v.starts_with("*") && !v[..v.len() - 4].contains(|c: char| c != '*'),
            "{v}"
        );
    }
    assert_eq!(
        one(
            &bot,
            "select count(*) from transfers where amount > 1000 and metadata is not null"
        )
        .await,
        "0"
    );
    assert_eq!(
        one(&bot, "select count(*) from transfers where amount <= 1000 and metadata is not null").await,
        one(&direct, "select count(*) from transfers where tenant_id = 1 and amount <= 1000 and metadata is not null").await,
    );

    // An outer predicate on a masked column sees the mask, not the value.
    let ssn = one(
        &direct,
        "select ssn from customers where tenant_id = 1 and ssn is not null limit 1",
    )
    .await;
    assert_eq!(
        one(
            &bot,
            &format!("select count(*) from customers where ssn = '{ssn}'")
        )
        .await,
        "0"
    );

    // The auditor: every tenant, emails hashed (equal emails stay equal), keyed by a secret
    // the agent cannot read: not the plain SHA-256 a dictionary would reverse.
    let auditor = connect(&e.env.url(AUDITOR, AUDITOR_SECRET)).await.unwrap();
    assert_eq!(
        one(&auditor, "select count(*) from customers").await,
        one(&direct, "select count(*) from customers").await
    );
    let email = one(&direct, "select email from customers where id = 1").await;
    let hashed = one(&auditor, "select email from customers where id = 1").await;
    assert_eq!(hashed, keyed_hash(&email));
    assert_ne!(
        hashed,
        one(
            &direct,
            "select encode(sha256(convert_to(email, 'UTF8')), 'hex') from customers where id = 1"
        )
        .await
    );
    // Equal values hash alike (joins on the hashed column still work).
    assert_eq!(
        one(
            &auditor,
            "select count(*) from customers a join customers b on a.email = b.email"
        )
        .await,
        one(&direct, "select count(*) from customers").await
    );
    // The key is nowhere the agent can look: not readable as a setting, not in plans.
    let hex_key: String = HASH_KEY
        .bytes()
        .map(|b| format!("{:02x}", b ^ 0x36))
        .collect();
    for sql in [
        "show portcullis.mask_key",
        "select current_setting('portcullis.mask_key')",
        "select current_setting('PORTCULLIS.MASK_KEY', true)",
        "select * from pg_settings",
        "select * from pg_show_all_settings()",
        "reset portcullis.mask_key",
        "set portcullis.mask_key = '00'",
    ] {
        let e = auditor.batch_execute(sql).await.unwrap_err();
        // (sqlparser does not read `SHOW a.b`: refused as a syntax error)
        assert!(["42501", "42601"].contains(&&*sqlstate(&e)), "{sql}: {e}");
        assert!(!message(&e).contains(&hex_key[..16]), "{sql}: {e}");
    }
    let plan = rows(&auditor, "explain verbose select email from customers")
        .await
        .unwrap();
    let plan: String = plan
        .iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    assert!(plan.contains("portcullis.mask_key"), "{plan}");
    assert!(!plan.contains(&hex_key[..16]), "{plan}");
    // RESET ALL and DISCARD ALL keep the key (it is the session's startup value).
    auditor.batch_execute("reset all").await.unwrap();
    auditor.batch_execute("discard all").await.unwrap();
    assert_eq!(
        one(&auditor, "select email from customers where id = 1").await,
        hashed
    );

    // The extended protocol is rewritten the same way.
    let n: i64 = bot
        .query_one(
            "select count(*) from customers where tenant_id <> $1",
            &[&1i32],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaky_predicates_never_see_filtered_rows_and_lookups_keep_their_index() {
    let e = Env::start_enforcing();
    let bot = e.env.agent().await;
    // Directly, this divides by zero on tenant 2's rows; through Portcullis those rows are
    // never seen by the predicate.
    let direct = e.env.direct().await;
    assert!(rows(
        &direct,
        "select * from customers where 1 / (tenant_id - 2) = 1"
    )
    .await
    .is_err());
    assert_eq!(
        rows(
            &bot,
            "select * from customers where 1 / (tenant_id - 2) = 1"
        )
        .await
        .unwrap()
        .len(),
        0
    );
    assert!(rows(&bot, "select * from customers c join tickets t on t.customer_id = c.id where 1 / (t.tenant_id - 2) = 1").await.is_ok());

    // A primary-key lookup can use the key's index inside the fence (the fixture tables are
    // small enough that the planner would rather scan them, so scans are priced out).
    bot.simple_query("set enable_seqscan = off").await.unwrap();
    let plan = rows(&bot, "explain select * from customers where id = 4")
        .await
        .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Scan using customers_pkey")),
        "{plan:#?}"
    );
    let plan = rows(&bot, "explain select * from transfers t where t.id = 7")
        .await
        .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Scan using transfers_pkey")),
        "{plan:#?}"
    );
}

/// Conditions PostgreSQL would push into a `security_barrier` view reach the fence: a date
/// range written with typed constants and interval arithmetic, and a correlated scalar
/// subquery's join to the enclosing row, each served by its index; the answers are the
/// policy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlated_subqueries_and_date_ranges_use_their_indexes() {
    let e = Env::start_enforcing();
    let direct = e.env.direct().await;
    direct
        .batch_execute(
            "CREATE INDEX customers_created_idx ON customers (created_at);
             CREATE INDEX tickets_customer_idx ON tickets (customer_id);
             ANALYZE",
        )
        .await
        .unwrap();
    let bot = e.env.agent().await;
    bot.simple_query("set enable_seqscan = off").await.unwrap();
    let explain = |sql: String| {
        let bot = &bot;
        async move {
            let plan = rows(bot, &format!("explain {sql}")).await.unwrap();
            plan.into_iter()
                .map(|r| r[0].clone().unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let range = "select id from customers where created_at >= timestamptz '2026-01-03 00:00+00' \
                 and created_at < timestamptz '2026-01-03 00:00+00' + interval '3 days' order by id";
    let plan = explain(range.into()).await;
    assert!(plan.contains("customers_created_idx"), "{plan}");
    let correlated = "select c.id, (select count(*) from tickets t where t.customer_id = c.id) \
                      from customers c where c.id < 10 order by c.id";
    let plan = explain(correlated.into()).await;
    assert!(plan.contains("tickets_customer_idx"), "{plan}");
    // The same answers as the policy written by hand (support-bot: tenant 1).
    let through = rows(&bot, range).await.unwrap();
    let by_hand = rows(
        &direct,
        &range.replace("where created_at", "where tenant_id = 1 and created_at"),
    )
    .await
    .unwrap();
    assert!(!through.is_empty());
    assert_eq!(through, by_hand);
    let through = rows(&bot, correlated).await.unwrap();
    let by_hand = rows(
        &direct,
        "select c.id, (select count(*) from tickets t where t.customer_id = c.id and t.tenant_id = 1) \
         from customers c where c.id < 10 and c.tenant_id = 1 order by c.id",
    )
    .await
    .unwrap();
    assert!(!through.is_empty());
    assert_eq!(through, by_hand);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_made_safe_is_refused_and_the_session_goes_on() {
    let e = Env::start_enforcing();
    let bot = e.env.agent().await;
    for (sql, state) in [
        ("create table x (a int)", "42501"),
        ("drop table customers", "42501"),
        ("truncate customers", "42501"),
        // Writes the policy does not permit, or cannot check (tests/writes.rs has the rest).
        ("insert into tickets (tenant_id, customer_id, subject, body, status) values (2, 2, 's', 'b', 'open')", "42501"),
        ("delete from transfers", "42501"),
        ("merge into customers c using tickets t on t.id = c.id when matched then delete", "42501"),
        ("select * from pg_stats", "42501"),
        ("select * from pg_stat_activity", "42501"),
        ("select pg_read_file('/etc/passwd')", "42501"),
        ("select query_to_xml('select * from customers', true, true, '')", "42501"),
        ("select * from not_a_table", "42501"),
        ("set search_path = pg_temp, public", "42501"),
        ("prepare p as select * from customers", "42501"),
        ("listen x", "42501"),
        ("explain analyze select * from customers", "42501"),
        ("do $$ begin end $$", "42601"),
        ("with customers as (select * from customers) select * from customers", "42501"),
    ] {
        let err = bot.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), state, "{sql}: {}", message(&err));
    }
    // The session is still usable.
    assert_eq!(one(&bot, "select 1").await, "1");
    // A refusal says what a name is when the catalog knows it, rather than that it may not
    // exist (information_schema lists sequences).
    for (sql, what) in [
        (
            "select last_value from tickets_id_seq",
            "\"public\".\"tickets_id_seq\" is a sequence",
        ),
        ("select * from public.transfers_id_seq", "is a sequence"),
        (
            "select * from customers_pkey",
            "\"public\".\"customers_pkey\" is an index",
        ),
        (
            "update tickets_id_seq set is_called = false",
            "is a sequence",
        ),
        (
            "select * from not_a_table",
            "relation not_a_table is not known to Portcullis",
        ),
    ] {
        let err = bot.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{sql}: {}", message(&err));
        assert!(message(&err).contains(what), "{sql}: {}", message(&err));
    }
    assert_eq!(
        one(&bot, "select count(*) from information_schema.sequences where sequence_name = 'tickets_id_seq'").await,
        "1"
    );
    // The planner's row-count estimate counts hidden rows: it reads as NULL.
    let direct = e.env.direct().await;
    direct.batch_execute("ANALYZE customers").await.unwrap();
    assert_eq!(
        one(
            &direct,
            "select reltuples from pg_class where relname = 'customers'"
        )
        .await,
        "30"
    );
    assert_eq!(
        rows(
            &bot,
            "select reltuples, relpages from pg_class where relname = 'customers'"
        )
        .await
        .unwrap(),
        vec![vec![None, None]]
    );
    // psql-style introspection still works.
    assert!(rows(&bot, "select c.relname from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public'").await.is_ok());
}

/// The policy for support-bot, written by hand as views: the oracle.
const ORACLE_VIEWS: &str = r#"
CREATE SCHEMA oracle;
CREATE VIEW oracle.customers AS
  SELECT id, tenant_id, name, email, '***'::text AS ssn, tier, created_at
  FROM public.customers WHERE tenant_id = 1;
CREATE VIEW oracle.tickets AS
  SELECT * FROM public.tickets WHERE tenant_id = 1;
CREATE VIEW oracle.transfers AS
  SELECT id, tenant_id, customer_id, amount, currency,
         CASE WHEN char_length(iban) > 4 THEN repeat('*', char_length(iban) - 4) || right(iban, 4)
              ELSE repeat('*', char_length(iban)) END AS iban,
         approved, created_at,
         CASE WHEN amount > 1000 THEN NULL ELSE metadata END AS metadata
  FROM public.transfers WHERE tenant_id = 1 AND NOT (amount > 10000);
"#;

/// A corpus of read queries of many shapes over the three tables, by unqualified name.
fn corpus() -> Vec<String> {
    let mut q = Vec::new();
    let tables = ["customers", "tickets", "transfers"];
    for t in tables {
        q.push(format!("select * from {t}"));
        q.push(format!("select count(*) from {t}"));
        q.push(format!(
            "select tenant_id, count(*) from {t} group by tenant_id"
        ));
        q.push(format!("select * from {t} where id < 10"));
        q.push(format!("select * from {t} where id = 7"));
        q.push(format!("select * from {t} where tenant_id = 2"));
        q.push(format!("select * from {t} where tenant_id <> 1"));
        q.push(format!("select id from {t} order by id desc limit 5"));
        q.push(format!("select id from {t} order by id offset 3 limit 4"));
        q.push(format!("select max(id), min(id), sum(id) from {t}"));
        q.push(format!(
            "select x.* from {t} x where x.id in (select id from {t} where id % 2 = 0)"
        ));
        q.push(format!(
            "select * from {t} a where exists (select 1 from {t} b where b.id = a.id + 1)"
        ));
        q.push(format!("select (select count(*) from {t}) as n"));
        q.push(format!(
            "with w as (select * from {t}) select count(*) from w"
        ));
        q.push(format!(
            "with w as (select id from {t} where id > 5) select * from w where id < 40"
        ));
        q.push(format!(
            "select id from {t} union select id + 1000 from {t}"
        ));
        q.push(format!("select id from {t} union all select id from {t}"));
        q.push(format!(
            "select id from {t} intersect select id from {t} where id > 3"
        ));
        q.push(format!(
            "select id from {t} except select id from {t} where id > 3"
        ));
        q.push(format!(
            "select id, row_number() over (order by id) from {t}"
        ));
        q.push(format!(
            "select tenant_id, count(*) over (partition by tenant_id) from {t}"
        ));
        q.push(format!(
            "select * from (select * from (select * from {t}) s1) s2"
        ));
        q.push(format!(
            "select count(*) from {t} where id between 1 and 1000000"
        ));
        q.push(format!("select distinct tenant_id from {t}"));
        q.push(format!(
            "select tenant_id from {t} group by tenant_id having count(*) > 1"
        ));
        q.push(format!("select * from {t} where id = 1 or tenant_id = 3"));
        q.push(format!("select * from {t} where not (tenant_id = 1)"));
        q.push(format!("select * from {t} where tenant_id in (1, 2, 3)"));
        q.push(format!("select * from {t} where tenant_id is null"));
        q.push(format!(
            "select count(*) filter (where tenant_id = 2) from {t}"
        ));
        q.push(format!("select * from public.{t}"));
        q.push(format!("select {t}.id from {t}"));
        q.push(format!(
            "select * from {t} where id = any(array[1, 2, 3, 4, 5, 6])"
        ));
        q.push(format!("with recursive r(n) as (select min(id) from {t} union all select n + 1 from r where n < 5) select * from r"));
        q.push(format!(
            "select * from {t}, lateral (select count(*) from {t} i where i.id < {t}.id) l"
        ));
        q.push(format!(
            "select coalesce(max(id), -1) from {t} where tenant_id = 3"
        ));
        q.push(format!(
            "select (select max(id) from {t} where tenant_id = 2)"
        ));
        q.push(format!(
            "select id from {t} where id > (select avg(id) from {t})"
        ));
    }
    for (a, b) in [
        ("customers", "tickets"),
        ("customers", "transfers"),
        ("tickets", "transfers"),
    ] {
        let key = if a == "customers" {
            "id"
        } else {
            "customer_id"
        };
        q.push(format!(
            "select count(*) from {a} x join {b} y on y.customer_id = x.{key}"
        ));
        q.push(format!(
            "select count(*) from {a} x left join {b} y on y.customer_id = x.{key}"
        ));
        q.push(format!(
            "select count(*) from {a} x right join {b} y on y.customer_id = x.{key}"
        ));
        q.push(format!(
            "select count(*) from {a} x full join {b} y on y.customer_id = x.{key}"
        ));
        q.push(format!("select count(*) from {a} x cross join {b} y"));
        q.push(format!(
            "select x.tenant_id, y.tenant_id, count(*) from {a} x join {b} y on true group by 1, 2"
        ));
        q.push(format!(
            "select * from {a} x where x.{key} in (select customer_id from {b})"
        ));
        q.push(format!("select * from {a} x where not exists (select 1 from {b} y where y.customer_id = x.{key})"));
        q.push(format!(
            "select x.id, (select count(*) from {b} y where y.customer_id = x.{key}) from {a} x"
        ));
        q.push(format!("with p as (select * from {a}), r as (select * from {b}) select count(*) from p join r on r.customer_id = p.{key}"));
        q.push(format!(
            "select count(*) from {a} x join {b} y using (tenant_id)"
        ));
        q.push(format!("select count(*) from {a} natural join {b}"));
        q.push(format!(
            "select tenant_id from {a} union select tenant_id from {b}"
        ));
        q.push(format!(
            "select * from {a} x, {b} y where x.id = 3 and y.id = 3"
        ));
    }
    // Column-specific shapes.
    for c in [
        "select name, email, ssn from customers",
        "select count(*) from customers where ssn is null",
        "select count(*) from customers where ssn like '%1%'",
        "select ssn, count(*) from customers group by ssn",
        "select length(ssn) from customers",
        "select upper(name) from customers order by 1",
        "select tier, count(*) from customers group by tier order by tier",
        "select * from customers where created_at > '2026-01-10'",
        "select * from customers where email like 'customer1%'",
        "select c from customers c",
        "select row_to_json(c) from customers c",
        "select iban from transfers",
        "select count(*) from transfers where iban like '%DE%'",
        "select right(iban, 4), count(*) from transfers group by 1",
        "select metadata from transfers",
        "select count(*) from transfers where metadata is null",
        "select count(*) from transfers where metadata->>'channel' = 'web'",
        "select currency, sum(amount) from transfers group by currency",
        "select * from transfers where amount > 5000",
        "select * from transfers where amount > 9999.99",
        "select max(amount) from transfers",
        "select approved, count(*) from transfers group by approved",
        "select * from transfers where approved",
        "select * from transfers order by amount desc limit 3",
        "select status, count(*) from tickets group by status",
        "select * from tickets where priority = 1",
        "select subject from tickets where body like '%customer3%'",
        "select t.subject, c.name from tickets t join customers c on c.id = t.customer_id where t.status = 'open'",
        "select c.name, sum(tr.amount) from customers c join transfers tr on tr.customer_id = c.id group by c.name",
        "select c.ssn, tr.iban from customers c join transfers tr on tr.customer_id = c.id",
        "select * from customers where id = 4",
        "select * from customers where id = 5",
        "select * from tickets where id = 2",
        "select * from transfers where id = 1",
        "select * from customers where tenant_id = 1 and id = 4",
        "select array_agg(id order by id) from customers",
        "select string_agg(name, ',' order by name) from customers",
        "select json_agg(t order by t.id) from transfers t",
        "select * from customers where id in (select customer_id from tickets where status = 'closed')",
        "select * from (values (1), (4), (7)) v(id) join customers using (id)",
        "select g, (select count(*) from customers where tenant_id = g) from generate_series(1, 3) g",
        "select * from generate_series(1, 30) g left join customers c on c.id = g",
        "select count(*) from customers, tickets, transfers where customers.id = tickets.customer_id and tickets.customer_id = transfers.customer_id",
        "with recursive chain as (select id, 1 as depth from customers where id = 1 union all select c.id, depth + 1 from chain join customers c on c.id = chain.id + 3 where depth < 10) select * from chain",
        "select * from customers c1 join customers c2 on c1.id = c2.id + 1",
        "select case when tenant_id = 1 then 'mine' else 'other' end, count(*) from customers group by 1",
        "select 1 from customers having count(*) > 0",
        "select exists (select 1 from customers where tenant_id = 2)",
        "select count(*) = (select count(*) from customers) from tickets",
        "select * from customers order by name limit 1 offset 2",
        // Conditions copied into fences (as into a security_barrier view): outer joins'
        // nullable sides, typed constants and date arithmetic, lists and ranges, correlated
        // scalar subqueries (also in ORDER BY), unqualified names across a join.
        "select t.id from tickets t left join customers c on c.id = t.customer_id and c.tier = 'gold' where c.name is null",
        "select t.id from tickets t left join customers c on c.id = t.customer_id where c.id is null",
        "select t.id, c.id from customers c right join tickets t on t.customer_id = c.id where c.tier = 'standard' or c.tier is null",
        "select t.id, customers.id from customers full join tickets t on t.customer_id = customers.id where customers.id is null or t.priority = 1",
        "select * from customers where created_at >= date '2026-01-05' and created_at < date '2026-01-05' + interval '3 days'",
        "select * from customers where created_at between timestamptz '2026-01-02 00:00+00' and now()",
        "select * from customers where created_at > current_date - 4000",
        "select * from customers where id between 2 and 6 and tier in ('standard', 'gold')",
        "select * from customers where id not in (1, 4) and name is not null",
        "select * from customers where (id = 1 or id = 4) and not (tier = 'gold')",
        "select * from customers where id = cast('4' as integer) or id = 2 + 3",
        "select c.id, (select max(t.priority) from tickets t where t.customer_id = c.id and t.status = 'open') from customers c",
        "select t.id from tickets t where t.priority <= (select count(*) from transfers tr where tr.customer_id = t.customer_id)",
        "select c.id from customers c where not exists (select 1 from tickets t where t.customer_id = c.id and t.priority = 1)",
        "select t.id from tickets t where exists (select 1 from customers c where c.id = t.customer_id and c.ssn is null)",
        "select (select name from customers c where c.id = t.customer_id) from tickets t order by (select c.email from customers c where c.id = t.customer_id), t.id",
        "select customers.id, tickets.id from customers, tickets where customer_id = customers.id and status = 'open' and email like 'c%'",
        "select * from customers c where c.tenant_id = c.id",
    ] {
        q.push(c.to_string());
    }
    // One shape with new constants each time, as agents and ORMs send statements: all but the
    // first of each are filled into the template learnt from it (the shape cache).
    for (id, tier, amount, k) in [
        (1, "gold", "10.5", 3),
        (4, "standard", "0", 10),
        (7, "gold", "250.25", 1),
        (40, "platinum", "1e2", 5),
        (2, "it''s", "99", 2),
    ] {
        q.push(format!("select * from customers where id = {id}"));
        q.push(format!(
            "select id, email from customers where tier = '{tier}' and id > {id} order by id"
        ));
        q.push(format!(
            "select id, amount from transfers where amount > {amount} and id <> {id} order by id limit {k}"
        ));
        q.push(format!(
            "select c.id, t.id from customers c join tickets t on t.customer_id = c.id where c.id between {id} and {id} + 3 and t.priority in ({k}, {k} + 1) order by 1, 2"
        ));
    }
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_through_portcullis_equals_views_implementing_the_same_policy() {
    let e = Env::start_enforcing();
    let direct = e.env.direct().await;
    direct.batch_execute(ORACLE_VIEWS).await.unwrap();
    // Some metadata to tell masked from visible.
    direct
        .batch_execute(r#"UPDATE transfers SET metadata = '{"channel": "web"}' WHERE id % 2 = 0"#)
        .await
        .unwrap();
    let oracle = e.env.direct().await;
    oracle
        .batch_execute("SET search_path = oracle, public")
        .await
        .unwrap();
    let bot = e.env.agent().await;

    let corpus = corpus();
    assert!(corpus.len() >= 200, "corpus has {} queries", corpus.len());
    let mut compared = 0;
    let mut nonempty = 0;
    let mut failures = Vec::new();
    for sql in &corpus {
        // The oracle's policy lives in its views; a schema-qualified name must reach them too.
        let expected = rows(&oracle, &sql.replace("public.", "oracle.")).await;
        let actual = rows(&bot, sql).await;
        match (expected, actual) {
            (Ok(mut want), Ok(mut got)) => {
                want.sort();
                got.sort();
                compared += 1;
                if !want.is_empty() {
                    nonempty += 1;
                }
                if want != got {
                    let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(3).collect();
                    failures.push(format!(
                        "{sql}\n    oracle {} rows, portcullis {} rows; extra (LEAK if any): {extra:?}",
                        want.len(),
                        got.len()
                    ));
                }
            }
            (Err(w), Err(_)) => {
                // Both refuse (e.g. an error in the query itself): consistent.
                compared += 1;
                let _ = w;
            }
            (Ok(_), Err(g)) => failures.push(format!(
                "{sql}\n    refused through Portcullis: {}",
                message(&g)
            )),
            (Err(w), Ok(_)) => failures.push(format!(
                "{sql}\n    oracle failed ({}) but Portcullis answered",
                message(&w)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries differ:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
    assert!(
        compared >= 200 && nonempty >= 150,
        "compared {compared}, non-empty {nonempty}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_introspection_works_under_enforcement() {
    let e = Env::start_enforcing();
    let out = std::process::Command::new(require("psql"))
        .arg(e.env.agent_url())
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "\\d customers",
            "-c",
            "\\dt",
            "-c",
            "select ssn from customers limit 1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("customers_pkey") && stdout.contains("transfers"),
        "{stdout}"
    );
    assert!(stdout.contains("***"), "{stdout}");
}

/// `portcullis explain` prints the decision, filters, masks, determining policies and rewritten
/// SQL for an agent (and for an agent acting for a human), and runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_decision_without_running_it() {
    let e = Env::start_enforcing();
    let explain = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("explain")
            .arg("--config")
            .arg(e.env.dir().join("portcullis.toml"))
            .args(args)
            .env(
                "PORTCULLIS_TEST_UPSTREAM_PASSWORD",
                &e.env.upstream_password,
            )
            .output()
            .expect("run portcullis explain");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = explain(&[
        "--agent",
        "support-bot",
        "select * from customers where id = 3",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    for expected in [
        "decision: allowed",
        "relation public::customers:",
        r#"rows: ("tenant_id" = 1)"#,
        "ssn masked:redact",
        "determining policies: support-reads-own-tenant",
        r#"FROM "public"."customers" WHERE"#,
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    // Acting for alice: no SSN at all.
    let (code, out, _) = explain(&[
        "--agent",
        "support-bot",
        "--on-behalf-of",
        "alice",
        "select * from customers",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(r#"acting for User::"alice""#) && out.contains("ssn denied"),
        "{out}"
    );
    // A refusal, with its SQLSTATE, and a distinct exit code.
    let (code, out, _) = explain(&["--agent", "support-bot", "drop table customers"]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("decision: refused (42501)"), "{out}");
    // A write is explained, not run.
    let direct = e.env.direct().await;
    let before = one(&direct, "select count(*) from tickets").await;
    let (code, out, _) = explain(&["--agent", "support-bot", "delete from tickets"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("DELETE FROM \"public\".\"tickets\""), "{out}");
    assert_eq!(one(&direct, "select count(*) from tickets").await, before);
}

/// Delegation: an agent that logs in with a signed token naming a human (`on_behalf_of`) gets
/// only what both may see (the finance set's delegation policies); bad tokens, and tokens
/// naming a human the policy set does not know, fail like a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_agents_act_for_the_human_their_token_names() {
    const KEY: &str = "a-test-signing-key-of-at-least-32-bytes";
    let set = tempfile::tempdir().unwrap();
    copy_files("policies/examples/finance", set.path());
    let entities = set.path().join("entities.json");
    let mut list: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&entities).unwrap()).unwrap();
    list.push(serde_json::json!({
        "uid": { "type": "Agent", "id": "delegate-bot" },
        "attrs": { "tenant_id": 1, "clearance": 1 },
        "parents": [{ "type": "Role", "id": "support" }]
    }));
    std::fs::write(&entities, serde_json::to_string(&list).unwrap()).unwrap();
    let env = Env::start_with(Options {
        postgres_extra: format!(
            "[policies]\ndir = {:?}\n\n[jwt]\nalgorithm = \"HS256\"\nsecret = \"{KEY}\"\naudience = \"portcullis\"\nallow_plaintext = true\n\n[[agents]]\nid = \"delegate-bot\"\ntoken = true\n",
            set.path().display().to_string()
        ),
    });
    let token = |claims: serde_json::Value, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let login = |token: String| {
        let url = env.url("delegate-bot", &token);
        async move { connect(&url).await }
    };
    let claims = |user: Option<&str>| {
        let mut c = serde_json::json!({"sub": "delegate-bot", "aud": "portcullis", "exp": exp});
        if let Some(u) = user {
            c["on_behalf_of"] = u.into();
        }
        c
    };

    // On its own: the support role's view (tenant 1, SSN redacted).
    let own = login(token(claims(None), KEY)).await.unwrap();
    assert_eq!(one(&own, "select count(*) from customers").await, "10");
    assert_eq!(
        one(&own, "select ssn from customers where id = 3").await,
        "***"
    );
    // For alice (tenant 1): same rows, and no SSN column at all.
    let alice = login(token(claims(Some("alice")), KEY)).await.unwrap();
    assert_eq!(one(&alice, "select count(*) from customers").await, "10");
    let e = rows(&alice, "select ssn from customers").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42703", "{}", message(&e));
    // For bob (tenant 2): the agent's tenant and bob's do not meet.
    let bob = login(token(claims(Some("bob")), KEY)).await.unwrap();
    assert_eq!(one(&bob, "select count(*) from customers").await, "0");
    let log = env.proxy_log();
    assert!(
        log.lines()
            .any(|l| l.contains("session uses policy version") && l.contains("bob")),
        "the session's delegation is logged:\n{log}"
    );

    // Refused like a wrong password.
    let mut expired = claims(Some("alice"));
    expired["exp"] = (jsonwebtoken::get_current_timestamp() - 600).into();
    let mut other_agent = claims(Some("alice"));
    other_agent["sub"] = "support-bot".into();
    for (why, t) in [
        (
            "wrong key",
            token(claims(Some("alice")), "another-key-another-key-another-key"),
        ),
        ("expired", token(expired, KEY)),
        ("another agent's token", token(other_agent, KEY)),
        ("unknown human", token(claims(Some("mallory")), KEY)),
        ("not a token", "support-secret".to_string()),
    ] {
        let e = login(t).await.unwrap_err();
        assert_eq!(sqlstate(&e), "28P01", "{why}: {e}");
    }
    // SCRAM agents are unaffected.
    let bot = env.agent().await;
    assert_eq!(one(&bot, "select count(*) from customers").await, "10");
}

/// A token is a cleartext password: without TLS (and without `jwt.allow_plaintext`) the
/// login is refused before the token is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_logins_need_tls() {
    let key = "k".repeat(32);
    let env = Env::start_with(Options {
        postgres_extra: format!(
            "\n[jwt]\nalgorithm = \"HS256\"\nsecret = \"{key}\"\n\n[[agents]]\nid = \"delegate-bot\"\ntoken = true\n"
        ),
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "delegate-bot", "exp": jsonwebtoken::get_current_timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap();
    let e = connect(&env.url("delegate-bot", &token)).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{e}");
    assert!(message(&e).contains("only over TLS"), "{}", message(&e));
}

/// TABLESAMPLE is drawn from the table inside the fence, then filtered: the same rows as
/// PostgreSQL's RLS would give (the sample of the whole table, restricted to visible rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablesample_draws_from_the_table_then_filters() {
    let e = Env::start_enforcing();
    let bot = e.env.agent().await;
    let direct = e.env.direct().await;
    assert_eq!(
        one(
            &bot,
            "select count(*) from customers tablesample system (100)"
        )
        .await,
        "10"
    );
    let sampled = rows(
        &bot,
        "select id, tenant_id, ssn from customers c tablesample bernoulli (50) repeatable (42) order by id",
    )
    .await
    .unwrap();
    assert!(!sampled.is_empty());
    assert!(sampled
        .iter()
        .all(|r| r[1].as_deref() == Some("1") && r[2].as_deref() == Some("***")));
    let expected = rows(
        &direct,
        "select id from customers tablesample bernoulli (50) repeatable (42) where tenant_id = 1 order by id",
    )
    .await
    .unwrap();
    let ids: Vec<_> = sampled.iter().map(|r| r[0].clone()).collect();
    let want: Vec<_> = expected.iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, want);
}

/// A `char(n)` value compares as Cedar and `policy test` compare it: by its text, without the
/// padding PostgreSQL stores (whose own `=` ignores trailing blanks). The same policy and rows
/// give the same answer in `policy test` and through Portcullis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_char_values_compare_as_policy_test_compares_them() {
    let set = tempfile::tempdir().unwrap();
    copy_files("policies/examples/finance", set.path());
    let rows_file = set.path().join("rows.cedar");
    let text = std::fs::read_to_string(&rows_file).unwrap()
        + r#"
@id("no-gb")
forbid (principal, action == Action::"select", resource is public::transfers)
when { resource.currency == "GB" };

@id("no-us-padded")
forbid (principal, action == Action::"select", resource is public::transfers)
when { resource.currency == "US " };
"#;
    std::fs::write(&rows_file, text).unwrap();
    std::fs::write(
        set.path().join("char.test.toml"),
        r#"
[[case]]
name = "char(3) values are their text"
principal = "support-bot"
action = "select"
table = "public::transfers"
[[case.row]]
visible = false
attrs = { id = 1, tenant_id = 1, customer_id = 3, amount = { decimal = "1.00" }, currency = "GB", iban = "DE00", approved = true, created_at = { datetime = "2026-03-01" } }
[[case.row]]
visible = true
attrs = { id = 2, tenant_id = 1, customer_id = 3, amount = { decimal = "1.00" }, currency = "US", iban = "DE00", approved = true, created_at = { datetime = "2026-03-01" } }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["policy", "test", set.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "policy test: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = Env::start_with_policies(set.path());
    let direct = env.direct().await;
    direct
        .batch_execute(
            "insert into transfers (tenant_id, customer_id, amount, currency, iban) values \
             (1, 3, 1.00, 'GB', 'DE00'), (1, 3, 1.00, 'US', 'DE00')",
        )
        .await
        .unwrap();
    // Stored padded: PostgreSQL's own = would hide the US row too ('US ' = 'US').
    assert_eq!(
        one(
            &direct,
            "select count(*) from transfers where currency = 'US '"
        )
        .await,
        "1"
    );
    let bot = env.agent().await;
    let seen = rows(
        &bot,
        "select currency::text from transfers where currency in ('GB', 'US') order by 1",
    )
    .await
    .unwrap();
    assert_eq!(seen, vec![vec![Some("US".to_string())]]);
}

/// `TABLE t` where sqlparser parses it (after WITH, in a set operation) is read with
/// PostgreSQL's own scanner (quoting and case as PostgreSQL folds them) and fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_shorthand_is_fenced() {
    let e = Env::start_enforcing();
    let bot = e.env.agent().await;
    let mut got = rows(&bot, "with x as (select 1) table public.CUSTOMERS")
        .await
        .unwrap();
    got.sort();
    assert_eq!(got.len(), 10);
    assert!(got
        .iter()
        .all(|r| r[1].as_deref() == Some("1") && r[4].as_deref() == Some("***")));
    let n = rows(
        &bot,
        "select id, tenant_id, name, email, ssn, tier, created_at from customers where false \
         union all table customers",
    )
    .await
    .unwrap()
    .len();
    assert_eq!(n, 10);
    let err = bot
        .simple_query(r#"with x as (select 1) table "Customers""#)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{}", message(&err));
    assert!(
        message(&err).contains(r#""Customers""#),
        "{}",
        message(&err)
    );
}
