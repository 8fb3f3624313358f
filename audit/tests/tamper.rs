//! The audit log against tampering, on real files: each kind of change an attacker with write
//! access to the directory could make is detected by `verify`, naming the entry or checkpoint.

use std::fs;
use std::path::Path;

use audit::{canonical, generate_key, prove, verify, verify_proof, Log, Problem};
use serde_json::json;

const ORIGIN: &str = "portcullis/test-node";

fn entry(i: u64) -> Vec<u8> {
    canonical(&json!({"id": format!("e{i}"), "agent": "support-bot", "n": i})).unwrap()
}

/// A log of 10 entries with checkpoints at sizes 4 and 10; returns (private, public) key.
fn make(dir: &Path) -> (String, String) {
    let (private, public) = generate_key(ORIGIN).unwrap();
    let mut log = Log::open(dir, ORIGIN, &private).unwrap();
    log.append(&(0..4).map(entry).collect::<Vec<_>>()).unwrap();
    log.checkpoint().unwrap();
    for i in 4..10 {
        log.append(&[entry(i)]).unwrap();
    }
    log.checkpoint().unwrap();
    (private, public)
}

fn lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("entries"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    fs::write(dir.join("entries"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn an_intact_log_verifies_and_a_kept_checkpoint_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = make(dir.path());
    let kept = fs::read(dir.path().join("checkpoint")).unwrap();
    let report = verify(dir.path(), &public, None).unwrap();
    assert_eq!(
        (report.entries, report.checkpoints, report.latest),
        (10, 2, Some(10))
    );
    // The log grows; the auditor's kept checkpoint is still a prefix of it.
    let mut log = Log::open(dir.path(), ORIGIN, &private).unwrap();
    assert_eq!(log.size(), 10);
    log.append(&[entry(10)]).unwrap();
    log.checkpoint().unwrap();
    verify(dir.path(), &public, Some(&kept)).unwrap();
}

#[test]
fn an_edited_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = make(dir.path());
    let mut l = lines(dir.path());
    // Still canonical, but not what was logged.
    l[6] = String::from_utf8(entry(66)).unwrap();
    write_lines(dir.path(), &l);
    assert_eq!(
        verify(dir.path(), &public, None),
        Err(Problem::EntryChanged(6))
    );
    // Not canonical any more.
    l[6] = l[6].replace(':', ": ");
    write_lines(dir.path(), &l);
    assert_eq!(
        verify(dir.path(), &public, None),
        Err(Problem::NotCanonical(6))
    );
}

#[test]
fn deleted_reordered_and_truncated_entries_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = make(dir.path());
    let original = lines(dir.path());
    let mut l = original.clone();
    l.remove(2);
    write_lines(dir.path(), &l);
    assert_eq!(
        verify(dir.path(), &public, None),
        Err(Problem::EntryChanged(2))
    );
    let mut l = original.clone();
    l.swap(7, 8);
    write_lines(dir.path(), &l);
    assert_eq!(
        verify(dir.path(), &public, None),
        Err(Problem::EntryChanged(7))
    );
    write_lines(dir.path(), &original[..8]);
    assert_eq!(
        verify(dir.path(), &public, None),
        Err(Problem::Truncated {
            size: 10,
            entries: 8
        })
    );
}

#[test]
fn an_edit_with_rebuilt_hashes_is_caught_by_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = make(dir.path());
    let mut l = lines(dir.path());
    l[5] = String::from_utf8(entry(55)).unwrap();
    write_lines(dir.path(), &l);
    // The attacker also rebuilds the derived hashes file.
    fs::remove_file(dir.path().join("hashes")).unwrap();
    assert_eq!(
        verify(dir.path(), &public, None),
        Err(Problem::Mismatch { from: 4, size: 10 })
    );
}

