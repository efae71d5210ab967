#!/usr/bin/env python3
"""Boot to root mounted, stock clevis against nbde-unlock, side by side in one run, on the
same dracut and initramfs-tools images (Debian chroots), the same kernel and a root whose
passphrase slot uses cryptsetup's default Argon2id, as real machines have it. Stock tangd
serves both. Also the initramfs size each unlocker adds, and per generator the floor: the
same kernel and initramfs (no unlocker) booting the same root filesystem unencrypted, with
no network; each unlocker's time is shown over it.

    python3 bench/boot.py        (root, Debian 12; builds and caches what it needs)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "qemu"))
import boot  # noqa: E402
import chroots  # noqa: E402
import scenarios  # noqa: E402

CLEVIS = {"dracut": ["clevis", "clevis-dracut", "clevis-luks"],
          "initramfs-tools": ["clevis", "clevis-initramfs", "clevis-luks"]}


def argon_image(path, keyfile):
    """The scenarios' root, but its passphrase slot with cryptsetup's default PBKDF."""
    scenarios.lib(f"qemu_root_image '{path}' '{keyfile}'")
    # Replace keyslot 0's cheap PBKDF2 by the default Argon2id (same passphrase).
    # Memory capped at 256 MiB so a 1 GiB guest can run it; time cost from cryptsetup's
    # own benchmark (2 s on this host).
    subprocess.run(["cryptsetup", "luksConvertKey", "--batch-mode", "--key-file", keyfile,
                    "--pbkdf", "argon2id", "--pbkdf-memory", "262144", path], check=True)


def build(root, name, kver, out, with_ours, add=""):
    if with_ours:
        chroots.install_ours(root, name, scenarios.UNLOCK)
    if name == "dracut":
        # Non-hostonly dracut takes every module whose check passes: leave ours out of the
        # images that are not about it.
        add = "--add nbde-unlock" if with_ours else f"{add} --omit nbde-unlock"
        chroots.in_chroot(root, f"dracut --force --no-hostonly {add} --kver {kver} /boot/bench.img 2>/dev/null")
    else:
        if not with_ours:
            for sub in ["hooks", "scripts/local-top", "scripts/local-bottom"]:
                path = os.path.join(root, "etc/initramfs-tools", sub, "nbde-unlock")
                if os.path.exists(path):
                    os.remove(path)
        chroots.in_chroot(root, f"mkinitramfs -o /boot/bench.img {kver} 2>/dev/null")
    shutil.copy(os.path.join(root, "boot/bench.img"), out)


def timed_boot(kdir, initrd, image, append, port, log):
    b = boot.Boot(os.path.join(kdir, "vmlinux"), initrd, image, append, [port], log)
    with b:
        found = b.wait_for("NBDE-ROOT-MOUNTED", time.monotonic() + 600)
    return found[1] if found else None


def main():
    scenarios.build("nbde-unlock")
    kdir = scenarios.kernel()
    kver = open(os.path.join(kdir, "version")).read().strip()
    work = tempfile.mkdtemp(prefix="nbde-bootbench-")
    keys = os.path.join(work, "tang")
    os.makedirs(keys)
    subprocess.run(["/usr/libexec/tangd-keygen", keys], check=True)
    tangd = scenarios.Tangd(keys)
    adv = os.path.join(work, "adv.jws")
    subprocess.run(["curl", "-sf", "-o", adv, f"http://127.0.0.1:{tangd.port}/adv"], check=True)
    config = json.dumps({"url": boot.guest_url(0), "adv": adv})
    keyfile = os.path.join(work, "pass")
    with open(keyfile, "w") as f:
        f.write(scenarios.PASSPHRASE)
    rows = []
    try:
        for name in ["dracut", "initramfs-tools"]:
            gen = chroots.ChrootGenerator(name, kdir, work, scenarios.UNLOCK)
            # Stock clevis: its own chroot (our files absent), bound by stock clevis.
            saved = chroots.PACKAGES[name]
            chroots.PACKAGES[name] = saved + CLEVIS[name]
            stock_root = chroots.chroot(name)
            chroots.PACKAGES[name] = saved
            plain_root = chroots.chroot(name)
            base = os.path.join(work, f"{name}-base.img")
            stock = os.path.join(work, f"{name}-clevis.img")
            ours = os.path.join(work, f"{name}-nbde.img")
            build(plain_root, name, kver, base, with_ours=False)
            build(stock_root, name, kver, stock, with_ours=False, add="--add clevis")
            build(plain_root, name, kver, ours, with_ours=True)
            plain = os.path.join(work, f"{name}-plain.img")
            scenarios.lib(f"qemu_plain_root_image '{plain}'")
            log = os.path.join(work, f"{name}-floor.log")
            floor = timed_boot(kdir, base, plain, "root=/dev/vda rw", tangd.port, log)
            rows.append((name, "none (floor: unencrypted root, no network)", floor, 0, log))
            print(f"{name} floor: root at {floor} s", flush=True)
            for unlocker, initrd in [("stock clevis", stock), ("nbde-unlock", ours)]:
                image = os.path.join(work, f"{name}-root.img")
                argon_image(image, keyfile)
                if unlocker == "stock clevis":
                    subprocess.run(["clevis", "luks", "bind", "-y", "-d", image, "-k", keyfile, "tang", config],
                                   check=True, capture_output=True)
                else:
                    subprocess.run([scenarios.UNLOCK, "bind", "-d", image, "-k", keyfile, "tang", config],
                                   check=True, capture_output=True)
                log = os.path.join(work, f"{name}-{unlocker.split()[-1]}.log")
                seconds = timed_boot(kdir, initrd, image, gen.append, tangd.port, log)
                added = os.path.getsize(initrd) - os.path.getsize(base)
                rows.append((name, unlocker, seconds, added, log))
                print(f"{name} {unlocker}: root at {seconds} s, +{added / 1024:.0f} KiB", flush=True)
    finally:
        tangd.stop()
    print("\nGuest seconds from QEMU start to root mounted (TCG, 1 vCPU, Argon2id passphrase slot);")
    print("initramfs growth over the same image without an unlocker (compressed).\n")
    print("| generator | unlocker | root mounted | over the floor | initramfs added |")
    print("|---|---|---|---|---|")
    floors = {name: seconds for name, unlocker, seconds, _, _ in rows if unlocker.startswith("none")}
    for name, unlocker, seconds, added, log in rows:
        shown = f"{seconds:.1f} s" if seconds else f"not in 600 s (see {log})"
        over = (f"+{seconds - floors[name]:.1f} s" if seconds and floors.get(name)
                and not unlocker.startswith("none") else "")
        print(f"| {name} | {unlocker} | {shown} | {over} | {added / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
