#!/bin/sh
# The speed figures of issue 11, each as a ratio to a no-op epoll server measured in the same run:
# churn (200 clients over 1,000 resources, close frame and RST), server context switches per
# cycle, and hand-off with 10 queued waiters. Servers on core 0, the load on core 1.
#   Benchmarks/speed.sh [LEASEHOLD_BINARY] [SECONDS] [REPEATS]
# Needs: cd Benchmarks && swift build -c release; the server in release; perf.
set -eu
BIN=${1:-.build/release/leasehold}
SECONDS_EACH=${2:-8}
REPEATS=${3:-2}
B=${B:-Benchmarks/.build/release}
PORT=${PORT:-7500}
OUT=${OUT:-/tmp/leasehold-speed}
mkdir -p "$OUT"
$B/LoadBench inventory 1000 > "$OUT/inventory.yaml"

start_server() {  # kind
    if [ "$1" = noop ]; then
        taskset -c 0 $B/NoopServer $PORT $2 > "$OUT/server.out" &
    else
        taskset -c 0 "$BIN" serve --listen 127.0.0.1:$PORT --inventory "$OUT/inventory.yaml" \
            --log-level warning --loops 1 > "$OUT/server.out" 2> "$OUT/server.err" &
    fi
    PID=$!
    for _ in $(seq 100); do grep -q listening "$OUT/server.out" 2>/dev/null && return; sleep 0.1; done
    echo "the $1 server did not start" >&2; exit 1
}

stop_server() { kill $PID; wait $PID 2>/dev/null || true; }

churn() {  # kind close
    start_server $1 ""
    perf stat -e context-switches -x, -o "$OUT/perf.txt" -p $PID -- sleep $SECONDS_EACH 2>/dev/null &
    PERF=$!
    taskset -c 1 $B/LoadBench cycles --port $PORT --clients 200 --seconds $SECONDS_EACH --close $2 > "$OUT/cycles.txt"
    wait $PERF || true
    stop_server
    rate=$(sed -n 's/.*= \([0-9]*\) cycles\/s.*/\1/p' "$OUT/cycles.txt")
    switches=$(grep context-switches "$OUT/perf.txt" | cut -d, -f1)
    echo "$1 $2 $rate $switches $(sed -n 's/grant latency.*: //p' "$OUT/cycles.txt")"
}

handoff() {  # kind
    start_server $1 --one-resource
    taskset -c 1 $B/LoadBench handoff --port $PORT --rounds 1000 --waiters 10 --name bench-7 | sed 's/.*rounds: //'
    stop_server
}

for round in $(seq $REPEATS); do
    for close in frame rst; do
        noop=$(churn noop $close); lease=$(churn leasehold $close)
        echo "$noop" | awk -v s=$SECONDS_EACH '{printf "churn (%s): no-op  %6d cycles/s, %.3f context switches/cycle\n", $2, $3, $4 / ($3 * s)}'
        echo "$lease" | awk -v s=$SECONDS_EACH '{printf "churn (%s): leasehold %6d cycles/s, %.3f context switches/cycle, grant %s\n", $2, $3, $4 / ($3 * s), substr($0, index($0, $5))}'
        n=$(echo "$noop" | cut -d' ' -f3); l=$(echo "$lease" | cut -d' ' -f3)
        echo "churn ($close): leasehold / no-op = $(echo "$l $n" | awk '{printf "%.2f", $1 / $2}')"
    done
    echo "hand-off, 10 waiters: no-op     $(handoff noop)"
    echo "hand-off, 10 waiters: leasehold $(handoff leasehold)"
done
