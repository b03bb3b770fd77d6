#!/usr/bin/env bash
# Side-by-side performance of etcd 3.4 (v2 API) and ringd, driven by loadgen.
#
# Starts both servers with fresh data dirs on free loopback ports, preloads both with the same
# 10k keys, then runs the standard set (get one key, get random, put, mixed 90/10, qget, watch
# fan-out) at 1, 16, 64 and 256 connections, alternating the targets (etcd, ringd, etcd,
# ringd, ...) so that noise from the shared machine hits both. Around every run it reads each
# server's CPU time (utime+stime, /proc/PID/stat), loadgen's CPU time and the whole machine's
# busy time (/proc/stat), so the other load on the machine during a point is visible.
#
# Writes perf/results/YYYY-MM-DD.md (suffix -2, -3, ... if it exists) with a .json summary and
# a .png plot of latency percentiles beside it, then regenerates the text between
# <!-- perf:begin --> and <!-- perf:end --> in README.md's "## Performance" section from the
# newest results file. See perf/README.md.
#
# Usage: perf/compare.sh [--duration SECS] [--connections 1,16,64,256] [--rounds N]
#                        [--workloads get,get-random,put,mixed,qget,watch] [--threads N]
#                        [--keys N] [--out DIR] [--no-readme] [--quick] [--readme-only] [--keep]
#                        [--no-build] [--server-cpus LIST --loadgen-cpus LIST] [--tls] [--auth]
#        perf/compare.sh --cluster 3|5 [perf/cluster.sh's flags]
#        perf/compare.sh --memory [perf/memory.sh's flags]
#        perf/compare.sh --scale [perf/scale.sh's flags]
#
# --memory runs perf/memory.sh: RSS per key of both after loading 1M keys of 32 bytes under
# /bench/k%06d and after a restart, and the peaks (VmHWM) (see its --help).
#
# --cluster N runs perf/cluster.sh --members N: N-member clusters of both, PUT via the leader
# and via a follower, quorum GET on a follower, kill -9 of the leader (see its --help).
#
# --scale runs perf/scale.sh: idle watchers (RSS per watcher, GET p99 beside them), one PUT's
# fan-out to 1,000 and 10,000 watchers of its key, recursive stream watchers under 64 writers.
#
# --tls serves both over https (a throw-away CA and server certificate made with openssl; loadgen
# trusts it with --cacert); by default GET and PUT at 64 connections, kept alive (get, put) and
# with a new connection, so a full TLS handshake, per request (get-newconn, put-newconn).
# --auth enables v2 auth after the preload (a root user, a user `reader` whose role may read
# /loadgen/*, the guest role's read/write revoked) and sends reader's basic auth with every
# request; a second ringd without auth (ringd-noauth, plain requests) runs beside them, so one
# run measures etcd with auth, ringd with auth and ringd without; by default GET of one key at 64
# connections. Both leave README.md alone and write their results under perf/results/tls,
# perf/results/auth or perf/results/tls-auth.
#
# --server-cpus/--loadgen-cpus (taskset -c lists, e.g. 1 and 0, or 2-3 and 0-1) pin both
# servers to one set of CPUs and loadgen to another, so the load generator no longer takes
# the servers' cores (each server still gets the same CPUs as the other). Pass --threads to
# match the loadgen CPUs. Pinned runs say so in their results file and leave README.md alone
# (its section is the unpinned standard run).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
INVOCATION="perf/compare.sh${*:+ $*}"

# --cluster N: the 3- or 5-member comparison, perf/cluster.sh (the other flags go with it)
ARGS=("$@")
for i in "${!ARGS[@]}"; do
  if [ "${ARGS[$i]}" = --memory ]; then
    REST=("${ARGS[@]:0:$i}" "${ARGS[@]:$((i + 1))}")
    MEMORY_INVOCATION=$INVOCATION exec perf/memory.sh "${REST[@]}"
  fi
  if [ "${ARGS[$i]}" = --cluster ]; then
    REST=("${ARGS[@]:0:$i}" "${ARGS[@]:$((i + 2))}")
    CLUSTER_INVOCATION=$INVOCATION exec perf/cluster.sh --members "${ARGS[$((i + 1))]:-}" "${REST[@]}"
  fi
  if [ "${ARGS[$i]}" = --scale ]; then
    REST=("${ARGS[@]:0:$i}" "${ARGS[@]:$((i + 1))}")
    SCALE_INVOCATION=$INVOCATION exec perf/scale.sh "${REST[@]}"
  fi
done

ALL_WORKLOADS="get,get-random,put,mixed,qget,watch,get-newconn,put-newconn"
DUR="" CONNS="" ROUNDS="" WORKLOADS="" THREADS=2 KEYS=10000 OUT="" README=1 QUICK=0 README_ONLY=0 KEEP=0 BUILD=1
SERVER_CPUS="" LOADGEN_CPUS="" TLS=0 AUTH=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -d|--duration) DUR=$2; shift ;;
    -c|--connections) CONNS=$2; shift ;;
    -r|--rounds) ROUNDS=$2; shift ;;
    -w|--workloads) WORKLOADS=$2; shift ;;
    -t|--threads) THREADS=$2; shift ;;
    -k|--keys) KEYS=$2; shift ;;
    -o|--out) OUT=$2; shift ;;
    --no-readme) README=0 ;;
    --quick) QUICK=1 ;;
    --readme-only) README_ONLY=1 ;;
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --server-cpus) SERVER_CPUS=$2; shift ;;
    --loadgen-cpus) LOADGEN_CPUS=$2; shift ;;
    --tls) TLS=1 ;;
    --auth) AUTH=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $QUICK = 1 ]; then
  # smoke run: 2 s points, one round, 16 and 64 connections, results aside, README untouched
  DUR=${DUR:-2} CONNS=${CONNS:-16,64} ROUNDS=${ROUNDS:-1} OUT=${OUT:-perf/results/quick} README=0
