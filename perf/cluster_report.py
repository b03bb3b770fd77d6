#!/usr/bin/env python3
"""The results file of perf/cluster.sh: cluster_report.py RUN_DIR OUT.md (writes OUT.json too).

RUN_DIR holds meta.json, runs.jsonl (one line per loadgen run, with every member's CPU ticks
and log fsyncs), failovers.jsonl (one line per kill -9 of a leader) and loadgen's JSON files.
"""
import json
import os
import statistics
import sys

NAMES = {
    "put-leader": "PUT random key, sent to the leader",
    "put-follower": "PUT random key, sent to a follower (forwarded to the leader)",
    "qget-follower": "GET quorum=true (random preloaded keys) on a follower",
}
SERVERS = ("etcd", "ringd")


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
    return f"x{r / e:.2f}" if times else f"{r / e:.2f}"


def load(run_dir):
    meta = json.load(open(os.path.join(run_dir, "meta.json")))
    runs = [json.loads(l) for l in open(os.path.join(run_dir, "runs.jsonl")) if l.strip()]
    for r in runs:
        r["result"] = None
        if r.get("json") and os.path.exists(r["json"]) and os.path.getsize(r["json"]) > 0:
            try:
                r["result"] = json.load(open(r["json"]))
            except ValueError:
                pass
        servers = sum(r["etcd_ticks"]) + sum(r["ringd_ticks"])
        irq = r.get("irq_ticks", 0)
        busy = r["busy_ticks"] - servers - r["loadgen_ticks"] - irq
        share = lambda t: max(0.0, 100.0 * t / r["hz"] / (r["wall_s"] * meta["nproc"]))  # noqa: E731
        r["others_pct"] = share(busy)
        r["irq_pct"] = share(irq)
        r["member_ticks"] = r[f"{r['server']}_ticks"]
    path = os.path.join(run_dir, "failovers.jsonl")
    failovers = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
    return meta, runs, failovers


def aggregate(runs):
    """One point (workload, connections, server) over its rounds."""
    out = {"rounds": len(runs), "failed": [], "errors": 0, "errors_by_kind": {}, "leader_changed": 0}
    ok = [r for r in runs if r.get("result")]
    for r in runs:
        if not r.get("result"):
            out["failed"].append(f"round {r['round']}: loadgen exit {r['rc']}, no JSON")
        elif r["rc"] != 0 and not r["result"].get("errors"):
            out["failed"].append(f"round {r['round']}: loadgen exit {r['rc']}")
        if r["leader_after"] != r["leader"]:
            out["leader_changed"] += 1
    if not ok:
        return out
    reqs = sum(r["result"]["requests"] for r in ok)
    secs = sum(r["result"]["elapsed_secs"] for r in ok)
    hz = ok[0]["hz"]
    out["requests"] = reqs
    out["rps"] = reqs / secs if secs else None
    out["rps_rounds"] = [r["result"]["requests_per_sec"] for r in ok]
    for k in ("p50", "p90", "p99", "p999"):
        out[k] = statistics.median(r["result"]["latency_us"][k] for r in ok)
    out["max"] = max(r["result"]["latency_us"]["max"] for r in ok)
    if reqs:
        us = lambda ticks: ticks / hz * 1e6 / reqs  # noqa: E731
        out["cpu_us"] = us(sum(sum(r["member_ticks"]) for r in ok))
        out["cpu_leader_us"] = us(sum(r["member_ticks"][r["leader"] - 1] for r in ok))
        out["cpu_followers_us"] = out["cpu_us"] - out["cpu_leader_us"]
        lf = sum(r["fsyncs"][r["leader"] - 1] for r in ok)
        out["leader_fsyncs"] = lf
        out["reqs_per_leader_fsync"] = reqs / lf if lf else None
    out["others_pct"] = max(r["others_pct"] for r in ok)
    out["irq_pct"] = statistics.median(r["irq_pct"] for r in ok)
    if reqs:
        out["irq_us"] = sum(r.get("irq_ticks", 0) for r in ok) / hz * 1e6 / reqs
    for r in ok:
        out["errors"] += r["result"]["errors"]
        for k, v in r["result"].get("errors_by_kind", {}).items():
            out["errors_by_kind"][k] = out["errors_by_kind"].get(k, 0) + v
    return out


