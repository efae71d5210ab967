#!/usr/bin/env python3
"""A legitimate unlock during a flood: what the /rec rate limits buy.

One nbde-server (release build, SQLite, P-521 devices) trusts 127.0.0.1 as a proxy, so
X-Forwarded-For names the source. wrk floods device `flooded` from 10.0.0.1 (a new
connection per request, as clevis makes them); meanwhile machines boot: every 20 ms one
more of 500 devices asks once, from 10.0.0.2, on a new connection, and the latencies of
these unlocks are kept. Rows:
no flood; the flood with the default buckets; the flood with the buckets lifted. Prints
the legitimate client's p50/p99/max and statuses, and what the flood got.

    python3 bench/flood.py [--seconds S] [--conns N]   (root, Debian; needs wrk, jose)
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from storm import (LUA, ROOT, SERVER, UNLIMITED, Admin, Procs, device_path, free_port,  # noqa: E402
                   init_store, wait_port)

TRUST_LOOPBACK = 'trusted_proxies = ["127.0.0.1"]\n'
# Devices that boot during a run (one unlock each); more than a run's 20 ms ticks.
MACHINES = 500


def start(procs, work, name, config):
    data = os.path.join(work, name)
    token = init_store(["--data", data])
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config)
    port = free_port()
    server = procs.start([SERVER, "serve", "--data", data, "--config", path, "--listen",
                          f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, server)
    admin = Admin(port, token)
    admin.post("/orgs", {"name": "bench"})
    flooded = admin.post("/orgs/bench/devices", {"name": "flooded", "curve": "P-521"})
    legit = [device_path(admin.post("/orgs/bench/devices", {"name": f"m{i}", "curve": "P-521"}))
             for i in range(MACHINES)]
    return server, port, device_path(flooded), legit


def post(port, path, body, source):
    """One POST /rec on a new connection; (status, seconds)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/jwk+json\r\n"
                   f"X-Forwarded-For: {source}\r\nContent-Length: {len(body)}\r\n"
                   f"Connection: close\r\n\r\n{body}").encode())
        head = s.recv(64)
    return int(head.split()[1]), time.perf_counter() - start


def legit_client(port, paths, body, seconds):
    """Machines booting: one unlock each, one every 20 ms."""
    statuses, latencies = {}, []
    end = time.monotonic() + seconds
    for path in paths:
        if time.monotonic() >= end:
            break
        status, took = post(port, path, body, "10.0.0.2")
        statuses[status] = statuses.get(status, 0) + 1
        latencies.append(took)
        time.sleep(0.02)
    return statuses, latencies


def flood(port, path, body, seconds, conns):
    env = dict(os.environ, STORM_BODY=body)
    out = subprocess.run(["wrk", "-t", "2", "-c", str(conns), "-d", f"{int(seconds)}s", "-H",
                          "X-Forwarded-For: 10.0.0.1", "-s", LUA, f"http://127.0.0.1:{port}{path}"],
                         env=env, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("STORM "))
    figures = json.loads(line[len("STORM "):])
    figures["seconds"] = figures["duration_us"] / 1e6
    return figures


def row(name, statuses, latencies, flooded):
    q = statistics.quantiles(latencies, n=100)
    shown = ", ".join(f"{n}×{s}" for s, n in sorted(statuses.items()))
    flood_cell = "—" if flooded is None else (f"{flooded['ok'] / flooded['seconds']:,.0f} answered 200/s, "
                                             f"{flooded['other'] / flooded['seconds']:,.0f} refused/s")
    print(f"| {name} | {statistics.median(latencies) * 1000:.1f} ms | {q[98] * 1000:.1f} ms | "
          f"{max(latencies) * 1000:.1f} ms | {shown} | {flood_cell} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=64)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "nbde-server"], cwd=ROOT, check=True)
    gen = subprocess.run(["jose", "jwk", "gen", "-i", '{"alg":"ECMR","crv":"P-521"}'],
                         capture_output=True, check=True).stdout
    body = subprocess.run(["jose", "jwk", "pub", "-i-"], input=gen, capture_output=True,
                          check=True).stdout.decode().strip()
    procs = Procs()
    work = tempfile.mkdtemp(prefix="nbde-flood-")
    print(f"Machines booting: one unlock each, a new device every 20 ms, from 10.0.0.2, {args.seconds:.0f} s; "
          f"flood: wrk, {args.conns} connections, device `flooded` from 10.0.0.1; 2 cores shared.\n")
    print("| server | unlock p50 | unlock p99 | unlock max | unlock statuses | flood |")
    print("|---|---|---|---|---|---|")
    try:
        for name, config, with_flood in [
                ("no flood, default buckets", TRUST_LOOPBACK, False),
                ("flood, default buckets", TRUST_LOOPBACK, True),
                ("flood, buckets lifted", TRUST_LOOPBACK + UNLIMITED, True)]:
            server, port, flooded_path, legit_paths = start(procs, work, name.replace(" ", "-").replace(",", ""),
                                                           config)
            result = {}
            flooder = None
            if with_flood:
                flooder = threading.Thread(target=lambda: result.update(
                    flood(port, flooded_path, body, args.seconds, args.conns)))
                flooder.start()
                time.sleep(0.5)  # the buckets empty first
            statuses, latencies = legit_client(port, legit_paths, body, args.seconds - 1)
            if flooder:
                flooder.join()
            row(name, statuses, latencies, result if with_flood else None)
            procs.stop(server)
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
