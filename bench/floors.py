"""The floors bench/storm.py reports a recovery's CPU against: one variable-base
multiplication per curve (the server's own bench), and one durable write on the store's
filesystem."""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def multiplication():
    out = subprocess.run(["cargo", "bench", "-q", "-p", "nbde-server", "--bench", "mul", "--",
                          "--json", "--rounds", "2000"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def durable_write(work, n=2000):
    """CPU per durable write on the store's filesystem, the part of a recovery no batching
    shares at 1 connection: a 4 KiB pwrite + fsync, and a one-row SQLite commit in WAL mode
    with synchronous=FULL (the server's settings; Python's sqlite3, Python's loop included)."""
    import resource
    import sqlite3

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    path = os.path.join(work, "durable-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    page = b"h" * 4096
    os.pwrite(fd, page * 64, 0)
    os.fsync(fd)
    start = cpu()
    for i in range(n):
        os.pwrite(fd, page, (i % 64) * 4096)
        os.fsync(fd)
    fsync_us = (cpu() - start) * 1e6 / n
    os.close(fd)
    db = sqlite3.connect(os.path.join(work, "durable-probe.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE history (id INTEGER PRIMARY KEY, at INTEGER, org TEXT, "
               "device TEXT, peer TEXT, kid TEXT, decision TEXT, reason TEXT)")
    db.execute("CREATE INDEX history_device ON history(org, device, id)")
    start = cpu()
    for i in range(n):
        db.execute("INSERT INTO history (at, org, device, peer, kid, decision, reason) "
                   "VALUES (?, 'o', 'd', '127.0.0.1', 'k', 'allowed', 'active')", (i,))
    commit_us = (cpu() - start) * 1e6 / n
    db.close()
    return dict(fsync_us=fsync_us, commit_us=commit_us)
