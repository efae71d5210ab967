"""Real initramfs generators in Debian chroots: dracut (systemd initrd) and initramfs-tools
(cryptroot). Chroots are made by debootstrap and cached in $NBDE_CACHE, rebuilt when their
package list changes; our Debian packages are installed into them with dpkg for every image.
Chroot commands run inside `unshare --mount`, so nothing stays mounted on the host.
"""
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.environ.get("NBDE_CACHE", "/var/cache/nbde-qemu")
UUID = "6e6b6465-0000-4000-8000-000000000001"
# Images are built one at a time: generators share chroots (dracut and dracut-token the
# same one), and scenarios running side by side ask for their images at once. A generator's
# `path` is set once its image is whole; from then on it is read without the lock.
IMAGE_BUILD = threading.Lock()

# libtss2-esys and -tctildr: what nbde-tpm2 links (the integrations put them in the image
# only where a binding uses the tpm2 pin).
PACKAGES = {
    "dracut": ["dracut", "dracut-network", "cryptsetup", "systemd", "systemd-sysv", "iproute2",
               "dbus", "procps", "netbase", "linux-image-amd64", "libcryptsetup12",
               "libtss2-esys-3.0.2-0", "libtss2-tctildr0"],
    "initramfs-tools": ["linux-image-amd64", "cryptsetup-initramfs", "busybox", "libcryptsetup12",
                        "libtss2-esys-3.0.2-0", "libtss2-tctildr0"],
}


def mirror():
    """The Debian mirror apt on this machine uses."""
    texts = []
    for root, _, files in os.walk("/etc/apt"):
        for f in files:
            if f.endswith((".list", ".sources")):
                texts.append(open(os.path.join(root, f)).read())
    for text in texts:
        m = re.search(r"(?:deb|URIs:)\s+(https?://\S+/debian)/?\s", text + "\n")
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def in_chroot(root, script):
    """Runs a shell script in the chroot with proc, sys and dev mounted privately."""
    wrapper = f"""
set -e
mount -t proc proc '{root}/proc'
mount --rbind /sys '{root}/sys'
mount --rbind /dev '{root}/dev'
chroot '{root}' /bin/sh -ec "$1"
"""
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", wrapper, "sh", script],
                   check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C"))


def cached(path, fill):
    """The cache directory `path`, made by fill(tmp) on first use. Filled under a lock (a
    concurrent run waits, then finds it done) into path.tmp, marked .done and renamed, so a
    run killed half way leaves nothing a later run trusts."""
    done = os.path.join(path, ".done")
    if os.path.exists(done):
        return path
    os.makedirs(CACHE, exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(done):
            return path
        tmp = path + ".tmp"
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)  # what a killed fill left
        fill(tmp)
        open(os.path.join(tmp, ".done"), "w").close()
        if os.path.lexists(path):
            shutil.rmtree(path)  # an unfinished one from before fills were renamed into place
        os.rename(tmp, path)
    return path


def base():
    """A bookworm minbase with updates and security, shared by both generators."""
    return cached(os.path.join(CACHE, "chroot-base"), fill_base)


def fill_base(path):
    url = mirror()
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", path, url], check=True,
                   stdout=subprocess.DEVNULL)
    security = url.replace("/debian", "/debian-security")
    with open(os.path.join(path, "etc/apt/sources.list"), "w") as f:
        f.write(f"deb {url} bookworm main\ndeb {url} bookworm-updates main\n"
                f"deb {security} bookworm-security main\n")
    with open(os.path.join(path, "usr/sbin/policy-rc.d"), "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod(os.path.join(path, "usr/sbin/policy-rc.d"), 0o755)


def rig_modules(path):
    """The rig's guests have a virtio-net NIC: name its driver in the image's module list,
    as an administrator names a machine's own NIC driver. (MODULES=most takes it anyway;
    this keeps the images booting under MODULES=dep or list too.) The hook adds none."""
    conf = os.path.join(path, "etc/initramfs-tools/modules")
    text = open(conf).read() if os.path.exists(conf) else ""
    if "virtio_net" not in text.splitlines():
        with open(conf, "a") as f:
            f.write(("\n" if text and not text.endswith("\n") else "") + "virtio_net\n")


def chroot(name):
    """The base with the generator's packages, cached per package list."""
    packages = PACKAGES[name]
    digest = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:12]
    path = cached(os.path.join(CACHE, f"chroot-{name}-{digest}"), lambda path: fill_chroot(name, packages, path))
    if name == "initramfs-tools":
        rig_modules(path)
    return path


def fill_chroot(name, packages, path):
    subprocess.run(["cp", "-a", base(), path], check=True)
    if name == "initramfs-tools":
        os.makedirs(os.path.join(path, "etc/cryptsetup-initramfs"), exist_ok=True)
        with open(os.path.join(path, "etc/cryptsetup-initramfs/conf-hook"), "w") as f:
            f.write("CRYPTSETUP=y\n")
        with open(os.path.join(path, "etc/crypttab"), "w") as f:
            f.write(f"cryptroot UUID={UUID} none luks,initramfs\n")
    in_chroot(path, "apt-get update -qq && apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "
                    + " ".join(packages) + " >/dev/null")


TOKEN_DIR = "usr/lib/x86_64-linux-gnu/cryptsetup"
OURS = ["nbde-unlock", "nbde-token-clevis", "nbde-tpm2"]


