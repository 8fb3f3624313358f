//! Logging in to the upstream PostgreSQL at the wire level (startup, SCRAM-SHA-256 / md5 /
//! cleartext / trust) with the proxy-held credentials, keeping the raw socket so that results can
//! be forwarded as bytes afterwards.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::Host;

/// Where the upstream database is and the credentials Portcullis uses for it.
#[derive(Clone)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl UpstreamConfig {
    /// Parses a `postgres://user:pass@host:port/db` URL (or a libpq key=value string).
    /// The error never repeats the URL, which may hold a password.
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| ConnectError::BadUrl(strip_secrets(&e.to_string())))?;
        let host = match config.get_hosts() {
            [Host::Tcp(h)] => h.clone(),
            [] => "localhost".to_string(),
            [_] => return Err(ConnectError::BadUrl("only TCP hosts are supported".into())),
            _ => return Err(ConnectError::BadUrl("exactly one host is supported".into())),
        };
        let port = match config.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Err(ConnectError::BadUrl("exactly one port is supported".into())),
        };
        let user = config
            .get_user()
            .ok_or_else(|| ConnectError::BadUrl("the URL names no user".into()))?
            .to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        Ok(UpstreamConfig {
            host,
            port,
            user,
            password,
            dbname,
        })
    }
}

impl UpstreamConfig {
    /// The same connection as a tokio-postgres configuration (for catalog reads).
    pub fn tokio_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("portcullis-catalog");
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }
}

fn strip_secrets(message: &str) -> String {
    // tokio-postgres' parse errors name the offending key, never the value; keep it that way.
    message
        .split(':')
        .next()
        .unwrap_or("invalid URL")
        .to_string()
}

/// A logged-in upstream session, ready for queries, with everything the backend announced.
pub struct Upstream {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub process_id: i32,
    pub secret_key: i32,
    /// ParameterStatus values, in the order the server sent them.
    pub parameters: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid upstream URL: {0}")]
    BadUrl(String),
    #[error("cannot reach the upstream database: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream database refused the login ({code}): {message}")]
    Rejected { code: String, message: String },
    #[error("the upstream database asked for a password, but none is configured")]
    NoPassword,
    #[error("the upstream database asked for an unsupported authentication method")]
    UnsupportedAuth,
    #[error("the upstream database sent an unexpected message during login")]
    Protocol,
}

/// Connects and logs in with the proxy's credentials; `params` are extra startup parameters
/// (already vetted by the caller). Returns once the server is ready for queries.
pub async fn connect(
    config: &UpstreamConfig,
    params: &[(&str, &str)],
) -> Result<Upstream, ConnectError> {
    let mut stream = TcpStream::connect((config.host.as_str(), config.port)).await?;
    stream.set_nodelay(true)?;
    let addr = stream.peer_addr()?;

    let mut buf = BytesMut::new();
    let mut startup: Vec<(&str, &str)> = vec![
        ("user", config.user.as_str()),
        ("database", config.dbname.as_str()),
    ];
    startup.extend_from_slice(params);
    frontend::startup_message(startup.iter().copied(), &mut buf)?;
    stream.write_all(&buf).await?;
    buf.clear();

    let mut read = BytesMut::with_capacity(4096);
    let mut scram: Option<sasl::ScramSha256> = None;
    let mut parameters = Vec::new();
    let mut key = (0, 0);
    loop {
        let message = read_message(&mut stream, &mut read).await?;
        match message {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                let pw = config.password.as_ref().ok_or(ConnectError::NoPassword)?;
                send(&mut stream, |b| {
                    frontend::password_message(pw.as_bytes(), b)
                })
                .await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let pw = config.password.as_ref().ok_or(ConnectError::NoPassword)?;
                let hash = md5_hash(config.user.as_bytes(), pw.as_bytes(), body.salt());
                send(&mut stream, |b| {
                    frontend::password_message(hash.as_bytes(), b)
                })
                .await?;
            }
            Message::AuthenticationSasl(body) => {
                let pw = config.password.as_ref().ok_or(ConnectError::NoPassword)?;
                let mut mechanisms = body.mechanisms();
                let mut has_scram = false;
                while let Some(m) = fallible_next(&mut mechanisms)? {
                    has_scram |= m == sasl::SCRAM_SHA_256;
                }
                if !has_scram {
                    return Err(ConnectError::UnsupportedAuth);
                }
                let s = sasl::ScramSha256::new(pw.as_bytes(), sasl::ChannelBinding::unsupported());
                send(&mut stream, |b| {
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), b)
                })
                .await?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram.as_mut().ok_or(ConnectError::Protocol)?;
                s.update(body.data())?;
                let msg = s.message().to_vec();
                send(&mut stream, |b| frontend::sasl_response(&msg, b)).await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                scram
                    .as_mut()
                    .ok_or(ConnectError::Protocol)?
                    .finish(body.data())?;
            }
            Message::ParameterStatus(body) => {
                parameters.push((body.name()?.to_string(), body.value()?.to_string()));
            }
            Message::BackendKeyData(body) => key = (body.process_id(), body.secret_key()),
            Message::NoticeResponse(_) => {}
            Message::ReadyForQuery(_) => {
                return Ok(Upstream {
                    stream,
                    addr,
                    process_id: key.0,
                    secret_key: key.1,
                    parameters,
                });
            }
            Message::ErrorResponse(body) => {
                let (code, message) = error_fields(body.fields());
                return Err(ConnectError::Rejected { code, message });
            }
            Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => return Err(ConnectError::UnsupportedAuth),
            _ => return Err(ConnectError::Protocol),
        }
    }
}

/// Asks the upstream to cancel the query running on backend `process_id`.
pub async fn cancel(addr: SocketAddr, process_id: i32, secret_key: i32) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(process_id, secret_key, &mut buf);
    stream.write_all(&buf).await?;
    // The server closes the connection without a reply once it has acted on the request.
    let mut sink = [0u8; 16];
    let _ = stream.read(&mut sink).await;
    Ok(())
}

async fn send(
    stream: &mut TcpStream,
    encode: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
) -> Result<(), ConnectError> {
    let mut buf = BytesMut::new();
    encode(&mut buf)?;
    stream.write_all(&buf).await?;
    Ok(())
}

async fn read_message(
    stream: &mut TcpStream,
    read: &mut BytesMut,
) -> Result<Message, ConnectError> {
    loop {
        if let Some(message) = Message::parse(read)? {
            return Ok(message);
        }
        if stream.read_buf(read).await? == 0 {
            return Err(ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn fallible_next<I: fallible_iterator::FallibleIterator<Error = std::io::Error>>(
    it: &mut I,
) -> Result<Option<I::Item>, ConnectError> {
    Ok(it.next()?)
}

fn error_fields(mut fields: ErrorFields<'_>) -> (String, String) {
    use fallible_iterator::FallibleIterator;
    let (mut code, mut message) = (String::new(), String::new());
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (code, message)
}
