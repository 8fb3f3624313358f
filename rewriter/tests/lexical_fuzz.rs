//! Differential fuzzing of the gate's lexical agreement with PostgreSQL, no database needed:
//! statements full of quotes, backslashes, dollar quotes, `U&`, comment openers, newlines,
//! non-ASCII and prefix operators are generated; whenever the gate accepts one, PostgreSQL's
//! own parser (libpg_query 15) must read the forwarded text exactly as it reads the client's
//! text: the same statements, relations, function calls and constants.
//!
//! The default run tries `PORTCULLIS_FUZZ_CASES` cases (2,000 unless set); a long run:
//! `PORTCULLIS_FUZZ_CASES=200000 cargo test -p rewriter --release --test lexical_fuzz -- --nocapture`.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rewriter::{check, postgres_reading, Protocol};

/// Characters and sequences where lexers disagree.
fn content() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("'"),
            Just("\\"),
            Just("\""),
            Just("$"),
            Just("$$"),
            Just("$q$"),
            Just("U&"),
            Just("\n"),
            Just("--"),
            Just("/*"),
            Just("*/"),
            Just(";"),
            Just("é"),
            Just("x"),
            Just(" "),
            Just("E'"),
            Just("\\'"),
            Just("''"),
            Just("SELECT ssn FROM customers"),
            Just("\u{2028}"),
            Just("\t"),
        ],
        0..10,
    )
    .prop_map(|v| v.concat())
}

/// A constant or identifier spelled by a client, well-formed or not.
fn token() -> impl Strategy<Value = String> {
    (content(), 0..9u8).prop_map(|(c, form)| match form {
        0 => format!("'{}'", c.replace('\'', "''")),
        1 => format!("'{c}'"),
        2 => format!("E'{}'", c.replace('\\', "\\\\").replace('\'', "\\'")),
        3 => format!("E'{c}'"),
        4 => format!("$q${c}$q$"),
        5 => format!("\"{}\"", c.replace('"', "\"\"")),
        6 => format!("\"{c}\""),
        7 => format!("U&'{}'", c.replace('\'', "''").replace('\\', "\\\\")),
        _ => c,
    })
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => token(),
        1 => Just("- -1".to_string()),
        1 => Just("-(-x)".to_string()),
        1 => Just("1_000".to_string()),
        1 => Just("0x1F".to_string()),
        1 => Just(".5e3".to_string()),
        1 => Just("$1".to_string()),
        1 => Just("lower(name)".to_string()),
        1 => Just("CAST(1 AS mytype('a) ; select 1 --'))".to_string()),
        1 => Just("(SELECT ssn FROM customers)".to_string()),
    ]
}

/// Mostly statements the gate accepts, so that forwarding is exercised.
fn statement() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(fragment(), 1..4),
        prop::option::of(token()),
        any::<bool>(),
        prop::option::of(fragment()),
        prop::option::of(content()),
    )
        .prop_map(|(items, alias, from, filter, tail)| {
            let mut sql = format!("SELECT {}", items.join(", "));
            if let Some(a) = alias {
                sql.push_str(&format!(" AS {a}"));
            }
            if from {
                sql.push_str(" FROM customers");
            }
            if let Some(f) = filter {
                sql.push_str(&format!(" WHERE name = {f}"));
            }
            if let Some(t) = tail {
                sql.push_str(&t);
            }
            sql
        })
}

fn cases() -> u32 {
    std::env::var("PORTCULLIS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn forwarded_text_reads_in_postgresql_as_the_clients_text() {
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&statement(), |sql| {
        let Ok(checked) = check(&sql, Protocol::Simple) else {
            return Ok(()); // refused: nothing forwarded
        };
        accepted.set(accepted.get() + 1);
        let forwarded = postgres_reading(&checked.sql).map_err(|e| {
            TestCaseError::fail(format!("{sql:?} forwarded as {:?}: {e}", checked.sql))
        })?;
        let original = postgres_reading(&sql).map_err(|e| {
            TestCaseError::fail(format!(
                "{sql:?}: PostgreSQL refuses the client's text ({e}) but the gate forwarded {:?}",
                checked.sql
            ))
        })?;
        prop_assert_eq!(
            &original,
            &forwarded,
            "{:?} forwarded as {:?}",
            sql,
            checked.sql
        );
        Ok(())
    });
    println!(
        "lexical fuzz: {cases} statements generated, {} accepted and read alike by PostgreSQL",
        accepted.get()
    );
    result.unwrap();
    assert!(
        accepted.get() > cases / 10,
        "the generator should mostly produce accepted SQL"
    );
}

/// The attack from issue 9, its identifier and single-statement variants, and
/// client-side interpolation (psycopg2 doubles quotes and leaves backslashes).
#[test]
fn the_reported_attacks_forward_as_data() {
    let param = r"x\'; SELECT ssn FROM customers; --";
    let interpolated = format!("SELECT '{}'", param.replace('\'', "''"));
    for sql in [
        r"SELECT 'x\''; SELECT ssn FROM customers; -- '",
        r#"SELECT 1 AS "a\""; SELECT ssn FROM customers; --""#,
        r"SELECT 'a\'' , (SELECT max(ssn) FROM customers) --'",
        &interpolated,
    ] {
        let forwarded = check(sql, Protocol::Simple).unwrap().sql;
        let reading = postgres_reading(&forwarded).unwrap();
        assert_eq!(
            reading,
            postgres_reading(sql).unwrap(),
            "{sql} -> {forwarded}"
        );
        assert_eq!(reading.statements, 1, "{forwarded}");
        assert!(reading.relations.is_empty(), "{forwarded}");
    }
}
