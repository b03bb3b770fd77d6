#!/usr/bin/env bash
# ringd and etcd 3.4 as 3-member (or 5-member) clusters, side by side in one run, with loadgen.
#
# Starts an etcd cluster (--enable-v2=true) and a ringd cluster, member i of each on 127.0.0.i,
# free ports (never 2379/2380), data dirs under /var/tmp (on disk: both fsync), the same
# --heartbeat-interval/--election-timeout. Finds each cluster's leader and a follower from
# /v2/stats/self, preloads --keys keys through the leader, then runs every workload at every
# connection count, --rounds times, alternating etcd, ringd, etcd, ringd:
#
#   put-leader     loadgen put --keys K            to the leader
#   put-follower   loadgen put --keys K            to a follower (forwarded to the leader)
#   qget-follower  loadgen qget --keys K --no-preload   on a follower (quorum=true)
#
# Around every run it reads the CPU time (utime+stime, /proc/PID/stat) of every member of both
# clusters, loadgen's and the machine's busy and irq+softirq time; server CPU per request is
# SUMMED over the members of the cluster under load. Then the failover: a writer (perf/failover.py) starts a
# PUT every 5 ms on the surviving members, the leader gets kill -9, and the time to the first
# acknowledged write sent after the kill is recorded; the killed member is restarted and the
# cluster settles before the next one (--failovers times per server, alternating).
#
# Writes perf/results/YYYY-MM-DD-cluster.md (-cluster-2, ...; -cluster5 for 5 members) and a
# .json beside it. perf/compare.sh --cluster N runs this script. See perf/README.md.
#
# Usage: perf/cluster.sh [--members 3|5] [--duration SECS] [--rounds N] [--connections 64]
#                        [--workloads put-leader,put-follower,qget-follower|none] [--threads N]
#                        [--keys N] [--failovers N] [--heartbeat-interval MS]
#                        [--election-timeout MS] [--out DIR] [--quick] [--keep] [--no-build]
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
INVOCATION=${CLUSTER_INVOCATION:-"perf/cluster.sh${*:+ $*}"}

ALL_WORKLOADS="put-leader,put-follower,qget-follower"
MEMBERS=3 DUR="" CONNS=64 ROUNDS="" WORKLOADS=$ALL_WORKLOADS THREADS=2 KEYS=10000 FAILOVERS=""
HB=100 ET=1000 OUT="" QUICK=0 KEEP=0 BUILD=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -m|--members) MEMBERS=$2; shift ;;
    -d|--duration) DUR=$2; shift ;;
    -c|--connections) CONNS=$2; shift ;;
    -r|--rounds) ROUNDS=$2; shift ;;
    -w|--workloads) WORKLOADS=$2; shift ;;
    -t|--threads) THREADS=$2; shift ;;
    -k|--keys) KEYS=$2; shift ;;
    -f|--failovers) FAILOVERS=$2; shift ;;
    --heartbeat-interval) HB=$2; shift ;;
    --election-timeout) ET=$2; shift ;;
    -o|--out) OUT=$2; shift ;;
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cluster.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $QUICK = 1 ]; then # smoke run: 2 s points, one round, one failover each, results aside
  DUR=${DUR:-2} ROUNDS=${ROUNDS:-1} FAILOVERS=${FAILOVERS:-1} OUT=${OUT:-perf/results/quick}
