#!/usr/bin/env bash
# One-time machine set-up for building ferry on Debian/Ubuntu: the rocksdb crate compiles RocksDB
# (C++) and runs bindgen, which needs libclang. Installs what is missing when run as root (or with
# passwordless sudo); otherwise prints the exact command to run and fails.
#
# scripts/setup.sh --k8s-validator: instead, makes (once; cached) the venv of the Kubernetes
# manifest validator (kubernetes-validate from PyPI, pinned; its schemas ship in the package, so
# validating is offline) and prints the validator's path. Exit 3 only when PyPI cannot be reached
# (tests/deploy.rs then skips, counted); any other failure is a failure.
set -euo pipefail

if [ "${1:-}" = "--k8s-validator" ]; then
  version=1.37.0
  venv="$HOME/.cache/ferry-k8s-venv"
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      echo "ferry setup: python3 venv support missing. Run: sudo apt-get install -y python3-venv" >&2
      exit 1
    fi
  fi
  # Tests call this concurrently: one at a time makes (or checks) the venv.
  mkdir -p "$HOME/.cache"
  exec 9>"$HOME/.cache/ferry-k8s-venv.lock"
  flock 9
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null | awk '{print $NF}')" != "$version" ]; then
    if ! "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$version" >&2; then
      if "$venv/bin/pip" index versions --disable-pip-version-check kubernetes-validate >/dev/null 2>&1; then
        echo "ferry setup: PyPI answers but kubernetes-validate==$version does not install" >&2
        exit 1
      fi
      echo "ferry setup: PyPI cannot be reached (kubernetes-validate==$version not installed)" >&2
      exit 3
    fi
  fi
  echo "$venv/bin/kubernetes-validate"
  exit 0
fi

need=()
have_libclang() {
  # libclang itself (libclang.so, libclang-14.so.1, ...), not libclang-cpp, which bindgen cannot use.
  local d f
  for d in /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib; do
    for f in "$d"/libclang.so* "$d"/libclang-[0-9]*.so*; do
      [ -e "$f" ] && return 0
    done
  done
  [ -n "${LIBCLANG_PATH:-}" ] && compgen -G "$LIBCLANG_PATH/libclang*.so*" >/dev/null && return 0
  return 1
}
have_libclang || need+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)

if ! command -v cargo >/dev/null 2>&1; then
  echo "ferry setup: cargo not found. Install the Rust toolchain (https://rustup.rs), then run this again." >&2
  exit 1
fi

if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else
        echo "ferry setup: missing ${need[*]}. Run:  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
        exit 1
      fi
    fi
    echo "ferry setup: installing ${need[*]} (needed to build RocksDB and its bindings)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "ferry setup: missing ${need[*]}: install libclang (LLVM's C library) and a C++ compiler with your package manager." >&2
    exit 1
  fi
fi
