//! Policy-checked writes end to end: the real binary with the finance policy set in front of a
//! real PostgreSQL. UPDATE and DELETE touch only rows that are readable and allowed for the
//! action; INSERT and UPDATE produce only rows the action allows, or the whole statement fails
//! with 42501 naming the policies; RETURNING is masked; constraint errors do not echo rows.

mod common;

use common::*;

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// A digest of every row an agent of tenant 1 may not change: it must never move.
const UNTOUCHABLE_TICKETS: &str = "select coalesce(md5(string_agg(t::text, ',' order by id)), '') from tickets t where not (tenant_id = 1 and priority <> 1)";

async fn digest(client: &tokio_postgres::Client, sql: &str) -> String {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_produce_only_allowed_rows_atomically() {
    let e = Env::start_enforcing();
    let env = &e.env;
    let bot = env.agent().await;
    let direct = env.direct().await;
    let total = || count(&direct, "select count(*) from tickets");
    let before = total().await;

    // Allowed: tenant 1, priority 2. RETURNING shows the new row.
    let rows = bot
        .query(
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             values (1, 3, 'printer', 'on fire', 'open', 2) returning id, tenant_id, subject",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(1), 1);
    assert_eq!(total().await, before + 1);

    // Extended protocol with typed parameters: the row count comes back as for a plain INSERT.
    let n = bot
        .execute(
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             values ($1, $2, $3, $4, $5, $6)",
            &[&1i32, &3i32, &"s", &"b", &"pending", &3i16],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(total().await, before + 2);

    // One bad row refuses the whole statement: nothing is written.
    let e = bot
        .batch_execute(
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             values (1, 3, 'ok', 'b', 'open', 2), (2, 4, 'other tenant', 'b', 'open', 2)",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    // The error names the permit the row fails, not the forbid it passes.
    let m = message(&e);
    assert!(
        m.contains("violates the insert policy on public::tickets for this agent: no permitting policy holds for it (policies: support-writes-own-tickets)")
            && !m.contains("no-agent-priority-one"),
        "{m}"
    );
    assert_eq!(
        total().await,
        before + 2,
        "nothing of the refused INSERT landed"
    );
    // A forbid is named too.
    let e = bot
        .batch_execute(
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             values (1, 3, 'urgent', 'b', 'open', 1)",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let m = message(&e);
    assert!(
        m.contains("policy no-agent-priority-one forbids it")
            && !m.contains("support-writes-own-tickets"),
        "{m}"
    );
    // With RETURNING, a row the agent could write but not read back names the read policy.
    // (support-bot may write only what it can read; a delegated session is narrower.)
    let e = bot
        .batch_execute(
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             values (2, 4, 'other tenant', 'b', 'open', 2) returning id",
        )
        .await
        .unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("support-writes-own-tickets") && !m.contains("columns-readable"),
        "{m}"
    );

    // INSERT … SELECT reads through the fence: a hidden ticket cannot be copied.
    let hidden: i32 = direct
        .query_one("select min(id) from tickets where tenant_id = 2", &[])
        .await
        .unwrap()
        .get(0);
    let copied = bot
        .execute(
            &format!(
                "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
                 select 1, customer_id, subject, body, status, 2 from tickets where id = {hidden}"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(copied, 0);

    // A checked column left to its default is checked at it: tenant_id has none (NULL).
    let e = bot
        .batch_execute(
            "insert into tickets (customer_id, subject, body, status) values (3, 's', 'b', 'open')",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(
        message(&e).contains("violates the insert policy"),
        "{}",
        message(&e)
    );

    // The auditor may write nothing.
    let auditor = connect(&env.url(AUDITOR, AUDITOR_SECRET)).await.unwrap();
    let e = auditor
        .batch_execute(
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             values (1, 3, 's', 'b', 'open', 2)",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(
        message(&e).contains("no policy permits insert"),
        "{}",
        message(&e)
    );
    assert_eq!(total().await, before + 2);
    // Sessions stay usable after refusals.
    assert_eq!(
        count(&bot, "select count(*) from tickets where tenant_id = 2").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_deletes_touch_only_allowed_rows() {
    let e = Env::start_enforcing();
    let env = &e.env;
    let bot = env.agent().await;
    let direct = env.direct().await;
    let untouchable = digest(&direct, UNTOUCHABLE_TICKETS).await;
    let allowed = count(
        &direct,
        "select count(*) from tickets where tenant_id = 1 and priority <> 1",
    )
    .await;
    assert!(allowed > 0);

    // An UPDATE without WHERE changes exactly the allowed rows.
    let n = bot
        .execute("update tickets set subject = subject || ' (seen)'", &[])
        .await
        .unwrap();
    assert_eq!(n as i64, allowed);
    assert_eq!(digest(&direct, UNTOUCHABLE_TICKETS).await, untouchable);
    assert_eq!(
        count(
            &direct,
            "select count(*) from tickets where subject like '%(seen)'"
        )
        .await,
        allowed
    );

    // Moving a row out of the agent's tenant, or to priority 1: refused, nothing changed.
    let mine: i32 = direct
        .query_one(
            "select min(id) from tickets where tenant_id = 1 and priority <> 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for (set, policy) in [
        ("tenant_id = 2", "support-writes-own-tickets"),
        ("priority = 1", "no-agent-priority-one"),
    ] {
        let e = bot
            .batch_execute(&format!("update tickets set {set} where id = {mine}"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{e}");
        let m = message(&e);
        assert!(
            m.contains("update policy on public::tickets") && m.contains(policy),
            "{m}"
        );
        let other = if policy == "no-agent-priority-one" {
            "support-writes-own-tickets"
        } else {
            "no-agent-priority-one"
        };
        assert!(!m.contains(other), "only the deciding policy is named: {m}");
    }
    assert_eq!(digest(&direct, UNTOUCHABLE_TICKETS).await, untouchable);
    assert_eq!(
        count(&direct, &format!("select count(*) from tickets where id = {mine} and tenant_id = 1 and priority <> 1")).await,
        1
    );

    // A leaky predicate never sees another tenant's rows (directly, it divides by zero).
    let leaky = "update tickets set subject = subject where 1 / (tenant_id - 2) = 1";
    assert_eq!(bot.execute(leaky, &[]).await.unwrap(), 0);
    let e = direct.execute(leaky, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");

    // A point update by key still uses the key's index (through the fence).
    bot.batch_execute("set enable_seqscan = off").await.unwrap();
    let plan: Vec<String> = bot
        .query(
            &format!("explain update tickets set subject = 'x' where id = {mine}"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Scan using tickets_pkey")),
        "{plan:#?}"
    );

    // DELETE: only the tenant's closed tickets, whatever the WHERE says. (The fixture's
    // tenant-1 tickets are all closed: open one to show it is kept.)
    bot.batch_execute(
        "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
         values (1, 3, 'keep me', 'b', 'open', 2)",
    )
    .await
    .unwrap();
    let closed = count(
        &direct,
        "select count(*) from tickets where tenant_id = 1 and status = 'closed'",
    )
    .await;
    let others = digest(
        &direct,
        "select md5(string_agg(t::text, ',' order by id)) from tickets t where not (tenant_id = 1 and status = 'closed')",
    )
    .await;
    // Another tenant's ticket, and one of the agent's own that is not closed: not deleted.
    for other in [
        "select min(id) from tickets where tenant_id = 2",
        "select min(id) from tickets where subject = 'keep me'",
    ] {
        let id: i32 = direct.query_one(other, &[]).await.unwrap().get(0);
        assert_eq!(
            bot.execute(&format!("delete from tickets where id = {id}"), &[])
                .await
                .unwrap(),
            0,
            "{other}"
        );
    }
    assert_eq!(
        bot.execute("delete from tickets", &[]).await.unwrap() as i64,
        closed
    );
    assert_eq!(
        digest(
            &direct,
            "select md5(string_agg(t::text, ',' order by id)) from tickets t where not (tenant_id = 1 and status = 'closed')",
        )
        .await,
        others
    );

    // RETURNING is masked; a masked column is neither returned in clear nor written blind.
    let row = bot
        .query_one(
            "update customers set tier = 'gold' where id = 3 returning *",
            &[],
        )
        .await
        .unwrap();
    let ssn: Option<String> = row.get("ssn");
    assert_eq!(ssn.as_deref(), Some("***"));
    assert_eq!(row.get::<_, String>("tier"), "gold");
    // A masked column named in RETURNING comes back masked.
    let row = bot
        .query_one(
            "update customers c set tier = 'gold' where id = 3 returning c.ssn, ssn as s",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("***"));
    assert_eq!(row.get::<_, Option<String>>("s").as_deref(), Some("***"));
    for sql in [
        "update customers set ssn = '000' where id = 3",
        "update customers set tier = 'gold' where id = 3 returning ssn || ''",
        "delete from customers where id = 3",
    ] {
        let e = bot.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
    }
    let ssn: Option<String> = direct
        .query_one("select ssn from customers where id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(ssn.as_deref(), Some("000"));
    // Another tenant's customer is not updated (0 rows), and RETURNING shows nothing of it.
    assert!(bot
        .query(
            "update customers set tier = 'gold' where id = 4 returning *",
            &[]
        )
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraint_errors_do_not_echo_rows() {
    let e = Env::start_enforcing();
    let env = &e.env;
    let bot = env.agent().await;
    let direct = env.direct().await;
    // A hidden ticket's key: the unique violation must not print the row or the key.
    let hidden: i32 = direct
        .query_one("select min(id) from tickets where tenant_id = 2", &[])
        .await
        .unwrap()
        .get(0);
    let cases = [
        (
            format!("insert into tickets (id, tenant_id, customer_id, subject, body, status, priority) values ({hidden}, 1, 3, 'secret-subject', 'b', 'open', 2)"),
            "23505",
        ),
        (
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) values (1, 999999, 'secret-subject', 'b', 'open', 2)".to_string(),
            "23503",
        ),
        (
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) values (1, 3, 'secret-subject', 'b', 'bogus', 2)".to_string(),
            "23514",
        ),
    ];
    for (sql, code) in cases {
        let e = bot.batch_execute(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), code, "{sql}: {e}");
        let db = e.as_db_error().unwrap();
        let all = format!("{db:?}");
        assert!(
            !all.contains("secret-subject")
                && !all.contains("999999")
                && !all.contains(&format!("({hidden})")),
            "{all}"
        );
        assert!(
            db.detail().unwrap_or_default().contains("withheld"),
            "{all}"
        );
        // Directly, PostgreSQL prints them (the test would catch a leak).
        let d = direct.batch_execute(&sql).await.unwrap_err();
        let d = format!("{:?}", d.as_db_error().unwrap());
        assert!(
            d.contains("secret-subject")
                || d.contains("999999")
                || d.contains(&format!("({hidden})")),
            "{d}"
        );
    }
    assert_eq!(
        count(&bot, "select count(*) from tickets where tenant_id = 2").await,
        0
    );
}

/// `INSERT … ON CONFLICT` under PostgreSQL's RLS rules for upserts: the conflicting row must be
/// readable and updatable (else 42501, revealing nothing of it), the updated row must pass the
/// update policy, and DO NOTHING never touches a hidden row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_update_only_rows_the_agent_may_update() {
    let e = Env::start_enforcing();
    let env = &e.env;
    let bot = env.agent().await;
    let direct = env.direct().await;
    let others = || {
        digest(
            &direct,
            "select md5(string_agg(t::text, ',' order by id)) from tickets t where not (tenant_id = 1 and priority <> 1)",
        )
    };
    let before_others = others().await;
    let own: i32 = direct
        .query_one(
            "select min(id) from tickets where tenant_id = 1 and priority <> 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let hidden: i32 = direct
        .query_one("select min(id) from tickets where tenant_id = 2", &[])
        .await
        .unwrap()
        .get(0);
    let upsert = |id: i32, tenant: i32, tail: &str| {
        format!(
            "insert into tickets as t (id, tenant_id, customer_id, subject, body, status, priority) \
             values ({id}, {tenant}, 3, 'upserted-subject', 'b', 'open', 2) on conflict (id) {tail}"
        )
    };

    // A conflict with the agent's own ticket updates it; RETURNING shows the updated row.
    let rows = bot
        .query(
            &upsert(
                own,
                1,
                "do update set subject = excluded.subject || '/' || t.status returning id, subject",
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let status: String = direct
        .query_one("select status from tickets where id = $1", &[&own])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows[0].get::<_, String>(1),
        format!("upserted-subject/{status}")
    );
    // No conflict: the row is inserted (extended protocol, parameters).
    let fresh: i32 = direct
        .query_one("select max(id) + 1000 from tickets", &[])
        .await
        .unwrap()
        .get(0);
    let n = bot
        .execute(
            "insert into tickets (id, tenant_id, customer_id, subject, body, status, priority) \
             values ($1, 1, 3, $2, 'b', 'open', 2) \
             on conflict (id) do update set subject = excluded.subject",
            &[&fresh, &"new"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        count(
            &direct,
            &format!("select count(*) from tickets where id = {fresh} and subject = 'new'")
        )
        .await,
        1
    );

    // A conflict with another tenant's ticket: refused, naming the policies, and the message
    // says nothing of the hidden row; the hidden row is unchanged.
    let e = bot
        .batch_execute(&upsert(
            hidden,
            1,
            "do update set subject = excluded.subject",
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let m = message(&e);
    assert!(
        m.contains("conflicts with is not one this agent may update")
            && m.contains("support-writes-own-tickets"),
        "{m}"
    );
    let all = format!("{:?}", e.as_db_error().unwrap());
    assert!(
        !all.contains("tenant_id = 2") && !all.contains("Detail: Some(\"Key"),
        "{all}"
    );
    // Its WHERE is not run on the hidden row either (it would leak through a failing cast).
    let e = bot
        .batch_execute(&upsert(
            hidden,
            1,
            "do update set subject = 'x' where t.subject::int > 0",
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert!(!message(&e).contains("invalid input syntax"), "{e}");
    // The updated row must pass the update policy: moving the ticket to tenant 2, or making it
    // priority 1, aborts the statement.
    for tail in [
        "do update set tenant_id = 2",
        "do update set (priority, subject) = (1, 'p1')",
    ] {
        let e = bot.batch_execute(&upsert(own, 1, tail)).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{tail}: {e}");
        assert!(
            message(&e).contains("update policy on public::tickets"),
            "{}",
            message(&e)
        );
    }
    // DO NOTHING on a hidden row: nothing happens, nothing is shown.
    let rows = bot
        .query(&upsert(hidden, 1, "do nothing returning *"), &[])
        .await
        .unwrap();
    assert!(rows.is_empty());
    // The proposed row is checked as any INSERT: another tenant's row is refused.
    let e = bot
        .batch_execute(&upsert(fresh + 1, 2, "do nothing"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert_eq!(
        others().await,
        before_others,
        "no other tenant's ticket moved"
    );
    assert_eq!(
        count(
            &direct,
            &format!("select count(*) from tickets where id = {}", fresh + 1)
        )
        .await,
        0
    );
}

/// `SELECT … FOR UPDATE SKIP LOCKED`, as agent work queues take jobs: only the rows returned are
/// locked, only rows the agent may read *and* update can be locked, and SKIP LOCKED / NOWAIT
/// behave as in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_locks_take_only_returned_rows_the_agent_may_update() {
    let e = Env::start_enforcing();
    let env = &e.env;
    let take = "select id, tenant_id from tickets where status = 'closed' and priority <> 1 \
                order by id limit 1 for update skip locked";
    let mut worker_a = env.agent().await;
    let mut worker_b = env.agent().await;
    let ta = worker_a.transaction().await.unwrap();
    let a = ta.query_one(take, &[]).await.unwrap();
    let a_id: i32 = a.get(0);
    assert_eq!(a.get::<_, i32>(1), 1);
    // A second worker skips the locked job and takes the next one.
    let tb = worker_b.transaction().await.unwrap();
    let b = tb.query_one(take, &[]).await.unwrap();
    let b_id: i32 = b.get(0);
    assert_ne!(a_id, b_id);
    assert_eq!(b.get::<_, i32>(1), 1);
    // NOWAIT on a job another worker holds fails at once.
    let e = tb
        .query(
            "select id from tickets where id = $1 for update nowait",
            &[&a_id],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55P03", "{e}");
    tb.rollback().await.unwrap();

    // Only the returned row is locked: every other ticket can be locked directly at once.
    let direct = env.direct().await;
    let others: i64 = direct
        .query_one(
            "select count(*) from (select id from tickets where id <> $1 for update nowait) t",
            &[&a_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(others > 100, "{others}");
    let e = direct
        .query(
            "select id from tickets where id = $1 for update nowait",
            &[&a_id],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55P03", "the returned row is locked: {e}");
    ta.rollback().await.unwrap();

    let bot = env.agent().await;
    // `*` is the row as a read shows it; nothing of the joined table appears.
    let plain = bot
        .query("select * from tickets order by id limit 1", &[])
        .await
        .unwrap();
    let locked = bot
        .query("select * from tickets order by id limit 1 for share", &[])
        .await
        .unwrap();
    let names = |rows: &[tokio_postgres::Row]| -> Vec<String> {
        rows[0]
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect()
    };
    assert_eq!(names(&plain), names(&locked));
    assert_eq!(plain[0].get::<_, i32>("id"), locked[0].get::<_, i32>("id"));
    // Priority-1 tickets are readable but not updatable: none can be locked.
    assert!(count(&bot, "select count(*) from tickets where priority = 1").await > 0);
    assert!(bot
        .query("select id from tickets where priority = 1 for update", &[])
        .await
        .unwrap()
        .is_empty());
    // Another tenant's rows are neither returned nor locked.
    assert!(bot
        .query("select id from tickets where tenant_id = 2 for update", &[])
        .await
        .unwrap()
        .is_empty());
    // The auditor reads everything but may update nothing: its locks are refused.
    let auditor = connect(&env.url(AUDITOR, AUDITOR_SECRET)).await.unwrap();
    let e = auditor
        .query("select id from tickets limit 1 for update", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert!(
        message(&e).contains("locking needs update"),
        "{}",
        message(&e)
    );

    // A column added since Portcullis read the catalog is not reachable through the table
    // joined for the lock: the locking query returns nothing until the catalog is refreshed.
    direct
        .batch_execute("alter table tickets add column added_later text default 'unfenced'")
        .await
        .unwrap();
    match bot
        .query(
            "select added_later from tickets where tenant_id = 1 for update",
            &[],
        )
        .await
    {
        Ok(rows) => assert!(rows.is_empty(), "{:?}", rows[0]),
        Err(e) => assert_ne!(sqlstate(&e), "", "{e}"),
    }
}

/// An INSERT that leaves a checked column to its default (SQLAlchemy and LlamaIndex omit
/// columns with server defaults): a constant default is written explicitly and checked, so the
/// row checked is the row stored, even after the default changes; any other default is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omitted_checked_columns_are_checked_at_their_default() {
    let e = Env::start_enforcing();
    let env = &e.env;
    let bot = env.agent().await;
    let direct = env.direct().await;
    let omit = |subject: &str| {
        format!(
            "insert into tickets (tenant_id, customer_id, subject, body, status) \
             values (1, 3, '{subject}', 'b', 'open') returning priority"
        )
    };
    // priority (default 3) is read by no-agent-priority-one.
    let rows = bot.query(&omit("default three"), &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i16>(0), 3);
    let rows = bot
        .query(
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
                values (1, 3, 'explicit default', 'b', 'open', default) returning priority",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i16>(0), 3);

    // The DBA makes new tickets priority 1. Until Portcullis reads the catalog again, it writes
    // the default it checked (3), never an unchecked 1.
    direct
        .batch_execute("alter table tickets alter column priority set default 1")
        .await
        .unwrap();
    let rows = bot.query(&omit("stale default"), &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i16>(0), 3);
    refresh_catalog(env);
    let e = bot.query(&omit("priority one"), &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(
        message(&e).contains("no-agent-priority-one"),
        "{}",
        message(&e)
    );
    assert_eq!(
        count(
            &direct,
            "select count(*) from tickets where subject = 'priority one'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&direct, "select count(*) from tickets where priority = 1 and subject in ('default three', 'explicit default', 'stale default')").await,
        0
    );

    // A default that is not a constant cannot be checked before the write: refused.
    direct
        .batch_execute("alter table tickets alter column priority set default (1 + floor(random() * 5))::smallint")
        .await
        .unwrap();
    refresh_catalog(env);
    let e = bot.query(&omit("volatile"), &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(message(&e).contains("not a constant"), "{}", message(&e));
    // Naming the column explicitly works as before.
    bot.batch_execute(
        "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
         values (1, 3, 'named', 'b', 'open', 2)",
    )
    .await
    .unwrap();
}

/// A read-only WITH in front of a write (as ORMs and analysts write it) runs with its WITH
/// queries read through the fence: the agent's own rows change, nothing else is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_with_in_front_of_a_write_reads_through_the_fence() {
    let e = Env::start_enforcing();
    let env = &e.env;
    let bot = env.agent().await;
    let direct = env.direct().await;
    let untouchable = digest(&direct, UNTOUCHABLE_TICKETS).await;
    let visible_open = count(
        &direct,
        "select count(*) from tickets where tenant_id = 1 and status = 'open' and priority <> 1",
    )
    .await;
    // Every customer is named in the WITH query; only tenant 1's tickets change.
    let n = bot
        .execute(
            "with c as (select id from customers) \
             update tickets set status = 'pending' \
             where customer_id in (select id from c) and status = 'open'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n as i64, visible_open);
    assert_eq!(digest(&direct, UNTOUCHABLE_TICKETS).await, untouchable);
    // INSERT … SELECT from a WITH query of the agent's own customers, with RETURNING.
    let rows = bot
        .query(
            "with mine(cid) as (select id from customers where tier = 'standard' order by id limit 2) \
             insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             select 1, cid, 'from with', 'b', 'open', 2 from mine returning customer_id",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [3, 6]);
    // A WITH query that writes is refused, and so is a new row the policy forbids.
    let err = bot
        .batch_execute(
            "with c as (select 2 as t) insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             select t, 4, 's', 'b', 'open', 2 from c",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{}", message(&err));
    assert_eq!(digest(&direct, UNTOUCHABLE_TICKETS).await, untouchable);
}

/// MERGE by PostgreSQL's RLS rules, action by action: hidden target rows never match (and the
/// agent's ON condition never runs on them), matched rows are updated or deleted only where
/// the policy allows it (otherwise the statement aborts), and new rows pass the insert check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_follows_row_security_action_by_action() {
    let e = Env::start_enforcing();
    let env = &e.env;
    let bot = env.agent().await;
    let direct = env.direct().await;
    let untouchable = digest(&direct, UNTOUCHABLE_TICKETS).await;
    let mine = count(
        &direct,
        "select count(*) from tickets where tenant_id = 1 and priority <> 1",
    )
    .await;
    // Every ticket id is in the source; only the agent's updatable tickets change. The ON
    // condition divides by zero on tenant 2's rows: it must never run on them.
    let n = bot
        .execute(
            "merge into tickets t using generate_series(1, 500) as s(id) \
             on t.id = s.id and 1 / (t.tenant_id - 2) > -100 \
             when matched and t.priority <> 1 then update set subject = 'merged ' || s.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n as i64, mine);
    assert_eq!(digest(&direct, UNTOUCHABLE_TICKETS).await, untouchable);
    // A hidden row is "not matched": inserting in its place collides on the key, revealing no
    // more than a plain INSERT would, and changes nothing.
    let hidden: i32 = direct
        .query_one("select min(id) from tickets where tenant_id = 2", &[])
        .await
        .unwrap()
        .get(0);
    let err = bot
        .batch_execute(&format!(
            "merge into tickets t using (select {hidden} as id) s on t.id = s.id \
             when matched then update set subject = 'stolen' \
             when not matched then insert (id, tenant_id, customer_id, subject, body, status, priority) \
             values (s.id, 1, 3, 'stolen', 'b', 'open', 2)"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "23505", "{}", message(&err));
    assert_eq!(digest(&direct, UNTOUCHABLE_TICKETS).await, untouchable);
    // Inserts are checked: tenant 1 (priority left to its default, 3) passes; tenant 2 aborts.
    let n = bot
        .execute(
            "merge into tickets t using (values (3, 'new via merge')) s(cid, subj) on false \
             when not matched then insert (tenant_id, customer_id, subject, body, status) \
             values (1, s.cid, s.subj, 'b', 'open')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        count(
            &direct,
            "select count(*) from tickets where subject = 'new via merge' and priority = 3"
        )
        .await,
        1
    );
    for (sql, why) in [
        (
            "merge into tickets t using (values (4)) s(cid) on false when not matched then \
             insert (tenant_id, customer_id, subject, body, status, priority) values (2, s.cid, 'x', 'b', 'open', 2)",
            "support-writes-own-tickets",
        ),
        // A matched row the agent may read but not delete (open) aborts the statement.
        (
            "merge into tickets t using (select id from tickets where status = 'open' and priority <> 1) s \
             on t.id = s.id when matched then delete",
            "not one this agent may delete",
        ),
        // The updated row must pass the update policy.
        (
            "merge into tickets t using (select min(id) as id from tickets where priority <> 1) s \
             on t.id = s.id when matched then update set priority = 1",
            "no-agent-priority-one",
        ),
        // Target columns the agent reads masked cannot be named, nor written.
        (
            "merge into customers c using (select 3 as id) s on c.id = s.id and c.ssn like '0%' \
             when matched then update set name = 'x'",
            "only columns of public::customers this agent reads in clear",
        ),
        (
            "merge into customers c using (select 3 as id) s on c.id = s.id when matched then update set ssn = 'x'",
            "may not read in clear",
        ),
    ] {
        let err = bot.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{sql}: {}", message(&err));
        assert!(message(&err).contains(why), "{sql}: {}", message(&err));
    }
    assert_eq!(digest(&direct, UNTOUCHABLE_TICKETS).await, untouchable);
    // Deleting matched closed tickets is allowed.
    const OTHER_TENANTS: &str = "select coalesce(md5(string_agg(t::text, ',' order by id)), '') \
                                 from tickets t where tenant_id <> 1";
    let others = digest(&direct, OTHER_TENANTS).await;
    let closed = count(
        &direct,
        "select count(*) from tickets where tenant_id = 1 and status = 'closed'",
    )
    .await;
    let n = bot
        .execute(
            "merge into tickets t using (select id from tickets where status = 'closed') s \
             on t.id = s.id when matched then delete",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n as i64, closed);
    // (Closed priority-1 tickets may be deleted; other tenants' tickets are untouched.)
    assert_eq!(digest(&direct, OTHER_TENANTS).await, others);
}

/// Assigning to `varchar(n)` silently drops trailing spaces beyond `n`: the check sees the
/// value as it will be stored, so `'pending '` into `varchar(7)` is checked as `'pending'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_spaces_cut_by_varchar_n_are_cut_before_the_check() {
    let set = tempfile::tempdir().unwrap();
    copy_files("policies/examples/finance", set.path());
    let writes = set.path().join("writes.cedar");
    let text = std::fs::read_to_string(&writes).unwrap()
        + r#"
@id("no-pending-inserts")
forbid (principal, action == Action::"insert", resource is public::tickets)
when { resource.status == "pending" };
"#;
    std::fs::write(&writes, text).unwrap();
    let env = Env::start_with_policies(set.path());
    let direct = env.direct().await;
    direct
        .batch_execute("alter table tickets alter column status type varchar(7)")
        .await
        .unwrap();
    refresh_catalog(&env);
    let bot = env.agent().await;
    for status in ["pending", "pending ", "pending   "] {
        let err = bot
            .batch_execute(&format!(
                "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
                 values (1, 3, 'pad', 'b', '{status}', 2)"
            ))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{status:?}: {}", message(&err));
        assert!(
            message(&err).contains("no-pending-inserts"),
            "{}",
            message(&err)
        );
    }
    // Updates and upserts are cut the same way.
    bot.batch_execute(
        "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
         values (1, 3, 'pad', 'b', 'open', 2)",
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &direct,
            "select count(*) from tickets where subject = 'pad' and status = 'closed'"
        )
        .await,
        0
    );
    // Too long for the column with more than spaces: refused (by the check, which sees it cut,
    // or by PostgreSQL's own length error), nothing written.
    let err = bot
        .batch_execute(
            "insert into tickets (tenant_id, customer_id, subject, body, status, priority) \
             values (1, 3, 'pad', 'b', 'pendingx', 2)",
        )
        .await
        .unwrap_err();
    assert!(
        ["42501", "22001"].contains(&sqlstate(&err).as_str()),
        "{}",
        message(&err)
    );
    assert_eq!(
        count(
            &direct,
            "select count(*) from tickets where subject = 'pad' and status <> 'open'"
        )
        .await,
        0
    );
}
