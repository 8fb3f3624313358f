//! Writing a log: appending entries durably, then publishing signed checkpoints.
//!
//! An append is one `write` of whole lines followed by `fdatasync`: when it returns, the entries
//! survive a crash. A crash mid-append can leave a partial last line, which no caller was told
//! was written; opening the log drops it. The stored hashes are derived data, rebuilt from the
//! entries on open; checkpoints are written to a temporary file and renamed into place.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use signed_note::{Note, Signer, StandardSigner};
use tlog_tiles::Checkpoint;

use crate::canonical::is_canonical;
use crate::keys::{self, KeyError};
use crate::layout::{CHECKPOINTS, ENTRIES, HASHES, LATEST};
use crate::tree::Tree;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log key: {0}")]
    Key(#[from] KeyError),
    #[error("the audit key is for log {key:?}, not {origin:?}")]
    WrongKey { key: String, origin: String },
    #[error("entry {0} is not one line of canonical JSON")]
    NotCanonical(usize),
    #[error(
        "the entries in {dir} no longer match its checkpoint of size {size}; run `portcullis \
         audit verify` (the log must not be appended to)"
    )]
    Diverged { dir: PathBuf, size: u64 },
}

/// An open log, appended to by one writer.
pub struct Log {
    dir: PathBuf,
    origin: String,
    signer: StandardSigner,
    entries: File,
    hashes: File,
    tree: Tree,
    /// The size of the latest checkpoint.
    checkpointed: Option<u64>,
    /// The length of the entries file up to its last acknowledged entry.
    entries_len: u64,
    /// An append failed: the file may hold a tail no caller was told of, cut before the next.
    torn: bool,
    /// Writing the stored hashes failed; they are rebuilt at the next open.
    hashes_broken: bool,
    /// Entries were written without an fsync since the last one.
    unsynced: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The entries of the log in `dir`, without their newlines; a partial last line is left out.
pub(crate) fn read_entries(dir: &Path) -> Result<(Vec<Vec<u8>>, usize), std::io::Error> {
    let path = dir.join(ENTRIES);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let entries = bytes[..complete]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect::<Vec<_>>();
    // `split` yields an empty piece after the last newline.
    let entries = match entries.split_last() {
        Some((last, rest)) if last.is_empty() => rest.to_vec(),
        _ => entries,
    };
    Ok((entries, complete))
}

/// The checkpoint files of `dir`, by size.
pub(crate) fn read_checkpoints(dir: &Path) -> Result<Vec<(u64, Vec<u8>)>, std::io::Error> {
    let mut found = Vec::new();
    let path = dir.join(CHECKPOINTS);
    let listing = match fs::read_dir(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in listing {
        let entry = entry?;
        let name = entry.file_name();
        let Some(size) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        found.push((size, fs::read(entry.path())?));
    }
    found.sort_by_key(|(size, _)| *size);
    Ok(found)
}

/// Writes `bytes` to `path` atomically (a temporary file, fsynced, renamed into place).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io(parent))?;
    }
    Ok(())
}

