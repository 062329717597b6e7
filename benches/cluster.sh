#!/usr/bin/env bash
# A three-node cluster (issue #12) against a single node, side by side, on this machine: the same
# `ferry` binary, the same loadgen run, one real `ferry chatsim` as the upstream.
#
# 1. single: `ferry serve` without [cluster] (today's single node), delivering to the chatsim.
# 2. cluster: three `ferry serve --node-id N --peers ...` (every shard a Raft group of the three,
#    leaders spread by placement), loadgen sending to node 1 (it forwards the writes of the shards
#    it does not lead; each shard's leader delivers).
# Each: a warm-up (one message per recipient: encryption sessions), then as fast as possible for
# $DURATION: accepted and acked (end-to-end) msg/s and accept latency percentiles.
#
# Auth is off (`--auth disabled`: users and tokens are per node in this version), the
# customer-service window off (the chatsim's users never write first).
#
#   benches/cluster.sh                                   # SHARDS=8 BATCH=100 CONCURRENCY=16 DURATION=15s
#   MAX_IN_FLIGHT=16 benches/cluster.sh                  # cluster.max_in_flight for the cluster run
#   FERRY_BIN=path/to/ferry DURATION=1s RECIPIENTS=100 benches/cluster.sh   # no build, smoke size
set -euo pipefail
SHARDS=${SHARDS:-8}
BATCH=${BATCH:-100}
CONCURRENCY=${CONCURRENCY:-16}
DURATION=${DURATION:-15s}
RECIPIENTS=${RECIPIENTS:-10000}
SINGLE=${SINGLE:-1}                # 0: skip the single-node run (cluster A/B runs)
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-}   # cluster.max_in_flight for the cluster run (empty: the default)
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

"$ferry" chatsim --listen 127.0.0.1:0 >"$work/chatsim.out" 2>"$work/chatsim.err" &
pids+=($!)
wait_line "$work/chatsim.out" "chatsim: listening on" "${pids[-1]}"
chatsim_addr=$(sed -n 's/^chatsim: listening on //p' "$work/chatsim.out" | tr -d ' ')
common_serve=(--shards "$SHARDS" --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --auth disabled
              --customer-service-window off --upstream "$chatsim_addr")

# CPU seconds (user + system) used so far by the live processes among the given pids.
cpu_seconds() {
    python3 - "$@" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        pass
print(total / tick)
PY
}

run_load() {
    local name=$1 target=$2
    echo "-- $name: warm-up, one message per recipient"
    "$ferry" loadgen --target "http://$target" --chatsim "http://$chatsim_addr" --batch 100 --concurrency 8 \
        --recipients "$RECIPIENTS" --count "$RECIPIENTS" --quiet >/dev/null
    echo "-- $name: as fast as possible for $DURATION"
    # CPU of the servers (ferry nodes + chatsim) over the timed run: with 2 cores shared by all
    # of them and the load generator, CPU per message bounds what any stage can reach.
    local before after
    before=$(cpu_seconds "${pids[@]}")
    "$ferry" loadgen --target "http://$target" --chatsim "http://$chatsim_addr" --batch "$BATCH" \
        --concurrency "$CONCURRENCY" --recipients "$RECIPIENTS" --duration "$DURATION" --quiet \
        --json "$work/$name.json" | tee "$work/$name.txt"
    after=$(cpu_seconds "${pids[@]}")
    python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$before" "$after" >"$work/$name.cpu"
}

echo "== $SHARDS shards; loadgen --batch $BATCH --concurrency $CONCURRENCY, $RECIPIENTS recipients, $DURATION"
if [ "$SINGLE" != 0 ]; then
    "$ferry" serve "${common_serve[@]}" --data-dir "$work/single" >"$work/single.out" 2>"$work/single.err" &
    single_pid=$!
    pids+=($single_pid)
    wait_line "$work/single.out" "grpc listening" $single_pid
    run_load single "$(sed -n 's/^ferry: grpc listening on //p' "$work/single.out")"
    kill $single_pid
    wait $single_pid 2>/dev/null || true
fi

ports=("$(free_port)" "$(free_port)" "$(free_port)")
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
cluster_config=()
node_pids=()
if [ -n "$MAX_IN_FLIGHT" ]; then
    printf '[cluster]\nmax_in_flight = %s\n' "$MAX_IN_FLIGHT" >"$work/cluster.toml"
    cluster_config=(--config "$work/cluster.toml")
fi
for i in 1 2 3; do
    "$ferry" serve "${common_serve[@]}" "${cluster_config[@]}" --data-dir "$work/node-$i" --node-id $i \
        --cluster-listen "127.0.0.1:${ports[$((i - 1))]}" --peers "$peers" --replication-factor 3 \
        >"$work/node-$i.out" 2>"$work/node-$i.err" &
    pids+=($!)
    node_pids+=($!)
