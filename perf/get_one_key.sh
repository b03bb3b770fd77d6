#!/usr/bin/env bash
# GET of one key at 64 connections with wrk, against etcd 3.4 (--enable-v2) and ringd side by
# side in the same run, with each server's CPU time per request from /proc/PID/stat.
# Usage: perf/get_one_key.sh [duration_secs] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-64}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v etcd >/dev/null || { apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; }
cargo build --release --bin ringd -q
TMP=$(mktemp -d)
trap 'kill $EPID $RPID 2>/dev/null || true; rm -rf $TMP' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EP=$(free_port); EPP=$(free_port); RP=$(free_port); RPP=$(free_port)
etcd --enable-v2=true --data-dir $TMP/etcd --listen-client-urls http://127.0.0.1:$EP \
  --advertise-client-urls http://127.0.0.1:$EP --listen-peer-urls http://127.0.0.1:$EPP \
  --initial-advertise-peer-urls http://127.0.0.1:$EPP --initial-cluster default=http://127.0.0.1:$EPP \
  >$TMP/etcd.log 2>&1 &
EPID=$!
./target/release/ringd ${RINGD_ARGS:-} --data-dir $TMP/ringd --listen-client-urls http://127.0.0.1:$RP \
  --advertise-client-urls http://127.0.0.1:$RP --listen-peer-urls http://127.0.0.1:$RPP \
  --initial-advertise-peer-urls http://127.0.0.1:$RPP --initial-cluster default=http://127.0.0.1:$RPP \
  >$TMP/ringd.log 2>&1 &
RPID=$!
for p in $EP $RP; do
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$p/version >/dev/null && break; sleep 0.1; done
  curl -sf -XPUT http://127.0.0.1:$p/v2/keys/bench/key -d value=hello-world >/dev/null
done
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
run() { # name port pid
  local before after reqs
  before=$(cpu_ticks $3)
  wrk -t2 -c$CONNS -d${DUR}s --latency http://127.0.0.1:$2/v2/keys/bench/key > $TMP/$1.wrk
  after=$(cpu_ticks $3)
  reqs=$(awk '/requests in/ {print $1}' $TMP/$1.wrk)
  local rps p99 cpu_us
  rps=$(awk '/Requests\/sec/ {print $2}' $TMP/$1.wrk)
  p99=$(awk '$1=="99%" {print $2}' $TMP/$1.wrk)
  cpu_us=$(python3 -c "print(round(($after-$before)/$HZ*1e6/$reqs, 2))")
  echo "$1 $rps $p99 $cpu_us"
}
echo "server req/s p99 cpu_us_per_req"
E=$(run etcd $EP $EPID); echo "$E"
R=$(run ringd $RP $RPID); echo "$R"
python3 - "$E" "$R" <<'PY'
import sys, re
def ms(s):
    m = re.match(r'([\d.]+)(us|ms|s)', s); v = float(m.group(1))
    return v / 1000 if m.group(2) == 'us' else v * 1000 if m.group(2) == 's' else v
e = sys.argv[1].split(); r = sys.argv[2].split()
print(f"ratio ringd/etcd: req/s x{float(r[1])/float(e[1]):.2f}, p99 {ms(r[2])/ms(e[2]):.3f} of etcd's, cpu/req {float(r[3])/float(e[3]):.3f} of etcd's")
PY
