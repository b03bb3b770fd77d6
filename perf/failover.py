#!/usr/bin/env python3
"""Time from kill -9 of a cluster's leader to the first acknowledged write after it.

Used by perf/cluster.sh; works against etcd (v2 API) and ringd alike. An open-loop writer
starts a new PUT every --interval seconds (each on its own connection, alternating the
--urls, which should be the surviving members), each with its own --req-timeout, so a
request that hangs (sent to a follower that still forwards to the dead leader) holds up no
other. After --warm seconds of writes (which must be acknowledged, or the run fails) it
kills --pid with SIGKILL and waits for the first 2xx of a request SENT after the kill: the
failover time is that answer's arrival minus the kill. The resolution is --interval plus
one request's latency. Prints one JSON object:

  {"failover_ms": ..., "first_url": ..., "first_sent_ms": ..., "acked_before_kill": N,
   "after_kill": {"sent": N, "2xx": N, "<status>": N, "timeout": N, "conn_error": N,
                  "unanswered": N}}

"unanswered" are the requests still waiting when the run stopped (at the first 2xx, plus a
50 ms grace): on both servers, writes sent to a follower that still forwards to the dead
leader are lost with it and would wait for the server's request timeout.

failover_ms is null when no write was acknowledged within --max seconds of the kill.
"""
import argparse
import asyncio
import json
import os
import signal
import sys
import time
from urllib.parse import urlsplit


async def put(url, path, body, timeout):
    """One PUT on a fresh connection: its status code, or 'timeout' / 'conn_error'."""
    u = urlsplit(url)
    try:
        async def go():
            reader, writer = await asyncio.open_connection(u.hostname, u.port)
            try:
                writer.write(
                    f"PUT {path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
                )
                await writer.drain()
                line = await reader.readline()
                parts = line.split()
                return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else "bad_http"
            finally:
                writer.close()

        return await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        return "timeout"
    except OSError:
        return "conn_error"


async def main(a):
    urls = a.urls.split(",")
    loop = asyncio.get_running_loop()
    state = {"kill": None, "first": None, "acked_before": 0, "after": {}, "n": 0, "sent_after": 0}
    done = asyncio.Event()

    async def one(url, n):
        sent = time.monotonic()
        if state["kill"] is not None:
            state["sent_after"] += 1
        body = f"value={n}".encode()
        status = await put(url, f"/v2/keys/{a.key.strip('/')}", body, a.req_timeout)
        now = time.monotonic()
        k = state["kill"]
        if k is None or sent < k:
            if isinstance(status, int) and 200 <= status < 300 and k is None:
                state["acked_before"] += 1
            return
        key = "2xx" if isinstance(status, int) and 200 <= status < 300 else str(status)
        state["after"][key] = state["after"].get(key, 0) + 1
        if key == "2xx" and (state["first"] is None or now < state["first"][0]):
            state["first"] = (now, sent, url)
            done.set()

    tasks = set()
    start = time.monotonic()
    deadline = None
    while True:
        now = time.monotonic()
        if state["kill"] is None and now - start >= a.warm:
            if state["acked_before"] == 0:
                print(json.dumps({"error": "no write acknowledged before the kill"}))
                return 1
            state["kill"] = time.monotonic()
            os.kill(a.pid, signal.SIGKILL)
            deadline = state["kill"] + a.max
        if done.is_set() or (deadline is not None and now >= deadline):
            break
        state["n"] += 1
        t = loop.create_task(one(urls[state["n"] % len(urls)], state["n"]))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        try:
            await asyncio.wait_for(done.wait(), a.interval)
        except asyncio.TimeoutError:
            pass
    # answers already on their way may still beat the first one seen: a short grace
    await asyncio.sleep(0.05)
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    k = state["kill"]
    first = state["first"]
    answered = sum(state["after"].values())
    state["after"]["sent"] = state["sent_after"]
    state["after"]["unanswered"] = state["sent_after"] - answered
    print(json.dumps({
        "failover_ms": round((first[0] - k) * 1000, 1) if first else None,
        "first_sent_ms": round((first[1] - k) * 1000, 1) if first else None,
        "first_url": first[2] if first else None,
        "acked_before_kill": state["acked_before"],
        "after_kill": state["after"],
    }))
    return 0 if first else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pid", type=int, required=True, help="the leader's pid, killed with SIGKILL")
    p.add_argument("--urls", required=True, help="client URLs of the surviving members, comma-separated")
    p.add_argument("--key", default="/failover/k")
    p.add_argument("--warm", type=float, default=2.0, help="seconds of writes before the kill")
    p.add_argument("--interval", type=float, default=0.005, help="seconds between two new requests")
    p.add_argument("--req-timeout", type=float, default=10.0, help="each request's own timeout")
    p.add_argument("--max", type=float, default=30.0, help="give up this long after the kill")
    sys.exit(asyncio.run(main(p.parse_args())))
