#!/usr/bin/env bash
# ferry in front of the Cloud API (issue #11): the two benchmark targets, on this machine, with a
# real `ferry cloudsim` as Meta, a real user-webhook receiver (`benches/webhook_sink.py`) and
# `ferry loadgen`, all as separate processes.
#
# 1. throughput: $NUMBERS business numbers with (practically) no rate limit. loadgen sends $COUNT
#    messages spread over the numbers; the script polls cloudsim's `/cloudsim/stats` and the
#    receiver until cloudsim took every message and ferry relayed every message's `read` to the
#    user's webhook. End to end = $COUNT / the time from the first send to the last `read`
#    relayed (every message posted to the Cloud API, its sent/delivered/read webhooks recorded
#    durably, its statuses POSTed to the user). Target: >= 10,000 msg/s.
# 2. pacing: 10 numbers at 80 msg/s each, both in cloudsim (130429 above it, GCRA with Meta's
#    burst) and in ferry's `[[cloud.numbers]] throughput_per_sec`. loadgen queues a backlog; over
#    $PACE_SECS of steady state the script measures the messages cloudsim took per second against
#    the 800 allowed and the share of requests refused 130429. Targets: >= 97 % of 800 msg/s,
#    < 0.5 % refused.
#
# Auth is off, the customer-service window off; 8 shards; cloudsim's pair limit off
# (`--pair-interval-ms 0`), so only the per-number limit applies.
#
#   benches/cloud.sh                                    # COUNT=100000 NUMBERS=8 PACE_SECS=30
#   WEBHOOK_BATCH=1 benches/cloud.sh                    # cloudsim posts one status per webhook
#   FERRY_BIN=path/to/ferry COUNT=500 PACE_SECS=2 benches/cloud.sh   # no build, smoke size
set -euo pipefail
SHARDS=${SHARDS:-8}
COUNT=${COUNT:-100000}
NUMBERS=${NUMBERS:-8}
BATCH=${BATCH:-100}
CONCURRENCY=${CONCURRENCY:-16}
RECIPIENTS=${RECIPIENTS:-10000}
# Statuses per webhook POST: cloudsim → ferry (Meta may put several in one) and ferry → the user.
WEBHOOK_BATCH=${WEBHOOK_BATCH:-100}
USER_WEBHOOK_BATCH=${USER_WEBHOOK_BATCH:-100}
PACE_SECS=${PACE_SECS:-30}
# 1: ferry speaks HTTP/2 to cloudsim (`cloud.http2_prior_knowledge`), as it does to Meta over TLS;
# 0: HTTP/1.1, one connection per request in flight.
HTTP2=${HTTP2:-1}
SCENARIOS=${SCENARIOS:-throughput pacing}
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
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Waits for PATTERN in FILE (a readiness line) while PID lives.
wait_line() {
    local file=$1 pattern=$2 pid=$3
    for _ in $(seq 600); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { cat "${file%.out}.err" >&2; echo "$file: exited" >&2; exit 1; }
        sleep 0.1
    done
    echo "$file: never said '$pattern'" >&2
    exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# CPU seconds (user + system) used so far by each of the given pids, space-separated.
cpu_seconds() {
    python3 - "$@" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
out = []
for pid in sys.argv[1:]:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) + int(fields[12])) / tick)  # utime, stime
    except (OSError, IndexError, ValueError):
        out.append(0.0)
print(" ".join(map(str, out)))
PY
}

