#!/usr/bin/env python3
"""Boot scenarios: real kernels, real initramfs images, a LUKS2 root, and nbde-server (or
stock tangd) on host loopback. Each scenario asserts markers on the serial console and the
server's decision history, and prints one row of a table.

    qemu/scenarios.py [--generator minimal,dracut,initramfs-tools] [--scenario NAME ...]

Builds what it needs (release binaries, the Debian kernel, chroots for the generators,
cached in $NBDE_CACHE) first. Run as root on Debian 12. A failed scenario leaves its work
directory (serial logs, the server's log) in /tmp/nbde-GENERATOR-SCENARIO-*; with
NBDE_KEEP_WORK=1 a passed one does too.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
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
import host  # noqa: E402
from host import (  # noqa: E402
    PASSPHRASE, TPM_APPEND, Blackhole, Minimal, Server, Swtpm, Tangd, Tls, bind, build,
    device_config, kernel, lib, run_boot, scan_logs, secret,
)

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
        # While the prompt is up, each retry says again why no key comes (initramfs-tools'
        # askpass turns the kernel's console output off as it prompts). systemd-cryptsetup's
        # token plugin tries once, before its prompt.
        prompt_first = [("prompt", gen.prompt)] if gen.name != "dracut-token" else []
        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-refused",
                     [*prompt_first, ("refused", r"refused by policy \(disabled\)"), ("typed", ""),
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
        # dracut's agent has started its early round: it says why it does not get a key.
        said = [("no-route", r"network not up yet")] if gen.name == "dracut" else []
        t = run_boot(gen, kdir, work, image, None, f"{gen.name}-no-network",
                     [*said, ("typed", ""), ("root", "NBDE-ROOT-MOUNTED")],
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
    out = subprocess.run([host.UNLOCK, "mode", "-d", image, "--json"], check=True, capture_output=True,
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
        subprocess.run([host.UNLOCK, "mode", "-d", image, "sovereign", "-k", keyfile,
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
        hosts = dict(guest, url=guest["url"].replace(boot.guest_url(0), server.env["NBDE_SERVER"]))
        bind(image, ("tang", hosts), work, "mu")
        run = lambda *a: subprocess.run([host.UNLOCK, *a], check=True, capture_output=True, text=True)
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


def no_uuid_link(gen, kdir, work):
    """crypttab names the root by UUID= and udev has no /dev/disk/by-uuid link for it:
    cryptroot still finds it (blkid), and so must nbde-unlock, on the block devices."""
    server = Server(work).start()
    try:
        image = os.path.join(work, "nolink.img")
        bind(image, ("tang", device_config(server, work, "nolink")), work, "nolink")
        ours = open(os.path.join(REPO, "initramfs-tools/scripts/local-top/nbde-unlock")).read()
        head, body = ours.split("\n. /scripts/functions\n", 1)
        link = f"/dev/disk/by-uuid/{chroots.UUID}"
        # Our own local-top script, the link removed first (said, so the boot proves it).
        dropped = (f"{head}\n. /scripts/functions\n"
                   f"[ -L {link} ] && rm -f {link} && echo 'NBDE-TEST: removed {link}'\n{body}")
        initrd = host.overlaid_initrd(gen.initrd(), work,
                                      {"scripts/local-top/nbde-unlock": (dropped, 0o755)})
        t = run_boot(gen, kdir, work, image, [server.port], f"{gen.name}-nolink",
                     [("removed", "NBDE-TEST: removed"),
                      ("asking", rf"UUID={chroots.UUID} \(cryptroot\): asking"),
                      ("root", "NBDE-ROOT-MOUNTED")], initrd=initrd)
        rows = server.history("ci/nolink")
        assert rows and rows[0]["decision"] == "allowed", rows
        return f"link removed at {t['removed']:.1f} s, root at {t['root']:.1f} s, history: allowed"
    finally:
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
    "no-uuid-link": no_uuid_link,
}

# Scenarios that prove a mode need one hand-built and one real generator, not every one.
ONLY_ON = {
    "approval-browser": {"minimal"},
    "sovereign": {"minimal", "dracut"},
    "managed-user": {"minimal", "dracut"},
    "https-wrong-clock": {"minimal", "dracut", "dracut-token"},
    "tpm2-sss": {"minimal", "dracut-token", "initramfs-tools"},
    "no-network": {"minimal", "dracut", "initramfs-tools"},
    # cryptroot's own lookup (blkid) against nbde-unlock's; dracut's systemd uses the links.
    "no-uuid-link": {"initramfs-tools"},
}

# A generator that proves one way among others runs only what shows that way: dracut with
# the token plugin (systemd-cryptsetup opens the token, no agent) unlocks, falls back to the
# typed passphrase when refused, and unlocks over HTTPS.
SCENARIOS_OF = {
    "dracut-token": {"allowed", "refused-typed", "https", "https-wrong-clock", "tpm2-sss"},
}


class Schedule:
    """Hands the boots out to the workers, in the order given except where that would leave
    a worker waiting. A generator's first boot builds its image, one build at a time
    (`chroots.IMAGE_BUILD`): the next build starts as soon as none is under way, and
    meanwhile the other worker boots what is built. In the given order, a worker would wait
    for each build in turn (about a minute for each chroot generator)."""

    def __init__(self, runs):
        self.pending = list(runs)
        # Generators whose image a worker has begun to build (or built: then `path` is set).
        self.begun = set()
        self.lock = threading.Lock()

    def next(self):
        """The next (generator, scenario) for a free worker, or None when all are out."""
        with self.lock:
            if not self.pending:
                return None
            run = None
            if all(gen.path for gen in self.begun):
                run = next((r for r in self.pending if r[0] not in self.begun), None)
            run = run or next((r for r in self.pending if r[0].path), None) or self.pending[0]
            self.pending.remove(run)
            self.begun.add(run[0])
            return run


def run_one(gen, name, kdir):
    """One scenario in its own work directory: (generator, scenario, verdict, text, seconds)."""
    work = tempfile.mkdtemp(prefix=f"nbde-{gen.name}-{name}-")
    start = time.monotonic()
    try:
        result = SCENARIOS[name](gen, kdir, work)
        scan_logs(work, gen.name)
        if not os.environ.get("NBDE_KEEP_WORK"):
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
            generators.append(Minimal(kdir, build_dir, host.TPM2))
        else:
            generators.append(chroots.generator(name, kdir, build_dir, host.DEBS))
    runs = [(gen, name) for gen in generators for name in args.scenario or list(SCENARIOS)
            if args.scenario or (gen.name in ONLY_ON.get(name, {gen.name})
                                 and name in SCENARIOS_OF.get(gen.name, {name}))]
    rows = []
    schedule = Schedule(runs)
    printing = threading.Lock()

    def work():
        while run := schedule.next():
            row = run_one(run[0], run[1], kdir)
            with printing:
                rows.append(row)
                print(f"{row[0]:16} {row[1]:17} {row[2]}  {row[3]}  ({row[4]:.0f} s)", flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for worker in [pool.submit(work) for _ in range(max(1, args.jobs))]:
            worker.result()
    shutil.rmtree(build_dir, ignore_errors=True)
    failed = sum(1 for row in rows if row[2] != "pass")
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
