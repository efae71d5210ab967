#!/usr/bin/env python3
"""Boot scenarios: real kernels, real initramfs images, a LUKS2 root, and nbde-server (or
stock tangd) on host loopback. Each scenario asserts markers on the serial console and the
server's decision history, and prints one row of a table.

    qemu/scenarios.py [--generator minimal,dracut,initramfs-tools] [--scenario NAME ...]

Builds what it needs (release binaries, the Debian kernel, chroots for the generators,
cached in $NBDE_CACHE) first. Run as root on Debian 12.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import boot  # noqa: E402
import chroots  # noqa: E402

# The release binaries, and our Debian packages by name; build() sets them.
SERVER = UNLOCK = TPM2 = None
DEBS = {}
PASSPHRASE = "typed at the console"


def lib(call):
    """Runs a qemu/lib.sh function in bash; returns its stdout."""
    out = subprocess.run(["bash", "-c", f". '{HERE}/lib.sh'; {call}"], check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


def lib_path(call):
    """Runs a qemu/lib.sh function that prints one path; fails if it printed anything else
    (another tool's output leaking onto its stdout) or a path that does not exist."""
    out = lib(call)
    if "\n" in out or not os.path.exists(out):
        raise SystemExit(f"{call} printed {out!r}, not one existing path")
    return out


def build():
    """Builds the release binaries and our Debian packages (packaging/build.sh), and points
    SERVER, UNLOCK, TPM2 and DEBS where they are ($CARGO_TARGET_DIR, a cargo config's
    build.target-dir, or target/)."""
    global SERVER, UNLOCK, TPM2, DEBS
    out = subprocess.run([os.path.join(REPO, "packaging", "build.sh")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    DEBS = {os.path.basename(path).split("_")[0]: path for path in out.split()}
    release = lib_path("qemu_release_dir")
    SERVER = os.path.join(release, "nbde-server")
    UNLOCK = os.path.join(lib_path("qemu_release_dir release-small"), "nbde-unlock")
    TPM2 = os.path.join(release, "nbde-tpm2")


def kernel():
    """The Debian kernel directory, filled into $NBDE_CACHE on first use."""
    return lib_path("qemu_kernel")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Secrets each scenario's work directory must not hold in any log (serial consoles, the
# server's debug log): by work directory, (what it is, its value). The typed passphrase is
# one of every scenario's.
SECRETS = {}


def secret(work, what, value):
    SECRETS.setdefault(work, []).append((what, value))


# Typed at the guest's console: on dracut's serial console systemd's own password agent
# sometimes lets the tty echo type-ahead before it turns echo off (seen in
# dracut-token/refused-typed), so these are not searched in dracut guests' serial logs.
TYPED = {"the typed passphrase", "the recovery key"}


def scan_logs(work, generator):
    """Fails if a log under `work` holds one of its secrets (named, never shown)."""
    secrets = [("the typed passphrase", PASSPHRASE), *SECRETS.pop(work, [])]
    for top, _, files in os.walk(work):
        for name in files:
            if not name.endswith((".log", ".timed")):
                continue
            serial = ".serial.log" in name and generator.startswith("dracut")
            with open(os.path.join(top, name), "rb") as f:
                text = f.read()
            for what, value in secrets:
                if serial and what in TYPED:
                    continue
                assert value.encode() not in text, f"{what} is in {os.path.join(top, name)}"


class Server:
    """nbde-server with its own store; stop() and start() keep the port; its log, at
    debug level, in `server.log` in the work directory (scanned for secrets)."""

    def __init__(self, work, port=0, tls=None):
        """`tls`: a Tls whose certificate the server presents (then the guest reaches it
        at https://10.0.2.100, port 443)."""
        self.tls = tls
        self.data = os.path.join(work, "server-data")
        out = subprocess.run([SERVER, "init", "--data", self.data], check=True,
                             capture_output=True, text=True)
        self.env = dict(os.environ, NBDE_TOKEN=out.stdout.strip().splitlines()[-1])
        secret(work, "the server's owner token", self.env["NBDE_TOKEN"])
        self.log = os.path.join(work, "server.log")
        self.port = port or free_port()
        self.proc = None

    def start(self, *extra):
        if self.tls:
            extra = ("--tls-cert", self.tls.cert, "--tls-key", self.tls.key, *extra)
        self.proc = subprocess.Popen(
            [SERVER, "serve", "--data", self.data, "--listen", f"127.0.0.1:{self.port}",
             "--public-url", boot.guest_url(0, "https" if self.tls else "http"), *extra],
            stderr=subprocess.PIPE, text=True, env=dict(self.env, NBDE_LOG="debug"))
        log = open(self.log, "a")
        while "listening on" not in (line := self.proc.stderr.readline()):
            assert line, "nbde-server ended before it listened"
            log.write(line)
        log.write(line)
        log.flush()

        def drain(stream, log):
            with log:
                for line in stream:
                    log.write(line)
                    log.flush()

        threading.Thread(target=drain, args=(self.proc.stderr, log), daemon=True).start()
        scheme = "https" if self.tls else "http"
        self.env["NBDE_SERVER"] = f"{scheme}://127.0.0.1:{self.port}"
        if self.tls:
            self.env["NBDE_CACERT"] = self.tls.ca
        return self

    def forward(self):
        """What Boot forwards to this server: the guest's port 80, or 443 for HTTPS."""
        return (443, self.port) if self.tls else self.port

    def stop(self):
        if self.proc:
            self.proc.terminate()  # our own child
            self.proc.wait()
            self.proc = None

    def admin(self, *args):
        out = subprocess.run([SERVER, *args], check=True, capture_output=True, text=True, env=self.env)
        return out.stdout

    def device(self, org, name):
        self.admin("org", "add", org) if org not in self.admin("org", "list") else None
        return json.loads(self.admin("device", "add", "--org", org, name, "--json"))

    def history(self, spec):
        return json.loads(self.admin("history", "--device", spec, "--json"))["history"]

    def adv(self, org, name, path):
        ca = ["--cacert", self.tls.ca] if self.tls else []
        subprocess.run(["curl", "-sf", *ca, "-o", path, f"{self.env['NBDE_SERVER']}/o/{org}/d/{name}/adv"],
                       check=True)


class Tls:
    """A private CA and a server certificate for 10.0.2.100 (the guest's view) and
    127.0.0.1 (the host's), valid from an hour ago for 30 days: made by openssl."""

    def __init__(self, work):
        self.ca, ca_key = os.path.join(work, "ca.pem"), os.path.join(work, "ca.key")
        self.cert, self.key = os.path.join(work, "server.pem"), os.path.join(work, "server.key")
        csr, ext = os.path.join(work, "server.csr"), os.path.join(work, "server.ext")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        quiet = dict(check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", self.ca, "-days", "30",
                        "-subj", "/CN=nbde scenario CA", "-addext", "basicConstraints=critical,CA:TRUE"], **quiet)
        subprocess.run(["openssl", "req", *ec, "-keyout", self.key, "-out", csr, "-subj", "/CN=10.0.2.100"],
                       **quiet)
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:10.0.2.100,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key,
                        "-CAcreateserial", "-out", self.cert, "-days", "30", "-extfile", ext], **quiet)

    def pem(self):
        return open(self.ca).read()


