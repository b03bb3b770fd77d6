#!/usr/bin/env bash
# Memory per key of etcd 3.4 (v2 API) and ringd in one run: loads KEYS keys of VALUE_SIZE
# bytes under /bench/k%06d (perf/memory_load.py), then reads each server's memory from
# /proc/PID/status (VmRSS, RssAnon, RssFile, VmHWM) once it has settled; stops it (SIGTERM),
# restarts it on the same data dir and reads them again once it serves and has settled.
#
# The peak is VmHWM: over the load (with the snapshots every --snapshot-count = 100,000
# entries it triggers) for the first process, over recovery for the restarted one. "Settled"
# means two readings of VmRSS 2 s apart within 1 % (at most 30 s). Servers run one after the
# other (etcd, then ringd), each with a fresh data dir under $TMPDIR (else /var/tmp) on free
# loopback ports, so neither one's load or peak lands on the other's figures.
#
# Writes perf/results/memory/YYYY-MM-DD.md (-2, -3, ... if it exists) and a .json beside it,
# and regenerates README.md's memory table (between <!-- memory:begin --> and
# <!-- memory:end -->) from the newest results file.
#
# Usage: perf/memory.sh [--keys N] [--value-size B] [--servers etcd,ringd] [--out DIR]
#                       [--ringd-bin PATH] [--no-build] [--no-readme] [--keep]
#        perf/compare.sh --memory [the same flags]
#
# --ringd-bin measures another ringd binary (an older build, say) instead of this tree's
# release build (implies --no-build).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
INVOCATION="${MEMORY_INVOCATION:-perf/memory.sh${*:+ $*}}"

KEYS=1000000 VALUE=32 SERVERS=etcd,ringd OUT=perf/results/memory README=1 BUILD=1 KEEP=0 BIN="" OTHER_BIN=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -k|--keys) KEYS=$2; shift ;;
    --value-size) VALUE=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    -o|--out) OUT=$2; shift ;;
    --ringd-bin) BIN=$2 OTHER_BIN=$2 BUILD=0; shift ;;
    --no-build) BUILD=0 ;;
    --no-readme) README=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "memory.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $KEYS =~ ^[1-9][0-9]*$ && $KEYS -le 1000000 ]] || { echo "memory.sh: --keys must be 1..1000000" >&2; exit 2; }
[[ $VALUE =~ ^[0-9]+$ ]] || { echo "memory.sh: --value-size must be a number" >&2; exit 2; }
for s in ${SERVERS//,/ }; do
  [[ $s == etcd || $s == ringd ]] || { echo "memory.sh: unknown server '$s'" >&2; exit 2; }
done
# Not the outer run's --out: compare.sh's default results dir is perf/results.
[ "$OUT" = perf/results ] && OUT=perf/results/memory

need() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "== installing $2 (for $1)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need python3 python3
need curl curl
[[ ,$SERVERS, == *,etcd,* ]] && need etcd etcd-server

if [ $BUILD = 1 ]; then
  echo "== building ringd (release)" >&2
  cargo build --release -p ringd --bin ringd -q
fi
if [ -z "$BIN" ]; then
  CARGO_TARGET=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  BIN=$CARGO_TARGET/release/ringd
fi
TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/ringd-memory.XXXXXX")
# a copy, so that a rebuild during the run changes nothing
cp "$BIN" "$TMP/ringd"
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [ $KEEP = 1 ]; then echo "== kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p not in (2379, 2380): print(p); break'
}
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
reading() { # pid -> one JSON object of the status fields (kB)
  printf '{"rss_kb":%s,"anon_kb":%s,"file_kb":%s,"hwm_kb":%s}' \
    "$(status_kb "$1" VmRSS)" "$(status_kb "$1" RssAnon)" "$(status_kb "$1" RssFile)" "$(status_kb "$1" VmHWM)"
}
settle() { # pid: waits until VmRSS moves by less than 1 % over 2 s (30 s at most)
  local a b
  a=$(status_kb "$1" VmRSS)
  for _ in $(seq 15); do
    sleep 2
    b=$(status_kb "$1" VmRSS)
    if [ $((b > a ? b - a : a - b)) -le $((a / 100)) ]; then return 0; fi
    a=$b
  done
}
start() { # server data_dir client_port peer_port -> sets PID
  local cu=http://127.0.0.1:$3 pu=http://127.0.0.1:$4
  local flags="--data-dir $2 --listen-client-urls $cu --advertise-client-urls $cu --listen-peer-urls $pu --initial-advertise-peer-urls $pu --initial-cluster $1=$pu --name $1"
  if [ "$1" = etcd ]; then
    # shellcheck disable=SC2086
    etcd --enable-v2=true $flags >>"$TMP/$1.log" 2>&1 &
  else
    # shellcheck disable=SC2086
    "$TMP/ringd" $flags >>"$TMP/$1.log" 2>&1 &
  fi
  PID=$!
  for _ in $(seq 600); do # 60 s: recovery of a million keys included
    if curl -sf -m 2 "$cu/v2/keys/memory/ready" -XPUT -d value=1 >/dev/null; then return 0; fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "memory.sh: $1 did not come up; log:" >&2; tail -n 20 "$TMP/$1.log" >&2; exit 1
}
stop() {
  kill -TERM "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
}

