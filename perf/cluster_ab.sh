#!/usr/bin/env bash
# A/B of one ringd binary as a 3-member cluster (members on 127.0.0.1-3, data dirs in
# /var/tmp, so every member fsyncs) under one loadgen PUT workload, sent to the leader or to a
# follower: req/s, p50/p99, server CPU per request SUMMED over the members (utime+stime from
# /proc), the same per member, and the appends each member received per request (from
# /v2/stats/self).
# Usage: perf/cluster_ab.sh RINGD_BINARY LABEL [TARGET=leader|follower] [CONNECTIONS=64] [SECONDS=8]
# Run two binaries alternately, several rounds, on a quiet machine: single runs are noisy.
set -euo pipefail
BIN=$1; LABEL=$2; TARGET=${3:-leader}; CONNS=${4:-64}; SECS=${5:-8}
LOADGEN=${LOADGEN:-$(dirname "$0")/../target/release/loadgen}
DIR=$(mktemp -d /var/tmp/ringd-cab.XXXX)
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }
CLUSTER="" PIDS=()
for i in 1 2 3; do
  PP[$i]=$(free_port 127.0.0.$i); CP[$i]=$(free_port 127.0.0.$i)
  CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.$i:${PP[$i]}"
done
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for i in 1 2 3; do
  C=http://127.0.0.$i:${CP[$i]} P=http://127.0.0.$i:${PP[$i]}
  "$BIN" --name m$i --data-dir "$DIR/m$i" --listen-client-urls "$C" --advertise-client-urls "$C" \
    --listen-peer-urls "$P" --initial-advertise-peer-urls "$P" --initial-cluster "$CLUSTER" \
    --initial-cluster-token ab >"$DIR/m$i.log" 2>&1 &
  PIDS+=($!)
done
LEADER="" FOLLOWER=""
for _ in $(seq 400); do
  for i in 1 2 3; do
    st=$(curl -sf "http://127.0.0.$i:${CP[$i]}/v2/stats/self" 2>/dev/null || true)
    case "$st" in *StateLeader*) LEADER=$i ;; esac
  done
  [ -n "$LEADER" ] && break
  sleep 0.05
done
[ -n "$LEADER" ] || { echo "no leader" >&2; exit 1; }
for i in 1 2 3; do [ "$i" != "$LEADER" ] && { FOLLOWER=$i; break; }; done
T=$LEADER; [ "$TARGET" = follower ] && T=$FOLLOWER
URL=http://127.0.0.$T:${CP[$T]}
"$LOADGEN" preload --url "http://127.0.0.$LEADER:${CP[$LEADER]}" --keys 10000 --threads 2 --quiet >/dev/null
cpu() { for p in "${PIDS[@]}"; do awk '{printf "%d ", $14+$15}' "/proc/$p/stat"; done; }
# Per thread, with PER_THREAD=1: "member:thread=ticks ..." (thread names are ringd's: shard-N, raft, peer, ...).
threads() { for i in 0 1 2; do for t in /proc/${PIDS[$i]}/task/*; do
  printf 'm%d:%s=%s ' $((i + 1)) "$(cat "$t/comm")" "$(awk '{print $14+$15}' "$t/stat")"; done; done; }
appends() { for i in 1 2 3; do curl -s "http://127.0.0.$i:${CP[$i]}/v2/stats/self" | python3 -c 'import json,sys; print(json.load(sys.stdin)["recvAppendRequestCnt"], end=" ")'; done; }
C0=$(cpu); A0=$(appends); H0=$(threads)
# With PROFILE=FILE: a system-wide perf profile of the load's middle (perf report -i FILE --sort comm,dso,sym).
if [ -n "${PROFILE:-}" ]; then
  (sleep 2; perf record -a -g -o "$PROFILE" -- sleep $((SECS > 6 ? SECS - 4 : 2)) >/dev/null 2>&1) &
  PERF_PID=$!
fi
"$LOADGEN" put --url "$URL" --keys 10000 --connections "$CONNS" --threads 2 --duration "$SECS" --quiet --json "$DIR/out.json" >/dev/null
[ -n "${PROFILE:-}" ] && wait "$PERF_PID"
C1=$(cpu); A1=$(appends); H1=$(threads)
python3 - "$DIR/out.json" "$C0" "$C1" "$A0" "$A1" "$(getconf CLK_TCK)" "$SECS" "$LABEL" "$LEADER" "$T" "${PER_THREAD:-0}" "$H0" "$H1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
c0, c1, a0, a1 = (list(map(int, s.split())) for s in sys.argv[2:6])
hz, secs = int(sys.argv[6]), int(sys.argv[7]); label = sys.argv[8]
leader, target = int(sys.argv[9]), int(sys.argv[10])
n = j["requests_per_sec"] * secs
per = [(b - a) / hz / n * 1e6 for a, b in zip(c0, c1)]
app = [(b - a) / n for a, b in zip(a0, a1)]
l = j["latency_us"]
roles = "".join("L" if i + 1 == leader else "f" for i in range(3))
print(f"{label:10} req/s={j['requests_per_sec']:8.0f} p50={l['p50']:6.0f}us p99={l['p99']:6.0f}us "
      f"cpu/req={sum(per):5.1f}us members({roles})=" + "/".join(f"{x:.1f}" for x in per)
      + " appends/req=" + "/".join(f"{x:.3f}" for x in app) + f" errors={j['errors']} target=m{target}")
if sys.argv[11] == "1":
    parse = lambda s: {k: int(v) for k, v in (w.rsplit("=", 1) for w in s.split())}
    h0, h1 = parse(sys.argv[12]), parse(sys.argv[13])
    per_thread = {}
    for k, v in h1.items():
        m, name = k.split(":", 1)
        name = "shard" if name.startswith("shard") else name
        key = f"{m}:{name}"
        per_thread[key] = per_thread.get(key, 0) + (v - h0.get(k, 0)) / hz / n * 1e6
    print("   per thread us/req: " + " ".join(f"{k}={v:.1f}" for k, v in sorted(per_thread.items()) if v >= 0.05))
PY
