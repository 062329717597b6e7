#!/usr/bin/env bash
# The test command: set-up (libclang), then every test of the workspace (unit, integration, crash
# tests) in the release profile (one profile for running and testing, so RocksDB's C++ is compiled
# once). Benchmarks are not run here (see benches/README.md). Ends with one summary line:
# `tests: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