done
for i in 1 2 3; do wait_line "$work/node-$i.out" "grpc listening" "${node_pids[$((i - 1))]}"; done
http1=$(sed -n 's/^ferry: http listening on //p' "$work/node-1.out")
# Every shard has a leader before the load starts.
python3 - "http://$http1/readyz" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200:
            break
    except Exception:
        pass
    time.sleep(0.1)
PY
run_load cluster "$(sed -n 's/^ferry: grpc listening on //p' "$work/node-1.out")"
# Where the time went: the per-stage histograms of every node (crates/ferry-shard/src/raft/stages.rs),
# mean and median-of-shards p50 / worst-shard p99 per stage, and the count (batches, syncs, ...).
for i in 1 2 3; do
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
        "http://$(sed -n 's/^ferry: http listening on //p' "$work/node-$i.out")/metrics" >"$work/metrics-$i.txt" || true
done
python3 - "$work"/metrics-{1,2,3}.txt <<'PY'
import re, statistics, sys
stages = ["ferry_raft_batch_messages", "ferry_raft_slot_wait_seconds", "ferry_raft_forward_seconds",
          "ferry_raft_proposal_seconds", "ferry_raft_log_sync_seconds", "ferry_raft_appends_per_sync",
          "ferry_raft_apply_seconds"]
line = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')
print("stage (per node: count, mean, p50 median over shards, p99 worst shard; seconds shown in ms)")
for stage in stages:
    cells = []
    for n, path in enumerate(sys.argv[1:], 1):
        sums = counts = 0.0
        by_shard = {}  # shard label -> {"count", "0.5", "0.99"}
        for l in open(path):
            m = line.match(l.strip())
            if not m or not m.group(1).startswith(stage):
                continue
            name, labels, value = m.group(1), m.group(2), float(m.group(3))
            shard = re.search(r'shard="(\d+)"', labels)
            cell = by_shard.setdefault(shard.group(1) if shard else "", {})
            q = re.search(r'quantile="([\d.]+)"', labels)
            if name == stage + "_sum":
                sums += value
            elif name == stage + "_count":
                counts += value
                cell["count"] = value
            elif name == stage and q:
                cell[q.group(1)] = value
        # Shards this node ran the stage for (a follower neither proposes nor forwards its own).
        live = [c for c in by_shard.values() if c.get("count")]
        p50 = [c["0.5"] for c in live if "0.5" in c]
        p99 = [c["0.99"] for c in live if "0.99" in c]
        if not counts:
            cells.append(f"node {n}: -")
            continue
        k = 1000.0 if stage.endswith("_seconds") else 1.0
        cells.append(f"node {n}: {counts:.0f}, {sums / counts * k:.2f}, {statistics.median(p50) * k:.2f}, "
                     f"{max(p99) * k:.2f}" if p50 else f"node {n}: {counts:.0f}, {sums / counts * k:.2f}")
    print(f"  {stage}: " + "; ".join(cells))
PY
"$ferry" cluster status --peers "$peers" | python3 -c '
import json, sys
for line in sys.stdin:
    n = json.loads(line)
    led = [g["shard"] for g in n.get("groups", []) if g["role"] == "leader"]
    print("node", n["node"], "leads shards", led)'

python3 - "$work/single.json" "$work/cluster.json" <<'PY'
import json, sys
import os
s = json.load(open(sys.argv[1])) if os.path.exists(sys.argv[1]) else None
c = json.load(open(sys.argv[2]))
def line(name, r, cpu_path):
    l = r["accept_latency_ms"]
    text = (f"{name}: accepted {r['accepted_per_sec']:.0f} msg/s, acked {r['acked_per_sec'] or 0:.0f} msg/s, "
            f"accept p50 {l['p50']:.2f} ms, p99 {l['p99']:.2f} ms")
    if os.path.exists(cpu_path) and r.get("accepted"):
        cpu = float(open(cpu_path).read())
        per_k = cpu / r["accepted"] * 1000
        text += (f"; server CPU {cpu:.1f} s = {per_k * 1000:.0f} ms per 1,000 messages "
                 f"({per_k * 15:.2f} cores at 15,000 msg/s)")
    return text
if s:
    print(line("single node", s, sys.argv[1][:-5] + ".cpu"))
print(line("3-node cluster (RF 3)", c, sys.argv[2][:-5] + ".cpu"))
if s and s["acked_per_sec"]:
    print(f"cluster / single (acked): {(c['acked_per_sec'] or 0) / s['acked_per_sec']:.2f}")
PY