RESULTS=$TMP/results.jsonl
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_CMD="perf/memory_load.py \$URL --keys $KEYS --value-size $VALUE --prefix /bench --connections 64 --pipeline 4"
for s in ${SERVERS//,/ }; do
  CP=$(free_port) PP=$(free_port) DATA=$TMP/$s.data
  echo "== $s: start on port $CP" >&2
  start "$s" "$DATA" "$CP" "$PP"
  settle "$PID"
  idle=$(reading "$PID")
  echo "== $s: loading $KEYS keys of $VALUE bytes" >&2
  load=$(python3 perf/memory_load.py "http://127.0.0.1:$CP" --keys "$KEYS" --value-size "$VALUE" \
    --prefix /bench --connections 64 --pipeline 4)
  settle "$PID"
  loaded=$(reading "$PID")
  echo "== $s: loaded ($load): $loaded" >&2
  stop
  t0=$(date +%s.%N)
  start "$s" "$DATA" "$CP" "$PP"
  t1=$(date +%s.%N)
  settle "$PID"
  restarted=$(reading "$PID")
  echo "== $s: restarted: $restarted" >&2
  # One key read back: the data survived the restart.
  got=$(curl -sf "http://127.0.0.1:$CP/v2/keys/bench/k$(printf %06d $((KEYS - 1)))" || echo none)
  [[ $got == *'"value":"'* ]] || { echo "memory.sh: $s lost /bench/k$(printf %06d $((KEYS - 1))): $got" >&2; exit 1; }
  stop
  printf '{"server":"%s","load":%s,"idle":%s,"loaded":%s,"restarted":%s,"restart_s":%s}\n' "$s" "$load" "$idle" "$loaded" "$restarted" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" >>"$RESULTS"
done

ETCD_VERSION=$( (etcd --version 2>/dev/null || echo none) | tr '\n' ' ' | sed 's/ *$//')
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- src crates Cargo.toml Cargo.lock 2>/dev/null | wc -l)
if [ -n "$OTHER_BIN" ]; then
  RINGD_DESC="$("$TMP/ringd" --version), the binary $OTHER_BIN"
elif [ "$DIRTY" -gt 0 ]; then
  RINGD_DESC="$("$TMP/ringd" --version) built from $GIT_REV + uncommitted changes in $DIRTY files of src/, crates/, Cargo.*"
else
  RINGD_DESC="$("$TMP/ringd" --version) built from $GIT_REV"
fi
mkdir -p "$OUT"
DAY=$(date -u +%Y-%m-%d)
MD=$OUT/$DAY.md i=2
while [ -e "$MD" ]; do MD=$OUT/$DAY-$i.md i=$((i + 1)); done
python3 - "$RESULTS" "$MD" "$README" <<PY
import json, os, re, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
md, readme = sys.argv[2], sys.argv[3] == "1"
meta = {
    "date": "$(date -u +%Y-%m-%d)", "started": "$STARTED", "finished": "$(date -u '+%Y-%m-%d %H:%M:%S UTC')",
    "keys": $KEYS, "value_size": $VALUE, "invocation": "$INVOCATION", "load_cmd": "$LOAD_CMD",
    "kernel": "$(uname -sr)", "nproc": $(nproc),
    "memory": "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)",
    "etcd": "$ETCD_VERSION",
    "ringd": "$RINGD_DESC",
}
base = os.path.splitext(md)[0]
json.dump({"meta": meta, "runs": runs}, open(base + ".json", "w"), indent=1)
keys = meta["keys"]
per = lambda kb: kb * 1024 / keys
mb = lambda kb: f"{kb / 1024:.0f} MiB"
def row(r, phase, label):
    x = r[phase]
    settled = x["rss_kb"]
    return (f"| {r['server']} | {label} | {mb(x['rss_kb'])} | {per(x['rss_kb']):.0f} | {per(x['rss_kb'] - r['idle']['rss_kb']):.0f} | "
            f"{mb(x['anon_kb'])} | {mb(x['file_kb'])} | {mb(x['hwm_kb'])} | {x['hwm_kb'] / settled:.2f} |")
