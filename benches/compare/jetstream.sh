#!/usr/bin/env bash
# Side by side: NATS JetStream (Debian's nats-server) and ferry, same message count and size.
#
# JetStream half: starts nats-server with JetStream on loopback (temp store dir), then
# `ferry-jetstream-bench` publishes N messages of S bytes with acks into a file-storage work-queue
# stream, W publishes in flight, a pull consumer acking each; W is swept over $WINDOWS and the best
# publish→consumer-ack rate is kept.
# ferry half: `cargo bench --bench delivery_e2e -- --shards 8 --count N --payload S` (accepted →
# decrypted and acked by the reference chat server, end to end).
#
# Not like for like, and in JetStream's favour on durability: Debian's nats-server 2.9.10 defers
# fsync (file-store writes reach the OS page cache; the disk is synced periodically, not before the
# publish ack), while every ferry accept is a synced WAL write and every ack a synced status update.
# ferry also encrypts each message for its recipient and the chat server decrypts it.
#
#   benches/compare/jetstream.sh                 # N=200000 S=100
#   N=100000 S=1024 benches/compare/jetstream.sh
#   SKIP_FERRY=1 benches/compare/jetstream.sh    # JetStream half only (no RocksDB build)
set -euo pipefail

N=${N:-200000}
S=${S:-100}
WINDOWS=${WINDOWS:-32,64,128,256}
PORT=${NATS_PORT:-14222}
cd "$(dirname "$0")/../.."

if ! command -v nats-server >/dev/null; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server >/dev/null
fi
nats-server --version

store=$(mktemp -d)
cat >"$store/js.conf" <<CONF
listen: 127.0.0.1:$PORT
jetstream {
  store_dir: "$store/js"
  max_memory_store: 256MB
  max_file_store: 16GB
}
CONF
nats-server -c "$store/js.conf" >"$store/nats.log" 2>&1 &
nats_pid=$!
trap 'kill $nats_pid 2>/dev/null; wait $nats_pid 2>/dev/null; rm -rf "$store"' EXIT
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
done

cargo run --release -q -p ferry-loadgen --bin ferry-jetstream-bench -- \
    --server "nats://127.0.0.1:$PORT" --count "$N" --payload "$S" --windows "$WINDOWS" | tee "$store/js.out"
js_rate=$(sed -n 's/^best: window \([0-9]*\) = \([0-9]*\) msg\/s$/\2/p' "$store/js.out")
js_window=$(sed -n 's/^best: window \([0-9]*\) = .*/\1/p' "$store/js.out")
kill $nats_pid 2>/dev/null || true

if [[ -n "${SKIP_FERRY:-}" ]]; then
    echo "jetstream: best $js_rate msg/s (window $js_window); ferry half skipped (SKIP_FERRY)"
    exit 0
fi

cargo bench --bench delivery_e2e -- --shards 8 --count "$N" --payload "$S" | tee "$store/ferry.out"
ferry_rate=$(sed -n 's/.*= \([0-9]*\) msg\/s end to end.*/\1/p' "$store/ferry.out")

echo
echo "== $N messages of $S B, publish/accept → consumer/chat-server ack =="
echo "jetstream (nats-server $(nats-server --version | awk '{print $2}'), window $js_window): $js_rate msg/s"
echo "ferry (delivery_e2e, 8 shards):                    $ferry_rate msg/s"
awk -v f="$ferry_rate" -v j="$js_rate" 'BEGIN { if (j > 0) printf "ferry / jetstream = %.2f\n", f / j }'
echo "note: Debian's nats-server 2.9.10 defers fsync (weaker durability than ferry's synced writes);"
echo "      ferry also encrypts every message and the chat server decrypts it."
