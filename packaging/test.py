#!/usr/bin/env python3
"""The Debian packages, checked as an administrator meets them: lintian, then installed
with apt into a throwaway copy of the dracut chroot (a Debian 12 with systemd) beside the
distribution's clevis, used, removed and purged.

- lintian: no error and no warning (tags we keep are explained in packaging/lintian/).
- `systemd-analyze verify` on the installed unit; the service's user, its state directory
  (0700), its configuration (0640, the service's group) and its key-encryption key
  (/etc/nbde/private/kek, 0400, in a 0700 directory, both the service user's) exist.
- The server runs as the unit runs it (its user, its configuration file), `nbde-server
  init` as that user prints the owner token, a device is added, and `clevis encrypt` /
  `clevis decrypt` (nbde-unlock through the nbde-clevis diversion) recover through it.
- The distribution's clevis is kept as /usr/bin/clevis.distrib while nbde-clevis is
  installed, and is back, byte for byte, when it is removed. `dpkg --verify` is clean.
- Purge leaves no file behind but the store in /var/lib/nbde-server and its key in
  /etc/nbde/private (and what dpkg and the user database keep); with NBDE_PURGE_DATA=yes
  they go too.

    python3 packaging/test.py      (root, Debian 12; builds the packages first)
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "qemu"))
import chroots  # noqa: E402

# What may change in the file tree between "before install" and "after purge".
KEPT = ("var/lib/nbde-server",  # the store, kept on purge unless asked
        "etc/nbde/private",  # the key-encryption key of the store's keys, likewise
        "var/lib/dpkg/", "var/log/", "var/cache/", "var/lib/apt/", "var/lib/systemd/deb-systemd-",
        "etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "etc/subuid", "etc/subgid",
        "etc/ld.so.cache", "tmp/", "root/", "run/")  # /run: a tmpfs on a booted system


def lintian(debs):
    for deb in debs:
        out = subprocess.run(["lintian", "-I", "--fail-on", "error,warning", "--tag-display-limit", "0", deb],
                             capture_output=True, text=True)
        tags = [line for line in out.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")]
        print(f"lintian {os.path.basename(deb)}: {len(tags)} informational tags, exit {out.returncode}")
        for tag in tags:
            print(f"    {tag}")
        if out.returncode != 0:
            raise SystemExit(f"lintian failed on {deb}:\n{out.stdout}{out.stderr}")


def tree(root):
    """Every path in the chroot (not /proc, /sys, /dev), relative."""
    paths = set()
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        if rel in ("proc", "sys", "dev"):
            dirs[:] = []
            continue
        for name in dirs + files:
            paths.add(os.path.normpath(os.path.join(rel, name)))
    return paths


def sh(root, script):
    chroots.in_chroot(root, script)


def out(root, script):
    """Runs a script in the chroot; its standard output."""
    return subprocess.run(["chroot", root, "/bin/sh", "-ec", script], check=True, capture_output=True,
                          text=True).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    built = subprocess.run([os.path.join(ROOT, "packaging", "build.sh")], check=True,
                           stdout=subprocess.PIPE, text=True).stdout.split()
    lintian(built)
    names = " ".join(os.path.basename(deb).split("_")[0] for deb in built)
    base = chroots.chroot("dracut")
    root = tempfile.mkdtemp(prefix="nbde-pkgtest-", dir=chroots.CACHE)
    try:
        subprocess.run(["cp", "-a", base + "/.", root], check=True)
        # The distribution's clevis first: nbde-clevis must keep it, not replace it.
        # man-db: systemd-analyze verify checks that the unit's Documentation= man page opens.
        sh(root, "apt-get install -y -qq --no-install-recommends clevis man-db >/dev/null 2>&1")
        stock = open(os.path.join(root, "usr/bin/clevis"), "rb").read()
        before = tree(root)
        os.makedirs(os.path.join(root, "tmp/debs"))
        for deb in built:
            shutil.copy(deb, os.path.join(root, "tmp/debs"))
        sh(root, "apt-get install -y -qq --no-install-recommends /tmp/debs/*.deb >/dev/null")

        verify = subprocess.run(["chroot", root, "systemd-analyze", "verify", "nbde-server.service"],
                                capture_output=True, text=True)
        if verify.returncode != 0 or verify.stderr.strip():
            raise SystemExit(f"systemd-analyze verify: exit {verify.returncode}\n{verify.stderr}")
        print("systemd-analyze verify nbde-server.service: clean")
        security = subprocess.run(["chroot", root, "systemd-analyze", "security", "--offline=true",
                                   "/usr/lib/systemd/system/nbde-server.service"], capture_output=True, text=True)
        print("systemd-analyze security: " + (security.stdout.strip().splitlines() or ["?"])[-1])
        modes = out(root, "stat -c '%n %a %U:%G' /var/lib/nbde-server /etc/nbde/server.toml "
                          "/etc/nbde/private /etc/nbde/private/kek")
        assert modes.split("\n")[:4] == ["/var/lib/nbde-server 700 _nbde-server:_nbde-server",
                                         "/etc/nbde/server.toml 640 root:_nbde-server",
                                         "/etc/nbde/private 700 _nbde-server:_nbde-server",
                                         "/etc/nbde/private/kek 400 _nbde-server:_nbde-server"], modes
        diverted = out(root, "dpkg-divert --listpackage /usr/bin/clevis; readlink /usr/bin/clevis")
        assert diverted.split() == ["nbde-clevis", "nbde-unlock"], diverted
        assert open(os.path.join(root, "usr/bin/clevis.distrib"), "rb").read() == stock
        sh(root, f"dpkg --verify {names}")
        print(f"installed: {out(root, f'dpkg-query -W {names}').split()}")

        # The server as its unit runs it: its user, its configuration; a free port instead
        # of the default (a flag wins over the file).
        port = free_port()
        exec_start = out(root, "sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/nbde-server.service").strip()
        script = f"""
