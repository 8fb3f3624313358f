//! The startup phase: answer SSLRequest/GSSENCRequest, serve CancelRequest, vet the startup
//! parameters against an allow-list, authenticate the agent with SCRAM-SHA-256, and log in to
//! the upstream with Portcullis's own credentials.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::client_stream::ClientStream;
use super::messages::error::codes::TOO_MANY_CONNECTIONS;
use super::messages::error::{error_response, Severity};
use super::messages::startup::{self, StartupPacket, MAX_STARTUP_PACKET};
use super::messages::{auth, frame, status};
use super::scram::{Exchange, Verifier};
use crate::identity::Credential;
use crate::server::Shared;

/// A client that passed the handshake, with its upstream session ready.
pub struct Authenticated {
    pub client: ClientStream,
    pub agent: String,
    /// The human the agent acts for (from its token), if any.
    pub on_behalf_of: Option<String>,
    pub upstream: connectors::postgres::Upstream,
    /// Its places under `postgres.max_connections` and the agent's own cap, held until the
    /// session ends.
    pub permits: Vec<tokio::sync::OwnedSemaphorePermit>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client was sent a FATAL error with this SQLSTATE and message, and the connection ends.
    #[error("refused ({0}): {1}")]
    Refused(&'static str, String),
    /// The connection ended normally without a session (cancel request, TLS probe).
    #[error("no session requested")]
    NoSession,
}

/// Startup parameters forwarded upstream as the client sent them (compared case-insensitively).
const FORWARDED: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "bytea_output",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "geqo",
];

pub async fn handshake(tcp: TcpStream, shared: &Shared) -> Result<Authenticated, HandshakeError> {
    let mut client = ClientStream::Plain(tcp);
    let (major, minor, params) = loop {
        let body = read_startup_packet(&mut client).await?;
        match startup::decode(&body) {
            Ok(StartupPacket::SslRequest) => {
                if client.is_tls() {
                    return Err(HandshakeError::Refused(
                        "08P01",
                        "SSLRequest after TLS".into(),
                    ));
                }
                match (&shared.tls, client) {
                    (Some(acceptor), ClientStream::Plain(mut tcp)) => {
                        tcp.write_all(b"S").await?;
                        client = ClientStream::Tls(Box::new(acceptor.accept(tcp).await?));
                    }
                    (_, mut c) => {
                        c.write_all(b"N").await?;
                        client = c;
                    }
                }
            }
            Ok(StartupPacket::GssEncRequest) => client.write_all(b"N").await?,
            Ok(StartupPacket::Cancel {
                process_id,
                secret_key,
            }) => {
                if let Some(t) = shared.cancels.lookup(process_id, secret_key) {
                    debug!("forwarding a cancel request to backend {}", t.process_id);
                    if let Err(e) =
                        connectors::postgres::cancel(t.addr, t.process_id, t.secret_key).await
                    {
                        warn!("cancel request to the upstream failed: {e}");
                    }
                }
                return Err(HandshakeError::NoSession);
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
            }) => break (major, minor, params),
            Err(e) => return fatal(&mut client, "08P01", &e.to_string()).await,
        }
    };

    if major != 3 {
        return fatal(
            &mut client,
            "0A000",
            &format!("unsupported frontend protocol {major}.{minor}: Portcullis speaks 3.0"),
        )
        .await;
    }
    // A session from here on, whatever its credentials: it counts against the cap, and one
    // beyond it is refused at once rather than left waiting (as PostgreSQL does).
    let mut permits = Vec::new();
    if let Some(connections) = &shared.connections {
        match connections.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => {
                return fatal(
                    &mut client,
                    TOO_MANY_CONNECTIONS,
                    "sorry, too many clients already",
                )
                .await
            }
        }
    }
    if shared.require_tls && !client.is_tls() {
        return fatal(
            &mut client,
            "28000",
            "Portcullis requires TLS (sslmode=require)",
        )
        .await;
    }
    // Authenticate first, then report what is wrong with the other parameters: before
    // authentication every failure looks the same, so an unauthenticated client cannot probe
    // for the upstream database's name (or anything else the parameters would reveal).
    let agent = match params.iter().find(|(k, _)| k.eq_ignore_ascii_case("user")) {
        Some((_, a)) if !a.is_empty() => a.clone(),
        _ => {
            return fatal(
                &mut client,
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
            .await
        }
    };
    let vetted = vet_params(&params, &shared.upstream.dbname, shared.enforcer.is_some());
    let unsupported = vetted
        .as_ref()
        .map(|v| v.unsupported.as_slice())
        .unwrap_or_default();
    if minor > 0 || !unsupported.is_empty() {
        let mut out = BytesMut::new();
        status::negotiate_protocol_version(&mut out, 0, unsupported);
        client.write_all(&out).await?;
    }

    let Some(on_behalf_of) = authenticate(&mut client, &agent, shared).await? else {
        info!(agent = %agent, "authentication failed");
        return fatal(
            &mut client,
            "28P01",
            &format!("password authentication failed for user \"{agent}\""),
        )
        .await;
    };
    if let Some(connections) = shared.agent_connections.get(&agent) {
        match connections.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => {
                info!(agent = %agent, "refused: the agent's max_connections sessions are open");
                return fatal(
                    &mut client,
                    TOO_MANY_CONNECTIONS,
                    &format!("too many connections for agent \"{agent}\""),
                )
                .await;
            }
        }
    }
    let mut vetted = match vetted {
        Ok(v) => v,
        Err((code, message)) => return fatal(&mut client, code, &message).await,
    };
    if let Some(limits) = shared.limits.get(&agent) {
        limits.cap_startup_params(&mut vetted.forward);
    }

    let mut upstream_params: Vec<(&str, &str)> = vec![
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
    ];
    upstream_params.extend(vetted.forward.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(key) = &shared.mask_key {
        upstream_params.push((crate::mask_key::SETTING, key));
    }
    let upstream = match connectors::postgres::connect(&shared.upstream, &upstream_params).await {
        Ok(u) => u,
        Err(e) => {
            warn!(agent = %vetted.agent, "upstream login failed: {e}");
            return fatal(&mut client, "08006", "Portcullis cannot reach the database").await;
        }
    };
    info!(agent = %vetted.agent, backend = upstream.process_id, "session started");
    Ok(Authenticated {
        client,
        agent: vetted.agent,
        on_behalf_of,
        upstream,
        permits,
    })
}

