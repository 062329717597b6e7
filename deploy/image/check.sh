#!/usr/bin/env bash
# Starts the image (default ferry:dev, from deploy/image/build.sh), waits for `/healthz` to answer
# from inside the container (the image's HEALTHCHECK command, `ferry probe`) and from the host, then
# stops it with SIGTERM (the drain). Not part of scripts/test.sh: it needs podman and takes minutes.
# Usage: deploy/image/check.sh [TAG]
set -euo pipefail
tag="${1:-ferry:dev}"
name="ferry-check-$$"
# --cgroups=disabled --network host --ulimit host: runs in sandboxes where crun cannot create cgroups,
# netns or set rlimits; --healthcheck-command none: podman schedules HEALTHCHECK with systemd timers,
# which such a sandbox lacks, so this script runs the same command (`ferry probe`) itself.
podman run -d --name "$name" --cgroups=disabled --network host --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --healthcheck-command none -e FERRY_HTTP_LISTEN=127.0.0.1:18080 \
  -e FERRY_GRPC_LISTEN=127.0.0.1:15051 -e FERRY_PROBE_URL=http://127.0.0.1:18080/healthz "$tag" >/dev/null
trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 60); do
  if podman exec "$name" ferry probe >/dev/null 2>&1; then break; fi
  sleep 1
done
echo "inside:  $(podman exec "$name" ferry probe)"
echo "user:    $(podman exec "$name" id -u)"
echo "host:    $(podman exec "$name" ferry probe --url http://127.0.0.1:18080/readyz)"
podman stop -t 40 "$name" >/dev/null
echo "exit:    $(podman inspect -f '{{.State.ExitCode}}' "$name")"
echo "image check: ok"