#[test]
fn forged_and_rewritten_checkpoints_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = make(dir.path());
    // A checkpoint signed by another key under the same name.
    let forger = tempfile::tempdir().unwrap();
    make(forger.path());
    let forged = fs::read(forger.path().join("checkpoint")).unwrap();
    let name = format!("{:020}", 10);
    fs::write(dir.path().join("checkpoints").join(&name), &forged).unwrap();
    match verify(dir.path(), &public, None) {
        Err(Problem::BadCheckpoint { size: 10, reason }) => {
            assert!(reason.contains("signature"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn history_rewritten_with_the_key_is_caught_by_a_kept_checkpoint() {
    // Someone holding the key rebuilds the log from an edited copy of the entries and re-signs
    // every checkpoint. Each checkpoint verifies alone; the one the auditor kept does not.
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = make(dir.path());
    let kept = fs::read(dir.path().join("checkpoint")).unwrap();
    let mut l = lines(dir.path());
    l[1] = String::from_utf8(entry(11)).unwrap();
    fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    fs::remove_file(dir.path().join("hashes")).unwrap();
    write_lines(dir.path(), &l);
    Log::open(dir.path(), ORIGIN, &private)
        .unwrap()
        .checkpoint()
        .unwrap();
    verify(dir.path(), &public, None).unwrap();
    match verify(dir.path(), &public, Some(&kept)) {
        Err(Problem::Inconsistent { size: 10, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn opening_drops_a_partial_last_line_and_refuses_a_diverged_log() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = make(dir.path());
    // A crash in the middle of an append: half a line, never acknowledged.
    let mut bytes = fs::read(dir.path().join("entries")).unwrap();
    bytes.extend_from_slice(br#"{"id":"e10","ag"#);
    fs::write(dir.path().join("entries"), &bytes).unwrap();
    let mut log = Log::open(dir.path(), ORIGIN, &private).unwrap();
    assert_eq!(log.size(), 10);
    log.append(&[entry(10)]).unwrap();
    log.checkpoint().unwrap();
    drop(log);
    verify(dir.path(), &public, None).unwrap();
    // Entries changed under a checkpoint: the writer refuses to go on.
    let mut l = lines(dir.path());
    l[0] = String::from_utf8(entry(100)).unwrap();
    write_lines(dir.path(), &l);
    assert!(Log::open(dir.path(), ORIGIN, &private).is_err());
    // A key for another log is refused.
    let (other, _) = generate_key("portcullis/other").unwrap();
    assert!(Log::open(tempfile::tempdir().unwrap().path(), ORIGIN, &other).is_err());
    // Entries must be canonical, one line each.
    let d = tempfile::tempdir().unwrap();
    let mut log = Log::open(d.path(), ORIGIN, &private).unwrap();
    assert!(log.append(&[br#"{"b":1,"a":2}"#.to_vec()]).is_err());
    assert_eq!(log.size(), 0);
}

#[test]
fn inclusion_proofs_verify_offline_with_the_public_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = make(dir.path());
    let (index, bytes) = audit::find(dir.path(), "e7").unwrap().unwrap();
    assert_eq!((index, &bytes), (7, &entry(7)));
    let proof = prove(dir.path(), index).unwrap();
    assert!(
        proof.starts_with("c2sp.org/tlog-proof@v1\nindex 7\n"),
        "{proof}"
    );
    let proven = verify_proof(&bytes, &proof, &public).unwrap();
    assert_eq!(
        (proven.origin.as_str(), proven.index, proven.size),
        (ORIGIN, 7, 10)
    );
    // Another entry, another index, another key, or an edited path: refused.
    assert!(verify_proof(&entry(6), &proof, &public).is_err());
    assert!(verify_proof(&bytes, &proof.replace("index 7", "index 6"), &public).is_err());
    let (_, stranger) = generate_key(ORIGIN).unwrap();
    assert!(verify_proof(&bytes, &proof, &stranger).is_err());
    let mut tampered: Vec<String> = proof.lines().map(str::to_string).collect();
    tampered[2] = tampered[3].clone();
    assert!(verify_proof(&bytes, &(tampered.join("\n") + "\n"), &public).is_err());
}
