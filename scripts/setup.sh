#!/usr/bin/env bash
# One-time machine set-up for building ferry on Debian/Ubuntu: the rocksdb crate compiles RocksDB
# (C++) and runs bindgen, which needs libclang. Installs what is missing when run as root (or with
# passwordless sudo); otherwise prints the exact command to run and fails.
set -euo pipefail

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
