//! `portcullis audit …`: make a log key, and check a log as an auditor would (verify the whole
//! log, prove one entry, check a proof offline). The checks are the `audit` crate's; this
//! module reads files and prints.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Make an Ed25519 key for a node's log: writes FILE (private, mode 0600) and FILE.pub
    Keygen {
        /// The node's id: the log's origin is portcullis/<node-id>
        #[arg(long)]
        node_id: String,
        /// Where to write the private key
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a log directory: every entry, every checkpoint's signature and tree head, and
    /// optionally that a checkpoint kept from earlier is still a prefix of the log
    Verify {
        dir: PathBuf,
        /// The log's public key file (FILE.pub from keygen)
        #[arg(long)]
        key: PathBuf,
        /// A checkpoint kept from an earlier look
        #[arg(long)]
        since: Option<PathBuf>,
    },
    /// Print a C2SP tlog-proof that the entry with this id is in the log's latest checkpoint
    Prove {
        dir: PathBuf,
        id: String,
        /// Also write the entry's exact bytes here (what verify-proof checks)
        #[arg(long)]
        entry_out: Option<PathBuf>,
    },
    /// Find decision records (with their outcomes): every given filter must match
    Search {
        /// The log directory (or search an export table with --export-url)
        #[arg(required_unless_present = "export_url", conflicts_with = "export_url")]
        dir: Option<PathBuf>,
        /// Search the [audit.export] table of a fleet instead: postgres://user@host/db
        #[arg(long)]
        export_url: Option<String>,
        /// The export table
        #[arg(long, default_value = "portcullis_audit")]
        export_table: String,
        /// An environment variable holding the export database's password
        #[arg(long)]
        password_env: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        /// The human the agent acted for
        #[arg(long)]
        on_behalf_of: Option<String>,
        /// From this time (RFC 3339, e.g. 2026-12-01T00:00:00Z, or Unix milliseconds)
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// allow, rewrite or deny
        #[arg(long)]
        decision: Option<String>,
        /// An entity type the statement read, e.g. public::customers
        #[arg(long)]
        relation: Option<String>,
        /// A determining policy id
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        sqlstate: Option<String>,
        /// A captured row, TABLE=KEY (public.customers=42; a composite key's values joined
        /// with ','): the statements that returned it
        #[arg(long)]
        key: Option<String>,
        /// One JSON object per line (the decision with an "outcomes" array) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Decide a recorded statement again, under the policy version and catalog snapshot its
    /// record names, and say whether the decision, rewrite and basis are the same (exit 1 if not)
    Replay {
        dir: PathBuf,
        id: String,
        /// The configuration whose policies.store holds the policy versions (default: the
        /// log's own policy-versions directory)
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a proof offline, with the entry and the log's public key alone
    VerifyProof {
        /// The log's public key file
        #[arg(long)]
        key: PathBuf,
        /// The entry's exact bytes
        entry: PathBuf,
        /// The proof (from `audit prove`)
        proof: PathBuf,
    },
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_key(path: &Path) -> anyhow::Result<String> {
    Ok(String::from_utf8(read(path)?)?.trim().to_string())
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Keygen { node_id, out } => {
            let origin = format!("portcullis/{node_id}");
            let (private, public) = audit::generate_key(&origin)?;
            anyhow::ensure!(
                !out.exists(),
                "{} exists; not overwriting a key",
                out.display()
            );
            write_private(&out, &private)?;
            let public_path = PathBuf::from(format!("{}.pub", out.display()));
            std::fs::write(&public_path, format!("{public}\n"))
                .with_context(|| format!("writing {}", public_path.display()))?;
            println!("{public}");
            eprintln!(
                "wrote {} (private: give it to the node only) and {} (public: give it to auditors)",
                out.display(),
                public_path.display()
            );
            Ok(())
        }
        AuditCommand::Verify { dir, key, since } => {
            let key = read_key(&key)?;
            let kept = since.as_deref().map(read).transpose()?;
            let report = audit::verify(&dir, &key, kept.as_deref())
                .map_err(|p| anyhow::anyhow!("{}: {p}", dir.display()))?;
            println!(
                "{}: OK, {} entries, {} checkpoints{}",
                dir.display(),
                report.entries,
                report.checkpoints,
                report
                    .latest
                    .map(|s| format!(", latest covers {s}"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        AuditCommand::Prove { dir, id, entry_out } => {
            let (index, entry) = audit::find(&dir, &id)?
                .ok_or_else(|| anyhow::anyhow!("no entry with id {id} in {}", dir.display()))?;
            let proof = audit::prove(&dir, index)?;
            if let Some(path) = entry_out {
                std::fs::write(&path, &entry)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{proof}");
            Ok(())
        }
        AuditCommand::Search {
            dir,
            export_url,
            export_table,
            password_env,
            agent,
            on_behalf_of,
            since,
            until,
            decision,
            relation,
            policy,
            sqlstate,
            key,
            json,
        } => {
            let key = key
                .map(|k| {
                    let (table, values) = k
                        .split_once('=')
                        .context("--key is TABLE=KEY, e.g. public.customers=42")?;
                    anyhow::Ok((
                        table.to_string(),
                        values.split(',').map(str::to_string).collect(),
                    ))
                })
                .transpose()?;
            let query = audit::Query {
                agent,
                on_behalf_of,
                since_ms: since.as_deref().map(parse_time).transpose()?,
                until_ms: until.as_deref().map(parse_time).transpose()?,
                decision,
                relation,
                policy,
                sqlstate,
                key,
            };
            let hits = match (dir, export_url) {
                (Some(dir), _) => audit::search(&dir, &query)
                    .with_context(|| format!("reading {}", dir.display()))?,
                (None, Some(url)) => crate::runtime()?.block_on(crate::audit_export::search(
                    &url,
                    password_env.as_deref(),
                    &export_table,
                    &query,
                ))?,
                (None, None) => unreachable!("clap requires one"),
            };
            for hit in &hits {
                if json {
                    let mut v = hit.decision.clone();
                    v["index"] = hit.index.into();
                    if let Some(origin) = &hit.origin {
                        v["origin"] = origin.as_str().into();
                    }
                    v["outcomes"] = hit.outcomes.clone().into();
                    println!("{v}");
                    continue;
                }
                let d = &hit.decision;
                let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
                let result = match hit.outcomes.first() {
                    Some(o) if o["error"].is_string() => {
                        format!("error {}", o["error"].as_str().unwrap_or(""))
                    }
                    Some(o) if o["not_run"] == true => "not run".into(),
                    Some(o) => format!("{} ({} rows)", o["tag"].as_str().unwrap_or("-"), o["rows"]),
                    None if s("decision") == "deny" => format!("refused {}", s("sqlstate")),
                    None => "-".into(),
                };
                let time = d["time_ms"].as_u64().map_or("-".to_string(), |ms| {
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                    )
                    .to_string()
                });
                let index = match &hit.origin {
                    Some(origin) => format!("{origin}:{}", hit.index),
                    None => hit.index.to_string(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    index,
                    time,
                    s("agent"),
                    s("decision"),
                    result,
                    s("id"),
                    s("statement").replace(['\n', '\t'], " ")
                );
            }
            eprintln!("{} decision(s)", hits.len());
            Ok(())
        }
        AuditCommand::Replay { dir, id, config } => {
            let store = match config {
                Some(path) => crate::config::Config::load(&path)?
                    .policies
                    .and_then(|p| p.store),
                None => None,
            };
            let matched = crate::audit_replay::replay(&dir, &id, store.as_deref())?;
            if !matched {
                std::process::exit(1);
            }
            Ok(())
        }
        AuditCommand::VerifyProof { key, entry, proof } => {
            let key = read_key(&key)?;
            let entry = read(&entry)?;
            let proof = String::from_utf8(read(&proof)?)?;
            let proven = audit::verify_proof(&entry, &proof, &key)?;
            println!(
                "OK: entry {} of {} is in its checkpoint of size {}",
                proven.index, proven.origin, proven.size
            );
            Ok(())
        }
    }
}

/// Unix milliseconds, or an RFC 3339 UTC time (`2026-12-01T10:00:00Z`).
fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339(text)
        .with_context(|| format!("{text}: not Unix milliseconds or an RFC 3339 time"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64)
}

fn write_private(path: &Path, key: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{key}")?;
    Ok(())
}
