#!/usr/bin/env bash
# Accept latency at half of the maximum sustained rate (issue 4's latency target), measured against
# a real `ferry serve` process, driven by `ferry loadgen` from a second process on the same
# machine. CHAT=external (the default) runs the chat server as a third process (`ferry chatsim`,
# `ferry serve --upstream`; loadgen opens every recipient's customer-service window first);
# CHAT=inprocess uses the one `ferry serve` embeds.
#
# 0. Warm-up: one message per recipient, so sessions are set up before measuring.
# 1. As fast as possible for $DURATION: the end-to-end (acked) rate is the maximum sustained rate.
# 2. Open loop at half of it for $DURATION: accept latency percentiles (from each call's scheduled
#    time, so queueing is not hidden).
#
# ferry runs as shipped (auth on): the script sets the admin password, logs in and hands the
# token to loadgen. The test suite runs it once at smoke size (tests/bench_scripts.rs), so it
# cannot rot unnoticed.
#
#   benches/targets.sh                      # SHARDS=8 BATCH=100 DURATION=15s
#   SHARDS=32 BATCH=1 CONCURRENCY=64 benches/targets.sh
#   FERRY_BIN=path/to/ferry DURATION=1s RECIPIENTS=100 benches/targets.sh   # no build, smoke size
set -euo pipefail
SHARDS=${SHARDS:-8}
BATCH=${BATCH:-100}
CONCURRENCY=${CONCURRENCY:-16}
DURATION=${DURATION:-15s}
RECIPIENTS=${RECIPIENTS:-10000}
CHAT=${CHAT:-external}
case "$CHAT" in external|inprocess) ;; *) echo "CHAT must be external or inprocess, got '$CHAT'" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
if [ -n "${FERRY_BIN:-}" ]; then
    ferry="$FERRY_BIN"
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
    scripts/setup.sh
    # --workspace: a -p build unifies features differently and rebuilds RocksDB.
    cargo build --release --locked --quiet --workspace --bin ferry
    ferry="$CARGO_TARGET_DIR/release/ferry"
fi

work=$(mktemp -d)
export FERRY_ADMIN_PASSWORD="bench-$RANDOM-$RANDOM"
chat_pid=
serve_pid=
upstream=()
open_windows=()
trap 'kill $serve_pid $chat_pid 2>/dev/null; wait $serve_pid $chat_pid 2>/dev/null; rm -rf "$work"' EXIT
# wait_line PID OUT ERR PATTERN NAME: waits until process PID prints PATTERN to OUT (30 s).
wait_line() {
    for _ in $(seq 300); do
        grep -q "$4" "$2" 2>/dev/null && return 0
        kill -0 "$1" 2>/dev/null || { cat "$3" >&2; echo "$5 exited" >&2; exit 1; }
        sleep 0.1
    done
    grep -q "$4" "$2" || { cat "$3" >&2; echo "$5 never listened" >&2; exit 1; }
}
if [ "$CHAT" = external ]; then
    "$ferry" chatsim --listen 127.0.0.1:0 >"$work/chat.out" 2>"$work/chat.err" &
    chat_pid=$!
    wait_line $chat_pid "$work/chat.out" "$work/chat.err" "listening on" "ferry chatsim"
    upstream=(--upstream "$(sed -n 's/^chatsim: listening on //p' "$work/chat.out")")
    open_windows=(--open-windows)
fi
"$ferry" serve --shards "$SHARDS" --data-dir "$work/data" --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    "${upstream[@]}" >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
wait_line $serve_pid "$work/serve.out" "$work/serve.err" "grpc listening" "ferry serve"
target="http://$(sed -n 's/^ferry: grpc listening on //p' "$work/serve.out")"
chatsim="http://$(sed -n 's/^ferry: upstream //p' "$work/serve.out")"
http="http://$(sed -n 's/^ferry: http listening on //p' "$work/serve.out")"
FERRY_TOKEN=$(FERRY_PASSWORD="$FERRY_ADMIN_PASSWORD" "$ferry" login --http "$http" --user admin)
export FERRY_TOKEN
common=(--target "$target" --chatsim "$chatsim" --batch "$BATCH" --concurrency "$CONCURRENCY"
        --recipients "$RECIPIENTS" --duration "$DURATION" --quiet)

echo "== ferry serve --shards $SHARDS, chat server $CHAT; loadgen --batch $BATCH --concurrency $CONCURRENCY, $RECIPIENTS recipients"
echo "-- 0. warm-up: one message per recipient sets up every encryption session (X3DH, both sides)"
"$ferry" loadgen --target "$target" --chatsim "$chatsim" --batch 100 --concurrency 8 --recipients "$RECIPIENTS" \
    --count "$RECIPIENTS" "${open_windows[@]}" --quiet >/dev/null
echo "-- 1. as fast as possible"
"$ferry" loadgen "${common[@]}" --json "$work/max.json" | tee "$work/max.txt"
max=$(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['acked_per_sec'] or 0))" "$work/max.json")
half=$((max / 2))
echo "-- 2. open loop at half of the sustained end-to-end rate: $half msg/s"
"$ferry" loadgen "${common[@]}" --rate "$half" --json "$work/half.json" | tee "$work/half.txt"
python3 - "$work/max.json" "$work/half.json" "$max" <<'PY'
import json, sys
m, h, mx = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), int(sys.argv[3])
l = h["accept_latency_ms"]
print(f"max sustained (acked) {mx} msg/s; at {mx // 2} msg/s: accepted {h['accepted_per_sec']:.0f}/s, "
      f"accept p50 {l['p50']:.2f} ms, p99 {l['p99']:.2f} ms, p99.9 {l['p999']:.2f} ms (target p99 <= 5 ms)")
PY