fi
DUR=${DUR:-10} ROUNDS=${ROUNDS:-2} FAILOVERS=${FAILOVERS:-5} OUT=${OUT:-perf/results}
for v in "$DUR" "$ROUNDS" "$THREADS" "$KEYS" "$HB" "$ET" ${CONNS//,/ }; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: '$v' is not a positive integer" >&2; exit 2; }
done
[[ $FAILOVERS =~ ^[0-9]+$ ]] || { echo "cluster.sh: --failovers '$FAILOVERS' is not a number" >&2; exit 2; }
[[ $MEMBERS == 3 || $MEMBERS == 5 ]] || { echo "cluster.sh: --members is 3 or 5" >&2; exit 2; }
[ "$WORKLOADS" = none ] && WORKLOADS="" # failovers only
for w in ${WORKLOADS//,/ }; do
  [[ ,$ALL_WORKLOADS, == *,$w,* ]] || { echo "cluster.sh: unknown workload '$w' (known: $ALL_WORKLOADS)" >&2; exit 2; }
done

# ---- tools, build, copies of the binaries -------------------------------------------------------
APT_UPDATED=0
need() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "== installing $2 (for $1)" >&2
  if [ $APT_UPDATED = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need python3 python3
need curl curl
need etcd etcd-server
if [ $BUILD = 1 ]; then
  echo "== building ringd and loadgen (release)" >&2
  cargo build --release -p ringd -p loadgen --bins -q
fi
CARGO_TARGET=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# copies, so that a rebuild by someone else during the run cannot change the binaries under test
TMP=$(mktemp -d /var/tmp/ringd-cluster.XXXXXX)
declare -A PID # member i of server s: PID[s,i]
cleanup() {
  for k in "${!PID[@]}"; do kill "${PID[$k]}" 2>/dev/null || true; done
  for k in "${!PID[@]}"; do wait "${PID[$k]}" 2>/dev/null || true; done
  if [ $KEEP = 1 ]; then echo "== kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$CARGO_TARGET/release/ringd" "$CARGO_TARGET/release/loadgen" "$TMP/"
RINGD=$TMP/ringd LOADGEN=$TMP/loadgen
RUN=$TMP/run
mkdir -p "$RUN"
: >"$RUN/runs.jsonl"

# ---- the two clusters ---------------------------------------------------------------------------
# member i (1-based) of server s: NAME[s,i], URL[s,i] (client), CMD[s,i], PID[s,i]
declare -A NAME URL CMD
SERVERS="etcd ringd"

# four free ports on each 127.0.0.i (etcd client, etcd peer, ringd client, ringd peer), all distinct
read -r -a PORTS <<<"$(python3 - "$MEMBERS" <<'PY'
import socket, sys
held, out = [], []
for i in range(1, int(sys.argv[1]) + 1):
    for _ in range(4):
        while True:
            s = socket.socket(); s.bind((f"127.0.0.{i}", 0)); p = s.getsockname()[1]
            if p not in (2379, 2380) and p not in out:
                held.append(s); out.append(p); break
            s.close()
print(" ".join(map(str, out)))
PY
)"
for s in $SERVERS; do
  ic=""
  for i in $(seq "$MEMBERS"); do
    o=$(((i - 1) * 4)); [ "$s" = ringd ] && o=$((o + 2))
    NAME[$s,$i]=${s:0:1}$i URL[$s,$i]=http://127.0.0.$i:${PORTS[o]} PEER[i]=http://127.0.0.$i:${PORTS[o + 1]}
    ic+="${ic:+,}${NAME[$s,$i]}=${PEER[$i]}"
  done
  for i in $(seq "$MEMBERS"); do
    bin=etcd extra="--enable-v2=true "; [ "$s" = ringd ] && bin=ringd extra=""
    CMD[$s,$i]="$bin ${extra}--name ${NAME[$s,$i]} --data-dir $TMP/$s.data/${NAME[$s,$i]}"
    CMD[$s,$i]+=" --listen-client-urls ${URL[$s,$i]} --advertise-client-urls ${URL[$s,$i]}"
    CMD[$s,$i]+=" --listen-peer-urls ${PEER[$i]} --initial-advertise-peer-urls ${PEER[$i]}"
    CMD[$s,$i]+=" --initial-cluster $ic --initial-cluster-token perf-$s --initial-cluster-state new"
    CMD[$s,$i]+=" --heartbeat-interval $HB --election-timeout $ET"
  done
done
start_member() { # server i: (re)start with the same command and data dir
  local c=${CMD[$1,$2]}
  [ "$1" = ringd ] && c=$RINGD${c#ringd}
  # shellcheck disable=SC2086
  $c >>"$TMP/$1-${NAME[$1,$2]}.log" 2>&1 &
  PID[$1,$2]=$!
}
urls() { # server: every member's client URL, comma-separated
  local out="" i
  for i in $(seq "$MEMBERS"); do out+="${out:+,}${URL[$1,$i]}"; done
  echo "$out"
}
# "L F" = the member number of the leader and of the first follower, once every member that
# answers agrees on one leader (at least a quorum answering); exit 1 when not (yet).
roles() { python3 - "$(urls "$1")" <<'PY'
import json, sys, urllib.request
urls = sys.argv[1].split(",")
ids, leaders, states = {}, set(), {}
for i, u in enumerate(urls, 1):
    try:
        j = json.load(urllib.request.urlopen(u + "/v2/stats/self", timeout=1))
    except Exception:
        continue
    ids[j["id"]] = i
    states[i] = j.get("state")
    leaders.add(j.get("leaderInfo", {}).get("leader", ""))
if len(states) <= len(urls) // 2 or len(leaders) != 1:
    sys.exit(1)
lead = ids.get(leaders.pop())
if lead is None or states[lead] != "StateLeader":
    sys.exit(1)
follower = min(i for i in states if i != lead)
print(lead, follower)
PY
}
wait_roles() { # server: roles, waiting up to 30 s
  local r
  for _ in $(seq 300); do
    if r=$(roles "$1"); then echo "$r"; return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: $1 has no agreed leader after 30 s; logs:" >&2
  tail -n 5 "$TMP/$1"-*.log >&2
  return 1
}
wait_healthy() { # server member: every member agrees on a leader and member i serves a quorum read
  local i
  for _ in $(seq 300); do
    if roles "$1" >/dev/null &&
      curl -sf -m 2 "${URL[$1,$2]}/v2/keys/cluster/ready?quorum=true" >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: $1 member $2 not healthy after 30 s; logs:" >&2
  for i in $(seq "$MEMBERS"); do tail -n 5 "$TMP/$1-${NAME[$1,$i]}.log" >&2; done
  return 1
}

for s in $SERVERS; do
  for i in $(seq "$MEMBERS"); do start_member "$s" "$i"; done
done
for s in $SERVERS; do
  rl=$(wait_roles "$s"); read -r L _ <<<"$rl"
  ok=0
  for _ in $(seq 100); do
    if curl -sf -m 2 -XPUT "${URL[$s,$L]}/v2/keys/cluster/ready" -d value=1 >/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  [ $ok = 1 ] || { echo "cluster.sh: no write on the $s leader" >&2; exit 1; }
  for i in $(seq "$MEMBERS"); do wait_healthy "$s" "$i"; done
  echo "== $s cluster up: $(urls "$s"), leader ${NAME[$s,$L]}" >&2
done

HZ=$(getconf CLK_TCK)
NPROC=$(nproc)
ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
member_ticks() { # server: every member's CPU ticks, space-separated
  local out="" i
  for i in $(seq "$MEMBERS"); do out+="${out:+ }$(ticks "${PID[$1,$i]}")"; done
  echo "$out"
}
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
irq() { awk '/^cpu /{print $7+$8; exit}' /proc/stat; } # irq + softirq: loopback TCP and block I/O completions
children_ticks() { # parses bash's `times` output saved in $1: children's user+sys, in ticks
  awk -v hz="$HZ" 'NR==2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
    printf "%d\n", t * hz + 0.5 }' "$1"
}
fsyncs() { # server member: log fdatasyncs so far (from /metrics)
  local m=ringd_wal_fsyncs_total
  [ "$1" = etcd ] && m=etcd_disk_wal_fsync_duration_seconds_count
  curl -sf -m 2 "${URL[$1,$2]}/metrics" | awk -v m="$m" '$1 == m {printf "%d\n", $2; f = 1} END {if (!f) print 0}'
}
member_fsyncs() { # server: every member's fsyncs, space-separated
  local out="" i
  for i in $(seq "$MEMBERS"); do out+="${out:+ }$(fsyncs "$1" "$i")"; done
  echo "$out"
}
jlist() { echo "[${1// /,}]"; } # "1 2 3" -> [1,2,3]
delta() { # "a b c" "x y z" -> "x-a y-b z-c"
  paste -d' ' <(tr ' ' '\n' <<<"$1") <(tr ' ' '\n' <<<"$2") | awk '{printf "%s%d", (NR > 1 ? " " : ""), $2 - $1} END {print ""}'
}

# ---- preload, through the leader ----------------------------------------------------------------
PRELOAD_CMDS=()
for s in ${WORKLOADS:+$SERVERS}; do
  rl=$(wait_roles "$s"); read -r L _ <<<"$rl"
  cmd="loadgen preload --url ${URL[$s,$L]} --keys $KEYS --threads $THREADS --quiet --json $RUN/preload-$s.json"
  PRELOAD_CMDS+=("$cmd")
  echo "== $cmd" >&2
  # shellcheck disable=SC2086
  "$TMP/"$cmd >"$RUN/preload-$s.out" 2>&1 || { cat "$RUN/preload-$s.out" >&2; echo "cluster.sh: preload of $s failed" >&2; exit 1; }
done

workload_args() { # workload connections
  case "$1" in
    put-*) echo "put --keys $KEYS --connections $2" ;;
    qget-*) echo "qget --keys $KEYS --no-preload --connections $2" ;;
  esac
}

# ---- throughput points --------------------------------------------------------------------------
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
NW=$(echo "${WORKLOADS//,/ }" | wc -w) NC=$(echo "${CONNS//,/ }" | wc -w)
TOTAL=$((NW * NC * ROUNDS * 2))
echo "== $TOTAL runs of $DUR s, then $FAILOVERS failover(s) per server (about $((TOTAL * (DUR + 2) / 60 + FAILOVERS * 2 / 6 + 1)) min)" >&2
n=0
for w in ${WORKLOADS//,/ }; do
  for c in ${CONNS//,/ }; do
    for r in $(seq "$ROUNDS"); do
      for s in $SERVERS; do
        n=$((n + 1))
        rl=$(wait_roles "$s"); read -r L F <<<"$rl"
        T=$L; [ "$w" != put-leader ] && T=$F
        u=${URL[$s,$T]}
        out=$RUN/$w-$c-$s-$r.json
        rm -f "$out"
        cmd="loadgen $(workload_args "$w" "$c") --url $u --threads $THREADS --duration $DUR --quiet --json $out"
        f0=$(member_fsyncs "$s")
        e0=$(member_ticks etcd) r0=$(member_ticks ringd) b0=$(busy) q0=$(irq) t0=$(date +%s.%N)
        times >"$RUN/times0"
        rc=0
        # shellcheck disable=SC2086
        "$TMP/"$cmd >"$RUN/$w-$c-$s-$r.out" 2>&1 || rc=$?
        times >"$RUN/times1"
        t1=$(date +%s.%N) b1=$(busy) q1=$(irq) e1=$(member_ticks etcd) r1=$(member_ticks ringd)
        f1=$(member_fsyncs "$s")
        L2=$(roles "$s" | cut -d' ' -f1 || true)
        lg=$(($(children_ticks "$RUN/times1") - $(children_ticks "$RUN/times0")))
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        ed=$(delta "$e0" "$e1") rd=$(delta "$r0" "$r1") fd=$(delta "$f0" "$f1")
        printf '{"workload":"%s","conns":%d,"server":"%s","round":%d,"rc":%d,"json":"%s","cmd":"%s","hz":%d,"wall_s":%s,"etcd_ticks":%s,"ringd_ticks":%s,"fsyncs":%s,"leader":%d,"target":%d,"leader_after":%d,"loadgen_ticks":%d,"busy_ticks":%d,"irq_ticks":%d}\n' \
          "$w" "$c" "$s" "$r" "$rc" "$out" "${cmd//$RUN\//}" "$HZ" "$wall" "$(jlist "$ed")" "$(jlist "$rd")" "$(jlist "$fd")" \
          "$L" "$T" "${L2:-0}" "$lg" $((b1 - b0)) $((q1 - q0)) >>"$RUN/runs.jsonl"
        summary=$(python3 -c 'import json,sys
try:
    d = json.load(open(sys.argv[1])); l = d["latency_us"]
    print("%9.0f req/s  p50 %8.0f us  p99 %8.0f us  errors %d" % (d["requests_per_sec"], l["p50"], l["p99"], d["errors"]))
except Exception as e:
    print("no result (%s)" % e)' "$out")
        sv=$ed; [ "$s" = ringd ] && sv=$rd
        note=""; [ $rc = 0 ] || note="  ** loadgen exit $rc: $(tail -c 300 "$RUN/$w-$c-$s-$r.out" | tr '\n' ' ') **"
        [ "${L2:-0}" = "$L" ] || note+="  ** leader changed: ${NAME[$s,$L]} -> ${L2:-none} **"
        printf '[%2d/%d] %-13s c=%-3s %-5s r%d -> %s  %s  cpu ticks %s%s\n' "$n" "$TOTAL" "$w" "$c" "$s" "$r" "${NAME[$s,$T]}" "$summary" "$sv" "$note" >&2
        for i in $(seq "$MEMBERS"); do
          kill -0 "${PID[$s,$i]}" 2>/dev/null || { echo "cluster.sh: $s member $i died; logs:" >&2; tail -n 20 "$TMP/$s"-*.log >&2; exit 1; }
        done
      done
    done
  done
done

# ---- failover: kill -9 of the leader -> first acknowledged write --------------------------------
FAILOVER_CMD="python3 perf/failover.py --pid LEADER_PID --urls SURVIVOR_URLS --warm 2 --interval 0.005"
for f in $(seq "$FAILOVERS"); do
  for s in $SERVERS; do
    rl=$(wait_roles "$s"); read -r L _ <<<"$rl"
    surv=""
    for i in $(seq "$MEMBERS"); do [ "$i" = "$L" ] || surv+="${surv:+,}${URL[$s,$i]}"; done
    rc=0
    res=$(python3 perf/failover.py --pid "${PID[$s,$L]}" --urls "$surv" --warm 2 --interval 0.005) || rc=$?
    wait "${PID[$s,$L]}" 2>/dev/null || true
    rl=$(wait_roles "$s"); read -r L2 _ <<<"$rl"
    printf '{"server":"%s","rep":%d,"rc":%d,"killed":"%s","new_leader":"%s","result":%s}\n' \
      "$s" "$f" "$rc" "${NAME[$s,$L]}" "${NAME[$s,$L2]}" "${res:-null}" >>"$RUN/failovers.jsonl"
    echo "[failover $f/$FAILOVERS] $s: killed ${NAME[$s,$L]}, new leader ${NAME[$s,$L2]}: $res" >&2
    start_member "$s" "$L"
    wait_healthy "$s" "$L"
    sleep 1
  done
done

# ---- report -------------------------------------------------------------------------------------
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- src crates Cargo.toml Cargo.lock 2>/dev/null | wc -l)
CMDS_JSON=$(for s in $SERVERS; do for i in $(seq "$MEMBERS"); do echo "${CMD[$s,$i]}"; done; done |
  sed "s|$TMP/|\$TMP/|g" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))')
NAMES_JSON=$(for s in $SERVERS; do for i in $(seq "$MEMBERS"); do echo "$s ${NAME[$s,$i]} ${URL[$s,$i]}"; done; done |
  python3 -c 'import json,sys
d = {}
for l in sys.stdin.read().splitlines():
    s, n, u = l.split(); d.setdefault(s, []).append({"name": n, "url": u})
print(json.dumps(d))')
python3 - "$RUN/meta.json" <<PY
import json, sys
json.dump({
    "date": "$(date -u +%Y-%m-%d)", "started": "$STARTED", "finished": "$(date -u '+%Y-%m-%d %H:%M:%S UTC')",
    "quick": $QUICK == 1, "members": $MEMBERS, "duration": $DUR, "rounds": $ROUNDS, "threads": $THREADS,
    "keys": $KEYS, "failovers": $FAILOVERS, "heartbeat_ms": $HB, "election_ms": $ET,
    "workloads": [w for w in "$WORKLOADS".split(",") if w], "connections": [int(c) for c in "$CONNS".split(",")],
    "nproc": $NPROC, "kernel": "$(uname -sr)",
    "cpu": "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)",
    "memory": "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)",
    "loadavg_start": "$LOAD_START", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "etcd": "$(etcd --version | tr '\n' ' ' | sed 's/ *$//')",
    "ringd": "$("$RINGD" --version) built from $GIT_REV" + (" + uncommitted changes in $DIRTY files of src/, crates/, Cargo.*" if $DIRTY else ""),
    "loadgen": "$("$LOADGEN" --version)", "rustc": "$(rustc --version)",
    "members_by_server": $NAMES_JSON,
    "invocation": "$INVOCATION", "server_cmds": $CMDS_JSON,
    "preload_cmds": [c.replace("$RUN/", "") for c in """$(printf '%s\n' "${PRELOAD_CMDS[@]}")""".splitlines() if c],
    "failover_cmd": "$FAILOVER_CMD",
}, open(sys.argv[1], "w"), indent=1)
PY
mkdir -p "$OUT"
DAY=$(date -u +%Y-%m-%d)
STEM=cluster; [ "$MEMBERS" = 3 ] || STEM=cluster$MEMBERS
MD=$OUT/$DAY-$STEM.md i=2
while [ -e "$MD" ]; do MD=$OUT/$DAY-$STEM-$i.md i=$((i + 1)); done
python3 perf/cluster_report.py "$RUN" "$MD"
