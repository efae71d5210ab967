#!/usr/bin/env python3
"""Recovery storm, side by side in one run: stock tangd against nbde-server under wrk, on
loopback, every request on a new connection (Connection: close), as clevis makes them.

Usage: bench/storm.py [--seconds S] [--quick] [--devices N] [--out bench/STORM.md]

Run as root on Debian 12. Prerequisites (installed with apt-get if missing): wrk, haproxy,
socat, tang, jose, strace, systemd (systemd-socket-activate), postgresql-15 (for the
PostgreSQL rows), cmake and clang (to build the server's AWS-LC). Builds nbde-server and
the multiplication bench first (release).

Rows: tangd behind socat with nodelay (its best case), tangd as Debian's socket unit runs
it (systemd-socket-activate --inetd: the accepted socket is tangd's stdin/stdout, no
nodelay), nbde-server --tang-dir on the same key directory, nbde-server's per-device route
on SQLite, and on PostgreSQL with one replica and two behind haproxy (if this server has
--database). Then a storm of N distinct devices, one recovery each, checked against the
history; and the floors (bench/floors.py): one variable-base multiplication per curve and
one durable write. Where a recovery's CPU goes at 16 connections: the history writer
thread's share, and what HTTP and loopback TCP alone cost the same server (`GET /adv`).
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import floors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SERVER = os.path.join(TARGET, "release", "nbde-server")
LUA = os.path.join(ROOT, "bench", "storm.lua")
PG_BIN = "/usr/lib/postgresql/15/bin"
TICK = os.sysconf("SC_CLK_TCK")
PACKAGES = {"wrk": "wrk", "haproxy": "haproxy", "socat": "socat", "/usr/libexec/tangd": "tang",
            "jose": "jose", "strace": "strace", "systemd-socket-activate": "systemd",
            PG_BIN + "/initdb": "postgresql-15", "cmake": "cmake", "clang": "clang"}


def ensure_packages():
    missing = sorted({pkg for exe, pkg in PACKAGES.items() if not shutil.which(exe)})
    if missing:
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True,
                       stdout=subprocess.DEVNULL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None):
    for _ in range(400):
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process for port {port} exited: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    raise SystemExit(f"nothing listens on {port}")


def compiles():
    """rustc processes running now: other builds share the 2 cores and skew figures."""
    out = subprocess.run(["pgrep", "-c", "rustc|clippy-driver"], capture_output=True,
                         text=True).stdout
    return int(out.strip() or 0)


def cpu_seconds(pids):
    """utime+stime of `pids` and of their reaped children (tangd's processes), seconds."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # Fields 14-17 (utime, stime, cutime, cstime), counted from the pid as 1.
        total += sum(int(v) for v in fields[11:15])
    return total / TICK


def thread_cpu_seconds(pid, name):
    """utime+stime of the threads of `pid` named `name`, seconds."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                comm, rest = f.read().split(" (", 1)[1].rsplit(")", 1)
        except FileNotFoundError:
            continue
        if comm == name:
            total += sum(int(v) for v in rest.split()[11:13])
    return total / TICK


def http_alone(port, path, conns, seconds, pid):
    """The server's CPU per `GET path` on a new connection each: HTTP and loopback TCP
    with no multiplication and no history row."""
    before = cpu_seconds([pid])
    out = subprocess.run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{seconds}s",
                          "-H", "Connection: close", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds([pid]) - before
    n = int(re.search(r"(\d+) requests in", out)[1])
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return dict(conns=conns, rate=n / seconds, cpu_us=cpu * 1e6 / n,
                non2xx=int(bad[1]) if bad else 0)


class Procs:
    """Every process the bench starts, ended by PID at the end."""

    def __init__(self):
        self.all = []

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
        self.all.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.all):
            self.stop(p)


def pinned(cpus):
    """The command prefix that runs a program on these CPUs only (none: anywhere)."""
    return ["taskset", "-c", cpus] if cpus else []


def wrk(port, path, conns, seconds, body, storm=None, cpus=None):
    """One wrk cell; returns the figures the Lua script's done() prints."""
    env = dict(os.environ, STORM_BODY=body)
    threads = min(conns, 2)
    cmd = [*pinned(cpus), "wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--timeout", "10s",
           "--latency", "-s", LUA, f"http://127.0.0.1:{port}{path}"]
    if storm:
        cmd += ["--", storm, str(threads)]
    if storm:
        out, elapsed = wrk_storm(cmd, env, threads)
    else:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("STORM "))
    figures = json.loads(line[len("STORM "):])
    figures["rate"] = figures["ok"] / (figures["duration_us"] / 1e6)
    if storm:
        figures["rate"] = (figures["ok"] + figures["other"]) / elapsed
    return figures


