#!/usr/bin/env bash
# The test command: set-up (libclang), then every test of the workspace in the release profile
# (one profile for running and testing, so RocksDB's C++ is compiled once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --release --workspace --locked "$@"
