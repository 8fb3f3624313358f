//! TLS to the upstream with libpq's `sslmode` semantics: `disable` (plaintext), `prefer` (the
//! default: TLS when the server offers it, unverified) and `require` (TLS, unverified), both
//! verified as `verify-ca` when a root certificate is given (as libpq does), `verify-ca` (the
//! chain must lead to `sslrootcert`) and `verify-full` (and name the host). `sslcert`/`sslkey` give a
//! client certificate. The same settings serve the proxy's own login ([`super::connect`]) and
//! its catalog reads through tokio-postgres ([`MakeRustls`]).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            // `allow` tries plaintext first; Portcullis treats it as `prefer`.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// As libpq spells it.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server that refuses TLS is refused in turn.
    pub fn needs_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// The upstream's TLS settings (from the URL's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The rustls configuration, built (and its files read) once, then shared by every login.
    pub built: Built,
}

/// A built client configuration, shared by the clones of one [`UpstreamTls`]; not part of
/// its equality (it follows from the settings).
#[derive(Clone, Default)]
pub struct Built(Arc<std::sync::OnceLock<Option<Arc<ClientConfig>>>>);

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "built"
        } else {
            "not built"
        })
    }
}

impl PartialEq for Built {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Built {}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("sslmode={0} needs sslrootcert (the CA certificate file to verify the server with)")]
    NoRootCert(&'static str),
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("sslcert and sslkey go together")]
    HalfClientCert,
    #[error("TLS setup: {0}")]
    Rustls(String),
}

impl UpstreamTls {
    /// The rustls client configuration for these settings (None for `disable`), built on
    /// first use (at start-up, when the URL is read) and shared after that: no login reads the
    /// certificate files again.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, TlsConfigError> {
        if let Some(built) = self.built.0.get() {
            return Ok(built.clone());
        }
        let built = self.build()?;
        let _ = self.built.0.set(built.clone());
        Ok(built)
    }

    fn build(&self) -> Result<Option<Arc<ClientConfig>>, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verify = match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) => return Ok(None),
            (SslMode::VerifyFull, None) => return Err(TlsConfigError::NoRootCert("verify-full")),
            (SslMode::VerifyCa, None) => return Err(TlsConfigError::NoRootCert("verify-ca")),
            (SslMode::Prefer | SslMode::Require, None) => Verify::Nothing,
            // As libpq: with a root certificate given, the chain is verified whenever TLS is
            // used.
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(_)) => Verify::Chain,
            (SslMode::VerifyFull, Some(_)) => Verify::ChainAndName,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(Unverified(provider.clone())),
            Verify::Chain | Verify::ChainAndName => {
                let path = self.root_cert.as_ref().expect("matched above");
                let mut roots = RootCertStore::empty();
                for cert in certs(path, "sslrootcert")? {
                    roots
                        .add(cert)
                        .map_err(|e| read_error("sslrootcert", path, e))?;
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
                if verify == Verify::Chain {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                }
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| read_error("sslkey", key, e))?;
                builder
                    .with_client_auth_cert(certs(cert, "sslcert")?, key)
                    .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            }
            _ => return Err(TlsConfigError::HalfClientCert),
        };
        Ok(Some(Arc::new(config)))
    }
}

#[derive(PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

fn read_error(
    what: &'static str,
    path: &std::path::Path,
    e: impl std::fmt::Display,
) -> TlsConfigError {
    TlsConfigError::Read {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn certs(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(what, path, e))?;
    if certs.is_empty() {
        return Err(read_error(what, path, "no certificate in it"));
    }
    Ok(certs)
}

/// `prefer`/`require` without a root certificate: encrypted, the server unauthenticated (as
/// libpq). Handshake signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root certificate; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The server name to present and verify: the host as written (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsConfigError::Rustls(format!("{host:?} is not a valid server name")))
}

/// tokio-postgres's TLS for the catalog reads, with the same configuration.
#[derive(Clone)]
pub struct MakeRustls(pub Arc<ClientConfig>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsConfigError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsConfigError> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: server_name(domain)?,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<RustlsStream<S>>> + Send>,
    >;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A TLS stream for tokio-postgres (no channel binding: the login is SCRAM without it).
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead
    for RustlsStream<S>
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for RustlsStream<S>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio_postgres::tls::TlsStream
    for RustlsStream<S>
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}
