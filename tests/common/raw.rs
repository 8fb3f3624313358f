//! A raw protocol client for tests that need exact message sequences: log in as the test
//! agent, send bytes, read backend messages.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Env, AGENT, AGENT_SECRET};

/// A raw protocol client: enough to log in and exchange messages byte by byte.
pub struct Raw {
    pub s: TcpStream,
    pub buf: BytesMut,
}

impl Raw {
    pub async fn open(env: &Env) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", env.port)).await.unwrap();
        Raw {
            s,
            buf: BytesMut::new(),
        }
    }

    pub async fn startup(&mut self, params: &[(&str, &str)]) {
        let mut b = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut b).unwrap();
        self.s.write_all(&b).await.unwrap();
    }

    /// Logs in as the test agent and waits for ReadyForQuery.
    pub async fn login(env: &Env) -> Raw {
        Raw::open(env).await.login_on_this_connection().await
    }

    pub async fn login_on_this_connection(mut self) -> Raw {
        let (codes, ready) = self
            .authenticate(&[("user", AGENT), ("database", "portcullis_demo")])
            .await;
        assert!(codes.is_empty() && ready, "login refused: {codes:?}");
        self
    }

    /// Sends a startup packet with `params`, answers the SCRAM exchange as the test agent, and
    /// reads until ReadyForQuery or close: the SQLSTATEs of errors seen and whether
    /// ReadyForQuery arrived. (Portcullis authenticates before it reports bad parameters.)
    pub async fn authenticate(&mut self, params: &[(&str, &str)]) -> (Vec<String>, bool) {
        self.authenticate_with(params, AGENT_SECRET).await
    }

    /// Logs in to the upstream PostgreSQL directly, as its login role (a baseline to compare
    /// the proxy with).
    pub async fn login_direct(env: &Env) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", env.cluster.port()))
            .await
            .unwrap();
        let mut raw = Raw {
            s,
            buf: BytesMut::new(),
        };
        let params = [
            ("user", connectors::postgres::fixtures::UPSTREAM_USER),
            ("database", connectors::postgres::fixtures::DEMO_DB),
        ];
        let (codes, ready) = raw.authenticate_with(&params, &env.upstream_password).await;
        assert!(codes.is_empty() && ready, "login refused: {codes:?}");
        raw
    }

    async fn authenticate_with(
        &mut self,
        params: &[(&str, &str)],
        secret: &str,
    ) -> (Vec<String>, bool) {
        self.startup(params).await;
        let mut scram = None;
        let mut codes = Vec::new();
        while let Some(m) = self.next().await {
            match m {
                backend::Message::AuthenticationSasl(_) => {
                    let s = ScramSha256::new(secret.as_bytes(), ChannelBinding::unsupported());
                    let mut b = BytesMut::new();
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut b).unwrap();
                    self.s.write_all(&b).await.unwrap();
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().unwrap();
                    s.update(body.data()).unwrap();
                    let mut b = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut b).unwrap();
                    self.s.write_all(&b).await.unwrap();
                }
                backend::Message::ReadyForQuery(_) => return (codes, true),
                backend::Message::ErrorResponse(body) => codes.push(code_of(body)),
                _ => {}
            }
        }
        (codes, false)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// The next backend message, or None when the connection is closed (or 10 s pass).
    pub async fn next(&mut self) -> Option<backend::Message> {
        loop {
            if let Some(m) = backend::Message::parse(&mut self.buf).unwrap() {
                return Some(m);
            }
            match tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Reads until ReadyForQuery or close; returns the SQLSTATEs of errors seen and whether
    /// ReadyForQuery arrived.
    pub async fn until_ready(&mut self) -> (Vec<String>, bool) {
        let mut codes = Vec::new();
        while let Some(m) = self.next().await {
            match m {
                backend::Message::ErrorResponse(body) => codes.push(code_of(body)),
                backend::Message::ReadyForQuery(_) => return (codes, true),
                _ => {}
            }
        }
        (codes, false)
    }
}

pub fn code_of(body: backend::ErrorResponseBody) -> String {
    use fallible_iterator::FallibleIterator;
    let mut fields = body.fields();
    while let Some(f) = fields.next().unwrap() {
        if f.type_() == b'C' {
            return String::from_utf8_lossy(f.value_bytes()).into_owned();
        }
    }
    String::new()
}

pub fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frontend::query(sql, &mut b).unwrap();
    b
}