class Tangd:
    """Stock tangd behind socat, as Debian's socket unit runs it."""

    def __init__(self, keys):
        self.keys = keys
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
             f"EXEC:/usr/libexec/tangd {keys}"], stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Blackhole:
    """Accepts connections and never answers: a server that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)


# Kernel argument for a guest given Swtpm.for_guest()'s device (see there).
TPM_APPEND = "tpm_tis.force=1"


class Swtpm:
    """The guest's TPM: Debian's swtpm with its state in the scenario's directory. The
    host seals to it over TCP first (`for_host`, as stock tools reach a TPM), then QEMU
    gives it to the guest as a TIS device (`for_guest`); the seeds stay in the state."""

    def __init__(self, work):
        self.state = os.path.join(work, "tpm-state")
        os.makedirs(self.state, exist_ok=True)
        self.proc = None
        self.socket = os.path.join(work, "swtpm.sock")

    def for_host(self):
        while True:
            port = free_port()
            try:
                # The control channel must be on port + 1 (the swtpm TCTI expects it).
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            break
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"])
        wait_port(port)
        return {"TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}"}

    def for_guest(self):
        """QEMU's arguments for a TPM TIS device backed by this TPM."""
        self.stop()
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--ctrl", f"type=unixio,path={self.socket}"], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline:
                raise AssertionError("swtpm made no control socket")
            time.sleep(0.02)
        # With -kernel and -initrd, QEMU 7.2 keeps 160 KiB at the top of RAM for SeaBIOS's
        # tables, but with a TPM they take more (its event log), and the initrd overwrites
        # the ACPI tables: the guest probes the TIS at its fixed address (TPM_APPEND), and
        # a NIC gets its path name (enp0s3), not the slot name ACPI would give (ens3).
        return ["-chardev", f"socket,id=chrtpm,path={self.socket}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on port {port}")


