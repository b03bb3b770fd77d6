#!/usr/bin/env bash
# --watch-history at a million events (issue 11): memory of the history against its reported
# bound, GET latency on a shard while watches a million events behind scan the history, and
# RSS and peak RSS before and after a restart. One ringd (release), one client shard.
# Usage: perf/watch_history.sh [RINGD_BINARY] [N=1000000]
# Run it alone on the machine (flock -x /work/machine.lock ...): the GET figures are latency.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ringd}; N=${2:-1000000}
LOADGEN=${LOADGEN:-target/release/loadgen}
DIR=$(mktemp -d /var/tmp/ringd-history.XXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
URL=http://127.0.0.1:$(port); PEER=http://127.0.0.1:$(port)
start() {
  "$BIN" --data-dir "$DIR/d" --listen-client-urls "$URL" --advertise-client-urls "$URL" \
    --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" --initial-cluster "default=$PEER" \
    --watch-history "$N" --shards 1 >>"$DIR/log" 2>&1 &
  PID=$!
  for _ in $(seq 600); do curl -sf "$URL/version" >/dev/null && return; sleep 0.05; done
  echo "ringd did not start"; cat "$DIR/log"; exit 1
}
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
rss() { awk '/VmRSS|VmHWM/ {printf "%s %d MB  ", $1, $2/1024}' "/proc/$PID/status"; }
metric() { curl -s "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
get() {
  "$LOADGEN" get --url "$URL" --key /marker -c 16 -d 5 --no-preload -q --json "$DIR/$1.json" >/dev/null
  python3 -c "import json; j=json.load(open('$DIR/$1.json')); l=j['latency_us']
print('GET %-18s req/s=%6.0f p50=%4dus p99=%5dus' % ('$1', j['requests_per_sec'], l['p50'], l['p99']))"
}
start
grep -o 'watch history.*' "$DIR/log" | head -1
"$LOADGEN" put --url "$URL" -n "$N" -c 16 --pipeline 16 --keys 100000 --prefix /fill --value-size 32 -q >/dev/null
curl -s -XPUT "$URL/v2/keys/marker" -d value=1 >/dev/null
OLD=$(metric ringd_watch_history_oldest_index)
echo "after $N writes (100k keys, 32 B values): $(rss) history $(metric ringd_watch_history_bytes) of $(metric ringd_watch_history_bytes_max) bytes, oldest index $OLD"
get alone
# Watches a million events behind, one after another: each scans the history up to /marker.
( n=0; while [ ! -f "$DIR/stop" ]; do curl -s "$URL/v2/keys/marker?wait=true&waitIndex=$OLD" >/dev/null; n=$((n+1)); echo $n >"$DIR/count"; done ) &
LOOP=$!
get beside_far_watches
touch "$DIR/stop"; wait $LOOP || true
echo "watches $N events behind answered meanwhile: $(cat "$DIR/count") in 5 s"
kill $PID; wait $PID || true
T0=$(date +%s.%N); start; T1=$(date +%s.%N)
echo "after a restart ($(python3 -c "print(round($T1-$T0, 2))") s to serve): $(rss) oldest index $(metric ringd_watch_history_oldest_index)"
