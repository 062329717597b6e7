#!/usr/bin/env bash
# The test command: set-up (libclang), then every test of the workspace (unit, integration, crash
# tests) in the release profile (one profile for running and testing, so RocksDB's C++ is compiled
# once), then the pywa client check (tests/clients/pywa_check.sh: a real Cloud API client from PyPI
# against the JSON API; skipped with a message without PyPI), then builds every bench (they are not
# run here; tests/bench_scripts.rs runs the benchmark scripts at smoke size; see benches/README.md).
# Ends with one summary line: `tests: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Every criterion bench and benchmark main must still build (tests/bench_scripts.rs runs the
# benchmark scripts at smoke size); same profile, so nothing of RocksDB is rebuilt.
if cargo build --release --workspace --locked --benches 2>&1 | tail -3; then
  echo "test result: ok. 1 passed; 0 failed (benches build)" >>"$log"
else
  echo "test result: FAILED. 0 passed; 1 failed (benches build)" >>"$log"
  [ "$status" = 0 ] && status=1
fi
# The integration tests built the release binary; the client check drives it over HTTP.
if tests/clients/pywa_check.sh "${CARGO_TARGET_DIR:-target}/release/ferry" 2>&1 | tee -a "$log"; then
  grep -q '^pywa check: ok' "$log" && echo "test result: ok. 1 passed; 0 failed (pywa client check)" >>"$log"
else
  echo "test result: FAILED. 0 passed; 1 failed (pywa client check)" >>"$log"
  [ "$status" = 0 ] && status=1
fi
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