class Generator:
    name = ""
    append = ""
    prompt = ""

    def initrd(self):
        raise NotImplementedError


class Minimal(Generator):
    name = "minimal"
    # "Passphrase for /dev/vda (or wait for the network): ", or without the network part
    # for a sovereign volume.
    prompt = r"Passphrase for /dev/\S+"

    def __init__(self, kdir, build, tpm2=None):
        self.kdir = kdir
        self.build = build
        self.tpm2 = tpm2
        self.path = None

    def initrd(self):
        with chroots.IMAGE_BUILD:
            if not self.path:
                path = os.path.join(self.build, "minimal-initrd.gz")
                lib(f"qemu_minimal_initrd '{path}' '{self.kdir}' '{self.tpm2 or ''}'")
                self.path = path
        return self.path


def bind(image, config, work, label, env=None):
    keyfile = os.path.join(work, f"{label}.pass")
    with open(keyfile, "w") as f:
        f.write(PASSPHRASE)
    lib(f"qemu_root_image '{image}' '{keyfile}'")
    pin, cfg = config
    # The tpm2 pin's program is built with the release profile, not beside nbde-unlock.
    env = dict(os.environ, NBDE_TPM2=TPM2, **(env or {}))
    subprocess.run([UNLOCK, "bind", "-d", image, "-k", keyfile, pin, json.dumps(cfg)], check=True,
                   capture_output=True, env=env)


def device_config(server, work, name):
    d = server.device("ci", name)
    adv = os.path.join(work, f"{name}.adv")
    server.adv("ci", name, adv)
    return {"url": d["url"], "thp": d["thp"], "adv": adv}


def run_boot(gen, kdir, work, image, forwards, label, expects, actions=None, timeout=300,
             qemu_args=(), append=""):
    """Boots; `expects` are (label, regex) in order. When a label is in `actions`, its
    (regex, act) waits for the regex and then calls act(boot) — typing on the console,
    approving a request. Returns {label: seconds} or raises with the log's tail."""
    log = os.path.join(work, f"{label}.serial.log")
    b = boot.Boot(os.path.join(kdir, "vmlinux"), gen.initrd(), image, f"{gen.append} {append}",
                  forwards, log, qemu_args=qemu_args)
    deadline = time.monotonic() + timeout
    seen = {}
    with b:
        after = 0
        for name, pattern in expects:
            if actions and name in actions:
                # A prompt may have been printed before an earlier marker (the kernel log
                # interleaves with it), so actions look from the start of the log.
                found = b.wait_for(actions[name][0], deadline, 0)
                if found:
                    actions[name][1](b)
                    found = (max(found[0], after), found[1])
            else:
                found = b.wait_for(pattern, deadline, after)
            if not found:
                tail = open(log, errors="replace").read()[-3000:]
                raise AssertionError(f"{label}: no '{name}' within {timeout} s\n{tail}")
            after, seen[name] = found
    return seen


