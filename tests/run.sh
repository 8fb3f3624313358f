#!/usr/bin/env bash
# The whole test suite: installs the client libraries the end-to-end tests drive, then runs every
# unit and end-to-end test (each end-to-end test starts its own throwaway PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"
bash tests/setup.sh
cargo test --workspace --locked "$@"