/// Sends a FATAL ErrorResponse and ends the handshake.
async fn fatal<T>(
    client: &mut ClientStream,
    code: &'static str,
    message: &str,
) -> Result<T, HandshakeError> {
    let mut out = BytesMut::new();
    error_response(&mut out, Severity::Fatal, code, message, None);
    let _ = client.write_all(&out).await;
    let _ = client.shutdown().await;
    Err(HandshakeError::Refused(code, message.to_string()))
}

async fn read_startup_packet(client: &mut ClientStream) -> Result<Vec<u8>, HandshakeError> {
    let len = client.read_i32().await?;
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return fatal(client, "08P01", "invalid length of startup packet").await;
    }
    let mut body = vec![0u8; len as usize - 4];
    client.read_exact(&mut body).await?;
    Ok(body)
}

struct Vetted {
    agent: String,
    forward: Vec<(String, String)>,
    unsupported: Vec<String>,
}

/// `enforcing`: policy is enforced, so the search_path the rewriter resolves names with is fixed.
fn vet_params(
    params: &[(String, String)],
    dbname: &str,
    enforcing: bool,
) -> Result<Vetted, (&'static str, String)> {
    let mut agent = None;
    let mut forward = Vec::new();
    let mut unsupported = Vec::new();
    for (k, v) in params {
        let key = k.to_ascii_lowercase();
        match key.as_str() {
            "user" => agent = Some(v.clone()),
            "database" => {
                if !v.is_empty() && v != dbname {
                    return Err(("3D000", format!("database \"{v}\" does not exist")));
                }
            }
            "replication" => {
                if !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "off" | "no" | "0"
                ) {
                    return Err((
                        "28000",
                        "replication connections are not allowed through Portcullis".into(),
                    ));
                }
            }
            "client_encoding" => {
                let norm: String = v
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect::<String>()
                    .to_ascii_lowercase();
                if norm != "utf8" && norm != "unicode" {
                    return Err(("22023", "Portcullis requires client_encoding UTF8".into()));
                }
            }
            "options" if v.trim().is_empty() => {}
            "search_path" if enforcing => {
                return Err((
                    "42501",
                    "search_path cannot be a start-up parameter through Portcullis; run SET \
                     search_path after connecting"
                        .into(),
                ));
            }
            _ if key.starts_with("_pq_.") => unsupported.push(k.clone()),
            _ if FORWARDED.contains(&key.as_str()) => forward.push((key, v.clone())),
            _ => {
                return Err((
                    "42704",
                    format!("Portcullis does not accept the startup parameter \"{k}\""),
                ));
            }
        }
    }
    match agent {
        Some(a) if !a.is_empty() => Ok(Vetted {
            agent: a,
            forward,
            unsupported,
        }),
        _ => Err((
            "28000",
            "no PostgreSQL user name specified in startup packet".into(),
        )),
    }
}