def install_ours(root, debs, packages):
    """Installs our Debian packages named in `packages` into the chroot with dpkg, as a
    user would, and purges the others of ours (the chroot is shared): nbde-unlock (the
    binary, the dracut module, the initramfs-tools hook), nbde-token-clevis (the token
    plugin: with it dracut images open tokens through systemd-cryptsetup, without it they
    run the agent), nbde-tpm2. On initramfs-tools the install itself rebuilds the image
    (the package's update-initramfs trigger). `debs` maps package names to .deb paths."""
    # Files copied in by hand before there were packages (cached chroots): the ones in /etc
    # would shadow the packaged hook and scripts, the others the purges.
    for sub in ["hooks", "scripts/local-top", "scripts/local-bottom"]:
        stale = os.path.join(root, "etc/initramfs-tools", sub, "nbde-unlock")
        if os.path.exists(stale):
            os.remove(stale)
    listed = subprocess.run(["chroot", root, "dpkg-query", "-W", "-f", "${Package} ${Status}\n", *OURS],
                            capture_output=True, text=True).stdout
    # Installed, or removed with its configuration left: either is purged when unwanted.
    installed = {line.split()[0] for line in listed.splitlines() if not line.endswith(" not-installed")}
    unwanted = [p for p in OURS if p not in packages and p in installed]
    for stray in ["usr/bin/nbde-tpm2", os.path.join(TOKEN_DIR, "libcryptsetup-token-clevis.so")]:
        path = os.path.join(root, stray)
        owned = subprocess.run(["chroot", root, "dpkg", "-S", "/" + stray], capture_output=True).returncode == 0
        if os.path.exists(path) and not owned:
            os.remove(path)
    stage = os.path.join(root, "tmp/nbde-debs")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    for name in packages:
        shutil.copy(debs[name], stage)
    purge = f"dpkg --purge {' '.join(unwanted)} >/dev/null; " if unwanted else ""
    install = "dpkg -i /tmp/nbde-debs/*.deb >/dev/null 2>&1 || dpkg -i /tmp/nbde-debs/*.deb" if packages else ""
    in_chroot(root, f"{purge}{install}")
    shutil.rmtree(stage)


def remove_ours(root):
    """Purges our packages (for images that are not about them)."""
    install_ours(root, {}, [])


class ChrootGenerator:
    """`dracut`, `initramfs-tools`, or `dracut-token`: dracut with the token plugin
    installed, where systemd-cryptsetup opens the tokens itself and no agent runs."""

    def __init__(self, name, kdir, build, debs, tpm2=True):
        self.name = name
        self.tpm2 = tpm2
        self.chroot = "dracut" if name == "dracut-token" else name
        # The dracut image uses the token plugin where it is installed, else the agent.
        self.packages = ["nbde-unlock"] + (["nbde-token-clevis"] if name == "dracut-token" else []) \
            + (["nbde-tpm2"] if tpm2 else [])
        self.build = build
        self.debs = debs
        self.kver = open(os.path.join(kdir, "version")).read().strip()
        self.path = None
        if self.chroot == "dracut":
            self.append = (f"root=/dev/mapper/luks-{UUID} rd.luks.uuid={UUID} rd.neednet=1 ip=dhcp "
                           "rd.luks.options=timeout=0 rw")
            # systemd says "passphrase or recovery key" when a systemd-recovery token is there.
            self.prompt = r"Please enter passphrase (or recovery key )?for disk"
        else:
            self.append = "root=/dev/mapper/cryptroot ip=:::::ens3:dhcp rw"
            self.prompt = r"Please unlock disk cryptroot"

    def initrd(self):
        # A built image needs no lock: a boot must not wait for another generator's build.
        if self.path:
            return self.path
        with IMAGE_BUILD:
            return self.path or self._build()

    def _build(self):
        root = chroot(self.chroot)
        started = time.time()
        install_ours(root, self.debs, self.packages)
        if self.chroot == "dracut":
            # What a user runs after installing: `dracut -f` (here not host-only, as the
            # chroot is not the machine). The module is taken without --add.
            out = f"/boot/initrd.img-{self.kver}"
            in_chroot(root, f"dracut --force --no-hostonly --kver {self.kver} {out} 2>/dev/null")
            listing = subprocess.run(["chroot", root, "lsinitrd", out], capture_output=True, text=True,
                                     check=True).stdout
            has_plugin = "libcryptsetup-token-clevis.so" in listing
            has_agent = "nbde-unlock-agent.service" in listing
            plugin = "nbde-token-clevis" in self.packages
            if (has_plugin, has_agent) != (plugin, not plugin):
                raise AssertionError(f"{self.name} image: token plugin {has_plugin}, agent {has_agent}")
        else:
            # The package's trigger rebuilt the image during the install: nothing else to run.
            out = f"/boot/initrd.img-{self.kver}"
            if os.path.getmtime(root + out) < started:
                raise AssertionError(f"installing nbde-unlock did not rebuild {out}")
            listing = subprocess.run(["chroot", root, "lsinitramfs", out], capture_output=True,
                                     text=True, check=True).stdout
            if "usr/bin/nbde-unlock" not in listing:
                raise AssertionError(f"{out}: no nbde-unlock in the image the install rebuilt")
        # Not host-only, or no device to read here: with nbde-tpm2 installed the image
        # carries the tpm2 pin, and without it nothing of the TSS.
        for part in ["nbde-tpm2", "libtss2-esys.so", "libtss2-tctildr.so", "libtss2-tcti-device.so"]:
            if (part in listing) != bool(self.tpm2):
                raise AssertionError(f"{self.name} image: {part} {'missing' if self.tpm2 else 'present'}")
        path = os.path.join(self.build, f"initrd-{self.name}")
        shutil.copy(root + out, path)
        # Set once the copy is whole: `initrd` hands it out without the lock.
        self.path = path
        return path


def generator(name, kdir, build, debs, tpm2=True):
    if name not in [*PACKAGES, "dracut-token"]:
        raise SystemExit(f"unknown generator {name!r}: minimal, dracut, dracut-token or initramfs-tools")
    return ChrootGenerator(name, kdir, build, debs, tpm2)
