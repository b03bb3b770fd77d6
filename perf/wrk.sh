#!/usr/bin/env bash
# wrk against etcd 3.4 (--enable-v2) and ringd side by side in the same run, alternating the
# targets round by round, with each server's CPU time per request from /proc/PID/stat.
#   get: GET of one key.   put: PUT of a random key of 10,000 with a 64-byte value (durable),
#   the same requests as `loadgen put` (a wrk Lua script makes them).
# Usage: perf/wrk.sh [get|put] [duration_secs=10] [connections=64] [rounds=2]
# Extra ringd flags via RINGD_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD=${1:-get}
DUR=${2:-10}
CONNS=${3:-64}
ROUNDS=${4:-2}
case $WORKLOAD in get|put) ;; *) echo "perf/wrk.sh: workload must be get or put" >&2; exit 2 ;; esac
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v etcd >/dev/null || { apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; }
cargo build --release --bin ringd -q
TMP=$(mktemp -d /var/tmp/ringd-wrk.XXXX)
EPID=; RPID=
trap 'kill $EPID $RPID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf $TMP' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EP=$(free_port); EPP=$(free_port); RP=$(free_port); RPP=$(free_port)
etcd --enable-v2=true --data-dir $TMP/etcd --listen-client-urls http://127.0.0.1:$EP \
  --advertise-client-urls http://127.0.0.1:$EP --listen-peer-urls http://127.0.0.1:$EPP \
  --initial-advertise-peer-urls http://127.0.0.1:$EPP --initial-cluster default=http://127.0.0.1:$EPP \
  >$TMP/etcd.log 2>&1 &
EPID=$!
# shellcheck disable=SC2086
./target/release/ringd ${RINGD_ARGS:-} --data-dir $TMP/ringd --listen-client-urls http://127.0.0.1:$RP \
  --advertise-client-urls http://127.0.0.1:$RP --listen-peer-urls http://127.0.0.1:$RPP \
  --initial-advertise-peer-urls http://127.0.0.1:$RPP --initial-cluster default=http://127.0.0.1:$RPP \
  >$TMP/ringd.log 2>&1 &
RPID=$!
for p in $EP $RP; do
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$p/version >/dev/null && break; sleep 0.1; done
  curl -sf -XPUT http://127.0.0.1:$p/v2/keys/bench/key -d value=hello-world >/dev/null
done
# Random keys from one shared sequence per wrk thread; the body is built once.
cat >$TMP/put.lua <<'LUA'
local body = "value=" .. string.rep("x", 64)
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local n = 0
setup = function(thread) n = n + 1; thread:set("seed", n) end
init = function() math.randomseed(seed * 7919 + os.time()) end
request = function()
  return wrk.format("PUT", "/v2/keys/loadgen/k" .. math.random(0, 9999), headers, body)
end
LUA
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
run() { # name port pid round
  local before after reqs rps p99 cpu_us
  before=$(cpu_ticks $3)
  if [ "$WORKLOAD" = put ]; then
    wrk -t2 -c$CONNS -d${DUR}s --latency -s $TMP/put.lua http://127.0.0.1:$2 > $TMP/$1.$4.wrk
  else
    wrk -t2 -c$CONNS -d${DUR}s --latency http://127.0.0.1:$2/v2/keys/bench/key > $TMP/$1.$4.wrk
  fi
  after=$(cpu_ticks $3)
  reqs=$(awk '/requests in/ {print $1}' $TMP/$1.$4.wrk)
  rps=$(awk '/Requests\/sec/ {print $2}' $TMP/$1.$4.wrk)
  p99=$(awk '$1=="99%" {print $2}' $TMP/$1.$4.wrk)
  cpu_us=$(python3 -c "print(round(($after-$before)/$HZ*1e6/$reqs, 2))")
  local non2xx
  non2xx=$(awk '/Non-2xx/ {print $NF}' $TMP/$1.$4.wrk); non2xx=${non2xx:-0}
  echo "$1 $rps $p99 $cpu_us $non2xx"
}
echo "wrk $WORKLOAD, $CONNS connections, ${DUR}s x $ROUNDS rounds, alternating etcd and ringd"
echo "server req/s p99 cpu_us_per_req non2xx"
RESULTS=()
for r in $(seq "$ROUNDS"); do
  E=$(run etcd $EP $EPID $r); echo "$E"; RESULTS+=("$E")
  R=$(run ringd $RP $RPID $r); echo "$R"; RESULTS+=("$R")
done
python3 - "${RESULTS[@]}" <<'PY'
import sys, re, statistics as st
def ms(s):
    m = re.match(r'([\d.]+)(us|ms|s)', s); v = float(m.group(1))
    return v / 1000 if m.group(2) == 'us' else v * 1000 if m.group(2) == 's' else v
rows = [a.split() for a in sys.argv[1:]]
def med(name, i, f=float):
    return st.median(f(r[i]) for r in rows if r[0] == name)
e = [med("etcd", 1), med("etcd", 2, ms), med("etcd", 3)]
r = [med("ringd", 1), med("ringd", 2, ms), med("ringd", 3)]
print(f"medians: etcd {e[0]:.0f} req/s p99 {e[1]:.2f} ms cpu {e[2]:.1f} us | ringd {r[0]:.0f} req/s p99 {r[1]:.2f} ms cpu {r[2]:.1f} us")
print(f"ratio ringd/etcd: req/s x{r[0]/e[0]:.2f}, p99 {r[1]/e[1]:.3f} of etcd's, cpu/req {r[2]/e[2]:.3f} of etcd's")
PY