fi
MODE=""
if [ $TLS = 1 ] || [ $AUTH = 1 ]; then
  # the https and auth points: their own results directory, README.md untouched
  # (if/fi, not &&: under set -e a false test as the last command of the assignment exits)
  if [ $TLS = 1 ] && [ $AUTH = 1 ]; then MODE=tls-auth; elif [ $TLS = 1 ]; then MODE=tls; else MODE=auth; fi
  CONNS=${CONNS:-64} OUT=${OUT:-perf/results/$MODE} README=0
  if [ $AUTH = 1 ]; then WORKLOADS=${WORKLOADS:-get}; else WORKLOADS=${WORKLOADS:-get,put,get-newconn,put-newconn}; fi
fi
DUR=${DUR:-10} CONNS=${CONNS:-1,16,64,256} ROUNDS=${ROUNDS:-2}
WORKLOADS=${WORKLOADS:-get,get-random,put,mixed,qget,watch} OUT=${OUT:-perf/results}
for v in "$DUR" "$ROUNDS" "$THREADS" "$KEYS" ${CONNS//,/ }; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: '$v' is not a positive integer" >&2; exit 2; }
done
for v in "$SERVER_CPUS" "$LOADGEN_CPUS"; do
  [[ -z $v || $v =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || { echo "compare.sh: '$v' is not a CPU list (taskset -c syntax)" >&2; exit 2; }
done
if { [ -n "$SERVER_CPUS" ] && [ -z "$LOADGEN_CPUS" ]; } || { [ -z "$SERVER_CPUS" ] && [ -n "$LOADGEN_CPUS" ]; }; then
  echo "compare.sh: --server-cpus and --loadgen-cpus go together" >&2; exit 2
fi
SRV_PIN=() LG_PIN=()
if [ -n "$SERVER_CPUS" ]; then
  SRV_PIN=(taskset -c "$SERVER_CPUS") LG_PIN=(taskset -c "$LOADGEN_CPUS") README=0
fi
for w in ${WORKLOADS//,/ }; do
  [[ ,$ALL_WORKLOADS, == *,$w,* ]] || { echo "compare.sh: unknown workload '$w' (known: $ALL_WORKLOADS)" >&2; exit 2; }
done

# ---- tools (Debian packages) -------------------------------------------------------------------
APT_UPDATED=0
need() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "== installing $2 (for $1)" >&2
  if [ $APT_UPDATED = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need python3 python3
need gnuplot gnuplot-nox

report() { python3 - "$@" <<'PY'
import json, os, re, statistics, sys

mode = sys.argv[1]
ROOT = os.getcwd()
NAMES = {
    "get": "GET one key",
    "get-random": "GET random of the preloaded keys",
    "put": "PUT random key",
    "mixed": "90% GET / 10% PUT (random keys)",
    "qget": "GET quorum=true (random keys)",
    "watch": "watch fan-out (long-poll watchers of one prefix + 1 writer)",
    "get-newconn": "GET one key, a new connection per request",
    "put-newconn": "PUT random key, a new connection per request",
}
PCTS = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9")]


def lat(us):
    if us is None:
        return "-"
    return f"{us:.0f} us" if us < 1000 else f"{us / 1000:.2f} ms" if us < 100_000 else f"{us / 1000:.0f} ms"


def num(x):
    return "-" if x is None else f"{x:,.0f}"


def cpu(x):
    return "-" if x is None else f"{x:.1f}"


def ratio(r, e, times=False):
    if r is None or e is None or e == 0:
        return "-"
    v = r / e
    if times:
        return f"x{v:.2f}" if v < 100 else f"x{v:,.0f}"
    # etcd's bcrypt per request makes some ratios tiny: two significant digits, not 0.00
    return f"{v:.2f}" if v >= 0.01 else f"{v:.2g}"


def aggregate(runs):
    """One point (workload, connections, server) over its rounds."""
    out = {"rounds": len(runs), "failed": [], "errors": 0, "errors_by_kind": {}}
    ok = [r for r in runs if r.get("result")]
    for r in runs:
        if not r.get("result"):
            out["failed"].append(f"round {r['round']}: loadgen exit {r['rc']}, no JSON")
        elif r["rc"] != 0 and not r["result"].get("errors"):
            out["failed"].append(f"round {r['round']}: loadgen exit {r['rc']}")
    if not ok:
        return out
    reqs = sum(r["result"]["requests"] for r in ok)
    secs = sum(r["result"]["elapsed_secs"] for r in ok)
    out["requests"] = reqs
    out["rps"] = reqs / secs if secs else None
    out["rps_rounds"] = [r["result"]["requests_per_sec"] for r in ok]
    for k, _ in PCTS + [("max", "max")]:
        vals = [r["result"]["latency_us"][k] for r in ok]
        out[k] = max(vals) if k == "max" else statistics.median(vals)
    ticks = sum(r["server_ticks"] for r in ok)
    out["cpu_ms_per_1k"] = ticks / ok[0]["hz"] * 1e6 / reqs if reqs else None
    out["others_pct"] = max(r["others_pct"] for r in ok)
    for r in ok:
        out["errors"] += r["result"]["errors"]
        for k, v in r["result"].get("errors_by_kind", {}).items():
            out["errors_by_kind"][k] = out["errors_by_kind"].get(k, 0) + v
    if ok[0]["workload"] == "watch":
        writes = sum(r["result"].get("writes", 0) for r in ok)
        out["writes_per_sec"] = writes / secs if secs else None
        out["write_p99"] = statistics.median(r["result"]["write_latency_us"]["p99"] for r in ok)
    return out


def trouble(p):
    """The loud note for a point with errors or failures, or ''."""
    notes = []
    if p.get("failed"):
        notes += p["failed"]
    if p.get("errors"):
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(p["errors_by_kind"].items()))
        notes.append(f"{p['errors']} errors ({kinds})")
    return "; ".join(notes)


def targets(L, meta, agg, workloads, conns):
    """The https and auth runs: the issue's targets, figure by figure, and (auth) ringd with
    auth against ringd without."""
    def fig(w, c, s, k):
        return agg.get((w, c, s), {}).get(k)
    rows = []
    # the https targets compare servers without auth: not the tls-auth run, where etcd runs bcrypt
    if meta.get("mode") == "tls":
        for w in workloads:
            for c in conns:
                e, r = fig(w, c, "etcd", "rps"), fig(w, c, "ringd", "rps")
                ec, rc = fig(w, c, "etcd", "cpu_ms_per_1k"), fig(w, c, "ringd", "cpu_ms_per_1k")
                # the issue's targets are for https GET: x3 req/s, at most a quarter of the CPU
                t = w == "get"
                rows.append(f"| https {w} @ {c}: ringd/etcd req/s{' (target >= x3)' if t else ''} | {ratio(r, e, True)} |")
                rows.append(f"| https {w} @ {c}: ringd/etcd server CPU per request{' (target <= 0.25)' if t else ''} | {ratio(rc, ec)} |")
    if "ringd-noauth" in meta.get("servers", []):
        for w in workloads:
            for c in conns:
                a, n = fig(w, c, "ringd", "rps"), fig(w, c, "ringd-noauth", "rps")
                e = fig(w, c, "etcd", "rps")
                rows.append(f"| {w} @ {c}: ringd with auth / ringd without auth, req/s (target >= 0.8) | {ratio(a, n)} |")
                rows.append(f"| {w} @ {c}: ringd with auth / etcd with auth, req/s | {ratio(a, e, True)} |")
                ac, ec = fig(w, c, "ringd", "cpu_ms_per_1k"), fig(w, c, "etcd", "cpu_ms_per_1k")
                rows.append(f"| {w} @ {c}: ringd with auth / etcd with auth, server CPU per request | {ratio(ac, ec)} |")
    if not rows:
        return
    L.append("## Targets\n")
    L.append("| figure | value |")
    L.append("|---|---|")
    L.extend(rows)
    L.append("")
    if "ringd-noauth" not in meta.get("servers", []):
        return
    L.append("## ringd with auth vs ringd without auth\n")
    L.append("ringd = auth enabled, basic auth of a user allowed to read on every request; ringd-noauth = "
             "auth never enabled, requests without an Authorization header. ratio = ringd/ringd-noauth.\n")
    L.append("| workload | conns | no-auth req/s | auth req/s | ratio | no-auth p99 | auth p99 | ratio | "
             "no-auth CPU ms/1k | auth CPU ms/1k | ratio | errors |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for w in workloads:
        for c in conns:
            n, a = agg.get((w, c, "ringd-noauth")) or {}, agg.get((w, c, "ringd")) or {}
            t = "; ".join(f"{s}: {trouble(p)}" for s, p in (("ringd-noauth", n), ("ringd", a)) if trouble(p))
            L.append("| " + " | ".join([
                w, str(c), num(n.get("rps")), num(a.get("rps")), ratio(a.get("rps"), n.get("rps")),
                lat(n.get("p99")), lat(a.get("p99")), ratio(a.get("p99"), n.get("p99")),
                cpu(n.get("cpu_ms_per_1k")), cpu(a.get("cpu_ms_per_1k")),
                ratio(a.get("cpu_ms_per_1k"), n.get("cpu_ms_per_1k")),
                f"**⚠ {t}**" if t else "0"]) + " |")
    L.append("")


def build(run_dir, out_md):
    meta = json.load(open(os.path.join(run_dir, "meta.json")))
    runs = [json.loads(l) for l in open(os.path.join(run_dir, "runs.jsonl")) if l.strip()]
    servers = meta.get("servers", ["etcd", "ringd"])
    for r in runs:
        r["result"] = None
        if r.get("json") and os.path.exists(r["json"]) and os.path.getsize(r["json"]) > 0:
            try:
                r["result"] = json.load(open(r["json"]))
            except ValueError:
                pass
        busy = r["busy_ticks"] - sum(r.get(f"{s}_ticks", 0) for s in servers) - r["loadgen_ticks"]
        r["others_pct"] = max(0.0, 100.0 * busy / r["hz"] / (r["wall_s"] * meta["nproc"]))
        r["server_ticks"] = r[f"{r['server']}_ticks"]
    points = {}
    for r in runs:
        points.setdefault((r["workload"], r["conns"], r["server"]), []).append(r)
    agg = {k: aggregate(v) for k, v in points.items()}
    workloads = [w for w in meta["workloads"] if any(k[0] == w for k in agg)]
    conns = meta["connections"]
    base = os.path.splitext(out_md)[0]
    stem = os.path.basename(base)

    # summary JSON (all rounds, trimmed of the histograms)
    summary = {"meta": meta, "points": [], "runs": []}
    for (w, c, s), p in sorted(agg.items()):
        summary["points"].append({"workload": w, "connections": c, "server": s, **p})
    for r in runs:
        res = dict(r["result"] or {})
        hist = res.pop("histogram", None) or {}
        res["percentiles"] = hist.get("percentiles")
        summary["runs"].append({k: v for k, v in r.items() if k not in ("result", "json")} | {"result": res})
    json.dump(summary, open(base + ".json", "w"), indent=1)

    # plot data: one block per workload, a row per connection count
    dat = os.path.join(run_dir, "plot.dat")
    with open(dat, "w") as f:
        for w in workloads:
            f.write(f"# {w}: conns, etcd p50 p90 p99 p99.9, ringd p50 p90 p99 p99.9 (ms)\n")
            for c in conns:
                row = [str(c)]
                for s in ("etcd", "ringd"):
                    p = agg.get((w, c, s), {})
                    row += [f"{max(p[k], 1.0) / 1000:.4f}" if p.get(k) is not None else "NaN" for k, _ in PCTS]
                f.write(" ".join(row) + "\n")
            f.write("\n\n")
    png = base + ".png"
    titles = " ".join(w for w in workloads)
    title = f"etcd 3.4 (dashed) vs ringd (solid), latency percentiles (0 plotted as 1 us), {meta['date']}, {meta['duration']} s x {meta['rounds']} per point"
    rc = os.system(
        f"gnuplot -e \"dat='{dat}'; out='{png}'; names='{titles}'; conns='{' '.join(map(str, conns))}'; heading='{title}'\" "
        f"'{os.path.join(ROOT, 'perf', 'plot.gp')}'"
    )
    if rc != 0:
        print("compare.sh: gnuplot failed; no plot", file=sys.stderr)

    L = []
    quick = " (quick smoke run)" if meta["quick"] else ""
    modes = {"tls": "https", "auth": "auth enabled, basic auth on every request",
             "tls-auth": "https, auth enabled, basic auth on every request"}
    mode = f", {modes[meta['mode']]}" if meta.get("mode") else ""
    L.append(f"# ringd vs etcd 3.4, {meta['date']}{mode}{quick}\n")
    bad = [(k, trouble(p)) for k, p in sorted(agg.items()) if trouble(p)]
    if bad:
        L.append("> **WARNING: NOT A CLEAN RUN. These points had errors or failed runs; their figures are not comparable:**")
        for (w, c, s), t in bad:
            L.append(f"> - **{s} {w} @ {c} connections: {t}**")
        L.append("")
    L.append(
        f"Generated by `perf/compare.sh`. loadgen (closed loop, {meta['threads']} threads, pipeline 1) drives "
        f"each server for {meta['duration']} s per point, {meta['rounds']} round(s) per point, targets "
        f"alternating {', '.join(servers)}, {', '.join(servers)}. "
        + (f"**Pinned** (taskset): each server on CPUs {meta['server_cpus']}, loadgen on CPUs "
           f"{meta['loadgen_cpus']}, so the load generator does not take the servers' cores; other processes "
           "on the machine still may.\n"
           if meta.get("server_cpus") else
           "Both servers, loadgen and whatever else runs on the machine share its cores, so req/s is capped "
           "by the machine and server CPU per request is the steadier figure.\n")
    )
    L.append("Columns: req/s = all requests of the rounds / their time; p50, p99 = median over the rounds of "
             "each round's percentile; CPU = server utime+stime per 1,000 requests in ms "
             "(= us per request); ratio = ringd/etcd (req/s: higher is better for ringd; latency and CPU: "
             "lower is better). `others` = the largest share of the machine's CPU used by other processes "
             "(neither server nor loadgen) during one of the point's runs: above ~10 % the point was disturbed. "
             "For watch, a request is one event delivered to one watcher (connections = watchers), and its "
             "latency runs from the writer's reply to the watcher's event.\n")
    L.append(f"![latency percentiles]({stem}.png)\n")

    L.append("## Machine\n")
    for k in ("nproc", "kernel", "cpu", "memory", "loadavg_start", "loadavg_end", "started", "finished"):
        if k in meta:
            L.append(f"- {k}: {meta[k]}")
    L.append("")
    L.append("## Versions\n")
    for k in ("etcd", "ringd", "loadgen", "rustc", "driver", "tls_protocols"):
        if meta.get(k):
            L.append(f"- {k}: {meta[k]}")
    L.append("")
    L.append("## Commands\n")
    L.append("```")
    L.append(meta["invocation"])
    L.append("")
    L.append(meta["etcd_cmd"])
    L.append(meta["ringd_cmd"])
    if meta.get("ringd_noauth_cmd"):
        L.append(meta["ringd_noauth_cmd"] + "    # ringd-noauth: auth never enabled")
    for c in meta["preload_cmds"]:
        L.append(c)
    for c in meta.get("setup_cmds", []):
        L.append(c)
    seen = set()
    for r in runs:
        cmd = r["cmd"].replace(meta["urls"][r["server"]], "$URL")
        cmd = re.sub(r"--(connections|watchers) \d+", r"--\1 $C", cmd)
        cmd = re.sub(r"--json \S+", f"--json {r['workload']}-$C-$SERVER-$ROUND.json", cmd)
        if cmd in seen:
            continue
        seen.add(cmd)
        L.append(cmd + ("    # ringd-noauth" if r["server"] == "ringd-noauth" else ""))
    L.append("```\n")
    urls = " or ".join(f"{meta['urls'][s]} ({s})" for s in servers)
    L.append(f"with URL = {urls}, C = {', '.join(map(str, conns))}, for each C {meta['rounds']} round(s) "
             f"of {', '.join(servers)} in turn.\n")
    targets(L, meta, agg, workloads, conns)

    for w in workloads:
        L.append(f"## {w}: {NAMES[w]}\n")
        extra = w == "watch"
        head = "| conns | etcd req/s | ringd req/s | ratio | etcd p50 | ringd p50 | ratio | etcd p99 | ringd p99 | ratio | etcd CPU ms/1k | ringd CPU ms/1k | ratio |"
        if extra:
            head += " writes/s etcd / ringd | write p99 etcd / ringd |"
        head += " others | errors |"
        L.append(head)
        L.append("|" + "---|" * (head.count("|") - 1))
        for c in conns:
            e, r = agg.get((w, c, "etcd")), agg.get((w, c, "ringd"))
            if e is None and r is None:
                continue
            e, r = e or {}, r or {}
            cells = [str(c), num(e.get("rps")), num(r.get("rps")), ratio(r.get("rps"), e.get("rps"), True),
                     lat(e.get("p50")), lat(r.get("p50")), ratio(r.get("p50"), e.get("p50")),
                     lat(e.get("p99")), lat(r.get("p99")), ratio(r.get("p99"), e.get("p99")),
                     cpu(e.get("cpu_ms_per_1k")), cpu(r.get("cpu_ms_per_1k")),
                     ratio(r.get("cpu_ms_per_1k"), e.get("cpu_ms_per_1k"))]
            if extra:
                cells += [f"{num(e.get('writes_per_sec'))} / {num(r.get('writes_per_sec'))}",
                          f"{lat(e.get('write_p99'))} / {lat(r.get('write_p99'))}"]
            others = max(e.get("others_pct", 0), r.get("others_pct", 0))
            cells.append(f"{others:.0f} %")
            t = "; ".join(f"{s}: {trouble(p)}" for s, p in (("etcd", e), ("ringd", r)) if trouble(p))
            cells.append(f"**⚠ {t}**" if t else "0")
            L.append("| " + " | ".join(cells) + " |")
        L.append("")

    L.append("## Every run\n")
    L.append("| # | workload | conns | server | round | req/s | p50 | p90 | p99 | p99.9 | max | CPU ms/1k | others | errors |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        res = r["result"]
        if res:
            l = res["latency_us"]
            cpu1k = r["server_ticks"] / r["hz"] * 1e6 / res["requests"] if res["requests"] else None
            err = str(res["errors"]) if not res["errors"] else f"**⚠ {res['errors']}**"
            L.append(f"| {i} | {r['workload']} | {r['conns']} | {r['server']} | {r['round']} | {num(res['requests_per_sec'])} | "
                     f"{lat(l['p50'])} | {lat(l['p90'])} | {lat(l['p99'])} | {lat(l['p999'])} | {lat(l['max'])} | "
                     f"{cpu(cpu1k)} | {r['others_pct']:.0f} % | {err} |")
        else:
            L.append(f"| {i} | {r['workload']} | {r['conns']} | {r['server']} | {r['round']} | "
                     f"**⚠ FAILED (loadgen exit {r['rc']})** | | | | | | | {r['others_pct']:.0f} % | |")
    L.append("")
    open(out_md, "w").write("\n".join(L))
    print(out_md)


def results_key(name):
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)(?:-(\d+))?\.md", name)
    return (m.group(1), int(m.group(2) or 1)) if m else None


def readme(results_dir):
    def pinned(f):
        try:
            j = json.load(open(os.path.join(results_dir, os.path.splitext(f)[0] + ".json")))
            return bool(j["meta"].get("server_cpus"))
        except (OSError, ValueError, KeyError):
            return False
    # The README shows the standard (unpinned) run.
    files = [f for f in os.listdir(results_dir) if results_key(f) and not pinned(f)]
    if not files:
        sys.exit(f"compare.sh: no results file in {results_dir}")
    newest = max(files, key=results_key)
    base = os.path.join(results_dir, os.path.splitext(newest)[0])
    data = json.load(open(base + ".json"))
    meta = data["meta"]
    rel = os.path.relpath(base, ROOT)
    pts = {(p["workload"], p["connections"], p["server"]): p for p in data["points"]}
    c = 64 if 64 in meta["connections"] else max(meta["connections"])
    L = ["<!-- perf:begin -->",
         f"<!-- Generated by perf/compare.sh from {rel}.md: edit the script, not this text. -->",
         f"From the newest run of `perf/compare.sh`, [{rel}.md]({rel}.md) ({meta['date']}): loadgen "
         f"against etcd 3.4 (v2 API) and ringd side by side on this {meta['nproc']}-core machine, "
         f"{meta['duration']} s x {meta['rounds']} alternating rounds per point, {c} connections, ratio = ringd/etcd. "
         "loadgen shares the cores with the servers, so server CPU per request is the steadier figure; "
         f"the results file has every connection count ({', '.join(map(str, meta['connections']))}), p50 to p99.9 and every run.",
         "",
         "| workload | etcd req/s | ringd req/s | ratio | etcd p99 | ringd p99 | ratio | etcd CPU us/req | ringd CPU us/req | ratio | errors |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for w in meta["workloads"]:
        e, r = pts.get((w, c, "etcd")), pts.get((w, c, "ringd"))
        if not e or not r:
            continue
        t = "; ".join(f"{s}: {trouble(p)}" for s, p in (("etcd", e), ("ringd", r)) if trouble(p))
        L.append("| " + " | ".join([
            NAMES[w].split(" (")[0] + (" (events)" if w == "watch" else ""),
            num(e.get("rps")), num(r.get("rps")), ratio(r.get("rps"), e.get("rps"), True),
            lat(e.get("p99")), lat(r.get("p99")), ratio(r.get("p99"), e.get("p99")),
            cpu(e.get("cpu_ms_per_1k")), cpu(r.get("cpu_ms_per_1k")),
            ratio(r.get("cpu_ms_per_1k"), e.get("cpu_ms_per_1k")),
            f"**⚠ {t}**" if t else "0"]) + " |")
    L += ["", f"![latency percentiles]({rel}.png)", "<!-- perf:end -->"]
    block = "\n".join(L)
    path = os.path.join(ROOT, "README.md")
    text = open(path).read()
    if "<!-- perf:begin -->" in text:
        new = re.sub(r"<!-- perf:begin -->.*?<!-- perf:end -->", lambda _: block, text, count=1, flags=re.S)
    else:
        m = re.search(r"^## Performance[ \t]*\n", text, flags=re.M)
        if not m:
            sys.exit("compare.sh: README.md has no '## Performance' heading")
        new = text[: m.end()] + "\n" + block + "\n" + text[m.end():]
    if new != text:
        open(path, "w").write(new)
    print(f"README.md performance section from {rel}.md")


if mode == "build":
    build(sys.argv[2], sys.argv[3])
elif mode == "readme":
    readme(sys.argv[2])
PY
}

if [ $README_ONLY = 1 ]; then report readme "$OUT"; exit 0; fi

need curl curl
need etcd etcd-server
if [ $TLS = 1 ]; then need openssl openssl; fi

# ---- build ---------------------------------------------------------------------------------------
if [ $BUILD = 1 ]; then
  echo "== building ringd and loadgen (release)" >&2
  cargo build --release -p ringd -p loadgen --bins -q
fi
CARGO_TARGET=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# copies, so that a rebuild by someone else during the run cannot change the binaries under test
TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/ringd-compare.XXXXXX")
cp "$CARGO_TARGET/release/ringd" "$CARGO_TARGET/release/loadgen" "$TMP/" || {
  rm -rf "$TMP"; echo "compare.sh: no release binaries in $CARGO_TARGET (build them, or drop --no-build)" >&2; exit 1; }
RINGD=$TMP/ringd LOADGEN=$TMP/loadgen

SCHEME=http CURL_TLS=() LG_TLS="" CERT_FLAGS=""
if [ $TLS = 1 ]; then
  # a throw-away CA and a v3 server certificate for 127.0.0.1 (rustls refuses v1 certificates)
  (
    cd "$TMP"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=compare-ca -keyout ca.key -out ca.pem
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=server \
      -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile ext -out server.pem
  ) >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; echo "compare.sh: openssl failed" >&2; exit 1; }
  SCHEME=https CURL_TLS=(--cacert "$TMP/ca.pem") LG_TLS=" --cacert $TMP/ca.pem"
  CERT_FLAGS=" --cert-file $TMP/server.pem --key-file $TMP/server.key"
fi

# the servers measured, in the order of every round: etcd and ringd; with --auth also a second
# ringd on which auth is never enabled (ringd-noauth), the baseline of ringd's auth cost
SERVERS="etcd ringd"
if [ $AUTH = 1 ]; then SERVERS="etcd ringd ringd-noauth"; fi
declare -A URL PID LG_AUTH
PID=()
cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PID[@]}"; do wait "$p" 2>/dev/null || true; done
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
server_flags() { # name client_port peer_port data_dir
  echo "--name $1 --data-dir $4 --listen-client-urls $SCHEME://127.0.0.1:$2 --advertise-client-urls $SCHEME://127.0.0.1:$2" \
    "--listen-peer-urls http://127.0.0.1:$3 --initial-advertise-peer-urls http://127.0.0.1:$3" \
    "--initial-cluster $1=http://127.0.0.1:$3$CERT_FLAGS"
}
PIN_DESC=${SRV_PIN[*]:+${SRV_PIN[*]} }
declare -A SERVER_CMD
for s in $SERVERS; do
  port=$(free_port) peer=$(free_port)
  URL[$s]=$SCHEME://127.0.0.1:$port
  if [ $s = etcd ]; then bin=etcd args="--enable-v2=true $(server_flags etcd "$port" "$peer" "$TMP/$s.data")"
  else bin=$RINGD args=$(server_flags "$s" "$port" "$peer" "$TMP/$s.data"); fi
  SERVER_CMD[$s]="${PIN_DESC}$(basename "$bin") $args"
  # taskset execs the server, so $! is the server's pid either way
  # shellcheck disable=SC2086
  "${SRV_PIN[@]}" "$bin" $args >"$TMP/$s.log" 2>&1 &
  PID[$s]=$!
done
ETCD_CMD=${SERVER_CMD[etcd]} RINGD_CMD=${SERVER_CMD[ringd]} RINGD_NOAUTH_CMD=${SERVER_CMD[ringd-noauth]:-}
EURL=${URL[etcd]} RURL=${URL[ringd]}
for s in $SERVERS; do
  u=${URL[$s]} ok=0
  for _ in $(seq 200); do # 20 s at most: up, and writable (etcd elects itself leader first)
    if curl -sf -m 2 "${CURL_TLS[@]}" "$u/version" >/dev/null &&
      curl -sf -m 2 "${CURL_TLS[@]}" -XPUT "$u/v2/keys/compare/ready" -d value=1 >/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  if [ $ok = 0 ]; then
    echo "compare.sh: $u did not come up; logs:" >&2; tail -n 20 "$TMP"/*.log >&2; exit 1
  fi
  echo "== $s pid ${PID[$s]} on $u" >&2
done
echo "== temp dir $TMP" >&2

HZ=$(getconf CLK_TCK)
NPROC=$(nproc)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
children_ticks() { # parses bash's `times` output saved in $1: children's user+sys, in ticks
  awk -v hz="$HZ" 'NR==2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
    printf "%d\n", t * hz + 0.5 }' "$1"
}

RUN=$TMP/run
mkdir -p "$RUN"
PRELOAD_CMDS=()
for s in $SERVERS; do
  cmd="loadgen preload --url ${URL[$s]}$LG_TLS --keys $KEYS --threads $THREADS --quiet --json $RUN/preload-$s.json"
  PRELOAD_CMDS+=("$cmd")
  echo "== $cmd" >&2
  # shellcheck disable=SC2086
  "${LG_PIN[@]}" "$TMP/"$cmd >"$RUN/preload-$s.out" 2>&1 || { cat "$RUN/preload-$s.out" >&2; echo "compare.sh: preload of $s failed" >&2; exit 1; }
done
SETUP_CMDS=() READER="" TLS_PROTO=""
if [ $AUTH = 1 ]; then
  # etcd's way to a user who may read the keys and nothing else: a role `reader` with read on
  # /loadgen/*, a user `reader` with it, a root user, auth on, then the guest role's read/write
  # (given by enabling) revoked, so a request without reader's credentials is refused. loadgen
  # sends reader's basic auth with every request (not root: root skips the permission check)
  READER=reader:compare-reader ROOT_AUTH=root:compare-root
  auth_call() { # url method path credentials body -> HTTP status
    local cred=()
    [ -n "$4" ] && cred=(-u "$4")
    curl -s -o /dev/null -w '%{http_code}' -m 10 "${CURL_TLS[@]}" "${cred[@]}" -X "$2" "$1$3" \
      -H 'Content-Type: application/json' ${5:+-d "$5"}
  }
  for s in etcd ringd; do
    u=${URL[$s]}
    for step in \
      "PUT /v2/auth/roles/reader - {\"role\":\"reader\",\"permissions\":{\"kv\":{\"read\":[\"/loadgen/*\"],\"write\":[]}}} 201" \
      "PUT /v2/auth/users/reader - {\"user\":\"reader\",\"password\":\"${READER#*:}\",\"roles\":[\"reader\"]} 200" \
      "PUT /v2/auth/users/root - {\"user\":\"root\",\"password\":\"${ROOT_AUTH#*:}\"} 201" \
      "PUT /v2/auth/enable - - 200" \
      "PUT /v2/auth/roles/guest $ROOT_AUTH {\"role\":\"guest\",\"revoke\":{\"kv\":{\"read\":[\"/*\"],\"write\":[\"/*\"]}}} 200" \
      "GET /v2/keys/loadgen/k0 - - 401" \
      "GET /v2/keys/loadgen/k0 $READER - 200" \
      "PUT /v2/keys/loadgen/k0 $READER - 401"; do
      read -r method path cred body want <<<"$step"
      [ "$cred" = - ] && cred=""
      [ "$body" = - ] && body=""
      got=$(auth_call "$u" "$method" "$path" "$cred" "$body")
      [ $s = etcd ] && SETUP_CMDS+=("curl ${cred:+-u $cred }-X $method \$URL$path${body:+ -d '$body'}    # -> $want")
      if [ "$got" != "$want" ]; then
        echo "compare.sh: auth setup on $s: $method $path as '${cred%%:*}' gave $got, not $want" >&2; exit 1
      fi
    done
    LG_AUTH[$s]=" --user $READER"
  done
  echo "== auth enabled on etcd and ringd (user reader, read on /loadgen/*; guest revoked); ringd-noauth without" >&2
fi
if [ $TLS = 1 ] && command -v openssl >/dev/null; then
  # the protocol and cipher each server picks for a client offering TLS 1.2 and 1.3 (openssl)
  for s in $SERVERS; do
    v=$(openssl s_client -connect "${URL[$s]#https://}" -CAfile "$TMP/ca.pem" </dev/null 2>/dev/null |
      awk '/^New, / { sub(/^New, /, ""); print; exit }')
    TLS_PROTO+="$s: ${v:-?}; "
  done
fi

workload_args() { # workload connections
  case "$1" in
    get) echo "get --key /loadgen/k0 --connections $2" ;;
    get-random) echo "get --keys $KEYS --no-preload --connections $2" ;;
    put) echo "put --keys $KEYS --connections $2" ;;
    mixed) echo "mixed --keys $KEYS --no-preload --read-ratio 0.9 --connections $2" ;;
    qget) echo "qget --keys $KEYS --no-preload --connections $2" ;;
    watch) echo "watch --watchers $2" ;;
    get-newconn) echo "get --key /loadgen/k0 --new-conn --connections $2" ;;
    put-newconn) echo "put --keys $KEYS --new-conn --connections $2" ;;
  esac
}

STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
NW=$(echo "${WORKLOADS//,/ }" | wc -w) NC=$(echo "${CONNS//,/ }" | wc -w) NS=$(echo "$SERVERS" | wc -w)
TOTAL=$((NW * NC * ROUNDS * NS))
echo "== $TOTAL runs of $DUR s (about $((TOTAL * (DUR + 1) / 60 + 1)) min)" >&2
n=0
for w in ${WORKLOADS//,/ }; do
  for c in ${CONNS//,/ }; do
    for r in $(seq "$ROUNDS"); do
      for s in $SERVERS; do
        n=$((n + 1))
        out=$RUN/$w-$c-$s-$r.json
        rm -f "$out"
        cmd="loadgen $(workload_args "$w" "$c") --url ${URL[$s]}$LG_TLS${LG_AUTH[$s]:-} --threads $THREADS --duration $DUR --quiet --json $out"
        declare -A T0 T1
        for x in $SERVERS; do T0[$x]=$(ticks "${PID[$x]}"); done
        b0=$(busy) t0=$(date +%s.%N)
        times >"$RUN/times0"
        rc=0
        # shellcheck disable=SC2086
        "${LG_PIN[@]}" "$TMP/"$cmd >"$RUN/$w-$c-$s-$r.out" 2>&1 || rc=$?
        times >"$RUN/times1"
        t1=$(date +%s.%N) b1=$(busy)
        for x in $SERVERS; do T1[$x]=$(ticks "${PID[$x]}"); done
        lg=$(($(children_ticks "$RUN/times1") - $(children_ticks "$RUN/times0")))
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        st=""
        for x in $SERVERS; do st+="\"$x""_ticks\":$((T1[$x] - T0[$x])),"; done
        printf '{"workload":"%s","conns":%d,"server":"%s","round":%d,"rc":%d,"json":"%s","cmd":"%s","hz":%d,"wall_s":%s,%s"loadgen_ticks":%d,"busy_ticks":%d}\n' \
          "$w" "$c" "$s" "$r" "$rc" "$out" "${cmd//$RUN\//}" "$HZ" "$wall" "$st" "$lg" $((b1 - b0)) >>"$RUN/runs.jsonl"
        summary=$(python3 -c 'import json,sys
try:
    d = json.load(open(sys.argv[1])); l = d["latency_us"]
    print("%9.0f req/s  p50 %8.0f us  p99 %8.0f us  errors %d" % (d["requests_per_sec"], l["p50"], l["p99"], d["errors"]))
except Exception as e:
    print("no result (%s)" % e)' "$out")
        sv=$((T1[$s] - T0[$s]))
        note=""; [ $rc = 0 ] || note="  ** loadgen exit $rc: $(tail -c 300 "$RUN/$w-$c-$s-$r.out" | tr '\n' ' ') **"
        printf '[%3d/%d] %-11s c=%-3s %-12s r%d  %s  cpu %d ticks%s\n' "$n" "$TOTAL" "$w" "$c" "$s" "$r" "$summary" "$sv" "$note" >&2
        for x in $SERVERS; do
          kill -0 "${PID[$x]}" 2>/dev/null || {
            echo "compare.sh: $x died; logs:" >&2; tail -n 20 "$TMP"/*.log >&2; exit 1; }
        done
      done
    done
  done
done

# ---- report ----------------------------------------------------------------------------------------
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- src crates Cargo.toml Cargo.lock 2>/dev/null | wc -l)
DRIVER=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("driver","?"))' "$RUN/preload-ringd.json" 2>/dev/null || echo "?")
python3 - "$RUN/meta.json" <<PY
import json, sys
json.dump({
    "date": "$(date -u +%Y-%m-%d)", "started": "$STARTED", "finished": "$(date -u '+%Y-%m-%d %H:%M:%S UTC')",
    "quick": $QUICK == 1, "mode": "$MODE", "duration": $DUR, "rounds": $ROUNDS, "threads": $THREADS, "keys": $KEYS,
    "workloads": "$WORKLOADS".split(","), "connections": [int(c) for c in "$CONNS".split(",")],
    "nproc": $NPROC, "kernel": "$(uname -sr)",
    "cpu": "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)",
    "memory": "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)",
    "loadavg_start": "$LOAD_START", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "etcd": "$(etcd --version | tr '\n' ' ' | sed 's/ *$//')",
    "ringd": "$("$RINGD" --version) built from $GIT_REV" + (" + uncommitted changes in $DIRTY files of src/, crates/, Cargo.*" if $DIRTY else ""),
    "loadgen": "$("$LOADGEN" --version)", "rustc": "$(rustc --version)",
    "driver": "loadgen used $DRIVER",
    "servers": "$SERVERS".split(), "urls": json.loads("""$(for x in $SERVERS; do printf '%s\n' "$x" "${URL[$x]}"; done | python3 -c 'import json,sys; l=sys.stdin.read().split(); print(json.dumps(dict(zip(l[::2], l[1::2]))))')"""),
    "tls_protocols": "${TLS_PROTO:-}".strip("; "), "auth_user": "${READER%%:*}" if $AUTH == 1 else None,
    "server_cpus": "$SERVER_CPUS", "loadgen_cpus": "$LOADGEN_CPUS",
    "invocation": "$INVOCATION", "etcd_cmd": "$ETCD_CMD", "ringd_cmd": "$RINGD_CMD", "ringd_noauth_cmd": "$RINGD_NOAUTH_CMD",
    "setup_cmds": [c for c in """$(printf '%s\n' "${SETUP_CMDS[@]}")""".splitlines() if c],
    "preload_cmds": [c.replace("$RUN/", "") for c in """$(printf '%s\n' "${PRELOAD_CMDS[@]}")""".splitlines()],
}, open(sys.argv[1], "w"), indent=1)
PY
mkdir -p "$OUT"
DAY=$(date -u +%Y-%m-%d)
MD=$OUT/$DAY.md i=2
while [ -e "$MD" ]; do MD=$OUT/$DAY-$i.md i=$((i + 1)); done
report build "$RUN" "$MD"
if [ $README = 1 ]; then report readme "$OUT"; fi