# Starts cloudsim, the user-webhook receiver and ferry for scenario NAME with N numbers at RATE
# msg/s (cloudsim's limit and ferry's pacer). Sets cloudsim_url, sink_url, ferry_grpc, senders,
# server_pids.
start_stack() {
    local name=$1 n=$2 rate=$3
    local dir="$work/$name"
    mkdir -p "$dir"
    python3 benches/webhook_sink.py "$dir/sink.port" >"$dir/sink.out" 2>"$dir/sink.err" &
    pids+=($!)
    local sink_pid=$!
    for _ in $(seq 100); do [ -s "$dir/sink.port" ] && break; sleep 0.05; done
    sink_url="http://127.0.0.1:$(cat "$dir/sink.port")"
    local http_port
    http_port=$(free_port)
    local numbers=() toml="$dir/ferry.toml"
    senders=""
    cat >"$toml" <<EOF
shards = $SHARDS
upstream_kind = "cloud"
customer_service_window = "off"

[webhook]
url = "$sink_url/ferry"
max_statuses_per_post = $USER_WEBHOOK_BATCH

[cloud]
app_secret = "bench-secret"
verify_token = "bench-verify"
http2_prior_knowledge = $([ "$HTTP2" = 1 ] && echo true || echo false)
EOF
    for i in $(seq "$n"); do
        local id phone
        id=$((106540352240000 + i))
        phone=$((15550100000 + i))
        numbers+=(--number "$id=token-$i:$rate:$phone")
        senders="${senders:+$senders,}+$phone"
        printf '\n[[cloud.numbers]]\nphone_number = "+%s"\nphone_number_id = "%s"\ntoken = "token-%s"\nthroughput_per_sec = %s\n' \
            "$phone" "$id" "$i" "$rate" >>"$toml"
    done
    "$ferry" cloudsim --listen 127.0.0.1:0 --webhook-url "http://127.0.0.1:$http_port/webhooks/cloud" \
        --app-secret bench-secret --pair-interval-ms 0 --webhook-batch "$WEBHOOK_BATCH" "${numbers[@]}" \
        >"$dir/cloudsim.out" 2>"$dir/cloudsim.err" &
    pids+=($!)
    local cloudsim_pid=$!
    wait_line "$dir/cloudsim.out" "cloudsim: listening on" $cloudsim_pid
    cloudsim_url="http://$(sed -n 's/^cloudsim: listening on //p' "$dir/cloudsim.out" | tr -d ' ')"
    "$ferry" serve --config "$toml" --data-dir "$dir/data" --auth disabled --grpc-listen 127.0.0.1:0 \
        --http-listen "127.0.0.1:$http_port" --cloud-base-url "$cloudsim_url" >"$dir/ferry.out" 2>"$dir/ferry.err" &
    pids+=($!)
    local ferry_pid=$!
    wait_line "$dir/ferry.out" "grpc listening" $ferry_pid
    ferry_grpc="http://$(sed -n 's/^ferry: grpc listening on //p' "$dir/ferry.out")"
    server_pids=($ferry_pid $cloudsim_pid $sink_pid)
}

stop_stack() {
    for p in "${server_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${server_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# One JSON line: cloudsim's stats and the receiver's, and the time (s since the epoch).
poll() {
    python3 - "$cloudsim_url/cloudsim/stats" "$sink_url/stats" <<'PY'
import json, sys, time, urllib.request
cloud = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))
sink = json.load(urllib.request.urlopen(sys.argv[2], timeout=5))
print(json.dumps({"t": time.time(), "cloud": cloud, "sink": sink}))
PY
}