# ---- scenarios: each returns a short result text and raises on failure ----

def allowed(gen, kdir, work):
    server = Server(work).start()
    try:
        image = os.path.join(work, "allowed.img")
        bind(image, ("tang", device_config(server, work, "allowed")), work, "allowed")
        # dracut's agent starts its round when the device and the network are there,
        # before systemd-cryptsetup asks, and hands that key over when asked.
        early = ([("early", r"asking 1 binding\(s\) before the password request")]
                 if gen.name == "dracut" else [])
        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-allowed",
                     [("nbde", r"nbde-unlock"), *early, ("root", "NBDE-ROOT-MOUNTED")])
        rows = server.history("ci/allowed")
        assert rows and rows[0]["decision"] == "allowed", rows
        # One request per boot: the early round and the password request never both ask.
        assert len(rows) == 1, rows
        return f"root at {t['root']:.1f} s, history: allowed"
    finally:
        server.stop()


def server_late(gen, kdir, work):
    server = Server(work).start()
    timers = []
    try:
        image = os.path.join(work, "late.img")
        bind(image, ("tang", device_config(server, work, "late")), work, "late")
        server.stop()

        def start_later(b):
            # Down at boot; up 20 s after the boot began, once the guest has seen it down.
            timer = threading.Timer(max(0.0, 20 - b.elapsed()), server.start)
            timer.start()
            timers.append(timer)

        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-late",
                     [("unreachable", ""), ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"unreachable": ("server unreachable", start_later)})
        assert server.history("ci/late")[0]["decision"] == "allowed"
        return f"unreachable at {t['unreachable']:.1f} s, root at {t['root']:.1f} s after a retry"
    finally:
        for timer in timers:
            timer.join()
        server.stop()


def refused_typed(gen, kdir, work):
    server = Server(work).start()
    try:
        image = os.path.join(work, "refused.img")
        bind(image, ("tang", device_config(server, work, "refused")), work, "refused")
        server.admin("device", "disable", "ci/refused")
        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-refused",
                     [("refused", r"refused by policy \(disabled\)"), ("typed", ""),
                      ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"typed": (gen.prompt, lambda b: b.type(PASSPHRASE))})
        assert server.history("ci/refused")[0]["decision"] == "disabled"
        return f"refused at {t['refused']:.1f} s, typed passphrase, root at {t['root']:.1f} s"
    finally:
        server.stop()


def no_network(gen, kdir, work):
    """A guest with no network device at all: the passphrase prompt comes at once (not after
    the generator's wait for a network that never appears), typing it mounts the root."""
    server = Server(work).start()
    try:
        image = os.path.join(work, "offline.img")
        bind(image, ("tang", device_config(server, work, "offline")), work, "offline")
        t = run_boot(gen, kdir, work, image, None, f"{gen.name}-no-network",
                     [("typed", ""), ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"typed": (gen.prompt, lambda b: b.type(PASSPHRASE))})
        # initramfs-tools waited 180 s for the interface named in ip= before its prompt.
        assert t["typed"] < 60, f"prompt only at {t['typed']:.1f} s"
        assert server.history("ci/offline") == [], "a request reached the server"
        return f"no network device: prompt at {t['typed']:.1f} s, typed, root at {t['root']:.1f} s"
    finally:
        server.stop()