runuser -u _nbde-server -- {exec_start} --listen 127.0.0.1:{port} 2>/tmp/server.log &
server=$!
trap 's=$?; kill $server; wait $server || true; exit $s' EXIT
for i in $(seq 100); do [ -n "$(ss -Hltn 'sport = :{port}')" ] && break; sleep 0.1; done
export NBDE_SERVER=http://127.0.0.1:{port}
# As root, init refuses the service's store (files root made there would lock it out).
if nbde-server init --config /etc/nbde/server.toml 2>/tmp/root-init.err; then exit 1; fi
grep -q "belongs to uid" /tmp/root-init.err
export NBDE_TOKEN=$(runuser -u _nbde-server -- nbde-server init --config /etc/nbde/server.toml 2>/dev/null | tail -n1)
nbde-server org add acme >/dev/null
nbde-server device add --org acme web1 --json > /tmp/device.json
"""
        sh(root, script)
        device = json.load(open(os.path.join(root, "tmp/device.json")))
        cfg = json.dumps({"url": device["url"], "thp": device["thp"]})
        script = f"""
runuser -u _nbde-server -- {exec_start} --listen 127.0.0.1:{port} 2>>/tmp/server.log &
server=$!
trap 's=$?; kill $server; wait $server || true; exit $s' EXIT
for i in $(seq 100); do [ -n "$(ss -Hltn 'sport = :{port}')" ] && break; sleep 0.1; done
printf 'packaged secret' | clevis encrypt tang '{cfg}' > /tmp/jwe
clevis decrypt < /tmp/jwe > /tmp/plain
"""
        sh(root, script)
        plain = open(os.path.join(root, "tmp/plain")).read()
        assert plain == "packaged secret", plain
        print(f"packaged server on its unit's command line: clevis (nbde-unlock) recovered through {device['url']}")
        files = out(root, "ls /var/lib/nbde-server; stat -c '%U' /var/lib/nbde-server/*").split()
        assert files and all(f == "_nbde-server" for f in files[len(files) // 2:]), files

        sh(root, "apt-get remove -y -qq nbde-clevis >/dev/null")
        assert open(os.path.join(root, "usr/bin/clevis"), "rb").read() == stock, "clevis not restored"
        assert not os.path.lexists(os.path.join(root, "usr/bin/clevis.distrib"))
        print("nbde-clevis removed: the distribution's clevis is back at /usr/bin/clevis, byte for byte")

        sh(root, f"dpkg --purge {names} >/dev/null 2>&1; rm -rf /tmp/debs /tmp/*.log /tmp/root-init.err /tmp/jwe /tmp/plain /tmp/device.json")
        # /etc/nbde itself stays while it holds the kept key.
        left = sorted(p for p in tree(root) - before if not p.startswith(KEPT) and p != "etc/nbde")
        assert not left, f"purge left: {left}"
        assert os.path.isdir(os.path.join(root, "var/lib/nbde-server")), "purge removed the store"
        assert os.path.isfile(os.path.join(root, "etc/nbde/private/kek")), "purge removed the store's key"
        print("purged: nothing left but the store in /var/lib/nbde-server and its key in /etc/nbde/private")
        shutil.copy([d for d in built if "nbde-server_" in d][0], os.path.join(root, "tmp/nbde-server.deb"))
        sh(root, "dpkg -i /tmp/nbde-server.deb >/dev/null && NBDE_PURGE_DATA=yes dpkg --purge nbde-server >/dev/null 2>&1")
        assert not os.path.exists(os.path.join(root, "var/lib/nbde-server")), "NBDE_PURGE_DATA=yes kept the store"
        assert not os.path.exists(os.path.join(root, "etc/nbde/private")), "NBDE_PURGE_DATA=yes kept the key"
        print("purged with NBDE_PURGE_DATA=yes: the store is gone too")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("packages: pass")


if __name__ == "__main__":
    main()
