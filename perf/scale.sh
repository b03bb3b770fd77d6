#!/usr/bin/env bash
# ringd and etcd 3.4 at service-discovery scale (issue 11), side by side in one run, with
# loadgen. Every point starts a fresh server (a fresh data dir on free loopback ports), and
# the points alternate etcd, ringd, etcd, ringd, ...:
#
#   idle      RSS per idle long-poll watcher: VmRSS (/proc/PID/status) before and after
#             `loadgen fanout --hold` opened --idle-watchers watchers of one key (each registered:
#             its response head is back), divided; and a plain GET's p99 (loadgen get --key,
#             64 connections) without them, then while they are held.
#   fanout    one PUT at a time to W watchers of one key (each --fanout count): when its event
#             reached the first, the median and the last watcher after the PUT's ack, from the
#             kernel's receive times (loadgen fanout); the median over the PUTs and the worst.
#   streams   events/s delivered to --stream-watchers recursive stream watchers of a dir while
#             --writers connections write under it (loadgen streams), the writes/s, the delivery
#             time from each write's ack, and the server CPU per 1,000 events delivered.
#
# Around every loadgen run it reads the server's CPU time (utime+stime, /proc/PID/stat). The
# soft limit on open files is raised to the hard one (10,000 watchers need 10,000 descriptors
# on each side).
#
# Writes perf/results/scale/YYYY-MM-DD.md (-2, -3, ... if it exists) with a .json beside it, and
# regenerates the text between <!-- scale:begin --> and <!-- scale:end --> in README.md's
# "## Performance" section from the newest results file. perf/compare.sh --scale runs this
# script. See perf/README.md.
#
# Usage: perf/scale.sh [--rounds N] [--idle-watchers N] [--fanout 1000,10000] [--puts N]
#                      [--stream-watchers N] [--writers N] [--duration SECS] [--parts
#                      idle,fanout,streams] [--out DIR] [--no-readme] [--readme-only] [--quick]
#                      [--keep] [--no-build]
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
INVOCATION=${SCALE_INVOCATION:-"perf/scale.sh${*:+ $*}"}

ALL_PARTS="idle,fanout,streams"
ROUNDS="" IDLE=10000 FANOUT="1000,10000" PUTS="" SWATCHERS=1000 WRITERS=64 DUR="" PARTS=$ALL_PARTS
OUT="" README=1 README_ONLY=0 QUICK=0 KEEP=0 BUILD=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -r|--rounds) ROUNDS=$2; shift ;;
    --idle-watchers) IDLE=$2; shift ;;
    --fanout) FANOUT=$2; shift ;;
    --puts) PUTS=$2; shift ;;
    --stream-watchers) SWATCHERS=$2; shift ;;
    --writers) WRITERS=$2; shift ;;
    -d|--duration) DUR=$2; shift ;;
    -p|--parts) PARTS=$2; shift ;;
    -o|--out) OUT=$2; shift ;;
    --no-readme) README=0 ;;
    --readme-only) README_ONLY=1 ;;
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "scale.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $QUICK = 1 ]; then # smoke run: small counts, one round, results aside, README untouched
  ROUNDS=${ROUNDS:-1} IDLE=1000 FANOUT=1000 PUTS=${PUTS:-5} SWATCHERS=100 WRITERS=8 DUR=${DUR:-2}
  OUT=${OUT:-perf/results/quick} README=0
