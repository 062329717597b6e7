#!/usr/bin/env bash
# pywa (a Cloud API client from PyPI) against ferry's Cloud route: see pywa_check.py.
# Usage: tests/clients/pywa_check.sh [FERRY_BINARY]   (default: $CARGO_TARGET_DIR or target, release)
# Makes a venv in $HOME/.cache/ferry-pywa-venv (installs python3-venv via apt when missing and run
# as root) with pywa pinned. Only when PyPI cannot be reached (pip's index query fails too) it
# prints "pywa check: skipped: ..." and exits 0 (scripts/test.sh counts it as skipped); any other
# failure, an install failure with PyPI answering included, fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYWA_VERSION=4.5.0
venv="$HOME/.cache/ferry-pywa-venv"
bin="${1:-${CARGO_TARGET_DIR:-target}/release/ferry}"
[ -x "$bin" ] || { echo "pywa check: no ferry binary at $bin (build with cargo build --release)" >&2; exit 1; }

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "pywa check: python3 venv support missing. Run: sudo apt-get install -y python3-venv" >&2
    exit 1
  fi
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if [ "$("$venv/bin/python" -c 'import pywa; print(pywa.__version__)' 2>/dev/null)" != "$PYWA_VERSION" ]; then
  if ! "$venv/bin/pip" install -q --disable-pip-version-check "pywa==$PYWA_VERSION"; then
    # Only a registry that cannot be reached skips; a registry that answers and an install that
    # fails anyway (a missing version, a broken build) is a failure.
    if "$venv/bin/pip" index versions --disable-pip-version-check pywa >/dev/null 2>&1; then
      echo "pywa check: FAILED: PyPI answers but pywa==$PYWA_VERSION does not install" >&2
      exit 1
    fi
    echo "pywa check: skipped: PyPI cannot be reached (pywa==$PYWA_VERSION not installed)"
    exit 0
  fi
fi
"$venv/bin/python" tests/clients/pywa_check.py "$bin"
echo "pywa check: ok"
