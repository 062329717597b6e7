#!/usr/bin/env bash
# Builds ferry's container image on a machine that cannot pull a base image: the base is made from
# Debian's own packages (debootstrap of a minimal bookworm from this machine's apt mirror, then
# `podman import`), and the runtime image takes the release binary the host already built
# (Dockerfile target `prebuilt`), so RocksDB is not compiled again in a container.
# Usage: deploy/image/build.sh [TAG]   (default ferry:dev; env CARGO_TARGET_DIR as for cargo)
# Needs root (debootstrap) or an existing base image; installs podman and debootstrap with apt
# when missing. Elsewhere build the ordinary way: docker build -f deploy/Dockerfile -t ferry .
set -euo pipefail
cd "$(dirname "$0")/../.."
tag="${1:-ferry:dev}"
base="localhost/ferry-base:bookworm"
bin="${CARGO_TARGET_DIR:-target}/release/ferry"

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "build.sh: missing ${need[*]}. Run: sudo apt-get install -y ${need[*]}" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! podman image exists "$base"; then
  # The first Debian mirror apt is configured with (deb822 sources or sources.list).
  mirror="$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v security | awk '{print $2}' | head -1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  echo "build.sh: debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  echo "build.sh: base image $base"
fi

[ -x "$bin" ] || { echo "build.sh: no release binary at $bin: run cargo build --release --workspace --locked" >&2; exit 1; }
mkdir -p deploy/image/.prebuilt
install -s "$bin" deploy/image/.prebuilt/ferry
# --format docker: OCI images have no HEALTHCHECK. --isolation chroot: RUN steps need no OCI runtime
# (crun cannot create cgroups in some sandboxes).
podman build --isolation chroot --format docker -f deploy/Dockerfile --target prebuilt --build-arg BASE_IMAGE="$base" -t "$tag" .
echo "build.sh: built $tag"
