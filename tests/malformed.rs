//! Bad input at the wire level, with a raw socket: malformed, oversized and unknown messages,
//! garbage bytes, refused protocol features, and clients that vanish mid-query. Each bad session
//! ends (08P01 or a plain close) or gets a clean error, and every other session keeps working.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::raw::{query, Raw};
use common::*;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Another session still works after each bad one.
async fn others_still_work(env: &Env) {
    let c = env.agent().await;
    let n: i64 = c
        .query_one("select count(*) from customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 30);
}

async fn expect_fatal_and_close(r: &mut Raw, code: &str) {
    let (codes, ready) = r.until_ready().await;
    assert_eq!(codes, [code.to_string()]);
    assert!(!ready, "the session must end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_end_only_that_session() {
    let env = Env::start();
    let survivor = env.agent().await;

    // A length below the minimum.
    let mut r = Raw::login(&env).await;
    r.send(b"Q\0\0\0\x02").await;
    expect_fatal_and_close(&mut r, "08P01").await;

    // A negative length.
    let mut r = Raw::login(&env).await;
    r.send(b"Q\xff\xff\xff\xf0").await;
    expect_fatal_and_close(&mut r, "08P01").await;

    // A message larger than the limit is refused from its header, before it is buffered.
    let mut r = Raw::login(&env).await;
    r.send(b"Q\x7f\xff\xff\xff").await;
    expect_fatal_and_close(&mut r, "08P01").await;

    // An unknown message type.
    let mut r = Raw::login(&env).await;
    r.send(b"z\0\0\0\x04").await;
    expect_fatal_and_close(&mut r, "08P01").await;

    // A Parse whose parameter-type count does not match its length.
    let mut r = Raw::login(&env).await;
    let mut b = BytesMut::new();
    frontend::parse("", "select 1", [23u32, 23], &mut b).unwrap();
    let n = b.len();
    b.truncate(n - 4);
    let len = (b.len() - 1) as i32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    r.send(&b).await;
    expect_fatal_and_close(&mut r, "08P01").await;

    // Garbage instead of a startup packet.
    let mut r = Raw::open(&env).await;
    r.send(b"\x16\x03\x01\x02\x00garbage-garbage-garbage").await;
    let (_, ready) = r.until_ready().await;
    assert!(!ready);

    // A startup packet with an unterminated parameter list.
    let mut r = Raw::open(&env).await;
    let mut b = BytesMut::new();
    b.put_i32(4 + 4 + 8);
    b.put_i32(196608);
    b.put_slice(b"user\0bot");
    r.send(&b).await;
    expect_fatal_and_close(&mut r, "08P01").await;

    // Protocol 2 is refused.
    let mut r = Raw::open(&env).await;
    let mut b = BytesMut::new();
    b.put_i32(8 + 10);
    b.put_i32(2 << 16);
    b.put_slice(b"user\0bot\0\0");
    r.send(&b).await;
    expect_fatal_and_close(&mut r, "0A000").await;

    let n: i64 = survivor
        .query_one("select count(*) from tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 120);
    others_still_work(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_protocol_features_get_clean_errors() {
    let env = Env::start();

    // The legacy function-call message: an error, and the session goes on.
    let mut r = Raw::login(&env).await;
    let mut b = BytesMut::new();
    b.put_u8(b'F');
    b.put_i32(4 + 4 + 2 + 2 + 2);
    b.put_i32(1598); // pg_catalog.pg_backend_pid()'s OID would do; any OID must be refused
    b.put_i16(0);
    b.put_i16(0);
    b.put_i16(0);
    r.send(&b).await;
    let (codes, ready) = r.until_ready().await;
    assert_eq!(codes, ["0A000"]);
    assert!(ready);
    r.send(&query("select 1")).await;
    assert_eq!(r.until_ready().await, (vec![], true));

    // Invalid UTF-8 in a query: an error, and the session goes on.
    let mut b = BytesMut::new();
    b.put_u8(b'Q');
    b.put_i32(4 + 11);
    b.put_slice(b"select '\xff'\0");
    r.send(&b).await;
    assert_eq!(r.until_ready().await, (vec!["22021".to_string()], true));

    // A refused Parse makes the proxy skip to Sync, as PostgreSQL does after an error.
    let mut b = BytesMut::new();
    frontend::parse("", "SET ROLE postgres", std::iter::empty::<u32>(), &mut b).unwrap();
    frontend::bind(
        "",
        "",
        std::iter::empty::<i16>(),
        std::iter::empty::<i32>(),
        |_: i32,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            unreachable!()
        },
        Some(0),
        &mut b,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    r.send(&b).await;
    assert_eq!(r.until_ready().await, (vec!["42501".to_string()], true));

    // Replication connections, non-UTF8 encodings, and unknown startup parameters are refused
    // (once the agent has authenticated: before that, every failure looks alike).
    for params in [
        &[("user", AGENT), ("replication", "database")][..],
        &[("user", AGENT), ("replication", "true")][..],
        &[("user", AGENT), ("client_encoding", "LATIN1")][..],
        &[("user", AGENT), ("session_authorization", "postgres")][..],
        &[("user", AGENT), ("role", "postgres")][..],
    ] {
        let mut r = Raw::open(&env).await;
        let (codes, ready) = r.authenticate(params).await;
        assert_eq!(codes.len(), 1, "{params:?}");
        assert!(!ready, "{params:?}");
    }
    others_still_work(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_query_has_its_query_cancelled() {
    let env = Env::start();
    let direct = env.direct().await;
    let mut r = Raw::login(&env).await;
    r.send(&query("select pg_sleep(60) /* vanishing */")).await;
    let running = "select count(*) from pg_stat_activity where query like '%pg_sleep(60)%' \
                   and state = 'active' and pid <> pg_backend_pid()";
    let mut seen = false;
    for _ in 0..50 {
        let n: i64 = direct.query_one(running, &[]).await.unwrap().get(0);
        if n == 1 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the query must be running upstream");
    drop(r);
    let mut gone = false;
    for _ in 0..50 {
        let n: i64 = direct.query_one(running, &[]).await.unwrap().get(0);
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the upstream query must be cancelled within 5 s of the client vanishing"
    );
    others_still_work(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_deep_queries_are_refused_not_fatal() {
    let env = Env::start();
    let mut r = Raw::login(&env).await;
    // Over max_query_bytes (1 MiB by default) but under max_message_bytes.
    let big = format!("select '{}'", "x".repeat(2 << 20));
    r.send(&query(&big)).await;
    assert_eq!(r.until_ready().await, (vec!["54000".to_string()], true));
    // Nesting deeper than the parser's limit.
    let deep = format!("select {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    r.send(&query(&deep)).await;
    assert_eq!(r.until_ready().await, (vec!["42601".to_string()], true));
    r.send(&query("select 1")).await;
    assert_eq!(r.until_ready().await, (vec![], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_is_declined_and_a_wrong_cancel_key_cancels_nothing() {
    let env = Env::start();
    // GSSENCRequest: 'N', then the client may go on with a normal startup on the same socket.
    let mut r = Raw::open(&env).await;
    let mut b = BytesMut::new();
    b.put_i32(8);
    b.put_i32(80877104);
    r.send(&b).await;
    let mut answer = [0u8; 1];
    r.s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    let mut r = r.login_on_this_connection().await;

    // Without TLS configured, SSLRequest is answered 'N' the same way.
    let mut s = Raw::open(&env).await;
    let mut b = BytesMut::new();
    frontend::ssl_request(&mut b);
    s.send(&b).await;
    s.s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");

    // A CancelRequest with a key no session holds does nothing.
    r.send(&query("select pg_sleep(1), 'survived'")).await;
    let mut c = TcpStream::connect(("127.0.0.1", env.port)).await.unwrap();
    let mut b = BytesMut::new();
    frontend::cancel_request(12345, 67890, &mut b);
    c.write_all(&b).await.unwrap();
    assert_eq!(r.until_ready().await, (vec![], true));
}