def approval(gen, kdir, work):
    server = Server(work).start()
    try:
        image = os.path.join(work, "approval.img")
        bind(image, ("tang", device_config(server, work, "gated")), work, "approval")
        server.admin("device", "tag", "ci/gated", "tier=db")
        server.admin("group", "add", "ci", "dbas", "--tag", "tier=db")

        def approve(_boot):
            pending = json.loads(server.admin("requests", "--json"))["requests"]
            assert len(pending) == 1, pending
            server.admin("approve", str(pending[0]["id"]))

        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-approval",
                     [("waiting", ""), ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"waiting": ("waiting for approval at", approve)})
        decisions = [r["decision"] for r in server.history("ci/gated")]
        assert decisions[0] == "allowed" and "pending-approval" in decisions, decisions
        return f"pending at {t['waiting']:.1f} s, approved through the admin CLI, root at {t['root']:.1f} s"
    finally:
        server.stop()


def stock_tangd(gen, kdir, work):
    keys = os.path.join(work, "tang-keys")
    os.makedirs(keys, exist_ok=True)
    subprocess.run(["/usr/libexec/tangd-keygen", keys], check=True)
    tangd = Tangd(keys)
    try:
        adv = os.path.join(work, "tangd.adv")
        subprocess.run(["curl", "-sf", "-o", adv, f"http://127.0.0.1:{tangd.port}/adv"], check=True)
        image = os.path.join(work, "tangd.img")
        bind(image, ("tang", {"url": boot.guest_url(0), "adv": adv}), work, "tangd")
        t = run_boot(gen, kdir, work, image, [tangd.port], f"{gen.name}-tangd",
                     [("root", "NBDE-ROOT-MOUNTED")])
        return f"root at {t['root']:.1f} s through stock tangd"
    finally:
        tangd.stop()


def sss_one_dead(gen, kdir, work):
    server = Server(work).start()
    hole = Blackhole()
    try:
        live = device_config(server, work, "sss")
        dead = dict(live, url=boot.guest_url(1) + "/o/ci/d/sss")
        image = os.path.join(work, "sss.img")
        bind(image, ("sss", {"t": 1, "pins": {"tang": [dead, live]}}), work, "sss")
        waited = []

        def measure(b):
            # From the start of the round that succeeded (the first ask, or the last retry
            # notice) to the key: the hanging server's 10 s timeout must not be in it. A
            # round started before the network was up (dracut's agent starts one as soon
            # as the device is there) includes the wait for the network.
            index = len(b.lines)
            start = b.last_before(r"asking \d+ binding|retry in", index)
            waited.append(b.elapsed() - start)

        t = run_boot(gen, kdir, work, image, [server.port, hole.port], f"{gen.name}-sss",
                     [("key", ""), ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"key": ("key recovered", measure)})
        assert waited and waited[0] < 10, f"waited {waited} s for the dead server"
        return f"key {waited[0]:.1f} s after the round began; the hanging server was not waited for"
    finally:
        server.stop()


def luks1_stock_clevis(gen, kdir, work):
    """A LUKS1 root bound by stock clevis (its luksmeta slot) unlocks through nbde-unlock."""
    server = Server(work).start()
    try:
        image = os.path.join(work, "luks1.img")
        keyfile = os.path.join(work, "luks1.pass")
        with open(keyfile, "w") as f:
            f.write(PASSPHRASE)
        lib(f"qemu_root_image '{image}' '{keyfile}' luks1")
        cfg = device_config(server, work, "luks1")
        subprocess.run(["clevis", "luks", "bind", "-f", "-d", image, "-k", keyfile, "tang",
                        json.dumps(cfg)], check=True, capture_output=True)
        meta = subprocess.run(["luksmeta", "show", "-d", image], check=True, capture_output=True,
                              text=True).stdout
        assert "1   active cb6e8904-81ff-40da-a84a-07ab9ab5715e" in meta, meta
        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-luks1",
                     [("nbde", r"nbde-unlock"), ("root", "NBDE-ROOT-MOUNTED")])
        rows = server.history("ci/luks1")
        assert rows and rows[0]["decision"] == "allowed", rows
        return f"root at {t['root']:.1f} s from a LUKS1 luksmeta binding made by stock clevis"
    finally:
        server.stop()