L = [f"# Memory per key, ringd vs etcd 3.4, {meta['date']}\n",
     f"Generated by \`perf/memory.sh\`: {keys:,} keys of {meta['value_size']} bytes under \`/bench/k%06d\`, loaded by "
     "\`perf/memory_load.py\` (64 connections, 4 requests in flight each, keys in about ascending order), into one "
     "server at a time (fresh data dir, default flags: a snapshot every 100,000 entries). Readings from "
     "\`/proc/PID/status\` once VmRSS has settled (two readings 2 s apart within 1 %): after the load, and after a "
     "SIGTERM and a restart on the same data dir (snapshot + log replay). B/key = VmRSS / keys; net = (VmRSS - "
     "the idle server's VmRSS) / keys. Peak = VmHWM: over the whole load (its snapshots included) for the first "
     "process, over recovery for the restarted one; x settled = VmHWM / VmRSS.\n",
     "| server | when | VmRSS | B/key | net B/key | RssAnon | RssFile | peak (VmHWM) | peak / settled |",
     "|---|---|---|---|---|---|---|---|---|"]
for r in runs:
    L.append(row(r, "loaded", "after the load"))
    L.append(row(r, "restarted", f"after a restart ({r['restart_s']} s to serve)"))
by = {r["server"]: r for r in runs}
if "etcd" in by and "ringd" in by:
    L.append("")
    for phase, label in (("loaded", "after the load"), ("restarted", "after a restart")):
        e, g = by["etcd"][phase]["rss_kb"], by["ringd"][phase]["rss_kb"]
        L.append(f"- {label}: ringd/etcd VmRSS = {g / e:.2f}")
    L.append("- etcd's figure after the load moves from run to run (1,000 to 2,900 B/key on a 2-core machine): Go "
             "gives the heap it freed back to the OS slowly, while VmRSS looks settled; after the restart is its steady figure.")
L += ["", "## Load", ""]
for r in runs:
    L.append(f"- {r['server']}: {r['load']['keys']:,} keys in {r['load']['seconds']} s ({r['load']['keys_per_sec']:,}/s), {r['load']['errors']} errors; idle before the load: VmRSS {mb(r['idle']['rss_kb'])}")
L += ["", "## Machine and versions", ""]
for k in ("kernel", "nproc", "memory", "etcd", "ringd", "started", "finished"):
    L.append(f"- {k}: {meta[k]}")
L += ["", "## Commands", "", "\`\`\`", meta["invocation"], meta["load_cmd"], "\`\`\`", ""]
open(md, "w").write("\n".join(L))
print(md)
if readme:
    rel = os.path.relpath(base, os.getcwd())
    T = ["<!-- memory:begin -->",
         f"<!-- Generated by perf/memory.sh from {rel}.md: edit the script, not this text. -->",
         f"Memory per key ([{rel}.md]({rel}.md), {meta['date']}): {keys:,} keys of {meta['value_size']} bytes under "
         "\`/bench/k%06d\`, one server at a time; VmRSS once settled, per key; peak = VmHWM over the load (snapshots "
         "included) or over recovery.", "",
         "| server | after the load | after a restart | peak during the load | peak during recovery |",
         "|---|---|---|---|---|"]
    for r in runs:
        l, s = r["loaded"], r["restarted"]
        T.append(f"| {r['server']} | {per(l['rss_kb']):.0f} B/key ({mb(l['rss_kb'])}) | {per(s['rss_kb']):.0f} B/key ({mb(s['rss_kb'])}) | "
                 f"{mb(l['hwm_kb'])} ({l['hwm_kb'] / l['rss_kb']:.2f} x settled) | {mb(s['hwm_kb'])} ({s['hwm_kb'] / s['rss_kb']:.2f} x settled) |")
    T.append("")
    T.append("etcd's figure after the load moves from run to run (Go gives its freed heap back to the OS slowly); "
             "after a restart is its steady figure. Where ringd's bytes go: ARCHITECTURE.md, \"Memory per key\".")
    T.append("<!-- memory:end -->")
    block = "\n".join(T)
    text = open("README.md").read()
    if "<!-- memory:begin -->" in text:
        new = re.sub(r"<!-- memory:begin -->.*?<!-- memory:end -->", lambda _: block, text, count=1, flags=re.S)
    else:
        new = text.replace("<!-- perf:end -->", "<!-- perf:end -->\n\n" + block, 1)
    if new != text:
        open("README.md", "w").write(new)
        print("README.md memory table from " + rel + ".md")
PY