throughput() {
    echo "== throughput: $COUNT messages over $NUMBERS numbers (no rate limit), $SHARDS shards," \
        "loadgen --batch $BATCH --concurrency $CONCURRENCY, $RECIPIENTS recipients," \
        "webhook batch cloudsim→ferry $WEBHOOK_BATCH, ferry→user $USER_WEBHOOK_BATCH"
    start_stack throughput "$NUMBERS" 100000
    local dir="$work/throughput" before
    before=$(cpu_seconds "${server_pids[@]}")
    local start
    start=$(python3 -c 'import time; print(time.time())')
    "$ferry" loadgen --target "$ferry_grpc" --sender "$senders" --batch "$BATCH" --concurrency "$CONCURRENCY" \
        --recipients "$RECIPIENTS" --count "$COUNT" --quiet --json "$dir/loadgen.json" >"$dir/loadgen.txt" &
    local loadgen=$!
    pids+=($loadgen)
    : >"$dir/polls"
    local deadline=$((SECONDS + 120 + COUNT / 500))
    while true; do
        poll >>"$dir/polls"
        if python3 - "$dir/polls" "$COUNT" <<'PY'
import json, sys
last = json.loads(open(sys.argv[1]).read().splitlines()[-1])
done = last["cloud"]["unique_messages"] >= int(sys.argv[2]) and last["sink"]["by_status"].get("read", 0) >= int(sys.argv[2])
sys.exit(0 if done else 1)
PY
        then break; fi
        if [ $SECONDS -gt $deadline ]; then echo "throughput: not every message relayed in time" >&2; tail -1 "$dir/polls" >&2; exit 1; fi
        sleep 0.2
    done
    wait $loadgen
    local after
    after=$(cpu_seconds "${server_pids[@]}")
    python3 - "$dir/polls" "$dir/loadgen.json" "$COUNT" "$start" "$before" "$after" <<'PY'
import json, sys
polls = [json.loads(l) for l in open(sys.argv[1])]
report = json.load(open(sys.argv[2]))
count, start = int(sys.argv[3]), float(sys.argv[4])
cpu = [b - a for a, b in zip(map(float, sys.argv[5].split()), map(float, sys.argv[6].split()))]
def first(pred):
    return next(p["t"] for p in polls if pred(p)) - start
taken_at = first(lambda p: p["cloud"]["unique_messages"] >= count)
relayed_at = first(lambda p: p["sink"]["by_status"].get("read", 0) >= count)
last = polls[-1]
print(f"accepted: {report['accepted']} in {report['send_secs']:.2f} s = {report['accepted_per_sec']:.0f} msg/s; "
      f"accept p50 {report['accept_latency_ms']['p50']:.1f} ms, p99 {report['accept_latency_ms']['p99']:.1f} ms")
print(f"taken by cloudsim: all {count} by {taken_at:.2f} s = {count / taken_at:.0f} msg/s; "
      f"duplicates {last['cloud']['duplicate_messages']}, refusals {last['cloud']['refusals']}")
print(f"statuses relayed to the user's webhook: every read by {relayed_at:.2f} s; "
      f"unique {last['sink']['unique']} {last['sink']['by_status']}, repeats {last['sink']['repeats']}, posts {last['sink']['posts']}")
print(f"end to end (accepted → read relayed): {count / relayed_at:.0f} msg/s")
# Where the time goes: per second, what cloudsim had taken and what the user had been told.
print("timeline (s: taken by cloudsim / sent, delivered, read relayed):")
line, mark = [], 1.0
for p in polls:
    at = p["t"] - start
    if at >= mark:
        by = p["sink"]["by_status"]
        line.append(f"{at:.1f}: {p['cloud']['unique_messages']} / {by.get('sent', 0)}, {by.get('delivered', 0)}, {by.get('read', 0)}")
        mark = int(at) + 1.0
print("  " + "; ".join(line))
per = lambda s: f"{s:.1f} s = {s * 1000 * 1000 / count:.0f} ms per 1,000 messages"
print(f"CPU: ferry {per(cpu[0])}; cloudsim {per(cpu[1])}; user-webhook receiver {per(cpu[2])}")
PY
    stop_stack
}

pacing() {
    local n=10 rate=80
    local backlog=$((rate * n * (PACE_SECS + 8)))
    echo "== pacing: $n numbers at $rate msg/s each (cloudsim and ferry), a backlog of $backlog messages," \
        "measured over $PACE_SECS s"
    start_stack pacing $n $rate
    local dir="$work/pacing"
    "$ferry" loadgen --target "$ferry_grpc" --sender "$senders" --batch "$BATCH" --concurrency 4 \
        --recipients "$RECIPIENTS" --count "$backlog" --quiet --json "$dir/loadgen.json" >"$dir/loadgen.txt" &
    local loadgen=$!
    pids+=($loadgen)
    # Steady state: skip the first seconds (start-up burst), then measure PACE_SECS.
    sleep 3
    poll >"$dir/first"
    sleep "$PACE_SECS"
    poll >"$dir/second"
    wait $loadgen
    python3 - "$dir/first" "$dir/second" $n $rate <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
n, rate = int(sys.argv[3]), int(sys.argv[4])
secs = b["t"] - a["t"]
taken = b["cloud"]["messages_taken"] - a["cloud"]["messages_taken"]
requests = b["cloud"]["requests"] - a["cloud"]["requests"]
refused = b["cloud"]["refusals"].get("130429", 0) - a["cloud"]["refusals"].get("130429", 0)
allowed = n * rate
share = taken / secs / allowed
print(f"taken: {taken} in {secs:.1f} s = {taken / secs:.1f} msg/s of {allowed} allowed = {share * 100:.1f} %")
print(f"refused 130429: {refused} of {requests} requests = {refused / max(requests, 1) * 100:.2f} %")
peaks = sorted(v["max_per_second"] for v in b["cloud"]["numbers"].values())
print(f"highest per-second rate per number: {peaks}; duplicates {b['cloud']['duplicate_messages']}")
PY
    stop_stack
}

for s in $SCENARIOS; do
    "$s"
done
