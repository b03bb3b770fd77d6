#!/usr/bin/env bash
# What `ringd snapshot save` costs a member: one member preloaded with KEYS keys; one save's
# wall time, file size and the server's CPU for it (from /proc/PID/stat: the read barrier,
# the frozen copy, the encoding on the snapshot-save thread, the transfer); then PUT load
# (loadgen put, CONNS connections, DUR seconds, the preloaded key space) without saves and
# with saves running one after the other, PAUSE seconds apart (0: back to back), alternating,
# ROUNDS rounds each: req/s, p50, p99, errors. The saving CLI runs on the same two cores.
# No etcd beside it: etcd 3.4's online snapshot (etcdctl snapshot save, v3) does not carry the
# v2 store, and its v2 backup (etcdctl backup) is offline: there is nothing to compare.
# Usage: perf/snapshot_save.sh [keys=200000] [duration_secs=8] [connections=64] [rounds=2] [pause=1]
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-200000}
DUR=${2:-8}
CONNS=${3:-64}
ROUNDS=${4:-2}
PAUSE=${5:-1}
cargo build --release --bin ringd -q
cargo build --release -p loadgen -q
BIN=${CARGO_TARGET_DIR:-target}/release
TMP=$(mktemp -d /var/tmp/ringd-save.XXXX)
RPID=
trap 'kill $RPID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf $TMP' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(free_port); RPP=$(free_port)
URL=http://127.0.0.1:$RP
"$BIN/ringd" --data-dir $TMP/ringd --listen-client-urls $URL --advertise-client-urls $URL \
  --listen-peer-urls http://127.0.0.1:$RPP --initial-advertise-peer-urls http://127.0.0.1:$RPP \
  --initial-cluster default=http://127.0.0.1:$RPP >$TMP/ringd.log 2>&1 &
RPID=$!
for _ in $(seq 100); do curl -sf $URL/version >/dev/null && break; sleep 0.1; done
"$BIN/loadgen" preload --url $URL --keys "$KEYS" -q >/dev/null
cpu_ticks() { awk '{print $14+$15}' /proc/$RPID/stat; }
HZ=$(getconf CLK_TCK)
now_ms() { date +%s%3N; }
before=$(cpu_ticks); t0=$(now_ms)
"$BIN/ringd" snapshot save $TMP/one.snap --endpoint $URL >/dev/null
t1=$(now_ms); after=$(cpu_ticks)
bytes=$(stat -c %s $TMP/one.snap)
echo "one save of $KEYS keys: $((t1 - t0)) ms wall, $bytes bytes, server CPU $(( (after - before) * 1000 / HZ )) ms"
"$BIN/ringd" snapshot status $TMP/one.snap
saves_loop() { # saves PAUSE seconds apart until the file $TMP/stop appears; the count
  local n=0
  while [ ! -e $TMP/stop ]; do
    "$BIN/ringd" snapshot save $TMP/loop.snap --endpoint $URL >/dev/null && n=$((n + 1))
    sleep "$PAUSE"
  done
  echo $n > $TMP/saves
}
echo "saves $PAUSE s apart:"
printf '| run | req/s | p50 us | p99 us | p99.9 us | errors | saves during the run |\n|---|---|---|---|---|---|---|\n'
for r in $(seq "$ROUNDS"); do
  for mode in without with; do
    rm -f $TMP/stop $TMP/saves
    if [ $mode = with ]; then saves_loop & LOOP=$!; fi
    "$BIN/loadgen" put --url $URL -c "$CONNS" -d "$DUR" --keys "$KEYS" -q --json $TMP/$mode.$r.json >/dev/null
    saves=-
    if [ $mode = with ]; then touch $TMP/stop; wait $LOOP; saves=$(cat $TMP/saves); fi
    python3 - "$TMP/$mode.$r.json" "$mode saves, round $r" "$saves" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])); l = v["latency_us"]
print(f"| {sys.argv[2]} | {v['requests_per_sec']:,.0f} | {l['p50']} | {l['p99']} | {l['p999']} | {v['errors']} | {sys.argv[3]} |")
PY
  done
done
