//! Lexical agreement end to end: what Portcullis forwards must lex in PostgreSQL exactly as
//! Portcullis parsed it. The real binary enforces the finance policy in front of a real
//! PostgreSQL; the attacks of issue 9 (a backslash before a quote in a string or identifier,
//! through the simple and extended protocols and client-side interpolation, in reads and
//! writes) must come back as the data the agent wrote, and arbitrary strings and identifiers
//! must round-trip exactly (property tests, counts printed).

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio_postgres::SimpleQueryMessage;

/// (column names, rows as text) of a simple-protocol query.
async fn simple(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), tokio_postgres::Error> {
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            names = r.columns().iter().map(|c| c.name().to_string()).collect();
            rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok((names, rows))
}

fn text(v: &str) -> Vec<Vec<Option<String>>> {
    vec![vec![Some(v.to_string())]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reported_attacks_return_the_agents_data_and_nothing_else() {
    let e = Env::start_enforcing();
    let bot = e.env.agent().await;
    let direct = e.env.direct().await;

    // The report: one Query message whose second statement PostgreSQL ran unrewritten.
    let sql = r"SELECT 'x\''; SELECT ssn FROM customers; -- '";
    let got = simple(&bot, sql).await.unwrap();
    assert_eq!(got.1, text(r"x\'; SELECT ssn FROM customers; -- "));
    assert_eq!(
        got,
        simple(&direct, sql).await.unwrap(),
        "as PostgreSQL reads it"
    );

    // The same through a quoted identifier.
    let sql = r#"SELECT 1 AS "a\""; SELECT ssn FROM customers; --""#;
    let got = simple(&bot, sql).await.unwrap();
    assert_eq!(got.0, [r#"a\"; SELECT ssn FROM customers; --"#]);
    assert_eq!(got.1, text("1"));

    // One statement, extended protocol: the subquery is inside the string.
    let sql = r"SELECT 'a\'' , (SELECT max(ssn) FROM customers) --'";
    let rows = bot.query(sql, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].len(), 1, "one column: the string");
    assert_eq!(
        rows[0].get::<_, String>(0),
        r"a\' , (SELECT max(ssn) FROM customers) --"
    );

    // Correctly parameterized client code that interpolates client-side (psycopg2 doubles
    // quotes and, with standard_conforming_strings on, leaves backslashes alone).
    let param = r"x\'; SELECT ssn FROM customers; --";
    let interpolated = format!("SELECT '{}'", param.replace('\'', "''"));
    assert_eq!(simple(&bot, &interpolated).await.unwrap().1, text(param));
    // …and server-side parameters, for contrast.
    let rows = bot.query("SELECT $1::text", &[&param]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), param);

    // A write: with sqlparser's spelling, the second UPDATE ran over every tenant's rows.
    let sql = r"UPDATE customers SET name = 'x\''; UPDATE customers SET tier = tier || name; --' WHERE id = 3";
    bot.batch_execute(sql).await.unwrap();
    let check = simple(
        &direct,
        "SELECT name FROM customers WHERE id = 3 \
         UNION ALL SELECT count(*)::text FROM customers \
         WHERE tier NOT IN ('standard', 'gold', 'platinum')",
    )
    .await
    .unwrap();
    assert_eq!(
        check.1,
        vec![
            vec![Some(
                r"x\'; UPDATE customers SET tier = tier || name; --".to_string()
            )],
            vec![Some("0".to_string())]
        ]
    );

    // Identifiers over 63 bytes mean what PostgreSQL makes of them: their first 63 bytes.
    let long = "c".repeat(70);
    let sql = format!(
        "SELECT {long}.id AS \"{long}\" FROM customers AS {long} \
         WHERE {long}.tenant_id = 1 ORDER BY 1 LIMIT 1"
    );
    let got = simple(&bot, &sql).await.unwrap();
    assert_eq!(got.0, ["c".repeat(63)]);
    assert_eq!(
        got,
        simple(&direct, &sql).await.unwrap(),
        "as PostgreSQL reads it"
    );

    // Forms Portcullis cannot spell exactly are refused, and the session goes on.
    for sql in [
        "SELECT 1_000",
        "SELECT 0x1F",
        "SELECT E'\\0'",
        "SELECT - - 1 --",
    ] {
        match simple(&bot, sql).await {
            Err(err) => assert!(
                ["0A000", "42501", "42601"].contains(&sqlstate(&err).as_str()),
                "{sql}: {}",
                message(&err)
            ),
            Ok(got) if sql == "SELECT - - 1 --" => assert_eq!(got.1, text("1")),
            Ok(got) => panic!("{sql}: expected a refusal, got {got:?}"),
        }
    }
    assert_eq!(simple(&bot, "SELECT 'ok'").await.unwrap().1, text("ok"));
}

/// Characters and sequences where lexers disagree (no NUL: a query text cannot hold one).
fn content(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("'".to_string()),
            Just("\\".to_string()),
            Just("\"".to_string()),
            Just("$".to_string()),
            Just("$$".to_string()),
            Just("U&".to_string()),
            Just("\n".to_string()),
            Just("\r\n".to_string()),
            Just("--".to_string()),
            Just("/*".to_string()),
            Just("*/".to_string()),
            Just(";".to_string()),
            Just("\\'".to_string()),
            Just("E'".to_string()),
            "[a-zA-Z0-9 ]{1,3}",
            "[\\u{80}-\\u{10FFFF}]",
            "[\\u{1}-\\u{1F}]",
        ],
        0..max,
    )
    .prop_map(|v| v.concat())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn arbitrary_strings_and_identifiers_round_trip() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = Env::start_enforcing();
    let bot = rt.block_on(e.env.agent());

    // Strings, written by the agent in each of PostgreSQL's forms, come back exactly.
    let strings = 400;
    runner(strings)
        .run(&(content(12), 0..3u8), |(value, form)| {
            let literal = match form {
                0 => format!("'{}'", value.replace('\'', "''")),
                1 => format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "\\'")),
                _ if value.contains("$pc$") => return Ok(()),
                _ => format!("$pc${value}$pc$"),
            };
            let sql = format!("SELECT {literal}, (SELECT count(*) FROM customers)");
            let got = rt
                .block_on(simple(&bot, &sql))
                .map_err(|err| TestCaseError::fail(format!("{sql:?}: {}", message(&err))))?;
            prop_assert_eq!(
                got.1,
                vec![vec![Some(value.clone()), Some("10".to_string())]],
                "{:?}",
                sql
            );
            Ok(())
        })
        .unwrap();

    // Identifiers as column aliases and in a derived table come back exactly.
    let identifiers = 300;
    runner(identifiers)
        .run(&content(14), |name| {
            if name.is_empty() {
                return Ok(());
            }
            // PostgreSQL keeps the first 63 bytes, at a character boundary.
            let mut end = name.len().min(63);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            let expected = name[..end].to_string();
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            let sql = format!("SELECT s.{quoted} FROM (SELECT 1 AS {quoted}) AS s");
            let got = rt
                .block_on(simple(&bot, &sql))
                .map_err(|err| TestCaseError::fail(format!("{sql:?}: {}", message(&err))))?;
            prop_assert_eq!(&got.0, &vec![expected], "{:?}", sql);
            prop_assert_eq!(got.1, text("1"), "{:?}", sql);
            Ok(())
        })
        .unwrap();
    println!(
        "round trips through portcullis: {strings} strings, {identifiers} identifiers generated"
    );
}