def mode_json(image):
    out = subprocess.run([UNLOCK, "mode", "-d", image, "--json"], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def sovereign(gen, kdir, work):
    """A sovereign root: the marker stops the network path before any request, the typed
    user key opens it, and the server destroyed the device's keys when told."""
    server = Server(work).start()
    try:
        image = os.path.join(work, "sovereign.img")
        bind(image, ("tang", device_config(server, work, "sovereign")), work, "sovereign")
        keyfile = os.path.join(work, "sovereign.pass")
        # The binding names the guest's address; the host reaches the same server here.
        subprocess.run([UNLOCK, "mode", "-d", image, "sovereign", "-k", keyfile,
                        "--server", server.env["NBDE_SERVER"]],
                       check=True, capture_output=True, env=server.env)
        shown = mode_json(image)
        assert shown["mode"] == "sovereign" and shown["marker"]["servers"][0]["told"], shown
        device = json.loads(server.admin("device", "show", "ci/sovereign", "--json"))
        assert device["state"] == "retired" and device["mode"]["mode"] == "sovereign", device
        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-sovereign",
                     [("typed", ""), ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"typed": (gen.prompt, lambda b: b.type(PASSPHRASE))})
        rows = server.history("ci/sovereign")
        assert rows == [], rows
        return (f"prompt at {t['typed']:.1f} s, typed user key, root at {t['root']:.1f} s; "
                f"server history for it: 0 requests")
    finally:
        server.stop()


def managed_user(gen, kdir, work):
    """managed -> managed+user with a generated recovery key (Argon2id, systemd's form): the
    root boots through the network, and, the server refusing, with the typed recovery key."""
    server = Server(work).start()
    try:
        image = os.path.join(work, "mu.img")
        guest = device_config(server, work, "mu")
        # Bound first to the address the host reaches, so the host can prove the network
        # path while changing modes; then pointed at the guest's address with `luks edit`.
        host = dict(guest, url=guest["url"].replace(boot.guest_url(0), server.env["NBDE_SERVER"]))
        bind(image, ("tang", host), work, "mu")
        run = lambda *a: subprocess.run([UNLOCK, *a], check=True, capture_output=True, text=True)
        run("mode", "-d", image, "managed", "--force")
        assert mode_json(image)["mode"] == "managed"
        key = run("mode", "-d", image, "managed+user", "--recovery-key", "--iter-time", "100",
                  "--pbkdf-memory", "32768").stdout.strip()
        secret(work, "the recovery key", key)
        run("luks", "edit", "-d", image, "-s", "1", "-c", json.dumps(guest))
        shown = mode_json(image)
        kinds = sorted(k["kind"] + ":" + str(k.get("token")) for k in shown["keyslots"])
        assert shown["mode"] == "managed+user" and kinds == ["network:None", "user:systemd-recovery"], shown
        t1 = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-mu-network",
                      [("nbde", r"nbde-unlock"), ("root", "NBDE-ROOT-MOUNTED")])
        assert server.history("ci/mu")[0]["decision"] == "allowed"
        server.admin("device", "disable", "ci/mu")
        t2 = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-mu-typed",
                      [("refused", r"refused by policy \(disabled\)"), ("typed", ""),
                       ("root", "NBDE-ROOT-MOUNTED")],
                      actions={"typed": (gen.prompt, lambda b: b.type(key))})
        return (f"network: root at {t1['root']:.1f} s; refused, typed recovery key: root at "
                f"{t2['root']:.1f} s")
    finally:
        server.stop()

