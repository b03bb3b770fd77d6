#!/usr/bin/env bash
# A/B of one ringd binary under one loadgen workload: req/s, p50/p99, server CPU per request
# (from /proc) and the group-commit batch (log entries per fdatasync, from /metrics).
# Usage: perf/ab.sh RINGD_BINARY LABEL [WORKLOAD=put] [CONNECTIONS=64] [SECONDS=5]
# Extra ringd flags via RINGD_ARGS, e.g. RINGD_ARGS="--shards 2"; extra loadgen flags via
# LOADGEN_ARGS. PRELOAD=N fills a store of N keys before the measured run (not counted in
# its CPU) and points the workload at them (--keys N --no-preload). Run two binaries
# alternately, several rounds, on a quiet machine: the figures are noisy.
set -euo pipefail
BIN=$1; LABEL=$2; WORKLOAD=${3:-put}; CONNS=${4:-64}; SECS=${5:-5}
LOADGEN=${LOADGEN:-$(dirname "$0")/../target/release/loadgen}
DIR=$(mktemp -d /var/tmp/ringd-ab.XXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
PEER=http://127.0.0.1:$PPORT
# shellcheck disable=SC2086
"$BIN" --data-dir "$DIR/d" --listen-client-urls "$URL" --advertise-client-urls "$URL" \
  --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" --initial-cluster "default=$PEER" \
  ${RINGD_ARGS:-} >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 200); do curl -sf "$URL/version" >/dev/null && break; sleep 0.05; done
EXTRA=${LOADGEN_ARGS:-}
if [ -n "${PRELOAD:-}" ]; then
  "$LOADGEN" preload --url "$URL" --keys "$PRELOAD" --threads 2 --quiet >/dev/null 2>&1
  EXTRA="$EXTRA --keys $PRELOAD"
  [ "$WORKLOAD" = put ] || EXTRA="$EXTRA --no-preload"
fi
T0=$(awk '{print $14+$15}' "/proc/$PID/stat")
# shellcheck disable=SC2086
"$LOADGEN" "$WORKLOAD" --url "$URL" --connections "$CONNS" --threads 2 --duration "$SECS" $EXTRA --quiet --json "$DIR/out.json" >/dev/null
T1=$(awk '{print $14+$15}' "/proc/$PID/stat")
METRICS=$(curl -s "$URL/metrics" | awk '/^ringd_wal_(fsyncs|entries)_total/ {print $2}' | tr '\n' ' ')
python3 - "$DIR/out.json" "$T0" "$T1" "$(getconf CLK_TCK)" "$SECS" "$LABEL" "$METRICS" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); t0, t1, hz, secs = map(int, sys.argv[2:6]); label = sys.argv[6]
m = [int(x) for x in sys.argv[7].split()] if len(sys.argv) > 7 and sys.argv[7].strip() else [0, 0]
rps = j["requests_per_sec"]; cpu_us = (t1 - t0) / hz / (rps * secs) * 1e6
l = j["latency_us"]; batch = m[1] / max(m[0], 1)
print(f"{label:10} req/s={rps:9.0f} p50={l['p50']:7.0f}us p99={l['p99']:7.0f}us cpu/req={cpu_us:6.1f}us errors={j['errors']} fsyncs={m[0]} entries={m[1]} entries/fsync={batch:.1f}")
PY
