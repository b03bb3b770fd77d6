#!/usr/bin/env python3
"""Loads N keys named PREFIX/k%06d with VALUE_SIZE-byte values into an etcd v2 server.

The driver of perf/memory.sh: HTTP/1.1 PUTs over many keep-alive connections from one
selector loop, a few pipelined per connection, every response checked for a 2xx status.
loadgen's preload names its keys without zero padding (k0, k1, ...), and the memory point
is specified as /bench/k%06d, so it has its own driver; what is measured is the server's
memory per key, not the driver's speed.

Usage: memory_load.py URL [--keys N] [--value-size B] [--prefix /bench] [--connections C]
                      [--pipeline P]
Prints one JSON object: {"keys", "seconds", "keys_per_sec", "errors"}; exits 1 on any error.
"""
import argparse
import json
import selectors
import socket
import sys
import time
from urllib.parse import urlparse


class Conn:
    def __init__(self, sock, keys):
        self.sock = sock
        self.keys = keys  # iterator of the key numbers this connection writes
        self.out = b""
        self.inbuf = b""
        self.in_flight = 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-size", type=int, default=32)
    ap.add_argument("--prefix", default="/bench")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--pipeline", type=int, default=4)
    a = ap.parse_args()
    if not 0 < a.keys <= 1_000_000 or a.value_size < 0 or a.connections < 1 or a.pipeline < 1:
        sys.exit("memory_load: --keys must be 1..1000000 (k%06d), the rest positive")
    u = urlparse(a.url)
    addr = (u.hostname, u.port or 80)
    body = b"value=" + b"v" * a.value_size
    head = (
        "Host: %s:%d\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
        % (addr[0], addr[1], len(body))
    ).encode() + body
    prefix = a.prefix.encode()

    def request(i):
        return b"PUT /v2/keys%s/k%06d HTTP/1.1\r\n" % (prefix, i) + head

    sel = selectors.DefaultSelector()
    conns = []
    for c in range(a.connections):
        s = socket.create_connection(addr)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        # Interleaved ranges: connection c writes c, c + C, c + 2C, ... so the server sees
        # keys in roughly ascending order, as a bulk load would send them.
        conn = Conn(s, iter(range(c, a.keys, a.connections)))
        conns.append(conn)
        sel.register(s, selectors.EVENT_READ, conn)

    errors = 0
    done = 0
    t0 = time.monotonic()

    def refill(conn):
        while conn.in_flight < a.pipeline:
            i = next(conn.keys, None)
            if i is None:
                break
            conn.out += request(i)
            conn.in_flight += 1
        if conn.out:
            try:
                n = conn.sock.send(conn.out)
                conn.out = conn.out[n:]
            except BlockingIOError:
                pass
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        sel.modify(conn.sock, events, conn)

    for conn in conns:
        refill(conn)
    open_conns = len(conns)
    while open_conns:
        for key, mask in sel.select(timeout=30):
            conn = key.data
            if mask & selectors.EVENT_WRITE and conn.out:
                n = conn.sock.send(conn.out)
                conn.out = conn.out[n:]
            if mask & selectors.EVENT_READ:
                chunk = conn.sock.recv(1 << 16)
                if not chunk:
                    sys.exit("memory_load: the server closed a connection")
                conn.inbuf += chunk
                while True:
                    end = conn.inbuf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head_text = conn.inbuf[:end].decode("latin-1")
                    length = 0
                    for line in head_text.split("\r\n")[1:]:
                        k, _, v = line.partition(":")
                        if k.strip().lower() == "content-length":
                            length = int(v.strip())
                    if len(conn.inbuf) < end + 4 + length:
                        break
                    status = int(head_text.split(" ", 2)[1])
                    if not 200 <= status < 300:
                        errors += 1
                        if errors == 1:
                            sys.stderr.write("memory_load: %d %r\n" % (status, conn.inbuf[end + 4 : end + 4 + length][:200]))
                    conn.inbuf = conn.inbuf[end + 4 + length :]
                    conn.in_flight -= 1
                    done += 1
            refill(conn)
            if conn.in_flight == 0 and not conn.out:
                sel.unregister(conn.sock)
                conn.sock.close()
                open_conns -= 1
    secs = time.monotonic() - t0
    if done != a.keys:
        sys.exit("memory_load: %d of %d answered" % (done, a.keys))
    out = {"keys": a.keys, "seconds": round(secs, 2), "keys_per_sec": round(a.keys / secs), "errors": errors}
    print(json.dumps(out))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