def wrk_storm(cmd, env, threads):
    """wrk sleeps out -d even once every thread stopped: each thread says when it is done,
    and the last one's word ends wrk (SIGINT, by PID) and the clock."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    done = 0
    for line in p.stderr:
        if line.strip() == "STORM-DONE":
            done += 1
            if done == threads:
                break
    elapsed = time.perf_counter() - start
    p.send_signal(signal.SIGINT)
    out = p.stdout.read()
    p.wait()
    return out, elapsed


def measure(name, port, path, body, pids, args, floor_us, rows, wrk_cpus=None):
    """Every concurrency of one server, CPU per answer from `pids` over each cell."""
    for conns in args.conns:
        busy = compiles()
        before = cpu_seconds(pids)
        writer_before = sum(thread_cpu_seconds(p, "history-writer") for p in pids)
        f = wrk(port, path, conns, args.seconds, body, cpus=wrk_cpus)
        cpu = cpu_seconds(pids) - before
        writer = sum(thread_cpu_seconds(p, "history-writer") for p in pids) - writer_before
        answers = max(f["ok"] + f["other"], 1)
        f.update(name=name, conns=conns, busy=busy + compiles(), cpu_us=cpu * 1e6 / answers,
                 writer_us=writer * 1e6 / answers)
        f["ratio"] = f["cpu_us"] / floor_us
        if name.startswith("tangd"):
            # Its processes' CPU reaches the listener only as they are reaped, which lags
            # behind the cell: not a per-answer figure.
            f["cpu_us"] = f["ratio"] = None
        rows.append(f)
        print(f"  {name} c={conns}: {f['rate']:.0f} rec/s, p50 {f['p50_us'] / 1000:.2f} ms, "
              f"p99 {f['p99_us'] / 1000:.2f} ms, {f['cpu_us'] or 0:.0f} µs CPU/rec, "
              f"{f['other']} non-200, errors {f['connect'] + f['read'] + f['write'] + f['timeout']}",
              file=sys.stderr)


def socat_sets_nodelay(keydir):
    """Runs one request through socat under strace: does `nodelay` reach the accepted socket?"""
    port = free_port()
    trace = subprocess.Popen(
        ["strace", "-f", "-e", "trace=accept,accept4,setsockopt", "socat",
         f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,nodelay", f"EXEC:/usr/libexec/tangd {keydir}"],
        stderr=subprocess.PIPE, text=True)
    wait_port(port, trace)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/adv", timeout=5).read()
    except OSError:
        pass
    trace.wait(10)
    lines = trace.stderr.read().splitlines()
    accepts = [l for l in lines if l.startswith("accept") and not l.rstrip().endswith("= -1")]
    if not accepts:
        return "no connection accepted"
    listen_fd = accepts[-1].split("(", 1)[1].split(",", 1)[0]
    accepted_fd = accepts[-1].rsplit("= ", 1)[1].split()[0]
    on = {fd for fd in (listen_fd, accepted_fd)
          if any(l.startswith(f"setsockopt({fd}, SOL_TCP, TCP_NODELAY, [1]") for l in lines)}
    if accepted_fd in on:
        return "yes, set on the accepted socket"
    if listen_fd not in on:
        return "NO"
    # Set on the listener only: Linux copies it to the sockets accept() returns; checked.
    with socket.socket() as lst:
        lst.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        with socket.create_connection(lst.getsockname()):
            conn, _ = lst.accept()
            with conn:
                inherited = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    return ("yes: set on the listening socket, which this kernel copies to accepted ones"
            if inherited else "NO: set on the listening socket only, not inherited here")


# Rate limits far above any load wrk can make (a microsecond per token): every request of a
# cell comes from one address to one device, and the buckets would measure themselves.
UNLIMITED = ("[rate_limit]\nsource_per_second = 1000000\nsource_burst = 1000000\n"
             "device_per_minute = 60000000\ndevice_burst = 1000000\n")


def start_server(procs, argv, cpus=None):
    """Starts `nbde-server serve …` on a free port, rate limits lifted (on `cpus` only, if
    given); returns (process, port)."""
    port = free_port()
    config = os.path.join(tempfile.gettempdir(), f"nbde-bench-{port}.toml")
    with open(config, "w") as f:
        f.write(UNLIMITED)
    p = procs.start([*pinned(cpus), SERVER, "serve", *argv, "--config", config, "--listen", f"127.0.0.1:{port}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env=dict(os.environ, RUST_LOG="warn"))
    wait_port(port, p)
    return p, port


def init_store(store_args):
    out = subprocess.run([SERVER, "init", *store_args], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


class Admin:
    """The admin API over one kept-alive connection."""

    def __init__(self, port, token):
        import http.client
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.token = token

    def post(self, path, body):
        self.conn.request("POST", f"/admin/v1{path}", json.dumps(body),
                          {"Authorization": f"Bearer {self.token}",
                           "Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"admin {path}: {r.status} {data[:200]!r}")
        return json.loads(data)


def device_path(device):
    return f"/o/{device['org']}/d/{device['name']}/rec/{device['kid']}"


def start_pg(procs, work):
    """A throwaway PostgreSQL 15 cluster (the `postgres` system user); returns its URL."""
    data = os.path.join(work, "pg")
    os.makedirs(data)
    shutil.chown(data, "postgres", "postgres")
    os.chmod(work, 0o755)
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_pg + [f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust"],
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    p = procs.start(as_pg + [f"{PG_BIN}/postgres", "-D", data, "-p", str(port), "-k", data,
                             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    for _ in range(100):
        if subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                           "-c", "CREATE DATABASE nbde"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    return p, f"postgres://postgres@127.0.0.1:{port}/nbde"


def start_haproxy(procs, work, backends):
    port = free_port()
    cfg = os.path.join(work, "haproxy.cfg")
    servers = "\n".join(f"    server r{i} 127.0.0.1:{b}" for i, b in enumerate(backends))
    with open(cfg, "w") as f:
        # mode tcp: each clevis request is its own connection, so balancing connections
        # is balancing requests, with no second HTTP parse in the proxy.
        f.write(f"""global
    maxconn 8192
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend rec
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
""")
    p = procs.start(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    wait_port(port, p)
    return p, port


def has_postgres():
    out = subprocess.run([SERVER, "init", "--help"], capture_output=True, text=True)
    return "--database" in out.stdout + out.stderr


def storm(procs, args, work, floor_us):
    """N devices (creation timed), one recovery each; the 200s against the history rows."""
    store = os.path.join(work, "storm")
    token = init_store(["--data", store])
    server, port = start_server(procs, ["--data", store])
    admin = Admin(port, token)
    admin.post("/orgs", {"name": "storm"})
    t = time.perf_counter()
    devices = [admin.post("/orgs/storm/devices", {"name": f"d{i}"}) for i in range(args.devices)]
    created = time.perf_counter() - t
    paths = os.path.join(work, "storm.paths")
    with open(paths, "w") as f:
        f.writelines(device_path(d) + "\n" for d in devices)
    busy = compiles()
    before = cpu_seconds([server.pid])
    f = wrk(port, "/", args.storm_conns, 600, args.body, storm=paths)
    cpu = cpu_seconds([server.pid]) - before
    out = subprocess.run([SERVER, "--server", f"http://127.0.0.1:{port}", "history", "--json",
                          "--limit", str(args.devices * 2)], env=dict(os.environ, NBDE_TOKEN=token),
                         capture_output=True, text=True, check=True).stdout
    rows = [r for r in json.loads(out)["history"] if r.get("org") == "storm"]
    allowed = sum(1 for r in rows if r["decision"] == "allowed")
    procs.stop(server)
    return dict(devices=args.devices, created_s=created, ok=f["ok"], other=f["other"],
                rate=f["rate"], rows=len(rows), allowed=allowed, busy=busy + compiles(),
                cpu_us=cpu * 1e6 / max(f["ok"] + f["other"], 1), floor_us=floor_us,
                conns=args.storm_conns)


def table(rows, floor_us):
    lines = ["| server | conns | rec/s | p50 ms | p99 ms | CPU µs/rec | CPU ÷ 1 mul | non-200 |"
             " rustc running |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu = "—" if r["cpu_us"] is None else f"{r['cpu_us']:.0f}"
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['name']} | {r['conns']} | {r['rate']:.0f} | {r['p50_us'] / 1000:.2f} | "
                     f"{r['p99_us'] / 1000:.2f} | {cpu} | {ratio} | "
                     f"{r['other']} | {r['busy']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10, help="per cell")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s cells, 500 devices")
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--storm-conns", type=int, default=64)
    parser.add_argument("--out", help="also write the report (markdown) here")
    parser.add_argument("--server-bin", help="bench this nbde-server binary (e.g. an older "
                        "build, for before/after) instead of building the tree's")
    parser.add_argument("--skip-storm", action="store_true")
    args = parser.parse_args()
    args.conns = [1, 2, 16, 64]
    if args.quick:
        args.seconds, args.devices, args.conns = 2, 500, [1, 16]
    args.seconds = int(max(args.seconds, 1))
    ensure_packages()
    global SERVER
    if args.server_bin:
        SERVER = os.path.abspath(args.server_bin)
    else:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "nbde-server"], cwd=ROOT,
                       check=True)
    mul = floors.multiplication()
    p521 = next(m for m in mul if m["curve"] == "P-521")
    floor_us = p521["awslc_us"]

    procs = Procs()
    work = tempfile.mkdtemp()
    rows = []
    notes = []
    try:
        keys = os.path.join(work, "keys")
        os.makedirs(keys)
        subprocess.run(["/usr/libexec/tangd-keygen", keys], check=True)
        kid = next(n[:-4] for n in os.listdir(keys) if n.endswith(".jwk") and
                   json.load(open(os.path.join(keys, n))).get("alg") == "ECMR")
        gen = subprocess.run(["jose", "jwk", "gen", "-i", '{"alg":"ECMR","crv":"P-521"}'],
                             capture_output=True, check=True).stdout
        args.body = subprocess.run(["jose", "jwk", "pub", "-i-"], input=gen, capture_output=True,
                                   check=True).stdout.decode().strip()
        nodelay = socat_sets_nodelay(keys)
        notes.append(f"socat `nodelay` and TCP_NODELAY on the accepted socket (strace, "
                     f"getsockopt): {nodelay}")

        port = free_port()
        socat = procs.start(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
                             f"EXEC:/usr/libexec/tangd {keys}"], stderr=subprocess.DEVNULL)
        wait_port(port, socat)
        measure("tangd, socat nodelay", port, f"/rec/{kid}", args.body, [socat.pid], args,
                floor_us, rows)
        procs.stop(socat)

        port = free_port()
        unit = procs.start(["systemd-socket-activate", "--inetd", "-a", "-l", f"127.0.0.1:{port}",
                            "/usr/libexec/tangd", keys], stderr=subprocess.DEVNULL)
        wait_port(port, unit)
        measure("tangd, socket unit (no nodelay)", port, f"/rec/{kid}", args.body, [unit.pid],
                args, floor_us, rows)
        procs.stop(unit)

        data = os.path.join(work, "sqlite")
        token = init_store(["--data", data])
        server, port = start_server(procs, ["--data", data, "--tang-dir", keys])
        measure("nbde-server --tang-dir", port, f"/rec/{kid}", args.body, [server.pid], args,
                floor_us, rows)
        admin = Admin(port, token)
        admin.post("/orgs", {"name": "bench"})
        device = admin.post("/orgs/bench/devices", {"name": "sqlite", "curve": "P-521"})
        measure("nbde-server per-device, SQLite", port, device_path(device), args.body,
                [server.pid], args, floor_us, rows)
        http = http_alone(port, f"/o/bench/d/{device['name']}/adv", 16, args.seconds, server.pid)
        procs.stop(server)
        if (os.cpu_count() or 1) >= 2:
            # The same store with the server on one core and wrk on the other: what a
            # recovery costs the server itself, without wrk's threads in its run queue.
            server, port = start_server(procs, ["--data", data, "--tang-dir", keys], cpus="0")
            measure("nbde-server per-device, SQLite, server on CPU 0, wrk on CPU 1", port,
                    device_path(device), args.body, [server.pid], args, floor_us, rows,
                    wrk_cpus="1")
            procs.stop(server)

        if has_postgres():
            pg, url = start_pg(procs, work)
            # The replicas share one key-encryption key, beside the work directory's store.
            kek = ["--kek-file", os.path.join(work, "pg.kek")]
            token = init_store(["--database", url] + kek)
            one, port1 = start_server(procs, ["--database", url] + kek)
            admin = Admin(port1, token)
            admin.post("/orgs", {"name": "bench"})
            device = admin.post("/orgs/bench/devices", {"name": "pg", "curve": "P-521"})
            measure("nbde-server per-device, PostgreSQL", port1, device_path(device), args.body,
                    [one.pid], args, floor_us, rows)
            two, port2 = start_server(procs, ["--database", url] + kek)
            proxy, port = start_haproxy(procs, work, [port1, port2])
            measure("nbde-server per-device, PostgreSQL, 2 replicas + haproxy", port,
                    device_path(device), args.body, [one.pid, two.pid], args, floor_us, rows)
            for p in (proxy, two, one, pg):
                procs.stop(p)
        else:
            notes.append("PostgreSQL rows not run: this nbde-server has no --database yet")

        durable = floors.durable_write(work)
        result = None if args.skip_storm else storm(procs, args, work, floor_us)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    report = render(args, rows, mul, floor_us, result, durable, http, notes)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report_header() + report)


def render(args, rows, mul, floor_us, s, durable, http, notes):
    out = [f"wrk, new connection per request, {args.seconds} s per cell, P-521 exchange keys, "
           "loopback; CPU is the nbde-server processes' utime+stime over the cell per answer (not "
           "PostgreSQL's or haproxy's; not for tangd, whose per-connection processes are "
           "counted only when reaped). wrk runs on the same 2 cores, except in the pinned row.\n", table(rows, floor_us), ""]
    out += ["Floor: one variable-base multiplication, median µs (`cargo bench -p nbde-server "
            "--bench mul`):\n", "| curve | RustCrypto | AWS-LC (server) | floor on 2 cores |",
            "|---|---|---|---|"]
    for m in mul:
        out.append(f"| {m['curve']} | {m['rustcrypto_us']:.1f} | {m['awslc_us']:.1f} | "
                   f"{2e6 / m['awslc_us']:.0f} rec/s |")
    out.append("")
    out += [f"Durable write on the store's filesystem, CPU of the writing process: a 4 KiB "
            f"pwrite + fsync {durable['fsync_us']:.1f} µs; a one-row SQLite commit (WAL, "
            f"synchronous=FULL) {durable['commit_us']:.1f} µs. A recovery alone (1 connection) "
            f"pays a whole commit: its floor is one multiplication plus one commit, "
            f"{floor_us + durable['commit_us']:.0f} µs "
            f"({(floor_us + durable['commit_us']) / floor_us:.2f}× one multiplication) before "
            f"any HTTP or TCP.", ""]
    if s is not None:
        out += storm_lines(s)
    tangd = {r["conns"]: r["rate"] for r in rows if r["name"] == "tangd, socat nodelay"}
    ours = [r for r in rows if r["name"] == "nbde-server per-device, SQLite"]
    for r in ours:
        out.append(f"- per-device SQLite at {r['conns']}: {r['rate'] / tangd[r['conns']]:.2f}× "
                   f"tangd+nodelay; CPU/rec {r['ratio']:.2f}× one multiplication")
    parts = next((r for r in ours if r["conns"] == 16), None)
    if parts:
        rest = parts["cpu_us"] - floor_us - parts["writer_us"] - http["cpu_us"]
        out.append(f"- where a recovery's CPU goes, per-device SQLite at 16 connections "
                   f"({parts['cpu_us']:.0f} µs): one multiplication {floor_us:.0f}; the history "
                   f"writer thread {parts['writer_us']:.1f}; HTTP and loopback TCP alone "
                   f"{http['cpu_us']:.1f} (`GET /adv` on a new connection each, "
                   f"{http['rate']:.0f} a second, {http['non2xx']} not 200); the rest, with the "
                   f"multiplication's own slowdown in the server, {rest:.0f}")
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def storm_lines(s):
    ok = "yes" if s["ok"] == s["allowed"] == s["rows"] and s["other"] == 0 else "NO"
    return [f"Storm: {s['devices']} devices created through the admin API in "
            f"{s['created_s']:.1f} s ({s['created_s'] * 1000 / s['devices']:.1f} ms each); "
            f"one recovery each at {s['conns']} connections: {s['ok']} answered 200, "
            f"{s['other']} other, {s['rate']:.0f} rec/s, {s['cpu_us']:.0f} µs CPU/rec "
            f"({s['cpu_us'] / s['floor_us']:.2f}× one multiplication); history rows: {s['rows']}, "
            f"of which allowed {s['allowed']}; 200s = allowed rows = rows: {ok}. "
            f"rustc running: {s['busy']}.", ""]


def report_header():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    return (f"# Recovery storm\n\n{datetime.date.today()}, {cpu}, {os.cpu_count()} cores, "
            f"Linux {platform.release()}.\n\nCommand: `{' '.join(['bench/storm.py'] + sys.argv[1:])}`"
            "\n\n")


if __name__ == "__main__":
    main()