fi
ROUNDS=${ROUNDS:-2} PUTS=${PUTS:-20} DUR=${DUR:-8} OUT=${OUT:-perf/results/scale}
for v in "$ROUNDS" "$IDLE" "$PUTS" "$SWATCHERS" "$WRITERS" "$DUR" ${FANOUT//,/ }; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "scale.sh: '$v' is not a positive integer" >&2; exit 2; }
done
for p in ${PARTS//,/ }; do
  [[ ,$ALL_PARTS, == *,$p,* ]] || { echo "scale.sh: unknown part '$p' (known: $ALL_PARTS)" >&2; exit 2; }
done

APT_UPDATED=0
need() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "== installing $2 (for $1)" >&2
  if [ $APT_UPDATED = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need python3 python3

report() { python3 - "$@" <<'PY'
import json, os, re, statistics, sys

mode = sys.argv[1]
ROOT = os.getcwd()


def ms(x):
    return "-" if x is None else f"{x:.2f} ms" if x < 100 else f"{x:.0f} ms"


def num(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def ratio(r, e):
    return "-" if r is None or e is None or r <= 0 or e <= 0 else f"{r / e:.2f}"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def worst(vals):
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def load(run_dir):
    meta = json.load(open(os.path.join(run_dir, "meta.json")))
    runs = [json.loads(l) for l in open(os.path.join(run_dir, "runs.jsonl")) if l.strip()]
    for r in runs:
        r["result"] = None
        p = r.get("json")
        if p and os.path.exists(p) and os.path.getsize(p) > 0:
            try:
                r["result"] = json.load(open(p))
            except ValueError:
                pass
    return meta, runs


def points(meta, runs):
    """Per server: the figures of every part, over the rounds."""
    out = {}
    for s in ("etcd", "ringd"):
        p = {}
        idle = [r for r in runs if r["server"] == s and r["part"] == "idle"]
        p["idle_bytes"] = med([r.get("bytes_per_watcher") for r in idle])
        p["idle_bytes_rounds"] = [r.get("bytes_per_watcher") for r in idle]
        p["idle_registered"] = [r.get("registered") for r in idle]
        for k in ("get_alone", "get_held"):
            rs = [r.get(k) for r in idle if r.get(k)]
            p[k + "_p99_ms"] = med([x["latency_us"]["p99"] / 1000 for x in rs])
            p[k + "_rps"] = med([x["requests_per_sec"] for x in rs])
        for n in meta["fanout"]:
            fr = [r["result"] for r in runs if r["server"] == s and r["part"] == f"fanout-{n}" and r["result"]]
            p[f"fanout_{n}"] = {
                "first": med([x["first_ms"]["median"] for x in fr if x.get("first_ms")]),
                "median": med([x["median_ms"]["median"] for x in fr if x.get("median_ms")]),
                "last": med([x["last_ms"]["median"] for x in fr if x.get("last_ms")]),
                "last_max": worst([x["last_ms"]["max"] for x in fr if x.get("last_ms")]),
                "cpu_ms_per_put": med([x.get("server_cpu_ms_per_put") for x in fr]),
                "errors": sum(x.get("errors_total", 0) for x in fr),
            }
        sr = [r for r in runs if r["server"] == s and r["part"] == "streams" and r["result"]]
        p["streams"] = {
            "events_per_sec": med([r["result"]["events_per_sec"] for r in sr]),
            "writes_per_sec": med([r["result"]["writes_per_sec"] for r in sr]),
            "p99_ms": med([r["result"]["delivery_ms"]["p99"] for r in sr]),
            "p50_ms": med([r["result"]["delivery_ms"]["p50"] for r in sr]),
            "cpu_ms_per_1k_events": med([r["result"].get("server_cpu_ms_per_1k_events") for r in sr]),
            "behind": sum(r["result"]["counts"].get("watchers still behind after the catch-up time", 0) for r in sr),
            "delivered": sum(r["result"]["events_total"] for r in sr),
            "expected": sum(r["result"]["events_expected"] for r in sr),
            "missed": sum(r["result"]["counts"].get("events missed", 0) for r in sr),
            "ended": sum(r["result"]["counts"].get("streams ended by the server", 0)
                         + r["result"]["counts"].get("streams closed by the server", 0) for r in sr),
            "errors": sum(sum(r["result"].get("errors", {}).values()) for r in sr),
        }
        out[s] = p
    return out


def failures(runs):
    return [f"{r['server']} {r['part']} round {r['round']}: loadgen exit {r['rc']}"
            for r in runs if r.get("rc")]


def table(meta, P):
    e, r = P["etcd"], P["ringd"]
    L = ["| measure | etcd | ringd | ringd/etcd |", "|---|---|---|---|"]
    if "idle" in meta["parts"]:
        L.append(f"| RSS per idle watcher, {meta['idle_watchers']:,} open | {num(e['idle_bytes'])} B | "
                 f"{num(r['idle_bytes'])} B | {ratio(r['idle_bytes'], e['idle_bytes'])} |")
        L.append(f"| GET p99, 64 connections, no watchers | {ms(e['get_alone_p99_ms'])} | "
                 f"{ms(r['get_alone_p99_ms'])} | {ratio(r['get_alone_p99_ms'], e['get_alone_p99_ms'])} |")
        L.append(f"| GET p99 while the {meta['idle_watchers']:,} watchers are held | {ms(e['get_held_p99_ms'])} | "
                 f"{ms(r['get_held_p99_ms'])} | {ratio(r['get_held_p99_ms'], e['get_held_p99_ms'])} |")
    if "fanout" in meta["parts"]:
        for n in meta["fanout"]:
            fe, fr = e[f"fanout_{n}"], r[f"fanout_{n}"]
            for k, label in (("first", "first"), ("median", "median"), ("last", "last")):
                L.append(f"| one PUT to {n:,} watchers of its key: {label} delivered after the ack | "
                         f"{ms(fe[k])} | {ms(fr[k])} | {ratio(fr[k], fe[k])} |")
            L.append(f"| one PUT to {n:,} watchers: last, worst PUT | {ms(fe['last_max'])} | "
                     f"{ms(fr['last_max'])} | {ratio(fr['last_max'], fe['last_max'])} |")
            L.append(f"| one PUT to {n:,} watchers: server CPU per PUT (its fan-out and re-watches) | "
                     f"{ms(fe['cpu_ms_per_put'])} | {ms(fr['cpu_ms_per_put'])} | "
                     f"{ratio(fr['cpu_ms_per_put'], fe['cpu_ms_per_put'])} |")
    if "streams" in meta["parts"]:
        se, sr = e["streams"], r["streams"]
        w = f"{meta['stream_watchers']:,} recursive stream watchers, {meta['writers']} writing connections"
        L.append(f"| {w}: events/s delivered | {num(se['events_per_sec'])} | {num(sr['events_per_sec'])} | "
                 f"{ratio(sr['events_per_sec'], se['events_per_sec'])} |")
        L.append(f"| {w}: writes/s | {num(se['writes_per_sec'])} | {num(sr['writes_per_sec'])} | "
                 f"{ratio(sr['writes_per_sec'], se['writes_per_sec'])} |")
        L.append(f"| {w}: delivery p99 after the ack | {ms(se['p99_ms'])} | {ms(sr['p99_ms'])} | "
                 f"{ratio(sr['p99_ms'], se['p99_ms'])} |")
        L.append(f"| {w}: server CPU per 1,000 events delivered | {num(se['cpu_ms_per_1k_events'], '{:,.1f}')} ms | "
                 f"{num(sr['cpu_ms_per_1k_events'], '{:,.1f}')} ms | "
                 f"{ratio(sr['cpu_ms_per_1k_events'], se['cpu_ms_per_1k_events'])} |")
        L.append(f"| {w}: events delivered / acknowledged writes x watchers, all rounds | "
                 f"{se['delivered']:,} / {se['expected']:,} | {sr['delivered']:,} / {sr['expected']:,} | |")
        L.append(f"| {w}: events missed / streams the server ended / watchers still behind {meta['timeout']} s after the writes | "
                 f"{se['missed']:,} / {se['ended']:,} / {se['behind']:,} | "
                 f"{sr['missed']:,} / {sr['ended']:,} / {sr['behind']:,} | |")
    return L


def build(run_dir, out_md):
    meta, runs = load(run_dir)
    P = points(meta, runs)
    base = os.path.splitext(out_md)[0]
    json.dump({"meta": meta, "points": P, "runs": [{k: v for k, v in r.items() if k != "json"} for r in runs]},
              open(base + ".json", "w"), indent=1)
    L = [f"# ringd vs etcd 3.4 at scale: idle watchers, fan-out, stream watchers, {meta['date']}"
         + (" (quick smoke run)" if meta["quick"] else "") + "\n"]
    bad = failures(runs)
    for s in ("etcd", "ringd"):
        for n in meta["fanout"]:
            if P[s][f"fanout_{n}"]["errors"]:
                bad.append(f"{s} fanout to {n}: {P[s][f'fanout_{n}']['errors']} errors")
        if P[s]["streams"]["errors"]:
            bad.append(f"{s} streams: {P[s]['streams']['errors']} errors")
    if bad:
        L.append("> **WARNING: NOT A CLEAN RUN:**")
        L += [f"> - **{b}**" for b in bad]
        L.append("")
    L.append(f"Generated by `perf/scale.sh`: {meta['rounds']} round(s) per point, every point on a fresh "
             "server, targets alternating etcd, ringd. loadgen shares the machine's cores with the server "
             "under test. Figures are medians over the rounds (fan-out: of each round's median over its "
             f"{meta['puts']} PUTs; \"worst PUT\" is the largest of all).\n")
    L += table(meta, P)
    L.append("")
    L.append("How each figure is taken: RSS per idle watcher = (VmRSS with the watchers registered - VmRSS "
             "before they connected) / watchers, the server fresh; the GET p99 runs are `loadgen get --key` "
             f"for {meta['get_secs']} s each. Fan-out times are kernel receive timestamps (SO_TIMESTAMPNS) "
             "of the event on each watcher's socket minus that of the PUT's response on the writer's, so "
             "they are the server's and not loadgen's; a negative first means a watcher had the event "
             "before the writer had its ack. Every watcher re-watches as soon as its response ends; the "
             "next PUT waits until all are registered again. Server CPU per PUT: the server's utime+stime "
             "over the measured PUTs (loadgen --server-pid), so each PUT's fan-out and the re-watches after it. "
             "Stream events/s counts events by the time they reached their sockets while the writers wrote "
             "(closed loop: each server takes writes as fast as it answers them, and shares the machine "
             "between taking writes and delivering events); a stream the server ends (it fell behind) is "
             "re-opened from its next index; a watcher still behind when the catch-up time after the writes "
             "ran out is counted, not waited for. `others` in the table of runs = the share of the machine's "
             "CPU used by processes other than the server and loadgen during the run: above ~10 % the run "
             "was disturbed.\n")
    L.append("## Machine\n")
    for k in ("nproc", "kernel", "cpu", "memory", "nofile", "loadavg_start", "loadavg_end", "started", "finished"):
        if k in meta:
            L.append(f"- {k}: {meta[k]}")
    L.append("\n## Versions\n")
    for k in ("etcd", "ringd", "loadgen"):
        L.append(f"- {k}: {meta[k]}")
    L.append("\n## Commands\n\n```")
    L.append(meta["invocation"])
    L.append(meta["etcd_cmd"])
    L.append(meta["ringd_cmd"])
    seen = set()
    for r in runs:
        for c in r.get("cmds", []):
            c = re.sub(r"http://127\.0\.0\.1:\d+", "$URL", c)
            c = re.sub(r"--json \S+", "--json FILE", c)
            if c not in seen:
                seen.add(c)
                L.append(c)
    L.append("```\n")
    L.append("## Every run\n")
    L.append("| # | part | server | round | result | server CPU | others | loadgen exit |")
    L.append("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        res = r["result"] or {}
        if r["part"] == "idle":
            what = (f"RSS {r.get('rss_before_kb', 0):,} -> {r.get('rss_after_kb', 0):,} kB, "
                    f"{num(r.get('bytes_per_watcher'))} B/watcher, registered {r.get('registered')}; GET p99 "
                    f"{ms((r.get('get_alone') or {}).get('latency_us', {}).get('p99', 0) / 1000)} alone, "
                    f"{ms((r.get('get_held') or {}).get('latency_us', {}).get('p99', 0) / 1000)} held")
        elif r["part"].startswith("fanout"):
            what = (f"first {ms((res.get('first_ms') or {}).get('median'))}, median "
                    f"{ms((res.get('median_ms') or {}).get('median'))}, last "
                    f"{ms((res.get('last_ms') or {}).get('median'))} (worst {ms((res.get('last_ms') or {}).get('max'))}), "
                    f"errors {res.get('errors_total', '-')}")
        else:
            what = (f"{num(res.get('events_per_sec'))} events/s, {num(res.get('writes_per_sec'))} writes/s, "
                    f"p99 {ms((res.get('delivery_ms') or {}).get('p99'))}, {res.get('counts', {})}, "
                    f"errors {res.get('errors', {})}")
        L.append(f"| {i} | {r['part']} | {r['server']} | {r['round']} | {what} | "
                 f"{r.get('cpu_ms', 0):,} ms | {r.get('others_pct', 0):.0f} % | {r.get('rc', '-')} |")
    L.append("")
    open(out_md, "w").write("\n".join(L))
    print(out_md)


def results_key(name):
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)(?:-(\d+))?\.md", name)
    return (m.group(1), int(m.group(2) or 1)) if m else None


def readme(results_dir):
    files = [f for f in os.listdir(results_dir) if results_key(f)]
    if not files:
        sys.exit(f"scale.sh: no results file in {results_dir}")
    newest = max(files, key=results_key)
    base = os.path.join(results_dir, os.path.splitext(newest)[0])
    data = json.load(open(base + ".json"))
    meta, P = data["meta"], data["points"]
    rel = os.path.relpath(base, ROOT)
    L = ["<!-- scale:begin -->",
         f"<!-- Generated by perf/scale.sh from {rel}.md: edit the script, not this text. -->",
         f"At scale, from the newest run of `perf/scale.sh` ([{rel}.md]({rel}.md), {meta['date']}; "
         f"{meta['rounds']} alternating rounds, a fresh server per point, medians): idle long-poll watchers, "
         "one PUT's fan-out to the watchers of its key (times from the PUT's ack to the event on each "
         "watcher's socket, kernel timestamps), and recursive stream watchers under a write load.",
         ""] + table(meta, P) + ["<!-- scale:end -->"]
    block = "\n".join(L)
    path = os.path.join(ROOT, "README.md")
    text = open(path).read()
    if "<!-- scale:begin -->" in text:
        new = re.sub(r"<!-- scale:begin -->.*?<!-- scale:end -->", lambda _: block, text, count=1, flags=re.S)
    elif "<!-- perf:end -->" in text:
        new = text.replace("<!-- perf:end -->", "<!-- perf:end -->\n\n" + block, 1)
    else:
        sys.exit("scale.sh: README.md has no <!-- perf:end --> marker")
    if new != text:
        open(path, "w").write(new)
    print(f"README.md scale section from {rel}.md")


if mode == "build":
    build(sys.argv[2], sys.argv[3])
elif mode == "readme":
    readme(sys.argv[2])
PY
}

if [ $README_ONLY = 1 ]; then report readme "$OUT"; exit 0; fi
need curl curl
need etcd etcd-server

# ---- build, copies of the binaries -----------------------------------------------------------------
if [ $BUILD = 1 ]; then
  echo "== building ringd and loadgen (release)" >&2
  cargo build --release -p ringd -p loadgen --bins -q
fi
CARGO_TARGET=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/ringd-scale.XXXXXX")
SPID="" HPID=""
cleanup() {
  for p in $HPID $SPID; do kill "$p" 2>/dev/null || true; done
  for p in $HPID $SPID; do wait "$p" 2>/dev/null || true; done
  if [ $KEEP = 1 ]; then echo "== kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# copies, so that a rebuild by someone else during the run cannot change the binaries under test
cp "$CARGO_TARGET/release/ringd" "$CARGO_TARGET/release/loadgen" "$TMP/" ||
  { echo "scale.sh: cannot copy the release binaries from $CARGO_TARGET/release" >&2; exit 1; }
RINGD=$TMP/ringd LOADGEN=$TMP/loadgen
RUN=$TMP/run
mkdir -p "$RUN"
: >"$RUN/runs.jsonl"
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [ "$NOFILE" -lt $((IDLE + 1000)) ]; then
  echo "scale.sh: $IDLE watchers need more than the $NOFILE open files allowed here" >&2; exit 1
fi

free_port() {
  python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p not in (2379, 2380): print(p); break'
}
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
server_cmd() { # server port peer_port data_dir
  local flags="--name $1 --data-dir $4 --listen-client-urls http://127.0.0.1:$2 --advertise-client-urls http://127.0.0.1:$2"
  flags+=" --listen-peer-urls http://127.0.0.1:$3 --initial-advertise-peer-urls http://127.0.0.1:$3"
  flags+=" --initial-cluster $1=http://127.0.0.1:$3"
  if [ "$1" = etcd ]; then echo "etcd --enable-v2=true $flags"; else echo "ringd $flags"; fi
}
ETCD_CMD=$(server_cmd etcd '$PORT' '$PEER_PORT' '$DIR')
RINGD_CMD=$(server_cmd ringd '$PORT' '$PEER_PORT' '$DIR')
start() { # server: a fresh one; sets SPID and URL
  local port peer c
  port=$(free_port) peer=$(free_port)
  rm -rf "$TMP/$1.data"
  c=$(server_cmd "$1" "$port" "$peer" "$TMP/$1.data")
  [ "$1" = ringd ] && c=$RINGD${c#ringd}
  # shellcheck disable=SC2086
  $c >>"$TMP/$1.log" 2>&1 &
  SPID=$! URL=http://127.0.0.1:$port
  for _ in $(seq 200); do # 20 s at most: up, and writable (etcd elects itself leader first)
    if curl -sf -m 2 -XPUT "$URL/v2/keys/loadgen/k0" -d value=ready >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "scale.sh: $1 did not come up; log:" >&2; tail -n 20 "$TMP/$1.log" >&2; exit 1
}
stop() {
  kill "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  SPID=""
}
watchers_now() { curl -sf -m 5 "$URL/v2/stats/store" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("watchers", -1))' || echo -1; }
record() { # json object text
  echo "$1" >>"$RUN/runs.jsonl"
}

GET_SECS=5
CATCHUP=20
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
children_ticks() { # bash's `times` output saved in $1: the children's user+sys, in ticks
  awk -v hz="$HZ" 'NR==2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
    printf "%d\n", t * hz + 0.5 }' "$1"
}
# Runs a loadgen command line (its output to OUT's .out), and sets MEASURED to the JSON fields
# of the server's CPU over it and of the share of the machine other processes used meanwhile.
measured() { # json_out command...
  local out=$1 rc=0 s0 s1 b0 b1 t0 t1 lg others
  shift
  s0=$(ticks "$SPID") b0=$(busy) t0=$(date +%s.%N)
  times >"$RUN/times0"
  # shellcheck disable=SC2068
  $@ >"${out%.json}.out" 2>&1 || rc=$?
  times >"$RUN/times1"
  s1=$(ticks "$SPID") b1=$(busy) t1=$(date +%s.%N)
  lg=$(($(children_ticks "$RUN/times1") - $(children_ticks "$RUN/times0")))
  others=$(awk -v b=$((b1 - b0 - (s1 - s0) - lg)) -v hz="$HZ" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')" \
    -v n="$(nproc)" 'BEGIN { o = 100 * b / hz / (w * n); printf "%.1f", (o < 0 ? 0 : o) }')
  MEASURED="\"cpu_ms\":$(((s1 - s0) * 1000 / HZ)),\"others_pct\":$others"
  return $rc
}
idle_point() { # server round
  local s=$1 r=$2 out=$RUN/idle-$1-$2 before after cmd_get cmd_hold reg t0 t1 rc=0 i
  start "$s"
  cmd_get="loadgen get --url $URL --key /loadgen/k0 --connections 64 --threads 2 --duration $GET_SECS --quiet"
  "$TMP/"$cmd_get --json "$out-get-alone.json" >"$out-get-alone.out" 2>&1 || rc=$?
  sleep 1
  before=$(rss_kb "$SPID")
  cmd_hold="loadgen fanout --url $URL --watchers $IDLE --hold 600 --quiet"
  "$TMP/"$cmd_hold >"$out-hold.out" 2>&1 &
  HPID=$!
  for i in $(seq 600); do # 60 s at most for every watcher to be registered
    grep -q '^armed' "$out-hold.out" 2>/dev/null && break
    kill -0 "$HPID" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "^armed $IDLE\$" "$out-hold.out"; then
    echo "scale.sh: $s: $IDLE watchers were not armed: $(tail -c 300 "$out-hold.out")" >&2; rc=1
  fi
  sleep 2
  after=$(rss_kb "$SPID") reg=$(watchers_now)
  t0=$(ticks "$SPID")
  measured "$out-get-held.json" "$TMP/$cmd_get --json $out-get-held.json" || rc=$?
  t1=$(ticks "$SPID")
  kill "$HPID" 2>/dev/null || true; wait "$HPID" 2>/dev/null || true; HPID=""
  stop
  python3 - "$s" "$r" "$before" "$after" "$IDLE" "$reg" "$rc" "$out" "$((t1 - t0))" "$HZ" "$cmd_hold" "$cmd_get" "{$MEASURED}" >>"$RUN/runs.jsonl" <<'PY'
import json, sys
s, r, before, after, n, reg, rc, out, ticks, hz, ch, cg, m = sys.argv[1:]
def j(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
print(json.dumps({"part": "idle", "server": s, "round": int(r), "rc": int(rc),
                  "rss_before_kb": int(before), "rss_after_kb": int(after),
                  "bytes_per_watcher": (int(after) - int(before)) * 1024 / int(n),
                  "registered": int(reg), "get_alone": j(out + "-get-alone.json"),
                  "get_held": j(out + "-get-held.json"), "cpu_ms": int(ticks) * 1000 // int(hz),
                  "others_pct": json.loads(m)["others_pct"], "cmds": [ch, cg]}))
PY
  echo "[idle] $s r$r: RSS $before -> $after kB ($(( (after - before) * 1024 / IDLE )) B/watcher), registered $reg, rc $rc" >&2
}

fanout_point() { # server round watchers
  local s=$1 r=$2 n=$3 out=$RUN/fanout-$3-$1-$2.json cmd rc=0
  start "$s"
  cmd="loadgen fanout --url $URL --watchers $n --puts $PUTS --quiet"
  measured "$out" "$TMP/$cmd --server-pid $SPID --json $out" || rc=$?
  stop
  record "{\"part\":\"fanout-$n\",\"server\":\"$s\",\"round\":$r,\"rc\":$rc,\"json\":\"$out\",$MEASURED,\"cmds\":[\"$cmd\"]}"
  echo "[fanout $n] $s r$r: $(tail -n 1 "${out%.json}.out" | cut -c1-200)" >&2
}

streams_point() { # server round
  local s=$1 r=$2 out=$RUN/streams-$1-$2.json cmd rc=0
  start "$s"
  cmd="loadgen streams --url $URL --watchers $SWATCHERS --writers $WRITERS --duration $DUR --timeout $CATCHUP --quiet"
  measured "$out" "$TMP/$cmd --server-pid $SPID --json $out" || rc=$?
  stop
  record "{\"part\":\"streams\",\"server\":\"$s\",\"round\":$r,\"rc\":$rc,\"json\":\"$out\",$MEASURED,\"cmds\":[\"$cmd\"]}"
  echo "[streams] $s r$r: $(tail -n 1 "${out%.json}.out" | cut -c1-220)" >&2
}

STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$ROUNDS"); do
  for s in etcd ringd; do
    if [[ ,$PARTS, == *,idle,* ]]; then idle_point "$s" "$r"; fi
  done
  for n in ${FANOUT//,/ }; do
    for s in etcd ringd; do
      if [[ ,$PARTS, == *,fanout,* ]]; then fanout_point "$s" "$r" "$n"; fi
    done
  done
  for s in etcd ringd; do
    if [[ ,$PARTS, == *,streams,* ]]; then streams_point "$s" "$r"; fi
  done
done

GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- src crates loadgen Cargo.toml Cargo.lock 2>/dev/null | wc -l)
python3 - "$RUN/meta.json" <<PY
import json, sys
json.dump({
    "date": "$(date -u +%Y-%m-%d)", "started": "$STARTED", "finished": "$(date -u '+%Y-%m-%d %H:%M:%S UTC')",
    "quick": $QUICK == 1, "rounds": $ROUNDS, "parts": "$PARTS".split(","),
    "idle_watchers": $IDLE, "fanout": [int(n) for n in "$FANOUT".split(",")], "puts": $PUTS,
    "stream_watchers": $SWATCHERS, "writers": $WRITERS, "duration": $DUR, "get_secs": $GET_SECS, "timeout": $CATCHUP,
    "nproc": $(nproc), "kernel": "$(uname -sr)", "nofile": $NOFILE,
    "cpu": "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)",
    "memory": "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)",
    "loadavg_start": "$LOAD_START", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "etcd": "$(etcd --version | tr '\n' ' ' | sed 's/ *$//')",
    "ringd": "$("$RINGD" --version) built from $GIT_REV" + (" + uncommitted changes in $DIRTY files" if $DIRTY else ""),
    "loadgen": "$("$LOADGEN" --version)",
    "invocation": "$INVOCATION", "etcd_cmd": "$ETCD_CMD", "ringd_cmd": "$RINGD_CMD",
}, open(sys.argv[1], "w"), indent=1)
PY
mkdir -p "$OUT"
DAY=$(date -u +%Y-%m-%d)
MD=$OUT/$DAY.md i=2
while [ -e "$MD" ]; do MD=$OUT/$DAY-$i.md i=$((i + 1)); done
report build "$RUN" "$MD"
if [ $README = 1 ]; then report readme "$OUT"; fi