def trouble(p):
    notes = list(p.get("failed", []))
    if p.get("errors"):
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(p["errors_by_kind"].items()))
        notes.append(f"{p['errors']} errors ({kinds})")
    if p.get("leader_changed"):
        notes.append(f"leader changed during {p['leader_changed']} run(s)")
    return "; ".join(notes)


def failover_stats(failovers, server):
    ms = [f["result"]["failover_ms"] for f in failovers
          if f["server"] == server and f.get("result") and f["result"].get("failover_ms") is not None]
    bad = [f for f in failovers if f["server"] == server and not (f.get("result") or {}).get("failover_ms")]
    if not ms:
        return {"n": 0, "failed": len(bad)}
    return {"n": len(ms), "failed": len(bad), "median_ms": statistics.median(ms), "min_ms": min(ms),
            "max_ms": max(ms), "all_ms": ms}


def build(run_dir, out_md):
    meta, runs, failovers = load(run_dir)
    points = {}
    for r in runs:
        points.setdefault((r["workload"], r["conns"], r["server"]), []).append(r)
    agg = {k: aggregate(v) for k, v in points.items()}
    fo = {s: failover_stats(failovers, s) for s in SERVERS}
    n = meta["members"]
    base = os.path.splitext(out_md)[0]

    summary = {"meta": meta, "points": [], "failover": fo, "failovers": failovers, "runs": []}
    for (w, c, s), p in sorted(agg.items()):
        summary["points"].append({"workload": w, "connections": c, "server": s, **p})
    for r in runs:
        res = dict(r["result"] or {})
        hist = res.pop("histogram", None) or {}
        res["percentiles"] = hist.get("percentiles")
        summary["runs"].append({k: v for k, v in r.items() if k not in ("result", "json")} | {"result": res})
    json.dump(summary, open(base + ".json", "w"), indent=1)

    L = []
    quick = " (quick smoke run)" if meta["quick"] else ""
    L.append(f"# ringd vs etcd 3.4, {n}-member clusters, {meta['date']}{quick}\n")
    bad = [(k, trouble(p)) for k, p in sorted(agg.items()) if trouble(p)]
    fbad = [s for s in SERVERS if fo[s].get("failed")]
    if bad or fbad:
        L.append("> **WARNING: NOT A CLEAN RUN. These points had errors, failed runs or a leader change; "
                 "their figures are not comparable:**")
        for (w, c, s), t in bad:
            L.append(f"> - **{s} {w} @ {c} connections: {t}**")
        for s in fbad:
            L.append(f"> - **{s} failover: {fo[s]['failed']} repetition(s) without an acknowledged write**")
        L.append("")
    L.append(
        f"Generated by `perf/cluster.sh` (`perf/compare.sh --cluster {n}`). Two {n}-member clusters run side "
        f"by side on this {meta['nproc']}-core machine, member i of each on 127.0.0.i, data dirs in /var/tmp "
        f"(on disk, both fsync), both with `--heartbeat-interval {meta['heartbeat_ms']} --election-timeout "
        f"{meta['election_ms']}`. loadgen (closed loop, {meta['threads']} threads, pipeline 1) drives one "
        f"member for {meta['duration']} s per point, {meta['rounds']} round(s) per point, targets alternating "
        "etcd, ringd, etcd, ringd. All the members of both clusters, loadgen and whatever else runs here "
        "share the cores, so req/s is capped by the machine; server CPU per request is the steadier figure.\n")
    L.append(
        "Columns: req/s = all requests of the rounds / their time; p50, p99 = median over the rounds of "
        f"each round's percentile; CPU = utime+stime per request in us, **summed over the {n} members** of the "
        "cluster under load (leader + followers beside it); req/fsync = requests per fdatasync of the "
        "leader's log (group commit; etcd: `etcd_disk_wal_fsync_duration_seconds_count`, ringd: "
        "`ringd_wal_fsyncs_total`); ratio = ringd/etcd. `others` = the largest share of the machine's CPU "
        "used by other processes (neither cluster nor loadgen) during one of the point's runs: above ~10 % "
        "the point was disturbed. `softirq` = the machine's irq+softirq time per request (loopback TCP of "
        "clients and peers, block I/O completions), in no process's utime+stime and so in neither "
        "server's CPU column: work both clusters cause, shared with loadgen.\n")

    # ---- against the targets
    c = 64 if 64 in meta["connections"] else max(meta["connections"])
    L.append(f"## Against the targets ({c} connections)\n")
    L.append("| figure | etcd | ringd | ratio | target | met |")
    L.append("|---|---|---|---|---|---|")

    def row(label, e, r, fmt, times, target, ok):
        rv = None if e is None or r is None or e == 0 else r / e
        met = "-" if rv is None else ("yes" if ok(rv) else "**no**")
        L.append(f"| {label} | {fmt(e)} | {fmt(r)} | {ratio(r, e, times)} | {target} | {met} |")

    for w, lbl, rps_target in (("put-leader", "PUT via the leader", 3), ("put-follower", "PUT via a follower", 2)):
        e, r = agg.get((w, c, "etcd")), agg.get((w, c, "ringd"))
        if not e or not r:
            continue
        row(f"{lbl}: req/s", e.get("rps"), r.get("rps"), num, True, f">= x{rps_target}", lambda v, t=rps_target: v >= t)
        row(f"{lbl}: p99", e.get("p99"), r.get("p99"), lat, False, "<= 0.33", lambda v: v <= 1 / 3)
        row(f"{lbl}: CPU us/req, {n} members", e.get("cpu_us"), r.get("cpu_us"), cpu, False, "<= 0.25",
            lambda v: v <= 0.25)
    e, r = agg.get(("qget-follower", c, "etcd")), agg.get(("qget-follower", c, "ringd"))
    if e and r:
        row("quorum GET on a follower: req/s", e.get("rps"), r.get("rps"), num, True, "(none)", lambda v: True)
        row(f"quorum GET on a follower: CPU us/req, {n} members", e.get("cpu_us"), r.get("cpu_us"), cpu, False,
            "(none)", lambda v: True)
    if fo["etcd"].get("n") and fo["ringd"].get("n"):
        fe, fr = fo["etcd"], fo["ringd"]
        row("kill -9 of the leader -> first acknowledged write, median", fe["median_ms"], fr["median_ms"],
            lambda x: f"{x:,.0f} ms", False, "<= 1 (no slower)", lambda v: v <= 1)
    L.append("")
    L.append("The follower's req/s target is DESIGN.md's (>= x2); its p99 and CPU rows are held to the "
             "leader's targets. The quorum GET has no target of its own: etcd 3.4 sends every v2 quorum GET "
             "through the raft log (an entry and an fsync on every member), ringd answers it with a ReadIndex "
             "round (no log write).\n")

    # ---- machine, versions, commands
    L.append("## Machine\n")
    for k in ("nproc", "kernel", "cpu", "memory", "loadavg_start", "loadavg_end", "started", "finished"):
        if k in meta:
            L.append(f"- {k}: {meta[k]}")
    L.append("")
    L.append("## Versions\n")
    for k in ("etcd", "ringd", "loadgen", "rustc"):
        L.append(f"- {k}: {meta[k]}")
    L.append("")
    L.append("## Commands\n")
    L.append("```")
    L.append(meta["invocation"])
    L.append("")
    L.extend(meta["server_cmds"])
    L.extend(meta["preload_cmds"])
    seen = set()
    for r in runs:
        if r["workload"] in seen:
            continue
        seen.add(r["workload"])
        cmd = r["cmd"]
        for s in SERVERS:
            for m in meta["members_by_server"][s]:
                cmd = cmd.replace(m["url"] + " ", "$URL ")
        cmd = cmd.replace(f"--connections {r['conns']}", "--connections $C")
        cmd = cmd.split(" --json ")[0] + f" --json {r['workload']}-$C-$SERVER-$ROUND.json"
        L.append(f"{cmd}    # {r['workload']}")
    L.append(meta["failover_cmd"] + "    # then the killed member is restarted with its command")
    L.append("```\n")
    L.append(f"$TMP is a fresh directory under /var/tmp. URL = the leader's client URL for put-leader, the "
             "first follower's for put-follower and qget-follower (leader and follower found from "
             "/v2/stats/self before every run); preload through the leader. "
             f"C = {', '.join(map(str, meta['connections']))}, for each C {meta['rounds']} round(s) of etcd then ringd. "
             f"Failover: {meta['failovers']} repetition(s) alternating etcd and ringd; the writer starts a "
             "PUT every 5 ms on its own connection on the surviving members, each request waiting up to "
             "10 s, and the figure is the time from the SIGKILL to the first 2xx of a request sent after "
             "it (resolution ~5 ms).\n")

    # ---- throughput tables
    conns = meta["connections"]
    for w in meta["workloads"]:
        if not any(k[0] == w for k in agg):
            continue
        L.append(f"## {w}: {NAMES[w]}\n")
        head = ("| conns | etcd req/s | ringd req/s | ratio | etcd p50 | ringd p50 | ratio | etcd p99 | ringd p99 | "
                "ratio | etcd CPU us/req (leader + followers) | ringd CPU us/req (leader + followers) | ratio | "
                "req/fsync etcd / ringd | softirq us/req etcd / ringd | others | errors |")
        L.append(head)
        L.append("|" + "---|" * (head.count("|") - 1))
        for c in conns:
            e, r = agg.get((w, c, "etcd")), agg.get((w, c, "ringd"))
            if e is None and r is None:
                continue
            e, r = e or {}, r or {}

            def split(p):
                if p.get("cpu_us") is None:
                    return "-"
                return f"{cpu(p['cpu_us'])} ({cpu(p['cpu_leader_us'])} + {cpu(p['cpu_followers_us'])})"

            def rpf(p):
                v = p.get("reqs_per_leader_fsync")
                return "no fsync" if p.get("leader_fsyncs") == 0 else "-" if v is None else f"{v:.1f}"

            t = "; ".join(f"{s}: {trouble(p)}" for s, p in (("etcd", e), ("ringd", r)) if trouble(p))
            others = max(e.get("others_pct", 0), r.get("others_pct", 0))
            L.append("| " + " | ".join([
                str(c), num(e.get("rps")), num(r.get("rps")), ratio(r.get("rps"), e.get("rps"), True),
                lat(e.get("p50")), lat(r.get("p50")), ratio(r.get("p50"), e.get("p50")),
                lat(e.get("p99")), lat(r.get("p99")), ratio(r.get("p99"), e.get("p99")),
                split(e), split(r), ratio(r.get("cpu_us"), e.get("cpu_us")),
                f"{rpf(e)} / {rpf(r)}", f"{cpu(e.get('irq_us'))} / {cpu(r.get('irq_us'))}", f"{others:.0f} %", f"**⚠ {t}**" if t else "0"]) + " |")
        L.append("")

    # ---- failover
    if failovers:
        L.append("## Failover: kill -9 of the leader -> first acknowledged write\n")
        L.append("| rep | etcd: killed -> new leader | etcd | ringd: killed -> new leader | ringd |")
        L.append("|---|---|---|---|---|")
        reps = sorted({f["rep"] for f in failovers})
        for rep in reps:
            cells = [str(rep)]
            for s in SERVERS:
                f = next((x for x in failovers if x["server"] == s and x["rep"] == rep), None)
                if f is None:
                    cells += ["-", "-"]
                    continue
                ms = (f.get("result") or {}).get("failover_ms")
                cells += [f"{f['killed']} -> {f['new_leader']}", f"{ms:,.0f} ms" if ms is not None else "**⚠ none**"]
            L.append("| " + " | ".join(cells) + " |")
        for k, lbl in (("median_ms", "median"), ("min_ms", "min"), ("max_ms", "max")):
            cells = [f"**{lbl}**"]
            for s in SERVERS:
                v = fo[s].get(k)
                cells += ["", f"**{v:,.0f} ms**" if v is not None else "-"]
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
        L.append(f"Both servers draw each follower's election timeout at random in [{meta['election_ms']}, "
                 f"{2 * meta['election_ms']}) ms (raft's randomization; ringd's raft-rs also pre-votes), so one "
                 "failover is about the earlier of the survivors' timers since their last heartbeat, plus an "
                 "election round and the first commit: repetitions spread over several hundred ms, and only "
                 "medians over many repetitions tell the servers apart.\n")
        L.append("Requests sent after the kill, per server over all repetitions (answered with 2xx, other "
                 "status, timed out or still unanswered when the first 2xx came):\n")
        for s in SERVERS:
            tot = {}
            for f in failovers:
                if f["server"] == s and f.get("result"):
                    for k, v in f["result"].get("after_kill", {}).items():
                        tot[k] = tot.get(k, 0) + v
            L.append(f"- {s}: " + ", ".join(f"{k} {v}" for k, v in sorted(tot.items())))
        L.append("")

    # ---- every run
    if not runs:
        open(out_md, "w").write("\n".join(L))
        print(out_md)
        return
    L.append("## Every run\n")
    L.append(f"CPU per member in us/req, member 1..{n} (L = leader, T = the member loadgen talked to); "
             "softirq and others as shares of the machine.\n")
    L.append("| # | workload | conns | server | round | target | req/s | p50 | p99 | p99.9 | max | CPU us/req (sum) | per member | leader fsyncs | softirq | others | errors |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        res = r["result"]
        names = meta["members_by_server"][r["server"]]
        target = names[r["target"] - 1]["name"]
        if res and res["requests"]:
            l = res["latency_us"]
            per = lambda t: t / r["hz"] * 1e6 / res["requests"]  # noqa: E731
            members = " / ".join(
                f"{per(t):.1f}{'L' if j == r['leader'] else ''}{'T' if j == r['target'] else ''}"
                for j, t in enumerate(r["member_ticks"], 1))
            err = str(res["errors"]) if not res["errors"] else f"**⚠ {res['errors']}**"
            if r["leader_after"] != r["leader"]:
                err += " **⚠ leader changed**"
            L.append(f"| {i} | {r['workload']} | {r['conns']} | {r['server']} | {r['round']} | {target} | "
                     f"{num(res['requests_per_sec'])} | {lat(l['p50'])} | {lat(l['p99'])} | {lat(l['p999'])} | "
                     f"{lat(l['max'])} | {cpu(per(sum(r['member_ticks'])))} | {members} | "
                     f"{r['fsyncs'][r['leader'] - 1]:,} | {r['irq_pct']:.0f} % | {r['others_pct']:.0f} % | {err} |")
        else:
            L.append(f"| {i} | {r['workload']} | {r['conns']} | {r['server']} | {r['round']} | {target} | "
                     f"**⚠ FAILED (loadgen exit {r['rc']})** | | | | | | | | {r['irq_pct']:.0f} % | {r['others_pct']:.0f} % | |")
    L.append("")
    open(out_md, "w").write("\n".join(L))
    print(out_md)


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