def approval_browser(gen, kdir, work):
    server = Server(work)
    origin = f"http://localhost:{server.port}"
    server.start("--console-origin", origin)
    try:
        image = os.path.join(work, "approval-browser.img")
        bind(image, ("tang", device_config(server, work, "gated")), work, "approval-browser")
        server.admin("device", "tag", "ci/gated", "tier=db")
        server.admin("group", "add", "ci", "dbas", "--tag", "tier=db")

        def approve_in_browser(_boot):
            # Debian's python3: python3-selenium lives there, whatever runs this script.
            subprocess.run(["/usr/bin/python3", os.path.join(REPO, "server/tests/console/approve.py"),
                            "--origin", origin, "--device", "ci/gated"],
                           check=True, stdout=subprocess.DEVNULL, env=server.env)

        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-approval-browser",
                     [("waiting", ""), ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"waiting": ("waiting for approval at", approve_in_browser)})
        rows = server.history("ci/gated")
        assert rows[0]["decision"] == "allowed" and "approved by" in rows[0]["reason"], rows
        return (f"pending at {t['waiting']:.1f} s, approved by a click in chromium, root at "
                f"{t['root']:.1f} s ({rows[0]['reason']})")
    finally:
        server.stop()


def https_server(gen, work, name):
    """nbde-server over HTTPS and a root bound to it with the CA pinned in the binding as
    PEM: the token itself carries the CA into any image (and the token plugin)."""
    tls = Tls(work)
    server = Server(work, tls=tls).start()
    config = device_config(server, work, name)
    assert config["url"].startswith("https://"), config
    config["cacert"] = tls.pem()
    image = os.path.join(work, f"{name}.img")
    bind(image, ("tang", config), work, name)
    return server, image


def https(gen, kdir, work):
    server, image = https_server(gen, work, "tls")
    try:
        t = run_boot(gen, kdir, work, image, [server.forward()], f"{gen.name}-https",
                     [("nbde", r"nbde-unlock"), ("root", "NBDE-ROOT-MOUNTED")])
        rows = server.history("ci/tls")
        assert rows and rows[0]["decision"] == "allowed", rows
        return f"root at {t['root']:.1f} s over https (CA pinned in the token), history: allowed"
    finally:
        server.stop()


def https_wrong_clock(gen, kdir, work):
    """The guest's RTC says 2015, years before the certificate: the unlock fails with a
    message that names the clock, the typed passphrase still works, and no request reaches
    the server (nothing falls back to plain http). systemd moves a clock that early up to
    its own build date, still months before the certificate: the message shows either."""
    server, image = https_server(gen, work, "clock")
    try:
        t = run_boot(gen, kdir, work, image, [server.forward()], f"{gen.name}-clock",
                     [("clock", r"this machine's clock says \d{4}-.*check the clock \(RTC\)"), ("typed", ""),
                      ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"typed": (gen.prompt, lambda b: b.type(PASSPHRASE))},
                     qemu_args=("-rtc", "base=2015-01-01T00:00:00"))
        rows = server.history("ci/clock")
        assert not rows, rows
        return (f"clock named at {t['clock']:.1f} s, typed passphrase, root at {t['root']:.1f} s; "
                "no request reached the server")
    finally:
        server.stop()


def tpm2_sss(gen, kdir, work):
    """A root bound to sss(tang, tpm2) with t=2: this TPM and this network. It opens
    through both; with the server refusing, the TPM's share alone is not enough and the
    typed passphrase opens it."""
    server = Server(work).start()
    tpm = Swtpm(work)
    try:
        image = os.path.join(work, "tpm2.img")
        config = {"t": 2, "pins": {"tang": [device_config(server, work, "tpm2")], "tpm2": {}}}
        bind(image, ("sss", config), work, "tpm2", env=tpm.for_host())
        # initramfs-tools names its NIC; without ACPI it is enp0s3 (see Swtpm.for_guest).
        append = TPM_APPEND + (" ip=:::::enp0s3:dhcp" if gen.name == "initramfs-tools" else "")
        qemu_tpm = tpm.for_guest()
        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-tpm2",
                     [("root", "NBDE-ROOT-MOUNTED")], qemu_args=qemu_tpm, append=append)
        assert server.history("ci/tpm2")[0]["decision"] == "allowed"
        server.admin("device", "disable", "ci/tpm2")
        qemu_tpm = tpm.for_guest()
        r = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-tpm2-refused",
                     [("refused", r"refused by policy \(disabled\)"), ("typed", ""),
                      ("root", "NBDE-ROOT-MOUNTED")],
                     actions={"typed": (gen.prompt, lambda b: b.type(PASSPHRASE))},
                     qemu_args=qemu_tpm, append=append)
        assert server.history("ci/tpm2")[0]["decision"] == "disabled"
        return (f"TPM and server: root at {t['root']:.1f} s; server refusing: typed passphrase, "
                f"root at {r['root']:.1f} s")
    finally:
        tpm.stop()
        server.stop()


