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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::Host;

use super::tls::{self, SslMode, UpstreamTls};

/// Where the upstream database is and the credentials Portcullis uses for it.
#[derive(Clone)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    /// TLS toward the upstream (`sslmode` and friends in the URL).
    pub tls: UpstreamTls,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("tls", &self.tls)
            .finish()
    }
}

impl UpstreamConfig {
    /// Parses a `postgres://user:pass@host:port/db` URL (or a libpq key=value string).
    /// The error never repeats the URL, which may hold a password.
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        let (url, tls) = take_tls_settings(url)?;
        let config = tokio_postgres::Config::from_str(&url)
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
        // A verifying mode without a root certificate fails here, at start-up.
        tls.client_config()
            .map_err(|e| ConnectError::BadUrl(e.to_string()))?;
        Ok(UpstreamConfig {
            host,
            port,
            user,
            password,
            dbname,
            tls,
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
        // Verification is the connector's ([`Self::client`]); tokio-postgres only decides
        // whether TLS may be skipped.
        c.ssl_mode(match self.tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        c
    }

    /// A tokio-postgres client over `config` (from [`Self::tokio_config`], perhaps adjusted)
    /// with this upstream's TLS; its connection runs on a task of its own until the client
    /// is dropped.
    pub async fn client(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<tokio_postgres::Client, ClientError> {
        match self.tls.client_config()? {
            None => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) = config.connect(tls::MakeRustls(tls)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(client)
            }
        }
    }
}

/// Why a tokio-postgres client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// Takes libpq's TLS settings out of a URL (`?sslmode=…&sslrootcert=…`) or key=value string,
/// which tokio-postgres does not all know; the rest is returned for it.
fn take_tls_settings(url: &str) -> Result<(String, UpstreamTls), ConnectError> {
    let mut tls = UpstreamTls::default();
    let mut apply = |key: &str, value: String| -> Result<bool, ConnectError> {
        match key {
            "sslmode" => {
                tls.mode = SslMode::parse(&value).ok_or_else(|| {
                    ConnectError::BadUrl(format!(
                    "sslmode {value:?} (disable, allow, prefer, require, verify-ca or verify-full)"
                ))
                })?
            }
            "sslrootcert" => tls.root_cert = Some(value.into()),
            "sslcert" => tls.cert = Some(value.into()),
            "sslkey" => tls.key = Some(value.into()),
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), tls));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !apply(key, percent_decode(value)?)? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, tls));
    }
    let mut kept = Vec::new();
    for part in url.split_whitespace() {
        match part.split_once('=') {
            Some((key, value)) if apply(key, value.trim_matches('\'').to_string())? => {}
            _ => kept.push(part),
        }
    }
    Ok((kept.join(" "), tls))
}

fn percent_decode(value: &str) -> Result<String, ConnectError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ConnectError::BadUrl("a malformed %-escape in a TLS setting".into())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnectError::BadUrl("a TLS setting is not UTF-8".into()))
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
    pub stream: UpstreamStream,
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
    #[error("the upstream database does not accept TLS, and sslmode={0} requires it")]
    NoTls(&'static str),
    #[error("TLS to the upstream database: {0}")]
    Tls(String),
}

/// The connection to the upstream: plain TCP, or TLS after an SSLRequest.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Asks for TLS (SSLRequest) and, when the server agrees, runs the handshake as `config`'s
/// `sslmode` says.
async fn negotiate_tls(
    mut tcp: TcpStream,
    config: &UpstreamConfig,
) -> Result<UpstreamStream, ConnectError> {
    let Some(tls) = config
        .tls
        .client_config()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
    else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    match tcp.read_u8().await? {
        b'S' => {
            let name =
                tls::server_name(&config.host).map_err(|e| ConnectError::Tls(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
            Ok(UpstreamStream::Tls(Box::new(stream)))
        }
        b'N' if !config.tls.mode.needs_tls() => Ok(UpstreamStream::Plain(tcp)),
        b'N' => Err(ConnectError::NoTls(config.tls.mode.name())),
        _ => Err(ConnectError::Protocol),
    }
}

/// Connects and logs in with the proxy's credentials; `params` are extra startup parameters
/// (already vetted by the caller). Returns once the server is ready for queries.
pub async fn connect(
    config: &UpstreamConfig,
    params: &[(&str, &str)],
) -> Result<Upstream, ConnectError> {
    let tcp = TcpStream::connect((config.host.as_str(), config.port)).await?;
    tcp.set_nodelay(true)?;
    let addr = tcp.peer_addr()?;
    let mut stream = negotiate_tls(tcp, config).await?;

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
    stream: &mut (impl AsyncWrite + Unpin),
    encode: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
) -> Result<(), ConnectError> {
    let mut buf = BytesMut::new();
    encode(&mut buf)?;
    stream.write_all(&buf).await?;
    Ok(())
}

async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_read_from_the_url_and_the_rest_is_left() {
        let c = UpstreamConfig::from_url(
            "postgres://u:p@db.example.com:6543/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20file.pem",
        );
        // verify-full reads its root certificate at once: this one does not exist.
        let e = c.expect_err("a missing root certificate").to_string();
        assert!(e.contains("/etc/ca file.pem"), "{e}");
        let (rest, tls) = take_tls_settings(
            "postgres://u:p@h/app?sslmode=require&application_name=x&sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h/app?application_name=x");
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.cert.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(tls.key.as_deref(), Some(std::path::Path::new("/k.pem")));
        let (rest, tls) =
            take_tls_settings("host=h user=u sslmode=disable dbname=app sslrootcert='/r.pem'")
                .unwrap();
        assert_eq!(rest, "host=h user=u dbname=app");
        assert_eq!(tls.mode, SslMode::Disable);
        assert_eq!(
            tls.root_cert.as_deref(),
            Some(std::path::Path::new("/r.pem"))
        );
        let plain = UpstreamConfig::from_url("postgres://u:p@h/app").unwrap();
        assert_eq!(plain.tls.mode, SslMode::Prefer, "libpq's default");
        assert!(UpstreamConfig::from_url("postgres://u:p@h/app?sslmode=verify").is_err());
        assert!(
            UpstreamConfig::from_url("postgres://u:p@h/app?sslmode=require&sslcert=/c.pem")
                .is_err()
        );
    }
}
