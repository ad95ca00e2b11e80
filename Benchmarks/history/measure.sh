#!/bin/sh
# Times GET /v1/history and /v1/usage on the journal make-journal.py wrote into DIR.
#   Benchmarks/history/measure.sh DIR [BINARY]   (BINARY: .build/release/leasehold)
set -eu
DIR=$1
BIN=${2:-.build/release/leasehold}
PORT=${PORT:-7690}
"$BIN" serve --listen 127.0.0.1:$PORT --inventory "$DIR/inventory.yaml" --audit-file "$DIR/audit.jsonl" \
    --audit-keep 4 --log-level warning > "$DIR/serve.out" 2> "$DIR/serve.err" &
PID=$!
trap 'kill $PID' EXIT
for i in $(seq 50); do grep -q listening "$DIR/serve.out" 2>/dev/null && break; sleep 0.1; done
WEEK=$(date -u -d '7 days ago' +%Y-%m-%dT%H:%M:%SZ)
DAY=$(date -u -d '1 day ago' +%Y-%m-%dT%H:%M:%SZ)
URL=http://127.0.0.1:$PORT
q() {
    # best of 3, and the first (which may read from disk)
    first=$(curl -s -o "$DIR/answer.json" -w '%{time_total}' "$URL$1")
    best=$first
    for i in 1 2; do
        t=$(curl -s -o "$DIR/answer.json" -w '%{time_total}' "$URL$1")
        best=$(echo "$best $t" | awk '{print ($2 < $1) ? $2 : $1}')
    done
    printf '%-70s first %6.3f s  best %6.3f s  %8d bytes\n' "$1" "$first" "$best" "$(wc -c < "$DIR/answer.json")"
}
du -bc "$DIR"/audit.jsonl "$DIR"/audit.jsonl.[0-9]* | tail -1
# The usage summaries (built in the background from the server's start; absent on the first run).
[ -d "$DIR/audit.jsonl.index" ] && du -sb "$DIR/audit.jsonl.index" || echo "0	no $DIR/audit.jsonl.index yet"
q "/v1/history"
q "/v1/history?resource=array-0007"
q "/v1/history?resource=host-0500"
q "/v1/history?resource=host-0500&limit=1000"
q "/v1/history?type=array&limit=100"
q "/v1/history?holder=dev/alice-4242"
q "/v1/history?resource=no-such-resource"
q "/v1/history?resource=host-0500&since=$WEEK"
q "/v1/usage"
q "/v1/usage?since=$WEEK"
q "/v1/usage?since=$WEEK&by=type"
