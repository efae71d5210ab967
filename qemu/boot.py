#!/usr/bin/env python3
"""Boots a kernel and initramfs under QEMU (TCG) with the serial console on a pipe, and
watches it: timestamps the lines that matter, types on the console when asked, and ends
when every expected marker was seen, or fails when time runs out.

Guest networking is QEMU user mode with restrict=on: the guest reaches nothing but the
forwarded addresses (10.0.2.100, .101, … on port 80), each piped by socat to one host
loopback port.
"""
import argparse
import os
import re
import subprocess
import sys
import threading
import time

GUEST_SERVER_BASE = "10.0.2.10"


def guest_url(index=0, scheme="http"):
    """The URL a guest uses for forwarded server number `index` (port 80 for http, 443
    for https: see Boot's forwards)."""
    return f"{scheme}://{GUEST_SERVER_BASE}{index}"


class Boot:
    """`forwards`: host loopback ports, the i-th reached by the guest at 10.0.2.10i:80, or
    (guest port, host port) pairs; None: the guest has no network device at all.
    `qemu_args`: more of QEMU's own (`-rtc base=…`)."""

    def __init__(self, kernel, initrd, disk, append, forwards, log_path, memory=1024, cpus=1,
                 qemu_args=()):
        netdev = "user,id=n0,restrict=on"
        for i, forward in enumerate(forwards or []):
            guest_port, port = forward if isinstance(forward, tuple) else (80, forward)
            netdev += (f",guestfwd=tcp:{GUEST_SERVER_BASE}{i}:{guest_port}"
                       f"-cmd:socat STDIO TCP:127.0.0.1:{port}")
        self.cmd = [
            "qemu-system-x86_64", "-m", str(memory), "-smp", str(cpus), "-cpu", "max",
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd,
            "-append", f"console=ttyS0 panic=-1 {append}",
            "-drive", f"file={disk},if=virtio,format=raw",
            *(["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]
              if forwards is not None else ["-nic", "none"]),
            *qemu_args,
        ]
        self.log_path = log_path
        self.lines = []
        self.start = None
        self.proc = None
        self.lock = threading.Condition()
        self.done = False

    def __enter__(self):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()  # our own QEMU, by its handle
        self.proc.wait()
        self.reader.join(timeout=5)

    def elapsed(self):
        return time.monotonic() - self.start

    def _read(self):
        # Beside the raw log, each line with the host's seconds since QEMU started: where a
        # boot spends its time, including lines the kernel does not stamp (systemd, hooks).
        with open(self.log_path, "wb") as log, open(self.log_path + ".timed", "w") as timed:
            buf = b""
            while True:
                chunk = self.proc.stdout.read1(4096)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                buf += chunk
                # A prompt has no newline: hand partial lines over too.
                parts = re.split(rb"\r?\n", buf)
                buf = parts.pop()
                with self.lock:
                    for p in parts:
                        line = p.decode("utf-8", "replace")
                        self.lines.append((self.elapsed(), line))
                        timed.write(f"{self.elapsed():8.2f} | {line}\n")
                    if buf:
                        self.partial = (self.elapsed(), buf.decode("utf-8", "replace"))
                    self.lock.notify_all()
        with self.lock:
            if buf:
                self.lines.append((self.elapsed(), buf.decode("utf-8", "replace")))
            self.done = True
            self.lock.notify_all()

    def wait_for(self, pattern, deadline, after=0):
        """Index and time of the first line at or after `after` matching `pattern`
        (partial lines count), or None at the deadline or when QEMU ended."""
        regex = re.compile(pattern)
        with self.lock:
            while True:
                for i in range(after, len(self.lines)):
                    if regex.search(self.lines[i][1]):
                        return i + 1, self.lines[i][0]
                partial = getattr(self, "partial", None)
                if partial and regex.search(partial[1]):
                    self.partial = None
                    return len(self.lines), partial[0]
                if self.done or time.monotonic() >= deadline:
                    return None
                self.lock.wait(timeout=min(1.0, max(0.01, deadline - time.monotonic())))

    def last_before(self, pattern, index):
        """Time of the last line before line `index` that matches `pattern`."""
        regex = re.compile(pattern)
        with self.lock:
            for at, line in reversed(self.lines[:index]):
                if regex.search(line):
                    return at
        return None

    def type(self, text):
        self.proc.stdin.write(text.encode() + b"\r")
        self.proc.stdin.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--disk", required=True)
    ap.add_argument("--append", default="")
    ap.add_argument("--forward", type=int, action="append", default=[])
    ap.add_argument("--log", required=True)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--expect", action="append", default=[],
                    help="LABEL=REGEX, in order; LABEL is printed on the timeline")
    args = ap.parse_args()
    boot = Boot(args.kernel, args.initrd, args.disk, args.append, args.forward, args.log)
    deadline = time.monotonic() + args.timeout
    with boot:
        after = 0
        for item in args.expect:
            label, _, pattern = item.partition("=")
            found = boot.wait_for(pattern, deadline, after)
            if not found:
                print(f"FAIL: no '{label}' ({pattern}) within {args.timeout:.0f} s; log: {args.log}")
                return 1
            after, at = found
            print(f"{at:8.1f} s  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
