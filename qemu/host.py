"""The host side of a boot scenario: our release binaries and packages (build()), the
servers a guest reaches (nbde-server, stock tangd, a server that hangs, a TPM), the minimal
generator, binding a root image, and a boot that waits for console markers. Used by
scenarios.py and bench/boot.py.
"""
import json
import os
import socket
import subprocess
import sys
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
        if self.path:
            return self.path
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


def overlaid_initrd(initrd, work, files):
    """`initrd` with an uncompressed cpio archive of `files` ({path in the image: (text,
    mode)}) appended: the kernel unpacks concatenated archives in turn, so these replace
    the image's own files of the same path."""
    tree = os.path.join(work, "overlay")
    for path, (text, mode) in files.items():
        target = os.path.join(tree, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(text)
        os.chmod(target, mode)
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=tree, check=True,
                           capture_output=True, text=True).stdout
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=tree,
                             input=names.encode(), check=True, capture_output=True).stdout
    out = os.path.join(work, "initrd-overlaid")
    with open(out, "wb") as f:
        f.write(open(initrd, "rb").read())
        # Each archive starts on a 4-byte boundary.
        f.write(b"\0" * (-f.tell() % 4))
        f.write(archive)
    return out


def run_boot(gen, kdir, work, image, forwards, label, expects, actions=None, timeout=300,
             qemu_args=(), append="", initrd=None):
    """Boots; `expects` are (label, regex) in order. When a label is in `actions`, its
    (regex, act) waits for the regex and then calls act(boot) — typing on the console,
    approving a request. `initrd`: another image than the generator's. Returns
    {label: seconds} or raises with the log's tail."""
    log = os.path.join(work, f"{label}.serial.log")
    b = boot.Boot(os.path.join(kdir, "vmlinux"), initrd or gen.initrd(), image,
                  f"{gen.append} {append}", forwards, log, qemu_args=qemu_args)
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
