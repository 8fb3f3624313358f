//! The end-to-end harness: a throwaway PostgreSQL loaded with `fixtures/`, and the real
//! `portcullis` binary in front of it with a generated config. Both are stopped and deleted when
//! the [`Env`] is dropped, also when the test panics.

#![allow(dead_code)]

pub mod raw;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectors::postgres::fixtures::{self, DEMO_DB, UPSTREAM_USER};
use connectors::postgres::{random_token, LocalCluster};
use serde_json::Value;

pub const AGENT: &str = "support-bot";
pub const AGENT_SECRET: &str = "support-secret";
/// The second agent is configured with a SCRAM verifier instead of a plaintext secret.
pub const AUDITOR: &str = "auditor";
pub const AUDITOR_SECRET: &str = "auditor-secret";
/// The key of `@mask("hash")` in enforcing test environments.
pub const HASH_KEY: &str = "portcullis-test-hash-key-0123456789";

/// `@mask("hash")` of `value` as Portcullis computes it: HMAC-SHA256 keyed by [`HASH_KEY`], hex.
#[allow(dead_code)]
pub fn keyed_hash(value: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(HASH_KEY.as_bytes())
        .expect("any key length");
    mac.update(value.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct Env {
    pub cluster: LocalCluster,
    pub upstream_password: String,
    pub port: u16,
    proxy: Child,
    dir: tempfile::TempDir,
}

/// An [`Env`] enforcing (a copy of) the finance example policy set, kept as long as the env.
pub struct Enforced {
    pub env: Env,
    _set: tempfile::TempDir,
}

/// Extra config text appended to `[postgres]`.
#[derive(Default)]
pub struct Options {
    pub postgres_extra: String,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Copies the files (not subdirectories) of `from` (relative to the repository root) into `to`.
pub fn copy_files(from: &str, to: &Path) {
    for entry in std::fs::read_dir(repo_root().join(from)).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

impl Env {
    pub fn start() -> Env {
        Self::start_with(Options::default())
    }

    /// The proxy enforcing the finance example (`policies/examples/finance`).
    pub fn start_enforcing() -> Enforced {
        let set = tempfile::tempdir().unwrap();
        copy_files("policies/examples/finance", set.path());
        let key = set.path().join("hash.key");
        std::fs::write(&key, format!("{HASH_KEY}\n")).unwrap();
        let env = Self::start_with(Options {
            postgres_extra: format!(
                "[policies]\ndir = {:?}\nhash_key_file = {:?}\n",
                set.path().display().to_string(),
                key.display().to_string()
            ),
        });
        Enforced { env, _set: set }
    }

    /// The proxy enforcing the policy set in `dir` (no hash key file).
    pub fn start_with_policies(dir: &Path) -> Env {
        Self::start_with(Options {
            postgres_extra: format!("[policies]\ndir = {:?}\n", dir.display().to_string()),
        })
    }

    pub fn start_with(options: Options) -> Env {
        let cluster = LocalCluster::start().expect("start PostgreSQL");
        let upstream_password = random_token();
        fixtures::load(&cluster, &repo_root().join("fixtures"), &upstream_password)
            .expect("load fixtures");
        let dir = tempfile::tempdir().unwrap();
        let verifier = postgres_protocol_verifier(AUDITOR_SECRET);
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                r#"
[postgres]
listen = "127.0.0.1:{port}"
upstream = "postgres://{UPSTREAM_USER}@127.0.0.1:{pg}/{DEMO_DB}"
upstream_password_env = "PORTCULLIS_TEST_UPSTREAM_PASSWORD"
{extra}

[[agents]]
id = "{AGENT}"
secret = "{AGENT_SECRET}"

[[agents]]
id = "{AUDITOR}"
secret = "{verifier}"
"#,
                pg = cluster.port(),
                extra = options.postgres_extra,
            );
            let config_path = dir.path().join("portcullis.toml");
            std::fs::write(&config_path, config).unwrap();
            let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
            let mut proxy = Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .env("PORTCULLIS_TEST_UPSTREAM_PASSWORD", &upstream_password)
                .env("RUST_LOG", "info,portcullis=debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn portcullis");
            if wait_for_port(port, &mut proxy) {
                return Env {
                    cluster,
                    upstream_password,
                    port,
                    proxy,
                    dir,
                };
            }
            let _ = proxy.kill();
            let _ = proxy.wait();
            last = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
        }
        panic!("portcullis did not start:\n{last}");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.id()
    }

    /// Whether the proxy process is still running.
    pub fn proxy_alive(&mut self) -> bool {
        matches!(self.proxy.try_wait(), Ok(None))
    }

    /// The proxy's exit status, if it exits within `within`.
    pub fn proxy_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.proxy.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn agent_url(&self) -> String {
        self.url(AGENT, AGENT_SECRET)
    }

    pub fn url(&self, user: &str, secret: &str) -> String {
        format!(
            "postgres://{user}:{secret}@127.0.0.1:{}/{DEMO_DB}",
            self.port
        )
    }

    pub fn direct_url(&self) -> String {
        self.cluster.superuser_url(DEMO_DB)
    }

    pub async fn agent(&self) -> tokio_postgres::Client {
        connect(&self.agent_url())
            .await
            .expect("agent connects through portcullis")
    }

    pub async fn direct(&self) -> tokio_postgres::Client {
        connect(&self.direct_url())
            .await
            .expect("superuser connects directly")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
        if std::thread::panicking() {
            eprintln!("--- portcullis log ---\n{}", self.proxy_log());
        }
    }
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE of a tokio-postgres error, or "" when it is not a server error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn postgres_protocol_verifier(secret: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{secret}\n").as_bytes())?;
            c.wait_with_output()
        })
        .expect("portcullis hash-secret");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, proxy: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if !matches!(proxy.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Finds a client program, or explains how to install it (tests/setup.sh installs them all).
pub fn require(program: &str) -> PathBuf {
    which(program).unwrap_or_else(|| panic!("{program} not found: run `bash tests/setup.sh` first"))
}

pub fn which(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.is_absolute() || program.contains('/') {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|c| c.is_file())
    })
}

/// Sends SIGHUP (policies and catalog are re-read) and waits until the proxy has logged one
/// more catalog refresh than before.
pub fn refresh_catalog(env: &Env) {
    let refreshed = || {
        env.proxy_log()
            .matches("upstream catalog refreshed")
            .count()
    };
    let before = refreshed();
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(env.proxy_pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while refreshed() == before {
        assert!(Instant::now() < deadline, "the catalog was not refreshed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1 (the admin endpoints): the status and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_exchange(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

/// One HTTP/1.1 request with a JSON body: the status and the JSON reply.
pub fn http_json(
    port: u16,
    method: &str,
    path: &str,
    api_key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let key = api_key
        .map(|k| format!("api-key: {k}\r\n"))
        .unwrap_or_default();
    let (status, reply) = http_exchange(
        port,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{key}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    let value = serde_json::from_str(&reply).unwrap_or(Value::String(reply));
    (status, value)
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) to 127.0.0.1:`port`: the
/// reply's status and body.
fn http_exchange(port: u16, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample (`name{labels}` exactly as exposed) in a metrics text, if present.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().unwrap())
    })
}

/// In `dir`, made with the openssl command line: a test CA (`ca.crt`, `ca.key`), a server
/// certificate it signs for `localhost` only (`server.crt`, `server.key`), a client certificate
/// it signs (`client.crt`, `client.key`), and a second CA that signed nothing (`other-ca.crt`).
pub fn test_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new(require("openssl"))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (tests/setup.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for ca in ["ca", "other-ca"] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
            "-subj",
            &format!("/CN=portcullis test {ca}"),
            "-days",
            "2",
        ]);
    }
    // `<name>.key` and `<name>.crt` for `subject`, signed by the test CA with the X.509 v3
    // extensions `ext` (rustls takes no v1 certificate).
    let signed = |name: &str, subject: &str, ext: &str| {
        let (key, csr, crt, ext_file) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ]);
        std::fs::write(dir.join(&ext_file), ext).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ]);
    };
    signed(
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    );
    signed("client", "/CN=portcullis", "extendedKeyUsage=clientAuth\n");
}