SCENARIOS = {
    "allowed": allowed,
    "server-late": server_late,
    "refused-typed": refused_typed,
    "no-network": no_network,
    "approval": approval,
    "approval-browser": approval_browser,
    "stock-tangd": stock_tangd,
    "sss-one-dead": sss_one_dead,
    "luks1-stock-clevis": luks1_stock_clevis,
    "sovereign": sovereign,
    "managed-user": managed_user,
    "https": https,
    "https-wrong-clock": https_wrong_clock,
    "tpm2-sss": tpm2_sss,
}

# Scenarios that prove a mode need one hand-built and one real generator, not every one.
ONLY_ON = {
    "approval-browser": {"minimal"},
    "sovereign": {"minimal", "dracut"},
    "managed-user": {"minimal", "dracut"},
    "https-wrong-clock": {"minimal", "dracut", "dracut-token"},
    "tpm2-sss": {"minimal", "dracut-token", "initramfs-tools"},
    "no-network": {"minimal", "initramfs-tools"},
}

# A generator that proves one way among others runs only what shows that way: dracut with
# the token plugin (systemd-cryptsetup opens the token, no agent) unlocks, falls back to the
# typed passphrase when refused, and unlocks over HTTPS.
SCENARIOS_OF = {
    "dracut-token": {"allowed", "refused-typed", "https", "https-wrong-clock", "tpm2-sss"},
}


def run_one(gen, name, kdir):
    """One scenario in its own work directory: (generator, scenario, verdict, text, seconds)."""
    work = tempfile.mkdtemp(prefix=f"nbde-{gen.name}-{name}-")
    start = time.monotonic()
    try:
        result = SCENARIOS[name](gen, kdir, work)
        scan_logs(work, gen.name)
        shutil.rmtree(work, ignore_errors=True)
        return (gen.name, name, "pass", result, time.monotonic() - start)
    except Exception as e:  # report every scenario, then fail
        print(str(e), file=sys.stderr, flush=True)
        return (gen.name, name, "FAIL", str(e).splitlines()[0], time.monotonic() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="minimal")
    ap.add_argument("--scenario", action="append", default=[])
    # A TCG guest keeps one host core busy: on 2 cores two boots at once take about the
    # time of one each. Every scenario has its own server, ports and work directory.
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    build()
    kdir = kernel()
    build_dir = tempfile.mkdtemp(prefix="nbde-build-")
    generators = []
    for name in args.generator.split(","):
        if name == "minimal":
            generators.append(Minimal(kdir, build_dir, TPM2))
        else:
            generators.append(chroots.generator(name, kdir, build_dir, DEBS))
    runs = [(gen, name) for gen in generators for name in args.scenario or list(SCENARIOS)
            if args.scenario or (gen.name in ONLY_ON.get(name, {gen.name})
                                 and name in SCENARIOS_OF.get(gen.name, {name}))]
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(lambda run: run_one(run[0], run[1], kdir), runs):
            rows.append(row)
            print(f"{row[0]:16} {row[1]:17} {row[2]}  {row[3]}  ({row[4]:.0f} s)", flush=True)
    shutil.rmtree(build_dir, ignore_errors=True)
    failed = sum(1 for row in rows if row[2] != "pass")
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