impl Log {
    /// Opens the log in `dir` (creating it), named `origin`, signing with `private_key` (see
    /// [`crate::generate_key`]). Refuses a log whose entries no longer match its latest
    /// checkpoint: appending to it would hide the change.
    pub fn open(dir: &Path, origin: &str, private_key: &str) -> Result<Log, LogError> {
        let signer = keys::signer(private_key)?;
        if signer.name() != origin {
            return Err(LogError::WrongKey {
                key: signer.name().into(),
                origin: origin.into(),
            });
        }
        fs::create_dir_all(dir.join(CHECKPOINTS)).map_err(io(dir))?;
        let entries_path = dir.join(ENTRIES);
        let (entries, complete) = read_entries(dir).map_err(io(&entries_path))?;
        let entries_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&entries_path)
            .map_err(io(&entries_path))?;
        // Drop a partial last line (a crash mid-append; never acknowledged).
        entries_file
            .set_len(complete as u64)
            .map_err(io(&entries_path))?;
        let mut tree = Tree::default();
        let mut hashes = Vec::new();
        for entry in &entries {
            for h in tree.append(entry) {
                hashes.extend_from_slice(&h.0);
            }
        }
        let hashes_path = dir.join(HASHES);
        write_atomic(&hashes_path, &hashes)?;
        let hashes_file = OpenOptions::new()
            .append(true)
            .open(&hashes_path)
            .map_err(io(&hashes_path))?;
        let checkpoints = read_checkpoints(dir).map_err(io(dir))?;
        let mut checkpointed = None;
        if let Some((size, bytes)) = checkpoints.last() {
            let matches = Note::from_bytes(bytes)
                .ok()
                .and_then(|n| Checkpoint::from_bytes(n.text()).ok())
                .is_some_and(|c| Some(*c.hash()) == tree.root(c.size()) && c.size() == *size);
            if !matches {
                return Err(LogError::Diverged {
                    dir: dir.into(),
                    size: *size,
                });
            }
            checkpointed = Some(*size);
        }
        Ok(Log {
            dir: dir.into(),
            origin: origin.into(),
            signer,
            entries: entries_file,
            hashes: hashes_file,
            tree,
            checkpointed,
            entries_len: complete as u64,
            torn: false,
            hashes_broken: false,
            unsynced: false,
        })
    }

    /// How many entries the log holds.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The log's origin (`portcullis/<node-id>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Appends `entries` (each one line of canonical JSON, see [`crate::canonical`]) and makes
    /// them durable; returns the index of the first.
    pub fn append(&mut self, entries: &[Vec<u8>]) -> Result<u64, LogError> {
        self.append_with(entries, true)
    }

    /// Appends `entries`, made durable now if `durable`, else by the next durable append or
    /// checkpoint (a crash may lose them; nothing was acknowledged on their account).
    pub fn append_with(&mut self, entries: &[Vec<u8>], durable: bool) -> Result<u64, LogError> {
        let first = self.tree.size();
        let mut lines = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum());
        for (i, entry) in entries.iter().enumerate() {
            if entry.contains(&b'\n') || !is_canonical(entry) {
                return Err(LogError::NotCanonical(i));
            }
            lines.extend_from_slice(entry);
            lines.push(b'\n');
        }
        let path = self.dir.join(ENTRIES);
        if self.torn {
            self.entries.set_len(self.entries_len).map_err(io(&path))?;
            self.torn = false;
        }
        let written = self.entries.write_all(&lines).and_then(|()| {
            if durable {
                self.entries.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Nothing of this append was acknowledged: cut what reached the file.
            self.torn = self.entries.set_len(self.entries_len).is_err();
            return Err(io(&path)(e));
        }
        self.entries_len += lines.len() as u64;
        self.unsynced = !durable;
        let mut hashes = Vec::new();
        for entry in entries {
            for h in self.tree.append(entry) {
                hashes.extend_from_slice(&h.0);
            }
        }
        // The stored hashes are derived (rebuilt on open): after a failed write, stop writing
        // them rather than misalign them; the entries are what was acknowledged.
        if !self.hashes_broken {
            self.hashes_broken = self.hashes.write_all(&hashes).is_err();
        }
        Ok(first)
    }

    /// Signs and publishes a checkpoint of the log as it is now (unless the latest one already
    /// covers every entry); returns the signed note.
    pub fn checkpoint(&mut self) -> Result<Vec<u8>, LogError> {
        let size = self.tree.size();
        let latest = self.dir.join(LATEST);
        if self.checkpointed == Some(size) {
            if let Ok(bytes) = fs::read(&latest) {
                return Ok(bytes);
            }
        }
        // A checkpoint never covers an entry that a crash could still take back.
        if self.unsynced {
            let path = self.dir.join(ENTRIES);
            self.entries.sync_data().map_err(io(&path))?;
            self.unsynced = false;
        }
        let root = self.tree.root(size).expect("the whole tree is stored");
        let text = Checkpoint::new(&self.origin, size, root, "")
            .expect("an origin checked by the key")
            .to_bytes();
        let mut note = Note::new(&text, &[]).expect("a checkpoint is a valid note text");
        note.add_sigs(&[&self.signer as &dyn Signer])
            .expect("the key's name is valid");
        let bytes = note.to_bytes();
        write_atomic(
            &self.dir.join(CHECKPOINTS).join(format!("{size:020}")),
            &bytes,
        )?;
        write_atomic(&latest, &bytes)?;
        self.checkpointed = Some(size);
        Ok(bytes)
    }
}
