#!/usr/bin/env python3
"""Boots a kernel and initramfs under QEMU (TCG) with the serial console on a pipe, and
watches it: timestamps the lines that matter, types on the console when asked, and ends
when every expected marker was seen, or fails when time runs out.

Guest networking is QEMU user mode with restrict=on: the guest reaches nothing but the
forwarded addresses (10.0.2.100, .101, … on port 80), each piped by socat to one host
loopback port.
"""
import argparse
import codecs
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


# The kernel writes its messages straight to the serial port, between any two characters of
# what a program is writing to the console: "Passphrase for [    3.392686] nbde-unlock: …\r\n
# /dev/vda (or wait for the network): " is one prompt with one kernel message inside it.
KERNEL_STAMP = re.compile(r"\[\s*\d+\.\d+\] ")


def console_lines(text):
    """The complete lines in `text`, each kernel message a line of its own and a program's
    line whole again around any kernel message printed inside it, and the text left over
    (a line not ended yet, with any kernel messages inside it still in place)."""
    lines = []
    held = ""  # the start of a program's line that a kernel message interrupted
    at = 0
    while True:
        end = text.find("\n", at)
        stamp = KERNEL_STAMP.search(text, at)
        if stamp and (end < 0 or stamp.start() < end):
            message_end = text.find("\n", stamp.start())
            if message_end < 0:
                break  # that kernel message is not whole yet
            held += text[at:stamp.start()]
            lines.append(text[stamp.start():message_end].rstrip("\r"))
            at = message_end + 1
        elif end >= 0:
            lines.append((held + text[at:end]).rstrip("\r"))
            held = ""
            at = end + 1
        else:
            break
    return lines, held + text[at:]


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
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        with open(self.log_path, "wb") as log, open(self.log_path + ".timed", "w") as timed:
            rest = ""
            while True:
                chunk = self.proc.stdout.read1(4096)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                lines, rest = console_lines(rest + decoder.decode(chunk))
                with self.lock:
                    for line in lines:
                        self.lines.append((self.elapsed(), line))
                        timed.write(f"{self.elapsed():8.2f} | {line}\n")
                    # A prompt has no newline: hand partial lines over too.
                    if rest:
                        self.partial = (self.elapsed(), rest)
                    self.lock.notify_all()
        with self.lock:
            if rest:
                self.lines.append((self.elapsed(), rest))
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
