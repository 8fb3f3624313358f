//! A remote Qdrant (a server or a cluster the RAG pipeline already runs) behind the shim: each
//! rewritten request is sent to its REST API, with the API key Portcullis holds (agents never
//! see it). REST rather than gRPC: the shim already holds the request as Qdrant REST JSON, so
//! forwarding it keeps Qdrant's own parser the only reader of what the policy rewrote, with
//! no JSON-to-protobuf conversion to get wrong in between.
//!
//! HTTP/1.1 over hyper, with a small pool of kept-alive connections; `https` URLs use rustls
//! with the CA certificates of a PEM file (by default the system bundle). Writes wait for the
//! operation to be applied (`?wait=true`), so an acknowledged write is visible to the next read.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{Request, VectorBackend, VectorError};

/// The system's CA bundle (Debian and derivatives), used for `https` without `ca_file`.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Largest reply read from the remote.
const MAX_REPLY_BYTES: usize = 512 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);
const POOL: usize = 16;

/// A remote Qdrant's REST API.
pub struct Remote {
    host: String,
    port: u16,
    /// `Some` for `https`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The URL's path, without a trailing `/` (a Qdrant behind a path-routing proxy).
    prefix: String,
    api_key: Option<String>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

fn internal(e: impl std::fmt::Display) -> VectorError {
    VectorError::Internal(format!("the remote Qdrant: {e}"))
}

impl Remote {
    /// `url` is `http://host:port[/prefix]` or `https://…`.
    pub fn new(
        url: &str,
        api_key: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Remote, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {url:?}"))?,
            ),
            _ => (authority, if scheme == "https" { 443 } else { 6333 }),
        };
        if host.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: give host and port, no credentials"));
        }
        let tls = match scheme {
            "http" => None,
            "https" => {
                let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_FILE));
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("CA file {}: no certificate", path.display()));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name =
                    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            other => return Err(format!("unsupported scheme {other:?} (http or https)")),
        };
        Ok(Remote {
            host: host.to_string(),
            port,
            tls,
            prefix: prefix.to_string(),
            api_key,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, VectorError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(internal)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => {
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(internal)?;
                tokio::spawn(conn);
                Ok(send)
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(internal)?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(internal)?;
                tokio::spawn(conn);
                Ok(send)
            }
        }
    }

    /// Sends one request; the status and the reply's JSON.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), VectorError> {
        let pooled = self.idle.lock().expect("pool").pop();
        let mut sender = match pooled {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(internal)?;
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(internal)?),
            None => Bytes::new(),
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.api_key {
            request = request.header("api-key", key);
        }
        let request = request.body(Full::new(bytes)).map_err(internal)?;
        let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| internal("timed out"))?
            .map_err(internal)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(internal)?
            .to_bytes();
        if !sender.is_closed() {
            let mut idle = self.idle.lock().expect("pool");
            if idle.len() < POOL {
                idle.push(sender);
            }
        }
        let json = serde_json::from_slice(&body)
            .map_err(|_| internal(format!("a reply that is not JSON (HTTP {status})")))?;
        Ok((status, json))
    }

    /// `GET /`: the remote's Qdrant version.
    pub async fn version(&self) -> Result<String, VectorError> {
        let (_, root) = self.send(Method::GET, "/", None).await?;
        root["version"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| internal("no version at /"))
    }
}

/// A collection name as it may appear in a path.
fn name(c: &str) -> Result<&str, VectorError> {
    if !c.is_empty()
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-'))
    {
        Ok(c)
    } else {
        Err(VectorError::BadRequest(format!("collection name {c:?}")))
    }
}

fn route(request: Request) -> Result<(Method, String, Option<Value>), VectorError> {
    let points = |c: &str, tail: &str| -> Result<String, VectorError> {
        Ok(format!("/collections/{}/points{tail}", name(c)?))
    };
    Ok(match request {
        Request::ListCollections => (Method::GET, "/collections".into(), None),
        Request::GetCollection { collection } => (
            Method::GET,
            format!("/collections/{}", name(&collection)?),
            None,
        ),
        Request::CollectionExists { collection } => (
            Method::GET,
            format!("/collections/{}/exists", name(&collection)?),
            None,
        ),
        Request::CreateCollection { collection, body } => (
            Method::PUT,
            format!("/collections/{}", name(&collection)?),
            Some(body),
        ),
        Request::DeleteCollection { collection } => (
            Method::DELETE,
            format!("/collections/{}", name(&collection)?),
            None,
        ),
        Request::CreateIndex { collection, body } => (
            Method::PUT,
            format!("/collections/{}/index?wait=true", name(&collection)?),
            Some(body),
        ),
        Request::Upsert { collection, body } => {
            (Method::PUT, points(&collection, "?wait=true")?, Some(body))
        }
        Request::Retrieve { collection, body } => {
            (Method::POST, points(&collection, "")?, Some(body))
        }
        Request::Query { collection, body } => {
            (Method::POST, points(&collection, "/query")?, Some(body))
        }
        Request::Scroll { collection, body } => {
            (Method::POST, points(&collection, "/scroll")?, Some(body))
        }
        Request::Count { collection, body } => {
            (Method::POST, points(&collection, "/count")?, Some(body))
        }
        Request::Delete { collection, body } => (
            Method::POST,
            points(&collection, "/delete?wait=true")?,
            Some(body),
        ),
        Request::SetPayload { collection, body } => (
            Method::POST,
            points(&collection, "/payload?wait=true")?,
            Some(body),
        ),
        Request::DeletePayload { collection, body } => (
            Method::POST,
            points(&collection, "/payload/delete?wait=true")?,
            Some(body),
        ),
    })
}

impl VectorBackend for Remote {
    async fn call(&self, request: Request) -> Result<Value, VectorError> {
        let (method, path, body) = route(request)?;
        let (status, mut reply) = self.send(method, &path, body.as_ref()).await?;
        if status.is_success() {
            return Ok(reply["result"].take());
        }
        let message = reply["status"]["error"]
            .as_str()
            .unwrap_or("no error message")
            .to_string();
        Err(match status.as_u16() {
            404 => VectorError::NotFound(message),
            400 | 422 => VectorError::BadRequest(message),
            409 => VectorError::Conflict(message),
            401 | 403 => VectorError::Internal(format!(
                "the remote Qdrant refused Portcullis's key: {message}"
            )),
            _ => VectorError::Internal(format!("the remote Qdrant: {message}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_and_prefix() {
        let r = Remote::new("http://qdrant:6334/base/", None, None).unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.prefix.as_str()),
            ("qdrant", 6334, "/base")
        );
        let r = Remote::new("http://10.0.0.5", None, None).unwrap();
        assert_eq!(r.port, 6333);
        assert!(Remote::new("ftp://x", None, None).is_err());
        assert!(Remote::new("http://user:pw@x:1", None, None).is_err());
        assert!(route(Request::GetCollection {
            collection: "../admin".into()
        })
        .is_err());
    }
}
