#!/usr/bin/env bash
# The test command: set-up (libclang), then every test of the workspace (unit, integration, crash
# tests) in the release profile (one profile for running and testing, so RocksDB's C++ is compiled
# once), then the pywa client check (tests/clients/pywa_check.sh: a real Cloud API client from PyPI
# against the JSON API; skipped, and counted as skipped, only when the package registry cannot be
# reached), then builds every bench (they are not run here; tests/bench_scripts.rs runs the
# benchmark scripts at smoke size; see benches/README.md).
# The reference texts (tests/http_api.rs checks that the fixtures cover their examples) are found at
# $FERRY_REFERENCE_DIR, else ../shared/reference beside the repo, else /work/shared/reference; with
# none of them that one test is skipped and counted as skipped.
# Ends with one summary line: `tests: N passed, N failed, N skipped` (skipped: cargo's ignored
# tests plus the skips above).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
log="$(mktemp)"
# Tests that skip (support::skip) append a line here; cargo counted each as passed.
FERRY_SKIP_LOG="$(mktemp)"
export FERRY_SKIP_LOG
trap 'rm -f "$log" "$FERRY_SKIP_LOG"' EXIT
if [ -z "${FERRY_REFERENCE_DIR:-}" ]; then
  for d in ../shared/reference /work/shared/reference; do
    if [ -d "$d" ]; then
      FERRY_REFERENCE_DIR="$(cd "$d" && pwd)"
      export FERRY_REFERENCE_DIR
      break
    fi
  done
fi
if [ ! -d "${FERRY_REFERENCE_DIR:-/nonexistent}" ]; then
  echo "scripts/test.sh: no reference texts found: the reference-coverage test will skip (set FERRY_REFERENCE_DIR)"
  export FERRY_SKIP_REFERENCE_TEXTS=1
fi
set +e
cargo test --release --workspace --locked --lib --bins --tests "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
while IFS= read -r line; do
  echo "test skipped (cargo counted it passed): $line" | tee -a "$log"
done <"$FERRY_SKIP_LOG"
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
  if grep -q '^pywa check: ok' "$log"; then
    echo "test result: ok. 1 passed; 0 failed (pywa client check)" >>"$log"
  elif grep -q '^pywa check: skipped' "$log"; then
    echo "test skipped: the pywa client check" >>"$log"
  else
    echo "test result: FAILED. 0 passed; 1 failed (pywa client check: neither ok nor skipped)" >>"$log"
    [ "$status" = 0 ] && status=1
  fi
else
  echo "test result: FAILED. 0 passed; 1 failed (pywa client check)" >>"$log"
  [ "$status" = 0 ] && status=1
fi
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) s += $i } }
     /^test skipped:/ { s += 1 }
     /^test skipped \(cargo counted it passed\):/ { s += 1; p -= 1 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
