//! Following a log as it grows, for shipping it elsewhere: the latest checkpoint, and the
//! entries it covers read in order from a given index, without rereading the file each time.
//!
//! Only entries covered by a published checkpoint are handed out: each is then fsynced, part of
//! a signed tree head, and can be shipped with that checkpoint.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::layout::{ENTRIES, LATEST};

/// The latest checkpoint of the log in `dir`: its tree size and the signed note as published.
/// `None` before the first one.
pub fn latest_checkpoint(dir: &Path) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let note = match std::fs::read(dir.join(LATEST)) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // A tlog-checkpoint's text: origin, then the tree size, then the root hash.
    let size = std::str::from_utf8(&note)
        .ok()
        .and_then(|t| t.lines().nth(1))
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a checkpoint", dir.join(LATEST).display()),
            )
        })?;
    Ok(Some((size, note)))
}

/// Reads a log's entries in order from some index on.
pub struct Tail {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    /// The index of the next entry `read` returns.
    next: u64,
}

impl Tail {
    /// A reader of the log in `dir` whose first entry read is the one at `index`.
    pub fn new(dir: &Path, index: u64) -> Tail {
        Tail {
            path: dir.join(ENTRIES),
            reader: None,
            next: index,
        }
    }

    /// The index of the next entry `read` returns.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Up to `max` entries (without their newlines) from the next index, but none at or past
    /// `until` (the size of a checkpoint, so that only covered entries are read).
    pub fn read(&mut self, until: u64, max: usize) -> std::io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        if self.next >= until {
            return Ok(out);
        }
        if self.reader.is_none() {
            // The first read skips the entries before the start index, once.
            let mut reader = BufReader::new(File::open(&self.path)?);
            let mut skipped = 0;
            let mut line = Vec::new();
            while skipped < self.next {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
                    return Err(short(&self.path, self.next));
                }
                skipped += 1;
            }
            self.reader = Some(reader);
        }
        let reader = self.reader.as_mut().expect("opened above");
        while self.next < until && out.len() < max {
            let start = reader.stream_position()?;
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line)?;
            if line.last() != Some(&b'\n') {
                // A checkpoint covers only complete, fsynced lines: the file was cut.
                reader.seek(SeekFrom::Start(start))?;
                return Err(short(&self.path, until));
            }
            line.pop();
            out.push(line);
            self.next += 1;
        }
        // Forget what was read ahead: bytes past the checkpoint may yet be cut (a failed
        // append) and written again differently.
        let position = reader.stream_position()?;
        reader.seek(SeekFrom::Start(position))?;
        Ok(out)
    }
}

fn short(path: &Path, size: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!(
            "{} holds fewer than {size} entries; run `portcullis audit verify`",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_covered_entries_from_an_index_on() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::generate_key("portcullis/t").unwrap();
        let mut log = crate::Log::open(dir.path(), "portcullis/t", &key.0).unwrap();
        assert!(latest_checkpoint(dir.path()).unwrap().is_none());
        let entry = |i: u64| format!("{{\"n\":{i}}}").into_bytes();
        log.append(&(0..5).map(entry).collect::<Vec<_>>()).unwrap();
        log.checkpoint().unwrap();
        log.append(&[entry(5)]).unwrap();
        let (size, note) = latest_checkpoint(dir.path()).unwrap().unwrap();
        assert_eq!(size, 5);
        assert!(note.starts_with(b"portcullis/t\n5\n"));

        let mut tail = Tail::new(dir.path(), 2);
        assert_eq!(tail.read(size, 2).unwrap(), vec![entry(2), entry(3)]);
        assert_eq!(tail.read(size, 10).unwrap(), vec![entry(4)]);
        assert!(
            tail.read(size, 10).unwrap().is_empty(),
            "not past the checkpoint"
        );
        log.checkpoint().unwrap();
        let (size, _) = latest_checkpoint(dir.path()).unwrap().unwrap();
        assert_eq!(tail.read(size, 10).unwrap(), vec![entry(5)]);
        assert_eq!(tail.next_index(), 6);
        assert!(
            Tail::new(dir.path(), 9).read(12, 1).is_err(),
            "a short file"
        );
    }
}