/// The agent's proof of identity: SCRAM-SHA-256 with its verifier (or with a decoy for an
/// unknown agent, so that both fail the same way), or its token. Returns `None` when it failed,
/// else the human the agent acts for, if its token names one.
async fn authenticate(
    client: &mut ClientStream,
    agent: &str,
    shared: &Shared,
) -> Result<Option<Option<String>>, HandshakeError> {
    let verifier = match shared.agents.get(agent) {
        Some(Credential::Token) => return authenticate_token(client, agent, shared).await,
        Some(Credential::Secret(v)) => Some(v.clone()),
        None => None,
    };
    let is_known = verifier.is_some();
    let verifier = verifier.unwrap_or_else(|| Verifier::decoy(agent, &shared.decoy_key));

    let mut out = BytesMut::new();
    auth::authentication_sasl(&mut out);
    client.write_all(&out).await?;

    let first = read_auth_message(client).await?;
    let Some((mechanism, data)) = auth::decode_sasl_initial(&first) else {
        return fatal(client, "08P01", "invalid SASLInitialResponse").await;
    };
    if mechanism != auth::SCRAM_SHA_256 {
        return fatal(
            client,
            "28000",
            "unsupported SASL mechanism (Portcullis offers SCRAM-SHA-256)",
        )
        .await;
    }
    let (exchange, server_first) = match Exchange::start(verifier, data) {
        Ok(x) => x,
        Err(e) => return fatal(client, "28000", &format!("SCRAM: {e}")).await,
    };
    out.clear();
    auth::authentication_sasl_continue(&mut out, server_first.as_bytes());
    client.write_all(&out).await?;

    let final_msg = read_auth_message(client).await?;
    let Ok(server_final) = exchange.finish(auth::decode_sasl_response(&final_msg)) else {
        return Ok(None);
    };
    if !is_known {
        return Ok(None);
    }
    out.clear();
    auth::authentication_sasl_final(&mut out, server_final.as_bytes());
    auth::authentication_ok(&mut out);
    client.write_all(&out).await?;
    Ok(Some(None))
}

/// A token agent sends its JWT as a (cleartext) password: signature, expiry, issuer, audience
/// and subject are checked, and its `on_behalf_of` is returned. Under enforcement, a named human
/// must exist in the active policy set, or the login fails (an unknown entity would make
/// Cedar's conditions on it error, and an erroring forbid does not apply).
async fn authenticate_token(
    client: &mut ClientStream,
    agent: &str,
    shared: &Shared,
) -> Result<Option<Option<String>>, HandshakeError> {
    if !client.is_tls() && !shared.tokens_without_tls {
        return fatal(
            client,
            "28000",
            "this agent logs in with a token, which Portcullis accepts only over TLS",
        )
        .await;
    }
    let mut out = BytesMut::new();
    auth::authentication_cleartext_password(&mut out);
    client.write_all(&out).await?;
    let msg = read_auth_message(client).await?;
    let Some(token) = auth::decode_password(&msg) else {
        return fatal(client, "08P01", "invalid PasswordMessage").await;
    };
    let Some(verifier) = &shared.tokens else {
        return Ok(None);
    };
    let on_behalf_of = match verifier.verify(token, agent) {
        Ok(o) => o,
        Err(e) => {
            info!(agent, "token refused: {e}");
            return Ok(None);
        }
    };
    if let (Some(user), Some(policies)) = (&on_behalf_of, &shared.policies) {
        if !policies.knows_user(user) {
            info!(agent, user = %user, "token refused: the policy set has no such User");
            return Ok(None);
        }
    }
    out.clear();
    auth::authentication_ok(&mut out);
    client.write_all(&out).await?;
    Ok(Some(on_behalf_of))
}

/// Reads one 'p' message during authentication.
async fn read_auth_message(client: &mut ClientStream) -> Result<BytesMut, HandshakeError> {
    let mut header = [0u8; frame::HEADER];
    client.read_exact(&mut header).await?;
    let (tag, size) = match frame::peek_header(&header) {
        Ok(Some(h)) => h,
        _ => return fatal(client, "08P01", "invalid message length").await,
    };
    if tag != b'p' || size > MAX_STARTUP_PACKET {
        return fatal(client, "08P01", "expected a password or SASL response").await;
    }
    let mut buf = BytesMut::with_capacity(size);
    buf.extend_from_slice(&header);
    buf.resize(size, 0);
    client.read_exact(&mut buf[frame::HEADER..]).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn typical_client_parameters_pass() {
        let v = vet_params(
            &p(&[
                ("user", "bot"),
                ("database", "app"),
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO"),
                ("TimeZone", "UTC"),
                ("extra_float_digits", "3"),
                ("application_name", "psql"),
                ("_pq_.x", "1"),
            ]),
            "app",
            true,
        )
        .unwrap();
        assert_eq!(v.agent, "bot");
        assert_eq!(v.forward.len(), 4);
        assert_eq!(v.unsupported, vec!["_pq_.x".to_string()]);
    }

    #[test]
    fn dangerous_parameters_are_refused() {
        for bad in [
            ("replication", "database"),
            ("replication", "true"),
            ("options", "-c role=postgres"),
            ("role", "postgres"),
            ("session_authorization", "postgres"),
            ("standard_conforming_strings", "off"),
            ("client_encoding", "SQL_ASCII"),
            ("database", "postgres"),
        ] {
            assert!(
                vet_params(&p(&[("user", "bot"), bad]), "app", false).is_err(),
                "{bad:?}"
            );
        }
        assert!(vet_params(&p(&[("database", "app")]), "app", false).is_err());
        // With policy enforced, names resolve with the login's search_path: it is not the
        // client's to choose.
        let path = p(&[("user", "bot"), ("search_path", "evil, public")]);
        assert!(vet_params(&path, "app", false).is_ok());
        assert!(vet_params(&path, "app", true).is_err());
    }
}
