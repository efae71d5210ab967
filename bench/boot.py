#!/usr/bin/env python3
"""Boot to root mounted, stock clevis against nbde-unlock, side by side in one run, on the
same dracut and initramfs-tools images (Debian chroots), the same kernel and a root whose
passphrase slot uses cryptsetup's default Argon2id, as real machines have it. Stock tangd
serves both. dracut also with the token plugin (systemd-cryptsetup opens the token, no
agent), and the hand-built minimal image. Also the initramfs size each unlocker adds, and
per generator the floor: the same kernel and initramfs without an unlocker (for minimal:
the same image) booting the same root filesystem unencrypted, with no network; each
unlocker's time is shown over it.

    python3 bench/boot.py [--runs 5] [--generators dracut,...]
        (root, Debian 12; builds and caches what it needs)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "qemu"))
import boot  # noqa: E402
import chroots  # noqa: E402
import host  # noqa: E402

GENERATORS = ["minimal", "dracut", "initramfs-tools"]
FLOOR = "none (floor: unencrypted root, no network)"
# The second floor: the same LUKS root opened by the generator's own cryptsetup with a key
# file inside the initramfs, from a slot as cheap as a bound one (PBKDF2, 1000 iterations,
# preferred). What an unlocker adds over it is the network and the exchange, not dm-crypt.
KEYFILE_FLOOR = "none (floor: LUKS root, key file in the initramfs, no network)"
FLOOR_KEY = "etc/nbde-floor.key"
CLEVIS = {"dracut": ["clevis", "clevis-dracut", "clevis-luks"],
          "initramfs-tools": ["clevis", "clevis-initramfs", "clevis-luks"]}


def argon_image(path, keyfile):
    """The scenarios' root, but its passphrase slot with cryptsetup's default PBKDF."""
    host.lib(f"qemu_root_image '{path}' '{keyfile}'")
    # Replace keyslot 0's cheap PBKDF2 by the default Argon2id (same passphrase).
    # Memory capped at 256 MiB so a 1 GiB guest can run it; time cost from cryptsetup's
    # own benchmark (2 s on this host).
    subprocess.run(["cryptsetup", "luksConvertKey", "--batch-mode", "--key-file", keyfile,
                    "--pbkdf", "argon2id", "--pbkdf-memory", "262144", path], check=True)


def keyfile_root(work, name, keyfile, floor_key):
    """The Argon2id root with one more slot for `floor_key`, as cheap as a bound slot."""
    image = os.path.join(work, f"{name}-keyfile-root.img")
    argon_image(image, keyfile)
    subprocess.run(["cryptsetup", "luksAddKey", "--batch-mode", "--key-file", keyfile,
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", image, floor_key],
                   check=True)
    subprocess.run(["cryptsetup", "config", "--priority", "prefer", "--key-slot", "1", image],
                   check=True)
    return image


def keyfile_append(name):
    """Kernel command line of the key-file floor: no network at all."""
    if name == "dracut":
        return (f"root=/dev/mapper/luks-{chroots.UUID} rd.luks.uuid={chroots.UUID} "
                f"rd.luks.key=/{FLOOR_KEY} rw")
    return "root=/dev/mapper/cryptroot rw"


def build_keyfile_floor(root, name, kver, out, floor_key):
    """An image that opens the root with `floor_key`, a file inside it (ours purged)."""
    chroots.remove_ours(root)
    shutil.copy(floor_key, os.path.join(root, FLOOR_KEY))
    os.chmod(os.path.join(root, FLOOR_KEY), 0o600)
    try:
        if name == "dracut":
            chroots.in_chroot(root, f"dracut --force --no-hostonly --omit nbde-unlock "
                                    f"--install /{FLOOR_KEY} --kver {kver} /boot/bench.img 2>/dev/null")
        else:
            crypttab = os.path.join(root, "etc/crypttab")
            hook = os.path.join(root, "etc/cryptsetup-initramfs/conf-hook")
            saved = {path: open(path).read() for path in (crypttab, hook)}
            try:
                with open(crypttab, "w") as f:
                    f.write(f"cryptroot UUID={chroots.UUID} /{FLOOR_KEY} luks,initramfs\n")
                with open(hook, "a") as f:
                    f.write(f'KEYFILE_PATTERN="/{FLOOR_KEY}"\n')
                chroots.in_chroot(root, f"UMASK=0077 mkinitramfs -o /boot/bench.img {kver} 2>/dev/null")
            finally:
                for path, text in saved.items():
                    with open(path, "w") as f:
                        f.write(text)
    finally:
        os.remove(os.path.join(root, FLOOR_KEY))
    shutil.copy(os.path.join(root, "boot/bench.img"), out)


def build(root, name, kver, out, ours=None, add="", floor=False):
    """An image of generator `name`: with our packages installed (`ours`: "agent" or
    "plugin", the way dracut opens tokens) or purged; `floor`: initramfs-tools without the
    root's crypttab entry, whose cryptroot would otherwise wait for a LUKS device the
    unencrypted floor does not have."""
    if ours:
        plugin = ["nbde-token-clevis"] if ours == "plugin" else []
        chroots.install_ours(root, host.DEBS, ["nbde-unlock", *plugin])
    else:
        chroots.remove_ours(root)
    if name == "dracut":
        # Non-hostonly dracut takes every module whose check passes: leave ours out of the
        # images that are not about it.
        add = "" if ours else f"{add} --omit nbde-unlock"
        chroots.in_chroot(root, f"dracut --force --no-hostonly {add} --kver {kver} /boot/bench.img 2>/dev/null")
    else:
        crypttab = os.path.join(root, "etc/crypttab")
        if floor:
            os.rename(crypttab, crypttab + ".bench")
        try:
            chroots.in_chroot(root, f"mkinitramfs -o /boot/bench.img {kver} 2>/dev/null")
        finally:
            if floor:
                os.rename(crypttab + ".bench", crypttab)
    shutil.copy(os.path.join(root, "boot/bench.img"), out)


def timed_boot(kdir, initrd, image, append, port, log):
    b = boot.Boot(os.path.join(kdir, "vmlinux"), initrd, image, append, [port], log)
    with b:
        found = b.wait_for("NBDE-ROOT-MOUNTED", time.monotonic() + 600)
    return found[1] if found else None


def bound_root(work, name, keyfile, config, stock):
    """A fresh Argon2id root bound to tangd by stock clevis or by nbde-unlock."""
    image = os.path.join(work, f"{name}-root.img")
    argon_image(image, keyfile)
    if stock:
        subprocess.run(["clevis", "luks", "bind", "-y", "-d", image, "-k", keyfile, "tang", config],
                       check=True, capture_output=True)
    else:
        subprocess.run([host.UNLOCK, "bind", "-d", image, "-k", keyfile, "tang", config],
                       check=True, capture_output=True)
    return image


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1,
                        help="boots per row, interleaved round by round; the table shows the "
                             "median and the range (default 1)")
    parser.add_argument("--generators", default=",".join(GENERATORS),
                        help=f"comma-separated subset of {','.join(GENERATORS)}")
    args = parser.parse_args()
    args.generators = [g for g in args.generators.split(",") if g]
    unknown = set(args.generators) - set(GENERATORS)
    if unknown or args.runs < 1:
        parser.error(f"unknown generator {sorted(unknown)}" if unknown else "--runs must be ≥ 1")
    return args


def main():
    args = parse_args()
    host.build()
    kdir = host.kernel()
    kver = open(os.path.join(kdir, "version")).read().strip()
    work = tempfile.mkdtemp(prefix="nbde-bootbench-")
    keys = os.path.join(work, "tang")
    os.makedirs(keys)
    subprocess.run(["/usr/libexec/tangd-keygen", keys], check=True)
    tangd = host.Tangd(keys)
    adv = os.path.join(work, "adv.jws")
    subprocess.run(["curl", "-sf", "-o", adv, f"http://127.0.0.1:{tangd.port}/adv"], check=True)
    config = json.dumps({"url": boot.guest_url(0), "adv": adv})
    keyfile = os.path.join(work, "pass")
    with open(keyfile, "w") as f:
        f.write(host.PASSPHRASE)
    floor_key = os.path.join(work, "floor.key")
    with open(floor_key, "wb") as f:
        f.write(os.urandom(32))
    plain = os.path.join(work, "plain.img")
    host.lib(f"qemu_plain_root_image '{plain}'")
    # Every row's initramfs, disk image and command line are built first; the boots then run
    # round by round, so a slow stretch of the host spreads over every row alike.
    rows = []

    def row(name, unlocker, initrd, image, append, added):
        rows.append({"name": name, "unlocker": unlocker, "initrd": initrd, "image": image,
                     "append": append, "added": added, "seconds": []})

    try:
        if "minimal" in args.generators:
            minimal = host.Minimal(kdir, work)
            # One image for both: the minimal init mounts a plain root when told nbde.plain.
            row("minimal", FLOOR, minimal.initrd(), plain, "nbde.plain", None)
            row("minimal", "nbde-unlock", minimal.initrd(),
                bound_root(work, "minimal", keyfile, config, False), minimal.append, None)
        for name in [g for g in GENERATORS[1:] if g in args.generators]:
            gen = chroots.ChrootGenerator(name, kdir, work, host.DEBS)
            # Stock clevis: its own chroot (our files absent), bound by stock clevis.
            saved = chroots.PACKAGES[name]
            chroots.PACKAGES[name] = saved + CLEVIS[name]
            stock_root = chroots.chroot(name)
            chroots.PACKAGES[name] = saved
            plain_root = chroots.chroot(name)
            base = os.path.join(work, f"{name}-base.img")
            floor = os.path.join(work, f"{name}-floor.img")
            images = [("stock clevis", os.path.join(work, f"{name}-clevis.img"), True),
                      ("nbde-unlock", os.path.join(work, f"{name}-nbde.img"), False)]
            build(plain_root, name, kver, base)
            build(plain_root, name, kver, floor, floor=True)
            keyfile_floor = os.path.join(work, f"{name}-keyfile-floor.img")
            build_keyfile_floor(plain_root, name, kver, keyfile_floor, floor_key)
            build(stock_root, name, kver, images[0][1], add="--add clevis")
            build(plain_root, name, kver, images[1][1], ours="agent")
            if name == "dracut":
                images.append(("nbde token plugin", os.path.join(work, f"{name}-token.img"), False))
                build(plain_root, name, kver, images[2][1], ours="plugin")
            row(name, FLOOR, floor, plain, "root=/dev/vda rw", 0)
            row(name, KEYFILE_FLOOR, keyfile_floor, keyfile_root(work, name, keyfile, floor_key),
                keyfile_append(name), os.path.getsize(keyfile_floor) - os.path.getsize(base))
            for unlocker, initrd, stock in images:
                image = bound_root(work, f"{name}-{unlocker.replace(' ', '-')}", keyfile, config,
                                   stock)
                row(name, unlocker, initrd, image, gen.append,
                    os.path.getsize(initrd) - os.path.getsize(base))
        for run in range(args.runs):
            for r in rows:
                # Each boot on a fresh copy: a root the previous boot mounted is not the same disk.
                disk = os.path.join(work, "boot-disk.img")
                subprocess.run(["cp", "--sparse=always", r["image"], disk], check=True)
                log = os.path.join(work, f"{r['name']}-{r['unlocker'].replace(' ', '-')}-{run + 1}.log")
                r["log"] = log
                seconds = timed_boot(kdir, r["initrd"], disk, r["append"], tangd.port, log)
                os.remove(disk)
                r["seconds"].append(seconds)
                print(f"run {run + 1}/{args.runs} {r['name']} {r['unlocker']}: root at {seconds} s",
                      flush=True)
    finally:
        tangd.stop()
    print_table(rows, args.runs)


def print_table(rows, runs):
    print("\nGuest seconds from QEMU start to root mounted (TCG, 1 vCPU, Argon2id passphrase slot)"
          + (f", median of {runs} boots per row (range)" if runs > 1 else "")
          + ";\ninitramfs growth over the same image without an unlocker (compressed).\n")
    print("| generator | unlocker | root mounted | over the floor | over the LUKS key-file floor | initramfs added |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        done = [s for s in r["seconds"] if s]
        r["median"] = statistics.median(done) if len(done) == len(r["seconds"]) else None
    floors = {r["name"]: r["median"] for r in rows if r["unlocker"] == FLOOR}
    luks_floors = {r["name"]: r["median"] for r in rows if r["unlocker"] == KEYFILE_FLOOR}

    def over(seconds, floor):
        return f"{seconds - floor:+.1f} s" if seconds and floor else ""

    for r in rows:
        seconds, unlocker = r["median"], r["unlocker"]
        if seconds is None:
            shown = f"not in 600 s (see {r['log']})"
        elif runs > 1:
            shown = f"{seconds:.1f} s ({min(r['seconds']):.1f}–{max(r['seconds']):.1f})"
        else:
            shown = f"{seconds:.1f} s"
        size = "same image" if r["added"] is None else f"{r['added'] / 1024:.0f} KiB"
        over_plain = over(seconds, floors.get(r["name"])) if unlocker != FLOOR else ""
        over_luks = (over(seconds, luks_floors.get(r["name"]))
                     if unlocker not in (FLOOR, KEYFILE_FLOOR) else "")
        print(f"| {r['name']} | {unlocker} | {shown} | {over_plain} | {over_luks} | {size} |")


if __name__ == "__main__":
    main()
