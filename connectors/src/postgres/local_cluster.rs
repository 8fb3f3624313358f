//! A throwaway PostgreSQL cluster in a temporary directory on a free loopback port, for the demo
//! and the tests. Started with initdb/pg_ctl (as the `postgres` user when running as root, since
//! initdb refuses root) and stopped and deleted when dropped, also when a test panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL server binaries not found (looked in $PG_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin)")]
    NoBinaries,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
}

/// A running local cluster. Superuser `postgres` connects over the Unix socket (trust) or TCP
/// with [`LocalCluster::superuser_password`] (SCRAM).
pub struct LocalCluster {
    dir: TempDir,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
    superuser_password: String,
}

impl LocalCluster {
    /// Initializes and starts a new cluster. Blocking: call it from a blocking context.
    pub fn start() -> Result<Self, ClusterError> {
        let bindir = find_bindir().ok_or(ClusterError::NoBinaries)?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()?;
        let superuser_password = random_token();
        std::fs::write(dir.path().join("pwfile"), &superuser_password)?;
        std::fs::create_dir(dir.path().join("sock"))?;
        if as_postgres {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path()))?;
        }
        let mut cluster = LocalCluster {
            dir,
            bindir,
            port: 0,
            as_postgres,
            superuser_password,
        };
        let data = cluster.data_dir();
        let pwfile = cluster.dir.path().join("pwfile");
        cluster.run_pg(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "-N".as_ref(),
            ],
        )?;
        // A free port can be taken between probing and binding; retry a few times.
        let mut last_err = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB",
            self.port,
            self.socket_dir().display()
        );
        let data = self.data_dir();
        let log = self.dir.path().join("postgres.log");
        self.run_pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                "start".as_ref(),
            ],
        )
        .map(|_| ())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The cluster's data directory (owned by `postgres` when the tests run as root).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the server log is (useful when a test fails).
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// A TCP URL for the superuser, for direct (non-proxied) comparison queries.
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.superuser_password, self.port
        )
    }

    /// Runs SQL as the superuser over the Unix socket with psql; returns unaligned output.
    /// `vars` become psql variables (`:'name'` in the SQL).
    pub fn psql(&self, db: &str, sql: &str, vars: &[(&str, &str)]) -> Result<String, ClusterError> {
        let mut cmd = self.psql_command(db, vars);
        cmd.arg("-c").arg(sql);
        Ok(String::from_utf8_lossy(&run(&mut cmd)?.stdout).into_owned())
    }

    /// Runs a SQL file as the superuser (stops at the first error).
    pub fn psql_file(
        &self,
        db: &str,
        file: &Path,
        vars: &[(&str, &str)],
    ) -> Result<(), ClusterError> {
        let mut cmd = self.psql_command(db, vars);
        cmd.arg("-f").arg(file);
        run(&mut cmd).map(|_| ())
    }

    fn psql_command(&self, db: &str, vars: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(self.bindir.join("psql"));
        cmd.arg("-X")
            .arg("-q")
            .arg("-At")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg("postgres")
            .arg("-d")
            .arg(db);
        for (k, v) in vars {
            cmd.arg("-v").arg(format!("{k}={v}"));
        }
        cmd.env_remove("PGPASSWORD").env_remove("PGSERVICE");
        cmd
    }

    fn run_pg(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<Output, ClusterError> {
        let exe = self.bindir.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).current_dir(self.dir.path());
        run(&mut cmd)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run_pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

fn run(cmd: &mut Command) -> Result<Output, ClusterError> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(ClusterError::Command {
            command: format!("{:?}", cmd.get_program()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |p: &Path| p.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        return has_initdb(&dir).then_some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| has_initdb(p))
        .collect();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A random hex token (passwords of throwaway clusters and demo roles).
pub fn random_token() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
