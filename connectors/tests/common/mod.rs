//! Helpers shared by the vector-store tests.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// The ids of a reply's points (numeric ids only).
pub fn point_ids(points: &Value) -> BTreeSet<u64> {
    points
        .as_array()
        .expect("a list of points")
        .iter()
        .map(|p| p["id"].as_u64().expect("a numeric point id"))
        .collect()
}

/// Runs `tests/clients/python/<script>` with `input` in the test venv; panics with its output
/// unless it succeeds.
pub fn run_python_check(script: &str, input: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} not found: run `bash tests/setup.sh` first",
        python.display()
    );
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/clients/python").join(script))
        .arg(input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
